"""Drive the official ``deadline`` CLI against the mock farm, and report.

    python -m tests.mockfarm_cli WORKDIR

``tests/agent/mockfarm/test_cli_official.py`` runs this inside a network namespace
that has nothing but loopback (``unshare -rn``). It serves a farm, runs a
farmhand worker in-process through a job whose task fails fast after printing
a few lines, adds a job no fleet can run, then runs the CLI's commands as a user
would (its config in WORKDIR, telemetry off) and prints one JSON object: each
command's exit status and output, the ids, and the session log the farm kept.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import structlog
import trio

from agent.mockfarm import FarmConfig
from tests.worker_harness import farm_and_worker, py, simple_job

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


async def main(workdir: Path) -> dict[str, Any]:
    config = FarmConfig(update_interval_seconds=1, max_retries_per_task=0)
    async with farm_and_worker(workdir / "worker", farm_config=config) as (farm, _worker, _):
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
        home = workdir / "home"
        home.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "DEADLINE_CONFIG_FILE_PATH": str(home / ".deadline" / "config"),
            **farm.environ(),
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        where = ["--farm-id", farm.farm_id]
        in_queue = [*where, "--queue-id", farm.queue_id]
        results = {
            "farm list": await run_cli(env, "farm", "list"),
            "queue list": await run_cli(env, "queue", "list", *where),
            "fleet list": await run_cli(env, "fleet", "list", *where),
            "job list": await run_cli(env, "job", "list", *in_queue),
            "worker list": await run_cli(
                env, "worker", "list", *where, "--fleet-id", farm.fleet_id
            ),
            "job get": await run_cli(env, "job", "get", *in_queue, "--job-id", job_id),
            "blocked job get": await run_cli(env, "job", "get", *in_queue, "--job-id", blocked_id),
            "job logs": await run_cli(
                env,
                "job",
                "logs",
                *in_queue,
                "--job-id",
                job_id,
                "--session-action-id",
                action.action_id,
                "--output",
                "json",
            ),
            "trace-schedule": await run_cli(
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
            ),
            "export-credentials": await run_cli(
                env,
                "queue",
                "export-credentials",
                *in_queue,
                "--output-format",
                "credentials_process",
            ),
        }
        trace = workdir / "trace.json"
        return {
            "farm_id": farm.farm_id,
            "queue_id": farm.queue_id,
            "fleet_id": farm.fleet_id,
            "job_id": job_id,
            "blocked_id": blocked_id,
            "worker_ids": list(farm.state.workers),
            "action_id": action.action_id,
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
