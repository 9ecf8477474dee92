"""The worker agent: one nursery tree of actors working a Deadline farm.

``open_agent(config)`` bootstraps the worker and runs, under one nursery::

    credentials refresher   renews the worker's credentials before they expire
    log shipper             session logs and the agent's own log to files and CloudWatch
    entity fetcher          BatchGetJobEntity, batched and shared
    scheduler               UpdateWorkerSchedule; a WorkSession per assigned session
    heartbeat               a sync at the farm's interval, whatever else happens
    scheduler follower      the scheduler's events: interval, farm stop, sessions over
    stop watcher            exit-after-jobs and idle-timeout, for ephemeral workers
    pause control           pause/resume (``_pause``): the failure throttle, work
                            hours and a user at the workstation put holds on it

The actors talk by messages only (``actors._messages``; ARCHITECTURE.md).

The block gets a ``Worker``: ``statistics()``, ``drain(grace)``,
``finish_then_stop()`` and ``wait_stop_requested()``. Leaving the block drains
the worker if it was not drained yet. Several workers can run in one process;
they share nothing but the process. From an asyncio program the same tree runs
as a Trio guest on the program's loop (``agent.worker._guest``).

Stopping (one documented contract; see the README):

- ``drain(grace)``: UpdateWorker(STOPPING); new work refused; running actions
  reported INTERRUPTED at once and cancelled with their own method within
  ``grace``; environment exits run within what is left; queued actions
  NEVER_ATTEMPTED; a final UpdateWorkerSchedule; UpdateWorker(STOPPED). The
  heartbeat keeps going until the end, and every call on the way out is
  bounded in time. Calling it again with a shorter grace shortens it.
- ``finish_then_stop()``: take no new sessions, let each current one finish
  the actions it has (later ones are returned to the farm, to go to another
  worker), then ``wait_stop_requested()`` returns (``"finished"``).
- The farm asking the worker to stop (``desiredWorkerStatus``), the
  credentials running out, ``exit_after_jobs`` and ``idle_timeout`` also make
  ``wait_stop_requested()`` return, with the reason.

Pausing is not stopping: ``pause(reason)`` / ``resume(reason)`` (and the failure
throttle, work hours and idle detection, which use them) make the worker STOPPED
on the farm for a while, its process running; see ``agent.worker._pause``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import attrs
import httpx
import structlog
import trio

from actors import (
    ActionState,
    CancelRunning,
    Containment,
    Destination,
    EntityFetcher,
    FarmStopRequested,
    FinishSessions,
    Heartbeat,
    HeartbeatCommand,
    Held,
    IntervalChanged,
    LogShipper,
    LogStream,
    RefuseNewSessions,
    Scheduler,
    SchedulerCommand,
    SchedulerEvent,
    SessionAssignment,
    SessionClosed,
    SessionEvent,
    SessionReport,
    StopSessions,
    SupervisorStatistics,
    WorkerIdentity,
    WorkSession,
    close_schedule,
    open_log_stream,
    set_interval,
    supervise,
    sync_now,
    tell,
    wait_sessions,
)

from .._errors import RetriesExhausted, TransportError
from .._logging import add_log_sink, quiet_by_default, remove_log_sink
from ..deadline import (
    NO_RETRIES,
    CredentialHolder,
    DeadlineSchedule,
    LogsClient,
    completed_counts,
)
from ._attachments import LazyAttachments
from ._bootstrap import Bootstrapped, refresh_credentials
from ._config import WorkerConfig
from ._costs import CostsSnapshot
from ._endpoints import Endpoints as Endpoints
from ._endpoints import aws_session as aws_session
from ._endpoints import load_bootstrap_credentials as load_bootstrap_credentials
from ._endpoints import resolve_endpoints as resolve_endpoints
from ._guest import HostCalls, from_host, hosted_by_trio_or_asyncio
from ._hostconfig import HostConfigurationFailed, run_host_configuration
from ._hostinfo import probe_host
from ._hostmetrics import log_host_metrics
from ._idle import IdleSource, LogindIdle
from ._logsink import CloudWatchSink
from ._pause import FARM_CALL_SECONDS, PauseControl, PausePolicy, farm_call
from ._queuecreds import QueueCredentials
from ._restarts import bootstrap_taking_over, end_unclaimed, restart_hold
from ._sessionoptions import make_directories, work_session_options
from ._sessionwatch import SessionWatch

if TYPE_CHECKING:
    from ._imds import ImdsMonitor

log = structlog.get_logger("farmhand.worker")

StopReason = Literal[
    "farm",
    "credentials",
    "interruption",
    "exit_after_jobs",
    "idle_timeout",
    "farm_unreachable",
    "finished",
    "drained",
]

#: Bound on each network call made while stopping (as while pausing: ``farm_call``).
SHUTDOWN_CALL_SECONDS = FARM_CALL_SECONDS


def stop_bound(grace: float) -> float:
    """The longest a drain with ``grace`` takes, to the agent's exit: the grace, then
    at most 5 s each for UpdateWorker(STOPPING), the sessions' last reports, the
    final sync, a sync in flight, UpdateWorker(STOPPED), the sessions' logs and
    the agent's log. A service manager's stop timeout must be longer."""
    return grace + 7 * SHUTDOWN_CALL_SECONDS


#: The scheduler's sync loop is restarted after these (its sessions live on).
TRANSIENT = (TransportError, RetriesExhausted)


@attrs.frozen
class WorkerStatistics:
    worker_id: str
    state: str
    sessions: int
    #: Final action states reported to the farm, by completedStatus.
    actions: Mapping[str, int]
    syncs: int
    #: Action updates not yet acknowledged by the farm (they go out with the next call).
    updates_pending: int
    heartbeat_age: float | None
    heartbeat_lateness_p99: float
    log_bytes_shipped: int
    log_bytes_buffered: int
    api_calls: int
    api_retries: int
    retries_by_operation: Mapping[str, int]
    sessions_finished: int
    #: Pausing (``Worker.pause``; ``_pause.PauseStatistics`` says what each means) and
    #: the failed task runs since the last success (with ``failure_throttle`` set).
    paused_for: tuple[str, ...] = ()
    pause_details: tuple[str, ...] = ()
    pauses: int = 0
    paused_seconds: float = 0.0
    resume_in: float | None = None
    failed_task_streak: int = 0


class Worker:
    """A running worker (see the module docstring)."""

    def __init__(
        self,
        config: WorkerConfig,
        booted: Bootstrapped,
        scheduler: Scheduler,
        scheduler_inbox: trio.MemorySendChannel[SchedulerCommand],
        heartbeat: Heartbeat,
        shipper: LogShipper,
        deadline_stats: Callable[[], Any],
        scheduler_supervision: SupervisorStatistics,
        queue_credentials: QueueCredentials | None = None,
    ) -> None:
        self.config = config
        self._queue_credentials = queue_credentials
        self.worker_id = booted.worker_id
        self.farm_id = config.farm_id
        self.fleet_id = config.fleet_id
        self._booted = booted
        self._scheduler = scheduler
        self._scheduler_inbox = scheduler_inbox
        self._heartbeat = heartbeat
        self._shipper = shipper
        self._deadline_stats = deadline_stats
        self._scheduler_supervision = scheduler_supervision
        #: Where /healthz and /metrics are served, when they are.
        self.health_url: str | None = None
        #: The spot/scale-in monitor, when configured.
        self.imds: ImdsMonitor | None = None
        #: Wraps the heartbeat's task; cancelled once the worker is STOPPED.
        self.heartbeat_scope = trio.CancelScope()
        self._state = "running"
        self._stop_reason: StopReason | None = None
        self._stop_grace: float | None = None
        self._stop_requested = trio.Event()
        self._drained = trio.Event()
        self._draining = False
        self._drain_deadline = math.inf
        #: Bounds the wait for the sessions; a hurried drain moves it closer.
        self._drain_wait = trio.CancelScope()
        self._finish_then_stop = False
        self.sessions_finished = 0
        #: Set when the worker runs as a Trio guest of an asyncio host (``_guest``).
        self._guest: HostCalls | None = None
        self._pauses = PauseControl(
            lambda status: booted.worker.update_worker(status=status),
            scheduler_inbox,
            cancel_grace=config.drain_grace_seconds,
            may_resume=self._may_resume,
            sessions=self._sessions,
        )
        #: Its sessions' events: what actions cost (``/metrics``), the failure throttle.
        self._watch = SessionWatch(
            config.failure_throttle, config.failure_cooldown_seconds, self.pause
        )

    # ---------------------------------------------------------------- state

    def statistics(self) -> WorkerStatistics:
        scheduler = self._scheduler.statistics()
        heartbeat = self._heartbeat.statistics()
        shipper = self._shipper.statistics()
        api = self._deadline_stats()
        pauses = self._pauses.statistics()
        return WorkerStatistics(
            worker_id=self.worker_id,
            # Draining and stopped win over the pause's own states.
            state=pauses.state if self._state == "running" else self._state,
            sessions=scheduler.sessions,
            actions=completed_counts(scheduler.reported),
            syncs=scheduler.syncs,
            updates_pending=scheduler.pending_updates,
            heartbeat_age=self._heartbeat.age(),
            heartbeat_lateness_p99=heartbeat.lateness_p99,
            log_bytes_shipped=shipper.bytes_shipped,
            log_bytes_buffered=shipper.bytes_pending,
            api_calls=api.calls,
            api_retries=api.retries,
            retries_by_operation={op: s.retries for op, s in api.operations.items()},
            sessions_finished=self.sessions_finished,
            paused_for=pauses.reasons,
            pause_details=pauses.details,
            pauses=pauses.pauses,
            paused_seconds=pauses.paused_seconds,
            resume_in=pauses.resume_in,
            failed_task_streak=self._watch.failed_task_streak,
        )

    def action_costs(self) -> CostsSnapshot:
        """What actions cost so far, as histograms by kind and step (``_costs``)."""
        return self._watch.costs.snapshot()

    @property
    def heartbeat_interval(self) -> float:
        return self._heartbeat.statistics().interval

    @property
    def scheduler_restarts(self) -> int:
        return self._scheduler_supervision.restarts

    def api_statistics(self) -> dict[str, tuple[int, int]]:
        """Deadline API (calls, retries) by operation."""
        return {op: (s.calls, s.retries) for op, s in self._deadline_stats().operations.items()}

    def actor_states(self) -> dict[str, str]:
        """A word on each actor, for health checks."""
        supervision = self._scheduler_supervision
        shipper = self._shipper.statistics()
        expires = self._booted.credentials.expires_at
        return {
            "scheduler": "running"
            if supervision.restarts == 0
            else f"restarted {supervision.restarts} times (last: {supervision.last_error})",
            "heartbeat": f"{self._heartbeat.statistics().beats} beats",
            "log_shipper": "running"
            if shipper.upload_errors == 0
            else f"{shipper.upload_errors} upload errors",
            "credentials": f"expire {expires.isoformat()}" if expires else "do not expire",
            **self._queue_states(),
            **self._imds_states(),
        }

    def _imds_states(self) -> dict[str, str]:
        if self.imds is None:
            return {}
        stats = self.imds.statistics()
        reach = "reachable" if stats.reachable else "unreachable"
        return {"imds_monitor": f"{reach}, {stats.requests} requests, {stats.notices} notices"}

    def _queue_states(self) -> dict[str, str]:
        if self._queue_credentials is None:
            return {}
        stats = self._queue_credentials.statistics()
        return {
            "queue_credentials": f"{stats.queues} queues, {stats.sessions} sessions, "
            f"{stats.renewals} renewals, {stats.failures} failures"
        }

    @property
    def stop_reason(self) -> StopReason | None:
        return self._stop_reason

    @property
    def stop_grace(self) -> float:
        """The drain grace the reason for stopping leaves (the configured one at most)."""
        configured = self.config.drain_grace_seconds
        return configured if self._stop_grace is None else min(configured, self._stop_grace)

    def request_stop(self, reason: StopReason, *, grace: float | None = None) -> None:
        """Ask the worker's owner to stop it (``wait_stop_requested`` returns); ``grace``:
        the most time the cause leaves for a drain."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_grace = grace
            log.info("worker.stop_requested", reason=reason, grace=grace)
        self._stop_requested.set()

    @from_host
    async def wait_state(self, *states: str) -> str:
        """Wait until ``statistics().state`` is one of ``states`` (``running``,
        ``pausing``, ``paused``, ``resuming``, ``draining``, ``stopped``); returns it."""
        while (state := self.statistics().state) not in states:
            await self._pauses.wait_changed()
        return state

    @from_host
    async def wait_stop_requested(self) -> StopReason:
        await self._stop_requested.wait()
        assert self._stop_reason is not None
        return self._stop_reason

    # ---------------------------------------------------------------- nudges

    @from_host
    async def sync_now(self) -> None:
        """Call UpdateWorkerSchedule now (reports go out, news comes in) instead of at the
        next heartbeat; returns once a call that started after this one is done. For a
        host that knows the farm has something for the worker (a cancel, new work)."""
        await sync_now(self._scheduler_inbox)

    def cancel_running(self, *, time_limit: float | None = None, reason: str) -> None:
        """Cancel the action each session is running, with its own cancelation method or
        within ``time_limit`` seconds (0: kill it now). The sessions go on as after any
        cancel: the rest of their work is skipped, their environment exits run, and the
        farm hears the outcome as usual."""
        tell(self._scheduler_inbox, CancelRunning(time_limit, reason))

    # ---------------------------------------------------------------- pausing

    def pause(
        self,
        reason: str,
        *,
        running: PausePolicy = "finish",
        seconds: float | None = None,
        detail: str = "",
    ) -> None:
        """Take no work while ``reason`` holds: the farm is told the worker is STOPPING,
        the running sessions finish their running action, what was sent ahead going
        back to the farm (``running="finish"``), or are stopped, their running
        action INTERRUPTED (``"cancel"``), then STOPPED; once
        no reason holds, STARTED again. ``seconds``: the hold lifts by itself that long
        after the worker is paused. The process keeps running (``agent.worker._pause``)."""
        self._pauses.hold(reason, running=running, seconds=seconds, detail=detail)

    def resume(self, reason: str) -> None:
        """``reason`` no longer holds the worker; it resumes once none does."""
        self._pauses.release(reason)

    def _may_resume(self) -> bool:
        return not (self._stop_requested.is_set() or self._finish_then_stop or self._draining)

    # ---------------------------------------------------------------- stopping

    def finish_then_stop(self) -> None:
        """Finish the actions the worker has, take no more, then ask to stop."""
        if self._finish_then_stop:
            return
        self._finish_then_stop = True
        tell(self._scheduler_inbox, FinishSessions())
        log.info("worker.finishing", sessions=self._sessions())
        self._check_finished()

    def _sessions(self) -> int:
        return self._scheduler.statistics().sessions

    def _check_finished(self) -> None:
        if self._finish_then_stop and not self._sessions():
            self.request_stop("finished")

    async def _follow_scheduler(
        self,
        events: trio.MemoryReceiveChannel[SchedulerEvent],
        heartbeat: trio.MemorySendChannel[HeartbeatCommand],
    ) -> None:
        """What the scheduler says: the farm's interval goes to the heartbeat (latest
        wins), a farm stop and finished sessions to the stop rules."""
        with events:
            async for event in events:
                if isinstance(event, IntervalChanged):
                    set_interval(heartbeat, event.seconds)
                elif isinstance(event, FarmStopRequested):
                    self.request_stop("farm")
                elif isinstance(event, SessionClosed):
                    self._session_closed()

    def _session_closed(self) -> None:
        self.sessions_finished += 1
        limit = self.config.exit_after_jobs
        if limit is not None and self.sessions_finished >= limit:
            if not self._sessions():
                tell(self._scheduler_inbox, RefuseNewSessions())
                self.request_stop("exit_after_jobs")
            else:
                self.finish_then_stop()  # the sessions still running finish their work
        self._check_finished()

    @from_host
    async def drain(self, grace: float | None = None) -> None:
        """Stop the worker (see the module docstring). ``grace`` defaults to the config's."""
        grace = self.config.drain_grace_seconds if grace is None else max(grace, 0.0)
        deadline = trio.current_time() + grace
        if self._draining:
            # A second request can only shorten the grace.
            if deadline < self._drain_deadline:
                self._drain_deadline = deadline
                self._drain_wait.deadline = min(
                    self._drain_wait.deadline, deadline + SHUTDOWN_CALL_SECONDS
                )
                tell(
                    self._scheduler_inbox,
                    StopSessions(grace, ActionState.INTERRUPTED, "drain, hurried"),
                )
            await self._drained.wait()
            return
        self._draining = True
        self._drain_deadline = deadline
        # A pause under way stops where it is; the drain does the rest. A paused
        # worker is STOPPED on the farm already, which would refuse STOPPING.
        paused = self._pauses.stop()
        self._state = "draining"
        self._pauses.poke()
        worker = self._booted.worker
        log.info("worker.draining", grace=grace, sessions=self._sessions(), paused=paused)
        if not paused:
            await farm_call(worker.update_worker(status="STOPPING"), "UpdateWorker(STOPPING)")
        tell(
            self._scheduler_inbox,
            StopSessions(grace, ActionState.INTERRUPTED, "the worker is draining"),
        )
        # Sessions get their grace for actions and exits; then a moment for the last reports.
        self._drain_wait.deadline = self._drain_deadline + SHUTDOWN_CALL_SECONDS
        with self._drain_wait:
            await wait_sessions(self._scheduler_inbox, "reported")
        await farm_call(sync_now(self._scheduler_inbox), "UpdateWorkerSchedule (final)")
        # The heartbeat went on until here; a sync after STOPPED would be refused
        # (the farm answers that the worker is offline), so none may start or be in flight.
        self.heartbeat_scope.cancel(reason="the worker is stopping")
        await farm_call(close_schedule(self._scheduler_inbox), "UpdateWorkerSchedule (in flight)")
        if not paused:
            await farm_call(worker.update_worker(status="STOPPED"), "UpdateWorker(STOPPED)")
        self._state = "stopped"
        self._pauses.poke()
        # The sessions' last log lines, which need no farm, ship now.
        with trio.move_on_after(SHUTDOWN_CALL_SECONDS):
            await wait_sessions(self._scheduler_inbox, "closed")
        log.info("worker.stopped", worker_id=self.worker_id)
        self.request_stop("drained")
        self._drained.set()

    async def _watch_farm(self, outage_limit: float) -> None:
        """Drain once no UpdateWorkerSchedule has succeeded for ``outage_limit`` seconds.
        Until then an outage costs nothing: the sync loop retries (backing off to 30 s),
        running work goes on, its reports wait (latest wins, one per action) and its
        logs wait on disk; all go out, in order, once the farm answers."""
        while True:
            if not self._pauses.calling_farm:
                # Paused: no calls, so none can fail; the count starts again on resuming.
                await self._pauses.wait_changed()
                continue
            since = max(self._scheduler.statistics().last_success, self._pauses.opened_at)
            now = trio.current_time()
            if now - since >= outage_limit:
                break
            with trio.move_on_at(since + outage_limit):
                await self._pauses.wait_changed()
        log.error(
            "worker.farm_unreachable",
            seconds=round(now - since),
            limit=outage_limit,
            last_error=self._scheduler_supervision.last_error,
            note="draining; the reports and logs still owed are lost with the sessions",
        )
        self.request_stop("farm_unreachable")

    async def _watch_idle(self, idle_timeout: float) -> None:
        while True:
            if self._pauses.state != "running":
                # A paused worker is not idle for want of work: the timer starts again.
                await self._pauses.wait_changed()
                continue
            if self._sessions():
                await wait_sessions(self._scheduler_inbox, "closed")
                continue
            pauses = self._pauses.statistics().pauses
            with trio.move_on_after(idle_timeout):
                await wait_sessions(self._scheduler_inbox, "busy")
                continue
            if self._pauses.state != "running" or self._pauses.statistics().pauses != pauses:
                continue
            tell(self._scheduler_inbox, RefuseNewSessions())
            self.request_stop("idle_timeout")
            return


