"""Scheduling in the mock farm: sessions, actions, reports, retries, cancels, heartbeats.

These tests call the farm's ASGI dispatch in-process (codec, faults, handlers,
serializer; no socket) so that the ones about time can use ``autojump_clock``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing
from openjd.model import parse_model
from openjd.model.v2023_09 import Environment, StepTemplate

from actors import _entities
from agent.mockfarm import ApiError, FarmConfig, MockFarm, open_mock_farm
from agent.mockfarm._farmscheduler import MAX_PIPELINE_DEPTH
from tests.mockfarm_helpers import CAPABILITIES, Agent, completed, invoke, job_template, kind_of

ACTION_ID = re.compile(r"sessionaction-[0-9a-f]{32}-(0|[1-9][0-9]*)")


@pytest.fixture
async def farm() -> AsyncIterator[MockFarm]:
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=1)) as farm:
        yield farm


def describe(action: dict[str, Any]) -> str:
    [(kind, body)] = action["definition"].items()
    if kind == "taskRun":
        return f"task {body['parameters']['Frame']['int']}" if body["parameters"] else "task"
    return f"{kind} {body['environmentId'].rsplit(':', 1)[-1]}"


def succeed_all(actions: list[dict[str, Any]]) -> dict[str, Any]:
    return {a["sessionActionId"]: completed() for a in actions}


async def test_session_runs_enters_tasks_and_exits_in_order(farm: MockFarm) -> None:
    """A session enters job then step environments, runs tasks and exits in reverse."""
    farm.create_job(job_template(frames="1-3", job_environments=2, step_environment=True))
    agent = Agent(farm)
    await agent.start()
    order: list[str] = []
    actions = await agent.actions()
    for _ in range(10):
        if not actions:
            break
        order += [describe(a) for a in actions]
        actions = await agent.actions(succeed_all(actions))
    assert order == [
        "envEnter Env0",
        "envEnter Env1",
        "envEnter RenderEnv",
        "task 1",
        "task 2",
        "task 3",
        "envExit RenderEnv",
        "envExit Env1",
        "envExit Env0",
    ]


async def test_action_and_environment_ids_have_the_service_form(farm: MockFarm) -> None:
    """Action ids are sessionaction-<session hex>-<n>; environments JOB:/STEP: scoped."""
    job_id = farm.create_job(job_template(step_environment=True))
    agent = Agent(farm)
    await agent.start()
    response = await agent.sync()
    [(session_id, session)] = response["assignedSessions"].items()
    hex_ = session_id.removeprefix("session-")
    ids = [a["sessionActionId"] for a in session["sessionActions"]]
    assert ids == [f"sessionaction-{hex_}-{n}" for n in range(len(ids))]
    assert all(ACTION_ID.fullmatch(i) for i in ids)
    step_id = farm.job(job_id).steps[0].step_id
    environments = [
        a["definition"]["envEnter"]["environmentId"] for a in session["sessionActions"][:2]
    ]
    assert environments == [f"JOB:{job_id}:Env0", f"STEP:{step_id}:RenderEnv"]
    task = session["sessionActions"][2]["definition"]["taskRun"]
    assert task == {
        "stepId": step_id,
        "taskId": f"task-{step_id.removeprefix('step-')}-0",
        "parameters": {"Frame": {"int": "1"}},
    }
    assert session["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {
            "logGroupName": f"/aws/deadline/{farm.farm_id}/{farm.queue_id}",
            "logStreamName": session_id,
        },
        "parameters": {"interval": "15"},
    }
    assert response["updateIntervalSeconds"] == 1
    assert response["cancelSessionActions"] == {}


async def test_pipeline_depth_bounds_the_queued_task_runs() -> None:
    """At most pipeline_depth task runs are assigned ahead; completions are topped up."""
    async with open_mock_farm(config=FarmConfig(pipeline_depth=3)) as farm:
        farm.create_job(job_template(frames="1-10", job_environments=0))
        agent = Agent(farm)
        await agent.start()
        actions = await agent.actions()
        assert [describe(a) for a in actions] == ["task 1", "task 2", "task 3"]
        actions = await agent.actions({actions[0]["sessionActionId"]: completed()})
        assert [describe(a) for a in actions] == ["task 2", "task 3", "task 4"]


async def test_pipeline_seconds_assigns_quick_task_runs_further_ahead() -> None:
    """With pipeline_seconds, a session whose task runs are quick gets enough of them
    for that much work at their pace (capped at MAX_PIPELINE_DEPTH); slow ones keep
    pipeline_depth."""
    config = FarmConfig(pipeline_depth=2, pipeline_seconds=0.5)
    async with open_mock_farm(config=config) as farm:
        farm.create_job(job_template(frames="1-200", job_environments=0))
        agent = Agent(farm)
        await agent.start()
        actions = await agent.actions()
        assert [describe(a) for a in actions] == ["task 1", "task 2"]  # no pace yet
        start = datetime.now(UTC)
        slow = completed(startedAt=start, endedAt=start + timedelta(seconds=1))
        actions = await agent.actions({actions[0]["sessionActionId"]: slow})
        assert [describe(a) for a in actions] == ["task 2", "task 3"]
        quick = completed(startedAt=start, endedAt=start + timedelta(milliseconds=20))
        for _ in range(30):  # the running mean comes down to the quick runs' pace
            actions = await agent.actions({actions[0]["sessionActionId"]: quick})
        # 0.5 s at about 20 ms a run: about 25 runs ahead.
        assert 23 <= len(actions) <= 25
        quickest = completed(startedAt=start, endedAt=start)
        for _ in range(8):
            actions = await agent.actions({actions[0]["sessionActionId"]: quickest})
        assert len(actions) == MAX_PIPELINE_DEPTH


async def test_repeated_reports_change_nothing(farm: MockFarm) -> None:
    """A report sent again (at-least-once delivery) is ignored; the first completion stands."""
    job_id = farm.create_job(job_template(frames="1-2", job_environments=0))
    agent = Agent(farm)
    await agent.start()
    first = (await agent.actions())[0]
    report = {first["sessionActionId"]: completed("FAILED")}
    await agent.sync(report)
    task = farm.job(job_id).steps[0].tasks[0]
    # Retried at once, in a new session of the same worker.
    assert task.failure_retry_count == 1
    assert task.latest_action is not None
    assert task.latest_action.action_id != first["sessionActionId"]
    await agent.sync(report)
    await agent.sync({first["sessionActionId"]: completed("SUCCEEDED")})
    assert farm.job(job_id).failure_count == 1
    assert task.failure_retry_count == 1
    assert farm.state.actions[first["sessionActionId"]].status == "FAILED"


async def test_progress_reports_mark_the_task_running(farm: MockFarm) -> None:
    """A report without completedStatus starts the action and its task, with progress."""
    job_id = farm.create_job(job_template(frames="1", job_environments=0))
    agent = Agent(farm)
    await agent.start()
    [action] = await agent.actions()
    task = farm.job(job_id).steps[0].tasks[0]
    assert task.status == "ASSIGNED"
    await agent.sync(
        {
            action["sessionActionId"]: {
                "startedAt": completed()["startedAt"],
                "progressPercent": 40.0,
                "progressMessage": "rendering",
            }
        }
    )
    record = farm.state.actions[action["sessionActionId"]]
    assert (task.status, record.status, record.progress_percent) == ("RUNNING", "RUNNING", 40.0)
    assert farm.job(job_id).started_at is not None


async def test_failed_tasks_are_retried_then_fail() -> None:
    """A failing task is retried maxRetriesPerTask times, then FAILED; the job fails."""
    async with open_mock_farm(config=FarmConfig(max_retries_per_task=2)) as farm:
        job_id = farm.create_job(job_template(frames="1", job_environments=0))
        agent = Agent(farm)
        await agent.start()
        runs = 0
        actions = await agent.actions()
        for _ in range(10):
            tasks = [a for a in actions if kind_of(a) == "taskRun"]
            runs += len(tasks)
            actions = await agent.actions(
                {a["sessionActionId"]: completed("FAILED") for a in tasks}
            )
            if not actions and farm.job(job_id).status == "FAILED":
                break
        task = farm.job(job_id).steps[0].tasks[0]
        assert runs == 3
        assert (task.status, task.failure_retry_count) == ("FAILED", 2)
        assert farm.job(job_id).status == "FAILED"
        assert farm.job(job_id).ended_at is not None


async def test_a_failed_job_stops_assigning_and_cancels_the_rest(farm: MockFarm) -> None:
    """Reaching maxFailedTasksCount fails the job: no more work, READY tasks CANCELED."""
    job_id = farm.create_job(
        job_template(frames="1-5", job_environments=1), max_failed_tasks_count=1
    )
    agent = Agent(farm)
    await agent.start()
    actions = await agent.actions()
    enter, first = actions[0], actions[1]
    actions = await agent.actions(
        {enter["sessionActionId"]: completed(), first["sessionActionId"]: completed("FAILED")}
    )
    assert [describe(a) for a in actions] == ["envExit Env0"]
    job = farm.job(job_id)
    assert job.failed
    assert (job.task_counts["FAILED"], job.task_counts["CANCELED"]) == (1, 4)
    await agent.actions(succeed_all(actions))
    assert (await agent.sync())["assignedSessions"] == {}
    assert job.status == "FAILED"


async def test_a_failure_withdraws_the_rest_of_the_session(farm: MockFarm) -> None:
    """After a failed action the farm NEVER_ATTEMPTs the queued tasks and sends only exits."""
    job_id = farm.create_job(job_template(frames="1-4", job_environments=1, step_environment=True))
    agent = Agent(farm)
    await agent.start()
    actions = await agent.actions()
    assert [describe(a) for a in actions] == [
        "envEnter Env0",
        "envEnter RenderEnv",
        "task 1",
        "task 2",
    ]
    updates = {
        actions[0]["sessionActionId"]: completed(),
        actions[1]["sessionActionId"]: completed("FAILED"),
    }
    actions2 = await agent.actions(updates)
    # The step environment failed to enter: it is exited anyway, then the job's.
    assert [describe(a) for a in actions2] == ["envExit RenderEnv", "envExit Env0"]
    statuses = [farm.state.actions[a["sessionActionId"]].status for a in actions]
    assert statuses == ["SUCCEEDED", "FAILED", "NEVER_ATTEMPTED", "NEVER_ATTEMPTED"]
    tasks = farm.job(job_id).steps[0].tasks
    assert [t.status for t in tasks[:2]] == ["READY", "READY"]
    assert [t.failure_retry_count for t in tasks[:2]] == [0, 0]
    # The worker's own NEVER_ATTEMPTED reports arrive later and change nothing.
    await agent.sync({actions[2]["sessionActionId"]: completed("NEVER_ATTEMPTED")})
    assert tasks[0].status == "READY"


async def test_never_attempted_is_rejected_for_the_first_action(farm: MockFarm) -> None:
    """The service rejects NEVER_ATTEMPTED for a session's first action."""
    farm.create_job(job_template(frames="1", job_environments=0))
    agent = Agent(farm)
    await agent.start()
    [first] = await agent.actions()
    with pytest.raises(ApiError) as caught:
        await agent.sync({first["sessionActionId"]: completed("NEVER_ATTEMPTED")})
    assert caught.value.code == "ValidationException"
    assert farm.state.actions[first["sessionActionId"]].status == "ASSIGNED"


