"""Pick-up: from a job's submission to its first action running on an idle worker.

    python -m benchmarks.pickup [--repeat 5] [--interval 15] [--no-official]

A farmhand worker process (``python -m agent``) works a mock farm in this process
at the service's update interval (15 s). Each repeat submits a one-task job to the
idle worker and times, on this process's clock, until the farm has the assignment
(the session is made) and the first report of the task running:

- **long poll** (the mock farm's default): the idle worker's UpdateWorkerSchedule is
  held until work comes, so the job goes out in that call;
- **polling** (the baseline, same run: ``--no-long-poll``, as the service answers):
  the worker finds the job at its next call. Submissions are spread over the
  interval (repeat i waits i/repeat of it after the worker went idle), so the
  figure is what a user meets on average: about half the interval.

With ``.venv-official`` (``.ci/run`` installs it) the official agent's pick-up
through a held call is measured too (``tests.mockfarm_official --pickup``, in a
loopback-only network namespace), once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from agent.mockfarm import FarmConfig, MockFarm, open_mock_farm
from benchmarks._common import ROOT, add_json_option, table, write_results
from tests.workerproc import open_worker_process

JOB = {
    "specificationVersion": "jobtemplate-2023-09",
    "name": "pickup benchmark",
    "steps": [
        {
            "name": "Run",
            "script": {"actions": {"onRun": {"command": "/bin/true"}}},
        }
    ],
}


def _started(farm: MockFarm, job_id: str) -> bool:
    return any(
        action.status != "ASSIGNED"
        for session in farm.job(job_id).sessions
        for action in session.actions
    )


async def measure(long_poll: bool, interval: int, repeat: int) -> list[tuple[float, float]]:
    """(assigned, running) seconds after submission, for each repeat."""
    config = FarmConfig(
        update_interval_seconds=interval, long_poll=long_poll, max_retries_per_task=0
    )
    samples: list[tuple[float, float]] = []
    async with open_mock_farm(config=config) as farm:
        with tempfile.TemporaryDirectory(prefix="farmhand-pickup-") as tmp:
            async with open_worker_process(farm, Path(tmp)):
                for index in range(repeat):
                    if long_poll:
                        await farm.wait_until(lambda: farm.app.held_calls > 0)
                    else:
                        # Wait for the worker's next call, then spread the submission
                        # over the interval that follows it.
                        calls = len(farm.calls_to("UpdateWorkerSchedule"))
                        await farm.wait_until(
                            lambda: len(farm.calls_to("UpdateWorkerSchedule")) > calls  # noqa: B023
                        )
                        await trio.sleep(interval * index / repeat)
                    submitted = trio.current_time()
                    job_id = farm.create_job(JOB)
                    await farm.wait_until(lambda: bool(farm.job(job_id).sessions))  # noqa: B023
                    assigned = trio.current_time() - submitted
                    await farm.wait_until(lambda: _started(farm, job_id))  # noqa: B023
                    running = trio.current_time() - submitted
                    samples.append((assigned, running))
                    await farm.wait_for_job(job_id)
                    await farm.wait_until(
                        lambda: not farm.job(job_id).active_sessions  # noqa: B023
                    )
                    print(
                        f"  {'long poll' if long_poll else 'polling'} {index + 1}/{repeat}: "
                        f"running after {running * 1000:.1f} ms",
                        flush=True,
                    )
    return samples


def official_pickup() -> float | None:
    agent = ROOT / ".venv-official" / "bin" / "deadline-worker-agent"
    if not agent.is_file():
        return None
    with tempfile.TemporaryDirectory(prefix="farmhand-pickup-official-") as tmp:
        argv = [
            "unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
            sys.executable, "-m", "tests.mockfarm_official", str(agent), tmp, "--pickup",
        ]  # fmt: skip
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"  the official agent's run failed: {done.stderr[-300:]}")
        return None
    report: dict[str, Any] = json.loads(done.stdout)
    return float(report["pickup"]["seconds"])


async def main(args: argparse.Namespace) -> None:
    repeat, interval = args.repeat, args.interval
    polled = await measure(False, interval, repeat)
    held = await measure(True, interval, repeat)
    theirs = official_pickup() if not args.no_official else None

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.1f} ms"

    rows: list[list[object]] = [["farm", "assigned (median)", "running (median)", "max running"]]
    for name, samples in (("polling (as the service)", polled), ("long poll", held)):
        rows.append(
            [
                name,
                ms([a for a, _ in samples]),
                ms([r for _, r in samples]),
                f"{max(r for _, r in samples) * 1000:.1f} ms",
            ]
        )
    print()
    print(f"an idle farmhand worker, {repeat} jobs each, update interval {interval} s")
    print(table(rows))
    base = statistics.median(r for _, r in polled)
    mine = statistics.median(r for _, r in held)
    print()
    print(
        f"pick-up (submission -> running): long poll {mine * 1000:.1f} ms, polling "
        f"{base * 1000:.0f} ms; ratio {base / mine:.0f}x (target <= 100 ms: "
        f"{'met' if mine <= 0.1 else 'NOT met'})"
    )
    if theirs is not None:
        print(
            f"the official agent 0.33.6, long poll: assigned {theirs * 1000:.1f} ms after submission"
        )
    write_results(
        args.json,
        "pickup",
        parameters={"repeat": repeat, "interval": interval},
        results={
            # Seconds from create_job to the session made ("assigned") and to the
            # first report of the task running, one pair per job.
            "polling": [{"assigned": a, "running": r} for a, r in polled],
            "long_poll": [{"assigned": a, "running": r} for a, r in held],
            # The official agent through a held call: assigned (None: not measured).
            "official_assigned": theirs,
            "target_running_seconds": 0.1,
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--interval", type=int, default=15)
    parser.add_argument("--no-official", action="store_true")
    add_json_option(parser, "pickup")
    trio.run(main, parser.parse_args())
