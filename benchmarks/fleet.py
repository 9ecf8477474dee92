"""Many embedded workers in one process against one mock farm.

    python -m benchmarks.fleet [--workers 1000] [--pools lanes,one] [--group 16]
        [--starts 4] [--tasks-per-worker 1] [--update-interval 15] [--idle-seconds 15]
        [--limit 240] [--baseline-limit 90]

    python -m benchmarks.fleet --workers 2000 --pools lanes   # 2,000 workers, < 5 min

The mock farm runs in its own process (``python -m agent mockfarm serve``), so
this process holds only the workers: ``agent.open_agent`` N times, sharing one
endpoint resolution and one containment watchdog, as a host embedding many
workers would, and their connection pools laid out as ``--pools`` says:

- ``lanes``: ``agent.open_fleet_http`` (a pool per ``--group`` workers, and
  UpdateWorkerSchedule, the heartbeat, on a pool of its own; at most
  ``--starts`` sessions of the fleet starting at once, 0 for no limit);
- ``one`` (the baseline): one pool of 200 connections for every call.

For each N and layout (a run that takes longer than ``--limit`` seconds, or
``--baseline-limit`` for ``one``, is reported as not done, with the attempts that
ran past the client's limit by then):

1. **start-up**: all N bootstrap (CreateWorker, AssumeFleetRoleForWorker,
   UpdateWorker) and heartbeat; the memory this process gained, per worker;
2. **work**: one job of N x ``--tasks-per-worker`` short tasks (``true``);
   tasks per second from its first task's start to its end (the job's
   ``startedAt`` and ``endedAt``), and from its submission (which includes the
   workers noticing it, at their next heartbeat);
3. **idle**: ``--idle-seconds`` of heartbeats only; this process's CPU;
4. **punctuality**, two measures, p99 and worst, at start-up, while the job
   ran and while idle:

   - **UpdateWorkerSchedule lateness, as the farm sees it** (the target's
     measure): every answer to an UpdateWorkerSchedule asks for the next call
     within its ``updateIntervalSeconds`` (0 while the farm holds an idle
     worker's call: then at once). Each answer is one due call: it is on time
     (0) if the worker's next UpdateWorkerSchedule started going out on the wire
     by then, else late by how long after. Timed at the wire in this process
     (httpcore's ``send_request_headers`` trace event, so a call waiting for a
     connection, for signing or for the CPU is not yet sent), so it does not
     depend on how the heartbeat is built; a due time that passes with no call
     by the end of its phase counts as late until then. Phases by due time.
   - the heartbeat's own lateness (how long after its slot on the heartbeat's
     grid a beat started), as the worker reports it (``heartbeat_lateness_p99``);

   and the attempts of any call that got no answer within the client's attempt
   limit (60 s). Target (issue 16): p99 under 1 s, none past the limit;

then every worker drains. Each N runs in a fresh process (so memory is not
shared between sizes); the baseline for memory is that process's RSS before
its first worker. The heartbeat interval is the farm's ``--update-interval``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import structlog
import trio

import agent
from actors import Containment
from agent._logging import configure_logging
from agent.deadline import CredentialHolder, ServiceEndpoint, static_credentials
from agent.mockfarm import make_client
from benchmarks._common import ROOT, add_json_option, table, write_results


def template(tasks: int) -> dict[str, Any]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "fleet",
        "steps": [
            {
                "name": "T",
                "parameterSpace": {
                    "taskParameterDefinitions": [
                        {"name": "I", "type": "INT", "range": f"1-{tasks}"}
                    ]
                },
                "script": {"actions": {"onRun": {"command": "true"}}},
            }
        ],
    }


_SCHEDULE = re.compile(r"/workers/([^/]+)/schedule$")
_INTERVAL = re.compile(rb'"updateIntervalSeconds"\s*:\s*(\d+)')


class ScheduleClock:
    """Every UpdateWorkerSchedule of every worker, timed at the wire (``trio.current_time()``):
    when its request headers started going out, and when its answer was read and
    what ``updateIntervalSeconds`` it gave. ``watch`` a client to record its calls."""

    def __init__(self) -> None:
        #: Per worker id, in order: ("sent", time, 0) and ("answered", time, interval).
        self.events: dict[str, list[tuple[str, float, float]]] = {}

    def watch(self, client: httpx.AsyncClient) -> None:
        hooks = client.event_hooks
        client.event_hooks = {
            "request": [*hooks["request"], self._on_request],
            "response": [*hooks["response"], self._on_response],
        }

    async def _on_request(self, request: httpx.Request) -> None:
        match = _SCHEDULE.search(request.url.path)
        if match is None:
            return
        events = self.events.setdefault(match[1], [])

        async def trace(name: str, info: dict[str, Any]) -> None:
            if name == "http11.send_request_headers.started":
                events.append(("sent", trio.current_time(), 0.0))

        request.extensions = {**request.extensions, "trace": trace}

    async def _on_response(self, response: httpx.Response) -> None:
        match = _SCHEDULE.search(response.request.url.path)
        if match is None or response.status_code >= 300:
            return
        body = await response.aread()
        found = _INTERVAL.search(body)
        if found is not None:
            self.events[match[1]].append(("answered", trio.current_time(), float(found[1])))

    def lateness(self, start: float, end: float) -> list[float]:
        """How late each call due in [start, end) was (see ``due_lateness``), all workers."""
        return [
            late
            for events in self.events.values()
            for due, late in due_lateness(events, end)
            if start <= due < end
        ]


def due_lateness(events: list[tuple[str, float, float]], end: float) -> list[tuple[float, float]]:
    """(due time, lateness) of each call one worker owed its farm: every answer asks
    for the next call within its interval; the call is late by how long after that
    it went out (0 if by then), and one still not out by ``end`` is late until ``end``."""
    owed: list[tuple[float, float]] = []
    due: float | None = None
    for kind, at, interval in events:
        if kind == "answered":
            due = at + interval
        elif due is not None:
            owed.append((due, max(0.0, at - due)))
            due = None
    if due is not None and due < end:
        owed.append((due, end - due))
    return owed


@contextmanager
def mock_farm(update_interval: int) -> Iterator[dict[str, str]]:
    """``python -m agent mockfarm serve --ephemeral`` on a free port; its endpoint and ids."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "mockfarm",
            "serve",
            "--ephemeral",
            "--port",
            "0",
            "--update-interval",
            str(update_interval),
            "--max-retries",
            "0",
            "--worker-timeout",
            "3600",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    found: dict[str, str] = {}
    for line in process.stdout:
        if match := re.match(r"mock farm listening on (\S+)", line):
            found["endpoint"] = match[1]
        elif match := re.match(r"\s+(farm|fleet|queue)\s+(\S+)", line):
            found[match[1]] = match[2]
        if len(found) == 4:
            break
    try:
        yield found
    finally:
        process.terminate()
        process.wait(timeout=30)


