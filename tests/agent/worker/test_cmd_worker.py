"""The stop contract of ``python -m agent``, with real signals to a real agent process
against the embedded mock farm (asserted through the farm's recorded calls)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import trio

from agent.mockfarm import FarmConfig, FaultConfig, MockFarm, open_mock_farm
from tests.agent_process import (
    PY,
    agent_process,
    calls,
    first_index,
    reports,
    worker_status_calls,
)

FARM = FarmConfig(update_interval_seconds=1, max_retries_per_task=0)

ON_TERM_WAIT = """
import os, pathlib, signal, sys, time
release = pathlib.Path(sys.argv[1])
pathlib.Path(sys.argv[2]).write_text(str(os.getpid()))
def term(*_):
    print("got SIGTERM", flush=True)
    while not release.exists():
        time.sleep(0.02)
    print("leaving", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("running", flush=True)
while True:
    time.sleep(1)
"""

IGNORE_TERM = """
import os, pathlib, signal, sys, time
pathlib.Path(sys.argv[2]).write_text(str(os.getpid()))
signal.signal(signal.SIGTERM, lambda *_: print("ignoring SIGTERM", flush=True))
print("running", flush=True)
while True:
    time.sleep(1)
"""

WAIT_FOR_RELEASE = """
import pathlib, sys, time
print("frame", sys.argv[3], "running", flush=True)
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.02)
print("frame", sys.argv[3], "done", flush=True)
"""


def job(code: str, tmp_path: Path, *, frames: str = "1-3") -> dict[str, Any]:
    """An environment (enter/exit print) around tasks running ``code`` with argv
    [release file, pid file, frame], cancelled NOTIFY_THEN_TERMINATE (60 s)."""
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "stop contract",
        "jobEnvironments": [
            {
                "name": "Env",
                "script": {
                    "actions": {
                        "onEnter": {"command": PY, "args": ["-c", "print('entered')"]},
                        "onExit": {"command": PY, "args": ["-c", "print('exited')"]},
                    }
                },
            }
        ],
        "steps": [
            {
                "name": "Render",
                "parameterSpace": {
                    "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": frames}]
                },
                "script": {
                    "actions": {
                        "onRun": {
                            "command": PY,
                            "args": [
                                "-c",
                                code,
                                str(tmp_path / "release"),
                                str(tmp_path / "task.pid"),
                                "{{Task.Param.Frame}}",
                            ],
                            "cancelation": {
                                "mode": "NOTIFY_THEN_TERMINATE",
                                "notifyPeriodInSeconds": 60,
                            },
                        }
                    }
                },
            }
        ],
    }


def session_log(farm: MockFarm) -> list[str]:
    lines: list[str] = []
    for session in farm.state.sessions.values():
        lines.extend(farm.session_log(session.session_id))
    return lines


async def wait_log(farm: MockFarm, line: str) -> None:
    """Wait for a whole line of output (the command lines in the log quote the code)."""
    with trio.fail_after(30):
        await farm.wait_until(lambda: line in session_log(farm))


def statuses_of(farm: MockFarm, job_id: str) -> list[str]:
    return [t.status for step in farm.job(job_id).steps for t in step.tasks]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[-1][0] != "Z"


async def test_first_sigterm_drains_the_worker(tmp_path: Path) -> None:
    """UpdateWorker(STOPPING); the running task INTERRUPTED at once and cancelled with its
    own method (SIGTERM) within the grace; heartbeats meanwhile; the queued task
    NEVER_ATTEMPTED; the environment exits; a final sync; STOPPED; exit 0."""
    async with open_mock_farm(config=FARM) as farm, agent_process(farm, tmp_path) as agent:
        farm.create_job(job(ON_TERM_WAIT, tmp_path))
        await wait_log(farm, "running")
        agent.send(signal.SIGTERM)
        await agent.wait_event("worker.signal", signal="SIGTERM", action="drain")

        def interrupted_then_two_heartbeats() -> bool:
            found = reports(farm)
            if not any(f.get("completedStatus") == "INTERRUPTED" for _, _, f in found):
                return False
            at = first_index(found, lambda f: f.get("completedStatus") == "INTERRUPTED")
            later = [c for c in list(farm.calls)[at + 1 :] if c.operation == "UpdateWorkerSchedule"]
            return len(later) >= 2

        with trio.fail_after(30):
            await farm.wait_until(interrupted_then_two_heartbeats)
        running_meanwhile = "leaving" not in session_log(farm)
        (tmp_path / "release").touch()
        with trio.fail_after(30):
            code = await agent.wait()
        log = session_log(farm)
    assert code == 0
    assert running_meanwhile
    statuses = worker_status_calls(farm)
    assert [s for _, s in statuses] == ["STARTED", "STOPPING", "STOPPED"]
    (stopping, _), (stopped, _) = statuses[1], statuses[2]
    found = reports(farm)
    interrupted = first_index(found, lambda f: f.get("completedStatus") == "INTERRUPTED")
    never = first_index(found, lambda f: f.get("completedStatus") == "NEVER_ATTEMPTED")
    assert stopping < interrupted <= never < stopped
    # Heartbeats until the end, the last sync before STOPPED.
    syncs = [i for i, c in enumerate(farm.calls) if c.operation == "UpdateWorkerSchedule"]
    assert len([i for i in syncs if interrupted < i < stopped]) >= 3
    assert max(i for i in syncs if i < stopped) > interrupted
    # Cancelled with its own method, then the environment's exit ran.
    assert log.index("got SIGTERM") < log.index("leaving") < log.index("exited")


async def test_a_second_signal_drains_with_no_grace(tmp_path: Path) -> None:
    """A task that ignores SIGTERM is killed at once on the second signal, the exits are
    skipped, and the worker still ends STOPPED with exit 0, long before the grace."""
    async with open_mock_farm(config=FARM) as farm, agent_process(farm, tmp_path) as agent:
        farm.create_job(job(IGNORE_TERM, tmp_path, frames="1"))
        await wait_log(farm, "running")
        agent.send(signal.SIGTERM)
        await wait_log(farm, "ignoring SIGTERM")
        agent.send(signal.SIGINT)
        await agent.wait_event("worker.signal", signal="SIGINT", action="drain with no grace")
        start = trio.current_time()
        with trio.fail_after(20):
            code = await agent.wait()
        took = trio.current_time() - start
        log = session_log(farm)
    pid = int((tmp_path / "task.pid").read_text())
    assert code == 0
    assert took < 15  # the grace was 30 s
    assert not alive(pid)
    assert "exited" not in log
    assert [s for _, s in worker_status_calls(farm)] == ["STARTED", "STOPPING", "STOPPED"]
    final = [f["completedStatus"] for _, _, f in reports(farm) if "completedStatus" in f]
    # The environment's enter, the task, and the exit the farm had assigned (skipped).
    assert final == ["SUCCEEDED", "INTERRUPTED", "NEVER_ATTEMPTED"]


async def test_a_third_signal_exits_at_once(tmp_path: Path) -> None:
    """While the drain waits on a slow farm, a third signal ends the process at once (130)."""
    async with open_mock_farm(config=FARM) as farm, agent_process(farm, tmp_path) as agent:
        farm.set_faults(FaultConfig().with_operation("UpdateWorker", latency=30))
        agent.send(signal.SIGTERM)
        await agent.wait_event("worker.draining")
        agent.send(signal.SIGTERM)
        await agent.wait_event("worker.signal", 2)
        start = trio.current_time()
        agent.send(signal.SIGTERM)
        with trio.fail_after(10):
            code = await agent.wait()
        took = trio.current_time() - start
    assert code == 130
    assert took < 3  # the STOPPING call was bounded at 5 s, and still running
    assert "STOPPED" not in [s for _, s in worker_status_calls(farm)]


async def test_sigusr1_finishes_the_current_work_then_stops(tmp_path: Path) -> None:
    """SIGUSR1: the tasks the worker has run to success, the environment exits, the
    job's later tasks go back to the farm, and the worker stops with exit 0."""
    async with open_mock_farm(config=FARM) as farm, agent_process(farm, tmp_path) as agent:
        job_id = farm.create_job(job(WAIT_FOR_RELEASE, tmp_path, frames="1-6"))
        await wait_log(farm, "frame 1 running")
        agent.send(signal.SIGUSR1)
        await agent.wait_event("worker.finishing")
        (tmp_path / "release").touch()
        with trio.fail_after(30):
            code = await agent.wait()
        log = session_log(farm)
        statuses = statuses_of(farm, job_id)
    assert code == 0, "\n".join(agent.stderr)
    done = [line for line in log if line.endswith(" done")]
    assert "frame 1 done" in done
    assert statuses[: len(done)] == ["SUCCEEDED"] * len(done)
    assert len(done) < 6 and set(statuses[len(done) :]) == {"READY"}
    assert log.index(done[-1]) < log.index("exited")
    assert [s for _, s in worker_status_calls(farm)] == ["STARTED", "STOPPING", "STOPPED"]
    failed = [f for _, _, f in reports(farm) if f.get("completedStatus") in ("FAILED", "CANCELED")]
    assert failed == []


