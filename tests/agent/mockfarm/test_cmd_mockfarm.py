"""``python -m agent mockfarm``: serve, submit, status, cancel, logs, faults, stop-worker."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import yaml

from agent.mockfarm import FarmConfig, MockFarm, _cmd_mockfarm, open_mock_farm
from tests.mockfarm_helpers import ScriptedWorker, job_template

ROOT = Path(__file__).resolve().parents[3]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent mockfarm")
    _cmd_mockfarm.configure(parser)
    return parser.parse_args(list(argv))


async def run_cli(*argv: str) -> int:
    """Run a client command in a thread (it blocks on HTTP) against a farm on this loop."""
    return await trio.to_thread.run_sync(_cmd_mockfarm.main, parse(*argv))


@pytest.fixture
async def farm() -> AsyncIterator[MockFarm]:
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=1)) as farm:
        yield farm


@pytest.fixture
def template_file(tmp_path: Path) -> Path:
    template = job_template(frames="1-2", job_environments=0)
    template["parameterDefinitions"].append({"name": "Count", "type": "INT", "default": 1})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(template))
    return path


async def test_submit_types_parameters_from_the_template(
    farm: MockFarm, template_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """submit sends -p values typed by the template's definitions and prints the job id."""
    status = await run_cli(
        "submit", str(template_file), "-p", "Frames=1-4", "-p", "Count=3",
        "--priority", "70", "--endpoint", farm.endpoint_url,
    )  # fmt: skip
    assert status == 0
    job_id = capsys.readouterr().out.splitlines()[-1]
    job = farm.job(job_id)
    assert job.parameters == {"Frames": {"string": "1-4"}, "Count": {"int": "3"}}
    assert job.priority == 70
    assert len(job.steps[0].tasks) == 4
    assert farm.calls.to("CreateJob")[0].input["parameters"]["Count"] == {"int": "3"}


async def test_submit_reports_a_bad_parameter_as_a_usage_error(
    farm: MockFarm, template_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A parameter the template does not define is exit status 2 with the farm's message."""
    status = await run_cli(
        "submit", str(template_file), "-p", "Nope=1", "--endpoint", farm.endpoint_url
    )
    assert status == 2
    assert "ValidationException" in capsys.readouterr().err
    assert not farm.state.jobs


async def test_status_cancel_and_logs(farm: MockFarm, capsys: pytest.CaptureFixture[str]) -> None:
    """status lists jobs and workers; cancel cancels; logs prints each session's log."""
    job_id = farm.create_job(job_template(frames="1-2", job_environments=0))
    deadline = farm.boto3_client("deadline")
    worker = ScriptedWorker(deadline, farm.farm_id, farm.fleet_id)
    await trio.to_thread.run_sync(worker.start)
    response = await trio.to_thread.run_sync(worker.sync)
    [(session_id, _)] = response["assignedSessions"].items()
    session = farm.state.sessions[session_id]
    stamp = int(datetime.now(UTC).timestamp() * 1000)
    farm.logs.put_log_events(
        {
            "logGroupName": session.log_group_name,
            "logStreamName": session_id,
            "logEvents": [{"timestamp": stamp, "message": "rendering frame 1"}],
        }
    )
    endpoint = ("--endpoint", farm.endpoint_url)
    assert await run_cli("status", *endpoint) == 0
    listing = capsys.readouterr().out
    assert job_id in listing and "0/2 succeeded" in listing and worker.worker_id in listing
    assert await run_cli("status", job_id, *endpoint) == 0
    assert "step Render" in capsys.readouterr().out
    assert await run_cli("logs", job_id, *endpoint) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"== {session_id} on {worker.worker_id} ==",
        "rendering frame 1",
    ]
    assert await run_cli("cancel", job_id, *endpoint) == 0
    assert farm.job(job_id).target_status == "CANCELED"
    assert await run_cli("stop-worker", worker.worker_id, *endpoint) == 0
    assert farm.worker(worker.worker_id).stop_requested
    assert await run_cli("status", "job-" + "0" * 32, *endpoint) == 1
    assert "ResourceNotFoundException" in capsys.readouterr().err


