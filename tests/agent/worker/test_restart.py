"""Restarts that lose nothing: ``kill -9`` a real worker process mid-task and start
another with the same persistence directory; it takes the running task over and
the farm sees one run, one final report per action, and the whole output. With no
agent back, nothing of the session outlives the grace; a deliberate stop never
waits."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

from actors import _platform
from agent.mockfarm import FarmConfig, FaultConfig, MockFarm, open_mock_farm
from tests.worker_harness import assert_each_final_reported_once, py, simple_job, wait_job
from tests.workerproc import WorkerProcess, open_worker_process

#: Never NOT_RESPONDING here: the farm keeps the session while no agent runs.
FARM = FarmConfig(update_interval_seconds=1, max_retries_per_task=0, worker_timeout_seconds=600)
LINES = 2000


def _task(flag: Path) -> dict[str, object]:
    """Says it started (with its pid and a daemon's), waits for ``flag``, then writes
    ``LINES`` lines and says it is done."""
    code = (
        "import os, sys, time\n"
        "print('frame {{Task.Param.Frame}} started', flush=True)\n"
        "print('pid', os.getpid(), flush=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        print('daemon', os.getpid(), flush=True)\n"
        "        os.close(1); os.close(2)\n"
        "        time.sleep(600)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        f"while not os.path.exists({str(flag)!r}):\n"
        "    time.sleep(0.01)\n"
        f"for i in range({LINES}):\n"
        "    sys.stdout.write(f'line {i:05d}\\n')\n"
        "print('frame {{Task.Param.Frame}} done', flush=True)\n"
    )
    return py(code)


def _pids(farm: MockFarm, session_id: str, word: str) -> int:
    [pid] = [int(line.split()[1]) for line in farm.session_log(session_id) if line.startswith(word)]
    return pid


async def _wait_gone(pid: int) -> None:
    """Wait (event-driven) until ``pid``, not our child, has ended."""
    try:
        pidfd = _platform.open_pidfd(pid)
    except ProcessLookupError:
        return  # gone already
    assert pidfd is not None
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


async def _started(farm: MockFarm, job_id: str) -> str:
    """The job's session id, once its task has started its daemon."""
    with trio.fail_after(60):
        await farm.wait_until(
            lambda: (
                bool(farm.job(job_id).sessions)
                and any(
                    line.startswith("daemon ")
                    for line in farm.session_log(farm.job(job_id).sessions[0].session_id)
                )
            )
        )
    return farm.job(job_id).sessions[0].session_id


async def _wait_shipped(root: Path, session_id: str) -> None:
    """Wait until the agent knows its session log is shipped up to its end (its shipped
    marker says so): lines the farm has stored but the agent has not heard back about
    would be shipped again after a restart (at least once, never lost)."""
    [path] = (root / "logs").rglob(f"{session_id}.log")
    marker = root / "persistence" / "sessions" / f"{session_id}.shipped"
    with trio.fail_after(60):
        while True:
            size = (await trio.Path(path).stat()).st_size
            if await trio.Path(marker).exists() and await trio.Path(marker).read_text() == str(
                size
            ):
                return
            await trio.sleep(0.01)  # another process's files: we can only look


async def _kill(worker: WorkerProcess) -> None:
    worker.send(signal.SIGKILL)
    assert await worker.wait() == -signal.SIGKILL


async def _stop(worker: WorkerProcess) -> None:
    worker.send(signal.SIGTERM)
    with trio.fail_after(60):
        await worker.wait()


async def test_a_new_agent_takes_over_the_task_a_killed_one_was_running(tmp_path: Path) -> None:
    """kill -9 mid-task; the task goes on (and writes all its output with no agent
    there); a new agent takes it over: the job succeeds in one session, every action
    is reported once, and the log holds the whole output once, in order."""
    flag = tmp_path / "go"
    root = tmp_path / "worker"
    async with open_mock_farm(config=FARM) as farm:
        job_id = farm.create_job(simple_job(_task(flag), frames="1"))
        async with open_worker_process(farm, root, "--restart-grace-seconds", "120") as first:
            session_id = await _started(farm, job_id)
            await _wait_shipped(root, session_id)
            await _kill(first)
        task = _pids(farm, session_id, "pid")
        daemon = _pids(farm, session_id, "daemon")
        assert _platform.is_alive(task) and _platform.is_alive(daemon)
        assert list((root / "persistence" / "sessions").glob("*.sock"))  # waiting for us
        flag.touch()
        async with open_worker_process(farm, root, "--restart-grace-seconds", "120") as second:
            assert await wait_job(farm, job_id, 120) == "SUCCEEDED"
            with trio.fail_after(60):
                await farm.wait_until(lambda: not farm.job(job_id).active_sessions)
                await farm.wait_until(lambda: "exited" in farm.session_log(session_id))
            assert second.events("restart.session_found")
            await _stop(second)
        await _wait_gone(daemon)  # the session's end swept what it left
        statuses = assert_each_final_reported_once(farm, job_id)
        assert [s.session_id for s in farm.job(job_id).sessions] == [session_id]
        log = farm.session_log(session_id)
    assert set(statuses.values()) == {"SUCCEEDED"} and len(statuses) == 3
    ours = [
        line for line in log if line in ("entered", "exited") or line.startswith(("frame", "line "))
    ]
    expected = ["entered", "frame 1 started", *(f"line {i:05d}" for i in range(LINES))]
    assert ours == [*expected, "frame 1 done", "exited"]
    assert not list((root / "persistence" / "sessions").iterdir())


async def test_with_no_agent_back_nothing_outlives_the_grace(tmp_path: Path) -> None:
    """kill -9 and no new agent: once the grace has passed, the task, the daemon it
    left, its working directory and the session's files are gone."""
    flag = tmp_path / "never"
    root = tmp_path / "worker"
    async with open_mock_farm(config=FARM) as farm:
        job_id = farm.create_job(simple_job(_task(flag), frames="1"))
        async with open_worker_process(farm, root, "--restart-grace-seconds", "2") as worker:
            session_id = await _started(farm, job_id)
            await _kill(worker)
        task = _pids(farm, session_id, "pid")
        daemon = _pids(farm, session_id, "daemon")
        working_directory = Path(os.readlink(f"/proc/{task}/cwd"))
        launcher = _parent(task)  # the session's launcher: it outlived the agent
        assert _platform.is_alive(launcher) and _platform.is_alive(daemon)
        with trio.fail_after(60):
            await _wait_gone(launcher)
        assert not _platform.is_alive(task)
        assert not _platform.is_alive(daemon)
        assert not await trio.Path(working_directory).exists()
        assert not list((root / "persistence" / "sessions").iterdir())


async def test_a_deliberate_stop_never_waits(tmp_path: Path) -> None:
    """SIGTERM (a drain) with a long restart grace: the task is gone when the agent
    has exited, and no session is left waiting for an agent."""
    flag = tmp_path / "never"
    root = tmp_path / "worker"
    async with open_mock_farm(config=FARM) as farm:
        job_id = farm.create_job(simple_job(_task(flag), frames="1"))
        async with open_worker_process(
            farm, root, "--restart-grace-seconds", "600", "--drain-grace-seconds", "1"
        ) as worker:
            session_id = await _started(farm, job_id)
            await _stop(worker)
        task = _pids(farm, session_id, "pid")
        daemon = _pids(farm, session_id, "daemon")
        with trio.fail_after(10):
            await _wait_gone(task)
            await _wait_gone(daemon)
    assert not list((root / "persistence" / "sessions").glob("*.sock"))


async def test_a_worker_the_farm_counted_offline_starts_afresh(tmp_path: Path) -> None:
    """kill -9, and the farm declares the worker NOT_RESPONDING (its session requeued)
    before a new agent comes: the new agent ends the held session (its task and
    daemon killed), starts as a new worker would, and runs the task again."""
    flag = tmp_path / "go"
    root = tmp_path / "worker"
    config = FarmConfig(update_interval_seconds=1, max_retries_per_task=0, worker_timeout_seconds=3)
    async with open_mock_farm(config=config) as farm:
        job_id = farm.create_job(simple_job(_task(flag), frames="1"))
        async with open_worker_process(farm, root, "--restart-grace-seconds", "120") as first:
            session_id = await _started(farm, job_id)
            await _kill(first)
        task = _pids(farm, session_id, "pid")
        daemon = _pids(farm, session_id, "daemon")
        [worker_id] = farm.state.workers
        with trio.fail_after(60):
            await farm.wait_until(lambda: farm.state.workers[worker_id].status == "NOT_RESPONDING")
        assert _platform.is_alive(task) and _platform.is_alive(daemon)
        flag.touch()
        async with open_worker_process(farm, root, "--restart-grace-seconds", "120") as second:
            with trio.fail_after(60):
                await _wait_gone(task)
                await _wait_gone(daemon)
            assert await wait_job(farm, job_id, 120) == "SUCCEEDED"
            assert second.events("bootstrap.not_online")
            assert second.events("worker.held_session_ended")
            await _stop(second)
        sessions = farm.job(job_id).sessions
    assert len(sessions) == 2 and sessions[0].session_id == session_id
    # Ended by the farm: INTERRUPTED, or NEVER_ATTEMPTED if it had not heard it start.
    [(first_run,)] = [(a.status,) for a in sessions[0].actions if a.kind == "taskRun"]
    assert first_run in ("INTERRUPTED", "NEVER_ATTEMPTED")
    assert [a.status for a in sessions[1].actions if a.kind == "taskRun"] == ["SUCCEEDED"]


async def test_log_lines_the_killed_agent_had_not_shipped_are_shipped_once(
    tmp_path: Path,
) -> None:
    """CloudWatch refuses every upload while the task writes its output and ends (its
    lines wait in the session's log file); kill -9; the farm's logs work again and a
    new agent takes the session over: it ships what the dead one had not, from where
    it stopped, and runs the environment's exit. Every line once, in order."""
    flag = tmp_path / "go"
    root = tmp_path / "worker"
    async with open_mock_farm(config=FARM) as farm:
        job_id = farm.create_job(simple_job(_task(flag), frames="1"))
        async with open_worker_process(farm, root, "--restart-grace-seconds", "120") as first:
            session_id = await _started(farm, job_id)
            await _wait_shipped(root, session_id)
            farm.set_faults(FaultConfig().with_operation("PutLogEvents", error_rate=1.0))
            flag.touch()
            [task] = [a for a in farm.state.sessions[session_id].actions if a.kind == "taskRun"]
            with trio.fail_after(60):
                # Reported: everything it wrote is in the log file (written first).
                await farm.wait_until(lambda: task.status == "SUCCEEDED")
            assert "frame 1 done" not in farm.session_log(session_id)
            await _kill(first)
        farm.set_faults(FaultConfig())
        async with open_worker_process(farm, root, "--restart-grace-seconds", "120") as second:
            assert await wait_job(farm, job_id, 120) == "SUCCEEDED"
            with trio.fail_after(60):
                await farm.wait_until(lambda: "exited" in farm.session_log(session_id))
            await _stop(second)
        statuses = assert_each_final_reported_once(farm, job_id)
        log = farm.session_log(session_id)
    assert set(statuses.values()) == {"SUCCEEDED"}
    ours = [
        line for line in log if line in ("entered", "exited") or line.startswith(("frame", "line "))
    ]
    expected = ["entered", "frame 1 started", *(f"line {i:05d}" for i in range(LINES))]
    assert ours == [*expected, "frame 1 done", "exited"]


async def test_a_drain_cut_short_by_sigkill_leaves_nothing_running(tmp_path: Path) -> None:
    """SIGTERM starts a drain (the task, which ignores SIGTERM, has a long notify
    period); SIGKILL during it: the sessions were released when the drain began, so
    their launchers kill at once instead of waiting for an agent."""
    flag = tmp_path / "never"
    root = tmp_path / "worker"
    on_run = {
        **_task(flag),
        "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 600},
    }
    stubborn = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    on_run["args"] = ["-c", stubborn + str(on_run["args"][1])]  # type: ignore[index]
    async with open_mock_farm(config=FARM) as farm:
        job_id = farm.create_job(simple_job(on_run, frames="1"))
        async with open_worker_process(
            farm, root, "--restart-grace-seconds", "600", "--drain-grace-seconds", "300"
        ) as worker:
            session_id = await _started(farm, job_id)
            [task_action] = [
                a for a in farm.state.sessions[session_id].actions if a.kind == "taskRun"
            ]
            worker.send(signal.SIGTERM)
            with trio.fail_after(60):
                await farm.wait_until(lambda: task_action.status == "INTERRUPTED")
            task = _pids(farm, session_id, "pid")
            assert _platform.is_alive(task)  # still in its notify period
            await _kill(worker)
        daemon = _pids(farm, session_id, "daemon")
        with trio.fail_after(20):
            await _wait_gone(task)
            await _wait_gone(daemon)
    assert not list((root / "persistence" / "sessions").glob("*.sock"))
