"""The reference server's job queue: what each request does to the jobs.

Plain synchronous state, no I/O: the HTTP app calls a method, persists the
jobs it changed, then answers. Times: ``now`` (Trio's clock) for leases and
timeouts, UTC wall-clock strings in the records.

A job's life::

    queued --next-job--> assigned --"running"--> running --> finished | failed
       ^                    |   \\                    \\
       +--- reject, lease ---+    +---- cancel/stop by a person ----> canceled | stopped

- ``next-job`` gives a worker the best queued job (highest priority, then
  oldest) that it has not rejected as it is now, and marks it assigned to that
  worker. A
  retry of the same request (same ``request_id``) gets the same job.
- A worker's reports are applied once each (``report_id``), in the order it
  sends them. The first final status wins, with two exceptions: a person's
  cancel or stop is confirmed by the worker's own final report (which adds its
  end time, exit code and error), and a job the server gave up on as ``worker
  lost`` takes whatever its worker says when it comes back.
- A rejected job goes back to the queue, for the other workers, and for the
  worker that rejected it once that worker's capabilities (its tools, GPUs and
  labels, from its heartbeats) are no longer what they were when it rejected it:
  restarted with the missing tool installed, it gets the job again. A released
  one (``"release": true``: the worker is stopping) goes back as it was.
- An assigned job that is not reported running within ``assignment_timeout``
  goes back to the queue; a running job whose worker has not been heard from
  for ``worker_timeout`` fails as ``worker lost``. After a server restart every
  worker counts as heard from at the start.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from ._protocol import (
    AGENT_STATUSES,
    STOP_STATUSES,
    TERMINAL_STATUSES,
    ProtocolError,
    job_submission,
)

Job = dict[str, Any]

#: Report ids remembered per job, to recognise a retried report.
_REPORTS_KEPT = 64


class QueueError(Exception):
    """A request the queue refuses: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen
class QueueConfig:
    #: Seconds an assigned job may wait for its "running" report before it is requeued.
    assignment_timeout: float = 60.0
    #: Seconds of silence after which a worker's running jobs fail as "worker lost".
    worker_timeout: float = 120.0


@attrs.define
class WorkerRecord:
    worker_id: str
    last_seen: str
    last_seen_at: float
    state: str = "unknown"
    slots: int | None = None
    free_slots: int | None = None
    running_jobs: list[str] = attrs.field(factory=list)
    capabilities: dict[str, Any] = attrs.field(factory=dict)
    #: The free-form ``info`` an OPEVA worker's heartbeat carries.
    info: dict[str, Any] = attrs.field(factory=dict)

    def to_api(self, now: float) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "state": self.state,
            "slots": self.slots,
            "free_slots": self.free_slots,
            "running_jobs": list(self.running_jobs),
            "capabilities": self.capabilities,
            "info": self.info,
            "last_seen": self.last_seen,
            "seconds_since_seen": round(now - self.last_seen_at, 3),
        }


def public(job: Job) -> Job:
    """A job as the API shows it (without the bookkeeping)."""
    return {key: value for key, value in job.items() if not key.startswith("_")}


