"""What farmhand's small HTTP servers share: the mock farm, the health endpoint,
the fake IMDS and the httpqueue reference server are ASGI 3 applications served
by hypercorn's Trio worker on loopback.

- ``Scope``, ``Receive``, ``Send``: the ASGI callables, as plain mappings (the
  apps are written against these; hypercorn's TypedDicts are stricter).
- ``answer_lifespan``: the ``lifespan`` protocol, for apps that need no start-up
  or shutdown work of their own.
- ``hypercorn_config``: one bind, no access log, errors to a named logger,
  connections kept open as long as clients that poll keep them.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypercorn.config import Config as HypercornConfig

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Complete the server's start-up and shutdown messages; return at shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def hypercorn_config(
    host: str,
    port: int,
    *,
    logger: str,
    keep_alive_timeout: float = 120.0,
    graceful_timeout: float = 2.0,
) -> HypercornConfig:
    """Serve on ``host:port`` (IPv6 literals welcome), errors to the logger ``logger``."""
    from hypercorn.config import Config as HypercornConfig  # only where one serves

    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger(logger)
    # Clients keep connections for a long time between calls (heartbeats, polls); a
    # close racing a new request would look like a network fault to them.
    config.keep_alive_timeout = keep_alive_timeout
    config.keep_alive_max_requests = math.inf  # type: ignore[assignment]  # hypercorn compares with >=
    config.graceful_timeout = graceful_timeout
    config.include_server_header = False
    return config


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to bind, or a client's) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
