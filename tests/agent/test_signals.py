"""One escalation rule for stop signals (agent/_signals.py), with real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from agent._signals import (
    ABANDON_STATUS,
    StopLevel,
    StopRequest,
    level_of,
    open_stop_signals,
)

ROOT = Path(__file__).resolve().parents[2]


async def _read(count: int, *, finish: bool, send: list[signal.Signals]) -> list[StopRequest]:
    with open_stop_signals(finish=finish) as stops:
        read: list[StopRequest] = []
        for signum in send:
            os.kill(os.getpid(), signum)
            # One at a time: signals of one kind coalesce while unread.
            with trio.fail_after(10):
                read.append(await stops.__anext__())
        assert len(read) == count
        return read


async def test_stop_signals_escalate_graceful_immediate_abandon() -> None:
    """SIGTERM or SIGINT: the first graceful, the second immediate, every later one
    abandon; SIGUSR1 (taken with finish) is finish and counts for nothing."""
    sent = [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGTERM, signal.SIGINT]
    read = await _read(5, finish=True, send=sent)
    assert read == [
        StopRequest(StopLevel.GRACEFUL, "SIGTERM", 1),
        StopRequest(StopLevel.FINISH, "SIGUSR1", 0),
        StopRequest(StopLevel.IMMEDIATE, "SIGINT", 2),
        StopRequest(StopLevel.ABANDON, "SIGTERM", 3),
        StopRequest(StopLevel.ABANDON, "SIGINT", 4),
    ]
    assert [level_of(n) for n in (1, 2, 3, 10)] == [
        StopLevel.GRACEFUL,
        StopLevel.IMMEDIATE,
        StopLevel.ABANDON,
        StopLevel.ABANDON,
    ]


async def test_outside_the_block_signals_do_what_they_did() -> None:
    """The handlers go with the block: SIGINT is back to its handler from before (here
    Trio's KeyboardInterrupt), and SIGUSR1 is left alone unless asked for."""
    before = signal.getsignal(signal.SIGINT)
    await _read(1, finish=False, send=[signal.SIGINT])
    assert signal.getsignal(signal.SIGINT) is before
    with open_stop_signals():
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


SERVER = """
import trio
from agent._signals import open_stop_signals, stop_server_on_signals

async def main():
    with open_stop_signals() as stops:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_server_on_signals, stops, lambda r: print("stopping", r.signal, flush=True))
            print("ready", flush=True)
            await trio.sleep_forever()

trio.run(main)
"""


def test_a_server_stops_on_the_first_signal_and_exits_on_the_second() -> None:
    """The first stop signal asks the server to close; a second exits at once with 130
    (a server has no work of its own to kill)."""
    with subprocess.Popen(
        [sys.executable, "-c", SERVER],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
            process.send_signal(signal.SIGTERM)
            assert process.stdout.readline() == "stopping SIGTERM\n"
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == ABANDON_STATUS
    assert "SIGINT again: exiting now" in err
