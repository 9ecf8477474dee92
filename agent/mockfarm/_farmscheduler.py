"""Scheduling as the service does it: sessions, session actions, reports, requeues.

A worker that calls ``UpdateWorkerSchedule`` gets, per session, the ordered list
of the session's actions that are not completed yet: the environment enters
(queue environments by priority, then job environments, then the step's
environments), task runs, and the exits in reverse order. Up to
``pipeline_depth`` task runs are assigned ahead so the worker never waits for
its next task.

Reports (``updatedSessionActions``) are applied once: a report for an action
that is already completed changes nothing. A task run that

- ``SUCCEEDED`` makes the task ``SUCCEEDED``;
- ``FAILED`` counts a failure; the task is retried (``READY`` again, with
  ``failureRetryCount`` + 1) until ``maxRetriesPerTask``, then it is ``FAILED``;
  when a job reaches ``maxFailedTasksCount`` failures it fails: nothing more is
  assigned and its remaining tasks are canceled;
- ends ``CANCELED``, ``INTERRUPTED`` or ``NEVER_ATTEMPTED`` goes back to
  ``READY`` (or to the status a user asked for with UpdateJob/UpdateTask).

Any action that does not succeed ends the session's useful life, as the worker
contract says: the worker skips (``NEVER_ATTEMPTED``) the rest of its queue
except environment exits, so the farm withdraws those actions itself, requeues
their tasks, and winds the session down. A winding-down session, once nothing
but exits is left, gets the exits of the environments it entered, and then ends
(it disappears from ``assignedSessions``).

Cancelling (a job, a step or a task) puts the running actions in
``cancelSessionActions`` of their worker's next responses until the worker
reports them completed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import structlog

from ._apierrors import validation
from ._jobs import worker_satisfies
from ._records import (
    ACTIVE_TASK_STATUSES,
    FarmState,
    IgnoredUpdate,
    Job,
    Session,
    SessionAction,
    Step,
    Task,
    WorkerRecord,
    new_hex,
    rollup,
)

log = structlog.get_logger("farmhand.mockfarm")

_ENDED_ROLLUPS = frozenset({"SUCCEEDED", "FAILED", "CANCELED"})
#: A completed action's wire form is never sent again; drop it to keep memory small.
_RELEASED: Mapping[str, Any] = {}


#: The most task runs assigned ahead in one session, however quick they are.
MAX_PIPELINE_DEPTH = 64
#: How much the latest task run weighs in a session's running mean of run times.
_RUN_WEIGHT = 0.25


def utcnow() -> datetime:
    return datetime.now(UTC)


@attrs.frozen
class SchedulingConfig:
    """The knobs of scheduling (a part of ``FarmConfig``)."""

    pipeline_depth: int = 2
    #: Seconds of work to keep assigned ahead, by the session's recent task runs
    #: (``FarmConfig.pipeline_seconds``; 0: ``pipeline_depth`` alone).
    pipeline_seconds: float = 0.0
    max_sessions_per_worker: int = 1
    match_host_requirements: bool = True


class FarmScheduler:
    """Assigns work to workers and applies what they report."""

    def __init__(
        self,
        state: FarmState,
        config: SchedulingConfig,
        *,
        open_log_stream: Callable[[str, str], Any],
        serialize: Callable[[str, Mapping[str, Any]], Mapping[str, Any]],
    ) -> None:
        self.state = state
        self.config = config
        self._open_log_stream = open_log_stream
        #: Serializes a structure of a named output shape once (``ServiceCodec.serialize_shape``).
        self._serialize = serialize
        #: Whether a worker may get a task of a step: its host requirements by default;
        #: the farm adds queue-fleet associations, budgets and limits (``_policy``).
        self.admits: Callable[[WorkerRecord, Step], bool] = self.satisfies
        #: Session id -> the running mean of its task runs' seconds (``pipeline_seconds``).
        self._run_seconds: dict[str, float] = {}

    # ------------------------------------------------------------ task status

    def set_task_status(self, task: Task, status: str, *, now: datetime | None = None) -> None:
        old = task.status
        if old == status:
            return
        now = now or utcnow()
        step = task.step
        job = step.job
        step.counts[old] -= 1
        step.counts[status] += 1
        job.task_counts[old] -= 1
        job.task_counts[status] += 1
        task.status = status
        task.updated_at = now
        if status == "READY":
            step.push_ready(task)
        if status == "RUNNING":
            if task.started_at is None:
                task.started_at = now
            if step.started_at is None:
                step.started_at = now
            if job.started_at is None:
                job.started_at = now
        if status in ("SUCCEEDED", "FAILED", "CANCELED"):
            task.ended_at = now
        elif old in ("SUCCEEDED", "FAILED", "CANCELED"):
            task.ended_at = None
        if status in _ENDED_ROLLUPS or old in _ENDED_ROLLUPS:
            step_done = rollup(step.counts) in _ENDED_ROLLUPS
            step.ended_at = (step.ended_at or now) if step_done else None
            job_done = rollup(job.task_counts) in _ENDED_ROLLUPS
            job.ended_at = (job.ended_at or now) if job_done else None
        if status == "SUCCEEDED" and step.succeeded:
            for consumer in step.consumers:
                if all(d.succeeded for d in consumer.dependencies):
                    for waiting in consumer.tasks:
                        if waiting.status == "PENDING":
                            self.set_task_status(waiting, "READY", now=now)

    def make_runnable(self, task: Task) -> None:
        """Back to ``READY`` (or ``PENDING`` while its step's dependencies are not done)."""
        ready = all(d.succeeded for d in task.step.dependencies)
        self.set_task_status(task, "READY" if ready else "PENDING")

    def _apply_target(self, task: Task, target: str) -> None:
        task.target_status = None
        if target in ("READY", "PENDING"):
            task.failure_retry_count = 0
            self.make_runnable(task)
        else:
            self.set_task_status(task, target)

    # ------------------------------------------------------------ user requests

    def retarget_task(self, task: Task, target: str) -> None:
        """UpdateTask/UpdateStep/UpdateJob ``target(Task)RunStatus`` for one task."""
        status = task.status
        if status in ACTIVE_TASK_STATUSES:
            action = task.latest_action
            task.target_status = target
            if action is not None and not action.completed:
                self.request_cancel(action)
            return
        if target in ("READY", "PENDING"):
            if status != "PENDING" or target == "READY":
                task.failure_retry_count = 0
                self.make_runnable(task)
            return
        if status in ("SUCCEEDED", "FAILED", "CANCELED") and target in ("CANCELED", "SUSPENDED"):
            return  # nothing to stop
        self.set_task_status(task, target)

    def request_cancel(self, action: SessionAction) -> None:
        if action.completed or action.cancel_requested:
            return
        action.cancel_requested = True
        action.status = "CANCELING"
        task = action.task
        if task is not None and task.latest_action is action:
            self.set_task_status(task, "INTERRUPTING")

    def fail_job(self, job: Job) -> None:
        """Too many failures: stop assigning and cancel what is left."""
        if job.failed:
            return
        job.failed = True
        log.info("mockfarm.job_failed", job_id=job.job_id, failures=job.failure_count)
        for step in job.steps:
            for task in step.tasks:
                if task.status in ("READY", "PENDING", "SUSPENDED"):
                    self.set_task_status(task, "CANCELED")
                elif task.status in ACTIVE_TASK_STATUSES:
                    self.retarget_task(task, "CANCELED")
        for session in job.sessions:
            self.cancel_session_work(session)

    def cancel_session_work(self, session: Session) -> None:
        """Cancel every open action except exits; the session then winds down."""
        if session.lifecycle_status == "ENDED":
            return
        session.winding_down = True
        for action in session.open:
            if action.kind != "envExit":
                self.request_cancel(action)

    # ------------------------------------------------------------ reports

    def check_updates(self, worker: WorkerRecord, updates: dict[str, dict[str, Any]]) -> None:
        """Reject reports the service rejects, before anything is applied."""
        for action_id, info in updates.items():
            action = self.state.actions.get(action_id)
            if action is None or action.session.worker is not worker:
                continue
            if info.get("completedStatus") == "NEVER_ATTEMPTED" and action.index == 0:
                raise validation(
                    f"Session action {action_id} is the first action of its session and "
                    "cannot be NEVER_ATTEMPTED.",
                    reason="OTHER",
                )

    def apply_updates(self, worker: WorkerRecord, updates: dict[str, dict[str, Any]]) -> None:
        now = utcnow()
        for action_id, info in updates.items():
            action = self.state.actions.get(action_id)
            if action is None:
                self._ignore(worker, action_id, "unknown session action")
                continue
            if action.session.worker is not worker:
                self._ignore(worker, action_id, "the action belongs to another worker")
                continue
            if action.completed:
                continue  # reports are idempotent: the first completed status stands
            self._apply_update(action, info, now)

    def _ignore(self, worker: WorkerRecord, action_id: str, reason: str) -> None:
        self.state.ignored_updates.append(IgnoredUpdate(worker.worker_id, action_id, reason))
        log.warning(
            "mockfarm.update_ignored",
            worker_id=worker.worker_id,
            action_id=action_id,
            reason=reason,
        )

    def _apply_update(self, action: SessionAction, info: dict[str, Any], now: datetime) -> None:
        action.worker_updated_at = info.get("updatedAt") or now
        if "progressPercent" in info:
            action.progress_percent = info["progressPercent"]
        if "progressMessage" in info:
            action.progress_message = info["progressMessage"]
        if "processExitCode" in info:
            action.process_exit_code = info["processExitCode"]
        if "manifests" in info:
            action.manifests = info["manifests"]
        status = info.get("completedStatus")
        if status != "NEVER_ATTEMPTED":
            action.started_at = info.get("startedAt") or action.started_at or now
        task = action.task
        if status is None:
            if action.status == "ASSIGNED":
                action.status = "RUNNING"
            if task is not None and task.latest_action is action and task.status == "ASSIGNED":
                self.set_task_status(task, "RUNNING", now=now)
            return
        if status != "NEVER_ATTEMPTED":
            action.ended_at = info.get("endedAt") or now
        self.complete(action, status, now=now)

    def complete(
        self,
        action: SessionAction,
        status: str,
        *,
        now: datetime | None = None,
        charge_task: bool = False,
    ) -> None:
        """Apply a completed status (reported, or decided by the farm). ``charge_task``:
        the task did not run because its inputs could not be had, which counts as a
        failure of the task (retried, then FAILED), not as work to requeue forever."""
        action.status = status
        action.wire = _RELEASED
        session = action.session
        session.open.remove(action)
        session.updated_at = now or utcnow()
        if action.kind == "taskRun" and action.task is not None:
            if status == "SUCCEEDED" and self.config.pipeline_seconds > 0:
                self._note_run_time(action)
            self._task_run_completed(action.task, action, "FAILED" if charge_task else status)
        if status != "SUCCEEDED":
            self._withdraw_after(session, action)

    def _note_run_time(self, action: SessionAction) -> None:
        started, ended = action.started_at, action.ended_at
        if started is None or ended is None:
            return
        seconds = max((ended - started).total_seconds(), 0.0)
        key = action.session.session_id
        mean = self._run_seconds.get(key)
        self._run_seconds[key] = seconds if mean is None else mean + _RUN_WEIGHT * (seconds - mean)

    def _depth(self, session: Session) -> int:
        """Task runs to keep assigned ahead in ``session`` (see ``SchedulingConfig``)."""
        depth = self.config.pipeline_depth
        mean = self._run_seconds.get(session.session_id)
        if mean is None or self.config.pipeline_seconds <= 0:
            return depth
        by_time = int(self.config.pipeline_seconds / max(mean, 1e-3))
        return max(depth, min(MAX_PIPELINE_DEPTH, by_time))

    def _task_run_completed(self, task: Task, action: SessionAction, status: str) -> None:
        if task.latest_action is not action:
            return  # a stale report: the task has moved on
        job = task.step.job
        started = action.started_at
        if started is not None:
            # A quick task's start may come only with its end: it still started.
            for record in (task, task.step, job):
                if record.started_at is None:
                    record.started_at = started
        if status == "SUCCEEDED":
            task.target_status = None
            self.set_task_status(task, "SUCCEEDED")
            return
        target = task.target_status
        if status == "FAILED":
            job.failure_count += 1
            exhausted = job.failure_count >= job.max_failed_tasks_count
            if target is not None:
                self._apply_target(task, target)
            elif not exhausted and task.failure_retry_count < job.max_retries_per_task:
                task.failure_retry_count += 1
                self.make_runnable(task)
            else:
                self.set_task_status(task, "FAILED")
            if exhausted:
                self.fail_job(job)
            return
        # CANCELED, INTERRUPTED, NEVER_ATTEMPTED: the task did not run to the end.
        if target is not None:
            self._apply_target(task, target)
        else:
            self.make_runnable(task)

    def _withdraw_after(self, session: Session, failed: SessionAction) -> None:
        """The worker skips what follows a failure (but exits): mirror that here. Tasks
        after a failed attachment sync are charged a failure: a job must not go on
        requeueing (nor ever succeed) when its inputs cannot be had."""
        session.winding_down = True
        inputs_failed = failed.kind == "syncInputJobAttachments" and failed.status == "FAILED"
        for action in list(session.open):
            if (
                action.index > failed.index
                and action.kind != "envExit"
                and action.started_at is None
                and not action.completed
            ):
                self.complete(action, "NEVER_ATTEMPTED", charge_task=inputs_failed)

    # ------------------------------------------------------------ workers going away

    def abandon_sessions(self, worker: WorkerRecord, reason: str) -> None:
        """End the worker's sessions now (it stopped or stopped responding); requeue."""
        for session in list(worker.sessions.values()):
            for action in list(session.open):
                if action.completed:
                    continue  # withdrawn after an earlier one
                started = action.status in ("RUNNING", "CANCELING")
                action.ended_at = utcnow() if started else None
                self.complete(action, "INTERRUPTED" if started else "NEVER_ATTEMPTED")
            session.environment_stack = ()
            self._end_session(session)
        if reason:
            log.info("mockfarm.sessions_abandoned", worker_id=worker.worker_id, reason=reason)

    # ------------------------------------------------------------ assignment

    def schedule(self, worker: WorkerRecord) -> None:
        """Top up the worker's sessions, open new ones, end finished ones."""
        accepting = worker.status == "STARTED" and not worker.stop_requested
        for session in list(worker.sessions.values()):
            if not accepting:
                session.winding_down = True
            self._top_up(session)
        if not accepting:
            return
        while True:
            # Sessions still running their exits count: a worker starts a new
            # session only once the old one has left its environments.
            if len(worker.sessions) >= self.config.max_sessions_per_worker:
                return
            choice = self._pick(worker)
            if choice is None:
                return
            self._open_session(worker, *choice)

    def _top_up(self, session: Session) -> None:
        job = session.job
        if not session.winding_down and (job.failed or job.lifecycle_status == "ARCHIVED"):
            session.winding_down = True
        if not session.winding_down:
            queued = sum(1 for a in session.open if a.kind == "taskRun")
            depth = self._depth(session)
            while queued < depth:
                task = self._next_task(session)
                if task is None:
                    break
                self._assign_task(session, task)
                queued += 1
            if not session.open:
                session.winding_down = True
        if session.winding_down and all(a.kind == "envExit" for a in session.open):
            self._assign_exits(session)
            if not session.open:
                self._end_session(session)

    def _next_task(self, session: Session) -> Task | None:
        current = session.current_step
        if current is not None:
            task = current.peek_ready()
            if task is not None and self.admits(session.worker, current):
                return task
        for step in session.job.steps:
            if step is current:
                continue
            task = step.peek_ready()
            if task is not None and self.admits(session.worker, step):
                return task
        return None

    def satisfies(self, worker: WorkerRecord, step: Step) -> bool:
        """Whether the worker's capabilities meet the step's host requirements."""
        if not self.config.match_host_requirements:
            return True
        return worker_satisfies(step.spec.host_requirements, worker.capabilities)

    def _pick(self, worker: WorkerRecord) -> tuple[Job, Task] | None:
        """The job a new session should run: highest priority, then oldest."""
        best: tuple[Job, Task] | None = None
        for job in self.state.jobs.values():
            if job.queue.farm_id != worker.farm_id or job.failed:
                continue
            if job.lifecycle_status == "ARCHIVED" or not job.task_counts.get("READY"):
                continue
            if job.session_limit is not None and len(job.sessions) >= job.session_limit:
                continue
            if (
                job.max_worker_count is not None
                and 0 <= job.max_worker_count <= job.active_sessions
            ):
                continue
            if best is not None and (job.priority, -job.created_at.timestamp()) <= (
                best[0].priority,
                -best[0].created_at.timestamp(),
            ):
                continue
            for step in job.steps:
                task = step.peek_ready()
                if task is not None and self.admits(worker, step):
                    best = (job, task)
                    break
        return best

    def _open_session(self, worker: WorkerRecord, job: Job, first: Task) -> None:
        session_id = f"session-{new_hex()}"
        session = Session(
            session_id=session_id,
            worker=worker,
            job=job,
            started_at=utcnow(),
            log_group_name=job.log_group_name,
            log_stream_name=session_id,
        )
        self._open_log_stream(session.log_group_name, session.log_stream_name)
        session.wire_log = self._serialize("LogConfiguration", session.log_configuration())
        self.state.sessions[session_id] = session
        worker.sessions[session_id] = session
        worker.job_ids.add(job.job_id)
        job.sessions.append(session)
        job.active_sessions += 1
        if job.attachments is not None:
            # As the service does: the job's inputs before anything else of the session.
            self._add_action(session, "syncInputJobAttachments")
        for environment_id, _ in job.environments:
            self._enter(session, environment_id)
        self._assign_task(session, first)
        self._top_up(session)
        log.debug(
            "mockfarm.session_started",
            session_id=session_id,
            worker_id=worker.worker_id,
            job_id=job.job_id,
        )

    def _add_action(
        self,
        session: Session,
        kind: str,
        *,
        environment_id: str | None = None,
        task: Task | None = None,
        step_id: str | None = None,
    ) -> SessionAction:
        action_id, index = session.next_action_id()
        action = SessionAction(
            action_id=action_id,
            session=session,
            index=index,
            kind=kind,
            environment_id=environment_id,
            task=task,
            step_id=step_id,
        )
        action.wire = self._serialize(
            "AssignedSessionAction",
            {"sessionActionId": action_id, "definition": action.definition()},
        )
        session.actions.append(action)
        session.open.append(action)
        self.state.actions[action_id] = action
        return action

    def _enter(self, session: Session, environment_id: str) -> None:
        action = self._add_action(session, "envEnter", environment_id=environment_id)
        session.environment_stack = (*session.environment_stack, (environment_id, action))

    def _assign_task(self, session: Session, task: Task) -> None:
        step = task.step
        if session.current_step is not step:
            self._exit_step_environments(session)
            if session.job.attachments is not None and step.dependencies:
                # The outputs of the steps this one depends on, before its environments.
                self._add_action(session, "syncInputJobAttachments", step_id=step.step_id)
            for environment in step.spec.environments:
                self._enter(session, step.environment_id(environment))
            session.current_step = step
        action = self._add_action(session, "taskRun", task=task)
        task.latest_action = action
        self.set_task_status(task, "ASSIGNED")

    def _exit_step_environments(self, session: Session) -> None:
        step = session.current_step
        if step is None:
            return
        prefix = f"STEP:{step.step_id}:"
        while session.environment_stack and session.environment_stack[-1][0].startswith(prefix):
            *rest, (environment_id, enter) = session.environment_stack
            session.environment_stack = tuple(rest)
            if enter.status != "NEVER_ATTEMPTED":
                self._add_action(session, "envExit", environment_id=environment_id)
        session.current_step = None

    def _assign_exits(self, session: Session) -> None:
        while session.environment_stack:
            *rest, (environment_id, enter) = session.environment_stack
            session.environment_stack = tuple(rest)
            if enter.status != "NEVER_ATTEMPTED":
                self._add_action(session, "envExit", environment_id=environment_id)
        session.current_step = None

    def _end_session(self, session: Session) -> None:
        if session.lifecycle_status == "ENDED":
            return
        session.lifecycle_status = "ENDED"
        session.ended_at = session.updated_at = utcnow()
        session.worker.sessions.pop(session.session_id, None)
        self._run_seconds.pop(session.session_id, None)
        job = session.job
        job.active_sessions -= 1
        log.debug("mockfarm.session_ended", session_id=session.session_id)
        limit = job.session_limit
        if limit is not None and len(job.sessions) >= limit and not job.active_sessions:
            # No session will come for what is left: it is canceled.
            for step in job.steps:
                for task in step.tasks:
                    if task.status in ("READY", "PENDING"):
                        self.set_task_status(task, "CANCELED")

    # ------------------------------------------------------------ the response

    def response(self, worker: WorkerRecord, interval: int) -> dict[str, Any]:
        assigned: dict[str, Any] = {}
        cancels: dict[str, list[str]] = {}
        for session_id, session in worker.sessions.items():
            assigned[session_id] = {
                "queueId": session.job.queue_id,
                "jobId": session.job.job_id,
                "sessionActions": [action.wire for action in session.open],
                "logConfiguration": session.wire_log,
            }
            canceled = [a.action_id for a in session.open if a.cancel_requested]
            if canceled:
                cancels[session_id] = canceled
        result: dict[str, Any] = {
            "assignedSessions": assigned,
            "cancelSessionActions": cancels,
            "updateIntervalSeconds": interval,
        }
        if worker.stop_requested and not worker.sessions:
            result["desiredWorkerStatus"] = "STOPPED"
        return result


def heartbeat_deadline(worker: WorkerRecord, timeout: float) -> float:
    """When a live worker that stays silent is declared ``NOT_RESPONDING`` (``inf``: never)."""
    if worker.status not in ("STARTED", "STOPPING"):
        return float("inf")
    return worker.last_seen + timeout
