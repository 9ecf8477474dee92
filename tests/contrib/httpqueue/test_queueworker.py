"""The HTTP queue worker end to end, against the reference server on loopback."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from structlog.testing import capture_logs

from contrib.httpqueue import Capabilities, JsonStore, QueueWorker, open_job_server
from contrib.httpqueue._reporter import RESTARTED
from tests.contrib.httpqueue.test_workload import FAKE_DOCKER, docker_calls
from tests.httpqueue_harness import (
    Notifier,
    free_port,
    job_status,
    make_paths,
    open_notifier,
    running_worker,
    worker_config,
)

FINAL = ("finished", "failed", "canceled", "stopped")


@pytest.fixture
async def notifier() -> AsyncIterator[Notifier]:
    async with open_notifier() as notifier:
        yield notifier


async def test_a_job_runs_to_the_end_with_its_log_in_the_shared_dir(tmp_path: Path) -> None:
    """next-job, running, the log streamed to <shared>/jobs/<id>/logs/<id>.log, finished."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        job = await server.submit(
            {"job_name": "hello", "config_path": paths.config("hello", print=["one", "two"])}
        )
        async with running_worker(worker_config(paths, server.url)) as worker:
            done = await job_status(server, job["job_id"], *FINAL)
            await worker.wait_until(lambda s: s.heartbeats >= 2)
        record = server.queue.workers["w1"]
    assert (done["status"], done["exit_code"], done["error"]) == ("finished", 0, None)
    assert done["worker_id"] == "w1" and done["started_at"] and done["ended_at"]
    log = paths.log(job["job_id"]).splitlines()
    assert log[log.index("one") + 1] == "two"
    assert log[-1].startswith("[farmhand] job succeeded")
    assert (record.slots, record.capabilities["gpus"]) == (1, 0)
    assert record.state == "stopped" and record.free_slots == 0  # its last word


async def test_a_failing_job_is_reported_failed_with_its_exit_code(tmp_path: Path) -> None:
    """A non-zero exit is 'failed' with the exit code and a one-line error."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        job = await server.submit({"config_path": paths.config("bad", exit=3)})
        async with running_worker(worker_config(paths, server.url)):
            done = await job_status(server, job["job_id"], *FINAL)
    assert (done["status"], done["exit_code"], done["error"]) == ("failed", 3, "exit code 3")


@pytest.mark.parametrize("action", ["cancel", "stop"])
async def test_a_person_canceling_or_stopping_a_job_stops_it(
    tmp_path: Path, action: str, notifier: Notifier
) -> None:
    """The status poll sees 'canceled'/'stopped', the job gets SIGTERM, and the worker confirms."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        config = paths.config("long", on_term="exit", notify=notifier.port, sleep=600)
        job = await server.submit({"config_path": config})
        async with running_worker(worker_config(paths, server.url)):
            await notifier.wait("ready:long")
            async with httpx.AsyncClient(base_url=server.url) as http:
                await http.post(f"/api/jobs/{job['job_id']}/{action}")
            status = "canceled" if action == "cancel" else "stopped"
            with trio.fail_after(30):
                await server.wait_until(lambda: server.job(job["job_id"])["ended_at"] is not None)
            done = server.job(job["job_id"])
    assert done["status"] == status
    assert "on the server" in (done["detail"] or "")
    assert "got SIGTERM" in paths.log(job["job_id"])


