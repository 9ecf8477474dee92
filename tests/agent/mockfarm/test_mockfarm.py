"""The mock farm over loopback HTTP, driven by boto3's real deadline and logs clients.

boto3 is blocking, so every client call runs in a worker thread
(``trio.to_thread.run_sync``) while the farm serves on the Trio loop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import botocore.exceptions
import httpx
import pytest
import trio
import yaml

from agent.mockfarm import FarmConfig, FaultConfig, MockFarm, OperationFaults, open_mock_farm
from tests.mockfarm_helpers import ScriptedWorker, completed, dumps, job_template, kind_of

T = TypeVar("T")


@pytest.fixture
async def farm() -> AsyncIterator[MockFarm]:
    async with open_mock_farm(config=FarmConfig(update_interval_seconds=1)) as farm:
        yield farm


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


def client_error(call: Callable[[], Any]) -> dict[str, Any]:
    """Run a boto3 call that must fail; its error response."""
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call()
    return dict(caught.value.response)


async def test_a_job_runs_through_a_scripted_worker_and_its_logs_read_back(farm: MockFarm) -> None:
    """CreateJob, a worker walks the job, the session log is shipped and read back."""
    deadline = farm.boto3_client("deadline")
    logs = farm.boto3_client("logs")
    template = yaml.safe_dump(job_template(frames="1-3", job_environments=1))

    def scenario() -> dict[str, Any]:
        job_id = deadline.create_job(
            farmId=farm.farm_id,
            queueId=farm.queue_id,
            template=template,
            templateType="YAML",
            priority=50,
            parameters={"Frames": {"string": "1-4"}},
        )["jobId"]
        worker = ScriptedWorker(deadline, farm.farm_id, farm.fleet_id)
        started = worker.start()
        first = worker.sync()
        [(session_id, session)] = first["assignedSessions"].items()
        entities = worker.entities(session["jobId"], session["sessionActions"])
        group = session["logConfiguration"]["options"]["logGroupName"]
        stamp = int(datetime.now(UTC).timestamp() * 1000)
        logs.put_log_events(
            logGroupName=group,
            logStreamName=session_id,
            logEvents=[{"timestamp": stamp + i, "message": f"line {i}"} for i in range(3)],
        )
        updates = {a["sessionActionId"]: completed() for a in session["sessionActions"]}
        ran = session["sessionActions"] + worker.run(updates=updates)
        ids = {"farmId": farm.farm_id, "queueId": farm.queue_id, "jobId": job_id}
        job = deadline.get_job(**ids)
        steps = deadline.list_steps(**ids)["steps"]
        tasks = deadline.list_tasks(stepId=steps[0]["stepId"], **ids)["tasks"]
        sessions = deadline.list_sessions(**ids)["sessions"]
        actions = deadline.list_session_actions(**ids)["sessionActions"]
        action = deadline.get_session_action(sessionActionId=actions[1]["sessionActionId"], **ids)
        events = logs.get_log_events(
            logGroupName=group, logStreamName=session_id, startFromHead=True
        )["events"]
        return locals()

    result = await in_thread(scenario)
    assert result["started"]["log"]["logDriver"] == "awslogs"
    assert [kind_of(a) for a in result["ran"]] == ["envEnter"] + ["taskRun"] * 4 + ["envExit"]
    assert result["entities"]["errors"] == []
    job = result["job"]
    assert job["taskRunStatus"] == "SUCCEEDED"
    assert job["taskRunStatusCounts"]["SUCCEEDED"] == 4
    assert job["lifecycleStatus"] == "CREATE_COMPLETE"
    assert isinstance(job["createdAt"], datetime) and isinstance(job["endedAt"], datetime)
    assert [t["runStatus"] for t in result["tasks"]] == ["SUCCEEDED"] * 4
    assert [t["parameters"]["Frame"]["int"] for t in result["tasks"]] == ["1", "2", "3", "4"]
    assert [s["lifecycleStatus"] for s in result["sessions"]] == ["ENDED"]
    assert len(result["actions"]) == 6 and result["action"]["status"] == "SUCCEEDED"
    assert result["action"]["processExitCode"] == 0
    assert [e["message"] for e in result["events"]] == ["line 0", "line 1", "line 2"]
    assert farm.session_log(result["session_id"]) == ["line 0", "line 1", "line 2"]


async def test_farms_fleets_queues_and_queue_environments_are_created_with_boto3(
    farm: MockFarm,
) -> None:
    """User-side creation calls build a farm a worker can then take work from."""
    deadline = farm.boto3_client("deadline")
    environment = {
        "specificationVersion": "environment-2023-09",
        "environment": {"name": "Conda", "script": {"actions": {"onEnter": {"command": "true"}}}},
    }

    def scenario() -> dict[str, Any]:
        farm_id = deadline.create_farm(displayName="Studio")["farmId"]
        fleet_id = deadline.create_fleet(
            farmId=farm_id,
            displayName="Render nodes",
            roleArn="arn:aws:iam::123456789012:role/Fleet",
            maxWorkerCount=10,
            configuration={
                "customerManaged": {
                    "mode": "NO_SCALING",
                    "workerCapabilities": {
                        "vCpuCount": {"min": 1},
                        "memoryMiB": {"min": 1024},
                        "osFamily": "LINUX",
                        "cpuArchitectureType": "x86_64",
                    },
                }
            },
        )["fleetId"]
        queue_id = deadline.create_queue(farmId=farm_id, displayName="Main")["queueId"]
        env_id = deadline.create_queue_environment(
            farmId=farm_id,
            queueId=queue_id,
            priority=1,
            templateType="JSON",
            template=json.dumps(environment),
        )["queueEnvironmentId"]
        job_id = deadline.create_job(
            farmId=farm_id,
            queueId=queue_id,
            template=dumps(job_template(frames="1", job_environments=0)),
            templateType="JSON",
            priority=10,
        )["jobId"]
        worker = ScriptedWorker(deadline, farm_id, fleet_id)
        worker.start()
        first = worker.sync()
        return {
            "farms": deadline.list_farms()["farms"],
            "fleet": deadline.get_fleet(farmId=farm_id, fleetId=fleet_id),
            "queue": deadline.get_queue(farmId=farm_id, queueId=queue_id),
            "environments": deadline.list_queue_environments(farmId=farm_id, queueId=queue_id),
            "first": first,
            "env_id": env_id,
            "job_id": job_id,
            "workers": deadline.list_workers(farmId=farm_id, fleetId=fleet_id)["workers"],
        }

    result = await in_thread(scenario)
    assert [f["displayName"] for f in result["farms"]] == ["Default farm", "Studio"]
    assert result["fleet"]["status"] == "ACTIVE"
    assert result["queue"]["displayName"] == "Main"
    assert [e["name"] for e in result["environments"]["environments"]] == ["Conda"]
    [session] = result["first"]["assignedSessions"].values()
    assert session["sessionActions"][0]["definition"] == {
        "envEnter": {"environmentId": f"JOB:{result['job_id']}:{result['env_id']}"}
    }
    assert [w["status"] for w in result["workers"]] == ["RUNNING"]


async def test_cancelling_a_job_reaches_the_worker(farm: MockFarm) -> None:
    """UpdateJob(CANCELED) shows up in the worker's cancelSessionActions."""
    deadline = farm.boto3_client("deadline")
    job_id = farm.create_job(job_template(frames="1-3", job_environments=0))

    def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        worker = ScriptedWorker(deadline, farm.farm_id, farm.fleet_id)
        worker.start()
        first = worker.sync()
        deadline.update_job(
            farmId=farm.farm_id, queueId=farm.queue_id, jobId=job_id, targetTaskRunStatus="CANCELED"
        )
        return first, worker.sync()

    first, second = await in_thread(scenario)
    [(session_id, session)] = first["assignedSessions"].items()
    assert second["cancelSessionActions"] == {
        session_id: [a["sessionActionId"] for a in session["sessionActions"]]
    }


