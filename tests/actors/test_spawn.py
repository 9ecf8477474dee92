"""A session's launcher starts actions as we would, and keeps what they leave below it."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from actors._spawn import LauncherGone, SessionLauncher


@asynccontextmanager
async def open_launcher() -> AsyncIterator[SessionLauncher]:
    launcher = await SessionLauncher.start()
    try:
        yield launcher
    finally:
        await launcher.aclose()


async def run(
    launcher: SessionLauncher, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path
) -> tuple[int, str]:
    """Spawn ``argv``, read all its output, wait for it: (exit code, output)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        process = await launcher.spawn(
            argv, env=os.environ if env is None else env, cwd=cwd, output_fd=write_fd
        )
    finally:
        os.close(write_fd)
    output = b""
    async with trio.lowlevel.FdStream(read_fd) as stream:
        while chunk := await stream.receive_some(65536):
            output += chunk
    return await process.wait(), output.decode()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def test_an_action_starts_as_a_direct_spawn_would(tmp_path: Path) -> None:
    """Own session and group, the cwd asked for, stdin /dev/null, only fds 0-2, stderr
    merged, no signal ignored, and the exit code as subprocess reports it."""
    code = (
        "import os, sys\n"
        "print(os.getsid(0) == os.getpid() == os.getpgid(0))\n"
        "print(os.getcwd())\n"
        "print(os.path.realpath('/proc/self/fd/0'))\n"
        "print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "sys.exit(3)\n"
    )
    async with open_launcher() as launcher:
        status, output = await run(launcher, [sys.executable, "-c", code], cwd=tmp_path)
    lines = output.splitlines()
    assert status == 3
    assert lines[0] == "True"
    assert lines[1] == str(tmp_path)
    assert lines[2] == os.devnull
    assert lines[3] == "[0, 1, 2, 3]"  # 3: the listdir's own handle
    assert lines[4] == "to stderr"


async def test_an_action_ignores_no_more_signals_than_a_direct_spawn(tmp_path: Path) -> None:
    """The launcher ignores terminal signals; its actions must not inherit that."""
    argv = ["grep", "^SigIgn", "/proc/self/status"]
    direct = (await trio.run_process(argv, capture_stdout=True)).stdout.decode()
    async with open_launcher() as launcher:
        assert await run(launcher, argv, cwd=tmp_path) == (0, direct)


async def test_an_action_ignores_what_the_agent_was_started_ignoring(tmp_path: Path) -> None:
    """An agent started under ``nohup`` (SIGHUP ignored): its actions ignore SIGHUP too,
    as a direct spawn's would, and nothing more."""
    argv = ["grep", "^SigIgn", "/proc/self/status"]
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        direct = (await trio.run_process(argv, capture_stdout=True)).stdout.decode()
        async with open_launcher() as launcher:
            assert await run(launcher, argv, cwd=tmp_path) == (0, direct)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert int(direct.split()[1], 16) & (1 << (signal.SIGHUP - 1))


async def test_death_by_signal_is_a_negative_exit_code(tmp_path: Path) -> None:
    """A process killed by SIGKILL reports -9, as trio and subprocess do."""
    async with open_launcher() as launcher:
        status, _ = await run(launcher, ["/bin/sh", "-c", "kill -9 $$"], cwd=tmp_path)
    assert status == -signal.SIGKILL


async def test_commands_are_found_on_the_actions_path(tmp_path: Path) -> None:
    """The PATH searched is the action's, not the launcher's; a miss is FileNotFoundError."""
    tool = tmp_path / "bin" / "farmhand-tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho found me\n")
    tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{tool.parent}:/usr/bin:/bin"}
    async with open_launcher() as launcher:
        assert await run(launcher, ["farmhand-tool"], env=env, cwd=tmp_path) == (0, "found me\n")
        with pytest.raises(FileNotFoundError):
            await run(launcher, ["farmhand-tool"], cwd=tmp_path)
        with pytest.raises(PermissionError):
            await run(launcher, [str(tmp_path)], cwd=tmp_path)
        # ... and the launcher still serves after the errors.
        assert (await run(launcher, ["true"], cwd=tmp_path))[0] == 0


