"""The scheduler: owns UpdateWorkerSchedule for one worker.

It keeps the pending action updates reported by the sessions (one merged entry
per action, the latest fields winning), and syncs with the farm:

- at once when an action reaches a final state (the contract asks for FAILED,
  CANCELED and INTERRUPTED to be reported immediately; we do it for every final
  state, so the farm can hand out the next work without waiting). A success
  while its session still has assigned work to run is not urgent: such syncs
  start at most one per ``report_interval`` (20 ms by default), so a stream of
  millisecond tasks is reported in batches instead of one call per task, and a
  fleet of them does not flood the farm (``report_interval_seconds`` in the
  worker's configuration). Anything else (a failure, a cancel,
  an interrupt, or a session with nothing left to run) goes out at once;
- whenever the heartbeat asks (``sync_now``), at the farm's
  ``updateIntervalSeconds``;
- at most one call at a time: reports that arrive during a call go out in the
  next one.

Each call sends a snapshot of the pending updates and, once it succeeds,
deletes only the entries that were sent and have not changed since, so a
failed call loses nothing and a newer update is never dropped.

From each response it creates a ``WorkSession`` for every new session, passes
the assigned actions (``Replace``) and ``cancelSessionActions`` (``Cancel``) to
the existing ones, stops the sessions the farm no longer assigns, and tells its
owner when the farm asks the worker to stop (``desiredWorkerStatus``).

If a session ended early (it could not start), actions the farm still assigns
to it are returned at once: the first one and every environment exit FAILED,
the others NEVER_ATTEMPTED, so the farm is never left waiting on a dead session.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import attrs
import structlog
import trio

from ._messages import ActionKind, ActionState, Cancel, Finish, Replace, Stop
from ._worksession import (
    ActionReport,
    Assignment,
    Report,
    SessionFinished,
    SessionReported,
    WorkSession,
)

log = structlog.get_logger("farmhand.scheduler")

#: The shortest time between two syncs made for routine (not urgent) reports.
REPORT_INTERVAL = 0.02


class ScheduleApi(Protocol):
    """UpdateWorkerSchedule, with the client's retries for transient errors."""

    async def update_worker_schedule(
        self, updated_session_actions: Mapping[str, Mapping[str, Any]]
    ) -> Mapping[str, Any]: ...


SessionFactory = Callable[[Assignment, trio.MemorySendChannel[Report]], WorkSession]


@attrs.frozen
class SchedulerStatistics:
    syncs: int
    sessions: int
    pending_updates: int
    interval: float
    #: Final states reported to the farm, by completedStatus.
    reported: Mapping[str, int]
    stop_requested: bool


@attrs.define(eq=False)
class _Pending:
    fields: dict[str, Any]
    version: int
    final: bool


