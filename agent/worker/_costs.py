"""What actions cost, by kind and step, as histograms for ``/metrics``.

The worker feeds every ``ActionEnded`` that carries an ``ActionUsage`` (what the
session's launcher measured: wall time, CPU user and system time, the peak
memory of the session's process tree) into ``ActionCosts.record``, labelled by
the action's kind (``task_run``, ``env_enter``, ``env_exit``) and name (the
step's name for a task run, the environment's for an environment action). The
health endpoint turns ``ActionCosts.snapshot()`` into three Prometheus
histograms (``agent.worker._health``)::

    farmhand_action_wall_seconds{kind,step}
    farmhand_action_cpu_seconds{kind,step}          user + system
    farmhand_action_peak_memory_bytes{kind,step}

Plain counters, no prometheus-client here: the worker records whether or not an
endpoint serves them. Step names come from jobs, so their number is bounded:
past ``MAX_STEPS`` different (kind, step) pairs, new ones are counted under
step ``"(other)"``.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import attrs

from actors import ActionUsage

#: Seconds: a quick task to a long render (12 h); each step about doubles.
TIME_BUCKETS: tuple[float, ...] = (
    0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 43200,
)  # fmt: skip
#: Bytes: 64 MiB to 256 GiB, doubling.
MEMORY_BUCKETS: tuple[float, ...] = tuple(float(2**exponent) for exponent in range(26, 39))

#: (kind, step) pairs kept apart; the rest share step ``OTHER``.
MAX_STEPS = 100
OTHER = "(other)"

WALL = "wall_seconds"
CPU = "cpu_seconds"
MEMORY = "peak_memory_bytes"


@attrs.frozen
class HistogramSnapshot:
    #: Upper bounds, then the count at or below each (cumulative), then the total.
    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    total: float


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self._total = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._total += value

    def snapshot(self) -> HistogramSnapshot:
        cumulative: list[int] = []
        running = 0
        for count in self._counts[:-1]:
            running += count
            cumulative.append(running)
        return HistogramSnapshot(
            self._bounds, tuple(cumulative), running + self._counts[-1], self._total
        )


#: By metric (``WALL``, ``CPU``, ``MEMORY``), then by (kind, step).
CostsSnapshot = Mapping[str, Mapping[tuple[str, str], HistogramSnapshot]]


class ActionCosts:
    """Histograms of what actions cost (see the module docstring)."""

    def __init__(self) -> None:
        self._wall: dict[tuple[str, str], _Histogram] = {}
        self._cpu: dict[tuple[str, str], _Histogram] = {}
        self._memory: dict[tuple[str, str], _Histogram] = {}
        self.recorded = 0

    def record(self, kind: str, step: str, usage: ActionUsage) -> None:
        key = (kind, step)
        if key not in self._wall and len(self._wall) >= MAX_STEPS:
            key = (kind, OTHER)
        self.recorded += 1
        _get(self._wall, key, TIME_BUCKETS).observe(usage.wall_seconds)
        if usage.cpu_user_seconds is not None and usage.cpu_system_seconds is not None:
            cpu = usage.cpu_user_seconds + usage.cpu_system_seconds
            _get(self._cpu, key, TIME_BUCKETS).observe(cpu)
        if usage.peak_rss_bytes is not None:
            _get(self._memory, key, MEMORY_BUCKETS).observe(usage.peak_rss_bytes)

    def snapshot(self) -> CostsSnapshot:
        return {
            name: {key: histogram.snapshot() for key, histogram in sorted(table.items())}
            for name, table in ((WALL, self._wall), (CPU, self._cpu), (MEMORY, self._memory))
        }


def _get(
    table: dict[tuple[str, str], _Histogram], key: tuple[str, str], bounds: tuple[float, ...]
) -> _Histogram:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = _Histogram(bounds)
    return histogram
