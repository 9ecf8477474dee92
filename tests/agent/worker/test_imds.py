"""The IMDS monitor against a fake instance metadata service over loopback HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from agent.mockfarm import FakeImds, open_fake_imds
from agent.worker import _imds
from agent.worker._imds import (
    LIFECYCLE_PATH,
    SPOT_PATH,
    TOKEN_PATH,
    ImdsMonitor,
    InterruptionNotice,
    drain_grace,
)
from tests.worker_harness import farm_and_worker, py, simple_job

FAST = 0.01


async def watch(
    imds: FakeImds, notices: list[InterruptionNotice], nursery: trio.Nursery
) -> ImdsMonitor:
    monitor = ImdsMonitor(imds.endpoint_url, notices.append, interval=FAST)
    await nursery.start(monitor.run)
    return monitor


def test_the_drain_grace_is_what_the_notice_leaves_less_a_margin() -> None:
    """min(configured, left - margin), never negative."""
    assert drain_grace(InterruptionNotice("spot", "terminate", 120), 4) == 4
    assert drain_grace(InterruptionNotice("spot", "terminate", 30), 300) == 20
    assert drain_grace(InterruptionNotice("spot", "terminate", 3), 4) == 0


async def test_a_spot_notice_is_reported_once_with_the_time_left() -> None:
    """One token for many requests, the two paths in turn, one notice with ~the time left."""
    notices: list[InterruptionNotice] = []
    async with open_fake_imds() as imds, trio.open_nursery() as nursery:
        monitor = await watch(imds, notices, nursery)
        with trio.fail_after(10):
            await imds.wait_for_requests(LIFECYCLE_PATH, 3)
        assert notices == []
        imds.interrupt_spot(90)
        checked = imds.count(SPOT_PATH)
        with trio.fail_after(10):
            await imds.wait_for_requests(SPOT_PATH, checked + 4)
        nursery.cancel_scope.cancel()
    [notice] = notices
    assert (notice.kind, notice.action) == ("spot", "terminate")
    assert 80 < notice.seconds_left <= 90
    assert imds.count(TOKEN_PATH) == 1
    assert abs(imds.count(SPOT_PATH) - imds.count(LIFECYCLE_PATH)) <= 1
    assert monitor.statistics().notices == 1


async def test_a_scale_in_notice_assumes_two_minutes() -> None:
    """target-lifecycle-state Terminated is a notice with 120 s left."""
    notices: list[InterruptionNotice] = []
    async with open_fake_imds() as imds, trio.open_nursery() as nursery:
        imds.scale_in()
        await watch(imds, notices, nursery)
        with trio.fail_after(10):
            await imds.wait_for_requests(LIFECYCLE_PATH, 3)
        nursery.cancel_scope.cancel()
    assert notices == [InterruptionNotice("scale_in", "Terminated", 120.0)]


async def test_a_refused_token_is_replaced() -> None:
    """A 401 (the token expired or IMDS restarted) gets a new token, then the answer."""
    notices: list[InterruptionNotice] = []
    async with open_fake_imds() as imds, trio.open_nursery() as nursery:
        monitor = await watch(imds, notices, nursery)
        with trio.fail_after(10):
            await imds.wait_for_requests(SPOT_PATH, 2)
        imds._tokens.clear()
        imds.scale_in()
        with trio.fail_after(10):
            await imds.wait_for_requests(TOKEN_PATH, 2)
            while not notices:
                await imds.wait_for_requests(LIFECYCLE_PATH, imds.count(LIFECYCLE_PATH) + 1)
        nursery.cancel_scope.cancel()
    assert monitor.statistics().failures == 0
    assert [n.kind for n in notices] == ["scale_in"]


async def test_an_unreachable_imds_is_bounded_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests that hang are cut at REQUEST_SECONDS; the monitor backs off, says so,
    and picks up once IMDS answers again."""
    monkeypatch.setattr(_imds, "REQUEST_SECONDS", 0.2)
    notices: list[InterruptionNotice] = []
    async with open_fake_imds() as imds, trio.open_nursery() as nursery:
        imds.unavailable = True
        monitor = await watch(imds, notices, nursery)
        with trio.fail_after(10):
            await imds.wait_for_requests(TOKEN_PATH, 2)
        stats = monitor.statistics()
        imds.unavailable = False
        imds.interrupt_spot(60)
        with trio.fail_after(10):
            while not notices:
                await imds.wait_for_requests(SPOT_PATH, imds.count(SPOT_PATH) + 1)
        nursery.cancel_scope.cancel()
    assert not stats.reachable and stats.failures >= 1
    assert monitor.statistics().reachable
    assert [n.kind for n in notices] == ["spot"]


async def test_a_spot_notice_drains_the_worker_with_the_time_left(tmp_path: Path) -> None:
    """The worker drains at once on a notice: grace = min(configured, left - margin),
    the running task INTERRUPTED (back to the queue), the worker STOPPED."""
    async with (
        open_fake_imds() as imds,
        farm_and_worker(
            tmp_path,
            imds_monitor=True,
            imds_endpoint=imds.endpoint_url,
            imds_interval_seconds=FAST,
            drain_grace_seconds=30.0,
        ) as (farm, worker, events),
    ):
        job_id = farm.create_job(
            simple_job(py("import time; print('running', flush=True); time.sleep(600)"), frames="1")
        )
        with trio.fail_after(30):
            await events.wait_line("running")
        imds.interrupt_spot(13)
        with trio.fail_after(30):
            assert await worker.wait_stop_requested() == "interruption"
        grace = worker.stop_grace
        with trio.fail_after(30):
            await worker.drain(grace)
        status = farm.worker(worker.worker_id).status
        tasks = [t.status for step in farm.job(job_id).steps for t in step.tasks]
        states = worker.actor_states()
    assert 1.0 < grace <= 3.0
    assert status == "STOPPED"
    assert tasks == ["READY"]
    assert "1 notices" in states["imds_monitor"]
