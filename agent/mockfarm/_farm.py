"""The farm: its records and one handler per Deadline operation.

A handler takes the validated input of its operation (a dict, as the codec
parsed it) and returns the output as a dict of Python values; the codec
serializes it. Handlers are synchronous: everything lives in memory and Trio
runs one handler at a time, so a request sees and leaves a consistent farm.

``Farm`` also offers the same actions in Python (``create_job``,
``request_worker_stop``...) for tests and embedding programs.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import attrs
import structlog
import trio
from openjd.model import TaskParameterSet

from ._codec import deadline_codec
from ._errors import access_denied, conflict, not_found, validation
from ._jobs import (
    build_job,
    decode_environment,
    queue_environment_spec,
    require_template,
    select_steps_and_tasks,
)
from ._logs import LogStore
from ._scheduler import (
    Scheduler,
    SchedulingConfig,
    heartbeat_deadline,
    utcnow,
)
from ._state import (
    TASK_RUN_STATUSES,
    FarmRecord,
    FarmState,
    Fleet,
    Job,
    Queue,
    QueueEnvironment,
    Session,
    SessionAction,
    Step,
    Task,
    Worker,
    new_hex,
)

log = structlog.get_logger("farmhand.mockfarm")

Handler = Callable[[dict[str, Any]], Mapping[str, Any]]
_T = TypeVar("_T")

CREATED_BY = "arn:aws:sts::123456789012:assumed-role/FarmhandMockFarm/farmhand"
_DEFAULT_FLEET_CONFIGURATION = {
    "customerManaged": {
        "mode": "NO_SCALING",
        "workerCapabilities": {
            "vCpuCount": {"min": 1},
            "memoryMiB": {"min": 512},
            "osFamily": "LINUX",
            "cpuArchitectureType": "x86_64",
        },
    }
}


def _positive(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _not_negative(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


@attrs.frozen
class FarmConfig:
    """How the mock farm behaves. Defaults follow the real service where it has one."""

    #: ``updateIntervalSeconds`` in every UpdateWorkerSchedule response.
    update_interval_seconds: int = attrs.field(default=15, validator=_not_negative)
    #: Task runs assigned ahead in a session, so the worker never waits.
    pipeline_depth: int = attrs.field(default=2, validator=_positive)
    #: Sessions (one job each) a worker runs at once.
    max_sessions_per_worker: int = attrs.field(default=1, validator=_positive)
    #: Seconds without a heartbeat before a worker is ``NOT_RESPONDING`` and its work requeued.
    worker_timeout_seconds: float = attrs.field(default=180.0, validator=_positive)
    #: Defaults of CreateJob's ``maxRetriesPerTask`` and ``maxFailedTasksCount``.
    max_retries_per_task: int = attrs.field(default=5, validator=_not_negative)
    max_failed_tasks_count: int = attrs.field(default=100, validator=_not_negative)
    #: Lifetime of the fake credentials from AssumeFleetRoleForWorker/AssumeQueueRoleForWorker.
    credentials_lifetime_seconds: float = attrs.field(default=3600.0, validator=_positive)
    region: str = "us-west-2"
    account_id: str = "123456789012"
    #: Only workers whose capabilities meet a step's ``hostRequirements`` get its tasks, as
    #: on the service. ``python -m agent run`` turns it off: it runs on this host, like
    #: ``openjd run``, whatever the template asks for.
    match_host_requirements: bool = True
    #: Keep the log events workers send (``MockFarm.session_log``); ``False`` accepts
    #: and counts them without keeping them, so a long run's memory stays flat.
    keep_log_events: bool = True
    #: Display names of the farm, fleet and queue that exist from the start.
    default_farm_name: str = "Default farm"
    default_fleet_name: str = "Default fleet"
    default_queue_name: str = "Default queue"


def _ip_addresses(host_properties: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not host_properties:
        return None
    result: dict[str, Any] = {}
    if "ipAddresses" in host_properties:
        result["ipAddresses"] = host_properties["ipAddresses"]
    if "hostName" in host_properties:
        result["hostName"] = host_properties["hostName"]
    return result


def _fake_key(prefix: str, length: int) -> str:
    alphabet = string.ascii_uppercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


class Farm:
    """The farm's state and the Deadline handlers that read and change it."""

    def __init__(self, config: FarmConfig | None = None) -> None:
        self.config = config or FarmConfig()
        self.state = FarmState()
        #: Temporary keys this farm handed out: access key id -> (secret, expiration).
        self._issued_keys: dict[str, tuple[str, datetime]] = {}
        self.logs = LogStore(region=self.config.region, keep_events=self.config.keep_log_events)
        self.scheduler = Scheduler(
            self.state,
            SchedulingConfig(
                pipeline_depth=self.config.pipeline_depth,
                max_sessions_per_worker=self.config.max_sessions_per_worker,
                match_host_requirements=self.config.match_host_requirements,
            ),
            open_log_stream=self.logs.ensure_stream,
            serialize=deadline_codec().serialize_shape,
        )
        self.handlers: dict[str, Handler] = {
            name: getattr(self, name)
            for name in dir(type(self))
            if name[:1].isupper() and callable(getattr(type(self), name))
        }
        farm = self._new_farm(self.config.default_farm_name, None)
        fleet = self._new_fleet(
            farm.farm_id,
            self.config.default_fleet_name,
            description=None,
            role_arn=f"arn:aws:iam::{self.config.account_id}:role/FarmhandMockFleetRole",
            min_workers=0,
            max_workers=1000,
            configuration=_DEFAULT_FLEET_CONFIGURATION,
            host_configuration=None,
        )
        queue = self._new_queue(
            farm.farm_id,
            self.config.default_queue_name,
            description=None,
            role_arn=None,
            job_run_as_user={"runAs": "WORKER_AGENT_USER"},
            job_attachment_settings=None,
        )
        self.default_farm_id = farm.farm_id
        self.default_fleet_id = fleet.fleet_id
        self.default_queue_id = queue.queue_id

    # ------------------------------------------------------------ lookups

    def farm(self, farm_id: str) -> FarmRecord:
        found = self.state.farms.get(farm_id)
        if found is None:
            raise not_found("farm", farm_id)
        return found

    def fleet(self, farm_id: str, fleet_id: str) -> Fleet:
        self.farm(farm_id)
        found = self.state.fleets.get(fleet_id)
        if found is None or found.farm_id != farm_id:
            raise not_found("fleet", fleet_id)
        return found

    def queue(self, farm_id: str, queue_id: str) -> Queue:
        self.farm(farm_id)
        found = self.state.queues.get(queue_id)
        if found is None or found.farm_id != farm_id:
            raise not_found("queue", queue_id)
        return found

    def job(self, farm_id: str, queue_id: str, job_id: str) -> Job:
        queue = self.queue(farm_id, queue_id)
        found = self.state.jobs.get(job_id)
        if found is None or found.queue is not queue:
            raise not_found("job", job_id)
        return found

    def step(self, params: Mapping[str, Any]) -> Step:
        job = self.job(params["farmId"], params["queueId"], params["jobId"])
        found = self.state.steps.get(params["stepId"])
        if found is None or found.job is not job:
            raise not_found("step", params["stepId"])
        return found

    def task(self, params: Mapping[str, Any]) -> Task:
        step = self.step(params)
        found = self.state.task(params["taskId"])
        if found is None or found.step is not step:
            raise not_found("task", params["taskId"])
        return found

    def worker(self, params: Mapping[str, Any]) -> Worker:
        self.fleet(params["farmId"], params["fleetId"])
        found = self.state.workers.get(params["workerId"])
        if found is None or found.fleet_id != params["fleetId"]:
            raise not_found("worker", params["workerId"])
        return found

    # ------------------------------------------------------------ creation

    def _new_farm(self, name: str, description: str | None, **extra: Any) -> FarmRecord:
        farm = FarmRecord(f"farm-{new_hex()}", name, description, utcnow(), **extra)
        self.state.farms[farm.farm_id] = farm
        return farm

    def _new_fleet(
        self,
        farm_id: str,
        name: str,
        *,
        description: str | None,
        role_arn: str,
        min_workers: int,
        max_workers: int,
        configuration: dict[str, Any],
        host_configuration: dict[str, Any] | None,
    ) -> Fleet:
        fleet = Fleet(
            fleet_id=f"fleet-{new_hex()}",
            farm_id=farm_id,
            display_name=name,
            description=description,
            role_arn=role_arn,
            min_worker_count=min_workers,
            max_worker_count=max_workers,
            configuration=configuration,
            created_at=utcnow(),
            host_configuration=host_configuration,
        )
        self.state.fleets[fleet.fleet_id] = fleet
        return fleet

    def _new_queue(
        self,
        farm_id: str,
        name: str,
        *,
        description: str | None,
        role_arn: str | None,
        job_run_as_user: dict[str, Any],
        job_attachment_settings: dict[str, Any] | None,
        default_budget_action: str = "NONE",
    ) -> Queue:
        queue = Queue(
            queue_id=f"queue-{new_hex()}",
            farm_id=farm_id,
            display_name=name,
            description=description,
            role_arn=role_arn,
            job_run_as_user=job_run_as_user,
            job_attachment_settings=job_attachment_settings,
            created_at=utcnow(),
            default_budget_action=default_budget_action,
        )
        self.state.queues[queue.queue_id] = queue
        return queue

    def create_job(
        self,
        queue: Queue,
        template: str,
        *,
        template_type: str | None = None,
        parameters: Mapping[str, Mapping[str, Any]] | None = None,
        priority: int = 50,
        target_task_run_status: str | None = None,
        max_failed_tasks_count: int | None = None,
        max_retries_per_task: int | None = None,
        max_worker_count: int | None = None,
        name: str | None = None,
        description: str | None = None,
        attachments: dict[str, Any] | None = None,
        storage_profile_id: str | None = None,
        steps: Sequence[str] | None = None,
        tasks: Mapping[str, Sequence[TaskParameterSet]] | None = None,
        path_mapping_rules: Sequence[Mapping[str, str]] = (),
        session_limit: int | None = None,
    ) -> Job:
        """Validate the template (ValidationException if bad) and add the job.

        Beyond CreateJob (for embedding programs such as ``python -m agent run``):
        ``steps`` keeps only the named steps (dependencies on the others are
        dropped); ``tasks`` replaces a step's tasks with the given parameter sets,
        in that order; ``path_mapping_rules`` (``sourcePathFormat``, ``sourcePath``,
        ``destinationPath``) go to workers in ``jobDetails``, as a storage profile's
        would; ``session_limit`` caps the sessions the job ever gets: once that many
        have ended, what is left of it is canceled.
        """
        queue_environments = queue.ordered_environments()
        spec = build_job(
            template,
            template_type,
            parameters or {},
            queue_environments=[env.decoded for env in queue_environments],
        )
        spec = select_steps_and_tasks(spec, steps, tasks)
        now = utcnow()
        job = Job(
            job_id=f"job-{new_hex()}",
            queue=queue,
            spec_name=spec.name,
            name=name or spec.name,
            description=description if description is not None else spec.description,
            priority=priority,
            parameters=spec.parameters,
            # A queue environment that declares an extension needs it in the sessions it wraps.
            extensions=tuple(
                dict.fromkeys(
                    [
                        *spec.extensions,
                        *(
                            str(getattr(extension, "value", extension))
                            for env in queue_environments
                            for extension in env.decoded.extensions or ()
                        ),
                    ]
                )
            ),
            template=template,
            template_type=template_type,
            created_at=now,
            created_by=CREATED_BY,
            max_failed_tasks_count=(
                self.config.max_failed_tasks_count
                if max_failed_tasks_count is None
                else max_failed_tasks_count
            ),
            max_retries_per_task=(
                self.config.max_retries_per_task
                if max_retries_per_task is None
                else max_retries_per_task
            ),
            max_worker_count=max_worker_count,
            attachments=attachments,
            storage_profile_id=storage_profile_id,
            path_mapping_rules=[dict(rule) for rule in path_mapping_rules],
            session_limit=session_limit,
        )
        job.environments = [
            (f"JOB:{job.job_id}:{env.queue_environment_id}", env.spec) for env in queue_environments
        ] + [(f"JOB:{job.job_id}:{env.name}", env) for env in spec.job_environments]
        steps_by_name: dict[str, Step] = {}
        for step_spec in spec.steps:
            step = Step(step_id=f"step-{new_hex()}", job=job, spec=step_spec, created_at=now)
            step.dependencies = [steps_by_name[name] for name in step_spec.dependencies]
            for dependency in step.dependencies:
                dependency.consumers.append(step)
            steps_by_name[step_spec.name] = step
            job.steps.append(step)
            self.state.steps[step.step_id] = step
            hex_ = step.step_id.removeprefix("step-")
            if target_task_run_status == "SUSPENDED":
                status = "SUSPENDED"
            else:
                status = "PENDING" if step.dependencies else "READY"
            step.tasks = [
                Task(f"task-{hex_}-{index}", step, index, now, status=status)
                for index in range(step_spec.task_count)
            ]
            step.counts[status] = len(step.tasks)
            job.task_counts[status] += len(step.tasks)
            if status == "READY":
                for task in step.tasks:
                    step.push_ready(task)
            if not step.tasks:
                step.ended_at = now
        self.state.jobs[job.job_id] = job
        log.info("mockfarm.job_created", job_id=job.job_id, name=job.name, steps=len(job.steps))
        return job

    # ------------------------------------------------------------ Python API

    def request_worker_stop(self, worker_id: str) -> None:
        """Ask a worker to stop: no new work; once idle it gets ``desiredWorkerStatus=STOPPED``."""
        worker = self.state.workers.get(worker_id)
        if worker is None:
            raise KeyError(worker_id)
        worker.stop_requested = True
        for session in worker.sessions.values():
            session.winding_down = True

    def retarget_job(self, job: Job, target: str) -> None:
        job.target_status = target
        job.updated_at = utcnow()
        job.updated_by = CREATED_BY
        if target in ("READY", "PENDING"):
            job.failed = False
            job.failure_count = 0
        for step in job.steps:
            for task in step.tasks:
                self.scheduler.retarget_task(task, target)
        if target not in ("READY", "PENDING"):
            for session in job.sessions:
                self.scheduler.cancel_session_work(session)

    def sweep(self) -> list[Worker]:
        """Mark workers that missed their heartbeats ``NOT_RESPONDING`` and requeue their work."""
        now = trio.current_time()
        timeout = self.config.worker_timeout_seconds
        expired = [
            worker
            for worker in self.state.workers.values()
            if heartbeat_deadline(worker, timeout) <= now
        ]
        for worker in expired:
            log.warning("mockfarm.worker_not_responding", worker_id=worker.worker_id)
            worker.status = "NOT_RESPONDING"
            worker.updated_at = utcnow()
            self.scheduler.abandon_sessions(worker, "missed heartbeats")
        return expired

    def next_deadline(self) -> float:
        """The earliest heartbeat deadline (``trio.current_time()`` scale; ``inf`` if none)."""
        timeout = self.config.worker_timeout_seconds
        return min(
            (heartbeat_deadline(worker, timeout) for worker in self.state.workers.values()),
            default=float("inf"),
        )

    # ------------------------------------------------------------ worker operations

    def CreateWorker(self, p: dict[str, Any]) -> Mapping[str, Any]:
        fleet = self.fleet(p["farmId"], p["fleetId"])
        worker = Worker(
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
        return self.scheduler.response(worker, self.config.update_interval_seconds)

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

    def _entity(self, worker: Worker, kind: str, ids: Mapping[str, str]) -> dict[str, Any]:
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
        self._issued_keys[access_key] = (secret, expiration)
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

    def _worker_summary(self, worker: Worker) -> dict[str, Any]:
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

    # ------------------------------------------------------------ farms, fleets, queues

    def CreateFarm(self, p: dict[str, Any]) -> Mapping[str, Any]:
        farm = self._new_farm(
            p["displayName"],
            p.get("description"),
            kms_key_arn=p.get("kmsKeyArn"),
            cost_scale_factor=p.get("costScaleFactor"),
        )
        return {"farmId": farm.farm_id}

    def GetFarm(self, p: dict[str, Any]) -> Mapping[str, Any]:
        farm = self.farm(p["farmId"])
        return {
            **self._farm_summary(farm),
            "description": farm.description,
            "costScaleFactor": 1.0 if farm.cost_scale_factor is None else farm.cost_scale_factor,
        }

    def _farm_summary(self, farm: FarmRecord) -> dict[str, Any]:
        return {
            "farmId": farm.farm_id,
            "displayName": farm.display_name,
            "kmsKeyArn": farm.kms_key_arn,
            "createdAt": farm.created_at,
            "createdBy": CREATED_BY,
        }

    def ListFarms(self, p: dict[str, Any]) -> Mapping[str, Any]:
        page, token = _paginate(list(self.state.farms.values()), p)
        return {"farms": [self._farm_summary(f) for f in page], "nextToken": token}

    def CreateFleet(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        fleet = self._new_fleet(
            p["farmId"],
            p["displayName"],
            description=p.get("description"),
            role_arn=p["roleArn"],
            min_workers=p.get("minWorkerCount", 0),
            max_workers=p["maxWorkerCount"],
            configuration=p["configuration"],
            host_configuration=p.get("hostConfiguration"),
        )
        return {"fleetId": fleet.fleet_id}

    def _fleet_summary(self, fleet: Fleet) -> dict[str, Any]:
        return {
            "fleetId": fleet.fleet_id,
            "farmId": fleet.farm_id,
            "displayName": fleet.display_name,
            "status": "ACTIVE",
            "workerCount": sum(
                1
                for w in self.state.workers.values()
                if w.fleet_id == fleet.fleet_id and w.status in ("STARTED", "STOPPING")
            ),
            "minWorkerCount": fleet.min_worker_count,
            "maxWorkerCount": fleet.max_worker_count,
            "configuration": fleet.configuration,
            "createdAt": fleet.created_at,
            "createdBy": CREATED_BY,
        }

    def GetFleet(self, p: dict[str, Any]) -> Mapping[str, Any]:
        fleet = self.fleet(p["farmId"], p["fleetId"])
        return {
            **self._fleet_summary(fleet),
            "description": fleet.description,
            "roleArn": fleet.role_arn,
            "hostConfiguration": fleet.host_configuration,
        }

    def ListFleets(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        fleets = [
            f
            for f in self.state.fleets.values()
            if f.farm_id == p["farmId"]
            and p.get("displayName") in (None, f.display_name)
            and p.get("status") in (None, "ACTIVE")
        ]
        page, token = _paginate(fleets, p)
        return {"fleets": [self._fleet_summary(f) for f in page], "nextToken": token}

    def CreateQueue(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        queue = self._new_queue(
            p["farmId"],
            p["displayName"],
            description=p.get("description"),
            role_arn=p.get("roleArn"),
            job_run_as_user=p.get("jobRunAsUser") or {"runAs": "WORKER_AGENT_USER"},
            job_attachment_settings=p.get("jobAttachmentSettings"),
            default_budget_action=p.get("defaultBudgetAction", "NONE"),
        )
        return {"queueId": queue.queue_id}

    def _queue_summary(self, queue: Queue) -> dict[str, Any]:
        busy = any(
            job.queue is queue and job.task_counts.get("READY") for job in self.state.jobs.values()
        )
        return {
            "farmId": queue.farm_id,
            "queueId": queue.queue_id,
            "displayName": queue.display_name,
            "status": "SCHEDULING" if busy else "IDLE",
            "defaultBudgetAction": queue.default_budget_action,
            "createdAt": queue.created_at,
            "createdBy": CREATED_BY,
        }

    def GetQueue(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        return {
            **self._queue_summary(queue),
            "description": queue.description,
            "jobAttachmentSettings": queue.job_attachment_settings,
            "roleArn": queue.role_arn,
            "jobRunAsUser": queue.job_run_as_user,
        }

    def ListQueues(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        queues = [q for q in self.state.queues.values() if q.farm_id == p["farmId"]]
        summaries = [self._queue_summary(q) for q in queues]
        if p.get("status"):
            summaries = [s for s in summaries if s["status"] == p["status"]]
        page, token = _paginate(summaries, p)
        return {"queues": page, "nextToken": token}

    def CreateQueueEnvironment(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        decoded = decode_environment(p["template"], p["templateType"])
        name = decoded.environment.name
        if any(env.name == name for env in queue.environments.values()):
            raise conflict(
                "RESOURCE_ALREADY_EXISTS",
                "queue-environment",
                name,
                f"The queue already has an environment named {name!r}.",
            )
        environment = QueueEnvironment(
            queue_environment_id=f"queueenv-{new_hex()}",
            queue_id=queue.queue_id,
            name=name,
            priority=p["priority"],
            template_type=p["templateType"],
            template=p["template"],
            decoded=decoded,
            spec=queue_environment_spec(decoded),
        )
        queue.environments[environment.queue_environment_id] = environment
        return {"queueEnvironmentId": environment.queue_environment_id}

    def _queue_environment(self, p: Mapping[str, Any]) -> QueueEnvironment:
        queue = self.queue(p["farmId"], p["queueId"])
        found = queue.environments.get(p["queueEnvironmentId"])
        if found is None:
            raise not_found("queue-environment", p["queueEnvironmentId"])
        return found

    def GetQueueEnvironment(self, p: dict[str, Any]) -> Mapping[str, Any]:
        env = self._queue_environment(p)
        return {
            "queueEnvironmentId": env.queue_environment_id,
            "name": env.name,
            "priority": env.priority,
            "templateType": env.template_type,
            "template": env.template,
            "createdAt": self.state.queues[env.queue_id].created_at,
            "createdBy": CREATED_BY,
        }

    def ListQueueEnvironments(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        page, token = _paginate(queue.ordered_environments(), p)
        return {
            "environments": [
                {
                    "queueEnvironmentId": e.queue_environment_id,
                    "name": e.name,
                    "priority": e.priority,
                }
                for e in page
            ],
            "nextToken": token,
        }

    def DeleteQueueEnvironment(self, p: dict[str, Any]) -> Mapping[str, Any]:
        env = self._queue_environment(p)
        del self.state.queues[env.queue_id].environments[env.queue_environment_id]
        return {}

    # ------------------------------------------------------------ jobs

    def CreateJob(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        if p.get("sourceJobId"):
            raise validation("The mock farm does not copy jobs (sourceJobId).", reason="OTHER")
        template, template_type = require_template(p)
        job = self.create_job(
            queue,
            template,
            template_type=template_type,
            parameters=p.get("parameters"),
            priority=p["priority"],
            target_task_run_status=p.get("targetTaskRunStatus"),
            max_failed_tasks_count=p.get("maxFailedTasksCount"),
            max_retries_per_task=p.get("maxRetriesPerTask"),
            max_worker_count=p.get("maxWorkerCount"),
            name=p.get("nameOverride"),
            description=p.get("descriptionOverride"),
            attachments=p.get("attachments"),
            storage_profile_id=p.get("storageProfileId"),
        )
        return {"jobId": job.job_id}

    def _job_summary(self, job: Job) -> dict[str, Any]:
        return {
            "jobId": job.job_id,
            "name": job.name,
            "lifecycleStatus": job.lifecycle_status,
            "lifecycleStatusMessage": "",
            "priority": job.priority,
            "createdAt": job.created_at,
            "createdBy": job.created_by,
            "updatedAt": job.updated_at,
            "updatedBy": job.updated_by,
            "startedAt": job.started_at,
            "endedAt": job.ended_at,
            "taskRunStatus": job.status,
            "targetTaskRunStatus": job.target_status,
            "taskRunStatusCounts": _counts(job.task_counts),
            "taskFailureRetryCount": job.retry_count(),
            "maxFailedTasksCount": job.max_failed_tasks_count,
            "maxRetriesPerTask": job.max_retries_per_task,
            "maxWorkerCount": job.max_worker_count,
        }

    def GetJob(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        return {
            **self._job_summary(job),
            "parameters": job.parameters,
            "attachments": job.attachments,
            "description": job.description or None,
            "storageProfileId": job.storage_profile_id,
        }

    def ListJobs(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        jobs = [j for j in self.state.jobs.values() if j.queue is queue]
        page, token = _paginate(jobs, p)
        return {"jobs": [self._job_summary(j) for j in page], "nextToken": token}

    def UpdateJob(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        if p.get("lifecycleStatus") == "ARCHIVED":
            if job.task_counts.keys() & {"ASSIGNED", "RUNNING", "INTERRUPTING"} and any(
                job.task_counts[s] for s in ("ASSIGNED", "RUNNING", "INTERRUPTING")
            ):
                raise conflict(
                    "STATUS_CONFLICT",
                    "job",
                    job.job_id,
                    "A job with running tasks cannot be archived.",
                    status=job.status,
                )
            job.lifecycle_status = "ARCHIVED"
        for key, attribute in (
            ("priority", "priority"),
            ("maxFailedTasksCount", "max_failed_tasks_count"),
            ("maxRetriesPerTask", "max_retries_per_task"),
            ("maxWorkerCount", "max_worker_count"),
            ("name", "name"),
            ("description", "description"),
        ):
            if key in p:
                setattr(job, attribute, p[key])
        if "targetTaskRunStatus" in p:
            self.retarget_job(job, p["targetTaskRunStatus"])
        job.updated_at = utcnow()
        job.updated_by = CREATED_BY
        return {}

    # ------------------------------------------------------------ steps and tasks

    def _step_summary(self, step: Step) -> dict[str, Any]:
        return {
            "stepId": step.step_id,
            "name": step.name,
            "lifecycleStatus": "CREATE_COMPLETE",
            "taskRunStatus": step.status,
            "taskRunStatusCounts": _counts(step.counts),
            "taskFailureRetryCount": sum(t.failure_retry_count for t in step.tasks),
            "targetTaskRunStatus": step.target_status,
            "createdAt": step.created_at,
            "createdBy": step.job.created_by,
            "updatedAt": step.updated_at,
            "startedAt": step.started_at,
            "endedAt": step.ended_at,
            "dependencyCounts": {
                "dependenciesResolved": sum(1 for d in step.dependencies if d.succeeded),
                "dependenciesUnresolved": sum(1 for d in step.dependencies if not d.succeeded),
                "consumersResolved": sum(1 for c in step.consumers if step.succeeded),
                "consumersUnresolved": sum(1 for c in step.consumers if not step.succeeded),
            },
        }

    def ListSteps(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        page, token = _paginate(job.steps, p)
        return {"steps": [self._step_summary(s) for s in page], "nextToken": token}

    def GetStep(self, p: dict[str, Any]) -> Mapping[str, Any]:
        step = self.step(p)
        requirements = step.spec.host_requirements
        return {
            **self._step_summary(step),
            "requiredCapabilities": (
                {
                    "amounts": requirements["amounts"],
                    "attributes": requirements["attributes"],
                }
                if requirements
                else None
            ),
            "parameterSpace": step.spec.parameter_space,
            "description": step.spec.description,
        }

    def UpdateStep(self, p: dict[str, Any]) -> Mapping[str, Any]:
        step = self.step(p)
        step.target_status = p["targetTaskRunStatus"]
        step.updated_at = utcnow()
        for task in step.tasks:
            self.scheduler.retarget_task(task, p["targetTaskRunStatus"])
        return {}

    def _task_summary(self, task: Task) -> dict[str, Any]:
        return {
            "taskId": task.task_id,
            "createdAt": task.created_at,
            "createdBy": task.step.job.created_by,
            "runStatus": task.status,
            "targetRunStatus": task.target_status,
            "failureRetryCount": task.failure_retry_count,
            "startedAt": task.started_at,
            "endedAt": task.ended_at,
            "updatedAt": task.updated_at,
            "latestSessionActionId": (
                task.latest_action.action_id if task.latest_action is not None else None
            ),
            "parameters": task.parameters or None,
        }

    def ListTasks(self, p: dict[str, Any]) -> Mapping[str, Any]:
        step = self.step(p)
        page, token = _paginate(step.tasks, p)
        return {"tasks": [self._task_summary(t) for t in page], "nextToken": token}

    def GetTask(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._task_summary(self.task(p))

    def UpdateTask(self, p: dict[str, Any]) -> Mapping[str, Any]:
        task = self.task(p)
        self.scheduler.retarget_task(task, p["targetRunStatus"])
        return {}

    # ------------------------------------------------------------ sessions

    def _session(self, p: Mapping[str, Any]) -> Session:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        found = self.state.sessions.get(p["sessionId"])
        if found is None or found.job is not job:
            raise not_found("session", p["sessionId"])
        return found

    def _session_summary(self, session: Session) -> dict[str, Any]:
        return {
            "sessionId": session.session_id,
            "fleetId": session.worker.fleet_id,
            "workerId": session.worker.worker_id,
            "startedAt": session.started_at,
            "lifecycleStatus": session.lifecycle_status,
            "endedAt": session.ended_at,
            "targetLifecycleStatus": (
                "ENDED" if session.winding_down and session.lifecycle_status != "ENDED" else None
            ),
            "updatedAt": session.updated_at,
        }

    def ListSessions(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        page, token = _paginate(job.sessions, p)
        return {"sessions": [self._session_summary(s) for s in page], "nextToken": token}

    def GetSession(self, p: dict[str, Any]) -> Mapping[str, Any]:
        session = self._session(p)
        return {
            **self._session_summary(session),
            "log": session.log_configuration(),
            "hostProperties": _ip_addresses(session.worker.host_properties),
            "workerLog": session.worker.log_configuration(),
        }

    def _action_summary(self, action: SessionAction) -> dict[str, Any]:
        definition = action.definition()
        if "syncInputJobAttachments" in definition:
            definition = {"syncInputJobAttachments": {}}
        return {
            "sessionActionId": action.action_id,
            "status": action.status,
            "startedAt": action.started_at,
            "endedAt": action.ended_at,
            "workerUpdatedAt": action.worker_updated_at,
            "progressPercent": action.progress_percent,
            "manifests": action.manifests,
            "definition": definition,
        }

    def ListSessionActions(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        actions: Iterable[SessionAction] = (a for s in job.sessions for a in s.actions)
        if p.get("sessionId"):
            actions = (a for a in actions if a.session.session_id == p["sessionId"])
        if p.get("taskId"):
            actions = (a for a in actions if a.task is not None and a.task.task_id == p["taskId"])
        page, token = _paginate(list(actions), p)
        return {"sessionActions": [self._action_summary(a) for a in page], "nextToken": token}

    def GetSessionAction(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        action = self.state.actions.get(p["sessionActionId"])
        if action is None or action.session.job is not job:
            raise not_found("session-action", p["sessionActionId"])
        return {
            **self._action_summary(action),
            "sessionId": action.session.session_id,
            "processExitCode": action.process_exit_code,
            "progressMessage": action.progress_message,
        }


class _EntityError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _counts(counts: Mapping[str, int]) -> dict[str, int]:
    return {status: counts.get(status, 0) for status in TASK_RUN_STATUSES}


def _paginate(items: Sequence[_T], p: Mapping[str, Any]) -> tuple[list[_T], str | None]:
    token = p.get("nextToken")
    start = 0
    if token:
        if not token.isdigit():
            raise validation("The nextToken is not valid.", reason="OTHER")
        start = int(token)
    end = start + p.get("maxResults", 100)
    return list(items[start:end]), (str(end) if end < len(items) else None)
