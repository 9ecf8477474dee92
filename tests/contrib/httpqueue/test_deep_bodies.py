"""A request body nested deeper than the queue server parses is a 400 with a clear
message, not a 500 and a logged traceback (issue 19)."""

from __future__ import annotations

import httpx
import pytest

from contrib.httpqueue import open_job_server

DEEP = b'{"job_name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
NESTED = b'{"worker_id": "w", "x": ' + b"[" * 200 + b"]" * 200 + b"}"


@pytest.mark.parametrize("body", [DEEP, NESTED], ids=["recursion", "past-the-bound"])
@pytest.mark.parametrize("path", ["/api/jobs", "/api/agent/next-job"])
async def test_deeply_nested_bodies_are_refused(path: str, body: bytes) -> None:
    async with open_job_server() as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post(path, content=body)
        assert response.status_code == 400
        assert "nested" in response.json()["error"]
        assert (await http.get("/api/health")).status_code == 200
