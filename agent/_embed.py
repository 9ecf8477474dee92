"""Running a worker until it stops: for ``python -m agent`` and for hosts that embed it.

``serve_worker(config)`` opens a worker (``open_agent``) and runs it until
something asks it to stop, then drains it and returns why:

- the farm (``desiredWorkerStatus=STOPPED``), ``exit_after_jobs``,
  ``idle_timeout``, or the credentials running out;
- with ``handle_signals``: the first SIGTERM or SIGINT drains (the config's
  grace), a second drains with no grace left, a third exits the process at once
  (the containment watchdog still kills what the jobs left); SIGUSR1 finishes
  the current work, takes no more, then stops;
- ``stop`` (a ``threading.Event``) set from any thread: a drain.

``run(config)`` is the same for a host that does not run Trio: it blocks the
calling thread (signals are handled only in the main thread) and returns the
``StopReason``. A farm error that ends the worker is raised as that
``FarmhandError`` (``UnrecoverableError`` when the farm gives up on the worker).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from functools import partial

import structlog
import trio

from actors import SessionEvent

from ._config import WorkerConfig
from ._errors import FarmhandError
from ._worker import StopReason, Worker, open_agent

log = structlog.get_logger("farmhand.main")


async def serve_worker(
    config: WorkerConfig,
    *,
    handle_signals: bool = False,
    stop: threading.Event | None = None,
    on_event: Callable[[str, SessionEvent], None] | None = None,
) -> StopReason:
    """Run a worker until it is asked to stop, drain it, return why (module docstring)."""
    try:
        async with (
            open_agent(config, on_event=on_event) as worker,
            trio.open_nursery() as nursery,
        ):
            if handle_signals:
                nursery.start_soon(_handle_signals, worker)
            if stop is not None:
                nursery.start_soon(_watch_event, stop, worker)
            reason = await worker.wait_stop_requested()
            await worker.drain(config.drain_grace_seconds)
            nursery.cancel_scope.cancel(reason="the worker has stopped")
    except BaseExceptionGroup as group:
        # One farm error ends the worker; report it rather than the group around it.
        matched, rest = group.split(FarmhandError)
        if matched is not None and rest is None:
            raise _first(matched) from group
        raise
    return reason


def run(
    config: WorkerConfig,
    *,
    stop: threading.Event | None = None,
    handle_signals: bool | None = None,
    on_event: Callable[[str, SessionEvent], None] | None = None,
) -> StopReason:
    """Run a worker in this thread until it stops; why it stopped (module docstring).

    ``handle_signals`` defaults to whether this is the main thread (only it can).
    ``on_event(session_id, event)`` is called in this thread, from the worker's
    event loop: keep it quick.
    """
    if handle_signals is None:
        handle_signals = threading.current_thread() is threading.main_thread()
    return trio.run(
        partial(serve_worker, config, handle_signals=handle_signals, stop=stop, on_event=on_event)
    )


def _first(group: BaseExceptionGroup[FarmhandError]) -> FarmhandError:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


async def _watch_event(stop: threading.Event, worker: Worker) -> None:
    # Event.wait() blocks a thread; abandoning it on cancel leaves a waiting
    # thread behind, which ends with the event or the process.
    await trio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
    log.info("worker.stop_event", action="drain")
    await worker.drain(worker.config.drain_grace_seconds)


async def _handle_signals(worker: Worker) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        stops = 0
        async with trio.open_nursery() as nursery:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    log.info(
                        "worker.signal", signal="SIGUSR1", action="finish current work, then stop"
                    )
                    worker.finish_then_stop()
                    continue
                stops += 1
                name = signal.Signals(signum).name
                if stops == 1:
                    log.info("worker.signal", signal=name, action="drain")
                    nursery.start_soon(worker.drain)
                elif stops == 2:
                    log.warning("worker.signal", signal=name, action="drain with no grace")
                    nursery.start_soon(worker.drain, 0.0)
                else:
                    log.warning("worker.signal", signal=name, action="exit now")
                    os._exit(130)
