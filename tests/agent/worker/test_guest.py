"""``open_agent`` from an asyncio program: the worker's Trio tree as a guest on the host's
loop (``agent/worker/_guest.py``), against a real mock farm on loopback.

The farm runs in a ``trio.run`` of its own, in a thread (a thread carries one Trio run,
and the host's thread carries the worker's), so the same test code works it from an
asyncio host and from a Trio one. anyio's plugin runs the tests (``anyio_backend``).
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import psutil
import pytest
import sniffio
import trio

import agent
from actors import SessionEvent
from agent.mockfarm import FarmConfig, FaultConfig, MockFarm, open_mock_farm
from agent.worker import _guest
from tests.worker_harness import bootstrap_credentials, endpoints_for, py, simple_job, worker_config

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[3]
FARM = FarmConfig(update_interval_seconds=1, max_retries_per_task=0)

pytestmark = pytest.mark.anyio
#: For what only an asyncio host can show.
ASYNCIO = pytest.mark.parametrize("anyio_backend", ["asyncio"])


class ThreadedFarm:
    """The mock farm, served by its own ``trio.run`` in a thread."""

    def __init__(self, farm: MockFarm, token: trio.lowlevel.TrioToken) -> None:
        self.farm = farm
        self.token = token

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the farm's thread."""
        call = partial(trio.from_thread.run_sync, fn, *args, trio_token=self.token)
        return await anyio.to_thread.run_sync(call)

    async def wait(self, fn: Callable[..., Awaitable[T]], *args: Any, seconds: float = 60) -> T:
        """``await fn(*args)`` in the farm's run, bounded, while the caller's loop goes on."""

        async def bounded() -> T:
            with trio.fail_after(seconds):
                return await fn(*args)

        call = partial(trio.from_thread.run, bounded, trio_token=self.token)
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    async def wait_for_job(self, job_id: str) -> str:
        return await self.wait(self.farm.wait_for_job, job_id)

    async def wait_until(self, test: Callable[[], bool]) -> None:
        await self.wait(self.farm.wait_until, test)

    async def create_job(self, template: dict[str, Any], **changes: Any) -> str:
        return await self(partial(self.farm.create_job, template, **changes))

    async def worker_status(self, worker_id: str) -> str:
        return await self(lambda: self.farm.worker(worker_id).status)


@pytest.fixture
def farm() -> Iterator[ThreadedFarm]:
    news: queue.Queue[ThreadedFarm | BaseException] = queue.Queue()
    stop = trio.Event()

    async def serve() -> None:
        async with open_mock_farm(config=FARM) as farm:
            news.put(ThreadedFarm(farm, trio.lowlevel.current_trio_token()))
            await stop.wait()

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:
            news.put(exc)

    thread = threading.Thread(target=run, name="mock farm")
    thread.start()
    started = news.get(timeout=60)
    if isinstance(started, BaseException):
        raise started
    try:
        yield started
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=started.token)
        thread.join(timeout=60)
    assert not thread.is_alive()
    if not news.empty():
        failed = news.get()
        assert isinstance(failed, BaseException)
        raise failed


