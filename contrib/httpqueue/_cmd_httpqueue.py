"""``python -m agent httpqueue``: the HTTP job queue worker, its server, and a client.

::

    python -m agent httpqueue worker --server URL --shared-dir DIR (--command CMD | --image IMAGE) [...]
    python -m agent httpqueue serve [--host 127.0.0.1] [--port 8470] [--store jobs.json|jobs.sqlite]
    python -m agent httpqueue submit --config-path PATH [--name NAME] [--require-tool NAME=SPEC]...
        [--require-gpus N] [--require-label LABEL]... [--timeout S] [--priority N] [--wait]
    python -m agent httpqueue status [JOB_ID]
    python -m agent httpqueue cancel JOB_ID
    python -m agent httpqueue stop JOB_ID
    python -m agent httpqueue workers

The client commands talk to ``--server``, else ``OPEVA_SERVER``, else ``SERVER``,
else ``http://127.0.0.1:8470``. Exit status: 0 on success (``submit --wait``: the
job finished), 1 when the server answers with an error, is unreachable, or
the job did not finish, 2 for a bad option or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

DEFAULT_PORT = 8470
DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"
_FINAL = ("finished", "failed", "canceled", "stopped")


class CliError(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def configure(parser: argparse.ArgumentParser) -> None:
    from ._auth import add_client_arguments, add_server_arguments
    from ._queueconfig import configure_parser

    commands = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    worker = commands.add_parser("worker", help="take jobs from a job server and run them")
    configure_parser(worker)

    serve = commands.add_parser("serve", help="run the reference job server until SIGINT/SIGTERM")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)"
    )
    serve.add_argument(
        "--store",
        default="httpqueue-jobs.json",
        help="where jobs are kept: FILE.json, FILE.sqlite (or .db), or :memory: "
        "(default httpqueue-jobs.json)",
    )
    serve.add_argument(
        "--assignment-timeout",
        type=float,
        default=60.0,
        help="seconds an assigned job waits to be reported running before it is requeued (60)",
    )
    serve.add_argument(
        "--worker-timeout",
        type=float,
        default=120.0,
        help="seconds of silence after which a worker's running jobs fail as 'worker lost' (120)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every request's effect")
    add_server_arguments(serve)

    def client(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_)
        sub.add_argument(
            "--server", help=f"the job server (OPEVA_SERVER or SERVER; default {DEFAULT_SERVER})"
        )
        add_client_arguments(sub)
        return sub

    submit = client("submit", help_="submit a job; prints its id")
    submit.add_argument(
        "--config-path", required=True, help="the job's config file (the job uses it)"
    )
    submit.add_argument("--name", dest="job_name", help="the job's name (default: its id)")
    submit.add_argument(
        "--require-tool",
        action="append",
        default=[],
        metavar="NAME[=SPEC]",
        help="a tool the worker must have, at a version like >=3.10 (repeatable)",
    )
    submit.add_argument("--require-gpus", type=int, help="GPUs the worker must have")
    submit.add_argument(
        "--require-label", action="append", default=[], metavar="LABEL", help="(repeatable)"
    )
    submit.add_argument("--timeout", type=float, help="seconds the job may run at most")
    submit.add_argument("--priority", type=int, help="0-100, higher first (default 50)")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end")
    status = client("status", help_="list the jobs, or show one")
    status.add_argument("job_id", nargs="?")
    status.add_argument("--json", action="store_true", help="print JSON")
    for name, help_ in (("cancel", "cancel a job"), ("stop", "stop a running job")):
        sub = client(name, help_=help_)
        sub.add_argument("job_id")
    client("workers", help_="what each worker said in its last heartbeat")


def main(args: argparse.Namespace) -> int:
    try:
        if args.command_name == "worker":
            return _worker(args)
        if args.command_name == "serve":
            return _serve(args)
        return _client(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status


# ------------------------------------------------------------------ worker


def _worker(args: argparse.Namespace) -> int:
    from actors import Containment
    from agent import configure_logging

    from ._auth import ConfigError
    from ._queueconfig import load_config
    from ._queueworker import QueueWorker

    try:
        config = load_config(args, environ=os.environ)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from exc
    configure_logging(level=getattr(logging, config.log_level.upper()))
    # The watchdog kills the jobs' processes even if this process is killed outright.
    containment = Containment()
    containment.start_watchdog()

    async def run() -> None:
        worker = QueueWorker(config, containment=containment)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.shutdown.watch_signals)
            # Each job is a session of its own: its launcher is started ahead.
            await nursery.start(containment.keep_spare_launcher)
            await worker.run()
            nursery.cancel_scope.cancel(reason="the worker has stopped")

    try:
        trio.run(run)
    finally:
        containment.close()
    return 0


# ------------------------------------------------------------------ server


def _serve(args: argparse.Namespace) -> int:
    from agent import configure_logging
    from agent.jobs import open_stop_signals, stop_server_on_signals

    from ._auth import ConfigError, ServerTls, check_exposure, read_token
    from ._queue import QueueConfig
    from ._queueserver import open_job_server
    from ._store import StoreError, open_store

    configure_logging(verbose=args.verbose)
    for name in ("assignment_timeout", "worker_timeout"):
        if not getattr(args, name) > 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive", 2)
    try:
        token = read_token(args.token_file, os.environ)
        tls = ServerTls.from_args(args)
        check_exposure(args.host, token=token, tls=tls, insecure=args.insecure)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from exc
    try:
        store = open_store(None if args.store == ":memory:" else Path(args.store))
    except StoreError as exc:
        raise CliError(str(exc), 2) from exc
    config = QueueConfig(
        assignment_timeout=args.assignment_timeout, worker_timeout=args.worker_timeout
    )

    async def run() -> None:
        stopping = trio.Event()
        with open_stop_signals() as stops:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_server_on_signals, stops, lambda _: stopping.set())
                await serve_jobs(stopping)
                nursery.cancel_scope.cancel(reason="the server has stopped")

    async def serve_jobs(stopping: trio.Event) -> None:
        async with open_job_server(
            store=store, config=config, host=args.host, port=args.port, token=token, tls=tls
        ) as server:
            jobs = len(server.queue.jobs)
            guard = "open to anyone who reaches it" if token is None else "token required"
            if tls is not None and tls.client_ca is not None:
                guard += ", client certificates required"
            print(f"httpqueue server on {server.url} ({store.description}, {jobs} jobs; {guard})")
            print(f"export OPEVA_SERVER={server.url}", flush=True)
            await stopping.wait()

    try:
        trio.run(run)
    except BaseExceptionGroup as group:
        # hypercorn binds inside the server's nursery: a busy port arrives in a group.
        matched, rest = group.split((OSError, StoreError))
        if matched is None or rest is not None:
            raise
        raise _serve_error(matched, args) from group
    except (OSError, StoreError) as exc:
        raise _serve_error(exc, args) from exc
    return 0


def _serve_error(exc: BaseException, args: argparse.Namespace) -> CliError:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, OSError):
        return CliError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", 1)
    return CliError(str(exc), 2)


# ------------------------------------------------------------------ client


def _request(
    server: str, method: str, path: str, body: Any = None, *, auth: dict[str, Any] | None = None
) -> Any:
    try:
        with httpx.Client(timeout=30.0, **(auth or {})) as http:
            response = http.request(method, f"{server}{path}", json=body)
    except httpx.HTTPError as exc:
        raise CliError(f"no job server at {server}: {exc}") from exc
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 400:
        message = answer.get("error") if isinstance(answer, dict) else response.text
        raise CliError(f"{server} says: {message or response.reason_phrase}")
    return answer


def _requirements(args: argparse.Namespace) -> dict[str, Any]:
    requirements: dict[str, Any] = {}
    tools: dict[str, str] = {}
    for item in args.require_tool:
        name, _, spec = item.partition("=")
        if not name.strip():
            raise CliError(f"--require-tool: {item!r} must be NAME or NAME=SPEC", 2)
        tools[name.strip()] = spec.strip()
    if tools:
        requirements["tools"] = tools
    if args.require_gpus:
        requirements["gpus"] = args.require_gpus
    if args.require_label:
        requirements["labels"] = args.require_label
    return requirements


def _client(args: argparse.Namespace) -> int:
    server = (
        args.server or os.environ.get("OPEVA_SERVER") or os.environ.get("SERVER") or DEFAULT_SERVER
    ).rstrip("/")
    from ._auth import ClientAuth, ConfigError

    try:
        options = ClientAuth.from_args(args, os.environ).httpx_options()
    except ConfigError as exc:
        raise CliError(str(exc), 2) from exc
    request = partial(_request, auth=options)
    command = args.command_name
    if command == "submit":
        body: dict[str, Any] = {"config_path": args.config_path}
        for name in ("job_name", "timeout", "priority"):
            if getattr(args, name) is not None:
                body[name] = getattr(args, name)
        requirements = _requirements(args)
        if requirements:
            body["requirements"] = requirements
        job = request(server, "POST", "/api/jobs", body)
        print(job["job_id"], flush=True)
        if not args.wait:
            return 0
        while job["status"] not in _FINAL:
            time.sleep(1.0)
            job = request(server, "GET", f"/api/jobs/{job['job_id']}")
        print(_line(job))
        return 0 if job["status"] == "finished" else 1
    if command == "status":
        if args.job_id:
            print(json.dumps(request(server, "GET", f"/api/jobs/{args.job_id}"), indent=2))
            return 0
        jobs = request(server, "GET", "/api/jobs")["jobs"]
        if args.json:
            print(json.dumps(jobs, indent=2))
        else:
            for job in jobs:
                print(_line(job))
        return 0
    if command in ("cancel", "stop"):
        job = request(server, "POST", f"/api/jobs/{args.job_id}/{command}")
        print(_line(job))
        return 0
    workers = request(server, "GET", "/api/workers")["workers"]
    for worker in workers:
        print(
            f"{worker['worker_id']}  {worker['state']}  free {worker['free_slots']}/"
            f"{worker['slots']}  running {','.join(worker['running_jobs']) or '-'}  "
            f"seen {worker['seconds_since_seen']:.0f} s ago"
        )
    return 0


def _line(job: dict[str, Any]) -> str:
    parts = [job["job_id"], job["status"].ljust(8), job.get("job_name") or ""]
    if job.get("worker_id"):
        parts.append(f"on {job['worker_id']}")
    if job.get("error"):
        parts.append(f"error: {job['error']}")
    return "  ".join(parts)
