"""The scheduler: syncs one worker's sessions with its farm.

It owns two inboxes: its owner's commands (``SchedulerCommand``: ``SyncNow``,
``WaitSessions``, ``FinishSessions``, ``StopSessions``, ``RefuseNewSessions``,
``CancelRunning``, ``CloseSchedule``, ``ReopenSchedule``), returned by ``nursery.start(scheduler.run)``,
and its sessions' reports (``SessionReport``: ``ActionUpdate``,
``SessionReported``, ``SessionClosed``). It tells its owner what the farm
wants through ``events`` (``IntervalChanged``, ``FarmStopRequested``) and
when a session is over (``SessionClosed``).

It keeps the pending action updates (one merged ``ActionUpdate`` per action,
the latest fields winning), and syncs with the farm through a ``ScheduleApi``
(the farm client translates to and from its wire format):

- at once when an action reaches a final state (the contract asks for FAILED,
  CANCELED and INTERRUPTED to be reported immediately; we do it for every final
  state, so the farm can hand out the next work without waiting). A success
  that leaves its session one assigned action (the one it runs next) is urgent
  too: the farm, told now, assigns the next while that one runs, and a farm
  that assigns two ahead keeps the worker busy. A success while its session
  still has more assigned work than that is not urgent: such syncs
  start at most one per ``report_interval`` (20 ms by default), so a stream of
  millisecond tasks is reported in batches instead of one call per task, and a
  fleet of them does not flood the farm (``report_interval_seconds`` in the
  worker's configuration). Anything else (a failure, a cancel,
  an interrupt, or a session with nothing left to run) goes out at once;
- whenever the heartbeat asks (``SyncNow``), at the farm's interval;
- at most one call at a time: reports that arrive during a call go out in the
  next one.

Each call sends a snapshot of the pending updates and, once it succeeds,
deletes only the entries that were sent and have not changed since, so a
failed call loses nothing and a newer update is never dropped.

From each ``Schedule`` it starts a ``WorkSession`` for every new session
(``nursery.start``), passes the assigned actions (``Replace``) and the cancels
(``Cancel``) to the existing ones, and stops the sessions the farm no longer
assigns.

If a session ended early (it could not start), actions the farm still assigns
to it are returned at once (``returned_updates``: the first one and every
environment exit FAILED, the others NEVER_ATTEMPTED), so the farm is never left
waiting on a dead session.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Literal, Protocol

import attrs
import structlog
import trio

from ._channels import ready_items
from ._messages import (
    ActionState,
    ActionUpdate,
    Cancel,
    CancelRunning,
    CloseSchedule,
    FarmStopRequested,
    Finish,
    FinishSessions,
    IntervalChanged,
    RefuseNewSessions,
    ReopenSchedule,
    Replace,
    Schedule,
    SchedulerCommand,
    SchedulerEvent,
    SessionAssignment,
    SessionClosed,
    SessionCommand,
    SessionReport,
    SessionReported,
    Stop,
    StopSessions,
    SyncNow,
    WaitSessions,
    returned_updates,
)

log = structlog.get_logger("farmhand.scheduler")

#: The shortest time between two syncs made for routine (not urgent) reports.
REPORT_INTERVAL = 0.02

#: Session reports waiting for the scheduler (a session waits beyond that).
REPORTS_BUFFER = 256


class ScheduleApi(Protocol):
    """The farm's side of a sync (UpdateWorkerSchedule for Deadline, translated by
    ``agent.deadline.DeadlineSchedule``), with the client's retries."""

    async def sync(self, updates: Mapping[str, ActionUpdate]) -> Schedule: ...


class SessionActor(Protocol):
    """What the scheduler starts per session (a ``WorkSession``)."""

    async def run(
        self, *, task_status: trio.TaskStatus[trio.MemorySendChannel[SessionCommand]]
    ) -> None: ...


SessionFactory = Callable[[SessionAssignment, trio.MemorySendChannel[SessionReport]], SessionActor]


@attrs.frozen
class SchedulerStatistics:
    syncs: int
    sessions: int
    pending_updates: int
    interval: float
    #: Final states reported to the farm, by state.
    reported: Mapping[ActionState, int]
    stop_requested: bool
    #: When the last sync succeeded (``trio.current_time()``; the start, before the first).
    last_success: float = 0.0


@attrs.define(eq=False)
class _Pending:
    update: ActionUpdate
    version: int