async def test_the_farm_stopping_the_worker(tmp_path: Path) -> None:
    """desiredWorkerStatus=STOPPED: drain, STOPPED, exit 0 (no host shutdown with
    --no-shutdown)."""
    async with open_mock_farm(config=FARM) as farm, agent_process(farm, tmp_path) as agent:
        [worker_id] = list(farm.state.workers)
        farm.request_worker_stop(worker_id)
        with trio.fail_after(30):
            code = await agent.wait()
    assert code == 0
    assert agent.events("worker.stop_requested")[0]["reason"] == "farm"
    assert [s for _, s in worker_status_calls(farm)] == ["STARTED", "STOPPING", "STOPPED"]
    assert not agent.events("worker.shutting_down_host")


async def test_credentials_that_cannot_be_renewed_stop_the_worker(tmp_path: Path) -> None:
    """When renewing the worker's credentials fails until they are too close to
    expiry, the worker drains within the time left and exits 1 (to be restarted)."""
    config = FarmConfig(
        update_interval_seconds=1, max_retries_per_task=0, credentials_lifetime_seconds=4
    )
    async with open_mock_farm(config=config) as farm, agent_process(farm, tmp_path) as agent:
        farm.set_faults(
            FaultConfig().with_operation(
                "AssumeFleetRoleForWorker", conflict_rate=1.0, conflict_reason="STATUS_CONFLICT"
            )
        )
        with trio.fail_after(30):
            code = await agent.wait()
    assert code == 1
    [stop] = agent.events("worker.stop_requested")
    # Renewal gives up a third of the lifetime before expiry: that is what is left.
    assert stop["reason"] == "credentials" and 0 <= stop["grace"] <= 4 / 3 + 0.1
    assert agent.events("credentials.refresh_failed")
    assert [s for _, s in worker_status_calls(farm)] == ["STARTED", "STOPPING", "STOPPED"]


