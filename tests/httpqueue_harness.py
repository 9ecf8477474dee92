"""Running HTTP queue workers against the reference server, over real loopback HTTP."""

from __future__ import annotations

import json
import random
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from contrib.httpqueue import Capabilities, JobServer, QueueWorker, WorkerConfig

PY = sys.executable

#: The job every test runs: it does what its config file (argv[1]) says.
JOB_SCRIPT = """\
import json, os, signal, socket, sys, time
config = json.load(open(sys.argv[1]))
def notify(word):
    # Tells the test, which listens on loopback (see Notifier).
    if config.get("notify"):
        with socket.create_connection(("127.0.0.1", config["notify"])) as connection:
            connection.sendall(f"{word}:{config.get('tag', '')}\\n".encode())
if config.get("on_term") == "exit":
    def on_term(*_):
        print("got SIGTERM", flush=True)
        notify("sigterm")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
elif config.get("on_term") == "ignore":
    def on_term(*_):
        print("ignoring SIGTERM", flush=True)
        notify("sigterm")
    signal.signal(signal.SIGTERM, on_term)
for line in config.get("print", []):
    print(line, flush=True)
notify("ready")
if "wait_for" in config:
    while not os.path.exists(config["wait_for"]):
        time.sleep(0.01)
time.sleep(config.get("sleep", 0))
sys.exit(config.get("exit", 0))
"""


@attrs.define
class Paths:
    root: Path

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def script(self) -> Path:
        return self.root / "job.py"

    def command(self) -> tuple[str, ...]:
        return (PY, str(self.script), "{config_path}")

    def config(self, name: str, **behaviour: Any) -> str:
        """Write a job config that makes the job behave so; its path."""
        path = self.shared / "configs" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"tag": name, **behaviour}))
        return str(path)

    def log(self, job_id: str) -> str:
        path = self.shared / "jobs" / job_id / "logs" / f"{job_id}.log"
        return path.read_text() if path.exists() else ""


def make_paths(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path)
    paths.shared.mkdir(parents=True, exist_ok=True)
    paths.script.write_text(JOB_SCRIPT)
    return paths


def worker_config(paths: Paths, server_url: str, **changes: Any) -> WorkerConfig:
    config = WorkerConfig(
        server=server_url,
        shared_dir=paths.shared,
        worker_id="w1",
        command=paths.command(),
        poll_interval=0.05,
        heartbeat_interval=0.1,
        status_poll_interval=0.05,
        max_retry_delay=0.2,
        report_timeout=10.0,
        grace=10.0,
        request_timeout=5.0,
        gpus=0,
        session_root=paths.root / "sessions",
    )
    return attrs.evolve(config, **changes)


@asynccontextmanager
async def running_worker(
    config: WorkerConfig, capabilities: Capabilities | None = None
) -> AsyncIterator[QueueWorker]:
    """A worker running for the block; leaving it asks the worker to finish, then waits."""
    worker = QueueWorker(config, capabilities=capabilities or Capabilities())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await worker.wait_started()
        yield worker
        worker.shutdown.finish("the test is over")


async def job_status(server: JobServer, job_id: str, *statuses: str) -> dict[str, Any]:
    """Wait (at most 30 s) until the job has one of ``statuses``; the job."""
    with trio.fail_after(30):
        await server.wait_until(lambda: server.job(job_id)["status"] in statuses)
    return server.job(job_id)


class Notifier:
    """Lines that job processes send to the test over loopback (``notify`` in a job config):
    how a test learns that a job has set up its signal handler, with no polling."""

    def __init__(self) -> None:
        self.port = 0
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def wait(self, line: str) -> None:
        with trio.fail_after(30):
            while line not in self.lines:
                await self._changed.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        data = b""
        async with stream:
            async for chunk in stream:
                data += chunk
        self.lines.extend(data.decode().splitlines())
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def open_notifier() -> AsyncIterator[Notifier]:
    notifier = Notifier()
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        notifier.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, notifier._handle, listeners)
        yield notifier
        nursery.cancel_scope.cancel(reason="the test is over")


def free_port() -> int:
    """A loopback port nobody listens on, for a server that starts later.

    It is chosen below the kernel's ephemeral range, from which every server that
    binds port 0 (other tests on this machine) gets its port, so that none of them
    takes it in the meantime."""
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = list(range(max(low - 12_000, 1024), low))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")
