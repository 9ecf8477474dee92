"""No orphaned processes: sessions sweep what they leave, the watchdog outlives a killed agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from actors import Containment
from actors._watchdog import TAG_VARIABLE, find_processes
from tests.session_harness import config_for, env, job, open_session, plan, py, step

ROOT = Path(__file__).resolve().parents[2]

# A daemon the classic way: fork, setsid, fork again, close the output; prints its pid first.
DAEMON = (
    "import os, sys, time\n"
    "r, w = os.pipe()\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        {env_clear}\n"
    "        os.write(w, str(os.getpid()).encode())\n"
    "        os.close(w)\n"
    "        devnull = os.open(os.devnull, os.O_RDWR)\n"
    "        for fd in (0, 1, 2):\n"
    "            os.dup2(devnull, fd)\n"
    "        time.sleep(600)\n"
    "    os._exit(0)\n"
    "os.close(w)\n"
    "print('daemon', os.read(r, 32).decode(), flush=True)\n"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, from the kernel's lists of children."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            stack.extend(children)
    return found


def _daemon_pid(lines: list[str]) -> int:
    [line] = [line for line in lines if line.startswith("daemon ")]
    return int(line.split()[1])


async def test_a_daemon_left_by_on_enter_dies_with_the_session(tmp_path: Path) -> None:
    """A double-forked, setsid daemon started by onEnter is killed when the session ends."""
    template = job(
        step("S", py("print('task')")),
        jobEnvironments=[env("E", py(DAEMON.format(env_clear="pass")))],
    )
    lp = plan(tmp_path, template)
    with trio.fail_after(30):
        async with open_session(config_for(lp, tmp_path)) as session:
            await session.enqueue(lp.actions)
            event = await session.recorder.wait_for(
                lambda e: (
                    hasattr(e, "lines") and any(str(line).startswith("daemon ") for line in e.lines)
                )
            )
            pid = _daemon_pid(session.recorder.output())
            assert event and _alive(pid)  # it outlives the action that started it
    assert not _alive(pid)


def _cgroup_available() -> bool:
    probe = Containment()
    try:
        return probe.cgroup_root is not None
    finally:
        probe.close()


@pytest.mark.parametrize(
    "use_cgroup",
    [
        pytest.param(False, id="subreaper"),
        pytest.param(
            True,
            id="cgroup",
            marks=pytest.mark.skipif(
                not _cgroup_available(), reason="no writable cgroup v2 subtree on this host"
            ),
        ),
    ],
)
async def test_a_daemon_that_clears_its_environment_dies_with_the_session(
    tmp_path: Path, use_cgroup: bool
) -> None:
    """Even a daemon without our tag dies with the session: it stays below the session's
    launcher (a subreaper), and is born in the session's cgroup where there is one."""
    clear = "os.environ.clear(); os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)'])"
    code = DAEMON.replace("        os.write(w, str(os.getpid()).encode())\n", "").format(
        env_clear="pass"
    )
    # Report the pid, then become an untagged process (same pid).
    code = code.replace(
        "        time.sleep(600)\n",
        f"        os.write(w, str(os.getpid()).encode()); os.close(w)\n        {clear}\n",
    )
    code = code.replace("        os.close(w)\n        devnull", "        devnull")
    template = job(
        step("S", py("import time; time.sleep(0.5); print('task')")),
        jobEnvironments=[env("E", py(code))],
    )
    lp = plan(tmp_path, template)
    containment = Containment(use_cgroup=use_cgroup)
    try:
        with trio.fail_after(30):
            async with open_session(config_for(lp, tmp_path), containment=containment) as session:
                await session.enqueue(lp.actions)
                await session.recorder.wait_for_line("task")
                pid = _daemon_pid(session.recorder.output())
                assert _alive(pid)
                environ = await trio.Path(f"/proc/{pid}/environ").read_bytes()
                assert TAG_VARIABLE.encode() not in environ
                cgroup = (await trio.Path(f"/proc/{pid}/cgroup").read_text()).splitlines()[-1]
                if use_cgroup:
                    assert containment.cgroup_root is not None
                    assert cgroup.endswith(f"/{containment.cgroup_root.name}/local"), cgroup
                else:
                    assert "farmhand-" not in cgroup
        assert not _alive(pid)
    finally:
        containment.close()


