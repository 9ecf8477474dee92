"""The worker's outbox: every job report reaches the server, once, in order.

Status reports (``running``, ``finished``, ``failed``, ``canceled``,
``stopped``) and rejections go into one queue and are sent one at a time,
oldest first. A report leaves the queue only when the server has answered it:
while the server is unreachable the sender retries with backoff (see
``_client``), and everything behind it waits, so the server sees each job's
reports in the order they were made. Each report carries a ``report_id``; the
server applies a repeated one once, so a retry after a lost answer is harmless.
A report the server refuses outright (a 4xx: the job is unknown, or belongs
to another worker) is logged and dropped, since sending it again cannot help.

The queue, and the jobs running, are kept in a state file, written
atomically on every change: a worker that is stopped or killed while the
server is away sends what it still owes when it starts again, and reports the
jobs it was running then as ``failed`` (``worker restarted``): its processes
died with it.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from actors import Backoff

from ._queueclient import QueueClient, ServerRefused, ServerUnavailable, retrying

log = structlog.get_logger("farmhand.httpqueue.reporter")

_FORMAT = "farmhand-httpqueue-worker-1"
_STATE_LIMITER = trio.CapacityLimiter(1)
#: Error reported for a job that was running when the worker's last process ended.
RESTARTED = "worker restarted"


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen
class ReporterStatistics:
    pending: int
    delivered: int
    refused: int
    retries: int
    #: The error that keeps the oldest report from going out, while there is one.
    last_error: str | None


class Reporter:
    """Sends reports in order until delivered (see the module docstring).

    Start ``run`` in a nursery; ``load()`` it first. ``on_answer(job_id, status)``
    hears the server's status of the job after each delivered status report
    (a person may have canceled it meanwhile); ``on_refused(job_id, error)``
    hears of each refused report (the job may now belong to another worker).
    """

    def __init__(
        self,
        client: QueueClient,
        worker_id: str,
        state_file: Path,
        *,
        backoff: Backoff | None = None,
        on_answer: Callable[[str, str], None] | None = None,
        on_refused: Callable[[str, ServerRefused], None] | None = None,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.state_file = state_file
        self._backoff = backoff or Backoff()
        self._on_answer = on_answer
        self._on_refused = on_refused
        self._outbox: deque[dict[str, Any]] = deque()
        self._running: set[str] = set()
        self._changed = trio.Event()
        self._save_lock = trio.Lock()
        #: Changes made to the outbox and running set, and how many of them are on disk.
        self._changes = 0
        self._saved = 0
        self._delivered = 0
        self._refused = 0
        self._retries = 0
        self._last_error: str | None = None

    # ---------------------------------------------------------------- state file

    async def load(self) -> list[str]:
        """Read the state file; report jobs left running as failed. Their ids."""
        state = await trio.to_thread.run_sync(self._read)
        self._outbox.extend(state.get("outbox", []))
        orphans = [job_id for job_id in state.get("running", []) if isinstance(job_id, str)]
        for job_id in orphans:
            log.warning("httpqueue.job_orphaned", job_id=job_id, note=RESTARTED)
            self._outbox.append(
                self._status_report(
                    job_id,
                    "failed",
                    error=RESTARTED,
                    detail="the worker process ended while it ran the job; its processes went with it",
                )
            )
        if self._outbox:
            log.info("httpqueue.reports_pending", reports=len(self._outbox))
        await self._save()
        return orphans

    def _read(self) -> dict[str, Any]:
        try:
            text = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            state = json.loads(text)
            if not isinstance(state, dict) or state.get("format") != _FORMAT:
                raise ValueError(f"not a {_FORMAT} file")
            if not isinstance(state.get("outbox"), list) or not isinstance(
                state.get("running"), list
            ):
                raise ValueError("no outbox and running lists")
        except ValueError as exc:
            # Keep it for a person to look at, and start afresh rather than not at all.
            kept = self.state_file.with_name(self.state_file.name + ".unreadable")
            os.replace(self.state_file, kept)
            log.error(
                "httpqueue.state_unreadable",
                path=str(self.state_file),
                kept=str(kept),
                error=str(exc),
            )
            return {}
        return state

    async def _save(self) -> None:
        self._changes += 1
        async with self._save_lock:
            generation = self._changes
            document = {
                "format": _FORMAT,
                "worker_id": self.worker_id,
                "outbox": list(self._outbox),
                "running": sorted(self._running),
            }
            # Not abandoned: the state must be on disk before anyone relies on it.
            await trio.to_thread.run_sync(self._write, document, limiter=_STATE_LIMITER)
            self._saved = max(self._saved, generation)
        self._wake()

    def _write(self, document: dict[str, Any]) -> None:
        path = self.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(document, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    # ---------------------------------------------------------------- reports

    def _status_report(self, job_id: str, status: str, **fields: Any) -> dict[str, Any]:
        body = {
            "worker_id": self.worker_id,
            "job_id": job_id,
            "status": status,
            "report_id": uuid.uuid4().hex,
            "time": _utc_now(),
            **{name: value for name, value in fields.items() if value is not None},
        }
        return {"kind": "status", "body": body}

    async def _enqueue(self, report: dict[str, Any]) -> None:
        self._outbox.append(report)
        await self._save()
        self._wake()

    async def job_started(self, job_id: str, *, container_name: str | None = None) -> None:
        """The job is running here: report ``running`` (with its container's name, which the
        OPEVA backend keeps), and remember it until it ends."""
        self._running.add(job_id)
        await self._enqueue(self._status_report(job_id, "running", container_name=container_name))

    async def job_ended(
        self,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        exit_code: int | None = None,
        detail: str | None = None,
    ) -> None:
        """The job's final report (the job is no longer running here)."""
        self._running.discard(job_id)
        await self._enqueue(
            self._status_report(job_id, status, error=error, exit_code=exit_code, detail=detail)
        )

    async def job_rejected(self, job_id: str, reason: str) -> None:
        """This worker cannot run the job: the server gives it to others only."""
        await self._enqueue(self._reject_report(job_id, reason, release=False))

    async def job_released(self, job_id: str, reason: str) -> None:
        """Give an assigned job back unstarted; this worker may get it again later."""
        await self._enqueue(self._reject_report(job_id, reason, release=True))

    def _reject_report(self, job_id: str, reason: str, *, release: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "worker_id": self.worker_id,
            "job_id": job_id,
            "reason": reason,
            "report_id": uuid.uuid4().hex,
            "time": _utc_now(),
        }
        if release:
            body["release"] = True
        return {"kind": "reject", "body": body}

    # ---------------------------------------------------------------- sending

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def pending(self) -> int:
        return len(self._outbox)

    async def wait_delivered(self) -> None:
        """Wait until every report made so far is delivered (or refused), and the state
        file says so."""
        while self._outbox or self._saved < self._changes:
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            while not self._outbox:
                await self._changed.wait()
            report = self._outbox[0]
            answer = await self._deliver(report)
            self._outbox.popleft()
            if self._outbox:
                # The file still lists the delivered report; that costs a harmless
                # resend after a crash (the server applies it once), not a write now.
                self._changes += 1
            else:
                await self._save()
            self._wake()
            if answer is not None and report["kind"] == "status" and self._on_answer is not None:
                status = answer.get("status")
                if isinstance(status, str):
                    self._on_answer(report["body"]["job_id"], status)

    async def _deliver(self, report: dict[str, Any]) -> dict[str, Any] | None:
        body = report["body"]
        send = self.client.job_status if report["kind"] == "status" else self.client.job_reject
        what = f"{report['kind']} {body.get('status') or body.get('reason')} of {body['job_id']}"
        failures = 0

        def on_retry(exc: ServerUnavailable, delay: float) -> None:
            nonlocal failures
            failures += 1
            self._retries += 1
            self._last_error = str(exc)
            # One warning when the server goes away, not one per attempt.
            emit = log.warning if failures == 1 else log.debug
            emit(
                "httpqueue.report_waiting",
                report=what,
                error=str(exc),
                attempt=failures,
                retry_in=round(delay, 3),
                pending=len(self._outbox),
            )

        try:
            answer = await retrying(
                lambda: send(body), what=what, backoff=self._backoff, on_retry=on_retry
            )
        except ServerRefused as exc:
            self._refused += 1
            self._last_error = None
            log.error("httpqueue.report_refused", report=what, error=str(exc), body=body)
            if self._on_refused is not None:
                self._on_refused(body["job_id"], exc)
            return None
        self._last_error = None
        self._delivered += 1
        if failures:
            log.info("httpqueue.report_delivered", report=what, after_attempts=failures + 1)
        return answer

    def statistics(self) -> ReporterStatistics:
        return ReporterStatistics(
            len(self._outbox), self._delivered, self._refused, self._retries, self._last_error
        )
