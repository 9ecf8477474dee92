"""Mock farm throughput: many scripted workers calling UpdateWorkerSchedule on loopback.

    python -m benchmarks.mockfarm [--workers 200] [--clients 2] [--duration 10] [--rounds 3]

The farm runs in this process (``open_mock_farm``, hypercorn's Trio worker) with
one job of many tasks. ``--clients`` client processes share ``--workers``
scripted workers; each worker does CreateWorker, UpdateWorker(STARTED), then
calls UpdateWorkerSchedule in a loop, reporting every action it was assigned as
SUCCEEDED in its next call, so each call both applies reports and assigns work.
The clients speak HTTP/1.1 over keep-alive sockets with a minimal hand-written
client, so that the client side costs little of this machine's CPU.

The baseline runs in the same process against the same server: the same workers
send the same kind of request to ``/_mockfarm/ping``, a bare ASGI endpoint that
reads the body and answers ``{}``. A second farm in the same process keeps its
state in SQLite (``open_mock_farm(state_dir=...)``, as ``mockfarm serve`` does
by default: every answer waits for its transaction's commit, ``synchronous=FULL``)
and gets the same load. The three alternate for ``--rounds`` rounds so that noise
from the rest of the machine hits them alike; reported: calls per second and
p50/p99 latency of every round and of the median round, and the ratios. The farm process tunes its garbage collector as ``mockfarm serve`` does
(``--no-gc-tuning`` to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from benchmarks._common import add_json_option, table, write_results

TEMPLATE = {
    "specificationVersion": "jobtemplate-2023-09",
    "name": "Benchmark",
    "parameterDefinitions": [{"name": "Frames", "type": "STRING", "default": "1-1000"}],
    "jobEnvironments": [{"name": "Env", "script": {"actions": {"onEnter": {"command": "true"}}}}],
    "steps": [
        {
            "name": "Render",
            "parameterSpace": {
                "taskParameterDefinitions": [
                    {"name": "Frame", "type": "INT", "range": "{{Param.Frames}}"}
                ]
            },
            "script": {"actions": {"onRun": {"command": "true", "args": ["{{Task.Param.Frame}}"]}}},
        }
    ],
}

CAPABILITIES = {
    "amounts": [
        {"name": "amount.worker.vcpu", "value": 2},
        {"name": "amount.worker.memory", "value": 4096},
    ],
    "attributes": [
        {"name": "attr.worker.os.family", "values": ["linux"]},
        {"name": "attr.worker.cpu.arch", "values": ["x86_64"]},
    ],
}


# ---------------------------------------------------------------- the client side


class Connection:
    """HTTP/1.1 keep-alive, just enough for JSON requests to one server."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host.encode()
        self.buffer = b""

    async def request(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: ".encode()
            + self.host
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
        )
        await self.stream.send_all(head + payload)
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                header = self.buffer[:end]
                length = 0
                for line in header.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(self.buffer) >= end + 4 + length:
                    status = int(header[9:12])
                    data = self.buffer[end + 4 : end + 4 + length]
                    self.buffer = self.buffer[end + 4 + length :]
                    return status, json.loads(data) if data else None
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk


async def scripted_worker(
    host: str,
    port: int,
    info: dict[str, str],
    mode: str,
    window: tuple[float, float],
    latencies: list[float],
    counts: dict[str, int],
) -> None:
    stream = await trio.open_tcp_stream(host, port)
    connection = Connection(stream, f"{host}:{port}")
    base = f"/2023-10-12/farms/{info['farmId']}/fleets/{info['fleetId']}/workers"
    status, created = await connection.request(
        "POST", base, {"hostProperties": {"hostName": "bench"}}
    )
    assert status == 200, created
    worker = f"{base}/{created['workerId']}"
    status, _ = await connection.request(
        "PATCH", worker, {"status": "STARTED", "capabilities": CAPABILITIES}
    )
    assert status == 200
    path = f"{worker}/schedule" if mode == "farm" else "/_mockfarm/ping"
    start, stop = window
    updates: dict[str, Any] = {}
    while True:
        now = time.perf_counter()
        if now >= stop:
            return
        began = time.perf_counter()
        status, response = await connection.request(
            "PATCH", path, {"updatedSessionActions": updates}
        )
        ended = time.perf_counter()
        if status != 200:
            counts["errors"] += 1
            continue
        if start <= began and ended <= stop:
            latencies.append(ended - began)
            counts["calls"] += 1
        updates = {}
        if mode == "farm":
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            for session in response["assignedSessions"].values():
                for action in session["sessionActions"]:
                    counts["actions"] += 1
                    updates[action["sessionActionId"]] = {
                        "completedStatus": "SUCCEEDED",
                        "startedAt": stamp,
                        "endedAt": stamp,
                        "processExitCode": 0,
                    }
        else:
            # The same request size as the farm phase's typical report.
            updates = {
                f"sessionaction-{'0' * 32}-{i}": {
                    "completedStatus": "SUCCEEDED",
                    "startedAt": "2026-01-01T00:00:00.000000Z",
                    "endedAt": "2026-01-01T00:00:00.000000Z",
                    "processExitCode": 0,
                }
                for i in range(2)
            }