@pytest.mark.parametrize(
    "use_cgroup",
    [
        pytest.param(False, id="subreaper"),
        pytest.param(
            True,
            id="cgroup",
            marks=pytest.mark.skipif(
                not _cgroup_available(), reason="no writable cgroup v2 subtree on this host"
            ),
        ),
    ],
)
async def test_sessions_on_spare_launchers_are_contained_and_the_spare_goes_at_the_end(
    tmp_path: Path, use_cgroup: bool
) -> None:
    """With launchers kept ready (keep_spare_launcher), each session still keeps its
    daemons in a cgroup of its own (the spare's, taken over) and kills them at its end;
    its launcher, swept clean, is taken back and serves the next session, in the same
    cgroup, empty by then; the spares and their cgroups go with the host."""
    template = job(
        step("S", py("print('task')")),
        jobEnvironments=[env("E", py(DAEMON.format(env_clear="pass")))],
    )
    containment = Containment(use_cgroup=use_cgroup)
    seen_cgroups: list[str] = []
    launchers: list[int] = []
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(containment.keep_spare_launcher)
                for round_ in range(2):
                    (tmp_path / str(round_)).mkdir()
                    lp = plan(tmp_path / str(round_), template)
                    # Let the spare come up (a process start, a cgroup migration in a
                    # thread), so this session takes it.
                    spare_pid = await containment.wait_spare_launcher()
                    launchers.append(spare_pid)
                    config = config_for(lp, tmp_path / str(round_))
                    async with open_session(config, containment=containment) as session:
                        await session.enqueue(lp.actions)
                        await session.recorder.wait_for_line("task")
                        pid = _daemon_pid(session.recorder.output())
                        assert _alive(pid)
                        # The session's processes live below the spare it took.
                        assert pid in _descendants(spare_pid)
                        cgroup = (await trio.Path(f"/proc/{pid}/cgroup").read_text()).splitlines()[
                            -1
                        ]
                        seen_cgroups.append(cgroup.partition("::")[2])
                    assert not _alive(pid)
                nursery.cancel_scope.cancel()
        # The second session ran on the launcher the first one gave back.
        assert launchers[0] == launchers[1]
        # Only the launchers' own children were ever ours: none is left.
        assert _descendants(os.getpid()) == []
        if use_cgroup:
            assert containment.cgroup_root is not None
            names = [cgroup.rsplit("/", 1)[1] for cgroup in seen_cgroups]
            assert names[0] == names[1] and names[0].startswith(".spare-"), names
            assert list(containment.cgroup_root.iterdir()) == [] or all(
                not child.is_dir() for child in containment.cgroup_root.iterdir()
            )
        else:
            assert all("farmhand-" not in cgroup for cgroup in seen_cgroups)
    finally:
        containment.close()


def test_sweeping_one_session_spares_others() -> None:
    """Only processes with the session's exact tag are killed, and only where the
    session's launcher did not sweep it already."""
    containment = Containment(use_cgroup=False)
    mine = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, **containment.action_environment("s1", 1)},
    )
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, **containment.action_environment("s10", 1)},
    )
    try:
        deadline = time.monotonic() + 10
        while (
            not {mine.pid, other.pid} <= set(find_processes(containment.instance))
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)  # wait for both interpreters to be exec'd with their environment

        async def sweep(swept_below: bool) -> int:
            return await containment.sweep("s1", swept_below=swept_below)

        # A launcher that swept held the session: no scan for its tag (the costly
        # last resort) is made, so this process, started without one, is left.
        assert trio.run(sweep, True) == 0
        assert mine.poll() is None
        killed = trio.run(sweep, False)
        assert killed == 1
        assert mine.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
        containment.close()


