"""actors/_platform: /proc where Linux has it, the POSIX fallback (ps, polling) elsewhere.

The fallback is what runs on macOS; FARMHAND_POSIX_FALLBACK=1 makes Linux use it,
so these tests prove it here (they are Linux-only for the /proc comparison).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import psutil
import pytest
import trio

from actors import _platform
from agent.jobs import JobRun, JobSpec, OutputTail

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="compares with /proc")


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_platform.FALLBACK_VARIABLE, "1")


def test_the_fallback_process_table_agrees_with_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """ps and /proc give this process the same parent and a live state."""
    from_proc = _platform.process_table()
    monkeypatch.setenv(_platform.FALLBACK_VARIABLE, "1")
    assert not _platform.use_proc()
    from_ps = _platform.process_table()
    me = os.getpid()
    assert from_ps[me][0] == from_proc[me][0] == os.getppid()
    assert from_ps[me][1] not in ("Z", "X")
    assert me in _platform.live_children()[os.getppid()]
    assert _platform.is_alive(me) and not _platform.is_alive(2**22 + 1)
    assert _platform.open_pidfd(me) is None  # the fallback polls instead


def test_both_find_tagged_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process with the tag in its environment is found by /proc and by ps, exactly or
    by prefix; one without it is not."""
    env = {**os.environ, "FARMHAND_SESSION_TAG": "inst/sess/3"}
    tagged = subprocess.Popen(["sleep", "60"], env=env)
    plain = subprocess.Popen(["sleep", "60"])
    try:
        for forced in ("", "1"):
            monkeypatch.setenv(_platform.FALLBACK_VARIABLE, forced)
            exact = _platform.tagged_processes(b"FARMHAND_SESSION_TAG=inst/sess/3", exact=True)
            prefix = _platform.tagged_processes(b"FARMHAND_SESSION_TAG=inst/", exact=False)
            assert tagged.pid in exact and tagged.pid in prefix, forced
            assert plain.pid not in prefix
    finally:
        for process in (tagged, plain):
            process.kill()
            process.wait()


def test_the_fallback_pipe_is_nonblocking_and_close_on_exec(fallback: None) -> None:
    """Without pipe2: pipe + fcntl give the same flags."""
    read_end, write_end = _platform.nonblocking_pipe()
    try:
        for fd in (read_end, write_end):
            assert not os.get_inheritable(fd) and not os.get_blocking(fd)
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid(1)")
async def test_a_job_is_contained_with_the_fallback_alone(fallback: None) -> None:
    """No subreaper, no cgroup, no /proc: a daemon that left the job's process group and
    session is still killed when the job ends (found by its tag through ps)."""
    spec = JobSpec.from_command(["/bin/sh", "-c", "setsid sleep 300 & echo daemon=$!; echo done"])
    tail = OutputTail()
    outcome = await JobRun(spec, sinks=[tail], notes=False).run()
    assert outcome.succeeded, outcome
    daemon = int(next(line for line in tail.lines if line.startswith("daemon="))[7:])
    try:
        process = psutil.Process(daemon)
        assert process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


def test_the_launcher_and_watchdog_load_it_as_scripts() -> None:
    """Run as `python -I -S FILE` (no package), both scripts still load _platform."""
    from actors import _launcher, _watchdog

    for module in (_launcher, _watchdog):
        code = (
            "import runpy, sys; sys.argv = ['x']; "
            f"g = runpy.run_path({module.__file__!r}, run_name='not_main'); "
            "print(g['_platform'].use_proc()); "
            "print(g['_launchusage'].__name__ if '_launchusage' in g else '_launchusage')"
        )
        result = subprocess.run(
            [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        # The launcher's sibling (what an action cost) loads the same way.
        assert result.stdout.split() == ["True", "_launchusage"]


@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid(1)")
async def test_launchers_kept_ready_are_not_reused_without_a_subreaper(fallback: None) -> None:
    """With the fallback the launcher is no subreaper, so a clean sweep below it proves
    nothing: it is not taken back, and the daemon that left its tree is still found by
    its tag and killed when the job ends."""
    from actors import Containment

    containment = Containment(use_cgroup=False)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(containment.keep_spare_launcher)
            spare = await containment.wait_spare_launcher()
            spec = JobSpec.from_command(
                ["/bin/sh", "-c", "setsid sleep 300 & echo daemon=$!; echo done"]
            )
            tail = OutputTail()
            run = JobRun(spec, sinks=[tail], notes=False, containment=containment)
            outcome = await run.run()
            assert outcome.succeeded, outcome
            assert containment.spare_pid != spare  # the used launcher was not taken back
            nursery.cancel_scope.cancel()
    finally:
        containment.close()
    daemon = int(next(line for line in tail.lines if line.startswith("daemon="))[7:])
    try:
        assert psutil.Process(daemon).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
