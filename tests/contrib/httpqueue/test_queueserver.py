"""The reference job server: queue semantics, its HTTP API, and its stores."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from contrib.httpqueue import JobQueue, QueueConfig, open_job_server, open_store
from contrib.httpqueue._queue import QueueError
from contrib.httpqueue._store import JsonStore, StoreError


def report(
    job_id: str, status: str, report_id: str, worker: str = "w1", **fields: Any
) -> dict[str, Any]:
    return {
        "worker_id": worker,
        "job_id": job_id,
        "status": status,
        "report_id": report_id,
        **fields,
    }


def ask(worker: str = "w1", request_id: str | None = None) -> dict[str, Any]:
    return {"worker_id": worker, "request_id": request_id}


# ------------------------------------------------------------------ the queue


async def test_jobs_go_out_by_priority_then_age() -> None:
    """next-job hands out the highest priority first, the oldest among equals; then nothing."""
    queue = JobQueue()
    low = queue.submit({"config_path": "/a", "priority": 10})["job_id"]
    first = queue.submit({"config_path": "/b"})["job_id"]
    second = queue.submit({"config_path": "/c"})["job_id"]
    urgent = queue.submit({"config_path": "/d", "priority": 90})["job_id"]
    now = trio.current_time()
    order = [queue.next_job(ask(f"w{i}"), now) for i in range(5)]
    assert [job["job_id"] if job else None for job in order] == [urgent, first, second, low, None]
    assert queue.get(urgent)["status"] == "assigned" and queue.get(urgent)["worker_id"] == "w0"


async def test_a_retried_next_job_gets_the_same_job() -> None:
    """The same request_id is the same answer: a lost response does not lose the job."""
    queue = JobQueue()
    a = queue.submit({"config_path": "/a"})["job_id"]
    queue.submit({"config_path": "/b"})
    now = trio.current_time()
    assert queue.next_job(ask(request_id="r1"), now)["job_id"] == a  # type: ignore[index]
    assert queue.next_job(ask(request_id="r1"), now)["job_id"] == a  # type: ignore[index]
    assert queue.next_job(ask(request_id="r2"), now)["job_id"] != a  # type: ignore[index]


async def test_reports_apply_once_and_the_first_final_status_wins() -> None:
    """running, then finished; a repeated report changes nothing; a late one cannot undo the end."""
    queue = JobQueue()
    job_id = queue.submit({"config_path": "/a"})["job_id"]
    now = trio.current_time()
    queue.next_job(ask(), now)
    job, changed = queue.report(report(job_id, "running", "r1"), now)
    assert changed and job["status"] == "running" and job["started_at"]
    assert queue.report(report(job_id, "running", "r1"), now)[1] is False
    job, changed = queue.report(report(job_id, "finished", "r2", exit_code=0), now)
    assert changed and (job["status"], job["exit_code"]) == ("finished", 0) and job["ended_at"]
    job, changed = queue.report(report(job_id, "failed", "r3", error="late"), now)
    assert not changed and job["status"] == "finished" and job["error"] is None


async def test_a_person_cancel_is_confirmed_by_the_worker() -> None:
    """Canceling a running job shows 'canceled' at once; the worker's report adds its end."""
    queue = JobQueue()
    job_id = queue.submit({"config_path": "/a"})["job_id"]
    now = trio.current_time()
    queue.next_job(ask(), now)
    queue.report(report(job_id, "running", "r1"), now)
    job = queue.end_by_person(job_id, "canceled")
    assert (job["status"], job["ended_at"]) == ("canceled", None)
    job, changed = queue.report(report(job_id, "running", "r2"), now)
    assert not changed and job["status"] == "canceled"
    job, changed = queue.report(report(job_id, "canceled", "r3", detail="SIGTERM sent"), now)
    assert (
        changed
        and job["status"] == "canceled"
        and job["ended_at"]
        and job["detail"] == "SIGTERM sent"
    )
    with pytest.raises(QueueError, match="has already ended"):
        queue.end_by_person(job_id, "stopped")


async def test_a_queued_job_canceled_ends_at_once() -> None:
    """A job nobody has taken ends the moment it is canceled, and is never handed out."""
    queue = JobQueue()
    job_id = queue.submit({"config_path": "/a"})["job_id"]
    job = queue.end_by_person(job_id, "stopped")
    assert job["status"] == "stopped" and job["ended_at"]
    assert queue.next_job(ask(), trio.current_time()) is None


