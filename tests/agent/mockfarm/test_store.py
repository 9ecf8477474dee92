"""The mock farm's persistent state: SQLite in a state dir, committed before each answer."""

from __future__ import annotations

import io
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
import trio

from agent.mockfarm import FarmConfig, FarmState, LogStore, open_mock_farm
from agent.mockfarm._records import ASSIGNED_ONLY
from agent.mockfarm._store import FarmStore, StoreError
from tests.mockfarm_helpers import ScriptedWorker, completed, job_template
from tests.mockfarm_population import build_full_farm

ROOT = Path(__file__).resolve().parents[3]


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


# ---------------------------------------------------------------- comparing farms


def _canon(value: Any) -> Any:
    """A comparable form of a field value: records by id, counters without zeros."""
    if isinstance(value, tuple(ASSIGNED_ONLY)):
        first = attrs.fields(cast(Any, type(value)))[0].name
        return (type(value).__name__, getattr(value, first))
    if isinstance(value, Counter):
        return {k: v for k, v in value.items() if v}
    if isinstance(value, Mapping):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, str | int | float | bool | datetime | type(None)):
        return value
    if attrs.has(type(value)):
        return {f.name: _canon(getattr(value, f.name)) for f in attrs.fields(type(value))}
    return type(value).__name__  # openjd-model objects: compared by what they produce


#: Fields that are process-local or an implementation detail of a heap.
_NOT_COMPARED = {"last_seen", "schedule_calls", "_ready", "space"}


def snapshot(state: FarmState) -> dict[str, Any]:
    """Every record of every table, stored fields and rebuilt ones alike."""
    result: dict[str, Any] = {}
    records: list[Any] = []
    for field in attrs.fields(FarmState):
        table = getattr(state, field.name)
        if isinstance(table, dict):
            result[field.name] = list(table)
            records.extend(table.values())
    for field in attrs.fields(type(state.admin)):
        # Administrative records: flat, compared whole.
        result[f"admin.{field.name}"] = _canon(getattr(state.admin, field.name))
    for step in state.steps.values():
        records.extend(step.tasks)
        result.setdefault("ready", {})[step.step_id] = getattr(step.peek_ready(), "index", None)
    for record in records:
        fields = {
            f.name: _canon(getattr(record, f.name))
            for f in attrs.fields(type(record))
            if f.name not in _NOT_COMPARED
        }
        result[f"{type(record).__name__} {_canon(record)[1]}"] = fields
    return result


# ---------------------------------------------------------------- in-process restarts


async def test_a_restarted_farm_has_its_ids_jobs_sessions_and_logs(tmp_path: Path) -> None:
    """Everything a farm holds comes back from its state dir, field for field."""
    state_dir = tmp_path / "state"
    async with open_mock_farm(state_dir=state_dir) as farm:
        ids = farm.info()
        client = farm.boto3_client("deadline")
        queue_id = farm.create_queue("Second", role_arn="arn:aws:iam::123456789012:role/Q")
        farm.create_queue_environment(
            {
                "specificationVersion": "environment-2023-09",
                "environment": {
                    "name": "QEnv",
                    "script": {"actions": {"onEnter": {"command": "true"}}},
                },
            },
            queue_id=queue_id,
        )
        job_id = farm.create_job(job_template(frames="1-4", second_step=True), queue_id=queue_id)
        canceled = farm.create_job(job_template(frames="1-2"))
        farm.cancel_job(canceled)
        worker = ScriptedWorker(client, farm.farm_id, farm.fleet_id)
        await in_thread(worker.start)
        first = await in_thread(worker.sync)
        [session] = first["assignedSessions"].values()
        actions = session["sessionActions"]
        # The environments entered and one task done; the next task running.
        report = {a["sessionActionId"]: completed() for a in actions[:-1]}
        report[actions[-1]["sessionActionId"]] = {"startedAt": datetime.now(UTC)}
        await in_thread(worker.sync, report)
        logs = farm.boto3_client("logs")
        group, stream = (
            farm.state.sessions[next(iter(first["assignedSessions"]))].log_group_name,
            next(iter(first["assignedSessions"])),
        )
        await in_thread(
            logs.put_log_events,
            logGroupName=group,
            logStreamName=stream,
            logEvents=[
                {"timestamp": int(datetime.now(UTC).timestamp() * 1000), "message": f"line {i}"}
                for i in range(3)
            ],
        )
        before = snapshot(farm.state)
        messages = farm.session_log(stream)
    assert before["jobs"] == [job_id, canceled]
    async with open_mock_farm(state_dir=state_dir) as farm:
        assert {k: v for k, v in farm.info().items() if k != "endpointUrl"} == {
            k: v for k, v in ids.items() if k != "endpointUrl"
        }
        assert snapshot(farm.state) == before
        assert farm.session_log(stream) == messages == ["line 0", "line 1", "line 2"]
        assert farm.job(canceled).status == "CANCELED"
        # Read back through the API too, as a client would after the restart.
        client = farm.boto3_client("deadline")
        got = await in_thread(client.get_job, farmId=farm.farm_id, queueId=queue_id, jobId=job_id)
        assert got["taskRunStatusCounts"]["SUCCEEDED"] == 1
        assert got["taskRunStatusCounts"]["RUNNING"] == 1


