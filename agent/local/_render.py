"""Printing a session's events for a person (``human``) or a program (``jsonl``).

Both renderers number the actions that ran in order (``index``, from 0) and
decide the session's status: ``success`` when every action that ran succeeded.

jsonl events, one JSON object per line, in order::

    {"event": "action_started", "index": N, "kind": "env_enter"|"env_exit"|"task_run",
     "name": ENV_OR_STEP_NAME, "parameters": {...}, "time": ISO8601}
    {"event": "output", "index": N, "line": TEXT}
    {"event": "log", "index": N|null, "level": "warning"|"error"|"info", "message": TEXT}
    {"event": "action_ended", "index": N, "state": STATE, "exit_code": INT|null,
     "progress": FLOAT|null, "status_message": TEXT|null, "fail_message": TEXT|null,
     "time": ISO8601}
    {"event": "session_ended", "status": "success"|"error", "actions": {STATE: COUNT}}

``log`` lines are the runner's own notes (warnings and errors; everything with
``--verbose``). Actions that never ran are not listed one by one; they are
counted under ``NEVER_ATTEMPTED`` in ``session_ended``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import BinaryIO

from actors import (
    ActionEnded,
    ActionFailMessage,
    ActionKind,
    ActionOutput,
    ActionProgress,
    ActionStarted,
    ActionState,
    ActionStatusMessage,
    SessionEnded,
    SessionEvent,
    SessionLog,
)

_encode_string = json.encoder.encode_basestring

_KIND_LABEL = {
    ActionKind.ENV_ENTER: "Enter environment",
    ActionKind.ENV_EXIT: "Exit environment",
    ActionKind.TASK_RUN: "Task",
}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class _Tracker:
    """What both renderers need to know: indices, counts, the outcome."""

    def __init__(self) -> None:
        self.indices: dict[str | None, int] = {}
        self.next_index = 0
        self.states: Counter[str] = Counter()
        self.session_succeeded: bool | None = None
        self.working_directory: str | None = None

    def start(self, event: ActionStarted) -> int:
        index = self.next_index
        self.next_index += 1
        self.indices[event.action_id] = index
        return index

    def index_of(self, action_id: str | None) -> int | None:
        return self.indices.get(action_id)

    def end(self, event: ActionEnded) -> int | None:
        if event.state is not ActionState.NEVER_ATTEMPTED:
            self.states[event.state.value] += 1
        return self.indices.get(event.action_id)

    def session(self, event: SessionEnded) -> None:
        self.session_succeeded = event.succeeded and self.session_succeeded is not False
        self.working_directory = event.working_directory or self.working_directory

    def finish(self, planned: int, succeeded: bool | None) -> None:
        """Every planned action that did not start was never attempted."""
        never = planned - self.next_index
        if never > 0:
            self.states[ActionState.NEVER_ATTEMPTED.value] = never
        if succeeded is not None:
            self.session_succeeded = succeeded and self.session_succeeded is not False

    @property
    def success(self) -> bool:
        ran_ok = all(
            state in (ActionState.SUCCESS.value, ActionState.NEVER_ATTEMPTED.value)
            for state in self.states
        )
        return bool(self.session_succeeded) and ran_ok


class OutputGuard:
    """``on_event`` for a session driver, for when the output goes away.

    A reader that stops reading (``run ... | head``) makes the next write raise
    ``BrokenPipeError``. The guard then calls ``on_closed`` once (the driver
    interrupts the run as a first SIGINT would: the running action is cancelled
    with its own method and the environment exits still run) and drops every
    later event, so the session ends cleanly instead of with a traceback.
    """

    def __init__(
        self, on_event: Callable[[SessionEvent], None], on_closed: Callable[[], None]
    ) -> None:
        self._on_event = on_event
        self._on_closed = on_closed
        self.closed = False

    def __call__(self, event: SessionEvent) -> None:
        if self.closed:
            return
        try:
            self._on_event(event)
        except BrokenPipeError:
            self.closed = True
            self._on_closed()


class JsonlRenderer:
    def __init__(self, out: BinaryIO, *, verbose: bool = False) -> None:
        self._out = out
        self._verbose = verbose
        self._tracker = _Tracker()

    @property
    def success(self) -> bool:
        return self._tracker.success

    def _write(self, obj: dict[str, object]) -> None:
        self._out.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")

    def __call__(self, event: SessionEvent) -> None:
        tracker = self._tracker
        if isinstance(event, ActionOutput):
            prefix = f'{{"event": "output", "index": {tracker.index_of(event.action_id)}, "line": '
            text = "".join(f"{prefix}{_encode_string(line)}}}\n" for line in event.lines)
            self._out.write(text.encode("utf-8", "backslashreplace"))
            self._out.flush()
        elif isinstance(event, ActionStarted):
            index = tracker.start(event)
            self._write(
                {
                    "event": "action_started",
                    "index": index,
                    "kind": event.kind.value,
                    "name": event.name,
                    "parameters": dict(event.parameters),
                    "time": _iso(event.time),
                }
            )
        elif isinstance(event, ActionEnded):
            ended_index = tracker.end(event)
            if event.state is ActionState.NEVER_ATTEMPTED or ended_index is None:
                return
            self._write(
                {
                    "event": "action_ended",
                    "index": ended_index,
                    "state": event.state.value,
                    "exit_code": event.exit_code,
                    "progress": event.progress,
                    "status_message": event.status_message,
                    "fail_message": event.fail_message,
                    "time": _iso(event.ended_at) if event.ended_at else None,
                }
            )
            self._out.flush()
        elif isinstance(event, SessionLog):
            if self._verbose or event.level in ("warning", "error"):
                self._write(
                    {
                        "event": "log",
                        "index": tracker.index_of(event.action_id),
                        "level": event.level,
                        "message": event.message,
                    }
                )
        elif isinstance(event, SessionEnded):
            tracker.session(event)

    def finish(self, *, planned: int, succeeded: bool | None = None) -> None:
        """The run is over: ``planned`` actions were planned; ``succeeded`` is the
        farm's verdict, when there is one."""
        tracker = self._tracker
        tracker.finish(planned, succeeded)
        self._write(
            {
                "event": "session_ended",
                "status": "success" if tracker.success else "error",
                "actions": dict(sorted(tracker.states.items())),
            }
        )
        self._out.flush()


