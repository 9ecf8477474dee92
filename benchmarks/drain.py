"""Drain latency: from SIGTERM to UpdateWorker(STOPPED), with a task running.

    python -m benchmarks.drain [--repeat 5]

The mock farm runs in this process; each measurement starts a fresh farmhand
worker (``python -m agent``, default drain grace) against it and SIGTERMs it:

- **busy**: one task is running, and exits at once on SIGTERM (its template
  cancels it NOTIFY_THEN_TERMINATE; its handler exits 0). The drain reports it
  INTERRUPTED, sends it SIGTERM, waits for it, syncs, and says STOPPED.
- **idle** (the baseline, same run, same agent): no work at all, so the drain is
  only STOPPING, the final sync and STOPPED.

Times are taken on one clock (this process's): from ``kill()`` to the farm
receiving UpdateWorker(STOPPING), the report of the INTERRUPTED action,
UpdateWorker(STOPPED), and to the agent's exit. Busy and idle alternate, and
medians are reported. The official agent takes about 0.35 s from SIGTERM to
STOPPED on loopback (reference study, §11), with a `sleep` task.

``--restart`` measures restarts instead (issue 15): from a new agent's start to
the farm receiving the first report of an action it

- **re-attached**: an agent ran the task and was killed (SIGKILL); the task
  ended while no agent was there; the new one, with the same persistence
  directory, takes it over and reports its end;
- **fresh** (the baseline, same run): the job waits in the farm and a new agent
  (new worker) picks its task up, runs it (it ends at once) and reports its end.

Both first reports are final ones (sent at once, not at the next heartbeat).

Both include the new ``python -m agent`` process's start-up. The official
agent cannot re-attach: its killed task is lost (its job runs again).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from agent.mockfarm import FarmConfig, MockFarm, open_mock_farm
from benchmarks._common import RESULTS_DIR, add_json_option, table, write_results
from tests.workerproc import open_worker_process

TASK = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
pathlib.Path(sys.argv[1]).touch()
while True:
    time.sleep(60)
"""


def template(started: Path) -> dict[str, Any]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "drain benchmark",
        "steps": [
            {
                "name": "Wait",
                "script": {
                    "actions": {
                        "onRun": {
                            "command": sys.executable,
                            "args": ["-c", TASK, str(started)],
                            "cancelation": {"mode": "NOTIFY_THEN_TERMINATE"},
                        }
                    }
                },
            }
        ],
    }


RESTART_TASK = """
import os, pathlib, sys, time
pathlib.Path(sys.argv[1]).touch()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
"""


def restart_template(started: Path, release: Path) -> dict[str, Any]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "restart benchmark",
        "steps": [
            {
                "name": "Wait",
                "script": {
                    "actions": {
                        "onRun": {
                            "command": sys.executable,
                            "args": ["-c", RESTART_TASK, str(started), str(release)],
                        }
                    }
                },
            }
        ],
    }


async def _wait_file(path: Path) -> None:
    with trio.fail_after(60):
        while not await trio.Path(path).exists():
            await trio.sleep(0.002)  # a real process's file: nothing to wait on but the disk


async def measure_restart(farm: MockFarm, root: Path, *, reattach: bool) -> float:
    """Seconds from a new agent's start to the farm receiving the first report of
    an action: one it re-attached (``reattach``) or one it started."""
    started, release = root / "started", root / "release"
    job_id = farm.create_job(restart_template(started, release))
    if reattach:
        async with open_worker_process(farm, root) as first:
            await _wait_file(started)
            first.send(signal.SIGKILL)
            await first.wait()
    # The task ends at once (the re-attached one while no agent is there): its final
    # report goes out as soon as the new agent has it, not at the next heartbeat.
    await trio.Path(release).touch()
    since = len(farm.calls)
    t0 = trio.current_time()
    async with open_worker_process(farm, root) as agent:

        def reported(call: Any) -> bool:
            return call.operation == "UpdateWorkerSchedule" and bool(
                call.input.get("updatedSessionActions")
            )

        with trio.fail_after(60):
            await farm.wait_until(lambda: _arrival(farm, since, reported) is not None)
        moment = _arrival(farm, since, reported)
        assert moment is not None
        with trio.fail_after(60):
            assert await farm.wait_for_job(job_id) == "SUCCEEDED"
        agent.send(signal.SIGTERM)
        with trio.fail_after(60):
            await agent.wait()
    if reattach and not agent.events("restart.session_found"):
        raise RuntimeError("the new agent did not re-attach the task")
    return moment - t0


