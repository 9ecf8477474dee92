"""The ephemeral CI runner end to end: SSM, S3, SQS, EC2 and CloudWatch Logs in moto's
server on loopback, and a loopback fake of the instance-metadata service (IMDSv2).

Most tests run the runner in this process (``run_ephemeral``); the ones about
signals, exit statuses and outages run ``python -m agent ephemeral``.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import tarfile
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio

from agent import RetriesExhausted
from contrib.ephemeral import (
    BundleCache,
    BundleError,
    BundleRef,
    ConfigError,
    EphemeralSettings,
    JobConfig,
    run_ephemeral,
)
from contrib.ephemeral._bundle import open_s3_client
from contrib.ephemeral._runner import runner_arch
from tests.aws_harness import (
    PY,
    REGION,
    FakeHttp,
    Gate,
    Moto,
    Route,
    agent_process,
    json_route,
    moto_server,
    point_at,
)

TOKEN = "imds-token-123"
TRAP_TERM = (
    "def on_term(*_):\n"
    "    print('got SIGTERM', flush=True)\n"
    "signal.signal(signal.SIGTERM, on_term)\n"
)


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    yield from moto_server()


@pytest.fixture
def aws_env(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> Moto:
    return point_at(moto, monkeypatch)


@attrs.define
class Ci:
    """One test's AWS resources: the config parameter, the queue, the bucket, an instance."""

    moto: Moto
    parameter: str
    queue_url: str
    bucket: str
    instance_id: str

    def put_config(self, **config: Any) -> None:
        document = {"job_id": "ci-1", "termination_queue_url": self.queue_url, **config}
        self.put_text(json.dumps(document))

    def put_text(self, text: str) -> None:
        self.moto.client("ssm").put_parameter(
            Name=self.parameter, Value=text, Type="SecureString", Overwrite=True
        )

    def messages(self) -> list[dict[str, Any]]:
        answer = self.moto.client("sqs").receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        return [json.loads(message["Body"]) for message in answer.get("Messages", [])]

    def only_message(self) -> dict[str, Any]:
        [message] = self.messages()
        return message

    def instance_state(self) -> str:
        answer = self.moto.client("ec2").describe_instances(InstanceIds=[self.instance_id])
        return str(answer["Reservations"][0]["Instances"][0]["State"]["Name"])

    def upload_bundle(self, key: str, files: dict[str, str]) -> BundleRef:
        data = make_tar_gz(files)
        self.moto.client("s3").put_object(Bucket=self.bucket, Key=key, Body=data)
        return BundleRef(self.bucket, key, hashlib.sha256(data).hexdigest())

    def log_lines(self, group: str, stream: str) -> list[str]:
        events = self.moto.client("logs").get_log_events(
            logGroupName=group, logStreamName=stream, startFromHead=True
        )["events"]
        return [event["message"] for event in events]


@pytest.fixture
def ci(aws_env: Moto) -> Ci:
    name = uuid.uuid4().hex[:8]
    queue_url = aws_env.client("sqs").create_queue(QueueName=f"done-{name}")["QueueUrl"]
    bucket = f"tools-{name}"
    aws_env.client("s3").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    reservation = aws_env.client("ec2").run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1
    )
    instance_id = reservation["Instances"][0]["InstanceId"]
    return Ci(aws_env, f"/ci/jobs/{name}", queue_url, bucket, instance_id)