async def test_a_running_job_is_said_running_again_at_each_status_poll(
    tmp_path: Path, notifier: Notifier
) -> None:
    """Each status poll that finds the job still running says ``running`` again, so a
    backend that fails jobs whose status goes stale (OPEVA's) sees it alive."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        config = paths.config("long", on_term="exit", notify=notifier.port, sleep=600)
        job = await server.submit({"config_path": config})
        async with running_worker(worker_config(paths, server.url)):
            await notifier.wait("ready:long")
            seen: list[str] = []

            def refreshed() -> bool:
                stamp = server.job(job["job_id"]).get("status_updated_at")
                if stamp is not None and stamp not in seen:
                    seen.append(stamp)
                return len(seen) >= 3

            with trio.fail_after(30):
                await server.wait_until(refreshed)
            assert server.job(job["job_id"])["status"] == "running"
            async with httpx.AsyncClient(base_url=server.url) as http:
                status = (await http.get(f"/status/{job['job_id']}")).json()
                assert status["status_updated_at"] in seen
                await http.post(f"/api/jobs/{job['job_id']}/cancel")
            await job_status(server, job["job_id"], "canceled")


async def test_a_job_given_to_another_worker_is_stopped_here(
    tmp_path: Path, notifier: Notifier
) -> None:
    """When the server has given the job to someone else, running it on helps nobody."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        job = await server.submit(
            {"config_path": paths.config("j", on_term="exit", notify=notifier.port, sleep=600)}
        )
        async with running_worker(worker_config(paths, server.url)) as worker:
            await notifier.wait("ready:j")
            # As if its assignment had run out and another worker had taken it.
            server.queue.jobs[job["job_id"]]["worker_id"] = "w2"
            await notifier.wait("sigterm:j")
            await worker.wait_until(lambda s: s.jobs_done == 1)
    log = paths.log(job["job_id"])
    assert (
        "[farmhand] job canceled: the job is no longer this worker's: the job now belongs to worker w2"
        in log
    )
    assert server.job(job["job_id"])["worker_id"] == "w2"


async def test_a_job_past_its_timeout_fails_as_a_timeout(tmp_path: Path) -> None:
    """The job's own timeout (or the worker's --max-runtime) stops it: failed, 'timeout: ...'."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        slow = await server.submit({"config_path": paths.config("slow", sleep=600), "timeout": 0.5})
        capped = await server.submit({"config_path": paths.config("capped", sleep=600)})
        config = worker_config(paths, server.url, max_runtime=0.5)
        async with running_worker(config):
            first = await job_status(server, slow["job_id"], *FINAL)
            second = await job_status(server, capped["job_id"], *FINAL)
    for done in (first, second):
        assert done["status"] == "failed"
        assert done["error"] == "timeout: the maximum runtime of 0.5 s was reached"


async def test_unmet_requirements_are_rejected_and_the_worker_keeps_serving(
    tmp_path: Path,
) -> None:
    """A job this worker cannot run goes back with the reasons; its next job runs; a worker
    that can run the rejected one gets it."""
    paths = make_paths(tmp_path)
    needs = {"tools": {"blender": ">=4.2"}, "gpus": 1, "labels": ["render"]}
    async with open_job_server() as server:
        picky = await server.submit({"config_path": paths.config("picky"), "requirements": needs})
        plain = await server.submit({"config_path": paths.config("plain")})
        small = Capabilities(tools={"blender": "4.1.0"}, gpus=0)
        async with running_worker(worker_config(paths, server.url), small) as worker:
            await job_status(server, plain["job_id"], *FINAL)
            await worker.wait_until(lambda s: s.jobs_rejected == 1)
            rejected = server.job(picky["job_id"])
            assert rejected["status"] == "queued"
            [rejection] = rejected["rejections"]
            assert rejection["worker_id"] == "w1"
            assert rejection["reason"] == (
                "tool blender is version 4.1.0, the job needs >=4.2; "
                "the job needs 1 GPU(s), this worker has 0; "
                "this worker lacks the label(s) render"
            )
            big = Capabilities(tools={"blender": "4.2.1"}, gpus=1, labels=frozenset({"render"}))
            async with running_worker(
                worker_config(paths, server.url, worker_id="w2", state_dir=tmp_path / "w2"), big
            ):
                done = await job_status(server, picky["job_id"], *FINAL)
    assert (done["status"], done["worker_id"]) == ("finished", "w2")
    assert server.job(plain["job_id"])["worker_id"] == "w1"


async def test_a_worker_restarted_with_the_missing_tool_gets_the_job_it_rejected(
    tmp_path: Path,
) -> None:
    """Tried as a user would: w1 rejects a job for a missing tool, is restarted (same id)
    with the tool installed, and then runs that job."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        job = await server.submit(
            {"config_path": paths.config("needs"), "requirements": {"tools": {"blender": ">=4.2"}}}
        )
        without = Capabilities(tools={"blender": None})
        async with running_worker(worker_config(paths, server.url), without) as worker:
            await worker.wait_until(lambda s: s.jobs_rejected == 1)
        assert server.job(job["job_id"])["status"] == "queued"
        with_it = Capabilities(tools={"blender": "4.2.1"})
        async with running_worker(worker_config(paths, server.url), with_it):
            done = await job_status(server, job["job_id"], *FINAL)
    assert (done["status"], done["worker_id"]) == ("finished", "w1")