@hosted_by_trio_or_asyncio
@asynccontextmanager
async def open_agent(
    config: WorkerConfig,
    *,
    http: httpx.AsyncClient | None = None,
    schedule_http: httpx.AsyncClient | None = None,
    endpoints: Endpoints | None = None,
    bootstrap_credentials: CredentialHolder | None = None,
    on_event: Callable[[str, SessionEvent], None] | None = None,
    containment: Containment | None = None,
    ship_session_logs: bool = True,
    jobs_get_agent_credentials: bool = False,
    idle_source: IdleSource | None = None,
    local_time: Callable[[], datetime] | None = None,
    session_starts: trio.CapacityLimiter | None = None,
) -> AsyncIterator[Worker]:
    """Bootstrap a worker and run it for the block (see the module docstring).

    ``on_event(session_id, event)`` sees every session event (output lines
    included), for hosts that show them; such a host may also keep session logs
    out of CloudWatch (``ship_session_logs=False``; with ``local_session_logs``
    off too, sessions keep no log at all). Jobs never inherit the host's AWS
    credential variables unless ``jobs_get_agent_credentials`` (``run`` does: its
    jobs are the user's own). ``endpoints`` and ``http`` let several
    workers in one process share one resolution and one connection pool.
    ``schedule_http`` is a pool for UpdateWorkerSchedule alone, the worker's
    heartbeat (default: ``http``): give workers that share ``http`` one of these
    too, without a connection limit (each worker has at most one such call in
    flight, and the farm may hold an idle worker's call until work comes), so that
    no heartbeat waits for a connection behind log uploads and other calls.
    ``session_starts`` makes the starts of sessions take turns (at most its total
    at once, from the first call to the first action's start) with the other
    workers that share it, so that a job reaching many workers at once does not
    queue their heartbeats behind a thousand start-ups (``open_fleet_http``).

    From an asyncio program the tree runs as a Trio guest on the host's loop
    (``agent/worker/_guest.py``); an ``http`` client given there is the workers' only.

    ``idle_source`` says whether the host's users are idle, for
    ``only_when_user_idle`` (default: systemd-logind's idle hint, ``_idle``);
    ``local_time`` is the wall clock the work hours are read on (default
    ``datetime.now``). Both are there for tests and for hosts that know better.
    """
    quiet_by_default()
    if endpoints is None:
        endpoints = await trio.to_thread.run_sync(resolve_endpoints, config)
    if bootstrap_credentials is None:
        bootstrap_credentials = await load_bootstrap_credentials(config)
    own_http = http is None
    client = http or httpx.AsyncClient(
        timeout=httpx.Timeout(30.0),
        limits=httpx.Limits(max_keepalive_connections=4),
        # Plain HTTP to every endpoint (a farm on loopback): no TLS, so no CA bundle to
        # load (tens of milliseconds and a MiB at start-up). The client follows no
        # redirects, so it never reaches an https URL it was not given.
        verify=any(
            url.lower().startswith("https:") for url in (endpoints.deadline.url, endpoints.logs.url)
        ),
    )
    try:
        await make_directories(config)
        facts = await probe_host(overrides=config.capabilities, scratch_dir=config.session_root_dir)
        booted, held = await bootstrap_taking_over(
            config,
            http=client,
            endpoint=endpoints.deadline,
            bootstrap_credentials=bootstrap_credentials,
            facts=facts,
            schedule_http=schedule_http,
        )
        running = False
        try:
            async with _run_worker(
                config,
                booted,
                client,
                endpoints,
                bootstrap_credentials,
                on_event,
                containment,
                ship_session_logs,
                jobs_get_agent_credentials,
                idle_source,
                local_time,
                held,
                session_starts,
            ) as worker:
                running = True
                yield worker
        finally:
            if not running:
                # Cancelled or failed while starting: the farm knows the worker as
                # STARTED; tell it otherwise (a running worker's drain does this).
                with trio.CancelScope(shield=True):
                    await farm_call(
                        booted.worker.update_worker(status="STOPPED"), "UpdateWorker(STOPPED)"
                    )
    finally:
        if own_http:
            with trio.CancelScope(shield=True):
                await client.aclose()


