"""A job never gets the worker's own AWS credentials: not by inheritance, not by reading
the agent (issue 19)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from actors import AGENT_CREDENTIAL_VARIABLES
from agent.mockfarm import FarmConfig, open_mock_farm
from agent.worker import _credenv
from tests.agent_process import PY, agent_process

SECRET = "mockfarm-secret"  # the worker's secret key in MockFarm.environ()

# Run as a task: print the AWS variables the job got, and whether the secret can be
# read from any ancestor process up to (not including) the agent.
SNOOP = """
import os, sys
agent = int(sys.argv[1])
print("aws vars:", sorted(k for k in os.environ if k.startswith("AWS_")))
print("secret in env:", any("mockfarm-secret" in v for v in os.environ.values()))
pid, found = os.getppid(), []
while pid not in (0, 1, agent):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if b"mockfarm-secret" in f.read():
                found.append(pid)
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        break
print("secret in ancestors:", found)
"""


def snoop_job(agent_pid: int) -> dict[str, object]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "snoop",
        "steps": [
            {
                "name": "Snoop",
                "script": {
                    "actions": {"onRun": {"command": PY, "args": ["-c", SNOOP, str(agent_pid)]}}
                },
            }
        ],
    }


async def test_a_job_of_a_queue_without_a_role_gets_none_of_the_workers_keys(
    tmp_path: Path,
) -> None:
    """--run-jobs-as-agent-user, no queue role: the worker signs with its keys, the job's
    environment has none of them, and no process between the agent and the job has them."""
    config = FarmConfig(update_interval_seconds=1)
    async with open_mock_farm(config=config) as farm, agent_process(farm, tmp_path) as agent:
        job_id = farm.create_job(snoop_job(agent.process.pid))

        def log_lines() -> list[str]:
            return [
                line
                for session in farm.state.sessions.values()
                for line in farm.session_log(session.session_id)
            ]

        with trio.fail_after(60):
            await farm.wait_for_job(job_id)
            await farm.wait_until(
                lambda: any(x.startswith("secret in ancestors") for x in log_lines())
            )
    lines = log_lines()
    assert farm.job(job_id).status == "SUCCEEDED"
    [aws_vars] = [line for line in lines if line.startswith("aws vars:")]
    assert not set(eval(aws_vars.split(":", 1)[1])) & AGENT_CREDENTIAL_VARIABLES
    assert "secret in env: False" in lines
    assert "secret in ancestors: []" in lines


def test_credential_variables_are_taken_out_of_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keys leave os.environ (no child inherits them) and sign from memory."""
    environ = {"AWS_ACCESS_KEY_ID": "AKIDX", "AWS_SECRET_ACCESS_KEY": "s3cret", "HOME": "/h"}
    monkeypatch.setattr(_credenv, "_taken", None)
    assert _credenv.take_from_environment(environ)
    assert environ == {"HOME": "/h"}
    credentials = _credenv.aws_session(None).get_credentials()
    assert (credentials.access_key, credentials.secret_key) == ("AKIDX", "s3cret")
    assert "s3cret" not in repr(_credenv._taken)


UNDUMPABLE = """
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "protect":
    from agent.worker import _credenv
    assert _credenv.make_undumpable()
reader = "import sys; open(f'/proc/{sys.argv[1]}/environ', 'rb').read(); print('read')"
result = subprocess.run([sys.executable, "-c", reader, str(os.getpid())],
                        capture_output=True, text=True)
print(result.stdout.strip() or result.stderr.strip().splitlines()[-1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
@pytest.mark.parametrize(("mode", "expected"), [("protect", "PermissionError"), ("open", "read")])
def test_a_process_of_the_same_user_cannot_read_the_agents_environment(
    mode: str, expected: str
) -> None:
    """After make_undumpable, another process of the agent's (non-root) user cannot open
    /proc/<agent>/environ; without it, it can."""
    args = ["-I", "-c", UNDUMPABLE, str(Path(__file__).resolve().parents[3]), mode]
    argv = [sys.executable, *args]
    if os.geteuid() == 0:
        # Root reads everything: run both sides as an ordinary user, with a Python that
        # user may run (the venv's may live under /root).
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to become an ordinary user")
        nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        for python in (sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"):
            spawn = "import subprocess, sys; subprocess.run([sys.executable, '-c', ''], check=True)"
            probe = subprocess.run([*nobody, python, "-c", spawn], capture_output=True, check=False)
            if probe.returncode == 0:
                argv = [*nobody, python, *args]
                break
        else:
            pytest.skip("no Python that an ordinary user may run")
    result = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    assert expected in result.stdout