class HumanRenderer:
    """Output lines as they come, a header and a result line per action, a live
    progress line on a terminal, and a summary at the end."""

    def __init__(
        self, out: BinaryIO, err: BinaryIO, *, verbose: bool = False, live: bool = False
    ) -> None:
        self._out = out
        self._err = err
        self._verbose = verbose
        self._live = live
        self._tracker = _Tracker()
        self._labels: dict[str | None, str] = {}
        self._status_shown = False
        self._progress: dict[str | None, tuple[float | None, str | None]] = {}
        self._started = time.monotonic()

    @property
    def success(self) -> bool:
        return self._tracker.success

    def _note(self, text: str) -> None:
        self._clear_status()
        self._out.write(f"[farmhand] {text}\n".encode("utf-8", "backslashreplace"))
        self._out.flush()

    def _clear_status(self) -> None:
        if self._status_shown:
            self._err.write(b"\r\x1b[K")
            self._err.flush()
            self._status_shown = False

    def _show_status(self, action_id: str | None) -> None:
        if not self._live:
            return
        progress, message = self._progress.get(action_id, (None, None))
        parts = [self._labels.get(action_id, "")]
        if progress is not None:
            parts.append(f"{progress:5.1f}%")
        if message:
            parts.append(message)
        line = "  ".join(p for p in parts if p)[:200]
        self._err.write(f"\r\x1b[K[farmhand] {line}".encode("utf-8", "backslashreplace"))
        self._err.flush()
        self._status_shown = True

    def __call__(self, event: SessionEvent) -> None:
        tracker = self._tracker
        if isinstance(event, ActionOutput):
            self._clear_status()
            self._out.write(("\n".join(event.lines) + "\n").encode("utf-8", "backslashreplace"))
            self._out.flush()
            if event.action_id in self._progress:
                self._show_status(event.action_id)
        elif isinstance(event, ActionStarted):
            tracker.start(event)
            label = f"{_KIND_LABEL[event.kind]} '{event.name}'"
            if event.parameters:
                label += " " + " ".join(f"{k}={v}" for k, v in event.parameters.items())
            self._labels[event.action_id] = label
            self._note(f"== {label}")
        elif isinstance(event, ActionProgress):
            _, message = self._progress.get(event.action_id, (None, None))
            self._progress[event.action_id] = (event.progress, message)
            self._show_status(event.action_id)
        elif isinstance(event, ActionStatusMessage):
            progress, _ = self._progress.get(event.action_id, (None, None))
            self._progress[event.action_id] = (progress, event.message)
            self._show_status(event.action_id)
        elif isinstance(event, ActionFailMessage):
            pass  # shown with the action's result
        elif isinstance(event, ActionEnded):
            self._end(event)
        elif isinstance(event, SessionLog):
            if self._verbose or event.level in ("warning", "error"):
                prefix = "" if event.level == "info" else f"{event.level}: "
                self._note(f"{prefix}{event.message}")
        elif isinstance(event, SessionEnded):
            tracker.session(event)

    def finish(self, *, planned: int, succeeded: bool | None = None) -> None:
        """The run is over: print the summary (see ``JsonlRenderer.finish``)."""
        self._tracker.finish(planned, succeeded)
        self._summary()

    def _end(self, event: ActionEnded) -> None:
        index = self._tracker.end(event)
        self._progress.pop(event.action_id, None)
        if event.state is ActionState.NEVER_ATTEMPTED or index is None:
            return
        label = self._labels.get(event.action_id, "action")
        details = []
        if event.exit_code is not None:
            details.append(f"exit {event.exit_code}")
        if event.started_at and event.ended_at:
            details.append(f"{(event.ended_at - event.started_at).total_seconds():.2f} s")
        text = f"== {label}: {event.state.value}"
        if details:
            text += f" ({', '.join(details)})"
        if not event.state.succeeded and event.fail_message:
            text += f": {event.fail_message}"
        self._note(text)

    def _summary(self) -> None:
        states = self._tracker.states
        ran = sum(n for s, n in states.items() if s != ActionState.NEVER_ATTEMPTED.value)
        parts = [f"{n} {s.lower()}" for s, n in sorted(states.items())]
        elapsed = time.monotonic() - self._started
        outcome = "succeeded" if self.success else "FAILED"
        self._note(
            f"session {outcome}: {ran} actions ran ({', '.join(parts) or 'none'}) in {elapsed:.2f} s"
        )
        if self._tracker.working_directory:
            self._note(f"working directory kept at {self._tracker.working_directory}")
