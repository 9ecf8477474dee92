"""Container mode with a real container runtime: Podman (runc, vfs storage) behind a
``docker`` script, an image made here from busybox, no network.

The recipe (what .ci/run installs as root): ``apt-get install podman runc
busybox-static``; a ``containers.conf`` with ``[containers] default_ulimits = []``
(a sandbox may forbid raising rlimits), named by ``CONTAINERS_CONF``; ``podman
--runtime runc --storage-driver vfs --cgroup-manager cgroupfs --events-backend
file``; the image ``podman import``-ed from a tar of ``/bin/busybox``, its applet
links and a ``/bin/job`` script. Where any of it cannot be had or cannot start a
container, these tests skip, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import attrs
import httpx
import pytest
import trio

from agent.jobs import LogFile
from contrib.httpqueue import Capabilities, JobServer, QueueWorker, WorkerConfig, open_job_server
from tests.httpqueue_harness import Paths, job_status, make_paths, running_worker, worker_config

FINAL = ("finished", "failed", "canceled", "stopped")
REPO = Path(__file__).resolve().parents[3]
IMAGE = "localhost/farmhand-busybox:test"
MISSING_IMAGE = "localhost/farmhand-no-such-image:test"
APPLETS = ("sh", "echo", "sleep", "cat", "true", "false")

#: The image's entry point: ``job --job_id ID``. The job's config file (CONFIG_PATH) says
#: what it does: ``ok`` prints and exits 0, ``fail`` exits 3, ``wait`` prints ``ready`` and
#: waits, ending with 7 on SIGTERM (its trap prints ``got SIGTERM`` and leaves ``got-sigterm``
#: in its working directory, the job's directory).
JOB_SCRIPT = """#!/bin/sh
read -r mode < "$CONFIG_PATH"
echo "job $2 ($1) starts: $mode"
case "$mode" in
  ok) echo "line 1"; echo "line 2"; exit 0 ;;
  fail) echo "failing" >&2; exit 3 ;;
  wait)
    trap 'echo "got SIGTERM"; echo > got-sigterm; exit 7' TERM
    echo ready
    while :; do sleep 1 & wait $!; done ;;
esac
exit 9
"""

DOCKER_WRAPPER = """#!/bin/sh
# `docker` as the worker calls it, run by podman (no daemon, storage under {root}).
export CONTAINERS_CONF={root}/containers.conf
exec podman --root {root}/storage --runroot {root}/run --tmpdir {root}/tmp \\
    --runtime runc --storage-driver vfs --cgroup-manager cgroupfs --events-backend file "$@"
"""


def _run(argv: list[str], what: str) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"podman cannot {what}: {exc}")
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        pytest.skip(f"podman cannot {what}: {said[-1] if said else result.returncode}")


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``docker`` script that runs podman, with the test image imported; or a skip."""
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        missing.append("busybox-static")
    if missing:
        pytest.skip(f"no container runtime here: {', '.join(missing)} not installed")
    root = tmp_path_factory.mktemp("podman")
    (root / "tmp").mkdir()
    (root / "containers.conf").write_text("[containers]\ndefault_ulimits = []\n")
    wrapper = root / "docker"
    wrapper.write_text(DOCKER_WRAPPER.format(root=root))
    wrapper.chmod(0o755)
    tree = root / "image"
    (tree / "bin").mkdir(parents=True)
    shutil.copy(busybox, tree / "bin" / "busybox")
    for applet in APPLETS:
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "bin" / "job").write_text(JOB_SCRIPT)
    (tree / "bin" / "job").chmod(0o755)
    with tarfile.open(root / "image.tar", "w") as tar:
        tar.add(tree, arcname=".")
    _run(
        [
            str(wrapper),
            "import",
            "--change",
            'ENTRYPOINT ["/bin/job"]',
            str(root / "image.tar"),
            IMAGE,
        ],
        "import an image",
    )
    _run(
        [str(wrapper), "run", "--rm", "--network", "none", "--entrypoint", "/bin/true", IMAGE],
        "run a container",
    )
    yield wrapper
    subprocess.run([str(wrapper), "rm", "-af"], capture_output=True, timeout=120, check=False)


