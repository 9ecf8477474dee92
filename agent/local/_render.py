"""Printing a session's events for a person (``human``) or a program (``jsonl``, ``json``).

The renderers number the actions that ran in order (``index``, from 0) and
decide the session's status: ``success`` when every action that ran succeeded,
``canceled`` when the user interrupted the run (``interrupted``), ``error``
otherwise.

jsonl events, one JSON object per line, in order::

    {"event": "action_started", "index": N, "kind": "env_enter"|"env_exit"|"task_run",
     "name": ENV_OR_STEP_NAME, "parameters": {...}, "time": ISO8601}
    {"event": "output", "index": N, "line": TEXT}
    {"event": "log", "index": N|null, "level": "warning"|"error"|"info", "message": TEXT}
    {"event": "action_ended", "index": N, "state": STATE, "exit_code": INT|null,
     "progress": FLOAT|null, "status_message": TEXT|null, "fail_message": TEXT|null,
     "time": ISO8601, "usage": {"wall_seconds": FLOAT, "cpu_user_seconds": FLOAT,
     "cpu_system_seconds": FLOAT, "peak_rss_bytes": INT, "peak_gpu_bytes": INT (where
     nvidia-smi is)} (what it cost; see
     ``actors.ActionUsage``: the CPU and memory figures where it ran contained)}
    {"event": "session_ended", "status": "success"|"error"|"canceled",
     "actions": {STATE: COUNT}, "signal": "SIGINT"|"SIGTERM" (when canceled)}

``log`` lines are the runner's own notes (warnings and errors; everything with
``--verbose``). Actions that never ran are not listed one by one; they are
counted under ``NEVER_ATTEMPTED`` in ``session_ended``.

``json`` (``openjd run --output json``'s shape) prints nothing until the run is
over, then one JSON document: ``status``, ``message``, ``job_name``,
``step_name`` (with ``--step``), ``duration`` (seconds), ``tasks_run``,
``actions`` (as in ``session_ended``), ``signal`` (when canceled),
``working_directory`` (when kept) and ``logs``: ``{"timestamp": ISO8601,
"message": TEXT}`` for every output line and every header, result and note
the human output prints.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
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

from .._words import counted

_encode_string = json.encoder.encode_basestring

_KIND_LABEL = {
    ActionKind.ENV_ENTER: "Enter environment",
    ActionKind.ENV_EXIT: "Exit environment",
    ActionKind.TASK_RUN: "Task",
    ActionKind.SYNC_ATTACHMENTS: "Sync job attachments",
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
        self.tasks_run = 0
        #: The signal the user interrupted the run with (``"SIGINT"``), if they did.
        self.interrupted_by: str | None = None
        self.started = time.monotonic()
        #: What the actions cost together: CPU seconds, and the highest peak memory.
        self.cpu_seconds: float | None = None
        self.peak_rss_bytes: int | None = None

    def start(self, event: ActionStarted) -> int:
        index = self.next_index
        self.next_index += 1
        if event.kind is ActionKind.TASK_RUN:
            self.tasks_run += 1
        self.indices[event.action_id] = index
        return index

    def index_of(self, action_id: str | None) -> int | None:
        return self.indices.get(action_id)

    def end(self, event: ActionEnded) -> int | None:
        if event.state is not ActionState.NEVER_ATTEMPTED:
            self.states[event.state.value] += 1
        usage = event.usage
        if usage is not None and usage.cpu_user_seconds is not None:
            self.cpu_seconds = (
                (self.cpu_seconds or 0.0) + usage.cpu_user_seconds + (usage.cpu_system_seconds or 0)
            )
        if usage is not None and usage.peak_rss_bytes is not None:
            self.peak_rss_bytes = max(self.peak_rss_bytes or 0, usage.peak_rss_bytes)
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
        return bool(self.session_succeeded) and ran_ok and self.interrupted_by is None

    @property
    def outcome(self) -> str:
        """``success``, ``canceled`` (the user interrupted the run) or ``error``."""
        if self.interrupted_by is not None:
            return "canceled"
        return "success" if self.success else "error"

    @property
    def exit_status(self) -> int:
        """0 on success, 1 on failure, 128+N when interrupted by signal N (as a shell
        reports ^C: 130 for SIGINT, 143 for SIGTERM)."""
        if self.interrupted_by is not None:
            return 128 + signal.Signals[self.interrupted_by].value
        return 0 if self.success else 1


class _Renderer:
    """What every renderer answers: the outcome, the exit status, an interruption."""

    def __init__(self) -> None:
        self._tracker = _Tracker()

    @property
    def success(self) -> bool:
        return self._tracker.success

    @property
    def exit_status(self) -> int:
        return self._tracker.exit_status

    def interrupted(self, signal_name: str) -> None:
        """The user interrupted the run with ``signal_name`` (``"SIGINT"``): the
        session ends canceled, whatever its actions did after that."""
        if self._tracker.interrupted_by is None:
            self._tracker.interrupted_by = signal_name


def _label(event: ActionStarted) -> str:
    label = f"{_KIND_LABEL[event.kind]} '{event.name}'"
    if event.parameters:
        label += " " + " ".join(f"{k}={v}" for k, v in event.parameters.items())
    return label


def _result(label: str, event: ActionEnded) -> str:
    details = []
    if event.exit_code is not None:
        details.append(f"exit {event.exit_code}")
    if event.started_at and event.ended_at:
        details.append(f"{(event.ended_at - event.started_at).total_seconds():.2f} s")
    usage = event.usage
    if usage is not None:
        if usage.cpu_user_seconds is not None and usage.cpu_system_seconds is not None:
            details.append(f"CPU {usage.cpu_user_seconds + usage.cpu_system_seconds:.2f} s")
        if usage.peak_rss_bytes is not None:
            details.append(f"peak memory {usage.peak_rss_bytes / 2**20:.1f} MiB")
        if usage.peak_gpu_bytes is not None:
            details.append(f"peak GPU memory {usage.peak_gpu_bytes / 2**20:.1f} MiB")
    text = f"== {label}: {event.state.value}"
    if details:
        text += f" ({', '.join(details)})"
    if not event.state.succeeded and event.fail_message:
        text += f": {event.fail_message}"
    return text


def _summary(tracker: _Tracker) -> str:
    """``session succeeded: 8 actions ran (6 tasks) in 0.28 s: 8 success``."""
    states = tracker.states
    ran = sum(n for s, n in states.items() if s != ActionState.NEVER_ATTEMPTED.value)
    parts = [f"{n} {s.lower().replace('_', ' ')}" for s, n in sorted(states.items())]
    elapsed = time.monotonic() - tracker.started
    outcome = {"success": "succeeded", "error": "FAILED", "canceled": "canceled"}[tracker.outcome]
    if tracker.interrupted_by is not None:
        outcome += f" by {tracker.interrupted_by}"
    text = (
        f"session {outcome}: {counted(ran, 'action')} ran ({counted(tracker.tasks_run, 'task')})"
        f" in {elapsed:.2f} s"
    )
    text = f"{text}: {', '.join(parts)}" if parts else text
    costs = []
    if tracker.cpu_seconds is not None:
        costs.append(f"CPU {tracker.cpu_seconds:.2f} s")
    if tracker.peak_rss_bytes is not None:
        costs.append(f"peak memory {tracker.peak_rss_bytes / 2**20:.1f} MiB")
    return f"{text}; {', '.join(costs)}" if costs else text


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


class JsonlRenderer(_Renderer):
    def __init__(self, out: BinaryIO, *, verbose: bool = False) -> None:
        super().__init__()
        self._out = out
        self._verbose = verbose

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
                    **({"usage": event.usage.to_json()} if event.usage is not None else {}),
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
        ended: dict[str, object] = {
            "event": "session_ended",
            "status": tracker.outcome,
            "actions": dict(sorted(tracker.states.items())),
        }
        if tracker.interrupted_by is not None:
            ended["signal"] = tracker.interrupted_by
        self._write(ended)
        self._out.flush()


_MESSAGES = {
    "success": "Session ended successfully",
    "error": "Session ended with errors; see Task logs for details",
    "canceled": "Session canceled",
}


class JsonRenderer(_Renderer):
    """``--output json``: one JSON document when the run is over (see the module
    docstring). It holds every line, so a run's whole output is in memory until
    then: for long or chatty jobs, ``jsonl`` streams the same events."""

    def __init__(
        self,
        out: BinaryIO,
        *,
        job_name: str,
        step_name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        self._out = out
        self._job_name = job_name
        self._step_name = step_name
        self._verbose = verbose
        self._labels: dict[str | None, str] = {}
        self._logs: list[dict[str, str]] = []

    def _log(self, message: str) -> None:
        self._logs.append({"timestamp": _iso(datetime.now(UTC)), "message": message})

    def __call__(self, event: SessionEvent) -> None:
        tracker = self._tracker
        if isinstance(event, ActionOutput):
            now = _iso(datetime.now(UTC))
            self._logs.extend({"timestamp": now, "message": line} for line in event.lines)
        elif isinstance(event, ActionStarted):
            tracker.start(event)
            label = self._labels[event.action_id] = _label(event)
            self._log(f"== {label}")
        elif isinstance(event, ActionEnded):
            index = tracker.end(event)
            if event.state is not ActionState.NEVER_ATTEMPTED and index is not None:
                self._log(_result(self._labels.get(event.action_id, "action"), event))
        elif isinstance(event, SessionLog):
            if self._verbose or event.level in ("warning", "error"):
                prefix = "" if event.level == "info" else f"{event.level}: "
                self._log(f"{prefix}{event.message}")
        elif isinstance(event, SessionEnded):
            tracker.session(event)

    def finish(self, *, planned: int, succeeded: bool | None = None) -> None:
        """The run is over: print the document (see ``JsonlRenderer.finish``)."""
        tracker = self._tracker
        tracker.finish(planned, succeeded)
        message = _MESSAGES[tracker.outcome]
        if tracker.interrupted_by is not None:
            message += f" by {tracker.interrupted_by}"
        document: dict[str, object] = {"status": tracker.outcome, "message": message}
        document["job_name"] = self._job_name
        if self._step_name is not None:
            document["step_name"] = self._step_name
        document["duration"] = round(time.monotonic() - tracker.started, 3)
        document["tasks_run"] = tracker.tasks_run
        document["actions"] = dict(sorted(tracker.states.items()))
        if tracker.interrupted_by is not None:
            document["signal"] = tracker.interrupted_by
        if tracker.working_directory:
            document["working_directory"] = tracker.working_directory
        document["logs"] = self._logs
        text = json.dumps(document, indent=4, ensure_ascii=False) + "\n"
        self._out.write(text.encode("utf-8", "backslashreplace"))
        self._out.flush()


def error_document(message: str) -> str:
    """What ``--output json`` prints for a bad template, parameter or option (as
    ``openjd run`` does), besides the line on stderr."""
    return json.dumps({"status": "error", "message": message}, indent=4, ensure_ascii=False)


#: C0 controls but tab, DEL and C1 controls -> ``\xNN``: a job's escape sequences
#: (``\x1b]...``, cursor moves, title changes, a bell) reach the user's terminal
#: as text, never as commands to it.
_VISIBLE = {
    code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if code != 0x09
}


#: The same for lines joined with ``\n`` (a line holds no line end of its own).
_VISIBLE_LINES = {code: text for code, text in _VISIBLE.items() if code != 0x0A}


def visible(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN`` (tabs kept)."""
    return text.translate(_VISIBLE)


