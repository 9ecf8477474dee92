"""Shared pieces for the mock farm tests: templates and a scripted worker.

``open_events`` reads a server-sent event stream (the monitor's) over a plain socket.
``ScriptedWorker`` speaks the worker side of the Deadline API through boto3's
real ``deadline`` client, synchronously; tests run it in a worker thread with
``trio.to_thread.run_sync`` against an embedded farm.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from agent.mockfarm import MockFarm

CAPABILITIES = {
    "amounts": [
        {"name": "amount.worker.vcpu", "value": 4},
        {"name": "amount.worker.memory", "value": 8192},
    ],
    "attributes": [
        {"name": "attr.worker.os.family", "values": ["linux"]},
        {"name": "attr.worker.cpu.arch", "values": ["x86_64"]},
    ],
}


def job_template(
    *,
    frames: str = "1-3",
    job_environments: int = 1,
    step_environment: bool = False,
    second_step: bool = False,
    extensions: list[str] | None = None,
) -> dict[str, Any]:
    """A small job: step ``Render`` over ``Frame``, optionally a dependent step ``Encode``."""
    render: dict[str, Any] = {
        "name": "Render",
        "parameterSpace": {
            "taskParameterDefinitions": [
                {"name": "Frame", "type": "INT", "range": "{{Param.Frames}}"}
            ]
        },
        "script": {
            "actions": {"onRun": {"command": "echo", "args": ["frame {{Task.Param.Frame}}"]}}
        },
    }
    if step_environment:
        render["stepEnvironments"] = [
            {"name": "RenderEnv", "script": {"actions": {"onEnter": {"command": "true"}}}}
        ]
    template: dict[str, Any] = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "Test job",
        "parameterDefinitions": [{"name": "Frames", "type": "STRING", "default": frames}],
        "steps": [render],
    }
    if job_environments:
        template["jobEnvironments"] = [
            {"name": f"Env{i}", "script": {"actions": {"onEnter": {"command": "true"}}}}
            for i in range(job_environments)
        ]
    if second_step:
        template["steps"].append(
            {
                "name": "Encode",
                "dependencies": [{"dependsOn": "Render"}],
                "script": {"actions": {"onRun": {"command": "true"}}},
            }
        )
    if extensions:
        template["extensions"] = extensions
    return template


def now() -> datetime:
    return datetime.now(UTC)


def completed(status: str = "SUCCEEDED", **extra: Any) -> dict[str, Any]:
    stamp = now()
    info: dict[str, Any] = {"completedStatus": status}
    if status != "NEVER_ATTEMPTED":
        info.update(startedAt=stamp, endedAt=stamp)
    if status in ("SUCCEEDED", "FAILED"):
        info["processExitCode"] = 0 if status == "SUCCEEDED" else 1
    info.update(extra)
    return info


def kind_of(action: Mapping[str, Any]) -> str:
    [(kind, _)] = action["definition"].items()
    return str(kind)


class ScriptedWorker:
    """The worker API call sequence of an agent, driven step by step by a test."""

    def __init__(self, client: Any, farm_id: str, fleet_id: str) -> None:
        self.client = client
        self.farm_id = farm_id
        self.fleet_id = fleet_id
        self.worker_id = ""
        self.responses: list[dict[str, Any]] = []

    @property
    def ids(self) -> dict[str, str]:
        return {"farmId": self.farm_id, "fleetId": self.fleet_id, "workerId": self.worker_id}

    def start(self) -> dict[str, Any]:
        """CreateWorker, AssumeFleetRoleForWorker, UpdateWorker(STARTED): the bootstrap."""
        created = self.client.create_worker(
            farmId=self.farm_id,
            fleetId=self.fleet_id,
            hostProperties={
                "hostName": "scripted",
                "ipAddresses": {"ipV4Addresses": ["127.0.0.1"]},
            },
        )
        self.worker_id = created["workerId"]
        self.client.assume_fleet_role_for_worker(**self.ids)
        return dict(
            self.client.update_worker(status="STARTED", capabilities=CAPABILITIES, **self.ids)
        )

    def sync(self, updates: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.update_worker_schedule(
            updatedSessionActions=dict(updates or {}), **self.ids
        )
        self.responses.append(response)
        return dict(response)

    def entities(self, job_id: str, actions: list[Mapping[str, Any]]) -> dict[str, Any]:
        """BatchGetJobEntity for the job and every entity the actions need."""
        identifiers: list[dict[str, Any]] = [{"jobDetails": {"jobId": job_id}}]
        for action in actions:
            [(kind, body)] = action["definition"].items()
            if kind == "taskRun":
                identifiers.append({"stepDetails": {"jobId": job_id, "stepId": body["stepId"]}})
            elif kind in ("envEnter", "envExit"):
                identifiers.append(
                    {
                        "environmentDetails": {
                            "jobId": job_id,
                            "environmentId": body["environmentId"],
                        }
                    }
                )
        return dict(self.client.batch_get_job_entity(identifiers=identifiers[:10], **self.ids))

    def run(
        self,
        outcome: Callable[[Mapping[str, Any]], Mapping[str, Any] | None] = lambda _: completed(),
        *,
        updates: Mapping[str, Any] | None = None,
        max_syncs: int = 100,
    ) -> list[Mapping[str, Any]]:
        """Sync (first reporting ``updates``) until the farm has nothing for this
        worker; every assigned action is reported with ``outcome(action)``
        (``None``: not reported yet). Returns the actions in the order they ran."""
        ran: list[Mapping[str, Any]] = []
        updates = dict(updates or {})
        for _ in range(max_syncs):
            response = self.sync(updates)
            updates = {}
            sessions = response["assignedSessions"]
            if not sessions:
                return ran
            for session in sessions.values():
                skipping = False
                for action in session["sessionActions"]:
                    if skipping and kind_of(action) != "envExit":
                        # After a failure the worker skips all but environment exits.
                        updates[action["sessionActionId"]] = completed("NEVER_ATTEMPTED")
                        continue
                    result = outcome(action)
                    if result is None:
                        break  # still running: later actions wait
                    updates[action["sessionActionId"]] = result
                    ran.append(action)
                    skipping = skipping or result.get("completedStatus") != "SUCCEEDED"
        raise AssertionError(f"the farm still had work after {max_syncs} syncs")


def dumps(template: Mapping[str, Any]) -> str:
    return json.dumps(template)


# ---------------------------------------------------------------- in-process calls


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


async def invoke(app: Any, operation: str, **params: Any) -> dict[str, Any]:
    """Call a Deadline operation through the farm's ASGI dispatch (codec, faults,
    handler, serializer) without a socket, so tests can use ``autojump_clock``.
    An error response raises ``ApiError`` with the code, message and members."""
    from urllib.parse import quote, urlencode

    from agent.mockfarm import ApiError
    from agent.mockfarm._codec import deadline_codec

    codec = deadline_codec()
    model = codec.model.operation_model(operation)
    uri = model.http["requestUri"]
    body = dict(params)
    query: dict[str, Any] = {}
    for name, member in model.input_shape.members.items():
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "uri":
            uri = uri.replace("{" + wire + "}", quote(str(body.pop(name)), safe=""))
        elif location == "querystring" and name in body:
            query[wire] = body.pop(name)
    scope = {
        "method": model.http["method"],
        "raw_path": uri.encode(),
        "query_string": urlencode(query).encode(),
        "headers": [(b"content-type", b"application/json")],
    }
    status, headers, payload = await app._dispatch(
        scope, json.dumps(body, default=_json_default).encode()
    )
    decoded = json.loads(payload) if payload else {}
    if status >= 300:
        code = dict(headers)[b"x-amzn-errortype"].decode()
        message = decoded.pop("message", "")
        raise ApiError(code, message, status=status, **decoded)
    return dict(decoded)


class EventStream:
    """A server-sent event stream read over a plain socket (HTTP/1.0: the body is the
    events, up to the close), so the test closes it when it is done."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.headers = b""

    async def _fill(self) -> None:
        chunk = await self._stream.receive_some()
        if not chunk:
            raise EOFError("the stream ended")
        self._buffer += chunk

    async def next(self) -> tuple[str, Any]:
        """The next ``(event, data)``; comments and ``retry:`` lines are skipped."""
        while True:
            while b"\n\n" not in self._buffer:
                await self._fill()
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.decode().splitlines() if ": " in line
            )
            if "data" in fields:
                return fields.get("event", "message"), json.loads(fields["data"])


