"""A mock farm with at least two of everything: what list, search and store tests read."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from agent.mockfarm import MockFarm
from tests.mockfarm_helpers import ScriptedWorker, completed, job_template

IDENTITY_STORE = "d-0123456789"
PRINCIPAL = "01234567-89ab-cdef-0123-456789abcdef"


def three_step_job(name: str) -> str:
    template = job_template(frames="1-3")
    template["name"] = name
    template["parameterDefinitions"].append({"name": "Quality", "type": "INT", "default": 5})
    render = template["steps"][0]
    for follower in ("Encode", "Upload"):
        template["steps"].append(
            {
                "name": follower,
                "dependencies": [{"dependsOn": render["name"]}],
                "script": {"actions": {"onRun": {"command": "true"}}},
            }
        )
    return json.dumps(template)


def build_full_farm(farm: MockFarm) -> dict[str, Any]:
    """At least two of everything a list operation returns."""
    deadline = farm.boto3_client("deadline")
    farm_id, queue_id, fleet_id = farm.farm_id, farm.queue_id, farm.fleet_id
    ids: dict[str, Any] = {"farm": farm_id, "queue": queue_id, "fleet": fleet_id}
    for n in range(2):
        deadline.create_farm(displayName=f"extra farm {n}")
        fleet = deadline.create_fleet(
            farmId=farm_id,
            displayName=f"fleet {n}",
            roleArn="arn:aws:iam::123456789012:role/Fleet",
            maxWorkerCount=5,
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
        ids.setdefault("fleets", []).append(fleet)
        queue = deadline.create_queue(farmId=farm_id, displayName=f"queue {n}")["queueId"]
        deadline.create_queue_fleet_association(farmId=farm_id, queueId=queue_id, fleetId=fleet)
        ids.setdefault("queues", []).append(queue)
        deadline.create_queue_environment(
            farmId=farm_id,
            queueId=queue_id,
            priority=n,
            templateType="YAML",
            template=yaml.safe_dump(
                {
                    "specificationVersion": "environment-2023-09",
                    "environment": {"name": f"Env{n}", "variables": {"N": str(n)}},
                }
            ),
        )
        limit = deadline.create_limit(
            farmId=farm_id,
            displayName=f"limit {n}",
            amountRequirementName=f"amount.limit.l{n}",
            maxCount=2,
        )["limitId"]
        deadline.create_queue_limit_association(farmId=farm_id, queueId=queue_id, limitId=limit)
        ids.setdefault("limits", []).append(limit)
        deadline.create_budget(
            farmId=farm_id,
            displayName=f"budget {n}",
            usageTrackingResource={"queueId": queue_id},
            approximateDollarLimit=1000.0,
            actions=[{"type": "STOP_SCHEDULING_AND_COMPLETE_TASKS", "thresholdPercentage": 100}],
            schedule={
                "fixed": {
                    "startTime": datetime.now(UTC) - timedelta(days=1),
                    "endTime": datetime.now(UTC) + timedelta(days=30),
                }
            },
        )
        profile = deadline.create_storage_profile(
            farmId=farm_id,
            displayName=f"profile {n}",
            osFamily="LINUX",
            fileSystemLocations=[{"name": "Projects", "path": "/mnt/projects", "type": "SHARED"}],
        )["storageProfileId"]
        deadline.update_queue(
            farmId=farm_id, queueId=queue_id, allowedStorageProfileIdsToAdd=[profile]
        )
        endpoint = deadline.create_license_endpoint(
            vpcId="vpc-1", subnetIds=["subnet-1"], securityGroupIds=["sg-1"]
        )["licenseEndpointId"]
        ids["endpoint"] = endpoint
        deadline.create_monitor(
            displayName=f"monitor {n}",
            identityCenterInstanceArn="arn:aws:sso:::instance/ssoins-0123456789abcdef",
            subdomain=f"studio{n}",
            roleArn="arn:aws:iam::123456789012:role/Monitor",
        )
    for product in ("maya-2025", "nuke-15"):
        deadline.put_metered_product(licenseEndpointId=ids["endpoint"], productId=product)
    jobs = [
        deadline.create_job(
            farmId=farm_id,
            queueId=queue_id,
            template=three_step_job(f"job {n}"),
            templateType="JSON",
            priority=50 + n,
        )["jobId"]
        for n in range(2)
    ]
    ids["jobs"] = jobs
    member = {"principalId": PRINCIPAL, "principalType": "USER", "identityStoreId": IDENTITY_STORE}
    for principal in (PRINCIPAL, PRINCIPAL.replace("0", "1")):
        common = {**member, "principalId": principal, "membershipLevel": "VIEWER"}
        deadline.associate_member_to_farm(farmId=farm_id, **common)
        deadline.associate_member_to_fleet(farmId=farm_id, fleetId=fleet_id, **common)
        deadline.associate_member_to_queue(farmId=farm_id, queueId=queue_id, **common)
        deadline.associate_member_to_job(farmId=farm_id, queueId=queue_id, jobId=jobs[0], **common)
    # Two workers, each with two sessions (the farm allows two at a time).
    workers = []
    for _ in range(2):
        worker = ScriptedWorker(deadline, farm_id, fleet_id)
        worker.start()
        response = worker.sync()
        assert len(response["assignedSessions"]) == 2
        first = next(iter(response["assignedSessions"].values()))
        worker.sync({first["sessionActions"][0]["sessionActionId"]: completed()})
        workers.append(worker.worker_id)
    ids["workers"] = workers
    job = farm.job(jobs[0])
    ids["steps"] = [s.step_id for s in job.steps]
    ids["aggregation"] = deadline.start_sessions_statistics_aggregation(
        farmId=farm_id,
        resourceIds={"queueIds": [queue_id]},
        startTime=datetime.now(UTC) - timedelta(hours=1),
        endTime=datetime.now(UTC) + timedelta(hours=1),
        groupBy=["JOB_ID"],
        statistics=["SUM", "MAX"],
    )["aggregationId"]
    return ids
