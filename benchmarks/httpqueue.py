"""Per-job cost of the HTTP job queue worker, against the one-job API and a shell loop.

N jobs of `true` (200 by default) queued on the reference server (in this
process), worked by a real `python -m agent httpqueue worker` subprocess; the
time from the worker's start to the last job's `finished`. Baselines, in the
same run: a shell loop forking `/bin/true` N times, and N `JobRun`s of `true`
in one process (the one-job API alone, no HTTP).

    python -m benchmarks.httpqueue [--jobs 200] [--repeat 3]

Each job costs the worker: next-job, `running`, the session (a launcher and
the command), `finished`, and its log file on the shared directory. Target: at
most 25 ms per job above the one-job API (the HTTP round trips and the log).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import trio

from benchmarks._common import ROOT, add_json_option, table, write_results

TARGET_MS = 25.0


def shell_loop(jobs: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["/bin/sh", "-c", f"i=0; while [ $i -lt {jobs} ]; do /bin/true; i=$((i+1)); done"],
        check=True,
    )
    return time.perf_counter() - start


async def job_runs(jobs: int, root: Path) -> float:
    from actors import Containment
    from agent.jobs import JobRun, JobSpec

    containment = Containment()
    try:
        start = trio.current_time()
        for _ in range(jobs):
            outcome = await JobRun(
                JobSpec.from_command(["true"]),
                session_root=root,
                containment=containment,
                notes=False,
            ).run()
            assert outcome.succeeded
        return trio.current_time() - start
    finally:
        containment.close()


async def queue_run(jobs: int, root: Path) -> tuple[float, float]:
    """Seconds for the worker to finish every job; its RSS (MiB) at the end."""
    from contrib.httpqueue import open_job_server

    shared = root / "shared"
    shared.mkdir()
    async with open_job_server() as server:
        ids = [(await server.submit({"config_path": "/dev/null"}))["job_id"] for _ in range(jobs)]
        env = {
            **os.environ,
            "SERVER": server.url,
            "SHARED_DIR": str(shared),
            "WORKER_ID": "bench",
            "LOG_LEVEL": "warning",
            "HEARTBEAT_INTERVAL": "5",
        }
        argv = [sys.executable, "-m", "agent", "httpqueue", "worker", "--command", "true"]
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                lambda task_status: trio.run_process(
                    argv, env=env, cwd=ROOT, check=False, task_status=task_status
                )
            )
            last = ids[-1]
            await server.wait_until(lambda: server.job(last)["status"] == "finished")
            elapsed = trio.current_time() - start
            rss = psutil.Process(process.pid).memory_info().rss / (1 << 20)
            process.send_signal(signal.SIGTERM)
        assert all(server.job(job_id)["status"] == "finished" for job_id in ids)
    return elapsed, rss


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    add_json_option(parser, "httpqueue")
    args = parser.parse_args()
    n = args.jobs
    shells, runs, queues, rsses = [], [], [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            shells.append(shell_loop(n))
            runs.append(trio.run(job_runs, n, Path(tmp)))
            elapsed, rss = trio.run(queue_run, n, Path(tmp))
            queues.append(elapsed)
            rsses.append(rss)
    shell, run, queue = (statistics.median(x) for x in (shells, runs, queues))
    per = {
        name: 1000 * value / n for name, value in (("shell", shell), ("run", run), ("queue", queue))
    }
    print(
        table(
            [
                ("runner", "total", "per job", "above the one-job API"),
                ("shell loop", f"{shell:.3f} s", f"{per['shell']:.2f} ms", "-"),
                ("JobRun (one-job API)", f"{run:.3f} s", f"{per['run']:.2f} ms", "-"),
                (
                    "httpqueue worker",
                    f"{queue:.3f} s",
                    f"{per['queue']:.2f} ms",
                    f"{per['queue'] - per['run']:.2f} ms (target <= {TARGET_MS:g} ms)",
                ),
            ]
        )
    )
    print(f"worker RSS after {n} jobs: {max(rsses):.1f} MiB; worker start-up is in its total")
    write_results(
        args.json,
        "httpqueue",
        parameters={"jobs": n, "repeat": args.repeat},
        results={
            # Medians of the runs' totals, seconds.
            "seconds": {"shell": shell, "jobrun": run, "httpqueue": queue},
            "worker_rss_mib": max(rsses),
            "target_ms_above_jobrun": TARGET_MS,
        },
    )
    return 0 if per["queue"] - per["run"] <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
