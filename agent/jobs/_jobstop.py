"""Stopping an adapter that runs jobs: signals, drain, and the running jobs.

Every contrib adapter stops the same way, as the Deadline worker does (the one
escalation rule of ``agent._signals``; see the README's contract):

- the first SIGTERM or SIGINT: take no new job; stop the running jobs
  gracefully: each is interrupted (SIGTERM to its processes) and killed when
  the grace is over;
- a second one: kill the running jobs at once;
- a third: exit the process at once (status 130);
- SIGUSR1 (or ``finish()``, e.g. for ``--exit-after-job``): take no new job,
  let the running ones finish, then stop.

``Shutdown`` holds that state. An adapter asks it whether to take another job
(``accepting``), waits for work inside ``while_accepting()`` (a cancel scope
that is cancelled by any stop request), and runs each job inside
``guard(run)``, which forwards stop requests to the run, including one that
came before the run started::

    shutdown = Shutdown(grace=30)
    async with trio.open_nursery() as nursery:
        await nursery.start(shutdown.watch_signals)
        while shutdown.accepting:
            with shutdown.while_accepting():
                job = await next_job()
            if job is None:
                continue
            run = JobRun(spec_for(job))
            with shutdown.guard(run):
                outcome = await run.run()
        nursery.cancel_scope.cancel(reason="done")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs
import structlog
import trio

from .._signals import ABANDON_STATUS, StopLevel, open_stop_signals
from ._jobrun import JobRun

log = structlog.get_logger("farmhand.shutdown")


@attrs.frozen
class ShutdownStatistics:
    level: StopLevel
    reason: str | None
    running_jobs: int
    signals: int


def _exit_now() -> None:
    os._exit(ABANDON_STATUS)


class Shutdown:
    """Stop requests for a process that runs jobs (see the module docstring)."""

    def __init__(self, *, grace: float = 30.0, exit_now: Callable[[], None] = _exit_now) -> None:
        """``grace``: how long a graceful stop gives each running job. ``exit_now``
        runs on the third stop signal (``os._exit(130)``)."""
        self.grace = max(grace, 0.0)
        self._exit_now = exit_now
        self._level = StopLevel.NONE
        self._reason: str | None = None
        self._runs: set[JobRun] = set()
        self._scopes: set[trio.CancelScope] = set()
        self._changed = trio.Event()
        self._signals = 0

    # ---------------------------------------------------------------- state

    @property
    def level(self) -> StopLevel:
        return self._level

    @property
    def reason(self) -> str | None:
        """What asked for the stop (``"SIGTERM"``, ``"exit after job"``...)."""
        return self._reason

    @property
    def accepting(self) -> bool:
        """Whether a new job may be taken."""
        return self._level is StopLevel.NONE

    def statistics(self) -> ShutdownStatistics:
        return ShutdownStatistics(self._level, self._reason, len(self._runs), self._signals)

    async def wait_requested(self, level: StopLevel = StopLevel.FINISH) -> StopLevel:
        """Wait until the stop has reached ``level``; the level reached."""
        while self._level < level:
            await self._changed.wait()
        return self._level

    # ---------------------------------------------------------------- requests

    def finish(self, reason: str = "finish") -> None:
        """Take no new job; let the running ones finish."""
        self._raise_to(StopLevel.FINISH, reason)

    def stop(self, reason: str = "stop", *, grace: float | None = None) -> None:
        """Take no new job; interrupt the running ones within ``grace`` (the default grace)."""
        self._raise_to(StopLevel.GRACEFUL, reason, grace)

    def force(self, reason: str = "forced stop") -> None:
        """Take no new job; kill the running ones now."""
        self._raise_to(StopLevel.IMMEDIATE, reason)

    def _raise_to(self, level: StopLevel, reason: str, grace: float | None = None) -> None:
        if level > self._level:
            log.info("shutdown.requested", stop=level.name.lower(), reason=reason)
            self._level = level
            if self._reason is None:
                self._reason = reason
        elif level < StopLevel.GRACEFUL or grace is None:
            return
        for run in list(self._runs):
            self._apply(run, reason, grace)
        for scope in list(self._scopes):
            scope.cancel(reason=f"stop requested: {reason}")
        self._changed.set()
        self._changed = trio.Event()

    def _apply(self, run: JobRun, reason: str, grace: float | None = None) -> None:
        if self._level is StopLevel.IMMEDIATE:
            run.interrupt(grace=0, reason=reason)
        elif self._level is StopLevel.GRACEFUL:
            run.interrupt(grace=self.grace if grace is None else grace, reason=reason)

    # ---------------------------------------------------------------- scopes

    @contextmanager
    def while_accepting(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that any stop request cancels (for waiting for work)."""
        scope = trio.CancelScope()
        if not self.accepting:
            scope.cancel(reason=f"stop requested: {self._reason}")
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)

    @contextmanager
    def guard(self, run: JobRun) -> Iterator[JobRun]:
        """Forward stop requests to ``run`` while in the block (one already made applies
        at once)."""
        self._runs.add(run)
        try:
            if self._level >= StopLevel.GRACEFUL:
                self._apply(run, self._reason or "stop")
            yield run
        finally:
            self._runs.discard(run)

    # ---------------------------------------------------------------- signals

    async def watch_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Turn SIGTERM, SIGINT and SIGUSR1 into requests (see the module docstring).
        Run it in the main thread; it runs until cancelled."""
        with open_stop_signals(finish=True) as signals:
            task_status.started()
            async for request in signals:
                self._signals += 1
                name = request.signal
                if request.level is StopLevel.FINISH:
                    log.info("shutdown.signal", signal=name, action="finish the running jobs")
                    self.finish(name)
                elif request.level is StopLevel.GRACEFUL:
                    log.info("shutdown.signal", signal=name, action="stop", grace=self.grace)
                    self.stop(name)
                elif request.level is StopLevel.IMMEDIATE:
                    log.warning("shutdown.signal", signal=name, action="kill the running jobs")
                    self.force(f"{name} again")
                else:
                    log.warning("shutdown.signal", signal=name, action="exit now")
                    self._exit_now()
