"""The farm's records: its configuration, lookups and the actions in Python.

``FarmBase`` holds the state and what the handler families share (lookups that
answer ResourceNotFound, record constructors, ``create_job``, the heartbeat
sweep); the handlers themselves are in ``_workerops`` (the worker API) and
``_manageops`` (farms, fleets, queues, jobs, steps, tasks, sessions), and
``_farm.Farm`` joins them.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import structlog
import trio
from openjd.model import JobTemplate, TaskParameterSet

from ._apierrors import ApiError, not_found, validation
from ._codec import deadline_codec
from ._farmscheduler import FarmScheduler, SchedulingConfig, heartbeat_deadline, utcnow
from ._jobs import JobSpec, build_job, select_steps_and_tasks
from ._logstore import LogStore
from ._records import (
    TASK_RUN_STATUSES,
    FarmRecord,
    FarmState,
    Fleet,
    Job,
    Queue,
    Step,
    Task,
    WorkerRecord,
    new_hex,
)

if TYPE_CHECKING:
    from ._store import FarmStore

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
    #: Hold an idle worker's UpdateWorkerSchedule until work for it arrives (or the
    #: update interval passes), and have it call again at once (``updateIntervalSeconds``
    #: 0 in an idle answer): work is picked up as it is submitted, by any agent.
    #: ``False`` answers at once with the interval, as the service does.
    long_poll: bool = True
    #: Task runs assigned ahead in a session, so the worker never waits.
    pipeline_depth: int = attrs.field(default=2, validator=_positive)
    #: With it, a session whose task runs are quick is assigned more ahead: enough to
    #: cover this many seconds of work at its recent runs' pace (at most
    #: ``MAX_PIPELINE_DEPTH``, never fewer than ``pipeline_depth``), so that a worker
    #: running short tasks does not wait a round trip for every ``pipeline_depth`` of
    #: them, and still holds no more than this much work another worker could do.
    #: 0 (the default, here and in ``mockfarm serve``): ``pipeline_depth`` only.
    pipeline_seconds: float = attrs.field(default=0.0, validator=_not_negative)
    #: Sessions (one job each) a worker runs at once.
    max_sessions_per_worker: int = attrs.field(default=1, validator=_positive)
    #: Seconds without a heartbeat before a worker is ``NOT_RESPONDING`` and its work requeued.
    worker_timeout_seconds: float = attrs.field(default=180.0, validator=_positive)
    #: Defaults of CreateJob's ``maxRetriesPerTask`` and ``maxFailedTasksCount``.
    max_retries_per_task: int = attrs.field(default=5, validator=_not_negative)
    max_failed_tasks_count: int = attrs.field(default=100, validator=_not_negative)
    #: Deadline Cloud's service quotas "Tasks per step" (L-3DE82FE6) and "Tasks per job"
    #: (L-CF66A041): 10,000 each by default in every Region, adjustable on request
    #: (Deadline Cloud User Guide, "Quotas for Deadline Cloud"). CreateJob past them is a
    #: ServiceQuotaExceededException naming the quota, and the farm never lays the
    #: tasks out.
    max_tasks_per_step: int = attrs.field(default=10_000, validator=_positive)
    max_tasks_per_job: int = attrs.field(default=10_000, validator=_positive)
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


def _check_attachments(queue: Queue, attachments: Mapping[str, Any]) -> None:
    """CreateJob's ``attachments`` need a queue with ``jobAttachmentSettings`` and sane roots."""
    if not queue.job_attachment_settings:
        raise validation(
            f"Queue {queue.queue_id} has no jobAttachmentSettings; a job with attachments "
            "cannot be created in it.",
            reason="OTHER",
        )
    manifests = attachments.get("manifests")
    if not isinstance(manifests, list):
        raise validation("attachments.manifests must be a list.", reason="OTHER")
    for entry in manifests:
        if not isinstance(entry, Mapping) or not entry.get("rootPath"):
            raise validation("Each of attachments.manifests needs a rootPath.", reason="OTHER")
        if str(entry.get("rootPathFormat", "")).lower() not in ("posix", "windows"):
            raise validation(
                f"attachments.manifests rootPathFormat {entry.get('rootPathFormat')!r} "
                "is not posix or windows.",
                reason="OTHER",
            )
    if str(attachments.get("fileSystem", "COPIED")).upper() not in ("COPIED", "VIRTUAL"):
        raise validation("attachments.fileSystem must be COPIED or VIRTUAL.", reason="OTHER")


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