def trap_ran(paths: Paths, job_id: str) -> bool:
    """Whether the job's container got SIGTERM and its trap ran. (Its ``got SIGTERM`` line
    reaches the log through the ``docker`` client, which Podman under load has been seen
    to end, with status 0, before relaying it: the worker's own relaying after a signal is
    proven in process mode, by test_queueworker and test_cmd_httpqueue.)"""
    return (paths.shared / "jobs" / job_id / "got-sigterm").exists()


def container_config(
    paths: Paths, server: JobServer, docker: Path, **changes: object
) -> WorkerConfig:
    settings: dict[str, Any] = {
        "command": None,
        "image": IMAGE,
        "docker": str(docker),
        "docker_args": ("--network", "none"),
        **changes,
    }
    return attrs.evolve(worker_config(paths, server.url), **settings)


def job_config(paths: Paths, name: str, mode: str) -> str:
    path = paths.shared / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(mode + "\n")
    return str(path)


class WatchedLog(LogFile):
    """The worker's job log, telling the test when a line is written to the file."""

    waiting: ClassVar[dict[str, trio.Event]] = {}

    def write(self, lines: Sequence[str]) -> None:
        super().write(lines)
        for text, event in self.waiting.items():
            if any(text in line for line in lines):
                event.set()


@pytest.fixture(autouse=True)
def watched_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr("contrib.httpqueue._queueworker.LogFile", WatchedLog)
    yield
    WatchedLog.waiting.clear()


async def wait_for_log(paths: Paths, job_id: str, text: str) -> None:
    """Until a line holding ``text`` is in the job's log file (it is written as it comes)."""
    event = WatchedLog.waiting.setdefault(text, trio.Event())
    with trio.fail_after(60):
        await event.wait()
    assert text in paths.log(job_id)


