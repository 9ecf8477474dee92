"""An ``httpx`` transport that hands each request to an ASGI app in this process.

``python -m agent run`` puts a mock farm and a worker in one process; the worker's
Deadline client need not reach the farm through a socket, an HTTP/1.1 encoder,
hypercorn and a decoder on the way there and back. ``AppTransport`` gives the app
the scope, body and events a server would (``agent._asgi`` lists what the apps
read: method, ``raw_path``, query string, headers, client address) and turns what
the app sends into the ``httpx.Response``; everything above the transport
(serialization, signing, retries, parsing) is the client's own, unchanged.

Each request is served in a task of the nursery the transport was given (the
farm's), not in the caller's: a client that gives up on a call (a cancelled or
timed-out attempt) leaves the farm to finish handling it, as a real server would,
and the app hears ``http.disconnect``. An app that raises answers 500 (the error
goes to the ``farmhand.asgi`` log, as hypercorn's would); an app that ends without
a whole response is a connection closed without one (``httpx.RemoteProtocolError``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import trio

App = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

log = logging.getLogger("farmhand.asgi")


class _Exchange:
    """One request and what the app answered to it."""

    def __init__(self, body: bytes) -> None:
        self.body: bytes | None = body
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        #: Whether the whole response came (the last of its body included).
        self.complete = False
        #: Set when the response is whole, or the app ended without one.
        self.done = trio.Event()
        #: Set when the client gave up: the app's next ``receive`` says so.
        self.gone = trio.Event()

    async def receive(self) -> MutableMapping[str, Any]:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if self.done.is_set():
            return  # nobody reads it now
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            self.chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.complete = True
                self.done.set()


class AppTransport(httpx.AsyncBaseTransport):
    """Serve ``httpx`` requests with ``app``, in tasks of ``nursery``.

    ``client`` is the address the app sees the requests come from (loopback: what a
    farm on this host would see of a worker on this host)."""

    def __init__(
        self,
        app: App,
        nursery: trio.Nursery,
        *,
        client: tuple[str, int] = ("127.0.0.1", 1),
    ) -> None:
        self._app = app
        self._nursery = nursery
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        exchange = _Exchange(await request.aread())
        url = request.url
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": url.scheme,
            "path": url.path,
            "raw_path": url.raw_path.partition(b"?")[0],
            "query_string": url.query,
            "root_path": "",
            "headers": [(name.lower(), value) for name, value in request.headers.raw],
            "client": self._client,
            "server": (url.host, url.port or (443 if url.scheme == "https" else 80)),
        }
        self._nursery.start_soon(self._serve, scope, exchange)
        try:
            await exchange.done.wait()
        except BaseException:
            exchange.gone.set()
            raise
        if not exchange.complete:
            raise httpx.RemoteProtocolError(
                "the server closed the connection without a whole response", request=request
            )
        assert exchange.status is not None
        return httpx.Response(
            exchange.status,
            headers=exchange.headers,
            content=b"".join(exchange.chunks),
            request=request,
        )

    async def _serve(self, scope: dict[str, Any], exchange: _Exchange) -> None:
        try:
            await self._app(scope, exchange.receive, exchange.send)
        except Exception:
            log.exception("error in the ASGI app")
            if exchange.status is None:  # nothing sent yet: a server answers 500
                await exchange.send({"type": "http.response.start", "status": 500})
                await exchange.send({"type": "http.response.body", "body": b""})
        finally:
            exchange.done.set()  # whole or not: ``complete`` says