async def main_restart(repeat: int, json_path: Path | None) -> None:
    config = FarmConfig(update_interval_seconds=15, max_retries_per_task=0)
    runs: dict[str, list[float]] = {"fresh": [], "reattached": []}
    async with open_mock_farm(config=config) as farm:
        for index in range(repeat):
            for kind in ("fresh", "reattached"):
                with tempfile.TemporaryDirectory(prefix="farmhand-restart-") as tmp:
                    seconds = await measure_restart(farm, Path(tmp), reattach=kind != "fresh")
                runs[kind].append(seconds)
            print(
                f"round {index + 1}/{repeat}: "
                + ", ".join(f"{kind} {runs[kind][-1] * 1000:.0f} ms" for kind in runs),
                flush=True,
            )
    fresh = statistics.median(runs["fresh"])
    reattached = statistics.median(runs["reattached"])
    print()
    print(
        table(
            [
                ["", "start -> first report"],
                *([k, f"{statistics.median(v) * 1000:.0f} ms"] for k, v in runs.items()),
            ]
        )
    )
    print()
    print(
        f"new agent's start -> first report of a re-attached action: {reattached * 1000:.0f} ms; "
        f"fresh start -> first report of a new action (baseline): {fresh * 1000:.0f} ms; "
        f"ratio {reattached / fresh:.2f}"
    )
    write_results(
        json_path,
        "drain-restart",
        parameters={"repeat": repeat},
        # Seconds from the new agent's start to the farm receiving the first report.
        results=runs,
    )


def _arrival(farm: MockFarm, since: int, test: Any) -> float | None:
    for call in list(farm.calls)[since:]:
        if test(call):
            return call.time
    return None


async def measure(farm: MockFarm, root: Path, *, busy: bool) -> dict[str, float]:
    started = root / "started"
    async with open_worker_process(farm, root) as agent:
        if busy:
            farm.create_job(template(started))
            with trio.fail_after(60):
                while not started.exists():
                    await trio.sleep(0.002)
        # Both settle alike: past the start-up's first calls and log uploads.
        await trio.sleep(0.5)
        since = len(farm.calls)
        t0 = trio.current_time()
        os.kill(agent.process.pid, signal.SIGTERM)
        with trio.fail_after(60):
            code = await agent.wait()
        assert agent.exited_at is not None
    if code != 0:
        raise RuntimeError(f"the agent exited {code}")

    def status(value: str) -> Any:
        return lambda c: c.operation == "UpdateWorker" and c.input.get("status") == value

    def interrupted(call: Any) -> bool:
        updates = call.input.get("updatedSessionActions") or {}
        return call.operation == "UpdateWorkerSchedule" and any(
            u.get("completedStatus") == "INTERRUPTED" for u in updates.values()
        )

    times = {
        "stopping": _arrival(farm, since, status("STOPPING")),
        "interrupted": _arrival(farm, since, interrupted) if busy else None,
        "stopped": _arrival(farm, since, status("STOPPED")),
    }
    result = {name: moment - t0 for name, moment in times.items() if moment is not None}
    result["exit"] = agent.exited_at - t0
    return result


async def main(repeat: int, json_path: Path | None) -> None:
    config = FarmConfig(update_interval_seconds=15, max_retries_per_task=0)
    runs: dict[str, list[dict[str, float]]] = {"idle": [], "busy": []}
    async with open_mock_farm(config=config) as farm:
        for index in range(repeat):
            for kind in ("idle", "busy"):
                with tempfile.TemporaryDirectory(prefix="farmhand-drain-") as tmp:
                    runs[kind].append(await measure(farm, Path(tmp), busy=kind == "busy"))
            print(
                f"round {index + 1}/{repeat}: "
                + ", ".join(f"{kind} {runs[kind][-1]['stopped'] * 1000:.0f} ms" for kind in runs),
                flush=True,
            )

    def median(kind: str, key: str) -> str:
        values = [run[key] for run in runs[kind] if key in run]
        return f"{statistics.median(values) * 1000:.0f} ms" if values else "-"

    rows: list[list[object]] = [["", "STOPPING", "INTERRUPTED", "STOPPED", "exit"]]
    for kind in ("idle", "busy"):
        rows.append(
            [kind, *(median(kind, key) for key in ("stopping", "interrupted", "stopped", "exit"))]
        )
    print()
    print(table(rows))
    busy = statistics.median(run["stopped"] for run in runs["busy"])
    idle = statistics.median(run["stopped"] for run in runs["idle"])
    print()
    print(
        f"SIGTERM -> STOPPED with a task: {busy * 1000:.0f} ms; idle baseline "
        f"{idle * 1000:.0f} ms; ratio {busy / idle:.2f}; the official agent: about 350 ms"
    )
    write_results(
        json_path,
        "drain",
        parameters={"repeat": repeat},
        # Seconds from SIGTERM to the farm receiving STOPPING, the INTERRUPTED report,
        # STOPPED, and to the agent's exit; one mapping per round.
        results={**runs, "official_stopped_reference": 0.35},
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--restart", action="store_true", help="measure restarts (re-attach) instead of drains"
    )
    add_json_option(parser, "drain")
    parsed = parser.parse_args()
    if parsed.restart and parsed.json == RESULTS_DIR / "drain.json":
        parsed.json = RESULTS_DIR / "drain-restart.json"
    trio.run(main_restart if parsed.restart else main, parsed.repeat, parsed.json)
