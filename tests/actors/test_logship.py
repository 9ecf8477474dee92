"""The log shipper: local files as the upload queue, PutLogEvents limits, errors."""

from __future__ import annotations

import itertools
import os
import random
import stat
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from actors._logship import (
    EVENT_OVERHEAD_BYTES,
    MAX_EVENT_BYTES,
    Destination,
    LogEvent,
    LogShipper,
    LogSinkError,
    PutResult,
    SinkErrorKind,
    split_message,
)

DEST = Destination("/aws/deadline/farm/queue", "session-1")


class FakeSink:
    """Records calls; fails on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, str, list[LogEvent]]] = []
        self.failures: list[LogSinkError] = []
        self.streams: set[tuple[str, str]] = {(DEST.group, DEST.stream)}
        self.created: list[tuple[str, str]] = []
        self.reject_counts: list[int] = []

    async def put_log_events(
        self, group: str, stream: str, events: Sequence[LogEvent]
    ) -> PutResult:
        await trio.lowlevel.checkpoint()
        if (group, stream) not in self.streams:
            raise LogSinkError(
                "The specified log stream does not exist.", kind=SinkErrorKind.MISSING
            )
        if self.failures:
            raise self.failures.pop(0)
        self.calls.append((trio.current_time(), group, stream, list(events)))
        return PutResult(rejected=self.reject_counts.pop(0) if self.reject_counts else 0)

    async def create_log_stream(self, group: str, stream: str) -> None:
        await trio.lowlevel.checkpoint()
        self.created.append((group, stream))
        self.streams.add((group, stream))

    def messages(self) -> list[str]:
        return [e.message for _, _, _, events in self.calls for e in events]


async def start(nursery: trio.Nursery, sink: FakeSink, **options: object) -> LogShipper:
    shipper = LogShipper(sink, rng=random.Random(7), **options)  # type: ignore[arg-type]
    await nursery.start(shipper.run)
    return shipper


async def test_lines_reach_the_file_and_cloudwatch_in_order(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Written lines land in the 0600 local file at once and are shipped in order."""
    sink = FakeSink()
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        stream = shipper.open_stream(tmp_path / "queue" / "session-1.log", DEST)
        stream.write(["first", "second"])
        stream.write(["third"])
        text = (tmp_path / "queue" / "session-1.log").read_text()
        assert [line[25:] for line in text.splitlines()] == ["first", "second", "third"]
        with trio.fail_after(5):
            await stream.flush()
        nursery.cancel_scope.cancel()
    assert sink.messages() == ["first", "second", "third"]
    assert stat.S_IMODE(os.stat(tmp_path / "queue" / "session-1.log").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "queue").st_mode) == 0o700


async def test_timestamps_are_kept_and_never_go_backwards(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Each event carries its write time in ms; a clock stepping back is clamped."""
    sink = FakeSink()
    t1 = datetime(2026, 11, 24, 10, 0, 0, 123000, tzinfo=UTC)
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        stream.write(["a"], at=t1)
        stream.write(["b"], at=t1 - timedelta(seconds=5))
        stream.write(["c"], at=t1 + timedelta(milliseconds=7))
        await stream.flush()
        nursery.cancel_scope.cancel()
    stamps = [e.timestamp for _, _, _, events in sink.calls for e in events]
    base = int(t1.timestamp() * 1000)
    assert stamps == [base, base, base + 7]


async def test_batches_respect_count_and_size_limits(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """No call carries more than the event-count or byte limit."""
    sink = FakeSink()
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink, max_batch_events=100, max_batch_bytes=10_000)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        stream.write([f"line {i:04d} " + "x" * 40 for i in range(1000)])
        await stream.flush()
        nursery.cancel_scope.cancel()
    for _, _, _, events in sink.calls:
        assert len(events) <= 100
        assert sum(len(e.message.encode()) + EVENT_OVERHEAD_BYTES for e in events) <= 10_000
    assert sink.messages() == [f"line {i:04d} " + "x" * 40 for i in range(1000)]


async def test_at_most_five_calls_per_second_per_stream(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Calls to one stream are spaced at least 1/5 s apart."""
    sink = FakeSink()
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink, max_batch_events=10)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        stream.write([str(i) for i in range(100)])
        await stream.flush()
        nursery.cancel_scope.cancel()
    times = [t for t, *_ in sink.calls]
    assert len(times) == 10
    assert all(b - a >= 0.2 - 1e-9 for a, b in itertools.pairwise(times))


def test_long_messages_split_on_utf8_boundaries() -> None:
    """A message over 256 KiB becomes several events, none cutting a character."""
    message = "é" * 200_000  # 400,000 bytes
    pieces = split_message(message)
    assert "".join(pieces) == message
    assert all(len(p.encode()) <= MAX_EVENT_BYTES for p in pieces)
    assert len(pieces) == 2