def test_killing_the_agent_with_sigkill_leaves_no_process_behind(tmp_path: Path) -> None:
    """kill -9 of `python -m agent run` mid-task: the watchdog kills the task and its daemon."""
    task = py(
        DAEMON.format(env_clear="pass")
        + "print('ready', flush=True)\nimport time\ntime.sleep(600)\n"
    )
    template = job(step("S", task))
    path = tmp_path / "job.json"
    path.write_text(json.dumps(template))
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", str(path), "--output", "jsonl"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert agent.stdout is not None
    try:
        daemon = None
        for line in agent.stdout:
            event = json.loads(line)
            if event.get("line", "").startswith("daemon "):
                daemon = int(event["line"].split()[1])
            if event.get("line") == "ready":
                break
        assert daemon is not None and _alive(daemon)
        # The task's own process, below the agent (started by the session's launcher).
        task_pid = next(
            pid
            for pid in _descendants(agent.pid)
            if b"time.sleep(600)" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        working_directory = os.readlink(f"/proc/{task_pid}/cwd")
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        agent.stdout.close()
    deadline = time.monotonic() + 20
    while (
        _alive(daemon) or _alive(task_pid) or Path(working_directory).exists()
    ) and time.monotonic() < deadline:
        time.sleep(0.05)  # the watchdog works asynchronously; we can only look
    assert not _alive(daemon), "the daemon survived the agent"
    assert not _alive(task_pid), "the task survived the agent"
    # ... and the session's working directory went with them.
    assert not Path(working_directory).exists()


async def test_a_session_waits_for_a_spare_on_its_way_rather_than_starting_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sessions back to back: the next spare is still starting when a session comes; the
    session takes it when it is up instead of starting a launcher of its own."""
    from actors._spawn import SessionLauncher

    started: list[int] = []
    first_may_start = trio.Event()
    real_start = SessionLauncher.start.__func__  # type: ignore[attr-defined]

    async def slow_first_start(cls: type[SessionLauncher], /, **kwargs: object) -> SessionLauncher:
        if not started:
            await first_may_start.wait()  # the spare's interpreter takes its time
        launcher: SessionLauncher = await real_start(cls, **kwargs)
        started.append(launcher.pid)
        return launcher

    monkeypatch.setattr(SessionLauncher, "start", classmethod(slow_first_start))
    containment = Containment(use_cgroup=False)
    taken: list[SessionLauncher | None] = []

    async def session() -> None:
        taken.append(await containment.start_launcher("s1"))

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(containment.keep_spare_launcher)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(session)
                await trio.testing.wait_all_tasks_blocked()
                assert started == [] and taken == []  # the session waits for the spare
                first_may_start.set()
                while not taken:
                    await trio.testing.wait_all_tasks_blocked()
                [launcher] = taken
                following = await containment.wait_spare_launcher()
                assert launcher is not None
                assert started == [launcher.pid, following]
                await launcher.aclose()
                nursery.cancel_scope.cancel()
    finally:
        containment.close()


async def test_the_host_goes_on_once_the_spare_is_spawned_and_the_session_waits_for_its_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """wait_spare_spawned (``python -m agent run``, issue 16) returns once the spare
    launcher's process is started, before its cgroup moves are done; a session that
    asks meanwhile waits for them and takes that launcher, and no other is started."""
    from actors._spawn import SessionLauncher

    started: list[int] = []
    real_start = SessionLauncher.start.__func__  # type: ignore[attr-defined]

    async def counted_start(cls: type[SessionLauncher], /, **kwargs: object) -> SessionLauncher:
        launcher: SessionLauncher = await real_start(cls, **kwargs)
        started.append(launcher.pid)
        return launcher

    moved = trio.Event()
    real_join = Containment._join_memory_cgroup

    async def slow_moves(self: Containment, launcher: SessionLauncher, cgroup: Path | None) -> None:
        await moved.wait()
        await real_join(self, launcher, cgroup)

    monkeypatch.setattr(SessionLauncher, "start", classmethod(counted_start))
    monkeypatch.setattr(Containment, "_join_memory_cgroup", slow_moves)
    containment = Containment(use_cgroup=False)
    taken: list[SessionLauncher | None] = []
    took = trio.Event()

    async def take() -> None:
        taken.append(await containment.start_launcher("s1"))
        took.set()

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(containment.keep_spare_launcher, sessions=1))
                await containment.wait_spare_spawned()
                assert len(started) == 1 and containment.spare_pid is None
                nursery.start_soon(take)
                await trio.testing.wait_all_tasks_blocked()
                assert not taken  # the session waits for the moves
                moved.set()
                await took.wait()
                launcher = taken[0]
                assert launcher is not None and started == [launcher.pid]
                await launcher.aclose()
                nursery.cancel_scope.cancel()
    finally:
        containment.close()


async def test_waiting_for_a_spare_to_be_spawned_ends_when_none_can_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from actors._spawn import SessionLauncher

    async def refused(cls: type[SessionLauncher], /, **kwargs: object) -> SessionLauncher:
        raise OSError("no launchers here")

    monkeypatch.setattr(SessionLauncher, "start", classmethod(refused))
    containment = Containment(use_cgroup=False)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(containment.keep_spare_launcher, sessions=1))
                await containment.wait_spare_spawned()
                assert containment.spare_pid is None
    finally:
        containment.close()


async def test_a_host_that_runs_one_session_starts_one_launcher_ahead_and_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """keep_spare_launcher(sessions=1) (``python -m agent run``): the launcher is started
    before the session asks, the session takes it, and none is started after it (a
    second interpreter would only compete with the session's tasks)."""
    from actors._spawn import SessionLauncher

    started: list[int] = []
    asked = 0
    real_start = SessionLauncher.start.__func__  # type: ignore[attr-defined]

    async def counted_start(cls: type[SessionLauncher], /, **kwargs: object) -> SessionLauncher:
        nonlocal asked
        asked += 1
        launcher: SessionLauncher = await real_start(cls, **kwargs)
        started.append(launcher.pid)
        return launcher

    monkeypatch.setattr(SessionLauncher, "start", classmethod(counted_start))
    containment = Containment(use_cgroup=False)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(containment.keep_spare_launcher, sessions=1))
                ahead = await containment.wait_spare_launcher()
                assert started == [ahead]
                launcher = await containment.start_launcher("s1")
                assert launcher is not None and launcher.pid == ahead
                await trio.testing.wait_all_tasks_blocked()
                assert (asked, started) == (1, [ahead]) and containment.spare_pid is None
                await launcher.aclose()
                nursery.cancel_scope.cancel()
    finally:
        containment.close()
