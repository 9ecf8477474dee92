"""A session's next task, started while the last one is reported.

Per task the runner reports the last action's end (its notes, ``ActionEnded``),
then resolves, prepares and reports the next one (``ActionStarted``, ``running:
...``) and only then asks its launcher to start the process: on a machine of
two cores, main, launcher and task each waited on the other. Once a task's
outcome is decided as a success (its process exited 0, its output read to the
end and nothing in it failed it, no stop, cancel or finish pending, no hook to
run after it), the runner resolves and prepares the next queued task, sends
its spawn, and only then reports: the launcher starts the next process while
the runner reports the last one and the next one's start, in the same order
and with the same events as before (the last one's end time taken before the
next one's start).

The next task is not the runner's running action until its turn: a ``Stop``,
a ``Cancel`` naming it, a ``Replace`` without it or a failure before its turn
report it as ever (NEVER_ATTEMPTED) and its process is killed before it is run
(``StartedAhead.discard``), never reported started. Only tasks go ahead, and
only in sessions without a job user or a restart hold (whose spawns carry
state of the last action), with a launcher.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import attrs
import structlog

from ._contain import Containment
from ._hostwork import RunningAction
from ._messages import (
    ActionKind,
    EnterEnvironment,
    ExitEnvironment,
    HostAction,
    QueuedAction,
    Runnable,
    RunTask,
    Stop,
)
from ._openjd import ActionSetupError, PreparedAction, SessionContext
from ._process import (
    ActionControl,
    ProcessResult,
    StartedAhead,
    open_output_pipe,
    start_ahead,
)
from ._sessionconfig import SessionConfig
from ._spawn import SessionLauncher, SpawnRequest

log = structlog.get_logger("farmhand.session")

Resolver = Callable[[QueuedAction], Awaitable[Runnable]]


@attrs.define(eq=False)
class Begun:
    """An action resolved and prepared, nothing of it reported yet
    (``SessionRunner._begin``); ``SessionRunner._proceed`` reports and runs it."""

    item: QueuedAction
    running: RunningAction
    #: What the resolver made of it (with the action's tag in its environment).
    runnable: Runnable | None = None
    #: The resolver's failure (the action fails with it).
    error: Exception | None = None
    #: The tag variable of its processes, and its number in the session.
    tag: dict[str, str] = attrs.Factory(dict)
    number: int = 0
    prepared: PreparedAction | None = None
    #: Why it could not be prepared (the action fails with it).
    setup_error: ActionSetupError | None = None
    #: Its spawn request, made ready ahead of its turn.
    request: SpawnRequest | None = None
    #: Its process, when started ahead of its turn.
    ahead: StartedAhead | None = None

    def matches(self, item: QueuedAction) -> bool:
        """Whether ``item`` is this action (a ``Replace`` queues new objects)."""
        return item is self.item or (
            item.action_id is not None
            and item.action_id == self.item.action_id
            and item.kind is self.item.kind
        )


def succeeded(result: ProcessResult, running: RunningAction) -> bool:
    """Whether a process's end makes its action a success, as far as the process
    goes (the runner checks its own state besides)."""
    return (
        result.spawn_error is None
        and result.exit_code == 0
        and not result.canceled
        and not result.mark_failed
        and not running.mark_failed
        and not running.reported
        and not isinstance((result.usage or {}).get("memory_limit"), dict)
    )


class SessionAhead:
    """A base of ``SessionRunner``: beginning an action (resolved and prepared before
    anything of it is reported), and the next task begun and started ahead of its
    turn (see the module docstring). It uses the runner's state, declared here."""

    # The runner's, used here.
    config: SessionConfig
    session_id: str
    _queue: deque[QueuedAction]
    _resolver: Resolver
    _context: SessionContext | None
    _containment: Containment | None
    _launcher: SessionLauncher | None
    _holding: bool
    _stop: Stop | None
    _ending: bool
    _finish_running_only: bool
    _cancel_after_running: set[str]
    _setup_error: str | None
    _actions_started: int

    def __init__(self) -> None:
        #: The next task, begun (and maybe started) ahead of its turn.
        self._next: Begun | None = None
        #: Its output pipe, made while the last one ran (read end, write end).
        self._pipe: tuple[int, int] | None = None

    async def _begin(self, item: QueuedAction, running: RunningAction) -> Begun:
        """Resolve an action, reporting nothing yet (see ``_ahead.py``)."""
        begun = Begun(item, running)
        try:
            runnable = await self._resolver(item)
        except Exception as exc:  # the resolver's failure fails this action only
            begun.error = exc
            return begun
        begun.runnable = runnable
        if running.reported:
            return begun  # a Stop already reported it while it was being resolved
        begun.number = self._actions_started + 1
        if self._containment:
            begun.tag = self._containment.action_environment(self.session_id, begun.number)
        begun.runnable = attrs.evolve(runnable, env={**runnable.env, **begun.tag})
        return begun

    def _prepare_begun(self, begun: Begun, context: SessionContext) -> None:
        runnable = begun.runnable
        if (
            runnable is None
            or isinstance(runnable, HostAction)
            or begun.prepared is not None
            or begun.setup_error is not None
        ):
            return
        try:
            if self._setup_error is not None:
                raise ActionSetupError(self._setup_error)
            begun.prepared = self._prepare(runnable, context)
        except ActionSetupError as exc:
            begun.setup_error = exc

    def _memory_limit(self, runnable: Runnable) -> int | None:
        limits = [self.config.memory_limit]
        if isinstance(runnable, RunTask):
            limits.append(runnable.memory_limit)
        return min((x for x in limits if x is not None), default=None)

    def _ahead_possible(self) -> bool:
        """Whether the next queued action may be begun and started ahead of its turn."""
        context = self._context
        return (
            bool(self._queue)
            and self._queue[0].kind is ActionKind.TASK_RUN
            and self._launcher is not None
            and not self._holding
            and context is not None
            and context.job_user is None
            and self._stop is None
            and not self._ending
            and not self._finish_running_only
            and not self._cancel_after_running
        )

    async def _begin_next(self) -> None:
        """While a task runs (its output read meanwhile): resolve and prepare the next one, and
        make its spawn request, so that only the request is left to send once this
        one has succeeded (``_go_ahead``). Not where preparing has effects (the
        step's embedded files are written then: only after this task has ended)."""
        context = self._context
        if self._next is not None or not self._ahead_possible() or context is None:
            return
        item = self._queue[0]
        following = RunningAction(item.action_id, item.kind, ActionControl())
        with structlog.contextvars.bound_contextvars(action_id=item.action_id):
            begun = await self._begin(item, following)
        runnable = begun.runnable
        if (
            isinstance(runnable, RunTask)
            and runnable.hook is None
            and not runnable.script.embeddedFiles
        ):
            self._prepare_begun(begun, context)
            self._spawn_request(begun, context)
        if self._queue and begun.matches(self._queue[0]):
            self._next = begun
        if self._pipe is None and begun.request is not None:
            # Its output pipe too: two system calls fewer once this one has ended.
            with contextlib.suppress(OSError):
                self._pipe = open_output_pipe()

    def _spawn_request(self, begun: Begun, context: SessionContext) -> None:
        prepared, launcher = begun.prepared, self._launcher
        if prepared is None or prepared.argv is None or launcher is None:
            return
        assert begun.runnable is not None
        try:
            begun.request = launcher.spawn_request(
                prepared.argv,
                env=prepared.env,
                cwd=context.working_directory,
                memory_limit=self._memory_limit(begun.runnable),
            )
        except OSError:
            pass  # its start fails at its turn, the usual way

    async def _go_ahead(self, running: RunningAction, result: ProcessResult) -> None:
        """Once a task has succeeded, start the next queued one before reporting the
        last (see ``_ahead.py``); the runner takes it up at its turn (``_run_item``)."""
        context = self._context
        launcher = self._launcher
        if not (succeeded(result, running) and self._ahead_possible()):
            return
        assert context is not None
        assert launcher is not None
        item = self._queue[0]
        running.ended_at = datetime.now(UTC)  # before the next one's start
        begun = self._next
        if begun is None or not begun.matches(item):
            following = RunningAction(item.action_id, item.kind, ActionControl())
            with structlog.contextvars.bound_contextvars(action_id=item.action_id):
                begun = await self._begin(item, following)
            self._next = begun
        begun.running.started_at = datetime.now(UTC)
        runnable = begun.runnable
        if not isinstance(runnable, RunTask) or runnable.hook is not None:
            return  # its turn comes the usual way, resolved already
        if begun.request is None:
            self._prepare_begun(begun, context)
            self._spawn_request(begun, context)
        if (
            begun.request is None
            or not succeeded(result, running)
            or not self._ahead_possible()
            or not begun.matches(self._queue[0])
        ):
            return
        pipe, self._pipe = self._pipe, None
        begun.ahead = await start_ahead(launcher, begun.request, pipe)

    async def _discard(self, begun: Begun | None) -> None:
        """An action begun ahead of its turn that is not to run (see ``_ahead.py``)."""
        if begun is not None and begun.ahead is not None:
            ahead, begun.ahead = begun.ahead, None
            log.debug("session.ahead_discarded", action_id=begun.item.action_id)
            await ahead.discard()

    @staticmethod
    def _prepare(runnable: Runnable, context: SessionContext) -> PreparedAction:
        if isinstance(runnable, EnterEnvironment):
            return context.prepare_enter(runnable)
        if isinstance(runnable, ExitEnvironment):
            return context.prepare_exit(runnable)
        assert isinstance(runnable, RunTask), "host actions are not prepared"
        return context.prepare_task(runnable)
