"""A held launcher keeps its session through the agent's death, for a new agent to
take over; with no new agent, nothing outlives the grace."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from actors import _platform
from actors._process import ActionControl, CancelMethod, resume_process
from actors._spawn import SessionLauncher

ROOT = Path(__file__).resolve().parents[2]

#: The agent that dies: a real process with a held launcher whose action writes
#: one line, waits for a word on a FIFO, then writes ``LINES`` lines and exits 7.
#: It reads the first line itself, says what runs, and waits to be killed.
AGENT = textwrap.dedent(
    """
    import json, os, sys, trio
    from pathlib import Path
    from actors._spawn import SessionLauncher

    ACTION = '''
    import sys
    print("first", flush=True)
    open(sys.argv[1]).read()
    for i in range(int(sys.argv[2])):
        sys.stdout.write(f"line {i:06d} " + "x" * 80 + "\\\\n")
    sys.stdout.flush()
    sys.exit(7)
    '''

    async def main(directory, fifo, lines, grace):
        directory = Path(directory)
        launcher = await SessionLauncher.start()
        held = await launcher.hold(
            grace=float(grace),
            socket_path=directory / "session.sock",
            spill=directory / "session.output",
            files=[directory / "session.json"],
            directory=directory / "work",
        )
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        process = await launcher.spawn(
            [sys.executable, "-c", ACTION, fifo, lines],
            env=dict(os.environ), cwd=directory, output_fd=write_fd, output_read_fd=read_fd,
        )
        os.close(write_fd)
        stream = trio.lowlevel.FdStream(read_fd)
        first = b""
        while not first.endswith(b"\\n"):
            first += await stream.receive_some(1)
        print(json.dumps({"held": held, "launcher": launcher.pid, "action": process.pid,
                          "first": first.decode()}), flush=True)
        await trio.sleep_forever()

    trio.run(main, *sys.argv[1:])
    """
)


async def _start_agent(
    tmp_path: Path, *, lines: int, grace: float
) -> tuple[trio.Process, dict[str, object], Path]:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    (tmp_path / "work").mkdir()
    (tmp_path / "session.json").write_text("{}")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", AGENT, str(tmp_path), str(fifo), str(lines), str(grace)],
        stdout=-1,
        cwd=ROOT,
    )
    assert process.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        chunk = await process.stdout.receive_some(4096)
        assert chunk, "the agent died before it said what runs"
        data += chunk
    return process, json.loads(data), fifo


async def _kill(process: trio.Process) -> None:
    process.kill()
    await process.wait()
    assert process.returncode == -signal.SIGKILL


async def _wait_gone(pid: int) -> None:
    """Wait (event-driven) until ``pid``, not our child, has ended."""
    try:
        pidfd = _platform.open_pidfd(pid)
    except ProcessLookupError:
        return  # ended, and reaped by its parent, already
    assert pidfd is not None
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def _alive(pid: int) -> bool:
    return bool(_platform.is_alive(pid))


def _expected(lines: int) -> bytes:
    return b"".join(f"line {i:06d} {'x' * 80}\n".encode() for i in range(lines))


async def test_a_new_agent_takes_over_an_action_whose_agent_was_killed(tmp_path: Path) -> None:
    """``kill -9`` the agent: the action runs on; what it writes meanwhile (well past the
    in-memory bound, so spilled) and its exit status reach the agent that reattaches,
    whole, in order, once."""
    lines = 3000  # ~270 KiB: more than the pipe and the launcher's buffer hold
    agent, started, fifo = await _start_agent(tmp_path, lines=lines, grace=60)
    assert started["held"] is True
    assert started["first"] == "first\n"
    await _kill(agent)
    action = int(started["action"])  # type: ignore[call-overload]
    assert _alive(action)
    await trio.Path(fifo).write_text("go")
    await _wait_gone(action)  # it wrote everything and exited with no agent there
    reattached = await SessionLauncher.reattach(tmp_path / "session.sock")
    launcher = reattached.launcher
    try:
        assert launcher.pid == started["launcher"]
        assert not (tmp_path / "session.sock").exists()  # one agent at a time
        assert reattached.process is not None
        assert reattached.process.pid == action
        assert reattached.process.returncode == 7
        assert reattached.spill == tmp_path / "session.output"
        output = bytearray()

        async def collect(data: bytes) -> None:
            output.extend(data)

        result = await resume_process(
            reattached,
            cwd=tmp_path,
            method=CancelMethod(),
            runtime_limit=None,
            control=ActionControl(),
            on_output=collect,
            log=lambda level, message: None,
        )
        assert result.exit_code == 7
        assert result.usage is not None
        assert bytes(output) == _expected(lines)
        assert not (tmp_path / "session.output").exists()
        assert await launcher.sweep_and_close() == 0
    finally:
        await launcher.aclose()
    assert (tmp_path / "work").exists()  # a session taken over keeps its files


async def test_a_running_action_is_taken_over_and_its_exit_comes_later(tmp_path: Path) -> None:
    """Reattached while the action still runs: its output goes on through the pipe and
    its exit is reported once it ends."""
    agent, _, fifo = await _start_agent(tmp_path, lines=5, grace=60)
    await _kill(agent)
    reattached = await SessionLauncher.reattach(tmp_path / "session.sock")
    launcher = reattached.launcher
    try:
        assert reattached.process is not None
        assert reattached.process.returncode is None
        assert reattached.spill is None  # it wrote nothing while we were away
        output = bytearray()

        async def collect(data: bytes) -> None:
            output.extend(data)

        async with trio.open_nursery() as nursery:
            results: list[int | None] = []

            async def resume() -> None:
                result = await resume_process(
                    reattached,
                    cwd=tmp_path,
                    method=CancelMethod(),
                    runtime_limit=None,
                    control=ActionControl(),
                    on_output=collect,
                    log=lambda level, message: None,
                )
                results.append(result.exit_code)

            nursery.start_soon(resume)
            await trio.Path(fifo).write_text("go")
        assert results == [7]
        assert bytes(output) == _expected(5)
    finally:
        await launcher.aclose()


async def test_with_no_agent_back_nothing_outlives_the_grace(tmp_path: Path) -> None:
    """No agent comes: after the grace, the launcher kills the session's processes,
    removes its socket, spill file, state files and directory, and exits."""
    agent, started, _ = await _start_agent(tmp_path, lines=3000, grace=0.5)
    await _kill(agent)
    action = int(started["action"])  # type: ignore[call-overload]
    launcher = int(started["launcher"])  # type: ignore[call-overload]
    assert _alive(action)
    with trio.fail_after(30):
        await _wait_gone(launcher)
    assert not _alive(action)
    for name in ("session.sock", "session.output", "session.json", "work"):
        assert not (tmp_path / name).exists(), name
    with pytest.raises(FileNotFoundError):
        await SessionLauncher.reattach(tmp_path / "session.sock")


async def test_a_released_launcher_kills_at_once_when_its_agent_goes(tmp_path: Path) -> None:
    """``release()`` (a deliberate stop) puts the old rule back: no waiting, no socket."""
    launcher = await SessionLauncher.start()
    try:
        assert await launcher.hold(
            grace=600, socket_path=tmp_path / "s.sock", spill=tmp_path / "s.output"
        )
        await launcher.release()
        assert not launcher.held
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        process = await launcher.spawn(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            env=dict(os.environ),
            cwd=tmp_path,
            output_fd=write_fd,
            output_read_fd=read_fd,
        )
        os.close(write_fd)
        os.close(read_fd)
    finally:
        with trio.fail_after(30):
            await launcher.aclose()
    assert not _alive(process.pid)
    assert not (tmp_path / "s.sock").exists()


async def test_reattaching_where_no_launcher_waits_is_an_oserror(tmp_path: Path) -> None:
    """A socket file with nobody behind it (a launcher killed with its agent)."""
    with pytest.raises(FileNotFoundError):
        await SessionLauncher.reattach(tmp_path / "missing.sock")
    stale = trio.socket.socket(trio.socket.AF_UNIX)
    await stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    with pytest.raises(ConnectionRefusedError):
        await SessionLauncher.reattach(tmp_path / "stale.sock")
