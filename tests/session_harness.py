"""Helpers to drive a SessionRunner in tests with real, tiny subprocesses."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from actors import (
    ActionEnded,
    ActionKind,
    ActionOutput,
    ActionStarted,
    ActionState,
    Containment,
    Enqueue,
    Finish,
    QueuedAction,
    SessionCommand,
    SessionConfig,
    SessionEnded,
    SessionEvent,
    SessionLog,
    SessionRunner,
)
from agent.local._localrun import LocalPlan, LocalRunOptions, plan_local_session, session_config

PY = sys.executable


def memory_cgroups_here() -> bool:
    """Whether a Containment here gets a memory cgroup to write (``actors/_memcg.py``):
    then the kernel holds memory limits, and says so in its own words."""
    containment = Containment()
    try:
        return containment.memory_root is not None
    finally:
        containment.close()


def py(code: str) -> dict[str, Any]:
    """An onRun/onEnter action running ``code`` in a fresh Python."""
    return {"command": PY, "args": ["-c", code]}


def sh(script: str) -> dict[str, Any]:
    return {"command": "/bin/sh", "args": ["-c", script]}


def job(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "test job",
        "steps": list(steps),
        **fields,
    }


def step(name: str, on_run: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "script": {"actions": {"onRun": on_run}, **fields.pop("script", {})},
        **fields,
    }


def env(
    name: str,
    on_enter: dict[str, Any] | None = None,
    on_exit: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    actions = {}
    if on_enter is not None:
        actions["onEnter"] = on_enter
    if on_exit is not None:
        actions["onExit"] = on_exit
    environment: dict[str, Any] = {"name": name, **fields}
    if actions:
        environment["script"] = {"actions": actions, **environment.pop("script", {})}
    return environment


def plan(tmp_path: Path, template: dict[str, Any], **options: Any) -> LocalPlan:
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    return plan_local_session(LocalRunOptions(template=path, **options))


class Recorder:
    """Collects events; lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[SessionEvent] = []
        self._changed = trio.Event()

    def append(self, event: SessionEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[SessionEvent], bool]) -> SessionEvent:
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            await self._changed.wait()

    async def wait_for_line(self, text: str) -> None:
        await self.wait_for(lambda e: isinstance(e, ActionOutput) and text in e.lines)

    # ---- views

    def ended(self) -> list[tuple[ActionKind, str | None, ActionState]]:
        return [(e.kind, e.action_id, e.state) for e in self.events if isinstance(e, ActionEnded)]

    def states(self) -> list[ActionState]:
        return [e.state for e in self.events if isinstance(e, ActionEnded)]

    def started_names(self) -> list[tuple[ActionKind, str, dict[str, str]]]:
        return [
            (e.kind, e.name, dict(e.parameters))
            for e in self.events
            if isinstance(e, ActionStarted)
        ]

    def end_of(self, action_id: str | None) -> ActionEnded:
        [event] = [
            e for e in self.events if isinstance(e, ActionEnded) and e.action_id == action_id
        ]
        return event

    def output(self, action_id: str | None = None) -> list[str]:
        return [
            line
            for e in self.events
            if isinstance(e, ActionOutput) and (action_id is None or e.action_id == action_id)
            for line in e.lines
        ]

    def logs(self) -> list[str]:
        return [e.message for e in self.events if isinstance(e, SessionLog)]

    def session_ended(self) -> SessionEnded:
        [event] = [e for e in self.events if isinstance(e, SessionEnded)]
        return event


class Harness:
    def __init__(
        self,
        inbox: trio.MemorySendChannel[SessionCommand],
        recorder: Recorder,
        runner: SessionRunner,
    ) -> None:
        self.inbox = inbox
        self.recorder = recorder
        self.runner = runner

    async def send(self, command: SessionCommand) -> None:
        await self.inbox.send(command)

    async def enqueue(self, actions: Sequence[QueuedAction]) -> None:
        await self.inbox.send(Enqueue(tuple(actions)))


@asynccontextmanager
async def open_session(
    config: SessionConfig, *, resolver: Any = None, containment: Containment | None = None
) -> AsyncIterator[Harness]:
    """Run a SessionRunner for the block; on exit, Finish it and wait for its end."""
    recorder = Recorder()
    send, receive = trio.open_memory_channel[SessionEvent](0)
    runner = SessionRunner(config, send, resolver=resolver, containment=containment)

    async def collect() -> None:
        async with receive:
            async for event in receive:
                recorder.append(event)

    async def run_runner(
        *, task_status: trio.TaskStatus[trio.MemorySendChannel[SessionCommand]]
    ) -> None:
        async with send:
            await runner.run(task_status=task_status)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        inbox = await nursery.start(run_runner)
        harness = Harness(inbox, recorder, runner)
        yield harness
        try:
            await inbox.send(Finish())
        except trio.BrokenResourceError:
            pass


async def run_plan(lp: LocalPlan, tmp_path: Path, **overrides: Any) -> Recorder:
    config = session_config(lp, preserve=False)
    config = _with(config, **{"root_directory": tmp_path / "sessions", **overrides})
    async with open_session(config) as harness:
        await harness.enqueue(lp.actions)
    return harness.recorder


def _with(config: SessionConfig, **changes: Any) -> SessionConfig:
    import attrs

    return attrs.evolve(config, **changes)


def config_for(lp: LocalPlan, tmp_path: Path, **changes: Any) -> SessionConfig:
    return _with(
        session_config(lp, preserve=False), root_directory=tmp_path / "sessions", **changes
    )
