"""What the worker runs: command templates, the docker command line, GPUs and cleanup.

A fake ``docker`` on PATH records how it was called and answers as Docker would
(the command lines and Docker's own refusals); tests/contrib/httpqueue/test_containers.py
runs real containers with Podman.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from actors import UnsafePathError
from agent.jobs import JobOutcome, JobRun, JobSpec, JobStatus, OutputSink
from contrib.httpqueue import JobOffer
from contrib.httpqueue._protocol import UnsafeJobId
from contrib.httpqueue._workload import (
    ContainerWorkload,
    JobContext,
    ProcessWorkload,
    TemplateFieldError,
    check_template,
    fill,
)

FAKE_DOCKER = """#!{python}
import json, os, sys, time
args = sys.argv[1:]
if args == ["--version"]:
    print("Docker version 24.0.7, build afdd53b")
    sys.exit(0)
if args == ["info"]:  # the worker's start-up check
    if os.environ.get("FAKE_DOCKER_NO_DAEMON"):
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
              "Is the docker daemon running?", file=sys.stderr)
        sys.exit(1)
    print("Server Version: 24.0.7")
    sys.exit(0)
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[0] == "rm":
    print("Error response from daemon: No such container: " + args[-1], file=sys.stderr)
    sys.exit(1)
if "--gpus" in args and os.environ.get("FAKE_DOCKER_NO_GPUS"):
    print('docker: Error response from daemon: could not select device driver "" '
          'with capabilities: [[gpu]].', file=sys.stderr)
    sys.exit(125)
print("container says: " + " ".join(args[args.index(os.environ.get("FAKE_IMAGE", "img:1")) + 1:]), flush=True)
if os.environ.get("FAKE_DOCKER_SLEEP"):
    print("ready", flush=True)
    time.sleep(600)
sys.exit(int(os.environ.get("FAKE_DOCKER_EXIT", "0")))
"""


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = trio.Event()

    def write(self, lines: Sequence[str]) -> None:
        self.lines.extend(lines)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, text: str) -> None:
        while text not in self.lines:
            await self._changed.wait()


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake `docker` first on PATH; returns the file it records its calls in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER.format(python=sys.executable))
    script.chmod(0o755)
    calls = tmp_path / "docker-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(calls))
    return calls


def docker_calls(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def context(tmp_path: Path, job_id: str = "job-1", log: OutputSink | None = None) -> JobContext:
    shared = tmp_path / "shared"
    (shared / "jobs" / job_id).mkdir(parents=True, exist_ok=True)
    offer = JobOffer(job_id, "train", str(shared / "cfg.yaml"))
    return JobContext(offer, shared, "w1", log=log)


def executor(log: Log, runs: list[JobRun] | None = None):
    async def execute(spec: JobSpec, sinks: Sequence[OutputSink]) -> JobOutcome:
        run = JobRun(spec, sinks=[log, *sinks], grace=5)
        if runs is not None:
            runs.append(run)
        return await run.run()

    return execute


# ------------------------------------------------------------------ templates


def test_templates_fill_known_fields_and_literal_braces() -> None:
    """{field}s are filled in; {{ and }} are braces; nothing else is touched."""
    values = {"job_id": "j1", "config_path": "/c.yaml"}
    assert (
        fill("--job_id={job_id} {{x}} $HOME {config_path}", values)
        == "--job_id=j1 {x} $HOME /c.yaml"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{jobid}", "unknown field {jobid}"),
        ("{job_id.__class__}", "unknown field"),
        ("{0}", "unknown field {0}"),
        ("a { b", "a lone '{'"),
        ("b } c", "a lone '}'"),
    ],
)
def test_a_bad_template_is_refused_with_the_fields_named(text: str, message: str) -> None:
    """Only the documented fields exist; a typo is an error at startup, not at the first job."""
    with pytest.raises(TemplateFieldError, match=message.replace("{", r"\{").replace("}", r"\}")):
        check_template(text)


def test_process_argv_and_environment(tmp_path: Path) -> None:
    """Process mode splits the command like a shell and fills every argument."""
    workload = ProcessWorkload.from_text(
        "python train.py --config '{config_path}' --out {job_dir}/out"
    )
    job = context(tmp_path)
    assert workload.argv(job) == [
        "python",
        "train.py",
        "--config",
        job.offer.config_path,
        "--out",
        f"{job.job_dir}/out",
    ]
    assert job.env()["JOB_ID"] == "job-1" and job.env()["CONFIG_PATH"] == job.offer.config_path
    assert job.log_path == job.job_dir / "logs" / "job-1.log"


# ------------------------------------------------------------------ docker


def test_the_docker_command_line(tmp_path: Path) -> None:
    """Shared dir at the same path, --job_id passed, GPUs when asked, options before the image."""
    workload = ContainerWorkload(
        "img:1",
        docker_args=["--shm-size", "8g"],
        container_args=["--job_id", "{job_id}", "--config", "{config_path}"],
    )
    job = context(tmp_path, "Job_1.odd-id")
    shared = str(job.shared_dir)
    argv = workload.argv(job, gpus=True)
    env_args = [arg for name, value in job.env().items() for arg in ("-e", f"{name}={value}")]
    assert argv == [
        "docker",
        "run",
        "--rm",
        "--name",
        "farmhand-Job_1.odd-id",
        "--label",
        "farmhand.job_id=Job_1.odd-id",
        "-v",
        f"{shared}:{shared}",
        "-w",
        str(job.job_dir),
        *env_args,
        "--gpus",
        "all",
        "--shm-size",
        "8g",
        "img:1",
        "--job_id",
        "Job_1.odd-id",
        "--config",
        job.offer.config_path,
    ]
    assert "--gpus" not in workload.argv(job, gpus=False)


@pytest.mark.parametrize("job_id", ["job/odd:id", "../../../../tmp/x", "..", ".x", "a" * 129])
def test_a_job_id_that_is_not_a_safe_id_names_no_directory(tmp_path: Path, job_id: str) -> None:
    """Ids from the server are checked when the job is read and before any path is built."""
    with pytest.raises(UnsafeJobId, match="is not a safe id") as caught:
        JobOffer.from_api({"job_id": job_id, "config_path": "c"})
    assert caught.value.job_id == job_id
    job = JobContext(JobOffer(job_id, "train", "c"), tmp_path / "shared", "w1")
    with pytest.raises(UnsafePathError, match="is not a safe id"):
        job.job_dir  # noqa: B018


async def test_a_container_job_runs_through_docker(tmp_path: Path, fake_docker: Path) -> None:
    """The job runs `docker run` and streams what the container prints."""
    log = Log()
    workload = ContainerWorkload("img:1", gpus=False)
    outcome = await workload.run(context(tmp_path, log=log), executor(log))
    assert outcome.status is JobStatus.SUCCEEDED
    assert "container says: --job_id job-1" in log.lines
    [call] = docker_calls(fake_docker)
    assert call[:2] == ["run", "--rm"] and "--gpus" not in call


async def test_docker_refusing_gpus_runs_the_job_again_without(
    tmp_path: Path, fake_docker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 125 with Docker's GPU error: the same job again without --gpus, and no later job asks."""
    monkeypatch.setenv("FAKE_DOCKER_NO_GPUS", "1")
    log = Log()
    workload = ContainerWorkload("img:1", gpus=True)
    first = await workload.run(context(tmp_path, log=log), executor(log))
    assert first.status is JobStatus.SUCCEEDED
    assert workload.gpus is False
    calls = docker_calls(fake_docker)
    assert ["--gpus" in call for call in calls] == [True, False]
    assert any("could not select device driver" in line for line in log.lines)
    assert any("running the job again without --gpus" in line for line in log.lines)
    await workload.run(context(tmp_path, "job-2", log=log), executor(log))
    assert ["--gpus" in call for call in docker_calls(fake_docker)] == [True, False, False]


