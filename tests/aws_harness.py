"""Helpers for the AWS adapters' end-to-end tests: moto on loopback, fakes, agent processes.

- ``Moto``: moto's server on 127.0.0.1 that can be stopped and started again
  on the same port (moto keeps its state in this process, so what the test
  created survives), for "the service is unreachable for a while".
- ``FakeHttp``: a tiny threaded HTTP server on loopback answering fixed routes
  (the ECS task metadata endpoint, the EC2 instance-metadata service).
- ``Gate``: a named pipe a job opens to say it has started (the test waits for
  it, no sleeps), and optionally a second one it waits on until released.
- ``AgentProcess``: ``python -m agent <command> ...`` as a real subprocess, its
  JSON log events read as they come, so a test can wait for one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import trio
from moto.dynamodb.models import DynamoDBBackend
from moto.server import ThreadedMotoServer

PY = sys.executable
REGION = "us-west-2"
ROOT = Path(__file__).resolve().parent.parent


def _serialize_dynamodb_writes() -> None:
    """Make moto's DynamoDB writes atomic, as DynamoDB's are.

    moto's server answers each request on its own thread, and its
    ``update_item`` reads the item, checks the ``ConditionExpression`` and then
    writes, with no lock between: two conditional writes racing on one item can
    both pass the check. DynamoDB applies a conditional write atomically, and
    farmhand's claim of a one-shot record (``INITIALIZING`` -> ``RUNNING``)
    relies on exactly that; under load the two tasks of
    ``test_two_tasks_never_run_one_record`` both "claimed" the record, one of
    them later found it was not its own any more and exited 4. The lock belongs
    to the stand-in, not to farmhand: one lock over every write, as the real
    service gives per item.
    """
    if getattr(DynamoDBBackend, "_farmhand_atomic", False):
        return
    lock = threading.RLock()

    def locked(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock:
                return method(self, *args, **kwargs)

        return call

    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        setattr(DynamoDBBackend, name, locked(getattr(DynamoDBBackend, name)))
    DynamoDBBackend._farmhand_atomic = True  # type: ignore[attr-defined]


_serialize_dynamodb_writes()


class Moto:
    """moto's server on loopback (see the module docstring)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: ThreadedMotoServer | None = None
        self._clients: dict[str, Any] = {}
        # moto's werkzeug server logs every request; the tests do not need them.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        assert self._server is None
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server

    def stop(self) -> None:
        assert self._server is not None
        self._server.stop()
        self._server = None

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` on this server (made once; the port never changes)."""
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = boto3.session.Session().client(
                service,
                endpoint_url=self.url,
                region_name=REGION,
                aws_access_key_id="AKIDFARMHANDTEST",
                aws_secret_access_key="farmhand-test-secret",
            )
        return client

    def env(self) -> dict[str, str]:
        """Variables that point boto3 and the agent at this server."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": REGION}


# ----------------------------------------------------------------------- fake HTTP


Route = Callable[[BaseHTTPRequestHandler], tuple[int, Mapping[str, str], bytes]]


class FakeHttp:
    """Serve ``routes`` (``"GET /task"`` -> handler) on 127.0.0.1; ``seen`` lists requests."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = dict(routes)
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                fake.seen.append((self.command, self.path, dict(self.headers.items())))
                route = fake.routes.get(f"{self.command} {self.path}")
                headers: Mapping[str, str] = {}
                if route is None:
                    status, body = 404, b"not found"
                else:
                    status, headers, body = route(self)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeHttp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def json_route(document: Any, status: int = 200) -> Route:
    body = json.dumps(document).encode()
    return lambda _request: (status, {"Content-Type": "application/json"}, body)


# ----------------------------------------------------------------------- gates


class Gate:
    """Named pipes between a test and its job: ``started`` (the job says it runs) and
    ``release`` (the job waits until the test lets it go)."""

    def __init__(self, directory: Path) -> None:
        self.started = directory / "started.fifo"
        self.release = directory / "release.fifo"
        os.mkfifo(self.started)
        os.mkfifo(self.release)

    def code(self, then: str = "", *, before: str = "", wait_for_release: bool = False) -> str:
        """Python for the job: ``before``, say it started, optionally wait to be
        released, then ``then``."""
        lines = [
            "import os, signal, sys, time",
            before,
            f"open({str(self.started)!r}, 'w').close()",
        ]
        if wait_for_release:
            lines.append(f"open({str(self.release)!r}).read()")
        lines.append(then or "pass")
        return "\n".join(lines)

    async def wait_started(self, limit: float = 30.0) -> None:
        await self._rendezvous(self.started, os.O_RDONLY, limit)

    async def let_go(self, limit: float = 30.0) -> None:
        await self._rendezvous(self.release, os.O_WRONLY, limit)

    async def _rendezvous(self, path: Path, mode: int, limit: float) -> None:
        # Opening a FIFO blocks until the other side opens it: that is the signal.
        def meet() -> None:
            os.close(os.open(path, mode))

        with trio.fail_after(limit):
            try:
                # Abandoned on cancel: the thread is freed below, by opening the other end.
                await trio.to_thread.run_sync(meet, abandon_on_cancel=True)
            except trio.TooSlowError:
                _unblock(path, mode)
                raise


def _unblock(path: Path, mode: int) -> None:
    other = os.O_WRONLY if mode == os.O_RDONLY else os.O_RDONLY
    try:
        os.close(os.open(path, other | os.O_NONBLOCK))
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise


# ----------------------------------------------------------------------- agent processes


class AgentProcess:
    """A running ``python -m agent ...`` (see the module docstring)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self.stdout = bytearray()
        self._changed = trio.Event()
        self._done = trio.Event()

    def names(self) -> list[str]:
        return [str(event.get("event")) for event in self.events]

    def find(self, name: str) -> dict[str, Any]:
        return next(event for event in self.events if event.get("event") == name)

    async def wait_for(self, name: str, limit: float = 30.0) -> dict[str, Any]:
        with trio.fail_after(limit):
            while True:
                for event in self.events:
                    if event.get("event") == name:
                        return event
                if self._done.is_set():
                    raise AssertionError(f"the agent exited without {name}: {self.names()}")
                await self._changed.wait()

    async def wait(self, limit: float = 60.0) -> int:
        with trio.fail_after(limit):
            code = await self.process.wait()
            await self._done.wait()
        return code

    async def _read_stderr(self, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._take(line.decode("utf-8", "replace"))
        if buffer:
            self._take(buffer.decode("utf-8", "replace"))
        self._done.set()
        self._notify()

    async def _read_stdout(self, stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            self.stdout += chunk

    def _take(self, line: str) -> None:
        self.stderr_lines.append(line)
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict):
            self.events.append(event)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def agent_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    unset: Sequence[str] = (),
) -> AsyncIterator[AgentProcess]:
    """Start ``python -m agent *argv`` with ``env`` on top of ours, less the variables
    in ``unset``; kill it if left running."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    for name in unset:
        full_env.pop(name, None)
    process = await trio.lowlevel.open_process(
        [PY, "-m", "agent", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        cwd=str(cwd or ROOT),
    )
    agent = AgentProcess(process)
    async with trio.open_nursery() as nursery:
        assert process.stderr is not None
        assert process.stdout is not None
        nursery.start_soon(agent._read_stderr, process.stderr)
        nursery.start_soon(agent._read_stdout, process.stdout)
        try:
            yield agent
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()


def moto_server() -> Iterator[Moto]:
    """For a module-scoped fixture: one moto server for the module's tests."""
    server = Moto()
    server.start()
    yield server
    if server.running:
        server.stop()


def point_at(moto: Moto, monkeypatch: Any) -> Moto:
    """For a test fixture: this process's AWS clients go to ``moto`` (restarted if a
    test left it down)."""
    if not moto.running:
        moto.start()
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    return moto
