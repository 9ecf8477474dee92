"""Spot interruption and scale-in notices from the EC2 instance metadata service.

EC2 announces that it will take an instance away in two places of the
instance metadata service (IMDS), and pushes nothing: a client has to ask.

- ``spot/instance-action``: 404 normally; ``{"action": "terminate"|"stop"|
  "hibernate", "time": "...Z"}`` about two minutes before a spot instance goes;
- ``autoscaling/target-lifecycle-state``: ``InService`` normally,
  ``Terminated`` when its auto scaling group scales in (no time is given; as
  the official agent does, two minutes are assumed).

``ImdsMonitor`` asks with IMDSv2 (a session token from ``PUT /latest/api/token``,
kept for six hours and renewed before then, or when a request is refused),
one request per ``interval``, alternating between the two paths; every request
is bounded by ``REQUEST_SECONDS``. When IMDS cannot be reached, it waits
longer between tries (the backoff of ``actors._backoff``, up to
``MAX_BACKOFF_SECONDS``) and logs once. A notice is
reported once (``on_notice``), with the seconds left; a later, more urgent
notice is reported too.

The worker turns a notice into a drain whose grace is ``drain_grace``: the
configured grace, but never more than the time left less ``MARGIN_SECONDS``
for the last reports. The monitor is off unless configured
(``--imds-monitor``), and its endpoint is configurable (``--imds-endpoint``),
so it can be pointed at a fake on loopback; it uses its own HTTP client that
ignores proxy settings, as IMDS must be reached directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import attrs
import httpx
import structlog
import trio

from actors import Backoff

log = structlog.get_logger("farmhand.imds")

#: 200 with the profile's ARN while an instance profile is attached, else 404.
IAM_INFO_PATH = "/latest/meta-data/iam/info"

TOKEN_PATH = "/latest/api/token"
SPOT_PATH = "/latest/meta-data/spot/instance-action"
LIFECYCLE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
#: The token's lifetime (the most IMDS allows).
TOKEN_TTL_SECONDS = 21600
#: Each request to IMDS gets this long (it answers in milliseconds on EC2).
REQUEST_SECONDS = 1.0
#: The longest wait between tries while IMDS cannot be reached.
MAX_BACKOFF_SECONDS = 10.0
#: An auto scaling scale-in gives no time; this much is assumed (as the official agent).
SCALE_IN_SECONDS = 120.0
#: Kept back from the time left for the drain's last calls (final sync, STOPPED).
MARGIN_SECONDS = 10.0
_SPOT_ACTIONS = frozenset({"terminate", "stop", "hibernate"})


@attrs.frozen
class InterruptionNotice:
    kind: Literal["spot", "scale_in"]
    #: ``terminate``/``stop``/``hibernate`` (spot) or the lifecycle state (scale-in).
    action: str
    #: Seconds from when the notice was seen until the instance goes.
    seconds_left: float


def drain_grace(notice: InterruptionNotice, configured: float) -> float:
    """The grace a drain gets for ``notice``: at most what is left, less the margin."""
    return max(0.0, min(configured, notice.seconds_left - MARGIN_SECONDS))


def drain_on_notice(
    configured: float, drain: Callable[[float], None]
) -> Callable[[InterruptionNotice], None]:
    """A monitor's ``on_notice`` for a worker: log the notice (``worker.interruption``)
    and ``drain`` at once with the grace it leaves (``drain_grace``)."""

    def on_notice(notice: InterruptionNotice) -> None:
        grace = drain_grace(notice, configured)
        log.warning(
            "worker.interruption",
            kind=notice.kind,
            action=notice.action,
            seconds_left=round(notice.seconds_left, 1),
            grace=grace,
        )
        drain(grace)

    return on_notice


@attrs.frozen
class ImdsStatistics:
    requests: int
    failures: int
    notices: int
    reachable: bool


class _Unreachable(Exception):
    """IMDS did not answer (in time) or answered what it should not."""


class ImdsMonitor:
    """See the module docstring. Start with ``await nursery.start(monitor.run)``."""

    def __init__(
        self,
        endpoint: str,
        on_notice: Callable[[InterruptionNotice], None],
        *,
        interval: float = 1.0,
    ) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._on_notice = on_notice
        self._interval = interval
        self._token: str | None = None
        self._token_expires = 0.0
        self._seen: set[tuple[str, str, str]] = set()
        self._requests = 0
        self._failures = 0
        self._notices = 0
        self._reachable = True

    def statistics(self) -> ImdsStatistics:
        return ImdsStatistics(self._requests, self._failures, self._notices, self._reachable)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Its own client: IMDS is link-local and must never go through a proxy, and
        # it needs none of the farm client's pool.
        async with httpx.AsyncClient(
            base_url=self._endpoint, trust_env=False, timeout=None
        ) as http:
            task_status.started()
            log.info("imds.watching", endpoint=self._endpoint, interval=self._interval)
            checks = (self._check_spot, self._check_lifecycle)
            turn = 0
            backoff = Backoff(max_delay=MAX_BACKOFF_SECONDS, base=self._interval)
            while True:
                try:
                    await checks[turn % len(checks)](http)
                except _Unreachable as exc:
                    self._failures += 1
                    if self._reachable:
                        log.warning("imds.unreachable", error=str(exc), endpoint=self._endpoint)
                    self._reachable = False
                    self._token = None
                    await trio.sleep(backoff.next_delay())
                    continue
                if not self._reachable:
                    log.info("imds.reachable", endpoint=self._endpoint)
                self._reachable = True
                backoff.reset()
                turn += 1
                await trio.sleep(self._interval)

    async def wait_instance_profile_detached(
        self, *, tries: int = 120, interval: float = 1.0, imds_attempts: int = 5
    ) -> bool:
        """``--disallow-instance-profile``: ask ``iam/info`` once per ``interval``, up
        to ``tries`` times, until it is 404 (no instance profile attached), as the
        official agent does. ``True``: detached, or no IMDS answered ``imds_attempts``
        times in a row (not an EC2 host: nothing to detach; logged); ``False``: still
        attached after the last try."""
        async with httpx.AsyncClient(
            base_url=self._endpoint, trust_env=False, timeout=None
        ) as http:
            failures = 0
            for attempt in range(1, tries + 1):
                try:
                    status, body = await self._get(http, IAM_INFO_PATH)
                except _Unreachable as exc:
                    failures += 1
                    self._token = None
                    if failures >= imds_attempts:
                        log.warning(
                            "imds.no_instance_profile_check",
                            error=str(exc),
                            note="IMDS does not answer: taken as a host without an instance profile",
                        )
                        return True
                    await trio.sleep(min(2.0 ** (failures - 1), 16.0))
                    continue
                failures = 0
                if status == 404:
                    return True
                if attempt == 1:
                    log.info("imds.instance_profile_attached", info=body[:200], waiting_s=tries)
                await trio.sleep(interval)
            return False

    # ------------------------------------------------------------------ checks

    async def _check_spot(self, http: httpx.AsyncClient) -> None:
        status, text = await self._get(http, SPOT_PATH)
        if status == 404:
            return
        try:
            notice = json.loads(text)
            action, when = str(notice["action"]), str(notice["time"])
            moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError) as exc:
            raise _Unreachable(f"{SPOT_PATH}: unreadable notice {text[:200]!r}") from exc
        if action not in _SPOT_ACTIONS:
            return
        seconds = (moment.astimezone(UTC) - datetime.now(UTC)).total_seconds()
        self._report(InterruptionNotice("spot", action, seconds), when)

    async def _check_lifecycle(self, http: httpx.AsyncClient) -> None:
        status, text = await self._get(http, LIFECYCLE_PATH)
        if status == 404:
            return  # not in an auto scaling group
        state = text.strip()
        if state.endswith("Terminated"):
            self._report(InterruptionNotice("scale_in", state, SCALE_IN_SECONDS), state)

    def _report(self, notice: InterruptionNotice, key: str) -> None:
        identity = (notice.kind, notice.action, key)
        if identity in self._seen:
            return
        self._seen.add(identity)
        self._notices += 1
        log.warning(
            "imds.interruption_notice",
            kind=notice.kind,
            action=notice.action,
            seconds_left=round(notice.seconds_left, 1),
        )
        self._on_notice(notice)

    # ------------------------------------------------------------------ requests

    async def _get(self, http: httpx.AsyncClient, path: str) -> tuple[int, str]:
        """GET ``path`` with a token: (200 or 404, body)."""
        for _attempt in range(2):
            token = await self._valid_token(http)
            response = await self._request(http, "GET", path, {"X-aws-ec2-metadata-token": token})
            if response.status_code == 401:
                self._token = None  # expired or revoked: one more try with a new one
                continue
            if response.status_code not in (200, 404):
                raise _Unreachable(f"GET {path}: HTTP {response.status_code}")
            return response.status_code, response.text
        raise _Unreachable(f"GET {path}: the token was refused")

    async def _valid_token(self, http: httpx.AsyncClient) -> str:
        if self._token is not None and trio.current_time() < self._token_expires:
            return self._token
        response = await self._request(
            http,
            "PUT",
            TOKEN_PATH,
            {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
        )
        if response.status_code != 200 or not response.text:
            raise _Unreachable(f"PUT {TOKEN_PATH}: HTTP {response.status_code}")
        self._token = response.text.strip()
        # Renewed well before IMDS would refuse it.
        self._token_expires = trio.current_time() + TOKEN_TTL_SECONDS - 60
        return self._token

    async def _request(
        self, http: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
    ) -> httpx.Response:
        self._requests += 1
        with trio.move_on_after(REQUEST_SECONDS) as scope:
            try:
                return await http.request(method, path, headers=headers)
            except httpx.HTTPError as exc:
                raise _Unreachable(f"{method} {path}: {exc!r}") from exc
        assert scope.cancelled_caught
        raise _Unreachable(f"{method} {path}: no answer within {REQUEST_SECONDS:g} s")