async def test_interrupted_work_is_requeued_without_a_retry(farm: MockFarm) -> None:
    """An INTERRUPTED task goes back to READY and its retry count is unchanged."""
    job_id = farm.create_job(job_template(frames="1", job_environments=0))
    agent = Agent(farm)
    await agent.start()
    [action] = await agent.actions()
    response = await agent.sync({action["sessionActionId"]: completed("INTERRUPTED")})
    task = farm.job(job_id).steps[0].tasks[0]
    assert task.failure_retry_count == 0
    # Requeued, and given again (in a new session: the interrupted one ended).
    [session] = response["assignedSessions"].values()
    [again] = session["sessionActions"]
    assert again["definition"]["taskRun"]["taskId"] == task.task_id
    assert again["sessionActionId"] != action["sessionActionId"]
    assert farm.state.actions[action["sessionActionId"]].status == "INTERRUPTED"


async def test_dependent_steps_wait_for_their_dependencies(farm: MockFarm) -> None:
    """A step's tasks are PENDING until every step it depends on SUCCEEDED."""
    job_id = farm.create_job(job_template(frames="1-2", job_environments=0, second_step=True))
    job = farm.job(job_id)
    render, encode = job.steps
    assert [t.status for t in encode.tasks] == ["PENDING"]
    agent = Agent(farm)
    await agent.start()
    actions = await agent.actions()
    assert {a["definition"]["taskRun"]["stepId"] for a in actions} == {render.step_id}
    actions = await agent.actions(succeed_all(actions))
    assert encode.tasks[0].status == "ASSIGNED"
    assert [a["definition"]["taskRun"]["stepId"] for a in actions] == [encode.step_id]
    await agent.actions(succeed_all(actions))
    assert job.status == "SUCCEEDED"


