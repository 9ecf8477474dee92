"""What decides whether work may run: fleets' capabilities, associations, budgets, limits.

- **Host requirements and fleets.** A step whose host requirements no fleet that
  serves its queue can meet (judged from the fleets' configured worker
  capabilities) is ``NOT_COMPATIBLE``, as on the service: its waiting tasks get
  that status, the step's and job's ``lifecycleStatusMessage`` say why, and the
  farm logs it. When fleets or associations change, or the job is requeued, the
  farm looks again and compatible work goes back to ``READY``.
- **Queue-fleet associations.** A queue with associations is served only by
  the fleets associated ``ACTIVE``; a queue with none (one made by CreateQueue
  before any CreateQueueFleetAssociation) by every fleet of its farm, so that a
  farm made of a few calls runs work. The default queue and fleet are associated.
- **Budgets.** A budget's usage is the worker time of its queue's task runs
  within its schedule, at ``DOLLARS_PER_WORKER_HOUR`` times the farm's cost
  scale factor. At an action's threshold the queue stops scheduling new sessions
  (``queueStoppedAt``); ``STOP_SCHEDULING_AND_CANCEL_TASKS`` also cancels its work.
- **Limits.** A step that requires an amount named by a limit of its farm runs
  only in a queue associated ``ACTIVE`` with that limit, and at most
  ``maxCount`` such task runs are active at once in the farm (``-1``: no cap).
  Limit amounts are not worker capabilities: they are left out of matching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ._adminrecords import Budget, Limit, QueueFleetAssociation
from ._farmbase import CREATED_BY, FarmBase, log
from ._farmscheduler import utcnow
from ._jobs import worker_satisfies
from ._records import ACTIVE_TASK_STATUSES, Fleet, Job, Queue, Step, WorkerRecord

DOLLARS_PER_WORKER_HOUR = 1.0
_UNLIMITED = float("inf")
#: Amount names a fleet's ``workerCapabilities`` range, by configuration key.
_FLEET_AMOUNTS = {
    "amount.worker.vcpu": "vCpuCount",
    "amount.worker.memory": "memoryMiB",
    "amount.worker.gpu": "acceleratorCount",
    "amount.worker.gpu.memory": "acceleratorTotalMemoryMiB",
    "amount.worker.disk.scratch": "rootEbsVolume",
}


def _fleet_capabilities(configuration: Mapping[str, Any]) -> Mapping[str, Any]:
    managed = configuration.get("customerManaged") or {}
    if managed:
        return managed.get("workerCapabilities") or {}
    ec2 = configuration.get("serviceManagedEc2") or {}
    return ec2.get("instanceCapabilities") or {}


def _amount_range(capabilities: Mapping[str, Any], name: str) -> tuple[float, float] | None:
    """The range of an amount the fleet's workers can have (``None``: they never have it)."""
    key = _FLEET_AMOUNTS.get(name)
    if key == "rootEbsVolume":
        return (0.0, _UNLIMITED)  # scratch disk: not described by the fleet
    if key is not None:
        found = capabilities.get(key)
        if found is None and key in ("acceleratorCount", "acceleratorTotalMemoryMiB"):
            accelerators = capabilities.get("acceleratorCapabilities") or {}
            found = accelerators.get("count") if key == "acceleratorCount" else None
        if found is None:
            return (0.0, 0.0) if key.startswith("accelerator") else (0.0, _UNLIMITED)
        return (float(found.get("min", 0)), float(found.get("max", _UNLIMITED)))
    for custom in capabilities.get("customAmounts") or ():
        if custom.get("name") == name:
            return (float(custom.get("min", 0)), float(custom.get("max", _UNLIMITED)))
    return None


def _attribute_values(capabilities: Mapping[str, Any], name: str) -> set[str] | None:
    if name == "attr.worker.os.family":
        family = capabilities.get("osFamily")
        return {family.lower()} if family else None
    if name == "attr.worker.cpu.arch":
        arch = capabilities.get("cpuArchitectureType")
        return {arch.lower()} if arch else None
    for custom in capabilities.get("customAttributes") or ():
        if custom.get("name") == name:
            return {str(v).lower() for v in custom.get("values") or ()}
    return None


