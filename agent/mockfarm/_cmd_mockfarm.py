"""``python -m agent mockfarm``: serve the mock farm, or drive a running one.

::

    python -m agent mockfarm serve [--state-dir DIR | --ephemeral] [--host H] [--port N]
        [--no-monitor | --monitor-actions] [...]
    python -m agent mockfarm submit TEMPLATE [-p NAME=VALUE]... [--priority N] [--wait]
    python -m agent mockfarm status [JOB_ID]
    python -m agent mockfarm cancel JOB_ID
    python -m agent mockfarm logs JOB_ID [--follow]
    python -m agent mockfarm faults [FILE]
    python -m agent mockfarm stop-worker WORKER_ID

The client commands talk to a running server over HTTP with boto3's own
``deadline`` and ``logs`` clients: ``--endpoint``, else the
``FARMHAND_MOCKFARM_ENDPOINT`` environment variable, else
``http://127.0.0.1:18080``. Exit status: 0 on success, 1 when the farm answers
with an error, 2 for a bad template, parameter or option. ``submit --wait``
shows where the job stands on one line of stderr while it waits, when stderr
is a terminal (``agent._progress``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

# Re-exported: the serve checks name it.
from .._asgi import is_loopback as is_loopback
from .._gc import tune_gc
from .._progress import StatusLine
from .._signals import StopRequest, open_stop_signals, stop_server_on_signals
from .._words import counted
from ._farm import FarmConfig
from ._faults import FaultConfig
from ._mockfarm import MockFarm, make_client, open_mock_farm
from ._monitor import MonitorConfig
from ._s3 import DEFAULT_BUCKET, S3Config, S3Unavailable, moto_available
from ._setup import setup_lines
from ._store import StoreError, default_state_dir

DEFAULT_PORT = 18080
ENDPOINT_ENV = "FARMHAND_MOCKFARM_ENDPOINT"
#: The start of the last line ``serve`` prints once it is up.
READY_LINE = "ready:"
KEY_ID_ENV = "FARMHAND_MOCKFARM_ACCESS_KEY_ID"
SECRET_ENV = "FARMHAND_MOCKFARM_SECRET_ACCESS_KEY"
FINAL = ("SUCCEEDED", "FAILED", "CANCELED", "SUSPENDED", "NOT_COMPATIBLE")

#: openjd parameter type -> the member of Deadline's ``JobParameter`` union.
_WIRE_TYPES = {
    "STRING": "string",
    "PATH": "path",
    "INT": "int",
    "FLOAT": "float",
    "BOOL": "bool",
    "RANGE_EXPR": "rangeExpr",
    "LIST[STRING]": "stringList",
    "LIST[PATH]": "pathList",
    "LIST[INT]": "intList",
    "LIST[FLOAT]": "floatList",
    "LIST[BOOL]": "boolList",
    "LIST[LIST[INT]]": "intListList",
}


class CliError(Exception):
    """A problem to report in one line; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run a mock farm until SIGINT/SIGTERM")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)"
    )
    state = serve.add_mutually_exclusive_group()
    state.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep the farm (its ids, jobs, workers, logs) in a SQLite database in DIR "
        f"(default: {default_state_dir()}); delete DIR to start afresh",
    )
    state.add_argument(
        "--ephemeral",
        action="store_true",
        help="keep everything in memory: a restart starts a new farm",
    )
    serve.add_argument("--faults", type=Path, help="fault config (JSON or YAML); re-read on SIGHUP")
    serve.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3 endpoint for job attachments (MinIO, real S3); default: serve moto's S3 "
        "on the farm's host",
    )
    serve.add_argument(
        "--s3-bucket",
        default=DEFAULT_BUCKET,
        help=f"bucket of the default queue's job attachments (default {DEFAULT_BUCKET})",
    )
    serve.add_argument(
        "--no-s3", action="store_true", help="no job attachments (the default queue has no bucket)"
    )
    serve.add_argument(
        "--update-interval",
        type=int,
        default=15,
        metavar="SECONDS",
        help="updateIntervalSeconds sent to workers (default 15)",
    )
    serve.add_argument(
        "--no-long-poll",
        action="store_true",
        help="answer an idle worker's UpdateWorkerSchedule at once, with the interval, as "
        "the service does (default: hold it until work comes, up to the interval)",
    )
    serve.add_argument(
        "--pipeline-depth",
        type=int,
        default=2,
        metavar="N",
        help="task runs assigned ahead per session (default 2)",
    )
    serve.add_argument(
        "--pipeline-seconds",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="assign more ahead to a session whose task runs are quick: enough for this "
        "much work at their recent pace, up to 64 (default 0: --pipeline-depth only)",
    )
    serve.add_argument(
        "--worker-timeout",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="heartbeat silence before a worker is NOT_RESPONDING (default 180)",
    )
    serve.add_argument(
        "--max-retries",
        type=int,
        default=5,
        metavar="N",
        help="default maxRetriesPerTask of new jobs (default 5)",
    )
    serve.add_argument(
        "--max-sessions",
        type=int,
        default=1,
        metavar="N",
        help="sessions a worker runs at once (default 1)",
    )
    serve.add_argument(
        "--access-key-id",
        default=os.environ.get(KEY_ID_ENV),
        metavar="ID",
        help=f"verify every request's SigV4 signature against this key (also {KEY_ID_ENV}); "
        f"its secret from {SECRET_ENV} or --secret-access-key-file",
    )
    serve.add_argument(
        "--secret-access-key-file",
        type=Path,
        metavar="FILE",
        help="a file holding the secret access key for --access-key-id",
    )
    serve.add_argument(
        "--verify-signatures",
        action="store_true",
        help="verify signatures on loopback too (with a new key pair, printed, unless given)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve beyond loopback without verifying signatures: anyone who reaches the "
        "port can drive the farm",
    )
    monitor = serve.add_mutually_exclusive_group()
    monitor.add_argument(
        "--no-monitor",
        dest="monitor",
        action="store_false",
        help="serve no monitor page (by default it is at /monitor, read-only)",
    )
    monitor.add_argument(
        "--monitor-actions",
        action="store_true",
        help="let the monitor page cancel, suspend and requeue jobs and tasks, change "
        "priorities and stop workers (default: read-only)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every session too")

    submit = commands.add_parser("submit", help="submit a job template")
    submit.add_argument("template", type=Path, help="the job template (JSON or YAML)")
    submit.add_argument(
        "-p",
        "--job-param",
        dest="parameters",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a job parameter: NAME=VALUE, a JSON object, or file://PATH (repeatable)",
    )
    submit.add_argument("--priority", type=int, default=50, help="0-100 (default 50)")
    submit.add_argument("--name", help="override the job's name")
    submit.add_argument("--max-retries-per-task", type=int)
    submit.add_argument("--max-failed-tasks-count", type=int)
    submit.add_argument("--suspended", action="store_true", help="submit with tasks SUSPENDED")
    submit.add_argument("--wait", action="store_true", help="wait until the job finishes")

    status = commands.add_parser("status", help="show jobs and workers, or one job")
    status.add_argument("job_id", nargs="?", help="a job to show in detail")

    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")

    logs = commands.add_parser("logs", help="print a job's session logs")
    logs.add_argument("job_id")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the job ends"
    )

    faults = commands.add_parser("faults", help="show the fault config, or replace it from FILE")
    faults.add_argument("file", nargs="?", type=Path)

    stop = commands.add_parser("stop-worker", help="ask a worker to stop (desiredWorkerStatus)")
    stop.add_argument("worker_id")

    for sub in (submit, status, cancel, logs, faults, stop):
        sub.add_argument(
            "--endpoint",
            default=os.environ.get(ENDPOINT_ENV, f"http://127.0.0.1:{DEFAULT_PORT}"),
            help=f"the farm's URL (default: ${ENDPOINT_ENV} or http://127.0.0.1:{DEFAULT_PORT})",
        )
    for sub in (submit, status, cancel, logs):
        sub.add_argument("--farm-id", help="default: the farm's default farm")
        sub.add_argument("--queue-id", help="default: the farm's default queue")