async def test_cancelling_a_job_cancels_running_actions(farm: MockFarm) -> None:
    """UpdateJob(CANCELED) lists running actions in cancelSessionActions until reported."""
    job_id = farm.create_job(job_template(frames="1-4", job_environments=1))
    agent = Agent(farm)
    await agent.start()
    actions = await agent.actions()
    enter, task1, task2 = actions
    await agent.sync({enter["sessionActionId"]: completed()})
    await invoke(
        farm.app,
        "UpdateJob",
        farmId=farm.farm_id,
        queueId=farm.queue_id,
        jobId=job_id,
        targetTaskRunStatus="CANCELED",
    )
    job = farm.job(job_id)
    assert [t.status for t in job.steps[0].tasks] == [
        "INTERRUPTING",
        "INTERRUPTING",
        "CANCELED",
        "CANCELED",
    ]
    response = await agent.sync()
    [(session_id, _)] = response["assignedSessions"].items()
    pending = [task1["sessionActionId"], task2["sessionActionId"]]
    assert response["cancelSessionActions"] == {session_id: pending}
    # Asked again until the worker reports.
    assert (await agent.sync())["cancelSessionActions"] == {session_id: pending}
    actions = await agent.actions(
        {
            task1["sessionActionId"]: completed("CANCELED"),
            task2["sessionActionId"]: completed("NEVER_ATTEMPTED"),
        }
    )
    assert [describe(a) for a in actions] == ["envExit Env0"]
    assert job.task_counts["CANCELED"] == 4
    assert job.status == "CANCELED"
    assert (await agent.sync(succeed_all(actions)))["assignedSessions"] == {}


