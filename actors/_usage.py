"""What an action cost, from its launcher's report (see ``_launcher.Usage``), and the
message of an action killed for memory (``SessionConfig.memory_limit``)."""

from __future__ import annotations

from collections.abc import Mapping

from ._messages import ActionUsage


def usage_from_launcher(wall: float, measured: Mapping[str, object] | None) -> ActionUsage:
    """The action's usage from its wall time and what its launcher measured."""
    if not measured:
        return ActionUsage(wall)

    def number(key: str) -> float | None:
        value = measured.get(key)
        return float(value) if isinstance(value, int | float) else None

    peak, gpu = number("peak_rss"), number("peak_gpu")
    return ActionUsage(
        wall,
        cpu_user_seconds=number("user"),
        cpu_system_seconds=number("system"),
        peak_rss_bytes=int(peak) if peak is not None else None,
        peak_gpu_bytes=int(gpu) if gpu is not None else None,
    )


#: How a failure for memory starts: a farm (or a person) can tell it from others
#: and retry the task with more memory.
MEMORY_LIMIT_FAILURE = "memory limit exceeded"


def memory_limit_message(over: Mapping[str, object]) -> str:
    """``memory limit exceeded: its processes used 412.3 MiB, over the 256.0 MiB limit
    (largest: pid 1234 python3, 400.1 MiB); farmhand killed them``."""

    def mib(key: str) -> str:
        value = over.get(key)
        return f"{value / 2**20:.1f} MiB" if isinstance(value, int | float) else "?"

    return (
        f"{MEMORY_LIMIT_FAILURE}: its processes used {mib('used')}, over the "
        f"{mib('limit')} limit (largest: pid {over.get('pid')} {over.get('name')}, "
        f"{mib('largest')}); farmhand killed them"
    )
