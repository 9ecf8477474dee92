"""open_fleet_http: pools for many workers in one process."""

from __future__ import annotations

import pytest

import agent


async def test_workers_of_a_group_share_a_pair_of_pools() -> None:
    async with agent.open_fleet_http(group=2, connections=3, starts=5) as fleet:
        first, second, third = (fleet.for_worker(i) for i in range(3))
        assert first is second and first is not third
        # Session starts take turns across the whole fleet.
        assert first["session_starts"] is third["session_starts"]
        assert first["session_starts"].total_tokens == 5
        assert fleet.pools == 2
        # The schedule lane is a pool of its own, with no connection limit.
        assert first["http"] is not first["schedule_http"]
        pool = first["http"]._transport._pool  # type: ignore[attr-defined]
        lane = first["schedule_http"]._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections == 3
        assert lane._max_connections > 1_000_000
    assert first["http"].is_closed and third["schedule_http"].is_closed


async def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        async with agent.open_fleet_http(group=0):
            pass
    with pytest.raises(ValueError, match="at least 1"):
        async with agent.open_fleet_http(starts=0):
            pass