async def test_update_task_cancels_and_requeues_one_task(farm: MockFarm) -> None:
    """UpdateTask(CANCELED) cancels one task; UpdateTask(READY) runs it again."""
    job_id = farm.create_job(job_template(frames="1-2", job_environments=0))
    step = farm.job(job_id).steps[0]
    ids = {
        "farmId": farm.farm_id,
        "queueId": farm.queue_id,
        "jobId": job_id,
        "stepId": step.step_id,
    }
    task = step.tasks[1]
    await invoke(farm.app, "UpdateTask", taskId=task.task_id, targetRunStatus="CANCELED", **ids)
    assert task.status == "CANCELED"
    agent = Agent(farm)
    await agent.start()
    actions = await agent.actions()
    assert [describe(a) for a in actions] == ["task 1"]
    await invoke(farm.app, "UpdateTask", taskId=task.task_id, targetRunStatus="READY", **ids)
    actions = await agent.actions(succeed_all(actions))
    assert [describe(a) for a in actions] == ["task 2"]
    fetched = await invoke(farm.app, "GetTask", taskId=task.task_id, **ids)
    assert fetched["runStatus"] == "ASSIGNED"
    assert fetched["latestSessionActionId"] == actions[0]["sessionActionId"]


async def test_stop_request_sends_desired_status_once_idle(farm: MockFarm) -> None:
    """request_worker_stop: no new tasks, exits, then desiredWorkerStatus=STOPPED."""
    farm.create_job(job_template(frames="1-5", job_environments=1))
    agent = Agent(farm)
    await agent.start()
    actions = await agent.actions()
    farm.request_worker_stop(agent.worker_id)
    response = await agent.sync(succeed_all(actions))
    [session] = response["assignedSessions"].values()
    assert [describe(a) for a in session["sessionActions"]] == ["envExit Env0"]
    assert "desiredWorkerStatus" not in response
    response = await agent.sync(succeed_all(session["sessionActions"]))
    assert response["assignedSessions"] == {}
    assert response["desiredWorkerStatus"] == "STOPPED"


