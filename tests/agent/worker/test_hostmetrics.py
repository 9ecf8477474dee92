"""Host metrics in the agent log (``host_metrics_logging``), and the instance-profile
wait (``--disallow-instance-profile``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from agent.mockfarm import open_fake_imds
from agent.worker._hostmetrics import log_host_metrics
from agent.worker._imds import ImdsMonitor


async def test_one_line_per_interval_with_the_hosts_figures(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The samples run in worker threads, which the virtual clock would not wait for: here
    # they run inline (they take milliseconds), so a minute is a minute of virtual time.
    async def inline(fn: Any, *args: Any, **_: Any) -> Any:
        return fn(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: log_host_metrics(60.0, disk_path=tmp_path / "sessions"))
            await trio.sleep(150)
            nursery.cancel_scope.cancel()
    lines = [entry for entry in logs if entry["event"] == "worker.host_metrics"]
    assert len(lines) == 2  # at 60 s and 120 s
    for line in lines:
        assert 0 <= line["cpu_percent"] <= 100
        assert 0 < line["memory_used_percent"] < 100 and line["memory_available_mib"] > 0
        assert line["disk_free_gib"] > 0 and not math.isnan(line["disk_used_percent"])
        assert line["net_sent_kib_per_s"] >= 0 and line["net_recv_kib_per_s"] >= 0
        assert line["load_1m"] >= 0


@pytest.mark.parametrize("detach_after", [None, 3])
async def test_the_worker_waits_for_the_instance_profile_to_go(
    autojump_clock: trio.testing.MockClock, detach_after: int | None
) -> None:
    """Asked once a second, up to 120 times: detached in time is True, never is False."""
    async with open_fake_imds() as imds:
        imds.instance_profile = "arn:aws:iam::123456789012:instance-profile/render"
        monitor = ImdsMonitor(imds.endpoint_url, lambda notice: None)
        async with trio.open_nursery() as nursery:
            if detach_after is not None:

                async def detach() -> None:
                    await imds.wait_for_requests("/latest/meta-data/iam/info", detach_after)
                    imds.instance_profile = None

                nursery.start_soon(detach)
            detached = await monitor.wait_instance_profile_detached()
        asked = imds.count("/latest/meta-data/iam/info")
    assert detached is (detach_after is not None)
    assert asked == (detach_after + 1 if detach_after is not None else 120)


async def test_without_imds_there_is_no_profile_to_wait_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_imds() as imds:
        imds.unavailable = True
        monitor = ImdsMonitor(imds.endpoint_url, lambda notice: None)
        with capture_logs() as logs:
            assert await monitor.wait_instance_profile_detached()
    assert [e for e in logs if e["event"] == "imds.no_instance_profile_check"]
