"""The session runner: one actor per OpenJD session.

It owns a queue of actions and runs them one at a time, in one working
directory, reporting every state change as an event. It behaves like
openjd-sessions (which the official Deadline agent uses) without threads or
polling: waits are channel receives, process waits and deadlines.

Queue semantics
---------------
- Actions run in queue order. An action that does not succeed (FAILED,
  CANCELED, TIMEOUT, INTERRUPTED) puts the session into *ending* mode: every
  queued action that is not an environment exit is reported NEVER_ATTEMPTED at
  once, and so is anything enqueued later. Environment exits still run, for the
  environments that are entered (an environment whose onEnter failed counts as
  entered, so its onExit runs).
- ``Cancel`` cancels the running action with its own cancelation method (or
  sooner, given a time limit) and drops queued actions it names.
- ``Stop`` ends the session: the running action is reported (INTERRUPTED by
  default) at once and cancelled within the grace period; queued actions are
  NEVER_ATTEMPTED; then every entered environment is exited, innermost first,
  within what is left of the grace.
- After ``Finish`` (or when the inbox is closed), once the queue is empty, the
  environments still entered are exited and the runner ends.

Host actions
------------
A ``HostAction`` is work the agent does itself (syncing job attachments): its
coroutine runs in the runner's task with a ``HostContext`` (progress, status,
session-log lines, extra path-mapping rules for later actions) and is
cancelled like a process would be. A ``RunTask`` may carry a ``TaskHook``:
``before`` runs before the process starts, ``after`` once it has succeeded,
and the action is reported SUCCEEDED (with the manifests ``after`` returns)
only when ``after`` has returned; an exception from either fails the action.

The runner ends with a ``SessionEnded`` event, after removing its working
directory (unless asked to keep it).

Restarts: with ``SessionConfig.restart_hold`` the session outlives the agent's
death, and a runner given a ``SessionResume`` takes one over (``_sessionkeep.py``).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import attrs
import structlog
import trio

from . import _output
from ._actionoutput import OutputCap, apply_messages, output_limit_reached
from ._ahead import Begun, Resolver, SessionAhead
from ._contain import Containment
from ._hostwork import (
    ActionHostContext,
    RunningAction,
    call_host_work,
    host_failed_state,
)
from ._jobuser import JobUserError, ResolvedJobUser, remove_as, signal_as, sudo_path
from ._messages import (
    ActionEnded,
    ActionFailMessage,
    ActionKind,
    ActionOutput,
    ActionStarted,
    ActionState,
    ActionStatusMessage,
    Cancel,
    Enqueue,
    EnterEnvironment,
    ExitEnvironment,
    Finish,
    HostAction,
    QueuedAction,
    Replace,
    Runnable,
    RunTask,
    SessionCommand,
    SessionEnded,
    SessionEvent,
    SessionLog,
    Stop,
)
from ._openjd import PreparedAction, SessionContext, describe_command
from ._paths import private_directory
from ._platform import processes_of_user
from ._process import (
    ActionControl,
    ProcessResult,
    StartedAhead,
    resume_process,
    run_process,
)
from ._restart import SessionResume
from ._sessionconfig import SessionConfig, default_session_root
from ._sessionkeep import SessionRestarts, _describe
from ._spawn import Reattached, SessionLauncher
from ._usage import memory_limit_message, usage_from_launcher
from ._watchdog import TAG_VARIABLE, find_processes

log = structlog.get_logger("farmhand.session")

#: How many finished action ids are remembered, so a ``Replace`` that still
#: lists them (the farm has not seen the report yet) does not run them again.
_REMEMBERED_DONE = 4096


async def _resolve_runnable(item: QueuedAction) -> Runnable:
    if isinstance(item, EnterEnvironment | ExitEnvironment | RunTask | HostAction):
        return item
    raise TypeError(f"no resolver for queued action of type {type(item).__name__}")


class SessionRunner(SessionRestarts, SessionAhead):
    """Runs one OpenJD session's actions. Start it with ``nursery.start(runner.run)``;
    the value it starts with is its inbox (a ``MemorySendChannel[SessionCommand]``).
    """

    def __init__(
        self,
        config: SessionConfig,
        events: trio.MemorySendChannel[SessionEvent],
        *,
        resolver: Resolver | None = None,
        containment: Containment | None = None,
        resume: SessionResume | None = None,
    ) -> None:
        SessionRestarts.__init__(self)
        SessionAhead.__init__(self)
        self.config = config
        self._resume = resume
        # A working directory the user keeps is not the launcher's to remove.
        self._restart_hold = None if config.retain_working_directory else config.restart_hold
        self._state_ids = (config.queue_id, config.job_id)
        self._own_containment = containment is None
        self._containment = containment
        self.session_id = config.session_id
        self._events = events
        self._resolver = resolver or _resolve_runnable
        self._queue: deque[QueuedAction] = deque()
        self._wakeup = trio.Event()
        self._inbox_closed = False
        self._ending = False  # an action did not succeed: only exits from now on
        #: ``Finish(running_only=True)``: once the running action ends, only exits.
        self._finish_running_only = False
        self._succeeded = True
        self._stop: Stop | None = None
        self._stop_deadline = math.inf
        self._grace_over = False
        self._cancel_after_running: set[str] = set()
        self._setup_error: str | None = None
        self._actions_started = 0
        self._running: RunningAction | None = None
        self._done_ids: deque[str] = deque(maxlen=_REMEMBERED_DONE)
        self._done_set: set[str] = set()
        self._context: SessionContext | None = None
        self._events_broken = False
        #: Starts the session's processes; made with the first one.
        self._launcher: SessionLauncher | None = None
        self._launcher_tried = False
        #: The job user this session holds in the containment (see ``release_user``).
        self._held_user: ResolvedJobUser | None = None
        #: Masks the session's secrets in everything it emits (output, notes, messages).
        self.redactor = _output.Redactor(
            min_length=config.min_secret_length, patterns=config.secret_patterns
        )

    # ------------------------------------------------------------------ public

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[
            trio.MemorySendChannel[SessionCommand]
        ] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # The session's log lines (and its actions', which add action_id) carry its id.
        with structlog.contextvars.bound_contextvars(session_id=self.config.session_id):
            await self._run(task_status)

    async def _run(
        self, task_status: trio.TaskStatus[trio.MemorySendChannel[SessionCommand]]
    ) -> None:
        config = self.config
        job_user = self._resolve_job_user()
        if config.root_directory is None:
            root = private_directory(default_session_root())
        else:
            root = config.root_directory
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if job_user is not None and root.stat().st_uid == os.geteuid():
            # The job user must be able to reach its (group-shared) session directory.
            root.chmod(root.stat().st_mode | 0o711)
        if self._resume is not None:
            working_directory = self._resume.held.state.working_directory
            working_directory.mkdir(mode=0o700, exist_ok=True)
        else:
            working_directory = Path(tempfile.mkdtemp(dir=root, prefix="session-"))
        if self._containment is None:
            self._containment = Containment()
        containment = self._containment
        containment.track_directory(working_directory)
        if job_user is not None and not job_user.is_agent_user:
            containment.hold_user(job_user.uid)
            self._held_user = job_user
        try:
            self._context = SessionContext(
                session_id=config.session_id,
                working_directory=working_directory,
                job_parameter_values=config.job_parameter_values,
                job_name=config.job_name,
                path_mapping_rules=config.path_mapping_rules,
                session_env=config.session_env,
                base_env=config.base_env,
                extensions=config.extensions,
                redactor=self.redactor,
                job_user=job_user,
            )
            if self._resume is not None:
                for enter, changes in self._resume.environments:
                    self._context.restore_entered(enter, changes)
                self._actions_started = self._resume.held.state.actions_started
                self._launcher = self._resume.held.reattached.launcher
                self._launcher_tried = True
                containment.adopt_launcher(self.session_id, self._launcher)
                await self._hold(self._launcher)
            inbox_send, inbox_receive = trio.open_memory_channel[SessionCommand](0)
            await self._run_session(inbox_send, inbox_receive, task_status)
        finally:
            if self._pipe is not None:
                os.close(self._pipe[0])
                os.close(self._pipe[1])
                self._pipe = None
            with trio.CancelScope(shield=True):
                try:
                    await self._cleanup(working_directory)
                finally:
                    _output.LIVE_SECRETS.forget(id(self))

    async def _run_session(
        self,
        inbox_send: trio.MemorySendChannel[SessionCommand],
        inbox_receive: trio.MemoryReceiveChannel[SessionCommand],
        task_status: trio.TaskStatus[trio.MemorySendChannel[SessionCommand]],
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_commands, inbox_receive)
            nursery.start_soon(self._stop_watchdog)
            await self._note(None, "info", f"session working directory: {self.working_directory}")
            task_status.started(inbox_send)
            await self._execute()
            nursery.cancel_scope.cancel(reason="session ended")

    def _resolve_job_user(self) -> ResolvedJobUser | None:
        if self.config.job_user is None:
            return None
        try:
            resolved = self.config.job_user.resolve()
            if not resolved.is_agent_user:
                sudo_path()
        except JobUserError as exc:
            # Every action of the session fails with this reason.
            self._setup_error = str(exc)
            return None
        return resolved

    # ------------------------------------------------------------------ commands

    async def _receive_commands(self, inbox: trio.MemoryReceiveChannel[SessionCommand]) -> None:
        with inbox:
            async for command in inbox:
                await self._handle(command)
        self._inbox_closed = True
        self._wake()

    async def _handle(self, command: SessionCommand) -> None:
        if isinstance(command, Enqueue):
            for item in command.actions:
                if self._ending and item.kind is not ActionKind.ENV_EXIT:
                    await self._never_attempted(item)
                else:
                    self._queue.append(item)
        elif isinstance(command, Replace):
            running_id = self._running.action_id if self._running else None
            self._queue = deque(
                item
                for item in command.actions
                if item.action_id != running_id and item.action_id not in self._done_set
            )
            if self._ending:
                await self._drop_queued(keep_exits=True)
        elif isinstance(command, Cancel):
            await self._cancel(command)
        elif isinstance(command, Finish):
            self._inbox_closed = True
            # The running action goes on; every other task is never attempted, each
            # reported as the loop comes to it: after the running one's final state.
            self._finish_running_only |= command.running_only
        else:
            await self._begin_stop(command)
        self._wake()

    async def _cancel(self, command: Cancel) -> None:
        ids = command.action_ids
        running = self._running
        if running is not None and (ids is None or running.action_id in ids):
            if command.fail:
                running.fail_message = command.reason
                running.mark_failed = True
                await self._emit(
                    ActionFailMessage(self.session_id, running.action_id, command.reason)
                )
            running.control.cancel(
                time_limit=command.time_limit, reason=command.reason, mark_failed=command.fail
            )
            level = "error" if command.fail else "info"
            await self._note(running.action_id, level, f"cancel requested: {command.reason}")
            if ids:
                # Queued ones go once the running one has reported: the contract
                # wants no NEVER_ATTEMPTED before the final state of the running action.
                self._cancel_after_running |= ids
            return
        if ids:
            await self._drop_named(ids)

    async def _drop_named(self, ids: frozenset[str] | set[str]) -> None:
        dropped = [item for item in self._queue if item.action_id in ids]
        self._queue = deque(item for item in self._queue if item.action_id not in ids)
        # Emit only after the queue is settled: the runner may pop while we await.
        for item in dropped:
            await self._never_attempted(item)

    async def _begin_stop(self, command: Stop) -> None:
        await self._release()
        now = trio.current_time()
        deadline = math.inf if command.grace is None else now + max(command.grace, 0.0)
        first = self._stop is None
        if first:
            self._stop = command
            self._ending = True
        self._stop_deadline = min(self._stop_deadline, deadline)
        running = self._running
        if running is not None:
            if command.running_state is ActionState.FAILED and running.fail_message is None:
                running.fail_message = command.reason
            if first and running.kind is not ActionKind.ENV_EXIT:
                # Report the running action's outcome now; the process may take a
                # while to go, and the farm must not wait on it.
                await self._end_action(running, command.running_state, None)
                running.reported = True
            grace = None if command.grace is None else max(command.grace, 0.0)
            running.control.cancel(time_limit=grace, reason=command.reason)
        await self._drop_queued(keep_exits=True)

    async def _stop_watchdog(self) -> None:
        """When a Stop's grace runs out, kill whatever is running at once."""
        while True:
            with trio.move_on_at(self._stop_deadline):
                await self._wait_for_wakeup()
                continue
            break
        self._grace_over = True
        if self._running is not None:
            self._running.control.cancel(time_limit=0, reason="the stop grace period is over")

    # ------------------------------------------------------------------ execution

    async def _execute(self) -> None:
        context = self._context
        assert context is not None
        if self._resume is not None:
            await self._resume_session(self._resume, context)
        try:
            await self._run_queue()
        except BaseException:
            if self._next is not None and self._next.ahead is not None:
                self._next.ahead.abandon()  # going away: its launcher goes, and it
            raise
        # Exit what is still entered, innermost first; within the stop's grace.
        queued_exits = {
            item.environment_id: item for item in self._queue if item.kind is ActionKind.ENV_EXIT
        }
        self._queue.clear()
        for identifier in reversed(context.entered):
            item = queued_exits.pop(identifier, None)
            if self._grace_over:
                if item is not None:
                    await self._never_attempted(item)
                context.finish_exit(identifier)
                continue
            if item is None:
                item = ExitEnvironment(action_id=None, environment_id=identifier)
            await self._run_item(item)
        for item in queued_exits.values():
            await self._never_attempted(item)

    async def _run_queue(self) -> None:
        while self._stop is None:
            if self._queue:
                if self._finish_running_only:
                    self._ending = True
                await self._run_item(self._queue.popleft())
            else:
                # A task begun ahead whose turn has not come (a Replace took it).
                next_begun, self._next = self._next, None
                await self._discard(next_begun)
                if self._inbox_closed:
                    break
                await self._wait_for_wakeup()
        next_begun, self._next = self._next, None
        await self._discard(next_begun)

    async def _run_item(self, item: QueuedAction) -> None:
        context = self._context
        assert context is not None
        if item.kind is ActionKind.ENV_EXIT:
            runs = item.environment_id is not None and context.is_entered(item.environment_id)
        else:
            runs = not self._ending
        begun, self._next = self._next, None
        if begun is not None and not (runs and begun.matches(item)):
            await self._discard(begun)
            begun = None
        if not runs:
            await self._never_attempted(item)
            return
        running = (
            begun.running
            if begun is not None
            else RunningAction(item.action_id, item.kind, ActionControl())
        )
        self._running = running
        try:
            with structlog.contextvars.bound_contextvars(action_id=item.action_id):
                if running.started_at is None:
                    running.started_at = datetime.now(UTC)
                if begun is None:
                    begun = await self._begin(item, running)
                await self._proceed(begun, context)
        except BaseException:
            if begun is not None and begun.ahead is not None:
                begun.ahead.abandon()  # going away before it was run
            raise
        finally:
            self._running = None
            if item.action_id is not None:
                self._remember_done(item.action_id)
            if item.kind is ActionKind.ENV_EXIT and item.environment_id is not None:
                context.finish_exit(item.environment_id)

    async def _proceed(self, begun: Begun, context: SessionContext) -> None:
        """Report and run an action ``_begin`` made ready."""
        item, running, runnable = begun.item, begun.running, begun.runnable
        if begun.error is not None:
            exc = begun.error
            log.warning(
                "session.resolve_failed",
                session_id=self.session_id,
                action_id=item.action_id,
                error=str(exc),
            )
            await self._started(running, item.kind, "", {})
            running.fail_message = str(exc)
            await self._note(item.action_id, "error", f"cannot run this action: {exc}")
            await self._end_action(running, ActionState.FAILED, None)
            return
        if running.reported or runnable is None:
            return  # a Stop already reported it while it was being resolved
        self._prepare_begun(begun, context)
        name, parameters = _describe(runnable, context)
        # action_id (and session_id) come from the bound context.
        log.debug("session.action_started", kind=runnable.kind.value, name=name)
        await self._started(running, runnable.kind, name, parameters)
        self._actions_started = begun.number
        if isinstance(runnable, HostAction):
            await self._run_host(runnable, running, context)
            return
        if begun.setup_error is not None:
            running.fail_message = str(begun.setup_error)
            await self._note(
                item.action_id, "error", f"cannot run this action: {begun.setup_error}"
            )
            await self._end_action(running, ActionState.FAILED, None)
            return
        prepared = begun.prepared
        assert prepared is not None
        for note in context.notes:
            await self._note(item.action_id, "warning", note)
        context.notes.clear()
        if prepared.argv is None:
            await self._end_action(running, ActionState.SUCCESS, None)
            return
        hook = runnable.hook if isinstance(runnable, RunTask) else None
        host = ActionHostContext(self.session_id, running, context, self._emit)
        if hook is not None and not await call_host_work(hook.before, host, running):
            await self._end_action(running, host_failed_state(running), None)
            return
        if isinstance(runnable, EnterEnvironment):
            context.entering = runnable.environment_id
        try:
            result = await self._run_process(
                prepared,
                running,
                context,
                begun.tag.get(TAG_VARIABLE),
                memory_limit=self._memory_limit(runnable),
                ahead=begun.ahead,
                go_ahead=hook is None and isinstance(runnable, RunTask),
            )
        finally:
            context.entering = None
        await self._end_process_action(running, result, hook, host)

    async def _run_host(
        self, runnable: HostAction, running: RunningAction, context: SessionContext
    ) -> None:
        host = ActionHostContext(self.session_id, running, context, self._emit)
        if await call_host_work(runnable.work, host, running):
            await self._end_action(running, ActionState.SUCCESS, None)
        else:
            await self._end_action(running, host_failed_state(running), None)

    async def _run_process(
        self,
        prepared: PreparedAction,
        running: RunningAction,
        context: SessionContext,
        tag: str | None,
        *,
        memory_limit: int | None = None,
        reattached: Reattached | None = None,
        ahead: StartedAhead | None = None,
        go_ahead: bool = False,
    ) -> ProcessResult:
        """Run an action's process (``ahead``: started already); ``go_ahead``: once it
        has succeeded, start the next task before reporting this one (``_ahead.py``)."""
        assert prepared.argv is not None
        action_id = running.action_id
        pending: list[SessionEvent] = []
        processor = _output.OutputProcessor(
            context.redactor,
            lambda messages: apply_messages(
                self.session_id, self, messages, running, context, pending
            ),
        )

        cap = OutputCap(self.config.output_limit) if self.config.output_limit else None

        async def flush(lines: list[str]) -> None:
            if cap is not None and lines:
                lines = cap.take(lines)
                if cap.crossed_now:
                    output_limit_reached(
                        self.session_id, cap, self.config.output_limit_mode, running, pending
                    )
            if lines:
                await self._emit(ActionOutput(self.session_id, action_id, tuple(lines)))
            for event in pending:
                await self._emit(event)
            pending.clear()
            if context.changes_made != self._changes_written:
                self._write_state()

        async def on_output(data: bytes) -> None:
            await flush(processor.feed(data))

        def note(level: str, message: str) -> None:
            pending.append(SessionLog(self.session_id, action_id, level, message))

        also_signal = (
            partial(_signal_tagged, context.job_user, tag)
            if context.job_user is not None and tag is not None
            else None
        )
        file_group = context.job_user.gid if context.job_user is not None else None
        began = ended = trio.current_time()
        finished = False

        async def on_ended(result: ProcessResult) -> None:
            # Before the supervisor's clean-up: the next task need not wait for it.
            nonlocal ended, finished
            ended, finished = trio.current_time(), True
            await flush(processor.finish())
            await self._go_ahead(running, result)

        if reattached is not None:
            process = reattached.process
            pid = process.pid if process is not None else None
            await self._note(
                action_id, "info", f"re-attached to process {pid} after an agent restart"
            )
            result = await resume_process(
                reattached,
                cwd=context.working_directory,
                method=prepared.method,
                runtime_limit=prepared.timeout,
                control=running.control,
                on_output=on_output,
                log=note,
                also_signal=also_signal,
                file_group=file_group,
            )
        else:
            await self._note(action_id, "info", f"running: {describe_command(prepared.argv)}")
            result = await run_process(
                prepared.argv,
                env=prepared.env,
                cwd=context.working_directory,
                method=prepared.method,
                runtime_limit=prepared.timeout,
                control=running.control,
                on_output=on_output,
                log=note,
                launcher=await self._get_launcher(),
                also_signal=also_signal,
                file_group=file_group,
                memory_limit=memory_limit,
                launcher_meta=self._spawn_meta(running, prepared, context, tag),
                ahead=ahead,
                on_ended=on_ended if go_ahead else None,
                meanwhile=self._begin_next if go_ahead else None,
            )
        if not finished:
            ended = trio.current_time()
            await flush(processor.finish())
        if result.spawn_error is not None:
            running.fail_message = running.fail_message or f"cannot start {result.spawn_error}"
            await self._note(action_id, "error", f"cannot start {result.spawn_error}")
        elif result.exit_code is not None:
            await self._note(action_id, "info", f"process exited with code {result.exit_code}")
        if result.spawn_error is None and result.pid is not None:
            running.usage = usage_from_launcher(ended - began, result.usage)
            await self._note(action_id, "info", f"usage: {running.usage.describe()}")
        over = (result.usage or {}).get("memory_limit")
        if isinstance(over, dict):
            message = memory_limit_message(over)
            running.fail_message = message
            running.mark_failed = True
            await self._emit(ActionFailMessage(self.session_id, action_id, message))
            await self._note(action_id, "error", message)
        return result

    # ------------------------------------------------------------------ events

    async def _started(
        self, running: RunningAction, kind: ActionKind, name: str, parameters: Mapping[str, str]
    ) -> None:
        assert running.started_at is not None
        await self._emit(
            ActionStarted(
                self.session_id, running.action_id, kind, name, parameters, running.started_at
            )
        )

    async def _end_action(
        self,
        running: RunningAction,
        state: ActionState,
        exit_code: int | None,
        *,
        manifests: tuple[Mapping[str, str], ...] | None = None,
    ) -> None:
        if running.reported:
            return
        running.reported = True
        if self._holding:
            self._record_ended(running, state, exit_code)
        log.debug(
            "session.action_ended",
            action_id=running.action_id,
            state=state.value,
            exit_code=exit_code,
        )
        await self._emit(
            ActionEnded(
                self.session_id,
                running.action_id,
                running.kind,
                state,
                exit_code=exit_code,
                progress=running.progress,
                status_message=running.status_message,
                fail_message=running.fail_message,
                started_at=running.started_at,
                ended_at=running.ended_at or datetime.now(UTC),
                manifests=manifests,
                usage=running.usage,
            )
        )
        if not state.succeeded:
            self._succeeded = False
            if not self._ending:
                # After the failed action's own report: the contract wants the
                # NEVER_ATTEMPTED reports no earlier than their cause.
                self._ending = True
                await self._drop_queued(keep_exits=True)
        if self._cancel_after_running:
            ids, self._cancel_after_running = self._cancel_after_running, set()
            await self._drop_named(ids)

    async def _never_attempted(self, item: QueuedAction) -> None:
        if item.action_id is not None:
            self._remember_done(item.action_id)
        await self._emit(
            ActionEnded(self.session_id, item.action_id, item.kind, ActionState.NEVER_ATTEMPTED)
        )

    async def _drop_queued(self, *, keep_exits: bool) -> None:
        """NEVER_ATTEMPT the queue, keeping exits of entered environments if asked."""
        context = self._context

        def keep(item: QueuedAction) -> bool:
            return (
                keep_exits
                and item.kind is ActionKind.ENV_EXIT
                and context is not None
                and item.environment_id is not None
                and context.is_entered(item.environment_id)
            )

        dropped = [item for item in self._queue if not keep(item)]
        self._queue = deque(item for item in self._queue if keep(item))
        # Emit only after the queue is settled: the runner may pop while we await.
        for item in dropped:
            await self._never_attempted(item)

    async def _note(self, action_id: str | None, level: str, message: str) -> None:
        await self._emit(SessionLog(self.session_id, action_id, level, message))

    async def _emit(self, event: SessionEvent) -> None:
        if self._events_broken:
            return
        if self.redactor and not isinstance(event, ActionOutput):
            event = _redact_event(self.redactor, event)
        try:
            try:
                self._events.send_nowait(event)
            except trio.WouldBlock:
                await self._events.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The owner stopped listening (it is going away); keep running the
            # session to its end so processes and environments are cleaned up.
            self._events_broken = True
            log.warning("session.events_dropped", session_id=self.session_id)

    # ------------------------------------------------------------------ helpers

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()

    async def _wait_for_wakeup(self) -> None:
        await self._wakeup.wait()

    def _remember_done(self, action_id: str) -> None:
        if len(self._done_ids) == self._done_ids.maxlen:
            self._done_set.discard(self._done_ids[0])
        self._done_ids.append(action_id)
        self._done_set.add(action_id)

    async def _get_launcher(self) -> SessionLauncher | None:
        if not self._launcher_tried and self._containment is not None:
            self._launcher_tried = True
            self._launcher = await self._containment.start_launcher(self.session_id)
            if self._launcher is not None and self._stop is None:
                await self._hold(self._launcher)
        return self._launcher

    async def _cleanup(self, working_directory: Path) -> None:
        await self._release()
        launcher, self._launcher = self._launcher, None
        containment = self._containment
        swept_below = recycled = False
        if launcher is not None:
            # Everything the session's actions left below it (daemons too) goes now.
            # The launcher bounds the sweep itself. Swept clean, it may serve a later
            # session (a job user's processes it may not kill: never); else it goes.
            killed: int | None = None
            job_user = self._context.job_user if self._context is not None else None
            if containment is not None and job_user is None and self._held_user is None:
                killed = await launcher.sweep_for_reuse()
                recycled = killed is not None and containment.recycle_launcher(
                    self.session_id, launcher
                )
                if killed is not None and not recycled:
                    await launcher.aclose()
            if killed is None:
                killed = await launcher.sweep_and_close()
            swept_below = killed is not None
            if killed:
                log.info("session.swept", session_id=self.session_id, processes=killed)
        if containment is not None:
            # Whatever of the session still runs (daemons its actions left) goes now,
            # before its working directory. (A launcher taken back swept it all.)
            with trio.move_on_after(30):
                if not recycled:
                    await containment.sweep(self.session_id, swept_below=swept_below)
                job_user = self._context.job_user if self._context is not None else None
                if job_user is not None:
                    # Ours to kill even when we may not signal that user directly.
                    leftovers = find_processes(containment.tag(self.session_id))
                    if leftovers:
                        await trio.to_thread.run_sync(
                            signal_as, job_user, signal.SIGKILL, leftovers
                        )
            if self._held_user is not None:
                with trio.move_on_after(30):
                    await self._release_job_user(containment, self._held_user)
            if self.config.retain_working_directory:
                containment.untrack_directory(working_directory)  # the user keeps it
            if self._own_containment:
                containment.close()
        if not self.config.retain_working_directory:
            job_user = self._context.job_user if self._context is not None else None
            try:
                try:
                    await trio.to_thread.run_sync(shutil.rmtree, working_directory)
                except PermissionError:
                    if job_user is None:
                        raise
                    # Files the job user made that we may not delete: remove them as that user.
                    await trio.to_thread.run_sync(remove_as, job_user, working_directory)
                if containment is not None:
                    containment.untrack_directory(working_directory)
            except OSError as exc:
                log.warning(
                    "session.cleanup_failed",
                    session_id=self.session_id,
                    path=str(working_directory),
                    error=str(exc),
                )
        with trio.move_on_after(5):
            await self._emit(
                SessionEnded(
                    self.session_id,
                    self._succeeded,
                    str(working_directory) if self.config.retain_working_directory else None,
                )
            )

    async def _release_job_user(self, containment: Containment, job_user: ResolvedJobUser) -> None:
        self._held_user = None
        if containment.release_user(job_user.uid) and self.config.cleanup_user_processes:
            pids = await trio.to_thread.run_sync(processes_of_user, job_user.uid)
            if pids:
                await trio.to_thread.run_sync(signal_as, job_user, signal.SIGKILL, pids)
                log.info("session.job_user_cleaned_up", user=job_user.user, processes=len(pids))


def _redact_event(redactor: _output.Redactor, event: SessionEvent) -> SessionEvent:
    """Mask secrets in an event's text (output lines are masked as they are read)."""
    if isinstance(event, SessionLog | ActionStatusMessage | ActionFailMessage):
        masked = redactor.redact(event.message)
        return event if masked == event.message else attrs.evolve(event, message=masked)
    if isinstance(event, ActionEnded) and (event.status_message or event.fail_message):
        return attrs.evolve(
            event,
            status_message=redactor.redact(event.status_message) if event.status_message else None,
            fail_message=redactor.redact(event.fail_message) if event.fail_message else None,
        )
    if isinstance(event, ActionStarted) and event.parameters:
        return attrs.evolve(
            event,
            parameters={name: redactor.redact(value) for name, value in event.parameters.items()},
        )
    return event


def _signal_tagged(user: ResolvedJobUser | None, tag: str | None, sig: signal.Signals) -> None:
    """Signal an action's processes by their tag (sudo may put them in other sessions)."""
    if user is None or tag is None:
        return
    signal_as(user, sig, find_processes(tag, exact=True))