async def test_a_rejected_job_never_goes_back_to_that_worker() -> None:
    """Rejected: back to the queue with the reason, for other workers only; released: for anyone."""
    queue = JobQueue()
    job_id = queue.submit({"config_path": "/a", "requirements": {"gpus": 1}})["job_id"]
    now = trio.current_time()
    queue.next_job(ask("w1"), now)
    job, _ = queue.reject(
        {"worker_id": "w1", "job_id": job_id, "reason": "no GPU", "report_id": "x"}, now
    )
    assert job["status"] == "queued" and job["rejections"][0]["reason"] == "no GPU"
    assert queue.next_job(ask("w1"), now) is None
    assert queue.next_job(ask("w2"), now)["job_id"] == job_id  # type: ignore[index]
    queue.reject(
        {
            "worker_id": "w2",
            "job_id": job_id,
            "reason": "stopping",
            "report_id": "y",
            "release": True,
        },
        now,
    )
    assert queue.next_job(ask("w2"), now)["job_id"] == job_id  # type: ignore[index]
    assert len(queue.get(job_id)["rejections"]) == 1


async def test_a_rejected_job_goes_back_to_that_worker_once_it_has_changed() -> None:
    """A worker that rejected a job for a missing tool gets it again once its heartbeat
    shows different capabilities (restarted with the tool); not while they are the same."""
    queue = JobQueue()
    job_id = queue.submit({"config_path": "/a", "requirements": {"tools": {"blender": ">=4"}}})[
        "job_id"
    ]
    now = trio.current_time()
    without = {"tools": {"blender": None}, "gpus": 0, "labels": []}
    queue.heartbeat({"worker_id": "w1", "capabilities": without}, now)
    assert queue.next_job(ask("w1"), now)["job_id"] == job_id  # type: ignore[index]
    queue.reject(
        {"worker_id": "w1", "job_id": job_id, "reason": "no blender", "report_id": "x"}, now
    )
    assert queue.get(job_id)["rejections"][0]["capabilities"] == without
    queue.heartbeat({"worker_id": "w1", "capabilities": dict(without)}, now)  # restarted as it was
    assert queue.next_job(ask("w1"), now) is None
    with_it = {"tools": {"blender": "4.2.1"}, "gpus": 0, "labels": []}
    queue.heartbeat({"worker_id": "w1", "capabilities": with_it}, now)  # restarted with blender
    assert queue.next_job(ask("w1"), now)["job_id"] == job_id  # type: ignore[index]


async def test_another_workers_report_is_a_conflict() -> None:
    """A worker may only report on jobs it holds."""
    queue = JobQueue()
    job_id = queue.submit({"config_path": "/a"})["job_id"]
    now = trio.current_time()
    queue.next_job(ask("w1"), now)
    with pytest.raises(QueueError, match="assigned to worker w1, not w2") as info:
        queue.report(report(job_id, "running", "r1", worker="w2"), now)
    assert info.value.status == 409


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"worker_id": "w1", "job_id": "J", "status": "done", "report_id": "r"},
            "status must be one of",
        ),
        (
            {"worker_id": "w1", "job_id": "J", "status": "failed", "error": 3, "report_id": "r"},
            "error must be a string",
        ),
        (
            {"worker_id": "w1", "job_id": "J", "status": "running", "report_id": 7},
            "report_id must be",
        ),
        ({"job_id": "J", "status": "running", "report_id": "r"}, "worker_id must be"),
        (
            {"worker_id": "w1", "job_id": "nope", "status": "running", "report_id": "r"},
            "no job nope",
        ),
    ],
)
async def test_bad_reports_are_refused(payload: dict[str, Any], message: str) -> None:
    """Malformed reports are 400, unknown jobs 404: the worker drops them, loudly."""
    queue = JobQueue()
    job_id = queue.submit({"config_path": "/a"})["job_id"]
    payload = {
        **payload,
        "job_id": job_id if payload.get("job_id") == "J" else payload.get("job_id"),
    }
    with pytest.raises(QueueError, match=message):
        queue.report(payload, trio.current_time())


async def test_stale_assignments_are_requeued_and_lost_workers_jobs_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An assignment not started in time goes back; a silent worker's running job fails as lost,
    and its worker's later report still counts."""
    queue = JobQueue(config=QueueConfig(assignment_timeout=60, worker_timeout=120))
    stale = queue.submit({"config_path": "/a"})["job_id"]
    running = queue.submit({"config_path": "/b"})["job_id"]
    start = trio.current_time()
    queue.next_job(ask("w1"), start)
    queue.next_job(ask("w2"), start)
    queue.report(report(running, "running", "r1", worker="w2"), start)
    assert queue.next_deadline() == start + 60
    assert queue.sweep(start + 59.9) == []
    [requeued] = queue.sweep(start + 60)
    assert requeued["job_id"] == stale and requeued["status"] == "queued"
    assert "did not start it in 60 s" in requeued["detail"]
    assert queue.next_deadline() == start + 120
    [lost] = queue.sweep(start + 120)
    assert (lost["job_id"], lost["status"], lost["error"]) == (running, "failed", "worker lost")
    job, changed = queue.report(
        report(running, "finished", "r2", worker="w2", exit_code=0), start + 200
    )
    assert changed and job["status"] == "finished" and job["error"] is None


