"""The farm's records: farms, fleets, queues, jobs, steps, tasks, workers, sessions.

These are plain mutable records owned by ``Farm`` (``_farm.py``), which is the
only thing that changes them. Tests read them through ``MockFarm.state``.
Timestamps returned on the wire are wall-clock UTC (``datetime``); durations the
farm acts on (heartbeats, credential lifetimes) use ``trio.current_time()``.

Vocabulary, as the service's:

- task run status: ``PENDING`` (waiting on dependencies), ``READY``,
  ``ASSIGNED`` (in a worker's session, not started), ``RUNNING`` (the worker
  reported it started), ``SUSPENDED``, ``CANCELED``, ``FAILED``, ``SUCCEEDED``;
- session action status: ``ASSIGNED``, ``RUNNING``, ``CANCELING`` and the
  completed states the worker reports (``SUCCEEDED``, ``FAILED``, ``CANCELED``,
  ``INTERRUPTED``, ``NEVER_ATTEMPTED``);
- worker status: ``CREATED``, ``STARTED``, ``STOPPING``, ``STOPPED``,
  ``NOT_RESPONDING`` (shown as ``IDLE``/``RUNNING`` while started);
- session lifecycle: ``STARTED`` then ``ENDED``.
"""

from __future__ import annotations

import heapq
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

from ._adminrecords import AdminState
from ._jobs import EnvironmentSpec, StepSpec

TASK_RUN_STATUSES = (
    "PENDING",
    "READY",
    "ASSIGNED",
    "STARTING",
    "SCHEDULED",
    "INTERRUPTING",
    "RUNNING",
    "SUSPENDED",
    "CANCELED",
    "FAILED",
    "SUCCEEDED",
    "NOT_COMPATIBLE",
)
#: A step's or job's status is the first of these that any of its tasks has.
_ROLLUP_ORDER = (
    "RUNNING",
    "INTERRUPTING",
    "STARTING",
    "SCHEDULED",
    "ASSIGNED",
    "READY",
    "FAILED",
    "CANCELED",
    "SUSPENDED",
    "NOT_COMPATIBLE",
    "PENDING",
    "SUCCEEDED",
)
ACTIVE_TASK_STATUSES = frozenset({"ASSIGNED", "STARTING", "SCHEDULED", "INTERRUPTING", "RUNNING"})
TERMINAL_TASK_STATUSES = frozenset(
    {"SUCCEEDED", "FAILED", "CANCELED", "SUSPENDED", "NOT_COMPATIBLE"}
)
COMPLETED_ACTION_STATUSES = frozenset(
    {"SUCCEEDED", "FAILED", "CANCELED", "INTERRUPTED", "NEVER_ATTEMPTED"}
)


#: Field metadata of a record field the store (``_store``) does not keep: it is rebuilt
#: from the stored fields when the farm is loaded (``FarmState.rebuild``) or, like a
#: heartbeat time, means nothing to another process. Assigning it does not mark the
#: record changed. A stored field must be assigned, not changed in place (the store
#: sees assignments), or be a plain value in a ``FarmState`` table.
NOT_STORED = {"stored": False}
#: Field metadata of a list or dict of records that point back at their holder: the
#: records are saved on their own (new ones found here), the field is not stored, and
#: ``FarmState.rebuild`` refills it from the records (a step's tasks: a big step is
#: then not re-pickled whole whenever one of its dates changes).
CHILDREN = {"stored": False, "children": True}


def new_hex() -> str:
    return secrets.token_hex(16)


def rollup(counts: Counter[str]) -> str:
    for status in _ROLLUP_ORDER:
        if counts.get(status):
            return status
    return "SUCCEEDED"


@attrs.define(eq=False)
class FarmRecord:
    farm_id: str
    display_name: str
    description: str | None
    created_at: datetime
    kms_key_arn: str | None = None
    cost_scale_factor: float | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None


@attrs.define(eq=False)
class Fleet:
    fleet_id: str
    farm_id: str
    display_name: str
    description: str | None
    role_arn: str
    min_worker_count: int
    max_worker_count: int
    configuration: dict[str, Any]
    created_at: datetime
    host_configuration: dict[str, Any] | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None


@attrs.define(eq=False)
class QueueEnvironment:
    queue_environment_id: str
    queue_id: str
    name: str
    priority: int
    template_type: str
    template: str
    decoded: Any
    spec: EnvironmentSpec


