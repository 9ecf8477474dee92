"""The monitor's page and API (``agent/mockfarm/_monitor.py``), over real HTTP.

The browser tests (``test_monitor_browser.py``) drive the page itself; these pin
what it reads: server-side paging, the read-only default, actions through the
farm's handlers, who may look, and the event streams.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from agent.mockfarm import FarmConfig, MockFarm, MonitorConfig, open_mock_farm
from tests.mockfarm_helpers import open_events

ACT = {"X-Farmhand-Monitor": "1"}


def template(tasks: int) -> dict[str, Any]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": f"{tasks} tasks",
        "steps": [
            {
                "name": "S",
                "parameterSpace": {
                    "taskParameterDefinitions": [
                        {"name": "F", "type": "INT", "range": f"1-{tasks}"}
                    ]
                },
                "script": {"actions": {"onRun": {"command": "true"}}},
            }
        ],
    }


@asynccontextmanager
async def monitored(
    actions: bool = False, **options: Any
) -> AsyncIterator[tuple[MockFarm, httpx.AsyncClient]]:
    async with (
        open_mock_farm(monitor=MonitorConfig(actions=actions, event_interval=0), **options) as farm,
        httpx.AsyncClient(base_url=farm.endpoint_url, timeout=30) as client,
    ):
        yield farm, client


def start_session(farm: MockFarm) -> str:
    """A scripted worker takes the farm's work (as its UpdateWorkerSchedule would); the
    session's id."""
    handlers = farm.farm.handlers
    ids = {"farmId": farm.farm_id, "fleetId": farm.fleet_id}
    worker_id = handlers["CreateWorker"](dict(ids))["workerId"]
    handlers["UpdateWorker"]({**ids, "workerId": worker_id, "status": "STARTED"})
    handlers["UpdateWorkerSchedule"]({**ids, "workerId": worker_id})
    (session,) = farm.worker(worker_id).sessions.values()
    return session.session_id


def put_lines(farm: MockFarm, session_id: str, *messages: str) -> None:
    session = farm.state.sessions[session_id]
    farm.logs.put_log_events(
        {
            "logGroupName": session.log_group_name,
            "logStreamName": session.log_stream_name,
            "logEvents": [
                {"timestamp": int(time.time() * 1000), "message": m} for i, m in enumerate(messages)
            ],
        }
    )
    farm.notify(work=False)


async def test_the_page_comes_from_the_package_with_nothing_external() -> None:
    """/monitor and its script and style are served by the farm; none loads anything
    from elsewhere, and the page forbids it (CSP)."""
    async with monitored() as (_, client):
        page = await client.get("/monitor")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for path in ("/monitor/static/monitor.js", "/monitor/static/monitor.css"):
            asset = await client.get(path)
            assert asset.status_code == 200
            assert "http://" not in asset.text and "https://" not in asset.text
        assert "http" not in page.text
        assert (await client.get("/monitor/static/../_monitor.py")).status_code == 404


async def test_a_farm_without_the_monitor_has_no_such_route() -> None:
    """open_mock_farm() serves no /monitor unless asked."""
    async with open_mock_farm() as farm, httpx.AsyncClient() as client:
        assert farm.monitor_url == ""
        assert (await client.get(f"{farm.endpoint_url}/monitor")).status_code == 404


async def test_lists_are_paged_on_the_server() -> None:
    """A step of 1,200 tasks comes a page at a time (at most 500); jobs newest first."""
    async with monitored() as (farm, client):
        first = farm.create_job(template(3))
        job_id = farm.create_job(template(1200))
        jobs = (await client.get("/monitor/api/jobs")).json()
        assert [j["jobId"] for j in jobs["items"]] == [job_id, first]
        assert jobs["items"][0]["tasks"] == 1200
        assert jobs["items"][0]["taskCounts"] == {"READY": 1200}
        step_id = (await client.get(f"/monitor/api/jobs/{job_id}")).json()["steps"][0]["stepId"]
        tasks = f"/monitor/api/jobs/{job_id}/steps/{step_id}/tasks"
        page = (await client.get(tasks, params={"offset": 1150, "limit": 100})).json()
        assert (page["total"], page["offset"], len(page["items"])) == (1200, 1150, 50)
        assert page["items"][0]["index"] == 1150
        assert page["items"][0]["parameters"] == {"F": "1151"}
        assert len((await client.get(tasks, params={"limit": 100_000})).json()["items"]) == 500
        only = (await client.get(f"/monitor/api/jobs?queue={farm.queue_id}&status=READY")).json()
        assert only["total"] == 2
        missing = await client.get("/monitor/api/jobs/job-nope")
        assert missing.status_code == 404
        assert (await client.get(tasks, params={"offset": "x"})).status_code == 400


