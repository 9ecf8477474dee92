"""A small supervisor: restart an actor after a transient failure.

``supervise(fn, transient=(...))`` runs ``await fn()``. If it fails with one of
the ``transient`` exceptions (alone or in an exception group made only of
them), it is restarted after the backoff (``actors._backoff``: full-jitter
exponential, from ``backoff_base`` up to ``backoff_max`` seconds); after
``max_restarts`` restarts within ``window`` seconds the failure is final and
propagates (``math.inf``: never; the caller then bounds an outage itself). A run
that lasted ``stable_after`` seconds resets the backoff.
Anything else — a bug, ``Cancelled``, ``KeyboardInterrupt`` — propagates at
once, and so does a normal return.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import structlog
import trio

from ._backoff import Backoff

log = structlog.get_logger("farmhand.supervise")


class RestartLimitExceeded(Exception):
    """An actor kept failing; the last failure is the ``__cause__``."""


@attrs.define(eq=False)
class SupervisorStatistics:
    restarts: int = 0
    last_error: str | None = None


def _all_transient(error: BaseException, transient: tuple[type[BaseException], ...]) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_all_transient(inner, transient) for inner in error.exceptions)
    return isinstance(error, transient)


async def supervise(
    fn: Callable[[], Awaitable[None]],
    *,
    name: str,
    transient: tuple[type[Exception], ...],
    max_restarts: float = 5,
    window: float = 300.0,
    stable_after: float = 60.0,
    backoff_base: float = 1.0,
    backoff_max: float = 30.0,
    rng: random.Random | None = None,
    statistics: SupervisorStatistics | None = None,
) -> None:
    backoff = Backoff(max_delay=backoff_max, base=backoff_base, rng=rng)
    stats = statistics if statistics is not None else SupervisorStatistics()
    restarts: deque[float] = deque()
    while True:
        started = trio.current_time()
        try:
            await fn()
            return
        except Exception as exc:  # Cancelled and KeyboardInterrupt are BaseException: not caught
            if not _all_transient(exc, transient):
                raise
            now = trio.current_time()
            if now - started >= stable_after:
                backoff.reset()
            while restarts and now - restarts[0] > window:
                restarts.popleft()
            if len(restarts) >= max_restarts:
                raise RestartLimitExceeded(
                    f"{name} failed {len(restarts) + 1} times in {window:g} s; giving up"
                ) from exc
            restarts.append(now)
            delay = backoff.next_delay()
            stats.restarts += 1
            stats.last_error = repr(exc)
            log.warning(
                "actor.restarting",
                actor=name,
                error=repr(exc),
                attempt=backoff.attempt,
                delay=round(delay, 3),
            )
            await trio.sleep(delay)
