"""The embedding API: ``agent.open_agent``, ``agent.run`` and several workers in one process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import attrs
import httpx
import pytest
import trio

import agent
from agent._logging import configure_logging
from agent.mockfarm import FarmConfig, open_mock_farm
from tests.worker_harness import (
    Events,
    bootstrap_credentials,
    endpoints_for,
    py,
    simple_job,
    wait_job,
    worker_config,
)


def test_importing_agent_does_not_import_the_worker() -> None:
    """``import agent`` is cheap; the worker stack loads on first use of a name."""
    code = (
        "import sys, agent\n"
        "before = 'agent.worker._worker' in sys.modules\n"
        "agent.open_agent\n"
        "print(before, 'agent.worker._worker' in sys.modules, sorted(agent.__all__) == agent.__all__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        agent.nope  # noqa: B018


def test_the_public_names() -> None:
    """What a host needs to configure, run, watch and stop workers is public."""
    for name in (
        "open_agent",
        "run",
        "serve_worker",
        "Worker",
        "WorkerConfig",
        "WorkerStatistics",
        "StopReason",
        "Endpoints",
        "resolve_endpoints",
        "load_config",
        "configure_parser",
        "ConfigError",
        "FarmhandError",
        "UnrecoverableError",
        "Capabilities",
    ):
        assert name in agent.__all__ and getattr(agent, name) is not None
    assert agent.WorkerConfig.__module__ == "agent.worker._config"


async def test_several_workers_share_a_process_and_report_their_own_statistics(
    tmp_path: Path,
) -> None:
    """Three workers in one process (one connection pool, one endpoint resolution) share
    a job's tasks; each has its own statistics, and draining one leaves the others working."""
    config = FarmConfig(update_interval_seconds=1, max_retries_per_task=0, pipeline_depth=1)
    configure_logging(quiet=False)  # INFO records reach the workers' CloudWatch streams
    async with (
        open_mock_farm(config=config) as farm,
        httpx.AsyncClient() as http,
        trio.open_nursery() as nursery,
    ):
        endpoints = endpoints_for(farm)
        workers: list[agent.Worker] = []
        events = Events()
        done = trio.Event()
        started = trio.Event()

        async def one(index: int) -> None:
            async with agent.open_agent(
                worker_config(farm, tmp_path / f"w{index}"),
                http=http,
                endpoints=endpoints,
                bootstrap_credentials=bootstrap_credentials(),
                on_event=events,
            ) as worker:
                workers.append(worker)
                if len(workers) == 3:
                    started.set()
                await done.wait()

        for index in range(3):
            nursery.start_soon(one, index)
        with trio.fail_after(30):
            await started.wait()
        # Each task waits until all three workers have a session, so all three get work
        # however late their heartbeats come.
        marker = tmp_path / "all-three-working"
        wait_for_marker = (
            f"import os, time\nwhile not os.path.exists({str(marker)!r}): time.sleep(0.02)"
        )
        job_id = farm.create_job(
            simple_job(py(wait_for_marker), frames="1-9", environments=False),
            max_worker_count=3,
        )
        with trio.fail_after(30):
            await farm.wait_until(lambda: farm.job(job_id).active_sessions == 3)
        marker.touch()
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        with trio.fail_after(30):
            await farm.wait_until(lambda: all(w.statistics().sessions == 0 for w in workers))
        stats = [w.statistics() for w in workers]
        assert len({s.worker_id for s in stats}) == 3
        assert sum(s.actions.get("SUCCEEDED", 0) for s in stats) == 9
        assert all(s.actions.get("SUCCEEDED") for s in stats)  # the work was shared
        for s in stats:
            assert s.state == "running"
            assert s.heartbeat_age is not None and 0 <= s.heartbeat_age < 5
            assert s.log_bytes_buffered >= 0 and s.api_calls > 0
        await workers[0].drain(0)
        assert workers[0].statistics().state == "stopped"
        assert farm.worker(workers[0].worker_id).status == "STOPPED"
        second = farm.create_job(simple_job(py("print('x')"), frames="1-2", environments=False))
        assert await wait_job(farm, second) == "SUCCEEDED"
        assert workers[0].statistics().actions == stats[0].actions  # it took no more work
        # Each worker's CloudWatch stream has its own records, not the others'.
        for w in workers:

            def logged(worker_id: str = w.worker_id) -> bool:
                return any("session_finished" in m for m in farm.worker_log(worker_id))

            with trio.fail_after(30):
                await farm.wait_until(logged)
            records = [json.loads(m) for m in farm.worker_log(w.worker_id)]
            assert {r["worker_id"] for r in records if "worker_id" in r} == {w.worker_id}
        # A stopped worker makes no more calls (the farm would answer STATUS_CONFLICT).
        mine = [c for c in farm.calls if c.input.get("workerId") == workers[0].worker_id]
        last = max(i for i, c in enumerate(mine) if c.operation == "UpdateWorker")
        assert mine[last].input["status"] == "STOPPED"
        assert all(c.operation != "UpdateWorkerSchedule" for c in mine[last:])
        done.set()


