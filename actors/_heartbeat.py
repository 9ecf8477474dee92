"""The heartbeat: call ``beat()`` at an interval, punctually, and measure it.

For a Deadline farm the beat is an UpdateWorkerSchedule (the scheduler's
``sync_now``); for other job systems it is their heartbeat endpoint. The
interval can change while running (the farm says how often it wants to hear
from the worker: ``SetInterval`` in the heartbeat's inbox); a shorter interval
takes effect at once.

Beats are scheduled on a fixed grid (``start + n * interval``), so a slow beat
does not push all later ones back; slots missed by more than one interval are
skipped rather than beaten in a burst. Lateness (how long after its slot a
beat started) is kept for the last ``history`` beats for ``statistics()``.
A beat may read its slot (``slot``): work that started at or after it, such as
a farm call already in flight, is as good as a new one. At interval 0 (a farm
that holds each call until it has work) each beat starts as the last one ends,
and its slot is ``None``: only new work will do, since the last answer asked for
another call (under a virtual clock, work done "at" the slot may be the very
call that asked).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import trio

from ._messages import HeartbeatCommand, SetInterval


@attrs.frozen
class HeartbeatStatistics:
    beats: int
    interval: float
    #: ``trio.current_time()`` when the last beat finished (``None``: none yet).
    last_beat: float | None
    lateness_p50: float
    lateness_p99: float
    lateness_max: float


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


class Heartbeat:
    """Beats on a fixed grid; its inbox takes ``SetInterval`` (latest wins)."""

    def __init__(
        self, beat: Callable[[], Awaitable[None]], interval: float, *, history: int = 1024
    ) -> None:
        self._beat = beat
        self._interval = interval
        self._lateness: deque[float] = deque(maxlen=history)
        self._beats = 0
        self._last_beat: float | None = None
        self._slot: float | None = -math.inf

    @property
    def slot(self) -> float | None:
        """When the beat in progress (or, between beats, the last one) was due
        (``trio.current_time()``); ``None`` for a beat at interval 0, which is due
        once the last has ended."""
        return self._slot

    def age(self) -> float | None:
        """Seconds since the last beat finished."""
        return None if self._last_beat is None else trio.current_time() - self._last_beat

    def statistics(self) -> HeartbeatStatistics:
        values = list(self._lateness)
        return HeartbeatStatistics(
            self._beats,
            self._interval,
            self._last_beat,
            _percentile(values, 0.5),
            _percentile(values, 0.99),
            max(values, default=0.0),
        )

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[
            trio.MemorySendChannel[HeartbeatCommand]
        ] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Beat until cancelled; ``started`` with the inbox. Senders use ``send_nowait``:
        the inbox is read between beats and only the newest interval counts."""
        send, receive = trio.open_memory_channel[HeartbeatCommand](INBOX_SIZE)
        with receive:
            task_status.started(send)
            slot = trio.current_time()
            inbox_open = True
            while True:
                while inbox_open:
                    with trio.move_on_at(slot):
                        try:
                            commands = [await receive.receive()]
                        except trio.EndOfChannel:
                            inbox_open = False  # nobody will change the interval
                            break
                        while True:
                            try:
                                commands.append(receive.receive_nowait())
                            except (trio.WouldBlock, trio.EndOfChannel):
                                break
                        seconds = max(commands[-1].seconds, 0.0)  # latest wins
                        if seconds != self._interval:
                            self._interval = seconds
                            # The interval changed: re-plan from the last beat.
                            if self._last_beat is not None:
                                slot = min(slot, self._last_beat + self._interval)
                        continue
                    break
                if not inbox_open:
                    await trio.sleep_until(slot)
                started = trio.current_time()
                self._slot = slot if self._interval > 0 else None
                self._lateness.append(started - slot)
                await self._beat()
                self._beats += 1
                self._last_beat = trio.current_time()
                # A change that came during the beat (often its own doing) sets the next slot.
                while inbox_open:
                    try:
                        self._interval = max(receive.receive_nowait().seconds, 0.0)
                    except trio.WouldBlock:
                        break
                    except trio.EndOfChannel:
                        inbox_open = False
                if self._interval <= 0:
                    # The farm wants to hear again at once (it holds the call until
                    # it has work: a long poll); the call itself sets the pace.
                    slot = self._last_beat
                    continue
                slot += self._interval
                while slot < self._last_beat - self._interval:
                    slot += self._interval  # far behind: skip the missed slots, keep the grid


#: Interval changes waiting for the end of a beat; the newest is the one that counts.
INBOX_SIZE = 16


def set_interval(heartbeat: trio.MemorySendChannel[HeartbeatCommand], seconds: float) -> bool:
    """Tell a heartbeat its new interval without waiting; ``False`` if it was not
    taken (the heartbeat is gone, or INBOX_SIZE changes are already waiting)."""
    try:
        heartbeat.send_nowait(SetInterval(seconds))
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True