# ------------------------------------------------------------------ over HTTP


async def test_the_api_over_http(tmp_path: Path) -> None:
    """Submit, list, get, next-job (200 then 204), report, heartbeat, workers, cancel."""
    async with open_job_server() as server, httpx.AsyncClient(base_url=server.url) as http:
        created = await http.post(
            "/api/jobs", json={"job_name": "render", "config_path": "/c.yaml"}
        )
        assert created.status_code == 201
        job = created.json()
        assert (job["status"], job["job_name"]) == ("queued", "render")
        assert "_reports" not in job
        listed = (await http.get("/api/jobs", params={"status": "queued"})).json()["jobs"]
        assert [j["job_id"] for j in listed] == [job["job_id"]]
        offered = await http.post(
            "/api/agent/next-job", json={"worker_id": "w1", "request_id": "a"}
        )
        assert offered.status_code == 200 and offered.json()["job_id"] == job["job_id"]
        none = await http.post("/api/agent/next-job", json={"worker_id": "w1", "request_id": "b"})
        assert none.status_code == 204 and none.content == b""
        answer = await http.post(
            "/api/agent/job-status", json=report(job["job_id"], "running", "r1")
        )
        assert answer.json() == {"job_id": job["job_id"], "status": "running", "applied": True}
        beat = {
            "worker_id": "w1",
            "state": "busy",
            "slots": 1,
            "free_slots": 0,
            "running_jobs": [job["job_id"]],
        }
        assert (await http.post("/api/agent/heartbeat", json=beat)).json() == {"ok": True}
        [worker] = (await http.get("/api/workers")).json()["workers"]
        assert (worker["worker_id"], worker["free_slots"], worker["running_jobs"]) == (
            "w1",
            0,
            [job["job_id"]],
        )
        canceled = (await http.post(f"/api/jobs/{job['job_id']}/cancel")).json()
        assert canceled["status"] == "canceled"
        assert (await http.get(f"/api/jobs/{job['job_id']}")).json()["status"] == "canceled"
        assert (await http.get("/api/health")).json()["jobs"] == {"canceled": 1}


