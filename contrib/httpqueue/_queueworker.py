"""The HTTP job queue worker: the one-job API behind a small job server.

``QueueWorker(config).run()`` runs until it is stopped (``worker.shutdown``;
``python -m agent httpqueue worker`` connects it to the signals)::

    heartbeat      POST /api/agent/heartbeat every heartbeat_interval: state,
                   slots, free slots, running jobs, capabilities
    reporter       every job report, in order, retried until delivered
    slot x N       idle: POST /api/agent/next-job every poll_interval (+-25 %
                   jitter; at once after a job ends); with a job: check its
                   requirements (reject it if unmet), report running, run it
                   (its output to <shared_dir>/jobs/<id>/logs/<id>.log as it
                   comes), poll GET /status/<id> every status_poll_interval,
                   stop it when a person canceled it or asked it to stop
                   (``canceled``; ``stop_requested`` or ``stopped``) and
                   else say ``running`` again (the OPEVA backend fails a job
                   whose status goes stale), report how it ended

How a job's end is reported:

=========================  ==============================================
the run                    the report
=========================  ==============================================
succeeded                  ``finished`` (exit code 0)
failed                     ``failed``, its error and exit code
timed out                  ``failed``, ``timeout: ...``
canceled/stopped           the same status the person gave it
stopped by the worker      ``failed``, ``error="force-stop"`` (SIGTERM, SIGINT)
=========================  ==============================================
"""

from __future__ import annotations

import random
import shlex
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import attrs
import httpx
import structlog
import trio

from actors import Backoff, Containment
from agent.jobs import (
    JobOutcome,
    JobRun,
    JobSpec,
    JobStatus,
    LogFile,
    OutputSink,
    Shutdown,
    StopLevel,
    probe_gpus,
)

from ._protocol import (
    STOP_STATUSES,
    Capabilities,
    JobOffer,
    ProtocolError,
    UnsafeJobId,
    extract_version,
)
from ._queueclient import (
    QueueClient,
    ServerError,
    ServerRefused,
    ServerUnavailable,
    retrying,
)
from ._queueconfig import WorkerConfig
from ._reporter import Reporter
from ._workload import ContainerWorkload, JobContext, Workload

log = structlog.get_logger("farmhand.httpqueue.worker")

#: The error of a job the worker itself stopped (SIGTERM/SIGINT), as the protocol asks.
FORCE_STOP = "force-stop"
#: Seconds a tool's version command may take.
TOOL_PROBE_SECONDS = 10.0
#: What the server's view of a job means for its worker: the OPEVA backend marks a
#: running job a person stopped ``stop_requested``; the worker stops it and says ``stopped``.
_SERVER_STOPS = {"stop_requested": "stopped"}
#: Bound on the last heartbeat when the worker stops.
FINAL_HEARTBEAT_SECONDS = 5.0


@attrs.frozen
class WorkerStatistics:
    worker_id: str
    state: str
    running_jobs: tuple[str, ...]
    jobs_done: int
    jobs_rejected: int
    polls: int
    poll_failures: int
    heartbeats: int
    heartbeat_failures: int
    reports_pending: int
    #: Why the worker takes no job (its container runtime cannot run containers), or None.
    unavailable: str | None = None


class _JobControl:
    """A running job's link to the server's view of it."""

    def __init__(self, job_id: str, grace: float) -> None:
        self.job_id = job_id
        self.grace = grace
        self.current: JobRun | None = None
        #: ``canceled`` or ``stopped`` once the server says so.
        self.ended_by: str | None = None
        self._reason: str | None = None

    def server_says(self, status: str) -> None:
        status = _SERVER_STOPS.get(status, status)
        if status in STOP_STATUSES and self.ended_by is None:
            self.ended_by = status
            log.info("httpqueue.job_ended_on_server", job_id=self.job_id, status=status)
            if self.current is not None:
                self.current.cancel(grace=self.grace, reason=f"the job was {status} on the server")

    def server_refused(self, error: str) -> None:
        """The server will not take this job's reports (it gave the job to another
        worker, or forgot it): running it on is of no use to anyone."""
        if self.ended_by is None:
            self.ended_by = "canceled"
            self._reason = f"the job is no longer this worker's: {error}"
            log.warning("httpqueue.job_disowned", job_id=self.job_id, error=error)
            if self.current is not None:
                self.current.cancel(grace=self.grace, reason=self._reason)

    @property
    def reason(self) -> str:
        return self._reason or f"the job was {self.ended_by} on the server"

    def attach(self, run: JobRun) -> None:
        self.current = run
        if self.ended_by is not None:
            run.cancel(grace=self.grace, reason=self.reason)