def fleet_mismatch(requirements: Mapping[str, Any], fleet: Fleet) -> str | None:
    """Why the fleet's workers can never meet the requirements (``None``: they can)."""
    capabilities = _fleet_capabilities(fleet.configuration)
    for amount in requirements.get("amounts") or ():
        name = amount["name"]
        span = _amount_range(capabilities, name)
        if span is None:
            return f"fleet {fleet.fleet_id} has no {name}"
        low, high = amount.get("min", 0), amount.get("max", _UNLIMITED)
        if span[1] < low or span[0] > high:
            return f"fleet {fleet.fleet_id} has {name} {span[0]:g}-{span[1]:g}"
    for attribute in requirements.get("attributes") or ():
        name = attribute["name"]
        values = _attribute_values(capabilities, name)
        if values is None:
            return f"fleet {fleet.fleet_id} has no {name}"
        any_of = {v.lower() for v in attribute.get("anyOf") or ()}
        all_of = {v.lower() for v in attribute.get("allOf") or ()}
        if (any_of and not values & any_of) or (all_of and not all_of <= values):
            return f"fleet {fleet.fleet_id} has {name} {sorted(values)}"
    return None


class SchedulingPolicy(FarmBase):
    """Compatibility, associations, budgets and limits (see the module's doc)."""

    def install_policy(self, *, associate_defaults: bool = True) -> None:
        """Hook the policy into the scheduler; associate the default queue and fleet
        (a new farm: one restored from its store has what its users left of them)."""
        self.scheduler.admits = self.admits
        if associate_defaults:
            self.associate(self.default_farm_id, self.default_queue_id, self.default_fleet_id)

    def associate(self, farm_id: str, queue_id: str, fleet_id: str) -> QueueFleetAssociation:
        association = QueueFleetAssociation(
            farm_id=farm_id,
            queue_id=queue_id,
            fleet_id=fleet_id,
            created_at=utcnow(),
            created_by=CREATED_BY,
        )
        self.state.admin.queue_fleets[(queue_id, fleet_id)] = association
        return association

    # ------------------------------------------------------------ fleets of a queue

    def serving_fleets(self, queue: Queue) -> list[Fleet]:
        """The fleets that may run the queue's work."""
        associations = [
            a for (q, _), a in self.state.admin.queue_fleets.items() if q == queue.queue_id
        ]
        if not associations:
            return [f for f in self.state.fleets.values() if f.farm_id == queue.farm_id]
        return [
            self.state.fleets[a.fleet_id]
            for a in associations
            if a.status == "ACTIVE" and a.fleet_id in self.state.fleets
        ]

    def _serves(self, queue: Queue, fleet_id: str) -> bool:
        association = self.state.admin.queue_fleets.get((queue.queue_id, fleet_id))
        if association is not None:
            return association.status == "ACTIVE"
        return not any(q == queue.queue_id for q, _ in self.state.admin.queue_fleets)

    # ------------------------------------------------------------ requirements

    def _limits_of(self, farm_id: str) -> dict[str, Limit]:
        return {
            limit.amount_requirement_name: limit
            for limit in self.state.admin.limits.values()
            if limit.farm_id == farm_id
        }

    def worker_requirements(self, step: Step) -> Mapping[str, Any] | None:
        """The step's host requirements less the amounts that limits count."""
        requirements = step.spec.host_requirements
        if not requirements or not self.state.admin.limits:
            return requirements
        limits = self._limits_of(step.job.farm_id)
        return {
            **requirements,
            "amounts": [a for a in requirements.get("amounts") or () if a["name"] not in limits],
        }

    def incompatibility(self, step: Step) -> str | None:
        """Why no fleet can run the step (``None``: some fleet can)."""
        if not self.config.match_host_requirements:
            return None
        requirements = self.worker_requirements(step)
        if not requirements:
            return None
        fleets = self.serving_fleets(step.job.queue)
        if not fleets:
            return None  # no fleet at all yet: the work waits for one
        reasons = [fleet_mismatch(requirements, fleet) for fleet in fleets]
        if all(reasons):
            return (
                f"Step {step.name!r} requires host capabilities that no fleet of queue "
                f"{step.job.queue_id} has: " + "; ".join(r for r in reasons if r)
            )
        return None

    def check_compatibility(self, jobs: Sequence[Job] | None = None) -> None:
        """Mark work no fleet can run ``NOT_COMPATIBLE``; give back what now can run."""
        for job in self.state.jobs.values() if jobs is None else jobs:
            if job.lifecycle_status == "ARCHIVED" or job.failed:
                continue
            messages = []
            for step in job.steps:
                reason = self.incompatibility(step)
                if reason != step.incompatible_reason:
                    step.incompatible_reason = reason
                    step.updated_at = utcnow()
                    if reason:
                        log.warning(
                            "mockfarm.step_not_compatible",
                            job_id=job.job_id,
                            step_id=step.step_id,
                            reason=reason,
                        )
                for task in step.tasks:
                    if reason and task.status in ("READY", "PENDING"):
                        self.scheduler.set_task_status(task, "NOT_COMPATIBLE")
                    elif not reason and task.status == "NOT_COMPATIBLE":
                        self.scheduler.make_runnable(task)
                if reason:
                    messages.append(reason)
            job.lifecycle_message = " ".join(messages)

    def create_job(self, queue: Queue, template: str, **options: Any) -> Job:
        job = super().create_job(queue, template, **options)
        self.check_compatibility([job])
        return job

    def retarget_job(self, job: Job, target: str) -> None:
        super().retarget_job(job, target)
        self.check_compatibility([job])

    # ------------------------------------------------------------ budgets and limits

    def budget_usage(self, budget: Budget) -> float:
        """Dollars spent by the budget's queue within its schedule."""
        fixed = budget.schedule.get("fixed") or {}
        start: datetime | None = fixed.get("startTime")
        end: datetime | None = fixed.get("endTime")
        farm = self.state.farms.get(budget.farm_id)
        scale = farm.cost_scale_factor if farm and farm.cost_scale_factor is not None else 1.0
        now = utcnow()
        seconds = 0.0
        for job in self.state.jobs.values():
            if job.queue_id != budget.queue_id:
                continue
            for session in job.sessions:
                for action in session.actions:
                    if action.kind != "taskRun" or action.started_at is None:
                        continue
                    began = max(action.started_at, start) if start else action.started_at
                    ended = action.ended_at or now
                    ended = min(ended, end) if end else ended
                    seconds += max(0.0, (ended - began).total_seconds())
        return round(seconds / 3600 * DOLLARS_PER_WORKER_HOUR * scale, 6)

    def _queue_stopped(self, queue: Queue) -> bool:
        """Whether a budget stops the queue's scheduling (recording when it first did)."""
        stopped = False
        for budget in self.state.admin.budgets.values():
            if budget.queue_id != queue.queue_id or budget.status != "ACTIVE":
                continue
            if budget.queue_stopped_at is not None:
                stopped = True
                continue
            usage = self.budget_usage(budget)
            for action in budget.actions:
                threshold = budget.approximate_dollar_limit * action["thresholdPercentage"] / 100
                if usage >= threshold:
                    budget.queue_stopped_at = utcnow()
                    log.warning("mockfarm.budget_reached", budget_id=budget.budget_id, usage=usage)
                    if action["type"] == "STOP_SCHEDULING_AND_CANCEL_TASKS":
                        for job in list(self.state.jobs.values()):
                            if job.queue is queue:
                                for session in job.sessions:
                                    self.scheduler.cancel_session_work(session)
                    stopped = True
                    break
        return stopped

    def limit_usage(self, limit: Limit) -> int:
        """Active task runs in the farm whose steps require the limit's amount."""
        count = 0
        for job in self.state.jobs.values():
            if job.farm_id != limit.farm_id:
                continue
            for step in job.steps:
                requirements = step.spec.host_requirements or {}
                if any(
                    a["name"] == limit.amount_requirement_name
                    for a in requirements.get("amounts") or ()
                ):
                    count += sum(step.counts.get(s, 0) for s in ACTIVE_TASK_STATUSES)
        return count

    def _within_limits(self, step: Step) -> bool:
        requirements = step.spec.host_requirements or {}
        names = {a["name"] for a in requirements.get("amounts") or ()}
        for limit in self._limits_of(step.job.farm_id).values():
            if limit.amount_requirement_name not in names:
                continue
            association = self.state.admin.queue_limits.get((step.job.queue_id, limit.limit_id))
            if association is None or association.status != "ACTIVE":
                return False
            if limit.max_count >= 0 and self.limit_usage(limit) >= limit.max_count:
                return False
        return True

    def admits(self, worker: WorkerRecord, step: Step) -> bool:
        job = step.job
        queue = job.queue
        admin = self.state.admin
        if admin.queue_fleets and not self._serves(queue, worker.fleet_id):
            return False
        if self.config.match_host_requirements and not worker_satisfies(
            self.worker_requirements(step), worker.capabilities
        ):
            return False
        if admin.budgets and self._queue_stopped(queue):
            return False
        return not (admin.limits and not self._within_limits(step))