async def test_it_is_read_only_unless_actions_are_allowed() -> None:
    """Without MonitorConfig(actions=True) every action is refused and nothing changes."""
    async with monitored() as (farm, client):
        job_id = farm.create_job(template(2))
        answer = await client.post(
            "/monitor/api/actions", json={"action": "cancel_job", "jobId": job_id}, headers=ACT
        )
        assert answer.status_code == 403
        assert "read-only" in answer.json()["message"]
        assert farm.job(job_id).status == "READY"
        overview = (await client.get("/monitor/api/overview")).json()
        assert overview["actionsAllowed"] is False


async def test_actions_go_through_the_farms_handlers() -> None:
    """Priority, cancel, suspend and requeue are UpdateJob/UpdateTask as the API has them
    (validated by the model); stopping a worker is what stop-worker does."""
    async with monitored(actions=True) as (farm, client):
        job_id = farm.create_job(template(3))
        job = farm.job(job_id)

        async def act(**request: Any) -> httpx.Response:
            return await client.post("/monitor/api/actions", json=request, headers=ACT)

        assert (await act(action="set_priority", jobId=job_id, priority=70)).status_code == 200
        assert job.priority == 70 and job.updated_at is not None
        refused = await act(action="set_priority", jobId=job_id, priority=101)
        assert refused.status_code == 400
        assert refused.json()["message"].startswith("ValidationException: ")
        task = job.steps[0].tasks[1]
        answer = await act(action="cancel_task", jobId=job_id, taskId=task.task_id)
        assert answer.json() == {"taskId": task.task_id, "status": "CANCELED"}
        assert (await act(action="suspend_job", jobId=job_id)).status_code == 200
        assert job.task_counts["SUSPENDED"] == 2
        assert (await act(action="requeue_job", jobId=job_id)).json()["status"] == "READY"
        assert job.task_counts["READY"] == 3
        session_id = start_session(farm)
        worker_id = farm.state.sessions[session_id].worker.worker_id
        assert (await act(action="stop_worker", workerId=worker_id)).status_code == 200
        assert farm.worker(worker_id).stop_requested
        assert (await act(action="explode")).status_code == 400
        assert (await act(action="cancel_job", jobId="job-nope")).status_code == 404