def make_tar_gz(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def imds(instance_id: str) -> dict[str, Route]:
    """An IMDSv2 fake: the instance id only with the session token."""

    def token(request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        assert request.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        return 200, {}, TOKEN.encode()

    def identity(request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            return 401, {}, b""
        return 200, {}, instance_id.encode()

    return {"PUT /latest/api/token": token, "GET /latest/meta-data/instance-id": identity}


def settings(ci: Ci, tmp_path: Path, **changes: Any) -> EphemeralSettings:
    base = EphemeralSettings(
        config_parameter=ci.parameter,
        cache_dir=tmp_path / "cache",
        work_dir=tmp_path / "work",
        grace=5.0,
        retry_seconds=30.0,
        instance_id=ci.instance_id,
    )
    return attrs.evolve(base, **changes)


def agent_args(ci: Ci, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "ephemeral",
        "--config-parameter",
        ci.parameter,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--work-dir",
        str(tmp_path / "work"),
        "--instance-id",
        ci.instance_id,
        "--log-format",
        "json",
        *extra,
    ]


# ----------------------------------------------------------------------- success


async def test_one_job_end_to_end(ci: Ci, tmp_path: Path) -> None:
    """IMDSv2 gives the instance id; the bundle is fetched, verified and unpacked; the job
    runs in it with the config's env; the message goes to SQS; the work directory is
    cleaned and the instance terminated."""
    bundle = ci.upload_bundle(
        "runner-1.tar.gz",
        {"run.sh": '#!/bin/sh\necho "runner says $GREETING from $(basename "$PWD")"\n'},
    )
    ci.put_config(
        command=["./run.sh"],
        env={"GREETING": "hello"},
        bundle={
            "bucket": bundle.bucket,
            "key": bundle.key,
            "sha256": bundle.sha256,
            "directory": "runner",
        },
        log_group="/ci/runners",
    )
    with FakeHttp(imds(ci.instance_id)) as metadata:
        status = await run_ephemeral(
            settings(ci, tmp_path, instance_id=None, imds_endpoint=metadata.url)
        )
    assert status == 0
    message = ci.only_message()
    assert set(message) == {
        "instance_id",
        "job_id",
        "status",
        "exit_code",
        "duration_seconds",
        "started_at",
        "completed_at",
        "error",
    }
    assert message["instance_id"] == ci.instance_id
    assert (message["job_id"], message["status"], message["exit_code"]) == ("ci-1", "success", 0)
    assert message["error"] is None
    assert message["started_at"] <= message["completed_at"]
    assert message["duration_seconds"] >= 0
    lines = ci.log_lines("/ci/runners", f"{ci.instance_id}/ci-1")
    assert "runner says hello from runner" in lines
    assert not (tmp_path / "work").exists()
    assert (tmp_path / "cache" / f"{bundle.sha256}.tar.gz").is_file()
    assert ci.instance_state() in ("shutting-down", "terminated")
    assert [(method, path) for method, path, _ in metadata.seen] == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/instance-id"),
    ]


async def test_template_job_with_parameters(ci: Ci, tmp_path: Path) -> None:
    """A template config runs with its parameters; FARMHAND_JOB_ID is in the environment."""
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "build",
        "parameterDefinitions": [{"name": "Target", "type": "STRING"}],
        "steps": [
            {
                "name": "make",
                "script": {
                    "actions": {
                        "onRun": {
                            "command": PY,
                            "args": [
                                "-c",
                                "import os, sys; print('build', sys.argv[1], os.environ['FARMHAND_JOB_ID'])",
                                "{{Param.Target}}",
                            ],
                        }
                    }
                },
            }
        ],
    }
    ci.put_config(template=template, parameters={"Target": "all"}, log_stream="build-log")
    assert await run_ephemeral(settings(ci, tmp_path, terminate=False)) == 0
    assert ci.only_message()["status"] == "success"
    assert "build all ci-1" in ci.log_lines("/farmhand/ephemeral", "build-log")
    assert ci.instance_state() == "running"


# ----------------------------------------------------------------------- failure, cancel, timeout


async def test_failed_job_is_reported(ci: Ci, tmp_path: Path) -> None:
    """A job that exits 3 is reported as a failure with its exit code; exit status 1."""
    ci.put_config(command=[PY, "-c", "import sys; sys.exit(3)"])
    assert await run_ephemeral(settings(ci, tmp_path, cloudwatch=False)) == 1
    message = ci.only_message()
    assert (message["status"], message["exit_code"], message["error"]) == (
        "failure",
        3,
        "exit code 3",
    )
    assert ci.instance_state() in ("shutting-down", "terminated")


async def test_cancel_parameter_cancels_the_job(ci: Ci, tmp_path: Path) -> None:
    """When the config's cancel_parameter appears, the job is stopped: interrupted, exit 5."""
    gate = Gate(tmp_path)
    cancel = f"{ci.parameter}/cancel"
    ci.put_config(
        command=[PY, "-c", gate.code("time.sleep(600)")],
        cancel_parameter=cancel,
        cancel_poll_seconds=0.2,
    )
    ssm = ci.moto.client("ssm")
    done: list[int] = []
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            done.append(await run_ephemeral(settings(ci, tmp_path)))

        nursery.start_soon(run)
        await gate.wait_started()
        await trio.to_thread.run_sync(
            lambda: ssm.put_parameter(Name=cancel, Value="yes", Type="String")
        )
    assert done == [5]
    message = ci.only_message()
    assert (message["status"], message["exit_code"]) == ("interrupted", None)
    assert message["error"] == f"canceled: SSM parameter {cancel} is set"


async def test_safety_timeout(ci: Ci, tmp_path: Path) -> None:
    """The job is stopped at the safety timeout (counted from the runner's start):
    status timeout, exit 124."""
    gate = Gate(tmp_path)
    ci.put_config(command=[PY, "-c", gate.code("time.sleep(600)")], timeout_minutes=0.05)
    async with trio.open_nursery() as nursery:
        done: list[int] = []

        async def run() -> None:
            done.append(await run_ephemeral(settings(ci, tmp_path, cloudwatch=False)))

        nursery.start_soon(run)
        await gate.wait_started()  # the job did start: the timeout stops it, not its start
    assert done == [124]
    message = ci.only_message()
    assert (message["status"], message["exit_code"]) == ("timeout", None)
    assert message["error"] == "the safety timeout of 0.05 minutes was reached"
    assert message["duration_seconds"] >= 3


async def test_safety_timeout_before_the_job(ci: Ci, tmp_path: Path) -> None:
    """A timeout that passes while the runner is still getting ready is reported as such."""
    ci.put_config(command=["true"], timeout_minutes=0.0001)
    assert await run_ephemeral(settings(ci, tmp_path, cloudwatch=False)) == 124
    message = ci.only_message()
    assert message["status"] == "timeout"
    assert message["error"] == (
        "the safety timeout of 0.0001 minutes was reached before the job started"
    )


async def test_terminate_command_and_no_terminate(ci: Ci, tmp_path: Path) -> None:
    """A configured terminate command replaces TerminateInstances; --no-terminate does neither."""
    marker = tmp_path / "terminated"
    ci.put_config(
        command=["true"], terminate_command=[PY, "-c", f"open({str(marker)!r}, 'w').close()"]
    )
    assert await run_ephemeral(settings(ci, tmp_path, cloudwatch=False)) == 0
    assert marker.exists()
    assert ci.instance_state() == "running"
    marker.unlink()
    ci.messages()
    assert await run_ephemeral(settings(ci, tmp_path, cloudwatch=False, terminate=False)) == 0
    assert not marker.exists()
    assert ci.instance_state() == "running"


# ----------------------------------------------------------------------- bad configuration


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (None, "there is no SSM parameter"),
        ("{not json", "not valid JSON"),
        ('["a"]', "must be a JSON object"),
        ('{"command": ["true"]}', "'job_id' must be a string"),
        ('{"job_id": "j", "comand": ["true"]}', "unknown key 'comand'"),
        ('{"job_id": "j"}', "give exactly one of 'command'"),
        ('{"job_id": "j", "command": "true"}', "'command' must be a non-empty list of strings"),
        (
            '{"job_id": "j", "command": ["true"], "timeout_minutes": 0}',
            "'timeout_minutes' must be more than 0",
        ),
        (
            '{"job_id": "j", "command": ["true"], "bundle": {"bucket": "b", "key": "k", "sha256": "abc"}}',
            "'bundle.sha256' must be 64 hexadecimal digits",
        ),
        (
            '{"job_id": "j", "command": ["true"], "bundle": {"bucket": "b", "key": "k", "sha256": "'
            + "0" * 64
            + '", "directory": "../out"}}',
            "'bundle.directory' must be a relative path",
        ),
        ('{"job_id": "j", "template": {"name": "x"}}', "specificationVersion"),
    ],
)
async def test_bad_configuration_is_reported(
    ci: Ci, tmp_path: Path, text: str | None, error: str
) -> None:
    """A configuration that cannot be used is a failure with a clear error (exit 2), still
    reported (to --queue-url) and still followed by the instance's termination."""
    if text is not None:
        ci.put_text(text)
    status = await run_ephemeral(settings(ci, tmp_path, queue_url=ci.queue_url, cloudwatch=False))
    assert status == 2
    message = ci.only_message()
    assert message["status"] == "failure"
    assert message["error"].startswith("bad configuration: ")
    assert error in message["error"]
    assert ci.instance_state() in ("shutting-down", "terminated")


