"""Channel operations that take no loop step when they need not wait.

trio's ``receive()`` and ``send()`` are checkpoints: each yields to the loop
even when an item is waiting or there is room, so a consumer that takes a
burst of a dozen events pays a dozen loop steps for it (about ten of them per
task of a session: its events, its reports). These try the ``_nowait`` form
first and wait only when they must; items keep their order. A consumer that
uses them yields whenever its channel is empty, so it cannot starve the
producer, which runs only then.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class ready_items(Generic[T]):  # a lower-case name: it reads as a function in ``async for``
    """``async for item in ready_items(channel)``: as ``async for item in channel``, without
    a loop step for an item that is waiting already."""

    def __init__(self, channel: trio.MemoryReceiveChannel[T]) -> None:
        self._channel = channel

    def __aiter__(self) -> ready_items[T]:
        return self

    async def __anext__(self) -> T:
        try:
            try:
                return self._channel.receive_nowait()
            except trio.WouldBlock:
                return await self._channel.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


async def send_ready(channel: trio.MemorySendChannel[T], item: T) -> None:
    """``channel.send(item)``, without a loop step when there is room for it."""
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:
        await channel.send(item)
