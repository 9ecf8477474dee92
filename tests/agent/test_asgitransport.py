"""``AppTransport``: an ASGI app reached by ``httpx`` in this process, as a server would
serve it (``agent/_asgitransport.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from agent._asgitransport import AppTransport

Message = MutableMapping[str, Any]


async def test_the_app_sees_the_request_as_a_server_gives_it() -> None:
    seen: list[tuple[dict[str, Any], bytes]] = []

    async def app(scope: Message, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        message = await receive()
        seen.append((dict(scope), message["body"]))
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"x-id", b"7")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"a":', "more_body": True})
        await send({"type": "http.response.body", "body": b"1}"})

    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(transport=AppTransport(app, nursery)) as http,
    ):
        response = await http.post(
            "http://127.0.0.1:0/2023-10-12/farms/f%2F1/workers?x=1&y=2",
            content=b"hello",
            headers={"X-Amz-Target": "T"},
        )
    assert response.status_code == 201
    assert response.json() == {"a": 1}
    assert response.headers["x-id"] == "7"
    scope, body = seen[0]
    assert body == b"hello"
    assert scope["type"] == "http"
    assert scope["method"] == "POST"
    assert scope["raw_path"] == b"/2023-10-12/farms/f%2F1/workers"
    assert scope["path"] == "/2023-10-12/farms/f/1/workers"
    assert scope["query_string"] == b"x=1&y=2"
    assert scope["client"] == ("127.0.0.1", 1)
    headers = dict(scope["headers"])
    assert headers[b"x-amz-target"] == b"T"
    assert headers[b"host"] == b"127.0.0.1:0"
    assert headers[b"content-length"] == b"5"


async def test_an_app_that_raises_answers_500_and_serves_the_next_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def app(scope: Message, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await receive()
        if calls == 1:
            raise RuntimeError("the handler broke")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(transport=AppTransport(app, nursery)) as http,
    ):
        first = await http.get("http://127.0.0.1:0/")
        second = await http.get("http://127.0.0.1:0/")
    assert (first.status_code, first.content) == (500, b"")
    assert (second.status_code, second.content) == (200, b"ok")
    assert "the handler broke" in caplog.text


async def test_an_app_that_ends_without_a_whole_response_is_a_closed_connection() -> None:
    async def silent(scope: Message, receive: Any, send: Any) -> None:
        await receive()

    async def half(scope: Message, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"par", "more_body": True})

    async with trio.open_nursery() as nursery:
        for app in (silent, half):
            async with httpx.AsyncClient(transport=AppTransport(app, nursery)) as http:
                with pytest.raises(httpx.RemoteProtocolError, match="without a whole response"):
                    await http.get("http://127.0.0.1:0/")


async def test_a_client_that_gives_up_leaves_the_app_running_and_it_hears_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    heard: list[str] = []
    finished = trio.Event()

    async def app(scope: Message, receive: Any, send: Any) -> None:
        await receive()
        heard.append((await receive())["type"])  # held until the client goes
        await trio.sleep(5)  # and the handler still finishes what it does
        finished.set()

    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(transport=AppTransport(app, nursery)) as http,
    ):
        with trio.move_on_after(1) as scope:
            await http.get("http://127.0.0.1:0/")
        assert scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert heard == ["http.disconnect"]
        assert not finished.is_set()
        await finished.wait()