def test_config_schema_reads_numbers_and_defaults() -> None:
    """The schema keeps exact numbers, lowercases the sha256 and defaults the rest."""
    config = JobConfig.from_json(
        json.dumps(
            {
                "job_id": "j",
                "command": ["x"],
                "timeout_minutes": 1.5,
                "grace_seconds": 0,
                "bundle": {"bucket": "b", "key": "k", "sha256": "AB" * 32},
            }
        ),
        source="test",
    )
    assert (config.timeout_minutes, config.grace_seconds) == (1.5, 0.0)
    assert config.bundle == BundleRef("b", "k", "ab" * 32, "bundle")
    assert config.cancel_poll_seconds == 30.0
    with pytest.raises(ConfigError, match=r"^test: 'env' must be an object of strings$"):
        JobConfig.from_json('{"job_id": "j", "command": ["x"], "env": {"A": 1}}', source="test")


# ----------------------------------------------------------------------- the bundle cache


async def test_bundle_cache_cold_cached_and_corrupted(ci: Ci, tmp_path: Path) -> None:
    """A cold fetch downloads and verifies; a second uses the cache (the object may be
    gone); a corrupted cache entry is fetched again."""
    bundle = ci.upload_bundle("tool.tar.gz", {"tool/bin": "x"})
    cache = BundleCache(open_s3_client(REGION), tmp_path / "cache", retry_seconds=10)
    with structlog.testing.capture_logs() as logs:
        path = await cache.fetch(bundle)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == bundle.sha256
    assert [entry["event"] for entry in logs] == ["bundle.downloaded"]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left

    s3 = ci.moto.client("s3")
    data = s3.get_object(Bucket=ci.bucket, Key="tool.tar.gz")["Body"].read()
    s3.delete_object(Bucket=ci.bucket, Key="tool.tar.gz")
    with structlog.testing.capture_logs() as logs:
        assert await cache.fetch(bundle) == path
    assert [entry["event"] for entry in logs] == ["bundle.cached"]

    s3.put_object(Bucket=ci.bucket, Key="tool.tar.gz", Body=data)
    path.write_bytes(b"torn")
    with structlog.testing.capture_logs() as logs:
        assert await cache.fetch(bundle) == path
    assert [entry["event"] for entry in logs] == ["bundle.cache_corrupt", "bundle.downloaded"]
    assert path.read_bytes() == data