async def test_an_unrecoverable_api_error_cancels_the_work_and_exits_1(tmp_path: Path) -> None:
    """The farm answers as if the worker were offline: the running task's processes are
    killed, STOPPED is tried, and the agent exits 1 promptly."""
    async with open_mock_farm(config=FARM) as farm, agent_process(farm, tmp_path) as agent:
        farm.create_job(job(IGNORE_TERM, tmp_path, frames="1"))
        await wait_log(farm, "running")
        farm.set_faults(FaultConfig(offline_workers=frozenset({"*"})))
        start = trio.current_time()
        with trio.fail_after(30):
            code = await agent.wait()
        took = trio.current_time() - start
    pid = int((tmp_path / "task.pid").read_text())
    assert code == 1
    assert took < 5  # a failed sync at the next heartbeat (1 s), and bounded calls
    assert not alive(pid)
    [gave_up] = agent.events("worker.farm_gave_up")
    assert gave_up["error_type"] == "WorkerOffline"
    tried = [c.input.get("status") for c in calls(farm, "UpdateWorker")]
    assert tried[-1] == "STOPPED"


async def test_a_signal_while_starting_cancels_the_start(tmp_path: Path) -> None:
    """SIGTERM while the bootstrap waits on a slow farm ends the agent at once, exit 0."""
    async with open_mock_farm(config=FARM) as farm:
        farm.set_faults(FaultConfig().with_operation("UpdateWorker", latency=30))
        async with agent_process(farm, tmp_path, ready="bootstrap.worker_created") as agent:
            agent.send(signal.SIGTERM)  # before UpdateWorker(STARTED), which takes 30 s
            await agent.wait_event("worker.signal", action="stop starting")
            start = trio.current_time()
            with trio.fail_after(10):
                code = await agent.wait()
            took = trio.current_time() - start
    assert code == 0
    assert took < 3
    assert not agent.events("worker.started")


async def test_a_configuration_error_found_at_start_up_exits_2(tmp_path: Path) -> None:
    """No AWS region anywhere: one error line naming what to set, exit 2 (not 1, which a
    service manager would restart forever)."""
    farm_id, fleet_id = "farm-" + "a" * 32, "fleet-" + "b" * 32
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE", "AWS_PROFILE")
    }
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ACCESS_KEY_ID="AKIDX",
        AWS_SECRET_ACCESS_KEY="x",
    )
    result = await trio.run_process(
        [
            *(PY, "-m", "agent", "--farm-id", farm_id, "--fleet-id", fleet_id),
            *("--endpoint-url", "http://127.0.0.1:9", "--log-format", "json"),
            *("--persistence-dir", str(tmp_path / "p"), "--logs-dir", str(tmp_path / "l")),
        ],
        env=env,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    lines = [
        json.loads(line) for line in result.stderr.decode().splitlines() if line.startswith("{")
    ]
    [error] = [line for line in lines if line["level"] == "error"]
    assert error["event"] == "worker.bad_configuration"
    assert "AWS_DEFAULT_REGION" in error["error"]


async def test_a_failed_host_configuration_script_exits_1(tmp_path: Path) -> None:
    """The fleet's script fails: STOPPED, exit 1, and with --no-shutdown the host stays."""
    async with open_mock_farm(config=FARM) as farm:
        client = farm.boto3_client("deadline")
        await trio.to_thread.run_sync(
            lambda: client.update_fleet(
                farmId=farm.farm_id,
                fleetId=farm.fleet_id,
                hostConfiguration={"scriptBody": "echo no licence server; exit 7"},
            )
        )
        async with agent_process(farm, tmp_path, ready="host_configuration.running") as agent:
            with trio.fail_after(30):
                code = await agent.wait()
    assert code == 1
    [failed] = agent.events("worker.host_configuration_failed")
    assert "exit code 7" in failed["error"]
    assert [line["line"] for line in agent.events("host_configuration.output")] == [
        "no licence server"
    ]
    assert [s for _, s in worker_status_calls(farm)] == ["STARTED", "STOPPED"]
    assert not agent.events("worker.shutting_down_host")
