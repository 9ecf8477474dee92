"""The official ``deadline`` CLI (a test dependency) against the mock farm.

Everything runs in a network namespace with only loopback (``unshare -rn``):
the farm, a farmhand worker, and each CLI command, with the CLI's config in a
temporary HOME and telemetry off (``tests/mockfarm_cli.py`` does the work and
reports one JSON object).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _namespace_works() -> str | None:
    """Why the test cannot run here (``None``: it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    if shutil.which("deadline", path=str(Path(sys.executable).parent)) is None:
        return "the deadline CLI is not installed (pip install -e '.[test]')"
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return f"unshare -rn is not allowed here: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = _namespace_works()
    if reason is not None:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("cli")
    command = f"ip link set lo up; exec {sys.executable} -m tests.mockfarm_cli {workdir}"
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", command],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def _ok(report: dict[str, Any], name: str) -> str:
    result = report["results"][name]
    assert result["rc"] == 0, f"deadline {name}: {result['stderr'][-2000:]}"
    return str(result["stdout"])


def test_farm_queue_fleet_and_worker_lists(report: dict[str, Any]) -> None:
    assert report["farm_id"] in _ok(report, "farm list")
    assert report["queue_id"] in _ok(report, "queue list")
    assert report["fleet_id"] in _ok(report, "fleet list")
    workers = _ok(report, "worker list")
    assert [w for w in report["worker_ids"] if w in workers] == report["worker_ids"]


def test_job_list_and_get(report: dict[str, Any]) -> None:
    jobs = _ok(report, "job list")
    assert report["job_id"] in jobs and report["blocked_id"] in jobs
    job = _ok(report, "job get")
    assert f"jobId: {report['job_id']}" in job and "taskRunStatus: FAILED" in job


def test_work_no_fleet_can_run_is_not_compatible_with_its_reason(report: dict[str, Any]) -> None:
    blocked = _ok(report, "blocked job get")
    assert "taskRunStatus: NOT_COMPATIBLE" in blocked
    flat = " ".join(blocked.split())
    assert "attr.worker.os.family" in flat and report["fleet_id"] in flat


def test_logs_of_a_fast_failing_action_have_every_line(report: dict[str, Any]) -> None:
    """--session-action-id reads up to the action's endedAt: nothing at the end is lost."""
    logs = json.loads(_ok(report, "job logs"))
    messages = [event["message"] for event in logs["events"]]
    session_log = report["session_log"]
    start = next(i for i, line in enumerate(session_log) if line.startswith("==== task_run"))
    assert messages == session_log[start:]
    assert "giving up: the scene is missing" in messages
    assert messages[-1].endswith("ended: FAILED, exit code 3 ====")


def test_trace_schedule(report: dict[str, Any]) -> None:
    assert "Session Action Count: 1" in _ok(report, "trace-schedule")
    events = report["trace"]["traceEvents"]
    assert any(e.get("args", {}).get("sessionActionId") == report["action_id"] for e in events)


def test_queue_export_credentials(report: dict[str, Any]) -> None:
    credentials = json.loads(_ok(report, "export-credentials"))
    assert credentials["Version"] == 1
    assert credentials["AccessKeyId"].startswith("ASIA")
    assert credentials["SecretAccessKey"] and credentials["SessionToken"]


def _after(report: dict[str, Any], name: str) -> str:
    result = report["after"][name]
    assert result["rc"] == 0, f"deadline {name} after the restart: {result['stderr'][-2000:]}"
    return str(result["stdout"])


def test_a_restarted_farm_shows_the_same_ids_jobs_and_logs(report: dict[str, Any]) -> None:
    """After `mockfarm serve`'s state dir is served again, the CLI reads what it read
    before: the same farm, queue, fleet, jobs and the action's every log line."""
    for name in ("farm list", "queue list", "fleet list", "job get", "blocked job get"):
        assert _after(report, name) == _ok(report, name), name
    assert json.loads(_after(report, "job logs")) == json.loads(_ok(report, "job logs"))
    jobs = _after(report, "job list")
    assert report["job_id"] in jobs and report["blocked_id"] in jobs
    assert report["after_id"] in jobs


def test_the_worker_kept_working_across_the_restart(report: dict[str, Any]) -> None:
    """The worker that ran before the restart (no restart of its own) runs the job
    submitted after it, and the CLI lists the same worker."""
    assert report["after_status"] == "SUCCEEDED"
    assert report["after_worker_id"] == report["worker_id"]
    assert report["worker_ids"] == [report["worker_id"]]
    assert report["worker_id"] in _after(report, "worker list")
