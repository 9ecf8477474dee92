"""The session runner's side of restarts.

With ``SessionConfig.restart_hold``, the session's launcher holds the session
should the agent die (``SessionLauncher.hold``), and the runner keeps its
state file up to date (``actors/_restart.py``): at each action's start and end,
and when an onEnter sets a variable. A ``Stop`` releases the hold first: a
deliberate end never waits. A runner given a ``SessionResume`` takes over such
a session: the same working directory, the environments entered again without
running their onEnter, the reports the farm never had sent again, and the
running action supervised to its end (what it wrote meanwhile first), then
the session goes on as the farm says.

``SessionRestarts`` is a base of ``SessionRunner``: holding the session through
the agent's death, keeping its state file, and taking a held session over. It
uses the runner's state and methods, declared here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import structlog
import trio

from ._contain import Containment
from ._hostwork import ActionHostContext, RunningAction, call_host_work, host_failed_state
from ._messages import (
    ActionEnded,
    ActionKind,
    ActionState,
    EnterEnvironment,
    HostAction,
    HostContext,
    Runnable,
    RunTask,
    SessionEvent,
    TaskHook,
)
from ._openjd import PreparedAction, SessionContext
from ._process import ActionControl, CancelMethod, CancelMode, ProcessResult
from ._restart import (
    RECENT_ENDED,
    EndedRecord,
    RestartHold,
    RunningRecord,
    SessionResume,
    SessionState,
    record_to_json,
    remove_files,
    write_state,
)
from ._spawn import Reattached, SessionLauncher

log = structlog.get_logger("farmhand.session")


class SessionRestarts:
    """See the module docstring."""

    # The runner's, used here.
    session_id: str
    _restart_hold: RestartHold | None
    _state_ids: tuple[str, str]
    _containment: Containment | None
    _launcher: SessionLauncher | None
    _context: SessionContext | None
    _running: RunningAction | None
    _actions_started: int

    def __init__(self) -> None:
        #: The launcher holds the session should we die (``RestartHold``).
        self._holding = False
        self._ended_records: tuple[EndedRecord, ...] = ()
        self._changes_written = 0
        #: The environments entered as the state file has them.
        self._entered_written: tuple[str, ...] = ()

    @property
    def working_directory(self) -> Path | None:
        return self._context.working_directory if self._context else None

    async def _emit(self, event: SessionEvent) -> None:
        raise NotImplementedError

    async def _started(
        self, running: RunningAction, kind: ActionKind, name: str, parameters: Mapping[str, str]
    ) -> None:
        raise NotImplementedError

    async def _end_action(
        self,
        running: RunningAction,
        state: ActionState,
        exit_code: int | None,
        *,
        manifests: tuple[Mapping[str, str], ...] | None = None,
    ) -> None:
        raise NotImplementedError

    async def _run_process(
        self,
        prepared: PreparedAction,
        running: RunningAction,
        context: SessionContext,
        tag: str | None,
        *,
        memory_limit: int | None = None,
        reattached: Reattached | None = None,
    ) -> ProcessResult:
        raise NotImplementedError

    async def _end_process_action(
        self,
        running: RunningAction,
        result: ProcessResult,
        hook: TaskHook | None,
        host: ActionHostContext,
    ) -> None:
        """End an action whose process has ended (run, or re-attached and supervised to
        its end): its state from ``result``; for a task that succeeded, its hook's
        ``after`` first (the output manifests it reports, or the action fails)."""
        state = ActionState.FAILED if running.mark_failed else _final_state(result)
        manifests: tuple[Mapping[str, str], ...] | None = None
        if hook is not None and state is ActionState.SUCCESS and not running.reported:
            found: list[Sequence[Mapping[str, str]]] = []

            async def after(host: HostContext) -> None:
                found.append(await hook.after(host))

            if await call_host_work(after, host, running):
                manifests = tuple(found[0])
            else:
                state = host_failed_state(running)
        await self._end_action(running, state, result.exit_code, manifests=manifests)

    def _remember_done(self, action_id: str) -> None:
        raise NotImplementedError

    def _spawn_meta(
        self,
        running: RunningAction,
        prepared: PreparedAction,
        context: SessionContext,
        tag: str | None,
    ) -> dict[str, object] | None:
        """What an agent taking the session over must know of the action about to
        start (``None`` unless held): it goes with the spawn request, and the
        launcher keeps it (nothing is written per action). The state file is written
        only when the environments entered have changed since it last was."""
        if not self._holding:
            return None
        deadline = None if prepared.timeout is None else time.time() + prepared.timeout
        assert running.started_at is not None
        environment_id = context.entering
        if running.kind is ActionKind.ENV_EXIT:
            environment_id = context.entered[-1] if context.entered else None
        record = RunningRecord(
            action_id=running.action_id,
            kind=running.kind,
            pid=0,  # the launcher knows it
            started_at=running.started_at,
            deadline=deadline,
            cancel_mode=prepared.method.mode.value,
            notify_period=prepared.method.notify_period,
            environment_id=environment_id,
            tag=tag,
        )
        if context.entered != self._entered_written:
            self._write_state()
        described = record_to_json(record)
        del described["pid"]
        return {"running": described, "ended": [record_to_json(e) for e in self._ended_records]}

    async def _hold(self, launcher: SessionLauncher) -> None:
        """Have the launcher hold the session should we die (``restart_hold``)."""
        hold = self._restart_hold
        directory = self.working_directory
        if hold is None or directory is None:
            return
        session_id = self.session_id
        try:
            await trio.to_thread.run_sync(
                partial(hold.directory.mkdir, mode=0o700, parents=True, exist_ok=True)
            )
        except OSError as exc:
            log.warning("session.no_restart_hold", directory=str(hold.directory), error=str(exc))
            return
        self._holding = await launcher.hold(
            grace=hold.grace,
            socket_path=hold.socket_path(session_id),
            spill=hold.spill_path(session_id),
            files=[hold.state_path(session_id), hold.shipped_path(session_id)],
            directory=directory,
        )
        if self._holding:
            if self._containment is not None:
                # Its processes and directory are the launcher's to end now, not the
                # watchdog's, should we die.
                self._containment.hold_session(session_id, directory, launcher)
            self._write_state()

    async def _release(self) -> None:
        """A deliberate end: the launcher kills at once should we die (no waiting)."""
        if not self._holding:
            return
        self._holding = False
        if self._launcher is not None:
            await self._launcher.release()
        directory = self.working_directory
        if self._containment is not None and directory is not None:
            self._containment.release_session(self.session_id, directory)
        hold = self._restart_hold
        if hold is not None:
            remove_files(hold, self.session_id)

    def _record_ended(self, running: RunningAction, state: ActionState, code: int | None) -> None:
        """Kept for the next spawn's ``meta`` (see ``_spawn_meta``)."""
        if running.action_id is not None:
            message = running.status_message
            if not state.succeeded:
                message = running.fail_message or message
            ended = EndedRecord(
                action_id=running.action_id,
                kind=running.kind,
                state=state,
                exit_code=code,
                started_at=running.started_at,
                ended_at=datetime.now(UTC),
                message=message,
            )
            self._ended_records = (*self._ended_records, ended)[-RECENT_ENDED:]
        # Until the next spawn, a new agent learns of this action's end from its
        # launcher (which keeps its exit with its meta); from then on, from this.

    def _write_state(self) -> None:
        """The state file a new agent takes the session over with (atomic; small)."""
        hold = self._restart_hold
        context = self._context
        if hold is None or not self._holding or context is None:
            return
        self._changes_written = context.changes_made
        self._entered_written = context.entered
        state = SessionState(
            session_id=self.session_id,
            queue_id=self._state_ids[0],
            job_id=self._state_ids[1],
            working_directory=context.working_directory,
            entered=context.entered_changes(),
            actions_started=self._actions_started,
        )
        try:
            write_state(hold.state_path(self.session_id), state)
        except OSError as exc:
            log.warning("session.state_write_failed", error=str(exc))

    async def _resume_session(self, resume: SessionResume, context: SessionContext) -> None:
        """Take over from an earlier agent (see the module docstring)."""
        # Before the first checkpoint: a Replace that still lists these actions must
        # neither queue the running one nor run a finished one again.
        for ended in resume.unreported:
            self._remember_done(ended.action_id)
        self._ended_records = resume.held.ended
        record = resume.held.running  # with the launcher's pid: its process, if any
        reattached = resume.held.reattached
        running: RunningAction | None = None
        if record is not None:
            running = RunningAction(record.action_id, record.kind, ActionControl())
            running.started_at = record.started_at
            self._running = running
        for ended in resume.unreported:
            await self._emit(
                ActionEnded(
                    self.session_id,
                    ended.action_id,
                    ended.kind,
                    ended.state,
                    exit_code=ended.exit_code,
                    status_message=ended.message if ended.state.succeeded else None,
                    fail_message=None if ended.state.succeeded else ended.message,
                    started_at=ended.started_at,
                    ended_at=ended.ended_at,
                )
            )
        if record is None or running is None or not resume.assigned:
            # Nothing to take over (the farm has the last action's report, or has
            # taken it back): it goes, if it still runs; the session's other processes
            # (an environment's daemons) stay.
            if reattached.output_fd is not None:
                os.close(reattached.output_fd)
                reattached.output_fd = None
            process = reattached.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(OSError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            self._running = None
            if running is not None and running.action_id is not None:
                self._remember_done(running.action_id)
            return
        runnable = resume.running
        try:
            with structlog.contextvars.bound_contextvars(action_id=record.action_id):
                if runnable is None:
                    name, parameters = record.kind.value, dict[str, str]()
                else:
                    name, parameters = _describe(runnable, context)
                await self._started(running, record.kind, name, parameters)
                if record.kind is ActionKind.ENV_ENTER:
                    context.entering = record.environment_id
                left = None if record.deadline is None else max(record.deadline - time.time(), 0)
                method = CancelMethod(CancelMode(record.cancel_mode), record.notify_period)
                try:
                    result = await self._run_process(
                        PreparedAction(("re-attached",), {}, left, method),
                        running,
                        context,
                        record.tag,
                        reattached=reattached,
                    )
                finally:
                    context.entering = None
                hook = runnable.hook if isinstance(runnable, RunTask) else None
                host = ActionHostContext(self.session_id, running, context, self._emit)
                await self._end_process_action(running, result, hook, host)
        finally:
            self._running = None
            if record.action_id is not None:
                self._remember_done(record.action_id)
            if record.kind is ActionKind.ENV_EXIT and record.environment_id is not None:
                context.finish_exit(record.environment_id)


def _final_state(result: ProcessResult) -> ActionState:
    if result.spawn_error is not None or result.mark_failed:
        return ActionState.FAILED
    if result.timed_out:
        return ActionState.TIMEOUT
    if result.canceled:
        return ActionState.CANCELED
    return ActionState.SUCCESS if result.exit_code == 0 else ActionState.FAILED


def _describe(runnable: Runnable, context: SessionContext) -> tuple[str, dict[str, str]]:
    if isinstance(runnable, HostAction):
        return runnable.label, {}
    if isinstance(runnable, RunTask):
        return runnable.step_name, {
            name: str(value.value) for name, value in runnable.parameters.items()
        }
    if isinstance(runnable, EnterEnvironment):
        return runnable.name, {}
    return context.environment_name(runnable.environment_id), {}
