"""Soak: a worker running mixed jobs for a while under injected faults.

    python -m benchmarks.soak [--minutes 2] [--fault-rate 0.1] [--sample-seconds 5]
        [--outage SECONDS]

The mock farm runs in this process with ``--fault-rate`` of every request
failing (throttling, 500s, a request dropped before or after it is applied,
in the proportions 4:3:1:2) and one farmhand worker (``python -m agent``)
working it. Jobs of six kinds are submitted to keep two in flight: quick
tasks, tasks in an environment, a task that fails (retried once), a task
printing 5,000 lines, a task reporting progress and status, and a long task
that is cancelled once it runs. After ``--minutes`` no more jobs are submitted;
the rest finish, and the worker is stopped with SIGTERM. With ``--outage``, a
third of the way in the farm stops answering anything (every request, the
CloudWatch calls too, is swallowed) for that many seconds, then comes back with
the faults it had; jobs keep being submitted meanwhile.

Reported:

- tasks completed (SUCCEEDED, FAILED, CANCELED) and per minute;
- **lost** reports: session actions of the worker that never got a final state
  (must be 0), and jobs that never finished;
- **duplicated** reports: a final state sent again after the farm had answered
  a call that carried it (a retry after a lost answer is not one; must be 0),
  and actions reported with two different final states;
- the agent's RSS and open file descriptors over time, and their growth after
  the warm-up (a quarter of the run, at most a minute), from the first third of
  the samples to the last: the median RSS, and the fewest descriptors (running
  tasks hold pipes for a while; a leak raises the floor). The baseline is the
  same process after warm-up (target: under 5 %).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import tempfile
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import trio

from agent.mockfarm import (
    FarmConfig,
    FaultConfig,
    MockFarm,
    OperationFaults,
    open_mock_farm,
)
from benchmarks._common import add_json_option, table, write_results
from tests.workerproc import open_worker_process

FINAL_ACTION = {"SUCCEEDED", "FAILED", "CANCELED", "INTERRUPTED", "NEVER_ATTEMPTED"}
FINAL_TASK = {"SUCCEEDED", "FAILED", "CANCELED"}
PY = os.environ.get("PYTHON", "python3")


def _task(command: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"command": command, "args": list(args), **extra}


def job(kind: str, rng: random.Random) -> dict[str, Any]:
    frames = "1-3"
    environments: list[dict[str, Any]] = []
    if kind == "quick":
        frames = f"1-{rng.randint(3, 8)}"
        run = _task("echo", "frame {{Task.Param.Frame}}")
    elif kind == "environment":
        environments = [
            {
                "name": "Env",
                "script": {
                    "actions": {
                        "onEnter": _task("echo", "entered"),
                        "onExit": _task("echo", "exited"),
                    }
                },
            }
        ]
        run = _task("echo", "in env {{Task.Param.Frame}}")
    elif kind == "failing":
        frames = "1-2"
        run = _task("sh", "-c", 'test "{{Task.Param.Frame}}" != 2')
    elif kind == "output":
        frames = "1"
        run = _task("seq", "1", "5000")
    elif kind == "progress":
        frames = "1-2"
        run = _task(
            "sh",
            "-c",
            "for p in 10 50 90; do echo openjd_progress: $p; echo openjd_status: at $p; done",
        )
    else:  # long, cancelled once it runs
        frames = "1"
        run = _task("sleep", "120", cancelation={"mode": "TERMINATE"})
    template: dict[str, Any] = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": f"soak {kind}",
        "steps": [
            {
                "name": "Step",
                "parameterSpace": {
                    "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": frames}]
                },
                "script": {"actions": {"onRun": run}},
            }
        ],
    }
    if environments:
        template["jobEnvironments"] = environments
    return template


def faults(rate: float, seed: int) -> FaultConfig:
    per = OperationFaults(
        throttle_rate=rate * 0.4,
        error_rate=rate * 0.3,
        drop_rate=rate * 0.1,
        drop_after_rate=rate * 0.2,
        retry_after_seconds=None,
        drop_hold_seconds=1.0,
    )
    return FaultConfig(seed=seed, default=per)


def any_finished(farm: MockFarm, job_ids: list[str]) -> bool:
    return any(farm.job(job_id).status in FINAL_TASK for job_id in job_ids)


def report_checks(farm: MockFarm, worker_id: str) -> dict[str, int]:
    """Lost and duplicated reports, from the farm's state and its recorded calls."""
    lost = 0
    for session in farm.state.sessions.values():
        if session.worker.worker_id != worker_id:
            continue
        lost += sum(1 for action in session.actions if action.status not in FINAL_ACTION)
    acknowledged: set[str] = set()
    duplicated = 0
    statuses: dict[str, set[str]] = defaultdict(set)
    for call in farm.calls:
        if call.operation != "UpdateWorkerSchedule":
            continue
        updates = call.input.get("updatedSessionActions") or {}
        finals = [aid for aid, fields in updates.items() if fields.get("completedStatus")]
        for aid in finals:
            statuses[aid].add(str(updates[aid]["completedStatus"]))
            if aid in acknowledged:
                duplicated += 1
        if call.status == 200 and not call.dropped:
            acknowledged.update(finals)
    conflicting = sum(1 for values in statuses.values() if len(values) > 1)
    return {"lost": lost, "duplicated": duplicated, "conflicting": conflicting}


#: Every request is swallowed: the farm is unreachable.
OUTAGE = FaultConfig(default=OperationFaults(drop_rate=1.0, drop_hold_seconds=1.0))