async def test_silent_workers_are_marked_not_responding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A worker that misses heartbeats for worker_timeout is NOT_RESPONDING; work is requeued."""
    async with open_mock_farm(config=FarmConfig(worker_timeout_seconds=60)) as farm:
        job_id = farm.create_job(job_template(frames="1-2", job_environments=0))
        agent = Agent(farm)
        await agent.start()
        actions = await agent.actions()
        await agent.sync({actions[0]["sessionActionId"]: {"progressPercent": 5.0}})
        started = trio.current_time()
        worker = farm.worker(agent.worker_id)
        await farm.wait_until(lambda: worker.status == "NOT_RESPONDING")
        assert trio.current_time() - started == pytest.approx(60)
        tasks = farm.job(job_id).steps[0].tasks
        assert [t.status for t in tasks] == ["READY", "READY"]
        assert farm.state.actions[actions[0]["sessionActionId"]].status == "INTERRUPTED"
        assert farm.state.actions[actions[1]["sessionActionId"]].status == "NEVER_ATTEMPTED"
        with pytest.raises(ApiError) as caught:
            await agent.sync()
        assert caught.value.code == "ConflictException"
        assert caught.value.members["reason"] == "STATUS_CONFLICT"
        assert caught.value.members["resourceId"] == agent.worker_id


async def test_heartbeats_keep_a_worker_alive(autojump_clock: trio.testing.MockClock) -> None:
    """A worker that syncs more often than worker_timeout stays started."""
    async with open_mock_farm(config=FarmConfig(worker_timeout_seconds=60)) as farm:
        agent = Agent(farm)
        await agent.start()
        for _ in range(5):
            await trio.sleep(45)
            await agent.sync()
        assert farm.worker(agent.worker_id).status == "STARTED"


async def test_worker_status_transitions(farm: MockFarm) -> None:
    """UpdateWorker follows the service's transitions and conflicts."""
    agent = Agent(farm)
    created = await invoke(farm.app, "CreateWorker", farmId=farm.farm_id, fleetId=farm.fleet_id)
    agent.worker_id = created["workerId"]
    with pytest.raises(ApiError) as not_started:
        await agent.sync()
    assert not_started.value.members["reason"] == "STATUS_CONFLICT"
    response = await invoke(
        farm.app, "UpdateWorker", status="STARTED", capabilities=CAPABILITIES, **agent.ids
    )
    assert response["log"]["options"] == {
        "logGroupName": f"/aws/deadline/{farm.farm_id}/{farm.fleet_id}",
        "logStreamName": agent.worker_id,
    }
    await invoke(farm.app, "UpdateWorker", status="STOPPING", **agent.ids)
    with pytest.raises(ApiError) as stopping:
        await invoke(farm.app, "UpdateWorker", status="STARTED", **agent.ids)
    assert stopping.value.members["context"] == {"status": "STOPPING"}
    with pytest.raises(ApiError) as busy:
        await invoke(farm.app, "DeleteWorker", **agent.ids)
    assert busy.value.code == "ConflictException"
    await invoke(farm.app, "UpdateWorker", status="STOPPED", **agent.ids)
    await invoke(farm.app, "DeleteWorker", **agent.ids)
    with pytest.raises(ApiError) as gone:
        await invoke(farm.app, "GetWorker", **agent.ids)
    assert gone.value.code == "ResourceNotFoundException"


async def test_job_entities_pass_the_strict_validators(farm: MockFarm) -> None:
    """BatchGetJobEntity returns entities that strict contract parsers accept."""
    job_id = farm.create_job(job_template(step_environment=True), parameters={"Frames": "1-2"})
    agent = Agent(farm)
    await agent.start()
    actions = await agent.actions()
    identifiers = [{"jobDetails": {"jobId": job_id}}]
    for action in actions:
        [(kind, body)] = action["definition"].items()
        if kind == "taskRun":
            identifiers.append({"stepDetails": {"jobId": job_id, "stepId": body["stepId"]}})
        else:
            identifiers.append(
                {"environmentDetails": {"jobId": job_id, "environmentId": body["environmentId"]}}
            )
    response = await invoke(farm.app, "BatchGetJobEntity", identifiers=identifiers, **agent.ids)
    assert response["errors"] == []
    kinds = []
    for entity in response["entities"]:
        [(kind, data)] = entity.items()
        kinds.append(kind)
        _entities.validate(kind, data)
    assert kinds == [
        "jobDetails",
        "environmentDetails",
        "environmentDetails",
        "stepDetails",
        "stepDetails",
    ]
    job, env, step_env, step = (next(iter(e.values())) for e in response["entities"][:4])
    assert job["parameters"] == {"Frames": {"string": "1-2"}}
    assert job["jobRunAsUser"] == {"runAs": "WORKER_AGENT_USER"}
    assert job["schemaVersion"] == "jobtemplate-2023-09"
    assert parse_model(model=Environment, obj=env["template"]).name == "Env0"
    assert parse_model(model=Environment, obj=step_env["template"]).name == "RenderEnv"
    assert parse_model(model=StepTemplate, obj=step["template"]).name == "Render"
    assert step["dependencies"] == []
    assert _entities.parse_step_details(step).step_id == step["stepId"]


