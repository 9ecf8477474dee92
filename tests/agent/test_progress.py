"""``agent._progress``: a progress line on a terminal, nothing elsewhere (issue 17)."""

from __future__ import annotations

import io
import os

import structlog
import trio

from agent._logging import configure_logging
from agent._progress import StatusLine, clear_status_lines
from agent.worker._config import WorkerConfig
from agent.worker._embed import show_startup


def test_nothing_is_written_where_no_one_watches() -> None:
    """Piped or redirected (not a terminal), the line writes nothing at all."""
    stream = io.StringIO()
    with StatusLine(stream) as line:
        assert not line.live
        line.show("[farmhand] waiting")
        line.clear()
    assert stream.getvalue() == ""


def test_a_terminal_gets_the_line_rewritten_in_place() -> None:
    """On a terminal the line is rewritten in place, its text visible (no escape
    sequences of a job's name reach the terminal), and cleared at the end."""
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            assert StatusLine(tty).live
        stream = io.StringIO()
        with StatusLine(stream, live=True) as line:
            line.show("[farmhand] job \x1b[2J: 1 s")
            line.show("[farmhand] job: 2 s")
        assert stream.getvalue() == (
            "\r\x1b[K[farmhand] job \\x1b[2J: 1 s\r\x1b[K[farmhand] job: 2 s\r\x1b[K"
        )
    finally:
        os.close(master)
        os.close(slave)


def test_a_log_line_clears_the_progress_line_first() -> None:
    """A log line never lands in the middle of the progress line: it is cleared first."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        line = StatusLine(stream, live=True)
        line.show("[farmhand] starting")
        structlog.get_logger("test").info("worker.started")
        text = stream.getvalue()
        assert text.startswith("\r\x1b[K[farmhand] starting\r\x1b[K")
        assert "worker.started" in text.split("\r\x1b[K")[2]
        clear_status_lines()  # nothing shown any more: nothing written
        assert stream.getvalue() == text
    finally:
        configure_logging()


async def test_a_slow_worker_start_up_shows_how_long_it_has_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a second, and each second after, the worker's start-up says how long it
    has taken; the line goes when the worker has started."""
    stream = io.StringIO()
    line = StatusLine(stream, live=True)
    config = WorkerConfig(farm_id="farm-1", fleet_id="fleet-1")
    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(show_startup, line, config, scope)
        await trio.sleep(3.5)
        scope.cancel(reason="the worker has started")
    shown = [part for part in stream.getvalue().split("\r\x1b[K") if part]
    assert shown == [
        f"[farmhand] starting the worker: {n} s so far (farm farm-1, fleet fleet-1)"
        for n in (1, 2, 3)
    ]
    assert stream.getvalue().endswith("\r\x1b[K")