async def test_a_worker_keeps_working_across_a_restart(tmp_path: Path) -> None:
    """A worker mid-session reports to the restarted farm and finishes the job."""
    state_dir = tmp_path / "state"
    async with open_mock_farm(state_dir=state_dir) as farm:
        job_id = farm.create_job(job_template(frames="1-5", step_environment=True))
        worker = ScriptedWorker(farm.boto3_client("deadline"), farm.farm_id, farm.fleet_id)
        await in_thread(worker.start)
        response = await in_thread(worker.sync)
        [(session_id, session)] = response["assignedSessions"].items()
        held = {a["sessionActionId"]: completed() for a in session["sessionActions"]}
    # The farm went away while the worker ran its actions; it reports to the new one.
    async with open_mock_farm(state_dir=state_dir) as farm:
        worker.client = farm.boto3_client("deadline")
        ran = await in_thread(worker.run, updates=held)
        assert await farm.wait_for_job(job_id) == "SUCCEEDED"
        assert farm.state.sessions[session_id].lifecycle_status == "ENDED"
        assert [a.status for a in farm.state.sessions[session_id].actions] == ["SUCCEEDED"] * len(
            farm.state.sessions[session_id].actions
        )
        assert ran  # the rest of the work came from the restarted farm
        assert not farm.state.ignored_updates


async def test_idempotency_tokens_and_issued_keys_survive(tmp_path: Path) -> None:
    """A CreateJob retried with its client token after a restart gives the same job, and a
    farm that verifies signatures still takes the temporary keys it handed out."""
    state_dir = tmp_path / "state"
    keys = {"AKIDSTORETEST": "store-test-secret"}
    text = __import__("json").dumps(job_template(frames="1"))
    async with open_mock_farm(state_dir=state_dir, keys=keys) as farm:
        client = farm.boto3_client("deadline")
        params = {"farmId": farm.farm_id, "queueId": farm.queue_id, "template": text,
                  "templateType": "JSON", "priority": 50, "clientToken": "token-1"}  # fmt: skip
        first = (await in_thread(client.create_job, **params))["jobId"]
        worker = ScriptedWorker(client, farm.farm_id, farm.fleet_id)
        await in_thread(worker.start)
        creds = (await in_thread(client.assume_fleet_role_for_worker, **worker.ids))["credentials"]
    async with open_mock_farm(state_dir=state_dir, keys=keys) as farm:
        client = farm.boto3_client("deadline")
        assert (await in_thread(client.create_job, **params))["jobId"] == first
        assert len(farm.state.jobs) == 1
        as_worker = farm.boto3_client(
            "deadline",
            aws_access_key_id=creds["accessKeyId"],
            aws_secret_access_key=creds["secretAccessKey"],
            aws_session_token=creds["sessionToken"],
        )
        worker.client = as_worker
        await in_thread(worker.run)
        assert farm.job(first).status == "SUCCEEDED"


async def test_ephemeral_farms_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_mock_farm() without a state dir keeps the farm in memory, as before."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    async with open_mock_farm() as farm:
        farm.create_job(job_template(frames="1"))
        assert farm.farm.store is None
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 - a test's own tmp dir, after the fact


# ---------------------------------------------------------------- the generic mechanism


@attrs.define(eq=False)
class Budget:
    """A record type the store was never told about (not a ``Record``)."""

    budget_id: str
    queue: Any
    limit: float
    actions: list[str] = attrs.Factory(list)


