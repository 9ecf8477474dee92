"""The log shipper's sink for CloudWatch Logs, over farmhand's async Logs client.

The shipper does its own backoff, so the client is used without retries and
its errors are sorted into what the shipper should do about them.
"""

from __future__ import annotations

from collections.abc import Sequence

from actors._logship import LogEvent, LogSinkError, PutResult, SinkErrorKind

from .._errors import (
    AccessDeniedError,
    CredentialsError,
    FarmhandError,
    InternalServerError,
    NotFoundError,
    RetriesExhausted,
    ThrottlingError,
    TransportError,
    ValidationError,
)
from ..deadline import LogsClient


def _kind(exc: FarmhandError) -> SinkErrorKind:
    if isinstance(exc, NotFoundError):
        return SinkErrorKind.MISSING
    if isinstance(exc, ValidationError):
        return SinkErrorKind.REJECTED
    if isinstance(exc, AccessDeniedError):
        return SinkErrorKind.FATAL
    if isinstance(
        exc,
        ThrottlingError
        | InternalServerError
        | TransportError
        | RetriesExhausted
        | CredentialsError,
    ):
        return SinkErrorKind.RETRY
    # Anything else the service says (a conflict, an unknown error) is worth another try later.
    return SinkErrorKind.RETRY


class CloudWatchSink:
    def __init__(self, client: LogsClient) -> None:
        self._client = client

    async def put_log_events(
        self, group: str, stream: str, events: Sequence[LogEvent]
    ) -> PutResult:
        try:
            response = await self._client.put_log_events(
                log_group_name=group,
                log_stream_name=stream,
                log_events=[{"timestamp": e.timestamp, "message": e.message} for e in events],
            )
        except FarmhandError as exc:
            raise LogSinkError(
                str(exc), kind=_kind(exc), retry_after=getattr(exc, "retry_after", None)
            ) from exc
        info = response.get("rejectedLogEventsInfo") or {}
        rejected = 0
        if "tooNewLogEventStartIndex" in info:
            rejected += len(events) - int(info["tooNewLogEventStartIndex"])
        if "tooOldLogEventEndIndex" in info:
            rejected += int(info["tooOldLogEventEndIndex"])
        elif "expiredLogEventEndIndex" in info:
            rejected += int(info["expiredLogEventEndIndex"])
        return PutResult(rejected=min(rejected, len(events)))

    async def create_log_stream(self, group: str, stream: str) -> None:
        try:
            try:
                await self._client.create_log_stream(
                    log_group_name=group, log_stream_name=stream, exist_ok=True
                )
            except NotFoundError:
                # The group is missing too (a farm that does not make them for us).
                await self._client.create_log_group(log_group_name=group, exist_ok=True)
                await self._client.create_log_stream(
                    log_group_name=group, log_stream_name=stream, exist_ok=True
                )
        except FarmhandError as exc:
            raise LogSinkError(str(exc), kind=_kind(exc)) from exc
