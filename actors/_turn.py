"""Turns: work that many tasks would otherwise start at once, a few at a time.

Many workers in one process (``agent.open_fleet_http``) share one
``trio.CapacityLimiter`` for their sessions' start-ups: a job that reaches a
thousand idle workers would otherwise start a thousand sessions at once, and
their calls and launchers would fill Trio's run queue while every heartbeat
waits its turn behind them. A ``WorkSession`` takes a ``Turn`` before its first
call and ends it at its first event (or at its end): its start-up calls, its
launcher and its first action's start happen in its turn.
"""

from __future__ import annotations

import trio


class Turn:
    """One holder's turn among those sharing ``limiter`` (``None``: no waiting)."""

    def __init__(self, limiter: trio.CapacityLimiter | None) -> None:
        self._limiter = limiter
        self._held = False

    async def take(self) -> None:
        """Wait for a turn (at once without a limiter)."""
        if self._limiter is not None and not self._held:
            await self._limiter.acquire_on_behalf_of(self)
            self._held = True

    def end(self) -> None:
        """The next holder's turn; again or without a turn, nothing."""
        if self._held:
            assert self._limiter is not None
            self._held = False
            self._limiter.release_on_behalf_of(self)
