"""Host metrics in the agent log, every ``host_metrics_logging_interval_seconds``.

The official agent logs the host's CPU, memory, swap, disk and network use once a
minute, so that a farm administrator reading a worker's log (locally or in its
CloudWatch stream) sees what the host looked like when a task misbehaved. This
is the same, as one structured line (``worker.host_metrics``): CPU use over the
interval and the load average; memory and swap in use; the free space where
sessions run; network bytes per second over the interval. ``psutil`` reads
``/proc`` (and its counterparts elsewhere); the disk is asked in a worker thread,
since the session root may be a network mount.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil
import structlog
import trio

log = structlog.get_logger("farmhand.hostmetrics")

_MIB = 1 << 20
_GIB = 1 << 30


def _disk(path: Path) -> tuple[float, float]:
    """Free GiB and percent used of the file system holding ``path`` (or its parent)."""
    for candidate in (path, *path.parents):
        try:
            usage = psutil.disk_usage(str(candidate))
        except OSError:
            continue
        return usage.free / _GIB, usage.percent
    return float("nan"), float("nan")


def sample(
    disk_path: Path, now: float, previous: tuple[float, Any] | None
) -> tuple[dict[str, Any], Any]:
    """One line's fields at ``now``; ``previous`` is ``(time, network counters)`` of the
    last sample (``None`` on the first), and the new one is returned with the fields."""
    net = psutil.net_io_counters()
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    free_gib, disk_used = _disk(disk_path)
    fields: dict[str, Any] = {
        # Since the last call (the first call primes it and says 0).
        "cpu_percent": psutil.cpu_percent(interval=None),
        "load_1m": round(os.getloadavg()[0], 2),
        "memory_used_percent": memory.percent,
        "memory_available_mib": round(memory.available / _MIB),
        "swap_used_percent": swap.percent,
        "disk_free_gib": round(free_gib, 1),
        "disk_used_percent": disk_used,
    }
    if previous is not None and net is not None:
        at, before = previous
        elapsed = max(now - at, 1e-9)
        fields["net_sent_kib_per_s"] = round(
            (net.bytes_sent - before.bytes_sent) / 1024 / elapsed, 1
        )
        fields["net_recv_kib_per_s"] = round(
            (net.bytes_recv - before.bytes_recv) / 1024 / elapsed, 1
        )
    return fields, (now, net)


async def log_host_metrics(interval: float, *, disk_path: Path) -> None:
    """Log a ``worker.host_metrics`` line every ``interval`` seconds, until cancelled."""
    _, previous = await trio.to_thread.run_sync(sample, disk_path, trio.current_time(), None)
    while True:
        await trio.sleep(interval)
        fields, previous = await trio.to_thread.run_sync(
            sample, disk_path, trio.current_time(), previous
        )
        log.info("worker.host_metrics", **fields)
