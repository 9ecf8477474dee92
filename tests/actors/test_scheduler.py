"""The scheduler and work sessions against a scripted farm, with real tiny processes."""

from __future__ import annotations

import copy
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors import (
    ActionKind,
    ActionState,
    ActionUpdate,
    EntityFetcher,
    FarmStopRequested,
    FinishSessions,
    IntervalChanged,
    LogShipper,
    ReopenSchedule,
    Scheduler,
    SchedulerCommand,
    SchedulerEvent,
    SchedulerStatistics,
    SessionAssignment,
    SessionCommand,
    SessionReport,
    StopSessions,
    SyncNow,
    WorkerIdentity,
    WorkSession,
    WorkSessionOptions,
    close_schedule,
    sync_now,
    tell,
    wait_sessions,
)
from actors._entities import key_of
from agent.deadline import DeadlineSchedule, exit_code_32

HEX = "0123456789abcdef" * 2
FARM, FLEET, WORKER = f"farm-{HEX}", f"fleet-{HEX}", f"worker-{HEX}"
QUEUE, JOB = f"queue-{HEX}", f"job-{HEX}"
STEP = f"step-{HEX}"
SESSION = f"session-{HEX}"
ENV_ID = f"JOB:{JOB}:Env"
PY = sys.executable


def action_id(n: int) -> str:
    return f"sessionaction-{HEX}-{n}"


def task(n: int, frame: int) -> dict[str, Any]:
    return {
        "sessionActionId": action_id(n),
        "definition": {
            "taskRun": {
                "stepId": STEP,
                "taskId": f"task-{HEX}-{frame}",
                "parameters": {"F": {"int": str(frame)}},
            }
        },
    }


def env_enter(n: int) -> dict[str, Any]:
    return {"sessionActionId": action_id(n), "definition": {"envEnter": {"environmentId": ENV_ID}}}


def env_exit(n: int) -> dict[str, Any]:
    return {"sessionActionId": action_id(n), "definition": {"envExit": {"environmentId": ENV_ID}}}


def session(*actions: dict[str, Any]) -> dict[str, Any]:
    return {
        "queueId": QUEUE,
        "jobId": JOB,
        "sessionActions": list(actions),
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"logGroupName": "g", "logStreamName": SESSION},
            "parameters": {},
        },
    }


class FakeFarm:
    """A scripted UpdateWorkerSchedule and BatchGetJobEntity."""

    def __init__(self, on_run: dict[str, Any]) -> None:
        self.calls: list[dict[str, dict[str, Any]]] = []
        self.assigned: dict[str, dict[str, Any]] = {}
        self.cancel: dict[str, list[str]] = {}
        self.interval = 1000
        self.stop = False
        self.fail_next: list[Exception] = []
        self.completed: dict[str, str] = {}
        self.on_run = on_run
        self.job_details_error: str | None = None
        self.changed = trio.Event()

    async def update_worker_schedule(
        self, updated: Mapping[str, Mapping[str, Any]]
    ) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        self.calls.append(copy.deepcopy(dict(updated)))  # type: ignore[arg-type]
        if self.fail_next:
            raise self.fail_next.pop(0)
        for aid, fields in updated.items():
            status = fields.get("completedStatus")
            if status:
                assert aid not in self.completed, f"{aid} reported twice"
                self.completed[aid] = str(status)
                for wire in self.assigned.values():
                    wire["sessionActions"] = [
                        a for a in wire["sessionActions"] if a["sessionActionId"] != aid
                    ]
        self.changed.set()
        self.changed = trio.Event()
        response: dict[str, Any] = {
            "assignedSessions": copy.deepcopy(self.assigned),
            "cancelSessionActions": dict(self.cancel),
            "updateIntervalSeconds": self.interval,
        }
        if self.stop:
            response["desiredWorkerStatus"] = "STOPPED"
        return response

    async def batch_get(self, identifiers: list[dict[str, Any]]) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        entities: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for identifier in identifiers:
            kind = key_of(identifier)[0]
            if kind == "jobDetails":
                if self.job_details_error:
                    errors.append(
                        {
                            "jobDetails": {
                                "jobId": JOB,
                                "code": self.job_details_error,
                                "message": "no such job",
                            }
                        }
                    )
                else:
                    entities.append(
                        {
                            "jobDetails": {
                                "jobId": JOB,
                                "logGroupName": "g",
                                "schemaVersion": "jobtemplate-2023-09",
                            }
                        }
                    )
            elif kind == "stepDetails":
                template = {"name": "Render", "script": {"actions": {"onRun": self.on_run}}}
                entities.append(
                    {
                        "stepDetails": {
                            "jobId": JOB,
                            "stepId": STEP,
                            "schemaVersion": "jobtemplate-2023-09",
                            "template": template,
                            "dependencies": [],
                        }
                    }
                )
            else:
                template = {
                    "name": "Env",
                    "script": {
                        "actions": {
                            "onEnter": {"command": PY, "args": ["-c", "print('entered')"]},
                            "onExit": {"command": PY, "args": ["-c", "print('exited')"]},
                        }
                    },
                }
                entities.append(
                    {
                        "environmentDetails": {
                            "jobId": JOB,
                            "environmentId": ENV_ID,
                            "schemaVersion": "jobtemplate-2023-09",
                            "template": template,
                        }
                    }
                )
        return {"entities": entities, "errors": errors}

    async def wait_until(self, predicate: Any) -> None:
        while not predicate():
            await self.changed.wait()


