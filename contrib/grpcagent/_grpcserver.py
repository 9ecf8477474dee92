"""The gRPC side: grpc.aio's server on an asyncio loop in a thread of its own.

grpcio serves from asyncio or from a thread pool; neither may run in the Trio
thread. So the server runs ``asyncio.run`` in a dedicated thread, and the two
loops talk only through their thread-safe, non-blocking doors:

- asyncio -> Trio: ``TrioToken.run_sync_soon(fn, ...)`` (``CiAgent.start``,
  ``cancel``, ``stream_gone``, ``capacity``); a reply comes back through a
  ``concurrent.futures.Future`` the asyncio side awaits;
- Trio -> asyncio: ``loop.call_soon_threadsafe(queue.put_nowait, event)``, one
  ``asyncio.Queue`` per ``Run`` call (``_RunStream``).

Neither side ever waits for the other while holding its loop. When a client's
stream goes away, grpc.aio cancels the ``Run`` handler; its ``finally`` tells
the Trio side (``stream_gone``), which cancels the job unless the request said
``KEEP_RUNNING``.

A slow reader does not slow the job: the lines waiting for it are bounded
(``MAX_PENDING_LINES``); beyond that they are counted, not queued, and the next
``Output`` says how many were dropped (the uploaded log has them all).

Security: a bearer token (``authorization: Bearer TOKEN``) is checked by an
interceptor on every call but the health check; TLS with
``require_client_auth`` is mutual TLS.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import grpc
import structlog
import trio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from actors import Containment
from agent.jobs import Shutdown

from . import ci_agent_pb2 as pb
from . import ci_agent_pb2_grpc as pb_grpc
from ._grpcconfig import AgentConfig
from ._grpcjobs import CiAgent

log = structlog.get_logger("farmhand.grpcagent.server")

SERVICE_NAME = "farmhand.ci.v1.CiAgent"
#: Output lines a stream holds for a slow client before it drops (and counts) them.
MAX_PENDING_LINES = 10_000
#: Seconds in-flight calls get to finish when the server stops.
STOP_GRACE = 5.0
_HEALTH_PREFIX = "/grpc.health.v1.Health/"

T = TypeVar("T")


class _RunStream:
    """One ``Run`` call's events, from the Trio thread to the asyncio one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[pb.RunEvent | tuple[str, str] | None] = asyncio.Queue()
        self._lock = threading.Lock()
        self._pending = 0
        self._dropped = 0
        self.gone = False

    # Trio side -------------------------------------------------------------

    def _put(self, item: pb.RunEvent | tuple[str, str] | None) -> None:
        if self.gone:
            return
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the server's loop is closed: nobody is listening
            self.gone = True

    def post(self, event: pb.RunEvent) -> None:
        self._put(event)

    def post_lines(self, phase: str, lines: Sequence[str]) -> None:
        with self._lock:
            if self._pending + len(lines) > MAX_PENDING_LINES:
                self._dropped += len(lines)
                return
            self._pending += len(lines)
            dropped, self._dropped = self._dropped, 0
        self._put(pb.RunEvent(output=pb.Output(phase=phase, lines=lines, dropped_lines=dropped)))

    def fail(self, code: str, message: str) -> None:
        self._put((code, message))

    def close(self) -> None:
        self._put(None)

    # asyncio side ----------------------------------------------------------

    def taken(self, lines: int) -> None:
        with self._lock:
            self._pending -= lines