@attrs.define(eq=False)
class StateWithBudgets(FarmState):
    budgets: dict[str, Budget] = attrs.Factory(dict)
    #: Plain values, not records.
    members: dict[str, dict[str, str]] = attrs.Factory(dict)


def _open(state_dir: Path) -> tuple[FarmStore, StateWithBudgets, LogStore]:
    store = FarmStore(state_dir)
    state, logs = StateWithBudgets(), LogStore()
    store.load(state, logs, now=0.0)
    store.attach(state, logs)
    return store, state, logs


def test_new_record_types_persist_without_extra_work(tmp_path: Path) -> None:
    """A record type in a new FarmState table is stored, references and in-place changes
    included, and a field added later takes its default when an older state loads."""
    from agent.mockfarm._records import Queue

    store, state, _ = _open(tmp_path)
    queue = Queue("queue-1", "farm-1", "Q", None, None, {}, None, datetime.now(UTC))
    state.queues[queue.queue_id] = queue
    state.budgets["budget-1"] = Budget("budget-1", queue, 10.0)
    state.members["user-1"] = {"membershipLevel": "VIEWER"}
    store.commit_nowait()
    state.budgets["budget-1"].actions.append("STOP_SCHEDULING")  # in place: still seen
    state.members["user-1"]["membershipLevel"] = "OWNER"
    queue.display_name = "Renamed"
    store.close()

    store, state, _ = _open(tmp_path)
    assert state.members == {"user-1": {"membershipLevel": "OWNER"}}
    budget = state.budgets["budget-1"]
    assert budget.actions == ["STOP_SCHEDULING"]
    assert budget.queue is state.queues["queue-1"]
    assert budget.queue.display_name == "Renamed"
    del state.budgets["budget-1"]
    store.close()

    store, state, _ = _open(tmp_path)
    assert state.budgets == {}
    # An older farm's Queue lacked default_budget_action: the default fills it in.
    store.close()
    with sqlite3.connect(tmp_path / "farm.sqlite3") as db:
        [(payload,)] = db.execute("SELECT payload FROM records WHERE kind = 'queues'").fetchall()
        values = pickle.Unpickler(io.BytesIO(payload))
        values.persistent_load = lambda pid: None  # type: ignore[method-assign]
        fields = values.load()
        del fields["default_budget_action"]
        fields["retired_field"] = 1
        db.execute("UPDATE records SET payload = ? WHERE kind = 'queues'", (pickle.dumps(fields),))
    store, state, _ = _open(tmp_path)
    assert state.queues["queue-1"].default_budget_action == "NONE"
    store.close()


def test_a_state_dir_serves_one_farm_at_a_time(tmp_path: Path) -> None:
    """A second store on a state dir in use is refused with a clear message."""
    store = FarmStore(tmp_path)
    with pytest.raises(StoreError, match="in use by another mock farm"):
        FarmStore(tmp_path)
    store.close()
    FarmStore(tmp_path).close()


# ---------------------------------------------------------------- SIGKILL