async def probe_capabilities(config: WorkerConfig) -> Capabilities:
    """Tool versions (each tool's command, bounded), GPUs (configured or nvidia-smi), labels."""
    tools: dict[str, str | None] = {}
    for name, command in config.tools.items():
        version: str | None = None
        with trio.move_on_after(TOOL_PROBE_SECONDS) as scope:
            try:
                result = await trio.run_process(
                    shlex.split(command), capture_stdout=True, capture_stderr=True, check=False
                )
            except OSError as exc:
                log.warning(
                    "httpqueue.tool_unavailable", tool=name, command=command, error=str(exc)
                )
            else:
                output = (result.stdout + result.stderr).decode(errors="replace")
                if result.returncode == 0:
                    version = extract_version(output)
                if version is None:
                    log.warning(
                        "httpqueue.tool_unavailable",
                        tool=name,
                        command=command,
                        status=result.returncode,
                        output=output.strip()[:200],
                    )
        if scope.cancelled_caught:
            log.warning("httpqueue.tool_unavailable", tool=name, command=command, error="timed out")
        tools[name] = version
    gpus = config.gpus if config.gpus is not None else (await probe_gpus()).count
    capabilities = Capabilities(tools, gpus, config.labels)
    log.info("httpqueue.capabilities", **capabilities.to_api())
    return capabilities


