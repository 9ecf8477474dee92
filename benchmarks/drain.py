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
from benchmarks._common import add_json_option, table, write_results
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
    add_json_option(parser, "drain")
    parsed = parser.parse_args()
    trio.run(main, parsed.repeat, parsed.json)
