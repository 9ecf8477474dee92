"""Drive the official ``deadline`` CLI against the mock farm, and report.

    python -m tests.mockfarm_cli WORKDIR

``tests/agent/mockfarm/test_cli_official.py`` runs this inside a network namespace
that has nothing but loopback (``unshare -rn``). It serves a farm that keeps its
state in WORKDIR, runs a farmhand worker in-process through a job whose task
fails fast after printing a few lines, adds a job no fleet can run, then runs
the CLI's commands as a user would (its config in WORKDIR, telemetry off). Then
the farm stops and starts again on the same port and state dir while the worker
runs on; a job submitted after the restart runs on that worker, and the CLI's
reading commands run again. It prints one JSON object: each command's exit
status and output, before and after the restart, the ids, and the session log
the farm kept.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import structlog
import trio

from agent.mockfarm import FarmConfig, MockFarm, open_mock_farm
from agent.worker._worker import open_agent
from tests.worker_harness import (
    bootstrap_credentials,
    endpoints_for,
    py,
    simple_job,
    worker_config,
)

FAILING = py(
    "import sys\n"
    "for n in range(4): print(f'render line {n}', flush=True)\n"
    "print('giving up: the scene is missing', file=sys.stderr, flush=True)\n"
    "sys.exit(3)"
)


def deadline_cli() -> str:
    found = shutil.which("deadline", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("the deadline CLI is not installed beside this Python")
    return found


async def run_cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = await trio.run_process(
        [deadline_cli(), *args],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return {
        "rc": result.returncode,
        "stdout": result.stdout.decode(errors="replace"),
        "stderr": result.stderr.decode(errors="replace"),
    }


async def serve(
    config: FarmConfig,
    state_dir: Path,
    port: int,
    stop: trio.Event,
    stopped: trio.Event,
    *,
    task_status: trio.TaskStatus[MockFarm],
) -> None:
    """The farm, on ``port`` with its state in ``state_dir``, until ``stop``; then
    ``stopped`` is set."""
    try:
        async with open_mock_farm(config=config, state_dir=state_dir, port=port) as farm:
            task_status.started(farm)
            await stop.wait()
    finally:
        stopped.set()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def main(workdir: Path) -> dict[str, Any]:
    config = FarmConfig(update_interval_seconds=1, max_retries_per_task=0)
    state_dir, port = workdir / "state", free_port()
    async with trio.open_nursery() as nursery:
        first_stop, first_stopped = trio.Event(), trio.Event()
        farm = await nursery.start(serve, config, state_dir, port, first_stop, first_stopped)
        async with open_agent(
            worker_config(farm, workdir / "worker"),
            endpoints=endpoints_for(farm),
            bootstrap_credentials=bootstrap_credentials(),
        ) as worker:
            report = await before_restart(farm, workdir)
            # The farm goes away and comes back, same port and state dir; the worker
            # (one process, one worker id) carries on.
            first_stop.set()
            await first_stopped.wait()
            farm = await nursery.start(serve, config, state_dir, port, trio.Event(), trio.Event())
            after_id = farm.create_job(
                simple_job(py("print('after the restart')"), frames="1-1", environments=False)
            )
            with trio.fail_after(60):
                after_status = await farm.wait_for_job(after_id)
            after_session = farm.job(after_id).sessions[0]
            report.update(
                after_id=after_id,
                after_status=after_status,
                after_worker_id=after_session.worker.worker_id,
                worker_id=worker.worker_id,
                after=await reading_commands(farm, workdir, report),
            )
            nursery.cancel_scope.cancel(reason="done")
    return report


def cli_env(farm: MockFarm, workdir: Path) -> dict[str, str]:
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "DEADLINE_CONFIG_FILE_PATH": str(home / ".deadline" / "config"),
        **farm.environ(),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


async def reading_commands(
    farm: MockFarm, workdir: Path, ids: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """What a user reads of the farm: the lists, a job, an action's log."""
    env = cli_env(farm, workdir)
    where = ["--farm-id", farm.farm_id]
    in_queue = [*where, "--queue-id", farm.queue_id]
    return {
        "farm list": await run_cli(env, "farm", "list"),
        "queue list": await run_cli(env, "queue", "list", *where),
        "fleet list": await run_cli(env, "fleet", "list", *where),
        "job list": await run_cli(env, "job", "list", *in_queue),
        "worker list": await run_cli(env, "worker", "list", *where, "--fleet-id", farm.fleet_id),
        "job get": await run_cli(env, "job", "get", *in_queue, "--job-id", ids["job_id"]),
        "blocked job get": await run_cli(
            env, "job", "get", *in_queue, "--job-id", ids["blocked_id"]
        ),
        "job logs": await run_cli(
            env,
            "job",
            "logs",
            *in_queue,
            "--job-id",
            ids["job_id"],
            "--session-action-id",
            ids["action_id"],
            "--output",
            "json",
        ),
    }


async def before_restart(farm: MockFarm, workdir: Path) -> dict[str, Any]:
    job_id = farm.create_job(simple_job(FAILING, frames="1-1", environments=False))
    with trio.fail_after(60):
        await farm.wait_for_job(job_id)
    job = farm.job(job_id)
    session = job.sessions[0]
    action = next(a for a in session.actions if a.kind == "taskRun")
    # The session has ended and its log is shipped once the end line is in.
    with trio.fail_after(30):
        await farm.wait_until(
            lambda: (
                any("ended: FAILED" in m for m in farm.session_log(session.session_id))
                and session.lifecycle_status == "ENDED"
            )
        )
    blocked = simple_job(py("print('never')"), frames="1-1", environments=False)
    blocked["steps"][0]["hostRequirements"] = {
        "attributes": [{"name": "attr.worker.os.family", "anyOf": ["windows"]}]
    }
    blocked_id = farm.create_job(blocked)
    ids = {"job_id": job_id, "blocked_id": blocked_id, "action_id": action.action_id}
    results = await reading_commands(farm, workdir, ids)
    env = cli_env(farm, workdir)
    in_queue = ["--farm-id", farm.farm_id, "--queue-id", farm.queue_id]
    results["trace-schedule"] = await run_cli(
        env,
        "job",
        "trace-schedule",
        *in_queue,
        "--job-id",
        job_id,
        "--trace-format",
        "chrome",
        "--trace-file",
        str(workdir / "trace.json"),
    )
    results["export-credentials"] = await run_cli(
        env, "queue", "export-credentials", *in_queue, "--output-format", "credentials_process"
    )
    trace = workdir / "trace.json"
    return {
        **ids,
        "farm_id": farm.farm_id,
        "queue_id": farm.queue_id,
        "fleet_id": farm.fleet_id,
        "worker_ids": list(farm.state.workers),
        "session_log": farm.session_log(session.session_id),
        "action_started": action.started_at.isoformat() if action.started_at else None,
        "action_ended": action.ended_at.isoformat() if action.ended_at else None,
        "results": results,
        "trace": json.loads(trace.read_text()) if trace.exists() else None,
    }


if __name__ == "__main__":
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(40),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    report = trio.run(main, Path(sys.argv[1]))
    print(json.dumps(report))