async def fleet(
    n: int,
    farm: dict[str, str],
    args: argparse.Namespace,
    root: Path,
    progress: dict[str, Any],
) -> dict[str, Any]:
    """One size; ``progress`` says how far it got (for a run cut off by --limit)."""
    me = psutil.Process()
    endpoint = farm["endpoint"]
    endpoints = agent.Endpoints(
        ServiceEndpoint("deadline", endpoint, "us-west-2", inject_host_prefix=False),
        ServiceEndpoint("logs", endpoint, "us-west-2", inject_host_prefix=False),
    )
    deadline = make_client("deadline", endpoint)
    containment = Containment()
    containment.start_watchdog()
    workers: list[agent.Worker] = []
    clock = progress["clock"] = ScheduleClock()
    watched: set[int] = set()
    all_up = trio.Event()
    done = trio.Event()
    # The baseline ("one"): one pool of 200 connections for every call of every
    # worker. "lanes": agent.open_fleet_http, a pair of pools per group of workers,
    # UpdateWorkerSchedule (the heartbeat) on a pool of its own.
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as http,
        agent.open_fleet_http(
            group=args.group, attempt_seconds=60.0, starts=args.starts or 1
        ) as pools,
        trio.open_nursery() as nursery,
    ):
        rss0 = me.memory_info().rss

        async def one(index: int) -> None:
            config = agent.WorkerConfig(
                farm_id=farm["farm"],
                fleet_id=farm["fleet"],
                worker_persistence_dir=root / f"w{index}" / "persistence",
                worker_logs_dir=root / f"w{index}" / "logs",
                session_root_dir=root / "sessions",
                run_jobs_as_agent_user=True,
                no_shutdown=True,
                drain_grace_seconds=0,
                # No GPU probe per worker: one host, N workers.
                capabilities=agent.Capabilities(
                    {"amount.worker.gpu": 0, "amount.worker.gpu.memory": 0}
                ),
            )
            lane = pools.for_worker(index) if args.pools == "lanes" else None
            schedule_client = lane["schedule_http"] if lane else http
            if id(schedule_client) not in watched:
                watched.add(id(schedule_client))
                clock.watch(schedule_client)
            async with agent.open_agent(
                config,
                http=lane["http"] if lane else http,
                schedule_http=lane["schedule_http"] if lane else None,
                session_starts=lane["session_starts"] if lane and args.starts else None,
                endpoints=endpoints,
                bootstrap_credentials=CredentialHolder(static_credentials("AKIDFLEET", "fleet")),
                containment=containment,
            ) as worker:
                workers.append(worker)
                if len(workers) == n:
                    all_up.set()
                await done.wait()
                await worker.drain(0)

        start = time.perf_counter()
        t_start = progress["t_start"] = trio.current_time()
        for index in range(n):
            nursery.start_soon(one, index)
        await all_up.wait()
        # Wait for every worker's first heartbeat, then measure memory.
        while any(w.statistics().heartbeat_age is None for w in workers):
            await trio.sleep(0.1)
        startup = progress["startup_seconds"] = time.perf_counter() - start
        per_worker = (me.memory_info().rss - rss0) / n / 2**20

        tasks = n * args.tasks_per_worker
        submitted = time.perf_counter()
        t_submitted = progress["t_submitted"] = trio.current_time()
        cpu_submitted = _cpu()
        job_id = (
            await trio.to_thread.run_sync(
                lambda: deadline.create_job(
                    farmId=farm["farm"],
                    queueId=farm["queue"],
                    template=json.dumps(template(tasks)),
                    templateType="JSON",
                    priority=50,
                )
            )
        )["jobId"]
        while True:
            await trio.sleep(0.5)
            job = await trio.to_thread.run_sync(
                lambda: deadline.get_job(farmId=farm["farm"], queueId=farm["queue"], jobId=job_id)
            )
            if job["taskRunStatus"] in ("SUCCEEDED", "FAILED", "CANCELED"):
                break
        work_seconds = time.perf_counter() - submitted
        t_job_end = trio.current_time()
        work_cpu = _cpu() - cpu_submitted
        status = job["taskRunStatus"]
        busy_seconds = (job["endedAt"] - job["startedAt"]).total_seconds()

        # Every beat's lateness is kept by the heartbeat (the last 1024 per worker).
        busy_beats = [list(w._heartbeat._lateness) for w in workers]
        cpu0 = _cpu()
        await trio.sleep(args.idle_seconds)
        idle_cpu = (_cpu() - cpu0) / args.idle_seconds * 100
        t_idle_end = trio.current_time()
        owed = {
            "startup": clock.lateness(t_start, t_submitted),
            "working": clock.lateness(t_submitted, t_job_end),
            "idle": clock.lateness(t_job_end, t_idle_end),
        }
        idle_beats = [
            late
            for w, before in zip(workers, busy_beats, strict=True)
            for late in list(w._heartbeat._lateness)[len(before) :]
        ]
        done.set()
    containment.close()
    busy = [late for beats in busy_beats for late in beats]
    return {
        "workers": n,
        "pools": args.pools,
        "attempts_past_limit": _TIMED_OUT[0],
        "startup_seconds": startup,
        "memory_per_worker_mib": per_worker,
        "tasks": tasks,
        "status": status,
        "tasks_per_second_running": tasks / busy_seconds,
        "tasks_per_second_from_submission": tasks / work_seconds,
        "idle_cpu_percent": idle_cpu,
        # This process's CPU (user + system) from the job's submission to its end.
        "work_cpu_seconds": work_cpu,
        # UpdateWorkerSchedule lateness as the farm sees it, seconds (see the docstring):
        # one figure per due call, by phase.
        **{f"uws_lateness_p99_{phase}": _p99(values) for phase, values in owed.items()},
        **{
            f"uws_lateness_max_{phase}": max(values, default=None) for phase, values in owed.items()
        },
        **{f"uws_due_{phase}": len(values) for phase, values in owed.items()},
        **{
            f"uws_late_1s_{phase}": sum(late >= 1.0 for late in values)
            for phase, values in owed.items()
        },
        # The heartbeat's own lateness, seconds: how long after its slot each beat
        # started (start-up and job together, then idle).
        "lateness_p99_working": _p99(busy),
        "lateness_p99_idle": _p99(idle_beats),
        "lateness_max_working": max(busy, default=None),
        "lateness_max_idle": max(idle_beats, default=None),
    }


