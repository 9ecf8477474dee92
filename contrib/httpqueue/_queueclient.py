"""The worker's HTTP client for the job server, and how it retries.

Each call is one attempt; ``retrying()`` repeats one until it goes through:

- no answer (connection refused, reset, timed out), 5xx, 408 and 429 are
  *unavailable*: tried again after an exponential, fully jittered backoff
  (0..1 s, 0..2 s, ... capped at ``max_backoff``), at least ``Retry-After``
  when the server says so, for as long as it takes;
- any other 4xx is *refused*: the server understood and said no; retrying
  the same request cannot help, so it is raised to the caller.

Retries repeat the same body, so they carry the same ``request_id`` or
``report_id``, and the server applies each one once.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import structlog
import trio

from actors import Backoff
from agent import FarmhandError
from agent.jobs import request_with_body

log = structlog.get_logger("farmhand.httpqueue.client")

T = TypeVar("T")

_UNAVAILABLE_STATUSES = frozenset({408, 425, 429})


class ServerError(FarmhandError):
    """A call to the job server failed. One line."""


class ServerUnavailable(ServerError):
    """No usable answer: worth trying again later. ``retry_after`` is the server's hint."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerRefused(ServerError):
    """The server answered with a 4xx: the request itself is unacceptable."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


class QueueClient:
    """The agent endpoints of one job server, on the caller's ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient, server: str) -> None:
        self.http = http
        self.server = server.rstrip("/")
        self.calls = 0

    async def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        url = f"{self.server}{path}"
        what = f"{method} {path}"
        self.calls += 1
        data = None if body is None else json.dumps(body).encode()
        request = request_with_body(
            self.http,
            method,
            url,
            data,
            headers={"content-type": "application/json"} if data is not None else None,
        )
        try:
            response = await self.http.send(request)
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"{what}: {type(exc).__name__}: {exc or 'no answer'}") from exc
        if response.status_code >= 500 or response.status_code in _UNAVAILABLE_STATUSES:
            raise ServerUnavailable(
                f"{what}: HTTP {response.status_code}: {_message(response)}",
                retry_after=_retry_after(response),
            )
        if response.status_code >= 400:
            raise ServerRefused(
                f"{what}: HTTP {response.status_code}: {_message(response)}",
                status=response.status_code,
            )
        return response

    async def _json(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = await self._call(method, path, body)
        try:
            answer = response.json()
        except ValueError as exc:
            raise ServerUnavailable(f"{method} {path}: the answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise ServerUnavailable(f"{method} {path}: the answer is not a JSON object")
        return answer

    async def next_job(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """``POST /api/agent/next-job``: the job, or ``None`` (204) when there is none."""
        response = await self._call("POST", "/api/agent/next-job", body)
        if response.status_code == 204:
            return None
        try:
            answer = response.json()
        except ValueError as exc:
            raise ServerUnavailable("POST /api/agent/next-job: the answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise ServerUnavailable("POST /api/agent/next-job: the answer is not a JSON object")
        return answer

    async def job_status(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/api/agent/job-status", body)

    async def job_reject(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/api/agent/job-reject", body)

    async def heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/api/agent/heartbeat", body)

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/api/jobs/{job_id}")

    async def status_of(self, job_id: str) -> dict[str, Any]:
        """``GET /status/{id}``: the job's state, as the OPEVA backend (and the reference
        server) answer a worker; at least ``status``."""
        return await self._json("GET", f"/status/{job_id}")


def _message(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return str(answer["error"])
    return response.text[:200]


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff,
    on_retry: Callable[[ServerUnavailable, float], None] | None = None,
) -> T:
    """``await call()`` until it is not ``ServerUnavailable`` (see the module docstring)."""
    while True:
        try:
            result = await call()
        except ServerUnavailable as exc:
            delay = backoff.next_delay(exc.retry_after)
            if on_retry is not None:
                on_retry(exc, delay)
            else:
                log.warning(
                    "httpqueue.retrying",
                    call=what,
                    error=str(exc),
                    attempt=backoff.attempt,
                    delay=round(delay, 3),
                )
            await trio.sleep(delay)
            continue
        backoff.reset()
        return result
