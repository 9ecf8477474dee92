"""The human and jsonl renderings of session events."""

from __future__ import annotations

import io
import json
import re
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
from agent.local._render import HumanRenderer, JsonlRenderer, JsonRenderer

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
    assert "session FAILED: 1 action ran (1 task) in " in text
    assert text.rstrip().endswith(" s: 1 failed, 1 never attempted")
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


def test_human_output_shows_control_characters_instead_of_sending_them() -> None:
    """A job's escape sequences (a title change, a screen clear, a bell, C1 CSI)
    reach the terminal as visible text; tabs stay tabs; jsonl keeps them as JSON escapes."""
    hostile = "\x1b]0;owned\x07\x1b[2J\tok\x9b31m\x7f\x00"
    events: list[object] = [
        ActionStarted("s", "a1", ActionKind.TASK_RUN, "R\x1b[1m", {"F": "\x1b[31m7"}, T0),
        ActionOutput("s", "a1", (hostile,)),
        ActionProgress("s", "a1", 10.0),
        ActionStatusMessage("s", "a1", "status \x1b[2J"),
        ActionEnded(
            "s",
            "a1",
            ActionKind.TASK_RUN,
            ActionState.FAILED,
            exit_code=1,
            fail_message="bad \x1b[5m",
            started_at=T0,
            ended_at=T0,
        ),
        SessionEnded("s", False, None),
    ]
    out, err = io.BytesIO(), io.BytesIO()
    human = HumanRenderer(out, err, live=True)
    for event in events:
        human(event)  # type: ignore[arg-type]
    human.finish(planned=1)
    text = out.getvalue().decode()
    assert "\\x1b]0;owned\\x07\\x1b[2J\tok\\x9b31m\\x7f\\x00" in text
    assert "R\\x1b[1m" in text and "F=\\x1b[31m7" in text and "bad \\x1b[5m" in text
    assert not any(ch in text for ch in "\x1b\x07\x9b\x7f\x00")
    # On stderr only our own line control (\r, ESC [K) remains.
    status = err.getvalue().decode().replace("\r\x1b[K", "")
    assert "status \\x1b[2J" in status and "\x1b" not in status
    jsonl = io.BytesIO()
    renderer = JsonlRenderer(jsonl)
    renderer(events[0])  # type: ignore[arg-type]
    renderer(events[1])  # type: ignore[arg-type]
    assert json.loads(jsonl.getvalue().splitlines()[1])["line"] == hostile


def _summary_line(text: str) -> str:
    [line] = [line for line in text.splitlines() if line.startswith("[farmhand] session ")]
    return re.sub(r"in [0-9.]+ s", "in T s", line)


def _two_tasks_and_an_environment() -> list[object]:
    events: list[object] = [
        ActionStarted("s", "e1", ActionKind.ENV_ENTER, "Env", {}, T0),
        ActionEnded("s", "e1", ActionKind.ENV_ENTER, ActionState.SUCCESS),
    ]
    for n in (1, 2):
        events += [
            ActionStarted("s", f"t{n}", ActionKind.TASK_RUN, "Render", {"F": str(n)}, T0),
            ActionEnded("s", f"t{n}", ActionKind.TASK_RUN, ActionState.SUCCESS, exit_code=0),
        ]
    return [*events, SessionEnded("s", True, None)]


def test_the_summary_counts_in_proper_plurals() -> None:
    """One action and one task are singular (issue 17: "1 actions"); more are plural."""
    out = io.BytesIO()
    one = HumanRenderer(out, io.BytesIO())
    events = _two_tasks_and_an_environment()
    for event in [*events[2:4], events[-1]]:
        one(event)  # type: ignore[arg-type]
    one.finish(planned=1)
    assert _summary_line(out.getvalue().decode()) == (
        "[farmhand] session succeeded: 1 action ran (1 task) in T s: 1 success"
    )
    out = io.BytesIO()
    three = HumanRenderer(out, io.BytesIO())
    for event in _two_tasks_and_an_environment():
        three(event)  # type: ignore[arg-type]
    three.finish(planned=4)
    assert _summary_line(out.getvalue().decode()) == (
        "[farmhand] session succeeded: 3 actions ran (2 tasks) in T s: 1 never attempted, 3 success"
    )
    out = io.BytesIO()
    none = HumanRenderer(out, io.BytesIO())
    none.finish(planned=0)
    assert _summary_line(out.getvalue().decode()) == (
        "[farmhand] session FAILED: 0 actions ran (0 tasks) in T s"
    )


