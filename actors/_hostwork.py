"""The agent's own work inside a session action.

A ``HostAction`` (syncing job attachments) and a ``RunTask``'s ``TaskHook`` run
coroutines of the agent in the session runner's task. This module holds what
the runner knows about the action being run (``RunningAction``), the
``HostContext`` such work gets, and ``call_host_work``, which runs the work and
cancels it the way a process would be cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path

import attrs
import structlog
import trio
from openjd.expr import PathMappingRule

from ._jobuser import ResolvedJobUser
from ._messages import (
    ActionKind,
    ActionProgress,
    ActionState,
    ActionStatusMessage,
    ActionUsage,
    HostContext,
    SessionEvent,
    SessionLog,
)
from ._openjd import SessionContext
from ._process import ActionControl

log = structlog.get_logger("farmhand.session")

Emit = Callable[[SessionEvent], Awaitable[None]]


@attrs.define(eq=False)
class RunningAction:
    """The action being run, and what has been learned about it so far."""

    action_id: str | None
    kind: ActionKind
    control: ActionControl
    started_at: datetime | None = None
    progress: float | None = None
    status_message: str | None = None
    fail_message: str | None = None
    #: Set when the final state was reported early (a Stop reports INTERRUPTED at once).
    reported: bool = False
    #: A malformed environment command fails the action, even if its process had
    #: already exited 0 when the line was read.
    mark_failed: bool = False
    #: What its process cost, once it has ended.
    usage: ActionUsage | None = None
    #: When it ended, if that was decided before its report (the next task was
    #: started first: its start must not come before this end).
    ended_at: datetime | None = None


class ActionHostContext:
    """The ``HostContext`` of one action (see ``HostAction``): its events go out
    through the session runner's ``emit``."""

    def __init__(
        self, session_id: str, running: RunningAction, context: SessionContext, emit: Emit
    ) -> None:
        self._session_id = session_id
        self._running = running
        self._context = context
        self._emit = emit

    @property
    def working_directory(self) -> Path:
        return self._context.working_directory

    @property
    def job_user(self) -> ResolvedJobUser | None:
        return self._context.job_user

    async def progress(self, percent: float) -> None:
        self._running.progress = percent
        await self._emit(ActionProgress(self._session_id, self._running.action_id, percent))

    async def status(self, message: str) -> None:
        self._running.status_message = message
        await self._emit(ActionStatusMessage(self._session_id, self._running.action_id, message))

    async def log(self, message: str, level: str = "info") -> None:
        await self._emit(SessionLog(self._session_id, self._running.action_id, level, message))

    def add_path_mapping_rules(self, rules: Sequence[PathMappingRule]) -> None:
        self._context.add_path_mapping_rules(rules)


async def call_host_work(
    work: Callable[[HostContext], Awaitable[None]], host: HostContext, running: RunningAction
) -> bool:
    """Run the agent's own work for an action; cancelled as the action is. ``True``: it
    returned; ``False``: it raised (``running.fail_message`` says why, and the session
    log has the line) or was cancelled."""
    control = running.control
    failed = False

    async def cancel_on_request(scope: trio.CancelScope) -> None:
        while not control.requested:
            await control.wait_changed()
        scope.cancel(reason=control.reason or "the action was cancelled")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_on_request, nursery.cancel_scope)
        try:
            await work(host)
        except Exception as exc:  # the work's failure fails this action only
            failed = True
            message = error_line(exc)
            log.warning("session.host_work_failed", error=message, exc_info=True)
            running.fail_message = message
            await host.log(message, "error")
        nursery.cancel_scope.cancel(reason="the work is done")
    return not failed and not control.requested


def host_failed_state(running: RunningAction) -> ActionState:
    """The final state of an action whose host work did not return."""
    control = running.control
    if control.requested and not control.mark_failed and running.fail_message is None:
        return ActionState.CANCELED
    return ActionState.FAILED


def error_line(exc: BaseException) -> str:
    """One line for an error: a group's leaves (what actually failed), not its summary."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(exc)
    parts = [str(e) or type(e).__name__ for e in leaves[:3]]
    more = f" (and {len(leaves) - 3} more)" if len(leaves) > 3 else ""
    return "; ".join(parts) + more
