"""Where a job's output lines go: sinks for ``JobRun``.

A sink is anything with a synchronous, non-blocking ``write(lines)``; a job run
calls it with each batch of output lines as they come. The caller owns its
sinks: it opens them before the run and closes (flushes) them after it.

- ``LogFile``: a plain local file, the lines appended as written, optionally
  each with a UTC timestamp.
- ``open_cloudwatch_log``: a CloudWatch Logs stream through the log shipper
  (``actors._logship``); the sink is the shipper's ``LogStream``, whose local
  spool file is the upload queue, so a slow or unreachable CloudWatch never
  blocks the job and loses nothing while the block lasts.
- ``OutputTail``: the last lines in memory, for error messages and for
  adapters that look at what a command printed.
- Any ``LogStream`` of a running ``LogShipper`` is a sink as it is.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol

import httpx
import structlog
import trio

from actors._logship import Destination, LogShipper, LogSinkError, LogStream

from ..deadline import (
    NO_RETRIES,
    CredentialHolder,
    LogsClient,
    load_default_credentials,
    resolve_endpoint,
)
from ..worker._logsink import CloudWatchSink

log = structlog.get_logger("farmhand.joblog")

#: How long closing a CloudWatch log waits for the last lines to be shipped.
FLUSH_SECONDS = 30.0


class OutputSink(Protocol):
    """Takes a job's output lines; must not block (it runs in the job's event loop)."""

    def write(self, lines: Sequence[str]) -> None: ...


class LogFile:
    """A local log file that lines are appended to as they come (no buffering).

    ``timestamps`` prefixes each line with its UTC time (``2026-11-24T15:54:01.123Z``).
    The directory is created. Use it as a context manager, or call ``close()``.
    """

    def __init__(self, path: Path, *, timestamps: bool = False, mode: int = 0o644) -> None:
        self.path = path
        self.timestamps = timestamps
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, mode
        )
        self.bytes_written = 0

    def write(self, lines: Sequence[str]) -> None:
        if self._fd is None:
            raise trio.ClosedResourceError(f"{self.path} is closed")
        if self.timestamps:
            now = datetime.now(UTC)
            prefix = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z "
            text = "".join(f"{prefix}{line}\n" for line in lines)
        else:
            text = "".join(f"{line}\n" for line in lines)
        view = memoryview(text.encode("utf-8", "backslashreplace"))
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self.bytes_written += written

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LogFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class OutputTail:
    """The last ``size`` lines written, in memory."""

    def __init__(self, size: int = 50) -> None:
        self._lines: deque[str] = deque(maxlen=size)

    def write(self, lines: Sequence[str]) -> None:
        self._lines.extend(lines)

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    def contains(self, *needles: str) -> bool:
        """Whether any kept line contains any of ``needles``."""
        return any(needle in line for line in self._lines for needle in needles)


class Tee:
    """One sink that writes to several; a failing one is logged and skipped."""

    def __init__(self, sinks: Iterable[OutputSink]) -> None:
        self.sinks = list(sinks)

    def write(self, lines: Sequence[str]) -> None:
        for sink in self.sinks:
            try:
                sink.write(lines)
            except (OSError, trio.ClosedResourceError) as exc:
                # A full disk or a closed log must not stop the job.
                log.error("joblog.write_failed", sink=type(sink).__name__, error=str(exc))


@asynccontextmanager
async def open_cloudwatch_log(
    group: str,
    stream: str,
    *,
    spool: Path,
    http: httpx.AsyncClient | None = None,
    credentials: CredentialHolder | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    create: bool = True,
    flush_seconds: float = FLUSH_SECONDS,
) -> AsyncIterator[LogStream]:
    """Ship lines written to the yielded stream to CloudWatch Logs ``group``/``stream``.

    ``spool`` is the local file the lines wait in until they are shipped (it
    keeps them: it is the job's local log too). The group and stream are
    created when missing (``create``). Credentials default to botocore's
    chain, the endpoint to the region's (``AWS_ENDPOINT_URL_CLOUDWATCH_LOGS``
    and ``endpoint_url`` override it). Leaving the block waits up to
    ``flush_seconds`` for the rest to be shipped, then logs what was not.
    """
    endpoint = await trio.to_thread.run_sync(
        lambda: resolve_endpoint("logs", region=region, endpoint_url=endpoint_url)
    )
    if credentials is None:
        credentials = CredentialHolder(await load_default_credentials())
    own_http = http is None
    client = http or httpx.AsyncClient(timeout=httpx.Timeout(30.0))
    try:
        # The shipper backs off on its own; the client must not retry under it.
        logs = LogsClient(client, endpoint, credentials, default_policy=NO_RETRIES)
        sink = CloudWatchSink(logs)
        async with trio.open_nursery() as nursery:
            shipper: LogShipper = await nursery.start(LogShipper(sink).run)
            if create:
                # The shipper creates a missing stream (and group) itself too; doing it
                # first only spares the first batch a round trip.
                with trio.move_on_after(flush_seconds):
                    try:
                        await sink.create_log_stream(group, stream)
                    except LogSinkError as exc:  # the shipper retries; this is best effort
                        log.warning("joblog.create_stream_failed", stream=stream, error=str(exc))
            log_stream = shipper.open_stream(spool, Destination(group, stream))
            try:
                yield log_stream
            finally:
                log_stream.close()
                with trio.move_on_after(flush_seconds, shield=True) as scope:
                    await log_stream.flush()
                if scope.cancelled_caught:
                    log.warning(
                        "joblog.flush_timeout",
                        stream=stream,
                        bytes_pending=log_stream.statistics().bytes_pending,
                        spool=str(spool),
                    )
                nursery.cancel_scope.cancel(reason="the CloudWatch log is closed")
    finally:
        if own_http:
            with trio.CancelScope(shield=True):
                await client.aclose()
