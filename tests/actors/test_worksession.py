"""actors._worksession: how a work session reports the end of each action.

(The session's traffic with the scheduler is exercised in test_scheduler.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from actors._messages import ActionEnded, ActionKind, ActionState
from actors._worksession import MAX_PROGRESS_MESSAGE, exit_code_32, final_fields

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
END = START + timedelta(seconds=9)


def ended(
    state: ActionState, kind: ActionKind = ActionKind.TASK_RUN, **fields: object
) -> ActionEnded:
    return ActionEnded("session-1", "action-1", kind, state, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "folded"),
    [
        (0, 0),
        (3, 3),
        (-9, -9),
        (2**31 - 1, 2**31 - 1),
        (2**31, -(2**31)),
        (0xFFFFFFFF, -1),
        (2**32 + 5, 5),
    ],
)
def test_exit_codes_fold_into_a_signed_32_bit_integer(code: int, folded: int) -> None:
    assert exit_code_32(code) == folded


def test_a_success_reports_times_in_utc_exit_code_and_no_manifests() -> None:
    fields = final_fields(
        ended(ActionState.SUCCESS, exit_code=0, progress=150.0, started_at=START, ended_at=END)
    )
    assert fields == {
        "completedStatus": "SUCCEEDED",
        "startedAt": START.astimezone(UTC),
        "endedAt": END.astimezone(UTC),
        "processExitCode": 0,
        "progressPercent": 100.0,
        "manifests": [],
    }
    assert fields["startedAt"].tzinfo is UTC
    environment = final_fields(ended(ActionState.SUCCESS, ActionKind.ENV_ENTER, ended_at=END))
    assert "manifests" not in environment


def test_a_never_attempted_action_reports_its_status_only() -> None:
    fields = final_fields(ended(ActionState.NEVER_ATTEMPTED, exit_code=1, started_at=START))
    assert fields == {"completedStatus": "NEVER_ATTEMPTED"}


def test_a_failure_reports_its_fail_message_cut_to_the_api_limit() -> None:
    fields = final_fields(
        ended(
            ActionState.FAILED,
            exit_code=2**32 - 2,
            status_message="working",
            fail_message="x" * 5000,
        )
    )
    assert fields["completedStatus"] == "FAILED"
    assert fields["processExitCode"] == -2
    assert fields["progressMessage"] == "x" * MAX_PROGRESS_MESSAGE
    assert "endedAt" in fields and "startedAt" not in fields


def test_a_timeout_is_a_failure_that_says_so() -> None:
    fields = final_fields(ended(ActionState.TIMEOUT))
    assert fields["completedStatus"] == "FAILED"
    assert fields["progressMessage"] == "TIMEOUT - Exceeded the allotted runtime limit."
