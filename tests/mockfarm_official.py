"""Run the official deadline-worker-agent against an embedded mock farm, and report.

    python -m tests.mockfarm_official AGENT_EXECUTABLE WORKDIR

``tests/agent/mockfarm/test_official.py`` runs this inside a network namespace that has
nothing but loopback (``unshare -rn``), so the agent's hard-coded calls to the
EC2 metadata service (169.254.169.254) fail at once and nothing leaves the
machine. It serves a farm, submits a job with a job environment and three
tasks, starts the agent (the recipe of the reference study, §9.3), waits for the
job, SIGTERMs the agent (which then reports ``STOPPING``, a last schedule update
and ``STOPPED``, and exits), and prints one JSON object: the job's status and
counts, the operations the agent called, and the session log.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from agent.mockfarm import FarmConfig, open_mock_farm

TEMPLATE = {
    "specificationVersion": "jobtemplate-2023-09",
    "name": "Official agent job",
    "parameterDefinitions": [{"name": "Greeting", "type": "STRING", "default": "hello"}],
    "jobEnvironments": [
        {
            "name": "Setup",
            "script": {
                "actions": {
                    "onEnter": {"command": "echo", "args": ["entering {{Param.Greeting}}"]},
                    "onExit": {"command": "echo", "args": ["leaving"]},
                }
            },
        }
    ],
    "steps": [
        {
            "name": "Say",
            "parameterSpace": {
                "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": "1-3"}]
            },
            "script": {
                "actions": {
                    "onRun": {
                        "command": "echo",
                        "args": ["{{Param.Greeting}} frame {{Task.Param.Frame}}"],
                    }
                }
            },
        }
    ],
}


async def main(agent: str, workdir: Path, *, pickup: bool = False) -> dict[str, Any]:
    """``pickup``: the service's 15 s interval, and the job submitted only once the
    agent is idle and its UpdateWorkerSchedule is held (the farm's long poll); the
    report then says how the job reached it."""
    for name in ("logs", "persist", "sessions"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    interval = 15 if pickup else 1
    config = FarmConfig(update_interval_seconds=interval, worker_timeout_seconds=60)
    async with open_mock_farm(config=config) as farm:
        job_id = "" if pickup else farm.create_job(TEMPLATE)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            **farm.environ(),
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        argv = [
            agent,
            "--farm-id",
            farm.farm_id,
            "--fleet-id",
            farm.fleet_id,
            "--run-jobs-as-agent-user",
            "--no-shutdown",
            "--logs-dir",
            str(workdir / "logs"),
            "--persistence-dir",
            str(workdir / "persist"),
            "--session-root-dir",
            str(workdir / "sessions"),
        ]
        result: dict[str, Any] = {"job_id": job_id}
        output = workdir / "agent-output.log"
        with output.open("wb") as sink:
            process = await trio.lowlevel.open_process(
                argv, env=env, stdout=sink, stderr=sink, stdin=None
            )
            try:
                with trio.move_on_after(90) as waited:
                    if pickup:
                        await farm.wait_until(lambda: farm.app.held_calls > 0)
                        created = trio.current_time()
                        job_id = result["job_id"] = farm.create_job(TEMPLATE)
                        await farm.wait_until(lambda: bool(farm.job(job_id).sessions))
                        result["pickup"] = {
                            "seconds": trio.current_time() - created,
                            # Calls that came after the job: none, if a held call took it.
                            "calls_after_submit": [
                                c.operation
                                for c in farm.calls_to("UpdateWorkerSchedule")
                                if c.time >= created
                            ],
                        }
                    result["job_status"] = await farm.wait_for_job(job_id)
                    # ...and for the environment exit that ends the session.
                    await farm.wait_until(
                        lambda: all(
                            s.lifecycle_status == "ENDED" for s in farm.job(job_id).sessions
                        )
                    )
                result["timed_out"] = waited.cancelled_caught
                job = farm.job(job_id)
                result["counts"] = {k: v for k, v in job.task_counts.items() if v}
                # The worker-initiated shutdown: SIGTERM makes the agent report
                # STOPPING, a last UpdateWorkerSchedule and STOPPED, then exit.
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(30):
                    await process.wait()
                workers = list(farm.state.workers.values())
                result["worker_status"] = workers[0].status if workers else None
            finally:
                with trio.move_on_after(20) as cleanup:
                    cleanup.shield = True
                    if process.returncode is None:
                        process.send_signal(signal.SIGTERM)
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        result["agent_exit"] = process.returncode
        result["operations"] = [call.operation for call in farm.calls]
        result["errors"] = [
            f"{call.operation}: {call.error}" for call in farm.calls if call.error is not None
        ]
        result["session_log"] = [
            line for session in farm.state.sessions for line in farm.session_log(session)
        ]
        result["actions"] = [
            (action.kind, action.status)
            for session in farm.state.sessions.values()
            for action in session.actions
        ]
        result["agent_output_tail"] = output.read_text(errors="replace")[-4000:]
        return result


if __name__ == "__main__":
    # stdout carries the report; the farm's own log goes to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    report = trio.run(
        partial(main, sys.argv[1], Path(sys.argv[2]), pickup="--pickup" in sys.argv[3:])
    )
    print(json.dumps(report))
