"""The official deadline-worker-agent runs a job against the mock farm, unchanged.

Nothing is installed at test time: the agent is used if a virtual environment
holds it (``.venv-official``, created by ``.ci/run`` with
``python3 -m venv .venv-official && .venv-official/bin/pip install
deadline-cloud-worker-agent==0.33.6``), or ``FARMHAND_OFFICIAL_AGENT`` names its
executable. The farm and the agent run together inside a network namespace that
has nothing but loopback (``unshare -rn``): the agent's hard-coded calls to the
EC2 metadata service cannot leave the machine, and neither can anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parents[3]


def _agent() -> Path | None:
    explicit = os.environ.get("FARMHAND_OFFICIAL_AGENT")
    candidate = (
        Path(explicit) if explicit else ROOT / ".venv-official" / "bin" / "deadline-worker-agent"
    )
    return candidate if candidate.is_file() else None


def _loopback_namespace_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, check=False
    )
    return probe.returncode == 0


AGENT = _agent()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        AGENT is None,
        reason="the official agent is not installed (.venv-official or FARMHAND_OFFICIAL_AGENT)",
    ),
    pytest.mark.skipif(
        not _loopback_namespace_works(),
        reason="cannot create a loopback-only network namespace (unshare -rn)",
    ),
]


async def test_the_official_agent_runs_a_job_to_completion(tmp_path: Path) -> None:
    """deadline-worker-agent 0.33.6 bootstraps, runs a job, ships logs and stops cleanly."""
    assert AGENT is not None
    argv = [
        "unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
        sys.executable, "-m", "tests.mockfarm_official", str(AGENT), str(tmp_path),
    ]  # fmt: skip
    with trio.fail_after(150):
        done = await trio.run_process(
            argv, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    tail = report["agent_output_tail"]
    assert report["job_status"] == "SUCCEEDED", tail
    assert report["counts"] == {"SUCCEEDED": 3}
    assert report["actions"] == [
        ["envEnter", "SUCCEEDED"],
        ["taskRun", "SUCCEEDED"],
        ["taskRun", "SUCCEEDED"],
        ["taskRun", "SUCCEEDED"],
        ["envExit", "SUCCEEDED"],
    ]
    assert report["errors"] == [], tail
    assert report["operations"][:4] == [
        "CreateWorker",
        "AssumeFleetRoleForWorker",
        "UpdateWorker",
        "UpdateWorkerSchedule",
    ]
    assert "BatchGetJobEntity" in report["operations"]
    assert "PutLogEvents" in report["operations"]
    assert (report["worker_status"], report["agent_exit"]) == ("STOPPED", 0), tail
    log = report["session_log"]
    for line in ("entering hello", "hello frame 1", "hello frame 2", "hello frame 3", "leaving"):
        assert line in log


async def test_the_official_agent_gets_new_work_through_a_held_call(tmp_path: Path) -> None:
    """At the service's 15 s interval, an idle official agent's UpdateWorkerSchedule is
    held by the farm (a long poll, a slow answer on the wire): a job submitted then
    reaches it in that very call, with no call of its own after the submission."""
    assert AGENT is not None
    argv = [
        "unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
        sys.executable, "-m", "tests.mockfarm_official", str(AGENT), str(tmp_path), "--pickup",
    ]  # fmt: skip
    with trio.fail_after(150):
        done = await trio.run_process(
            argv, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    tail = report["agent_output_tail"]
    assert report["pickup"]["calls_after_submit"] == [], report["pickup"]
    assert report["job_status"] == "SUCCEEDED", tail
    assert (report["worker_status"], report["agent_exit"]) == ("STOPPED", 0), tail
