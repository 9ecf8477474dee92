"""The gRPC CI agent: jobs of `true` per second and first-output latency, with baselines.

A real `python -m agent grpc serve` subprocess on loopback, driven by grpcio's
client from this process, one job at a time (one slot):

- **throughput**: N `Run` calls of `true`, each read to its FINISHED; jobs per
  second and milliseconds per job. Baselines in the same run: N plain
  `subprocess.run(["true"])`, and N `JobRun`s of `true` in one process (the
  one-job API alone: its session, launcher and containment, no gRPC).
- **first-output latency**: M jobs whose child prints its wall-clock time
  (`time.time_ns()`) once and exits; the latency is the client's receive time
  minus that time (same host, same clock). Baseline in the same run: the same
  child under `subprocess.Popen`, its line read from the pipe.

    python -m benchmarks.grpcagent [--jobs 200] [--latency-jobs 200]

Targets (issue 12): first-output latency under 5 ms at p99; per-job overhead
under 10 ms above the baseline.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import trio

from benchmarks._common import ROOT, add_json_option, table, write_results
from contrib.grpcagent import ci_agent_pb2 as pb
from contrib.grpcagent import ci_agent_pb2_grpc as pb_grpc

P99_TARGET_MS = 5.0
OVERHEAD_TARGET_MS = 10.0
CHILD = [
    sys.executable,
    "-I",
    "-S",
    "-c",
    "import sys, time; sys.stdout.write(f'{time.time_ns()}\\n'); sys.stdout.flush()",
]


def plain_true(jobs: int) -> float:
    start = time.perf_counter()
    for _ in range(jobs):
        subprocess.run(["true"], check=True)
    return time.perf_counter() - start


def job_runs(jobs: int, root: Path, *, spare: bool = False) -> float:
    """``jobs`` JobRuns of ``true`` one after another; ``spare``: with the next
    session's launcher started ahead (``Containment.keep_spare_launcher``), as the
    gRPC agent and the HTTP queue worker run."""
    from actors import Containment
    from agent import configure_logging
    from agent.jobs import JobRun, JobSpec

    configure_logging(quiet=True)
    # As `python -m agent` does at start-up (agent._cli.main): what is loaded by now
    # lives as long as the process, and the collector should not walk it per job.
    gc.freeze()

    async def main() -> float:
        containment = Containment()
        try:
            async with trio.open_nursery() as nursery:
                if spare:
                    await nursery.start(containment.keep_spare_launcher)
                start = time.perf_counter()
                for index in range(jobs):
                    run = JobRun(
                        JobSpec.from_command(["true"]),
                        session_id=f"bench-{index}",
                        session_root=root,
                        containment=containment,
                    )
                    outcome = await run.run()
                    assert outcome.succeeded, outcome
                elapsed = time.perf_counter() - start
                nursery.cancel_scope.cancel()
            return elapsed
        finally:
            containment.close()

    return trio.run(main)


def plain_latencies(count: int) -> list[float]:
    results = []
    for _ in range(count):
        process = subprocess.Popen(CHILD, stdout=subprocess.PIPE)
        assert process.stdout is not None
        line = process.stdout.readline()
        received = time.time_ns()
        results.append((received - int(line)) / 1e6)
        process.wait()
    return results


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_agent(work: Path) -> tuple[subprocess.Popen[bytes], grpc.Channel]:
    port = free_port()
    command = [sys.executable, "-m", "agent", "grpc", "serve", "--work-dir", str(work)]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    return process, channel


def agent_jobs(stub: pb_grpc.CiAgentStub, jobs: int) -> float:
    start = time.perf_counter()
    for index in range(jobs):
        events = list(stub.Run(pb.RunRequest(job_id=f"t{index}", command=["true"])))
        assert events[-1].finished.status == pb.Finished.SUCCEEDED, events[-1]
    return time.perf_counter() - start


def agent_latencies(stub: pb_grpc.CiAgentStub, count: int) -> list[float]:
    results = []
    for index in range(count):
        latency = None
        for event in stub.Run(pb.RunRequest(job_id=f"l{index}", command=CHILD)):
            if latency is None and event.HasField("output"):
                received = time.time_ns()
                stamps = [line for line in event.output.lines if line.isdigit()]
                if stamps:
                    latency = (received - int(stamps[0])) / 1e6
        assert latency is not None
        results.append(latency)
    return results


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency-jobs", type=int, default=200)
    add_json_option(parser, "grpcagent")
    args = parser.parse_args()
    n, m = args.jobs, args.latency_jobs

    with tempfile.TemporaryDirectory(prefix="farmhand-grpc-bench-") as tmp:
        work = Path(tmp)
        plain = plain_true(n)
        one_job = job_runs(n, work / "jobrun")
        one_job_spare = job_runs(n, work / "jobrun-spare", spare=True)
        plain_lat = plain_latencies(m)
        process, channel = start_agent(work / "agent")
        try:
            stub = pb_grpc.CiAgentStub(channel)
            agent_jobs(stub, 5)  # warm: first calls load and connect
            agent = agent_jobs(stub, n)
            agent_lat = agent_latencies(stub, m)
        finally:
            channel.close()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)

    per = {name: total / n * 1000 for name, total in
           (("plain", plain), ("jobrun", one_job), ("spare", one_job_spare),
            ("agent", agent))}  # fmt: skip
    print(f"{n} jobs of `true`, one at a time; load average {os.getloadavg()[0]:.1f}")
    print(
        table(
            [
                ["runner", "total", "jobs/s", "per job", "above plain",
                 "above JobRun (spare)"],
                ["plain subprocess", f"{plain:.3f} s", f"{n / plain:.0f}",
                 f"{per['plain']:.2f} ms", "—", "—"],
                ["JobRun (one-job API)", f"{one_job:.3f} s", f"{n / one_job:.1f}",
                 f"{per['jobrun']:.2f} ms", f"{per['jobrun'] - per['plain']:.2f} ms", "—"],
                ["JobRun, launcher started ahead", f"{one_job_spare:.3f} s",
                 f"{n / one_job_spare:.1f}", f"{per['spare']:.2f} ms",
                 f"{per['spare'] - per['plain']:.2f} ms", "—"],
                ["gRPC agent", f"{agent:.3f} s", f"{n / agent:.1f}", f"{per['agent']:.2f} ms",
                 f"{per['agent'] - per['plain']:.2f} ms",
                 f"{per['agent'] - per['spare']:.2f} ms"],
            ],
        )
    )  # fmt: skip
    print()
    print(f"first-output latency, child write -> client receive, {m} jobs")
    rows = []
    for name, values in (("plain subprocess pipe", plain_lat), ("gRPC agent", agent_lat)):
        rows.append(
            [
                name,
                f"{statistics.median(values):.3f} ms",
                f"{percentile(values, 0.9):.3f} ms",
                f"{percentile(values, 0.99):.3f} ms",
                f"{max(values):.3f} ms",
            ]
        )
    print(table([["", "median", "p90", "p99", "max"], *rows]))
    p99 = percentile(agent_lat, 0.99)
    above = per["agent"] - per["plain"]
    print()
    print(
        f"p99 first-output latency {p99:.2f} ms (target < {P99_TARGET_MS:g} ms: "
        f"{'met' if p99 < P99_TARGET_MS else 'NOT met'}); per-job overhead {above:.1f} ms above "
        f"a plain subprocess (target < {OVERHEAD_TARGET_MS:g} ms: "
        f"{'met' if above < OVERHEAD_TARGET_MS else 'NOT met'}), "
        f"{per['agent'] - per['spare']:.1f} ms of it the agent's own above the one-job API (launcher started ahead); "
        f"ratio agent/plain {per['agent'] / per['plain']:.1f}x"
    )
    write_results(
        args.json,
        "grpcagent",
        parameters={"jobs": n, "latency_jobs": m},
        results={
            # Totals for the jobs, seconds.
            "seconds": {"plain": plain, "jobrun": one_job, "jobrun_spare": one_job_spare,
                        "agent": agent},
            # First-output latencies, milliseconds, one per job.
            "latency_ms": {"plain": plain_lat, "agent": agent_lat},
            "target_p99_ms": P99_TARGET_MS,
            "target_overhead_ms": OVERHEAD_TARGET_MS,
        },
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
