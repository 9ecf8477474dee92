"""The worker API of the mock farm: the operations a worker agent calls."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import trio

from ._apierrors import access_denied, conflict
from ._farmbase import CREATED_BY, FarmBase, _fake_key, _ip_addresses, _paginate, log
from ._farmscheduler import utcnow
from ._records import Job, WorkerRecord, new_hex

#: The longest an idle worker's UpdateWorkerSchedule is held: well inside the read
#: timeouts of farmhand (30 s) and botocore (60 s).
LONG_POLL_SECONDS = 20.0


class WorkerOperations(FarmBase):
    """CreateWorker, UpdateWorker(Schedule), BatchGetJobEntity, the role credentials..."""

    # ------------------------------------------------------------ worker operations

    def CreateWorker(self, p: dict[str, Any]) -> Mapping[str, Any]:
        fleet = self.fleet(p["farmId"], p["fleetId"])
        worker = WorkerRecord(
            worker_id=f"worker-{new_hex()}",
            farm_id=fleet.farm_id,
            fleet_id=fleet.fleet_id,
            created_at=utcnow(),
            host_properties=p.get("hostProperties"),
        )
        self.state.workers[worker.worker_id] = worker
        self.logs.ensure_stream(worker.log_group_name, worker.worker_id)
        log.info("mockfarm.worker_created", worker_id=worker.worker_id)
        return {"workerId": worker.worker_id}

    def UpdateWorker(self, p: dict[str, Any]) -> Mapping[str, Any]:
        worker = self.worker(p)
        status = p.get("status")
        current = worker.status
        if status == "STARTED":
            if current == "STOPPING":
                raise conflict(
                    "STATUS_CONFLICT",
                    "worker",
                    worker.worker_id,
                    "The worker is STOPPING; set it STOPPED before starting it again.",
                    status=current,
                )
            if current in ("STARTED", "NOT_RESPONDING"):
                # A fresh start: whatever the previous process ran is gone.
                self.scheduler.abandon_sessions(worker, "the worker started again")
            worker.stop_requested = False
        elif status == "STOPPING":
            if current not in ("STARTED", "STOPPING"):
                raise conflict(
                    "STATUS_CONFLICT",
                    "worker",
                    worker.worker_id,
                    f"The worker is {current} and cannot be STOPPING.",
                    status=current,
                )
        elif status == "STOPPED":
            self.scheduler.abandon_sessions(worker, "the worker stopped")
        if status is not None:
            worker.status = status
        if "capabilities" in p:
            worker.capabilities = p["capabilities"]
        if "hostProperties" in p:
            worker.host_properties = p["hostProperties"]
        worker.updated_at = utcnow()
        worker.last_seen = trio.current_time()
        self.logs.ensure_stream(worker.log_group_name, worker.worker_id)
        result: dict[str, Any] = {"log": worker.log_configuration()}
        fleet = self.state.fleets[worker.fleet_id]
        if status == "STARTED" and fleet.host_configuration:
            result["hostConfiguration"] = fleet.host_configuration
        log.info("mockfarm.worker_updated", worker_id=worker.worker_id, status=worker.status)
        return result

    def UpdateWorkerSchedule(self, p: dict[str, Any]) -> Mapping[str, Any]:
        worker = self.worker(p)
        if worker.status not in ("STARTED", "STOPPING"):
            raise conflict(
                "STATUS_CONFLICT",
                "worker",
                worker.worker_id,
                f"The worker is {worker.status}; call UpdateWorker(STARTED) first.",
                status=worker.status,
            )
        worker.last_seen = trio.current_time()
        worker.schedule_calls += 1
        updates = p.get("updatedSessionActions")
        if updates:
            self.scheduler.check_updates(worker, updates)
            self.scheduler.apply_updates(worker, updates)
        self.scheduler.schedule(worker)
        response = self.scheduler.response(worker, self.config.update_interval_seconds)
        if self._leaves_idle(p, response):
            # An idle worker's call is held (see MockFarmApp), and its answer tells
            # it to call again at once, as does the answer to a report that leaves
            # it idle (its last session ended): its next call is held in turn, so
            # new work reaches it as it arrives, not an interval later.
            response["updateIntervalSeconds"] = 0
        return response

    def long_poll_seconds(self, p: Mapping[str, Any], response: Mapping[str, Any]) -> float:
        """How long to hold this UpdateWorkerSchedule before answering (0: answer now).

        An idle worker's call (STARTED, no session, nothing to report, nothing for it)
        is held until work for it may have come or ``LONG_POLL_SECONDS`` (at most
        the update interval) pass, when ``FarmConfig.long_poll`` is on. On the wire
        that is a slower answer, so any agent gets its work at once. A call that
        reports is answered at once."""
        if p.get("updatedSessionActions") or not self._leaves_idle(p, response):
            return 0.0
        return float(min(self.config.update_interval_seconds, LONG_POLL_SECONDS))

    def _leaves_idle(self, p: Mapping[str, Any], response: Mapping[str, Any]) -> bool:
        """Whether this answer leaves a STARTED worker with nothing to do, with the
        long poll on: its next call would be held."""
        if not self.config.long_poll or self.config.update_interval_seconds <= 0:
            return False
        worker = self.state.workers.get(p.get("workerId", ""))
        return not (
            worker is None
            or worker.status != "STARTED"
            or worker.sessions
            or worker.stop_requested
            or response.get("assignedSessions")
            or response.get("desiredWorkerStatus")
        )

    def BatchGetJobEntity(self, p: dict[str, Any]) -> Mapping[str, Any]:
        worker = self.worker(p)
        entities: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for identifier in p["identifiers"]:
            [(kind, ids)] = identifier.items()
            try:
                entities.append({kind: self._entity(worker, kind, ids)})
            except _EntityError as exc:
                errors.append({kind: {**ids, "code": exc.code, "message": exc.message}})
        return {"entities": entities, "errors": errors}

    def _entity(self, worker: WorkerRecord, kind: str, ids: Mapping[str, str]) -> dict[str, Any]:
        job = self.state.jobs.get(ids["jobId"])
        if job is None or job.farm_id != worker.farm_id:
            raise _EntityError("ResourceNotFoundException", f"Job {ids['jobId']} not found.")
        if job.job_id not in worker.job_ids:
            raise _EntityError(
                "AccessDeniedException", f"Worker {worker.worker_id} has no session for this job."
            )
        extensions = {"extensions": list(job.extensions)} if job.extensions else {}
        if kind == "jobDetails":
            queue = job.queue
            details: dict[str, Any] = {
                "jobId": job.job_id,
                "logGroupName": job.log_group_name,
                "schemaVersion": "jobtemplate-2023-09",
                "parameters": job.parameters,
                "jobRunAsUser": queue.job_run_as_user,
                **extensions,
            }
            if job.path_mapping_rules:
                details["pathMappingRules"] = job.path_mapping_rules
            if queue.role_arn:
                details["queueRoleArn"] = queue.role_arn
            if queue.job_attachment_settings:
                details["jobAttachmentSettings"] = queue.job_attachment_settings
            return details
        if kind == "stepDetails":
            step = self.state.steps.get(ids["stepId"])
            if step is None or step.job is not job:
                raise _EntityError("ResourceNotFoundException", f"Step {ids['stepId']} not found.")
            details = {
                "jobId": job.job_id,
                "stepId": step.step_id,
                "schemaVersion": "jobtemplate-2023-09",
                "template": step.spec.template,
                "dependencies": [d.step_id for d in step.dependencies],
                **extensions,
            }
            if step.spec.symbol_table:
                details["resolvedSymbolTable"] = step.spec.symbol_table
            return details
        if kind == "environmentDetails":
            environment_id = ids["environmentId"]
            spec = self._environment(job, environment_id)
            if spec is None:
                raise _EntityError(
                    "ResourceNotFoundException", f"Environment {environment_id} not found."
                )
            details = {
                "jobId": job.job_id,
                "environmentId": environment_id,
                "schemaVersion": spec.schema_version,
                "template": spec.template,
                **extensions,
            }
            if spec.symbol_table:
                details["resolvedSymbolTable"] = spec.symbol_table
            return details
        if kind == "jobAttachmentDetails":
            if not job.attachments:
                raise _EntityError(
                    "ResourceNotFoundException", f"Job {job.job_id} has no job attachments."
                )
            return {"jobId": job.job_id, "attachments": job.attachments}
        raise _EntityError("ValidationException", f"Unknown entity kind {kind}.")

    def _environment(self, job: Job, environment_id: str) -> Any:
        for known_id, spec in job.environments:
            if known_id == environment_id:
                return spec
        if environment_id.startswith("STEP:"):
            step_id, _, name = environment_id.removeprefix("STEP:").partition(":")
            step = self.state.steps.get(step_id)
            if step is not None and step.job is job:
                for spec in step.spec.environments:
                    if spec.name == name:
                        return spec
        return None

    def _credentials(self) -> dict[str, Any]:
        now = utcnow()
        expiration = now + timedelta(seconds=self.config.credentials_lifetime_seconds)
        access_key, secret = _fake_key("ASIA", 16), secrets.token_urlsafe(30)[:40]
        for key, (_, expires) in list(self._issued_keys.items()):
            if expires <= now:
                del self._issued_keys[key]
                if self.store is not None:
                    self.store.delete_kv("issued_keys", key)
        self._issued_keys[access_key] = (secret, expiration)
        if self.store is not None:
            # A restarted farm still takes the keys its workers hold.
            self.store.put_kv("issued_keys", access_key, (secret, expiration))
        return {
            "accessKeyId": access_key,
            "secretAccessKey": secret,
            "sessionToken": secrets.token_urlsafe(96),
            "expiration": expiration,
        }

    def issued_secret(self, access_key: str) -> str | None:
        """The secret of a temporary key this farm handed out and that has not expired."""
        issued = self._issued_keys.get(access_key)
        if issued is None or issued[1] <= utcnow():
            return None
        return issued[0]

    def AssumeFleetRoleForWorker(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.worker(p)
        return {"credentials": self._credentials()}

    def AssumeQueueRoleForWorker(self, p: dict[str, Any]) -> Mapping[str, Any]:
        worker = self.worker(p)
        queue = self.queue(p["farmId"], p["queueId"])
        if not any(s.job.queue is queue for s in worker.sessions.values()):
            raise access_denied(
                f"Worker {worker.worker_id} has no session in queue {queue.queue_id}."
            )
        if not queue.role_arn:
            return {}
        return {"credentials": self._credentials()}

    def AssumeQueueRoleForUser(self, p: dict[str, Any]) -> Mapping[str, Any]:
        """Credentials for a user of the queue (``deadline queue export-credentials``,
        submissions with job attachments): temporary keys the farm issued."""
        self.queue(p["farmId"], p["queueId"])
        return {"credentials": self._credentials()}

    def AssumeQueueRoleForRead(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.queue(p["farmId"], p["queueId"])
        return {"credentials": self._credentials()}

    def AssumeFleetRoleForRead(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.fleet(p["farmId"], p["fleetId"])
        return {"credentials": self._credentials()}

    def DeleteWorker(self, p: dict[str, Any]) -> Mapping[str, Any]:
        worker = self.worker(p)
        if worker.status not in ("CREATED", "STOPPED", "NOT_RESPONDING"):
            raise conflict(
                "STATUS_CONFLICT",
                "worker",
                worker.worker_id,
                f"A {worker.status} worker cannot be deleted; stop it first.",
                status=worker.api_status,
            )
        self.scheduler.abandon_sessions(worker, "")
        del self.state.workers[worker.worker_id]
        return {}

    def _worker_summary(self, worker: WorkerRecord) -> dict[str, Any]:
        return {
            "farmId": worker.farm_id,
            "fleetId": worker.fleet_id,
            "workerId": worker.worker_id,
            "hostProperties": _ip_addresses(worker.host_properties),
            "status": worker.api_status,
            "log": worker.log_configuration() if worker.status != "CREATED" else None,
            "createdAt": worker.created_at,
            "createdBy": CREATED_BY,
            "updatedAt": worker.updated_at,
            "updatedBy": CREATED_BY if worker.updated_at else None,
        }

    def GetWorker(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._worker_summary(self.worker(p))

    def ListWorkers(self, p: dict[str, Any]) -> Mapping[str, Any]:
        fleet = self.fleet(p["farmId"], p["fleetId"])
        workers = [w for w in self.state.workers.values() if w.fleet_id == fleet.fleet_id]
        page, token = _paginate(workers, p)
        return {"workers": [self._worker_summary(w) for w in page], "nextToken": token}

    def ListSessionsForWorker(self, p: dict[str, Any]) -> Mapping[str, Any]:
        worker = self.worker(p)
        sessions = [s for s in self.state.sessions.values() if s.worker is worker]
        page, token = _paginate(sessions, p)
        return {
            "sessions": [
                {
                    "sessionId": s.session_id,
                    "queueId": s.job.queue_id,
                    "jobId": s.job.job_id,
                    "startedAt": s.started_at,
                    "lifecycleStatus": s.lifecycle_status,
                    "endedAt": s.ended_at,
                }
                for s in page
            ],
            "nextToken": token,
        }


class _EntityError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