@asynccontextmanager
async def open_events(endpoint_url: str, path: str) -> AsyncIterator[EventStream]:
    """A server-sent event stream of ``endpoint_url`` (``http://host:port``) at ``path``."""
    host, port = endpoint_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        events = EventStream(stream)
        while b"\r\n\r\n" not in events._buffer:
            await events._fill()
        events.headers, events._buffer = events._buffer.split(b"\r\n\r\n", 1)
        yield events


class Agent:
    """A worker driven through in-process calls to the farm's ASGI dispatch (``invoke``)."""

    def __init__(self, farm: MockFarm) -> None:
        self.farm = farm
        self.worker_id = ""

    @property
    def ids(self) -> dict[str, str]:
        return {
            "farmId": self.farm.farm_id,
            "fleetId": self.farm.fleet_id,
            "workerId": self.worker_id,
        }

    async def start(self, capabilities: dict[str, Any] = CAPABILITIES) -> None:
        created = await invoke(
            self.farm.app, "CreateWorker", farmId=self.farm.farm_id, fleetId=self.farm.fleet_id
        )
        self.worker_id = created["workerId"]
        await invoke(
            self.farm.app, "UpdateWorker", status="STARTED", capabilities=capabilities, **self.ids
        )

    async def sync(self, updates: dict[str, Any] | None = None) -> dict[str, Any]:
        return await invoke(
            self.farm.app, "UpdateWorkerSchedule", updatedSessionActions=updates or {}, **self.ids
        )

    async def actions(self, updates: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Sync; the actions of the (single) assigned session."""
        sessions = (await self.sync(updates))["assignedSessions"]
        assert len(sessions) <= 1
        return [a for s in sessions.values() for a in s["sessionActions"]]
