"""A fake EC2 instance metadata service (IMDSv2) on loopback, for spot and scale-in tests.

It serves what farmhand's IMDS monitor reads, as EC2 does:

- ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1 to
  21600) gives a token; without the header it is 400;
- ``GET /latest/meta-data/spot/instance-action`` with a valid
  ``X-aws-ec2-metadata-token``: 404 until a notice is set, then
  ``{"action": "terminate", "time": "2026-11-24T15:54:01Z"}``;
- ``GET /latest/meta-data/autoscaling/target-lifecycle-state``: ``InService``,
  or what the test set (``Terminated``);
- ``GET /latest/meta-data/iam/info``: 404, or the ``instance_profile`` set;
- a GET without a valid token is 401; anything else 404.

``FakeImds.interrupt_spot(seconds)`` and ``scale_in()`` set the notices;
``unavailable = True`` makes every request hang (a host where IMDS is not
reachable), and ``requests`` records what was asked.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import attrs
import trio

from .._asgi import Receive, Scope, Send, answer_lifespan, hypercorn_config

TOKEN_PATH = "/latest/api/token"
SPOT_PATH = "/latest/meta-data/spot/instance-action"
LIFECYCLE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
IAM_INFO_PATH = "/latest/meta-data/iam/info"


@attrs.define(eq=False)
class FakeImds:
    """The fake's state; see the module docstring."""

    endpoint_url: str = ""
    spot_action: dict[str, str] | None = None
    lifecycle_state: str = "InService"
    #: The attached instance profile's ARN (``iam/info`` answers 404 while ``None``).
    instance_profile: str | None = None
    #: Every request hangs unanswered (IMDS unreachable).
    unavailable: bool = False
    #: (method, path) of every request, in order.
    requests: list[tuple[str, str]] = attrs.field(factory=list)
    _tokens: dict[str, float] = attrs.field(factory=dict)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def interrupt_spot(self, seconds: float, action: str = "terminate") -> None:
        """A spot interruption notice: the instance goes ``seconds`` from now."""
        moment = datetime.now(UTC) + timedelta(seconds=seconds)
        self.spot_action = {"action": action, "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def scale_in(self) -> None:
        """The auto scaling group is terminating the instance."""
        self.lifecycle_state = "Terminated"

    def count(self, path: str) -> int:
        return sum(1 for _, asked in self.requests if asked == path)

    async def wait_for_requests(self, path: str, count: int) -> None:
        while self.count(path) < count:
            await self._changed.wait()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        self.requests.append((method, path))
        self._changed.set()
        self._changed = trio.Event()
        if self.unavailable:
            await trio.sleep_forever()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status, body = self._answer(method, path, headers)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})

    def _answer(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, str]:
        if path == TOKEN_PATH:
            if method != "PUT":
                return 405, "Method Not Allowed"
            try:
                ttl = int(headers["x-aws-ec2-metadata-token-ttl-seconds"])
            except (KeyError, ValueError):
                return 400, "Bad Request"
            if not 1 <= ttl <= 21600:
                return 400, "Bad Request"
            token = secrets.token_urlsafe(32)
            self._tokens[token] = trio.current_time() + ttl
            return 200, token
        if method != "GET":
            return 405, "Method Not Allowed"
        expiry = self._tokens.get(headers.get("x-aws-ec2-metadata-token", ""))
        if expiry is None or expiry < trio.current_time():
            return 401, "Unauthorized"
        if path == SPOT_PATH:
            if self.spot_action is None:
                return 404, "Not Found"
            return 200, json.dumps(self.spot_action)
        if path == LIFECYCLE_PATH:
            return 200, self.lifecycle_state
        if path == IAM_INFO_PATH and self.instance_profile is not None:
            info = {"Code": "Success", "InstanceProfileArn": self.instance_profile}
            return 200, json.dumps(info)
        return 404, "Not Found"


@asynccontextmanager
async def open_fake_imds(*, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[FakeImds]:
    """Serve a ``FakeImds`` on ``host:port`` (a free loopback port by default)."""
    from hypercorn.trio import serve  # not at import: ``agent.mockfarm`` users may not serve

    imds = FakeImds()
    config = hypercorn_config(host, port, logger="farmhand.mockfarm.imds", keep_alive_timeout=30.0)
    config.graceful_timeout = 0.0  # hanging requests (``unavailable``) must not hold the exit
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(serve, cast(Any, imds), config, shutdown_trigger=shutdown.wait)
        )
        imds.endpoint_url = binds[0]
        try:
            yield imds
        finally:
            shutdown.set()
            nursery.cancel_scope.deadline = trio.current_time() + 2
