"""CloudWatch Logs, enough to ship logs to and read them back.

The farm creates the groups and streams a worker writes to (the service does
that for Deadline: ``/aws/deadline/<farm>/<fleet>`` for worker logs,
``/aws/deadline/<farm>/<queue>`` with one stream per session). ``PutLogEvents``
enforces the service's limits:

- at most 10,000 events (the model) and 1,048,576 bytes per batch, counting
  each event's UTF-8 message plus 26 bytes;
- at most 262,144 bytes per event (message plus 26);
- events in chronological order, spanning at most 24 hours;
- events more than 2 hours in the future, or older than 14 days, are not stored
  and are reported in ``rejectedLogEventsInfo``;
- a missing group or stream is ``ResourceNotFoundException``.

Sequence tokens are accepted and ignored, as the service does since 2023.

Reading back: ``GetLogEvents`` pages one stream forwards or backwards with the
tokens it returns (``startTime`` inclusive, ``endTime`` exclusive, as the
service documents); ``FilterLogEvents`` reads a group's streams (all, by name or
by prefix) in time order, ``startTime`` and ``endTime`` both inclusive, with a
filter pattern of terms (``ERROR``, ``"exact phrase"``, ``-excluded``, and
``?either ?or``); JSON and space-delimited patterns are refused.
"""

from __future__ import annotations

import shlex
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

import attrs

from ._apierrors import ApiError

MAX_BATCH_BYTES = 1_048_576
MAX_EVENT_BYTES = 262_144
EVENT_OVERHEAD = 26
MAX_SPAN_MS = 24 * 3600 * 1000
TOO_NEW_MS = 2 * 3600 * 1000
TOO_OLD_MS = 14 * 24 * 3600 * 1000
ACCOUNT = "123456789012"
_T = TypeVar("_T")


def _invalid(message: str) -> ApiError:
    return ApiError("InvalidParameterException", message)


def _no_group() -> ApiError:
    return ApiError("ResourceNotFoundException", "The specified log group does not exist.")


def _no_stream() -> ApiError:
    return ApiError("ResourceNotFoundException", "The specified log stream does not exist.")


def now_ms() -> int:
    return int(time.time() * 1000)


@attrs.frozen
class LogEvent:
    timestamp: int
    message: str
    ingestion_time: int


@attrs.define(eq=False)
class LogStream:
    name: str
    creation_time: int
    events: list[LogEvent] = attrs.Factory(list)
    stored_bytes: int = 0
    sequence: int = 0
    #: Events accepted (kept or not: see ``LogStore(keep_events=...)``).
    received: int = 0

    def messages(self) -> list[str]:
        return [event.message for event in self.events]


@attrs.define(eq=False)
class LogGroup:
    name: str
    creation_time: int
    region: str
    streams: dict[str, LogStream] = attrs.Factory(dict)

    @property
    def arn(self) -> str:
        return f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{self.name}"


class LogJournal(Protocol):
    """Where a persistent farm's log changes go (``_store.FarmStore``)."""

    def log_group_created(self, name: str, creation_time: int, region: str) -> None: ...
    def log_group_deleted(self, name: str) -> None: ...
    def log_stream_changed(self, group: str, stream: LogStream) -> None: ...
    def log_stream_deleted(self, group: str, name: str) -> None: ...
    def log_events_added(self, group: str, stream: str, events: list[LogEvent]) -> None: ...


