"""The worker's outbox and retries: order, backoff, persistence, and what is dropped."""

from __future__ import annotations

import gc
import json
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog.testing
import trio
import trio.testing

from actors import Backoff
from contrib.httpqueue import QueueClient, ServerRefused, ServerUnavailable
from contrib.httpqueue._queueclient import retrying
from contrib.httpqueue._reporter import RESTARTED, Reporter

Handler = Callable[[httpx.Request], httpx.Response]


class FakeServer:
    """Answers from a script; records every request (with the time it came)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str, dict[str, Any]]] = []
        self.down = False
        self.answers: list[httpx.Response] = []
        self.changed = trio.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.seen.append((trio.current_time(), request.url.path, body))
        self.changed.set()
        self.changed = trio.Event()
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.answers:
            return self.answers.pop(0)
        return httpx.Response(
            200, json={"job_id": body.get("job_id"), "status": body.get("status", "queued")}
        )

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for _, p, body in self.seen if p == path]


def client_for(server: FakeServer) -> tuple[httpx.AsyncClient, QueueClient]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return http, QueueClient(http, "http://queue.test")


class Unit(random.Random):
    """A random source that always says 0.5, so backoff delays are exact."""

    def random(self) -> float:
        return 0.5


async def test_retrying_backs_off_exponentially_then_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Unavailable calls are retried at 0.5, 1, 2 ... s (unit 0.5), capped; then the result."""
    attempts: list[float] = []

    async def call() -> str:
        attempts.append(trio.current_time())
        if len(attempts) < 6:
            raise ServerUnavailable("down")
        return "ok"

    start = trio.current_time()
    backoff = Backoff(max_delay=3.0, rng=Unit())
    assert await retrying(call, what="test", backoff=backoff) == "ok"
    # 0.5 x 2^n up to the cap, then the cap with jitter (0.8 + 0.2 x 0.5) x 3 = 2.7.
    assert [round(t - start, 6) for t in attempts] == [0, 0.5, 1.5, 3.5, 6.5, 9.2]
    assert backoff.attempt == 0  # reset after the success


async def test_retry_after_is_a_lower_bound(autojump_clock: trio.testing.MockClock) -> None:
    """A 429 or 503 with Retry-After waits at least that long (plus up to 20 %)."""
    server = FakeServer()
    server.answers = [httpx.Response(503, headers={"retry-after": "7"}, json={"error": "busy"})]
    http, client = client_for(server)
    async with http:
        start = trio.current_time()
        await retrying(
            lambda: client.heartbeat({"worker_id": "w"}), what="beat", backoff=Backoff(rng=Unit())
        )
    assert [round(t - start, 6) for t, _, _ in server.seen] == [0, 7.7]


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (httpx.Response(500, json={"error": "oops"}), ServerUnavailable),
        (httpx.Response(429, json={"error": "slow down"}), ServerUnavailable),
        (httpx.Response(200, text="<html>"), ServerUnavailable),
        (httpx.Response(404, json={"error": "no job j"}), ServerRefused),
        (httpx.Response(409, json={"error": "assigned to w2"}), ServerRefused),
    ],
)
async def test_answers_are_sorted_into_retry_or_refuse(
    response: httpx.Response, kind: type
) -> None:
    """5xx, 429 and garbage are worth retrying; other 4xx are a refusal, with the server's words."""
    server = FakeServer()
    server.answers = [response]
    http, client = client_for(server)
    async with http:
        with pytest.raises(kind) as info:
            await client.job_status({"job_id": "j"})
    if kind is ServerRefused:
        assert response.json()["error"] in str(info.value)


