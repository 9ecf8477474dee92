"""The next task started while the last one is reported (``actors/_ahead.py``), against
real, tiny subprocesses: started before the last one's report, never after a failure,
killed unreported when a Stop or a Cancel comes first, events as before."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from actors import (
    ActionEnded,
    ActionStarted,
    ActionState,
    Cancel,
    Enqueue,
    Finish,
    QueuedAction,
    Replace,
    RunTask,
    SessionCommand,
    SessionEvent,
    SessionLog,
    SessionRunner,
    Stop,
)
from tests.session_harness import PY, config_for, job, plan, step

OK, FAILED, NEVER = ActionState.SUCCESS, ActionState.FAILED, ActionState.NEVER_ATTEMPTED

#: Real time: the processes are real. Generous: a failure here is a timeout.
LIMIT = 20


def _connects(path: Path, *, then: str = "") -> str:
    """Python code that connects to the unix socket ``path`` (the test learns the
    process runs), then runs ``then``."""
    return f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(path)!r}); {then}"


def _tasks(tmp_path: Path, code: str, count: int) -> list[RunTask]:
    """``count`` tasks; task N runs ``code`` formatted with ``n`` (``{{Task.Param.N}}``)."""
    template = job(
        step(
            "S",
            {"command": PY, "args": ["-c", code]},
            parameterSpace={
                "taskParameterDefinitions": [{"name": "N", "type": "INT", "range": f"1-{count}"}]
            },
        )
    )
    lp = plan(tmp_path, template)
    return [a for a in lp.actions if isinstance(a, RunTask)]


class _Gated:
    """A session whose events are taken in only while the gate is open: closed, the
    runner waits on its next event (the channel has no buffer)."""

    inbox: trio.MemorySendChannel[SessionCommand]

    def __init__(self) -> None:
        self.events: list[SessionEvent] = []
        self.open = trio.Event()

    def ended(self, action_id: str | None) -> ActionEnded:
        [event] = [
            e for e in self.events if isinstance(e, ActionEnded) and e.action_id == action_id
        ]
        return event

    def started(self) -> list[str | None]:
        return [e.action_id for e in self.events if isinstance(e, ActionStarted)]


@asynccontextmanager
async def _gated_session(
    tmp_path: Path, tasks: Sequence[QueuedAction], close_after: str
) -> AsyncIterator[_Gated]:
    """Run ``tasks`` in a session; take in its events up to the note that runs the task
    ``close_after``, then none until ``gate.open`` is set. Finish on the way out."""
    lp = plan(tmp_path, job(step("S", {"command": "true"})))
    send, receive = trio.open_memory_channel[SessionEvent](0)
    runner = SessionRunner(config_for(lp, tmp_path), send)
    async with trio.open_nursery() as nursery:

        async def run_runner(
            *, task_status: trio.TaskStatus[trio.MemorySendChannel[SessionCommand]]
        ) -> None:
            async with send:
                await runner.run(task_status=task_status)

        gated = _Gated()

        async def collect() -> None:
            async with receive:
                async for event in receive:
                    gated.events.append(event)
                    if (
                        isinstance(event, SessionLog)
                        and event.action_id == close_after
                        and event.message.startswith("running:")
                    ):
                        await gated.open.wait()

        nursery.start_soon(collect)
        gated.inbox = inbox = await nursery.start(run_runner)
        await inbox.send(Enqueue(tuple(tasks)))
        yield gated
        gated.open.set()
        try:
            await inbox.send(Finish())
        except trio.BrokenResourceError:
            pass  # it has ended (a Stop)


async def _listen(path: Path) -> trio.socket.SocketType:
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(8)
    return listener


async def test_the_next_task_starts_before_the_last_one_is_reported(tmp_path: Path) -> None:
    """Once a task has succeeded, the next one's process starts before the runner reports
    the first (here it cannot: its events wait), and the reports come as ever: the first
    one's end before the second one's start, in time too."""
    path = tmp_path / "s"
    with trio.fail_after(LIMIT), await _listen(path) as listener:
        first, second = _tasks(tmp_path, _connects(path), 2)
        async with _gated_session(tmp_path, [first, second], first.action_id) as gated:
            one, _ = await listener.accept()
            two, _ = await listener.accept()  # the second task runs...
            await trio.testing.wait_all_tasks_blocked()
            # ...while the first one's end is still to be reported.
            assert gated.started() == [first.action_id]
            assert not any(isinstance(e, ActionEnded) for e in gated.events)
            one.close()
            two.close()
    ended = gated.ended(first.action_id)
    [started] = [
        e for e in gated.events if isinstance(e, ActionStarted) and e.action_id == second.action_id
    ]
    assert ended.state is OK
    assert gated.ended(second.action_id).state is OK
    assert ended.ended_at is not None
    assert ended.ended_at <= started.time
    # All of the first one's events before the second one's start.
    firsts = [e for e in gated.events if getattr(e, "action_id", None) == first.action_id]
    assert gated.events.index(firsts[-1]) < gated.events.index(started)
    assert firsts[-1] is ended
    logs = [e.message for e in gated.events if isinstance(e, SessionLog)]
    assert [m.split(":")[0] for m in logs if not m.startswith("session")] == [
        "running",
        "process exited with code 0",
        "usage",
    ] * 2


async def test_a_failed_task_starts_nothing_after_it(tmp_path: Path) -> None:
    """A task that fails (exit 1) starts nothing ahead: the next task never runs."""
    path = tmp_path / "s"
    with trio.fail_after(LIMIT), await _listen(path) as listener:
        code = "import sys; n = {{Task.Param.N}}; n == 1 and sys.exit(1); " + _connects(path)
        first, second = _tasks(tmp_path, code, 2)
        async with _gated_session(tmp_path, [first, second], first.action_id) as gated:
            await trio.testing.wait_all_tasks_blocked()
        # Everything the session started is gone: a connection would be waiting.
        with socket.socket(fileno=os.dup(listener.fileno())) as raw:
            raw.setblocking(False)
            try:
                raw.accept()
            except BlockingIOError:
                pass
            else:
                raise AssertionError("the task after a failed one ran")
    assert gated.ended(first.action_id).state is FAILED
    assert gated.ended(second.action_id).state is NEVER
    assert gated.started() == [first.action_id]


async def _command_while_ahead(
    tmp_path: Path, command_for: Callable[[list[RunTask]], SessionCommand], count: int
) -> tuple[_Gated, list[RunTask]]:
    """Tasks that connect (and, after the first, wait for the test); the command comes
    while the second one runs ahead of its turn, the first one not yet reported. The
    second one's process must be gone (its connection ended)."""
    path = tmp_path / "s"
    with trio.fail_after(LIMIT), await _listen(path) as listener:
        tasks = _tasks(tmp_path, _connects(path, then="{{Task.Param.N}} > 1 and s.recv(1)"), count)
        async with _gated_session(tmp_path, tasks, tasks[0].action_id) as gated:
            one, _ = await listener.accept()
            two, _ = await listener.accept()  # the second task, ahead of its turn
            one.close()
            await trio.testing.wait_all_tasks_blocked()
            assert gated.started() == [tasks[0].action_id]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(gated.inbox.send, command_for(tasks))
                await trio.testing.wait_all_tasks_blocked()
                gated.open.set()
            with two:
                assert await two.recv(1) == b""  # killed
            if count > 2:
                three, _ = await listener.accept()
                three.close()
    assert tasks[1].action_id not in gated.started()
    return gated, tasks