def _progress(progress: dict[str, Any]) -> dict[str, Any]:
    """What a run cut off by --limit got done: its start-up, and the UpdateWorkerSchedule
    lateness up to then (the job's, from its submission)."""
    found: dict[str, Any] = {"startup_seconds": progress.get("startup_seconds")}
    clock: ScheduleClock | None = progress.get("clock")
    if clock is not None:
        now = trio.current_time()
        begin = progress.get("t_submitted", progress["t_start"])
        late = clock.lateness(begin, now)
        found["uws_lateness_p99_so_far"] = _p99(late)
        found["uws_lateness_max_so_far"] = max(late, default=None)
        found["uws_late_1s_so_far"] = sum(value >= 1.0 for value in late)
        found["uws_due_so_far"] = len(late)
        found["phase"] = "job" if "t_submitted" in progress else "start-up"
    return found


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: Attempts that got no answer within the client's attempt limit (any client, any call).
_TIMED_OUT = [0]


def _count_timeouts(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if "no answer within" in str(event.get("error", "")):
        _TIMED_OUT[0] += 1
    return event


def _row(result: dict[str, Any]) -> list[object]:
    if "timed_out" in result:
        return [
            result["workers"],
            result["pools"],
            f"not done in {result['timed_out']:g} s ({result.get('phase', '?')}; "
            f"UWS p99 so far {result.get('uws_lateness_p99_so_far') or 0:.1f} s)",
            *["-"] * 8,
            result["attempts_past_limit"],
        ]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f} ms"

    return [
        result["workers"],
        result["pools"],
        f"{result['startup_seconds']:.1f} s",
        f"{result['memory_per_worker_mib']:.2f} MiB",
        f"{result['tasks_per_second_running']:.0f} / {result['tasks_per_second_from_submission']:.0f}"
        + ("" if result["status"] == "SUCCEEDED" else f" ({result['status']})"),
        f"{result['work_cpu_seconds']:.1f} s",
        f"{result['idle_cpu_percent']:.1f} %",
        " / ".join(ms(result[f"uws_lateness_p99_{phase}"]) for phase in _PHASES),
        " / ".join(ms(result[f"uws_lateness_max_{phase}"]) for phase in _PHASES),
        " / ".join(
            f"{result[f'uws_late_1s_{phase}']}/{result[f'uws_due_{phase}']}" for phase in _PHASES
        ),
        f"{ms(result['lateness_p99_working'])} / {ms(result['lateness_p99_idle'])}",
        result["attempts_past_limit"],
    ]


