"""A progress line for a person waiting at a terminal, and nothing for anyone else.

``StatusLine(stream)`` shows one line on ``stream`` (stderr, say), rewritten in
place (carriage return, erase to the end of the line), only when the stream is
a terminal: piped or redirected, it writes nothing, so scripts and log files
see no control codes. A ``with`` block clears it on the way out.

The log's console output (``agent._logging``) calls ``clear_status_lines()``
before it writes a line, so a log line never lands in the middle of the
progress line; the owner shows it again at its next tick.

    with StatusLine(sys.stderr) as line:
        while not done():
            line.show(f"[farmhand] {job_id}: RUNNING ({elapsed:.0f} s)")
            time.sleep(1)
"""

from __future__ import annotations

import shutil
import threading
from types import TracebackType
from typing import TextIO

#: Erase the line the cursor is on, from its start.
_ERASE = "\r\x1b[K"

#: C0 controls, DEL and C1 controls -> ``\xNN``: a job's name reaches the terminal
#: as text, never as a command to it.
_VISIBLE = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}

_lock = threading.Lock()
#: The lines on screen now.
_shown: set[StatusLine] = set()


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (a closed or odd stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class StatusLine:
    """One line of progress on ``stream``; ``live`` (by default: whether ``stream``
    is a terminal) decides whether anything is written at all."""

    def __init__(self, stream: TextIO, *, live: bool | None = None) -> None:
        self._stream = stream
        self.live = is_terminal(stream) if live is None else live

    def show(self, text: str) -> None:
        """Replace the line with ``text`` (cut to the terminal's width)."""
        if not self.live:
            return
        width = max(shutil.get_terminal_size().columns - 1, 20)
        text = text.translate(_VISIBLE)[:width]
        with _lock:
            self._stream.write(_ERASE + text)
            self._stream.flush()
            _shown.add(self)

    def clear(self) -> None:
        """Erase the line, if it is shown."""
        with _lock:
            self._clear()

    def _clear(self) -> None:
        if self in _shown:
            _shown.discard(self)
            self._stream.write(_ERASE)
            self._stream.flush()

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.clear()


def clear_status_lines() -> None:
    """Erase every line shown now (before a log line is written)."""
    if not _shown:  # the common case, without the lock
        return
    with _lock:
        for line in list(_shown):
            line._clear()