@attrs.define
class Handle:
    """Drives a running scheduler through its inbox, as its owner does."""

    scheduler: Scheduler
    inbox: trio.MemorySendChannel[SchedulerCommand]

    async def sync_now(self) -> None:
        await sync_now(self.inbox)

    def request_sync(self) -> None:
        reply_send, _ = trio.open_memory_channel[None](1)
        tell(self.inbox, SyncNow(reply_send))

    async def close(self) -> None:
        await close_schedule(self.inbox)

    async def wait_sessions_finished(self) -> None:
        await wait_sessions(self.inbox, "closed")

    def stop_sessions(self, *, grace: float, running_state: ActionState, reason: str) -> None:
        tell(self.inbox, StopSessions(grace, running_state, reason))

    def finish_sessions(self) -> None:
        tell(self.inbox, FinishSessions())

    def statistics(self) -> SchedulerStatistics:
        return self.scheduler.statistics()


async def start_scheduler(
    nursery: trio.Nursery, farm: Any, factory: Any, *, supervise: Any = None, **options: Any
) -> Handle:
    scheduler = Scheduler(DeadlineSchedule(farm), factory, **options)
    inbox = await nursery.start(partial(scheduler.run, supervise=supervise))
    return Handle(scheduler, inbox)


@attrs.define
class Running:
    farm: FakeFarm
    scheduler: Handle
    logs: Path
    stop_requests: list[bool]


async def collect_events(
    events: trio.MemoryReceiveChannel[SchedulerEvent],
    intervals: list[float],
    stop_requests: list[bool],
) -> None:
    async for event in events:
        if isinstance(event, IntervalChanged):
            intervals.append(event.seconds)
        elif isinstance(event, FarmStopRequested):
            stop_requests.append(True)


@asynccontextmanager
async def running(
    tmp_path: Path, farm: FakeFarm, *, starts: trio.CapacityLimiter | None = None
) -> AsyncIterator[Running]:
    stop_requests: list[bool] = []
    async with trio.open_nursery() as nursery:
        shipper = await nursery.start(LogShipper(None).run)
        fetcher = await nursery.start(EntityFetcher(farm.batch_get).run)

        def factory(
            assignment: SessionAssignment, reports: trio.MemorySendChannel[SessionReport]
        ) -> WorkSession:
            return WorkSession(
                assignment,
                identity=WorkerIdentity(FARM, FLEET, WORKER),
                fetcher=fetcher,
                reports=reports,
                shipper=shipper,
                options=WorkSessionOptions(
                    logs_dir=tmp_path / "logs", session_root=tmp_path / "sessions"
                ),
                starts=starts,
            )

        events_send, events_receive = trio.open_memory_channel[SchedulerEvent](16)
        nursery.start_soon(collect_events, events_receive, [], stop_requests)
        scheduler = await start_scheduler(nursery, farm, factory, events=events_send)
        yield Running(farm, scheduler, tmp_path / "logs", stop_requests)
        nursery.cancel_scope.cancel()


async def sync_until(r: Running, predicate: Any) -> None:
    """Heartbeat by hand until the farm has seen what the test waits for."""
    while not predicate():
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        await r.scheduler.sync_now()