async def test_a_stop_kills_the_task_started_ahead_unreported(tmp_path: Path) -> None:
    """A Stop while the next task runs ahead of its turn: it is killed, never reported
    started, and NEVER_ATTEMPTED, as a queued task would be; the last one is reported
    as a Stop reports the running action."""
    gated, tasks = await _command_while_ahead(tmp_path, lambda _: Stop(reason="stop"), 2)
    assert gated.ended(tasks[0].action_id).state is ActionState.INTERRUPTED
    assert gated.ended(tasks[1].action_id).state is NEVER


async def test_a_cancel_of_the_task_started_ahead_kills_it_and_runs_the_rest(
    tmp_path: Path,
) -> None:
    """A Cancel naming the task that runs ahead of its turn: it is killed unreported and
    NEVER_ATTEMPTED, and the tasks after it run."""
    gated, tasks = await _command_while_ahead(
        tmp_path, lambda tasks: Cancel(action_ids=frozenset({tasks[1].action_id})), 3
    )
    assert gated.started() == [tasks[0].action_id, tasks[2].action_id]
    assert gated.ended(tasks[0].action_id).state is OK
    assert gated.ended(tasks[1].action_id).state is NEVER
    assert gated.ended(tasks[2].action_id).state is OK


async def test_a_replace_without_the_task_started_ahead_kills_it(tmp_path: Path) -> None:
    """A Replace that no longer lists the task running ahead of its turn: it is killed,
    and reported neither started nor ended (the farm took it back); the new queue runs."""
    gated, tasks = await _command_while_ahead(
        tmp_path, lambda tasks: Replace((tasks[0], tasks[2])), 3
    )
    assert gated.started() == [tasks[0].action_id, tasks[2].action_id]
    ended = [e.action_id for e in gated.events if isinstance(e, ActionEnded)]
    assert ended == [tasks[0].action_id, tasks[2].action_id]
