"""actors._process: one action's process, its output, its exit and its cancellation."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import trio
import trio.testing

from actors._process import (
    ActionControl,
    CancelMethod,
    CancelMode,
    ProcessResult,
    run_process,
    spawn_error_exit_code,
)

#: Prints "ready", then waits; on SIGTERM prints what cancel_info.json says and exits 0.
WAITER = (
    "import json, os, signal, sys, time\n"
    "def term(*_):\n"  # os.write: the signal may come while print('ready') is flushing
    "    os.write(1, ('term ' + json.load(open('cancel_info.json'))['NotifyEnd']).encode())\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


class Run:
    """One ``run_process`` call, with its output and log kept."""

    def __init__(self, control: ActionControl | None = None) -> None:
        self.control = control or ActionControl()
        self.output = b""
        self.logs: list[tuple[str, str]] = []
        self.ready = trio.Event()

    async def on_output(self, data: bytes) -> None:
        self.output += data
        if b"ready" in self.output:
            self.ready.set()

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))

    async def __call__(
        self,
        argv: list[str],
        cwd: Path,
        *,
        method: CancelMethod | None = None,
        runtime_limit: float | None = None,
    ) -> ProcessResult:
        return await run_process(
            argv,
            env={"PATH": "/usr/bin:/bin"},
            cwd=cwd,
            method=method or CancelMethod(),
            runtime_limit=runtime_limit,
            control=self.control,
            on_output=self.on_output,
            log=self.log,
        )


async def test_output_and_exit_code(tmp_path: Path) -> None:
    run = Run()
    result = await run(
        [
            sys.executable,
            "-c",
            "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)",
        ],
        tmp_path,
    )
    assert result.exit_code == 3
    assert not result.canceled and not result.timed_out and result.spawn_error is None
    assert result.pid is not None
    assert sorted(run.output.split()) == [b"err", b"out"]  # stdout and stderr, one stream


async def test_a_command_that_cannot_start_exits_127_with_the_reason(tmp_path: Path) -> None:
    run = Run()
    result = await run([str(tmp_path / "no-such-program")], tmp_path)
    assert result.exit_code == 127
    assert result.spawn_error is not None and "no-such-program" in result.spawn_error
    assert spawn_error_exit_code(PermissionError(13, "Permission denied")) == 126


async def test_a_cancel_before_the_start_skips_the_process(tmp_path: Path) -> None:
    control = ActionControl()
    control.cancel(reason="before", mark_failed=True)
    run = Run(control)
    result = await run([sys.executable, "-c", "open('ran', 'w')"], tmp_path)
    assert result == ProcessResult(None, canceled=True, timed_out=False, mark_failed=True)
    assert not (tmp_path / "ran").exists()


async def test_terminate_kills_the_process_group(tmp_path: Path) -> None:
    run = Run()
    async with trio.open_nursery() as nursery:
        results: list[ProcessResult] = []

        async def go() -> None:
            results.append(await run([sys.executable, "-c", WAITER], tmp_path))

        nursery.start_soon(go)
        await run.ready.wait()
        run.control.cancel(reason="test")
    [result] = results
    assert result.canceled and not result.timed_out
    assert result.exit_code == -signal.SIGKILL
    assert b"term" not in run.output
    assert any("killing process group" in message for _, message in run.logs)


async def test_notify_then_terminate_sends_sigterm_and_writes_cancel_info(tmp_path: Path) -> None:
    run = Run()
    method = CancelMethod(CancelMode.NOTIFY_THEN_TERMINATE, notify_period=120.0)
    async with trio.open_nursery() as nursery:
        results: list[ProcessResult] = []

        async def go() -> None:
            results.append(await run([sys.executable, "-c", WAITER], tmp_path, method=method))

        nursery.start_soon(go)
        await run.ready.wait()
        run.control.cancel(reason="test")
    [result] = results
    assert result.canceled and result.exit_code == 0, run.output  # its handler ran and it left
    notify_end = json.loads((tmp_path / "cancel_info.json").read_text())["NotifyEnd"]
    assert f"term {notify_end}".encode() in run.output
    assert notify_end.endswith("Z")


async def test_the_runtime_limit_times_the_process_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    run = Run()
    result = await run([sys.executable, "-c", WAITER], tmp_path, runtime_limit=30.0)
    assert result.canceled and result.timed_out and not result.mark_failed
    assert result.exit_code == -signal.SIGKILL
    assert ("info", "TIMEOUT: the runtime limit of 30 s was reached") in run.logs