async def test_entity_errors_are_per_identifier(farm: MockFarm) -> None:
    """Unknown entities, and jobs the worker has no session for, are entries in errors."""
    job_id = farm.create_job(job_template(job_environments=0))
    other = farm.create_job(job_template(job_environments=0))
    agent = Agent(farm)
    await agent.start()
    await agent.sync()
    assert farm.job(job_id).sessions, "the first job is assigned first"
    response = await invoke(
        farm.app,
        "BatchGetJobEntity",
        identifiers=[
            {"stepDetails": {"jobId": job_id, "stepId": "step-" + "0" * 32}},
            {"jobDetails": {"jobId": other}},
            {"jobDetails": {"jobId": job_id}},
        ],
        **agent.ids,
    )
    assert [next(iter(e)) for e in response["entities"]] == ["jobDetails"]
    codes = [next(iter(e.values()))["code"] for e in response["errors"]]
    assert codes == ["ResourceNotFoundException", "AccessDeniedException"]


async def test_batch_get_job_entity_allows_ten_identifiers(farm: MockFarm) -> None:
    """More than ten identifiers break the model's constraint: ValidationException."""
    job_id = farm.create_job(job_template(job_environments=0))
    agent = Agent(farm)
    await agent.start()
    with pytest.raises(ApiError) as caught:
        await invoke(
            farm.app,
            "BatchGetJobEntity",
            identifiers=[{"jobDetails": {"jobId": job_id}}] * 11,
            **agent.ids,
        )
    assert caught.value.code == "ValidationException"
    assert "less than or equal to 10" in caught.value.message


async def test_queue_environments_come_first_by_priority(farm: MockFarm) -> None:
    """Queue environments (by priority) are entered before job environments."""
    for name, priority in (("Late", 20), ("Early", 10)):
        template = {
            "specificationVersion": "environment-2023-09",
            "environment": {"name": name, "script": {"actions": {"onEnter": {"command": "true"}}}},
        }
        await invoke(
            farm.app,
            "CreateQueueEnvironment",
            farmId=farm.farm_id,
            queueId=farm.queue_id,
            priority=priority,
            templateType="JSON",
            template=json.dumps(template),
        )
    job_id = farm.create_job(job_template(frames="1", job_environments=1))
    agent = Agent(farm)
    await agent.start()
    actions = await agent.actions()
    queue = farm.state.queues[farm.queue_id]
    by_name = {e.name: e.queue_environment_id for e in queue.environments.values()}
    assert [a["definition"].get("envEnter", {}).get("environmentId") for a in actions] == [
        f"JOB:{job_id}:{by_name['Early']}",
        f"JOB:{job_id}:{by_name['Late']}",
        f"JOB:{job_id}:Env0",
        None,
    ]
    first = actions[0]["definition"]["envEnter"]["environmentId"]
    entity = await invoke(
        farm.app,
        "BatchGetJobEntity",
        identifiers=[{"environmentDetails": {"jobId": job_id, "environmentId": first}}],
        **agent.ids,
    )
    details = entity["entities"][0]["environmentDetails"]
    assert details["schemaVersion"] == "environment-2023-09"
    assert details["template"]["name"] == "Early"


async def test_host_requirements_pick_compatible_workers(farm: MockFarm) -> None:
    """A step whose host requirements a worker does not meet is not assigned to it."""
    template = job_template(frames="1", job_environments=0)
    template["steps"][0]["hostRequirements"] = {
        "amounts": [{"name": "amount.worker.vcpu", "min": 8}]
    }
    farm.create_job(template)
    small = Agent(farm)
    await small.start()
    assert await small.actions() == []
    big = Agent(farm)
    await big.start(
        {
            "amounts": [
                {"name": "amount.worker.vcpu", "value": 16},
                {"name": "amount.worker.memory", "value": 8192},
            ],
            "attributes": CAPABILITIES["attributes"],
        }
    )
    assert [describe(a) for a in await big.actions()] == ["task 1"]


