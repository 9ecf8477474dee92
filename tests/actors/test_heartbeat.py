"""The heartbeat's punctuality and the supervisor's restarts, on a virtual clock."""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.testing

from actors import Heartbeat, set_interval
from actors._supervise import RestartLimitExceeded, SupervisorStatistics, supervise


async def test_beats_follow_a_fixed_grid(autojump_clock: trio.testing.MockClock) -> None:
    """Beats start at 0, 10, 20, ...; a slow beat does not push later ones back."""
    starts: list[float] = []

    async def beat() -> None:
        starts.append(trio.current_time())
        await trio.sleep(3 if len(starts) == 2 else 0.5)

    heartbeat = Heartbeat(beat, 10)
    async with trio.open_nursery() as nursery:
        await nursery.start(heartbeat.run)
        await trio.sleep(45)
        nursery.cancel_scope.cancel()
    assert starts == [0, 10, 20, 30, 40]
    stats = heartbeat.statistics()
    assert stats.beats == 5
    assert stats.lateness_max == 0


async def test_a_beat_reads_its_slot(autojump_clock: trio.testing.MockClock) -> None:
    """``slot`` is when the beat in progress was due, even when it starts late."""
    seen: list[tuple[float | None, float]] = []

    async def beat() -> None:
        seen.append((heartbeat.slot, trio.current_time()))
        await trio.sleep(12 if len(seen) == 1 else 0.5)

    heartbeat = Heartbeat(beat, 10)
    async with trio.open_nursery() as nursery:
        await nursery.start(heartbeat.run)
        await trio.sleep(25)
        nursery.cancel_scope.cancel()
    assert seen == [(0, 0), (10, 12), (20, 20)]


async def test_a_shorter_interval_applies_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """When the farm asks for a shorter interval, the next beat moves up."""
    starts: list[float] = []

    async def beat() -> None:
        starts.append(trio.current_time())
        await trio.lowlevel.checkpoint()

    heartbeat = Heartbeat(beat, 100)
    async with trio.open_nursery() as nursery:
        inbox = await nursery.start(heartbeat.run)
        await trio.sleep(5)
        assert set_interval(inbox, 15)
        await trio.sleep(41)
        nursery.cancel_scope.cancel()
    assert starts == [0, 15, 30, 45]


async def test_interval_zero_beats_again_as_each_beat_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Interval 0 (a farm that holds each call until it has work): the next beat starts
    as the last one ends, paced by the beats themselves, and back to a grid after."""
    starts: list[float] = []
    slots: list[float | None] = []

    async def beat() -> None:
        starts.append(trio.current_time())
        slots.append(heartbeat.slot)
        await trio.sleep(4)  # the farm holds the call

    heartbeat = Heartbeat(beat, 10)
    async with trio.open_nursery() as nursery:
        inbox = await nursery.start(heartbeat.run)
        assert set_interval(inbox, 0)
        await trio.sleep(13)
        assert set_interval(inbox, 10)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert starts == [0, 4, 8, 12, 22, 32]  # back on the grid from the last slot
    # At interval 0 (from the second beat) a beat has no slot: only a call begun after
    # the last answer will do.
    assert slots == [0, None, None, None, 22, 32]
    assert heartbeat.statistics().lateness_max == 0


async def test_lateness_is_measured(autojump_clock: trio.testing.MockClock) -> None:
    """A beat that cannot start on time records how late it was; a far-behind grid skips ahead."""
    starts: list[float] = []

    async def beat() -> None:
        starts.append(trio.current_time())
        await trio.sleep(25 if len(starts) == 1 else 0)

    heartbeat = Heartbeat(beat, 10)
    async with trio.open_nursery() as nursery:
        await nursery.start(heartbeat.run)
        await trio.sleep(50)
        nursery.cancel_scope.cancel()
    assert starts[:3] == [0, 25, 30]
    assert heartbeat.statistics().lateness_max == 5  # slot 20 started at 25
    assert heartbeat.age() is not None


class Flaky(Exception):
    pass


async def test_supervisor_restarts_transient_failures_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Transient failures are retried after growing, jittered delays; success returns."""
    runs: list[float] = []

    async def actor() -> None:
        runs.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if len(runs) < 4:
            raise Flaky("connection reset")

    stats = SupervisorStatistics()
    await supervise(actor, name="t", transient=(Flaky,), rng=random.Random(1), statistics=stats)
    assert len(runs) == 4
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] <= 1 and gaps[1] <= 2 and gaps[2] <= 4
    assert stats.restarts == 3 and "connection reset" in (stats.last_error or "")


async def test_supervisor_gives_up_after_the_limit(autojump_clock: trio.testing.MockClock) -> None:
    """Too many restarts within the window end supervision with the last error as cause."""

    async def actor() -> None:
        await trio.lowlevel.checkpoint()
        raise Flaky("down")

    with pytest.raises(RestartLimitExceeded) as info:
        await supervise(actor, name="t", transient=(Flaky,), max_restarts=3, rng=random.Random(1))
    assert isinstance(info.value.__cause__, Flaky)


async def test_supervisor_lets_bugs_and_groups_of_bugs_propagate() -> None:
    """A non-transient error (alone or in a group) is not retried."""
    calls = 0

    async def buggy() -> None:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        raise ExceptionGroup("mixed", [Flaky("x"), KeyError("bug")])

    with pytest.raises(ExceptionGroup):
        await supervise(buggy, name="t", transient=(Flaky,))
    assert calls == 1


async def test_supervisor_restarts_groups_of_transient_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A group made only of transient failures is retried."""
    calls = 0

    async def actor() -> None:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        if calls == 1:
            raise ExceptionGroup("both", [Flaky("a"), Flaky("b")])

    await supervise(actor, name="t", transient=(Flaky,), rng=random.Random(2))
    assert calls == 2


async def test_a_heartbeat_whose_inbox_is_closed_beats_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Closing the inbox only means no more interval changes; the latest one counts."""
    from actors import SetInterval

    starts: list[float] = []

    async def beat() -> None:
        starts.append(trio.current_time())
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        inbox = await nursery.start(Heartbeat(beat, 10).run)
        inbox.send_nowait(SetInterval(30))
        inbox.send_nowait(SetInterval(20))  # latest wins
        inbox.close()
        await trio.sleep(61)
        nursery.cancel_scope.cancel()
    assert starts == [0, 20, 40, 60]
    assert not set_interval(inbox, 5)  # closed: not taken