class JobQueue:
    def __init__(self, jobs: Iterable[Job] = (), config: QueueConfig | None = None) -> None:
        self.config = config or QueueConfig()
        self.jobs: dict[str, Job] = {job["job_id"]: job for job in jobs}
        self.workers: dict[str, WorkerRecord] = {}
        self._started = trio.current_time()
        self._sequence = itertools.count(
            max((job.get("sequence", 0) for job in self.jobs.values()), default=0) + 1
        )
        #: job id -> when it was assigned (Trio time); requeued after the timeout.
        self._assigned_at = {
            job_id: self._started
            for job_id, job in self.jobs.items()
            if job["status"] == "assigned"
        }

    # ------------------------------------------------------------ people

    def submit(self, payload: Any) -> Job:
        try:
            fields = job_submission(payload)
        except ProtocolError as exc:
            raise QueueError(400, str(exc)) from exc
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        job: Job = {
            "job_id": job_id,
            **fields,
            "job_name": fields["job_name"] or job_id,
            "status": "queued",
            "worker_id": None,
            "error": None,
            "detail": None,
            "exit_code": None,
            "created_at": _utc_now(),
            "started_at": None,
            "ended_at": None,
            "rejections": [],
            "sequence": next(self._sequence),
            "_reports": [],
            "_request_id": None,
        }
        self.jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise QueueError(404, f"no job {job_id}")
        return job

    def list_jobs(self, status: str | None = None) -> list[Job]:
        jobs = sorted(self.jobs.values(), key=lambda job: job["sequence"])
        return [job for job in jobs if status is None or job["status"] == status]

    def end_by_person(self, job_id: str, status: str) -> Job:
        """Cancel or stop a job. Queued: it ends now; assigned or running: its worker
        sees the status, stops the job and confirms."""
        assert status in STOP_STATUSES
        job = self.get(job_id)
        if job["status"] in TERMINAL_STATUSES and not job.get("_lost"):
            raise QueueError(409, f"job {job_id} has already ended ({job['status']})")
        was = job["status"]
        job["status"] = status
        job["_lost"] = False
        self._assigned_at.pop(job_id, None)
        if was == "queued" or job.get("worker_id") is None:
            job["ended_at"] = _utc_now()
        return job

    # ------------------------------------------------------------ workers

    def _seen(self, worker_id: str, now: float) -> WorkerRecord:
        record = self.workers.get(worker_id)
        if record is None:
            record = self.workers[worker_id] = WorkerRecord(worker_id, _utc_now(), now)
        record.last_seen, record.last_seen_at = _utc_now(), now
        return record

    def heartbeat(self, payload: Any, now: float) -> WorkerRecord:
        worker_id = _worker_id(payload)
        record = self._seen(worker_id, now)
        state = payload.get("state")
        record.state = state if isinstance(state, str) else "unknown"
        for name in ("slots", "free_slots"):
            value = payload.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise QueueError(400, f"{name} must be a whole number")
            setattr(record, name, value)
        running = payload.get("running_jobs") or []
        if not isinstance(running, list) or not all(isinstance(j, str) for j in running):
            raise QueueError(400, "running_jobs must be a list of job ids")
        record.running_jobs = list(running)
        capabilities = payload.get("capabilities") or {}
        if not isinstance(capabilities, dict):
            raise QueueError(400, "capabilities must be an object")
        record.capabilities = capabilities
        info = payload.get("info") or {}
        if not isinstance(info, dict):
            raise QueueError(400, "info must be an object")
        record.info = info
        return record

    def next_job(self, payload: Any, now: float) -> Job | None:
        worker_id = _worker_id(payload)
        request_id = payload.get("request_id")
        if request_id is not None and not isinstance(request_id, str):
            raise QueueError(400, "request_id must be a string")
        self._seen(worker_id, now)
        if request_id is not None:
            for job in self.jobs.values():
                if (
                    job["status"] == "assigned"
                    and job["worker_id"] == worker_id
                    and job.get("_request_id") == request_id
                ):
                    return job  # a retry: the answer it did not get
        capabilities = self.workers[worker_id].capabilities
        candidates = [
            job
            for job in self.jobs.values()
            if job["status"] == "queued" and not _still_rejects(job, worker_id, capabilities)
        ]
        if not candidates:
            return None
        job = min(candidates, key=lambda job: (-job["priority"], job["sequence"]))
        job["status"] = "assigned"
        job["worker_id"] = worker_id
        job["_request_id"] = request_id
        job["assigned_at"] = _utc_now()
        self._assigned_at[job["job_id"]] = now
        return job

    def report(self, payload: Any, now: float) -> tuple[Job, bool]:
        """Apply a worker's job-status report; the job and whether it changed."""
        worker_id = _worker_id(payload)
        job, duplicate = self._reported(payload, worker_id, now)
        if duplicate:
            return job, False
        status = payload.get("status")
        if status not in AGENT_STATUSES:
            raise QueueError(400, f"status must be one of {', '.join(sorted(AGENT_STATUSES))}")
        error, exit_code, detail = (
            payload.get("error"),
            payload.get("exit_code"),
            payload.get("detail"),
        )
        if error is not None and not isinstance(error, str):
            raise QueueError(400, "error must be a string")
        if exit_code is not None and (
            not isinstance(exit_code, int) or isinstance(exit_code, bool)
        ):
            raise QueueError(400, "exit_code must be a whole number")
        if status == "failed" and not error:
            # The OPEVA worker reports a failed container by its exit code alone.
            error = f"exit code {exit_code}" if exit_code is not None else "failed"
        self._remember(job, payload)
        # When its worker last spoke of it (the OPEVA backend's name for it).
        job["status_updated_at"] = _utc_now()
        ended = job["status"] in TERMINAL_STATUSES and not job.get("_lost")
        if ended:
            if (
                status in TERMINAL_STATUSES
                and job["status"] in STOP_STATUSES
                and not job["ended_at"]
            ):
                # The worker confirms a person's cancel or stop.
                self._finish(job, job["status"], error, exit_code, detail)
                return job, True
            return job, False
        if status == "running":
            job["status"] = "running"
            job["started_at"] = job["started_at"] or _utc_now()
            for name in ("container_id", "container_name"):  # the OPEVA worker's metadata
                if isinstance(payload.get(name), str):
                    job[name] = payload[name]
        else:
            self._finish(job, status, error, exit_code, detail)
        job["worker_id"] = worker_id
        job["_lost"] = False
        self._assigned_at.pop(job["job_id"], None)
        return job, True

    def reject(self, payload: Any, now: float) -> tuple[Job, bool]:
        worker_id = _worker_id(payload)
        job, duplicate = self._reported(payload, worker_id, now)
        if duplicate:
            return job, False
        reason = payload.get("reason")
        if not isinstance(reason, str) or not reason:
            raise QueueError(400, "a rejection needs a reason")
        release = payload.get("release", False)
        if not isinstance(release, bool):
            raise QueueError(400, "release must be true or false")
        self._remember(job, payload)
        if release:
            job["detail"] = f"given back by worker {worker_id}: {reason}"
        else:
            job["rejections"].append(
                {
                    "worker_id": worker_id,
                    "reason": reason,
                    "time": _utc_now(),
                    # What the worker had when it said no: it may qualify once that changes.
                    "capabilities": self.workers[worker_id].capabilities,
                }
            )
        if job["status"] != "assigned":
            return job, True  # canceled meanwhile, say: nothing to give back
        job["status"] = "queued"
        job["worker_id"] = None
        job["_request_id"] = None
        self._assigned_at.pop(job["job_id"], None)
        return job, True

    def _reported(self, payload: Any, worker_id: str, now: float) -> tuple[Job, bool]:
        job_id = payload.get("job_id")
        if not isinstance(job_id, str):
            raise QueueError(400, "job_id must be a string")
        report_id = payload.get("report_id")
        if report_id is not None and (not isinstance(report_id, str) or not report_id):
            raise QueueError(400, "report_id must be a non-empty string")
        self._seen(worker_id, now)
        job = self.get(job_id)
        if report_id is not None and report_id in job["_reports"]:
            return job, True
        owner = job["worker_id"]
        if owner is not None and owner != worker_id:
            raise QueueError(409, f"job {job_id} is assigned to worker {owner}, not {worker_id}")
        return job, False

    @staticmethod
    def _remember(job: Job, payload: Any) -> None:
        report_id = payload.get("report_id")
        if report_id is None:  # a worker without report ids (OPEVA's): each report counts
            return
        job["_reports"] = [*job["_reports"][-(_REPORTS_KEPT - 1) :], report_id]

    @staticmethod
    def _finish(
        job: Job, status: str, error: str | None, exit_code: int | None, detail: Any
    ) -> None:
        job["status"] = status
        job["ended_at"] = _utc_now()
        job["error"] = error
        job["exit_code"] = exit_code
        job["detail"] = detail if isinstance(detail, str) else None

    # ------------------------------------------------------------ time

    def sweep(self, now: float) -> list[Job]:
        """Requeue stale assignments and fail the jobs of lost workers; the changed jobs."""
        changed: list[Job] = []
        config = self.config
        for job_id, assigned in list(self._assigned_at.items()):
            job = self.jobs[job_id]
            if job["status"] != "assigned":
                del self._assigned_at[job_id]
            elif now - assigned >= config.assignment_timeout:
                del self._assigned_at[job_id]
                job["detail"] = (
                    f"worker {job['worker_id']} did not start it in "
                    f"{config.assignment_timeout:g} s; requeued"
                )
                job["status"], job["worker_id"], job["_request_id"] = "queued", None, None
                changed.append(job)
        for job in self.jobs.values():
            if job["status"] != "running" or job.get("_lost"):
                continue
            record = self.workers.get(job["worker_id"])
            last = record.last_seen_at if record is not None else self._started
            if now - last >= config.worker_timeout:
                job["status"] = "failed"
                job["error"] = "worker lost"
                job["detail"] = (
                    f"nothing from worker {job['worker_id']} for {config.worker_timeout:g} s"
                )
                job["ended_at"] = _utc_now()
                job["_lost"] = True
                changed.append(job)
        return changed

    def next_deadline(self) -> float:
        config = self.config
        deadlines = [at + config.assignment_timeout for at in self._assigned_at.values()]
        for job in self.jobs.values():
            if job["status"] == "running" and not job.get("_lost"):
                record = self.workers.get(job["worker_id"])
                last = record.last_seen_at if record is not None else self._started
                deadlines.append(last + config.worker_timeout)
        return min(deadlines, default=trio.current_time() + config.worker_timeout)

    def statistics(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job in self.jobs.values():
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        return counts


def _still_rejects(job: Job, worker_id: str, capabilities: dict[str, Any]) -> bool:
    """Whether the worker's last rejection of ``job`` stands: it has the capabilities it
    had then. (A rejection stored without them, by an older server, no longer does.)"""
    mine = [r for r in job["rejections"] if r["worker_id"] == worker_id]
    return bool(mine) and mine[-1].get("capabilities") == capabilities


def _worker_id(payload: Any) -> str:
    if not isinstance(payload, dict):
        raise QueueError(400, "the body must be a JSON object")
    worker_id = payload.get("worker_id")
    if not isinstance(worker_id, str) or not worker_id:
        raise QueueError(400, "worker_id must be a non-empty string")
    return worker_id
