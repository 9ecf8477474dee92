"""What stop signals mean, for every farmhand process: one escalation rule.

The Deadline worker, ``run``, the contrib adapters and the servers (``mockfarm
serve``, the HTTP queue) all read SIGINT and SIGTERM the same way, counting them:

- the first asks for a **graceful** stop (``StopLevel.GRACEFUL``): take no new
  work, stop what runs with its own cancelation method, within a grace;
- the second for an **immediate** one (``IMMEDIATE``): kill what runs now;
- the third and any later one to **abandon** (``ABANDON``): a long-running
  process exits at once (status 130; the containment watchdog kills what its
  jobs left), ``run`` skips what is left of its session;
- SIGUSR1, where a process takes it (``finish=True``), asks it to **finish**
  (``FINISH``): take no new work, let what runs end, then stop.

``open_stop_signals()`` installs the handlers (main thread only) and yields an
async iterator of ``StopRequest``; what each level does is the caller's::

    with open_stop_signals(finish=True) as stops:
        async for stop in stops:
            if stop.level is StopLevel.GRACEFUL:
                ...

Signals coalesce: a caller must not block between two reads for long (start
slow work in a nursery). A server (``mockfarm serve``, the HTTP queue server)
has no work to kill: ``stop_server_on_signals`` closes it on the first signal
and exits on the second.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import attrs
import trio

#: The signals that stop a farmhand process; SIGUSR1 is added with ``finish``.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The status a process exits with when it abandons its work (as a shell's ^C).
ABANDON_STATUS = 130


class StopLevel(enum.IntEnum):
    """How far a stop has gone; each level includes the ones below it."""

    NONE = 0
    #: Take no new work; what runs finishes.
    FINISH = 1
    #: Stop what runs within its grace.
    GRACEFUL = 2
    #: Kill what runs now.
    IMMEDIATE = 3
    #: Leave now: exit at once, or skip everything left.
    ABANDON = 4


@attrs.frozen
class StopRequest:
    """One stop signal, read."""

    level: StopLevel
    #: ``"SIGTERM"``, ``"SIGINT"``, ``"SIGUSR1"``.
    signal: str
    #: Which stop signal this is (1 for the first SIGINT or SIGTERM); 0 for SIGUSR1.
    count: int


def level_of(count: int) -> StopLevel:
    """The level the ``count``-th SIGINT or SIGTERM asks for."""
    return (StopLevel.GRACEFUL, StopLevel.IMMEDIATE)[count - 1] if count < 3 else StopLevel.ABANDON


class StopSignals:
    """The stop requests of one ``open_stop_signals`` block (see the module docstring)."""

    def __init__(self, receiver: AsyncIterator[int]) -> None:
        self._receiver = receiver
        #: SIGINT and SIGTERM read so far.
        self.count = 0

    def __aiter__(self) -> StopSignals:
        return self

    async def __anext__(self) -> StopRequest:
        signum = await self._receiver.__anext__()
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1:
            return StopRequest(StopLevel.FINISH, name, 0)
        self.count += 1
        return StopRequest(level_of(self.count), name, self.count)


@contextmanager
def open_stop_signals(*, finish: bool = False) -> Iterator[StopSignals]:
    """Read SIGINT and SIGTERM (and SIGUSR1 with ``finish``) as stop requests while in
    the block; outside it they do what they did before."""
    signals = (*STOP_SIGNALS, signal.SIGUSR1) if finish else STOP_SIGNALS
    with trio.open_signal_receiver(*signals) as receiver:
        yield StopSignals(receiver)


async def stop_server_on_signals(stops: StopSignals, stop: Callable[[StopRequest], None]) -> None:
    """The rule for a server, which runs no work of its own: the first stop signal calls
    ``stop`` (it closes gracefully); a second exits at once (``ABANDON_STATUS``)."""
    async for request in stops:
        if request.level <= StopLevel.GRACEFUL:
            stop(request)
        else:
            print(f"{request.signal} again: exiting now", file=sys.stderr, flush=True)
            os._exit(ABANDON_STATUS)
