"""The log shipper: log lines to local files and to CloudWatch Logs.

Every stream has a local file, and the file *is* the upload queue: writers
append timestamped lines to it (a fast, synchronous, never-blocking write), and
the stream's uploader reads batches back from the last shipped offset. So the
shipper never holds more than one batch in memory, a job is never blocked by a
slow or failing upload, and nothing is lost while CloudWatch is unreachable:
the backlog waits on disk.

Each file line is ``<timestamp> <message>``, the timestamp being 24 characters
of UTC ISO 8601 with milliseconds (``2026-11-24T15:54:01.123Z``), kept
non-decreasing so every batch is in chronological order.

Uploads respect PutLogEvents' limits: at most 1,048,576 bytes (each event
counting its UTF-8 size plus 26) and 10,000 events per call, events of at most
256 KiB (longer messages are split on UTF-8 boundaries), a batch spanning at
most 24 hours, and at most ``calls_per_second`` calls per stream (plus, at
once, the one that ships the rest of a closed stream). Errors back
off (``actors._backoff``); a missing log stream is created; events the
service rejects are skipped with a note in the agent log.

``LogStream.flush()`` waits until everything written so far is shipped; the
caller bounds the wait with a cancel scope.
"""

from __future__ import annotations

import enum
import functools
import math
import os
import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import attrs
import outcome
import structlog
import trio

from ._backoff import backoff_delay, honour_retry_after
from ._messages import Destination, LogEvent, LogShipperCommand, LogWriter, OpenLogStream

log = structlog.get_logger("farmhand.logs")

MAX_BATCH_BYTES = 1_048_576
MAX_BATCH_EVENTS = 10_000
EVENT_OVERHEAD_BYTES = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD_BYTES
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000
_TIMESTAMP_CHARS = 24  # 2026-11-24T15:54:01.123Z
_READ_BYTES = 2 * MAX_BATCH_BYTES


# ----------------------------------------------------------------------- sink


class SinkErrorKind(enum.Enum):
    RETRY = "retry"  # throttled, 5xx, transport: try the same batch again later
    MISSING = "missing"  # the group or stream does not exist: create it, then retry
    REJECTED = "rejected"  # the batch itself is unacceptable: skip it
    FATAL = "fatal"  # credentials, access: stop shipping this stream