class Lines:
    """The output lines ``on_event`` showed, and the threads it was called in; waited
    for with events the waiting host makes (its own library's)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.threads: set[int] = set()
        self._waiters: list[tuple[str, anyio.Event]] = []

    def __call__(self, session_id: str, event: SessionEvent) -> None:
        self.threads.add(threading.get_ident())
        self.lines.extend(getattr(event, "lines", ()))
        for text, waiter in self._waiters:
            if text in self.lines:
                waiter.set()

    async def wait_line(self, text: str) -> None:
        if text not in self.lines:
            waiter = anyio.Event()
            self._waiters.append((text, waiter))
            with anyio.fail_after(60):
                await waiter.wait()


def open_worker(
    farm: ThreadedFarm, root: Path, *, on_event: Lines | None = None, **changes: Any
) -> AbstractAsyncContextManager[agent.Worker]:
    return agent.open_agent(
        worker_config(farm.farm, root, **changes),
        endpoints=endpoints_for(farm.farm),
        bootstrap_credentials=bootstrap_credentials(),
        on_event=on_event,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[-1][0] != "Z"


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if alive(p.pid)}


def long_task(pid_file: Path) -> dict[str, Any]:
    code = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "print('running', flush=True); time.sleep(600)"
    )
    return simple_job(py(code), frames="1", environments=False)


async def test_one_job_from_either_host(
    farm: ThreadedFarm, tmp_path: Path, anyio_backend_name: str
) -> None:
    """The same open_agent works a job from an asyncio host (the tree a Trio guest on the
    host's thread) and from a Trio one: events, statistics, sync_now, a drain from
    another task while this one waits for the stop, and the farm sees STOPPED."""
    lines = Lines()
    async with open_worker(farm, tmp_path, on_event=lines) as worker:
        assert sniffio.current_async_library() == anyio_backend_name
        job_id = await farm.create_job(simple_job(py("print('from the host')"), frames="1"))
        assert await farm.wait_for_job(job_id) == "SUCCEEDED"
        await lines.wait_line("from the host")
        await worker.sync_now()  # the farm has acknowledged what the worker reported
        stats = worker.statistics()
        assert stats.state == "running"
        assert stats.actions.get("SUCCEEDED", 0) >= 2  # the environment's enter and the task
        assert stats.heartbeat_age is not None and stats.heartbeat_age >= 0
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.drain, 1.0)
            assert await worker.wait_stop_requested() == "drained"
        assert worker.statistics().state == "stopped"
    assert await farm.worker_status(worker.worker_id) == "STOPPED"
    # on_event ran in this thread: under asyncio too, the tree runs on the host's thread.
    assert lines.threads == {threading.get_ident()}
    if anyio_backend_name == "asyncio":
        assert not trio.lowlevel.in_trio_run()  # the guest run is over
        assert not _guest._RUNS
        with pytest.raises(agent.FarmhandError, match="not running"):
            await worker.sync_now()


@ASYNCIO
async def test_cancelling_the_host_task_mid_job_stops_the_tree(
    farm: ThreadedFarm, tmp_path: Path
) -> None:
    """Cancelling the asyncio task that is in the block drains the worker, as leaving the
    block does under Trio: by the time the task has ended, the task's process is gone,
    the farm has the task back and the worker STOPPED, and nothing of Trio runs."""
    before = children()
    hooks = sys.get_asyncgen_hooks()
    lines = Lines()
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def host() -> None:
        async with open_worker(farm, tmp_path, on_event=lines) as worker:
            started.set_result(worker.worker_id)
            await asyncio.Event().wait()  # the host's own work, until cancelled

    task = asyncio.create_task(host())
    worker_id = await started
    pid_file = tmp_path / "task.pid"
    job_id = await farm.create_job(long_task(pid_file))
    await lines.wait_line("running")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(int(pid_file.read_text()))
    assert await farm.worker_status(worker_id) == "STOPPED"
    statuses = await farm(lambda: [t.status for s in farm.farm.job(job_id).steps for t in s.tasks])
    assert statuses in (["READY"], ["PENDING"])  # INTERRUPTED: back to the queue
    assert not trio.lowlevel.in_trio_run()
    assert not _guest._RUNS
    assert children() <= before  # the containment watchdog and launchers have gone too
    assert sys.get_asyncgen_hooks() == hooks


@ASYNCIO
async def test_a_second_cancellation_drains_with_no_grace(
    farm: ThreadedFarm, tmp_path: Path
) -> None:
    """A task that ignores SIGTERM holds the drain that the host's cancellation started
    for its grace (30 s); cancelling the host's task again kills it at once, and the task
    ends, the worker STOPPED, long before the grace."""
    lines = Lines()
    pid_file = tmp_path / "task.pid"
    code = (
        "import os, signal, sys, time\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "signal.signal(signal.SIGTERM, lambda *_: print('ignoring SIGTERM', flush=True))\n"
        "print('running', flush=True)\n"
        "while True: time.sleep(1)"
    )
    template = simple_job(
        {
            "command": sys.executable,
            "args": ["-c", code, str(pid_file)],
            "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 60},
        },
        frames="1",
        environments=False,
    )
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def host() -> None:
        async with open_worker(farm, tmp_path, on_event=lines, drain_grace_seconds=30) as worker:
            started.set_result(worker.worker_id)
            await asyncio.Event().wait()

    task = asyncio.create_task(host())
    worker_id = await started
    await farm.create_job(template)
    await lines.wait_line("running")
    task.cancel()  # the drain starts: SIGTERM, which the task ignores
    await lines.wait_line("ignoring SIGTERM")
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 15
    assert not alive(int(pid_file.read_text()))
    assert await farm.worker_status(worker_id) == "STOPPED"
    assert not _guest._RUNS


@ASYNCIO
async def test_a_failing_tree_cancels_the_block_and_raises_in_the_host(
    farm: ThreadedFarm, tmp_path: Path
) -> None:
    """The farm giving up on the worker (it answers as if it were offline) fails the tree
    mid-job: the host's block is cancelled, the farm's error is raised from ``async
    with`` as under Trio, the job's process is killed, and the task is not left
    cancelled."""
    lines = Lines()
    pid_file = tmp_path / "task.pid"
    body_cancelled = False
    with pytest.RaisesGroup(agent.UnrecoverableError, flatten_subgroups=True):
        async with open_worker(farm, tmp_path, on_event=lines):
            await farm.create_job(long_task(pid_file))
            await lines.wait_line("running")
            await farm(farm.farm.set_faults, FaultConfig(offline_workers=frozenset({"*"})))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                body_cancelled = True
                raise
    assert body_cancelled
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert not alive(int(pid_file.read_text()))
    assert not _guest._RUNS


@ASYNCIO
async def test_a_failed_start_raises_from_async_with(farm: ThreadedFarm, tmp_path: Path) -> None:
    """A worker the farm will not have (no such fleet) raises the farm's error from the
    ``async with`` line, as under Trio; the guest run is over."""
    with pytest.raises(agent.FarmhandError, match="ResourceNotFound"):
        async with open_worker(farm, tmp_path, fleet_id="fleet-" + "0" * 32):
            pytest.fail("the block ran")
    assert not _guest._RUNS


@ASYNCIO
async def test_cancelling_the_host_while_the_worker_starts(
    farm: ThreadedFarm, tmp_path: Path
) -> None:
    """Cancelling the host's task while the bootstrap waits on a slow farm cancels the
    start at once; the block never runs and no Trio run is left."""
    await farm(farm.farm.set_faults, FaultConfig().with_operation("UpdateWorker", latency=30))
    entered = False

    async def host() -> None:
        nonlocal entered
        async with open_worker(farm, tmp_path):
            entered = True

    task = asyncio.create_task(host())
    # Registered; UpdateWorker(STARTED) is what takes 30 s.
    await farm.wait_until(lambda: bool(farm.farm.state.workers))
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 5
    assert not entered
    assert not _guest._RUNS


@ASYNCIO
async def test_guest_mode_installs_no_signal_handlers(farm: ThreadedFarm, tmp_path: Path) -> None:
    """SIGINT, SIGTERM, SIGUSR1 and the wakeup fd stay the host's while a worker runs as
    a guest, even where SIGINT has Python's default handler (where Trio would put its
    own)."""

    def handlers() -> tuple[object, ...]:
        wakeup = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(wakeup)
        return (
            *(signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)),
            wakeup,
        )

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = handlers()
        async with open_worker(farm, tmp_path):
            assert handlers() == before
        assert handlers() == before
    finally:
        signal.signal(signal.SIGINT, previous)


@ASYNCIO
async def test_several_workers_share_one_guest_run(farm: ThreadedFarm, tmp_path: Path) -> None:
    """Two workers opened from one loop run in one guest run (a loop carries one), which
    ends with the last of them; each drains on its own."""
    async with open_worker(farm, tmp_path / "a") as first:
        async with open_worker(farm, tmp_path / "b") as second:
            [run] = _guest._RUNS.values()
            assert len(run.workers) == 2
            job_id = await farm.create_job(
                simple_job(py("print('x')"), frames="1-4", environments=False)
            )
            assert await farm.wait_for_job(job_id) == "SUCCEEDED"
        assert await farm.worker_status(second.worker_id) == "STOPPED"
        assert {asyncio.get_running_loop(): run} == _guest._RUNS  # the first still runs
        assert first.statistics().state == "running"
        await first.sync_now()
    assert await farm.worker_status(first.worker_id) == "STOPPED"
    assert not _guest._RUNS


@ASYNCIO
async def test_a_starlette_app_runs_a_worker_for_its_lifespan(
    farm: ThreadedFarm, tmp_path: Path
) -> None:
    """A Starlette app served by hypercorn's asyncio worker opens the worker in its
    lifespan; requests read its statistics, ask for a sync and drain it; shutting the
    server down leaves the block."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with open_worker(farm, tmp_path) as worker:
            yield {"worker": worker}

    async def statistics(request: Request) -> JSONResponse:
        stats = request.state.worker.statistics()
        return JSONResponse(
            {
                "worker_id": stats.worker_id,
                "state": stats.state,
                "actions": dict(stats.actions),
                "library": sniffio.current_async_library(),
            }
        )

    async def sync(request: Request) -> JSONResponse:
        await request.state.worker.sync_now()
        return JSONResponse({})

    async def drain(request: Request) -> JSONResponse:
        await request.state.worker.drain(1.0)
        return JSONResponse({"state": request.state.worker.statistics().state})

    app = Starlette(
        routes=[
            Route("/statistics", statistics),
            Route("/sync", sync, methods=["POST"]),
            Route("/drain", drain, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    # Listening before the server starts: a request waits in the backlog until the
    # lifespan has started the worker and hypercorn accepts.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]
    shutdown = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=shutdown.wait))  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            first = (await client.get("/statistics")).json()
            assert first["state"] == "running" and first["library"] == "asyncio"
            job_id = await farm.create_job(
                simple_job(py("print('x')"), frames="1", environments=False)
            )
            assert await farm.wait_for_job(job_id) == "SUCCEEDED"
            (await client.post("/sync")).raise_for_status()
            assert (await client.get("/statistics")).json()["actions"] == {"SUCCEEDED": 1}
            assert (await client.post("/drain")).json() == {"state": "stopped"}
        assert await farm.worker_status(first["worker_id"]) == "STOPPED"
    finally:
        shutdown.set()
        with anyio.fail_after(60):
            await server
    assert not _guest._RUNS


def readme_example(marker: str) -> str:
    """The README's Python example that contains ``marker``."""
    readme = (ROOT / "README.md").read_text()
    [code] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if marker in b]
    return code