async def test_agent_run_blocks_a_thread_until_asked_to_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """agent.run(config) works a farm from a plain thread (no Trio there) and returns once
    the host sets its stop event, the worker drained and STOPPED."""
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=1)) as farm:
        # agent.run resolves endpoints and credentials as a deployed worker does.
        monkeypatch.setenv("AWS_ENDPOINT_URL", farm.endpoint_url)
        config = worker_config(farm, tmp_path, disable_host_prefix=True, drain_grace_seconds=1)
        stop = threading.Event()
        lines: list[str] = []

        def on_event(session_id: str, event: object) -> None:
            lines.extend(getattr(event, "lines", ()))

        outcome: list[str | None] = []

        def host() -> None:
            outcome.append(agent.run(config, stop=stop, on_event=on_event))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, host)
            job_id = farm.create_job(simple_job(py("print('from a thread')"), frames="1"))
            assert await wait_job(farm, job_id) == "SUCCEEDED"
            stop.set()
        [worker] = farm.state.workers.values()
    assert outcome == ["drained"]
    assert worker.status == "STOPPED"
    assert "from a thread" in lines


async def test_agent_run_returns_when_the_farm_stops_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The farm asking the worker to stop ends agent.run with "farm"."""
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=1)) as farm:
        monkeypatch.setenv("AWS_ENDPOINT_URL", farm.endpoint_url)
        config = worker_config(farm, tmp_path, disable_host_prefix=True)
        outcome: list[str | None] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lambda: outcome.append(agent.run(config)))
            with trio.fail_after(30):
                await farm.wait_until(
                    lambda: any(w.status == "STARTED" for w in farm.state.workers.values())
                )
            [worker] = farm.state.workers.values()
            farm.request_worker_stop(worker.worker_id)
    assert outcome == ["farm"]
    assert worker.status == "STOPPED"


async def test_agent_run_raises_what_ends_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker the farm will not have (no such fleet) ends agent.run with that
    FarmhandError, not with an exception group."""
    async with open_mock_farm() as farm:
        monkeypatch.setenv("AWS_ENDPOINT_URL", farm.endpoint_url)
        config = worker_config(
            farm, tmp_path, fleet_id="fleet-" + "0" * 32, disable_host_prefix=True
        )
        with pytest.raises(agent.FarmhandError, match="ResourceNotFound"):
            await trio.to_thread.run_sync(agent.run, config)


async def test_the_configured_profile_gives_credentials_and_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--profile ([aws] profile) picks the bootstrap credentials and the region, as the
    official agent's --profile does."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[farmhand]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = s\n"
    )
    config_file = tmp_path / "config"
    config_file.write_text("[profile farmhand]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    config = agent.WorkerConfig(farm_id="farm-" + "0" * 32, fleet_id="fleet-" + "0" * 32)
    with_profile = attrs.evolve(config, profile="farmhand")
    from agent.worker._worker import load_bootstrap_credentials

    holder = await load_bootstrap_credentials(with_profile)
    assert (await holder.frozen()).access_key == "AKIDFROMPROFILE"
    endpoints = await trio.to_thread.run_sync(agent.resolve_endpoints, with_profile)
    assert endpoints.deadline.region == "eu-west-1"
    assert "eu-west-1" in endpoints.logs.url
    with pytest.raises(agent.FarmhandError, match="region"):
        await trio.to_thread.run_sync(agent.resolve_endpoints, config)  # no profile, no region


EMBEDDED_ONE_JOB = """
import tempfile, trio
from pathlib import Path
from tests.worker_harness import farm_and_worker, py, simple_job, wait_job

async def main():
    async with farm_and_worker(Path(tempfile.mkdtemp())) as (farm, worker, events):
        await wait_job(farm, farm.create_job(simple_job(py("print(1)"), frames="1")))

trio.run(main)
"""


def test_a_host_that_did_not_configure_structlog_gets_no_debug_lines() -> None:
    """structlog's own default prints every level; open_agent asks for INFO and up
    unless the host configured structlog itself, which then decides."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    plain = subprocess.run(
        [sys.executable, "-c", EMBEDDED_ONE_JOB],
        cwd=root, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "[info     ] bootstrap.worker_created" in plain.stdout
    assert "[debug" not in plain.stdout
    verbose = "import structlog; structlog.configure()\n" + EMBEDDED_ONE_JOB
    configured = subprocess.run(
        [sys.executable, "-c", verbose],
        cwd=root, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "[debug    ] session.action_started" in configured.stdout
