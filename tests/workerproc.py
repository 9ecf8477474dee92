"""A real farmhand worker process (``python -m agent``) against a mock farm.

For tests, benchmarks and rehearsals: the farm is served in this process on
loopback; the worker runs as a child with the farm's environment (fake
credentials, endpoints, no host prefix) and ``--log-format json``, so the
caller can wait for its log events on stderr, signal it, and assert on what it
sent (``farm.calls``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from agent.mockfarm import MockFarm


def worker_argv(farm: MockFarm, root: Path, *args: str) -> list[str]:
    """``python -m agent`` for ``farm``, its state, logs and sessions under ``root``."""
    return [
        sys.executable,
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
        *args,
    ]


class WorkerProcess:
    """The child, its log records (JSON lines from stderr) and its exit."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.records: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.returncode: int | None = None
        #: ``trio.current_time()`` when the exit was seen.
        self.exited_at: float | None = None
        self._changed = trio.Event()

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
        code = await self.process.wait()
        self._exited(code)
        return code

    def _exited(self, code: int) -> None:
        if self.exited_at is None:
            self.exited_at = trio.current_time()
        self.returncode = code

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
        self._exited(await self.process.wait())
        self._changed.set()


@asynccontextmanager
async def open_worker_process(
    farm: MockFarm,
    root: Path,
    *args: str,
    ready: str = "worker.started",
    start_timeout: float = 60.0,
) -> AsyncIterator[WorkerProcess]:
    """Run ``python -m agent`` against ``farm`` for the block, from the moment it has
    logged ``ready`` (by default: it runs and takes signals); ``args`` are more
    flags. It is killed at the end if it still runs."""
    argv = worker_argv(farm, root, "--log-format", "json", *args)
    env = {**os.environ, **farm.environ(), "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    worker = WorkerProcess(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker._read)
        try:
            with trio.fail_after(start_timeout):
                await worker.wait_event(ready)
            yield worker
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
