"""Pausing: a worker that stops taking work for a while, without exiting.

On the Deadline worker API a worker cannot refuse what it is assigned, so "take
no work" is said to the farm: the worker is STOPPED for the while. One
mechanism, ``PauseControl``, serves every reason to pause: the error throttle
(``_throttle``), work hours (``_workhours``), a user at the workstation
(``_idle``), and a host's own ``Worker.pause(reason)``. Each reason is a *hold*;
while any hold is on, the worker is paused; once the last is off, it resumes.

Pausing, in order (the drain's first steps, and its last):

1. ``UpdateWorker(STOPPING)``: the farm assigns nothing new and winds down the
   worker's sessions.
2. The running sessions either finish their running task, the rest of their
   queue going back to the farm (``FinishSessions(running_only=True)``; policy
   ``finish``; told before step 1, so that no queued task starts while the
   farm hears of it) or are stopped, their running action reported
   INTERRUPTED at once (the farm requeues it for another worker) and cancelled
   within the drain grace (``StopSessions``; policy ``cancel``). A hold with
   ``cancel`` that comes while the sessions are finishing hurries them.
3. Once no session is left: a last UpdateWorkerSchedule with their reports,
   ``CloseSchedule`` (no call may follow STOPPED; the heartbeat waits), and
   ``UpdateWorker(STOPPED)``. The worker is ``paused``.

Resuming: ``UpdateWorker(STARTED)`` (retried, backing off, until the farm takes
it), ``ReopenSchedule`` (new sessions are taken again, and a sync goes out at
once), and the heartbeat beats again. A pause always completes: a hold lifted
while the worker is pausing is seen once it is paused, and it resumes at once.

A timed hold (the throttle's cool-down) counts its time from the moment the
worker is paused, so the cool-down is time without work, however long the last
session took to end. A drain (``Worker.drain``) cancels whatever step is under
way and takes over; a worker whose owner was asked to stop does not resume.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any, Literal

import attrs
import structlog
import trio

from actors import (
    ActionState,
    Backoff,
    FinishSessions,
    ReopenSchedule,
    SchedulerCommand,
    StopSessions,
    close_schedule,
    sync_now,
    tell,
    wait_sessions,
)

from .._errors import FarmhandError
from ._idle import IDLE_POLL_SECONDS, IdleSource, IdleUnknown
from ._workhours import WorkHours

log = structlog.get_logger("farmhand.worker")

#: What happens to the running sessions when the worker pauses.
PausePolicy = Literal["finish", "cancel"]
PAUSE_POLICIES: tuple[PausePolicy, ...] = ("finish", "cancel")
PauseState = Literal["running", "pausing", "paused", "resuming"]

#: The pause reasons farmhand itself uses (a host may add its own with ``Worker.pause``).
FAILURE_THROTTLE = "failure_throttle"
WORK_HOURS = "work_hours"
USER_ACTIVE = "user_active"
USER_IDLE_UNKNOWN = "user_idle_unknown"
#: The longest the work-hours watch sleeps before looking at the clock again (a
#: daylight-saving change or a clock set by hand is seen within this).
HOURS_CHECK_SECONDS = 60.0

#: Bound on each farm call made while pausing (the drain's bound too).
FARM_CALL_SECONDS = 5.0
#: The longest wait between two tries of UpdateWorker(STARTED) when resuming.
RESUME_RETRY_MAX = 60.0


@attrs.frozen
class Hold:
    """One reason the worker takes no work."""

    reason: str
    running: PausePolicy
    #: ``trio.current_time()`` when it was put on.
    since: float
    #: A timed hold: lifted this many seconds after the worker is paused.
    seconds: float | None = None
    detail: str = ""


@attrs.frozen
class PauseStatistics:
    state: PauseState
    #: The holds on now, by reason (``WorkerStatistics.paused_for``), and a line on
    #: each, in the same order (``pause_details``).
    reasons: tuple[str, ...]
    details: tuple[str, ...]
    #: Pauses begun so far.
    pauses: int
    #: Time spent pausing, paused or resuming, this pause included.
    paused_seconds: float
    #: Seconds until a timed hold lifts (when only timed holds are on, and the worker is paused).
    resume_in: float | None


class PauseControl:
    """Holds and the pause/resume sequence (see the module docstring). The farm is
    reached through ``update_worker(status)``, the sessions through the scheduler's
    inbox; ``may_resume()`` says whether the worker's owner still wants it to work."""

    def __init__(
        self,
        update_worker: Callable[[str], Awaitable[Any]],
        scheduler: trio.MemorySendChannel[SchedulerCommand],
        *,
        cancel_grace: float,
        may_resume: Callable[[], bool] = lambda: True,
        sessions: Callable[[], int] = lambda: 0,
    ) -> None:
        self._update_worker = update_worker
        self._scheduler = scheduler
        self._cancel_grace = cancel_grace
        self._may_resume = may_resume
        self._sessions = sessions
        self._holds: dict[str, Hold] = {}
        self._changed = trio.Event()
        self.state: PauseState = "running"
        #: Set while UpdateWorkerSchedule may be called (the heartbeat waits on it).
        self._open = trio.Event()
        self._open.set()
        #: The farm has the worker STOPPED because of a pause (a drain then skips
        #: STOPPING and STOPPED, which the farm would refuse or need not hear).
        self.farm_stopped = False
        #: When the schedule was last opened again (the outage watch counts from it).
        self.opened_at = -math.inf
        self._cancelling = False
        #: Wraps the pause loop and what puts holds on it; ``stop()`` cancels it.
        self._scope = trio.CancelScope()
        self._pauses = 0
        self._paused_at: float | None = None
        self._paused_total = 0.0
        #: When the worker became ``paused`` (timed holds count from here).
        self._stopped_at: float | None = None

    # ------------------------------------------------------------------ holds

    def hold(
        self,
        reason: str,
        *,
        running: PausePolicy = "finish",
        seconds: float | None = None,
        detail: str = "",
    ) -> None:
        """Take no work while ``reason`` holds (until ``release(reason)``, or for
        ``seconds`` once paused). Putting the same reason on again updates it."""
        old = self._holds.get(reason)
        since = old.since if old is not None and seconds is None else trio.current_time()
        self._holds[reason] = Hold(reason, running, since, seconds, detail)
        if old is None or old.running != running or old.seconds != seconds:
            log.debug("worker.hold", reason=reason, running=running, seconds=seconds)
        if self.state == "pausing" and running == "cancel":
            self._cancel_sessions(reason)
        self._notify()

    def release(self, reason: str) -> None:
        """``reason`` no longer holds the worker."""
        if self._holds.pop(reason, None) is not None:
            self._notify()

    def holds(self, reason: str) -> bool:
        return reason in self._holds

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def poke(self) -> None:
        """Wake those in ``wait_changed`` (the worker's own state changed: a drain)."""
        self._notify()

    async def wait_changed(self) -> None:
        """Return at the next change of holds or state."""
        await self._changed.wait()

    async def wait_open(self) -> None:
        """Return once UpdateWorkerSchedule may be called (at once unless paused)."""
        await self._open.wait()

    @property
    def calling_farm(self) -> bool:
        """The worker calls UpdateWorkerSchedule now (not paused or resuming)."""
        return self.state in ("running", "pausing")

    def statistics(self) -> PauseStatistics:
        now = trio.current_time()
        paused = self._paused_total
        if self._paused_at is not None:
            paused += now - self._paused_at
        holds = sorted(self._holds.values(), key=lambda hold: hold.reason)
        ends = [end for end in map(self._end, holds) if end is not None]
        # Known only when every hold is timed and the worker is paused.
        resume_at = max(ends) if ends and len(ends) == len(holds) else None
        return PauseStatistics(
            self.state,
            tuple(hold.reason for hold in holds),
            tuple(hold.detail for hold in holds),
            self._pauses,
            paused,
            None if resume_at is None else max(resume_at - now, 0.0),
        )

    def _end(self, hold: Hold) -> float | None:
        """When a timed hold lifts (``None``: not timed, or the worker is not paused yet)."""
        if hold.seconds is None or self._stopped_at is None:
            return None
        return max(hold.since, self._stopped_at) + hold.seconds

    def _next_lift(self) -> float:
        ends = [end for end in map(self._end, self._holds.values()) if end is not None]
        return min(ends, default=math.inf)

    def _lift_expired(self) -> None:
        now = trio.current_time()
        for reason, hold in list(self._holds.items()):
            end = self._end(hold)
            if end is not None and end <= now:
                del self._holds[reason]
                log.info("worker.hold_lifted", reason=reason)

    # ------------------------------------------------------------------ the loop

    async def run(
        self,
        *,
        hours: WorkHours | None = None,
        local_time: Callable[[], datetime] = datetime.now,
        idle_source: IdleSource | None = None,
        running: PausePolicy = "cancel",
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Pause while any hold is on, resume once none is, until ``stop()``; with the
        watches that put holds on for ``hours`` (read on ``local_time``) and for
        ``idle_source`` (``running``: their policy). ``started`` once they have had a
        first look and, if a hold is on then, the worker is paused: a worker that must
        not work yet never asks the farm for any."""
        started = False
        with self._scope:
            async with trio.open_nursery() as nursery:
                if hours is not None:
                    await nursery.start(follow_work_hours, self, hours, local_time, running)
                if idle_source is not None:
                    await nursery.start(follow_user_idle, self, idle_source, running)
                await nursery.start(self._loop)
                started = True
                task_status.started()
        if not started:
            task_status.started()  # stopped first: nothing to wait for

    def stop(self) -> bool:
        """Cancel whatever step is under way, for good (a drain takes over). Returns
        whether the farm has the worker STOPPED for a pause."""
        self._scope.cancel(reason="the worker is draining")
        return self.farm_stopped

    async def _loop(self, *, task_status: trio.TaskStatus[None]) -> None:
        if self._holds:
            await self._pause()
        task_status.started()
        while True:
            if self.state == "running":
                while not self._holds:
                    await self.wait_changed()
                await self._pause()
            while self._holds or not self._may_resume():
                with trio.move_on_at(self._next_lift()):
                    await self.wait_changed()
                self._lift_expired()
            await self._resume()

    def _set(self, state: PauseState) -> None:
        self.state = state
        self._notify()

    async def _pause(self) -> None:
        self._pauses += 1
        self._paused_at = trio.current_time()
        self._set("pausing")
        holds = list(self._holds.values())
        running: PausePolicy = "cancel" if any(h.running == "cancel" for h in holds) else "finish"
        log.info(
            "worker.pausing",
            reasons=[hold.reason for hold in holds],
            detail="; ".join(hold.detail for hold in holds if hold.detail),
            running=running,
            sessions=self._sessions(),
        )
        if running == "finish":
            # The running task runs to its end; what was sent ahead goes back. Told
            # before the farm is: a task that ended while UpdateWorker(STOPPING) was
            # on its way would otherwise let the next one start. What the farm sends
            # meanwhile a finishing session does not take (WorkSession freezes its
            # queue), and the farm takes it back when the worker is STOPPED.
            tell(self._scheduler, FinishSessions(running_only=True))
        await _pause_call(self._update_worker("STOPPING"), "UpdateWorker(STOPPING)")
        if running == "cancel":
            self._cancel_sessions(next(h.reason for h in holds if h.running == "cancel"))
        # However long the sessions take to finish (the policy's choice); the farm
        # hears from the worker meanwhile, as the heartbeat goes on.
        await wait_sessions(self._scheduler, "closed")
        await _pause_call(sync_now(self._scheduler), "UpdateWorkerSchedule (last before pausing)")
        self._open = trio.Event()
        await _pause_call(close_schedule(self._scheduler), "UpdateWorkerSchedule (in flight)")
        await _pause_call(self._update_worker("STOPPED"), "UpdateWorker(STOPPED)")
        self.farm_stopped = True
        self._cancelling = False
        self._stopped_at = trio.current_time()
        self._set("paused")
        resume_in = self.statistics().resume_in
        log.info(
            "worker.paused",
            reasons=sorted(self._holds),
            resume_in=None if resume_in is None else round(resume_in),
        )

    def _cancel_sessions(self, reason: str) -> None:
        if self._cancelling:
            return
        self._cancelling = True
        tell(
            self._scheduler,
            StopSessions(
                self._cancel_grace, ActionState.INTERRUPTED, f"the worker pauses: {reason}"
            ),
        )

    async def _resume(self) -> None:
        self._set("resuming")
        # From here the farm may have the worker STARTED: a drain must say STOPPING.
        self.farm_stopped = False
        backoff = Backoff(max_delay=RESUME_RETRY_MAX)
        while True:
            try:
                with trio.fail_after(4 * FARM_CALL_SECONDS):
                    await self._update_worker("STARTED")
                break
            except (FarmhandError, trio.TooSlowError) as exc:
                delay = backoff.next_delay()
                log.warning("worker.resume_failed", error=str(exc) or "timed out", retry_in=delay)
                await trio.sleep(delay)
        tell(self._scheduler, ReopenSchedule())
        now = trio.current_time()
        self.opened_at = now
        self._stopped_at = None
        if self._paused_at is not None:
            self._paused_total += now - self._paused_at
            log.info("worker.resumed", paused_seconds=round(now - self._paused_at, 1))
        self._paused_at = None
        self._open.set()
        self._set("running")


# ------------------------------------------------------------------ what puts holds on


async def follow_work_hours(
    pauses: PauseControl,
    hours: WorkHours,
    local_time: Callable[[], datetime],
    running: PausePolicy,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hold ``work_hours`` while ``local_time()`` is outside ``hours`` (``running``: the
    policy for the sessions then); ``started`` after the first look."""
    started = False
    while True:
        now = local_time()
        if hours.allows(now):
            pauses.release(WORK_HOURS)
        elif not pauses.holds(WORK_HOURS):
            pauses.hold(WORK_HOURS, running=running, detail=f"outside the work hours ({hours})")
        if not started:
            started = True
            task_status.started()
        change = hours.next_change(now)
        if change is None:
            await trio.sleep_forever()  # the hours are the whole week
        seconds = (change - now).total_seconds() if change is not None else 0.0
        await trio.sleep(min(max(seconds, 0.001), HOURS_CHECK_SECONDS))


async def follow_user_idle(
    pauses: PauseControl,
    source: IdleSource,
    running: PausePolicy,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hold ``user_active`` while ``source`` says someone uses the host, and
    ``user_idle_unknown`` while it cannot say."""
    started = False
    unknown: str | None = None
    while True:
        try:
            with trio.fail_after(IDLE_POLL_SECONDS):
                idle = await source.user_idle()
        except (IdleUnknown, trio.TooSlowError) as exc:
            error = str(exc) or f"no answer within {IDLE_POLL_SECONDS:g} s"
            if error != unknown:
                log.warning("worker.user_idle_unknown", error=error, note="taking no work")
                unknown = error
                pauses.hold(USER_IDLE_UNKNOWN, running=running, detail=error)
        else:
            if unknown is not None:
                log.info("worker.user_idle_known", idle=idle)
                unknown = None
            pauses.release(USER_IDLE_UNKNOWN)
            if idle:
                pauses.release(USER_ACTIVE)
            elif not pauses.holds(USER_ACTIVE):
                pauses.hold(USER_ACTIVE, running=running, detail="a user is active on this host")
        if not started:
            started = True
            task_status.started()
        await trio.sleep(IDLE_POLL_SECONDS)


async def farm_call(
    call: Awaitable[Any], what: str, *, event: str = "worker.shutdown_call_failed"
) -> None:
    """Await a farm call made while stopping or pausing, for ``FARM_CALL_SECONDS`` at
    most; a failure is logged (``event``, naming ``what``), not raised."""
    with trio.move_on_after(FARM_CALL_SECONDS):
        try:
            await call
        except FarmhandError as exc:
            log.warning(event, call=what, error=str(exc))


_pause_call = partial(farm_call, event="worker.pause_call_failed")
