"""Handlers that change what exists and how it is wired: updates and deletes of farms,
fleets and queues, queue-fleet and queue-limit associations, step dependencies,
job parameter definitions, job templates, session statistics.

Scheduling consequences go through ``_policy`` (a changed fleet or association
makes the farm look again at ``NOT_COMPATIBLE`` work).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import yaml

from ._adminrecords import QueueFleetAssociation, QueueLimitAssociation, StatisticsAggregation
from ._apierrors import conflict, not_found, validation
from ._farmbase import CREATED_BY, _paginate
from ._farmscheduler import utcnow
from ._jobs import decode_environment, queue_environment_spec
from ._policy import DOLLARS_PER_WORKER_HOUR, SchedulingPolicy
from ._records import ACTIVE_TASK_STATUSES, Job, Step, new_hex

_TERMINAL_JOB = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "SUSPENDED", "NOT_COMPATIBLE"})


class AssociationOperations(SchedulingPolicy):
    """Update/Delete of farms, fleets, queues; associations; step links; statistics."""

    # ------------------------------------------------------------ farms, fleets, queues

    def UpdateFarm(self, p: dict[str, Any]) -> Mapping[str, Any]:
        farm = self.farm(p["farmId"])
        for key, attribute in (
            ("displayName", "display_name"),
            ("description", "description"),
            ("costScaleFactor", "cost_scale_factor"),
        ):
            if key in p:
                setattr(farm, attribute, p[key])
        farm.updated_at, farm.updated_by = utcnow(), CREATED_BY
        return {}

    def DeleteFarm(self, p: dict[str, Any]) -> Mapping[str, Any]:
        farm = self.farm(p["farmId"])
        in_use = [f.fleet_id for f in self.state.fleets.values() if f.farm_id == farm.farm_id] + [
            q.queue_id for q in self.state.queues.values() if q.farm_id == farm.farm_id
        ]
        if in_use:
            raise conflict(
                "RESOURCE_IN_USE",
                "farm",
                farm.farm_id,
                f"Delete the farm's fleets and queues first: {', '.join(in_use)}.",
            )
        del self.state.farms[farm.farm_id]
        return {}

    def UpdateFleet(self, p: dict[str, Any]) -> Mapping[str, Any]:
        fleet = self.fleet(p["farmId"], p["fleetId"])
        for key, attribute in (
            ("displayName", "display_name"),
            ("description", "description"),
            ("roleArn", "role_arn"),
            ("minWorkerCount", "min_worker_count"),
            ("maxWorkerCount", "max_worker_count"),
            ("configuration", "configuration"),
            ("hostConfiguration", "host_configuration"),
        ):
            if key in p:
                setattr(fleet, attribute, p[key])
        if fleet.min_worker_count > fleet.max_worker_count:
            raise validation("minWorkerCount cannot exceed maxWorkerCount.")
        fleet.updated_at, fleet.updated_by = utcnow(), CREATED_BY
        self.check_compatibility()
        return {}

    def DeleteFleet(self, p: dict[str, Any]) -> Mapping[str, Any]:
        fleet = self.fleet(p["farmId"], p["fleetId"])
        live = [
            w.worker_id
            for w in self.state.workers.values()
            if w.fleet_id == fleet.fleet_id and w.status in ("STARTED", "STOPPING")
        ]
        if live:
            raise conflict(
                "RESOURCE_IN_USE",
                "fleet",
                fleet.fleet_id,
                f"The fleet has running workers: {', '.join(live)}.",
            )
        for worker in [w for w in self.state.workers.values() if w.fleet_id == fleet.fleet_id]:
            self.scheduler.abandon_sessions(worker, "")
            del self.state.workers[worker.worker_id]
        for key in [k for k in self.state.admin.queue_fleets if k[1] == fleet.fleet_id]:
            del self.state.admin.queue_fleets[key]
        del self.state.fleets[fleet.fleet_id]
        self.check_compatibility()
        return {}

    def UpdateQueue(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        for key, attribute in (
            ("displayName", "display_name"),
            ("description", "description"),
            ("defaultBudgetAction", "default_budget_action"),
            ("jobAttachmentSettings", "job_attachment_settings"),
            ("roleArn", "role_arn"),
            ("jobRunAsUser", "job_run_as_user"),
        ):
            if key in p:
                setattr(queue, attribute, p[key])
        for profile_id in p.get("allowedStorageProfileIdsToAdd", ()):
            self.storage_profile_exists(queue.farm_id, profile_id)
            if profile_id not in queue.allowed_storage_profile_ids:
                queue.allowed_storage_profile_ids.append(profile_id)
        for profile_id in p.get("allowedStorageProfileIdsToRemove", ()):
            if profile_id in queue.allowed_storage_profile_ids:
                queue.allowed_storage_profile_ids.remove(profile_id)
        names = queue.required_file_system_location_names
        names.extend(n for n in p.get("requiredFileSystemLocationNamesToAdd", ()) if n not in names)
        for name in p.get("requiredFileSystemLocationNamesToRemove", ()):
            if name in names:
                names.remove(name)
        queue.updated_at, queue.updated_by = utcnow(), CREATED_BY
        return {}

    def storage_profile_exists(self, farm_id: str, profile_id: str) -> None:
        found = self.state.admin.storage_profiles.get(profile_id)
        if found is None or found.farm_id != farm_id:
            raise not_found("storage-profile", profile_id)

    def DeleteQueue(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        jobs = [j for j in self.state.jobs.values() if j.queue is queue]
        active = [j.job_id for j in jobs if j.status not in _TERMINAL_JOB or j.active_sessions]
        if active:
            raise conflict(
                "RESOURCE_IN_USE",
                "queue",
                queue.queue_id,
                f"The queue has jobs that are not done: {', '.join(active)}.",
            )
        for job in jobs:
            for step in job.steps:
                self.state.steps.pop(step.step_id, None)
            for session in job.sessions:
                self.state.sessions.pop(session.session_id, None)
                for action in session.actions:
                    self.state.actions.pop(action.action_id, None)
            del self.state.jobs[job.job_id]
        admin = self.state.admin
        for table in (admin.queue_fleets, admin.queue_limits):
            for key in [k for k in table if k[0] == queue.queue_id]:
                del table[key]
        del self.state.queues[queue.queue_id]
        return {}

    def UpdateQueueEnvironment(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        environment = queue.environments.get(p["queueEnvironmentId"])
        if environment is None:
            raise not_found("queue-environment", p["queueEnvironmentId"])
        if "priority" in p:
            environment.priority = p["priority"]
        if "template" in p:
            template_type = p.get("templateType", environment.template_type)
            decoded = decode_environment(p["template"], template_type)
            environment.template, environment.template_type = p["template"], template_type
            environment.decoded = decoded
            environment.name = decoded.environment.name
            environment.spec = queue_environment_spec(decoded)
        return {}

    # ------------------------------------------------------------ queue-fleet associations

    def _queue_fleet(self, p: Mapping[str, Any]) -> QueueFleetAssociation:
        self.queue(p["farmId"], p["queueId"])
        self.fleet(p["farmId"], p["fleetId"])
        found = self.state.admin.queue_fleets.get((p["queueId"], p["fleetId"]))
        if found is None:
            raise not_found("queue-fleet-association", f"{p['queueId']}/{p['fleetId']}")
        return found

    def _queue_fleet_status(self, association: QueueFleetAssociation) -> str:
        if association.status == "ACTIVE":
            return "ACTIVE"
        busy = any(
            s.lifecycle_status != "ENDED"
            for s in self.state.sessions.values()
            if s.job.queue_id == association.queue_id and s.worker.fleet_id == association.fleet_id
        )
        return association.status if busy else "STOPPED"

    def _queue_fleet_summary(self, a: QueueFleetAssociation) -> dict[str, Any]:
        return {
            "queueId": a.queue_id,
            "fleetId": a.fleet_id,
            "status": self._queue_fleet_status(a),
            "createdAt": a.created_at,
            "createdBy": a.created_by,
            "updatedAt": a.updated_at,
            "updatedBy": a.updated_by,
        }

    def CreateQueueFleetAssociation(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        fleet = self.fleet(p["farmId"], p["fleetId"])
        if (queue.queue_id, fleet.fleet_id) in self.state.admin.queue_fleets:
            raise conflict(
                "RESOURCE_ALREADY_EXISTS",
                "queue-fleet-association",
                f"{queue.queue_id}/{fleet.fleet_id}",
                "The queue and fleet are already associated.",
            )
        self.associate(queue.farm_id, queue.queue_id, fleet.fleet_id)
        self.check_compatibility()
        return {}

    def GetQueueFleetAssociation(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._queue_fleet_summary(self._queue_fleet(p))

    def ListQueueFleetAssociations(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        found = [
            a
            for a in self.state.admin.queue_fleets.values()
            if a.farm_id == p["farmId"]
            and p.get("queueId") in (None, a.queue_id)
            and p.get("fleetId") in (None, a.fleet_id)
        ]
        page, token = _paginate(found, p)
        return {
            "queueFleetAssociations": [self._queue_fleet_summary(a) for a in page],
            "nextToken": token,
        }

    def UpdateQueueFleetAssociation(self, p: dict[str, Any]) -> Mapping[str, Any]:
        association = self._queue_fleet(p)
        association.status = p["status"]
        association.updated_at, association.updated_by = utcnow(), CREATED_BY
        if p["status"] == "STOP_SCHEDULING_AND_CANCEL_TASKS":
            for session in list(self.state.sessions.values()):
                if (
                    session.job.queue_id == association.queue_id
                    and session.worker.fleet_id == association.fleet_id
                ):
                    self.scheduler.cancel_session_work(session)
        self.check_compatibility()
        return {}

    def DeleteQueueFleetAssociation(self, p: dict[str, Any]) -> Mapping[str, Any]:
        association = self._queue_fleet(p)
        if self._queue_fleet_status(association) != "STOPPED":
            raise conflict(
                "STATUS_CONFLICT",
                "queue-fleet-association",
                f"{association.queue_id}/{association.fleet_id}",
                "Stop the association (UpdateQueueFleetAssociation) and let its sessions "
                "end before deleting it.",
                status=self._queue_fleet_status(association),
            )
        del self.state.admin.queue_fleets[(association.queue_id, association.fleet_id)]
        self.check_compatibility()
        return {}

    # ------------------------------------------------------------ queue-limit associations

    def _queue_limit(self, p: Mapping[str, Any]) -> QueueLimitAssociation:
        self.queue(p["farmId"], p["queueId"])
        found = self.state.admin.queue_limits.get((p["queueId"], p["limitId"]))
        if found is None or found.farm_id != p["farmId"]:
            raise not_found("queue-limit-association", f"{p['queueId']}/{p['limitId']}")
        return found

    def _queue_limit_status(self, a: QueueLimitAssociation) -> str:
        if a.status == "ACTIVE":
            return "ACTIVE"
        limit = self.state.admin.limits.get(a.limit_id)
        busy = limit is not None and any(
            step.counts.get(s, 0)
            for job in self.state.jobs.values()
            if job.queue_id == a.queue_id
            for step in job.steps
            if any(
                x["name"] == limit.amount_requirement_name
                for x in (step.spec.host_requirements or {}).get("amounts") or ()
            )
            for s in ACTIVE_TASK_STATUSES
        )
        return a.status if busy else "STOPPED"

    def _queue_limit_summary(self, a: QueueLimitAssociation) -> dict[str, Any]:
        return {
            "queueId": a.queue_id,
            "limitId": a.limit_id,
            "status": self._queue_limit_status(a),
            "createdAt": a.created_at,
            "createdBy": a.created_by,
            "updatedAt": a.updated_at,
            "updatedBy": a.updated_by,
        }

    def CreateQueueLimitAssociation(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        limit = self.state.admin.limits.get(p["limitId"])
        if limit is None or limit.farm_id != queue.farm_id:
            raise not_found("limit", p["limitId"])
        key = (queue.queue_id, limit.limit_id)
        if key in self.state.admin.queue_limits:
            raise conflict(
                "RESOURCE_ALREADY_EXISTS",
                "queue-limit-association",
                f"{queue.queue_id}/{limit.limit_id}",
                "The queue and limit are already associated.",
            )
        self.state.admin.queue_limits[key] = QueueLimitAssociation(
            farm_id=queue.farm_id,
            queue_id=queue.queue_id,
            limit_id=limit.limit_id,
            created_at=utcnow(),
            created_by=CREATED_BY,
        )
        return {}

    def GetQueueLimitAssociation(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._queue_limit_summary(self._queue_limit(p))

    def ListQueueLimitAssociations(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        found = [
            a
            for a in self.state.admin.queue_limits.values()
            if a.farm_id == p["farmId"]
            and p.get("queueId") in (None, a.queue_id)
            and p.get("limitId") in (None, a.limit_id)
        ]
        page, token = _paginate(found, p)
        return {
            "queueLimitAssociations": [self._queue_limit_summary(a) for a in page],
            "nextToken": token,
        }

    def UpdateQueueLimitAssociation(self, p: dict[str, Any]) -> Mapping[str, Any]:
        association = self._queue_limit(p)
        association.status = p["status"]
        association.updated_at, association.updated_by = utcnow(), CREATED_BY
        return {}

    def DeleteQueueLimitAssociation(self, p: dict[str, Any]) -> Mapping[str, Any]:
        association = self._queue_limit(p)
        if self._queue_limit_status(association) != "STOPPED":
            raise conflict(
                "STATUS_CONFLICT",
                "queue-limit-association",
                f"{association.queue_id}/{association.limit_id}",
                "Stop the association (UpdateQueueLimitAssociation) first.",
                status=self._queue_limit_status(association),
            )
        del self.state.admin.queue_limits[(association.queue_id, association.limit_id)]
        return {}

    # ------------------------------------------------------------ steps and jobs

    def _step_links(self, p: Mapping[str, Any], links: list[Step], key: str) -> dict[str, Any]:
        page, token = _paginate(links, p)
        return {
            key: [
                {"stepId": s.step_id, "status": "RESOLVED" if s.succeeded else "UNRESOLVED"}
                for s in page
            ],
            "nextToken": token,
        }

    def ListStepDependencies(self, p: dict[str, Any]) -> Mapping[str, Any]:
        step = self.step(p)
        return self._step_links(p, step.dependencies, "dependencies")

    def ListStepConsumers(self, p: dict[str, Any]) -> Mapping[str, Any]:
        step = self.step(p)
        # A consumer is resolved once this step (its dependency) has succeeded.
        page, token = _paginate(step.consumers, p)
        status = "RESOLVED" if step.succeeded else "UNRESOLVED"
        return {
            "consumers": [{"stepId": s.step_id, "status": status} for s in page],
            "nextToken": token,
        }

    def _template_document(self, job: Job) -> dict[str, Any]:
        document = yaml.safe_load(job.template)
        return document if isinstance(document, dict) else {}

    def ListJobParameterDefinitions(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        definitions = self._template_document(job).get("parameterDefinitions") or []
        page, token = _paginate(list(definitions), p)
        return {"jobParameterDefinitions": page, "nextToken": token}

    def CopyJobTemplate(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        template_type = job.template_type or (
            "JSON" if job.template.lstrip().startswith("{") else "YAML"
        )
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint:
            raise validation(
                "The mock farm copies job templates to S3 only when it is given an S3 "
                "endpoint (set AWS_ENDPOINT_URL_S3 where it runs).",
                reason="OTHER",
            )
        import boto3  # only here: the farm needs S3 for nothing else

        target = p["targetS3Location"]
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=self.config.region)
        try:
            s3.put_object(
                Bucket=target["bucketName"], Key=target["key"], Body=job.template.encode()
            )
        except Exception as exc:  # the copy failed: say why, as the service would
            raise validation(f"Could not copy the template to S3: {exc}", reason="OTHER") from None
        return {"templateType": template_type}

    # ------------------------------------------------------------ session statistics

    def StartSessionsStatisticsAggregation(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        resources = p["resourceIds"]
        if bool(resources.get("queueIds")) == bool(resources.get("fleetIds")):
            raise validation("resourceIds takes either queueIds or fleetIds.")
        if p["endTime"] <= p["startTime"]:
            raise validation("endTime must be after startTime.")
        aggregation = StatisticsAggregation(
            aggregation_id=new_hex(), farm_id=p["farmId"], request=dict(p), created_at=utcnow()
        )
        aggregation.statistics = self._aggregate(aggregation)
        self.state.admin.aggregations[aggregation.aggregation_id] = aggregation
        return {"aggregationId": aggregation.aggregation_id}

    def GetSessionsStatisticsAggregation(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        aggregation = self.state.admin.aggregations.get(p["aggregationId"])
        if aggregation is None or aggregation.farm_id != p["farmId"]:
            raise not_found("aggregation", p["aggregationId"])
        page, token = _paginate(aggregation.statistics, p)
        return {"statistics": page, "status": "COMPLETED", "nextToken": token}

    def _aggregate(self, aggregation: StatisticsAggregation) -> list[dict[str, Any]]:
        """Session time (and its cost) by the requested groups, over the window."""
        request = aggregation.request
        queue_ids = set(request["resourceIds"].get("queueIds") or ())
        fleet_ids = set(request["resourceIds"].get("fleetIds") or ())
        start, end = request["startTime"], request["endTime"]
        now = utcnow()
        groups: dict[tuple[str, ...], list[float]] = defaultdict(list)
        group_by = request["groupBy"]
        for session in self.state.sessions.values():
            job = session.job
            if job.farm_id != aggregation.farm_id:
                continue
            if (queue_ids and job.queue_id not in queue_ids) or (
                fleet_ids and session.worker.fleet_id not in fleet_ids
            ):
                continue
            began = max(session.started_at, start)
            ended = min(session.ended_at or now, end)
            if ended <= began:
                continue
            fields = {
                "QUEUE_ID": job.queue_id,
                "FLEET_ID": session.worker.fleet_id,
                "JOB_ID": job.job_id,
                "USER_ID": job.created_by,
                "USAGE_TYPE": "COMPUTE",
                "INSTANCE_TYPE": "customer-managed",
                "LICENSE_PRODUCT": "",
            }
            groups[tuple(fields[g] for g in group_by)].append((ended - began).total_seconds())
        names = {
            "QUEUE_ID": "queueId",
            "FLEET_ID": "fleetId",
            "JOB_ID": "jobId",
            "USER_ID": "userId",
            "USAGE_TYPE": "usageType",
            "INSTANCE_TYPE": "instanceType",
            "LICENSE_PRODUCT": "licenseProduct",
        }
        wanted = set(request["statistics"])
        statistics = []
        for key, runtimes in sorted(groups.items()):
            costs = [r / 3600 * DOLLARS_PER_WORKER_HOUR for r in runtimes]
            entry: dict[str, Any] = {
                names[g]: value for g, value in zip(group_by, key, strict=True) if value
            }
            if "JOB_ID" in group_by:
                job_found = self.state.jobs.get(entry.get("jobId", ""))
                entry["jobName"] = job_found.name if job_found else None
            entry.update(
                count=len(runtimes),
                costInUsd=_stats(costs, wanted),
                runtimeInSeconds=_stats(runtimes, wanted),
                aggregationStartTime=start,
                aggregationEndTime=end,
            )
            statistics.append(entry)
        return statistics


def _stats(values: list[float], wanted: set[str]) -> dict[str, float]:
    computed = {
        "SUM": ("sum", sum(values)),
        "MIN": ("min", min(values)),
        "MAX": ("max", max(values)),
        "AVG": ("avg", sum(values) / len(values)),
    }
    return {name: round(value, 6) for key, (name, value) in computed.items() if key in wanted}