async def test_chunked_steps_send_chunk_parameters(farm: MockFarm) -> None:
    """TASK_CHUNKING steps assign chunkInt ranges."""
    template = job_template(frames="1-10", job_environments=0, extensions=["TASK_CHUNKING"])
    template["steps"][0]["parameterSpace"]["taskParameterDefinitions"][0].update(
        type="CHUNK[INT]", chunks={"defaultTaskCount": 5, "rangeConstraint": "CONTIGUOUS"}
    )
    job_id = farm.create_job(template)
    assert len(farm.job(job_id).steps[0].tasks) == 2
    agent = Agent(farm)
    await agent.start()
    actions = await agent.actions()
    assert [a["definition"]["taskRun"]["parameters"] for a in actions] == [
        {"Frame": {"chunkInt": "1-5"}},
        {"Frame": {"chunkInt": "6-10"}},
    ]


async def test_queue_role_credentials_need_a_session_and_a_role(farm: MockFarm) -> None:
    """AssumeQueueRoleForWorker: AccessDenied without a session; none without a role."""
    agent = Agent(farm)
    await agent.start()
    with pytest.raises(ApiError) as denied:
        await invoke(farm.app, "AssumeQueueRoleForWorker", queueId=farm.queue_id, **agent.ids)
    assert denied.value.code == "AccessDeniedException"
    farm.create_job(job_template(job_environments=0))
    await agent.sync()
    assert (
        await invoke(farm.app, "AssumeQueueRoleForWorker", queueId=farm.queue_id, **agent.ids) == {}
    )
    farm.state.queues[farm.queue_id].role_arn = "arn:aws:iam::123456789012:role/Queue"
    response = await invoke(
        farm.app, "AssumeQueueRoleForWorker", queueId=farm.queue_id, **agent.ids
    )
    assert set(response["credentials"]) == {
        "accessKeyId",
        "secretAccessKey",
        "sessionToken",
        "expiration",
    }


# ------------------------------------------------------------ options for embedding programs


async def test_a_job_can_keep_some_steps_and_name_its_tasks(farm: MockFarm) -> None:
    """steps= keeps the named steps (dependencies on the others dropped); tasks= gives a
    step exactly these tasks, in this order, repeats included."""
    from openjd.model import ParameterValue, ParameterValueType

    def frame(n: int) -> dict[str, ParameterValue]:
        return {"Frame": ParameterValue(type=ParameterValueType.INT, value=str(n))}

    job_id = farm.create_job(
        job_template(second_step=True, job_environments=0),
        steps=["Encode"],
    )
    assert [s.name for s in farm.job(job_id).steps] == ["Encode"]
    assert farm.job(job_id).steps[0].dependencies == []
    assert "dependencies" not in farm.job(job_id).steps[0].spec.template
    farm.cancel_job(job_id)
    job_id = farm.create_job(
        job_template(frames="1-10", job_environments=0),
        tasks={"Render": [frame(9), frame(2), frame(9)]},
    )
    agent = Agent(farm)
    await agent.start()
    order: list[str] = []
    actions = await agent.actions()
    while actions:
        order += [describe(a) for a in actions]
        actions = await agent.actions(succeed_all(actions))
    assert order == ["task 9", "task 2", "task 9"]
    assert farm.job(job_id).status == "SUCCEEDED"
    with pytest.raises(ApiError, match="no step named Nope"):
        farm.create_job(job_template(), steps=["Nope"])


async def test_a_session_limit_cancels_what_its_sessions_leave() -> None:
    """With session_limit=1 a job never gets a second session: after a failed environment
    (its tasks requeued) the rest is canceled and the job is over."""
    template = job_template(frames="1-2", job_environments=1)
    async with open_mock_farm(config=FarmConfig(max_retries_per_task=0)) as farm:
        job_id = farm.create_job(template, session_limit=1)
        agent = Agent(farm)
        await agent.start()
        enter, *_ = await agent.actions()
        assert kind_of(enter) == "envEnter"
        [exit_] = await agent.actions({enter["sessionActionId"]: completed("FAILED")})
        assert kind_of(exit_) == "envExit"  # the failed environment is still exited
        assert farm.job(job_id).status != "CANCELED"
        response = await agent.sync({exit_["sessionActionId"]: completed()})
        assert response["assignedSessions"] == {}
        job = farm.job(job_id)
        assert len(job.sessions) == 1
        assert job.status == "CANCELED"
        assert (await agent.sync())["assignedSessions"] == {}