class QueueWorker:
    """One worker process's work against one job server (see the module docstring)."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        http: httpx.AsyncClient | None = None,
        containment: Containment | None = None,
        shutdown: Shutdown | None = None,
        capabilities: Capabilities | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.shutdown = shutdown or Shutdown(grace=config.grace)
        self.capabilities = capabilities
        self._http = http
        self._containment = containment
        self._rng = rng or random.Random()
        self._controls: dict[str, _JobControl] = {}
        self._workload: Workload | None = None
        self.reporter: Reporter | None = None
        self._jobs_done = 0
        self._jobs_rejected = 0
        self._polls = 0
        self._poll_failures = 0
        self._heartbeats = 0
        self._heartbeat_failures = 0
        self._started = trio.Event()
        self._changed = trio.Event()
        #: Why no job can run here now (the container runtime is not usable), or None.
        self.unavailable: str | None = None
        self._runtime_ok = trio.Event()

    # ---------------------------------------------------------------- state

    @property
    def state(self) -> str:
        level = self.shutdown.level
        if level >= StopLevel.GRACEFUL:
            return "stopping"
        if level is StopLevel.FINISH:
            return "finishing"
        if self.unavailable is not None:
            return "unavailable"
        return "busy" if len(self._controls) >= self.config.slots else "idle"

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            self.config.worker_id,
            self.state,
            tuple(self._controls),
            self._jobs_done,
            self._jobs_rejected,
            self._polls,
            self._poll_failures,
            self._heartbeats,
            self._heartbeat_failures,
            self.reporter.pending if self.reporter is not None else 0,
            self.unavailable,
        )

    async def wait_started(self) -> None:
        """Wait until the worker polls for work."""
        await self._started.wait()

    async def wait_until(self, predicate: Callable[[WorkerStatistics], bool]) -> WorkerStatistics:
        """Wait until ``predicate(statistics())`` holds (checked on every change)."""
        while not predicate(stats := self.statistics()):
            await self._changed.wait()
        return stats

    def _bump(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ---------------------------------------------------------------- running

    async def run(self) -> None:
        """Work until stopped; then wait (``report_timeout``) for the last reports."""
        config = self.config
        structlog.contextvars.bind_contextvars(worker_id=config.worker_id)
        if self.capabilities is None:
            self.capabilities = await probe_capabilities(config)
        self._workload = config.workload(gpus=self.capabilities.gpus)
        own_http = self._http is None
        http = self._http or httpx.AsyncClient(
            timeout=httpx.Timeout(config.request_timeout),
            limits=httpx.Limits(max_keepalive_connections=config.slots + 2),
            **config.auth.httpx_options(),
        )
        try:
            client = QueueClient(http, config.server)
            reporter = Reporter(
                client,
                config.worker_id,
                config.state_file,
                backoff=Backoff(max_delay=config.max_retry_delay, rng=self._rng),
                on_answer=self._server_says,
                on_refused=self._server_refused,
            )
            self.reporter = reporter
            await reporter.load()
            log.info(
                "httpqueue.worker_started",
                server=config.server,
                mode=self._workload.mode,
                slots=config.slots,
                shared_dir=str(config.shared_dir),
            )
            async with trio.open_nursery() as services:
                await services.start(reporter.run)
                await services.start(self._watch_runtime)
                services.start_soon(self._heartbeat_loop, client)
                async with trio.open_nursery() as slots:
                    for index in range(config.slots):
                        slots.start_soon(self._slot, client, reporter, index)
                    self._started.set()
                log.info("httpqueue.worker_stopping", reason=self.shutdown.reason)
                with trio.move_on_after(config.report_timeout):
                    await reporter.wait_delivered()
                if reporter.pending:
                    log.warning(
                        "httpqueue.reports_kept",
                        reports=reporter.pending,
                        state_file=str(config.state_file),
                        note="they are sent when the worker starts again",
                    )
                with trio.move_on_after(FINAL_HEARTBEAT_SECONDS):
                    try:
                        await self._beat(client, state="stopped")
                    except ServerError as exc:  # a courtesy; the server times us out anyway
                        log.info("httpqueue.last_heartbeat_failed", error=str(exc))
                services.cancel_scope.cancel(reason="the worker has stopped")
        finally:
            if own_http:
                with trio.CancelScope(shield=True):
                    await http.aclose()
        log.info("httpqueue.worker_stopped", jobs_done=self._jobs_done)

    async def _watch_runtime(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Check the container runtime before any job is taken; while it cannot run
        containers, take none (say why in the log and the heartbeat) and check again
        every poll interval, rather than take jobs only to fail them."""
        workload = self._workload
        if not isinstance(workload, ContainerWorkload):
            self._runtime_ok.set()
            task_status.started()
            return
        started = False
        while True:
            why = await workload.check_runtime()
            if why is None:
                if self.unavailable is not None:
                    log.info("httpqueue.runtime_available", runtime=workload.runtime)
                else:
                    log.info("httpqueue.runtime_checked", runtime=workload.runtime)
                self.unavailable = None
                self._runtime_ok.set()
                self._bump()
                if not started:
                    task_status.started()
                return
            if why != self.unavailable:
                log.error(
                    "httpqueue.runtime_unavailable",
                    error=why,
                    note="taking no job until the container runtime works",
                )
            self.unavailable = why
            self._bump()
            if not started:
                started = True
                task_status.started()
            await trio.sleep(self.config.poll_interval)

    def _server_says(self, job_id: str, status: str) -> None:
        control = self._controls.get(job_id)
        if control is not None:
            control.server_says(status)

    def _server_refused(self, job_id: str, error: ServerRefused) -> None:
        control = self._controls.get(job_id)
        if control is not None and error.status in (404, 409):
            control.server_refused(str(error))

    # ---------------------------------------------------------------- heartbeat

    async def _beat(self, client: QueueClient, *, state: str | None = None) -> None:
        assert self.capabilities is not None
        running = sorted(self._controls)
        state = state or self.state
        free = max(self.config.slots - len(running), 0)
        body: dict[str, Any] = {
            "worker_id": self.config.worker_id,
            "state": state,
            "slots": self.config.slots,
            "free_slots": 0 if state in ("stopped", "unavailable") else free,
            "running_jobs": running,
            "capabilities": self.capabilities.to_api(),
            "reports_pending": self.reporter.pending if self.reporter else 0,
        }
        if self.unavailable is not None:
            body["error"] = self.unavailable
        # The OPEVA backend keeps a heartbeat's free-form ``info`` (its GET /hosts shows it).
        body["info"] = {
            key: body[key]
            for key in ("state", "free_slots", "running_jobs", "error")
            if key in body
        }
        await client.heartbeat(body)
        self._heartbeats += 1
        self._bump()

    async def _heartbeat_loop(self, client: QueueClient) -> None:
        failing = False
        while True:
            try:
                await self._beat(client)
            except ServerError as exc:
                if not failing:
                    log.warning("httpqueue.heartbeat_failed", error=str(exc))
                failing = True
                self._heartbeat_failures += 1
                self._bump()
            else:
                if failing:
                    log.info("httpqueue.heartbeat_restored")
                failing = False
            await trio.sleep(self.config.heartbeat_interval)

    # ---------------------------------------------------------------- slots

    def _poll_delay(self) -> float:
        return self.config.poll_interval * self._rng.uniform(0.75, 1.25)

    async def _slot(self, client: QueueClient, reporter: Reporter, index: int) -> None:
        backoff = Backoff(max_delay=self.config.max_retry_delay, rng=self._rng)
        failing = False

        def on_retry(exc: ServerUnavailable, delay: float) -> None:
            nonlocal failing
            emit = log.debug if failing else log.warning
            emit("httpqueue.server_unreachable", error=str(exc), retry_in=round(delay, 3))
            failing = True
            self._poll_failures += 1
            self._bump()

        while self.shutdown.accepting:
            answer: dict[str, Any] | None = None
            with self.shutdown.while_accepting():
                await self._runtime_ok.wait()
                body = {
                    "worker_id": self.config.worker_id,
                    "request_id": uuid.uuid4().hex,
                    "free_slots": max(self.config.slots - len(self._controls), 1),
                }
                try:
                    self._polls += 1
                    self._bump()
                    answer = await retrying(
                        partial(client.next_job, body),
                        what="next-job",
                        backoff=backoff,
                        on_retry=on_retry,
                    )
                except ServerRefused as exc:
                    log.error("httpqueue.next_job_refused", error=str(exc))
                    await trio.sleep(backoff.next_delay())
                    continue
                if failing:
                    log.info("httpqueue.server_reachable")
                    failing = False
                if answer is None:
                    await trio.sleep(self._poll_delay())
            if answer is not None:
                ran = await self._take(answer, reporter, client)
                if ran and self.config.exit_after_job:
                    self.shutdown.finish("exit after job")

    async def _take(self, answer: dict[str, Any], reporter: Reporter, client: QueueClient) -> bool:
        """Run the job the server handed out, or say why not; whether it ran."""
        try:
            offer = JobOffer.from_api(answer)
        except UnsafeJobId as exc:
            # Rejecting would hand it to the next worker; it can run nowhere.
            log.error("httpqueue.job_id_unsafe", error=str(exc))
            await reporter.job_ended(exc.job_id, "failed", error=f"refused: {exc}")
            return False
        except ProtocolError as exc:
            job_id = answer.get("job_id")
            if isinstance(job_id, str) and job_id:
                await self._reject(reporter, job_id, f"malformed job: {exc}")
            else:
                log.error("httpqueue.job_unreadable", error=str(exc), job=str(answer)[:500])
            return False
        if not self.shutdown.accepting:
            # The stop came while the job was on its way: give it back untouched.
            log.info("httpqueue.job_released", job_id=offer.job_id, reason=self.shutdown.reason)
            await reporter.job_released(
                offer.job_id, f"the worker is stopping ({self.shutdown.reason})"
            )
            return False
        assert self.capabilities is not None
        try:
            unmet = self.capabilities.unmet(offer.requirements())
        except ProtocolError as exc:
            unmet = [f"its requirements cannot be read: {exc}"]
        if unmet:
            await self._reject(reporter, offer.job_id, "; ".join(unmet))
            return False
        await self._run_job(offer, reporter, client)
        return True

    async def _reject(self, reporter: Reporter, job_id: str, reason: str) -> None:
        self._jobs_rejected += 1
        self._bump()
        log.info("httpqueue.job_rejected", job_id=job_id, reason=reason)
        await reporter.job_rejected(job_id, reason)

    async def _run_job(self, offer: JobOffer, reporter: Reporter, client: QueueClient) -> None:
        config = self.config
        workload = self._workload
        assert workload is not None
        control = _JobControl(offer.job_id, config.grace)
        self._controls[offer.job_id] = control
        structlog.contextvars.bind_contextvars(job_id=offer.job_id)
        try:
            context = JobContext(offer, config.shared_dir, config.worker_id)
            opened: list[LogFile | OSError] = []

            async def open_log() -> None:
                try:
                    opened.append(await trio.to_thread.run_sync(LogFile, context.log_path))
                except OSError as exc:
                    opened.append(exc)

            # Two writes to disk, side by side: the state file (with the report) and the log.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(open_log)
                container = (
                    workload.container_name(context)
                    if isinstance(workload, ContainerWorkload)
                    else None
                )
                await reporter.job_started(offer.job_id, container_name=container)
            [log_file] = opened
            if isinstance(log_file, OSError):
                exc = log_file
                error = f"cannot open the job's log {context.log_path}: {exc.strerror or exc}"
                log.error("httpqueue.job_log_failed", error=error)
                await reporter.job_ended(offer.job_id, "failed", error=error)
                return
            with log_file:
                context = attrs.evolve(context, log=log_file)
                log.info(
                    "httpqueue.job_started", job_name=offer.job_name, log=str(context.log_path)
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._poll_status, client, control)
                    outcome = await self._execute(workload, context, control, log_file)
                    nursery.cancel_scope.cancel(reason="the job has ended")
            await self._report_end(reporter, offer, control, outcome)
        finally:
            del self._controls[offer.job_id]
            structlog.contextvars.unbind_contextvars("job_id")
            self._jobs_done += 1
            self._bump()

    async def _execute(
        self, workload: Workload, context: JobContext, control: _JobControl, log_file: LogFile
    ) -> JobOutcome:
        config = self.config
        offer = context.offer
        limits = [limit for limit in (offer.timeout, config.max_runtime) if limit is not None]

        async def execute(spec: JobSpec, sinks: Sequence[OutputSink]) -> JobOutcome:
            run = JobRun(
                spec,
                sinks=[log_file, *sinks],
                max_runtime=min(limits) if limits else None,
                grace=config.grace,
                session_id=f"{offer.job_id}-{uuid.uuid4().hex[:6]}",
                session_root=config.session_root,
                containment=self._containment,
            )
            control.attach(run)
            with self.shutdown.guard(run):
                return await run.run()

        return await workload.run(context, execute)

    async def _poll_status(self, client: QueueClient, control: _JobControl) -> None:
        while control.ended_by is None:
            await trio.sleep(self.config.status_poll_interval)
            try:
                job = await client.status_of(control.job_id)
            except ServerUnavailable as exc:
                log.debug("httpqueue.status_poll_failed", job_id=control.job_id, error=str(exc))
                continue
            except ServerRefused as exc:
                if exc.status == 404:
                    log.warning("httpqueue.job_gone", job_id=control.job_id)
                    control.server_says("canceled")
                continue
            owner = job.get("worker_id")
            if isinstance(owner, str) and owner != self.config.worker_id:
                control.server_refused(f"the job now belongs to worker {owner}")
                continue
            status = job.get("status")
            if isinstance(status, str):
                control.server_says(status)
            if control.ended_by is None:
                await self._still_running(client, control.job_id)

    async def _still_running(self, client: QueueClient, job_id: str) -> None:
        """Say ``running`` again, straight (not through the outbox: the next poll says it
        anew). The OPEVA backend fails a running job whose status has not been refreshed
        within its JOB_STATUS_TTL."""
        body = {
            "worker_id": self.config.worker_id,
            "job_id": job_id,
            "status": "running",
            "report_id": uuid.uuid4().hex,
        }
        try:
            await client.job_status(body)
        except ServerError as exc:
            log.debug("httpqueue.running_refresh_failed", job_id=job_id, error=str(exc))

    async def _report_end(
        self, reporter: Reporter, offer: JobOffer, control: _JobControl, outcome: JobOutcome
    ) -> None:
        status, error, detail = _final_report(outcome, control.ended_by)
        log.info(
            "httpqueue.job_ended",
            outcome=outcome.status.value,
            reported=status,
            error=error,
            exit_code=outcome.exit_code,
            duration=round(outcome.duration, 3),
        )
        await reporter.job_ended(
            offer.job_id, status, error=error, exit_code=outcome.exit_code, detail=detail
        )


def _final_report(outcome: JobOutcome, ended_by: str | None) -> tuple[str, str | None, str | None]:
    """``(status, error, detail)`` to report for ``outcome`` (see the module docstring)."""
    match outcome.status:
        case JobStatus.SUCCEEDED:
            return "finished", None, None
        case JobStatus.FAILED:
            return "failed", outcome.error or "failed", None
        case JobStatus.TIMEOUT:
            return "failed", f"timeout: {outcome.error}", None
        case JobStatus.CANCELED:
            return ended_by or "canceled", None, outcome.error
        case JobStatus.INTERRUPTED:
            return "failed", FORCE_STOP, f"the worker stopped the job ({outcome.error})"