async def test_a_huge_line_is_shipped_in_several_events(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A line larger than one event goes out as consecutive events."""
    sink = FakeSink()
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        stream.write(["y" * 600_000])
        await stream.flush()
        nursery.cancel_scope.cancel()
    assert "".join(sink.messages()) == "y" * 600_000
    assert all(len(m) <= MAX_EVENT_BYTES for m in sink.messages())


async def test_errors_back_off_and_nothing_is_lost(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Throttling and outages are retried with growing delays; every line arrives once."""
    sink = FakeSink()
    sink.failures = [LogSinkError("boom", kind=SinkErrorKind.RETRY) for _ in range(5)]
    sink.failures.append(LogSinkError("slow down", kind=SinkErrorKind.RETRY, retry_after=7))
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        stream.write(["only line"])
        start_time = trio.current_time()
        await stream.flush()
        waited = trio.current_time() - start_time
        nursery.cancel_scope.cancel()
    assert sink.messages() == ["only line"]
    assert stream.statistics().upload_errors == 6
    assert waited >= 7  # retryAfter is a lower bound
    assert shipper.statistics().upload_errors == 6


async def test_writes_never_block_while_cloudwatch_is_down(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A failing CloudWatch leaves the backlog on disk; writing stays instant."""
    sink = FakeSink()
    sink.failures = [LogSinkError("down", kind=SinkErrorKind.RETRY) for _ in range(50)]
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        for i in range(200):
            stream.write([f"line {i} " + "z" * 1000])
        stats = stream.statistics()
        assert stats.bytes_pending == stats.bytes_written > 200_000
        assert shipper.statistics().bytes_pending == stats.bytes_pending
        await stream.flush()
        nursery.cancel_scope.cancel()
    assert len(sink.messages()) == 200
    assert stream.statistics().bytes_pending == 0


async def test_missing_stream_is_created(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """ResourceNotFound on the stream creates it and ships the batch."""
    sink = FakeSink()
    other = Destination("/aws/deadline/farm/queue", "session-2")
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        stream = shipper.open_stream(tmp_path / "s2.log", other)
        stream.write(["hello"])
        await stream.flush()
        nursery.cancel_scope.cancel()
    assert sink.created == [(other.group, other.stream)]
    assert sink.messages() == ["hello"]


async def test_rejected_batches_and_events_are_skipped_and_counted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A batch the service refuses is skipped; partially rejected events are counted."""
    sink = FakeSink()
    sink.failures = [LogSinkError("bad batch", kind=SinkErrorKind.REJECTED)]
    sink.reject_counts = [1]
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        stream.write(["refused"])
        await stream.flush()
        stream.write(["kept", "too old"])
        await stream.flush()
        nursery.cancel_scope.cancel()
    assert sink.messages() == ["kept", "too old"]
    stats = stream.statistics()
    assert (stats.events_shipped, stats.events_rejected) == (1, 2)


async def test_fatal_error_stops_shipping_but_not_writing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An access error ends the upload; the local file keeps every line; flush returns."""
    sink = FakeSink()
    sink.failures = [LogSinkError("AccessDenied", kind=SinkErrorKind.FATAL)]
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        stream.write(["one"])
        await trio.testing.wait_all_tasks_blocked()
        stream.write(["two"])
        stream.close()
        with trio.fail_after(5):
            await stream.flush()
        nursery.cancel_scope.cancel()
    assert sink.calls == []
    assert len((tmp_path / "s.log").read_text().splitlines()) == 2


async def test_close_ships_the_rest_then_the_uploader_ends(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """After close(), the remaining lines are shipped and the stream is done."""
    sink = FakeSink()
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        stream.write(["last words"])
        stream.close()
        await stream.flush()
        await trio.testing.wait_all_tasks_blocked()
        assert stream.done
        with pytest.raises(trio.ClosedResourceError):
            stream.write(["too late"])
        nursery.cancel_scope.cancel()
    assert sink.messages() == ["last words"]


async def test_local_only_stream_needs_no_sink(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Without a destination, lines go to the file only and flush returns at once."""
    async with trio.open_nursery() as nursery:
        shipper = LogShipper(None)
        await nursery.start(shipper.run)
        stream = shipper.open_stream(tmp_path / "agent.log")
        stream.write(["local only"])
        await stream.flush()
        nursery.cancel_scope.cancel()
    assert (tmp_path / "agent.log").read_text().endswith(" local only\n")


async def test_multiline_messages_become_separate_lines(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A message with newlines is stored and shipped as several lines."""
    sink = FakeSink()
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        stream.write(["a\nb\r\nc", ""])
        await stream.flush()
        nursery.cancel_scope.cancel()
    assert sink.messages() == ["a", "b", "c", " "]  # an empty line becomes a blank event


async def test_a_spool_stream_is_emptied_once_shipped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With compact_over, a fully shipped spool file starts over; nothing is lost or resent."""
    sink = FakeSink()
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink)
        from actors._logship import LogStream

        stream = LogStream(tmp_path / "agent.spool", DEST, compact_over=100)
        nursery.start_soon(stream._upload, sink, shipper)
        for batch in range(5):
            stream.write([f"line {batch}-{i} " + "x" * 30 for i in range(5)])
            await stream.flush()
            assert (tmp_path / "agent.spool").stat().st_size == 0
        stats = stream.statistics()
        nursery.cancel_scope.cancel()
    assert sink.messages() == [f"line {b}-{i} " + "x" * 30 for b in range(5) for i in range(5)]
    assert stats.bytes_pending == 0 and stats.bytes_written == stats.bytes_shipped > 500


async def test_the_last_batch_of_a_closed_stream_is_not_held_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Closing a stream (a session ending) ships its last lines at once, not a pacing
    interval later; a backlog is still paced."""
    sink = FakeSink()
    async with trio.open_nursery() as nursery:
        shipper = await start(nursery, sink, max_batch_events=10)
        stream = shipper.open_stream(tmp_path / "s.log", DEST)
        stream.write(["first"])
        await stream.flush()
        stream.write(["last"])
        stream.close()  # right after a call: the pace would hold it for 0.2 s
        await stream.flush()
        closed_at = trio.current_time()
        busy = shipper.open_stream(tmp_path / "b.log", DEST)
        busy.write([str(i) for i in range(30)])
        busy.close()
        await busy.flush()
        nursery.cancel_scope.cancel()
    times = [t for t, *_ in sink.calls]
    assert times[:2] == [0.0, 0.0]
    assert closed_at == 0.0
    # The closed backlog: paced, but its last batch not held back.
    assert [round(t - closed_at, 6) for t in times[2:]] == [0.0, 0.2, 0.2]
