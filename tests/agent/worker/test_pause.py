"""Pausing (issue 14): the failure throttle, work hours and a user at the workstation make
the worker STOPPED on the farm for a while, and STARTED again, its process running. The
whole worker against the mock farm over loopback HTTP, on a virtual clock."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
import trio.testing
from structlog.testing import capture_logs

from agent.mockfarm import FarmConfig, MockFarm
from agent.worker._idle import IdleUnknown
from agent.worker._throttle import ThrottleRule
from agent.worker._workhours import parse_work_hours
from tests.worker_harness import farm_and_worker, final_reports, py, simple_job, wait_job

#: Virtual time races ahead while only a real process is busy: the farm must never
#: declare the worker NOT_RESPONDING for that (as in test_outage.py).
FARM = FarmConfig(
    update_interval_seconds=1, max_retries_per_task=0, worker_timeout_seconds=math.inf
)


def statuses(farm: MockFarm) -> list[str]:
    """The statuses of the worker's UpdateWorker calls, in order."""
    return [str(call.input.get("status")) for call in farm.calls_to("UpdateWorker")]


def quiet_while_stopped(farm: MockFarm) -> None:
    """No UpdateWorkerSchedule reached the farm between a STOPPED and the next STARTED
    (the farm would refuse it), and none was refused."""
    stopped_since: float | None = None
    for call in farm.calls:  # in the order the farm took them
        if call.operation == "UpdateWorker":
            stopped_since = call.time if call.input.get("status") == "STOPPED" else None
        elif call.operation == "UpdateWorkerSchedule":
            assert stopped_since is None, f"a sync at {call.time}, STOPPED since {stopped_since}"
            assert call.status == 200, call


def waiting_task(flag: Path, label: str = "task") -> dict[str, Any]:
    return py(
        "import os, time\n"
        f"print({label + ' started'!r}, flush=True)\n"
        f"while not os.path.exists({str(flag)!r}):\n"
        "    time.sleep(0.01)\n"
        f"print({label + ' done'!r}, flush=True)\n"
    )


@attrs.define
class FakeIdle:
    """An idle source the test sets: ``idle``, or an error to raise."""

    idle: bool = True
    error: str | None = None
    asked: int = 0

    async def user_idle(self) -> bool:
        self.asked += 1
        await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise IdleUnknown(self.error)
        return self.idle


@attrs.define
class Clock:
    """A local wall clock that reads ``start`` when the worker first looks at it (the
    virtual time its start-up took is unknown) and then runs on Trio's clock."""

    start: datetime
    origin: float | None = None

    def __call__(self) -> datetime:
        if self.origin is None:
            self.origin = trio.current_time()
        return self.start + timedelta(seconds=trio.current_time() - self.origin)


# --- the failure throttle -----------------------------------------------------------