async def test_faults_command_shows_and_replaces_the_config(
    farm: MockFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """faults FILE replaces the running farm's fault config; faults prints it."""
    path = tmp_path / "faults.yaml"
    path.write_text(
        yaml.safe_dump({"seed": 7, "operations": {"UpdateWorkerSchedule": {"throttle_rate": 0.5}}})
    )
    assert await run_cli("faults", str(path), "--endpoint", farm.endpoint_url) == 0
    assert farm.faults.seed == 7
    assert farm.faults.for_operation("UpdateWorkerSchedule").throttle_rate == 0.5
    capsys.readouterr()
    assert await run_cli("faults", "--endpoint", farm.endpoint_url) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 7
    path.write_text(yaml.safe_dump({"default": {"throttle_rate": 3}}))
    assert await run_cli("faults", str(path), "--endpoint", farm.endpoint_url) == 2
    assert "throttle_rate" in capsys.readouterr().err


async def test_client_commands_explain_a_missing_farm(capsys: pytest.CaptureFixture[str]) -> None:
    """With nothing listening, a client command fails with one clear line."""
    assert await run_cli("status", "--endpoint", "http://127.0.0.1:9") == 1
    assert capsys.readouterr().err.startswith("error: no mock farm at http://127.0.0.1:9")


async def _printed_setup_works(printed: str) -> None:
    """The exports serve prints are all a fresh boto3 needs, and the deadline CLI lines
    name the default farm and queue."""
    exports = dict(
        line.strip().removeprefix("export ").split("=", 1)
        for line in printed.splitlines()
        if line.strip().startswith("export ")
    )
    farm_id = printed.split("farm  ")[1].split()[0]
    queue_id = printed.split("queue ")[1].split()[0]
    assert f"deadline config set defaults.farm_id {farm_id}" in printed
    assert f"deadline config set defaults.queue_id {queue_id}" in printed
    assert "disable_host_prefix_injection = true" in printed
    code = (
        "import boto3; d = boto3.client('deadline'); "
        "print(d.list_farms()['farms'][0]['farmId']); "
        "print(boto3.client('logs').describe_log_groups()['logGroups'] is not None)"
    )
    env = {
        "PATH": os.environ["PATH"],
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        **exports,
    }
    result = await trio.run_process(
        [sys.executable, "-c", code], env=env, capture_stdout=True, capture_stderr=True
    )
    assert result.stdout.decode().split() == [farm_id, "True"]


async def test_serve_runs_until_sigterm_and_reloads_faults_on_sighup(tmp_path: Path) -> None:
    """serve prints its endpoint and ids, re-reads --faults on SIGHUP, exits 0 on SIGTERM."""
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"seed": 1}))
    argv = [
        sys.executable, "-m", "agent", "mockfarm", "serve",
        "--port", "0", "--faults", str(faults), "--update-interval", "1",
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(30):
            while b"\nready: " not in output:  # the last line serve prints
                output += await process.stdout.receive_some()
            endpoint = output.decode().split("listening on ")[1].split()[0]
            assert "farm  farm-" in output.decode() and "queue queue-" in output.decode()
            # The monitor page is served by default, read-only.
            assert f"monitor: {endpoint}/monitor (read-only)\n" in output.decode()
            overview = await trio.to_thread.run_sync(
                lambda: __import__("httpx").get(f"{endpoint}/monitor/api/overview").json()
            )
            assert overview["actionsAllowed"] is False
            await _printed_setup_works(output.decode())
            faults.write_text(json.dumps({"seed": 2}))
            process.send_signal(signal.SIGHUP)
            while b"faults reloaded" not in output:
                output += await process.stdout.receive_some()
            seed = await trio.to_thread.run_sync(
                lambda: __import__("httpx").get(f"{endpoint}/_mockfarm/faults").json()["seed"]
            )
            assert seed == 2
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stdout.receive_some():
                output += chunk
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert output.decode().rstrip().endswith("shutting down")


async def test_serve_reports_a_port_in_use(farm: MockFarm) -> None:
    """serve on a port already taken exits 1 with one line."""
    port = farm.endpoint_url.rsplit(":", 1)[1]
    result = await trio.run_process(
        [sys.executable, "-m", "agent", "mockfarm", "serve", "--port", port],
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().startswith(f"error: cannot serve on 127.0.0.1:{port}")


async def test_serve_serves_s3_for_job_attachments() -> None:
    """serve starts moto's S3 beside the farm: the default queue has jobAttachmentSettings,
    the bucket exists, and the exports point clients at it."""
    argv = [sys.executable, "-m", "agent", "mockfarm", "serve", "--port", "0"]
    process = await trio.lowlevel.open_process(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(30):
            while b"\nready: " not in output:  # the last line serve prints
                output += await process.stdout.receive_some()
            text = output.decode()
            s3 = text.split("export AWS_ENDPOINT_URL_S3=")[1].split()[0]
            assert f"job attachments: s3://farmhand-job-attachments/DeadlineCloud at {s3}" in text
            endpoint = text.split("listening on ")[1].split()[0]
            queue_id = text.split("queue ")[1].split()[0]
            farm_id = text.split("farm  ")[1].split()[0]

            def check() -> dict[str, str]:
                from agent.attachments import make_s3_client
                from agent.mockfarm import make_client

                credentials = {"accessKeyId": "x", "secretAccessKey": "x"}
                make_s3_client(endpoint_url=s3, credentials=credentials).head_bucket(
                    Bucket="farmhand-job-attachments"
                )
                deadline = make_client("deadline", endpoint)
                queue = deadline.get_queue(farmId=farm_id, queueId=queue_id)
                return dict(queue["jobAttachmentSettings"])

            settings = await trio.to_thread.run_sync(check)
            assert settings == {
                "s3BucketName": "farmhand-job-attachments",
                "rootPrefix": "DeadlineCloud",
            }
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _submit_and_wait(farm: MockFarm, template: Path, *, terminal: bool) -> tuple[int, str]:
    """``submit --wait`` in a child, stderr on a terminal (a pty) or a pipe; once it has
    polled twice (and, on a terminal, shown its line) the job is canceled. Its exit
    status and stderr."""
    argv = [sys.executable, "-m", "agent", "mockfarm", "submit", str(template), "--wait"]
    argv += ["--endpoint", farm.endpoint_url]
    master, slave = os.openpty() if terminal else (-1, subprocess.PIPE)
    process = await trio.lowlevel.open_process(
        argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave
    )
    seen = b""
    try:
        if terminal:
            os.close(slave)
            with trio.fail_after(60):
                while b"[farmhand] waiting" not in seen:
                    # A blocking read of the pty; abandoned only if the child never writes.
                    seen += await trio.to_thread.run_sync(
                        os.read, master, 4096, abandon_on_cancel=True
                    )
        assert process.stdout is not None
        printed = b""
        with trio.fail_after(60):
            while not printed.endswith(b"\n"):
                printed += await process.stdout.receive_some(1)
            job_id = printed.decode().strip()
            await farm.wait_until(
                lambda: sum(c.input["jobId"] == job_id for c in farm.calls.to("GetJob")) >= 2
            )
        farm.cancel_job(job_id)
        with trio.fail_after(60):
            status = await process.wait()
        if terminal:
            while chunk := await trio.to_thread.run_sync(_read_rest, master):
                seen += chunk
        else:
            assert process.stderr is not None
            while piped := await process.stderr.receive_some():
                seen += piped
    finally:
        if process.returncode is None:
            process.kill()
        if terminal:
            os.close(master)
    return status, seen.decode()


def _read_rest(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the child has gone and closed the pty
        return b""


async def test_submit_wait_shows_progress_on_a_terminal_only(
    farm: MockFarm, template_file: Path
) -> None:
    """`submit --wait` shows where the job stands on one stderr line while it waits
    on a terminal (issue 17), and writes nothing there when stderr is a pipe."""
    status, shown = await _submit_and_wait(farm, template_file, terminal=True)
    assert status == 1  # CANCELED
    assert "\r\x1b[K[farmhand] waiting for the job: READY, 0 of 2 tasks succeeded, 0 s" in shown
    assert shown.endswith("\r\x1b[K")  # cleared before the final status
    status, piped = await _submit_and_wait(farm, template_file, terminal=False)
    assert status == 1
    assert piped == ""