@attrs.define(eq=False)
class Queue:
    queue_id: str
    farm_id: str
    display_name: str
    description: str | None
    role_arn: str | None
    job_run_as_user: dict[str, Any]
    job_attachment_settings: dict[str, Any] | None
    created_at: datetime
    default_budget_action: str = "NONE"
    #: Rebuilt from ``FarmState.queue_environments`` on load.
    environments: dict[str, QueueEnvironment] = attrs.field(factory=dict, metadata=NOT_STORED)
    allowed_storage_profile_ids: list[str] = attrs.Factory(list)
    required_file_system_location_names: list[str] = attrs.Factory(list)
    updated_at: datetime | None = None
    updated_by: str | None = None

    def ordered_environments(self) -> list[QueueEnvironment]:
        return sorted(self.environments.values(), key=lambda e: (e.priority, e.name))


@attrs.define(eq=False)
class Task:
    task_id: str
    step: Step
    index: int
    created_at: datetime
    status: str = "READY"
    target_status: str | None = None
    failure_retry_count: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime | None = None
    #: The session action that last ran (or runs) this task.
    latest_action: SessionAction | None = None

    @property
    def parameters(self) -> dict[str, dict[str, str]]:
        """Wire form, computed from the step's parameter space (tasks stay small)."""
        return self.step.spec.task_parameters(self.index)


@attrs.define(eq=False)
class Step:
    step_id: str
    job: Job
    spec: StepSpec
    created_at: datetime
    tasks: list[Task] = attrs.field(factory=list, metadata=CHILDREN)
    dependencies: list[Step] = attrs.Factory(list)
    consumers: list[Step] = attrs.Factory(list)
    counts: Counter[str] = attrs.field(factory=Counter, metadata=NOT_STORED)
    target_status: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime | None = None
    #: Why no fleet can run the step (its tasks are then ``NOT_COMPATIBLE``).
    incompatible_reason: str | None = None
    #: Indexes of READY tasks (a heap; stale entries are skipped when popped).
    _ready: list[int] = attrs.field(factory=list, metadata=NOT_STORED)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def status(self) -> str:
        return rollup(self.counts)

    @property
    def succeeded(self) -> bool:
        return self.counts.get("SUCCEEDED", 0) == len(self.tasks)

    def push_ready(self, task: Task) -> None:
        heapq.heappush(self._ready, task.index)

    def peek_ready(self) -> Task | None:
        while self._ready:
            task = self.tasks[self._ready[0]]
            if task.status == "READY":
                return task
            heapq.heappop(self._ready)
        return None

    def environment_id(self, environment: EnvironmentSpec) -> str:
        return f"STEP:{self.step_id}:{environment.name}"


@attrs.define(eq=False)
class Job:
    job_id: str
    queue: Queue
    spec_name: str
    name: str
    description: str | None
    priority: int
    parameters: dict[str, dict[str, Any]]
    extensions: tuple[str, ...]
    template: str
    template_type: str | None
    created_at: datetime
    created_by: str
    max_failed_tasks_count: int
    max_retries_per_task: int
    max_worker_count: int | None
    attachments: dict[str, Any] | None
    storage_profile_id: str | None
    #: ``jobDetails.pathMappingRules``, as a storage profile would give them.
    path_mapping_rules: list[dict[str, str]] = attrs.Factory(list)
    #: The most sessions the job ever gets (``None``: no limit).
    session_limit: int | None = None
    #: ``(environment id, spec)`` for queue environments then job environments.
    environments: list[tuple[str, EnvironmentSpec]] = attrs.Factory(list)
    steps: list[Step] = attrs.Factory(list)
    lifecycle_status: str = "CREATE_COMPLETE"
    #: ``lifecycleStatusMessage``: why steps are ``NOT_COMPATIBLE``, if any is.
    lifecycle_message: str = ""
    target_status: str | None = None
    #: Failed task runs so far (compared with ``max_failed_tasks_count``).
    failure_count: int = 0
    #: The job failed (too many failures); nothing more is assigned.
    failed: bool = False
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None
    sessions: list[Session] = attrs.field(factory=list, metadata=NOT_STORED)
    #: Sessions of this job that are not ended.
    active_sessions: int = attrs.field(default=0, metadata=NOT_STORED)
    #: Task counts by run status, kept up to date by the scheduler.
    task_counts: Counter[str] = attrs.field(factory=Counter, metadata=NOT_STORED)

    @property
    def queue_id(self) -> str:
        return self.queue.queue_id

    @property
    def farm_id(self) -> str:
        return self.queue.farm_id

    @property
    def log_group_name(self) -> str:
        return f"/aws/deadline/{self.queue.farm_id}/{self.queue.queue_id}"

    @property
    def status(self) -> str:
        return rollup(self.task_counts)

    def retry_count(self) -> int:
        return sum(task.failure_retry_count for step in self.steps for task in step.tasks)


