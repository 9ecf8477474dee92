"""End to end over real loopback HTTP: httpx's own transport against a tiny h11 server."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from functools import partial

import h11
import httpx
import pytest
import trio
import trio.testing

from agent._errors import WorkerOffline
from agent.deadline import CredentialHolder, DeadlineClient, ServiceEndpoint
from tests.agent.deadline.test_aws_support import (
    ACCESS_KEY,
    FARM,
    FLEET,
    REGION,
    WORKER,
    FakeService,
    conflict,
    error,
    holder,
    ok,
)

App = Callable[[httpx.Request], httpx.Response]


async def _serve_http(stream: trio.SocketStream, app: App, connections: list[int]) -> None:
    """Serve HTTP/1.1 on one connection (keep-alive included) until the client closes it."""
    connections.append(1)
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            request: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed
                    return
            assert request is not None
            headers = [(name.decode(), value.decode()) for name, value in request.headers]
            host = dict(headers)["host"]
            response = app(
                httpx.Request(
                    request.method.decode(),
                    f"http://{host}{request.target.decode()}",
                    headers=headers,
                    content=body,
                )
            )
            content = response.content
            out = [(name, value) for name, value in response.headers.items()]
            out = [(n, v) for n, v in out if n.lower() != "content-length"]
            out.append(("content-length", str(len(content))))
            await stream.send_all(
                conn.send(h11.Response(status_code=response.status_code, headers=out))
            )
            await stream.send_all(conn.send(h11.Data(data=content)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()


async def test_worker_lifecycle_over_loopback_http() -> None:
    """A worker's calls go over real TCP on loopback: signed, parsed, retried, on one
    kept-alive connection, with a credential swap after AssumeFleetRoleForWorker."""
    fake = FakeService()
    fake.secrets["ASIAFLEET"] = "fleet-secret"
    fake.answer(
        ok({"workerId": WORKER}),
        ok(
            {
                "credentials": {
                    "accessKeyId": "ASIAFLEET",
                    "secretAccessKey": "fleet-secret",
                    "sessionToken": "fleet-token",
                    "expiration": "2026-11-24T17:00:00Z",
                }
            }
        ),
        ok({"log": {"logDriver": "awslogs", "options": {}}}),
        error(500, "InternalServerErrorException", "hiccup"),
        ok({"assignedSessions": {}, "cancelSessionActions": {}, "updateIntervalSeconds": 15}),
        conflict("STATUS_CONFLICT", WORKER, "NOT_RESPONDING"),
    )
    connections: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_http(stream, fake.handler, connections)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        credentials: CredentialHolder = holder()
        # trust_env=False: no proxy from the environment may catch loopback traffic.
        async with httpx.AsyncClient(trust_env=False) as http:
            deadline = DeadlineClient(
                http,
                ServiceEndpoint("deadline", url, REGION, False),
                credentials,
                random=lambda: 0.0,
            )
            created = await deadline.create_worker(farm_id=FARM, fleet_id=FLEET)
            worker = deadline.for_worker(FARM, FLEET, created["workerId"])
            role = await worker.assume_fleet_role_for_worker()
            credentials.set_from_api(role["credentials"])
            await worker.update_worker(status="STARTED")
            schedule = await worker.update_worker_schedule({})
            with pytest.raises(WorkerOffline):
                await worker.update_worker_schedule({})
        nursery.cancel_scope.cancel(reason="test over")
    assert schedule["updateIntervalSeconds"] == 15
    assert fake.operations() == [
        "CreateWorker",
        "AssumeFleetRoleForWorker",
        "UpdateWorker",
        "UpdateWorkerSchedule",
        "UpdateWorkerSchedule",
        "UpdateWorkerSchedule",
    ]
    assert [seen.access_key for seen in fake.seen] == [ACCESS_KEY] * 2 + ["ASIAFLEET"] * 4
    assert {seen.host for seen in fake.seen} == {f"127.0.0.1:{port}"}
    assert connections == [1]  # one kept-alive connection for every call
    assert deadline.statistics().retries == 1


async def test_an_attempt_cut_short_mid_body_leaves_no_generator_behind() -> None:
    """A call cancelled while its body is being sent leaves nothing for the garbage
    collector to finalize (httpx's content= bodies are async generators: a
    ResourceWarning under Trio, raised in whatever code runs next)."""

    class Stall(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            async for _ in request.stream:  # type: ignore[union-attr]
                await trio.sleep_forever()
            raise AssertionError("not reached")

    async with httpx.AsyncClient(transport=Stall()) as http:
        deadline = DeadlineClient(
            http, ServiceEndpoint("deadline", "http://deadline.test", REGION, False), holder()
        )
        worker = deadline.for_worker(FARM, FLEET, WORKER)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.update_worker_schedule, {})
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            gc.collect()
            await trio.testing.wait_all_tasks_blocked()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
