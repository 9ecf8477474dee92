"""Running a worker until it stops: for ``python -m agent`` and for hosts that embed it.

``serve_worker(config)`` opens a worker (``open_agent``) and runs it until
something asks it to stop, then drains it and returns why:

- the farm (``desiredWorkerStatus=STOPPED``), ``exit_after_jobs``,
  ``idle_timeout``, a spot or scale-in notice, or the credentials running out
  (the drain's grace is then what is left);
- with ``handle_signals`` (``agent._signals``' rule): the first SIGTERM or SIGINT
  drains (the config's grace), a second drains with no grace left, a third exits
  the process at once
  (status 130; the containment watchdog still kills what the jobs left);
  SIGUSR1 finishes the current work, takes no more, then stops. Signals are
  caught from the start: one during the bootstrap cancels it (and the farm is
  told STOPPED if the worker was registered already), and the result is
  ``None``;
- ``stop`` (a ``threading.Event``) set from any thread: a drain.

``run(config)`` is the same for a host that does not run Trio: it blocks the
calling thread (signals are handled only in the main thread) and returns the
``StopReason``. A farm error that ends the worker is raised as that
``FarmhandError`` (``UnrecoverableError`` when the farm gives up on the worker).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial

import attrs
import structlog
import trio

from actors import SessionEvent

from .._errors import FarmhandError
from .._progress import StatusLine
from .._signals import ABANDON_STATUS, StopLevel, StopSignals, open_stop_signals
from ._config import WorkerConfig
from ._worker import StopReason, Worker, open_agent

log = structlog.get_logger("farmhand.main")


@attrs.define(eq=False)
class _Signals:
    """Where SIGTERM/SIGINT go: to the start-up (cancelled) until the worker runs,
    then to the worker (drained)."""

    startup: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    worker: Worker | None = None


async def serve_worker(
    config: WorkerConfig,
    *,
    handle_signals: bool = False,
    stop: threading.Event | None = None,
    on_event: Callable[[str, SessionEvent], None] | None = None,
    progress: StatusLine | None = None,
) -> StopReason | None:
    """Run a worker until it is asked to stop, drain it, return why (module docstring).

    ``progress``: a start-up that takes more than a second says so there, once a
    second, until the worker runs (``python -m agent`` on a terminal)."""
    state = _Signals()
    reason: StopReason | None = None
    receiver = open_stop_signals(finish=True) if handle_signals else nullcontext(None)
    try:
        with receiver as signals:
            async with trio.open_nursery() as nursery:
                if signals is not None:
                    nursery.start_soon(_handle_signals, signals, state, nursery)
                starting = trio.CancelScope()
                if progress is not None and progress.live:
                    nursery.start_soon(show_startup, progress, config, starting)
                with state.startup:
                    async with open_agent(config, on_event=on_event) as worker:
                        starting.cancel(reason="the worker has started")
                        state.worker = worker
                        if stop is not None:
                            nursery.start_soon(_watch_event, stop, worker)
                        reason = await worker.wait_stop_requested()
                        await worker.drain(worker.stop_grace)
                nursery.cancel_scope.cancel(reason="the worker has stopped")
    except* FarmhandError as group:
        # What ended the worker, not the nurseries around it: the one farm error as it
        # is, or several summed up in one (the group chained, never dropped). Anything
        # else in the group goes on as it came.
        errors = list(_leaves(group))
        if len(errors) == 1:
            raise errors[0] from group
        raise FarmhandError(
            f"the worker ended with {len(errors)} errors: " + "; ".join(map(str, errors))
        ) from group
    return reason


def run(
    config: WorkerConfig,
    *,
    stop: threading.Event | None = None,
    handle_signals: bool | None = None,
    on_event: Callable[[str, SessionEvent], None] | None = None,
) -> StopReason | None:
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


def _leaves(group: BaseExceptionGroup[FarmhandError]) -> Iterator[FarmhandError]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def show_startup(line: StatusLine, config: WorkerConfig, scope: trio.CancelScope) -> None:
    """Until ``scope`` is cancelled: after a second, and every second after that, how
    long the worker has been starting (a farm that does not answer, say)."""
    began = trio.current_time()
    with scope:
        try:
            while True:
                await trio.sleep(1)
                line.show(
                    f"[farmhand] starting the worker: {trio.current_time() - began:.0f} s so far "
                    f"(farm {config.farm_id}, fleet {config.fleet_id})"
                )
        finally:
            line.clear()


async def _watch_event(stop: threading.Event, worker: Worker) -> None:
    # Event.wait() blocks a thread; abandoning it on cancel leaves a waiting
    # thread behind, which ends with the event or the process.
    await trio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
    log.info("worker.stop_event", action="drain")
    await worker.drain(worker.config.drain_grace_seconds)


async def _handle_signals(signals: StopSignals, state: _Signals, nursery: trio.Nursery) -> None:
    # Signals coalesce: nothing here may block before the next one is read.
    async for request in signals:
        name, worker = request.signal, state.worker
        if request.level is StopLevel.FINISH:
            if worker is None:
                log.warning("worker.signal", signal=name, action="ignored while starting")
                continue
            log.info("worker.signal", signal=name, action="finish current work, then stop")
            worker.finish_then_stop()
        elif request.level is StopLevel.ABANDON:
            log.warning("worker.signal", signal=name, action="exit now")
            os._exit(ABANDON_STATUS)
        elif worker is None:
            if request.level is StopLevel.GRACEFUL:
                log.info("worker.signal", signal=name, action="stop starting")
                state.startup.cancel(reason=f"{name} while starting")
        elif request.level is StopLevel.GRACEFUL:
            log.info("worker.signal", signal=name, action="drain")
            nursery.start_soon(worker.drain)
        else:
            log.warning("worker.signal", signal=name, action="drain with no grace")
            nursery.start_soon(worker.drain, 0.0)
