"""Running farmhand workers against the embedded mock farm, over real loopback HTTP."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import trio

from actors import SessionEvent
from agent.deadline import CredentialHolder, ServiceEndpoint, static_credentials
from agent.mockfarm import FarmConfig, FaultConfig, MockFarm, S3Config, open_mock_farm
from agent.worker._config import WorkerConfig
from agent.worker._idle import IdleSource
from agent.worker._worker import Endpoints, Worker, open_agent

PY = sys.executable


def endpoints_for(farm: MockFarm) -> Endpoints:
    region = farm.config.region
    return Endpoints(
        ServiceEndpoint("deadline", farm.endpoint_url, region, inject_host_prefix=False),
        ServiceEndpoint("logs", farm.endpoint_url, region, inject_host_prefix=False),
    )


def worker_config(farm: MockFarm, root: Path, **changes: Any) -> WorkerConfig:
    config = WorkerConfig(
        farm_id=farm.farm_id,
        fleet_id=farm.fleet_id,
        worker_persistence_dir=root / "persistence",
        session_root_dir=root / "sessions",
        worker_logs_dir=root / "logs",
        no_shutdown=True,
        run_jobs_as_agent_user=True,
        drain_grace_seconds=5.0,
    )
    return attrs.evolve(config, **changes)


def bootstrap_credentials() -> CredentialHolder:
    return CredentialHolder(static_credentials("AKIDBOOTSTRAP", "bootstrap-secret"))


@attrs.define
class Events:
    """Every session event the worker showed, and a way to wait for a line."""

    items: list[tuple[str, SessionEvent]] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)

    def __call__(self, session_id: str, event: SessionEvent) -> None:
        self.items.append((session_id, event))
        self.changed.set()
        self.changed = trio.Event()

    async def wait_line(self, text: str) -> None:
        while text not in self.lines():
            await self.changed.wait()

    def lines(self) -> list[str]:
        return [line for _, e in self.items for line in getattr(e, "lines", ())]


@asynccontextmanager
async def farm_and_worker(
    root: Path,
    *,
    farm_config: FarmConfig | None = None,
    faults: FaultConfig | None = None,
    ship_session_logs: bool = True,
    s3: S3Config | None = None,
    idle_source: IdleSource | None = None,
    local_time: Callable[[], datetime] | None = None,
    **config_changes: Any,
) -> AsyncIterator[tuple[MockFarm, Worker, Events]]:
    farm_config = farm_config or FarmConfig(update_interval_seconds=1, max_retries_per_task=0)
    events = Events()
    async with open_mock_farm(config=farm_config, faults=faults, s3=s3) as farm:
        if s3 is not None:
            config_changes.setdefault("s3_endpoint_url", farm.s3_endpoint_url)
        config = worker_config(farm, root, **config_changes)
        async with open_agent(
            config,
            endpoints=endpoints_for(farm),
            bootstrap_credentials=bootstrap_credentials(),
            on_event=events,
            ship_session_logs=ship_session_logs,
            idle_source=idle_source,
            local_time=local_time,
        ) as worker:
            yield farm, worker, events


def py(code: str) -> dict[str, Any]:
    return {"command": PY, "args": ["-c", code]}


def simple_job(
    on_run: dict[str, Any], *, frames: str = "1-3", environments: bool = True
) -> dict[str, Any]:
    template: dict[str, Any] = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "worker test",
        "steps": [
            {
                "name": "Render",
                "parameterSpace": {
                    "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": frames}]
                },
                "script": {"actions": {"onRun": on_run}},
            }
        ],
    }
    if environments:
        template["jobEnvironments"] = [
            {
                "name": "Env",
                "script": {
                    "actions": {"onEnter": py("print('entered')"), "onExit": py("print('exited')")}
                },
            }
        ]
    return template


async def wait_job(farm: MockFarm, job_id: str, seconds: float = 60) -> str:
    with trio.fail_after(seconds):
        return await farm.wait_for_job(job_id)


def final_reports(farm: MockFarm) -> dict[str, list[tuple[str, bool]]]:
    """For each session action: every completedStatus the worker sent, in order, with
    whether that call was answered (a dropped or refused call may be sent again)."""
    sent: dict[str, list[tuple[str, bool]]] = {}
    for call in farm.calls_to("UpdateWorkerSchedule"):
        answered = call.status == 200 and not call.dropped
        for action_id, fields in (call.input.get("updatedSessionActions") or {}).items():
            status = fields.get("completedStatus")
            if status is not None:
                sent.setdefault(action_id, []).append((str(status), answered))
    return sent


def assert_each_final_reported_once(farm: MockFarm, job_id: str) -> dict[str, str]:
    """No status update lost or duplicated: every action of the job's sessions reached
    a final state the worker reported, with one status, and nothing was sent again
    after a call carrying it was answered. Returns action id -> the status."""
    sent = final_reports(farm)
    statuses: dict[str, str] = {}
    for session in farm.job(job_id).sessions:
        for action in session.actions:
            reports = sent.get(action.action_id)
            assert reports, f"{action.action_id} ({action.kind}) was never reported"
            assert len({status for status, _ in reports}) == 1, reports
            answered = [i for i, (_, ok) in enumerate(reports) if ok]
            assert answered, f"{action.action_id}: no call carrying it was answered: {reports}"
            assert answered == [len(reports) - 1], f"sent again after an answer: {reports}"
            assert action.status == reports[0][0], (action.status, reports)
            statuses[action.action_id] = action.status
    assert farm.state.ignored_updates == []
    return statuses
