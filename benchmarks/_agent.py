"""A farmhand worker process (``python -m agent``) against an in-process mock farm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from agent.mockfarm import MockFarm


class Agent:
    """The child process and its JSON log records."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.records: list[dict[str, Any]] = []
        self.exited_at: float | None = None
        self._changed = trio.Event()

    async def wait_event(self, name: str) -> dict[str, Any]:
        while True:
            for record in self.records:
                if record.get("event") == name:
                    return record
            if self.process.returncode is not None:
                raise RuntimeError(f"the agent exited ({self.process.returncode}) before {name}")
            await self._changed.wait()

    async def wait(self) -> int:
        code = await self.process.wait()
        if self.exited_at is None:
            self.exited_at = trio.current_time()
        return code

    async def _read(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    self.records.append(record)
            self._changed.set()
            self._changed = trio.Event()


@asynccontextmanager
async def run_agent(farm: MockFarm, root: Path, *args: str) -> AsyncIterator[Agent]:
    """Start the agent with its state under ``root``; yield once it takes signals."""
    argv: Sequence[str] = [
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
        "--log-format",
        "json",
        *args,
    ]
    env = {**os.environ, **farm.environ(), "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(
        list(argv),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    agent = Agent(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._read)
        try:
            with trio.fail_after(120):
                await agent.wait_event("worker.started")
            yield agent
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
            nursery.cancel_scope.cancel()