@ASYNCIO
@pytest.mark.parametrize("marker", ["trio.open_signal_receiver", "asyncio.run(main())"])
async def test_the_readme_embedding_examples_drain_on_sigterm(
    farm: ThreadedFarm, tmp_path: Path, marker: str
) -> None:
    """The README's Trio and asyncio embedding examples, run as they are: SIGTERM drains
    the worker, which tells the farm STOPPED (rather than being killed and left listed),
    and the program exits 0."""
    script = tmp_path / "example.py"
    script.write_text(readme_example(marker))
    env = {
        **os.environ,
        **farm.farm.environ(),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "DEADLINE_WORKER_FARM_ID": farm.farm.farm_id,
        "DEADLINE_WORKER_FLEET_ID": farm.farm.fleet_id,
        "DEADLINE_WORKER_RUN_JOBS_AS_AGENT_USER": "true",
        "DEADLINE_WORKER_NO_SHUTDOWN": "true",
        "DEADLINE_WORKER_PERSISTENCE_DIR": str(tmp_path / "persistence"),
        "DEADLINE_WORKER_LOGS_DIR": str(tmp_path / "logs"),
        "DEADLINE_WORKER_SESSION_ROOT_DIR": str(tmp_path / "sessions"),
    }
    output: list[str] = []
    async with await anyio.open_process(
        [sys.executable, str(script)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        assert process.stdout is not None
        with anyio.fail_after(60):
            buffer = b""
            while not any(line.startswith("running: worker-") for line in output):
                chunk = await process.stdout.receive()
                *complete, buffer = (buffer + chunk).split(b"\n")
                output.extend(line.decode() for line in complete)
            [worker_id] = [
                line.split()[1] for line in output if line.startswith("running: worker-")
            ]
            process.send_signal(signal.SIGTERM)
            async for chunk in process.stdout:
                buffer += chunk
            output.extend(buffer.decode().splitlines())
            code = await process.wait()
    assert code == 0, "\n".join(output)
    assert await farm.worker_status(worker_id) == "STOPPED"
    assert any(line.startswith("stopping:") for line in output), "\n".join(output)
