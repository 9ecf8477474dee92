"""One-shot job records end to end: DynamoDB and CloudWatch Logs in moto's server on loopback.

Most tests run the adapter in this process (``run_oneshot``); the ones about
signals, exit statuses and racing tasks run ``python -m agent oneshot`` as a
real subprocess.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import boto3
import botocore.exceptions
import pytest
import structlog
import trio
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from contrib._aws import open_aws
from contrib.oneshot import JobTable, OneshotSettings, RecordError, run_oneshot
from tests.aws_harness import (
    PY,
    FakeHttp,
    Gate,
    Moto,
    agent_process,
    json_route,
    moto_server,
    point_at,
)

_TO = TypeSerializer()
_FROM = TypeDeserializer()

TRAP_TERM = (
    "def on_term(*_):\n"
    "    print('got SIGTERM', flush=True); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, on_term)\n"
)


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    yield from moto_server()


@pytest.fixture
def aws_env(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> Moto:
    return point_at(moto, monkeypatch)


@pytest.fixture
def table(aws_env: Moto) -> str:
    name = f"jobs-{uuid.uuid4().hex[:8]}"
    aws_env.client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def put_record(moto: Moto, table: str, job_id: str, **attributes: Any) -> None:
    item = {"job_id": job_id, "status": "INITIALIZING", **attributes}
    moto.client("dynamodb").put_item(
        TableName=table, Item={name: _TO.serialize(value) for name, value in item.items()}
    )


def get_record(moto: Moto, table: str, job_id: str) -> dict[str, Any]:
    answer = moto.client("dynamodb").get_item(
        TableName=table, Key={"job_id": {"S": job_id}}, ConsistentRead=True
    )
    return {name: _FROM.deserialize(value) for name, value in answer["Item"].items()}


def log_lines(moto: Moto, record: dict[str, Any]) -> list[str]:
    events = moto.client("logs").get_log_events(
        logGroupName=record["log_group"], logStreamName=record["log_stream"], startFromHead=True
    )["events"]
    return [event["message"] for event in events]


def settings(table: str, job_id: str, tmp_path: Path, **changes: Any) -> OneshotSettings:
    base = OneshotSettings(
        table=table,
        job_id=job_id,
        work_dir=tmp_path / "work",
        grace=5.0,
        heartbeat_interval=0.2,
        retry_seconds=30.0,
        environ={},
    )
    return attrs.evolve(base, **changes)


def py_command(code: str) -> list[str]:
    return [PY, "-c", code]


def agent_args(table: str, job_id: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "oneshot",
        "--table",
        table,
        "--job-id",
        job_id,
        "--work-dir",
        str(tmp_path / "work"),
        "--heartbeat-interval",
        "0.2",
        "--grace",
        "5",
        "--log-format",
        "json",
        *extra,
    ]


# ----------------------------------------------------------------------- success


async def test_command_record_runs_and_succeeds(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """A command record is claimed with the ECS task identity, run, and written SUCCEEDED,
    its output in CloudWatch."""
    put_record(
        aws_env,
        table,
        "job-1",
        command=py_command(
            "import os; print('hello', os.environ['GREETING'], os.environ['JOB_ID'])"
        ),
        env={"GREETING": "world"},
    )
    task = {
        "TaskARN": "arn:aws:ecs:us-west-2:123456789012:task/render/0123abcd",
        "Cluster": "render",
        "Family": "farmhand-job",
        "Revision": "7",
        "AvailabilityZone": "us-west-2b",
        "LaunchType": "FARGATE",
    }
    with FakeHttp({"GET /v4/abc/task": json_route(task)}) as metadata:
        environ = {"ECS_CONTAINER_METADATA_URI_V4": f"{metadata.url}/v4/abc"}
        status = await run_oneshot(settings(table, "job-1", tmp_path, environ=environ))
    assert status == 0
    record = get_record(aws_env, table, "job-1")
    assert record["status"] == "SUCCEEDED"
    assert record["outcome"] == "succeeded"
    assert record["exit_code"] == 0
    assert "error_message" not in record
    assert record["claimed_by"] == task["TaskARN"]
    assert record["task"]["cluster"] == "render"
    assert record["task"]["launch_type"] == "FARGATE"
    for stamp in ("started_at", "completed_at", "updated_at", "heartbeat_at"):
        assert record[stamp].endswith("Z"), stamp
    assert record["started_at"] <= record["completed_at"] == record["updated_at"]
    assert record["duration_seconds"] >= 0
    assert "hello world job-1" in log_lines(aws_env, record)
    assert log_lines(aws_env, record)[-1].startswith("[farmhand] job succeeded")


async def test_template_record_with_parameters(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """An OpenJD template (as text) runs with the record's parameters, numbers included."""
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "greet",
        "parameterDefinitions": [
            {"name": "Who", "type": "STRING"},
            {"name": "Times", "type": "INT"},
        ],
        "steps": [
            {
                "name": "say",
                "script": {
                    "actions": {
                        "onRun": {
                            "command": PY,
                            "args": [
                                "-c",
                                "import sys; print(*(['hi ' + sys.argv[1]] * int(sys.argv[2])))",
                                "{{Param.Who}}",
                                "{{Param.Times}}",
                            ],
                        }
                    }
                },
            }
        ],
    }
    put_record(
        aws_env,
        table,
        "job-t",
        template=json.dumps(template),
        parameters={"Who": "there", "Times": Decimal(2)},
    )
    assert await run_oneshot(settings(table, "job-t", tmp_path)) == 0
    record = get_record(aws_env, table, "job-t")
    assert record["status"] == "SUCCEEDED"
    assert "hi there hi there" in log_lines(aws_env, record)


