"""`python -m agent httpqueue ...`: real worker and server processes, signals, exit status."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from agent._cli import main as cli_main
from contrib.httpqueue import JobServer, load_config, open_job_server
from contrib.httpqueue._queueconfig import parse_worker_args
from tests.httpqueue_harness import Notifier, Paths, job_status, make_paths, open_notifier

FINAL = ("finished", "failed", "canceled", "stopped")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
async def notifier() -> AsyncIterator[Notifier]:
    async with open_notifier() as notifier:
        yield notifier


def worker_env(paths: Paths, server: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "SERVER": server,
        "SHARED_DIR": str(paths.shared),
        "WORKER_ID": "w1",
        "POLL_INTERVAL": "0.05",
        "HEARTBEAT_INTERVAL": "0.2",
        "STATUS_POLL_INTERVAL": "0.05",
        "LOG_LEVEL": "debug",
        **extra,
    }
    return env


@asynccontextmanager
async def worker_process(
    paths: Paths, server: JobServer, *args: str, **env: str
) -> AsyncIterator[trio.Process]:
    """`python -m agent httpqueue worker` for the block (killed if still running at its end)."""
    argv = [
        sys.executable,
        "-m",
        "agent",
        "httpqueue",
        "worker",
        "--command",
        shlex.join(paths.command()),
        "--max-retry-delay",
        "0.2",
        *args,
    ]
    output = (paths.root / "worker.out").open("wb")
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                argv,
                env=worker_env(paths, server.url, **env),
                cwd=REPO,
                stdout=output,
                stderr=subprocess.STDOUT,
                check=False,
            )
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            output.close()


def output_of(paths: Paths) -> str:
    return (paths.root / "worker.out").read_text(errors="replace")


async def exit_status(process: trio.Process, paths: Paths) -> int:
    with trio.fail_after(60):
        status = await process.wait()
    assert status is not None, output_of(paths)
    return status


# ------------------------------------------------------------------ signals


async def test_sigterm_stops_the_job_gracefully_and_reports_force_stop(
    tmp_path: Path, notifier: Notifier
) -> None:
    """First SIGTERM: the job gets SIGTERM and its grace; it is reported failed, 'force-stop';
    the worker exits 0."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        job = await server.submit(
            {"config_path": paths.config("j", on_term="exit", notify=notifier.port, sleep=600)}
        )
        async with worker_process(paths, server, "--grace", "60") as process:
            await notifier.wait("ready:j")
            process.send_signal(signal.SIGTERM)
            status = await exit_status(process, paths)
            done = await job_status(server, job["job_id"], *FINAL)
    assert status == 0, output_of(paths)
    assert (done["status"], done["error"]) == ("failed", "force-stop")
    assert "SIGTERM" in done["detail"]
    assert "got SIGTERM" in paths.log(job["job_id"])


async def test_a_second_sigterm_kills_the_job_at_once(tmp_path: Path, notifier: Notifier) -> None:
    """A job that ignores SIGTERM is killed by the second signal, not after the grace."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        job = await server.submit(
            {"config_path": paths.config("j", on_term="ignore", notify=notifier.port, sleep=600)}
        )
        async with worker_process(paths, server, "--grace", "600") as process:
            await notifier.wait("ready:j")
            process.send_signal(signal.SIGTERM)
            await notifier.wait("sigterm:j")
            process.send_signal(signal.SIGINT)
            status = await exit_status(process, paths)
            done = await job_status(server, job["job_id"], *FINAL)
    assert status == 0, output_of(paths)
    assert (done["status"], done["error"]) == ("failed", "force-stop")


async def test_sigusr1_finishes_the_job_then_exits(tmp_path: Path, notifier: Notifier) -> None:
    """SIGUSR1: the running job goes on to succeed, no other job is taken, the worker exits 0."""
    paths = make_paths(tmp_path)
    go = tmp_path / "go"
    async with open_job_server() as server:
        first = await server.submit(
            {"config_path": paths.config("a", notify=notifier.port, wait_for=str(go))}
        )
        second = await server.submit({"config_path": paths.config("b")})
        async with worker_process(paths, server) as process:
            await notifier.wait("ready:a")
            process.send_signal(signal.SIGUSR1)
            # The worker's heartbeat says it is finishing: it has taken the signal.
            with trio.fail_after(30):
                await server.wait_until(
                    lambda: (
                        "w1" in server.queue.workers
                        and server.queue.workers["w1"].state == "finishing"
                    )
                )
            go.touch()
            status = await exit_status(process, paths)
    assert status == 0, output_of(paths)
    assert server.job(first["job_id"])["status"] == "finished"
    assert server.job(second["job_id"])["status"] == "queued"


async def test_exit_after_job_from_the_environment(tmp_path: Path) -> None:
    """EXIT_AFTER_JOB=1: one job, then exit 0, the next job left for others."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        first = await server.submit({"config_path": paths.config("a", exit=2)})
        second = await server.submit({"config_path": paths.config("b")})
        async with worker_process(paths, server, EXIT_AFTER_JOB="yes") as process:
            status = await exit_status(process, paths)
    assert status == 0, output_of(paths)
    assert server.job(first["job_id"])["status"] == "failed"
    assert server.job(second["job_id"])["status"] == "queued"