async def test_error_shapes_reach_boto3_with_their_members(farm: MockFarm) -> None:
    """ResourceNotFound, Conflict (reason, context), Validation (reason) as the service."""
    deadline = farm.boto3_client("deadline")

    def scenario() -> list[dict[str, Any]]:
        missing = client_error(
            lambda: deadline.get_job(
                farmId=farm.farm_id, queueId=farm.queue_id, jobId="job-" + "0" * 32
            )
        )
        worker_id = deadline.create_worker(farmId=farm.farm_id, fleetId=farm.fleet_id)["workerId"]
        not_started = client_error(
            lambda: deadline.update_worker_schedule(
                farmId=farm.farm_id, fleetId=farm.fleet_id, workerId=worker_id
            )
        )
        bad_template = client_error(
            lambda: deadline.create_job(
                farmId=farm.farm_id,
                queueId=farm.queue_id,
                template='{"specificationVersion": "jobtemplate-2023-09", "name": "x", "steps": []}',
                templateType="JSON",
                priority=1,
            )
        )
        return [missing, not_started, bad_template]

    missing, not_started, bad_template = await in_thread(scenario)
    assert missing["Error"]["Code"] == "ResourceNotFoundException"
    assert missing["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert missing["resourceType"] == "job"
    assert not_started["Error"]["Code"] == "ConflictException"
    assert not_started["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert not_started["reason"] == "STATUS_CONFLICT"
    assert not_started["context"] == {"status": "CREATED"}
    assert bad_template["Error"]["Code"] == "ValidationException"
    assert bad_template["reason"] == "OTHER"
    assert "steps" in bad_template["Error"]["Message"]


async def test_requests_that_break_the_model_are_rejected(farm: MockFarm) -> None:
    """Bad ids, bad JSON, wrong types, unknown routes: clear 4xx errors, no crash."""
    base = f"{farm.endpoint_url}/2023-10-12/farms"
    async with httpx.AsyncClient() as http:
        bad_id = await http.get(f"{base}/farm-1/queues/{farm.queue_id}/jobs")
        bad_json = await http.post(
            f"{base}/{farm.farm_id}/queues/{farm.queue_id}/jobs", content=b"{nope"
        )
        wrong_type = await http.post(
            f"{base}/{farm.farm_id}/queues/{farm.queue_id}/jobs", json={"priority": "high"}
        )
        unknown = await http.get(f"{farm.endpoint_url}/2023-10-12/nothing-here")
        no_budget = await http.get(f"{base}/{farm.farm_id}/budgets/budget-{'0' * 32}")
        logs_unknown = await http.post(
            farm.endpoint_url, headers={"X-Amz-Target": "Logs_20140328.Nope"}, content=b"{}"
        )
        still_alive = await http.get(f"{base}/{farm.farm_id}")
    assert bad_id.status_code == 400
    assert bad_id.headers["x-amzn-errortype"] == "ValidationException"
    body = bad_id.json()
    assert body["reason"] == "FIELD_VALIDATION_FAILED"
    assert body["fieldList"][0]["name"] == "farmId"
    assert "Value 'farm-1' at 'farmId' failed to satisfy constraint" in body["message"]
    assert bad_json.status_code == 400 and bad_json.json()["reason"] == "CANNOT_PARSE"
    assert wrong_type.status_code == 400
    assert wrong_type.json()["reason"] == "CANNOT_PARSE"
    assert unknown.status_code == 404
    assert unknown.headers["x-amzn-errortype"] == "UnknownOperationException"
    # Every operation has a handler now (test_operations.py walks the model): an unknown
    # budget is the service's 404, not a 501.
    assert no_budget.status_code == 404
    assert no_budget.headers["x-amzn-errortype"] == "ResourceNotFoundException"
    assert (
        logs_unknown.status_code == 400
        and logs_unknown.json()["__type"] == "UnknownOperationException"
    )
    assert still_alive.status_code == 200


async def test_a_failing_handler_is_an_internal_error(
    farm: MockFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in a handler is a 500 InternalServerErrorException and is logged."""

    def broken(params: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug")

    monkeypatch.setitem(farm.farm.handlers, "GetFarm", broken)
    deadline = farm.boto3_client("deadline")
    error = await in_thread(client_error, lambda: deadline.get_farm(farmId=farm.farm_id))
    assert error["Error"]["Code"] == "InternalServerErrorException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert farm.calls.to("GetFarm")[-1].status == 500


async def test_throttling_and_server_errors_are_injected_on_demand(farm: MockFarm) -> None:
    """Throttling carries retryAfterSeconds; a 500 rate; changeable while running."""
    deadline = farm.boto3_client("deadline")
    farm.set_faults(
        FaultConfig(
            operations={
                "GetFarm": OperationFaults(throttle_rate=1.0, retry_after_seconds=7),
                "ListFarms": OperationFaults(error_rate=1.0),
            }
        )
    )
    throttled = await in_thread(client_error, lambda: deadline.get_farm(farmId=farm.farm_id))
    failed = await in_thread(client_error, deadline.list_farms)
    assert throttled["Error"]["Code"] == "ThrottlingException"
    assert throttled["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert throttled["retryAfterSeconds"] == 7
    assert failed["Error"]["Code"] == "InternalServerErrorException"
    farm.set_faults(FaultConfig())
    assert (await in_thread(deadline.get_farm, farmId=farm.farm_id))["farmId"] == farm.farm_id
    assert farm.statistics().faults_injected == {"throttle": 1, "error": 1}


async def test_conflicts_and_the_offline_switch(farm: MockFarm) -> None:
    """Injected conflicts carry their reason; an offline worker gets STATUS_CONFLICT."""
    deadline = farm.boto3_client("deadline")
    worker = ScriptedWorker(deadline, farm.farm_id, farm.fleet_id)
    await in_thread(worker.start)
    farm.set_faults(FaultConfig().with_operation("UpdateWorkerSchedule", conflict_rate=1.0))
    concurrent = await in_thread(client_error, worker.sync)
    farm.set_faults(FaultConfig().with_offline(worker.worker_id))
    offline = await in_thread(client_error, worker.sync)
    assert concurrent["reason"] == "CONCURRENT_MODIFICATION"
    assert offline["reason"] == "STATUS_CONFLICT"
    assert offline["resourceId"] == worker.worker_id
    farm.set_faults(FaultConfig())
    await in_thread(worker.sync)


async def test_latency_is_added(farm: MockFarm) -> None:
    """An operation's latency fault delays its answer by at least that long."""
    deadline = farm.boto3_client("deadline")
    farm.set_faults(FaultConfig().with_operation("GetFarm", latency=0.3))
    started = trio.current_time()
    await in_thread(deadline.get_farm, farmId=farm.farm_id)
    assert trio.current_time() - started >= 0.3


async def test_dropped_connections_and_idempotent_retries(farm: MockFarm) -> None:
    """A dropped answer is a transport error; retrying with the client token does not duplicate."""
    from botocore.config import Config

    deadline = farm.boto3_client("deadline", config=Config(read_timeout=0.5))
    farm.set_faults(FaultConfig().with_operation("CreateJob", drop_after_rate=1.0))
    request = {
        "farmId": farm.farm_id,
        "queueId": farm.queue_id,
        "template": dumps(job_template()),
        "templateType": "JSON",
        "priority": 50,
        "clientToken": "submit-once",
    }
    with pytest.raises(botocore.exceptions.BotoCoreError):
        await in_thread(deadline.create_job, **request)
    assert len(farm.state.jobs) == 1
    farm.set_faults(FaultConfig().with_operation("ListFarms", drop_rate=1.0))
    with pytest.raises(botocore.exceptions.BotoCoreError):
        await in_thread(deadline.list_farms)
    farm.set_faults(FaultConfig())
    job_id = (await in_thread(deadline.create_job, **request))["jobId"]
    assert list(farm.state.jobs) == [job_id]
    dropped = [c.operation for c in farm.calls if c.dropped]
    assert dropped == ["CreateJob", "ListFarms"]


async def test_faults_are_repeatable_with_a_seed() -> None:
    """The same seed gives the same sequence of faults for an operation."""

    async def outcomes() -> list[int]:
        faults = FaultConfig(seed=42).with_operation("GetFarm", error_rate=0.5)
        async with open_mock_farm(faults=faults) as farm, httpx.AsyncClient() as http:
            return [
                (await http.get(f"{farm.endpoint_url}/2023-10-12/farms/{farm.farm_id}")).status_code
                for _ in range(20)
            ]

    first, second = await outcomes(), await outcomes()
    assert first == second
    assert set(first) == {200, 500}


async def test_every_call_is_recorded(farm: MockFarm) -> None:
    """The call record has operation, parsed input, status and error per call."""
    deadline = farm.boto3_client("deadline")
    await in_thread(deadline.get_farm, farmId=farm.farm_id)
    await in_thread(client_error, lambda: deadline.get_farm(farmId="farm-" + "1" * 32))
    first, second = farm.calls
    assert (first.operation, first.status, first.error) == ("GetFarm", 200, None)
    assert first.input == {"farmId": farm.farm_id}
    assert (second.status, second.error) == (404, "ResourceNotFoundException")
    assert first.timestamp <= second.timestamp and first.time <= second.time


async def test_host_prefix_injection_can_be_disabled_by_environment(
    farm: MockFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain boto3 client works with AWS_DISABLE_HOST_PREFIX_INJECTION=true, as agents use it."""
    import boto3

    for name, value in farm.environ().items():
        monkeypatch.setenv(name, value)
    client = boto3.session.Session().client("deadline")
    created = await in_thread(client.create_worker, farmId=farm.farm_id, fleetId=farm.fleet_id)
    assert created["workerId"] in farm.state.workers


async def test_put_log_events_enforces_the_service_limits(farm: MockFarm) -> None:
    """Order, missing streams, duplicates and too-new events behave as CloudWatch."""
    logs = farm.boto3_client("logs")
    now = int(datetime.now(UTC).timestamp() * 1000)

    def scenario() -> dict[str, Any]:
        logs.create_log_group(logGroupName="/test")
        logs.create_log_stream(logGroupName="/test", logStreamName="s")
        duplicate = client_error(lambda: logs.create_log_group(logGroupName="/test"))
        missing = client_error(
            lambda: logs.put_log_events(
                logGroupName="/test",
                logStreamName="nope",
                logEvents=[{"timestamp": now, "message": "x"}],
            )
        )
        unordered = client_error(
            lambda: logs.put_log_events(
                logGroupName="/test",
                logStreamName="s",
                logEvents=[
                    {"timestamp": now, "message": "b"},
                    {"timestamp": now - 1, "message": "a"},
                ],
            )
        )
        too_new = int((datetime.now(UTC) + timedelta(hours=3)).timestamp() * 1000)
        partial_ = logs.put_log_events(
            logGroupName="/test",
            logStreamName="s",
            logEvents=[
                {"timestamp": now, "message": "kept"},
                {"timestamp": too_new, "message": "late"},
            ],
        )
        too_big = client_error(
            lambda: logs.put_log_events(
                logGroupName="/test",
                logStreamName="s",
                logEvents=[{"timestamp": now, "message": "x" * 300_000}],
            )
        )
        return locals()

    result = await in_thread(scenario)
    assert result["duplicate"]["Error"]["Code"] == "ResourceAlreadyExistsException"
    assert result["missing"]["Error"]["Code"] == "ResourceNotFoundException"
    assert result["unordered"]["Error"]["Code"] == "InvalidParameterException"
    assert result["partial_"]["rejectedLogEventsInfo"] == {"tooNewLogEventStartIndex": 1}
    assert result["too_big"]["Error"]["Code"] == "InvalidParameterException"
    assert farm.logs.messages("/test", "s") == ["kept"]


async def test_get_log_events_pages_with_tokens(farm: MockFarm) -> None:
    """GetLogEvents pages forward and backward; the last page repeats its token."""
    stream = farm.logs.ensure_stream("/paging", "s")
    logs = farm.boto3_client("logs")
    now = int(datetime.now(UTC).timestamp() * 1000)

    def scenario() -> list[list[str]]:
        logs.put_log_events(
            logGroupName="/paging",
            logStreamName="s",
            logEvents=[{"timestamp": now + i, "message": str(i)} for i in range(5)],
        )
        pages = []
        token = None
        for _ in range(5):
            params: dict[str, Any] = {
                "logGroupName": "/paging",
                "logStreamName": "s",
                "limit": 2,
                "startFromHead": True,
            }
            if token:
                params["nextToken"] = token
            page = logs.get_log_events(**params)
            pages.append([e["message"] for e in page["events"]])
            if page["nextForwardToken"] == token:
                break
            token = page["nextForwardToken"]
        latest = logs.get_log_events(logGroupName="/paging", logStreamName="s", limit=2)
        pages.append([e["message"] for e in latest["events"]])
        return pages

    pages = await in_thread(scenario)
    assert pages == [["0", "1"], ["2", "3"], ["4"], [], ["3", "4"]]
    assert len(stream.events) == 5