class _Servicer(pb_grpc.CiAgentServicer):
    def __init__(self, agent: CiAgent, token: trio.lowlevel.TrioToken) -> None:
        self._agent = agent
        self._token = token

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the Trio thread; its result here."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn(*args))
            except Exception as exc:  # goes back to the caller, never into Trio's loop
                future.set_exception(exc)

        self._token.run_sync_soon(call)
        return await asyncio.wrap_future(future)

    async def Run(
        self, request: pb.RunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.RunEvent]:
        stream = _RunStream(asyncio.get_running_loop())
        try:
            self._token.run_sync_soon(self._agent.start, request, stream)
        except trio.RunFinishedError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the agent is stopping")
        ended = False
        try:
            while True:
                item = await stream.queue.get()
                if item is None:
                    ended = True
                    return
                if isinstance(item, tuple):
                    ended = True
                    code, message = item
                    await context.abort(grpc.StatusCode[code], message)
                if item.HasField("output"):
                    stream.taken(len(item.output.lines))
                yield item
        finally:
            if not ended:
                stream.gone = True
                try:
                    self._token.run_sync_soon(self._agent.stream_gone, request.job_id, stream)
                except trio.RunFinishedError:
                    pass

    async def Capacity(
        self, request: pb.CapacityRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CapacityReply:
        return await self._call(self._agent.capacity)

    async def Cancel(
        self, request: pb.CancelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CancelReply:
        grace = request.grace_seconds if request.grace_seconds > 0 else None
        found = await self._call(self._agent.cancel, request.job_id, grace)
        return pb.CancelReply(found=found)


class _TokenCheck(grpc.aio.ServerInterceptor):
    """Every call but the health check carries ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid token is required")

        self._deny_unary: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
            deny
        )
        self._deny_stream: grpc.RpcMethodHandler[Any, Any] = grpc.unary_stream_rpc_method_handler(
            deny
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        if details.method.startswith(_HEALTH_PREFIX):
            return await continuation(details)
        sent = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                sent = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(sent, self._expected):
            return await continuation(details)
        log.warning("grpcagent.unauthenticated", method=details.method)
        return self._deny_stream if details.method.endswith("/Run") else self._deny_unary


def _credentials(config: AgentConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


@attrs.define(eq=False)
class GrpcServer:
    """The running server: its port, and its health for load balancers and probes."""

    port: int
    _loop: asyncio.AbstractEventLoop
    _health: health.aio.HealthServicer
    _stop: asyncio.Event

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            asyncio.run_coroutine_threadsafe(self._health.set(name, status), self._loop)

    def _request_stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)


@asynccontextmanager
async def open_grpc_server(agent: CiAgent, config: AgentConfig) -> AsyncIterator[GrpcServer]:
    """Serve ``agent`` for the block (the port is ``server.port``); leaving it stops the
    server, giving in-flight calls ``STOP_GRACE`` seconds."""
    token = trio.lowlevel.current_trio_token()
    ready = threading.Event()
    started: list[GrpcServer | BaseException] = []

    async def serve() -> None:
        server = grpc.aio.server(
            interceptors=[_TokenCheck(config.token)] if config.token else None,
            options=[("grpc.so_reuseport", 0)],
        )
        try:
            pb_grpc.add_CiAgentServicer_to_server(_Servicer(agent, token), server)  # type: ignore[no-untyped-call]
            checker = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(checker, server)
            address = f"{config.host}:{config.port}"
            credentials = _credentials(config)
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
            await server.start()
            for name in ("", SERVICE_NAME):
                await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
            stop = asyncio.Event()
            started.append(GrpcServer(port, asyncio.get_running_loop(), checker, stop))
        except BaseException as exc:
            started.append(exc)
            ready.set()
            raise
        ready.set()
        try:
            await stop.wait()
        finally:
            await server.stop(STOP_GRACE)

    def thread_main() -> None:
        try:
            asyncio.run(serve())
        except Exception as exc:
            if not started:
                started.append(exc)
            ready.set()

    thread = threading.Thread(target=thread_main, name="farmhand-grpc", daemon=True)
    thread.start()
    # Not abandoned: the thread sets ``ready`` whatever happens, at once.
    await trio.to_thread.run_sync(ready.wait)
    [result] = started
    if isinstance(result, BaseException):
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join)
        raise OSError(f"cannot serve on {config.host}:{config.port}: {result}") from result
    log.info(
        "grpcagent.listening",
        address=f"{config.host}:{result.port}",
        tls="mutual" if config.mutual_tls else ("server" if config.tls_cert else "none"),
        token=config.token is not None,
    )
    try:
        yield result
    finally:
        result._request_stop()
        # Bounded by STOP_GRACE: the server cancels what is still in flight then.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join)


@attrs.frozen
class ServingAgent:
    agent: CiAgent
    server: GrpcServer

    @property
    def port(self) -> int:
        return self.server.port


async def serve(
    config: AgentConfig,
    *,
    containment: Containment | None = None,
    shutdown: Shutdown | None = None,
    task_status: trio.TaskStatus[ServingAgent] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the agent and its gRPC server until ``shutdown`` (the agent's own by default)
    stops taking jobs and the running ones have ended; reports the ``ServingAgent``."""
    agent = CiAgent(config, containment=containment, shutdown=shutdown)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        async with open_grpc_server(agent, config) as server:
            task_status.started(ServingAgent(agent, server))
            await agent.shutdown.wait_requested()
            server.set_serving(False)
            await agent.wait_until(lambda s: not s.running_jobs)