async def test_collection_record_gets_its_collection_id(
    aws_env: Moto, table: str, tmp_path: Path
) -> None:
    """RUN_COLLECTION runs the task's collection command with the record's COLLECTION_ID."""
    put_record(aws_env, table, "job-c", collection_id="col-42")
    command = f"{PY} -c \"import os; print('collection', os.environ['COLLECTION_ID'])\""
    status = await run_oneshot(
        settings(table, "job-c", tmp_path, run_mode="RUN_COLLECTION", collection_command=command)
    )
    assert status == 0
    record = get_record(aws_env, table, "job-c")
    assert record["status"] == "SUCCEEDED"
    assert "collection col-42" in log_lines(aws_env, record)


async def test_collection_template_gets_the_parameter_from_the_environment(
    aws_env: Moto, table: str, tmp_path: Path
) -> None:
    """A RUN_COLLECTION template that declares CollectionId gets COLLECTION_ID from the task."""
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "collect",
        "parameterDefinitions": [{"name": "CollectionId", "type": "STRING"}],
        "steps": [
            {
                "name": "one",
                "script": {
                    "actions": {
                        "onRun": {
                            "command": PY,
                            "args": [
                                "-c",
                                "import sys; print('got', sys.argv[1])",
                                "{{Param.CollectionId}}",
                            ],
                        }
                    }
                },
            }
        ],
    }
    put_record(aws_env, table, "job-ct", template=template, run_mode="RUN_COLLECTION")
    environ = {"COLLECTION_ID": "col-7"}
    assert await run_oneshot(settings(table, "job-ct", tmp_path, environ=environ)) == 0
    assert "got col-7" in log_lines(aws_env, get_record(aws_env, table, "job-ct"))


# ----------------------------------------------------------------------- failure, cancel, timeout