async def test_a_worker_started_before_its_server_waits_for_it(tmp_path: Path) -> None:
    """Polls and heartbeats fail while there is no server; once it is up, work flows."""
    paths = make_paths(tmp_path)
    port = free_port()
    config = worker_config(paths, f"http://127.0.0.1:{port}")
    async with running_worker(config) as worker:
        await worker.wait_until(lambda s: s.poll_failures >= 2 and s.heartbeat_failures >= 1)
        async with open_job_server(port=port) as server:
            job = await server.submit({"config_path": paths.config("late", print=["made it"])})
            done = await job_status(server, job["job_id"], *FINAL)
            assert done["status"] == "finished" and done["started_at"]
            assert "made it" in paths.log(job["job_id"])


async def test_a_server_restart_mid_job_loses_no_status(tmp_path: Path, notifier: Notifier) -> None:
    """The server goes away while a job runs; the job ends meanwhile; its report waits, in
    order, and lands when the server is back."""
    paths = make_paths(tmp_path)
    store_path = tmp_path / "jobs.json"
    port = free_port()
    go = tmp_path / "go"
    config = worker_config(paths, f"http://127.0.0.1:{port}")
    async with running_worker(config) as worker:
        async with open_job_server(store=JsonStore(store_path), port=port) as server:
            job = await server.submit(
                {"config_path": paths.config("j", notify=notifier.port, wait_for=str(go), exit=4)}
            )
            await notifier.wait("ready:j")
            await job_status(server, job["job_id"], "running")
        # The server is gone. The job ends; the worker cannot tell anyone yet.
        go.touch()
        await worker.wait_until(lambda s: s.jobs_done == 1 and s.reports_pending >= 1)
        await worker.wait_until(lambda s: s.poll_failures >= 1)
        async with open_job_server(store=JsonStore(store_path), port=port) as server:
            done = await job_status(server, job["job_id"], *FINAL)
            await worker.wait_until(lambda s: s.reports_pending == 0)
    assert (done["status"], done["exit_code"], done["error"]) == ("failed", 4, "exit code 4")
    assert done["started_at"] and done["ended_at"]


async def test_reports_owed_at_exit_are_sent_by_the_next_worker(
    tmp_path: Path, notifier: Notifier
) -> None:
    """Stopped while the server is away, the worker keeps its reports; its next start sends them."""
    paths = make_paths(tmp_path)
    store_path = tmp_path / "jobs.json"
    port = free_port()
    go = tmp_path / "go"
    config = worker_config(paths, f"http://127.0.0.1:{port}", report_timeout=0.3)
    async with running_worker(config) as worker:
        async with open_job_server(store=JsonStore(store_path), port=port) as server:
            job = await server.submit(
                {"config_path": paths.config("j", notify=notifier.port, wait_for=str(go))}
            )
            await notifier.wait("ready:j")
            await job_status(server, job["job_id"], "running")
        go.touch()
        await worker.wait_until(lambda s: s.jobs_done == 1)
    state = json.loads(config.state_file.read_text())
    assert [report["body"]["status"] for report in state["outbox"]] == ["finished"]
    async with open_job_server(store=JsonStore(store_path), port=port) as server:
        assert server.job(job["job_id"])["status"] == "running"
        async with running_worker(config):
            done = await job_status(server, job["job_id"], *FINAL)
    assert done["status"] == "finished"


