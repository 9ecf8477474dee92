"""An optional HTTP endpoint on loopback: ``/healthz`` and ``/metrics``.

``/healthz`` answers 200 with a JSON body when the worker is healthy, 503 when
it is not: draining or stopped, or its last heartbeat is older than three
heartbeat intervals (a wedged agent). A paused worker (``agent.worker._pause``:
the failure throttle, work hours, a user at the workstation) is healthy: it is
doing what it was told, and makes no calls while paused, so its heartbeat's age
is not held against it. The body says why::

    {"status": "ok", "worker_id": ..., "state": "running",
     "heartbeat_age_seconds": 0.8, "heartbeat_interval_seconds": 15.0,
     "sessions": 1, "actors": {"scheduler": "running", ...},
     "pause": {"reasons": [], "details": [], "resume_in_seconds": null,
               "pauses": 0, "paused_seconds": 0.0, "failed_task_streak": 0}}

``/metrics`` is the Prometheus text format (prometheus-client), read from the
worker's statistics at scrape time:

    farmhand_sessions                      sessions running now
    farmhand_actions_total{state}          actions reported, by final state
    farmhand_api_calls_total{operation}    Deadline API calls, by operation
    farmhand_api_retries_total{operation}  retries, by operation
    farmhand_log_bytes_shipped_total       log bytes sent to CloudWatch
    farmhand_log_bytes_buffered            log bytes waiting (on disk) to be sent
    farmhand_heartbeat_age_seconds         time since the last heartbeat
    farmhand_heartbeat_lateness_p99_seconds
    farmhand_scheduler_restarts_total      restarts of the scheduler's sync loop
    farmhand_paused{reason}                1 for each reason the worker is paused for now
    farmhand_pauses_total                  pauses begun
    farmhand_paused_seconds_total          time spent pausing, paused or resuming
    farmhand_failed_task_streak            failed task runs since the last success
    farmhand_action_wall_seconds{kind,step}        histograms of what actions cost
    farmhand_action_cpu_seconds{kind,step}         (user + system), from the sessions'
    farmhand_action_peak_memory_bytes{kind,step}   launchers (``agent.worker._costs``)
    process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any, Protocol, cast

import trio
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .._asgi import Receive, Scope, Send, answer_lifespan, hypercorn_config
from ._costs import CPU, MEMORY, WALL, CostsSnapshot


class HealthStatistics(Protocol):
    """The part of ``WorkerStatistics`` the endpoint reports."""

    @property
    def worker_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def sessions(self) -> int: ...
    @property
    def actions(self) -> Mapping[str, int]: ...
    @property
    def heartbeat_age(self) -> float | None: ...
    @property
    def heartbeat_lateness_p99(self) -> float: ...
    @property
    def log_bytes_shipped(self) -> int: ...
    @property
    def log_bytes_buffered(self) -> int: ...
    @property
    def paused_for(self) -> tuple[str, ...]: ...
    @property
    def pause_details(self) -> tuple[str, ...]: ...
    @property
    def pauses(self) -> int: ...
    @property
    def paused_seconds(self) -> float: ...
    @property
    def resume_in(self) -> float | None: ...
    @property
    def failed_task_streak(self) -> int: ...


class HealthSource(Protocol):
    """What the endpoint reads from a running worker (``agent.worker._worker.Worker``).

    A protocol, not an import: the worker imports this module (when a health port
    is set), so this module does not import the worker."""

    @property
    def heartbeat_interval(self) -> float: ...
    @property
    def scheduler_restarts(self) -> int: ...
    def statistics(self) -> HealthStatistics: ...
    def api_statistics(self) -> dict[str, tuple[int, int]]: ...
    def actor_states(self) -> dict[str, str]: ...
    def action_costs(self) -> CostsSnapshot: ...


#: A heartbeat older than this many intervals makes the worker unhealthy.
STALE_INTERVALS = 3.0
#: States in which a worker is healthy. Paused ones make no calls to the farm, by design.
HEALTHY_STATES = ("running", "pausing", "paused", "resuming")
QUIET_STATES = ("paused", "resuming")

#: Interval 0 means the farm holds each call until it has work (a long poll): a
#: heartbeat may then be as old as the longest call the client waits for (30 s).
LONG_POLL_ALLOWANCE = 30.0


def health(worker: HealthSource) -> tuple[bool, dict[str, Any]]:
    """Whether the worker is healthy, and the report saying so."""
    stats = worker.statistics()
    interval = worker.heartbeat_interval
    age = stats.heartbeat_age
    problems = []
    if stats.state not in HEALTHY_STATES:
        problems.append(f"the worker is {stats.state}")
    if stats.state in QUIET_STATES:
        pass  # no calls while paused: the heartbeat waits
    elif age is None:
        problems.append("no heartbeat yet")
    elif age > STALE_INTERVALS * max(interval, 1.0) + (LONG_POLL_ALLOWANCE if interval <= 0 else 0):
        problems.append(f"the last heartbeat was {age:.0f} s ago")
    report = {
        "status": "ok" if not problems else "unhealthy",
        "problems": problems,
        "worker_id": stats.worker_id,
        "state": stats.state,
        "heartbeat_age_seconds": age,
        "heartbeat_interval_seconds": interval,
        "sessions": stats.sessions,
        "actors": worker.actor_states(),
        "pause": {
            "reasons": list(stats.paused_for),
            "details": list(stats.pause_details),
            "resume_in_seconds": stats.resume_in,
            "pauses": stats.pauses,
            "paused_seconds": round(stats.paused_seconds, 3),
            "failed_task_streak": stats.failed_task_streak,
        },
    }
    return not problems, report


class _WorkerCollector(Collector):
    def __init__(self, worker: HealthSource) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        stats = self._worker.statistics()
        sessions = GaugeMetricFamily("farmhand_sessions", "Sessions running now.")
        sessions.add_metric([], stats.sessions)
        yield sessions
        actions = CounterMetricFamily(
            "farmhand_actions", "Actions reported to the farm, by final state.", labels=["state"]
        )
        for state, count in sorted(stats.actions.items()):
            actions.add_metric([state], count)
        yield actions
        calls = CounterMetricFamily(
            "farmhand_api_calls", "Deadline API calls, by operation.", labels=["operation"]
        )
        retries = CounterMetricFamily(
            "farmhand_api_retries", "Deadline API retries, by operation.", labels=["operation"]
        )
        for operation, counts in sorted(self._worker.api_statistics().items()):
            calls.add_metric([operation], counts[0])
            retries.add_metric([operation], counts[1])
        yield calls
        yield retries
        shipped = CounterMetricFamily("farmhand_log_bytes_shipped", "Log bytes sent to CloudWatch.")
        shipped.add_metric([], stats.log_bytes_shipped)
        yield shipped
        buffered = GaugeMetricFamily(
            "farmhand_log_bytes_buffered", "Log bytes waiting, on disk, to be sent."
        )
        buffered.add_metric([], stats.log_bytes_buffered)
        yield buffered
        age = GaugeMetricFamily(
            "farmhand_heartbeat_age_seconds", "Seconds since the last heartbeat."
        )
        age.add_metric([], stats.heartbeat_age if stats.heartbeat_age is not None else float("nan"))
        yield age
        lateness = GaugeMetricFamily(
            "farmhand_heartbeat_lateness_p99_seconds", "99th percentile of heartbeat lateness."
        )
        lateness.add_metric([], stats.heartbeat_lateness_p99)
        yield lateness
        restarts = CounterMetricFamily(
            "farmhand_scheduler_restarts", "Restarts of the scheduler's sync loop."
        )
        restarts.add_metric([], self._worker.scheduler_restarts)
        yield restarts
        paused = GaugeMetricFamily(
            "farmhand_paused",
            "1 for each reason the worker takes no work now (failure_throttle, work_hours, "
            "user_active, user_idle_unknown, or a host's own).",
            labels=["reason"],
        )
        for reason in stats.paused_for:
            paused.add_metric([reason], 1)
        yield paused
        pauses = CounterMetricFamily("farmhand_pauses", "Pauses begun.")
        pauses.add_metric([], stats.pauses)
        yield pauses
        paused_seconds = CounterMetricFamily(
            "farmhand_paused_seconds", "Seconds spent pausing, paused or resuming."
        )
        paused_seconds.add_metric([], stats.paused_seconds)
        yield paused_seconds
        streak = GaugeMetricFamily(
            "farmhand_failed_task_streak",
            "Failed task runs since the last success (with the failure throttle on).",
        )
        streak.add_metric([], stats.failed_task_streak)
        yield streak
        yield from _cost_histograms(self._worker.action_costs())


_HISTOGRAMS = (
    (WALL, "farmhand_action_wall_seconds", "Wall time of actions, by kind and step."),
    (CPU, "farmhand_action_cpu_seconds", "CPU time (user + system) of actions' processes."),
    (
        MEMORY,
        "farmhand_action_peak_memory_bytes",
        "Peak resident memory of the session's processes while an action ran.",
    ),
)


def _cost_histograms(costs: CostsSnapshot) -> Iterator[Metric]:
    for key, name, documentation in _HISTOGRAMS:
        family = HistogramMetricFamily(name, documentation, labels=["kind", "step"])
        for (kind, step), histogram in costs.get(key, {}).items():
            buckets = [
                (_bound(bound), count)
                for bound, count in zip(histogram.bounds, histogram.cumulative, strict=True)
            ]
            buckets.append(("+Inf", histogram.count))
            family.add_metric([kind, step], buckets, sum_value=histogram.total)
        yield family


def _bound(value: float) -> str:
    """A bucket's ``le`` as prometheus-client writes its own (``1.0``, ``0.5``)."""
    return repr(float(value))


def make_registry(worker: HealthSource) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkerCollector(worker))
    registry.register(ProcessCollector(registry=None))
    return registry


class HealthApp:
    """The ASGI application behind the endpoint."""

    def __init__(self, worker: HealthSource) -> None:
        self._worker = worker
        self._registry = make_registry(worker)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain")
        elif path == "/healthz":
            ok, report = health(self._worker)
            await _respond(
                send, 200 if ok else 503, json.dumps(report).encode() + b"\n", "application/json"
            )
        elif path == "/metrics":
            body = generate_latest(self._registry)
            await _respond(send, 200, body, "text/plain; version=0.0.4; charset=utf-8")
        else:
            await _respond(send, 404, b"not found\n", "text/plain")


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve_health(
    worker: HealthSource,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/healthz`` and ``/metrics`` until cancelled; starts with the bound URL."""
    config = hypercorn_config(host, port, logger="farmhand.health.http", graceful_timeout=1.0)
    async with trio.open_nursery() as nursery:
        app = cast(Any, HealthApp(worker))
        binds = await nursery.start(partial(serve, app, config))
        task_status.started(binds[0])