class LogSinkError(Exception):
    def __init__(self, message: str, *, kind: SinkErrorKind, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


@attrs.frozen
class PutResult:
    #: Events the service would not take (too old, too new, expired), by count.
    rejected: int = 0


class LogSink(Protocol):
    """Where log batches go (CloudWatch Logs). Raises ``LogSinkError``."""

    async def put_log_events(
        self, group: str, stream: str, events: Sequence[LogEvent]
    ) -> PutResult: ...

    async def create_log_stream(self, group: str, stream: str) -> None: ...


# ----------------------------------------------------------------------- encoding


# Lines come in bursts within the same second: both conversions go through the
# second, cached (strftime and strptime are the costly part of a line).


@functools.lru_cache(maxsize=64)
def _second_text(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


@functools.lru_cache(maxsize=64)
def _second_of(text: str) -> int | None:
    try:
        return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    except ValueError:
        return None


def _format_timestamp(ms: int) -> str:
    return f"{_second_text(ms // 1000)}{ms % 1000:03d}Z"


def _parse_timestamp(text: str) -> int | None:
    if len(text) <= _TIMESTAMP_CHARS or text[_TIMESTAMP_CHARS - 1] != "Z":
        return None
    second = _second_of(text[:19])
    millis = text[20:23]
    if second is None or text[19] != "." or not millis.isdigit():
        return None
    return second * 1000 + int(millis)


def split_message(message: str, limit: int = MAX_EVENT_BYTES) -> list[str]:
    """Split ``message`` into pieces of at most ``limit`` UTF-8 bytes, on character boundaries."""
    data = message.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return [message]
    pieces = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1  # do not cut inside a character
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return pieces


@attrs.frozen
class _Batch:
    events: list[LogEvent]
    end_offset: int


def _read_batch(fd: int, offset: int, end: int, max_bytes: int, max_events: int) -> _Batch | None:
    """Parse the next batch of complete lines from the file between ``offset`` and ``end``."""
    if offset >= end:
        return None
    data = os.pread(fd, min(_READ_BYTES, end - offset), offset)
    events: list[LogEvent] = []
    size = 0
    position = 0
    first_ts: int | None = None
    while len(events) < max_events:
        newline = data.find(b"\n", position)
        next_position = newline + 1
        if newline < 0:
            if events or len(data) < _READ_BYTES:
                break
            # A single line longer than a whole read: ship what we have of it.
            newline = len(data)
            while newline > position and (data[newline - 1] & 0xC0) == 0x80:
                newline -= 1
            next_position = newline
        raw = data[position:newline]
        text = raw.decode("utf-8", "backslashreplace")
        timestamp = _parse_timestamp(text)
        if timestamp is None:
            timestamp = first_ts if first_ts is not None else 0
            message = text
        else:
            message = text[_TIMESTAMP_CHARS + 1 :]
        pieces = split_message(message or " ")  # CloudWatch refuses empty messages
        cost = sum(len(p.encode("utf-8")) + EVENT_OVERHEAD_BYTES for p in pieces)
        if events and (
            size + cost > max_bytes
            or len(events) + len(pieces) > max_events
            or (first_ts is not None and timestamp - first_ts > MAX_BATCH_SPAN_MS)
        ):
            break
        if first_ts is None:
            first_ts = timestamp
        events.extend(LogEvent(timestamp, piece) for piece in pieces)
        size += cost
        position = next_position
    if not events:
        return None
    return _Batch(events, offset + position)


# ----------------------------------------------------------------------- streams


@attrs.frozen
class LogStreamStatistics:
    path: str
    destination: Destination | None
    bytes_written: int
    bytes_shipped: int
    events_shipped: int
    events_rejected: int
    upload_errors: int
    closed: bool

    @property
    def bytes_pending(self) -> int:
        return self.bytes_written - self.bytes_shipped


class LogStream:
    """One log: a local file, and (with a destination) its CloudWatch stream."""

    def __init__(
        self,
        path: Path,
        destination: Destination | None,
        *,
        mode: int = 0o600,
        compact_over: int | None = None,
        shipped_marker: Path | None = None,
    ) -> None:
        """``compact_over``: once everything is shipped and the file holds more than
        this many bytes, empty it (for a spool file that is not a log to keep).
        ``shipped_marker``: a file that keeps how much of ``path`` is shipped,
        rewritten (atomically) after each upload; a stream opened on a file an
        earlier agent wrote ships from there (a session taken over after a restart
        loses none of the lines the dead agent had not shipped)."""
        self.path = path
        self.destination = destination
        self._compact_over = compact_over
        self._marker = shipped_marker if compact_over is None else None
        self._base = 0  # bytes removed from the front of the file by compaction
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, mode)
        os.fchmod(self._fd, mode)
        self._start = os.fstat(self._fd).st_size  # appending to an existing file: ship what is new
        self._written = self._start
        self._start = min(self._start, _read_marker(self._marker))
        self._shipped = self._start
        self._given_up = False
        self._last_ms = 0
        self._events_shipped = 0
        self._events_rejected = 0
        self._errors = 0
        self._closed = False
        self._closed_event = trio.Event()
        self._changed = trio.Event()

    # ---- writing (synchronous; never waits on the network)

    def write(self, lines: Iterable[str], *, at: datetime | None = None) -> None:
        """Append ``lines`` with one timestamp (now by default)."""
        if self._closed:
            raise trio.ClosedResourceError("log stream is closed")
        ms = int((at or datetime.now(UTC)).timestamp() * 1000)
        ms = max(ms, self._last_ms)  # keep the file (and every batch) in order
        self._last_ms = ms
        prefix = _format_timestamp(ms) + " "
        text = "".join(f"{prefix}{line}\n" for line in _single_lines(lines))
        if not text:
            return
        data = text.encode("utf-8", "backslashreplace")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._written += len(data)
        if self.destination is None:
            self._shipped = self._written
        self._wake()

    @property
    def last_timestamp_ms(self) -> int:
        """The timestamp (ms since the epoch) of the latest line written (0: none yet)."""
        return self._last_ms

    def close(self) -> None:
        """No more writes; the uploader ships the rest, then ends."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)
            self._closed_event.set()
            self._wake()

    async def flush(self) -> None:
        """Wait until everything written so far is shipped (bound it with a cancel scope)."""
        target = self._written
        while self._shipped < target and not (self._closed and self._given_up):
            await self._changed.wait()

    def statistics(self) -> LogStreamStatistics:
        return LogStreamStatistics(
            str(self.path),
            self.destination,
            self._written - self._start,
            self._shipped - self._start,
            self._events_shipped,
            self._events_rejected,
            self._errors,
            self._closed,
        )

    # ---- uploading (the shipper's task)

    @property
    def done(self) -> bool:
        """Closed, and everything shipped (or given up on)."""
        return self._closed and (self._shipped >= self._written or self._given_up)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _upload(self, sink: LogSink, shipper: LogShipper) -> None:
        destination = self.destination
        assert destination is not None
        attempt = 0
        next_call = -math.inf
        read_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            while True:
                batch = _read_batch(
                    read_fd,
                    self._shipped - self._base,
                    self._written - self._base,
                    shipper.max_batch_bytes,
                    shipper.max_batch_events,
                )
                if batch is None:
                    if self._closed:
                        return
                    await self._changed.wait()
                    continue
                # Paced; but the last batch of a closed stream (nothing can follow it, and
                # a session waits on it to be reported done) goes at once.
                if self._closed:
                    if self._base + batch.end_offset < self._written:
                        await trio.sleep_until(next_call)
                else:
                    with trio.move_on_at(next_call):
                        await self._closed_event.wait()
                    if self._closed_event.is_set():
                        continue  # closed while waiting: read the rest, maybe all of it
                next_call = trio.current_time() + 1.0 / shipper.calls_per_second
                try:
                    result = await sink.put_log_events(
                        destination.group, destination.stream, batch.events
                    )
                except LogSinkError as exc:
                    self._errors += 1
                    shipper.errors += 1
                    if exc.kind is SinkErrorKind.FATAL:
                        log.error(
                            "logs.upload_failed",
                            stream=destination.stream,
                            error=str(exc),
                            fatal=True,
                        )
                        self._given_up = True
                        return
                    if exc.kind is SinkErrorKind.REJECTED:
                        log.warning(
                            "logs.batch_rejected",
                            stream=destination.stream,
                            error=str(exc),
                            events=len(batch.events),
                        )
                        self._events_rejected += len(batch.events)
                        self._advance(self._base + batch.end_offset)
                        continue
                    if exc.kind is SinkErrorKind.MISSING:
                        try:
                            await sink.create_log_stream(destination.group, destination.stream)
                        except LogSinkError as create_exc:
                            log.warning(
                                "logs.create_stream_failed",
                                stream=destination.stream,
                                error=str(create_exc),
                            )
                        else:
                            continue
                    attempt += 1
                    delay = shipper.backoff(attempt, exc.retry_after)
                    log.warning(
                        "logs.upload_retry",
                        stream=destination.stream,
                        error=str(exc),
                        attempt=attempt,
                        delay=round(delay, 3),
                    )
                    await trio.sleep(delay)
                    continue
                attempt = 0
                self._events_shipped += len(batch.events) - result.rejected
                self._events_rejected += result.rejected
                if result.rejected:
                    log.warning(
                        "logs.events_rejected", stream=destination.stream, count=result.rejected
                    )
                shipper.bytes_shipped += self._base + batch.end_offset - self._shipped
                self._advance(self._base + batch.end_offset)
        finally:
            os.close(read_fd)
            self._given_up = self._given_up or self._shipped < self._written
            self._wake()

    def _advance(self, offset: int) -> None:
        self._shipped = offset
        if self._marker is not None:
            _write_marker(self._marker, offset)
        compact = self._compact_over
        if (
            compact is not None
            and not self._closed
            and self._shipped == self._written
            and self._written - self._base > compact
        ):
            # Everything is shipped: start the spool file over.
            os.ftruncate(self._fd, 0)
            self._base = self._written
        self._wake()


def _read_marker(marker: Path | None) -> int:
    """The offset a shipped marker keeps (``inf``-like large when there is none)."""
    if marker is not None:
        try:
            return max(int(marker.read_text()), 0)
        except (OSError, ValueError):
            pass
    return 1 << 62


def _write_marker(marker: Path, offset: int) -> None:
    temporary = marker.with_name(f".{marker.name}.new")
    try:
        temporary.write_text(str(offset))
        os.replace(temporary, marker)
    except OSError as exc:  # a restart may then ship a few lines twice; never fail for it
        log.warning("logship.marker_failed", path=str(marker), error=str(exc))


def _single_lines(lines: Iterable[str]) -> Iterable[str]:
    for line in lines:
        if "\n" in line or "\r" in line:
            yield from line.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        else:
            yield line


@attrs.frozen
class LogShipperStatistics:
    streams: int
    bytes_shipped: int
    bytes_pending: int
    upload_errors: int


class LogShipper:
    """Owns the upload tasks of every open log stream.

    Start it with ``await nursery.start(shipper.run)``; it runs until cancelled.
    Streams opened while it runs start uploading at once.
    """

    def __init__(
        self,
        sink: LogSink | None,
        *,
        calls_per_second: float = 5.0,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_backoff: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.sink = sink
        self.calls_per_second = calls_per_second
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_events = max_batch_events
        self.max_backoff = max_backoff
        self._rng = rng or random.Random()
        self._nursery: trio.Nursery | None = None
        self._streams: list[LogStream] = []
        self.bytes_shipped = 0
        self.errors = 0

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[
            trio.MemorySendChannel[LogShipperCommand]
        ] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Ship until cancelled; ``started`` with the inbox (``OpenLogStream``)."""
        send, receive = trio.open_memory_channel[LogShipperCommand](16)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            with receive:
                task_status.started(send)
                async for command in receive:
                    # An unwritable path is the asker's error, not the shipper's.
                    reply = outcome.capture(
                        self.open_stream,
                        command.path,
                        command.destination,
                        compact_over=command.compact_over,
                        shipped_marker=command.shipped_marker,
                    )
                    with command.reply_to:
                        try:
                            command.reply_to.send_nowait(reply)
                        except (trio.BrokenResourceError, trio.WouldBlock):
                            if isinstance(reply, outcome.Value):
                                reply.value.close()  # the asker went away
            await trio.sleep_forever()  # the streams ship on until cancelled

    def open_stream(
        self,
        path: Path,
        destination: Destination | None = None,
        *,
        compact_over: int | None = None,
        shipped_marker: Path | None = None,
    ) -> LogStream:
        """A new stream writing to ``path`` (0600) and, with a destination, to CloudWatch.
        ``compact_over``: the file is a spool, emptied once shipped; ``shipped_marker``:
        the shipped offset is kept there (see ``LogStream``)."""
        if destination is not None and self.sink is None:
            destination = None
        stream = LogStream(
            path, destination, compact_over=compact_over, shipped_marker=shipped_marker
        )
        self._streams = [s for s in self._streams if not s.done]
        self._streams.append(stream)
        if destination is not None:
            if self._nursery is None:
                raise RuntimeError("the log shipper is not running")
            assert self.sink is not None
            self._nursery.start_soon(stream._upload, self.sink, self)
        return stream

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """The wait before upload retry ``attempt`` (``actors._backoff``), with
        ``retry_after`` as a lower bound."""
        delay = backoff_delay(attempt, self._rng.random(), cap=self.max_backoff)
        return honour_retry_after(delay, retry_after, self._rng.random())

    def statistics(self) -> LogShipperStatistics:
        stats = [s.statistics() for s in self._streams]
        return LogShipperStatistics(
            streams=sum(not s.closed for s in stats),
            bytes_shipped=self.bytes_shipped,
            bytes_pending=sum(s.bytes_pending for s in stats if s.destination is not None),
            upload_errors=self.errors,
        )


async def open_log_stream(
    shipper: trio.MemorySendChannel[LogShipperCommand],
    path: Path,
    destination: Destination | None = None,
    *,
    compact_over: int | None = None,
    shipped_marker: Path | None = None,
) -> LogStream:
    """Ask the log shipper for a new stream (see ``LogShipper.open_stream``)."""
    reply_send, reply_receive = trio.open_memory_channel[outcome.Outcome[LogWriter]](1)
    with reply_receive:
        await shipper.send(
            OpenLogStream(path, destination, reply_send, compact_over, shipped_marker)
        )
        stream = (await reply_receive.receive()).unwrap()
    assert isinstance(stream, LogStream)  # the shipper opens nothing else
    return stream
