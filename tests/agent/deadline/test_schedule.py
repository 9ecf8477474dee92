"""UpdateWorkerSchedule's wire shapes, translated at the edge to and from the actors' messages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs

from actors import ActionKind, ActionState, ActionUpdate
from agent.deadline import (
    DeadlineSchedule,
    completed_counts,
    schedule_from_api,
    update_fields,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_final_update_is_written_as_the_api_wants() -> None:
    """TIMEOUT goes out FAILED; times in UTC; exit code signed 32-bit; message cut at 4096;
    progress clamped; a successful task run carries manifests."""
    local = T0.astimezone(timezone(timedelta(hours=2)))
    timeout = ActionUpdate(
        "s",
        "a",
        ActionKind.TASK_RUN,
        state=ActionState.TIMEOUT,
        started_at=local,
        ended_at=local,
        exit_code=4294967295,
        message="x" * 5000,
        progress=150.0,
    )
    fields = update_fields(timeout)
    assert fields["completedStatus"] == "FAILED"
    assert fields["startedAt"].utcoffset() == timedelta(0)
    assert fields["processExitCode"] == -1
    assert len(fields["progressMessage"]) == 4096
    assert fields["progressPercent"] == 100.0
    assert "manifests" not in fields
    success = ActionUpdate("s", "a", ActionKind.TASK_RUN, state=ActionState.SUCCESS)
    assert update_fields(success) == {"completedStatus": "SUCCEEDED", "manifests": []}
    uploaded = attrs.evolve(
        success, manifests=({"outputManifestPath": "p", "outputManifestHash": "h"}, {})
    )
    assert update_fields(uploaded)["manifests"] == [
        {"outputManifestPath": "p", "outputManifestHash": "h"},
        {},
    ]
    enter = ActionUpdate("s", "a", ActionKind.ENV_ENTER, state=ActionState.SUCCESS)
    assert update_fields(enter) == {"completedStatus": "SUCCEEDED"}
    sync = ActionUpdate("s", "a", ActionKind.SYNC_ATTACHMENTS, state=ActionState.SUCCESS)
    assert update_fields(sync) == {"completedStatus": "SUCCEEDED"}
    assert update_fields(ActionUpdate("s", "a", ActionKind.TASK_RUN, started_at=T0)) == {
        "startedAt": T0
    }


def test_a_response_becomes_a_schedule() -> None:
    """Assignments are typed; an unreadable one is set aside by id; cancels, interval and
    the stop request are carried."""
    response = {
        "assignedSessions": {
            "session-1": {
                "queueId": "queue-1",
                "jobId": "job-1",
                "sessionActions": [
                    {"sessionActionId": "a0", "definition": {"envEnter": {"environmentId": "E"}}},
                    {
                        "sessionActionId": "a1",
                        "definition": {
                            "taskRun": {
                                "stepId": "step-1",
                                "taskId": "task-1",
                                "parameters": {"F": {"int": "1"}},
                            }
                        },
                    },
                    {
                        "sessionActionId": "a2",
                        "definition": {"syncInputJobAttachments": {"stepId": "step-1"}},
                    },
                    {"sessionActionId": "a3", "definition": {"someFutureAction": {}}},
                ],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {"logGroupName": "g", "logStreamName": "s"},
                },
            },
            "session-2": {"queueId": "queue-1"},  # no jobId
        },
        "cancelSessionActions": {"session-1": ["a1"], "session-3": []},
        "updateIntervalSeconds": 7,
        "desiredWorkerStatus": "STOPPED",
    }
    schedule = schedule_from_api(response)
    assignment = schedule.assigned["session-1"]
    enter, run, sync, future = assignment.actions
    assert (enter.kind, enter.environment_id) == (ActionKind.ENV_ENTER, "E")
    assert (run.kind, run.step_id, run.task_id) == (ActionKind.TASK_RUN, "step-1", "task-1")
    assert run.parameters == {"F": {"int": "1"}}
    assert run.unsupported is None
    assert (sync.kind, sync.step_id, sync.unsupported) == (
        ActionKind.SYNC_ATTACHMENTS,
        "step-1",
        None,
    )
    assert future.kind is ActionKind.TASK_RUN and future.unsupported is not None
    assert "someFutureAction" in future.unsupported
    assert (assignment.log_config.group, assignment.log_config.stream) == ("g", "s")
    assert schedule.unreadable == frozenset({"session-2"})
    assert schedule.cancels == {"session-1": frozenset({"a1"})}
    assert schedule.interval == 7.0
    assert schedule.stop_requested
    assert schedule_from_api({}).interval is None


async def test_deadline_schedule_sends_wire_fields_and_reads_the_answer() -> None:
    """DeadlineSchedule is the scheduler's ScheduleApi over the wire-level client."""
    sent: list[Mapping[str, Mapping[str, Any]]] = []

    class Client:
        async def update_worker_schedule(
            self, updated_session_actions: Mapping[str, Mapping[str, Any]]
        ) -> Mapping[str, Any]:
            sent.append(updated_session_actions)
            return {"assignedSessions": {}, "updateIntervalSeconds": 3}

    update = ActionUpdate("s", "a", ActionKind.TASK_RUN, state=ActionState.CANCELED)
    schedule = await DeadlineSchedule(Client()).sync({"a": update})
    assert sent == [{"a": {"completedStatus": "CANCELED"}}]
    assert schedule.interval == 3.0 and not schedule.assigned


def test_completed_counts_are_by_completed_status() -> None:
    """TIMEOUT and FAILED both count as FAILED."""
    counts = completed_counts(
        {ActionState.TIMEOUT: 1, ActionState.FAILED: 2, ActionState.SUCCESS: 3}
    )
    assert counts == {"FAILED": 3, "SUCCEEDED": 3}