async def test_bundle_with_a_bad_checksum_is_not_used(ci: Ci, tmp_path: Path) -> None:
    """An object whose sha256 is not the configured one is a clear failure; nothing is
    cached, and the job does not run."""
    bundle = ci.upload_bundle("runner.tar.gz", {"run.sh": "#!/bin/sh\necho ran\n"})
    wrong = "0" * 64
    cache = BundleCache(open_s3_client(REGION), tmp_path / "cache", retry_seconds=10)
    with pytest.raises(
        BundleError, match=f"its sha256 is {bundle.sha256}, the job configuration says {wrong}"
    ):
        await cache.fetch(attrs.evolve(bundle, sha256=wrong))
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(BundleError, match="no such object"):
        await cache.fetch(attrs.evolve(bundle, key="missing.tar.gz"))

    ci.put_config(
        command=["./run.sh"],
        bundle={"bucket": bundle.bucket, "key": bundle.key, "sha256": wrong},
    )
    assert await run_ephemeral(settings(ci, tmp_path, cloudwatch=False)) == 2
    message = ci.only_message()
    assert message["status"] == "failure"
    assert message["error"].startswith(
        f"bundle: s3://{bundle.bucket}/runner.tar.gz: its sha256 is "
    )


async def test_bundle_download_retries_then_gives_up(aws_env: Moto, tmp_path: Path) -> None:
    """With S3 unreachable the download retries with backoff, then gives up within its window."""
    s3 = open_s3_client(REGION)
    cache = BundleCache(s3, tmp_path / "cache", retry_seconds=0.5)
    aws_env.stop()
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(RetriesExhausted):
            await cache.fetch(BundleRef("b", "k", "0" * 64))
    finally:
        aws_env.start()
    retries = [entry for entry in logs if entry["event"] == "s3.retry"]
    assert retries
    assert [entry["attempt"] for entry in retries] == list(range(1, len(retries) + 1))