_PHASES = ("startup", "working", "idle")


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def measure(args: argparse.Namespace) -> int:
    rows: list[list[object]] = [
        [
            "workers",
            "pools",
            "start-up",
            "memory/worker",
            "tasks/s (running / from submission)",
            "CPU during the job",
            "idle CPU (of a core)",
            "UWS lateness p99 (start-up / job / idle)",
            "worst UWS (start-up / job / idle)",
            "UWS late by 1 s+ / due",
            "beat lateness p99 (start-up+job / idle)",
            "attempts past the limit",
        ]
    ]
    results: list[dict[str, Any]] = []
    for n, pools in [(n, pools) for n in args.workers for pools in args.pools]:
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "benchmarks.fleet",
                "--single",
                str(n),
                "--tasks-per-worker",
                str(args.tasks_per_worker),
                "--update-interval",
                str(args.update_interval),
                "--idle-seconds",
                str(args.idle_seconds),
                "--pools",
                pools,
                "--group",
                str(args.group),
                "--starts",
                str(args.starts),
                "--limit",
                str(args.limit if pools == "lanes" else args.baseline_limit),
            ],
            cwd=ROOT,
            capture_stdout=True,
        )
        results.append(json.loads(result.stdout.decode().splitlines()[-1]))
        rows.append(_row(results[-1]))
        print(table(rows), flush=True)
        print(flush=True)
    write_results(
        args.json,
        "fleet",
        parameters={
            "workers": args.workers,
            "tasks_per_worker": args.tasks_per_worker,
            "update_interval": args.update_interval,
            "idle_seconds": args.idle_seconds,
        },
        results={"sizes": results},
    )
    return 0


