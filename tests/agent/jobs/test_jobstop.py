"""Shutdown: signals and stop requests reach the running jobs as the contract says."""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from agent.jobs import JobRun, JobSpec, JobStatus, Shutdown, StopLevel

PY = sys.executable
TRAP_TERM = (
    "import signal, sys, time\n"
    "def on_term(*_):\n"
    "    print('got SIGTERM', flush=True); time.sleep(600)\n"
    "signal.signal(signal.SIGTERM, on_term)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.times: list[float] = []
        self._changed = trio.Event()

    def write(self, lines: Sequence[str]) -> None:
        self.lines.extend(lines)
        self.times.extend(trio.current_time() for _ in lines)
        self._changed.set()
        self._changed = trio.Event()

    def time_of(self, fragment: str) -> float:
        return next(t for t, line in zip(self.times, self.lines, strict=True) if fragment in line)

    async def wait_for(self, text: str) -> None:
        while text not in self.lines:
            await self._changed.wait()


def trapping_run(sink: Lines, **options: object) -> JobRun:
    return JobRun(JobSpec.from_command([PY, "-c", TRAP_TERM]), sinks=[sink], **options)  # type: ignore[arg-type]


async def test_sigusr1_lets_the_running_job_finish(tmp_path: Path) -> None:
    """SIGUSR1: no new jobs, but the running one is left alone and succeeds."""
    shutdown = Shutdown(grace=0)
    sink = Lines()
    go = tmp_path / "go"
    code = (
        "import os, time\n"
        "print('ready', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        "print('done')\n"
    )
    run = JobRun(JobSpec.from_command([PY, "-c", code]), sinks=[sink])
    async with trio.open_nursery() as nursery:
        await nursery.start(shutdown.watch_signals)
        with shutdown.guard(run):
            nursery.start_soon(run.run)
            await sink.wait_for("ready")
            os.kill(os.getpid(), signal.SIGUSR1)
            assert await shutdown.wait_requested() is StopLevel.FINISH
            assert run.statistics().state == "running"
            go.touch()
            outcome = await run.wait_ended()
        nursery.cancel_scope.cancel(reason="test over")
    assert outcome.succeeded and "done" in sink.lines
    assert (shutdown.level, shutdown.reason, shutdown.accepting) == (
        StopLevel.FINISH,
        "SIGUSR1",
        False,
    )


async def test_sigterm_stops_gracefully_then_a_second_kills() -> None:
    """First SIGTERM: the job gets SIGTERM and the grace; the second SIGTERM kills it now."""
    # A real clock: the job reacts in real time, and a jumping clock would reach the
    # end of the grace first.
    shutdown = Shutdown(grace=500)
    sink = Lines()
    run = trapping_run(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(shutdown.watch_signals)
        with shutdown.guard(run):
            nursery.start_soon(run.run)
            await sink.wait_for("ready")
            os.kill(os.getpid(), signal.SIGTERM)
            await sink.wait_for("got SIGTERM")  # the job is told, and keeps going
            assert shutdown.level is StopLevel.GRACEFUL
            assert run.statistics().state == "stopping"
            start = trio.current_time()
            os.kill(os.getpid(), signal.SIGINT)
            outcome = await run.wait_ended()
        nursery.cancel_scope.cancel(reason="test over")
    assert (outcome.status, outcome.error) == (JobStatus.INTERRUPTED, "SIGTERM")
    assert shutdown.statistics().level is StopLevel.IMMEDIATE
    # The runner's notes come once the process is gone: killed now, not 500 s on.
    assert sink.time_of("canceling: killing process group") - start < 30
    assert shutdown.statistics().signals == 2


async def test_a_third_stop_signal_exits_at_once() -> None:
    """The third SIGTERM/SIGINT calls exit_now (os._exit(130) by default)."""
    exited = trio.Event()
    shutdown = Shutdown(exit_now=exited.set)
    async with trio.open_nursery() as nursery:
        await nursery.start(shutdown.watch_signals)
        os.kill(os.getpid(), signal.SIGTERM)
        await shutdown.wait_requested(StopLevel.GRACEFUL)
        assert not exited.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        await shutdown.wait_requested(StopLevel.IMMEDIATE)
        assert not exited.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        await exited.wait()
        nursery.cancel_scope.cancel(reason="test over")
    assert shutdown.statistics().signals == 3


async def test_a_stop_cancels_waiting_for_work() -> None:
    """while_accepting() scopes end with any request; a new one is cancelled from the start."""
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:

        async def wait_for_work() -> None:
            with shutdown.while_accepting() as scope:
                await trio.sleep(math.inf)
            assert scope.cancelled_caught

        nursery.start_soon(wait_for_work)
        await trio.testing.wait_all_tasks_blocked()
        shutdown.finish("exit after job")
    with shutdown.while_accepting() as scope:
        await trio.sleep(math.inf)
    assert scope.cancelled_caught
    assert shutdown.reason == "exit after job"


async def test_a_run_guarded_after_the_stop_is_interrupted_before_it_starts() -> None:
    """A job taken just as the stop came never starts: it ends INTERRUPTED."""
    shutdown = Shutdown()
    shutdown.stop("SIGTERM")
    sink = Lines()
    run = trapping_run(sink)
    with shutdown.guard(run):
        outcome = await run.run()
    assert (outcome.status, outcome.error) == (JobStatus.INTERRUPTED, "SIGTERM")
    assert outcome.actions == {"NEVER_ATTEMPTED": 1}


async def test_levels_only_go_up_and_a_shorter_grace_applies() -> None:
    """finish() after stop() changes nothing; stop(grace=...) again shortens the grace."""
    shutdown = Shutdown(grace=1000)
    sink = Lines()
    run = trapping_run(sink)
    async with trio.open_nursery() as nursery:
        with shutdown.guard(run):
            nursery.start_soon(run.run)
            await sink.wait_for("ready")
            shutdown.stop("first")
            shutdown.finish("later")
            assert shutdown.level is StopLevel.GRACEFUL
            await sink.wait_for("got SIGTERM")
            hurried = trio.current_time()
            shutdown.stop("hurry", grace=0.5)
            outcome = await run.wait_ended()
    assert outcome.status is JobStatus.INTERRUPTED
    assert shutdown.reason == "first"
    killed = sink.time_of("notify period over: killing process group") - hurried
    assert 0.5 <= killed < 30


@pytest.mark.parametrize("level", [StopLevel.FINISH, StopLevel.GRACEFUL, StopLevel.IMMEDIATE])
async def test_wait_requested_returns_the_level_reached(level: StopLevel) -> None:
    """wait_requested(level) returns once the stop has gone at least that far."""
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        reached: list[StopLevel] = []

        async def waiter() -> None:
            reached.append(await shutdown.wait_requested(level))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        shutdown.force("now")
    assert reached == [StopLevel.IMMEDIATE]
