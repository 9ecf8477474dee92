"""The human and jsonl renderings of session events."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

from actors import (
    ActionEnded,
    ActionKind,
    ActionOutput,
    ActionProgress,
    ActionStarted,
    ActionState,
    ActionStatusMessage,
    SessionEnded,
    SessionLog,
)
from agent.local._render import HumanRenderer, JsonlRenderer

T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


def _task_events(state: ActionState = ActionState.SUCCESS) -> list[object]:
    return [
        ActionStarted("s", "a1", ActionKind.TASK_RUN, "Render", {"Frame": "7"}, T0),
        ActionOutput("s", "a1", ("line one",)),
        ActionProgress("s", "a1", 45.0),
        ActionStatusMessage("s", "a1", "tile 3"),
        ActionOutput("s", "a1", ("line two",)),
        SessionLog("s", "a1", "info", "process exited with code 0"),
        ActionEnded(
            "s",
            "a1",
            ActionKind.TASK_RUN,
            state,
            exit_code=0 if state.succeeded else 2,
            fail_message=None if state.succeeded else "bad",
            started_at=T0,
            ended_at=T0 + timedelta(seconds=1.5),
        ),
        ActionEnded("s", "a2", ActionKind.TASK_RUN, ActionState.NEVER_ATTEMPTED),
        SessionEnded("s", state.succeeded, None),
    ]


def test_human_live_progress_line_on_a_terminal() -> None:
    """On a terminal, progress and status show on one stderr line, cleared before output."""
    out, err = io.BytesIO(), io.BytesIO()
    renderer = HumanRenderer(out, err, live=True)
    for event in _task_events():
        renderer(event)  # type: ignore[arg-type]
    renderer.finish(planned=2)
    status = err.getvalue().decode()
    assert "\r\x1b[K[farmhand] Task 'Render' Frame=7   45.0%" in status
    assert "45.0%  tile 3" in status
    assert status.endswith("\r\x1b[K")  # cleared before the result line
    text = out.getvalue().decode()
    assert "line one\n" in text and "line two\n" in text
    assert "[farmhand] == Task 'Render' Frame=7: SUCCESS (exit 0, 1.50 s)" in text
    assert "process exited" not in text  # info notes only with --verbose
    assert renderer.success


def test_human_without_terminal_prints_no_status_line() -> None:
    """Without a terminal the output is plain lines and results, no control codes."""
    out, err = io.BytesIO(), io.BytesIO()
    renderer = HumanRenderer(out, err, live=False, verbose=True)
    for event in _task_events(ActionState.FAILED):
        renderer(event)  # type: ignore[arg-type]
    renderer.finish(planned=2)
    assert err.getvalue() == b""
    text = out.getvalue().decode()
    assert "\x1b" not in text
    assert "FAILED (exit 2, 1.50 s): bad" in text
    assert "process exited with code 0" in text
    assert "session FAILED: 1 actions ran (1 failed, 1 never_attempted)" in text
    assert not renderer.success


def test_jsonl_escapes_and_counts() -> None:
    """jsonl lines are valid JSON whatever the output text, and the summary counts states."""
    out = io.BytesIO()
    renderer = JsonlRenderer(out)
    tricky = 'quote " backslash \\ tab \t unicode ✓ control \x01'
    events = _task_events()
    events[1] = ActionOutput("s", "a1", (tricky,))
    for event in events:
        renderer(event)  # type: ignore[arg-type]
    renderer.finish(planned=2)
    parsed = [json.loads(line) for line in out.getvalue().decode().splitlines()]
    assert parsed[1] == {"event": "output", "index": 0, "line": tricky}
    assert parsed[-1] == {
        "event": "session_ended",
        "status": "success",
        "actions": {"NEVER_ATTEMPTED": 1, "SUCCESS": 1},
    }
    assert all(p["event"] != "log" for p in parsed)  # info notes only with --verbose