async def test_path_mapping_rules_reach_job_details(farm: MockFarm) -> None:
    """path_mapping_rules= are served in jobDetails.pathMappingRules, which the worker reads."""
    rule = {"sourcePathFormat": "WINDOWS", "sourcePath": "C:\\\\in", "destinationPath": "/mnt/in"}
    job_id = farm.create_job(job_template(), path_mapping_rules=[rule])
    agent = Agent(farm)
    await agent.start()
    await agent.sync()
    answer = await invoke(
        farm.app,
        "BatchGetJobEntity",
        identifiers=[{"jobDetails": {"jobId": job_id}}],
        **agent.ids,
    )
    [entity] = answer["entities"]
    assert entity["jobDetails"]["pathMappingRules"] == [rule]
    details = _entities.parse_job_details(entity["jobDetails"])
    assert [r.to_dict()["destination_path"] for r in details.path_mapping_rules] == ["/mnt/in"]


async def test_host_requirements_can_be_ignored() -> None:
    """match_host_requirements=False gives a step to a worker that does not meet it."""
    template = job_template(job_environments=0)
    template["steps"][0]["hostRequirements"] = {
        "amounts": [{"name": "amount.worker.gpu", "min": 8}]
    }
    for match, expected in ((True, 0), (False, 3)):
        config = FarmConfig(match_host_requirements=match, pipeline_depth=5)
        async with open_mock_farm(config=config) as farm:
            farm.create_job(template)
            agent = Agent(farm)
            await agent.start()
            assert len(await agent.actions()) == expected


async def test_queue_environments_from_python_wrap_jobs_in_priority_order(farm: MockFarm) -> None:
    """create_queue_environment adds an environment every later job enters first; an
    extension it declares is the session's too."""

    def environment(name: str) -> dict[str, Any]:
        return {
            "specificationVersion": "environment-2023-09",
            "extensions": ["REDACTED_ENV_VARS"],
            "environment": {"name": name, "variables": {"A": "1"}},
        }

    farm.create_queue_environment(environment("Second"), priority=5)
    farm.create_queue_environment(environment("First"), priority=1)
    with pytest.raises(ApiError, match="already has an environment named"):
        farm.create_queue_environment(environment("First"))
    job_id = farm.create_job(job_template(job_environments=0, frames="1"))
    assert "REDACTED_ENV_VARS" in farm.job(job_id).extensions
    agent = Agent(farm)
    await agent.start()
    actions = await agent.actions()
    names = [farm.job(job_id).environments[i][1].name for i in range(2)]
    assert names == ["First", "Second"]
    assert [kind_of(a) for a in actions] == ["envEnter", "envEnter", "taskRun"]


async def test_log_events_can_be_counted_without_being_kept() -> None:
    """keep_log_events=False: PutLogEvents is checked and counted, nothing is stored."""
    async with open_mock_farm(config=FarmConfig(keep_log_events=False)) as farm:
        agent = Agent(farm)
        await agent.start()
        group = f"/aws/deadline/{farm.farm_id}/{farm.fleet_id}"
        farm.logs.put_log_events(
            {
                "logGroupName": group,
                "logStreamName": agent.worker_id,
                "logEvents": [{"timestamp": int(time.time() * 1000), "message": "hello"}],
            }
        )
        assert farm.worker_log(agent.worker_id) == []
        assert farm.statistics().log_events == 1


async def test_a_task_reported_only_at_its_end_still_has_a_start(farm: MockFarm) -> None:
    """A task whose start and end come in one report has startedAt, and so do its
    step and job (GetJob's startedAt is the first task's start)."""
    job_id = farm.create_job(job_template(frames="1", job_environments=0))
    agent = Agent(farm)
    await agent.start()
    [run] = await agent.actions()
    done = completed()
    await agent.sync({run["sessionActionId"]: done})
    job = farm.job(job_id)
    [task] = job.steps[0].tasks
    assert task.status == "SUCCEEDED"
    assert task.started_at == done["startedAt"]
    assert job.steps[0].started_at == job.started_at == done["startedAt"]
    got = await invoke(farm.app, "GetJob", farmId=farm.farm_id, queueId=farm.queue_id, jobId=job_id)
    assert got["startedAt"] is not None and got["endedAt"] is not None