async def soak(
    minutes: float,
    fault_rate: float,
    sample_seconds: float,
    seed: int,
    outage: float,
    json_path: Path | None = None,
) -> None:
    rng = random.Random(seed)
    duration = minutes * 60
    warmup = min(60.0, duration / 4)
    config = FarmConfig(update_interval_seconds=5, max_retries_per_task=1, pipeline_depth=2)
    kinds = ["quick", "environment", "failing", "output", "progress", "cancelled"]
    samples: list[tuple[float, int, int]] = []
    jobs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="farmhand-soak-") as tmp:
        async with open_mock_farm(
            config=config, faults=faults(fault_rate, seed), call_history=None
        ) as farm:
            async with open_worker_process(farm, Path(tmp)) as agent:
                process = psutil.Process(agent.process.pid)
                [worker_id] = list(farm.state.workers)
                start = trio.current_time()

                async def sample() -> None:
                    while True:
                        samples.append(
                            (
                                trio.current_time() - start,
                                process.memory_info().rss,
                                process.num_fds(),
                            )
                        )
                        await trio.sleep(sample_seconds)

                async def cancel_when_running(job_id: str) -> None:
                    with trio.move_on_after(120):
                        await farm.wait_until(
                            lambda: any(
                                t.status == "RUNNING"
                                for s in farm.job(job_id).steps
                                for t in s.tasks
                            )
                        )
                        farm.cancel_job(job_id)

                async def outage_phase() -> None:
                    await trio.sleep(duration / 3)
                    farm.set_faults(OUTAGE)
                    print(f"outage: the farm stops answering for {outage:.0f} s", flush=True)
                    await trio.sleep(outage)
                    farm.set_faults(faults(fault_rate, seed))
                    print("outage over", flush=True)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample)
                    if outage > 0:
                        nursery.start_soon(outage_phase)
                    while trio.current_time() - start < duration:
                        active = [j for j in jobs if farm.job(j).status not in FINAL_TASK]
                        if len(active) < 2:
                            kind = rng.choice(kinds)
                            job_id = farm.create_job(job(kind, rng))
                            jobs.append(job_id)
                            if kind == "cancelled":
                                nursery.start_soon(cancel_when_running, job_id)
                            continue
                        with trio.move_on_after(1):
                            await farm.wait_until(partial(any_finished, farm, active))
                    with trio.move_on_after(180):
                        await farm.wait_until(
                            lambda: all(farm.job(j).status in FINAL_TASK for j in jobs)
                        )
                    nursery.cancel_scope.cancel()
                elapsed = trio.current_time() - start
                os.kill(agent.process.pid, signal.SIGTERM)
                with trio.fail_after(120):
                    code = await agent.wait()
            checks = report_checks(farm, worker_id)
            unfinished = sum(1 for j in jobs if farm.job(j).status not in FINAL_TASK)
            tasks = [t for j in jobs for s in farm.job(j).steps for t in s.tasks]
            faulted = sum(1 for c in farm.calls if c.error or c.dropped)
            calls = len(farm.calls)

    done = [task for task in tasks if task.status in FINAL_TASK]
    by_status: dict[str, int] = defaultdict(int)
    for task in done:
        by_status[task.status] += 1
    print(
        f"ran {elapsed / 60:.1f} min, {len(jobs)} jobs, agent exit status {code}"
        + (f", with a {outage:.0f} s outage" if outage > 0 else "")
    )
    print(
        f"tasks completed: {len(done)} ({dict(by_status)}), "
        f"{len(done) / (elapsed / 60):.0f} per minute"
    )
    print(f"requests: {calls}, faults injected: {faulted} ({faulted / max(calls, 1):.1%})")
    print(
        f"lost reports: {checks['lost']}, unfinished jobs: {unfinished}, "
        f"duplicated reports: {checks['duplicated']}, conflicting: {checks['conflicting']}"
    )
    rows: list[list[object]] = [["t (s)", "RSS (MiB)", "open fds"]]
    step = max(1, len(samples) // 12)
    for at, rss, fds in samples[::step]:
        rows.append([f"{at:.0f}", f"{rss / 2**20:.1f}", fds])
    print()
    print(table(rows))
    after = [s for s in samples if s[0] >= warmup]
    if len(after) >= 6:
        third = len(after) // 3
        first, last = after[:third], after[-third:]
        rss0, rss1 = (statistics.median(s[1] for s in part) for part in (first, last))
        # Running tasks hold pipes: the fewest open descriptors is what a leak would raise.
        fds0, fds1 = (min(s[2] for s in part) for part in (first, last))
        print()
        print(
            f"after the {warmup:.0f} s warm-up, first third -> last third: RSS (median) "
            f"{rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB ({rss1 / rss0 - 1:+.1%}); "
            f"open fds (fewest) {fds0} -> {fds1} ({fds1 / fds0 - 1:+.1%})"
        )
    ok = checks["lost"] == 0 and checks["duplicated"] == 0 and checks["conflicting"] == 0
    print("reports: OK" if ok and unfinished == 0 else "reports: PROBLEM")
    write_results(
        json_path,
        "soak",
        parameters={
            "minutes": minutes,
            "fault_rate": fault_rate,
            "sample_seconds": sample_seconds,
            "seed": seed,
            "outage": outage,
        },
        results={
            "elapsed_seconds": elapsed,
            "jobs": len(jobs),
            "agent_exit_status": code,
            "tasks_by_status": dict(by_status),
            "requests": calls,
            "faulted": faulted,
            **checks,
            "unfinished_jobs": unfinished,
            "warmup_seconds": warmup,
            # (seconds since the start, RSS in MiB, open file descriptors)
            "samples": [[at, rss / 2**20, fds] for at, rss, fds in samples],
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--outage", type=float, default=0.0, help="seconds the farm stops answering, mid-run"
    )
    add_json_option(parser, "soak")
    args = parser.parse_args()
    trio.run(
        soak, args.minutes, args.fault_rate, args.sample_seconds, args.seed, args.outage, args.json
    )
