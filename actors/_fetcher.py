"""The entity fetcher: BatchGetJobEntity, batched, deduplicated and shared.

Session runners ask for the job entities their actions need (``Fetch``); the
fetcher answers each request on its own reply channel. Between them:

- requests that arrive together are pooled and sent in batches of at most
  ``max_batch`` (10, the API's limit) identifiers, duplicates removed;
- a request for an entity that is already being fetched waits for that fetch
  instead of starting another;
- results are cached *per session* (the worker API contract forbids sharing
  them across sessions, because a job can change); ``Forget`` drops a session's
  cache when the session ends;
- an entity reported ``MaxPayloadSizeExceeded`` is asked for again on its own;
- every entity is validated strictly before anyone sees it;
- an entity-level error, or a whole call that fails, fails only the requests
  that needed it, and is not cached: the next request asks again.

The API call itself is injected (``BatchGet``), with the client's own retry
policy; the fetcher adds no retries of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import outcome
import structlog
import trio

from ._entities import EntityError, EntityKey, key_of, validate
from ._messages import Fetch, FetcherCommand, Forget, Replies

log = structlog.get_logger("farmhand.fetcher")

BatchGet = Callable[[list[dict[str, Any]]], Awaitable[Mapping[str, Any]]]
"""``identifiers -> BatchGetJobEntity response`` (``entities`` and ``errors``)."""


@attrs.frozen
class FetcherStatistics:
    calls: int
    entities_requested: int
    entities_fetched: int
    cache_hits: int
    shared_waits: int
    sessions_cached: int


@attrs.define(eq=False)
class _Record:
    done: trio.Event = attrs.field(factory=trio.Event)
    data: dict[str, Any] | None = None
    error: EntityError | None = None


class EntityFetcher:
    def __init__(self, batch_get: BatchGet, *, max_batch: int = 10) -> None:
        self._batch_get = batch_get
        self._max_batch = max_batch
        self._caches: dict[str, dict[EntityKey, _Record]] = {}
        self._calls = 0
        self._requested = 0
        self._fetched = 0
        self._hits = 0
        self._shared = 0

    def statistics(self) -> FetcherStatistics:
        return FetcherStatistics(
            self._calls, self._requested, self._fetched, self._hits, self._shared, len(self._caches)
        )

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[
            trio.MemorySendChannel[FetcherCommand]
        ] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        send, receive = trio.open_memory_channel[FetcherCommand](64)
        async with trio.open_nursery() as nursery:
            task_status.started(send)
            with receive:
                async for command in receive:
                    commands = [command]
                    # Pool whatever else is already waiting, so it shares batches.
                    while True:
                        try:
                            commands.append(receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    self._dispatch(nursery, commands)
            nursery.cancel_scope.cancel(reason="the fetcher's inbox closed")

    def _dispatch(self, nursery: trio.Nursery, commands: list[FetcherCommand]) -> None:
        to_fetch: dict[tuple[str, EntityKey], dict[str, Any]] = {}
        for command in commands:
            if isinstance(command, Forget):
                self._caches.pop(command.session_id, None)
                continue
            cache = self._caches.setdefault(command.session_id, {})
            records: list[_Record] = []
            for identifier in command.identifiers:
                self._requested += 1
                key = key_of(identifier)
                record = cache.get(key)
                if record is None:
                    record = cache[key] = _Record()
                    to_fetch[(command.session_id, key)] = identifier
                elif record.done.is_set():
                    self._hits += 1
                else:
                    self._shared += 1
                records.append(record)
            nursery.start_soon(self._reply, command, records)
        by_session: dict[str, list[tuple[EntityKey, dict[str, Any]]]] = {}
        for (session_id, key), identifier in to_fetch.items():
            by_session.setdefault(session_id, []).append((key, identifier))
        for session_id, wanted in by_session.items():
            for start in range(0, len(wanted), self._max_batch):
                nursery.start_soon(self._fetch, session_id, wanted[start : start + self._max_batch])

    async def _reply(self, command: Fetch, records: list[_Record]) -> None:
        replies: Replies = []
        for record in records:
            await record.done.wait()
            if record.error is not None:
                replies.append(outcome.Error(record.error))
            else:
                assert record.data is not None
                replies.append(outcome.Value(record.data))
        with command.reply_to:
            try:
                command.reply_to.send_nowait(replies)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
                pass  # the asker went away

    async def _fetch(
        self, session_id: str, wanted: Sequence[tuple[EntityKey, dict[str, Any]]]
    ) -> None:
        self._calls += 1
        identifiers = [identifier for _, identifier in wanted]
        try:
            response = await self._batch_get(identifiers)
        except Exception as exc:  # the whole call failed (after the client's retries)
            code = getattr(exc, "code", None) or type(exc).__name__
            for key, _ in wanted:
                self._finish(session_id, key, error=EntityError(key, str(code), str(exc)))
            return
        found = self._collect(response)
        retry_alone: list[tuple[EntityKey, dict[str, Any]]] = []
        for key, identifier in wanted:
            entry = found.get(key)
            if entry is None:
                error = EntityError(
                    key, "MissingFromResponse", "the service did not return this entity"
                )
                self._finish(session_id, key, error=error)
            elif isinstance(entry, EntityError):
                if entry.code == "MaxPayloadSizeExceeded" and len(wanted) > 1:
                    retry_alone.append((key, identifier))
                else:
                    self._finish(session_id, key, error=entry)
            else:
                self._fetched += 1
                self._finish(session_id, key, data=entry)
        for item in retry_alone:
            await self._fetch(session_id, [item])

    @staticmethod
    def _collect(response: Mapping[str, Any]) -> dict[EntityKey, dict[str, Any] | EntityError]:
        found: dict[EntityKey, dict[str, Any] | EntityError] = {}
        for wrapper in response.get("entities") or ():
            try:
                key = key_of(wrapper)
                [(kind, data)] = wrapper.items()
                validate(kind, data)
            except ValueError as exc:
                log.warning("fetcher.invalid_entity", error=str(exc))
                try:
                    found[key_of(wrapper)] = EntityError(
                        key_of(wrapper), "ValidationFailed", str(exc)
                    )
                except ValueError:
                    pass  # unattributable garbage: the wanted entity shows up as missing
                continue
            found[key] = dict(data)
        for wrapper in response.get("errors") or ():
            try:
                key = key_of(wrapper)
            except ValueError:
                continue
            [(_, body)] = wrapper.items()
            found[key] = EntityError(
                key, str(body.get("code", "Unknown")), str(body.get("message", ""))
            )
        return found

    def _finish(
        self,
        session_id: str,
        key: EntityKey,
        *,
        data: dict[str, Any] | None = None,
        error: EntityError | None = None,
    ) -> None:
        cache = self._caches.get(session_id)
        record = cache.pop(key, None) if cache is not None else None
        if cache is None or record is None:
            return  # the session was forgotten meanwhile
        record.data, record.error = data, error
        record.done.set()
        if error is None:
            # Errors are not final: the next request for the entity asks again.
            cache[key] = record


async def fetch(
    fetcher: trio.MemorySendChannel[FetcherCommand],
    session_id: str,
    identifiers: Sequence[dict[str, Any]],
) -> Replies:
    """Ask the fetcher and wait for its answer (one outcome per identifier)."""
    reply_send, reply_receive = trio.open_memory_channel[Replies](1)
    with reply_receive:
        await fetcher.send(Fetch(session_id, tuple(identifiers), reply_send))
        return await reply_receive.receive()