async def test_reports_go_out_in_order_and_wait_out_an_outage(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """While the server is down nothing is lost or reordered; each retry repeats its report_id."""
    server = FakeServer()
    server.down = True
    http, client = client_for(server)
    state = tmp_path / "state.json"
    async with http, trio.open_nursery() as nursery:
        reporter = Reporter(client, "w1", state, backoff=Backoff(max_delay=10, rng=Unit()))
        await reporter.load()
        await nursery.start(reporter.run)
        await reporter.job_started("j1")
        await reporter.job_ended("j1", "failed", error="exit code 3", exit_code=3)
        await reporter.job_rejected("j2", "no GPU")
        await trio.sleep(60)
        assert reporter.pending == 3
        stored = json.loads(state.read_text())
        assert [r["body"].get("status", "reject") for r in stored["outbox"]] == [
            "running",
            "failed",
            "reject",
        ]
        server.down = False
        # No fail_after: the state file is written in a thread, and the jumping clock
        # would reach any deadline while it is.
        await reporter.wait_delivered()
        nursery.cancel_scope.cancel()
    statuses = server.bodies("/api/agent/job-status")
    ids = {body["report_id"] for body in statuses if body["status"] == "running"}
    assert len(ids) == 1  # every attempt at the running report was the same report
    delivered = [(p, b.get("status") or b["reason"]) for _, p, b in server.seen]
    # Only the first report was tried while down; then all three, in order.
    assert set(delivered[:-3]) == {("/api/agent/job-status", "running")}
    assert delivered[-3:] == [
        ("/api/agent/job-status", "running"),
        ("/api/agent/job-status", "failed"),
        ("/api/agent/job-reject", "no GPU"),
    ]
    assert statuses[-1]["error"] == "exit code 3" and statuses[-1]["exit_code"] == 3
    assert json.loads(state.read_text())["outbox"] == []
    stats = reporter.statistics()
    assert (stats.pending, stats.delivered, stats.refused) == (0, 3, 0) and stats.retries > 3


async def test_a_refused_report_is_dropped_and_logged(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A 4xx answer cannot be helped by retrying: logged as an error, and the next report goes."""
    server = FakeServer()
    server.answers = [httpx.Response(404, json={"error": "no job j1"})]
    http, client = client_for(server)
    with structlog.testing.capture_logs() as logs:
        async with http, trio.open_nursery() as nursery:
            reporter = Reporter(client, "w1", tmp_path / "state.json")
            await reporter.load()
            await nursery.start(reporter.run)
            await reporter.job_started("j1")
            await reporter.job_started("j2")
            await reporter.wait_delivered()
            nursery.cancel_scope.cancel()
    assert [b["job_id"] for b in server.bodies("/api/agent/job-status")] == ["j1", "j2"]
    [refused] = [entry for entry in logs if entry["event"] == "httpqueue.report_refused"]
    assert refused["log_level"] == "error" and "no job j1" in refused["error"]
    assert reporter.statistics().refused == 1


async def test_what_a_stopped_worker_owed_is_sent_by_the_next(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Reports left unsent survive the process; jobs left running are reported failed."""
    server = FakeServer()
    server.down = True
    http, client = client_for(server)
    state = tmp_path / "state.json"
    async with http:
        async with trio.open_nursery() as nursery:
            first = Reporter(client, "w1", state)
            await first.load()
            await nursery.start(first.run)
            await first.job_started("j1")  # the worker dies while j1 runs
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        server.down = False
        async with trio.open_nursery() as nursery:
            second = Reporter(client, "w1", state)
            assert await second.load() == ["j1"]
            await nursery.start(second.run)
            await second.wait_delivered()
            nursery.cancel_scope.cancel()
    statuses = server.bodies("/api/agent/job-status")
    assert [b["status"] for b in statuses][-2:] == ["running", "failed"]
    assert statuses[-1]["error"] == RESTARTED
    assert json.loads(state.read_text()) == {
        "format": "farmhand-httpqueue-worker-1",
        "worker_id": "w1",
        "outbox": [],
        "running": [],
    }


async def test_an_unreadable_state_file_is_kept_aside(tmp_path: Path) -> None:
    """A corrupt state file is renamed for a person to look at; the worker starts afresh."""
    server = FakeServer()
    http, client = client_for(server)
    state = tmp_path / "state.json"
    state.write_text("{half")
    async with http:
        reporter = Reporter(client, "w1", state)
        assert await reporter.load() == []
    assert (tmp_path / "state.json.unreadable").read_text() == "{half"
    assert json.loads(state.read_text())["outbox"] == []


async def test_the_answer_to_a_report_is_passed_on(tmp_path: Path) -> None:
    """on_answer hears the job's status on the server (a person may have canceled it)."""
    server = FakeServer()
    server.answers = [
        httpx.Response(200, json={"job_id": "j1", "status": "canceled", "applied": False})
    ]
    heard: list[tuple[str, str]] = []
    http, client = client_for(server)
    async with http, trio.open_nursery() as nursery:
        reporter = Reporter(client, "w1", tmp_path / "s.json", on_answer=lambda *a: heard.append(a))
        await reporter.load()
        await nursery.start(reporter.run)
        await reporter.job_started("j1")
        await reporter.wait_delivered()
        nursery.cancel_scope.cancel()
    assert heard == [("j1", "canceled")]


async def test_a_request_cancelled_mid_body_leaves_no_generator_behind() -> None:
    """httpx sends json= bodies from an async generator, which a cancel mid-send leaves for
    the garbage collector (a ResourceWarning in Trio); the worker's client sends its own."""

    class Stall(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            async for _ in request.stream:  # type: ignore[union-attr]
                await trio.sleep_forever()
            raise AssertionError("not reached")

    async def cancelled_while_sending(send: Callable[[], Any]) -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            gc.collect()
            await trio.testing.wait_all_tasks_blocked()
        return [w for w in caught if issubclass(w.category, ResourceWarning)]

    async with httpx.AsyncClient(transport=Stall()) as http:
        client = QueueClient(http, "http://queue.test")
        assert await cancelled_while_sending(lambda: http.post("http://queue.test/", json={})) != []
        assert await cancelled_while_sending(lambda: client.heartbeat({"worker_id": "w"})) == []
