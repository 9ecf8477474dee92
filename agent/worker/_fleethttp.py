"""Connection pools for many workers in one process (``open_agent``'s ``http`` and
``schedule_http``).

Workers that share one ``httpx.AsyncClient`` share one connection pool, and two
things go wrong once there are hundreds of them (``benchmarks/fleet.py``):

- every call queues for the same connections, so a heartbeat (the worker's
  UpdateWorkerSchedule, which the farm may hold open while the worker idles)
  waits behind log uploads and bootstraps, past its attempt limit;
- httpcore's pool does work proportional to its connections squared on every
  request and response (it scans them all, and for each idle one counts the idle
  ones again), so one pool of a thousand connections spends the process's CPU
  on bookkeeping.

``FleetHttp`` hands each worker a pair of clients: its group's pool for most
calls (``connections`` per group of ``group`` workers) and its group's schedule
pool, for UpdateWorkerSchedule only, with no connection limit (a worker has at
most one such call in flight, so it holds at most ``group`` connections). Pools
are opened when a group's first worker asks, and share one TLS context.

It also makes the fleet's session starts take turns (``session_starts``: at
most ``starts`` at once, each from its first call to its first action's start).
A job that reaches a thousand idle workers starts a thousand sessions at once,
each with its calls (BatchGetJobEntity, a log stream, AssumeQueueRoleForWorker)
and a launcher process to start; all at once they fill Trio's run queue, and
every heartbeat waits its turn behind them for seconds. Four at a time, the
job ran faster and on less CPU, and UpdateWorkerSchedule went out about ten
times closer to on time (``benchmarks/RESULTS.md``, "The fleet on time").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final, TypedDict

import httpx
import trio

#: Workers per pair of pools: small enough that a pool's bookkeeping stays cheap.
DEFAULT_GROUP: Final = 16
#: Connections of a group's pool for the calls other than UpdateWorkerSchedule.
DEFAULT_CONNECTIONS: Final = 8
#: Sessions of the fleet starting at once.
DEFAULT_STARTS: Final = 4


class WorkerHttp(TypedDict):
    """``open_agent(config, **fleet.for_worker(i), ...)``."""

    http: httpx.AsyncClient
    schedule_http: httpx.AsyncClient
    #: Shared by every worker of the fleet.
    session_starts: trio.CapacityLimiter


class FleetHttp:
    """See the module docstring; open with ``open_fleet_http``."""

    def __init__(
        self,
        stack: AsyncExitStack,
        *,
        group: int,
        connections: int,
        timeout: float,
        starts: int = DEFAULT_STARTS,
    ) -> None:
        if group < 1 or connections < 1 or starts < 1:
            raise ValueError("group, connections and starts must be at least 1")
        self._stack = stack
        self._group = group
        self._connections = connections
        self._timeout = httpx.Timeout(timeout)
        self._tls = httpx.create_ssl_context()
        self._pools: dict[int, WorkerHttp] = {}
        self._starts = trio.CapacityLimiter(starts)

    @property
    def pools(self) -> int:
        """Pairs of pools opened so far."""
        return len(self._pools)

    def for_worker(self, index: int) -> WorkerHttp:
        """The clients of worker ``index`` (0, 1, 2...; workers ``group`` apart share none)."""
        key = index // self._group
        found = self._pools.get(key)
        if found is None:
            http = httpx.AsyncClient(
                timeout=self._timeout,
                verify=self._tls,
                limits=httpx.Limits(
                    max_connections=self._connections,
                    max_keepalive_connections=self._connections,
                ),
            )
            schedule_http = httpx.AsyncClient(
                timeout=self._timeout,
                verify=self._tls,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            )
            self._stack.push_async_callback(http.aclose)
            self._stack.push_async_callback(schedule_http.aclose)
            found = self._pools[key] = WorkerHttp(
                http=http, schedule_http=schedule_http, session_starts=self._starts
            )
        return found


@asynccontextmanager
async def open_fleet_http(
    *,
    group: int = DEFAULT_GROUP,
    connections: int = DEFAULT_CONNECTIONS,
    attempt_seconds: float = 30.0,
    starts: int = DEFAULT_STARTS,
) -> AsyncIterator[FleetHttp]:
    """Pools for many workers in this process; closed at the end of the block
    (after the workers: open it outside their nursery). ``attempt_seconds`` is
    httpx's timeout (the client bounds each attempt itself too); ``starts``, the
    sessions starting at once."""
    async with AsyncExitStack() as stack:
        yield FleetHttp(
            stack,
            group=group,
            connections=connections,
            timeout=attempt_seconds,
            starts=starts,
        )
