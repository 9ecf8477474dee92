"""The messages' own rules: merging action updates and giving back actions that will not run."""

from __future__ import annotations

from datetime import UTC, datetime

from actors import ActionKind, ActionState, ActionUpdate, AssignedAction, returned_updates

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)


def action(n: int, kind: ActionKind = ActionKind.TASK_RUN) -> AssignedAction:
    return AssignedAction(f"a{n}", kind, "taskRun")


def test_a_newer_update_wins_field_by_field() -> None:
    """Fields the newer update leaves unset keep the older values."""
    started = ActionUpdate("s", "a", ActionKind.TASK_RUN, started_at=T0)
    progress = ActionUpdate("s", "a", ActionKind.TASK_RUN, progress=50.0, updated_at=T1)
    merged = started.merged(progress)
    assert merged.started_at == T0
    assert merged.progress == 50.0
    assert merged.updated_at == T1
    assert not merged.final


def test_a_final_update_drops_the_transient_time() -> None:
    """The final state replaces a running update's updatedAt, and keeps its start."""
    running = ActionUpdate("s", "a", ActionKind.TASK_RUN, started_at=T0, updated_at=T0)
    final = ActionUpdate("s", "a", ActionKind.TASK_RUN, state=ActionState.SUCCESS, ended_at=T1)
    merged = running.merged(final)
    assert merged.final
    assert merged.updated_at is None
    assert (merged.started_at, merged.ended_at) == (T0, T1)


def test_returned_actions_fail_first_and_never_attempt_the_rest() -> None:
    """The first action is the state asked for, with the message; the rest NEVER_ATTEMPTED."""
    updates = returned_updates(
        "s",
        [action(0, ActionKind.ENV_ENTER), action(1), action(2, ActionKind.ENV_EXIT)],
        first=ActionState.FAILED,
        message="no job",
        now=T0,
    )
    assert [u.state for u in updates] == [
        ActionState.FAILED,
        ActionState.NEVER_ATTEMPTED,
        ActionState.NEVER_ATTEMPTED,
    ]
    assert updates[0].message == "no job"
    assert updates[0].started_at == updates[0].ended_at == T0
    assert updates[1].message is None and updates[1].started_at is None


def test_returned_exits_can_fail_too() -> None:
    """With exits_fail, every environment exit is FAILED as well (a session that died)."""
    updates = returned_updates(
        "s",
        [action(0), action(1), action(2, ActionKind.ENV_EXIT)],
        first=ActionState.INTERRUPTED,
        message="stopping",
        now=T0,
        exits_fail=True,
    )
    assert [u.state for u in updates] == [
        ActionState.INTERRUPTED,
        ActionState.NEVER_ATTEMPTED,
        ActionState.FAILED,
    ]


def test_nothing_to_return_is_nothing() -> None:
    """No actions, no updates."""
    assert returned_updates("s", [], first=ActionState.FAILED, message="x", now=T0) == []
