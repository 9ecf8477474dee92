"""The ASGI application: one server for Deadline (rest-json) and CloudWatch Logs (JSON 1.1).

A request is routed by the models (``X-Amz-Target: Logs_20140328.*`` on ``POST /``
is CloudWatch Logs; anything else is matched against Deadline's URIs), parsed
and validated by the codec, passed through the fault injector, handled, and
answered with the output serialized from the model. SigV4 signatures are
verified when the farm was given keys (``open_mock_farm(keys=...)``, which
``mockfarm serve`` requires beyond loopback; see ``_sigv4``), else accepted as
they come. Every call is recorded.

Bad input never reaches a handler: malformed JSON, wrong types and constraint
violations are ``ValidationException`` (CloudWatch: ``InvalidParameterException``);
an unknown route is ``UnknownOperationException`` (404); a Deadline operation the
mock farm does not implement is ``NotImplementedException`` (501). A handler
that raises anything but ``ApiError`` is a bug: it is logged and answered with
``InternalServerErrorException`` (500).

A few non-AWS routes under ``/_mockfarm/`` help tools and benchmarks:
``GET /_mockfarm/info`` (the endpoint's default ids), ``GET|PUT /_mockfarm/faults``,
``POST /_mockfarm/workers/{id}/stop`` and ``/_mockfarm/ping``, a bare endpoint
that reads the body and answers ``{}`` without touching the farm. ``/monitor``
is the monitor page and its API, when the farm serves it (``_monitor``).
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import attrs
import structlog
import trio

from .._asgi import Receive, Scope, Send, answer_lifespan, is_loopback
from .._documents import load_json
from ._apierrors import ApiError, internal, validation
from ._codec import Operation, ServiceCodec, deadline_codec, logs_codec
from ._farm import Farm
from ._faults import FaultConfig, FaultInjector
from ._jobs import PREPARED, PREPARERS
from ._sigv4 import verify_request


class Routes(Protocol):
    """More routes on the farm's port (the monitor's, ``_monitor.Monitor``)."""

    async def serve(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None: ...


log = structlog.get_logger("farmhand.mockfarm")


_JSON = b"application/json"
#: The longest an operation's preparation (parsing a template) may take.
PREPARE_SECONDS = 30.0
_AMZ_JSON = b"application/x-amz-json-1.1"
_PING_BODY = b"{}"
_PING_HEADERS = [(b"content-type", _JSON), (b"content-length", b"2")]


@attrs.frozen
class CallRecord:
    """One request the farm answered (or dropped)."""

    operation: str
    #: ``deadline`` or ``logs``.
    service: str
    #: The parsed and validated input (``{}`` when the request did not parse).
    input: Mapping[str, Any]
    #: HTTP status sent (0 when the connection was dropped before an answer).
    status: int
    #: The error code sent, if any (``ThrottlingException``...).
    error: str | None
    #: ``trio.current_time()`` when the request arrived.
    time: float
    #: Wall-clock UTC when the request arrived.
    timestamp: datetime
    #: The connection was closed without a (complete) response.
    dropped: bool = False


class CallLog:
    """The calls the farm received, oldest first (bounded: the oldest are forgotten)."""

    def __init__(self, maxlen: int | None) -> None:
        self._calls: deque[CallRecord] = deque(maxlen=maxlen)
        self.counts: dict[str, int] = {}
        self.total = 0

    def append(self, record: CallRecord) -> None:
        self._calls.append(record)
        self.counts[record.operation] = self.counts.get(record.operation, 0) + 1
        self.total += 1

    def __iter__(self) -> Iterator[CallRecord]:
        return iter(list(self._calls))

    def __len__(self) -> int:
        return len(self._calls)

    def __getitem__(self, index: int) -> CallRecord:
        return self._calls[index]

    def to(self, operation: str) -> list[CallRecord]:
        """The recorded calls of one operation."""
        return [call for call in self._calls if call.operation == operation]

    def clear(self) -> None:
        self._calls.clear()


def _from_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    return client is not None and is_loopback(client[0])


class _Drop(Exception):
    """Do not answer (for up to ``hold`` seconds)."""

    def __init__(self, hold: float) -> None:
        super().__init__(hold)
        self.hold = hold


#: Calls that change nothing a worker could be given: they never wake held calls.
_READ_ONLY = ("Get", "List", "Search", "BatchGet")


def _may_bring_work(name: str, params: Mapping[str, Any]) -> bool:
    if name.startswith(_READ_ONLY):
        return False
    # A worker's plain heartbeat frees nothing; one that reports may (a failed task
    # requeued, a session ended, a dependency met).
    return name != "UpdateWorkerSchedule" or bool(params.get("updatedSessionActions"))


class MockFarmApp:
    """The ASGI callable serving one ``Farm``."""

    def __init__(
        self,
        farm: Farm,
        *,
        faults: FaultInjector,
        calls: CallLog,
        on_change: Callable[[], None],
        info: Callable[[], Mapping[str, Any]],
        stop_worker: Callable[[str], None],
        keys: Mapping[str, str] | None = None,
    ) -> None:
        self.farm = farm
        self.faults = faults
        self.calls = calls
        self._on_change = on_change
        self._info = info
        self._stop_worker = stop_worker
        #: access key id -> secret: verify every AWS request's signature (None: accept all).
        self._keys = keys
        self._deadline = deadline_codec()
        self._logs = logs_codec()
        #: The ``/monitor`` page and its API, when the farm serves them.
        self.monitor: Routes | None = None
        self._logs_prefix = (self._logs.target_prefix or "") + "."
        self._request_ids = itertools.count(1)
        #: Set (and replaced) when idle workers' held calls should look again.
        self._work_changed = trio.Event()
        #: UpdateWorkerSchedule calls being held now (long poll).
        self.held_calls = 0
        #: Templates parsed at once, in worker threads (each may take a core).
        self._prepare_limiter = trio.CapacityLimiter(2)
        #: ``(operation, client token) -> encoded output`` for idempotent retries.
        self._tokens: dict[tuple[str, str], bytes] = {}
        if farm.store is not None:
            for key, payload in farm.store.kv("tokens").items():
                operation_name, _, token = key.partition("\n")
                self._tokens[(operation_name, token)] = payload

    @property
    def deadline_codec(self) -> ServiceCodec:
        """The Deadline model's codec: what validates every request's input."""
        return self._deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await answer_lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        body = message.get("body", b"")
        while message.get("more_body"):
            message = await receive()
            body += message.get("body", b"")
        if message["type"] == "http.disconnect":
            return
        raw_path: bytes = scope["raw_path"]
        if self.monitor is not None and (
            raw_path == b"/monitor" or raw_path.startswith(b"/monitor/")
        ):
            await self.monitor.serve(scope, body, receive, send)
            return
        if raw_path.startswith(b"/_mockfarm/"):
            if self._keys is not None and scope["method"] != "GET" and not _from_loopback(scope):
                # The admin routes are unsigned: a farm open beyond loopback takes changes
                # (faults, stopping workers) from this host only.
                payload = b'{"message": "the /_mockfarm/ routes change nothing for remote clients"}'
                await self._respond(send, 403, [(b"content-type", _JSON)], payload)
                return
            if raw_path == b"/_mockfarm/ping":
                await send({"type": "http.response.start", "status": 200, "headers": _PING_HEADERS})
                await send({"type": "http.response.body", "body": _PING_BODY})
                return
            status, payload = self._admin(scope["method"], raw_path, body)
            await self._committed()
            await self._respond(send, status, [(b"content-type", _JSON)], payload)
            return
        try:
            status, headers, payload = await self._dispatch(scope, body)
        except _Drop as drop:
            # Never answer: to the client this is a lost response (it times out
            # and closes the connection). ASGI cannot close a connection before
            # a response starts, so this is what a dropped connection looks like.
            with trio.move_on_after(drop.hold):
                while (await receive())["type"] != "http.disconnect":
                    pass
                return
            # The client waited longer than the hold: give up with a response
            # that announces a body it never sends, and close.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"1024"), (b"connection", b"close")],
                }
            )
            return
        await self._committed()
        await self._respond(send, status, headers, payload)

    async def _committed(self) -> None:
        """A persistent farm answers once what the request changed (and all before) is
        committed: nothing a client was told is lost if the server dies."""
        if self.farm.store is not None:
            await self.farm.store.commit()

    async def _respond(
        self, send: Send, status: int, headers: list[tuple[bytes, bytes]], payload: bytes
    ) -> None:
        headers.append((b"content-length", str(len(payload)).encode()))
        headers.append((b"x-amzn-requestid", f"{next(self._request_ids):032x}".encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    # ------------------------------------------------------------ AWS requests

    def _route(self, scope: Scope) -> tuple[ServiceCodec, Operation | None, dict[str, str], str]:
        raw_path: bytes = scope["raw_path"]
        method: str = scope["method"]
        if raw_path == b"/" and method == "POST":
            for name, value in scope["headers"]:
                if name == b"x-amz-target":
                    target = value.decode("latin-1")
                    op_name = target.removeprefix(self._logs_prefix)
                    return self._logs, self._logs.operations.get(op_name), {}, op_name
        router = self._deadline.router
        assert router is not None
        found = router.match(method, raw_path)
        if found is None:
            return self._deadline, None, {}, f"{method} {raw_path.decode('latin-1')}"
        operation, labels = found
        return self._deadline, operation, labels, operation.name

    async def _dispatch(
        self, scope: Scope, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        arrived = trio.current_time()
        codec, operation, labels, name = self._route(scope)
        content_type = _JSON if codec is self._deadline else _AMZ_JSON
        if operation is None:
            error = ApiError(
                "UnknownOperationException",
                f"No {'CloudWatch Logs' if codec is self._logs else 'Deadline'} operation "
                f"matches {name}.",
                status=404 if codec is self._deadline else 400,
            )
            return self._error(codec, name, {}, error, arrived, content_type)
        handler = (
            self.farm.handlers.get(operation.name)
            if codec is self._deadline
            else self.farm.logs.handlers.get(operation.name)
        )
        try:
            if self._keys is not None:
                verify_request(
                    scope["method"],
                    scope["raw_path"],
                    scope["query_string"],
                    scope["headers"],
                    body,
                    self._secret_for,
                )
            params = operation.parse(labels, scope["query_string"], scope["headers"], body)
        except ApiError as invalid:
            if codec is self._logs and invalid.status != 403:
                # CloudWatch Logs names its validation error differently.
                invalid = ApiError("InvalidParameterException", invalid.message)
            return self._error(codec, name, {}, invalid, arrived, content_type)
        decision = self.faults.decide(name, params.get("workerId"))
        if decision.delay:
            await trio.sleep(decision.delay)
        if decision.drop_before:
            self._record(codec, name, params, 0, "DroppedConnection", arrived, dropped=True)
            raise _Drop(decision.drop_hold)
        if decision.error is not None:
            return self._error(codec, name, params, decision.error, arrived, content_type)
        if handler is None:
            error = ApiError(
                "NotImplementedException",
                f"farmhand's mock farm does not implement {name}.",
                status=501,
            )
            return self._error(codec, name, params, error, arrived, content_type)
        token_key = None
        if operation.idempotency_token is not None:
            token = params.get(operation.idempotency_token)
            if token is not None:
                token_key = (name, token)
                cached = self._tokens.get(token_key)
                if cached is not None:
                    self._record(codec, name, params, operation.status, None, arrived)
                    return operation.status, [(b"content-type", content_type)], cached
        prepare = PREPARERS.get(operation.name) if codec is self._deadline else None
        if prepare is not None:
            try:
                params[PREPARED] = await self._prepare(prepare, params, name)
            except ApiError as error:
                return self._error(codec, name, params, error, arrived, content_type)
        try:
            try:
                output = handler(params)
                if name == "UpdateWorkerSchedule" and codec is self._deadline:
                    output = await self._long_poll(handler, params, output)
            finally:
                params.pop(PREPARED, None)  # not part of the call's record
            payload = codec.encode_output(operation, output)
        except ApiError as error:
            self._on_change()
            return self._error(codec, name, params, error, arrived, content_type)
        except Exception:
            log.exception("mockfarm.handler_failed", operation=name)
            self._on_change()
            return self._error(
                codec,
                name,
                params,
                internal("The mock farm failed to handle the request; see its log."),
                arrived,
                content_type,
            )
        if token_key is not None:
            self._tokens[token_key] = payload
            if self.farm.store is not None:
                self.farm.store.put_kv("tokens", "\n".join(token_key), payload)
        self._on_change()
        if codec is self._deadline and _may_bring_work(name, params):
            self.wake_idle_workers()
        if decision.drop_after:
            self._record(
                codec, name, params, operation.status, "DroppedConnection", arrived, dropped=True
            )
            raise _Drop(decision.drop_hold)
        self._record(codec, name, params, operation.status, None, arrived)
        return operation.status, [(b"content-type", content_type)], payload

    def wake_idle_workers(self) -> None:
        """Something changed that may give an idle worker work: held calls look again."""
        self._work_changed.set()
        self._work_changed = trio.Event()

    async def _long_poll(
        self, handler: Callable[[dict[str, Any]], Any], params: dict[str, Any], output: Any
    ) -> Any:
        """Hold an idle worker's UpdateWorkerSchedule (``Farm.long_poll_seconds``) until
        its answer is no longer idle or the hold is over; the answer then."""
        seconds = self.farm.long_poll_seconds(params, output)
        if not seconds:
            return output
        self.held_calls += 1
        self._on_change()  # (for wait_until callers watching held_calls)
        try:
            with trio.move_on_after(seconds):
                while True:
                    # No checkpoint between the answer above and this wait: a change
                    # after it sets this very event.
                    await self._work_changed.wait()
                    output = handler(params)
                    if not self.farm.long_poll_seconds(params, output):
                        return output
        finally:
            self.held_calls -= 1
        # The hold is over: answer as of now (the worker was heard from now, too).
        return handler(params)

    async def _prepare(
        self, prepare: Callable[[Mapping[str, Any]], Any], params: dict[str, Any], name: str
    ) -> Any:
        """Run an operation's state-free preparation (parsing a template) in a worker
        thread, so the farm answers other calls meanwhile; bounded in time."""
        with trio.move_on_after(PREPARE_SECONDS):
            return await trio.to_thread.run_sync(
                prepare, params, limiter=self._prepare_limiter, abandon_on_cancel=True
            )
        raise validation(
            f"{name}: the template took more than {PREPARE_SECONDS:g} s to parse.", reason="OTHER"
        )

    def _secret_for(self, access_key: str) -> str | None:
        assert self._keys is not None
        return self._keys.get(access_key) or self.farm.issued_secret(access_key)

    def _error(
        self,
        codec: ServiceCodec,
        name: str,
        params: Mapping[str, Any],
        error: ApiError,
        arrived: float,
        content_type: bytes,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status, headers, payload = codec.error_response(error)
        self._record(codec, name, params, status, error.code, arrived)
        headers.insert(0, (b"content-type", content_type))
        return status, headers, payload

    def _record(
        self,
        codec: ServiceCodec,
        name: str,
        params: Mapping[str, Any],
        status: int,
        error: str | None,
        arrived: float,
        *,
        dropped: bool = False,
    ) -> None:
        # When it arrived, on the wall clock (a held call is recorded when answered).
        timestamp = datetime.now(UTC) - timedelta(seconds=trio.current_time() - arrived)
        self.calls.append(
            CallRecord(name, codec.name, params, status, error, arrived, timestamp, dropped)
        )

    # ------------------------------------------------------------ /_mockfarm/

    def _admin(self, method: str, raw_path: bytes, body: bytes) -> tuple[int, bytes]:
        path = raw_path.decode("latin-1")
        try:
            if path == "/_mockfarm/info" and method == "GET":
                return 200, json.dumps(self._info()).encode()
            if path == "/_mockfarm/faults":
                if method == "PUT":
                    config = FaultConfig.from_dict(
                        load_json(body or b"{}", what="fault configuration")
                    )
                    self.faults.configure(config)
                    log.info("mockfarm.faults_changed", faults=config.to_dict())
                if method in ("GET", "PUT"):
                    return 200, json.dumps(self.faults.config.to_dict()).encode()
            parts = path.strip("/").split("/")
            if (
                method == "POST"
                and len(parts) == 4
                and parts[1] == "workers"
                and parts[3] == "stop"
            ):
                self._stop_worker(parts[2])
                self._on_change()
                self.wake_idle_workers()
                return 200, b"{}"
        except KeyError as exc:
            return 404, json.dumps({"message": f"unknown worker {exc}"}).encode()
        except ValueError as exc:
            return 400, json.dumps({"message": str(exc)}).encode()
        return 404, json.dumps({"message": f"no admin route {method} {path}"}).encode()