async def test_a_job_running_when_the_worker_died_is_reported_failed(tmp_path: Path) -> None:
    """A worker that finds a job it was running in its state file reports it failed."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        job = await server.submit({"config_path": paths.config("x")})
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.post("/api/agent/next-job", json={"worker_id": "w1"})
            await http.post(
                "/api/agent/job-status",
                json={
                    "worker_id": "w1",
                    "job_id": job["job_id"],
                    "status": "running",
                    "report_id": "r",
                },
            )
        config = worker_config(paths, server.url)
        config.state_file.parent.mkdir(parents=True, exist_ok=True)
        config.state_file.write_text(
            json.dumps(
                {
                    "format": "farmhand-httpqueue-worker-1",
                    "worker_id": "w1",
                    "outbox": [],
                    "running": [job["job_id"]],
                }
            )
        )
        async with running_worker(config):
            done = await job_status(server, job["job_id"], *FINAL)
    assert (done["status"], done["error"]) == ("failed", RESTARTED)


async def test_exit_after_job_runs_one_job_then_stops(tmp_path: Path) -> None:
    """--exit-after-job: one job, then run() returns; the next job stays queued."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        first = await server.submit({"config_path": paths.config("one")})
        second = await server.submit({"config_path": paths.config("two")})
        with trio.fail_after(30):
            worker = QueueWorker(
                worker_config(paths, server.url, exit_after_job=True), capabilities=Capabilities()
            )
            await worker.run()
        assert server.job(first["job_id"])["status"] == "finished"
        assert server.job(second["job_id"])["status"] == "queued"
        assert worker.statistics().state == "finishing"


async def test_a_rejected_job_does_not_count_for_exit_after_job(tmp_path: Path) -> None:
    """--exit-after-job means after a job it ran: one it rejected does not end the worker."""
    paths = make_paths(tmp_path)
    async with open_job_server() as server:
        picky = await server.submit({"config_path": paths.config("p"), "requirements": {"gpus": 8}})
        plain = await server.submit({"config_path": paths.config("q")})
        with trio.fail_after(30):
            worker = QueueWorker(
                worker_config(paths, server.url, exit_after_job=True), capabilities=Capabilities()
            )
            await worker.run()
    assert server.job(plain["job_id"])["status"] == "finished"
    assert server.job(picky["job_id"])["status"] == "queued"
    assert worker.statistics().jobs_rejected == 1


async def test_slots_run_jobs_side_by_side(tmp_path: Path, notifier: Notifier) -> None:
    """With two slots two jobs run at once, and the heartbeat says no slot is free."""
    paths = make_paths(tmp_path)
    go = tmp_path / "go"
    async with open_job_server() as server:
        jobs = [
            await server.submit(
                {"config_path": paths.config(f"j{i}", notify=notifier.port, wait_for=str(go))}
            )
            for i in range(2)
        ]
        async with running_worker(worker_config(paths, server.url, slots=2)) as worker:
            await notifier.wait("ready:j0")
            await notifier.wait("ready:j1")
            await worker.wait_until(lambda s: s.state == "busy")
            with trio.fail_after(30):
                await server.wait_until(lambda: server.queue.workers["w1"].free_slots == 0)
            go.touch()
            for job in jobs:
                assert (await job_status(server, job["job_id"], *FINAL))["status"] == "finished"