# ------------------------------------------------------------------ configuration


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli_main(["httpqueue", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        (
            {"SERVER": "queue:8470"},
            ["--command", "true"],
            "SERVER: expected an http:// or https:// URL, got 'queue:8470'",
        ),
        (
            {"OPEVA_SERVER": "queue:8000"},
            ["--command", "true"],
            "OPEVA_SERVER: expected an http:// or https:// URL, got 'queue:8000'",
        ),
        (
            {"SERVER": "http://h", "SHARED_DIR": "/nonexistent/x"},
            ["--command", "true"],
            "SHARED_DIR: /nonexistent/x is not a directory",
        ),
        (
            {"OPEVA_SHARED_DIR": "/nonexistent/y"},
            ["--command", "true"],
            "OPEVA_SHARED_DIR: /nonexistent/y is not a directory (mount the shared directory",
        ),
        (
            {"WORKER_HEARTBEAT_INTERVAL": "-1"},
            ["--command", "true"],
            "WORKER_HEARTBEAT_INTERVAL: must be a positive",
        ),
        (
            {"WORKER_EXIT_AFTER_JOB": "perhaps"},
            ["--command", "true"],
            "WORKER_EXIT_AFTER_JOB: expected a boolean (true/false, yes/no, on/off, 1/0), got 'perhaps'",
        ),
        ({"WORKER_IMAGE": " "}, [], "WORKER_IMAGE: empty; give the image jobs run in"),
        (
            {"POLL_INTERVAL": "soon"},
            ["--command", "true"],
            "POLL_INTERVAL: must be a positive number",
        ),
        (
            {"HEARTBEAT_INTERVAL": "0"},
            ["--command", "true"],
            "HEARTBEAT_INTERVAL: must be a positive",
        ),
        (
            {"EXIT_AFTER_JOB": "maybe"},
            ["--command", "true"],
            "EXIT_AFTER_JOB: expected a boolean (true/false, yes/no, on/off, 1/0), got 'maybe'",
        ),
        ({"LOG_LEVEL": "loud"}, ["--command", "true"], "LOG_LEVEL: must be one of debug, info"),
        ({}, ["--command", "run {job}"], "--command: '{job}': unknown field {job}"),
        ({}, ["--command", "run 'unclosed"], "cannot be split"),
        ({}, ["--image", "img", "--container-arg", "{x}"], "unknown field {x}"),
        ({}, ["--command", "true", "--slots", "0"], "--slots: must be a whole number, 1 or more"),
        ({}, ["--command", "true", "--gpus", "two"], "--gpus: must be a number of GPUs or auto"),
        ({}, ["--command", "true", "--tool", "=x"], "--tool: '=x' must be NAME"),
        ({"WORKER_ID": "a/b"}, ["--command", "true"], "WORKER_ID: 'a/b' cannot be a worker id"),
        (  # the README's old example: job fields inside the text a shell parses
            {},
            ["--command", 'sh -c "echo job {job_id} reads {config_path}; cat {config_path}"'],
            "--command: the command: 'echo job {job_id} reads {config_path}; cat {config_path}' "
            "puts a job's free-text field inside a longer argument",
        ),
        ({}, ["--command", "bash -c {config_path}"], "would run a job's field as code"),
        (
            {},
            [
                "--image",
                "img",
                "--container-arg",
                "sh",
                "--container-arg=-c",
                "--container-arg",
                "{config_path}",
            ],
            "the container arguments: sh ... -c '{config_path}' would run a job's field as code",
        ),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    args: list[str],
    message: str,
) -> None:
    """Each unusable setting names its flag or variable; nothing starts."""
    for name in (*OPEVA_VARIABLES, "SERVER", "SHARED_DIR", "EXIT_AFTER_JOB", "LABELS"):
        monkeypatch.delenv(name, raising=False)
    defaults = {"SERVER": "http://127.0.0.1:1", "SHARED_DIR": str(tmp_path)}
    if "OPEVA_SHARED_DIR" in env:
        defaults.pop("SHARED_DIR")
    for name, value in {**defaults, **env}.items():
        monkeypatch.setenv(name, value)
    status, _, err = run_cli(capsys, "worker", *args)
    assert status == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bad_configuration_from_a_real_process(tmp_path: Path) -> None:
    """The same from `python -m agent httpqueue worker`: exit status 2, one line, no traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("SERVER", *OPEVA_VARIABLES)}
    result = subprocess.run(
        [sys.executable, "-m", "agent", "httpqueue", "worker", "--command", "true"],
        env={**env, "SHARED_DIR": str(tmp_path), "OPEVA_SERVER": "localhost:8000"},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: OPEVA_SERVER: expected an http:// or https:// URL, got 'localhost:8000'\n"
    )


OPEVA_VARIABLES = (
    "OPEVA_SERVER",
    "WORKER_ID",
    "OPEVA_SHARED_DIR",
    "WORKER_IMAGE",
    "POLL_INTERVAL",
    "WORKER_HEARTBEAT_INTERVAL",
    "STATUS_POLL_INTERVAL",
    "LOG_LEVEL",
    "WORKER_EXIT_AFTER_JOB",
)


def test_the_opeva_workers_environment_is_read_as_that_worker_reads_it(tmp_path: Path) -> None:
    """OPEVA_SERVER, WORKER_ID, OPEVA_SHARED_DIR, ... mean what they mean to the OPEVA job
    worker agent, with its defaults; its log level in upper case; container mode by default."""
    args = parse_worker_args([])
    env = {
        "OPEVA_SERVER": "http://backend:8000/",
        "WORKER_ID": "worker-a",
        "OPEVA_SHARED_DIR": str(tmp_path),
        "POLL_INTERVAL": "7",
        "WORKER_HEARTBEAT_INTERVAL": "31",
        "STATUS_POLL_INTERVAL": "11",
        "LOG_LEVEL": "DEBUG",
        "WORKER_EXIT_AFTER_JOB": "1",
    }
    config = load_config(args, environ=env)
    assert (config.server, config.worker_id, config.shared_dir) == (
        "http://backend:8000",
        "worker-a",
        tmp_path.resolve(),
    )
    assert (config.poll_interval, config.heartbeat_interval, config.status_poll_interval) == (
        7.0,
        31.0,
        11.0,
    )
    assert (config.log_level, config.exit_after_job) == ("debug", True)
    assert (config.image, config.command) == ("calof/opeva_simulator:latest", None)
    assert load_config(args, environ={**env, "WORKER_EXIT_AFTER_JOB": "true"}).exit_after_job
    assert not load_config(args, environ={**env, "WORKER_EXIT_AFTER_JOB": "0"}).exit_after_job
    assert load_config(args, environ={**env, "LOG_LEVEL": "WARNING"}).log_level == "warning"
    assert load_config(args, environ={**env, "WORKER_IMAGE": "sim:2"}).image == "sim:2"
    # Only the shared directory set: the OPEVA worker's defaults for the rest.
    defaults = load_config(args, environ={"OPEVA_SHARED_DIR": str(tmp_path)})
    assert (defaults.server, defaults.worker_id) == ("http://localhost:8000", socket.gethostname())
    assert (defaults.poll_interval, defaults.heartbeat_interval) == (5.0, 30.0)
    assert (defaults.status_poll_interval, defaults.log_level) == (10.0, "info")
    assert defaults.exit_after_job is False


def test_opeva_names_win_over_farmhands_aliases_and_flags_win_over_both(tmp_path: Path) -> None:
    """SERVER, SHARED_DIR, HEARTBEAT_INTERVAL, EXIT_AFTER_JOB still work alone; where both
    names are set the OPEVA one wins; a flag wins over either."""
    other = tmp_path / "other"
    other.mkdir()
    aliases = {
        "SERVER": "http://alias:1",
        "SHARED_DIR": str(other),
        "HEARTBEAT_INTERVAL": "3",
        "EXIT_AFTER_JOB": "yes",
    }
    alone = load_config(parse_worker_args([]), environ=aliases)
    assert (alone.server, alone.shared_dir, alone.heartbeat_interval, alone.exit_after_job) == (
        "http://alias:1",
        other.resolve(),
        3.0,
        True,
    )
    both = {
        **aliases,
        "OPEVA_SERVER": "http://opeva:8000",
        "OPEVA_SHARED_DIR": str(tmp_path),
        "WORKER_HEARTBEAT_INTERVAL": "30",
        "WORKER_EXIT_AFTER_JOB": "false",
    }
    config = load_config(parse_worker_args([]), environ=both)
    assert (config.server, config.shared_dir, config.heartbeat_interval) == (
        "http://opeva:8000",
        tmp_path.resolve(),
        30.0,
    )
    assert config.exit_after_job is False
    flagged = load_config(
        parse_worker_args(["--server", "http://flag:2", "--heartbeat-interval", "9"]), environ=both
    )
    assert (flagged.server, flagged.heartbeat_interval) == ("http://flag:2", 9.0)


# ------------------------------------------------------------------ the other commands


async def test_submit_status_cancel_and_workers_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client commands drive a running server (SERVER) and print what it says."""

    def cli(*argv: str) -> tuple[int, str, str]:
        status = cli_main(["httpqueue", *argv])
        out, err = capsys.readouterr()
        return status, out, err

    async with open_job_server() as server:
        run: Any = partial(trio.to_thread.run_sync)
        status, out, _ = await run(
            cli,
            "submit",
            "--server",
            server.url,
            "--config-path",
            "/shared/c.yaml",
            "--name",
            "render",
            "--require-tool",
            "blender=>=4",
            "--require-gpus",
            "1",
            "--require-label",
            "linux",
            "--timeout",
            "60",
        )
        assert status == 0
        job_id = out.strip()
        job = server.job(job_id)
        assert job["requirements"] == {"tools": {"blender": ">=4"}, "gpus": 1, "labels": ["linux"]}
        assert (job["job_name"], job["timeout"]) == ("render", 60.0)
        status, out, _ = await run(cli, "status", "--server", server.url)
        assert status == 0 and out.startswith(f"{job_id}  queued    render")
        status, out, _ = await run(cli, "cancel", "--server", server.url, job_id)
        assert status == 0 and "canceled" in out
        status, _, err = await run(cli, "stop", "--server", server.url, job_id)
        assert status == 1 and "has already ended (canceled)" in err
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.post(
                "/api/agent/heartbeat",
                json={"worker_id": "w9", "state": "idle", "slots": 2, "free_slots": 2},
            )
        status, out, _ = await run(cli, "workers", "--server", server.url)
        assert status == 0 and out.startswith("w9  idle  free 2/2  running -")
    status, _, err = await run(cli, "status", "--server", server.url)
    assert status == 1 and err.startswith(f"error: no job server at {server.url}")


async def test_serve_runs_until_sigterm_and_keeps_its_jobs(tmp_path: Path) -> None:
    """`serve --port 0 --store FILE` prints its URL, answers, and exits 0 on SIGTERM; the
    jobs are in the store for the next start."""
    store = tmp_path / "jobs.sqlite"
    argv = [
        sys.executable,
        "-m",
        "agent",
        "httpqueue",
        "serve",
        "--port",
        "0",
        "--store",
        str(store),
    ]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, argv, cwd=REPO, stdout=subprocess.PIPE, check=False)
        )
        assert process.stdout is not None
        first = b""
        with trio.fail_after(60):
            while b"\n" not in first:
                first += await process.stdout.receive_some(4096)
        line = first.decode().splitlines()[0]
        assert line.startswith("httpqueue server on http://127.0.0.1:")
        assert f"SQLite database {store}" in line
        url = line.split()[3]
        async with httpx.AsyncClient(base_url=url) as http:
            created = await http.post("/api/jobs", json={"config_path": "/c"})
        assert created.status_code == 201
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
        nursery.cancel_scope.cancel()
    from contrib.httpqueue import SqliteStore

    assert [job["job_id"] for job in SqliteStore(store).load()] == [created.json()["job_id"]]


async def test_serve_on_a_busy_port_says_so(tmp_path: Path) -> None:
    """A port in use is one line and exit status 1, not a traceback."""
    async with open_job_server() as server:
        port = server.url.rsplit(":", 1)[1]
        result = await trio.to_thread.run_sync(
            partial(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "httpqueue",
                    "serve",
                    "--port",
                    port,
                    "--store",
                    ":memory:",
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: cannot serve on 127.0.0.1:{port}: Address already in use"
    )