# ----------------------------------------------------------------------- real processes


async def test_sigterm_is_forwarded_and_the_grace_kept(ci: Ci, tmp_path: Path) -> None:
    """SIGTERM reaches the job, which ignores it; after the grace it is killed. The
    message says interrupted and the process exits 143."""
    gate = Gate(tmp_path)
    ci.put_config(
        command=[PY, "-c", gate.code("time.sleep(600)", before=TRAP_TERM)],
        grace_seconds=1,
        log_stream="sig",
    )
    async with agent_process(agent_args(ci, tmp_path), env=ci.moto.env()) as agent:
        await gate.wait_started()
        agent.process.send_signal(signal.SIGTERM)
        assert await agent.wait() == 143
    message = ci.only_message()
    assert (message["status"], message["exit_code"], message["error"]) == (
        "interrupted",
        None,
        "SIGTERM",
    )
    assert json.loads(agent.stdout.decode()) == message
    lines = ci.log_lines("/farmhand/ephemeral", "sig")
    assert "got SIGTERM" in lines
    stopped = agent.find("jobrun.stop_requested")
    assert (stopped["grace"], stopped["status"]) == (1.0, "interrupted")
    assert not (tmp_path / "work").exists()
    assert ci.instance_state() in ("shutting-down", "terminated")


async def test_unreachable_at_start_then_back(ci: Ci, tmp_path: Path) -> None:
    """With AWS down at start the runner retries reading its config with backoff, and runs
    the job once it is back."""
    ci.put_config(command=[PY, "-c", "print('ok')"])
    ci.moto.stop()
    try:
        async with agent_process(
            agent_args(ci, tmp_path, "--no-cloudwatch"), env=ci.moto.env()
        ) as agent:
            retry = await agent.wait_for("ssm.retry")
            assert (retry["operation"], retry["code"]) == ("GetParameter", "TransportError")
            ci.moto.start()
            assert await agent.wait() == 0
    finally:
        if not ci.moto.running:
            ci.moto.start()
    assert ci.only_message()["status"] == "success"


async def test_report_survives_an_outage(ci: Ci, tmp_path: Path) -> None:
    """AWS goes away while the job runs: the termination message is retried until it is
    back, and not lost."""
    gate = Gate(tmp_path)
    ci.put_config(command=[PY, "-c", gate.code("print('done')", wait_for_release=True)])
    try:
        async with agent_process(
            agent_args(ci, tmp_path, "--no-cloudwatch"), env=ci.moto.env()
        ) as agent:
            await gate.wait_started()
            ci.moto.stop()
            await gate.let_go()
            retry = await agent.wait_for("sqs.retry")
            assert retry["operation"] == "SendMessage"
            ci.moto.start()
            assert await agent.wait() == 0
    finally:
        if not ci.moto.running:
            ci.moto.start()
    message = ci.only_message()
    assert (message["status"], message["exit_code"]) == ("success", 0)
    assert "ephemeral.reported" in agent.names()


async def test_report_that_cannot_be_sent_says_so(ci: Ci, tmp_path: Path) -> None:
    """When the message still cannot be sent after --retry-seconds, the log holds the
    whole report, stdout has it, and the process exits 4."""
    gate = Gate(tmp_path)
    ci.put_config(command=[PY, "-c", gate.code("", wait_for_release=True)])
    args = agent_args(ci, tmp_path, "--no-cloudwatch", "--retry-seconds", "1", "--no-terminate")
    try:
        async with agent_process(args, env=ci.moto.env()) as agent:
            await gate.wait_started()
            ci.moto.stop()
            await gate.let_go()
            assert await agent.wait() == 4
    finally:
        ci.moto.start()
    lost = agent.find("ephemeral.report_not_sent")
    assert lost["report"]["status"] == "success"
    assert "gave up after" in lost["why"]
    assert json.loads(agent.stdout.decode()) == lost["report"]
    assert ci.messages() == []