class Scheduler:
    def __init__(
        self,
        api: ScheduleApi,
        session_factory: SessionFactory,
        *,
        initial_interval: float = 15.0,
        on_interval: Callable[[float], None] | None = None,
        on_stop_requested: Callable[[], None] | None = None,
        on_session_finished: Callable[[str], None] | None = None,
        report_interval: float = REPORT_INTERVAL,
    ) -> None:
        self._api = api
        self._report_interval = report_interval
        self._session_factory = session_factory
        self.interval = initial_interval
        self._on_interval = on_interval
        self._on_stop_requested = on_stop_requested
        self._on_session_finished = on_session_finished
        self._sessions_changed = trio.Event()
        #: New sessions are refused (their actions returned as interrupted).
        self._refuse_new = False
        self._refused: set[str] = set()
        self._pending: dict[str, _Pending] = {}
        self._version = 0
        self._sessions: dict[str, WorkSession] = {}
        self._last_actions: dict[str, tuple[str, ...]] = {}
        self._stopping: set[str] = set()
        #: Sessions finishing the work they have (no more): not dead when they end.
        self._finishing: set[str] = set()
        #: Sessions whose every report is in ``_pending`` (their logs may still ship).
        self._reported_sessions: set[str] = set()
        #: The sync loop runs (``sync_now`` would wait forever otherwise).
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
        self._synced = trio.Event()
        self._syncs = 0
        self._reported: Counter[str] = Counter()
        self._stop_requested = False
        self._closed = False
        self._in_flight = False
        self._call_over = trio.Event()

    # ------------------------------------------------------------------ public

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            self._syncs,
            len(self._sessions),
            len(self._pending),
            self.interval,
            dict(self._reported),
            self._stop_requested,
        )

    @property
    def sessions(self) -> Mapping[str, WorkSession]:
        return self._sessions

    def request_sync(self) -> None:
        if self._closed:
            return
        self._requested += 1
        self._wake()

    async def sync_now(self) -> None:
        """Ask for a sync and wait until one that started after this call is done
        (at once, with no call, once the scheduler is closed or its sync loop has
        ended)."""
        self.request_sync()
        target = self._requested
        while self._completed < target and self._syncing and not self._closed:
            await self._synced.wait()

    @property
    def closed(self) -> bool:
        """``close`` has been called: no more calls to the farm."""
        return self._closed

    async def close(self) -> None:
        """Make no more calls (the worker is stopping: the farm would refuse them);
        returns once a call in flight is over (bound the wait with a cancel scope)."""
        self._closed = True
        self._report_pending = False
        self._synced.set()
        self._wake()
        while self._in_flight and self._syncing:
            await self._call_over.wait()

    def refuse_new_sessions(self) -> None:
        """Take no new sessions (finish the current ones): the first action of a new
        session is returned INTERRUPTED, so the farm gives the work to another worker
        without counting a failure; the rest NEVER_ATTEMPTED."""
        self._refuse_new = True

    async def wait_sessions_changed(self) -> None:
        """Wait until a session starts or finishes."""
        await self._sessions_changed.wait()

    def _sessions_did_change(self) -> None:
        self._sessions_changed.set()
        self._sessions_changed = trio.Event()

    def finish_sessions(self) -> None:
        """Take no new sessions, and let each current one finish the actions it has
        now, then end (``Finish``); actions the farm adds later are returned to it once
        the session has ended."""
        self._refuse_new = True
        for session_id, session in self._sessions.items():
            if session_id not in self._finishing and session_id not in self._stopping:
                self._finishing.add(session_id)
                session.command(Finish())

    def stop_sessions(
        self, *, grace: float | None, running_state: ActionState, reason: str
    ) -> None:
        """Stop every session (a drain); the farm's later assignments are refused."""
        self._refuse_new = True
        for session_id, session in self._sessions.items():
            self._stopping.add(session_id)
            session.command(Stop(grace=grace, running_state=running_state, reason=reason))

    async def wait_sessions_reported(self) -> None:
        """Wait until every session has ended and all its reports are pending here
        (so the next sync carries them); their logs may still be shipping."""
        while any(sid not in self._reported_sessions for sid in self._sessions):
            if not self._syncing:
                await self._wait_sessions_done()
                return
            await self._sessions_changed.wait()

    async def wait_sessions_finished(self) -> None:
        """Wait until every session has ended, its reports pending and its log shipped."""
        while self._sessions:
            if not self._syncing:
                await self._wait_sessions_done()
                return
            await self._sessions_changed.wait()

    async def _wait_sessions_done(self) -> None:
        # The reports loop is gone (the scheduler failed) and forgets no session:
        # wait on each session's own event.
        for session in list(self._sessions.values()):
            await session.finished.wait()

    async def run(
        self,
        *,
        supervise: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the sessions and the sync loop.

        The sessions live as long as this call; the sync loop runs under
        ``supervise`` (for example, restarted after transport failures), so a
        restart keeps every session and every pending update.
        """
        reports_send, reports_receive = trio.open_memory_channel[Report](256)
        async with trio.open_nursery() as sessions:
            sessions.start_soon(self._receive_reports, reports_receive)
            loop = partial(self._sync_loop, sessions, reports_send)
            self._syncing = True
            task_status.started()
            try:
                if supervise is None:
                    await loop()
                else:
                    await supervise(loop)
            finally:
                # Restarts keep it going; past here no sync is coming: wake the waiters.
                self._syncing = False
                self._synced.set()
                self._synced = trio.Event()
                self._call_over.set()
                self._sessions_did_change()

    async def _sync_loop(
        self, sessions: trio.Nursery, reports: trio.MemorySendChannel[Report]
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
            target = self._requested
            self._report_pending = False
            self._last_sync_started = trio.current_time()
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
                self._call_over.set()
                self._call_over = trio.Event()
            self._completed = target
            self._synced.set()
            self._synced = trio.Event()

    def _nothing_to_send(self) -> bool:
        return self._closed or (self._completed >= self._requested and not self._report_pending)

    # ------------------------------------------------------------------ reports

    async def _receive_reports(self, reports: trio.MemoryReceiveChannel[Report]) -> None:
        async for report in reports:
            if isinstance(report, SessionFinished):
                self._session_finished(report)
                continue
            if isinstance(report, SessionReported):
                self._reported_sessions.add(report.session_id)
                self._sessions_did_change()
                continue
            self._version += 1
            entry = self._pending.get(report.action_id)
            if entry is None:
                self._pending[report.action_id] = _Pending(
                    dict(report.fields), self._version, report.final
                )
            else:
                if report.final and not entry.final:
                    # A final report replaces the running one's transient fields.
                    entry.fields.pop("updatedAt", None)
                entry.fields.update(report.fields)
                entry.version = self._version
                entry.final = entry.final or report.final
            if report.final and not self._closed:
                self._report_final(report)

    def _report_final(self, report: ActionReport) -> None:
        finals = self._finals.setdefault(report.session_id, set())
        finals.add(report.action_id)
        still_open = self._open.get(report.session_id)
        if still_open is not None:
            still_open.discard(report.action_id)
        if report.fields.get("completedStatus") != "SUCCEEDED" or not still_open:
            self.request_sync()  # the contract's "immediately", or the session is out of work
        elif not self._report_pending:
            self._report_pending = True
            self._wake()

    def _session_finished(self, report: SessionFinished) -> None:
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
        if session is not None and self._on_session_finished is not None:
            self._on_session_finished(report.session_id)

    # ------------------------------------------------------------------ syncing

    async def _sync(self, sessions: trio.Nursery, reports: trio.MemorySendChannel[Report]) -> None:
        snapshot = {action_id: entry.version for action_id, entry in self._pending.items()}
        payload = {action_id: dict(self._pending[action_id].fields) for action_id in snapshot}
        response = await self._api.update_worker_schedule(payload)
        self._syncs += 1
        for action_id, version in snapshot.items():
            entry = self._pending.get(action_id)
            if entry is not None and entry.version == version:
                del self._pending[action_id]
                status = entry.fields.get("completedStatus")
                if status:
                    self._reported[str(status)] += 1
        await self._apply(response, sessions, reports)

    async def _apply(
        self,
        response: Mapping[str, Any],
        sessions: trio.Nursery,
        reports: trio.MemorySendChannel[Report],
    ) -> None:
        interval = response.get("updateIntervalSeconds")
        if isinstance(interval, int | float) and interval != self.interval:
            self.interval = float(interval)
            if self._on_interval is not None:
                self._on_interval(self.interval)
        assigned: Mapping[str, Any] = response.get("assignedSessions") or {}
        canceled: Mapping[str, Any] = response.get("cancelSessionActions") or {}

        for session_id in list(self._sessions):
            if session_id not in assigned and session_id not in self._stopping:
                self._stopping.add(session_id)
                self._sessions[session_id].command(
                    Stop(
                        grace=0,
                        running_state=ActionState.CANCELED,
                        reason="the farm ended the session",
                    )
                )
        for session_id in list(self._dead):
            if session_id not in assigned:
                del self._dead[session_id]
                self._refused.discard(session_id)

        for session_id, wire in assigned.items():
            try:
                assignment = Assignment.from_api(session_id, wire)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("scheduler.bad_assignment", session_id=session_id, error=repr(exc))
                continue
            unsafe = assignment.unsafe_id()
            if unsafe is not None:
                # Its files cannot be named: fail the session, never the worker.
                if session_id not in self._dead:
                    log.error("scheduler.unsafe_assignment", session_id=session_id, error=unsafe)
                await self._return_actions(assignment, message=unsafe)
                continue
            if session_id in self._refused or (
                session_id not in self._sessions
                and self._refuse_new
                and session_id not in self._dead
            ):
                self._refused.add(session_id)
                await self._return_actions(assignment, interrupted=True)
                continue
            if session_id in self._dead:
                await self._return_actions(assignment)
                continue
            session = self._sessions.get(session_id)
            if session is None:
                session = self._session_factory(assignment, reports.clone())
                self._sessions[session_id] = session
                sessions.start_soon(session.run)
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
                session.command(Replace(assignment.actions))
            to_cancel = canceled.get(session_id)
            if to_cancel:
                session.command(
                    Cancel(action_ids=frozenset(map(str, to_cancel)), reason="canceled by the farm")
                )

        if response.get("desiredWorkerStatus") == "STOPPED" and not self._stop_requested:
            self._stop_requested = True
            log.info("scheduler.stop_requested")
            if self._on_stop_requested is not None:
                self._on_stop_requested()

    async def _return_actions(
        self,
        assignment: Assignment,
        *,
        interrupted: bool = False,
        message: str = "the worker could not run this session",
    ) -> None:
        """Answer for a session that cannot run: first and exits FAILED (with
        ``message``), the rest NEVER_ATTEMPTED; or, for a worker that takes no new
        work, the first INTERRUPTED (requeued elsewhere) and the rest NEVER_ATTEMPTED."""
        returned = self._dead.setdefault(assignment.session_id, set())
        now = datetime.now(UTC)
        first = True  # the farm refuses NEVER_ATTEMPTED for the first action it waits on
        for action in assignment.actions:
            if action.action_id in returned:
                continue
            returned.add(action.action_id)
            if interrupted and first:
                fields: dict[str, Any] = {
                    "completedStatus": "INTERRUPTED",
                    "startedAt": now,
                    "endedAt": now,
                    "progressMessage": "the worker is stopping and takes no new work",
                }
                first = False
            elif not interrupted and (first or action.kind is ActionKind.ENV_EXIT):
                fields = {
                    "completedStatus": "FAILED",
                    "startedAt": now,
                    "endedAt": now,
                    "progressMessage": message,
                }
                first = False
            else:
                fields = {"completedStatus": "NEVER_ATTEMPTED"}
            self._version += 1
            self._pending[action.action_id] = _Pending(fields, self._version, True)
        if self._pending:
            self.request_sync()

    # ------------------------------------------------------------------ helpers

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()

    async def _wait_for_wakeup(self) -> None:
        await self._wakeup.wait()
