"""Parameter spaces of any size (issue 19): the direct path enumerates tasks as it
reaches them; a farm refuses a step past Deadline Cloud's quota, naming it."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore.exceptions
import trio

from actors import ExitEnvironment, RunTask
from agent.mockfarm import FarmConfig, MockFarm, open_mock_farm
from tests.session_harness import env, job, plan, py, step

ROOT = Path(__file__).resolve().parents[3]
HUGE = 100_000_000


def _huge_job(frames: str = f"1-{HUGE}", code: str = "import sys; sys.exit(3)") -> dict[str, Any]:
    return job(
        step(
            "S",
            py(f"print('frame {{{{Task.Param.F}}}}'); {code}"),
            parameterSpace={
                "taskParameterDefinitions": [{"name": "F", "type": "INT", "range": frames}]
            },
        ),
        jobEnvironments=[env("E", py("print('enter')"), py("print('exit')"))],
    )


def test_a_plan_of_a_hundred_million_tasks_is_made_as_it_is_read(tmp_path: Path) -> None:
    lp = plan(tmp_path, _huge_job())
    assert lp.task_count == HUGE and lp.step_task_counts == {"S": HUGE}
    assert len(lp.actions) == HUGE + 2
    first, last = lp.actions[1], lp.actions[-2]
    assert isinstance(first, RunTask) and isinstance(last, RunTask)
    assert first.parameters["F"].value == "1" and last.parameters["F"].value == str(HUGE)
    assert (first.action_id, last.action_id) == ("action-2", f"action-{HUGE + 1}")
    [exit_] = lp.actions.iter_from(2, exits_only=True)
    assert isinstance(exit_, ExitEnvironment)


def _limit_memory() -> None:
    # Enough for the agent; a plan that held 10**8 tasks would need tens of GB.
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_limit_memory,
    )


def test_run_direct_starts_a_hundred_million_tasks_at_once(tmp_path: Path) -> None:
    """The first task runs (and fails: the rest are never attempted), within a fixed
    memory bound."""
    path = tmp_path / "job.json"
    path.write_text(json.dumps(_huge_job()))
    result = agent("run", str(path), "--output", "jsonl", "--direct")
    assert result.returncode == 1, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    lines = [e["line"] for e in events if e["event"] == "output"]
    assert lines == ["enter", "frame 1", "exit"]
    assert events[-1]["actions"] == {"SUCCESS": 2, "FAILED": 1, "NEVER_ATTEMPTED": HUGE - 1}


def test_run_through_the_farm_refuses_a_job_past_the_quotas_naming_them(tmp_path: Path) -> None:
    """As a farm would: one line naming the quota and what to do instead, exit 2, and no
    task started (the default path goes through the embedded farm)."""
    path = tmp_path / "job.json"
    path.write_text(json.dumps(_huge_job()))
    result = agent("run", str(path), "--output", "jsonl")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == ""
    assert result.stderr == (
        "error: step 'S' has 100,000,000 tasks, and Deadline Cloud's quota 'Tasks per step' "
        "allows 10,000: a farm refuses such a job (--direct runs it here, one task at a "
        "time, or --maximum-tasks N runs the first N)\n"
    )


def test_maximum_tasks_takes_the_first_of_a_huge_space(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(_huge_job(code="pass")))
    result = agent("run", str(path), "--maximum-tasks", "3", "--output", "jsonl")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    output = [e["line"] for e in lines if e["event"] == "output"]
    assert output == ["enter", "frame 1", "frame 2", "frame 3", "exit"]
    assert "note" not in result.stderr  # three tasks: through the farm


async def test_the_farm_refuses_a_step_past_the_tasks_per_step_quota() -> None:
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=1)) as farm:
        deadline = farm.boto3_client("deadline")

        def create(frames: str) -> dict[str, Any]:
            try:
                return dict(
                    deadline.create_job(
                        farmId=farm.farm_id,
                        queueId=farm.queue_id,
                        template=json.dumps(_huge_job(frames)),
                        templateType="JSON",
                        priority=1,
                    )
                )
            except botocore.exceptions.ClientError as exc:
                return dict(exc.response)

        with trio.fail_after(60):
            refused = await trio.to_thread.run_sync(create, f"1-{HUGE}")
            accepted = await trio.to_thread.run_sync(create, "1-10000")
        assert refused["Error"]["Code"] == "ServiceQuotaExceededException"
        assert refused["ResponseMetadata"]["HTTPStatusCode"] == 402
        assert refused["quotaCode"] == "L-3DE82FE6"
        assert "'Tasks per step' allows 10,000" in refused["Error"]["Message"]
        assert accepted["jobId"].startswith("job-")
        assert isinstance(farm, MockFarm)