async def test_container_mode_end_to_end_with_a_gpu_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--image: docker run with the shared dir and --job_id; GPUs dropped when Docker refuses."""
    paths = make_paths(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(python=sys.executable))
    (bin_dir / "docker").chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(calls))
    monkeypatch.setenv("FAKE_DOCKER_NO_GPUS", "1")
    async with open_job_server() as server:
        job = await server.submit({"config_path": paths.config("c")})
        config = attrs.evolve(worker_config(paths, server.url), command=None, image="img:1")
        async with running_worker(config, Capabilities(gpus=1)):
            done = await job_status(server, job["job_id"], *FINAL)
    assert done["status"] == "finished"
    first, second = docker_calls(calls)
    shared = str(paths.shared)
    assert ["-v", f"{shared}:{shared}"] == first[first.index("-v") : first.index("-v") + 2]
    assert first[-3:] == ["img:1", "--job_id", job["job_id"]]
    assert "--gpus" in first and "--gpus" not in second
    assert f"container says: --job_id {job['job_id']}" in paths.log(job["job_id"])


async def test_no_container_runtime_no_job_taken_and_the_heartbeat_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container-mode worker whose runtime cannot run containers takes no job (it would
    only fail it): its log and heartbeat say why; once the runtime works, it takes the job."""
    paths = make_paths(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(python=sys.executable))
    (bin_dir / "docker").chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(calls))
    monkeypatch.setenv("FAKE_DOCKER_NO_DAEMON", "1")
    async with open_job_server() as server:
        job = await server.submit({"config_path": paths.config("c")})
        config = attrs.evolve(worker_config(paths, server.url), command=None, image="img:1")
        with capture_logs() as logs:
            async with running_worker(config) as worker:
                with trio.fail_after(30):
                    await server.wait_until(
                        lambda: (
                            "w1" in server.queue.workers
                            and server.queue.workers["w1"].state == "unavailable"
                        )
                    )
                record = server.queue.workers["w1"].to_api(trio.current_time())
                why = (
                    "the container runtime cannot run containers (docker info failed, exit 1): "
                    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                    "Is the docker daemon running?"
                )
                assert worker.statistics().unavailable == why
                assert record["free_slots"] == 0
                assert record["info"]["error"] == why
                assert server.job(job["job_id"])["status"] == "queued"
                assert not calls.exists()  # no docker run, no job failed
                monkeypatch.delenv("FAKE_DOCKER_NO_DAEMON")  # the daemon comes up
                done = await job_status(server, job["job_id"], *FINAL)
    assert done["status"] == "finished"
    events = [(entry["event"], entry.get("error")) for entry in logs]
    assert events.count(("httpqueue.runtime_unavailable", why)) == 1
    assert ("httpqueue.runtime_available", None) in events


async def test_a_job_whose_log_cannot_be_written_fails_with_the_reason(tmp_path: Path) -> None:
    """No log on the shared directory, no run: the job fails saying why; the worker goes on."""
    paths = make_paths(tmp_path)
    (paths.shared / "jobs").write_text("not a directory")
    async with open_job_server() as server:
        job = await server.submit({"config_path": paths.config("x")})
        async with running_worker(worker_config(paths, server.url)):
            done = await job_status(server, job["job_id"], *FINAL)
    assert done["status"] == "failed"
    assert done["error"].startswith(f"cannot open the job's log {paths.shared / 'jobs'}")


async def test_a_job_field_never_runs_as_a_command(tmp_path: Path) -> None:
    """config_path='/x; touch /tmp/owned' reaches the job as one argument: nothing is touched,
    with the command form the README shows."""
    paths = make_paths(tmp_path)
    owned = tmp_path / "owned"
    command = ("sh", "-c", 'echo "env: $CONFIG_PATH"; cat "$1"', "sh", "{config_path}")
    async with open_job_server() as server:
        job = await server.submit({"config_path": f"/x; touch {owned}"})
        async with running_worker(worker_config(paths, server.url, command=command)):
            done = await job_status(server, job["job_id"], *FINAL)
    assert done["status"] == "failed"  # cat: no such file '/x; touch ...'
    assert not owned.exists()
    assert f"env: /x; touch {owned}" in paths.log(job["job_id"])


async def test_a_job_id_that_leaves_the_shared_dir_fails_that_job_only(tmp_path: Path) -> None:
    """job_id '../../../../tmp/x' is failed with the reason; no directory or log is made for
    it anywhere; the worker goes on to the next job."""
    paths = make_paths(tmp_path)
    hostile = "../../../../tmp/x"
    escaped = trio.Path(os.path.normpath(paths.shared / "jobs" / hostile))  # noqa: ASYNC240
    assert not escaped.is_relative_to(paths.shared)
    async with open_job_server() as server:
        job = await server.submit({"config_path": paths.config("evil")})
        record = server.queue.jobs.pop(job["job_id"])
        record["job_id"] = hostile
        server.queue.jobs[hostile] = record
        plain = await server.submit({"config_path": paths.config("plain")})
        async with running_worker(worker_config(paths, server.url)):
            bad = await job_status(server, hostile, *FINAL)
            good = await job_status(server, plain["job_id"], *FINAL)
    assert bad["status"] == "failed"
    assert bad["error"].startswith("refused: job_id '../../../../tmp/x' is not a safe id")
    assert good["status"] == "finished"
    assert not await escaped.exists() and not await escaped.parent.exists()
    assert [p.name for p in await trio.Path(paths.shared / "jobs").iterdir()] == [plain["job_id"]]
