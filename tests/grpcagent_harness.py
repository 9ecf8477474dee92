"""Helpers for the gRPC CI agent's tests: the agent in this process, a real gRPC client.

- ``running_agent(config)``: ``contrib.grpcagent.serve`` in a nursery for the
  block, on a free loopback port; leaving asks it to stop and waits.
- ``Client``: grpcio's synchronous client, each call in a worker thread, so
  the test's Trio loop (which also runs the agent's Trio side) never blocks.
- ``Fifo``: a named pipe a job blocks on (``read line < FIFO``) until the test
  releases it: how a test knows the process is still running, without sleeps.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import grpc
import trio

from agent.jobs import Shutdown
from contrib.grpcagent import AgentConfig, ServingAgent, serve
from contrib.grpcagent import ci_agent_pb2 as pb
from contrib.grpcagent import ci_agent_pb2_grpc as pb_grpc


def config_for(tmp_path: Path, **changes: Any) -> AgentConfig:
    return AgentConfig(work_dir=tmp_path / "work", port=0, grace=5.0, **changes)


@asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[ServingAgent]:
    shutdown = Shutdown(grace=config.grace)
    async with trio.open_nursery() as nursery:
        served: ServingAgent = await nursery.start(lambda task_status: serve(
            config, shutdown=shutdown, task_status=task_status))  # fmt: skip
        try:
            yield served
        finally:
            shutdown.stop("the test is over")


class Events:
    """One ``Run`` call's responses, read in a worker thread."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.seen: list[pb.RunEvent] = []

    async def next(self) -> pb.RunEvent | None:
        # Abandoned on cancel: the thread is blocked in grpc's iterator, which the
        # caller's call.cancel() (in Client.run's exit) unblocks.
        event = await trio.to_thread.run_sync(next, self.call, None, abandon_on_cancel=True)
        if event is not None:
            self.seen.append(event)
        return event

    async def until(self, kind: str, text: str | None = None) -> pb.RunEvent:
        """Read until an event of ``kind`` (with an output line that is ``text``)."""
        with trio.fail_after(30):
            while True:
                event = await self.next()
                if event is None:
                    raise AssertionError(f"the stream ended before a {kind}: {self.seen}")
                if event.WhichOneof("event") == kind and (
                    text is None or text in event.output.lines
                ):
                    return event

    async def rest(self) -> list[pb.RunEvent]:
        """Read to the end of the stream; everything read so far."""
        with trio.fail_after(30):
            while await self.next() is not None:
                pass
        return self.seen

    def lines(self, phase: str | None = None) -> list[str]:
        return [
            line
            for event in self.seen
            if event.WhichOneof("event") == "output"
            and (phase is None or event.output.phase == phase)
            for line in event.output.lines
        ]

    def final(self) -> pb.RunEvent:
        return self.seen[-1]


@attrs.define
class Client:
    channel: grpc.Channel
    metadata: Sequence[tuple[str, str]] = ()

    @classmethod
    def connect(cls, port: int, **kwargs: Any) -> Client:
        return cls(grpc.insecure_channel(f"127.0.0.1:{port}"), **kwargs)

    @property
    def stub(self) -> pb_grpc.CiAgentStub:
        return pb_grpc.CiAgentStub(self.channel)

    async def capacity(self) -> pb.CapacityReply:
        return await trio.to_thread.run_sync(
            lambda: self.stub.Capacity(pb.CapacityRequest(), metadata=self.metadata, timeout=30)
        )

    async def cancel(self, job_id: str, grace: float = 0) -> bool:
        request = pb.CancelRequest(job_id=job_id, grace_seconds=grace)
        reply = await trio.to_thread.run_sync(
            lambda: self.stub.Cancel(request, metadata=self.metadata, timeout=30)
        )
        return bool(reply.found)

    @asynccontextmanager
    async def run(self, **fields: Any) -> AsyncIterator[Events]:
        call = self.stub.Run(pb.RunRequest(**fields), metadata=self.metadata)
        try:
            yield Events(call)
        finally:
            call.cancel()

    async def run_all(self, **fields: Any) -> Events:
        async with self.run(**fields) as events:
            await events.rest()
        return events

    def close(self) -> None:
        self.channel.close()


class Fifo:
    """A named pipe: ``wait_line()`` in a job's shell blocks until ``release()``."""

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.path = directory / name
        os.mkfifo(self.path)

    @property
    def wait_line(self) -> str:
        return f"read line < {self.path}"

    async def release(self) -> None:
        def write() -> None:
            with open(self.path, "w") as pipe:  # blocks until the job opens it to read
                pipe.write("go\n")

        with trio.fail_after(30):
            # Abandoned on timeout only (the test then fails anyway).
            await trio.to_thread.run_sync(write, abandon_on_cancel=True)
