"""Taking over the sessions a killed agent left running (``actors/_restart.py``).

``open_agent`` looks for them before the farm hears from it; the farm's first
answer says which it still assigns (those go to their ``WorkSession``); the
rest end here.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from actors import Held, RestartHold, SchedulerCommand, find_held_sessions, sync_now

from ._bootstrap import Bootstrapped, bootstrap
from ._config import WorkerConfig

log = structlog.get_logger("farmhand.worker")


def restart_hold(config: WorkerConfig) -> RestartHold:
    """Where sessions wait for the agent to come back, and for how long."""
    return RestartHold(config.worker_persistence_dir / "sessions", config.restart_grace_seconds)


async def discard_held(held: dict[str, Held], hold: RestartHold) -> None:
    """End held sessions no agent will take over (their processes, files, directories)."""
    while held:
        session_id, session = held.popitem()
        log.info("worker.held_session_ended", session_id=session_id)
        await session.discard(hold)


async def end_unclaimed(
    held: dict[str, Held], hold: RestartHold, scheduler: trio.MemorySendChannel[SchedulerCommand]
) -> None:
    """Once the farm has answered: the held sessions it no longer assigns end."""
    await sync_now(scheduler)
    with trio.CancelScope(shield=True):
        await discard_held(held, hold)


async def bootstrap_taking_over(
    config: WorkerConfig, **options: Any
) -> tuple[Bootstrapped, dict[str, Held]]:
    """``bootstrap``, after looking for the sessions a killed predecessor left to their
    launchers (before the farm hears from us: a plain STARTED would end them there).
    The sessions come back by id when the farm still has the worker online; they
    are ended otherwise."""
    hold = restart_hold(config)
    held = await find_held_sessions(hold)
    resuming = bool(held) and config.restart_grace_seconds > 0
    try:
        booted = await bootstrap(config, resuming=resuming, **options)
    except BaseException:
        with trio.CancelScope(shield=True):
            await discard_held(held, hold)
        raise
    if not booted.resumed:
        await discard_held(held, hold)
    return booted, held
