"""``open_agent`` from an asyncio program: the worker's Trio tree as a guest on the host's loop.

``open_agent`` asks sniffio which library runs its caller. Under asyncio it runs
the same tree in Trio's guest mode (``trio.lowlevel.start_guest_run``): Trio's
scheduler runs in callbacks on the host's loop, in the host's thread, between
the host's own callbacks. (Trio parks one helper thread in ``epoll_wait``
between its ticks to learn of I/O; no farmhand code runs there.) One guest run
per loop carries every worker that loop's tasks open, and ends with the last.

What crosses between the two:

- The host's task gets the same ``Worker``. Its sync methods (``statistics()``,
  ``finish_then_stop()``, ``cancel_running()``) work from asyncio as they are:
  during a guest run Trio's sync calls work on the host's thread. Its async
  methods (``drain``, ``wait_stop_requested``, ``sync_now``, marked
  ``from_host``), awaited from an asyncio task, run as Trio tasks beside the
  tree; their result or error comes back to the awaiting task, and cancelling
  that task cancels them (it waits until they have ended).
- Leaving the block, by an error or a cancellation too, drains the worker as
  under Trio, and the host's task waits until the tree has ended, whatever
  cancels it meanwhile: a second cancellation hurries the drain (no grace
  left) and the wait goes on, bounded (``stop_bound(0)``), then the
  cancellation is raised. Nothing of the worker runs once ``async with`` is
  done; the farm has been told STOPPED.
- A tree that fails while the host is in the block cancels the block, as the
  tree's nursery does under Trio: an anyio cancel scope, level-triggered like
  Trio's and undone with the task's ``uncancel()``, so the task is not left
  cancelled; the tree's error is then raised from the ``async with``. One that
  fails while starting raises from ``async with`` at once.
- Cancelling the host's task while the worker starts cancels the start (the
  farm is told STOPPED if the worker had registered), then raises.
- ``on_event`` is called on the host's thread, in the host loop's callbacks:
  it may call ``put_nowait`` on an ``asyncio.Queue``.

Signals: none. The guest run is started with ``host_uses_signal_set_wakeup_fd``
(Trio leaves the wakeup fd to the host), and if Trio put its KeyboardInterrupt
handler on SIGINT (it does where SIGINT still has Python's default handler)
the previous one is put back: SIGINT, SIGTERM and SIGUSR1 are the host's.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

import attrs
import outcome
import sniffio
import structlog
import trio

from .._errors import FarmhandError

log = structlog.get_logger("farmhand.worker")

P = ParamSpec("P")
T = TypeVar("T")

#: What a call to a worker whose tree has ended raises.
NOT_RUNNING = "the worker is not running: its Trio tree has ended"


class HostCalls(Protocol):
    """How a host on another event loop runs a Trio coroutine of a guest worker."""

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T: ...


class _Guestable(Protocol):
    """What the guest machinery needs of a worker (``agent.worker._worker.Worker``,
    named by its shape so that the two modules do not import each other)."""

    _guest: HostCalls | None

    async def drain(self, grace: float | None = ...) -> None: ...


W = TypeVar("W", bound=_Guestable)
AnyWorker = TypeVar("AnyWorker", bound=_Guestable)


def from_host(
    method: Callable[Concatenate[W, P], Awaitable[T]],
) -> Callable[Concatenate[W, P], Coroutine[Any, Any, T]]:
    """Let an asyncio host await this Trio method of a guest worker: the call runs as a
    Trio task beside the worker's tree. From Trio (and for a worker that runs under
    Trio itself) it is the method as it is."""

    async def call(self: W, /, *args: P.args, **kwargs: P.kwargs) -> T:
        guest = self._guest
        if guest is None or sniffio.current_async_library() == "trio":
            return await method(self, *args, **kwargs)
        return await guest.call(functools.partial(method, self, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


def hosted_by_trio_or_asyncio(
    open_worker: Callable[P, AbstractAsyncContextManager[AnyWorker]],
) -> Callable[P, AbstractAsyncContextManager[AnyWorker]]:
    """``open_worker`` (``open_agent``) as it is for a Trio caller, and as a Trio guest on
    the caller's loop for an asyncio one (``open_in_guest``)."""

    @asynccontextmanager
    async def open_hosted(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[AnyWorker]:
        if sniffio.current_async_library() == "trio":
            async with open_worker(*args, **kwargs) as worker:
                yield worker
        else:
            async with open_in_guest(functools.partial(open_worker, *args, **kwargs)) as worker:
                yield worker

    functools.update_wrapper(open_hosted, open_worker)
    return open_hosted


@asynccontextmanager
async def open_in_guest(
    open_worker: Callable[[], AbstractAsyncContextManager[AnyWorker]],
) -> AsyncIterator[AnyWorker]:
    """``open_worker()`` (``open_agent`` with its arguments) as a Trio guest of the
    running asyncio loop, for the block (module docstring)."""
    library = sniffio.current_async_library()
    if library != "asyncio":
        raise FarmhandError(f"open_agent runs under Trio or asyncio, not {library}")
    import anyio  # only hosts on asyncio pay for it

    run = await _GuestRun.join(asyncio.get_running_loop())
    guest = _GuestWorker(run)
    try:
        run.spawn(guest, open_worker)
        ready, cancelled = await _wait_through(guest.ready, guest.cancel_start)
        if cancelled is not None:
            # The start was cancelled (or, had it just started, the worker drains):
            # it ends before this does.
            await _wait_through(guest.done, guest.hurry)
            raise cancelled
        worker = cast(AnyWorker, ready.unwrap())  # what failed the start, as under Trio
        body = anyio.CancelScope()
        try:
            with body:
                guest.on_failure = body.cancel
                yield worker
        finally:
            guest.leave()
            done, cancelled = await _wait_through(guest.done, guest.hurry)
            # The tree's failure first (it cancelled the block), then a cancellation
            # that came while it drained; an error the block raised goes on otherwise.
            done.unwrap()
            if cancelled is not None:
                raise cancelled
    finally:
        await run.leave(guest)


async def _wait_through(
    future: asyncio.Future[T], on_cancel: Callable[[], object]
) -> tuple[T, asyncio.CancelledError | None]:
    """``future``'s result, waited for whatever cancels this task meanwhile: each
    cancellation calls ``on_cancel()``, and the first is handed back for the caller to
    raise once it has what it waited for."""
    import anyio

    cancelled: asyncio.CancelledError | None = None
    # A cancelled anyio scope around the host would cancel every await here again
    # (level-triggered): shielded from those, only the task's own cancels come, once each.
    with anyio.CancelScope(shield=True):
        while not future.done():
            try:
                await asyncio.wait((future,))
            except asyncio.CancelledError as exc:
                cancelled = cancelled or exc
                on_cancel()
    return future.result(), cancelled


def _failed(future: asyncio.Future[outcome.Outcome[T]]) -> bool:
    return future.done() and isinstance(future.result(), outcome.Error)


def _resolve(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


#: The guest run of each asyncio loop, while it runs.
_RUNS: dict[asyncio.AbstractEventLoop, _GuestRun] = {}


@attrs.define(eq=False)
class _GuestRun:
    """One Trio guest run on one asyncio loop: its workers' trees are its system tasks,
    and it ends once the last of them has (``leave``)."""

    loop: asyncio.AbstractEventLoop
    finished: asyncio.Future[outcome.Outcome[None]]
    workers: set[_GuestWorker] = attrs.field(factory=set)
    #: Set once the last worker has left: the run ends.
    unused: trio.Event = attrs.field(factory=trio.Event)

    @classmethod
    async def join(cls, loop: asyncio.AbstractEventLoop) -> _GuestRun:
        """The loop's guest run, started if there is none (a loop has one at most)."""
        while (run := _RUNS.get(loop)) is not None and run.unused.is_set():
            # Ending: a new one may only start once Trio has let go of the thread.
            await asyncio.wait((run.finished,))
        if run is None:
            run = cls(loop, loop.create_future())
            run._start()
        return run

    def _start(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if main else None
        trio.lowlevel.start_guest_run(
            self._main,
            run_sync_soon_threadsafe=self.loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=self.loop.call_soon,
            done_callback=self._done,
            # The host owns signal.set_wakeup_fd; Trio reads no signals here.
            host_uses_signal_set_wakeup_fd=True,
        )
        if main and sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:
            # Trio put its KeyboardInterrupt handler where Python's default one was: ^C
            # stays the host's to handle (asyncio.run's cancels its task: a drain).
            signal.signal(signal.SIGINT, sigint)
        _RUNS[self.loop] = self
        log.debug("worker.guest_run_started")

    async def _main(self) -> None:
        await self.unused.wait()

    def _done(self, result: outcome.Outcome[None]) -> None:
        if _RUNS.get(self.loop) is self:
            del _RUNS[self.loop]
        # Only a failed run leaves workers behind; they end with its error.
        for guest in list(self.workers):
            guest.end(result)
        _resolve(self.finished, result)

    def spawn(
        self,
        guest: _GuestWorker,
        open_worker: Callable[[], AbstractAsyncContextManager[_Guestable]],
    ) -> None:
        self.workers.add(guest)
        # The tree inherits the host task's context variables (structlog's among them),
        # as it inherits the caller's under Trio.
        trio.lowlevel.spawn_system_task(
            guest.serve,
            open_worker,
            name="farmhand worker (guest)",
            context=contextvars.copy_context(),
        )

    async def leave(self, guest: _GuestWorker) -> None:
        """``guest`` has ended; the last one out ends the run, and waits for it."""
        self.workers.discard(guest)
        if self.workers or self.unused.is_set() or self.finished.done():
            return
        self.unused.set()
        result, cancelled = await _wait_through(self.finished, lambda: None)
        if isinstance(result, outcome.Error) and not _failed(guest.done):
            # Trio failed after the worker had ended (else its error came with the worker's).
            raise result.error
        if cancelled is not None:
            raise cancelled


@attrs.define(eq=False)
class _GuestWorker:
    """One worker's tree in a guest run, seen from both sides: ``serve`` is its Trio
    task; the rest is called on the host's side."""

    run: _GuestRun
    #: The worker, once it runs; or what ended it while it started.
    ready: asyncio.Future[outcome.Outcome[_Guestable]] = attrs.field(init=False)
    #: How the tree ended.
    done: asyncio.Future[outcome.Outcome[None]] = attrs.field(init=False)
    #: The whole tree, cancelled if the host gives up while it starts.
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    left: trio.Event = attrs.field(factory=trio.Event)
    worker: _Guestable | None = None
    hurried: bool = False
    #: Set once the tree has ended: no more calls start.
    closed: bool = False
    #: The host's calls (and a hurried drain), Trio tasks beside the tree: each in a
    #: cancel scope of its own, cancelled when the tree ends.
    beside: set[trio.CancelScope] = attrs.field(factory=set)
    #: Cancels the host's block, while the host is in it.
    on_failure: Callable[[], object] | None = None

    def __attrs_post_init__(self) -> None:
        self.ready = self.run.loop.create_future()
        self.done = self.run.loop.create_future()

    # ---------------------------------------------------------------- Trio's side

    async def serve(
        self, open_worker: Callable[[], AbstractAsyncContextManager[_Guestable]]
    ) -> None:
        # No nursery of ours around open_agent: what it raises reaches the host as it
        # would a Trio caller (a failed start as itself, a failed tree as its group).
        result: outcome.Outcome[None] = outcome.Value(None)
        try:
            with self.scope:
                async with open_worker() as worker:
                    worker._guest = self
                    self.worker = worker
                    _resolve(self.ready, outcome.Value(worker))
                    await self.left.wait()
                    # Leaving open_agent's block drains the worker (bounded).
        except Exception as exc:
            # To the host, which raises it. Anything else (KeyboardInterrupt) fails the
            # whole run, which ends every worker with it.
            result = outcome.Error(exc)
        finally:
            self.closed = True
            for scope in self.beside:
                scope.cancel(reason="the worker has stopped")
        self.end(result)

    def end(self, result: outcome.Outcome[None]) -> None:
        # Fresh outcomes: each is unwrapped once, and a failed run ends every worker.
        if isinstance(result, outcome.Error):
            _resolve(self.ready, outcome.Error(result.error))
            _resolve(self.done, outcome.Error(result.error))
            if self.on_failure is not None:
                self.on_failure()
        else:
            _resolve(self.ready, outcome.Error(FarmhandError("the worker's start was cancelled")))
            _resolve(self.done, outcome.Value(None))

    def _start_beside(self, fn: Callable[[], Awaitable[None]], name: str) -> trio.CancelScope:
        """Run ``fn()`` as a Trio task (a system task of the run) until it returns or the
        tree ends. ``fn`` raises nothing but ``Cancelled``: a system task that did
        would fail the run."""
        scope = trio.CancelScope()

        async def beside() -> None:
            try:
                with scope:
                    await fn()
            finally:
                self.beside.discard(scope)

        self.beside.add(scope)
        # The host's context variables (structlog's among them), as a Trio caller's.
        trio.lowlevel.spawn_system_task(beside, name=name, context=contextvars.copy_context())
        return scope

    # ---------------------------------------------------------------- the host's side

    # Each is a no-op once the tree has ended: a run that failed may have left its
    # tasks as they were, and nothing of it may be touched.

    def cancel_start(self) -> None:
        if not self.done.done():
            self.scope.cancel(reason="the host's task was cancelled while the worker started")

    def leave(self) -> None:
        self.on_failure = None
        if not self.done.done():
            self.left.set()

    def hurry(self) -> None:
        """Shorten the drain under way to no grace (the host was cancelled again)."""
        worker = self.worker
        if worker is None or self.closed or self.done.done() or self.hurried:
            return
        self.hurried = True

        async def drain_now() -> None:
            log.warning("worker.guest_hurried", action="drain with no grace")
            try:
                await worker.drain(0.0)
            except Exception as exc:  # the drain under way goes on
                log.error("worker.guest_hurry_failed", error=repr(exc))

        self._start_beside(drain_now, "farmhand drain, hurried")

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` as a Trio task beside the tree; its result here (module docstring)."""
        if self.closed or self.done.done():
            raise FarmhandError(NOT_RUNNING)
        reply: asyncio.Future[outcome.Outcome[T]] = self.run.loop.create_future()

        async def run_call() -> None:
            # Cancelled (the host gave up, or the tree ended): NOT_RUNNING, which a
            # host that gave up never sees. Cancelled itself never crosses.
            result: outcome.Outcome[T] = outcome.Error(FarmhandError(NOT_RUNNING))
            try:
                try:
                    result = outcome.Value(await fn())
                except Exception as exc:
                    result = outcome.Error(exc)
            finally:
                _resolve(reply, result)

        scope = self._start_beside(run_call, "farmhand call from the host")
        result, cancelled = await _wait_through(
            reply, functools.partial(scope.cancel, reason="the host's task was cancelled")
        )
        if cancelled is not None:
            raise cancelled
        return result.unwrap()