async def client_main(args: argparse.Namespace) -> None:
    # The load generator yields to the server under test when they share a core.
    os.nice(5)
    info = json.loads(args.info)
    host, _, port = info["endpointUrl"].removeprefix("http://").rpartition(":")
    latencies: list[float] = []
    counts = {"calls": 0, "errors": 0, "actions": 0}
    start = args.start
    window = (start + args.warmup, start + args.warmup + args.duration)
    async with trio.open_nursery() as nursery:
        for _ in range(args.workers):
            nursery.start_soon(
                scripted_worker, host, int(port), info, args.mode, window, latencies, counts
            )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    print(json.dumps({**counts, "latencies": latencies, "cpu": cpu}))


# ---------------------------------------------------------------- the farm side


async def run_phase(farm: Any, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    per_client = [args.workers // args.clients] * args.clients
    per_client[0] += args.workers - sum(per_client)
    # perf_counter is CLOCK_MONOTONIC on Linux: the same clock in every process.
    start = time.perf_counter() + 1.0
    results: list[dict[str, Any]] = []

    async def client(workers: int) -> None:
        argv = [
            sys.executable,
            "-m",
            "benchmarks.mockfarm",
            "--client",
            "--mode",
            mode,
            "--info",
            json.dumps(farm.info()),
            "--workers",
            str(workers),
            "--start",
            repr(start),
            "--warmup",
            str(args.warmup),
            "--duration",
            str(args.duration),
        ]
        done = await trio.run_process(argv, capture_stdout=True, check=True)
        results.append(json.loads(done.stdout))

    before = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for workers in per_client:
            nursery.start_soon(client, workers)
    after = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall
    server_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    latencies = sorted(x for r in results for x in r["latencies"])
    calls = sum(r["calls"] for r in results)
    return {
        "calls": calls,
        "rate": calls / args.duration,
        "p50": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
        "errors": sum(r["errors"] for r in results),
        "actions": sum(r["actions"] for r in results),
        # Share of one core over the phase (start-up and warm-up included).
        "server_cpu": server_cpu / wall,
        "client_cpu": sum(r["cpu"] for r in results) / wall,
    }


def _row(label: str, result: dict[str, Any]) -> list[object]:
    return [
        label,
        f"{result['rate']:,.0f}",
        f"{result['p50']:.1f}",
        f"{result['p99']:.1f}",
        result["errors"],
        f"{result['server_cpu']:.0%}",
        f"{result['client_cpu']:.0%}",
    ]


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median rate (its latencies come with it)."""
    ordered = sorted(results, key=lambda r: r["rate"])
    return ordered[len(ordered) // 2]


async def farm_main(args: argparse.Namespace) -> None:
    import logging

    import structlog

    from agent._gc import tune_gc
    from agent.mockfarm import FarmConfig, open_mock_farm

    # The farm logs a line per job and worker; keep the console for the results.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    tasks_needed = int(6000 * (args.duration + args.warmup + 2) * args.rounds)
    config = FarmConfig(
        update_interval_seconds=0,
        pipeline_depth=args.pipeline_depth,
        # One job with work for every round: past the service's 10,000-task quotas.
        max_tasks_per_step=tasks_needed,
        max_tasks_per_job=tasks_needed,
    )
    async with AsyncExitStack() as stack:
        farm = await stack.enter_async_context(
            open_mock_farm(config=config, call_history=args.call_history)
        )
        state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.state_parent)))
        stored = await stack.enter_async_context(
            open_mock_farm(config=config, call_history=args.call_history, state_dir=state_dir)
        )
        began = time.perf_counter()
        job_id = farm.create_job(TEMPLATE, parameters={"Frames": f"1-{tasks_needed}"})
        created = time.perf_counter() - began
        began = time.perf_counter()
        stored_job_id = stored.create_job(TEMPLATE, parameters={"Frames": f"1-{tasks_needed}"})
        await stored.farm.store.commit()  # type: ignore[union-attr]
        stored_created = time.perf_counter() - began
        if args.gc_tuning:
            tune_gc()  # as `python -m agent mockfarm serve` does
        print(
            f"farm at {farm.endpoint_url}; job of {tasks_needed:,} tasks created in {created:.1f} s "
            f"(in SQLite under {state_dir}: {stored_created:.1f} s, committed); "
            f"{args.workers} workers in {args.clients} client processes; "
            f"{args.rounds} rounds of {args.warmup:g} s warm-up + {args.duration:g} s measured "
            f"per endpoint; GC tuning {'on' if args.gc_tuning else 'off'}",
            flush=True,
        )
        header: list[object] = [
            "round", "calls/s", "p50 ms", "p99 ms", "errors", "server CPU", "clients CPU"
        ]  # fmt: skip
        rows: list[list[object]] = [header]
        phases: dict[str, list[dict[str, Any]]] = {"bare": [], "farm": [], "stored": []}
        for round_ in range(1, args.rounds + 1):
            # Alternate, so that noise from the rest of the machine hits all alike.
            for mode in ("bare", "farm", "stored"):
                target = stored if mode == "stored" else farm
                result = await run_phase(target, args, "bare" if mode == "bare" else "farm")
                phases[mode].append(result)
                rows.append(_row(f"{round_}: {mode}", result))
        bare, farm_result = _median(phases["bare"]), _median(phases["farm"])
        stored_result = _median(phases["stored"])
        rows.append(_row("median: bare ASGI (/_mockfarm/ping)", bare))
        rows.append(_row("median: UpdateWorkerSchedule, in memory", farm_result))
        rows.append(_row("median: UpdateWorkerSchedule, SQLite", stored_result))
        job = farm.job(job_id)
        print(table(rows))
        store_stats = stored.farm.store.statistics()  # type: ignore[union-attr]
        print(
            f"persistent/in-memory: {stored_result['rate'] / farm_result['rate']:.2f}x the calls/s "
            f"({stored_result['rate']:,.0f} against {farm_result['rate']:,.0f}); "
            f"p50 {stored_result['p50'] / farm_result['p50']:.2f}x, "
            f"p99 {stored_result['p99'] / farm_result['p99']:.2f}x; "
            f"{store_stats['commits']:,} commits in all; "
            f"{stored.job(stored_job_id).task_counts['SUCCEEDED']:,} tasks succeeded there"
        )
        ratio = bare["rate"] / farm_result["rate"] if farm_result["rate"] else float("inf")
        print(
            f"farm/bare: {ratio:.2f}x slower (target <= 3x); "
            f"{farm_result['rate']:,.0f} UpdateWorkerSchedule calls/s (target >= 2,000); "
            f"latency farm/bare p50 {farm_result['p50'] / bare['p50']:.2f}x, "
            f"p99 {farm_result['p99'] / bare['p99']:.2f}x; "
            f"{job.task_counts['SUCCEEDED']:,} tasks succeeded"
        )
        write_results(
            args.json,
            "mockfarm",
            parameters={
                "workers": args.workers,
                "clients": args.clients,
                "duration": args.duration,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "pipeline_depth": args.pipeline_depth,
            },
            # Per phase, each round: calls, calls/s (rate), p50 and p99 in ms, errors,
            # server and clients' CPU as shares of a core.
            results={**phases, "target_rate": 2000, "target_ratio": 3.0},
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--pipeline-depth", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/farm rounds")
    parser.add_argument(
        "--no-gc-tuning",
        dest="gc_tuning",
        action="store_false",
        help="keep CPython's default collector settings in the farm process",
    )
    parser.add_argument(
        "--call-history", type=int, default=1000, help="calls the farm keeps in its record"
    )
    parser.add_argument(
        "--state-parent",
        type=Path,
        default=None,
        help="where the persistent farm's temporary state dir goes (default: the system's)",
    )
    add_json_option(parser, "mockfarm")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("farm", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--info", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        trio.run(client_main, args)
        return 0
    trio.run(farm_main, args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"a client process failed: {exc}", file=sys.stderr)
        sys.exit(1)