async def single(args: argparse.Namespace) -> int:
    configure_logging(quiet=True)
    structlog.configure(processors=[_count_timeouts, *structlog.get_config()["processors"]])
    with (
        tempfile.TemporaryDirectory(prefix="farmhand-fleet-") as tmp,
        mock_farm(args.update_interval) as farm,
    ):
        result: dict[str, Any] | None = None
        progress: dict[str, Any] = {}
        with trio.move_on_after(args.limit):
            result = await fleet(args.single, farm, args, Path(tmp), progress)
        if result is None:
            # Not done within --limit: what is known (the baseline at 1,000 workers
            # does not get them all started; see RESULTS.md).
            result = {
                "workers": args.single,
                "pools": args.pools,
                "timed_out": args.limit,
                **_progress(progress),
                "attempts_past_limit": _TIMED_OUT[0],
            }
    print(json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workers", type=lambda text: [int(p) for p in text.split(",")], default=[1000]
    )
    parser.add_argument("--tasks-per-worker", type=int, default=1)
    parser.add_argument("--update-interval", type=int, default=15)
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument(
        "--limit",
        type=float,
        default=240.0,
        help="seconds one size may take with --pools lanes before it is reported as not done",
    )
    parser.add_argument(
        "--baseline-limit",
        type=float,
        default=90.0,
        help="the same for --pools one (at 1,000 workers it does not get them all started)",
    )
    parser.add_argument(
        "--pools",
        default="lanes,one",
        help="lanes: UpdateWorkerSchedule on a pool of its own; one: one pool for every "
        "call (the baseline); in a --single run, one of them",
    )
    parser.add_argument("--group", type=int, default=16, help="workers per pair of pools")
    parser.add_argument(
        "--starts",
        type=int,
        default=4,
        help="with --pools lanes, sessions of the fleet starting at once (0: no limit)",
    )
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)  # one size, in this process
    add_json_option(parser, "fleet")
    args = parser.parse_args()
    if not args.single:
        args.pools = args.pools.split(",")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    return trio.run(single if args.single else measure, args)


if __name__ == "__main__":
    raise SystemExit(main())
