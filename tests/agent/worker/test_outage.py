"""Farm outages: running work survives them, its reports and logs arrive once, in order;
past the configured limit the worker drains and says why in one line."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from agent.mockfarm import FarmConfig, FaultConfig, make_client
from agent.mockfarm._faults import OperationFaults
from tests.worker_harness import (
    assert_each_final_reported_once,
    farm_and_worker,
    py,
    simple_job,
    wait_job,
)
from tests.workerproc import WorkerProcess, worker_argv

ROOT = Path(__file__).resolve().parents[3]

#: Every call of every operation is swallowed: the farm (CloudWatch too) is unreachable.
OUTAGE = FaultConfig(default=OperationFaults(drop_rate=1.0, drop_hold_seconds=5.0))
#: The farm never declares the worker NOT_RESPONDING here: under the virtual clock, time
#: races ahead whenever only a real process is busy (a task seeing its flag file).
PATIENT_FARM = FarmConfig(
    update_interval_seconds=1, max_retries_per_task=0, worker_timeout_seconds=math.inf
)


def _waiting_task(flag: Path) -> dict[str, object]:
    code = (
        "import os, time\n"
        "print('frame {{Task.Param.Frame}} started', flush=True)\n"
        "print('pid', os.getpid(), flush=True)\n"
        f"while not os.path.exists({str(flag)!r}):\n"
        "    time.sleep(0.01)\n"
        "print('frame {{Task.Param.Frame}} done', flush=True)\n"
    )
    return py(code)


async def test_a_task_runs_through_a_five_minute_outage_and_reports_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The farm (API and logs) goes away for five minutes of virtual time while a task
    runs; the task finishes during the outage; once the farm is back, every action is
    reported exactly once and every log line is there once, in order."""
    flag = tmp_path / "go"
    # No outage limit: virtual time may race well past five minutes here (see above).
    async with farm_and_worker(tmp_path, farm_config=PATIENT_FARM, farm_outage_limit=0.0) as (
        farm,
        worker,
        events,
    ):
        job_id = farm.create_job(simple_job(_waiting_task(flag), frames="1"))
        with trio.fail_after(60):
            await events.wait_line("frame 1 started")
        farm.set_faults(OUTAGE)
        await trio.sleep(300)
        assert worker.stop_reason is None
        restarts_during = worker.scheduler_restarts
        flag.touch()
        with trio.fail_after(600):
            await events.wait_line("frame 1 done")
        await trio.sleep(30)  # still down: the task's end and the exit wait
        farm.set_faults(FaultConfig())
        assert await wait_job(farm, job_id, 600) == "SUCCEEDED"
        with trio.fail_after(600):
            await farm.wait_until(
                lambda: (
                    not farm.job(job_id).active_sessions
                    and worker.statistics().updates_pending == 0
                )
            )
        statuses = assert_each_final_reported_once(farm, job_id)
        [session] = farm.job(job_id).sessions
        with trio.fail_after(600):
            await farm.wait_until(lambda: "exited" in farm.session_log(session.session_id))
        log = farm.session_log(session.session_id)
        assert worker.stop_reason is None
    assert set(statuses.values()) == {"SUCCEEDED"} and len(statuses) == 3
    assert restarts_during > 0  # the sync loop kept trying, and was not given up on
    ours = [
        line for line in log if line in ("entered", "frame 1 started", "frame 1 done", "exited")
    ]
    assert ours == ["entered", "frame 1 started", "frame 1 done", "exited"]