async def test_missing_config_parameter_option(tmp_path: Path) -> None:
    """Without --config-parameter or JOB_CONFIG_PARAMETER the runner refuses to start (2)."""
    async with agent_process(["ephemeral"], env={"JOB_CONFIG_PARAMETER": ""}) as agent:
        assert await agent.wait() == 2
    assert "--config-parameter required" in "\n".join(agent.stderr_lines)


async def test_a_log_that_cannot_be_opened_is_still_reported(
    ci: Ci, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When farmhand itself cannot run the job (an unusable CloudWatch endpoint), the
    orchestrator still hears back and the instance still ends."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "not a url")
    ci.put_config(command=["true"])
    assert await run_ephemeral(settings(ci, tmp_path)) == 1
    message = ci.only_message()
    assert message["status"] == "failure"
    assert "cannot resolve the logs endpoint" in message["error"]
    assert ci.instance_state() in ("shutting-down", "terminated")
    assert not (tmp_path / "work").exists()


# ----------------------------------------------------------------------- runs-fleet

RUNNER_VERSION = "2.999.0"
JIT_TOKEN = "eyJqaXQiOiAic2VjcmV0LWppdC1jb25maWctNzc3In0="


def fake_runner(listing: Path) -> dict[str, str]:
    """A runner tarball whose run.sh behaves as the actions runner does with a JIT
    configuration: it reads it from ACTIONS_RUNNER_INPUT_JITCONFIG (or --jitconfig),
    removes it from its environment, and runs one job step, which records every process
    command line it can see (``listing``) and whether the variable reached it."""
    run_sh = """#!/bin/sh
token="${ACTIONS_RUNNER_INPUT_JITCONFIG:-}"
if [ "${1:-}" = "--jitconfig" ]; then token="$2"; fi
unset ACTIONS_RUNNER_INPUT_JITCONFIG
[ -n "$token" ] || { echo "no jit config"; exit 3; }
echo "jit config received: $(printf %s "$token" | sha256sum | cut -c1-16), args: $#"
trap 'echo "runner got SIGTERM"; exit 0' TERM
./step.sh &
wait $!
"""
    step_sh = f"""#!/bin/sh
for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < "$f" 2>/dev/null; echo; done > {listing}
if env | grep -q ACTIONS_RUNNER_INPUT_; then seen=yes; else seen=no; fi
echo "step saw the token in its environment: $seen"
echo "step runs in $(basename "$PWD") as job $FARMHAND_JOB_ID"
if [ -n "${{HOLD:-}}" ]; then : > "$HOLD"; sleep 600 & wait $!; fi
"""
    return {"run.sh": run_sh, "step.sh": step_sh}


@attrs.define
class GitHub:
    """A fake GitHub releases API on loopback, serving ``tarball`` as the latest runner."""

    http: FakeHttp
    tarball: bytes

    @property
    def asset(self) -> str:
        return f"actions-runner-linux-{runner_arch()}-{RUNNER_VERSION}.tar.gz"

    def downloads(self) -> int:
        return sum(1 for _, path, _ in self.http.seen if path.startswith("/download/"))


@pytest.fixture
def github(tmp_path: Path) -> Iterator[GitHub]:
    tarball = make_tar_gz(fake_runner(tmp_path / "listing.txt"))
    with FakeHttp({}) as http:
        fake = GitHub(http, tarball)
        release = {
            "tag_name": f"v{RUNNER_VERSION}",
            "assets": [
                {"name": "actions-runner-osx-x64-2.999.0.tar.gz", "browser_download_url": "x"},
                {
                    "name": fake.asset,
                    "browser_download_url": f"{http.url}/download/{fake.asset}",
                    "digest": f"sha256:{hashlib.sha256(tarball).hexdigest()}",
                },
            ],
        }
        http.routes["GET /repos/actions/runner/releases/latest"] = json_route(release)
        http.routes[f"GET /download/{fake.asset}"] = lambda _request: (200, {}, tarball)
        yield fake


def runs_fleet_document(job_id: str = "4711") -> dict[str, Any]:
    """runs-fleet's SSM document, as its orchestrator writes it."""
    return {
        "org": "acme",
        "repo": "acme/app",
        "jit_token": JIT_TOKEN,
        "labels": ["runs-fleet=123", "runner=2cpu-linux-arm64"],
        "runner_group": "default",
        "job_id": job_id,
    }


def runs_fleet_environment(ci: Ci, bucket: str, log_group: str) -> dict[str, str]:
    """An instance's environment exactly as runs-fleet's bootstrap sets it (plus the
    endpoint that points AWS at moto)."""
    return {
        "RUNS_FLEET_INSTANCE_ID": ci.instance_id,
        "RUNS_FLEET_SSM_PARAMETER": "/runs-fleet/runners/{instance-id}/config",
        "RUNS_FLEET_LOG_GROUP": log_group,
        "RUNS_FLEET_MAX_RUNTIME": "30",
        "RUNS_FLEET_CONFIG_BUCKET": bucket,
        "RUNS_FLEET_TERMINATION_QUEUE_URL": ci.queue_url,
        **ci.moto.env(),
    }


def new_instance(ci: Ci) -> Ci:
    reservation = ci.moto.client("ec2").run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1
    )
    return attrs.evolve(ci, instance_id=reservation["Instances"][0]["InstanceId"])