@attrs.define(eq=False)
class SessionAction:
    action_id: str
    session: Session
    index: int
    #: ``envEnter``, ``envExit``, ``taskRun`` or ``syncInputJobAttachments``.
    kind: str
    environment_id: str | None = None
    task: Task | None = None
    #: ``syncInputJobAttachments`` of a step's dependencies: that step.
    step_id: str | None = None
    status: str = "ASSIGNED"
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker_updated_at: datetime | None = None
    progress_percent: float | None = None
    progress_message: str | None = None
    process_exit_code: int | None = None
    manifests: list[dict[str, Any]] | None = None
    #: What it cost, as a farmhand worker's session log said (``usage_from_log``):
    #: ``wall_seconds``, ``cpu_user_seconds``, ``cpu_system_seconds``,
    #: ``peak_rss_bytes``, ``peak_gpu_bytes``, those it gave.
    usage: dict[str, float] | None = None
    cancel_requested: bool = False
    #: The ``AssignedSessionAction`` wire form, built once.
    wire: Mapping[str, Any] = attrs.Factory(dict)

    @property
    def completed(self) -> bool:
        return self.status in COMPLETED_ACTION_STATUSES

    def definition(self) -> dict[str, Any]:
        if self.kind == "taskRun":
            assert self.task is not None
            return {
                "taskRun": {
                    "stepId": self.task.step.step_id,
                    "taskId": self.task.task_id,
                    "parameters": self.task.parameters,
                }
            }
        if self.kind == "syncInputJobAttachments":
            if self.step_id is not None:
                return {"syncInputJobAttachments": {"stepId": self.step_id}}
            return {"syncInputJobAttachments": {}}
        return {self.kind: {"environmentId": self.environment_id}}


@attrs.define(eq=False)
class Session:
    session_id: str
    worker: WorkerRecord
    job: Job
    started_at: datetime
    log_group_name: str
    log_stream_name: str
    actions: list[SessionAction] = attrs.field(factory=list, metadata=NOT_STORED)
    #: Actions not completed yet, in order: what ``assignedSessions`` lists.
    open: list[SessionAction] = attrs.field(factory=list, metadata=NOT_STORED)
    #: Entered (enter assigned, exit not yet assigned) environments, outermost first.
    #: Replaced, never changed in place, so that the store sees every change.
    environment_stack: tuple[tuple[str, SessionAction], ...] = ()
    #: The step whose step environments are on the stack.
    current_step: Step | None = None
    #: No more tasks: the remaining work is environment exits.
    winding_down: bool = False
    lifecycle_status: str = "STARTED"
    #: ``logConfiguration`` as sent on the wire (serialized once).
    wire_log: Mapping[str, Any] = attrs.Factory(dict)
    ended_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def hex(self) -> str:
        return self.session_id.removeprefix("session-")

    def next_action_id(self) -> tuple[str, int]:
        """The id and index of the next action (actions are appended as they are made)."""
        index = len(self.actions)
        return f"sessionaction-{self.hex}-{index}", index

    def log_configuration(self) -> dict[str, Any]:
        return {
            "logDriver": "awslogs",
            "options": {"logGroupName": self.log_group_name, "logStreamName": self.log_stream_name},
            "parameters": {"interval": "15"},
        }