#: The output lines the session runner turns into progress and status (as its
#: ``openjd_*`` parser reads them): the human output shows them on the live
#: status line instead of echoing them.
_STATUS_LINE_RE = re.compile(r"openjd_status: .+|openjd_progress: (.+)")


def drives_the_status_line(line: str) -> bool:
    """Whether ``line`` is an ``openjd_status`` or a valid ``openjd_progress`` message
    (an invalid progress value stays in the output, beside the runner's warning)."""
    match = _STATUS_LINE_RE.fullmatch(line)
    if match is None:
        return False
    if match[1] is None:
        return True
    try:
        return 0.0 <= float(match[1]) <= 100.0
    except ValueError:
        return False


class HumanRenderer(_Renderer):
    """Output lines as they come, a header and a result line per action, a live
    progress line on a terminal, and a summary at the end. The ``openjd_progress``
    and ``openjd_status`` lines drive the progress line instead of being echoed."""

    def __init__(
        self, out: BinaryIO, err: BinaryIO, *, verbose: bool = False, live: bool = False
    ) -> None:
        super().__init__()
        self._out = out
        self._err = err
        self._verbose = verbose
        self._live = live
        self._labels: dict[str | None, str] = {}
        self._status_shown = False
        self._progress: dict[str | None, tuple[float | None, str | None]] = {}

    def _note(self, text: str) -> None:
        self._clear_status()
        self._out.write(f"[farmhand] {visible(text)}\n".encode("utf-8", "backslashreplace"))
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
        line = visible("  ".join(p for p in parts if p))[:200]
        self._err.write(f"\r\x1b[K[farmhand] {line}".encode("utf-8", "backslashreplace"))
        self._err.flush()
        self._status_shown = True

    def __call__(self, event: SessionEvent) -> None:
        tracker = self._tracker
        if isinstance(event, ActionOutput):
            text = "\n".join(event.lines)
            if "openjd_" in text:  # one C-speed scan; a look at each line only then
                lines = [line for line in event.lines if not drives_the_status_line(line)]
                if not lines:
                    return
                text = "\n".join(lines)
            self._clear_status()
            text = text.translate(_VISIBLE_LINES) + "\n"
            self._out.write(text.encode("utf-8", "backslashreplace"))
            self._out.flush()
            if event.action_id in self._progress:
                self._show_status(event.action_id)
        elif isinstance(event, ActionStarted):
            tracker.start(event)
            label = self._labels[event.action_id] = _label(event)
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
        self._note(_result(self._labels.get(event.action_id, "action"), event))

    def _summary(self) -> None:
        self._note(_summary(self._tracker))
        if self._tracker.working_directory:
            self._note(f"working directory kept at {self._tracker.working_directory}")