def test_human_output_leaves_progress_and_status_lines_to_the_status_line() -> None:
    """openjd_progress and openjd_status lines drive the progress line and are not
    echoed; other lines, openjd_fail and an invalid progress value still are."""
    lines = (
        "frame 1",
        "openjd_progress: 50",
        "openjd_status: rendering",
        "openjd_progress: 250",
        "openjd_fail: bad tile",
        "  openjd_status: indented is just a line",
    )
    events: list[object] = [
        ActionStarted("s", "a1", ActionKind.TASK_RUN, "R", {}, T0),
        ActionOutput("s", "a1", lines),
        ActionOutput("s", "a1", ("openjd_progress: 100", "openjd_status: done")),
        ActionProgress("s", "a1", 100.0),
        ActionEnded("s", "a1", ActionKind.TASK_RUN, ActionState.SUCCESS, exit_code=0),
        SessionEnded("s", True, None),
    ]
    for live in (False, True):
        out, err = io.BytesIO(), io.BytesIO()
        human = HumanRenderer(out, err, live=live)
        for event in events:
            human(event)  # type: ignore[arg-type]
        human.finish(planned=1)
        shown = [line for line in out.getvalue().decode().splitlines() if not line.startswith("[")]
        assert shown == [
            "frame 1",
            "openjd_progress: 250",
            "openjd_fail: bad tile",
            "  openjd_status: indented is just a line",
        ]
        assert ("100.0%" in err.getvalue().decode()) is live
    jsonl = io.BytesIO()
    renderer = JsonlRenderer(jsonl)
    for event in events:
        renderer(event)  # type: ignore[arg-type]
    renderer.finish(planned=1)
    output = [
        e["line"] for e in map(json.loads, jsonl.getvalue().splitlines()) if e["event"] == "output"
    ]
    assert output == [*lines, "openjd_progress: 100", "openjd_status: done"]


def test_an_interrupted_run_is_canceled_with_the_signal_status() -> None:
    """A run the user interrupted ends canceled, not FAILED, and exits 128+N."""
    events: list[object] = [
        ActionStarted("s", "a1", ActionKind.TASK_RUN, "R", {}, T0),
        ActionEnded("s", "a1", ActionKind.TASK_RUN, ActionState.CANCELED, exit_code=-15),
        SessionEnded("s", False, None),
    ]
    out = io.BytesIO()
    human = HumanRenderer(out, io.BytesIO())
    jsonl_out = io.BytesIO()
    jsonl = JsonlRenderer(jsonl_out)
    json_out = io.BytesIO()
    document = JsonRenderer(json_out, job_name="J")
    for renderer, name in ((human, "SIGINT"), (jsonl, "SIGTERM"), (document, "SIGINT")):
        for event in events:
            renderer(event)  # type: ignore[arg-type]
        renderer.interrupted(name)
        renderer.interrupted("SIGTERM")  # the first signal is the one that counts
        renderer.finish(planned=2)
        assert not renderer.success
    assert (human.exit_status, jsonl.exit_status, document.exit_status) == (130, 143, 130)
    assert _summary_line(out.getvalue().decode()) == (
        "[farmhand] session canceled by SIGINT: 1 action ran (1 task) in T s: "
        "1 canceled, 1 never attempted"
    )
    assert json.loads(jsonl_out.getvalue().splitlines()[-1]) == {
        "event": "session_ended",
        "status": "canceled",
        "actions": {"CANCELED": 1, "NEVER_ATTEMPTED": 1},
        "signal": "SIGTERM",
    }
    parsed = json.loads(json_out.getvalue())
    assert (parsed["status"], parsed["message"], parsed["signal"]) == (
        "canceled",
        "Session canceled by SIGINT",
        "SIGINT",
    )
    failed = HumanRenderer(io.BytesIO(), io.BytesIO())
    for event in events:
        failed(event)  # type: ignore[arg-type]
    failed.finish(planned=2)
    assert failed.exit_status == 1  # canceled by no one the user: a failure


def test_json_is_one_document_in_openjd_runs_shape() -> None:
    """--output json prints nothing until the end, then openjd run's keys, farmhand's
    counts, and every line and note in logs."""
    out = io.BytesIO()
    renderer = JsonRenderer(out, job_name="Hello", step_name="Render", verbose=False)
    for event in _task_events():
        renderer(event)  # type: ignore[arg-type]
        assert out.getvalue() == b""
    renderer.finish(planned=2)
    document = json.loads(out.getvalue())
    assert list(document) == [
        "status",
        "message",
        "job_name",
        "step_name",
        "duration",
        "tasks_run",
        "actions",
        "logs",
    ]
    assert (document["status"], document["message"]) == ("success", "Session ended successfully")
    assert (document["job_name"], document["step_name"], document["tasks_run"]) == (
        "Hello",
        "Render",
        1,
    )
    assert document["actions"] == {"NEVER_ATTEMPTED": 1, "SUCCESS": 1}
    assert [entry["message"] for entry in document["logs"]] == [
        "== Task 'Render' Frame=7",
        "line one",
        "line two",
        "== Task 'Render' Frame=7: SUCCESS (exit 0, 1.50 s)",
    ]
    assert all(entry["timestamp"].endswith("Z") for entry in document["logs"])
    failed = io.BytesIO()
    renderer = JsonRenderer(failed, job_name="Hello")
    for event in _task_events(ActionState.FAILED):
        renderer(event)  # type: ignore[arg-type]
    renderer.finish(planned=2)
    document = json.loads(failed.getvalue())
    assert document["status"] == "error" and "step_name" not in document
    assert renderer.exit_status == 1
