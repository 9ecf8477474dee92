"""Every operation of the Deadline model, driven by boto3 over loopback.

The first test walks botocore's service model and lists any operation the farm
has no handler for. The others give the administrative families, search,
batches, paginators and CloudWatch reads their service semantics.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import botocore.exceptions
import botocore.session
import httpx
import pytest
import trio

from agent.mockfarm import FarmConfig, MockFarm, open_mock_farm
from tests.mockfarm_helpers import ScriptedWorker, completed, job_template
from tests.mockfarm_population import PRINCIPAL, build_full_farm

T = TypeVar("T")


@pytest.fixture
async def farm() -> AsyncIterator[MockFarm]:
    config = FarmConfig(update_interval_seconds=1, max_sessions_per_worker=2, pipeline_depth=1)
    async with open_mock_farm(config=config) as farm:
        yield farm


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


def error_of(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call()
    return dict(caught.value.response["Error"])


def test_every_operation_of_the_model_has_a_handler() -> None:
    """No client meets a 501: the farm handles the whole Deadline model."""
    from agent.mockfarm._farm import Farm

    model = botocore.session.get_session().get_service_model("deadline")
    handlers = Farm().handlers
    missing = [name for name in model.operation_names if name not in handlers]
    assert missing == [], f"operations without a handler: {', '.join(missing)}"
    assert len(model.operation_names) >= 123


async def test_an_operation_without_handler_is_501(farm: MockFarm) -> None:
    """The 501 path stays: a handler taken away answers NotImplementedException."""
    farm.farm.handlers.pop("GetBudget")
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{farm.endpoint_url}/2023-10-12/farms/{farm.farm_id}/budgets/budget-{'0' * 32}"
        )
    assert response.status_code == 501
    assert response.headers["x-amzn-errortype"] == "NotImplementedException"


def _paginator_calls(ids: dict[str, Any]) -> dict[str, dict[str, Any]]:
    farm, queue, fleet = ids["farm"], ids["queue"], ids["fleet"]
    job, step = ids["jobs"][0], ids["steps"][0]
    return {
        "ListFarms": {},
        "ListFleets": {"farmId": farm},
        "ListQueues": {"farmId": farm},
        "ListJobs": {"farmId": farm, "queueId": queue},
        "ListQueueEnvironments": {"farmId": farm, "queueId": queue},
        "ListSteps": {"farmId": farm, "queueId": queue, "jobId": job},
        "ListTasks": {"farmId": farm, "queueId": queue, "jobId": job, "stepId": step},
        # The higher-priority job got three of the four sessions.
        "ListSessions": {"farmId": farm, "queueId": queue, "jobId": ids["jobs"][1]},
        "ListSessionActions": {"farmId": farm, "queueId": queue, "jobId": job},
        "ListWorkers": {"farmId": farm, "fleetId": fleet},
        "ListSessionsForWorker": {"farmId": farm, "fleetId": fleet, "workerId": ids["workers"][0]},
        "ListStepConsumers": {"farmId": farm, "queueId": queue, "jobId": job, "stepId": step},
        "ListStepDependencies": {
            "farmId": farm,
            "queueId": queue,
            "jobId": job,
            "stepId": ids["steps"][1],
        },
        "ListJobParameterDefinitions": {"farmId": farm, "queueId": queue, "jobId": job},
        "ListBudgets": {"farmId": farm},
        "ListLimits": {"farmId": farm},
        "ListStorageProfiles": {"farmId": farm},
        "ListStorageProfilesForQueue": {"farmId": farm, "queueId": queue},
        "ListQueueFleetAssociations": {"farmId": farm},
        "ListQueueLimitAssociations": {"farmId": farm},
        "ListFarmMembers": {"farmId": farm},
        "ListFleetMembers": {"farmId": farm, "fleetId": fleet},
        "ListQueueMembers": {"farmId": farm, "queueId": queue},
        "ListJobMembers": {"farmId": farm, "queueId": queue, "jobId": job},
        "ListMemberships": {"principalId": PRINCIPAL},
        "ListLicenseEndpoints": {},
        "ListAvailableMeteredProducts": {},
        "ListMeteredProducts": {"licenseEndpointId": ids["endpoint"]},
        "ListMonitors": {},
        "ListVolumes": {"farmId": farm, "fleetId": fleet},
        "GetSessionsStatisticsAggregation": {"farmId": farm, "aggregationId": ids["aggregation"]},
    }


async def test_boto3_paginators_walk_every_list_operation(farm: MockFarm) -> None:
    """Each paginator, one item a page, yields what one large page holds."""
    deadline = farm.boto3_client("deadline")
    session = botocore.session.get_session()
    paginated = session.get_paginator_model("deadline")._paginator_config

    def scenario() -> dict[str, tuple[int, int]]:
        ids = build_full_farm(farm)
        calls = _paginator_calls(ids)
        assert set(calls) == set(paginated), set(paginated) ^ set(calls)
        seen = {}
        for operation, params in calls.items():
            config = paginated[operation]
            key = config["result_key"]
            method = botocore.xform_name(operation)
            whole = getattr(deadline, method)(**params, maxResults=100)
            assert "nextToken" not in whole, operation
            pages = list(
                deadline.get_paginator(method).paginate(**params, PaginationConfig={"PageSize": 1})
            )
            items = [item for page in pages for item in page[key]]
            assert items == whole[key], operation
            seen[operation] = (len(items), len(pages))
        return seen

    seen = await in_thread(scenario)
    # Everything but the volumes (none on customer-managed fleets) has two or more.
    few = {op: n for op, (n, _) in seen.items() if n < 2}
    assert few == {"ListVolumes": 0, "ListStepDependencies": 1}, few
    assert all(pages >= items for items, pages in seen.values())


async def test_search_filters_sorts_and_offsets(farm: MockFarm) -> None:
    deadline = farm.boto3_client("deadline")

    def scenario() -> None:
        ids = build_full_farm(farm)
        base = {"farmId": ids["farm"], "queueIds": [ids["queue"]]}
        everything = deadline.search_jobs(**base, itemOffset=0)
        assert everything["totalResults"] == 2 and "nextItemOffset" not in everything
        paged: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = deadline.search_jobs(**base, itemOffset=offset, pageSize=1)
            paged += page["jobs"]
            offset = page.get("nextItemOffset")
        assert sorted(j["jobId"] for j in paged) == sorted(ids["jobs"])
        newest = deadline.search_jobs(
            **base,
            itemOffset=0,
            sortExpressions=[{"fieldSort": {"name": "PRIORITY", "sortOrder": "DESCENDING"}}],
        )["jobs"]
        assert [j["name"] for j in newest] == ["job 1", "job 0"]
        named = deadline.search_jobs(
            **base,
            itemOffset=0,
            filterExpressions={
                "filters": [
                    {"searchTermFilter": {"searchTerm": "JOB 1"}},
                    {
                        "groupFilter": {
                            "filters": [
                                {
                                    "stringFilter": {
                                        "name": "TASK_RUN_STATUS",
                                        "operator": "NOT_EQUAL",
                                        "value": "SUCCEEDED",
                                    }
                                },
                                {
                                    "dateTimeFilter": {
                                        "name": "CREATED_AT",
                                        "operator": "GREATER_THAN",
                                        "dateTime": datetime.now(UTC) - timedelta(hours=1),
                                    }
                                },
                            ],
                            "operator": "AND",
                        }
                    },
                ],
                "operator": "AND",
            },
        )
        assert [j["name"] for j in named["jobs"]] == ["job 1"]
        assert named["jobs"][0]["jobParameters"]["Quality"] == {"int": "5"}
        by_parameter = deadline.search_jobs(
            **base,
            itemOffset=0,
            filterExpressions={
                "filters": [
                    {"parameterFilter": {"name": "Quality", "operator": "LESS_THAN", "value": "6"}}
                ],
                "operator": "AND",
            },
        )
        assert by_parameter["totalResults"] == 2
        steps = deadline.search_steps(**base, itemOffset=0, jobId=ids["jobs"][0])
        assert [s["name"] for s in steps["steps"]] == ["Render", "Encode", "Upload"]
        tasks = deadline.search_tasks(
            **base,
            itemOffset=0,
            filterExpressions={
                "filters": [
                    {
                        "stringListFilter": {
                            "name": "TASK_RUN_STATUS",
                            "operator": "ANY_EQUALS",
                            "values": ["PENDING"],
                        }
                    }
                ],
                "operator": "OR",
            },
        )
        assert tasks["totalResults"] == 4  # Encode and Upload of both jobs wait on Render
        workers = deadline.search_workers(farmId=ids["farm"], fleetIds=[ids["fleet"]], itemOffset=0)
        assert sorted(w["workerId"] for w in workers["workers"]) == sorted(ids["workers"])
        bad = error_of(
            lambda: deadline.search_jobs(
                **base,
                itemOffset=0,
                sortExpressions=[{"fieldSort": {"name": "NO_SUCH", "sortOrder": "ASCENDING"}}],
            )
        )
        assert bad["Code"] == "ValidationException" and "NO_SUCH" in bad["Message"]

    await in_thread(scenario)


async def test_batches_answer_items_and_errors(farm: MockFarm) -> None:
    deadline = farm.boto3_client("deadline")

    def scenario() -> None:
        ids = build_full_farm(farm)
        where = {"farmId": ids["farm"], "queueId": ids["queue"]}
        missing = "job-" + "0" * 32
        got = deadline.batch_get_job(
            identifiers=[{**where, "jobId": ids["jobs"][0]}, {**where, "jobId": missing}]
        )
        assert [j["jobId"] for j in got["jobs"]] == [ids["jobs"][0]]
        assert got["errors"][0]["jobId"] == missing
        assert got["errors"][0]["code"] == "ResourceNotFoundException"
        step = deadline.batch_get_step(
            identifiers=[{**where, "jobId": ids["jobs"][0], "stepId": ids["steps"][0]}]
        )
        assert step["steps"][0]["name"] == "Render" and step["errors"] == []
        workers = deadline.batch_get_worker(
            identifiers=[
                {"farmId": ids["farm"], "fleetId": ids["fleet"], "workerId": w}
                for w in ids["workers"]
            ]
        )
        assert len(workers["workers"]) == 2
        updated = deadline.batch_update_job(
            jobs=[
                {**where, "jobId": ids["jobs"][1], "priority": 99},
                {**where, "jobId": missing, "priority": 1},
            ]
        )
        assert [e["jobId"] for e in updated["errors"]] == [missing]
        assert deadline.get_job(**where, jobId=ids["jobs"][1])["priority"] == 99

    await in_thread(scenario)


async def test_administrative_records_have_service_semantics(farm: MockFarm) -> None:
    deadline = farm.boto3_client("deadline")

    def scenario() -> None:
        ids = build_full_farm(farm)
        farm_id, queue_id = ids["farm"], ids["queue"]
        limit = deadline.get_limit(farmId=farm_id, limitId=ids["limits"][0])
        assert limit["currentCount"] == 0 and limit["maxCount"] == 2
        duplicate = error_of(
            lambda: deadline.create_limit(
                farmId=farm_id, displayName="x", amountRequirementName="amount.limit.l0", maxCount=1
            )
        )
        assert duplicate["Code"] == "ConflictException"
        profile = deadline.list_storage_profiles_for_queue(farmId=farm_id, queueId=queue_id)[
            "storageProfiles"
        ][0]
        for_queue = deadline.get_storage_profile_for_queue(
            farmId=farm_id, queueId=queue_id, storageProfileId=profile["storageProfileId"]
        )
        assert for_queue["fileSystemLocations"][0]["path"] == "/mnt/projects"
        other = ids["queues"][0]
        assert (
            error_of(
                lambda: deadline.get_storage_profile_for_queue(
                    farmId=farm_id, queueId=other, storageProfileId=profile["storageProfileId"]
                )
            )["Code"]
            == "ResourceNotFoundException"
        )
        farm_arn = f"arn:aws:deadline:us-west-2:123456789012:farm/{farm_id}"
        deadline.tag_resource(resourceArn=farm_arn, tags={"team": "fx", "show": "x"})
        deadline.untag_resource(resourceArn=farm_arn, tagKeys=["show"])
        assert deadline.list_tags_for_resource(resourceArn=farm_arn)["tags"] == {"team": "fx"}
        tagged = deadline.create_queue(
            farmId=farm_id,
            displayName="tagged",
            tags={"cost": "42"},
            allowedStorageProfileIds=[profile["storageProfileId"]],
        )["queueId"]
        queue_arn = f"{farm_arn}/queue/{tagged}"
        assert deadline.list_tags_for_resource(resourceArn=queue_arn)["tags"] == {"cost": "42"}
        shown = deadline.get_queue(farmId=farm_id, queueId=tagged)
        assert shown["allowedStorageProfileIds"] == [profile["storageProfileId"]]
        fleet = ids["fleets"][0]
        association = deadline.get_queue_fleet_association(
            farmId=farm_id, queueId=queue_id, fleetId=fleet
        )
        assert association["status"] == "ACTIVE"
        in_use = error_of(
            lambda: deadline.delete_queue_fleet_association(
                farmId=farm_id, queueId=queue_id, fleetId=fleet
            )
        )
        assert in_use["Code"] == "ConflictException"
        deadline.update_queue_fleet_association(
            farmId=farm_id,
            queueId=queue_id,
            fleetId=fleet,
            status="STOP_SCHEDULING_AND_COMPLETE_TASKS",
        )
        stopped = deadline.get_queue_fleet_association(
            farmId=farm_id, queueId=queue_id, fleetId=fleet
        )
        assert stopped["status"] == "STOPPED"  # no session of the queue on that fleet
        deadline.delete_queue_fleet_association(farmId=farm_id, queueId=queue_id, fleetId=fleet)
        budget = deadline.list_budgets(farmId=farm_id)["budgets"][0]
        assert budget["usages"]["approximateDollarUsage"] >= 0
        deadline.update_monitor_settings(
            monitorId=deadline.list_monitors()["monitors"][0]["monitorId"],
            settings={"theme": "dark"},
        )
        credentials = deadline.assume_queue_role_for_user(farmId=farm_id, queueId=queue_id)
        assert credentials["credentials"]["accessKeyId"].startswith("ASIA")
        definitions = deadline.list_job_parameter_definitions(
            farmId=farm_id, queueId=queue_id, jobId=ids["jobs"][0]
        )["jobParameterDefinitions"]
        assert [d["name"] for d in definitions] == ["Frames", "Quality"]
        statistics = deadline.get_sessions_statistics_aggregation(
            farmId=farm_id, aggregationId=ids["aggregation"]
        )
        assert statistics["status"] == "COMPLETED"
        assert {s["jobId"] for s in statistics["statistics"]} <= set(ids["jobs"])
        not_empty = error_of(lambda: deadline.delete_farm(farmId=farm_id))
        assert not_empty["Code"] == "ConflictException"

    await in_thread(scenario)


async def test_limits_cap_running_tasks(farm: MockFarm) -> None:
    """A limit of 1 lets one task that needs its amount run at a time, in associated queues."""
    deadline = farm.boto3_client("deadline")

    def scenario() -> tuple[int, int, int]:
        farm_id, queue_id = farm.farm_id, farm.queue_id
        limit = deadline.create_limit(
            farmId=farm_id, displayName="licenses", amountRequirementName="amount.limit.nuke",
            maxCount=1,
        )["limitId"]  # fmt: skip
        template = job_template(frames="1-3")
        template["steps"][0]["hostRequirements"] = {
            "amounts": [{"name": "amount.limit.nuke", "min": 1}]
        }
        deadline.create_job(
            farmId=farm_id, queueId=queue_id, template=json.dumps(template),
            templateType="JSON", priority=50,
        )  # fmt: skip
        workers = [ScriptedWorker(deadline, farm_id, farm.fleet_id) for _ in range(2)]
        for worker in workers:
            worker.start()
        before = sum(len(w.sync()["assignedSessions"]) for w in workers)
        deadline.create_queue_limit_association(farmId=farm_id, queueId=queue_id, limitId=limit)
        during = sum(len(w.sync()["assignedSessions"]) for w in workers)
        count = deadline.get_limit(farmId=farm_id, limitId=limit)["currentCount"]
        return before, during, count

    before, during, count = await in_thread(scenario)
    assert (before, during, count) == (0, 1, 1)


async def test_a_step_no_fleet_can_run_is_not_compatible(farm: MockFarm) -> None:
    """Host requirements beyond every fleet: NOT_COMPATIBLE, with the reason in GetJob."""
    deadline = farm.boto3_client("deadline")

    def scenario() -> tuple[dict[str, Any], dict[str, Any], str]:
        template = job_template(frames="1-2")
        template["steps"][0]["hostRequirements"] = {
            "attributes": [{"name": "attr.worker.os.family", "anyOf": ["windows"]}]
        }
        job_id = deadline.create_job(
            farmId=farm.farm_id, queueId=farm.queue_id, template=json.dumps(template),
            templateType="JSON", priority=50,
        )["jobId"]  # fmt: skip
        job = deadline.get_job(farmId=farm.farm_id, queueId=farm.queue_id, jobId=job_id)
        deadline.create_fleet(
            farmId=farm.farm_id,
            displayName="windows",
            roleArn="arn:aws:iam::123456789012:role/Fleet",
            maxWorkerCount=1,
            configuration={
                "customerManaged": {
                    "mode": "NO_SCALING",
                    "workerCapabilities": {
                        "vCpuCount": {"min": 1},
                        "memoryMiB": {"min": 1024},
                        "osFamily": "WINDOWS",
                        "cpuArchitectureType": "x86_64",
                    },
                }
            },
        )
        # The queue is served by the default fleet only: still not compatible.
        still = deadline.get_job(farmId=farm.farm_id, queueId=farm.queue_id, jobId=job_id)
        fleets = deadline.list_fleets(farmId=farm.farm_id)["fleets"]
        windows = next(f["fleetId"] for f in fleets if f["displayName"] == "windows")
        deadline.create_queue_fleet_association(
            farmId=farm.farm_id, queueId=farm.queue_id, fleetId=windows
        )
        after = deadline.get_job(farmId=farm.farm_id, queueId=farm.queue_id, jobId=job_id)
        return job, still, after["taskRunStatus"]

    job, still, after = await in_thread(scenario)
    assert job["taskRunStatus"] == "NOT_COMPATIBLE"
    assert job["taskRunStatusCounts"]["NOT_COMPATIBLE"] == 2
    assert "attr.worker.os.family" in job["lifecycleStatusMessage"]
    assert farm.fleet_id in job["lifecycleStatusMessage"]
    assert still["taskRunStatus"] == "NOT_COMPATIBLE"
    assert after == "READY"


async def test_cloudwatch_reads_both_directions_and_filters(farm: MockFarm) -> None:
    logs = farm.boto3_client("logs")
    group = f"/aws/deadline/{farm.farm_id}/{farm.queue_id}"

    def scenario() -> None:
        logs.create_log_group(logGroupName=group)
        base = int(datetime.now(UTC).timestamp() * 1000) - 10_000
        for stream, offset in (("a", 0), ("b", 1)):
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
            logs.put_log_events(
                logGroupName=group,
                logStreamName=stream,
                logEvents=[
                    {"timestamp": base + 2 * i + offset, "message": f"{stream} line {i} {tag}"}
                    for i, tag in enumerate(["INFO", "ERROR", "INFO", "ERROR boom", "INFO"])
                ],
            )
        # Backwards from the end, two at a time, then forwards again.
        page = logs.get_log_events(
            logGroupName=group, logStreamName="a", limit=2, startFromHead=False
        )
        assert [e["message"] for e in page["events"]] == ["a line 3 ERROR boom", "a line 4 INFO"]
        back = logs.get_log_events(
            logGroupName=group, logStreamName="a", limit=2, nextToken=page["nextBackwardToken"]
        )
        assert [e["message"] for e in back["events"]] == ["a line 1 ERROR", "a line 2 INFO"]
        forward = logs.get_log_events(
            logGroupName=group, logStreamName="a", limit=2, nextToken=back["nextForwardToken"]
        )
        assert forward["events"] == page["events"]
        # endTime excludes its own millisecond, as the service does.
        bounded = logs.get_log_events(
            logGroupName=group, logStreamName="a", startTime=base, endTime=base + 4,
            startFromHead=True,
        )  # fmt: skip
        assert len(bounded["events"]) == 2
        errors = logs.filter_log_events(logGroupName=group, filterPattern="ERROR -boom")
        assert [(e["logStreamName"], e["message"]) for e in errors["events"]] == [
            ("a", "a line 1 ERROR"),
            ("b", "b line 1 ERROR"),
        ]
        paged_messages: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"nextToken": token} if token else {}
            result = logs.filter_log_events(
                logGroupName=group, logStreamNames=["b"], limit=2, endTime=base + 5, **kwargs
            )
            paged_messages += [e["message"] for e in result["events"]]
            token = result.get("nextToken")
            if not token:
                break
        assert paged_messages == [
            "b line 0 INFO",
            "b line 1 ERROR",
            "b line 2 INFO",
        ]  # endTime inclusive
        phrase = logs.filter_log_events(logGroupName=group, filterPattern='"ERROR boom"')
        assert len(phrase["events"]) == 2
        invalid = error_of(
            lambda: logs.filter_log_events(logGroupName=group, filterPattern="{ $.x = 1 }")
        )
        assert invalid["Code"] == "InvalidParameterException"

    await in_thread(scenario)


async def test_a_spent_budget_stops_its_queue(farm: MockFarm) -> None:
    """Worker time counts against the queue's budget; at the threshold scheduling stops."""
    deadline = farm.boto3_client("deadline")

    def scenario() -> tuple[int, dict[str, Any], dict[str, Any]]:
        where = {"farmId": farm.farm_id, "queueId": farm.queue_id}
        budget_id = deadline.create_budget(
            farmId=farm.farm_id,
            displayName="tight",
            usageTrackingResource={"queueId": farm.queue_id},
            approximateDollarLimit=1.0,
            actions=[{"type": "STOP_SCHEDULING_AND_COMPLETE_TASKS", "thresholdPercentage": 50}],
            schedule={
                "fixed": {
                    "startTime": datetime.now(UTC) - timedelta(days=1),
                    "endTime": datetime.now(UTC) + timedelta(days=1),
                }
            },
        )["budgetId"]

        def submit(name: str) -> None:
            template = job_template(frames="1")
            template["name"] = name
            deadline.create_job(
                **where, template=json.dumps(template), templateType="JSON", priority=50
            )

        submit("first")
        worker = ScriptedWorker(deadline, farm.farm_id, farm.fleet_id)
        worker.start()
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        # The first job's task "ran" for an hour: $1 at $1 an hour, over the 50% threshold.
        worker.run(lambda _action: completed(startedAt=an_hour_ago))
        submit("second")
        sessions = len(worker.sync()["assignedSessions"])
        return (
            sessions,
            deadline.get_budget(farmId=farm.farm_id, budgetId=budget_id),
            deadline.get_queue(**where),
        )

    sessions, budget, queue = await in_thread(scenario)
    assert budget["usages"]["approximateDollarUsage"] >= 0.99
    assert budget["queueStoppedAt"] is not None
    assert (queue["status"], queue["blockedReason"]) == (
        "SCHEDULING_BLOCKED",
        "BUDGET_THRESHOLD_REACHED",
    )
    assert sessions == 0
    statuses = {j.name: j.status for j in farm.state.jobs.values()}
    assert statuses == {"first": "SUCCEEDED", "second": "READY"}