async def test_failed_command_is_written_failed(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """A command that exits 3 leaves FAILED, exit code 3 and its error; the process exits 1."""
    put_record(
        aws_env, table, "job-f", command=py_command("import sys; print('oops'); sys.exit(3)")
    )
    assert await run_oneshot(settings(table, "job-f", tmp_path, cloudwatch=False)) == 1
    record = get_record(aws_env, table, "job-f")
    assert (record["status"], record["outcome"], record["exit_code"]) == ("FAILED", "failed", 3)
    assert record["error_message"] == "exit code 3"
    assert "log_group" not in record
    spool = next((tmp_path / "work" / "logs").iterdir())
    assert "oops" in spool.read_text()


async def test_cancel_requested_on_the_record(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """Setting cancel_requested cancels the running job: FAILED, outcome canceled, exit 5."""
    gate = Gate(tmp_path)
    put_record(aws_env, table, "job-x", command=py_command(gate.code("time.sleep(600)")))
    client = aws_env.client("dynamodb")

    def request_cancel() -> None:
        client.update_item(
            TableName=table,
            Key={"job_id": {"S": "job-x"}},
            UpdateExpression="SET cancel_requested = :t",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )

    async with trio.open_nursery() as nursery:
        done: list[int] = []

        async def run() -> None:
            done.append(await run_oneshot(settings(table, "job-x", tmp_path)))

        nursery.start_soon(run)
        await gate.wait_started()
        await trio.to_thread.run_sync(request_cancel)
    assert done == [5]
    record = get_record(aws_env, table, "job-x")
    assert (record["status"], record["outcome"]) == ("FAILED", "canceled")
    assert record["error_message"] == "cancel requested on the record"
    assert "exit_code" not in record


async def test_max_runtime_stops_the_job(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """The record's max_runtime_seconds stops the job: FAILED, outcome timeout, exit 124."""
    put_record(
        aws_env,
        table,
        "job-slow",
        command=py_command("import time; time.sleep(600)"),
        max_runtime_seconds=Decimal("0.5"),
    )
    with trio.fail_after(20):
        assert await run_oneshot(settings(table, "job-slow", tmp_path)) == 124
    record = get_record(aws_env, table, "job-slow")
    assert (record["status"], record["outcome"]) == ("FAILED", "timeout")
    assert "maximum runtime of 0.5 s" in record["error_message"]


async def test_record_taken_over_cancels_the_job(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """If someone else moves the record on while the job runs, the job stops and the
    record is left as they wrote it."""
    gate = Gate(tmp_path)
    put_record(aws_env, table, "job-o", command=py_command(gate.code("time.sleep(600)")))
    client = aws_env.client("dynamodb")

    def take_over() -> None:
        client.update_item(
            TableName=table,
            Key={"job_id": {"S": "job-o"}},
            UpdateExpression="SET #s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": "INITIALIZING"}},
        )

    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            done: list[int] = []

            async def run() -> None:
                done.append(await run_oneshot(settings(table, "job-o", tmp_path)))

            nursery.start_soon(run)
            await gate.wait_started()
            await trio.to_thread.run_sync(take_over)
    assert done == [4]
    assert get_record(aws_env, table, "job-o")["status"] == "INITIALIZING"
    events = [entry["event"] for entry in logs]
    assert "oneshot.record_taken" in events
    assert "oneshot.status_not_written" in events


# ----------------------------------------------------------------------- bad records


@pytest.mark.parametrize(
    ("attributes", "mode", "environ", "error"),
    [
        ({"command": ["true"]}, "RUN_EVERYTHING", {}, "unknown run mode 'RUN_EVERYTHING'"),
        (
            {"command": ["true"]},
            "RUN_COLLECTION",
            {},
            "run mode RUN_COLLECTION needs COLLECTION_OWNER or COLLECTION_ID",
        ),
        (
            {"command": ["true"], "collection_id": "a"},
            "RUN_COLLECTION",
            {"COLLECTION_ID": "b"},
            "the record's collection_id 'a' differs from the task's COLLECTION_ID 'b'",
        ),
        ({}, None, {}, "the record has no work"),
        ({"command": "echo hi"}, None, {}, "'command' must be a non-empty list of strings"),
        ({"command": ["true"], "template": "{}"}, None, {}, "both 'command' and 'template'"),
        ({"template": "name: [unclosed"}, None, {}, "'template' is not valid JSON or YAML"),
        ({"template": "{}"}, None, {}, "specificationVersion"),
        ({"command": ["true"], "env": {"A": Decimal(1)}}, None, {}, "'env' must be a map"),
        (
            {"command": ["true"], "max_runtime_seconds": Decimal(0)},
            None,
            {},
            "'max_runtime_seconds' must be a positive number",
        ),
    ],
)
async def test_bad_record_is_failed_with_a_clear_error(
    aws_env: Moto,
    table: str,
    tmp_path: Path,
    attributes: dict[str, Any],
    mode: str | None,
    environ: dict[str, str],
    error: str,
) -> None:
    """A record that cannot be run goes INITIALIZING -> FAILED with the reason; nothing runs."""
    put_record(aws_env, table, "job-bad", **attributes)
    status = await run_oneshot(settings(table, "job-bad", tmp_path, run_mode=mode, environ=environ))
    assert status == 2
    record = get_record(aws_env, table, "job-bad")
    assert record["status"] == "FAILED"
    assert error in record["error_message"]
    assert "started_at" not in record
    assert "attempt_id" not in record


@pytest.mark.parametrize("status", ["RUNNING", "SUCCEEDED", "FAILED"])
async def test_record_not_initializing_is_left_alone(
    aws_env: Moto, table: str, tmp_path: Path, status: str
) -> None:
    """Only an INITIALIZING record runs; any other is left untouched (exit 3)."""
    put_record(aws_env, table, "job-n", status=status, command=["true"], claimed_by="someone")
    with structlog.testing.capture_logs() as logs:
        assert await run_oneshot(settings(table, "job-n", tmp_path)) == 3
    assert get_record(aws_env, table, "job-n") == {
        "job_id": "job-n",
        "status": status,
        "command": ["true"],
        "claimed_by": "someone",
    }
    [entry] = [entry for entry in logs if entry["event"] == "oneshot.not_initializing"]
    assert (entry["status"], entry["claimed_by"]) == (status, "someone")


async def test_missing_record_and_missing_table(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """No such record: exit 3. No such table: exit 2 with DynamoDB's reason."""
    assert await run_oneshot(settings(table, "nope", tmp_path)) == 3
    with structlog.testing.capture_logs() as logs:
        assert await run_oneshot(settings("no-such-table", "nope", tmp_path)) == 2
    [entry] = [entry for entry in logs if entry["event"] == "oneshot.failed"]
    assert "ResourceNotFoundException" in entry["error"]


def test_record_errors_are_one_line() -> None:
    """RecordError is what the record's error_message gets: a plain exception, one line."""
    assert str(RecordError("x")) == "x"


# ----------------------------------------------------------------------- real processes


async def test_two_tasks_never_run_one_record(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """Two processes started for one record: one runs it (exit 0), the other exits 3."""
    ran = tmp_path / "ran.txt"
    put_record(
        aws_env,
        table,
        "job-r",
        command=py_command(f"open({str(ran)!r}, 'a').write('ran\\n')"),
    )
    env = aws_env.env()
    codes: list[int] = []
    async with trio.open_nursery() as nursery:
        for index in range(2):

            async def one(index: int = index) -> None:
                args = agent_args(table, "job-r", tmp_path / str(index), "--no-cloudwatch")
                async with agent_process(args, env=env) as agent:
                    codes.append(await agent.wait())

            nursery.start_soon(one)
    assert sorted(codes) == [0, 3]
    assert ran.read_text() == "ran\n"
    assert get_record(aws_env, table, "job-r")["status"] == "SUCCEEDED"


def test_the_stand_in_applies_conditional_writes_atomically(aws_env: Moto, table: str) -> None:
    """The harness's moto applies a conditional write as DynamoDB does: of claims
    racing on one record, exactly one lands (unlocked, moto let several through,
    which is what failed test_two_tasks_never_run_one_record under load)."""
    racers = 8
    clients = [boto3_client(aws_env) for _ in range(racers)]
    for round_ in range(25):
        job_id = f"job-atomic-{round_}"
        put_record(aws_env, table, job_id, command=["true"])
        barrier = threading.Barrier(racers)

        def claim(index: int, job_id: str = job_id, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            try:
                clients[index].update_item(
                    TableName=table,
                    Key={"job_id": {"S": job_id}},
                    UpdateExpression="SET #s = :r, attempt_id = :a",
                    ConditionExpression="#s = :i",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={
                        ":r": {"S": "RUNNING"},
                        ":i": {"S": "INITIALIZING"},
                        ":a": {"S": str(index)},
                    },
                )
            except botocore.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
                return False
            return True

        with concurrent.futures.ThreadPoolExecutor(racers) as pool:
            won = list(pool.map(claim, range(racers)))
        assert won.count(True) == 1, (round_, won)
        assert get_record(aws_env, table, job_id)["attempt_id"] == str(won.index(True))


def boto3_client(moto: Moto) -> Any:
    """A DynamoDB client of its own (boto3 clients are not shared between threads here)."""
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=moto.url,
        region_name="us-west-2",
        aws_access_key_id="AKIDFARMHANDTEST",
        aws_secret_access_key="farmhand-test-secret",
    )


async def test_sigterm_interrupts_the_job(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """SIGTERM to the agent reaches the job (its handler runs); the record ends FAILED,
    outcome interrupted, and the process exits 143."""
    gate = Gate(tmp_path)
    put_record(
        aws_env, table, "job-s", command=py_command(gate.code("time.sleep(600)", before=TRAP_TERM))
    )
    async with agent_process(agent_args(table, "job-s", tmp_path), env=aws_env.env()) as agent:
        await gate.wait_started()
        agent.process.send_signal(signal.SIGTERM)
        assert await agent.wait() == 143
    record = get_record(aws_env, table, "job-s")
    assert (record["status"], record["outcome"]) == ("FAILED", "interrupted")
    assert record["error_message"] == "SIGTERM"
    assert "got SIGTERM" in log_lines(aws_env, record)


async def test_exit_status_and_environment_variables(
    aws_env: Moto, table: str, tmp_path: Path
) -> None:
    """JOB_TABLE, JOB_ID and RUN_MODE come from the environment; a failed job exits 1."""
    put_record(aws_env, table, "job-e", command=py_command("import sys; sys.exit(9)"))
    env = {**aws_env.env(), "JOB_TABLE": table, "JOB_ID": "job-e", "RUN_MODE": "RUN_SCRIPT"}
    args = ["oneshot", "--work-dir", str(tmp_path), "--log-format", "json", "--no-cloudwatch"]
    async with agent_process(args, env=env) as agent:
        assert await agent.wait() == 1
    assert get_record(aws_env, table, "job-e")["exit_code"] == 9
    async with agent_process(["oneshot"], env={"JOB_TABLE": "", "JOB_ID": ""}) as agent:
        assert await agent.wait() == 2
    assert "--table and --job-id required" in "\n".join(agent.stderr_lines)


# ----------------------------------------------------------------------- unreachable


async def test_table_unreachable_at_start(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """With DynamoDB down at start the agent retries with backoff, then runs the record
    once it is back."""
    put_record(aws_env, table, "job-u", command=py_command("print('finally')"))
    aws_env.stop()
    try:
        async with agent_process(agent_args(table, "job-u", tmp_path), env=aws_env.env()) as agent:
            retry = await agent.wait_for("dynamodb.retry")
            assert retry["operation"] == "GetItem"
            assert retry["code"] == "TransportError"
            aws_env.start()
            assert await agent.wait() == 0
    finally:
        if not aws_env.running:
            aws_env.start()
    record = get_record(aws_env, table, "job-u")
    assert record["status"] == "SUCCEEDED"
    assert "finally" in log_lines(aws_env, record)


async def test_final_status_survives_an_outage(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """DynamoDB goes away while the job runs: the final write retries until it is back,
    and the status is not lost."""
    gate = Gate(tmp_path)
    put_record(
        aws_env,
        table,
        "job-o2",
        command=py_command(gate.code("print('done')", wait_for_release=True)),
    )
    try:
        async with agent_process(agent_args(table, "job-o2", tmp_path), env=aws_env.env()) as agent:
            await gate.wait_started()
            aws_env.stop()
            await gate.let_go()
            retry = await agent.wait_for("dynamodb.retry")
            assert retry["code"] == "TransportError"
            await agent.wait_for("jobrun.ended")
            aws_env.start()
            assert await agent.wait() == 0
    finally:
        if not aws_env.running:
            aws_env.start()
    record = get_record(aws_env, table, "job-o2")
    assert (record["status"], record["exit_code"]) == ("SUCCEEDED", 0)
    assert "done" in log_lines(aws_env, record)


async def test_final_status_that_cannot_land_says_so(
    aws_env: Moto, table: str, tmp_path: Path
) -> None:
    """When the final write still fails after --retry-seconds, the log says what was not
    written and the process exits 4."""
    gate = Gate(tmp_path)
    put_record(
        aws_env,
        table,
        "job-lost",
        command=py_command(gate.code("", wait_for_release=True)),
    )
    args = agent_args(table, "job-lost", tmp_path, "--retry-seconds", "1", "--no-cloudwatch")
    try:
        async with agent_process(args, env=aws_env.env()) as agent:
            await gate.wait_started()
            aws_env.stop()
            await gate.let_go()
            assert await agent.wait() == 4
    finally:
        aws_env.start()
    lost = agent.find("oneshot.status_not_written")
    assert (lost["status"], lost["outcome"], lost["exit_code"]) == ("SUCCEEDED", "succeeded", 0)
    assert "gave up after" in lost["why"]
    assert get_record(aws_env, table, "job-lost")["status"] == "RUNNING"


async def test_sigterm_before_the_claim_leaves_the_record(
    aws_env: Moto, table: str, tmp_path: Path
) -> None:
    """A SIGTERM while the record is still being read ends the process (143) and leaves
    the record INITIALIZING for another task."""
    put_record(aws_env, table, "job-early", command=["true"])
    aws_env.stop()
    try:
        async with agent_process(
            agent_args(table, "job-early", tmp_path), env=aws_env.env()
        ) as agent:
            await agent.wait_for("dynamodb.retry")
            agent.process.send_signal(signal.SIGTERM)
            assert await agent.wait() == 143
    finally:
        aws_env.start()
    assert "oneshot.stopped_before_claim" in agent.names()
    assert get_record(aws_env, table, "job-early")["status"] == "INITIALIZING"


async def test_unreadable_task_metadata_is_a_warning(
    aws_env: Moto, table: str, tmp_path: Path
) -> None:
    """Task metadata that cannot be read does not stop the job; the host and pid name it."""
    put_record(aws_env, table, "job-m", command=["true"])
    with FakeHttp({"GET /task": json_route({"oops": True}, status=500)}) as metadata:
        environ = {"ECS_CONTAINER_METADATA_URI_V4": metadata.url, "AWS_BATCH_JOB_ID": "b-1"}
        with structlog.testing.capture_logs() as logs:
            status = await run_oneshot(
                settings(table, "job-m", tmp_path, environ=environ, cloudwatch=False)
            )
    assert status == 0
    assert [
        entry["attempt"] for entry in logs if entry["event"] == "oneshot.task_metadata_failed"
    ] == [1, 2, 3]
    record = get_record(aws_env, table, "job-m")
    assert record["claimed_by"].endswith(f":{record['task']['pid']}")
    assert record["task"]["batch_job_id"] == "b-1"


# ----------------------------------------------------------------------- the table's writes


async def test_claims_are_exclusive_and_retries_recognised(aws_env: Moto, table: str) -> None:
    """Of two claims on one INITIALIZING record only the first lands; the same claim
    repeated (a retry after a lost answer) counts as landed; so does a repeated finish,
    while another attempt's finish does not land."""
    put_record(aws_env, table, "job-c2", command=["true"])
    async with open_aws(["dynamodb"], retry_seconds=5) as aws:
        jobs = JobTable(aws.client("dynamodb"), table)
        claim = partial(
            jobs.claim, "job-c2", claimed_by="t", task={}, now="2026-01-01T00:00:00.000Z"
        )
        assert (await claim(attempt_id="a")).claimed
        lost = await claim(attempt_id="b")
        assert not lost.claimed
        assert lost.record is not None
        assert (lost.record.status, lost.record.attempt_id) == ("RUNNING", "a")
        assert (await claim(attempt_id="a")).claimed
        fields = {"completed_at": "2026-01-01T00:00:01.000Z", "exit_code": 0, "error_message": None}
        assert not await jobs.finish("job-c2", "b", status="SUCCEEDED", fields=fields)
        assert await jobs.finish("job-c2", "a", status="SUCCEEDED", fields=fields)
        assert await jobs.finish("job-c2", "a", status="SUCCEEDED", fields=fields)
        assert not (await jobs.heartbeat("job-c2", "a", now="x")).ours
    record = get_record(aws_env, table, "job-c2")
    assert (record["status"], record["attempt_id"], record["exit_code"]) == ("SUCCEEDED", "a", 0)


async def test_a_log_that_cannot_be_opened_still_ends_the_record(
    aws_env: Moto, table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When farmhand itself cannot run a claimed job (here: an unusable CloudWatch
    endpoint), the record does not stay RUNNING: it ends FAILED with the reason."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "not a url")
    put_record(aws_env, table, "job-nolog", command=["true"])
    assert await run_oneshot(settings(table, "job-nolog", tmp_path)) == 1
    record = get_record(aws_env, table, "job-nolog")
    assert record["status"] == "FAILED"
    assert "farmhand could not run the job" in record["error_message"]
    assert "cannot resolve the logs endpoint" in record["error_message"]


async def test_record_without_a_status_is_left_alone(
    aws_env: Moto, table: str, tmp_path: Path
) -> None:
    """A record with no status (or one that is not a string) is not run (exit 3)."""
    aws_env.client("dynamodb").put_item(
        TableName=table, Item={"job_id": {"S": "job-ns"}, "command": {"L": [{"S": "true"}]}}
    )
    assert await run_oneshot(settings(table, "job-ns", tmp_path)) == 3
    assert get_record(aws_env, table, "job-ns") == {"job_id": "job-ns", "command": ["true"]}


# ----------------------------------------------------------------------- plus-worker


def plus_worker_table(moto: Moto) -> str:
    """A table as plus-worker's: records keyed by ``object_id``."""
    name = f"plus-jobs-{uuid.uuid4().hex[:8]}"
    moto.client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "object_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "object_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def put_plus_record(moto: Moto, table: str, object_id: str, **attributes: Any) -> None:
    item = {"object_id": object_id, "status": "INITIALIZING", **attributes}
    moto.client("dynamodb").put_item(
        TableName=table, Item={name: _TO.serialize(value) for name, value in item.items()}
    )


def get_plus_record(moto: Moto, table: str, object_id: str) -> dict[str, Any]:
    answer = moto.client("dynamodb").get_item(
        TableName=table, Key={"object_id": {"S": object_id}}, ConsistentRead=True
    )
    return {name: _FROM.deserialize(value) for name, value in answer["Item"].items()}


#: The job of the plus-worker test: it reads its own record while it runs (the
#: task's ACCESS_KEY/SECRET_KEY and REGION are all it has) and prints what it sees.
PLUS_JOB = """
import os, boto3
ddb = boto3.client("dynamodb", region_name=os.environ["REGION"],
                   aws_access_key_id=os.environ["ACCESS_KEY"],
                   aws_secret_access_key=os.environ["SECRET_KEY"])
item = ddb.get_item(TableName=os.environ["DYNAMO_TABLE"], ConsistentRead=True,
                    Key={"object_id": {"S": os.environ["JOB_ID"]}})["Item"]
print("while running:", item["status"]["S"], item["fargate_task_arn"]["S"], item["started_at"]["S"])
print("collection:", os.environ["COLLECTION_OWNER"], os.environ["COLLECTION_ID"])
print("user:", os.environ["USERNAME"], os.environ["PRIMARY_BUCKET"], os.environ["DYNAMO_STREAMS_TABLE"])
"""

TASK_ARN = "arn:aws:ecs:us-west-2:123456789012:task/plus-worker-cluster/0123456789abcdef"


def plus_worker_environment(moto: Moto, table: str, metadata_url: str) -> dict[str, str]:
    """The task definition's environment exactly as plus-worker's README gives it (plus
    the endpoint that points AWS at moto, and the metadata URI ECS itself sets)."""
    return {
        "RUN_MODE": "RUN_COLLECTION",
        "JOB_ID": "host/alice/job.0001",
        "USERNAME": "alice",
        "REGION": "us-west-2",
        "ACCESS_KEY": "AKIDPLUSWORKER",
        "SECRET_KEY": "plus-worker-secret",
        "DYNAMO_TABLE": table,
        "DYNAMO_STREAMS_TABLE": "plus-streams",
        "PRIMARY_BUCKET": "plus-files",
        "COLLECTION_OWNER": "alice/collection.photos",
        "ECS_CONTAINER_METADATA_URI_V4": metadata_url,
        "AWS_ENDPOINT_URL": moto.url,
    }


#: What farmhand must find without: the AWS SDK's own names for region and keys.
NOT_IN_PLUS_WORKER = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "JOB_TABLE",
)


async def test_a_plus_worker_task_definition_runs_unchanged(aws_env: Moto, tmp_path: Path) -> None:
    """plus-worker's documented environment, unchanged, with `python -m agent oneshot`:
    the record (keyed object_id) goes INITIALIZING -> RUNNING with started_at and
    fargate_task_arn from the task metadata -> SUCCEEDED with completed_at and
    updated_at; the job sees the collection and the deployment's variables."""
    table = plus_worker_table(aws_env)
    put_plus_record(aws_env, table, "host/alice/job.0001", command=py_command(PLUS_JOB))
    task = {"TaskARN": TASK_ARN, "Cluster": "plus-worker-cluster", "LaunchType": "FARGATE"}
    with FakeHttp({"GET /task": json_route(task)}) as metadata:
        env = plus_worker_environment(aws_env, table, metadata.url)
        async with agent_process(
            ["oneshot", "--work-dir", str(tmp_path / "work"), "--log-format", "json"],
            env=env,
            unset=NOT_IN_PLUS_WORKER,
        ) as agent:
            assert await agent.wait() == 0, agent.stderr_lines[-5:]
    record = get_plus_record(aws_env, table, "host/alice/job.0001")
    assert record["status"] == "SUCCEEDED"
    assert record["fargate_task_arn"] == TASK_ARN
    assert record["started_at"] <= record["completed_at"] == record["updated_at"]
    lines = log_lines(aws_env, record)
    assert f"while running: RUNNING {TASK_ARN} {record['started_at']}" in lines
    assert "collection: alice/collection.photos alice/collection.photos" in lines
    assert "user: alice plus-files plus-streams" in lines
    assert not any("plus-worker-secret" in line for line in agent.stderr_lines)


@pytest.mark.parametrize(
    ("missing", "extra", "error"),
    [
        ("PRIMARY_BUCKET", {}, "missing required environment variable PRIMARY_BUCKET"),
        (
            "COLLECTION_OWNER",
            {},
            "run mode RUN_COLLECTION needs COLLECTION_OWNER",
        ),
        (
            "ACTION_ID",
            {"RUN_MODE": "RUN_ACTION"},
            "run mode RUN_ACTION needs ACTION_ID",
        ),
        (
            None,
            {"RUN_MODE": "RUN_ACTION", "ACTION_ID": "resize"},
            "run mode RUN_ACTION is not supported without an action runner",
        ),
    ],
)
async def test_a_plus_worker_variable_missing_is_on_the_record(
    aws_env: Moto, tmp_path: Path, missing: str | None, extra: dict[str, str], error: str
) -> None:
    """A variable the run mode needs and the task lacks: a clear error in the log and
    on the record (FAILED, error_message), nothing runs, exit 2."""
    table = plus_worker_table(aws_env)
    ran = tmp_path / "ran"
    put_plus_record(
        aws_env,
        table,
        "host/alice/job.0001",
        command=py_command(f"open({str(ran)!r}, 'w').close()"),
    )
    env = {**plus_worker_environment(aws_env, table, ""), **extra}
    env.pop("ECS_CONTAINER_METADATA_URI_V4")
    args = ["oneshot", "--work-dir", str(tmp_path / "work"), "--log-format", "json"]
    async with agent_process(
        args, env=env, unset=(*NOT_IN_PLUS_WORKER, *([missing] if missing else []))
    ) as agent:
        assert await agent.wait() == 2
    assert error in agent.find("oneshot.invalid_record")["error"]
    record = get_plus_record(aws_env, table, "host/alice/job.0001")
    assert record["status"] == "FAILED"
    assert error in record["error_message"]
    assert "completed_at" in record
    assert not ran.exists()


async def test_a_plus_worker_task_without_its_table_says_so(tmp_path: Path) -> None:
    """Without DYNAMO_TABLE (or JOB_ID) no record can be reached: the log says which, exit 2."""
    async with agent_process(
        ["oneshot"],
        env={"JOB_ID": "j", "RUN_MODE": "RUN_SCRIPT"},
        unset=("DYNAMO_TABLE", "JOB_TABLE"),
    ) as agent:
        assert await agent.wait() == 2
    assert "--table required (or DYNAMO_TABLE / JOB_TABLE and JOB_ID)" in "\n".join(
        agent.stderr_lines
    )


async def test_run_action_with_an_action_runner(aws_env: Moto, table: str, tmp_path: Path) -> None:
    """RUN_ACTION runs the task's action runner with ACTION_ID in its environment."""
    put_record(aws_env, table, "job-act", action_id="resize")
    code = "import os; print('action', os.environ['ACTION_ID'])"
    status = await run_oneshot(
        settings(
            table,
            "job-act",
            tmp_path,
            run_mode="RUN_ACTION",
            action_command=f"{PY} -c {json.dumps(code)}",
        )
    )
    assert status == 0
    record = get_record(aws_env, table, "job-act")
    assert record["status"] == "SUCCEEDED"
    assert "action resize" in log_lines(aws_env, record)


async def test_plus_worker_keys_come_in_pairs() -> None:
    """ACCESS_KEY without SECRET_KEY is a clear error naming both, exit 2."""
    env = {"DYNAMO_TABLE": "t", "JOB_ID": "j", "ACCESS_KEY": "AKIDPLUSWORKER"}
    async with agent_process(["oneshot"], env=env, unset=("SECRET_KEY",)) as agent:
        assert await agent.wait() == 2
    assert "ACCESS_KEY is set but SECRET_KEY is not" in "\n".join(agent.stderr_lines)
