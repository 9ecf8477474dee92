"""Request bodies that a cancelled request cannot leave half-sent.

httpx sends ``content=`` and ``json=`` bodies from an async generator. A
request cancelled while its body is being written (a worker stopping while it
polls, an attempt timing out) leaves that generator suspended; its garbage
collection is then a ResourceWarning under Trio, raised in whatever code
happens to run at the time. A plain async iterator object has nothing to
finalize.
"""

from __future__ import annotations

import httpx


class BytesBody(httpx.AsyncByteStream):
    """``data`` as one chunk, from an iterator that is not a generator."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> _Once:
        return _Once(self._data)


class _Once:
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


def request_with_body(
    http: httpx.AsyncClient,
    method: str,
    url: httpx.URL | str,
    data: bytes | None,
    *,
    headers: httpx.Headers | dict[str, str] | list[tuple[str, str]] | None = None,
) -> httpx.Request:
    """``http.build_request`` (the client's own headers merged in), with ``data`` as a
    ``BytesBody`` and its ``Content-Length``."""
    request = http.build_request(method, url, headers=headers)
    if data is None:
        return request
    request.headers["content-length"] = str(len(data))
    return httpx.Request(method, request.url, headers=request.headers, stream=BytesBody(data))