def started(farm: FakeFarm, n: int) -> Any:
    return lambda: any(action_id(n) in c and "startedAt" in c[action_id(n)] for c in farm.calls)


def py(code: str) -> dict[str, Any]:
    return {"command": PY, "args": ["-c", code]}


async def test_actions_run_and_every_final_state_is_reported_at_once(tmp_path: Path) -> None:
    """Assigned actions run in order; each final state goes out without waiting for a heartbeat."""
    farm = FakeFarm(py("print('frame {{Task.Param.F}}')"))
    farm.assigned = {SESSION: session(env_enter(0), task(1, 1), task(2, 2), env_exit(3))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await r.scheduler.sync_now()  # the first heartbeat
            await farm.wait_until(lambda: len(farm.completed) == 4)
    assert farm.completed == {action_id(i): "SUCCEEDED" for i in range(4)}
    # Started and finished reports carry times and the exit code; a task run also manifests.
    finals = {
        aid: fields
        for call in farm.calls
        for aid, fields in call.items()
        if "completedStatus" in fields
    }
    assert finals[action_id(1)]["processExitCode"] == 0
    assert finals[action_id(1)]["manifests"] == []
    assert finals[action_id(1)]["startedAt"] <= finals[action_id(1)]["endedAt"]
    assert "manifests" not in finals[action_id(0)]
    log_text = (tmp_path / "logs" / QUEUE / f"{SESSION}.log").read_text()
    assert "frame 1" in log_text and "frame 2" in log_text and "entered" in log_text


async def test_session_env_vars_reach_the_actions(tmp_path: Path) -> None:
    """DEADLINE_* session and action variables are set for every action."""
    code = (
        "import os; print(','.join(os.environ[k] for k in ('DEADLINE_SESSION_ID', 'DEADLINE_FARM_ID', "
        "'DEADLINE_QUEUE_ID', 'DEADLINE_JOB_ID', 'DEADLINE_FLEET_ID', 'DEADLINE_WORKER_ID', "
        "'DEADLINE_SESSIONACTION_ID', 'DEADLINE_STEP_ID', 'DEADLINE_TASK_ID')))"
    )
    farm = FakeFarm(py(code))
    farm.assigned = {SESSION: session(task(0, 5))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await r.scheduler.sync_now()
            await farm.wait_until(lambda: len(farm.completed) == 1)
    log_text = (tmp_path / "logs" / QUEUE / f"{SESSION}.log").read_text()
    assert (
        f"{SESSION},{FARM},{QUEUE},{JOB},{FLEET},{WORKER},{action_id(0)},{STEP},task-{HEX}-5"
        in log_text
    )


async def test_a_failed_call_loses_nothing_and_sends_it_again(tmp_path: Path) -> None:
    """If UpdateWorkerSchedule fails, the same updates go out with the next call."""
    farm = FakeFarm(py("pass"))
    farm.assigned = {SESSION: session(task(0, 1))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await r.scheduler.sync_now()
            await farm.wait_until(
                lambda: any("completedStatus" in f for c in farm.calls for f in c.values()) or False
            )
    # The fake accepted it; now a farm that fails once, with the scheduler under supervision.
    farm2 = FakeFarm(py("pass"))
    farm2.assigned = {SESSION: session(task(0, 1))}

    class Transient(Exception):
        pass

    async def supervise(loop: Any) -> None:
        while True:
            try:
                await loop()
            except Transient:
                continue

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            shipper = await nursery.start(LogShipper(None).run)
            fetcher = await nursery.start(EntityFetcher(farm2.batch_get).run)

            def factory(
                assignment: SessionAssignment, reports: trio.MemorySendChannel[SessionReport]
            ) -> WorkSession:
                return WorkSession(
                    assignment,
                    identity=WorkerIdentity(FARM, FLEET, WORKER),
                    fetcher=fetcher,
                    reports=reports,
                    shipper=shipper,
                    options=WorkSessionOptions(
                        logs_dir=tmp_path / "logs2", session_root=tmp_path / "s2"
                    ),
                )

            scheduler = await start_scheduler(nursery, farm2, factory, supervise=supervise)
            await scheduler.sync_now()
            farm2.fail_next = [Transient("connection dropped")]
            await farm2.wait_until(lambda: len(farm2.completed) == 1)
            nursery.cancel_scope.cancel()
    sent_final = [
        c for c in farm2.calls if action_id(0) in c and "completedStatus" in c[action_id(0)]
    ]
    assert len(sent_final) == 2  # once into the failure, once again
    assert sent_final[0] == sent_final[1]
    assert farm2.completed == {action_id(0): "SUCCEEDED"}


async def test_cancel_from_the_farm_cancels_the_running_action(tmp_path: Path) -> None:
    """cancelSessionActions cancels the running action; the rest is never attempted."""
    farm = FakeFarm(py("import time; print('ready', flush=True); time.sleep(600)"))
    farm.assigned = {SESSION: session(task(0, 1), task(1, 2))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await sync_until(r, started(farm, 0))
            farm.cancel = {SESSION: [action_id(0), action_id(1)]}
            await r.scheduler.sync_now()
            await farm.wait_until(lambda: len(farm.completed) == 2)
    assert farm.completed == {action_id(0): "CANCELED", action_id(1): "NEVER_ATTEMPTED"}
    # NEVER_ATTEMPTED is never reported before the final state of the action that caused it.
    first_final = [
        next(i for i, c in enumerate(farm.calls) if aid in c and "completedStatus" in c[aid])
        for aid in (action_id(0), action_id(1))
    ]
    assert first_final[0] <= first_final[1]


async def test_failure_reports_exit_code_and_fail_message(tmp_path: Path) -> None:
    """A failing task reports FAILED with its (signed 32-bit) exit code and openjd_fail message."""
    farm = FakeFarm(py("import sys; print('openjd_fail: no license'); sys.exit(3)"))
    farm.assigned = {SESSION: session(task(0, 1), task(1, 2))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await r.scheduler.sync_now()
            await farm.wait_until(lambda: len(farm.completed) == 2)
    finals = {aid: f for c in farm.calls for aid, f in c.items() if "completedStatus" in f}
    assert finals[action_id(0)]["completedStatus"] == "FAILED"
    assert finals[action_id(0)]["processExitCode"] == 3
    assert finals[action_id(0)]["progressMessage"] == "no license"
    assert finals[action_id(1)] == {"completedStatus": "NEVER_ATTEMPTED"}
    assert exit_code_32(4294967295) == -1 and exit_code_32(-9) == -9


async def test_sessions_the_farm_drops_are_stopped(tmp_path: Path) -> None:
    """A session missing from assignedSessions is stopped and ends."""
    farm = FakeFarm(py("import time; print('ready', flush=True); time.sleep(600)"))
    farm.assigned = {SESSION: session(task(0, 1))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await sync_until(r, started(farm, 0))
            farm.assigned = {}
            await r.scheduler.sync_now()
            await r.scheduler.wait_sessions_finished()
            await r.scheduler.sync_now()
    assert farm.completed == {action_id(0): "CANCELED"}
    assert r.scheduler.statistics().sessions == 0


async def test_a_session_that_cannot_start_returns_its_actions(tmp_path: Path) -> None:
    """If jobDetails fails, the first action is FAILED and the rest NEVER_ATTEMPTED, once."""
    farm = FakeFarm(py("pass"))
    farm.job_details_error = "ResourceNotFoundException"
    farm.assigned = {SESSION: session(env_enter(0), task(1, 1), env_exit(2))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await r.scheduler.sync_now()
            await farm.wait_until(lambda: len(farm.completed) == 3)
            # The farm keeps the session and assigns it more work: returned at once.
            farm.assigned[SESSION]["sessionActions"] = [task(3, 2), task(4, 3)]
            await r.scheduler.sync_now()
            await farm.wait_until(lambda: len(farm.completed) == 5)
            await r.scheduler.sync_now()
    assert farm.completed == {
        action_id(0): "FAILED",
        action_id(1): "NEVER_ATTEMPTED",
        action_id(2): "NEVER_ATTEMPTED",
        action_id(3): "FAILED",
        action_id(4): "NEVER_ATTEMPTED",
    }


async def test_an_assignment_whose_ids_would_leave_the_logs_dir_fails_that_session(
    tmp_path: Path,
) -> None:
    """A queue id of '../../../../tmp/x' names no file: the session's first action and its
    exits FAIL with the reason, the rest are NEVER_ATTEMPTED, and the worker runs its other
    sessions."""
    farm = FakeFarm(py("print('ran')"))
    hostile = {**session(env_enter(0), task(1, 1), env_exit(2)), "queueId": "../../../../tmp/x"}
    other = f"session-{'f' * 32}"
    farm.assigned = {SESSION: hostile, other: session(task(3, 1))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await r.scheduler.sync_now()
            await farm.wait_until(lambda: len(farm.completed) == 4)
            await r.scheduler.sync_now()
    assert farm.completed == {
        action_id(0): "FAILED",
        action_id(1): "NEVER_ATTEMPTED",
        action_id(2): "FAILED",
        action_id(3): "SUCCEEDED",
    }
    [failed] = [c[action_id(0)] for c in farm.calls if "completedStatus" in c.get(action_id(0), {})]
    assert failed["progressMessage"].startswith("queue id '../../../../tmp/x' is not a safe id")
    assert sorted(p.name for p in r.logs.iterdir()) == [QUEUE]
    assert not (tmp_path / "tmp").exists()


async def test_farm_interval_and_stop_request_reach_the_owner(tmp_path: Path) -> None:
    """updateIntervalSeconds and desiredWorkerStatus=STOPPED are passed on."""
    farm = FakeFarm(py("pass"))
    farm.interval = 7
    farm.stop = True
    intervals: list[float] = []
    async with trio.open_nursery() as nursery:
        stopped: list[bool] = []
        events_send, events_receive = trio.open_memory_channel[SchedulerEvent](16)
        nursery.start_soon(collect_events, events_receive, intervals, stopped)
        scheduler = await start_scheduler(
            nursery, farm, lambda a, r: pytest.fail("no sessions"), events=events_send
        )
        await scheduler.sync_now()
        await scheduler.sync_now()
        nursery.cancel_scope.cancel()
    assert intervals == [7.0]
    assert stopped == [True]
    assert scheduler.statistics().stop_requested


async def test_stop_sessions_interrupts_running_work(tmp_path: Path) -> None:
    """A drain stops the sessions: the running action is reported INTERRUPTED at once."""
    farm = FakeFarm(py("import time; print('ready', flush=True); time.sleep(600)"))
    farm.assigned = {SESSION: session(task(0, 1), task(1, 2))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await sync_until(r, started(farm, 0))
            r.scheduler.stop_sessions(
                grace=5, running_state=ActionState.INTERRUPTED, reason="drain"
            )
            await r.scheduler.wait_sessions_finished()
            await r.scheduler.sync_now()
    assert farm.completed == {action_id(0): "INTERRUPTED", action_id(1): "NEVER_ATTEMPTED"}


async def test_finish_sessions_runs_what_they_have_and_returns_later_work(tmp_path: Path) -> None:
    """finish_sessions: the session runs the actions it had, exits its environment and
    ends; a task the farm adds meanwhile is not run, and once the session has ended
    the farm gets it back INTERRUPTED (for another worker)."""
    release = tmp_path / "release"
    code = (
        "import os, time\n"
        f"while not os.path.exists({str(release)!r}): time.sleep(0.01)\n"
        "print('frame {{Task.Param.F}}')"
    )
    farm = FakeFarm(py(code))
    farm.assigned = {SESSION: session(env_enter(0), task(1, 1), task(2, 2))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await sync_until(r, started(farm, 1))
            r.scheduler.finish_sessions()
            farm.assigned[SESSION]["sessionActions"].append(task(3, 3))
            await r.scheduler.sync_now()  # the addition reaches the (finishing) session
            release.touch()
            await r.scheduler.wait_sessions_finished()
            await sync_until(r, lambda: action_id(3) in farm.completed)
    assert farm.completed == {
        action_id(0): "SUCCEEDED",
        action_id(1): "SUCCEEDED",
        action_id(2): "SUCCEEDED",
        action_id(3): "INTERRUPTED",
    }
    log_text = (tmp_path / "logs" / QUEUE / f"{SESSION}.log").read_text()
    assert "frame 2" in log_text and "frame 3" not in log_text
    assert "exited" in log_text  # the environment the session entered was exited


async def test_a_second_stop_hurries_the_first(tmp_path: Path) -> None:
    """A stop with a long grace, then one with none: the action that ignores SIGTERM is
    killed at once (a hurried drain), not at the end of the first grace."""
    farm = FakeFarm(
        {
            **py(
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                " print('ready', flush=True); time.sleep(600)"
            ),
            "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 600},
        }
    )
    farm.assigned = {SESSION: session(task(0, 1))}
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            await sync_until(r, started(farm, 0))
            r.scheduler.stop_sessions(grace=600, running_state=ActionState.INTERRUPTED, reason="a")
            await sync_until(r, lambda: action_id(0) in farm.completed)
            r.scheduler.stop_sessions(grace=0, running_state=ActionState.INTERRUPTED, reason="b")
            await r.scheduler.wait_sessions_finished()
    assert farm.completed == {action_id(0): "INTERRUPTED"}


async def test_a_closed_scheduler_syncs_no_more(tmp_path: Path) -> None:
    """After close() no sync starts (the worker is STOPPED) and sync_now returns at once."""
    farm = FakeFarm(py("pass"))
    async with trio.open_nursery() as nursery:
        scheduler = await start_scheduler(nursery, farm, lambda a, r: pytest.fail("no sessions"))
        await scheduler.sync_now()
        await scheduler.close()
        with trio.fail_after(1):
            await scheduler.sync_now()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(farm.calls) == 1


async def test_a_reopened_scheduler_syncs_at_once_and_takes_new_sessions(tmp_path: Path) -> None:
    """A paused worker's scheduler: finished, closed (no calls, new work refused), then
    reopened (a sync at once; a session assigned now runs)."""
    farm = FakeFarm(py("print('frame {{Task.Param.F}}')"))
    with trio.fail_after(30):
        async with running(tmp_path, farm) as r:
            r.scheduler.finish_sessions()
            await r.scheduler.sync_now()
            await r.scheduler.close()
            calls = len(farm.calls)
            await r.scheduler.sync_now()  # answered at once, no call
            assert len(farm.calls) == calls
            farm.assigned = {SESSION: session(task(0, 1))}
            tell(r.scheduler.inbox, ReopenSchedule())
            await farm.wait_until(lambda: len(farm.calls) > calls)
            await sync_until(r, lambda: action_id(0) in farm.completed)
    assert farm.completed == {action_id(0): "SUCCEEDED"}


async def test_close_waits_for_a_sync_that_started_after_the_final_one() -> None:
    """The final sync then close() leaves no call on its way, even when a heartbeat asked
    for one during the final call; after it, sync_now returns at once and the farm hears
    no more."""
    farm = FakeFarm(py("pass"))
    release = trio.Event()
    entered = trio.Event()
    in_flight = 0
    original = farm.update_worker_schedule

    async def counted(updated: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
        nonlocal in_flight
        in_flight += 1
        try:
            if not entered.is_set():
                entered.set()
                await release.wait()
            return await original(updated)
        finally:
            in_flight -= 1

    farm.update_worker_schedule = counted  # type: ignore[method-assign]
    seen_in_flight: list[int] = []
    async with trio.open_nursery() as nursery:
        scheduler = await start_scheduler(nursery, farm, lambda a, r: pytest.fail("no sessions"))

        async def final() -> None:
            await scheduler.sync_now()
            await scheduler.close()
            seen_in_flight.append(in_flight)

        nursery.start_soon(final)
        await entered.wait()  # the final call is held by the farm...
        nursery.start_soon(scheduler.sync_now)  # ... when a heartbeat asks for another
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert seen_in_flight == [0]
        calls = len(farm.calls)
        with trio.fail_after(1):
            await scheduler.sync_now()
        await trio.testing.wait_all_tasks_blocked()
        assert len(farm.calls) == calls
        nursery.cancel_scope.cancel()


async def test_a_late_sync_failing_after_close_is_not_an_error() -> None:
    """If waiting for the call on its way gives up (and the worker says STOPPED), that
    call's failure (the farm calling the worker offline, say) is logged, not raised."""
    farm = FakeFarm(py("pass"))
    release = trio.Event()

    async def hung(updated: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
        await release.wait()
        raise RuntimeError("the worker is STOPPED")

    farm.update_worker_schedule = hung  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        scheduler = await start_scheduler(nursery, farm, lambda a, r: pytest.fail("no sessions"))
        nursery.start_soon(scheduler.sync_now)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01) as scope:
            await scheduler.close()
        assert scope.cancelled_caught
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1):
            await scheduler.sync_now()  # returns at once: closed, and nothing was raised
        nursery.cancel_scope.cancel()


class ScriptedSession:
    """Stands in for a WorkSession: the test writes its reports."""

    def __init__(
        self, assignment: SessionAssignment, reports: trio.MemorySendChannel[SessionReport]
    ) -> None:
        self.assignment = assignment
        self.session_id = assignment.session_id
        self.reports = reports
        self.commands: list[Any] = []

    async def run(
        self, *, task_status: trio.TaskStatus[trio.MemorySendChannel[SessionCommand]]
    ) -> None:
        send, receive = trio.open_memory_channel[SessionCommand](100)
        task_status.started(send)
        async for command in receive:
            self.commands.append(command)

    async def final(self, n: int, status: str) -> None:
        state = {"SUCCEEDED": ActionState.SUCCESS, "FAILED": ActionState.FAILED}[status]
        await self.reports.send(
            ActionUpdate(SESSION, action_id(n), ActionKind.TASK_RUN, state=state)
        )


def time_calls(farm: FakeFarm) -> list[float]:
    """When each of ``farm``'s UpdateWorkerSchedule calls came (the list fills as they do)."""
    times: list[float] = []
    real_sync = farm.update_worker_schedule

    async def timed(updated: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
        times.append(trio.current_time())
        return await real_sync(updated)

    farm.update_worker_schedule = timed  # type: ignore[method-assign]
    return times


def scripted_sessions() -> tuple[
    list[ScriptedSession],
    Callable[[SessionAssignment, trio.MemorySendChannel[SessionReport]], Any],
]:
    """A session factory for the scheduler that makes ``ScriptedSession``s, and the
    list they go into."""
    sessions: list[ScriptedSession] = []

    def factory(
        assignment: SessionAssignment, reports: trio.MemorySendChannel[SessionReport]
    ) -> Any:
        sessions.append(ScriptedSession(assignment, reports))
        return sessions[-1]

    return sessions, factory


async def test_routine_successes_are_batched_and_the_rest_goes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A success while the session has work left waits for the report interval (so
    millisecond tasks share calls); a failure, or a session out of work, syncs at once."""
    farm = FakeFarm(py("pass"))
    farm.assigned = {SESSION: session(task(0, 1), task(1, 2), task(2, 3), task(3, 4), task(4, 5))}
    times = time_calls(farm)
    sessions, factory = scripted_sessions()

    async with trio.open_nursery() as nursery:
        scheduler = await start_scheduler(nursery, farm, factory, report_interval=1.0)
        await scheduler.sync_now()  # t=0: the session arrives
        [worker_session] = sessions
        await worker_session.final(0, "SUCCEEDED")
        await worker_session.final(1, "SUCCEEDED")
        await farm.wait_until(lambda: len(farm.completed) == 2)
        assert times == [0.0, 1.0]  # one call for both, a report interval after the last
        await trio.sleep(5)
        await worker_session.final(2, "SUCCEEDED")  # the interval has passed: at once
        await farm.wait_until(lambda: len(farm.completed) == 3)
        await worker_session.final(3, "FAILED")  # urgent, though a call was just made
        await farm.wait_until(lambda: len(farm.completed) == 4)
        assert times[2:] == [6.0, 6.0]
        await trio.sleep(0.1)
        await worker_session.final(4, "SUCCEEDED")  # the last assigned: the session is idle
        await farm.wait_until(lambda: len(farm.completed) == 5)
        assert times[4:] == [6.1]
        nursery.cancel_scope.cancel()
    assert [c.keys() for c in farm.calls[1:]] == [
        {action_id(0), action_id(1)},
        {action_id(2)},
        {action_id(3)},
        {action_id(4)},
    ]


async def test_a_success_that_leaves_one_assigned_action_goes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A success that leaves the session only the action it runs next is reported at
    once, within the report interval: the farm can assign the next one while it runs."""
    farm = FakeFarm(py("pass"))
    farm.assigned = {SESSION: session(task(0, 1), task(1, 2), task(2, 3))}
    times = time_calls(farm)
    sessions, factory = scripted_sessions()

    async with trio.open_nursery() as nursery:
        scheduler = await start_scheduler(nursery, farm, factory, report_interval=1.0)
        await scheduler.sync_now()  # t=0: the session arrives with three task runs
        [worker_session] = sessions
        await trio.sleep(0.1)
        await worker_session.final(0, "SUCCEEDED")  # two left: waits for the interval
        await trio.testing.wait_all_tasks_blocked()
        assert times == [0.0]
        await trio.sleep(0.1)
        await worker_session.final(1, "SUCCEEDED")  # one left: at once
        await farm.wait_until(lambda: len(farm.completed) == 2)
        assert times == [0.0, 0.2]
        nursery.cancel_scope.cancel()
    assert farm.calls[1].keys() == {action_id(0), action_id(1)}


async def test_close_waits_for_the_call_in_flight_and_makes_no_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """close() returns only once the call in flight has its answer (the worker may then
    tell the farm it stopped); later syncs make no call, and a failure of the call that
    was out when it closed does not end the scheduler."""
    farm = FakeFarm(py("pass"))
    real_sync = farm.update_worker_schedule
    started = trio.Event()

    async def slow(updated: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
        started.set()
        await trio.sleep(5)
        await real_sync(updated)
        raise RuntimeError("the farm says the worker is stopping")

    async with trio.open_nursery() as nursery:
        scheduler = await start_scheduler(nursery, farm, lambda a, r: pytest.fail("no sessions"))
        farm.update_worker_schedule = slow  # type: ignore[method-assign]
        scheduler.request_sync()
        await started.wait()
        before = trio.current_time()
        await scheduler.close()
        assert trio.current_time() - before == 5  # waited for the answer
        await scheduler.sync_now()  # returns at once, no call
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert len(farm.calls) == 1


async def test_sync_now_since_counts_a_call_that_started_since_then(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A heartbeat's SyncNow(since=slot): a call that started at or after the slot will
    do, done (answered at once) or in flight (answered when it is done); one that
    started before the slot does not (it waits for it, then for a new call)."""
    farm = FakeFarm(py("pass"))
    real_sync = farm.update_worker_schedule
    starts: list[float] = []

    async def slow(updated: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
        starts.append(trio.current_time())
        await trio.sleep(5)
        return await real_sync(updated)

    async with trio.open_nursery() as nursery:
        scheduler = await start_scheduler(nursery, farm, lambda a, r: pytest.fail("no sessions"))
        farm.update_worker_schedule = slow  # type: ignore[method-assign]
        slot = trio.current_time()
        scheduler.request_sync()  # a report's call, at the slot
        await trio.testing.wait_all_tasks_blocked()
        assert len(starts) == 1
        await trio.sleep(1)
        await sync_now(scheduler.inbox, since=slot)  # the call in flight will do
        assert trio.current_time() - slot == 5
        assert len(starts) == 1
        await sync_now(scheduler.inbox, since=slot)  # done since the slot: at once
        assert trio.current_time() - slot == 5
        assert len(starts) == 1

        later = trio.current_time() + 1
        await trio.sleep(0.5)
        scheduler.request_sync()  # starts before the next slot
        await trio.sleep(1)
        await sync_now(scheduler.inbox, since=later)  # waits for it, then a new call
        assert len(starts) == 3
        assert starts[2] >= later
        assert trio.current_time() - starts[1] == 10
        nursery.cancel_scope.cancel()


async def test_sessions_sharing_starts_take_turns_until_their_first_action_starts(
    tmp_path: Path,
) -> None:
    """With one start at a time, a session's turn ends when its first action starts,
    not when it ends: each task here waits for the other to have started."""
    met = tmp_path / "met"
    met.mkdir()
    code = (
        "import pathlib, time\n"
        f"d = pathlib.Path({str(met)!r})\n"
        "(d / '{{Task.Param.F}}').touch()\n"
        "while len(list(d.iterdir())) < 2: time.sleep(0.01)\n"
    )
    farm = FakeFarm(py(code))
    other = f"session-{'b' * 32}"
    farm.assigned = {SESSION: session(task(0, 1)), other: session(task(1, 2))}
    starts = trio.CapacityLimiter(1)
    with trio.fail_after(30):
        async with running(tmp_path, farm, starts=starts) as r:
            await r.scheduler.sync_now()
            await farm.wait_until(lambda: len(farm.completed) == 2)
    assert farm.completed == {action_id(0): "SUCCEEDED", action_id(1): "SUCCEEDED"}
    assert starts.borrowed_tokens == 0