async def test_other_docker_failures_are_not_retried(
    tmp_path: Path, fake_docker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 125 that is not about GPUs (a bad image, say) fails the job, once."""
    monkeypatch.setenv("FAKE_DOCKER_EXIT", "125")
    log = Log()
    workload = ContainerWorkload("img:1", gpus=True)
    outcome = await workload.run(context(tmp_path, log=log), executor(log))
    assert (outcome.status, outcome.exit_code) == (JobStatus.FAILED, 125)
    assert len(docker_calls(fake_docker)) == 1 and workload.gpus is True


async def test_a_stopped_container_job_removes_its_container(
    tmp_path: Path, fake_docker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping the docker client leaves the container; the worker removes it (docker rm -f)."""
    monkeypatch.setenv("FAKE_DOCKER_SLEEP", "1")
    log = Log()
    runs: list[JobRun] = []
    workload = ContainerWorkload("img:1")
    job = context(tmp_path, log=log)
    async with trio.open_nursery() as nursery:
        done: list[JobOutcome] = []

        async def run() -> None:
            done.append(await workload.run(job, executor(log, runs)))

        nursery.start_soon(run)
        await log.wait_for("ready")
        runs[0].cancel(grace=0, reason="canceled on the server")
    assert done[0].status is JobStatus.CANCELED
    calls = docker_calls(fake_docker)
    assert calls[-1] == ["rm", "-f", "farmhand-job-1"]
    assert "[farmhand] removed container farmhand-job-1" in log.lines


@pytest.mark.parametrize(
    "command",
    [
        "cat {config_path}",
        "prog --config={config_path} --name {job_name} --out {job_dir}/out",
        "sh -c 'cat \"$1\"' sh {config_path}",
        "sh -c 'make -C {job_dir} JOB={worker_id}'",
        "sh {config_path}",
        "env A=1 python3 run.py {config_path}",
    ],
)
def test_commands_that_pass_job_fields_as_whole_arguments_are_accepted(command: str) -> None:
    """Fields as arguments of their own, or the worker's own fields in code, are safe."""
    ProcessWorkload.from_text(command)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ('sh -c "echo job {job_id} reads {config_path}"', "inside a longer argument"),
        ("prog x{config_path}", "inside a longer argument"),
        ("prog --name='run {job_name}'", "inside a longer argument"),
        ("sh -c {config_path}", "would run a job's field as code"),
        ("bash -lc {job_id}", "would run a job's field as code"),
        ("env -i A=1 /bin/dash -c {job_name}", "would run a job's field as code"),
        ("busybox sh -c {config_path}", "would run a job's field as code"),
        ("/usr/bin/python3 -c {config_path}", "would run a job's field as code"),
        ("perl -e {config_path}", "would run a job's field as code"),
        ("node --eval {job_id}", "would run a job's field as code"),
    ],
)
def test_commands_that_could_run_a_job_field_as_code_are_refused(
    command: str, message: str
) -> None:
    """A worker configured so refuses to start, saying why."""
    with pytest.raises(TemplateFieldError, match=message):
        ProcessWorkload.from_text(command)
    with pytest.raises(TemplateFieldError, match=message):
        ContainerWorkload("img", container_args=shlex.split(command))