async def test_a_runs_fleet_instance_runs_unchanged(ci: Ci, github: GitHub, tmp_path: Path) -> None:
    """runs-fleet's environment and SSM document, unchanged: the runner release is found,
    downloaded and written back to the S3 cache (the next instance takes it from there),
    unpacked, run just in time with the token in its environment only, the runner
    directory cleaned, the message sent and the instance terminated. The token is in no
    log, no CloudWatch stream, no command line the job can see."""
    listing = tmp_path / "listing.txt"
    group = "/runs-fleet/runners"
    cache_key = f"runners/{RUNNER_VERSION}/{runner_arch()}/actions-runner-{RUNNER_VERSION}.tar.gz"
    for round_, instance in enumerate([ci, new_instance(ci)]):
        instance.parameter = f"/runs-fleet/runners/{instance.instance_id}/config"
        instance.put_text(json.dumps(runs_fleet_document(f"47{round_}")))
        env = runs_fleet_environment(instance, ci.bucket, group)
        if round_ == 1:
            # Without it the parameter is runs-fleet's own path for the instance.
            del env["RUNS_FLEET_SSM_PARAMETER"]
        args = ["ephemeral", "--github-api-url", github.http.url, "--log-format", "json"]
        async with agent_process(args, env=env) as agent:
            assert await agent.wait() == 0, agent.stderr_lines[-5:]
        message = instance.only_message()
        assert set(message) == {
            "instance_id",
            "job_id",
            "status",
            "exit_code",
            "duration_seconds",
            "started_at",
            "completed_at",
        }
        assert (message["instance_id"], message["job_id"]) == (instance.instance_id, f"47{round_}")
        assert (message["status"], message["exit_code"]) == ("success", 0)
        assert isinstance(message["duration_seconds"], int)
        lines = instance.log_lines(group, f"{instance.instance_id}/47{round_}")
        digest = hashlib.sha256(JIT_TOKEN.encode()).hexdigest()[:16]
        assert f"jit config received: {digest}, args: 0" in lines
        assert "step saw the token in its environment: no" in lines
        assert f"step runs in actions-runner as job 47{round_}" in lines
        assert not any(JIT_TOKEN in line for line in lines)
        assert not any(JIT_TOKEN in line for line in agent.stderr_lines)
        assert JIT_TOKEN not in agent.stdout.decode()
        listed = listing.read_text()
        assert "step.sh" in listed
        assert JIT_TOKEN not in listed
        assert not await trio.Path(agent.find("ephemeral.cleaned")["work_dir"]).exists()
        assert instance.instance_state() in ("shutting-down", "terminated")
        assert agent.find("ephemeral.running")["timeout"] <= 30 * 60
        if round_ == 0:
            agent.find("runner.cache_written")
        else:
            assert agent.find("runner.cached")["version"] == RUNNER_VERSION
        # Downloaded once: the second instance took the runner from the S3 cache.
        assert github.downloads() == 1
        cached = ci.moto.client("s3").get_object(Bucket=ci.bucket, Key=cache_key)
        assert cached["Body"].read() == github.tarball


