"""A real ``python -m agent`` worker process against an embedded mock farm
(``tests.workerproc.open_worker_process``), and helpers to read what it sent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from agent.mockfarm import CallRecord, MockFarm
from tests.workerproc import WorkerProcess, open_worker_process

PY = sys.executable


AgentProcess = WorkerProcess


def agent_process(
    farm: MockFarm,
    root: Path,
    *args: str,
    drain_grace: float = 30.0,
    ready: str = "worker.started",
) -> AbstractAsyncContextManager[WorkerProcess]:
    """The agent for the block, once it has logged ``ready`` (see
    ``tests.workerproc.open_worker_process``), with a drain grace of ``drain_grace``."""
    return open_worker_process(
        farm, root, "--drain-grace-seconds", str(drain_grace), *args, ready=ready
    )


def calls(farm: MockFarm, *operations: str) -> list[CallRecord]:
    return [c for c in farm.calls if c.operation in operations]


def worker_status_calls(farm: MockFarm) -> list[tuple[int, str]]:
    """(index in farm.calls, status) of every UpdateWorker that set a status."""
    return [
        (index, str(c.input["status"]))
        for index, c in enumerate(farm.calls)
        if c.operation == "UpdateWorker" and "status" in c.input
    ]


def reports(farm: MockFarm) -> list[tuple[int, str, dict[str, Any]]]:
    """(index in farm.calls, action id, fields) of every reported action update."""
    return [
        (index, action_id, dict(fields))
        for index, c in enumerate(farm.calls)
        if c.operation == "UpdateWorkerSchedule"
        for action_id, fields in (c.input.get("updatedSessionActions") or {}).items()
    ]


def first_index(items: Sequence[tuple[int, Any, Any]], test: Callable[[Any], bool]) -> int:
    return next(index for index, _, fields in items if test(fields))
