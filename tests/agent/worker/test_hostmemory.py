"""The host memory guard: the largest session goes before the kernel's OOM killer picks."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from actors import CancelRunning, Containment, SchedulerCommand
from agent.worker._hostmemory import HOST_MEMORY_FAILURE, guard_host_memory
from tests.worker_harness import farm_and_worker, py, simple_job, wait_job

GiB = 2**30


async def test_below_the_reserve_the_largest_session_is_failed_then_it_settles(
    autojump_clock: trio.testing.MockClock,
) -> None:
    free = [8 * GiB]
    sessions = {"session-a": 1 * GiB, "session-b": 3 * GiB}
    send, receive = trio.open_memory_channel[SchedulerCommand](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: guard_host_memory(
                2 * GiB,
                Containment(),
                send,
                available=lambda: free[0],
                sessions=lambda: dict(sessions),
            )
        )
        await trio.sleep(10)
        assert receive.statistics().current_buffer_used == 0  # plenty: nothing done
        free[0] = 1 * GiB
        command = await receive.receive()
        started = trio.current_time()
        assert isinstance(command, CancelRunning)
        assert (command.session_id, command.fail, command.time_limit) == ("session-b", True, 0)
        assert command.reason.startswith(f"{HOST_MEMORY_FAILURE}: 1024.0 MiB available, under ")
        assert "the largest on the host (3072.0 MiB)" in command.reason
        del sessions["session-b"]  # it went; still short: the next largest, once settled
        command = await receive.receive()
        assert isinstance(command, CancelRunning) and command.session_id == "session-a"
        assert trio.current_time() - started >= 5
        nursery.cancel_scope.cancel()


async def test_the_worker_fails_the_running_task_for_host_memory(tmp_path: Path) -> None:
    """A reserve no host has: the running task is failed at once with the reason, and
    the farm gets that as the FAILED report's progress message."""
    code = "import time\nprint('running', flush=True)\ntime.sleep(60)\n"
    async with farm_and_worker(tmp_path, host_memory_reserve=2**60) as (farm, _w, _e):
        job_id = farm.create_job(simple_job(py(code), frames="1", environments=False))
        with trio.fail_after(30):
            assert await wait_job(farm, job_id) == "FAILED"
    [failed] = [
        fields
        for call in farm.calls_to("UpdateWorkerSchedule")
        for fields in (call.input.get("updatedSessionActions") or {}).values()
        if fields.get("completedStatus") == "FAILED"
    ]
    assert failed["progressMessage"].startswith(f"{HOST_MEMORY_FAILURE}: ")
    assert "farmhand stopped this session, the largest on the host" in failed["progressMessage"]