def _frozen(holder: CredentialHolder) -> tuple[str, str, str | None] | None:
    credentials = holder.credentials
    if credentials is None:
        return None
    frozen = credentials.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token


@asynccontextmanager
async def _run_worker(
    config: WorkerConfig,
    booted: Bootstrapped,
    http: httpx.AsyncClient,
    endpoints: Endpoints,
    bootstrap_credentials: CredentialHolder,
    on_event: Callable[[str, SessionEvent], None] | None,
    containment: Containment | None,
    ship_session_logs: bool,
    jobs_get_agent_credentials: bool,
    idle_source: IdleSource | None = None,
    local_time: Callable[[], datetime] | None = None,
    held: dict[str, Held] | None = None,
    session_starts: trio.CapacityLimiter | None = None,
) -> AsyncIterator[Worker]:
    held = {} if held is None else held
    logs_client = LogsClient(http, endpoints.logs, booted.credentials, default_policy=NO_RETRIES)
    identity = WorkerIdentity(config.farm_id, config.fleet_id, booted.worker_id)
    options = work_session_options(
        config,
        ship_session_logs=ship_session_logs,
        jobs_get_agent_credentials=jobs_get_agent_credentials,
    )
    own_containment = containment is None
    if containment is None:
        containment = Containment()
        # It first ends what a killed previous incarnation left (/proc scans): not on the loop.
        await trio.to_thread.run_sync(containment.start_watchdog)
    worker: Worker | None = None
    agent_stream: LogStream | None = None
    # Every log line of the worker's actors (and the sessions they start) names it:
    # its tasks inherit the binding from here. The host's own code in the block does
    # not (it is reset before the yield), so that with several workers in one process
    # each worker's CloudWatch stream gets its own records and the process's.
    tokens = structlog.contextvars.bind_contextvars(worker_id=booted.worker_id)
    try:
        async with trio.open_nursery() as nursery:
            # The actors start in dependency order; each hands back its inbox.
            shipper = LogShipper(CloudWatchSink(logs_client))
            shipper_inbox = await nursery.start(shipper.run)
            if booted.log_group and booted.log_stream:
                agent_stream = await open_log_stream(
                    shipper_inbox,
                    config.worker_logs_dir / f".{booted.worker_id}.cloudwatch-spool",
                    Destination(booted.log_group, booted.log_stream),
                    compact_over=1 << 20,
                )
                add_log_sink(agent_stream.write, worker_id=booted.worker_id)
            # The fleet's host configuration script, before any work (its lines go to
            # the agent's stream, which is why it runs here and not in the bootstrap).
            try:
                await run_host_configuration(
                    config,
                    booted.worker_id,
                    booted.host_configuration,
                    booted.state,
                    _frozen(booted.credentials),
                    containment=containment,
                )
            except HostConfigurationFailed:
                if agent_stream is not None:
                    remove_log_sink(agent_stream.write)
                    with trio.move_on_after(SHUTDOWN_CALL_SECONDS):
                        await agent_stream.flush()
                    agent_stream = None
                raise
            fetcher = await nursery.start(EntityFetcher(booted.worker.batch_get_job_entity).run)
            queue_credentials = QueueCredentials(
                booted.worker.assume_queue_role_for_worker, config.worker_persistence_dir
            )
            await nursery.start(queue_credentials.run)
            attachments = LazyAttachments.for_worker(config)

            def make_session(
                assignment: SessionAssignment, reports: trio.MemorySendChannel[SessionReport]
            ) -> WorkSession:
                def watch(event: SessionEvent) -> None:
                    # The worker's own accounting first, then the host's view.
                    assert worker is not None
                    worker._watch.observe(assignment.job_id, event)
                    if on_event is not None:
                        on_event(assignment.session_id, event)

                return WorkSession(
                    assignment,
                    identity=identity,
                    fetcher=fetcher,
                    reports=reports,
                    shipper=shipper_inbox,
                    options=options,
                    on_event=watch,
                    containment=containment,
                    queue_credentials=queue_credentials,
                    attachments=attachments,
                    held=held.pop(assignment.session_id, None),
                    starts=session_starts,
                )

            events_send, events_receive = trio.open_memory_channel[SchedulerEvent](16)
            scheduler = Scheduler(
                DeadlineSchedule(booted.worker),
                make_session,
                events=events_send,
                report_interval=config.report_interval_seconds,
            )
            supervision = SupervisorStatistics()
            scheduler_inbox = await nursery.start(
                partial(
                    scheduler.run,
                    # Restarted for as long as it takes: the farm outage limit (below)
                    # decides when an outage is too long.
                    supervise=partial(
                        supervise,
                        name="scheduler",
                        transient=TRANSIENT,
                        statistics=supervision,
                        max_restarts=math.inf,
                    ),
                )
            )

            async def beat() -> None:
                # A paused worker makes no calls (the farm has it STOPPED): the beat waits.
                assert worker is not None
                await worker._pauses.wait_open()
                # The farm needs an UpdateWorkerSchedule per interval, whoever makes it:
                # one that started since this beat's slot (a report in flight) will do,
                # instead of waiting for it and then for one more round trip.
                await sync_now(scheduler_inbox, since=heartbeat.slot)

            heartbeat = Heartbeat(beat, scheduler.statistics().interval)
            worker = Worker(
                config,
                booted,
                scheduler,
                scheduler_inbox,
                heartbeat,
                shipper,
                booted.worker.deadline.statistics,
                supervision,
                queue_credentials,
            )

            async def run_heartbeat(
                *, task_status: trio.TaskStatus[trio.MemorySendChannel[HeartbeatCommand]]
            ) -> None:
                assert worker is not None
                with worker.heartbeat_scope:
                    await heartbeat.run(task_status=task_status)

            # Before the heartbeat: a worker outside its hours (or with its user at the
            # keyboard) is paused before it asks the farm for anything.
            if config.only_when_user_idle and idle_source is None:
                idle_source = LogindIdle()
            await nursery.start(
                partial(
                    worker._pauses.run,
                    hours=config.work_hours,
                    local_time=local_time or datetime.now,
                    idle_source=idle_source if config.only_when_user_idle else None,
                    running=config.when_user_returns,
                )
            )
            heartbeat_inbox = await nursery.start(run_heartbeat)
            nursery.start_soon(worker._follow_scheduler, events_receive, heartbeat_inbox)
            if held:
                nursery.start_soon(end_unclaimed, held, restart_hold(config), scheduler_inbox)

            async def credentials_failed(seconds_left: float) -> None:
                worker.request_stop("credentials", grace=seconds_left)

            nursery.start_soon(
                partial(
                    refresh_credentials,
                    config,
                    booted,
                    http=http,
                    endpoint=endpoints.deadline,
                    bootstrap_credentials=bootstrap_credentials,
                    on_failure=credentials_failed,
                )
            )
            if config.idle_timeout is not None:
                nursery.start_soon(worker._watch_idle, config.idle_timeout)
            if config.farm_outage_limit > 0:
                nursery.start_soon(worker._watch_farm, config.farm_outage_limit)
            if config.host_memory_reserve is not None:
                from ._hostmemory import guard_host_memory

                nursery.start_soon(
                    guard_host_memory, config.host_memory_reserve, containment, scheduler_inbox
                )
            if config.host_metrics_logging:
                nursery.start_soon(
                    partial(
                        log_host_metrics,
                        config.host_metrics_logging_interval_seconds,
                        disk_path=config.session_root_dir,
                    )
                )
            if config.imds_monitor:
                from ._imds import ImdsMonitor, drain_on_notice  # EC2 hosts only, when asked

                def interrupted(grace: float) -> None:
                    worker.request_stop("interruption", grace=grace)
                    # The drain starts now, whatever the owner does; a later, more
                    # urgent notice shortens it (drain only ever shortens).
                    nursery.start_soon(worker.drain, grace)

                on_notice = drain_on_notice(config.drain_grace_seconds, interrupted)
                worker.imds = ImdsMonitor(
                    config.imds_endpoint, on_notice, interval=config.imds_interval_seconds
                )
                await nursery.start(worker.imds.run)
            if config.health_port is not None:
                from ._health import serve_health  # prometheus-client only when asked for

                worker.health_url = await nursery.start(
                    partial(
                        serve_health,
                        worker,
                        host=config.health_address,
                        port=config.health_port,
                    )
                )
                log.info("worker.health_endpoint", url=worker.health_url)
            log.info("worker.started", worker_id=booted.worker_id)
            structlog.contextvars.reset_contextvars(**tokens)
            tokens = {}
            try:
                yield worker
            finally:
                with trio.CancelScope(shield=True):
                    # Leaving the block drains the worker, within bounds.
                    with trio.move_on_after(config.drain_grace_seconds + 4 * SHUTDOWN_CALL_SECONDS):
                        await worker.drain()
                    if agent_stream is not None:
                        remove_log_sink(agent_stream.write)
                        # Unless an actor failed and took the shipper down with it.
                        if not nursery.cancel_scope.cancel_called:
                            with trio.move_on_after(SHUTDOWN_CALL_SECONDS):
                                await agent_stream.flush()
                nursery.cancel_scope.cancel(reason="the worker has stopped")
    finally:
        if tokens:
            structlog.contextvars.reset_contextvars(**tokens)
        if own_containment:
            await trio.to_thread.run_sync(containment.close)
