"""The fleet's host configuration script: run once, before work, as the official agent."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from agent._logging import configure_logging
from agent.mockfarm import FarmConfig, MockFarm, open_mock_farm
from agent.worker._hostconfig import HostConfigurationFailed, run_host_configuration
from agent.worker._state import WorkerState, load_worker_state
from agent.worker._worker import Worker, open_agent
from tests.worker_harness import (
    bootstrap_credentials,
    endpoints_for,
    py,
    simple_job,
    wait_job,
    worker_config,
)

WORKER_ID = "worker-" + "1" * 32


async def _set_host_configuration(farm: MockFarm, body: str) -> None:
    client = farm.boto3_client("deadline")
    await trio.to_thread.run_sync(
        lambda: client.update_fleet(
            farmId=farm.farm_id,
            fleetId=farm.fleet_id,
            hostConfiguration={"scriptBody": body, "scriptTimeoutSeconds": 300},
        )
    )


@asynccontextmanager
async def _worker(farm: MockFarm, root: Path) -> AsyncIterator[Worker]:
    configure_logging(quiet=False)  # records reach the worker's CloudWatch stream
    async with open_agent(
        worker_config(farm, root),
        endpoints=endpoints_for(farm),
        bootstrap_credentials=bootstrap_credentials(),
    ) as worker:
        yield worker


def _farm_config() -> FarmConfig:
    return FarmConfig(update_interval_seconds=1, max_retries_per_task=0)


async def test_the_script_runs_once_before_work_with_its_output_in_the_agent_log(
    tmp_path: Path,
) -> None:
    """The fleet's script runs as root with the worker's ids, its timeout and the fleet
    role's credentials; its lines reach the worker's CloudWatch stream with the secret
    masked; worker.json records the success, and a restarted worker does not run it again."""
    marker = tmp_path / "configured"
    body = (
        "#!/bin/sh\n"
        f"echo run >> {marker}\n"
        'echo "configuring $DEADLINE_WORKER_ID in $DEADLINE_FLEET_ID as $(id -u)"\n'
        'echo "timeout=$HOST_CONFIG_TIMEOUT_SECONDS key=$AWS_ACCESS_KEY_ID"\n'
        'echo "secret=$AWS_SECRET_ACCESS_KEY"\n'
    )
    async with open_mock_farm(config=_farm_config()) as farm:
        await _set_host_configuration(farm, body)
        async with _worker(farm, tmp_path) as worker:
            worker_id = worker.worker_id
            secret = worker._booted.credentials.credentials.secret_key  # type: ignore[union-attr]
            assert marker.read_text() == "run\n"  # before the worker took any work
            job_id = farm.create_job(simple_job(py("print('frame')"), frames="1"))
            assert await wait_job(farm, job_id) == "SUCCEEDED"
            with trio.fail_after(30):
                await farm.wait_until(
                    lambda: any("secret=" in m for m in farm.worker_log(worker_id))
                )
        log = "\n".join(farm.worker_log(worker_id))
        assert f"configuring {worker_id} in {farm.fleet_id} as 0" in log
        assert "timeout=300 key=" in log and "key=\n" not in log
        assert secret and secret not in log
        assert "host_configuration.succeeded" in log
        state = load_worker_state(tmp_path / "persistence")
        assert state is not None and state.host_configuration_succeeded is True
        assert not (tmp_path / "persistence" / "host_configuration.sh").exists()

        # The same host again: the script is not run twice.
        async with _worker(farm, tmp_path) as again:
            assert again.worker_id == worker_id
        assert marker.read_text() == "run\n"
        assert "host_configuration.skipped" in "\n".join(farm.worker_log(worker_id))


async def test_a_failing_script_stops_the_worker_before_any_work(tmp_path: Path) -> None:
    """Exit 3: the worker takes no work, tells the farm it STOPPED, and fails with a
    message naming the exit code; the script's output is in the agent's stream."""
    async with open_mock_farm(config=_farm_config()) as farm:
        await _set_host_configuration(farm, "echo cannot mount the share\nexit 3\n")
        job_id = farm.create_job(simple_job(py("print('frame')"), frames="1"))
        failed = pytest.RaisesExc(HostConfigurationFailed, match="exit code 3")
        with pytest.RaisesGroup(failed, flatten_subgroups=True) as caught:
            async with _worker(farm, tmp_path):
                pytest.fail("the worker must not start")
        [error] = caught.value.exceptions
        assert isinstance(error, HostConfigurationFailed) and error.exit_code == 3
        [worker] = farm.state.workers.values()
        assert worker.status == "STOPPED"
        assert not farm.state.sessions and farm.job(job_id).status == "READY"
        log = farm.worker_log(worker.worker_id)
        assert "cannot mount the share" in "\n".join(log)
        state = load_worker_state(tmp_path / "persistence")
        assert state is not None and not state.host_configuration_succeeded


async def test_a_script_past_its_timeout_is_stopped_with_its_whole_tree(tmp_path: Path) -> None:
    """Past its timeout the script and what it started go (a child in its own process
    group too), and the error says it timed out."""
    config = worker_config_for(tmp_path)
    pid_file = tmp_path / "child.pid"
    body = f"setsid sleep 120 &\necho $! > {pid_file}\necho started\nsleep 120\n"
    with pytest.raises(HostConfigurationFailed, match="ran past its 1 s") as caught:
        await run_host_configuration(
            config,
            WORKER_ID,
            {"scriptBody": body},
            WorkerState(WORKER_ID),
            ("AKID", "secret", None),
            limit_seconds=1.0,
        )
    assert caught.value.exit_code is None or caught.value.exit_code != 0
    child = int(pid_file.read_text())
    try:
        assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


async def test_nothing_to_run_changes_nothing(tmp_path: Path) -> None:
    """No script, an empty one, or one that succeeded before: nothing runs, state kept."""
    config = worker_config_for(tmp_path)
    state = WorkerState(WORKER_ID)
    done = WorkerState(WORKER_ID, host_configuration_succeeded=True)
    marker = tmp_path / "ran"
    for configuration, before in (
        (None, state),
        ({"scriptBody": "  \n"}, state),
        ({"scriptBody": f"touch {marker}"}, done),
    ):
        after = await run_host_configuration(config, WORKER_ID, configuration, before, None)
        assert after is before
    assert not marker.exists()
    assert not (tmp_path / "persistence").exists()


def worker_config_for(root: Path) -> Any:
    from agent.worker._config import WorkerConfig

    return WorkerConfig(
        farm_id="farm-" + "0" * 32,
        fleet_id="fleet-" + "0" * 32,
        worker_persistence_dir=root / "persistence",
        session_root_dir=root / "sessions",
        worker_logs_dir=root / "logs",
        no_shutdown=True,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the script runs as root directly")
async def test_a_script_without_a_shebang_is_a_shell_script(tmp_path: Path) -> None:
    """Written as a fleet's console shows it, without "#!": /bin/sh runs it."""
    marker = tmp_path / "done"
    await run_host_configuration(
        worker_config_for(tmp_path),
        WORKER_ID,
        {"scriptBody": f'set -e\n[ "$(id -u)" = 0 ]\necho ok > {marker}\n'},
        WorkerState(WORKER_ID),
        None,
    )
    assert marker.read_text() == "ok\n"
