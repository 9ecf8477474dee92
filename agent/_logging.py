"""structlog configuration for farmhand's own log (not the jobs' output).

Events are named like ``session.started`` with details as key-value pairs, and
carry whatever ``structlog.contextvars`` has bound (worker, session, action ids).
The log goes to a stream (stderr by default) as console text or JSON, and
optionally to a local file that rotates by size, keeping a number of old files.
Sinks added with ``add_log_sink`` (the agent's CloudWatch stream) get every
INFO-and-above record as one JSON line; a sink added for a worker id gets only
the records of that worker or of none (with several workers in one process,
each worker's stream gets its own records and the process's).

Secrets never reach any of them: before a record is rendered, every string in
it (the event, each value, inside lists and mappings; other values by their
``str``) is masked where it matches a configured secret pattern or holds a
secret value of a session alive in this process (``openjd_redacted_env``;
``actors.LIVE_SECRETS``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from actors import LIVE_SECRETS, Redactor

from ._progress import clear_status_lines

LogSink = Callable[[Iterable[str]], None]
#: (sink, the worker whose records it takes, or None for all)
_sinks: list[tuple[LogSink, str | None]] = []
#: The file the current configuration writes to (closed when logging is reconfigured).
_file: RotatingFile | None = None


def add_log_sink(sink: LogSink, *, worker_id: str | None = None) -> None:
    """Also send every INFO-and-above record, as a JSON line, to ``sink``; with
    ``worker_id``, only records bound to that worker or to no worker."""
    _sinks.append((sink, worker_id))


def remove_log_sink(sink: LogSink) -> None:
    _sinks[:] = [entry for entry in _sinks if entry[0] is not sink]


class RotatingFile:
    """A text file that is rotated when it passes ``max_bytes``: ``name`` becomes
    ``name.1``, ``name.1`` becomes ``name.2`` ... and ``name.<backups>`` is deleted."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = self._open()

    def _open(self) -> TextIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")

    def write(self, line: str) -> None:
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            if self.max_bytes and self._file.tell() >= self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self._open()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _Mask:
    """The processor that masks secrets in a record before it is rendered."""

    def __init__(self, patterns: Iterable[str], min_length: int) -> None:
        self._patterns = tuple(patterns)
        self._min_length = min_length
        self._version = -1
        self._redactor = Redactor(patterns=self._patterns)

    def _current(self) -> Redactor:
        version = LIVE_SECRETS.version
        if version != self._version:
            redactor = Redactor(min_length=self._min_length, patterns=self._patterns)
            for value in LIVE_SECRETS.values():
                redactor.add(value)
            self._redactor, self._version = redactor, version
        return self._redactor

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        redactor = self._current()
        if not redactor:
            return event
        for key, value in event.items():
            event[key] = _masked(redactor, value)
        return event


def _masked(redactor: Redactor, value: Any) -> Any:
    if isinstance(value, str):
        return redactor.redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_masked(redactor, item) for item in value]
    if isinstance(value, dict):
        return {key: _masked(redactor, item) for key, item in value.items()}
    text = str(value)
    masked = redactor.redact(text)
    return value if masked == text else masked


class _Output:
    """The end of the processor chain: one line to the stream, the file and the sinks."""

    def __init__(self, stream: TextIO, file: RotatingFile | None, console: bool) -> None:
        self._stream = stream
        self._file = file
        self._console = structlog.dev.ConsoleRenderer(colors=False) if console else None

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        as_json = json.dumps(event, default=str, ensure_ascii=False)
        if _sinks and logging.getLevelName(str(event.get("level", "info")).upper()) >= logging.INFO:
            worker = event.get("worker_id")
            for sink, wanted in list(_sinks):
                if wanted is not None and worker is not None and worker != wanted:
                    continue
                try:
                    sink([as_json])
                except Exception:  # a sink must never break logging
                    pass
        if self._file is not None:
            self._file.write(as_json)
        # A progress line on the terminal goes before the line is printed, not under it.
        clear_status_lines()
        return self._console(logger, method, event) if self._console is not None else as_json


def quiet_by_default() -> None:
    """A host program that has not configured structlog gets farmhand's INFO lines and
    up, not structlog's default of every level (a debug line per session event).
    A host that configures structlog (or calls ``configure_logging``) decides."""
    if not structlog.is_configured():
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))


def configure_logging(
    *,
    verbose: bool = False,
    quiet: bool = False,
    stream: TextIO | None = None,
    json_format: bool = False,
    file: Path | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
    level: int | None = None,
    secret_patterns: Iterable[str] = (),
    min_secret_length: int = 1,
) -> None:
    """Send farmhand's log to ``stream`` (stderr by default) and ``file``: DEBUG and
    up when ``verbose``, WARNING and up when ``quiet``, INFO and up otherwise
    (``level``, a ``logging`` level, overrides all three). Matches of
    ``secret_patterns`` and live session secrets are masked."""
    global _file
    if level is None:
        level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if _file is not None:
        _file.close()
    rotating = _file = (
        RotatingFile(file, max_bytes=max_bytes, backups=backups) if file is not None else None
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _Mask(secret_patterns, min_secret_length),
            _Output(stream or sys.stderr, rotating, console=not json_format),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