def containers(docker: Path) -> list[str]:
    result = subprocess.run(
        [str(docker), "ps", "-a", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.split()


@asynccontextmanager
async def server_and_worker(
    paths: Paths, docker: Path, capabilities: Capabilities | None = None, **changes: object
) -> AsyncIterator[tuple[JobServer, QueueWorker]]:
    async with open_job_server() as server:
        config = container_config(paths, server, docker, **changes)
        async with running_worker(config, capabilities) as worker:
            yield server, worker


async def test_a_container_runs_the_job_with_the_shared_dir_and_its_log_comes_live(
    tmp_path: Path, docker: Path
) -> None:
    """docker run of the image with --job_id, the shared dir at the same path (the config is
    read there), output to jobs/<id>/logs/<id>.log as it comes; exit 0 is finished."""
    paths = make_paths(tmp_path)
    async with server_and_worker(paths, docker) as (server, worker):
        job = await server.submit({"config_path": job_config(paths, "ok", "ok")})
        done = await job_status(server, job["job_id"], *FINAL)
        failing = await server.submit({"config_path": job_config(paths, "fail", "fail")})
        failed = await job_status(server, failing["job_id"], *FINAL)
    assert worker.statistics().unavailable is None
    assert done["status"] == "finished"
    assert done["container_name"] == f"farmhand-{job['job_id']}"
    log = paths.log(job["job_id"])
    assert f"job {job['job_id']} (--job_id) starts: ok\nline 1\nline 2\n" in log
    assert (failed["status"], failed["exit_code"], failed["error"]) == ("failed", 3, "exit code 3")
    assert "failing" in paths.log(failing["job_id"])
    assert f"farmhand-{job['job_id']}" not in containers(docker)


@pytest.mark.parametrize("action", ["cancel", "stop"])
async def test_cancel_and_stop_are_cooperative_the_containers_trap_runs(
    tmp_path: Path, docker: Path, action: str
) -> None:
    """A person's cancel or stop: the container gets SIGTERM, its trap runs, the worker
    reports canceled or stopped, and no container is left."""
    paths = make_paths(tmp_path)
    async with server_and_worker(paths, docker) as (server, _):
        job = await server.submit({"config_path": job_config(paths, "wait", "wait")})
        await wait_for_log(paths, job["job_id"], "ready")
        assert server.job(job["job_id"])["status"] == "running"
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.post(f"/api/jobs/{job['job_id']}/{action}")
        with trio.fail_after(60):
            await server.wait_until(lambda: server.job(job["job_id"])["ended_at"] is not None)
        done = server.job(job["job_id"])
    assert done["status"] == ("canceled" if action == "cancel" else "stopped")
    assert trap_ran(paths, job["job_id"])
    assert f"farmhand-{job['job_id']}" not in containers(docker)


async def test_a_worker_stopping_force_stops_its_container(tmp_path: Path, docker: Path) -> None:
    """The worker told to stop (SIGTERM): the container gets SIGTERM, its trap runs, the job is
    failed with error force-stop, and the container is removed."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        job = await server.submit({"config_path": job_config(paths, "wait", "wait")})
        async with running_worker(container_config(paths, server, docker)) as worker:
            await wait_for_log(paths, job["job_id"], "ready")
            worker.shutdown.stop("SIGTERM")
        done = await job_status(server, job["job_id"], *FINAL)
    assert (done["status"], done["error"]) == ("failed", "force-stop")
    assert trap_ran(paths, job["job_id"])
    assert f"farmhand-{job['job_id']}" not in containers(docker)


async def test_gpus_refused_by_the_runtime_the_job_runs_again_without(
    tmp_path: Path, docker: Path
) -> None:
    """A host with GPUs asks podman for them (CDI); without the NVIDIA toolkit podman refuses
    (exit 126, unresolvable CDI devices): the job runs again at once without, and finishes."""
    paths = make_paths(tmp_path)
    async with server_and_worker(paths, docker, Capabilities(gpus=1)) as (server, _):
        job = await server.submit({"config_path": job_config(paths, "ok", "ok")})
        done = await job_status(server, job["job_id"], *FINAL)
        second = await server.submit({"config_path": job_config(paths, "ok2", "ok")})
        again = await job_status(server, second["job_id"], *FINAL)
    assert (done["status"], again["status"]) == ("finished", "finished")
    log = paths.log(job["job_id"])
    assert "[farmhand] podman refused GPUs (" in log
    assert "unresolvable CDI devices nvidia.com/gpu=all" in log
    assert "running the job again without --device nvidia.com/gpu=all" in log
    assert "line 2" in log
    assert "refused GPUs" not in paths.log(second["job_id"])  # later jobs do not ask


async def test_a_missing_image_fails_the_job_saying_so(tmp_path: Path, docker: Path) -> None:
    """An image the runtime cannot find (no registry): the job fails with what podman said."""
    paths = make_paths(tmp_path)
    async with server_and_worker(paths, docker, image=MISSING_IMAGE) as (server, _):
        job = await server.submit({"config_path": job_config(paths, "ok", "ok")})
        done = await job_status(server, job["job_id"], *FINAL)
    assert (done["status"], done["exit_code"]) == ("failed", 125)
    assert done["error"].startswith("podman could not run the container (exit 125): ")
    assert "farmhand-no-such-image" in done["error"]


@pytest.fixture
def docker_without_daemon() -> str:
    """The real docker client, where no daemon answers it; or a skip."""
    real = shutil.which("docker")
    if real is None:
        pytest.skip("no docker client installed")
    version = subprocess.run([real, "--version"], capture_output=True, timeout=60, check=False)
    if b"podman" in version.stdout.lower():
        pytest.skip("docker here is podman")
    probe = subprocess.run([real, "info"], capture_output=True, timeout=60, check=False)
    if probe.returncode == 0:
        pytest.skip("a docker daemon is running here")
    return real


async def test_a_real_docker_client_without_a_daemon_takes_no_job(
    tmp_path: Path, docker_without_daemon: str
) -> None:
    """The docker CLI with no daemon behind it: the worker takes no job and says why."""
    real = docker_without_daemon
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        job = await server.submit({"config_path": job_config(paths, "ok", "ok")})
        config = attrs.evolve(container_config(paths, server, Path(real)), docker=real)
        async with running_worker(config) as worker:
            with trio.fail_after(60):
                await server.wait_until(
                    lambda: (
                        "w1" in server.queue.workers
                        and server.queue.workers["w1"].state == "unavailable"
                    )
                )
            assert server.job(job["job_id"])["status"] == "queued"
            why = worker.statistics().unavailable
    assert why is not None and why.startswith("the container runtime cannot run containers")
    assert os.path.basename(real) in why


#: The OPEVA job worker's documented deployment (its README's `docker run -e ...` list, as
#: an env file): kept as it is when switching to farmhand. Only the values that point at
#: this test's server, shared directory and image are filled in.
OPEVA_ENV_FILE = """\
OPEVA_SERVER={server}
WORKER_ID=worker-a
OPEVA_SHARED_DIR={shared}
WORKER_IMAGE={image}
POLL_INTERVAL=5
WORKER_HEARTBEAT_INTERVAL=30
STATUS_POLL_INTERVAL=10
LOG_LEVEL=INFO
WORKER_EXIT_AFTER_JOB=1
"""

#: What the README says to run, with the env file above.
SWITCH_COMMAND = ("python", "-m", "agent", "httpqueue", "worker")

#: `docker` on PATH for the deployment: podman, with no network for the job's container.
DOCKER_ON_PATH = """#!/bin/sh
if [ "$1" = run ]; then shift; set -- run --network none "$@"; fi
exec {wrapper} "$@"
"""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as `docker run --env-file` and systemd's EnvironmentFile read them."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value for key, value in pairs}


async def test_the_opeva_deployment_runs_unchanged_against_farmhand(
    tmp_path: Path, docker: Path
) -> None:
    """The README's switch: the OPEVA worker's env file as it is, `python -m agent httpqueue
    worker`: it heartbeats as WORKER_ID, runs the job's container with the shared dir, logs
    to jobs/<id>/logs/<id>.log, reports finished, and (WORKER_EXIT_AFTER_JOB=1) exits 0."""
    paths = make_paths(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(DOCKER_ON_PATH.format(wrapper=docker))
    (bin_dir / "docker").chmod(0o755)
    async with open_job_server() as server:
        env_file = tmp_path / "worker.env"
        env_file.write_text(
            OPEVA_ENV_FILE.format(server=server.url, shared=paths.shared, image=IMAGE)
        )
        job = await server.submit(
            {"job_name": "Demo-Run1", "config_path": job_config(paths, "demo.yaml", "ok")}
        )
        keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")}
        env = {
            **keep,
            "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
            + os.environ["PATH"],
            **read_env_file(env_file),
        }
        argv = [sys.executable if SWITCH_COMMAND[0] == "python" else SWITCH_COMMAND[0]]
        with trio.fail_after(120):
            result = await trio.run_process(
                [*argv, *SWITCH_COMMAND[1:]],
                env=env,
                cwd=REPO,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        done = server.job(job["job_id"])
        worker = server.queue.workers["worker-a"].to_api(trio.current_time())
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert (done["status"], done["worker_id"], done["exit_code"]) == ("finished", "worker-a", 0)
    assert worker["state"] == "stopped"
    log = paths.log(job["job_id"])
    assert f"job {job['job_id']} (--job_id) starts: ok\nline 1\nline 2\n" in log
    assert "httpqueue.runtime_checked" in output and "runtime=podman" in output
