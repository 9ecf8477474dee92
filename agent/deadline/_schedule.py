"""UpdateWorkerSchedule at the edge: Deadline's wire shapes to and from the actors' messages.

The scheduler (``actors``) knows no wire format: it sends ``ActionUpdate``
messages and gets a ``Schedule`` back. ``DeadlineSchedule`` wraps a worker
client (``WorkerClient``, or anything with its ``update_worker_schedule``) and
translates both ways:

- ``ActionUpdate`` -> an ``updatedSessionActions`` entry: ``completedStatus``
  (TIMEOUT goes out as FAILED), ``startedAt``/``endedAt``/``updatedAt`` in UTC,
  ``processExitCode`` folded into a signed 32-bit integer, ``progressMessage``
  cut at 4096 characters, ``progressPercent`` clamped to 0..100, and
  ``manifests`` (the job-attachment output manifests, ``[]`` when none) for a
  task run that succeeded;
- the response -> ``Schedule``: each ``assignedSessions`` entry as a
  ``SessionAssignment`` of typed ``AssignedAction``s (an entry that cannot be
  read is logged and left as it is), ``cancelSessionActions``,
  ``updateIntervalSeconds`` and ``desiredWorkerStatus``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from actors import (
    ActionKind,
    ActionState,
    ActionUpdate,
    AssignedAction,
    Schedule,
    SessionAssignment,
    SessionLogConfig,
)

log = structlog.get_logger("farmhand.scheduler")

#: UpdateWorkerSchedule's limit on progressMessage.
MAX_PROGRESS_MESSAGE = 4096

#: An action's final state as ``completedStatus``.
COMPLETED_STATUS = {
    ActionState.SUCCESS: "SUCCEEDED",
    ActionState.FAILED: "FAILED",
    ActionState.TIMEOUT: "FAILED",
    ActionState.CANCELED: "CANCELED",
    ActionState.INTERRUPTED: "INTERRUPTED",
    ActionState.NEVER_ATTEMPTED: "NEVER_ATTEMPTED",
}

_KINDS = {
    "envEnter": ActionKind.ENV_ENTER,
    "envExit": ActionKind.ENV_EXIT,
    "taskRun": ActionKind.TASK_RUN,
    "syncInputJobAttachments": ActionKind.SYNC_ATTACHMENTS,
}


class WireSchedule(Protocol):
    """UpdateWorkerSchedule as the Deadline client speaks it (``WorkerClient``)."""

    async def update_worker_schedule(
        self, updated_session_actions: Mapping[str, Mapping[str, Any]]
    ) -> Mapping[str, Any]: ...


def exit_code_32(code: int) -> int:
    """Fold an exit code into a signed 32-bit integer, as the API requires."""
    return int.from_bytes((code & 0xFFFFFFFF).to_bytes(4, "big"), "big", signed=True)


def _wire_time(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def update_fields(update: ActionUpdate) -> dict[str, Any]:
    """The ``updatedSessionActions`` entry for ``update``."""
    fields: dict[str, Any] = {}
    if update.state is not None:
        fields["completedStatus"] = COMPLETED_STATUS[update.state]
    if update.started_at is not None:
        fields["startedAt"] = _wire_time(update.started_at)
    if update.ended_at is not None:
        fields["endedAt"] = _wire_time(update.ended_at)
    if update.exit_code is not None:
        fields["processExitCode"] = exit_code_32(update.exit_code)
    if update.message:
        fields["progressMessage"] = update.message[:MAX_PROGRESS_MESSAGE]
    if update.progress is not None:
        fields["progressPercent"] = min(max(update.progress, 0.0), 100.0)
    if update.updated_at is not None:
        fields["updatedAt"] = _wire_time(update.updated_at)
    if update.state is ActionState.SUCCESS and update.kind is ActionKind.TASK_RUN:
        fields["manifests"] = [dict(m) for m in update.manifests or ()]
    return fields


def action_from_api(wire: Mapping[str, Any]) -> AssignedAction:
    """One ``sessionActions`` entry; raises ``KeyError``/``TypeError``/``ValueError``."""
    definition = wire["definition"]
    if not isinstance(definition, Mapping) or len(definition) != 1:
        raise ValueError(f"session action {wire.get('sessionActionId')}: bad definition")
    action_id = str(wire["sessionActionId"])
    [(type_name, body)] = definition.items()
    body = body if isinstance(body, Mapping) else {}
    kind = _KINDS.get(type_name, ActionKind.TASK_RUN)

    def text(key: str) -> str | None:
        value = body.get(key)
        return str(value) if value is not None else None

    return AssignedAction(
        action_id=action_id,
        kind=kind,
        type_name=str(type_name),
        environment_id=text("environmentId"),
        step_id=text("stepId"),
        task_id=text("taskId") or None,
        parameters=body.get("parameters") or {},
        unsupported=None
        if type_name in _KINDS
        else f"{type_name} actions are not supported by farmhand",
    )


def log_config_from_api(wire: Mapping[str, Any] | None) -> SessionLogConfig:
    wire = wire or {}
    options = wire.get("options") or {}
    return SessionLogConfig(
        str(wire.get("logDriver", "")),
        options.get("logGroupName"),
        options.get("logStreamName"),
        wire.get("error"),
    )


def assignment_from_api(session_id: str, wire: Mapping[str, Any]) -> SessionAssignment:
    """One ``assignedSessions`` entry; raises ``KeyError``/``TypeError``/``ValueError``."""
    return SessionAssignment(
        session_id,
        str(wire["queueId"]),
        str(wire["jobId"]),
        tuple(action_from_api(action) for action in wire.get("sessionActions") or ()),
        log_config_from_api(wire.get("logConfiguration")),
    )


def schedule_from_api(response: Mapping[str, Any]) -> Schedule:
    """An UpdateWorkerSchedule response as a ``Schedule``."""
    assigned: dict[str, SessionAssignment] = {}
    unreadable: set[str] = set()
    for session_id, wire in (response.get("assignedSessions") or {}).items():
        try:
            assigned[session_id] = assignment_from_api(session_id, wire)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("scheduler.bad_assignment", session_id=session_id, error=repr(exc))
            unreadable.add(session_id)
    cancels = {
        session_id: frozenset(map(str, ids))
        for session_id, ids in (response.get("cancelSessionActions") or {}).items()
        if ids
    }
    interval = response.get("updateIntervalSeconds")
    return Schedule(
        assigned=assigned,
        unreadable=frozenset(unreadable),
        cancels=cancels,
        interval=float(interval) if isinstance(interval, int | float) else None,
        stop_requested=response.get("desiredWorkerStatus") == "STOPPED",
    )


class DeadlineSchedule:
    """The scheduler's ``ScheduleApi`` over a Deadline worker client."""

    def __init__(self, client: WireSchedule) -> None:
        self._client = client

    async def sync(self, updates: Mapping[str, ActionUpdate]) -> Schedule:
        payload = {action_id: update_fields(update) for action_id, update in updates.items()}
        return schedule_from_api(await self._client.update_worker_schedule(payload))


def completed_counts(reported: Mapping[ActionState, int]) -> dict[str, int]:
    """Final states counted by ``completedStatus`` (TIMEOUT counts as FAILED)."""
    counts: dict[str, int] = {}
    for state, count in reported.items():
        status = COMPLETED_STATUS[state]
        counts[status] = counts.get(status, 0) + count
    return counts