class Scheduler:
    """See the module docstring. Start with ``inbox = await nursery.start(scheduler.run)``."""

    def __init__(
        self,
        api: ScheduleApi,
        session_factory: SessionFactory,
        *,
        events: trio.MemorySendChannel[SchedulerEvent] | None = None,
        initial_interval: float = 15.0,
        report_interval: float = REPORT_INTERVAL,
    ) -> None:
        self._api = api
        self._report_interval = report_interval
        self._session_factory = session_factory
        self._events = events
        self._interval = initial_interval
        #: New sessions are refused (their actions returned as interrupted).
        self._refuse_new = False
        self._refused: set[str] = set()
        self._pending: dict[str, _Pending] = {}
        self._version = 0
        #: Each live session's inbox.
        self._sessions: dict[str, trio.MemorySendChannel[SessionCommand]] = {}
        self._last_actions: dict[str, tuple[str, ...]] = {}
        self._stopping: set[str] = set()
        #: Sessions finishing the work they have (no more): not dead when they end.
        self._finishing: set[str] = set()
        #: Sessions whose every report is in ``_pending`` (their logs may still ship).
        self._reported_sessions: set[str] = set()
        #: The sync loop runs (a SyncNow would wait forever otherwise).
        self._syncing = False
        #: Sessions that ended while the farm still assigns them: ids already returned.
        self._dead: dict[str, set[str]] = {}
        self._requested = 0
        self._completed = 0
        #: A routine report is waiting for the next sync (at most one per report_interval).
        self._report_pending = False
        self._last_sync_started = -math.inf
        #: Per session: assigned actions without a final report yet, and final reports
        #: the farm may still list (so a repeated assignment does not count them open).
        self._open: dict[str, set[str]] = {}
        self._finals: dict[str, set[str]] = {}
        self._wakeup = trio.Event()
        self._syncs = 0
        self._last_success = 0.0
        self._reported: Counter[ActionState] = Counter()
        self._stop_requested = False
        self._closed = False
        self._in_flight = False
        #: What the call in flight answers (``_requested`` when it started).
        self._in_flight_target = 0
        #: When the last call that succeeded started.
        self._done_started = -math.inf
        #: Replies owed: SyncNow (by the sync that answers it), CloseSchedule (once no
        #: call is in flight), WaitSessions (by what they wait for).
        self._sync_waiters: list[tuple[int, trio.MemorySendChannel[None]]] = []
        self._close_waiters: list[trio.MemorySendChannel[None]] = []
        self._session_waiters: list[WaitSessions] = []

    # ------------------------------------------------------------------ public

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            self._syncs,
            len(self._sessions),
            len(self._pending),
            self._interval,
            dict(self._reported),
            self._stop_requested,
            self._last_success,
        )

    async def run(
        self,
        *,
        supervise: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]] | None = None,
        task_status: trio.TaskStatus[
            trio.MemorySendChannel[SchedulerCommand]
        ] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the sessions and the sync loop; ``started`` with the command inbox.

        The sessions live as long as this call; the sync loop runs under
        ``supervise`` (for example, restarted after transport failures), so a
        restart keeps every session and every pending update.
        """
        # The owner's commands never block it (a signal handler, a sync method): they
        # are few (one per stop, drain, cancel or sync request), so the buffer is no risk.
        self._last_success = trio.current_time()
        commands_send, commands_receive = trio.open_memory_channel[SchedulerCommand](math.inf)
        reports_send, reports_receive = trio.open_memory_channel[SessionReport](REPORTS_BUFFER)
        try:
            async with trio.open_nursery() as sessions:
                sessions.start_soon(self._receive_reports, reports_receive)
                sessions.start_soon(self._receive_commands, commands_receive)
                loop = partial(self._sync_loop, sessions, reports_send)
                self._syncing = True
                task_status.started(commands_send)
                try:
                    if supervise is None:
                        await loop()
                    else:
                        await supervise(loop)
                finally:
                    # Restarts keep it going; past here no sync is coming: answer everyone.
                    self._syncing = False
                    self._answer_all()
        finally:
            self._answer_all()

    # ------------------------------------------------------------------ commands

    async def _receive_commands(
        self, commands: trio.MemoryReceiveChannel[SchedulerCommand]
    ) -> None:
        with commands:
            async for command in commands:
                self._handle(command)

    def _handle(self, command: SchedulerCommand) -> None:
        if isinstance(command, SyncNow):
            if self._closed or not self._syncing:
                _answer(command.reply_to)
                return
            since = command.since
            if since is not None and self._done_started >= since:
                _answer(command.reply_to)  # a call that started since then is done
            elif since is not None and self._in_flight and self._last_sync_started >= since:
                self._sync_waiters.append((self._in_flight_target, command.reply_to))
            else:
                self._request_sync()
                self._sync_waiters.append((self._requested, command.reply_to))
        elif isinstance(command, WaitSessions):
            self._session_waiters.append(command)
            self._check_session_waiters()
        elif isinstance(command, FinishSessions):
            self._refuse_new = True
            for session_id, session in self._sessions.items():
                if session_id not in self._finishing and session_id not in self._stopping:
                    self._finishing.add(session_id)
                    _tell(session, Finish(running_only=command.running_only))
        elif isinstance(command, StopSessions):
            self._refuse_new = True
            for session_id, session in self._sessions.items():
                self._stopping.add(session_id)
                _tell(
                    session,
                    Stop(
                        grace=command.grace,
                        running_state=command.running_state,
                        reason=command.reason,
                    ),
                )
        elif isinstance(command, RefuseNewSessions):
            self._refuse_new = True
        elif isinstance(command, CancelRunning):
            for session_id, session in self._sessions.items():
                if command.session_id in (None, session_id):
                    cancel = Cancel(
                        time_limit=command.time_limit, reason=command.reason, fail=command.fail
                    )
                    _tell(session, cancel)
        elif isinstance(command, CloseSchedule):
            self._closed = True
            self._report_pending = False
            self._answer_syncs(everyone=True)
            self._wake()
            if self._in_flight and self._syncing:
                self._close_waiters.append(command.reply_to)
            else:
                _answer(command.reply_to)
        elif isinstance(command, ReopenSchedule):
            # A pause is over: the farm has the worker STARTED again, and every session
            # ended before it was paused (``_finishing`` and ``_stopping`` are empty).
            self._closed = False
            self._refuse_new = False
            self._request_sync()

    def _answer_syncs(self, *, everyone: bool = False) -> None:
        owed = []
        for target, reply_to in self._sync_waiters:
            if everyone or target <= self._completed:
                _answer(reply_to)
            else:
                owed.append((target, reply_to))
        self._sync_waiters = owed

    def _check_session_waiters(self) -> None:
        owed = []
        for waiter in self._session_waiters:
            if waiter.until == "reported":
                done = all(sid in self._reported_sessions for sid in self._sessions)
            elif waiter.until == "closed":
                done = not self._sessions
            else:
                done = bool(self._sessions)
            if done:
                _answer(waiter.reply_to)
            else:
                owed.append(waiter)
        self._session_waiters = owed

    def _answer_all(self) -> None:
        self._answer_syncs(everyone=True)
        for reply_to in self._close_waiters:
            _answer(reply_to)
        self._close_waiters = []
        for waiter in self._session_waiters:
            _answer(waiter.reply_to)
        self._session_waiters = []

    def _sessions_did_change(self) -> None:
        self._check_session_waiters()

    async def _emit(self, event: SchedulerEvent) -> None:
        if self._events is None:
            return
        try:
            await self._events.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the owner stopped listening

    # ------------------------------------------------------------------ syncing

    def _request_sync(self) -> None:
        if self._closed:
            return
        self._requested += 1
        self._wake()

    async def _sync_loop(
        self, sessions: trio.Nursery, reports: trio.MemorySendChannel[SessionReport]
    ) -> None:
        while True:
            while self._nothing_to_send():
                await self._wait_for_wakeup()
            # Only routine reports: wait out the report interval, unless something urgent comes.
            due = self._last_sync_started + self._report_interval
            while self._completed >= self._requested and trio.current_time() < due:
                with trio.move_on_at(due):
                    await self._wait_for_wakeup()
            if self._nothing_to_send():
                continue  # closed while waiting
            target = self._in_flight_target = self._requested
            self._report_pending = False
            started = self._last_sync_started = trio.current_time()
            self._in_flight = True
            try:
                await self._sync(sessions, reports)
            except Exception:
                if self._closed:
                    # Closed while the call was out (the worker is stopping): whatever
                    # it met no longer matters, and what it carried is in the final sync.
                    log.info("scheduler.call_after_close_failed")
                    continue
                raise
            finally:
                self._in_flight = False
                for reply_to in self._close_waiters:
                    _answer(reply_to)
                self._close_waiters = []
            self._completed = target
            self._done_started = started
            self._answer_syncs()

    def _nothing_to_send(self) -> bool:
        return self._closed or (self._completed >= self._requested and not self._report_pending)

    # ------------------------------------------------------------------ reports

    async def _receive_reports(self, reports: trio.MemoryReceiveChannel[SessionReport]) -> None:
        async for report in ready_items(reports):  # a burst in one loop step
            if isinstance(report, SessionClosed):
                await self._session_closed(report)
                continue
            if isinstance(report, SessionReported):
                self._reported_sessions.add(report.session_id)
                self._sessions_did_change()
                continue
            self._version += 1
            entry = self._pending.get(report.action_id)
            if entry is None:
                self._pending[report.action_id] = _Pending(report, self._version)
            else:
                entry.update = entry.update.merged(report)
                entry.version = self._version
            if report.final and not self._closed:
                self._report_final(report)

    def _report_final(self, report: ActionUpdate) -> None:
        finals = self._finals.setdefault(report.session_id, set())
        finals.add(report.action_id)
        still_open = self._open.get(report.session_id)
        if still_open is not None:
            still_open.discard(report.action_id)
        if report.state is not ActionState.SUCCESS or not still_open or len(still_open) == 1:
            # The contract's "immediately"; or the session is out of work; or it runs its
            # last assigned action now: told now, the farm's next assignment can arrive
            # before that one ends, instead of a round trip after it.
            self._request_sync()
        elif not self._report_pending:
            self._report_pending = True
            self._wake()

    async def _session_closed(self, report: SessionClosed) -> None:
        session = self._sessions.pop(report.session_id, None)
        self._reported_sessions.discard(report.session_id)
        self._open.pop(report.session_id, None)
        self._finals.pop(report.session_id, None)
        given = self._last_actions.pop(report.session_id, ())
        if report.session_id in self._stopping or report.session_id in self._finishing:
            self._stopping.discard(report.session_id)
            self._finishing.discard(report.session_id)
        elif session is not None:
            # It ended on its own (it could not start) and has reported what it
            # was given; the farm may still assign it more.
            self._dead[report.session_id] = set(given)
        log.info(
            "scheduler.session_finished", session_id=report.session_id, succeeded=report.succeeded
        )
        self._sessions_did_change()
        if session is not None:
            await self._emit(report)

    # ------------------------------------------------------------------ applying

    async def _sync(
        self, sessions: trio.Nursery, reports: trio.MemorySendChannel[SessionReport]
    ) -> None:
        snapshot = {action_id: entry.version for action_id, entry in self._pending.items()}
        payload = {action_id: self._pending[action_id].update for action_id in snapshot}
        schedule = await self._api.sync(payload)
        self._syncs += 1
        self._last_success = trio.current_time()
        for action_id, version in snapshot.items():
            entry = self._pending.get(action_id)
            if entry is not None and entry.version == version:
                del self._pending[action_id]
                if entry.update.state is not None:
                    self._reported[entry.update.state] += 1
        await self._apply(schedule, sessions, reports)

    async def _apply(
        self,
        schedule: Schedule,
        sessions: trio.Nursery,
        reports: trio.MemorySendChannel[SessionReport],
    ) -> None:
        if schedule.interval is not None and schedule.interval != self._interval:
            self._interval = schedule.interval
            await self._emit(IntervalChanged(self._interval))
        assigned = schedule.assigned
        still_there = assigned.keys() | schedule.unreadable

        for session_id in list(self._sessions):
            if session_id not in still_there and session_id not in self._stopping:
                self._stopping.add(session_id)
                _tell(
                    self._sessions[session_id],
                    Stop(
                        grace=0,
                        running_state=ActionState.CANCELED,
                        reason="the farm ended the session",
                    ),
                )
        for session_id in list(self._dead):
            if session_id not in still_there:
                del self._dead[session_id]
                self._refused.discard(session_id)

        for session_id, assignment in assigned.items():
            unsafe = assignment.unsafe_id()
            if unsafe is not None:
                # Its files cannot be named: fail the session, never the worker.
                if session_id not in self._dead:
                    log.error("scheduler.unsafe_assignment", session_id=session_id, error=unsafe)
                self._return_actions(assignment, message=unsafe)
                continue
            if session_id in self._refused or (
                session_id not in self._sessions
                and self._refuse_new
                and session_id not in self._dead
            ):
                self._refused.add(session_id)
                self._return_actions(assignment, interrupted=True)
                continue
            if session_id in self._dead:
                self._return_actions(assignment)
                continue
            session = self._sessions.get(session_id)
            if session is None:
                actor = self._session_factory(assignment, reports.clone())
                session = await sessions.start(actor.run)
                self._sessions[session_id] = session
                log.info(
                    "scheduler.session_created", session_id=session_id, job_id=assignment.job_id
                )
                self._sessions_did_change()
            ids = tuple(action.action_id for action in assignment.actions)
            if ids != self._last_actions.get(session_id):
                self._last_actions[session_id] = ids
                assigned_ids = set(ids)
                finals = self._finals.setdefault(session_id, set())
                finals &= assigned_ids  # the farm has applied the others
                self._open[session_id] = assigned_ids - finals
                _tell(session, Replace(assignment.actions))
            to_cancel = schedule.cancels.get(session_id)
            if to_cancel:
                _tell(session, Cancel(action_ids=to_cancel, reason="canceled by the farm"))

        if schedule.stop_requested and not self._stop_requested:
            self._stop_requested = True
            log.info("scheduler.stop_requested")
            await self._emit(FarmStopRequested())

    def _return_actions(
        self,
        assignment: SessionAssignment,
        *,
        interrupted: bool = False,
        message: str = "the worker could not run this session",
    ) -> None:
        """Answer for a session that cannot run: first and exits FAILED (with
        ``message``), the rest NEVER_ATTEMPTED; or, for a worker that takes no new
        work, the first INTERRUPTED (requeued elsewhere) and the rest NEVER_ATTEMPTED."""
        returned = self._dead.setdefault(assignment.session_id, set())
        fresh = [action for action in assignment.actions if action.action_id not in returned]
        returned.update(action.action_id for action in fresh)
        updates = returned_updates(
            assignment.session_id,
            fresh,
            first=ActionState.INTERRUPTED if interrupted else ActionState.FAILED,
            message="the worker is stopping and takes no new work" if interrupted else message,
            now=datetime.now(UTC),
            exits_fail=not interrupted,
        )
        for update in updates:
            self._version += 1
            self._pending[update.action_id] = _Pending(update, self._version)
        if self._pending:
            self._request_sync()

    # ------------------------------------------------------------------ helpers

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()

    async def _wait_for_wakeup(self) -> None:
        await self._wakeup.wait()


def _tell(session: trio.MemorySendChannel[SessionCommand], command: SessionCommand) -> None:
    try:
        session.send_nowait(command)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the session has ended; nothing to do


def _answer(reply_to: trio.MemorySendChannel[None]) -> None:
    with reply_to:
        try:
            reply_to.send_nowait(None)
        except (trio.BrokenResourceError, trio.WouldBlock):
            pass  # the asker went away


async def _ask(
    scheduler: trio.MemorySendChannel[SchedulerCommand],
    make: Callable[[trio.MemorySendChannel[None]], SchedulerCommand],
) -> None:
    reply_send, reply_receive = trio.open_memory_channel[None](1)
    with reply_receive:
        try:
            await scheduler.send(make(reply_send))
            await reply_receive.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            pass  # the scheduler is gone: nothing is coming


async def sync_now(
    scheduler: trio.MemorySendChannel[SchedulerCommand], *, since: float | None = None
) -> None:
    """``SyncNow``: call the farm now; returns once a call that started after this one
    (or, with ``since``, at or after ``since``) is done (at once, with no call, once
    the scheduler is closed or gone)."""
    await _ask(scheduler, partial(SyncNow, since=since))


async def wait_sessions(
    scheduler: trio.MemorySendChannel[SchedulerCommand],
    until: Literal["reported", "closed", "busy"],
) -> None:
    """``WaitSessions``: wait until every session has ``"reported"``, until every
    session is ``"closed"``, or until there is a session (``"busy"``)."""
    await _ask(scheduler, partial(WaitSessions, until))


async def close_schedule(scheduler: trio.MemorySendChannel[SchedulerCommand]) -> None:
    """``CloseSchedule``: no more calls; returns once no call is in flight (bound it)."""
    await _ask(scheduler, CloseSchedule)


def tell(scheduler: trio.MemorySendChannel[SchedulerCommand], command: SchedulerCommand) -> None:
    """Send a command that needs no reply, without waiting (the inbox never fills)."""
    try:
        scheduler.send_nowait(command)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the scheduler is gone