def main(args: argparse.Namespace) -> int:
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": _serve,
        "submit": _submit,
        "status": _status,
        "cancel": _cancel,
        "logs": _logs,
        "faults": _faults,
        "stop-worker": _stop_worker,
    }
    try:
        return commands[args.command](args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------- serve


def _serve(args: argparse.Namespace) -> int:
    from agent._logging import configure_logging

    keys, generated = _serve_keys(args)  # before any side effect: a refusal changes nothing
    configure_logging(verbose=args.verbose)
    faults = _load_faults(args.faults) if args.faults else None
    try:
        config = FarmConfig(
            update_interval_seconds=args.update_interval,
            long_poll=not args.no_long_poll,
            pipeline_depth=args.pipeline_depth,
            pipeline_seconds=args.pipeline_seconds,
            worker_timeout_seconds=args.worker_timeout,
            max_retries_per_task=args.max_retries,
            max_sessions_per_worker=args.max_sessions,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    s3: S3Config | None = None
    if not args.no_s3:
        if args.s3_endpoint or moto_available():
            s3 = S3Config(endpoint_url=args.s3_endpoint, bucket=args.s3_bucket)
        else:
            print(
                "no S3 for job attachments: moto is not installed (pip install "
                "'farmhand[mockfarm]') and no --s3-endpoint was given",
                file=sys.stderr,
            )
    failures: list[OSError] = []
    try:
        trio.run(_serve_until_signal, args, config, faults, keys, generated, s3)
    except* StoreError as group:
        raise CliError(str(_leaves(group)[0]), 1) from None
    except* OSError as group:
        failures.extend(_leaves(group))
    except* S3Unavailable as group:
        raise CliError(f"no S3 for job attachments: {group.exceptions[0]}", 1) from None
    if failures:
        reason = failures[0].strerror or str(failures[0])
        raise CliError(f"cannot serve on {args.host}:{args.port}: {reason}", 1)
    return 0


def _serve_keys(args: argparse.Namespace) -> tuple[dict[str, str] | None, bool]:
    """The keys requests must be signed with (None: take any), and whether they were
    made up here (and so must be printed)."""
    key_id: str | None = args.access_key_id
    if key_id:
        if args.secret_access_key_file is not None:
            try:
                secret = args.secret_access_key_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise CliError(f"--secret-access-key-file: cannot read it: {exc}") from exc
        else:
            secret = os.environ.get(SECRET_ENV, "")
        if not secret:
            raise CliError(
                f"--access-key-id needs its secret: set {SECRET_ENV} or give "
                "--secret-access-key-file FILE"
            )
        return {key_id: secret}, False
    if args.verify_signatures:
        import secrets

        made = "AKIDFH" + secrets.token_hex(7).upper()
        return {made: secrets.token_urlsafe(30)[:40]}, True
    if not is_loopback(args.host) and not args.insecure:
        raise CliError(
            f"refusing to serve on {args.host} with no signature checks: anyone who can "
            f"reach it could cancel jobs or run commands on its workers. Give "
            f"--access-key-id ID (secret in {SECRET_ENV} or --secret-access-key-file) or "
            "--verify-signatures, or --insecure to serve it open all the same"
        )
    return None, False


_E = TypeVar("_E", bound=BaseException)


def _leaves(group: BaseExceptionGroup[_E]) -> list[_E]:
    found: list[_E] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def _load_faults(path: Path) -> FaultConfig:
    try:
        return FaultConfig.from_file(path)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CliError(str(exc)) from exc


async def _reload_faults(hangups: AsyncIterator[int], farm: MockFarm, path: Path | None) -> None:
    """SIGHUP re-reads the ``--faults`` file."""
    async for _ in hangups:
        if path is None:
            continue
        try:
            farm.set_faults(FaultConfig.from_file(path))
        except (OSError, ValueError) as exc:
            print(f"faults not reloaded: {exc}", file=sys.stderr, flush=True)
        else:
            print(f"faults reloaded from {path}", flush=True)


async def _serve_until_signal(
    args: argparse.Namespace,
    config: FarmConfig,
    faults: FaultConfig | None,
    keys: dict[str, str] | None,
    generated: bool,
    s3: S3Config | None = None,
) -> None:
    state_dir = None if args.ephemeral else (args.state_dir or default_state_dir())
    stopping = trio.Event()

    def _stop(request: StopRequest) -> None:
        print("shutting down", flush=True)
        stopping.set()

    with (
        open_stop_signals() as stops,
        trio.open_signal_receiver(signal.SIGHUP) as hangups,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_server_on_signals, stops, _stop)
            async with open_mock_farm(
                config=config,
                faults=faults,
                host=args.host,
                port=args.port,
                keys=keys,
                s3=s3,
                state_dir=state_dir,
                monitor=MonitorConfig(actions=args.monitor_actions) if args.monitor else None,
            ) as farm:
                tune_gc()
                if state_dir is None:
                    print("state in memory only (--ephemeral): a restart starts a new farm")
                else:
                    print(
                        f"state in {state_dir} ({counted(len(farm.state.jobs), 'job')}, "
                        f"{counted(len(farm.state.workers), 'worker')}); delete it to start afresh"
                    )
                if farm.s3 is not None:
                    print(
                        f"job attachments: s3://{farm.s3.bucket}/{farm.s3.root_prefix} "
                        f"at {farm.s3_endpoint_url}"
                    )
                    print(f"  export AWS_ENDPOINT_URL_S3={farm.s3_endpoint_url}")
                key_id, secret = farm.access_key
                for line in setup_lines(
                    farm.info(),
                    (key_id, secret),
                    verified=keys is not None,
                    secret_known=keys is None or generated,
                    endpoint_env=ENDPOINT_ENV,
                ):
                    print(line)
                if farm.monitor is not None:
                    mode = "actions allowed" if args.monitor_actions else "read-only"
                    print(f"monitor: {farm.monitor_url} ({mode})")
                # Last, and flushed with the rest: a script (or a test) that waits for this
                # line has everything above it.
                print(f"{READY_LINE} SIGINT or SIGTERM stops the farm, SIGHUP re-reads --faults")
                print(end="", flush=True)
                nursery.start_soon(_reload_faults, hangups, farm, args.faults)
                await stopping.wait()
            nursery.cancel_scope.cancel(reason="the farm has stopped")


# ---------------------------------------------------------------- the client side


class _Farm:
    """A running farm's boto3 clients and default ids."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.endpoint = args.endpoint.rstrip("/")
        info = self._info()
        self.farm_id: str = getattr(args, "farm_id", None) or info["farmId"]
        self.queue_id: str = getattr(args, "queue_id", None) or info["queueId"]
        self.fleet_id: str = info["fleetId"]
        region = info.get("region", "us-west-2")
        from botocore.config import Config

        # A person at a terminal is better served by a few retries than by a throttle.
        retries = Config(retries={"mode": "standard", "total_max_attempts": 4})
        # A farm that verifies signatures needs the keys it was given (the environment's).
        keys = {}
        if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
            keys = {
                "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            }
        self.deadline = make_client(
            "deadline", self.endpoint, region=region, config=retries, **keys
        )
        self.logs = make_client("logs", self.endpoint, region=region, config=retries, **keys)

    def _info(self) -> dict[str, Any]:
        try:
            response = httpx.get(f"{self.endpoint}/_mockfarm/info", timeout=10)
        except httpx.HTTPError as exc:
            raise CliError(f"no mock farm at {self.endpoint}: {exc}", 1) from exc
        if response.status_code != 200:
            raise CliError(f"{self.endpoint} is not a farmhand mock farm", 1)
        return dict(response.json())

    def call(self, fn: Callable[..., Any], **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise CliError(f"{error.get('Code')}: {error.get('Message')}", 1) from exc
        except BotoCoreError as exc:
            raise CliError(str(exc), 1) from exc

    def job_params(self, job_id: str) -> dict[str, str]:
        return {"farmId": self.farm_id, "queueId": self.queue_id, "jobId": job_id}


def _job_parameters(template: Path, arguments: Sequence[str]) -> dict[str, dict[str, Any]]:
    from agent.local._templates import TemplateError, parse_job_parameters, read_document

    try:
        document = read_document(template)
        values = parse_job_parameters(arguments)
    except TemplateError as exc:
        raise CliError(str(exc)) from exc
    types = {
        str(d.get("name")): str(d.get("type", "STRING")).upper()
        for d in document.get("parameterDefinitions") or ()
        if isinstance(d, dict)
    }
    wire: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        key = _WIRE_TYPES.get(types.get(name, "STRING"), "string")
        if key.endswith("List") or key == "intListList":
            if not isinstance(value, list):
                raise CliError(
                    f"job parameter {name} is a list; give it as JSON, e.g. -p '{{\"{name}\": [...]}}'"
                )
            wire[name] = {key: _list_values(value)}
        elif isinstance(value, bool):
            wire[name] = {key: "true" if value else "false"}
        else:
            wire[name] = {key: str(value)}
    return wire


def _list_values(values: list[Any]) -> list[Any]:
    return [
        _list_values(v)
        if isinstance(v, list)
        else str(v).lower()
        if isinstance(v, bool)
        else str(v)
        for v in values
    ]


def _submit(args: argparse.Namespace) -> int:
    parameters = _job_parameters(args.template, args.parameters)
    try:
        text = args.template.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {args.template}: {exc.strerror or exc}") from exc
    farm = _Farm(args)
    request: dict[str, Any] = {
        "farmId": farm.farm_id,
        "queueId": farm.queue_id,
        "template": text,
        "templateType": "JSON" if args.template.suffix.lower() == ".json" else "YAML",
        "priority": args.priority,
        "parameters": parameters,
    }
    if args.name:
        request["nameOverride"] = args.name
    if args.max_retries_per_task is not None:
        request["maxRetriesPerTask"] = args.max_retries_per_task
    if args.max_failed_tasks_count is not None:
        request["maxFailedTasksCount"] = args.max_failed_tasks_count
    if args.suspended:
        request["targetTaskRunStatus"] = "SUSPENDED"
    from botocore.exceptions import ClientError

    try:
        job_id = farm.deadline.create_job(**request)["jobId"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = 2 if error.get("Code") == "ValidationException" else 1
        raise CliError(f"{error.get('Code')}: {error.get('Message')}", status) from exc
    print(job_id, flush=True)
    if not args.wait:
        return 0
    started = time.monotonic()
    # On a terminal, where the job stands while a person waits; piped, nothing.
    with StatusLine(sys.stderr) as line:
        while True:
            job = farm.call(farm.deadline.get_job, **farm.job_params(job_id))
            if job.get("taskRunStatus") in FINAL:
                line.clear()
                print(job["taskRunStatus"])
                return 0 if job["taskRunStatus"] == "SUCCEEDED" else 1
            line.show(f"[farmhand] waiting for the job: {_standing(job, started)}")
            time.sleep(1)


def _standing(job: dict[str, Any], started: float) -> str:
    """``RUNNING, 3 of 10 tasks succeeded, 12 s`` (the job's id is on the line above)."""
    counts = job.get("taskRunStatusCounts") or {}
    done, total = counts.get("SUCCEEDED", 0), sum(counts.values())
    return (
        f"{job.get('taskRunStatus', '?')}, {done} of {counted(total, 'task')} succeeded, "
        f"{time.monotonic() - started:.0f} s"
    )


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{status.lower()}={n}" for status, n in counts.items() if n)


def _status(args: argparse.Namespace) -> int:
    farm = _Farm(args)
    d = farm.deadline
    if args.job_id:
        job = farm.call(d.get_job, **farm.job_params(args.job_id))
        print(
            f"{job['jobId']}  {job['name']}  {job.get('taskRunStatus')}  priority {job['priority']}"
        )
        print(f"  tasks: {_counts(job.get('taskRunStatusCounts', {}))}")
        steps = farm.call(d.list_steps, **farm.job_params(args.job_id))["steps"]
        for step in steps:
            print(
                f"  step {step['name']:<24} {step['taskRunStatus']:<12} {_counts(step['taskRunStatusCounts'])}"
            )
        sessions = farm.call(d.list_sessions, **farm.job_params(args.job_id))["sessions"]
        for session in sessions:
            print(f"  {session['sessionId']}  {session['workerId']}  {session['lifecycleStatus']}")
        return 0
    jobs = farm.call(d.list_jobs, farmId=farm.farm_id, queueId=farm.queue_id)["jobs"]
    print(f"queue {farm.queue_id}: {counted(len(jobs), 'job')}")
    for job in jobs:
        counts = job.get("taskRunStatusCounts", {})
        total = sum(counts.values())
        print(
            f"  {job['jobId']}  {job.get('taskRunStatus', ''):<12} "
            f"{counts.get('SUCCEEDED', 0)}/{total} succeeded  {job['name']}"
        )
    workers = farm.call(d.list_workers, farmId=farm.farm_id, fleetId=farm.fleet_id)["workers"]
    print(f"fleet {farm.fleet_id}: {counted(len(workers), 'worker')}")
    for worker in workers:
        host = (worker.get("hostProperties") or {}).get("hostName", "")
        print(f"  {worker['workerId']}  {worker['status']:<14} {host}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    farm = _Farm(args)
    farm.call(
        farm.deadline.update_job, targetTaskRunStatus="CANCELED", **farm.job_params(args.job_id)
    )
    print(f"{args.job_id} canceled")
    return 0


def _logs(args: argparse.Namespace) -> int:
    farm = _Farm(args)
    d = farm.deadline
    tokens: dict[str, str | None] = {}
    while True:
        sessions = farm.call(d.list_sessions, **farm.job_params(args.job_id))["sessions"]
        for session in sessions:
            session_id = session["sessionId"]
            if session_id not in tokens:
                print(f"== {session_id} on {session['workerId']} ==", flush=True)
                tokens[session_id] = None
            detail = farm.call(d.get_session, sessionId=session_id, **farm.job_params(args.job_id))
            options = detail["log"].get("options", {})
            tokens[session_id] = _print_stream(
                farm, options["logGroupName"], options["logStreamName"], tokens[session_id]
            )
        if not args.follow:
            return 0
        job = farm.call(d.get_job, **farm.job_params(args.job_id))
        if job.get("taskRunStatus") in FINAL and all(
            s["lifecycleStatus"] == "ENDED" for s in sessions
        ):
            return 0
        time.sleep(1)


def _print_stream(farm: _Farm, group: str, stream: str, token: str | None) -> str | None:
    from botocore.exceptions import ClientError

    while True:
        params: dict[str, Any] = {
            "logGroupName": group,
            "logStreamName": stream,
            "startFromHead": True,
        }
        if token:
            params["nextToken"] = token
        try:
            page = farm.logs.get_log_events(**params)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return token
            raise
        for event in page["events"]:
            print(event["message"], flush=True)
        if page["nextForwardToken"] == token or not page["events"]:
            return str(page["nextForwardToken"])
        token = page["nextForwardToken"]


def _faults(args: argparse.Namespace) -> int:
    endpoint = args.endpoint.rstrip("/")
    try:
        if args.file is None:
            response = httpx.get(f"{endpoint}/_mockfarm/faults", timeout=10)
        else:
            config = _load_faults(args.file)
            response = httpx.put(
                f"{endpoint}/_mockfarm/faults", content=json.dumps(config.to_dict()), timeout=10
            )
    except httpx.HTTPError as exc:
        raise CliError(f"no mock farm at {endpoint}: {exc}", 1) from exc
    if response.status_code != 200:
        raise CliError(response.json().get("message", response.text), 1)
    print(json.dumps(response.json(), indent=2))
    return 0


def _stop_worker(args: argparse.Namespace) -> int:
    endpoint = args.endpoint.rstrip("/")
    try:
        response = httpx.post(f"{endpoint}/_mockfarm/workers/{args.worker_id}/stop", timeout=10)
    except httpx.HTTPError as exc:
        raise CliError(f"no mock farm at {endpoint}: {exc}", 1) from exc
    if response.status_code != 200:
        raise CliError(response.json().get("message", response.text), 1)
    print(f"{args.worker_id} asked to stop")
    return 0