async def test_each_action_gets_its_own_environment_whole(tmp_path: Path) -> None:
    """Spawns after the first say only what differs from the last one's environment;
    each action still gets exactly its own: variables changed, added and removed,
    and a request made before another spawn went (ahead of its turn) sent whole."""
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    base = {k: v for k, v in os.environ.items() if not k.startswith("FARMHAND_TEST_")}
    base |= {"FARMHAND_TEST_A": "1", "FARMHAND_TEST_B": "2"}
    envs = [
        base,
        {**base, "FARMHAND_TEST_A": "changed", "FARMHAND_TEST_C": "added"},
        {k: v for k, v in base.items() if k != "FARMHAND_TEST_B"},
        {"PATH": "/usr/bin:/bin", "ONLY": "this"},  # mostly different: sent whole
        base,
    ]
    argv = [sys.executable, "-c", code]

    async def printed(env: dict[str, str]) -> dict[str, str]:
        status, output = await run(launcher, argv, env=env, cwd=tmp_path)
        assert status == 0
        printed: dict[str, str] = json.loads(output)
        printed.pop("LC_CTYPE", None)  # Python may set it for itself
        return printed

    async with open_launcher() as launcher:
        for env in envs:
            assert await printed(env) == env
        # Made against the last environment sent, sent after another spawn.
        stale = launcher.spawn_request(argv, env={**base, "FARMHAND_TEST_D": "stale"}, cwd=tmp_path)
        assert await printed(envs[1]) == envs[1]
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            pending = await launcher.send_spawn(stale, output_fd=write_fd)
        finally:
            os.close(write_fd)
        process = await pending.started()
        async with trio.lowlevel.FdStream(read_fd) as stream:
            output = b""
            while chunk := await stream.receive_some(65536):
                output += chunk
        assert await process.wait() == 0
        got = json.loads(output)
        got.pop("LC_CTYPE", None)
        assert got == {**base, "FARMHAND_TEST_D": "stale"}


async def test_sweep_kills_daemons_that_left_everything_behind(tmp_path: Path) -> None:
    """A double-forked, setsid daemon with a cleared environment is found and killed."""
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.closerange(0, 3)\n"
        "        os.execve('/bin/sleep', ['sleep', '600'], {})\n"
        "    os._exit(0)\n"
        "os.wait()\n"
    )
    async with open_launcher() as launcher:
        status, _ = await run(launcher, [sys.executable, "-c", code], cwd=tmp_path)
        assert status == 0
        children = trio.Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
        daemons = [int(pid) for pid in (await children.read_text()).split()]
        assert daemons and all(_alive(pid) for pid in daemons)  # handed to the launcher
        assert await launcher.sweep() == len(daemons)
        assert not any(_alive(pid) for pid in daemons)
        # A sweep leaves the launcher ready for more.
        assert (await run(launcher, ["true"], cwd=tmp_path))[0] == 0


async def test_closing_the_launcher_kills_what_is_left(tmp_path: Path) -> None:
    """When the agent lets go (or dies), the launcher takes everything below it along."""
    async with open_launcher() as launcher:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        process = await launcher.spawn(
            ["/bin/sh", "-c", "sleep 600 & echo $!"],
            env=os.environ,
            cwd=tmp_path,
            output_fd=write_fd,
        )
        os.close(write_fd)
        assert await process.wait() == 0
        with os.fdopen(read_fd) as output:
            sleeper = int(output.readline())
        assert _alive(sleeper)
    assert not _alive(sleeper)
    assert not _alive(launcher.pid)


async def test_a_killed_launcher_fails_its_action_not_the_agent(tmp_path: Path) -> None:
    """If someone kills the launcher, the running action ends (killed) and spawns fail."""
    async with open_launcher() as launcher:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        process = await launcher.spawn(
            ["sleep", "600"], env=os.environ, cwd=tmp_path, output_fd=write_fd
        )
        os.close(write_fd)
        os.close(read_fd)
        os.kill(launcher.pid, signal.SIGKILL)
        with trio.fail_after(10):
            assert await process.wait() == -signal.SIGKILL
        assert not _alive(process.pid)
        with pytest.raises(LauncherGone):
            await run(launcher, ["true"], cwd=tmp_path)
        assert await launcher.sweep() == 0


async def test_sweep_and_close_is_the_session_s_end_in_one_exchange(tmp_path: Path) -> None:
    """The launcher kills what is below it, says how many, and exits; a launcher that
    had gone already says None (what was below it is not known to be gone)."""
    launcher = await SessionLauncher.start()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    process = await launcher.spawn(
        ["/bin/sh", "-c", "sleep 600 & sleep 600 & echo $!"],
        env=os.environ,
        cwd=tmp_path,
        output_fd=write_fd,
    )
    os.close(write_fd)
    assert await process.wait() == 0
    with os.fdopen(read_fd) as output:
        sleeper = int(output.readline())
    assert _alive(sleeper)
    assert await launcher.sweep_and_close() == 2
    assert not _alive(sleeper)
    assert not _alive(launcher.pid)

    gone = await SessionLauncher.start()
    os.kill(gone.pid, signal.SIGKILL)
    with pytest.raises(LauncherGone):
        await run(gone, ["true"], cwd=tmp_path)
    assert await gone.sweep_and_close() is None
