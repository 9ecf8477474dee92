"""What an action cost, from its launcher's report (see ``_launchusage.Usage``), and the
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
    (largest: pid 1234 python3, 400.1 MiB); farmhand killed them``, or, where a
    memory cgroup held the limit, ``...: its processes reached the 256.0 MiB limit
    (largest: ...); the kernel's OOM killer ended one in the session's memory
    cgroup, farmhand the rest``."""

    def mib(key: str) -> str:
        value = over.get(key)
        return f"{value / 2**20:.1f} MiB" if isinstance(value, int | float) else "?"

    largest = f"largest: pid {over.get('pid')} {over.get('name')}, {mib('largest')}"
    if over.get("by") == "kernel":
        # The session's memory cgroup held the limit (the largest is the last sample's).
        return (
            f"{MEMORY_LIMIT_FAILURE}: its processes reached the {mib('limit')} limit "
            f"({largest}); the kernel's OOM killer ended one in the session's memory "
            "cgroup, farmhand the rest"
        )
    return (
        f"{MEMORY_LIMIT_FAILURE}: its processes used {mib('used')}, over the "
        f"{mib('limit')} limit ({largest}); farmhand killed them"
    )
