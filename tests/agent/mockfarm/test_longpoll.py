"""The mock farm's long poll: an idle worker's UpdateWorkerSchedule is held until work
for it may have come (or the interval passes), and the answers that leave a worker
idle tell it to call again at once; ``long_poll=False`` answers as the service does.

Through the farm's ASGI dispatch in-process, so that time is the autojump clock's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import wait_all_tasks_blocked

from agent.mockfarm import FarmConfig, MockFarm, open_mock_farm
from tests.mockfarm_helpers import Agent, completed, job_template


async def answer_to_a_held_call(
    farm: MockFarm, agent: Agent, meanwhile: Callable[[], object]
) -> tuple[float, float, dict[str, Any]]:
    """The worker's next call (nothing to report), held by the farm; ``meanwhile`` runs
    once it is held. When it was held, when it was answered, and the answer."""
    answers: list[tuple[float, dict[str, Any]]] = []

    async def sync() -> None:
        response = await agent.sync()
        answers.append((trio.current_time(), response))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync)
        await wait_all_tasks_blocked()
        assert farm.app.held_calls == 1
        held = trio.current_time()
        meanwhile()
    [(answered, response)] = answers
    return held, answered, response


async def test_an_idle_workers_call_is_held_until_work_comes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Long poll: an idle worker's UpdateWorkerSchedule waits for work; a job submitted
    meanwhile is in its answer at once. With nothing coming, it is answered when the
    interval is over, as of then, telling the worker to call again at once (0)."""
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=15)) as farm:
        agent = Agent(farm)
        await agent.start()
        start = trio.current_time()
        response = await agent.sync()
        answered = trio.current_time()
        assert answered - start == pytest.approx(15)  # held for the interval
        assert response["assignedSessions"] == {}
        assert response["updateIntervalSeconds"] == 0
        assert farm.worker(agent.worker_id).last_seen == pytest.approx(answered)

        submitted, answered, response = await answer_to_a_held_call(
            farm, agent, lambda: farm.create_job(job_template(frames="1", job_environments=0))
        )
        assert answered == submitted  # no time passed: the held call took it
        assert len(response["assignedSessions"]) == 1
        assert response["updateIntervalSeconds"] == 15  # busy: the usual interval


async def test_held_calls_wake_for_a_stop_and_never_hold_reports(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stop requested for a held worker answers its call with STOPPED at once; a call
    that reports never waits."""
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=15)) as farm:
        agent = Agent(farm)
        await agent.start()
        job_id = farm.create_job(job_template(frames="1", job_environments=0))
        [action] = await agent.actions()
        farm.cancel_job(job_id)
        start = trio.current_time()
        await agent.sync({action["sessionActionId"]: completed("CANCELED")})
        assert trio.current_time() == start  # a report: answered at once
        _, _, response = await answer_to_a_held_call(
            farm, agent, lambda: farm.request_worker_stop(agent.worker_id)
        )
        assert trio.current_time() == start
        assert response["desiredWorkerStatus"] == "STOPPED"
        assert farm.app.held_calls == 0


async def test_a_report_that_ends_the_last_session_asks_for_a_call_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The answer to the report that ends a worker's last session says to call again
    at once (0), not at the interval: that call is held, and a job submitted just
    after the previous one ended is picked up at once (it used to wait up to the
    interval, 15 s, for the worker's next call)."""
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=15)) as farm:
        agent = Agent(farm)
        await agent.start()
        farm.create_job(job_template(frames="1", job_environments=0))
        [action] = await agent.actions()
        start = trio.current_time()
        response = await agent.sync({action["sessionActionId"]: completed()})
        assert trio.current_time() == start  # a report: answered at once
        assert response["assignedSessions"] == {}
        assert response["updateIntervalSeconds"] == 0
        _, _, response = await answer_to_a_held_call(
            farm, agent, lambda: farm.create_job(job_template(frames="1", job_environments=0))
        )
        assert trio.current_time() == start
        assert len(response["assignedSessions"]) == 1
        assert response["updateIntervalSeconds"] == 15  # busy: the usual interval


async def test_a_report_that_leaves_work_keeps_the_interval() -> None:
    """A report whose answer still has work for the worker keeps the usual interval."""
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=1)) as farm:
        farm.create_job(job_template(frames="1-3", job_environments=0))
        agent = Agent(farm)
        await agent.start()
        actions = await agent.actions()
        response = await agent.sync({actions[0]["sessionActionId"]: completed()})
    assert len(response["assignedSessions"]) == 1
    assert response["updateIntervalSeconds"] == 1


async def test_without_long_poll_the_farm_answers_at_once_as_the_service(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = FarmConfig(update_interval_seconds=15, long_poll=False)
    async with open_mock_farm(config=config) as farm:
        agent = Agent(farm)
        await agent.start()
        start = trio.current_time()
        response = await agent.sync()
        assert trio.current_time() == start
        assert response["updateIntervalSeconds"] == 15