async def _start_serve(state_dir: Path | None, *args: str) -> tuple[trio.Process, str, str]:
    """`mockfarm serve` on a free port: the process, its endpoint and what it printed."""
    argv = [
        sys.executable,
        "-m",
        "agent",
        "mockfarm",
        "serve",
        "--port",
        "0",
        "--update-interval",
        "1",
    ]
    if state_dir is not None:
        argv += ["--state-dir", str(state_dir)]
    process = await trio.lowlevel.open_process(
        [*argv, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    output = b""
    with trio.fail_after(60):
        while b"\nready: " not in output:  # the last line serve prints
            chunk = await process.stdout.receive_some()
            assert chunk, output.decode()
            output += chunk
    text = output.decode()
    return process, text.split("listening on ")[1].split()[0], text


async def _stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(30):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
    assert process.returncode == 0


async def test_serve_keeps_its_state_under_the_data_dir_unless_ephemeral() -> None:
    """`serve` keeps its farm under $XDG_DATA_HOME/farmhand/mockfarm by default and comes
    back with the same ids; `--ephemeral` is a new farm each time and writes nothing."""
    import os

    default = Path(os.environ["XDG_DATA_HOME"]) / "farmhand" / "mockfarm"
    process, _, first = await _start_serve(None)
    await _stop(process)
    assert f"state in {default} (0 jobs, 0 workers)" in first
    farm_line = next(line for line in first.splitlines() if line.startswith("  farm "))
    assert (default / "farm.sqlite3").is_file()
    process, _, again = await _start_serve(None)
    await _stop(process)
    assert farm_line in again.splitlines()
    before = sorted(default.iterdir())
    process, _, ephemeral = await _start_serve(None, "--ephemeral")
    await _stop(process)
    assert "state in memory only (--ephemeral)" in ephemeral
    assert farm_line not in ephemeral.splitlines()
    assert sorted(default.iterdir()) == before


async def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Submitters and a worker hammer `mockfarm serve`; SIGKILL it; the restarted server
    has every job whose CreateJob was answered and every report that was answered, and
    the worker finishes the work."""
    from agent.mockfarm import make_client

    state_dir = tmp_path / "state"
    text = __import__("json").dumps(job_template(frames="1-3", job_environments=1))
    process, endpoint, _ = await _start_serve(state_dir)
    info = __import__("httpx").get(f"{endpoint}/_mockfarm/info").json()
    acknowledged: list[str] = []
    reported: dict[str, str] = {}
    stop = threading.Event()
    enough = trio.Event()

    def progress() -> None:
        """Called from the client threads after each answered call."""
        if len(acknowledged) >= 15 and len(reported) >= 10:
            enough.set()

    worker = ScriptedWorker(make_client("deadline", endpoint), info["farmId"], info["fleetId"])
    try:
        await in_thread(worker.start)

        def submit() -> None:
            client = make_client("deadline", endpoint)
            while not stop.is_set() and len(acknowledged) < 40:
                try:
                    job = client.create_job(farmId=info["farmId"], queueId=info["queueId"],
                                            template=text, templateType="JSON", priority=50)  # fmt: skip
                except Exception:
                    return  # the server is gone
                acknowledged.append(job["jobId"])
                trio.from_thread.run_sync(progress)

        def work() -> None:
            updates: dict[str, Any] = {}
            while not stop.is_set():
                try:
                    response = worker.sync(updates)
                except Exception:
                    return
                # Answered: every report in it is acknowledged.
                reported.update(dict.fromkeys(updates, "SUCCEEDED"))
                trio.from_thread.run_sync(progress)
                if "assignedSessions" not in response:
                    # The kill cut the answer short after its headers (the farm answers
                    # once the call's changes are committed, so the reports stand):
                    # botocore does not hold a body to its Content-Length, and parses
                    # the empty rest as {}.
                    return
                updates = {
                    action["sessionActionId"]: completed()
                    for session in response["assignedSessions"].values()
                    for action in session["sessionActions"]
                }

        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_thread, submit)
            nursery.start_soon(in_thread, work)
            with trio.fail_after(120):
                await enough.wait()
            process.kill()  # SIGKILL, wherever the server is
            await process.wait()
            stop.set()
    finally:
        stop.set()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == -signal.SIGKILL

    process, endpoint, _ = await _start_serve(state_dir)
    try:
        assert (
            __import__("httpx").get(f"{endpoint}/_mockfarm/info").json()["farmId"] == info["farmId"]
        )
        client = make_client("deadline", endpoint)
        for job_id in acknowledged:
            job = await in_thread(
                client.get_job, farmId=info["farmId"], queueId=info["queueId"], jobId=job_id
            )
            assert job["jobId"] == job_id
        actions = {}
        for job_id in acknowledged:
            listed = await in_thread(
                client.list_session_actions,
                farmId=info["farmId"],
                queueId=info["queueId"],
                jobId=job_id,
            )
            actions.update({a["sessionActionId"]: a["status"] for a in listed["sessionActions"]})
        for action_id, status in reported.items():
            assert actions.get(action_id) == status, action_id
        # The worker kept running: it reports to the restarted farm and finishes everything.
        worker.client = client
        await in_thread(worker.run, max_syncs=2000)
        listed = await in_thread(
            client.list_jobs, farmId=info["farmId"], queueId=info["queueId"], maxResults=100
        )
        statuses = {job["jobId"]: job["taskRunStatus"] for job in listed["jobs"]}
        assert set(acknowledged) <= set(statuses)
        assert set(statuses.values()) == {"SUCCEEDED"}
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_serve_refuses_a_state_dir_in_use(tmp_path: Path) -> None:
    """A second `serve` on a state dir in use exits 1 with one line."""
    async with open_mock_farm(state_dir=tmp_path):
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "agent",
                "mockfarm",
                "serve",
                "--port",
                "0",
                "--state-dir",
                str(tmp_path),
            ],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"error: {tmp_path} is in use by another mock farm (serve one farm per state dir)"
    ]


async def test_administrative_records_survive_a_restart(tmp_path: Path) -> None:
    """Budgets, limits, storage profiles, members, license endpoints, monitors, tags and
    queue associations come back as they were."""
    state_dir = tmp_path / "state"
    config = FarmConfig(max_sessions_per_worker=2, pipeline_depth=1)  # as build_full_farm needs
    async with open_mock_farm(config=config, state_dir=state_dir) as farm:
        ids = await in_thread(build_full_farm, farm)
        deadline = farm.boto3_client("deadline")
        farm_arn = f"arn:aws:deadline:us-west-2:123456789012:farm/{farm.farm_id}"
        await in_thread(deadline.tag_resource, resourceArn=farm_arn, tags={"team": "fx"})
        before = snapshot(farm.state)
    assert all(before[f"admin.{name}"] for name in ("budgets", "limits", "members", "tags"))
    async with open_mock_farm(config=config, state_dir=state_dir) as farm:
        assert snapshot(farm.state) == before
        deadline = farm.boto3_client("deadline")
        fleets = await in_thread(
            deadline.list_queue_fleet_associations, farmId=farm.farm_id, queueId=farm.queue_id
        )
        assert {a["fleetId"] for a in fleets["queueFleetAssociations"]} == {
            farm.fleet_id,
            *ids["fleets"],
        }
        tags = await in_thread(deadline.list_tags_for_resource, resourceArn=farm_arn)
        assert tags["tags"] == {"team": "fx"}


async def test_a_deleted_default_association_stays_deleted(tmp_path: Path) -> None:
    """The farm associates its default queue and fleet when it is made, not again at
    every start: what a user deleted stays deleted."""
    state_dir = tmp_path / "state"
    async with open_mock_farm(state_dir=state_dir) as farm:
        deadline = farm.boto3_client("deadline")
        association = {"farmId": farm.farm_id, "queueId": farm.queue_id, "fleetId": farm.fleet_id}
        await in_thread(
            deadline.update_queue_fleet_association,
            status="STOP_SCHEDULING_AND_CANCEL_TASKS",
            **association,
        )
        await in_thread(deadline.delete_queue_fleet_association, **association)
    async with open_mock_farm(state_dir=state_dir) as farm:
        deadline = farm.boto3_client("deadline")
        listed = await in_thread(
            deadline.list_queue_fleet_associations, farmId=farm.farm_id, queueId=farm.queue_id
        )
        assert listed["queueFleetAssociations"] == []


async def test_every_kind_of_change_is_stored(tmp_path: Path) -> None:
    """Retries, a failed job, cancels, retargets, dependencies, a stopped and a deleted
    worker: after each phase the farm read back from its state dir equals the one in
    memory, field for field (so no change escapes the store)."""
    state_dir = tmp_path / "state"

    async def phase(step: Callable[[Any, Any], Any]) -> None:
        async with open_mock_farm(state_dir=state_dir) as farm:
            await step(farm, farm.boto3_client("deadline"))
            before = snapshot(farm.state)
        async with open_mock_farm(state_dir=state_dir) as farm:
            assert snapshot(farm.state) == before

    names: dict[str, Any] = {}

    async def failures(farm: Any, client: Any) -> None:
        names["retried"] = farm.create_job(
            job_template(frames="1-3", second_step=True), max_retries_per_task=1
        )
        names["doomed"] = farm.create_job(
            job_template(frames="1-4", job_environments=0), max_failed_tasks_count=1
        )
        worker = names["worker"] = ScriptedWorker(client, farm.farm_id, farm.fleet_id)
        await in_thread(worker.start)
        seen: Counter[str] = Counter()

        def outcome(action: Mapping[str, Any]) -> Mapping[str, Any]:
            [(kind, body)] = action["definition"].items()
            if kind == "taskRun":
                seen[body["taskId"]] += 1
                if seen[body["taskId"]] == 1:
                    return completed("FAILED")
            return completed()

        await in_thread(worker.run, outcome)

    async def retargets(farm: Any, client: Any) -> None:
        worker = names["worker"]
        worker.client = client
        job_id = names["held"] = farm.create_job(job_template(frames="1-6", step_environment=True))
        response = await in_thread(worker.sync)
        [session] = response["assignedSessions"].values()
        first = session["sessionActions"][0]["sessionActionId"]
        await in_thread(worker.sync, {first: {"startedAt": datetime.now(UTC)}})
        job = farm.job(job_id)
        step = job.steps[0]
        ids = {"farmId": farm.farm_id, "queueId": farm.queue_id, "jobId": job_id}
        await in_thread(
            client.update_task,
            targetRunStatus="SUSPENDED",
            stepId=step.step_id,
            taskId=step.tasks[-1].task_id,
            **ids,
        )
        await in_thread(client.update_job, priority=90, name="renamed", **ids)
        farm.cancel_job(names["retried"])
        farm.requeue_job(names["retried"])

    async def stop_request(farm: Any, client: Any) -> None:
        # Alone in its phase: what it assigns is all that changes.
        farm.request_worker_stop(names["worker"].worker_id)

    async def endings(farm: Any, client: Any) -> None:
        worker = names["worker"]
        worker.client = client
        assert farm.worker(worker.worker_id).stop_requested
        await in_thread(worker.run)
        await in_thread(worker.sync)
        await in_thread(client.update_worker, status="STOPPED", **worker.ids)
        second = ScriptedWorker(client, farm.farm_id, farm.fleet_id)
        await in_thread(second.start)
        await in_thread(client.update_worker, status="STOPPED", **second.ids)
        await in_thread(client.delete_worker, **second.ids)

    await phase(failures)
    await phase(retargets)
    await phase(stop_request)
    await phase(endings)
    async with open_mock_farm(state_dir=state_dir) as farm:
        assert farm.job(names["doomed"]).failed
        assert farm.job(names["held"]).name == "renamed"
        assert farm.job(names["held"]).task_counts["SUSPENDED"] == 1
        assert farm.job(names["retried"]).status == "READY"  # requeued; its worker stopped
        assert farm.worker(names["worker"].worker_id).status == "STOPPED"
        assert len(farm.state.workers) == 1


async def test_a_real_worker_carries_on_across_a_farm_restart(tmp_path: Path) -> None:
    """A farmhand worker process runs a task while its farm stops; the farm comes back on
    the same port and state dir; the worker reports to it and the job finishes, with no
    work lost or redone."""
    import socket

    from tests.worker_harness import py, simple_job
    from tests.workerproc import open_worker_process

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state_dir = tmp_path / "state"
    release = tmp_path / "release"
    config = __import__("agent.mockfarm", fromlist=["FarmConfig"]).FarmConfig(
        update_interval_seconds=1
    )

    async def serve(
        stop: trio.Event, done: trio.Event, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        try:
            async with open_mock_farm(config=config, state_dir=state_dir, port=port) as farm:
                task_status.started(farm)
                await stop.wait()
        finally:
            done.set()

    template = simple_job(
        py(
            "import os, time\n"
            "print('waiting', flush=True)\n"
            f"while not os.path.exists({str(release)!r}): time.sleep(0.05)"
        ),
        frames="1-3",
    )
    async with trio.open_nursery() as nursery:
        first_stop, first_done = trio.Event(), trio.Event()
        farm = await nursery.start(serve, first_stop, first_done)
        job_id = farm.create_job(template)
        async with open_worker_process(farm, tmp_path / "worker") as worker:
            job = farm.job(job_id)
            with trio.fail_after(60):
                await farm.wait_until(lambda: job.task_counts["RUNNING"] == 1)
            [session_id] = farm.state.sessions
            first_stop.set()  # the farm goes away while the task runs
            await first_done.wait()
            release.touch()
            second_stop = trio.Event()
            farm = await nursery.start(serve, second_stop, trio.Event())
            with trio.fail_after(120):
                assert await farm.wait_for_job(job_id) == "SUCCEEDED"
            assert worker.returncode is None
            session = farm.state.sessions[session_id]
            with trio.fail_after(60):
                await farm.wait_until(lambda: session.lifecycle_status == "ENDED")
            statuses = [action.status for action in session.actions]
            assert statuses and set(statuses) == {"SUCCEEDED"}, statuses
            runs = [a for s in farm.job(job_id).sessions for a in s.actions if a.kind == "taskRun"]
            assert len(runs) == 3  # each task ran once
            second_stop.set()
