"""Run one job record: load, claim, run, write the outcome.

The steps, each of which ends the process with a status that says how far it
got (see ``contrib._common``):

1. read the record (consistently); it must be ``INITIALIZING``;
2. work out what it means in the run mode; a record that cannot be run is
   moved to ``FAILED`` with the reason, and nothing runs;
3. claim it: ``INITIALIZING`` -> ``RUNNING`` with ``started_at``, a fresh
   ``attempt_id`` and the task identity, one conditional write, so no two
   tasks ever run one record;
4. run the work through the session runner (``JobRun``), its output to the
   spool file and CloudWatch, under the maximum runtime. A heartbeat stamps
   ``heartbeat_at`` every ``--heartbeat-interval`` and cancels the job when
   the record asks for it (``cancel_requested``) or is no longer ours;
5. write ``SUCCEEDED`` or ``FAILED`` with ``completed_at``, the exit code, the
   error message and the outcome. That write is shielded and retried for up to
   ``--retry-seconds``; if it still has not landed the log says so
   (``oneshot.status_not_written``, with the whole outcome) and the exit
   status is 4.

Signals (``Shutdown``): before the claim, a SIGTERM ends the process and the
record stays ``INITIALIZING`` for another task; after it, the job is
interrupted (SIGTERM to its processes, SIGKILL after ``--grace``) and the
record ends ``FAILED`` with outcome ``interrupted``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import attrs
import structlog
import trio

from actors import Containment, Heartbeat, path_under
from agent import FarmhandError
from agent.jobs import JobOutcome, JobRun, JobStatus, Shutdown

from .._aws import Aws, iso, open_aws, utc_now
from .._common import (
    Exit,
    exit_status,
    failure_status,
    interrupted_status,
    log_stream_name,
    open_job_log,
)
from ._identity import Identity, task_identity
from ._record import FAILED, INITIALIZING, SUCCEEDED, RecordError, Work, resolve_work
from ._table import JobTable

log = structlog.get_logger("farmhand.oneshot")


@attrs.frozen
class OneshotSettings:
    table: str
    job_id: str
    work_dir: Path
    key: str = "job_id"
    #: ``None``: the record's ``run_mode``, else RUN_SCRIPT.
    run_mode: str | None = None
    collection_command: str | None = None
    #: RUN_ACTION's action runner (``None``: RUN_ACTION is not supported).
    action_command: str | None = None
    #: Variables the deployment requires (plus-worker's); a missing one fails the record.
    required: tuple[str, ...] = ()
    region: str | None = None
    max_runtime: float | None = 6 * 3600.0
    grace: float = 20.0
    heartbeat_interval: float = 30.0
    retry_seconds: float = 600.0
    log_group: str = "/farmhand/oneshot"
    cloudwatch: bool = True
    environ: Mapping[str, str] = attrs.field(factory=dict)


async def run_oneshot(settings: OneshotSettings) -> int:
    """Run the record ``settings.job_id`` of ``settings.table``; the exit status."""
    attempt_id = uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(job_id=settings.job_id, attempt_id=attempt_id)
    shutdown = Shutdown(grace=settings.grace)
    # The watchdog kills what the job started even if this process is SIGKILLed.
    containment = Containment()
    containment.start_watchdog()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(shutdown.watch_signals)
            status = await _Oneshot(settings, attempt_id, shutdown, containment).run()
            nursery.cancel_scope.cancel(reason="the record is done")
    finally:
        containment.close()
    return status


class _Oneshot:
    def __init__(
        self,
        settings: OneshotSettings,
        attempt_id: str,
        shutdown: Shutdown,
        containment: Containment,
    ) -> None:
        self.settings = settings
        self.attempt_id = attempt_id
        self.shutdown = shutdown
        self.containment = containment

    async def run(self) -> int:
        settings = self.settings
        try:
            async with open_aws(
                ["dynamodb"], region=settings.region, retry_seconds=settings.retry_seconds
            ) as aws:
                table = JobTable(aws.client("dynamodb"), settings.table, key=settings.key)
                return await self._run(aws, table)
        except FarmhandError as exc:
            # A setup failure (no region, no credentials) or a call that gave up.
            status = failure_status(exc)
            log.error("oneshot.failed", error=str(exc), exit_status=status)
            return status

    async def _run(self, aws: Aws, table: JobTable) -> int:
        settings = self.settings
        job_id = settings.job_id
        with self.shutdown.while_accepting():
            identity = await task_identity(settings.environ)
            # A read: safe to abandon when a stop comes.
            record = await table.load(job_id)
        if not self.shutdown.accepting:
            log.warning("oneshot.stopped_before_claim", reason=self.shutdown.reason)
            return interrupted_status(self.shutdown)
        if record is None:
            log.error("oneshot.no_record", table=table.name, key=table.key)
            return Exit.NOT_RUNNABLE
        if record.status != INITIALIZING:
            log.error(
                "oneshot.not_initializing",
                status=record.status,
                claimed_by=record.claimed_by,
                note=f"only a record in {INITIALIZING} is run",
            )
            return Exit.NOT_RUNNABLE
        try:
            work = resolve_work(
                record,
                mode=settings.run_mode,
                environ=settings.environ,
                table=settings.table,
                max_runtime=settings.max_runtime,
                collection_command=settings.collection_command,
                action_command=settings.action_command,
                required=settings.required,
                template_dir=settings.work_dir,
            )
        except RecordError as exc:
            return await self._reject(table, str(exc))

        claim = await table.claim(
            job_id,
            attempt_id=self.attempt_id,
            claimed_by=identity.claimed_by,
            task=identity.details,
            now=iso(utc_now()),
        )
        if not claim.claimed:
            current = claim.record
            log.error(
                "oneshot.claim_lost",
                status=current.status if current else None,
                claimed_by=current.claimed_by if current else None,
                note="another task claimed the record first" if current else "it was deleted",
            )
            return Exit.NOT_RUNNABLE
        return await self._run_claimed(aws, table, work, identity)

    async def _reject(self, table: JobTable, error: str) -> int:
        log.error("oneshot.invalid_record", error=error)
        # The reason must reach the record; bounded by the retry window.
        with trio.CancelScope(shield=True):
            try:
                written = await table.reject(self.settings.job_id, error, now=iso(utc_now()))
            except FarmhandError as exc:
                log.error("oneshot.status_not_written", status=FAILED, error=error, why=str(exc))
                return Exit.AWS_UNAVAILABLE
        if not written:
            log.error(
                "oneshot.status_not_written",
                status=FAILED,
                error=error,
                why="the record left INITIALIZING meanwhile",
            )
            return Exit.NOT_RUNNABLE
        return Exit.CONFIGURATION

    async def _run_claimed(self, aws: Aws, table: JobTable, work: Work, identity: Identity) -> int:
        settings = self.settings
        group = settings.log_group if settings.cloudwatch else None
        stream = log_stream_name(settings.job_id, self.attempt_id)
        log.info(
            "oneshot.running",
            mode=work.mode,
            job=work.spec.name,
            claimed_by=identity.claimed_by,
            max_runtime=work.max_runtime,
            log_group=group,
            log_stream=stream if group else None,
        )
        spool = path_under(settings.work_dir, "logs", f"{stream.replace('/', '-')}.log")
        started_at = datetime.now(UTC)
        started = trio.current_time()
        written: bool | None = None
        try:
            async with open_job_log(
                aws if settings.cloudwatch else None,
                group=settings.log_group,
                stream=stream,
                spool=spool,
            ) as sink:
                run = JobRun(
                    work.spec,
                    sinks=[sink],
                    max_runtime=work.max_runtime,
                    grace=settings.grace,
                    session_id=f"oneshot-{self.attempt_id[:16]}",
                    session_root=settings.work_dir / "sessions",
                    containment=self.containment,
                )
                heartbeat = Heartbeat(partial(self._beat, table, run), settings.heartbeat_interval)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(heartbeat.run)
                    with self.shutdown.guard(run):
                        outcome = await run.run()
                    nursery.cancel_scope.cancel(reason="the job has ended")
                written = await self._finish(table, outcome, group, stream)
        except Exception as exc:
            if written is not None:
                raise  # the status is written; only closing the log failed
            # Not the job: farmhand could not run it (e.g. the log could not be opened,
            # or a bug). The record must not stay RUNNING.
            log.exception("oneshot.internal_error")
            outcome = JobOutcome(
                status=JobStatus.FAILED,
                exit_code=None,
                error=f"farmhand could not run the job: {exc!r}"[:1000],
                started_at=started_at,
                completed_at=datetime.now(UTC),
                duration=trio.current_time() - started,
            )
            written = await self._finish(table, outcome, group, stream)
        if not written:
            return Exit.AWS_UNAVAILABLE
        return exit_status(outcome, self.shutdown)

    async def _beat(self, table: JobTable, run: JobRun) -> None:
        # Cancelling a heartbeat mid-call is harmless: it only stamps heartbeat_at.
        try:
            beat = await table.heartbeat(self.settings.job_id, self.attempt_id, now=iso(utc_now()))
        except FarmhandError as exc:
            log.warning("oneshot.heartbeat_failed", error=str(exc))
            return
        if beat.cancel_requested:
            log.info("oneshot.cancel_requested")
            run.cancel(reason="cancel requested on the record")
        elif not beat.ours:
            current = beat.record
            status = current.status if current else "deleted"
            log.error("oneshot.record_taken", status=status)
            run.cancel(reason=f"the record is no longer this task's (status {status})")

    async def _finish(
        self, table: JobTable, outcome: JobOutcome, group: str | None, stream: str
    ) -> bool:
        status = SUCCEEDED if outcome.succeeded else FAILED
        completed_at = iso(outcome.completed_at)
        fields = {
            "completed_at": completed_at,
            "updated_at": completed_at,
            "outcome": outcome.status.value,
            "exit_code": outcome.exit_code,
            "error_message": outcome.error,
            "duration_seconds": round(outcome.duration, 3),
            "log_group": group,
            "log_stream": stream if group else None,
        }
        summary = {
            "status": status,
            "outcome": outcome.status.value,
            "exit_code": outcome.exit_code,
            "error": outcome.error,
        }
        # The final status must land: shielded, and bounded by the retry window.
        with trio.CancelScope(shield=True):
            try:
                written = await table.finish(
                    self.settings.job_id, self.attempt_id, status=status, fields=fields
                )
            except FarmhandError as exc:
                log.error("oneshot.status_not_written", **summary, why=str(exc))
                return False
        if not written:
            log.error(
                "oneshot.status_not_written", **summary, why="the record is no longer this task's"
            )
            return False
        log.info("oneshot.finished", **summary, duration=round(outcome.duration, 3))
        return True
