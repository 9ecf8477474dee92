"""The management API of the mock farm: farms, fleets, queues, jobs and what they hold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._apierrors import conflict, not_found, validation
from ._farmbase import CREATED_BY, FarmBase, _counts, _ip_addresses, _paginate
from ._farmscheduler import utcnow
from ._jobs import PREPARED, decode_environment, queue_environment_spec, require_template
from ._records import (
    FarmRecord,
    Fleet,
    Job,
    Queue,
    QueueEnvironment,
    Session,
    SessionAction,
    Step,
    Task,
    new_hex,
)


class ManagementOperations(FarmBase):
    """Create/Get/List/Update of farms, fleets, queues, environments, jobs, steps, tasks, sessions."""

    def CreateFarm(self, p: dict[str, Any]) -> Mapping[str, Any]:
        farm = self._new_farm(
            p["displayName"],
            p.get("description"),
            kms_key_arn=p.get("kmsKeyArn"),
            cost_scale_factor=p.get("costScaleFactor"),
        )
        self._tag_new(p, farm.farm_id)
        return {"farmId": farm.farm_id}

    def _tag_new(self, p: Mapping[str, Any], *ids: str) -> None:
        """Keep CreateFarm/CreateFleet/CreateQueue's ``tags`` (ListTagsForResource)."""
        if p.get("tags"):
            kinds = ("farm", "queue" if "queue-" in ids[-1] else "fleet")[: len(ids)]
            path = "/".join(f"{k}/{i}" for k, i in zip(kinds, ids, strict=True))
            arn = f"arn:aws:deadline:{self.config.region}:{self.config.account_id}:{path}"
            self.state.admin.tags.setdefault(arn, {}).update(p["tags"])

    def GetFarm(self, p: dict[str, Any]) -> Mapping[str, Any]:
        farm = self.farm(p["farmId"])
        return {
            **self._farm_summary(farm),
            "description": farm.description,
            "costScaleFactor": 1.0 if farm.cost_scale_factor is None else farm.cost_scale_factor,
        }

    def _farm_summary(self, farm: FarmRecord) -> dict[str, Any]:
        return {
            "farmId": farm.farm_id,
            "displayName": farm.display_name,
            "kmsKeyArn": farm.kms_key_arn,
            "createdAt": farm.created_at,
            "updatedAt": farm.updated_at,
            "updatedBy": farm.updated_by,
            "createdBy": CREATED_BY,
        }

    def ListFarms(self, p: dict[str, Any]) -> Mapping[str, Any]:
        page, token = _paginate(list(self.state.farms.values()), p)
        return {"farms": [self._farm_summary(f) for f in page], "nextToken": token}

    def CreateFleet(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        fleet = self._new_fleet(
            p["farmId"],
            p["displayName"],
            description=p.get("description"),
            role_arn=p["roleArn"],
            min_workers=p.get("minWorkerCount", 0),
            max_workers=p["maxWorkerCount"],
            configuration=p["configuration"],
            host_configuration=p.get("hostConfiguration"),
        )
        self._tag_new(p, fleet.farm_id, fleet.fleet_id)
        return {"fleetId": fleet.fleet_id}

    def _fleet_summary(self, fleet: Fleet) -> dict[str, Any]:
        return {
            "fleetId": fleet.fleet_id,
            "farmId": fleet.farm_id,
            "displayName": fleet.display_name,
            "status": "ACTIVE",
            "workerCount": sum(
                1
                for w in self.state.workers.values()
                if w.fleet_id == fleet.fleet_id and w.status in ("STARTED", "STOPPING")
            ),
            "minWorkerCount": fleet.min_worker_count,
            "maxWorkerCount": fleet.max_worker_count,
            "configuration": fleet.configuration,
            "createdAt": fleet.created_at,
            "createdBy": CREATED_BY,
        }

    def GetFleet(self, p: dict[str, Any]) -> Mapping[str, Any]:
        fleet = self.fleet(p["farmId"], p["fleetId"])
        return {
            **self._fleet_summary(fleet),
            "description": fleet.description,
            "roleArn": fleet.role_arn,
            "hostConfiguration": fleet.host_configuration,
            "updatedAt": fleet.updated_at,
            "updatedBy": fleet.updated_by,
        }

    def ListFleets(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        fleets = [
            f
            for f in self.state.fleets.values()
            if f.farm_id == p["farmId"]
            and p.get("displayName") in (None, f.display_name)
            and p.get("status") in (None, "ACTIVE")
        ]
        page, token = _paginate(fleets, p)
        return {"fleets": [self._fleet_summary(f) for f in page], "nextToken": token}

    def CreateQueue(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        for profile_id in p.get("allowedStorageProfileIds", ()):
            profile = self.state.admin.storage_profiles.get(profile_id)
            if profile is None or profile.farm_id != p["farmId"]:
                raise not_found("storage-profile", profile_id)
        queue = self._new_queue(
            p["farmId"],
            p["displayName"],
            description=p.get("description"),
            role_arn=p.get("roleArn"),
            job_run_as_user=p.get("jobRunAsUser") or {"runAs": "WORKER_AGENT_USER"},
            job_attachment_settings=p.get("jobAttachmentSettings"),
            default_budget_action=p.get("defaultBudgetAction", "NONE"),
        )
        queue.allowed_storage_profile_ids = list(p.get("allowedStorageProfileIds", ()))
        queue.required_file_system_location_names = list(
            p.get("requiredFileSystemLocationNames", ())
        )
        self._tag_new(p, queue.farm_id, queue.queue_id)
        return {"queueId": queue.queue_id}

    def _queue_summary(self, queue: Queue) -> dict[str, Any]:
        busy = any(
            job.queue is queue and job.task_counts.get("READY") for job in self.state.jobs.values()
        )
        blocked = any(
            b.queue_id == queue.queue_id and b.status == "ACTIVE" and b.queue_stopped_at
            for b in self.state.admin.budgets.values()
        )
        return {
            "farmId": queue.farm_id,
            "queueId": queue.queue_id,
            "displayName": queue.display_name,
            "status": "SCHEDULING_BLOCKED" if blocked else "SCHEDULING" if busy else "IDLE",
            "blockedReason": "BUDGET_THRESHOLD_REACHED" if blocked else None,
            "defaultBudgetAction": queue.default_budget_action,
            "createdAt": queue.created_at,
            "createdBy": CREATED_BY,
        }

    def GetQueue(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        return {
            **self._queue_summary(queue),
            "description": queue.description,
            "jobAttachmentSettings": queue.job_attachment_settings,
            "roleArn": queue.role_arn,
            "jobRunAsUser": queue.job_run_as_user,
            "allowedStorageProfileIds": queue.allowed_storage_profile_ids or None,
            "requiredFileSystemLocationNames": queue.required_file_system_location_names or None,
            "updatedAt": queue.updated_at,
            "updatedBy": queue.updated_by,
        }

    def ListQueues(self, p: dict[str, Any]) -> Mapping[str, Any]:
        self.farm(p["farmId"])
        queues = [q for q in self.state.queues.values() if q.farm_id == p["farmId"]]
        summaries = [self._queue_summary(q) for q in queues]
        if p.get("status"):
            summaries = [s for s in summaries if s["status"] == p["status"]]
        page, token = _paginate(summaries, p)
        return {"queues": page, "nextToken": token}

    def CreateQueueEnvironment(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        decoded = decode_environment(p["template"], p["templateType"])
        name = decoded.environment.name
        if any(env.name == name for env in queue.environments.values()):
            raise conflict(
                "RESOURCE_ALREADY_EXISTS",
                "queue-environment",
                name,
                f"The queue already has an environment named {name!r}.",
            )
        environment = QueueEnvironment(
            queue_environment_id=f"queueenv-{new_hex()}",
            queue_id=queue.queue_id,
            name=name,
            priority=p["priority"],
            template_type=p["templateType"],
            template=p["template"],
            decoded=decoded,
            spec=queue_environment_spec(decoded),
        )
        queue.environments[environment.queue_environment_id] = environment
        self.state.queue_environments[environment.queue_environment_id] = environment
        return {"queueEnvironmentId": environment.queue_environment_id}

    def _queue_environment(self, p: Mapping[str, Any]) -> QueueEnvironment:
        queue = self.queue(p["farmId"], p["queueId"])
        found = queue.environments.get(p["queueEnvironmentId"])
        if found is None:
            raise not_found("queue-environment", p["queueEnvironmentId"])
        return found

    def GetQueueEnvironment(self, p: dict[str, Any]) -> Mapping[str, Any]:
        env = self._queue_environment(p)
        return {
            "queueEnvironmentId": env.queue_environment_id,
            "name": env.name,
            "priority": env.priority,
            "templateType": env.template_type,
            "template": env.template,
            "createdAt": self.state.queues[env.queue_id].created_at,
            "createdBy": CREATED_BY,
        }

    def ListQueueEnvironments(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        page, token = _paginate(queue.ordered_environments(), p)
        return {
            "environments": [
                {
                    "queueEnvironmentId": e.queue_environment_id,
                    "name": e.name,
                    "priority": e.priority,
                }
                for e in page
            ],
            "nextToken": token,
        }

    def DeleteQueueEnvironment(self, p: dict[str, Any]) -> Mapping[str, Any]:
        env = self._queue_environment(p)
        del self.state.queues[env.queue_id].environments[env.queue_environment_id]
        del self.state.queue_environments[env.queue_environment_id]
        return {}

    # ------------------------------------------------------------ jobs

    def CreateJob(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        if p.get("sourceJobId"):
            raise validation("The mock farm does not copy jobs (sourceJobId).", reason="OTHER")
        template, template_type = require_template(p)
        job = self.create_job(
            queue,
            template,
            template_type=template_type,
            parameters=p.get("parameters"),
            priority=p["priority"],
            target_task_run_status=p.get("targetTaskRunStatus"),
            max_failed_tasks_count=p.get("maxFailedTasksCount"),
            max_retries_per_task=p.get("maxRetriesPerTask"),
            max_worker_count=p.get("maxWorkerCount"),
            name=p.get("nameOverride"),
            description=p.get("descriptionOverride"),
            attachments=p.get("attachments"),
            storage_profile_id=p.get("storageProfileId"),
            decoded=p.get(PREPARED),
        )
        return {"jobId": job.job_id}

    def _job_summary(self, job: Job) -> dict[str, Any]:
        return {
            "jobId": job.job_id,
            "name": job.name,
            "lifecycleStatus": job.lifecycle_status,
            "lifecycleStatusMessage": job.lifecycle_message,
            "priority": job.priority,
            "createdAt": job.created_at,
            "createdBy": job.created_by,
            "updatedAt": job.updated_at,
            "updatedBy": job.updated_by,
            "startedAt": job.started_at,
            "endedAt": job.ended_at,
            "taskRunStatus": job.status,
            "targetTaskRunStatus": job.target_status,
            "taskRunStatusCounts": _counts(job.task_counts),
            "taskFailureRetryCount": job.retry_count(),
            "maxFailedTasksCount": job.max_failed_tasks_count,
            "maxRetriesPerTask": job.max_retries_per_task,
            "maxWorkerCount": job.max_worker_count,
        }

    def GetJob(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        return {
            **self._job_summary(job),
            "parameters": job.parameters,
            "attachments": job.attachments,
            "description": job.description or None,
            "storageProfileId": job.storage_profile_id,
        }

    def ListJobs(self, p: dict[str, Any]) -> Mapping[str, Any]:
        queue = self.queue(p["farmId"], p["queueId"])
        jobs = [j for j in self.state.jobs.values() if j.queue is queue]
        page, token = _paginate(jobs, p)
        return {"jobs": [self._job_summary(j) for j in page], "nextToken": token}

    def UpdateJob(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        if p.get("lifecycleStatus") == "ARCHIVED":
            if job.task_counts.keys() & {"ASSIGNED", "RUNNING", "INTERRUPTING"} and any(
                job.task_counts[s] for s in ("ASSIGNED", "RUNNING", "INTERRUPTING")
            ):
                raise conflict(
                    "STATUS_CONFLICT",
                    "job",
                    job.job_id,
                    "A job with running tasks cannot be archived.",
                    status=job.status,
                )
            job.lifecycle_status = "ARCHIVED"
        for key, attribute in (
            ("priority", "priority"),
            ("maxFailedTasksCount", "max_failed_tasks_count"),
            ("maxRetriesPerTask", "max_retries_per_task"),
            ("maxWorkerCount", "max_worker_count"),
            ("name", "name"),
            ("description", "description"),
        ):
            if key in p:
                setattr(job, attribute, p[key])
        if "targetTaskRunStatus" in p:
            self.retarget_job(job, p["targetTaskRunStatus"])
        job.updated_at = utcnow()
        job.updated_by = CREATED_BY
        return {}

    # ------------------------------------------------------------ steps and tasks

    def _step_summary(self, step: Step) -> dict[str, Any]:
        return {
            "stepId": step.step_id,
            "name": step.name,
            "lifecycleStatus": "CREATE_COMPLETE",
            "lifecycleStatusMessage": step.incompatible_reason,
            "taskRunStatus": step.status,
            "taskRunStatusCounts": _counts(step.counts),
            "taskFailureRetryCount": sum(t.failure_retry_count for t in step.tasks),
            "targetTaskRunStatus": step.target_status,
            "createdAt": step.created_at,
            "createdBy": step.job.created_by,
            "updatedAt": step.updated_at,
            "startedAt": step.started_at,
            "endedAt": step.ended_at,
            "dependencyCounts": {
                "dependenciesResolved": sum(1 for d in step.dependencies if d.succeeded),
                "dependenciesUnresolved": sum(1 for d in step.dependencies if not d.succeeded),
                "consumersResolved": sum(1 for c in step.consumers if step.succeeded),
                "consumersUnresolved": sum(1 for c in step.consumers if not step.succeeded),
            },
        }

    def ListSteps(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        page, token = _paginate(job.steps, p)
        return {"steps": [self._step_summary(s) for s in page], "nextToken": token}

    def GetStep(self, p: dict[str, Any]) -> Mapping[str, Any]:
        step = self.step(p)
        requirements = step.spec.host_requirements
        return {
            **self._step_summary(step),
            "requiredCapabilities": (
                {
                    "amounts": requirements["amounts"],
                    "attributes": requirements["attributes"],
                }
                if requirements
                else None
            ),
            "parameterSpace": step.spec.parameter_space,
            "description": step.spec.description,
        }

    def UpdateStep(self, p: dict[str, Any]) -> Mapping[str, Any]:
        step = self.step(p)
        step.target_status = p["targetTaskRunStatus"]
        step.updated_at = utcnow()
        for task in step.tasks:
            self.scheduler.retarget_task(task, p["targetTaskRunStatus"])
        return {}

    def _task_summary(self, task: Task) -> dict[str, Any]:
        return {
            "taskId": task.task_id,
            "createdAt": task.created_at,
            "createdBy": task.step.job.created_by,
            "runStatus": task.status,
            "targetRunStatus": task.target_status,
            "failureRetryCount": task.failure_retry_count,
            "startedAt": task.started_at,
            "endedAt": task.ended_at,
            "updatedAt": task.updated_at,
            "latestSessionActionId": (
                task.latest_action.action_id if task.latest_action is not None else None
            ),
            "parameters": task.parameters or None,
        }

    def ListTasks(self, p: dict[str, Any]) -> Mapping[str, Any]:
        step = self.step(p)
        page, token = _paginate(step.tasks, p)
        return {"tasks": [self._task_summary(t) for t in page], "nextToken": token}

    def GetTask(self, p: dict[str, Any]) -> Mapping[str, Any]:
        return self._task_summary(self.task(p))

    def UpdateTask(self, p: dict[str, Any]) -> Mapping[str, Any]:
        task = self.task(p)
        self.scheduler.retarget_task(task, p["targetRunStatus"])
        return {}

    # ------------------------------------------------------------ sessions

    def _session(self, p: Mapping[str, Any]) -> Session:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        found = self.state.sessions.get(p["sessionId"])
        if found is None or found.job is not job:
            raise not_found("session", p["sessionId"])
        return found

    def _session_summary(self, session: Session) -> dict[str, Any]:
        return {
            "sessionId": session.session_id,
            "fleetId": session.worker.fleet_id,
            "workerId": session.worker.worker_id,
            "startedAt": session.started_at,
            "lifecycleStatus": session.lifecycle_status,
            "endedAt": session.ended_at,
            "targetLifecycleStatus": (
                "ENDED" if session.winding_down and session.lifecycle_status != "ENDED" else None
            ),
            "updatedAt": session.updated_at,
        }

    def ListSessions(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        page, token = _paginate(job.sessions, p)
        return {"sessions": [self._session_summary(s) for s in page], "nextToken": token}

    def GetSession(self, p: dict[str, Any]) -> Mapping[str, Any]:
        session = self._session(p)
        return {
            **self._session_summary(session),
            "log": session.log_configuration(),
            "hostProperties": _ip_addresses(session.worker.host_properties),
            "workerLog": session.worker.log_configuration(),
        }

    def _action_summary(self, action: SessionAction) -> dict[str, Any]:
        definition = action.definition()
        if "syncInputJobAttachments" in definition:
            definition = {"syncInputJobAttachments": {}}
        return {
            "sessionActionId": action.action_id,
            "status": action.status,
            "startedAt": action.started_at,
            "endedAt": action.ended_at,
            "workerUpdatedAt": action.worker_updated_at,
            "progressPercent": action.progress_percent,
            "manifests": action.manifests,
            "definition": definition,
        }

    def ListSessionActions(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        actions: Iterable[SessionAction] = (a for s in job.sessions for a in s.actions)
        if p.get("sessionId"):
            actions = (a for a in actions if a.session.session_id == p["sessionId"])
        if p.get("taskId"):
            actions = (a for a in actions if a.task is not None and a.task.task_id == p["taskId"])
        page, token = _paginate(list(actions), p)
        return {"sessionActions": [self._action_summary(a) for a in page], "nextToken": token}

    def GetSessionAction(self, p: dict[str, Any]) -> Mapping[str, Any]:
        job = self.job(p["farmId"], p["queueId"], p["jobId"])
        action = self.state.actions.get(p["sessionActionId"])
        if action is None or action.session.job is not job:
            raise not_found("session-action", p["sessionActionId"])
        return {
            **self._action_summary(action),
            "sessionId": action.session.session_id,
            "processExitCode": action.process_exit_code,
            "progressMessage": action.progress_message,
        }
