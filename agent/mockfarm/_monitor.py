"""The monitor: a web page of the farm, served by the farm itself on its own port.

::

    GET  /monitor                                   the page (HTML, CSS and JS shipped
    GET  /monitor/static/{monitor.js,monitor.css}    in this package: no CDN, works offline)
    GET  /monitor/api/overview                      farms, queues, fleets, counts
    GET  /monitor/api/jobs?queue=&status=&offset=&limit=
    GET  /monitor/api/jobs/{job}                    a job, its steps
    GET  /monitor/api/jobs/{job}/steps/{step}/tasks?status=&offset=&limit=
    GET  /monitor/api/jobs/{job}/sessions?offset=&limit=
    GET  /monitor/api/sessions/{session}            a session
    GET  /monitor/api/sessions/{session}/actions?offset=&limit=
    GET  /monitor/api/sessions/{session}/log?offset=&limit=
    GET  /monitor/api/sessions/{session}/log/stream?tail=   server-sent events: its lines
    GET  /monitor/api/workers?fleet=&offset=&limit=
    GET  /monitor/api/events                        server-sent events: "the farm changed"
    POST /monitor/api/actions                       {"action": ..., ids...}

Lists are paged on the server (``offset``, ``limit`` at most 500, newest job first),
so a job of 100,000 tasks is read a page at a time. The page follows the farm
through ``/monitor/api/events`` (an event after each change, at most every
``MonitorConfig.event_interval`` seconds; the page re-reads what it shows) and a
session's log through its stream, which sends each line the log store receives
as it arrives.

Actions (cancel, suspend or requeue a job or a task, change a job's priority,
stop a worker) are refused unless the farm was started with them allowed
(``MonitorConfig(actions=True)``, ``mockfarm serve --monitor-actions``). They
go through the same code as the API: the operation's input is validated by
the model (``Operation.validate``) and handed to the farm's handler
(``UpdateJob``, ``UpdateTask``); stopping a worker is what
``/_mockfarm/workers/{id}/stop`` does. A POST must carry
``X-Farmhand-Monitor: 1`` and a JSON body, which a cross-site form cannot send.

Who may look: a farm that verifies signatures (bound beyond loopback) shows the
monitor to this host only; a loopback farm answers only requests whose ``Host``
is a loopback name (no DNS rebinding).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

import attrs
import structlog
import trio

from .._asgi import Receive, Scope, Send, is_loopback
from ._apierrors import ApiError
from ._records import (
    TASK_RUN_STATUSES,
    Job,
    Session,
    SessionAction,
    Step,
    Task,
    WorkerRecord,
)

if TYPE_CHECKING:
    from ._app import CallLog
    from ._codec import ServiceCodec
    from ._farm import Farm

log = structlog.get_logger("farmhand.mockfarm.monitor")

#: The largest page a list answers.
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
#: Lines a log stream starts with (the last ones) unless asked for another tail.
DEFAULT_TAIL = 1000
#: A comment on an idle event stream this often, so a gone client is noticed.
KEEPALIVE_SECONDS = 15.0
_STATIC = {
    "monitor.js": b"text/javascript; charset=utf-8",
    "monitor.css": b"text/css; charset=utf-8",
}
_JSON = b"application/json"
_NO_STORE = (b"cache-control", b"no-store")
#: Job targets the page may ask for, by action.
_JOB_TARGETS = {"cancel_job": "CANCELED", "suspend_job": "SUSPENDED", "requeue_job": "READY"}
_TASK_TARGETS = {"cancel_task": "CANCELED", "suspend_task": "SUSPENDED", "requeue_task": "READY"}


@attrs.frozen
class MonitorConfig:
    """``open_mock_farm(monitor=MonitorConfig(...))``: serve the monitor page."""

    #: Allow the page's actions (cancel, suspend, requeue, priority, stop a worker).
    actions: bool = False
    #: The least time between two change events to a page (a busy farm changes
    #: with every call; the page re-reads what it shows after each event).
    event_interval: float = 0.5


class WatchedFarm(Protocol):
    """What the monitor needs of the running farm: ``MockFarm``, named by its shape."""

    farm: Farm
    calls: CallLog
    endpoint_url: str
    #: Changes so far; ``notify`` adds one.
    changes: int

    def notify(self, *, work: bool = True) -> None: ...

    async def wait_changed(self) -> None: ...


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return ((end or datetime.now(UTC)) - start).total_seconds()


def _counts(counts: Mapping[str, int]) -> dict[str, int]:
    return {status: counts[status] for status in TASK_RUN_STATUSES if counts.get(status)}


def _int(query: Mapping[str, list[str]], name: str, default: int, *, most: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise _Refused(400, f"{name} must be a whole number") from None
    return max(0, min(value, most))


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values and values[-1] else None


def page(items: Sequence[Any], query: Mapping[str, list[str]], render: Callable[[Any], Any]) -> Any:
    """``{"total", "offset", "limit", "items"}``: one page of ``items``, rendered."""
    limit = _int(query, "limit", DEFAULT_LIMIT, most=MAX_LIMIT) or DEFAULT_LIMIT
    offset = _int(query, "offset", 0, most=max(0, len(items) - 1))
    return {
        "total": len(items),
        "offset": offset,
        "limit": limit,
        "items": [render(item) for item in items[offset : offset + limit]],
    }


class Monitor:
    """The ``/monitor`` routes of one mock farm (see the module's docstring)."""

    def __init__(
        self,
        mock: WatchedFarm,
        config: MonitorConfig,
        *,
        codec: ServiceCodec,
        verified: bool,
        stop_worker: Callable[[str], None],
    ) -> None:
        self.mock = mock
        self.config = config
        self._codec = codec
        #: The farm verifies signatures (it may be reachable beyond loopback).
        self._verified = verified
        self._stop_worker = stop_worker
        #: Set when the farm closes: event streams end.
        self.closing = trio.Event()

    @property
    def farm(self) -> Farm:
        return self.mock.farm

    # ------------------------------------------------------------ HTTP

    async def serve(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            self._check_client(scope)
            if path in ("/monitor", "/monitor/"):
                if method != "GET":
                    raise _Refused(405, "GET only")
                await _respond(send, 200, b"text/html; charset=utf-8", _asset("index.html"))
                return
            if path.startswith("/monitor/static/"):
                name = path.removeprefix("/monitor/static/")
                if name not in _STATIC or method != "GET":
                    raise _Refused(404, f"no {path}")
                await _respond(send, 200, _STATIC[name], _asset(name))
                return
            if path == "/monitor/api/actions":
                if method != "POST":
                    raise _Refused(405, "POST only")
                result = self.act(scope, body)
                if self.farm.store is not None:
                    await self.farm.store.commit()
                await _respond_json(send, 200, result)
                return
            if method != "GET":
                raise _Refused(405, "GET only")
            if path == "/monitor/api/events":
                await self._stream(receive, send, self._changes())
                return
            match = re.fullmatch(r"/monitor/api/sessions/([^/]+)/log/stream", path)
            if match:
                session = self._session(match[1])
                tail = _int(query, "tail", DEFAULT_TAIL, most=10**9)
                await self._stream(receive, send, self._log_lines(session, tail))
                return
            await _respond_json(send, 200, self.read(path, query))
        except _Refused as refused:
            await _respond_json(send, refused.status, {"message": refused.message})

    def _check_client(self, scope: Scope) -> None:
        client = scope.get("client")
        if self._verified and (client is None or not is_loopback(client[0])):
            # The page is unauthenticated: a farm others can reach shows it to this host
            # only (an SSH tunnel brings it to another).
            raise _Refused(
                403, "the monitor answers this host only when the farm verifies signatures"
            )
        host = ""
        for name, value in scope.get("headers", ()):
            if name == b"host":
                host = value.decode("latin-1")
        server = scope.get("server")
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host and not is_loopback(hostname.strip("[]")):
            bound = server[0] if server else None
            if bound is None or hostname.strip("[]") != bound:
                raise _Refused(403, f"the monitor does not answer for host {host!r}")

    async def _stream(
        self, receive: Receive, send: Send, events: Callable[[Callable[[bytes], Any]], Any]
    ) -> None:
        """Answer with server-sent events until the client goes or the farm closes."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    _NO_STORE,
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )

        async def emit(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async with trio.open_nursery() as nursery:

            async def until_gone() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel(reason="the page went away")

            async def until_closing() -> None:
                await self.closing.wait()
                nursery.cancel_scope.cancel(reason="the farm is closing")

            nursery.start_soon(until_gone)
            nursery.start_soon(until_closing)
            await events(emit)
            nursery.cancel_scope.cancel(reason="the stream is over")
        with trio.move_on_after(1, shield=True):
            # The last chunk ends the response; the client may be gone already.
            try:
                await send({"type": "http.response.body", "body": b""})
            except Exception:
                pass  # the connection is gone: nothing to end

    def _changes(self) -> Callable[[Callable[[bytes], Any]], Any]:
        async def run(emit: Callable[[bytes], Any]) -> None:
            generation = 0
            seen = self.mock.changes
            await emit(b"retry: 2000\n\n")
            await emit(_event("change", {"generation": generation}))
            while True:
                if self.mock.changes == seen:
                    with trio.move_on_after(KEEPALIVE_SECONDS) as idle:
                        await self.mock.wait_changed()
                    if idle.cancelled_caught:
                        await emit(b": keep-alive\n\n")
                        continue
                seen = self.mock.changes
                generation += 1
                await emit(_event("change", {"generation": generation}))
                # At most one event per interval: changes meanwhile make the next one.
                await trio.sleep(self.config.event_interval)

        return run

    def _log_lines(self, session: Session, tail: int) -> Callable[[Callable[[bytes], Any]], Any]:
        logs = self.farm.logs

        async def run(emit: Callable[[bytes], Any]) -> None:
            stream = logs.ensure_stream(session.log_group_name, session.log_stream_name)
            position = max(0, len(stream.events) - tail)
            await emit(b"retry: 2000\n\n")
            await emit(
                _event(
                    "start",
                    {
                        "first": position,
                        "total": stream.received,
                        "kept": logs.keep_events,
                    },
                )
            )
            while True:
                events = stream.events
                if position < len(events):
                    batch = events[position : position + 500]
                    lines = [
                        {"index": position + i, "timestamp": e.timestamp, "message": e.message}
                        for i, e in enumerate(batch)
                    ]
                    position += len(batch)
                    await emit(_event("lines", lines))
                    continue
                with trio.move_on_after(KEEPALIVE_SECONDS) as idle:
                    await self.mock.wait_changed()
                if idle.cancelled_caught:
                    await emit(b": keep-alive\n\n")

        return run

    # ------------------------------------------------------------ reads

    def read(self, path: str, query: Mapping[str, list[str]]) -> Any:
        if path == "/monitor/api/overview":
            return self.overview()
        if path == "/monitor/api/jobs":
            return self.jobs(query)
        if path == "/monitor/api/workers":
            return self.workers(query)
        parts = path.removeprefix("/monitor/api/").split("/")
        if parts[0] == "jobs" and len(parts) >= 2:
            job = self._job(parts[1])
            if len(parts) == 2:
                return self.job(job)
            if len(parts) == 3 and parts[2] == "sessions":
                return page(list(reversed(job.sessions)), query, self._session_summary)
            if len(parts) == 5 and parts[2] == "steps" and parts[4] == "tasks":
                return self.tasks(self._step(job, parts[3]), query)
        if parts[0] == "sessions" and len(parts) >= 2:
            session = self._session(parts[1])
            if len(parts) == 2:
                return self.session(session)
            if parts[2:] == ["actions"]:
                return page(session.actions, query, self._action)
            if parts[2:] == ["log"]:
                stream = self.farm.logs.stream(session.log_group_name, session.log_stream_name)
                events = stream.events if stream is not None else []
                result = page(
                    events,
                    query,
                    lambda e: {"timestamp": e.timestamp, "message": e.message},
                )
                result["kept"] = self.farm.logs.keep_events
                return result
        raise _Refused(404, f"no {path}")

    def overview(self) -> dict[str, Any]:
        state = self.farm.state
        queues = []
        jobs_by_queue: dict[str, list[Job]] = {}
        for job in state.jobs.values():
            jobs_by_queue.setdefault(job.queue_id, []).append(job)
        for queue in state.queues.values():
            jobs = jobs_by_queue.get(queue.queue_id, [])
            statuses: dict[str, int] = {}
            for job in jobs:
                statuses[job.status] = statuses.get(job.status, 0) + 1
            queues.append(
                {
                    "queueId": queue.queue_id,
                    "farmId": queue.farm_id,
                    "name": queue.display_name,
                    "jobs": len(jobs),
                    "jobsByStatus": statuses,
                    "jobAttachments": queue.job_attachment_settings is not None,
                }
            )
        workers_by_fleet: dict[str, list[WorkerRecord]] = {}
        for worker in state.workers.values():
            workers_by_fleet.setdefault(worker.fleet_id, []).append(worker)
        fleets = []
        for fleet in state.fleets.values():
            workers = workers_by_fleet.get(fleet.fleet_id, [])
            statuses = {}
            for worker in workers:
                statuses[worker.api_status] = statuses.get(worker.api_status, 0) + 1
            fleets.append(
                {
                    "fleetId": fleet.fleet_id,
                    "farmId": fleet.farm_id,
                    "name": fleet.display_name,
                    "workers": len(workers),
                    "workersByStatus": statuses,
                    "minWorkerCount": fleet.min_worker_count,
                    "maxWorkerCount": fleet.max_worker_count,
                }
            )
        return {
            "endpointUrl": self.mock.endpoint_url,
            "region": self.farm.config.region,
            "actionsAllowed": self.config.actions,
            "persistent": self.farm.store is not None,
            "logEventsKept": self.farm.logs.keep_events,
            "defaults": {
                "farmId": self.farm.default_farm_id,
                "queueId": self.farm.default_queue_id,
                "fleetId": self.farm.default_fleet_id,
            },
            "farms": [
                {
                    "farmId": farm.farm_id,
                    "name": farm.display_name,
                    "createdAt": _iso(farm.created_at),
                }
                for farm in state.farms.values()
            ],
            "queues": queues,
            "fleets": fleets,
            "statistics": {
                "jobs": len(state.jobs),
                "workers": len(state.workers),
                "activeSessions": sum(len(w.sessions) for w in state.workers.values()),
                "calls": self.mock.calls.total,
            },
        }

    def jobs(self, query: Mapping[str, list[str]]) -> Any:
        queue_id, status = _one(query, "queue"), _one(query, "status")
        jobs: Iterable[Job] = reversed(list(self.farm.state.jobs.values()))
        if queue_id:
            jobs = (job for job in jobs if job.queue_id == queue_id)
        if status:
            jobs = (job for job in jobs if job.status == status)
        return page(list(jobs), query, self._job_summary)

    def _job_summary(self, job: Job) -> dict[str, Any]:
        return {
            "jobId": job.job_id,
            "queueId": job.queue_id,
            "farmId": job.farm_id,
            "name": job.name,
            "status": job.status,
            "targetStatus": job.target_status,
            "lifecycleStatus": job.lifecycle_status,
            "lifecycleMessage": job.lifecycle_message or None,
            "priority": job.priority,
            "createdBy": job.created_by,
            "createdAt": _iso(job.created_at),
            "startedAt": _iso(job.started_at),
            "endedAt": _iso(job.ended_at),
            "updatedAt": _iso(job.updated_at),
            "tasks": sum(len(step.tasks) for step in job.steps),
            "taskCounts": _counts(job.task_counts),
            "activeSessions": job.active_sessions,
        }

    def job(self, job: Job) -> dict[str, Any]:
        return {
            **self._job_summary(job),
            "description": job.description,
            "maxRetriesPerTask": job.max_retries_per_task,
            "maxFailedTasksCount": job.max_failed_tasks_count,
            "failureCount": job.failure_count,
            "retries": job.retry_count(),
            "sessions": len(job.sessions),
            "parameters": job.parameters,
            "steps": [self._step_summary(step) for step in job.steps],
        }

    def _step_summary(self, step: Step) -> dict[str, Any]:
        return {
            "stepId": step.step_id,
            "name": step.name,
            "status": step.status,
            "targetStatus": step.target_status,
            "tasks": len(step.tasks),
            "taskCounts": _counts(step.counts),
            "retries": sum(task.failure_retry_count for task in step.tasks),
            "dependencies": [d.name for d in step.dependencies],
            "incompatibleReason": step.incompatible_reason,
            "startedAt": _iso(step.started_at),
            "endedAt": _iso(step.ended_at),
        }

    def tasks(self, step: Step, query: Mapping[str, list[str]]) -> Any:
        status = _one(query, "status")
        tasks: Sequence[Task] = step.tasks
        if status:
            tasks = [task for task in tasks if task.status == status]
        return page(tasks, query, self._task)

    def _task(self, task: Task) -> dict[str, Any]:
        action = task.latest_action
        parameters = {
            name: next(iter(value.values()), None) for name, value in task.parameters.items()
        }
        return {
            "taskId": task.task_id,
            "stepId": task.step.step_id,
            "index": task.index,
            "parameters": parameters,
            "status": task.status,
            "targetStatus": task.target_status,
            "retries": task.failure_retry_count,
            "startedAt": _iso(task.started_at),
            "endedAt": _iso(task.ended_at),
            "runSeconds": _seconds(task.started_at, task.ended_at),
            "sessionId": action.session.session_id if action is not None else None,
            "workerId": action.session.worker.worker_id if action is not None else None,
            "sessionActionId": action.action_id if action is not None else None,
            "processExitCode": action.process_exit_code if action is not None else None,
            "progressPercent": action.progress_percent if action is not None else None,
        }

    def _session_summary(self, session: Session) -> dict[str, Any]:
        return {
            "sessionId": session.session_id,
            "jobId": session.job.job_id,
            "jobName": session.job.name,
            "workerId": session.worker.worker_id,
            "hostName": (session.worker.host_properties or {}).get("hostName"),
            "lifecycleStatus": session.lifecycle_status,
            "startedAt": _iso(session.started_at),
            "endedAt": _iso(session.ended_at),
            "actions": len(session.actions),
            "openActions": len(session.open),
        }

    def session(self, session: Session) -> dict[str, Any]:
        return {
            **self._session_summary(session),
            "logGroupName": session.log_group_name,
            "logStreamName": session.log_stream_name,
            "logEventsKept": self.farm.logs.keep_events,
        }

    def _action(self, action: SessionAction) -> dict[str, Any]:
        task = action.task
        what = action.kind
        if task is not None:
            what = f"{task.step.name} #{task.index}"
        elif action.environment_id is not None:
            what = action.environment_id.rsplit(":", 1)[-1]
        return {
            "sessionActionId": action.action_id,
            "index": action.index,
            "kind": action.kind,
            "what": what,
            "taskId": task.task_id if task is not None else None,
            "stepId": task.step.step_id if task is not None else action.step_id,
            "status": action.status,
            "cancelRequested": action.cancel_requested,
            "startedAt": _iso(action.started_at),
            "endedAt": _iso(action.ended_at),
            "runSeconds": _seconds(action.started_at, action.ended_at),
            "processExitCode": action.process_exit_code,
            "progressPercent": action.progress_percent,
            "progressMessage": action.progress_message,
            "usage": action.usage,
        }

    def workers(self, query: Mapping[str, list[str]]) -> Any:
        fleet_id = _one(query, "fleet")
        workers: Iterable[WorkerRecord] = self.farm.state.workers.values()
        if fleet_id:
            workers = (w for w in workers if w.fleet_id == fleet_id)
        return page(list(workers), query, self._worker)

    def _worker(self, worker: WorkerRecord) -> dict[str, Any]:
        host = worker.host_properties or {}
        heartbeat = None
        if worker.last_seen:
            age = max(0.0, trio.current_time() - worker.last_seen)
            heartbeat = datetime.now(UTC) - timedelta(seconds=age)
        capabilities = worker.capabilities or {}
        return {
            "workerId": worker.worker_id,
            "fleetId": worker.fleet_id,
            "status": worker.api_status,
            "stopRequested": worker.stop_requested,
            "hostName": host.get("hostName"),
            "ipAddresses": (host.get("ipAddresses") or {}).get("ipV4Addresses") or [],
            "amounts": {a["name"]: a.get("value") for a in capabilities.get("amounts") or ()},
            "attributes": {
                a["name"]: a.get("values") for a in capabilities.get("attributes") or ()
            },
            "sessions": [
                {"sessionId": s.session_id, "jobId": s.job.job_id, "jobName": s.job.name}
                for s in worker.sessions.values()
            ],
            "createdAt": _iso(worker.created_at),
            "lastHeartbeatAt": _iso(heartbeat),
            "scheduleCalls": worker.schedule_calls,
        }

    # ------------------------------------------------------------ lookups

    def _job(self, job_id: str) -> Job:
        job = self.farm.state.jobs.get(job_id)
        if job is None:
            raise _Refused(404, f"no job {job_id}")
        return job

    def _step(self, job: Job, step_id: str) -> Step:
        step = self.farm.state.steps.get(step_id)
        if step is None or step.job is not job:
            raise _Refused(404, f"no step {step_id} in {job.job_id}")
        return step

    def _session(self, session_id: str) -> Session:
        session = self.farm.state.sessions.get(session_id)
        if session is None:
            raise _Refused(404, f"no session {session_id}")
        return session

    # ------------------------------------------------------------ actions

    def act(self, scope: Scope, body: bytes) -> dict[str, Any]:
        """Carry out one action of the page, through the farm's own handlers."""
        if not self.config.actions:
            raise _Refused(
                403,
                "this farm's monitor is read-only (start it with --monitor-actions to allow changes)",
            )
        headers = dict(scope.get("headers", ()))
        if headers.get(b"x-farmhand-monitor") != b"1":
            raise _Refused(403, "an action needs the X-Farmhand-Monitor: 1 header")
        origin = headers.get(b"origin")
        host = headers.get(b"host")
        if origin is not None and host is not None and origin.split(b"//", 1)[-1] != host:
            raise _Refused(403, "an action must come from the monitor's own page")
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            raise _Refused(400, "the body must be a JSON object") from None
        if not isinstance(request, dict):
            raise _Refused(400, "the body must be a JSON object")
        name = request.get("action")
        try:
            result = self._act(name, request)
        except ApiError as error:
            # The status the API would answer with (the model's, for the error's shape).
            status = error.status or self._codec.status_of(error)
            raise _Refused(status, f"{error.code}: {error.message}") from None
        log.info(
            "mockfarm.monitor_action",
            action=name,
            **{k: v for k, v in request.items() if k != "action"},
        )
        self.mock.notify()
        return result

    def _act(self, name: Any, request: Mapping[str, Any]) -> dict[str, Any]:
        if name in _JOB_TARGETS or name == "set_priority":
            job = self._job(str(request.get("jobId")))
            params: dict[str, Any] = {
                "farmId": job.farm_id,
                "queueId": job.queue_id,
                "jobId": job.job_id,
            }
            if name == "set_priority":
                params["priority"] = request.get("priority")
            else:
                params["targetTaskRunStatus"] = _JOB_TARGETS[name]
            self._call("UpdateJob", params)
            return {"jobId": job.job_id, "status": job.status, "priority": job.priority}
        if name in _TASK_TARGETS:
            job = self._job(str(request.get("jobId")))
            task = self.farm.state.task(str(request.get("taskId")))
            if task is None or task.step.job is not job:
                raise _Refused(404, f"no task {request.get('taskId')} in {job.job_id}")
            self._call(
                "UpdateTask",
                {
                    "farmId": job.farm_id,
                    "queueId": job.queue_id,
                    "jobId": job.job_id,
                    "stepId": task.step.step_id,
                    "taskId": task.task_id,
                    "targetRunStatus": _TASK_TARGETS[name],
                },
            )
            return {"taskId": task.task_id, "status": task.status}
        if name == "stop_worker":
            worker_id = str(request.get("workerId"))
            if worker_id not in self.farm.state.workers:
                raise _Refused(404, f"no worker {worker_id}")
            # What /_mockfarm/workers/{id}/stop and `mockfarm stop-worker` do: no new
            # work, then desiredWorkerStatus=STOPPED in its next UpdateWorkerSchedule.
            self._stop_worker(worker_id)
            return {"workerId": worker_id, "stopRequested": True}
        raise _Refused(400, f"unknown action {name!r}")

    def _call(self, operation: str, params: dict[str, Any]) -> None:
        """As a request to ``operation`` would be: validated by the model, then handled."""
        validated = self._codec.operations[operation].check(params)
        self.farm.handlers[operation](validated)


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _asset(name: str) -> bytes:
    return resources.files("agent.mockfarm").joinpath("monitor_page", name).read_bytes()


async def _respond(send: Send, status: int, content_type: bytes, payload: bytes) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(payload)).encode()),
        _NO_STORE,
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    if content_type.startswith(b"text/html"):
        headers.append(
            (
                b"content-security-policy",
                b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            )
        )
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _respond_json(send: Send, status: int, value: Any) -> None:
    await _respond(send, status, _JSON, json.dumps(value, separators=(",", ":")).encode())