class FarmBase:
    """The farm's state, its lookups and its actions in Python (see ``Farm``)."""

    def __init__(self, config: FarmConfig | None = None, *, store: FarmStore | None = None) -> None:
        """``store``: load the farm from it and save every change to it (see ``_store``);
        without, the farm lives in memory only."""
        self.config = config or FarmConfig()
        self.state = FarmState()
        self.store = store
        #: Temporary keys this farm handed out: access key id -> (secret, expiration).
        self._issued_keys: dict[str, tuple[str, datetime]] = {}
        self.logs = LogStore(region=self.config.region, keep_events=self.config.keep_log_events)
        self.logs.on_events = self._session_log_events
        #: Per session, the action its log is on now (its last ``====`` header).
        self._log_action: dict[str, str] = {}
        loaded = False
        if store is not None:
            loaded = store.load(self.state, self.logs, now=trio.current_time())
            store.attach(self.state, self.logs)
        self.scheduler = FarmScheduler(
            self.state,
            SchedulingConfig(
                pipeline_depth=self.config.pipeline_depth,
                pipeline_seconds=self.config.pipeline_seconds,
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
        self.default_farm_id: str
        self.default_fleet_id: str
        self.default_queue_id: str
        defaults = store.kv("meta").get("defaults") if loaded and store is not None else None
        #: Whether the farm was loaded from its store (its defaults exist already).
        self.restored = defaults is not None
        if defaults is not None:
            assert store is not None
            self.default_farm_id, self.default_fleet_id, self.default_queue_id = defaults
            self._issued_keys = store.kv("issued_keys")
            return
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
        if store is not None:
            store.put_kv("meta", "defaults", (farm.farm_id, fleet.fleet_id, queue.queue_id))

    # ------------------------------------------------------------ lookups

    def _session_log_events(self, group: str, stream: str, messages: list[str]) -> None:
        """Keep what a farmhand worker's session log says each action cost with the
        action (``SessionAction.usage``), so a farm user sees it with the action."""
        session = self.state.sessions.get(stream)
        if session is None or session.log_group_name != group:
            return
        for message in messages:
            header = _HEADER.match(message)
            if header is not None:
                self._log_action[stream] = header.group(1)
                continue
            usage = usage_from_log(message)
            action_id = self._log_action.get(stream)
            if usage is not None and action_id is not None:
                action = self.state.actions.get(action_id)
                if action is not None and action.session is session:
                    action.usage = usage

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

    def worker(self, params: Mapping[str, Any]) -> WorkerRecord:
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

    def _check_task_quotas(self, spec: JobSpec) -> None:
        """Deadline Cloud's "Tasks per step" and "Tasks per job" quotas (see ``FarmConfig``)."""
        total = 0
        for step in spec.steps:
            count = step.task_count
            total += count
            if count > self.config.max_tasks_per_step:
                raise _quota_exceeded(
                    f"Step {step.name!r} has {count:,} tasks; the quota "
                    f"'Tasks per step' allows {self.config.max_tasks_per_step:,}.",
                    "L-3DE82FE6",
                )
        if total > self.config.max_tasks_per_job:
            raise _quota_exceeded(
                f"The job has {total:,} tasks; the quota 'Tasks per job' allows "
                f"{self.config.max_tasks_per_job:,}.",
                "L-CF66A041",
            )

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
        decoded: JobTemplate | None = None,
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
        have ended, what is left of it is canceled. ``decoded``: the template already
        parsed (``decode_job``), as the farm's app does in a worker thread.
        """
        if attachments is not None:
            _check_attachments(queue, attachments)
        queue_environments = queue.ordered_environments()
        spec = build_job(
            template,
            template_type,
            parameters or {},
            queue_environments=[env.decoded for env in queue_environments],
            decoded=decoded,
        )
        spec = select_steps_and_tasks(spec, steps, tasks)
        self._check_task_quotas(spec)
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

    def sweep(self) -> list[WorkerRecord]:
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


def _quota_exceeded(message: str, quota_code: str) -> ApiError:
    return ApiError(
        "ServiceQuotaExceededException",
        message,
        reason="SERVICE_QUOTA_EXCEEDED_EXCEPTION",
        resourceType="task",
        serviceCode="deadline",
        quotaCode=quota_code,
    )


_HEADER = re.compile(r"^==== \S+ .*\((sessionaction-[0-9a-f]+-\d+)\) ====$")
_USAGE_PREFIX = "[farmhand] usage: "
_USAGE_FIELDS = (
    ("wall_seconds", re.compile(r"\bwall ([0-9.]+) s\b"), 1),
    ("cpu_user_seconds", re.compile(r"\bCPU ([0-9.]+) s user\b"), 1),
    ("cpu_system_seconds", re.compile(r"\+ ([0-9.]+) s system\b"), 1),
    ("peak_rss_bytes", re.compile(r"(?<!GPU )\bpeak memory ([0-9.]+) MiB"), 2**20),
    ("peak_gpu_bytes", re.compile(r"\bpeak GPU memory ([0-9.]+) MiB"), 2**20),
)


def usage_from_log(line: str) -> dict[str, float] | None:
    """A farmhand worker's ``[farmhand] usage: wall 1.2 s, CPU ...`` session log line,
    as numbers (``None``: not such a line)."""
    if not line.startswith(_USAGE_PREFIX):
        return None
    found: dict[str, float] = {}
    for name, pattern, scale in _USAGE_FIELDS:
        match = pattern.search(line)
        if match:
            found[name] = float(match.group(1)) * scale
    return found or None