async def test_a_runs_fleet_runner_gets_sigterm_with_90_seconds_grace(
    ci: Ci, github: GitHub, tmp_path: Path
) -> None:
    """SIGTERM to the agent is forwarded to the runner, with runs-fleet's 90 s grace;
    the message says interrupted (by SIGTERM) and the instance is terminated."""
    ci.parameter = f"/runs-fleet/runners/{ci.instance_id}/config"
    ci.put_text(json.dumps(runs_fleet_document()))
    gate = Gate(tmp_path)
    env = {
        **runs_fleet_environment(ci, ci.bucket, "/runs-fleet/runners"),
        "HOLD": str(gate.started),
    }
    args = ["ephemeral", "--github-api-url", github.http.url, "--log-format", "json"]
    async with agent_process(args, env=env) as agent:
        await gate.wait_started()
        agent.process.send_signal(signal.SIGTERM)
        assert await agent.wait() == 143
    stopped = agent.find("jobrun.stop_requested")
    assert (stopped["grace"], stopped["status"]) == (90.0, "interrupted")
    message = ci.only_message()
    assert (message["status"], message["interrupted_by"], message["exit_code"]) == (
        "interrupted",
        "SIGTERM",
        -1,
    )
    assert "runner got SIGTERM" in ci.log_lines("/runs-fleet/runners", f"{ci.instance_id}/4711")
    assert ci.instance_state() in ("shutting-down", "terminated")


def test_the_runs_fleet_document_is_read_as_is() -> None:
    """runs-fleet's SSM document parses (jit_token included); the token is in no repr and
    no error; an unknown key is still refused."""
    config = JobConfig.from_json(json.dumps(runs_fleet_document()), source="p")
    assert config.runner is not None
    assert (config.job_id, config.runner.org, config.runner.labels) == (
        "4711",
        "acme",
        ("runs-fleet=123", "runner=2cpu-linux-arm64"),
    )
    assert JIT_TOKEN not in repr(config)
    with pytest.raises(ConfigError, match="unknown key 'jit_tokn'") as raised:
        JobConfig.from_json(json.dumps({**runs_fleet_document(), "jit_tokn": "x"}), source="p")
    assert JIT_TOKEN not in str(raised.value)
    with pytest.raises(ConfigError, match="'jit_token' must be a non-empty string"):
        JobConfig.from_json(json.dumps({**runs_fleet_document(), "jit_token": ""}), source="p")


async def test_a_runner_release_that_cannot_be_had_is_reported(
    ci: Ci, github: GitHub, tmp_path: Path
) -> None:
    """A release without a tarball for this machine: a failure message naming it, nothing
    runs, the instance still ends (exit 2); a tarball whose digest is not the release's
    is not run either."""
    ci.put_text(json.dumps(runs_fleet_document()))
    github.http.routes["GET /repos/actions/runner/releases/latest"] = json_route(
        {"tag_name": "v2.999.0", "assets": []}
    )
    assert (
        await run_ephemeral(
            settings(ci, tmp_path, github_api_url=github.http.url, queue_url=ci.queue_url)
        )
        == 2
    )
    message = ci.only_message()
    assert (message["status"], message["exit_code"]) == ("failure", -1)
    assert message["error"] == f"runner: release v2.999.0 has no asset {github.asset}"
    assert ci.instance_state() in ("shutting-down", "terminated")

    other = new_instance(ci)
    other.put_text(json.dumps(runs_fleet_document()))
    release = {
        "tag_name": "v2.999.0",
        "assets": [
            {
                "name": github.asset,
                "browser_download_url": f"{github.http.url}/download/{github.asset}",
                "digest": "sha256:" + "0" * 64,
            }
        ],
    }
    github.http.routes["GET /repos/actions/runner/releases/latest"] = json_route(release)
    work = tmp_path / "work2"
    status = await run_ephemeral(
        settings(
            other,
            tmp_path,
            github_api_url=github.http.url,
            work_dir=work,
            runner_bucket=ci.bucket,
            queue_url=ci.queue_url,
        )
    )
    assert status == 2
    assert "its sha256 is not the release's" in other.only_message()["error"]
    cache_key = f"runners/{RUNNER_VERSION}/{runner_arch()}/actions-runner-{RUNNER_VERSION}.tar.gz"
    listed = ci.moto.client("s3").list_objects_v2(Bucket=ci.bucket, Prefix=cache_key)
    assert listed.get("KeyCount", 0) == 0