@attrs.define(eq=False)
class WorkerRecord:
    worker_id: str
    farm_id: str
    fleet_id: str
    created_at: datetime
    host_properties: dict[str, Any] | None
    status: str = "CREATED"
    capabilities: dict[str, Any] | None = None
    updated_at: datetime | None = None
    #: ``trio.current_time()`` of the last call that counts as a heartbeat (a restarted
    #: farm starts every worker's clock afresh).
    last_seen: float = attrs.field(default=0.0, metadata=NOT_STORED)
    #: Sessions not ended.
    sessions: dict[str, Session] = attrs.field(factory=dict, metadata=NOT_STORED)
    #: Jobs this worker has had sessions for (it may fetch their entities).
    job_ids: set[str] = attrs.field(factory=set, metadata=NOT_STORED)
    #: The farm wants this worker to stop: no new work, then ``desiredWorkerStatus``.
    stop_requested: bool = False
    #: UpdateWorkerSchedule calls since this farm process started.
    schedule_calls: int = attrs.field(default=0, metadata=NOT_STORED)

    @property
    def log_group_name(self) -> str:
        return f"/aws/deadline/{self.farm_id}/{self.fleet_id}"

    def log_configuration(self) -> dict[str, Any]:
        return {
            "logDriver": "awslogs",
            "options": {"logGroupName": self.log_group_name, "logStreamName": self.worker_id},
            "parameters": {"interval": "15"},
        }

    @property
    def api_status(self) -> str:
        """The status the API shows: a started worker is ``IDLE`` or ``RUNNING``."""
        if self.status == "STARTED":
            return "RUNNING" if self.sessions else "IDLE"
        return self.status


@attrs.frozen
class IgnoredUpdate:
    """A reported session action the farm did not apply (unknown, or another worker's)."""

    worker_id: str
    action_id: str
    reason: str


@attrs.define(eq=False)
class FarmState:
    """Everything the farm knows, by id."""

    farms: dict[str, FarmRecord] = attrs.Factory(dict)
    fleets: dict[str, Fleet] = attrs.Factory(dict)
    queues: dict[str, Queue] = attrs.Factory(dict)
    queue_environments: dict[str, QueueEnvironment] = attrs.Factory(dict)
    jobs: dict[str, Job] = attrs.Factory(dict)
    steps: dict[str, Step] = attrs.Factory(dict)
    workers: dict[str, WorkerRecord] = attrs.Factory(dict)
    sessions: dict[str, Session] = attrs.Factory(dict)
    actions: dict[str, SessionAction] = attrs.Factory(dict)
    #: Diagnostics for tests; not stored.
    ignored_updates: list[IgnoredUpdate] = attrs.field(factory=list, metadata=NOT_STORED)
    #: Budgets, limits, storage profiles, members, associations, monitors, tags.
    admin: AdminState = attrs.Factory(AdminState)

    def rebuild(self, now: float, loaded: Iterable[Any]) -> None:
        """Recompute what records do not store (``NOT_STORED``) from what they do.

        Called once a persistent farm's records (``loaded``: all of them, in the
        order they were first saved) are loaded; ``now`` is the ``trio.current_time()``
        that every worker's heartbeat clock restarts from.
        """
        for record in loaded:
            if isinstance(record, Task):
                record.step.tasks.append(record)
        for environment in self.queue_environments.values():
            queue = self.queues.get(environment.queue_id)
            if queue is not None:
                queue.environments[environment.queue_environment_id] = environment
        for step in self.steps.values():
            step.tasks.sort(key=lambda task: task.index)
            step.counts = Counter(task.status for task in step.tasks)
            step._ready = [task.index for task in step.tasks if task.status == "READY"]
        for job in self.jobs.values():
            job.task_counts = Counter()
            for step in job.steps:
                job.task_counts.update(step.counts)
        for worker in self.workers.values():
            worker.last_seen = now
        for action in self.actions.values():
            action.session.actions.append(action)
        for session in self.sessions.values():
            session.actions.sort(key=lambda action: action.index)
            session.open = [action for action in session.actions if not action.completed]
            job = session.job
            job.sessions.append(session)
            session.worker.job_ids.add(job.job_id)
            if session.lifecycle_status != "ENDED":
                job.active_sessions += 1
                session.worker.sessions[session.session_id] = session

    def task(self, task_id: str) -> Task | None:
        hex_, _, index = task_id.removeprefix("task-").rpartition("-")
        step = self.steps.get(f"step-{hex_}")
        if step is None or not index.isdigit() or int(index) >= len(step.tasks):
            return None
        return step.tasks[int(index)]


#: Record classes whose stored fields are only ever assigned, never changed in place:
#: the store watches their assignments (at no cost to an in-memory farm). A record of
#: any other attrs class is stored too, and compared whole at every commit instead.
ASSIGNED_ONLY: frozenset[type] = frozenset(
    {
        FarmRecord,
        Fleet,
        QueueEnvironment,
        Queue,
        Task,
        Step,
        Job,
        SessionAction,
        Session,
        WorkerRecord,
    }
)