async def test_an_opeva_worker_speaks_to_it_unchanged() -> None:
    """The OPEVA job worker's own calls, body for body: heartbeat with ``info``, next-job with
    only its id, job-status without report ids (container metadata, a failure by exit code
    alone), and GET /status/{id} showing a person's stop as ``stop_requested`` until the
    worker confirms ``stopped``."""
    async with open_job_server() as server, httpx.AsyncClient(base_url=server.url) as http:
        first = await server.submit({"job_name": "Demo-Run1", "config_path": "configs/a.yaml"})
        second = await server.submit({"job_name": "Demo-Run2", "config_path": "configs/b.yaml"})
        beat = {"worker_id": "tiago-gpu", "info": {"load": 0.5}}
        assert (await http.post("/api/agent/heartbeat", json=beat)).status_code == 200
        [worker] = (await http.get("/api/workers")).json()["workers"]
        assert worker["info"] == {"load": 0.5}
        offered = await http.post("/api/agent/next-job", json={"worker_id": "tiago-gpu"})
        job = offered.json()
        assert offered.status_code == 200
        assert (job["job_id"], job["job_name"], job["config_path"]) == (
            first["job_id"],
            "Demo-Run1",
            "configs/a.yaml",
        )
        running = {
            "job_id": job["job_id"],
            "status": "running",
            "worker_id": "tiago-gpu",
            "container_id": "abc123",
            "container_name": "job_tiago-gpu_Demo-Run1_job-1234",
        }
        for _ in range(2):  # the periodic "running" refresh, applied each time
            answer = await http.post("/api/agent/job-status", json=running)
            assert answer.status_code == 200 and answer.json()["status"] == "running"
        status = await http.get(f"/status/{job['job_id']}")
        assert status.json()["status"] == "running"
        assert server.job(job["job_id"])["container_name"] == running["container_name"]
        await http.post(f"/api/jobs/{job['job_id']}/stop")
        assert (await http.get(f"/status/{job['job_id']}")).json()["status"] == "stop_requested"
        stopped = {"job_id": job["job_id"], "status": "stopped", "worker_id": "tiago-gpu"}
        answer = await http.post("/api/agent/job-status", json={**stopped, "exit_code": 143})
        assert answer.json() == {"job_id": job["job_id"], "status": "stopped", "applied": True}
        after = (await http.get(f"/status/{job['job_id']}")).json()
        assert (after["status"], after["exit_code"]) == ("stopped", 143)

        job = (await http.post("/api/agent/next-job", json={"worker_id": "tiago-gpu"})).json()
        assert job["job_id"] == second["job_id"]
        failed = {"job_id": job["job_id"], "status": "failed", "worker_id": "tiago-gpu"}
        answer = await http.post("/api/agent/job-status", json={**failed, "exit_code": 2})
        assert answer.json()["status"] == "failed"
        ended = (await http.get(f"/status/{job['job_id']}")).json()
        assert (ended["status"], ended["exit_code"], ended["error"]) == ("failed", 2, "exit code 2")
        none = await http.post("/api/agent/next-job", json={"worker_id": "tiago-gpu"})
        assert none.status_code == 204
        missing = await http.get("/status/nope")
        assert missing.status_code == 404 and missing.json() == {"error": "no job nope"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/nope", None, 404, "no route /nope"),
        ("GET", "/api/jobs/missing", None, 404, "no job missing"),
        ("DELETE", "/api/jobs", None, 405, "use POST here, not DELETE"),
        ("POST", "/api/jobs", b"{not json", 400, "not valid JSON"),
        ("POST", "/api/jobs", {"job_name": "x"}, 400, "config_path must be"),
        ("GET", "/api/jobs?status=weird", None, 400, "status must be one of"),
        ("POST", "/api/agent/next-job", {}, 400, "worker_id must be"),
        ("POST", "/api/agent/dance", {"worker_id": "w"}, 404, "no agent operation 'dance'"),
    ],
)
async def test_bad_requests_get_clear_errors(
    method: str, path: str, body: Any, status: int, message: str
) -> None:
    """Every refusal is a JSON error with the right status."""
    async with open_job_server() as server, httpx.AsyncClient(base_url=server.url) as http:
        if isinstance(body, bytes):
            response = await http.request(method, path, content=body)
        else:
            response = await http.request(method, path, json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


@pytest.mark.parametrize("name", ["jobs.json", "jobs.sqlite"])
async def test_jobs_survive_a_restart(tmp_path: Path, name: str) -> None:
    """Both stores keep every acknowledged change, and the ids keep counting after a restart."""
    path = tmp_path / name
    async with (
        open_job_server(store=open_store(path)) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        first = (await http.post("/api/jobs", json={"config_path": "/a"})).json()["job_id"]
        await http.post("/api/agent/next-job", json={"worker_id": "w1", "request_id": "q"})
        await http.post("/api/agent/job-status", json=report(first, "running", "r1"))
    async with (
        open_job_server(store=open_store(path)) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        job = (await http.get(f"/api/jobs/{first}")).json()
        assert (job["status"], job["worker_id"]) == ("running", "w1")
        # The report id is remembered too: a retry after the restart changes nothing.
        again = await http.post("/api/agent/job-status", json=report(first, "running", "r1"))
        assert again.json()["applied"] is False
        second = (await http.post("/api/jobs", json={"config_path": "/b"})).json()
        assert second["sequence"] > job["sequence"]


def test_stores_refuse_what_they_cannot_read(tmp_path: Path) -> None:
    """A file that is not a store is a StoreError naming it, not an empty queue."""
    bad = tmp_path / "jobs.json"
    bad.write_text("[1, 2")
    with pytest.raises(StoreError, match="is not valid JSON"):
        JsonStore(bad).load()
    bad.write_text(json.dumps({"jobs": []}))
    with pytest.raises(StoreError, match="is not an httpqueue store"):
        JsonStore(bad).load()
    not_sqlite = tmp_path / "jobs.sqlite"
    not_sqlite.write_text("plain text, no database")
    with pytest.raises(StoreError):
        open_store(not_sqlite).load()
    assert sqlite3.sqlite_version  # the stdlib module is there


async def test_the_sweeper_runs_on_its_own() -> None:
    """The server requeues a stale assignment without any request coming in."""
    async with open_job_server(config=QueueConfig(assignment_timeout=0.2)) as server:
        job = await server.submit({"config_path": "/a"})
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.post("/api/agent/next-job", json={"worker_id": "w1"})
        assert server.job(job["job_id"])["status"] == "assigned"
        with trio.fail_after(10):
            await server.wait_until(lambda: server.job(job["job_id"])["status"] == "queued")