async def test_an_action_needs_the_pages_header_and_origin() -> None:
    """A cross-site form cannot act: the custom header and a same-origin Origin are needed."""
    async with monitored(actions=True) as (farm, client):
        job_id = farm.create_job(template(1))
        body = {"action": "cancel_job", "jobId": job_id}
        bare = await client.post("/monitor/api/actions", json=body)
        assert bare.status_code == 403
        foreign = await client.post(
            "/monitor/api/actions", json=body, headers={**ACT, "Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        assert farm.job(job_id).status == "READY"
        own = await client.post(
            "/monitor/api/actions",
            json=body,
            headers={**ACT, "Origin": farm.endpoint_url},
        )
        assert own.status_code == 200 and farm.job(job_id).status == "CANCELED"


async def test_it_answers_loopback_names_only() -> None:
    """A request for another host name (DNS rebinding) is refused."""
    async with monitored() as (_, client):
        assert (await client.get("/monitor/api/jobs", headers={"Host": "localhost"})).is_success
        refused = await client.get("/monitor/api/jobs", headers={"Host": "evil.example:18080"})
        assert refused.status_code == 403


async def test_a_farm_that_verifies_signatures_shows_it_to_this_host_only() -> None:
    """With keys the monitor still answers loopback clients (the test's)."""
    async with monitored(keys={"AKIDMONITOR": "secret"}) as (_, client):
        assert (await client.get("/monitor/api/overview")).is_success


async def test_the_event_stream_says_when_the_farm_changed() -> None:
    """/monitor/api/events: one change event at once, another after a change."""
    async with (
        monitored() as (farm, _),
        open_events(farm.endpoint_url, "/monitor/api/events") as events,
    ):
        assert b"content-type: text/event-stream" in events.headers.lower()
        assert await events.next() == ("change", {"generation": 0})
        farm.create_job(template(1))
        assert await events.next() == ("change", {"generation": 1})


async def test_a_change_while_the_stream_rests_still_makes_an_event() -> None:
    """Events are spaced by event_interval; a change made meanwhile is not lost."""
    async with (
        open_mock_farm(monitor=MonitorConfig(event_interval=0.5)) as farm,
        open_events(farm.endpoint_url, "/monitor/api/events") as events,
    ):
        assert await events.next() == ("change", {"generation": 0})
        farm.create_job(template(1))
        assert await events.next() == ("change", {"generation": 1})
        farm.create_job(template(1))  # while the stream rests after the last event
        with trio.fail_after(10):
            assert await events.next() == ("change", {"generation": 2})


async def test_a_session_log_streams_lines_as_they_arrive() -> None:
    """The log stream sends what the store has, then each line as PutLogEvents brings it;
    the JSON log pages the same lines; the worker's usage line is among them."""
    async with monitored() as (farm, client):
        farm.create_job(template(1))
        session_id = start_session(farm)
        put_lines(farm, session_id, "first", "second")
        session = (await client.get(f"/monitor/api/sessions/{session_id}")).json()
        assert session["lifecycleStatus"] == "STARTED" and session["actions"] >= 1
        path = f"/monitor/api/sessions/{session_id}/log/stream"
        async with open_events(farm.endpoint_url, path) as events:
            assert await events.next() == ("start", {"first": 0, "total": 2, "kept": True})
            name, lines = await events.next()
            assert name == "lines"
            assert [(line["index"], line["message"]) for line in lines] == [
                (0, "first"),
                (1, "second"),
            ]
            put_lines(farm, session_id, "[farmhand] usage: wall 0.010 s")
            name, lines = await events.next()
            assert [line["message"] for line in lines] == ["[farmhand] usage: wall 0.010 s"]
        page = (await client.get(f"{path.removesuffix('/stream')}?offset=1&limit=1")).json()
        assert [e["message"] for e in page["items"]] == ["second"] and page["total"] == 3
        actions = (await client.get(f"/monitor/api/sessions/{session_id}/actions")).json()
        assert actions["items"][0]["kind"] == "taskRun"
        assert actions["items"][0]["what"] == "S #0"


async def test_workers_show_status_host_sessions_and_heartbeat() -> None:
    """A worker's row: status, host, capabilities, its session, its last heartbeat."""
    async with monitored() as (farm, client):
        farm.create_job(template(1))
        session_id = start_session(farm)
        (worker,) = (await client.get("/monitor/api/workers")).json()["items"]
        assert worker["status"] == "RUNNING"
        assert worker["sessions"][0]["sessionId"] == session_id
        assert worker["lastHeartbeatAt"] is not None
        overview = (await client.get("/monitor/api/overview")).json()
        assert overview["fleets"][0]["workersByStatus"] == {"RUNNING": 1}
        assert overview["queues"][0]["jobsByStatus"] == {"ASSIGNED": 1}


async def test_streams_end_when_the_farm_closes() -> None:
    """An event stream still open does not hold the farm's shutdown up: it ends."""
    ended = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_mock_farm(monitor=MonitorConfig()) as farm:
                opened = trio.Event()

                async def read() -> None:
                    async with open_events(farm.endpoint_url, "/monitor/api/events") as events:
                        opened.set()
                        try:
                            while True:
                                await events.next()
                        except EOFError:
                            pass  # the farm closed the stream: what this test waits for
                    ended.set()

                nursery.start_soon(read)
                await opened.wait()
            await ended.wait()


@pytest.mark.parametrize("persistent", [False, True])
async def test_actions_on_a_persistent_farm_are_committed(persistent: bool, tmp_path: Any) -> None:
    """An action's change is committed before it is answered, as an API call's is."""
    options: dict[str, Any] = {"state_dir": tmp_path} if persistent else {}
    async with monitored(actions=True, config=FarmConfig(), **options) as (farm, client):
        job_id = farm.create_job(template(1))
        answer = await client.post(
            "/monitor/api/actions", json={"action": "cancel_job", "jobId": job_id}, headers=ACT
        )
        assert answer.status_code == 200
    if persistent:
        async with open_mock_farm(state_dir=tmp_path) as again:
            assert again.job(job_id).status == "CANCELED"