async def test_task_runs_failing_across_jobs_pause_the_worker_for_the_cooldown(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """--failure-throttle 3/3600, --failure-cooldown 300: three failed task runs in a row
    from three jobs make one warning line; the worker is STOPPED on the farm, healthy and
    paused (health, metrics), makes no calls; 300 s later it is STARTED and works again."""
    failing = simple_job(py("import sys; sys.exit(3)"), frames="1", environments=False)
    with capture_logs() as logs:
        async with farm_and_worker(
            tmp_path,
            farm_config=FARM,
            failure_throttle=ThrottleRule(3, 3600),
            failure_cooldown_seconds=300,
            health_port=0,
        ) as (farm, worker, _events):
            jobs = [farm.create_job(failing) for _ in range(3)]
            for job_id in jobs:
                assert await wait_job(farm, job_id) == "FAILED"
            with trio.fail_after(60):
                await worker.wait_state("paused")
            paused = worker.statistics()
            farm_status = farm.worker(worker.worker_id).status
            assert worker.health_url is not None
            async with httpx.AsyncClient(base_url=worker.health_url) as http:
                healthz = await http.get("/healthz")
                metrics = await http.get("/metrics")
            after = farm.create_job(simple_job(py("print('after')"), frames="1"))
            assert await wait_job(farm, after, 600) == "SUCCEEDED"
            resumed = worker.statistics()
            assert worker.stop_reason is None
        calls = farm.calls_to("UpdateWorker")
    assert farm_status == "STOPPED"
    assert (paused.state, paused.paused_for, paused.pauses) == ("paused", ("failure_throttle",), 1)
    assert paused.resume_in is not None and 290 < paused.resume_in <= 300
    assert healthz.status_code == 200
    report = healthz.json()
    assert report["state"] == "paused" and report["pause"]["reasons"] == ["failure_throttle"]
    assert "3 failed task runs in a row from 3 jobs" in report["pause"]["details"][0]
    assert 'farmhand_paused{reason="failure_throttle"} 1.0' in metrics.text
    assert "farmhand_pauses_total 1.0" in metrics.text
    # Paused, resumed, then the block's drain.
    assert statuses(farm) == ["STARTED", "STOPPING", "STOPPED", "STARTED", "STOPPING", "STOPPED"]
    stopped, started = calls[2], calls[3]
    assert 300 <= started.time - stopped.time < 310  # the cool-down, counted once paused
    quiet_while_stopped(farm)
    assert resumed.state == "running" and resumed.paused_for == ()
    assert resumed.failed_task_streak == 0  # the success reset it
    [line] = [entry for entry in logs if entry["event"] == "worker.failure_throttle"]
    assert line["log_level"] == "warning"
    assert (line["failures"], sorted(line["jobs"]), line["cooldown_seconds"]) == (
        3,
        sorted(jobs),
        300,
    )
    assert "taking no work for 300 s" in line["note"]


async def test_failures_of_one_job_do_not_throttle(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Three failed task runs of one job are that job's problem: the worker goes on."""
    failing = simple_job(py("import sys; sys.exit(3)"), frames="1-3", environments=False)
    async with farm_and_worker(
        tmp_path, farm_config=FARM, failure_throttle=ThrottleRule(3, 3600)
    ) as (farm, worker, _events):
        job_id = farm.create_job(failing, max_failed_tasks_count=100)
        assert await wait_job(farm, job_id, 600) == "FAILED"
        stats = worker.statistics()
    assert stats.failed_task_streak == 3
    assert (stats.state, stats.pauses) == ("running", 0)
    assert statuses(farm) == ["STARTED", "STOPPING", "STOPPED"]


# --- work hours ---------------------------------------------------------------------


async def test_outside_its_hours_the_worker_is_paused_until_they_begin(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """--work-hours 'Mon-Fri 19:00-07:00', started on a Friday at 18:59: paused before it
    asks the farm for work; a job waits; at 19:00 the worker is STARTED and runs it."""
    clock = Clock(datetime(2024, 5, 3, 18, 59))  # a Friday
    async with farm_and_worker(
        tmp_path,
        farm_config=FARM,
        work_hours=parse_work_hours("Mon-Fri 19:00-07:00"),
        local_time=clock,
    ) as (farm, worker, _events):
        at_start = worker.statistics()
        job_id = farm.create_job(simple_job(py("print('evening')"), frames="1"))
        assert await wait_job(farm, job_id, 600) == "SUCCEEDED"
        calls = farm.calls_to("UpdateWorker")
        syncs = farm.calls_to("UpdateWorkerSchedule")
    assert (at_start.state, at_start.paused_for) == ("paused", ("work_hours",))
    assert "outside the work hours (Mon-Fri 19:00-07:00)" in at_start.pause_details[0]
    assert statuses(farm)[:4] == ["STARTED", "STOPPING", "STOPPED", "STARTED"]
    assert clock.origin is not None
    assert calls[3].time - clock.origin >= 60  # not before 19:00
    # The only sync before 19:00 was the pause's own (the farm had it STOPPING).
    assert len([c for c in syncs if c.time < calls[3].time]) <= 1
    quiet_while_stopped(farm)


async def test_when_the_hours_end_the_running_task_finishes_by_policy(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """--when-user-returns finish: at 07:00 the running task runs to its end; the one
    the farm sent ahead is not started but given back (NEVER_ATTEMPTED: READY again);
    no more is taken, then the worker is STOPPED (and stays paused)."""
    flag = tmp_path / "go"
    clock = Clock(datetime(2024, 5, 7, 6, 59, 30))  # a Tuesday, 30 s before 07:00
    async with farm_and_worker(
        tmp_path,
        farm_config=FARM,
        work_hours=parse_work_hours("Mon-Fri 19:00-07:00"),
        when_user_returns="finish",
        local_time=clock,
    ) as (farm, worker, events):
        job_id = farm.create_job(simple_job(waiting_task(flag), frames="1-3"))
        with trio.fail_after(60):
            await events.wait_line("task started")
        with trio.fail_after(600):
            await worker.wait_state("pausing")
        flag.touch()
        with trio.fail_after(600):
            await worker.wait_state("paused")
        job = farm.job(job_id)
        tasks = sorted(t.status for step in job.steps for t in step.tasks)
    assert tasks == ["READY", "READY", "SUCCEEDED"]
    assert events.lines().count("task done") == 1
    given_back = [
        fields
        for call in farm.calls_to("UpdateWorkerSchedule")
        for fields in (call.input.get("updatedSessionActions") or {}).values()
        if fields.get("completedStatus") == "NEVER_ATTEMPTED"
    ]
    assert len(given_back) == 1
    assert statuses(farm)[:3] == ["STARTED", "STOPPING", "STOPPED"]


# --- a user at the workstation ------------------------------------------------------


async def test_a_returning_user_interrupts_the_task_and_it_runs_again_once_they_leave(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """--only-when-user-idle (cancel, the default): the user comes back while a task runs;
    it is reported INTERRUPTED (requeued, not failed) and the worker STOPPED; once the user
    is idle again the worker is STARTED and the task runs to success."""
    flag = tmp_path / "go"
    idle = FakeIdle()
    async with farm_and_worker(
        tmp_path, farm_config=FARM, only_when_user_idle=True, idle_source=idle
    ) as (farm, worker, events):
        job_id = farm.create_job(simple_job(waiting_task(flag), frames="1"))
        with trio.fail_after(60):
            await events.wait_line("task started")
        idle.idle = False
        with trio.fail_after(600):
            await worker.wait_state("paused")
        paused = worker.statistics()
        [task] = [t for step in farm.job(job_id).steps for t in step.tasks]
        requeued = task.status
        flag.touch()
        idle.idle = True
        assert await wait_job(farm, job_id, 600) == "SUCCEEDED"
    assert paused.paused_for == ("user_active",)
    assert requeued == "READY"
    sent = [status for reports in final_reports(farm).values() for status, _ in reports]
    assert "INTERRUPTED" in sent and "FAILED" not in sent
    assert statuses(farm)[:4] == ["STARTED", "STOPPING", "STOPPED", "STARTED"]
    assert events.lines().count("task started") == 2
    quiet_while_stopped(farm)


async def test_an_idle_source_that_cannot_answer_keeps_the_worker_paused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """No answer is not a yes: with logind unreachable the worker is paused (one warning),
    and takes work once it answers."""
    idle = FakeIdle(error="cannot reach the D-Bus system bus")
    with capture_logs() as logs:
        async with farm_and_worker(
            tmp_path, farm_config=FARM, only_when_user_idle=True, idle_source=idle
        ) as (farm, worker, _events):
            at_start = worker.statistics()
            await trio.sleep(60)
            idle.error = None
            job_id = farm.create_job(simple_job(py("print('x')"), frames="1"))
            assert await wait_job(farm, job_id, 600) == "SUCCEEDED"
    assert at_start.paused_for == ("user_idle_unknown",)
    warnings = [entry for entry in logs if entry["event"] == "worker.user_idle_unknown"]
    assert len(warnings) == 1 and idle.asked > 10


# --- the mechanism ------------------------------------------------------------------


async def test_a_drain_while_paused_stops_without_calling_the_farm_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Worker.pause(reason) from a host; a drain while paused neither says STOPPING (the
    farm would refuse it) nor STOPPED again, and the owner hears 'drained'."""
    with capture_logs() as logs:
        async with farm_and_worker(tmp_path, farm_config=FARM) as (farm, worker, _events):
            worker.pause("maintenance", detail="disk check")
            with trio.fail_after(60):
                await worker.wait_state("paused")
            stats = worker.statistics()
            await worker.drain(0)
            reason = worker.stop_reason
            final = worker.statistics().state
    assert (stats.paused_for, stats.pause_details) == (("maintenance",), ("disk check",))
    assert statuses(farm) == ["STARTED", "STOPPING", "STOPPED"]
    assert (reason, final) == ("drained", "stopped")
    assert not [entry for entry in logs if entry["event"] == "worker.shutdown_call_failed"]
    quiet_while_stopped(farm)


async def test_resume_waits_for_every_reason(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Two holds: the worker resumes once the second is lifted, not the first."""
    async with farm_and_worker(tmp_path, farm_config=FARM) as (farm, worker, _events):
        worker.pause("one")
        worker.pause("two")
        with trio.fail_after(60):
            await worker.wait_state("paused")
        worker.resume("one")
        await trio.testing.wait_all_tasks_blocked()
        still = worker.statistics()
        worker.resume("two")
        with trio.fail_after(60):
            await worker.wait_state("running")
        job_id = farm.create_job(simple_job(py("print('x')"), frames="1"))
        assert await wait_job(farm, job_id, 600) == "SUCCEEDED"
    assert (still.state, still.paused_for) == ("paused", ("two",))
    assert statuses(farm) == ["STARTED", "STOPPING", "STOPPED", "STARTED", "STOPPING", "STOPPED"]
