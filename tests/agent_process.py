"""A real ``python -m agent`` worker process against an embedded mock farm.

The test process serves the farm on loopback; the agent runs as a child with
the farm's environment (fake credentials, endpoints, no host prefix) and
``--log-format json``, so a test can wait for its log events on stderr and
assert on the farm's recorded calls (``farm.calls``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from agent.mockfarm import CallRecord, MockFarm

PY = sys.executable


class AgentProcess:
    """The child, its log records (JSON lines from stderr) and its exit."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.records: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._changed = trio.Event()
        self.returncode: int | None = None

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == name]

    async def wait_event(self, name: str, count: int = 1, **fields: Any) -> dict[str, Any]:
        """Wait for the ``count``-th record named ``name`` (with these fields)."""
        while True:
            found = [r for r in self.events(name) if all(r.get(k) == v for k, v in fields.items())]
            if len(found) >= count:
                return found[count - 1]
            if self.returncode is not None:
                raise AssertionError(
                    f"the agent exited ({self.returncode}) before {name!r}:\n"
                    + "\n".join(self.stderr[-40:])
                )
            await self._changed.wait()

    async def wait(self) -> int:
        self.returncode = await self.process.wait()
        return self.returncode

    async def _read(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                self.stderr.append(line)
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    self.records.append(record)
            self._changed.set()
            self._changed = trio.Event()
        self.returncode = await self.process.wait()
        self._changed.set()


@asynccontextmanager
async def agent_process(
    farm: MockFarm,
    root: Path,
    *args: str,
    drain_grace: float = 30.0,
    ready: str = "worker.started",
) -> AsyncIterator[AgentProcess]:
    """Start the agent for the block, once it has logged ``ready`` (by default: it
    runs and takes signals); it is killed at the end if it still runs."""
    argv = [
        PY,
        "-m",
        "agent",
        "--farm-id",
        farm.farm_id,
        "--fleet-id",
        farm.fleet_id,
        "--endpoint-url",
        farm.endpoint_url,
        "--disable-host-prefix",
        "--run-jobs-as-agent-user",
        "--no-shutdown",
        "--persistence-dir",
        str(root / "persistence"),
        "--logs-dir",
        str(root / "logs"),
        "--session-root-dir",
        str(root / "sessions"),
        "--log-format",
        "json",
        "--drain-grace-seconds",
        str(drain_grace),
        *args,
    ]
    env = {**os.environ, **farm.environ(), "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    agent = AgentProcess(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._read)
        try:
            with trio.fail_after(60):
                await agent.wait_event(ready)
            yield agent
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


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