class LogStore:
    """Log groups, streams and events, with the ``logs`` operations as handlers."""

    def __init__(
        self,
        *,
        region: str = "us-west-2",
        on_change: Callable[[], None] | None = None,
        keep_events: bool = True,
    ) -> None:
        """``keep_events=False``: events are checked and counted, not kept."""
        self.region = region
        self.keep_events = keep_events
        self.groups: dict[str, LogGroup] = {}
        #: Told of every change when the farm is persistent (``None``: in memory only).
        self.journal: LogJournal | None = None
        self._on_change = on_change or (lambda: None)
        #: Told of the messages each PutLogEvents brings: (group, stream, messages).
        self.on_events: Callable[[str, str, list[str]], None] | None = None
        self.handlers: dict[str, Callable[[dict[str, Any]], Mapping[str, Any]]] = {
            "PutLogEvents": self.put_log_events,
            "CreateLogGroup": self.create_log_group,
            "CreateLogStream": self.create_log_stream,
            "DeleteLogGroup": self.delete_log_group,
            "DeleteLogStream": self.delete_log_stream,
            "GetLogEvents": self.get_log_events,
            "FilterLogEvents": self.filter_log_events,
            "DescribeLogGroups": self.describe_log_groups,
            "DescribeLogStreams": self.describe_log_streams,
        }

    # -- for the farm and for tests

    def ensure_stream(self, group_name: str, stream_name: str) -> LogStream:
        """Create the group and stream if needed, as the service does for sessions."""
        group = self.groups.get(group_name)
        if group is None:
            group = self._new_group(group_name)
        stream = group.streams.get(stream_name)
        if stream is None:
            stream = self._new_stream(group, stream_name)
        return stream

    def _new_group(self, name: str) -> LogGroup:
        group = self.groups[name] = LogGroup(name, now_ms(), self.region)
        if self.journal is not None:
            self.journal.log_group_created(name, group.creation_time, group.region)
        return group

    def _new_stream(self, group: LogGroup, name: str) -> LogStream:
        stream = group.streams[name] = LogStream(name, now_ms())
        if self.journal is not None:
            self.journal.log_stream_changed(group.name, stream)
        return stream

    def stream(self, group_name: str, stream_name: str) -> LogStream | None:
        group = self.groups.get(group_name)
        return None if group is None else group.streams.get(stream_name)

    def events(self, group_name: str, stream_name: str) -> list[LogEvent]:
        stream = self.stream(group_name, stream_name)
        return [] if stream is None else list(stream.events)

    def messages(self, group_name: str, stream_name: str) -> list[str]:
        return [event.message for event in self.events(group_name, stream_name)]

    # -- handlers

    def _group(self, params: Mapping[str, Any]) -> LogGroup:
        name = params.get("logGroupName")
        identifier = params.get("logGroupIdentifier")
        if name and identifier:
            raise _invalid("LogGroupName and LogGroupIdentifier are mutually exclusive.")
        if identifier:
            name = identifier.split(":log-group:", 1)[-1].removesuffix(":*")
        if not name:
            raise _invalid("Either logGroupName or logGroupIdentifier must be given.")
        group = self.groups.get(name)
        if group is None:
            raise _no_group()
        return group

    def create_log_group(self, params: dict[str, Any]) -> Mapping[str, Any]:
        name = params["logGroupName"]
        if name in self.groups:
            raise ApiError(
                "ResourceAlreadyExistsException", "The specified log group already exists"
            )
        self._new_group(name)
        self._on_change()
        return {}

    def create_log_stream(self, params: dict[str, Any]) -> Mapping[str, Any]:
        group = self._group(params)
        name = params["logStreamName"]
        if name in group.streams:
            raise ApiError(
                "ResourceAlreadyExistsException", "The specified log stream already exists"
            )
        self._new_stream(group, name)
        self._on_change()
        return {}

    def delete_log_group(self, params: dict[str, Any]) -> Mapping[str, Any]:
        if self.groups.pop(params["logGroupName"], None) is None:
            raise _no_group()
        if self.journal is not None:
            self.journal.log_group_deleted(params["logGroupName"])
        self._on_change()
        return {}

    def delete_log_stream(self, params: dict[str, Any]) -> Mapping[str, Any]:
        group = self._group(params)
        if group.streams.pop(params["logStreamName"], None) is None:
            raise _no_stream()
        if self.journal is not None:
            self.journal.log_stream_deleted(group.name, params["logStreamName"])
        self._on_change()
        return {}

    def put_log_events(self, params: dict[str, Any]) -> Mapping[str, Any]:
        group = self._group(params)
        stream = group.streams.get(params["logStreamName"])
        if stream is None:
            raise _no_stream()
        events = params["logEvents"]
        total = 0
        previous = None
        for event in events:
            size = len(event["message"].encode("utf-8")) + EVENT_OVERHEAD
            if size > MAX_EVENT_BYTES:
                raise _invalid(
                    f"Log event too large: {size} bytes exceeds limit of {MAX_EVENT_BYTES}"
                )
            total += size
            if previous is not None and event["timestamp"] < previous:
                raise _invalid(
                    "Log events in a single PutLogEvents request must be in chronological order."
                )
            previous = event["timestamp"]
        if total > MAX_BATCH_BYTES:
            raise _invalid(f"Upload too large: {total} bytes exceeds limit of {MAX_BATCH_BYTES}")
        if events[-1]["timestamp"] - events[0]["timestamp"] > MAX_SPAN_MS:
            raise _invalid(
                "The batch of log events in a single PutLogEvents request cannot span more than 24 hours."
            )
        now = now_ms()
        too_new_start: int | None = None
        too_old_end: int | None = None
        kept_from = len(stream.events)
        for index, event in enumerate(events):
            timestamp = event["timestamp"]
            if timestamp > now + TOO_NEW_MS:
                if too_new_start is None:
                    too_new_start = index
                continue
            if timestamp < now - TOO_OLD_MS:
                too_old_end = index
                continue
            stream.received += 1
            if self.keep_events:
                stream.events.append(LogEvent(timestamp, event["message"], now))
            stream.stored_bytes += len(event["message"].encode("utf-8"))
        stream.sequence += 1
        if self.on_events is not None:
            self.on_events(group.name, stream.name, [event["message"] for event in events])
        if self.journal is not None:
            self.journal.log_events_added(group.name, stream.name, stream.events[kept_from:])
            self.journal.log_stream_changed(group.name, stream)
        self._on_change()
        result: dict[str, Any] = {"nextSequenceToken": f"{stream.sequence:056d}"}
        rejected = {
            "tooNewLogEventStartIndex": too_new_start,
            "tooOldLogEventEndIndex": too_old_end,
        }
        if too_new_start is not None or too_old_end is not None:
            result["rejectedLogEventsInfo"] = rejected
        return result

    def get_log_events(self, params: dict[str, Any]) -> Mapping[str, Any]:
        group = self._group(params)
        stream = group.streams.get(params["logStreamName"])
        if stream is None:
            raise _no_stream()
        start_time = params.get("startTime")
        end_time = params.get("endTime")
        events = stream.events
        if start_time is not None or end_time is not None:
            events = [
                e
                for e in events
                if (start_time is None or e.timestamp >= start_time)
                and (end_time is None or e.timestamp < end_time)
            ]
        limit = params.get("limit", 10_000)
        token = params.get("nextToken")
        if token:
            direction, _, position_text = token.partition("/")
            if direction not in ("f", "b") or not position_text.isdigit():
                raise _invalid("The specified nextToken is not valid.")
            position = min(int(position_text), len(events))
            if direction == "f":
                first, last = position, min(position + limit, len(events))
            else:
                first, last = max(0, position - limit), position
        elif params.get("startFromHead"):
            first, last = 0, min(limit, len(events))
        else:
            first, last = max(0, len(events) - limit), len(events)
        page = events[first:last]
        # Stay under the service's 1 MB response limit.
        size = 0
        for count, event in enumerate(page):
            size += len(event.message) + EVENT_OVERHEAD
            if size > MAX_BATCH_BYTES and count:
                page = page[:count]
                last = first + count
                break
        return {
            "events": [
                {"timestamp": e.timestamp, "message": e.message, "ingestionTime": e.ingestion_time}
                for e in page
            ],
            "nextForwardToken": f"f/{last:056d}",
            "nextBackwardToken": f"b/{first:056d}",
        }

    def filter_log_events(self, params: dict[str, Any]) -> Mapping[str, Any]:
        group = self._group(params)
        names = params.get("logStreamNames")
        prefix = params.get("logStreamNamePrefix")
        if names and prefix:
            raise _invalid("logStreamNames and logStreamNamePrefix are mutually exclusive.")
        if names:
            streams = [group.streams[n] for n in names if n in group.streams]
            if not streams:
                raise _no_stream()
        else:
            streams = [s for s in group.streams.values() if s.name.startswith(prefix or "")]
        matches = _pattern(params.get("filterPattern") or "")
        start, end = params.get("startTime"), params.get("endTime")
        found = sorted(
            (
                (event.timestamp, stream.name, index, event)
                for stream in streams
                for index, event in enumerate(stream.events)
                if (start is None or event.timestamp >= start)
                and (end is None or event.timestamp <= end)
                and matches(event.message)
            ),
            key=lambda item: item[:3],
        )
        token = params.get("nextToken")
        first = 0
        if token:
            if not token.startswith("filter/") or not token[7:].isdigit():
                raise _invalid("The specified nextToken is not valid.")
            first = int(token[7:])
        last = min(first + params.get("limit", 10_000), len(found))
        return {
            "events": [
                {
                    "logStreamName": name,
                    "timestamp": event.timestamp,
                    "message": event.message,
                    "ingestionTime": event.ingestion_time,
                    "eventId": f"{event.timestamp:020d}{index:016d}{zlib.crc32(name.encode()):010d}",
                }
                for _, name, index, event in found[first:last]
            ],
            "searchedLogStreams": [
                {"logStreamName": s.name, "searchedCompletely": True} for s in streams
            ],
            "nextToken": f"filter/{last:056d}" if last < len(found) else None,
        }

    def describe_log_groups(self, params: dict[str, Any]) -> Mapping[str, Any]:
        prefix = params.get("logGroupNamePrefix") or ""
        pattern = params.get("logGroupNamePattern")
        names = sorted(
            name
            for name in self.groups
            if name.startswith(prefix) and (not pattern or pattern in name)
        )
        page, token = _page(names, params.get("nextToken"), params.get("limit", 50))
        groups = [self.groups[name] for name in page]
        return {
            "logGroups": [
                {
                    "logGroupName": g.name,
                    "creationTime": g.creation_time,
                    "arn": g.arn + ":*",
                    "logGroupArn": g.arn,
                    "storedBytes": sum(s.stored_bytes for s in g.streams.values()),
                    "logGroupClass": "STANDARD",
                }
                for g in groups
            ],
            "nextToken": token,
        }

    def describe_log_streams(self, params: dict[str, Any]) -> Mapping[str, Any]:
        group = self._group(params)
        prefix = params.get("logStreamNamePrefix") or ""
        order_by = params.get("orderBy", "LogStreamName")
        if prefix and order_by == "LastEventTime":
            raise _invalid("Cannot order by LastEventTime with a logStreamNamePrefix.")
        streams = [s for s in group.streams.values() if s.name.startswith(prefix)]
        if order_by == "LastEventTime":
            streams.sort(key=lambda s: s.events[-1].timestamp if s.events else 0)
        else:
            streams.sort(key=lambda s: s.name)
        if params.get("descending"):
            streams.reverse()
        page, token = _page(streams, params.get("nextToken"), params.get("limit", 50))
        return {
            "logStreams": [
                {
                    "logStreamName": s.name,
                    "creationTime": s.creation_time,
                    "firstEventTimestamp": s.events[0].timestamp if s.events else None,
                    "lastEventTimestamp": s.events[-1].timestamp if s.events else None,
                    "lastIngestionTime": s.events[-1].ingestion_time if s.events else None,
                    "uploadSequenceToken": f"{s.sequence:056d}",
                    "arn": f"{group.arn}:log-stream:{s.name}",
                    "storedBytes": s.stored_bytes,
                }
                for s in page
            ],
            "nextToken": token,
        }

    def statistics(self) -> dict[str, int]:
        streams = [s for g in self.groups.values() for s in g.streams.values()]
        return {
            "groups": len(self.groups),
            "streams": len(streams),
            "events": sum(len(s.events) for s in streams),
            "events_received": sum(s.received for s in streams),
        }

    def __iter__(self) -> Iterator[LogGroup]:
        return iter(self.groups.values())


def _pattern(pattern: str) -> Callable[[str], bool]:
    """A CloudWatch Logs term filter pattern as a predicate over messages."""
    text = pattern.strip()
    if text.startswith(("{", "[")):
        raise _invalid(
            "The mock farm's FilterLogEvents takes term patterns only (no JSON or "
            "space-delimited patterns)."
        )
    if not text:
        return lambda _message: True
    try:
        terms = shlex.split(text)
    except ValueError as exc:
        raise _invalid(f"Invalid filter pattern: {exc}") from None
    required = [t for t in terms if not t.startswith(("-", "?"))]
    excluded = [t[1:] for t in terms if t.startswith("-") and len(t) > 1]
    optional = [t[1:] for t in terms if t.startswith("?") and len(t) > 1]

    def matches(message: str) -> bool:
        if any(term not in message for term in required):
            return False
        if any(term in message for term in excluded):
            return False
        return not optional or any(term in message for term in optional)

    return matches


def _page(items: list[_T], token: str | None, limit: int) -> tuple[list[_T], str | None]:
    start = 0
    if token:
        if not token.isdigit():
            raise _invalid("The specified nextToken is not valid.")
        start = int(token)
    end = start + limit
    return items[start:end], (str(end) if end < len(items) else None)
