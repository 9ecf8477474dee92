"""agent.worker._health: /healthz and /metrics, from a worker's statistics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs
import httpx
import trio

from actors import ActionUsage
from agent.worker._costs import MAX_STEPS, ActionCosts, CostsSnapshot
from agent.worker._health import STALE_INTERVALS, health, serve_health
from tests.worker_harness import farm_and_worker, py, simple_job, wait_job


@attrs.frozen
class Stats:
    worker_id: str = "worker-1"
    state: str = "running"
    sessions: int = 1
    actions: Mapping[str, int] = attrs.field(factory=lambda: {"SUCCEEDED": 2})
    heartbeat_age: float | None = 1.0
    heartbeat_lateness_p99: float = 0.01
    log_bytes_shipped: int = 100
    log_bytes_buffered: int = 7
    paused_for: tuple[str, ...] = ()
    pause_details: tuple[str, ...] = ()
    pauses: int = 0
    paused_seconds: float = 0.0
    resume_in: float | None = None
    failed_task_streak: int = 0


@attrs.define
class Source:
    """What the endpoint reads from a worker, set by the test."""

    stats: Stats = attrs.field(factory=Stats)
    heartbeat_interval: float = 10.0
    scheduler_restarts: int = 0
    costs: ActionCosts = attrs.field(factory=ActionCosts)

    def statistics(self) -> Stats:
        return self.stats

    def api_statistics(self) -> dict[str, tuple[int, int]]:
        return {"UpdateWorkerSchedule": (5, 1)}

    def actor_states(self) -> dict[str, str]:
        return {"scheduler": "running"}

    def action_costs(self) -> CostsSnapshot:
        return self.costs.snapshot()


def test_a_running_worker_with_a_fresh_heartbeat_is_healthy() -> None:
    ok, report = health(Source())
    assert ok and report["status"] == "ok" and report["problems"] == []
    assert report["actors"] == {"scheduler": "running"} and report["sessions"] == 1


def test_a_stale_or_missing_heartbeat_or_a_stopped_worker_is_unhealthy() -> None:
    stale = Source(Stats(heartbeat_age=STALE_INTERVALS * 10.0 + 1))
    assert not health(stale)[0]
    assert health(stale)[1]["problems"] == ["the last heartbeat was 31 s ago"]
    assert health(Source(Stats(heartbeat_age=None)))[1]["problems"] == ["no heartbeat yet"]
    assert health(Source(Stats(state="draining")))[1]["problems"] == ["the worker is draining"]
    # A short interval still allows a few seconds: 3 x max(interval, 1 s).
    assert health(Source(Stats(heartbeat_age=2.5), heartbeat_interval=0.1))[0]
    # Interval 0: the farm holds each call (a long poll), for as long as a call may take.
    assert health(Source(Stats(heartbeat_age=20.0), heartbeat_interval=0))[0]
    assert not health(Source(Stats(heartbeat_age=34.0), heartbeat_interval=0))[0]


async def test_the_endpoint_serves_health_and_metrics_on_loopback() -> None:
    source = Source()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_health, source)
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url) as http:
            healthy = await http.get("/healthz")
            metrics = await http.get("/metrics")
            source.stats = Stats(state="stopped")
            stopped = await http.get("/healthz")
            posted = await http.post("/healthz")
        nursery.cancel_scope.cancel()
    assert healthy.status_code == 200 and healthy.json()["worker_id"] == "worker-1"
    assert 'farmhand_actions_total{state="SUCCEEDED"} 2.0' in metrics.text
    assert 'farmhand_api_retries_total{operation="UpdateWorkerSchedule"} 1.0' in metrics.text
    assert "farmhand_log_bytes_buffered 7.0" in metrics.text
    assert stopped.status_code == 503 and stopped.json()["status"] == "unhealthy"
    assert posted.status_code == 405


async def test_health_and_metrics_endpoint(tmp_path: Path) -> None:
    """/healthz says ok while running and 503 once stopped; /metrics is Prometheus text."""
    async with farm_and_worker(tmp_path, health_port=0) as (farm, worker, _events):
        job_id = farm.create_job(simple_job(py("print('x')"), frames="1"))
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        assert worker.health_url is not None
        async with httpx.AsyncClient(base_url=worker.health_url) as http:
            healthy = await http.get("/healthz")
            metrics = await http.get("/metrics")
            await worker.drain(0)
            stopped = await http.get("/healthz")
            missing = await http.get("/nope")
    assert healthy.status_code == 200
    assert healthy.json()["status"] == "ok"
    assert healthy.json()["worker_id"] == worker.worker_id
    assert set(healthy.json()["actors"]) >= {"scheduler", "heartbeat", "log_shipper", "credentials"}
    text = metrics.text
    for name in (
        "farmhand_sessions",
        'farmhand_actions_total{state="SUCCEEDED"}',
        'farmhand_api_calls_total{operation="UpdateWorkerSchedule"}',
        "farmhand_log_bytes_buffered",
        "farmhand_heartbeat_age_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
    ):
        assert name in text, name
    assert stopped.status_code == 503
    assert "the worker is stopped" in stopped.json()["problems"]
    assert missing.status_code == 404


async def test_action_costs_are_histograms_by_kind_and_step() -> None:
    """What actions cost, as /metrics serves it: cumulative buckets, sum and count per
    (kind, step); CPU is user + system; past MAX_STEPS pairs, steps share '(other)'."""
    source = Source()
    source.costs.record("task_run", "Render", ActionUsage(2.0, 1.5, 0.5, 300 * 2**20))
    source.costs.record("task_run", "Render", ActionUsage(40.0, 30.0, 1.0, 3 * 2**30))
    source.costs.record("env_enter", "Env", ActionUsage(0.2))  # no launcher: wall time only
    for index in range(MAX_STEPS):
        source.costs.record("task_run", f"step {index}", ActionUsage(1.0))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_health, source)
        async with httpx.AsyncClient(base_url=url) as http:
            text = (await http.get("/metrics")).text
        nursery.cancel_scope.cancel()

    def bucket(le: str) -> str:
        return f'farmhand_action_wall_seconds_bucket{{kind="task_run",le="{le}",step="Render"}}'

    assert f"{bucket('1.0')} 0.0" in text
    assert f"{bucket('5.0')} 1.0" in text
    assert f"{bucket('60.0')} 2.0" in text
    assert f"{bucket('+Inf')} 2.0" in text
    render = 'kind="task_run",step="Render"'
    assert f"farmhand_action_wall_seconds_sum{{{render}}} 42.0" in text
    assert f"farmhand_action_cpu_seconds_sum{{{render}}} 33.0" in text
    assert f"farmhand_action_peak_memory_bytes_count{{{render}}} 2.0" in text
    assert 'farmhand_action_wall_seconds_count{kind="env_enter",step="Env"} 1.0' in text
    assert 'farmhand_action_cpu_seconds_count{kind="env_enter"' not in text
    # Two pairs before the loop: its last two steps are past the limit.
    assert 'farmhand_action_wall_seconds_count{kind="task_run",step="(other)"} 2.0' in text


async def test_the_workers_sessions_feed_the_cost_histograms(tmp_path: Path) -> None:
    """A job with an environment and three tasks of step Render: /metrics has the three
    task runs' wall, CPU and peak memory under kind task_run, step Render."""
    async with farm_and_worker(tmp_path, health_port=0) as (farm, worker, events):
        job_id = farm.create_job(simple_job(py("print('x')"), frames="1-3"))
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        with trio.fail_after(30):
            await farm.wait_until(lambda: not farm.job(job_id).active_sessions)
        assert worker.health_url is not None
        async with httpx.AsyncClient(base_url=worker.health_url) as http:
            text = (await http.get("/metrics")).text
    render = 'kind="task_run",step="Render"'
    for name in ("wall_seconds", "cpu_seconds", "peak_memory_bytes"):
        assert f"farmhand_action_{name}_count{{{render}}} 3.0" in text, name
    assert 'farmhand_action_wall_seconds_count{kind="env_enter",step="Env"} 1.0' in text
    assert 'farmhand_action_wall_seconds_count{kind="env_exit",step="Env"} 1.0' in text
    # The host's own on_event still sees every event.
    assert "x" in events.lines()
