"""The host memory guard: stop the largest session before the kernel's OOM killer picks.

With ``--host-memory-reserve SIZE`` the worker looks at the host's available memory
(``MemAvailable``) once a second. Below the reserve, it fails the running action of
the session whose processes hold the most memory, at once, with a message that says
why (``host memory low: ...``; the farm sees a FAILED task it may retry elsewhere);
the session then ends as after any failure (the rest NEVER_ATTEMPTED, its
environments exited). It then waits ``SETTLE_SECONDS`` for the memory to come back
before it stops another. The agent itself keeps a lower ``oom_score_adj`` than its
actions (see ``actors._launcher``), so when the kernel must choose, a job goes first.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil
import structlog
import trio

from actors import CancelRunning, Containment, SchedulerCommand, tell

log = structlog.get_logger("farmhand.hostmemory")

#: How a failure for host memory starts (a farm may retry the task elsewhere).
HOST_MEMORY_FAILURE = "host memory low"
#: Seconds between looks at the host's memory.
CHECK_SECONDS = 1.0
#: Seconds given a stopped session's memory to come back before another is stopped.
SETTLE_SECONDS = 5.0


def available_memory() -> int:
    """Bytes the host can still give without swapping (``MemAvailable`` on Linux)."""
    return int(psutil.virtual_memory().available)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


async def guard_host_memory(
    reserve: int,
    containment: Containment,
    scheduler: trio.MemorySendChannel[SchedulerCommand],
    *,
    available: Callable[[], int] = available_memory,
    sessions: Callable[[], dict[str, int]] | None = None,
) -> None:
    """Run for the worker's lifetime (module docstring). ``available`` and
    ``sessions`` (session id -> bytes) are the host's, unless a test gives others."""
    sizes = sessions or containment.session_memory
    while True:
        await trio.sleep(CHECK_SECONDS)
        free = available()
        if free >= reserve:
            continue
        found = sizes()
        if not found:
            continue
        session_id, size = max(found.items(), key=lambda item: item[1])
        message = (
            f"{HOST_MEMORY_FAILURE}: {_mib(free)} available, under the {_mib(reserve)} "
            f"reserve; farmhand stopped this session, the largest on the host ({_mib(size)})"
        )
        log.warning(
            "worker.host_memory_low",
            session_id=session_id,
            available=free,
            reserve=reserve,
            session_bytes=size,
        )
        tell(
            scheduler,
            CancelRunning(time_limit=0.0, reason=message, session_id=session_id, fail=True),
        )
        await trio.sleep(SETTLE_SECONDS)