async def test_past_the_outage_limit_the_worker_drains_and_says_why(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With --farm-outage-limit 120, two minutes without a successful sync drain the
    worker (its running task interrupted) and it stops for 'farm_unreachable'."""
    flag = tmp_path / "never"
    async with farm_and_worker(tmp_path, farm_config=PATIENT_FARM, farm_outage_limit=120.0) as (
        farm,
        worker,
        events,
    ):
        farm.create_job(simple_job(_waiting_task(flag), frames="1"))
        with trio.fail_after(60):
            await events.wait_line("frame 1 started")
        farm.set_faults(OUTAGE)
        start = trio.current_time()
        with trio.fail_after(600):
            reason = await worker.wait_stop_requested()
        waited = trio.current_time() - start
        assert reason == "farm_unreachable"
        # Counted from the last successful sync (at most a heartbeat before the outage).
        assert 118 <= waited <= 120 + 35, waited
        await worker.drain()
        # Drained: the task was interrupted (its process is gone), the worker stopped. Its
        # session may still hold its last log lines, which nobody can take now.
        assert worker.statistics().state == "stopped"
        [pid] = [int(line.split()[1]) for line in events.lines() if line.startswith("pid ")]
        status = trio.Path(f"/proc/{pid}/status")
        assert not await status.exists() or "zombie" in await status.read_text()


# ------------------------------------------------------------------ a real farm process


async def _serve(port: int, state_dir: Path) -> tuple[trio.Process, dict[str, str], str]:
    """``python -m agent mockfarm serve`` on ``port``; its exports and printed set-up."""
    argv = [sys.executable, "-m", "agent", "mockfarm", "serve", "--port", str(port)]
    argv += ["--state-dir", str(state_dir), "--update-interval", "1"]
    process = await trio.lowlevel.open_process(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    output = b""
    with trio.fail_after(60):
        while b"\nready: " not in output:
            chunk = await process.stdout.receive_some()
            assert chunk, output.decode()
            output += chunk
    text = output.decode()
    exports = dict(
        line.strip().removeprefix("export ").split("=", 1)
        for line in text.splitlines()
        if line.strip().startswith("export ")
    )
    return process, exports, text


async def _until(check: Callable[[], Any]) -> Any:
    """Ask the farm process (over HTTP, in a thread) until ``check`` returns something
    true; another process's state gives no event to wait on."""
    while True:
        value = await trio.to_thread.run_sync(check)
        if value:
            return value
        await trio.sleep(0.2)


async def _stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(60):
        assert await process.wait() == 0


async def test_a_worker_process_carries_on_while_mockfarm_serve_is_stopped_and_restarted(
    tmp_path: Path,
) -> None:
    """A real `mockfarm serve` (persistent state) is stopped with SIGTERM while a real
    worker process runs a task; the task finishes while the farm is down; the farm
    starts again on the same port; the job succeeds with each action reported once and
    its log complete, and the worker never stopped."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state_dir, flag = tmp_path / "state", tmp_path / "go"
    farm_process, exports, text = await _serve(port, state_dir)
    farm_id = text.split("farm  ")[1].split()[0]
    fleet_id = text.split("fleet ")[1].split()[0]
    queue_id = text.split("queue ")[1].split()[0]
    env = {**os.environ, **exports, "PYTHONUNBUFFERED": "1"}

    def client(service: str) -> Any:
        return make_client(
            service,
            exports["FARMHAND_MOCKFARM_ENDPOINT"],
            region=exports["AWS_DEFAULT_REGION"],
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        )

    deadline = client("deadline")
    template = json.dumps(simple_job(_waiting_task(flag), frames="1"))
    job_id = await trio.to_thread.run_sync(
        lambda: deadline.create_job(
            farmId=farm_id, queueId=queue_id, template=template, templateType="JSON", priority=50
        )["jobId"]
    )
    shim = types.SimpleNamespace(
        farm_id=farm_id, fleet_id=fleet_id, endpoint_url=exports["FARMHAND_MOCKFARM_ENDPOINT"]
    )
    argv = worker_argv(shim, tmp_path / "worker", "--log-format", "json")  # type: ignore[arg-type]
    worker = await trio.lowlevel.open_process(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        process = WorkerProcess(worker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(process._read)

            def job() -> dict[str, Any]:
                return dict(deadline.get_job(farmId=farm_id, queueId=queue_id, jobId=job_id))

            with trio.fail_after(120):
                await process.wait_event("worker.started")
                await _until(lambda: job()["taskRunStatus"] == "RUNNING")
            await _stop(farm_process)  # the farm goes away while the task runs
            flag.touch()
            # The worker notices: its next sync fails (a restart of its sync loop).
            with trio.fail_after(120):
                await process.wait_event("actor.restarting")
            farm_process, _, _ = await _serve(port, state_dir)
            with trio.fail_after(180):
                await _until(lambda: job()["taskRunStatus"] == "SUCCEEDED")
            assert process.returncode is None
            assert process.events("worker.farm_unreachable") == []
            sessions = await trio.to_thread.run_sync(
                lambda: deadline.list_sessions(farmId=farm_id, queueId=queue_id, jobId=job_id)
            )
            [session] = sessions["sessions"]
            logs = client("logs")

            def session_log() -> list[str]:
                events = logs.get_log_events(
                    logGroupName=f"/aws/deadline/{farm_id}/{queue_id}",
                    logStreamName=session["sessionId"],
                    startFromHead=True,
                )["events"]
                return [event["message"] for event in events]

            with trio.fail_after(120):
                lines = await _until(
                    lambda: (found := session_log()) and "exited" in found and found
                )
            ours = [
                line
                for line in lines
                if line in ("entered", "frame 1 started", "frame 1 done", "exited")
            ]
            assert ours == ["entered", "frame 1 started", "frame 1 done", "exited"]
            actions = await trio.to_thread.run_sync(
                lambda: deadline.list_session_actions(
                    farmId=farm_id, queueId=queue_id, jobId=job_id, sessionId=session["sessionId"]
                )["sessionActions"]
            )
            assert {action["status"] for action in actions} == {"SUCCEEDED"}, actions
            assert len(actions) == 3
            nursery.cancel_scope.cancel()
    finally:
        if worker.returncode is None:
            worker.kill()
        with trio.CancelScope(shield=True):
            await worker.wait()
            if farm_process.returncode is None:
                farm_process.kill()
                await farm_process.wait()
