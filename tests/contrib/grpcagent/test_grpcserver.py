"""The gRPC CI agent (contrib/grpcagent) driven by a real gRPC client over loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contrib.grpcagent import ci_agent_pb2 as pb
from tests.grpcagent_harness import Client, Fifo, config_for, running_agent
from tests.tls_harness import certificates

PY = sys.executable
ROOT = Path(__file__).resolve().parents[3]


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ running


async def test_output_arrives_while_the_job_runs(tmp_path: Path) -> None:
    """Lines come as printed (the first while the job still blocks on a pipe); then
    FINISHED with exit code 0; the job sees the request's variables, not the agent's."""
    gate = Fifo(tmp_path)
    os.environ["FARMHAND_AGENT_ONLY"] = "agent secret"
    try:
        async with running_agent(config_for(tmp_path)) as served:
            client = Client.connect(served.port)
            script = (
                f'echo "first $GREETING"; {gate.wait_line}; '
                'echo "second ${FARMHAND_AGENT_ONLY-unset}"'
            )
            async with client.run(job_id="j1", command=sh(script), env={"GREETING": "hi"}) as ev:
                accepted = await ev.until("accepted")
                assert accepted.accepted.job_id == "j1"
                await ev.until("output", "first hi")
                assert "second unset" not in ev.lines()
                await gate.release()
                await ev.rest()
            client.close()
    finally:
        del os.environ["FARMHAND_AGENT_ONLY"]
    lines = ev.lines("run")
    assert lines.index("first hi") < lines.index("second unset")
    finished = ev.final().finished
    assert finished.status == pb.Finished.SUCCEEDED
    assert finished.HasField("exit_code") and finished.exit_code == 0
    assert not finished.HasField("signal") and not finished.error
    assert finished.started_at.endswith("Z") and finished.duration_seconds > 0
    assert finished.log.uri.startswith("file://")
    log_text = (tmp_path / "work/logs/j1.log").read_text()
    assert finished.log.uri == (tmp_path / "work/logs/j1.log").as_uri()
    assert "first hi\n" in log_text and "second unset\n" in log_text


async def test_exit_codes_signals_progress_and_secrets(tmp_path: Path) -> None:
    """An exit code, a signal, progress lines and masked secrets reach the client."""
    async with running_agent(config_for(tmp_path)) as served:
        client = Client.connect(served.port)
        failed = await client.run_all(
            job_id="fails",
            command=sh("echo openjd_progress: 40; echo token=$TOKEN; exit 3"),
            env={"TOKEN": "s3cr3t-value"},
            secrets=["s3cr3t-value"],
        )
        killed = await client.run_all(job_id="killed", command=sh("kill -KILL $$"))
        client.close()
    finished = failed.final().finished
    assert (finished.status, finished.exit_code, finished.error) == (
        pb.Finished.FAILED,
        3,
        "exit code 3",
    )
    assert [e.progress.percent for e in failed.seen if e.HasField("progress")] == [40.0]
    assert not any("s3cr3t-value" in line for line in failed.lines())
    assert any(line.startswith("token=") for line in failed.lines())
    finished = killed.final().finished
    assert finished.status == pb.Finished.FAILED
    assert finished.signal == signal.SIGKILL and not finished.HasField("exit_code")
    assert finished.error == "killed by SIGKILL"


async def test_a_bad_request_is_an_invalid_argument(tmp_path: Path) -> None:
    """An unsafe job id or an empty command is refused with INVALID_ARGUMENT and a reason."""
    async with running_agent(config_for(tmp_path)) as served:
        client = Client.connect(served.port)
        for fields, message in (
            ({"job_id": "../etc", "command": ["true"]}, "job_id '../etc' is not a safe id"),
            ({"job_id": "ok"}, "command: a program to run is required"),
            ({"job_id": "ok", "command": ["true"], "artifacts": ["../x"]}, "artifacts: '../x'"),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                await client.run_all(**fields)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (raised.value.details() or "")
        client.close()


# ------------------------------------------------------------------ stopping


async def test_cancel_stops_the_process_tree_cooperatively_first(tmp_path: Path) -> None:
    """Cancel by id: the job gets SIGTERM (its trap runs), its child goes too, the stream
    ends CANCELED; an unknown id is not found."""
    gate = Fifo(tmp_path)
    script = (
        "sleep 300 & echo child=$!; "
        "trap 'echo got TERM; kill $CHILD; exit 143' TERM; CHILD=$!; "
        f"echo ready; {gate.wait_line}"
    )
    async with running_agent(config_for(tmp_path)) as served:
        client = Client.connect(served.port)
        async with client.run(job_id="long", command=sh(script)) as ev:
            await ev.until("output", "ready")
            child = int(next(line for line in ev.lines() if line.startswith("child="))[6:])
            assert not pid_gone(child)
            assert await client.cancel("long", grace=10)
            await ev.rest()
        assert not await client.cancel("nothing-here")
        client.close()
    finished = ev.final().finished
    assert finished.status == pb.Finished.CANCELED
    assert finished.error == "canceled by the server"
    assert "got TERM" in ev.lines()
    assert pid_gone(child)


async def test_a_client_that_goes_away_cancels_its_job(tmp_path: Path) -> None:
    """The stream is dropped mid-job: the job is canceled and nothing of it is left."""
    gate = Fifo(tmp_path)
    async with running_agent(config_for(tmp_path)) as served:
        client = Client.connect(served.port)
        async with client.run(
            job_id="orphan", command=sh(f"sleep 300 & echo child=$!; echo ready; {gate.wait_line}")
        ) as ev:
            await ev.until("output", "ready")
            shell = _pid_of_job(tmp_path, "orphan")
        # Leaving the block cancels the call: the client is gone.
        with trio.fail_after(30):
            await served.agent.wait_until(lambda s: not s.running_jobs)
        client.close()
    child = int(next(line for line in ev.lines() if line.startswith("child="))[6:])
    assert pid_gone(child) and pid_gone(shell)
    assert "the client went away" in (tmp_path / "work/logs/orphan.log").read_text()


async def test_keep_running_after_the_client_goes_away(tmp_path: Path) -> None:
    """With KEEP_RUNNING the job runs to its end without its client; its log is kept."""
    gate = Fifo(tmp_path)
    async with running_agent(config_for(tmp_path)) as served:
        client = Client.connect(served.port)
        async with client.run(
            job_id="kept",
            command=sh(f"echo ready; {gate.wait_line}; echo done after the client"),
            on_disconnect=pb.KEEP_RUNNING,
        ) as ev:
            await ev.until("output", "ready")
        await trio.testing.wait_all_tasks_blocked()
        assert served.agent.statistics().running_jobs == ("kept",)
        await gate.release()
        with trio.fail_after(30):
            await served.agent.wait_until(lambda s: not s.running_jobs and s.finished == 1)
        client.close()
    log_text = (tmp_path / "work/logs/kept.log").read_text()
    assert "done after the client" in log_text and "job succeeded" in log_text


def _pid_of_job(tmp_path: Path, job_id: str) -> int:
    """The job's shell: the process whose working directory is the job's directory."""
    directory = str(tmp_path / "work" / "jobs" / job_id)
    for process in psutil.process_iter(["cwd", "name"]):
        if process.info["cwd"] == directory and process.info["name"] == "sh":
            return int(process.pid)
    raise AssertionError(f"no process runs in {directory}")


async def test_stopping_finishes_running_jobs_takes_no_new_one_and_says_not_serving(
    tmp_path: Path,
) -> None:
    """A finish request (SIGUSR1): health turns NOT_SERVING, a new job is REJECTED
    (STOPPING), the running one runs to its end and its client gets FINISHED."""
    gate = Fifo(tmp_path)
    async with running_agent(config_for(tmp_path)) as served:
        client = Client.connect(served.port)
        health = health_pb2_grpc.HealthStub(client.channel)
        request = health_pb2.HealthCheckRequest(service="farmhand.ci.v1.CiAgent")
        watch = health.Watch(request)  # type: ignore[attr-defined]  # the stub declares none
        try:
            # Abandoned on cancel only; watch.cancel() below ends the thread's wait.
            first = await trio.to_thread.run_sync(next, watch, abandon_on_cancel=True)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            script = f"echo ready; {gate.wait_line}; echo finished anyway"
            async with client.run(job_id="last", command=sh(script)) as ev:
                await ev.until("output", "ready")
                served.agent.shutdown.finish("the test asks")
                second = await trio.to_thread.run_sync(next, watch, abandon_on_cancel=True)
                assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
                late = await client.run_all(job_id="late", command=["true"])
                assert late.final().rejected.reason == pb.Rejected.STOPPING
                assert (await client.capacity()).accepting is False
                await gate.release()
                await ev.rest()
        finally:
            watch.cancel()
        client.close()
    assert ev.final().finished.status == pb.Finished.SUCCEEDED
    assert "finished anyway" in ev.lines()


# ------------------------------------------------------------------ rejecting


async def test_rejected_by_requirements_then_accepted_once_the_tool_is_installed(
    tmp_path: Path,
) -> None:
    """Unmet tool, label and disk requirements are all named in one REJECTED; once the tool
    is installed (its version command answers), the same job is accepted."""
    version = tmp_path / "xcode-version"
    version.write_text("Xcode 14.3\n")
    config = config_for(tmp_path, tools={"xcode": f"cat {version}"}, labels=frozenset({"macos"}))
    needs = pb.Requirements(
        tools={"xcode": ">=15.2"}, labels=["macos", "arm64"], min_free_disk_bytes=2**62
    )
    async with running_agent(config) as served:
        client = Client.connect(served.port)
        capacity = await client.capacity()
        assert [(t.name, t.version) for t in capacity.tools] == [("xcode", "14.3")]
        ev = await client.run_all(job_id="ios", command=["true"], requirements=needs)
        [event] = ev.seen
        assert event.rejected.reason == pb.Rejected.REQUIREMENTS
        assert event.rejected.message.startswith(
            "tool xcode is version 14.3, the job needs >=15.2; "
            "this agent lacks the label(s) arm64; "
        )
        assert "bytes free on the work disk, the job needs 4611686018427387904" in (
            event.rejected.message
        )
        version.write_text("Xcode 15.2\nBuild version 15C500b\n")
        ev = await client.run_all(
            job_id="ios", command=["true"], requirements=pb.Requirements(tools={"xcode": ">=15.2"})
        )
        assert ev.final().finished.status == pb.Finished.SUCCEEDED
        assert served.agent.statistics().rejected == 1
        client.close()


async def test_a_preparation_step_can_reject_the_job(tmp_path: Path) -> None:
    """prepare exits with cannot_run_status: REJECTED (PREPARATION), the lane never runs;
    any other failure of prepare is a FAILED job."""
    async with running_agent(config_for(tmp_path)) as served:
        client = Client.connect(served.port)
        cannot = await client.run_all(
            job_id="p1",
            prepare=sh("echo Xcode 15.2 is not installed; exit 75"),
            command=sh("echo lane ran"),
        )
        broken = await client.run_all(
            job_id="p2",
            prepare=sh("echo checkout failed; exit 1"),
            command=sh("echo lane ran"),
        )
        custom = await client.run_all(
            job_id="p3", prepare=sh("exit 9"), cannot_run_status=9, command=["true"]
        )
        client.close()
    kinds = [e.WhichOneof("event") for e in cannot.seen]
    assert kinds[0] == "accepted" and kinds[-1] == "rejected"
    rejected = cannot.final().rejected
    assert rejected.reason == pb.Rejected.PREPARATION
    assert rejected.message == (
        "the preparation step cannot run here now (exit status 75): Xcode 15.2 is not installed"
    )
    assert "Xcode 15.2 is not installed" in cannot.lines("prepare")
    assert "lane ran" not in cannot.lines()
    finished = broken.final().finished
    assert (finished.status, finished.exit_code) == (pb.Finished.FAILED, 1)
    assert finished.error == "preparation: exit code 1"
    assert "lane ran" not in broken.lines()
    assert custom.final().rejected.reason == pb.Rejected.PREPARATION


async def test_over_capacity_is_rejected_never_queued(tmp_path: Path) -> None:
    """With every slot busy a new job is REJECTED (CAPACITY) at once, as is a second run of
    a running id; Capacity shows the running job; once it ends the slot is free."""
    gate = Fifo(tmp_path)
    async with running_agent(config_for(tmp_path, slots=1)) as served:
        client = Client.connect(served.port)
        async with client.run(job_id="busy", command=sh(f"echo ready; {gate.wait_line}")) as ev:
            await ev.until("output", "ready")
            capacity = await client.capacity()
            assert (capacity.slots, capacity.free_slots) == (1, 0)
            assert list(capacity.running_jobs) == ["busy"] and capacity.accepting
            other = await client.run_all(job_id="other", command=["true"])
            assert other.final().rejected.reason == pb.Rejected.CAPACITY
            assert other.final().rejected.message == "no free slot: 1 of 1 in use"
            again = await client.run_all(job_id="busy", command=["true"])
            assert again.final().rejected.reason == pb.Rejected.DUPLICATE
            await gate.release()
            await ev.rest()
        capacity = await client.capacity()
        assert (capacity.free_slots, list(capacity.running_jobs)) == (1, [])
        client.close()


# ------------------------------------------------------------------ storage


async def test_artifacts_and_the_log_are_uploaded_to_s3(tmp_path: Path) -> None:
    """Named artifacts and the raw log land under PREFIX<job_id>/ in S3 (moto on loopback);
    a pattern matching nothing is reported, not hidden."""
    from tests.aws_harness import Moto

    moto = Moto()
    moto.start()
    try:
        s3 = moto.client("s3")
        s3.create_bucket(
            Bucket="ci-out", CreateBucketConfiguration={"LocationConstraint": "us-west-2"}
        )
        config = config_for(tmp_path, bucket="ci-out", prefix="builds/", s3_endpoint_url=moto.url)
        script = "mkdir -p out/sub; echo A > out/a.txt; echo C > out/sub/c.txt; echo built"
        async with running_agent(config) as served:
            client = Client.connect(served.port)
            ev = await client.run_all(
                job_id="b7", command=sh(script), artifacts=["out/**/*.txt", "missing.ipa"]
            )
            client.close()
        finished = ev.final().finished
        assert finished.status == pb.Finished.SUCCEEDED
        assert finished.log.uri == "s3://ci-out/builds/b7/log.txt" and not finished.log.error
        uploads = [(a.path, a.uri, a.error) for a in finished.artifacts]
        assert uploads == [
            ("out/a.txt", "s3://ci-out/builds/b7/artifacts/out/a.txt", ""),
            ("out/sub/c.txt", "s3://ci-out/builds/b7/artifacts/out/sub/c.txt", ""),
            ("missing.ipa", "", "no file matches"),
        ]
        assert finished.upload_failed
        body = s3.get_object(Bucket="ci-out", Key="builds/b7/artifacts/out/sub/c.txt")["Body"]
        assert body.read() == b"C\n"
        log_text = s3.get_object(Bucket="ci-out", Key="builds/b7/log.txt")["Body"].read()
        assert b"built\n" in log_text
    finally:
        moto.stop()


async def test_a_failed_upload_is_reported(tmp_path: Path) -> None:
    """The bucket does not exist: the job still finishes, with the upload's error."""
    from tests.aws_harness import Moto

    moto = Moto()
    moto.start()
    try:
        config = config_for(tmp_path, bucket="no-such-bucket", s3_endpoint_url=moto.url)
        async with running_agent(config) as served:
            client = Client.connect(served.port)
            ev = await client.run_all(job_id="b8", command=["true"])
            client.close()
    finally:
        moto.stop()
    finished = ev.final().finished
    assert finished.status == pb.Finished.SUCCEEDED and finished.upload_failed
    assert finished.log.uri == "s3://no-such-bucket/b8/log.txt"
    assert "NoSuchBucket" in finished.log.error


# ------------------------------------------------------------------ security


async def test_a_token_is_required_when_configured(tmp_path: Path) -> None:
    """Without the bearer token calls are UNAUTHENTICATED; with it they work; the health
    check answers either way."""
    async with running_agent(config_for(tmp_path, token="t0ps3cret")) as served:
        anonymous = Client.connect(served.port)
        with pytest.raises(grpc.RpcError) as raised:
            await anonymous.capacity()
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as raised:
            await anonymous.run_all(job_id="x", command=["true"])
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wrong = Client.connect(served.port, metadata=[("authorization", "Bearer nope")])
        with pytest.raises(grpc.RpcError):
            await wrong.capacity()
        client = Client.connect(served.port, metadata=[("authorization", "Bearer t0ps3cret")])
        assert (await client.capacity()).slots == 1
        health = health_pb2_grpc.HealthStub(anonymous.channel)
        request = health_pb2.HealthCheckRequest(service="farmhand.ci.v1.CiAgent")
        # types-grpcio-health-checking's HealthStub declares no methods.
        answer = await trio.to_thread.run_sync(lambda: health.Check(request))  # type: ignore[attr-defined]
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        for each in (anonymous, wrong, client):
            each.close()


async def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    """With a client CA configured, a TLS client without a certificate cannot call; one
    with a certificate the CA signed can."""
    certs = certificates(tmp_path)
    config = config_for(
        tmp_path,
        tls_cert=certs["server"],
        tls_key=certs["server_key"],
        tls_client_ca=certs["ca"],
    )
    ca = certs["ca"].read_bytes()
    async with running_agent(config) as served:
        address = f"127.0.0.1:{served.port}"
        without = Client(grpc.secure_channel(address, grpc.ssl_channel_credentials(ca)))
        with pytest.raises(grpc.RpcError) as raised:
            await without.capacity()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        credentials = grpc.ssl_channel_credentials(
            ca, certs["client_key"].read_bytes(), certs["client"].read_bytes()
        )
        client = Client(grpc.secure_channel(address, credentials))
        assert (await client.capacity()).slots == 1
        ev = await client.run_all(job_id="tls", command=sh("echo over mTLS"))
        assert "over mTLS" in ev.lines()
        without.close()
        client.close()


def test_listening_beyond_loopback_needs_tls_or_a_token(tmp_path: Path) -> None:
    """`grpc serve --host 0.0.0.0` refuses to start without mutual TLS or a token (exit 2,
    one line), unless --insecure."""
    command = [PY, "-m", "agent", "grpc", "serve", "--work-dir", str(tmp_path), "--host", "0.0.0.0"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(
        "python -m agent grpc serve: refusing to listen on 0.0.0.0: anyone who reaches it"
    )
    assert result.stderr.count("\n") == 1
    import argparse

    from contrib.grpcagent import ConfigError, load_config
    from contrib.grpcagent._cmd_grpc import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    for extra in (["--insecure"], ["--token-file", str(token_file)]):
        args = parser.parse_args(
            ["serve", "--work-dir", str(tmp_path), "--host", "0.0.0.0", *extra]
        )
        assert load_config(args, {}).host == "0.0.0.0"
    args = parser.parse_args(["serve", "--work-dir", str(tmp_path), "--host", "10.0.0.5"])
    with pytest.raises(ConfigError, match=r"refusing to listen on 10\.0\.0\.5"):
        load_config(args, {})


async def test_the_cli_serves_until_sigterm(tmp_path: Path) -> None:
    """`python -m agent grpc serve` answers Capacity on its port and exits 0 on SIGTERM."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [PY, "-m", "agent", "grpc", "serve", "--work-dir", str(tmp_path)]
    process = await trio.lowlevel.open_process(
        [*command, "--port", str(port), "--slots", "3"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        client = Client.connect(port)
        await trio.to_thread.run_sync(
            lambda: grpc.channel_ready_future(client.channel).result(timeout=60)
        )
        assert (await client.capacity()).slots == 3
        client.close()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_a_taken_port_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    """Another process has the port: the agent says so in one line and exits 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [PY, "-m", "agent", "grpc", "serve", "--work-dir", str(tmp_path)]
        result = subprocess.run(
            [*command, "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env={**os.environ, "GRPC_VERBOSITY": "NONE"},
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"python -m agent grpc serve: cannot serve on 127.0.0.1:{port}: "
        f"Failed to bind to address 127.0.0.1:{port}; set GRPC_VERBOSITY=debug environment "
        "variable to see detailed error message.\n"
    )


# ------------------------------------------------------------------ the job user


async def test_the_job_runs_as_the_requested_user(tmp_path: Path) -> None:
    """user in the request: the lane runs as that OS user, and can write its directory
    (whose files the agent then uploads); an unknown user is a rejection."""
    if os.geteuid() != 0:
        pytest.skip("a job user needs root (or a sudoers entry) to switch to")
    for tool in ("sudo", "useradd"):
        if shutil.which(tool) is None:
            pytest.skip(f"a job user needs {tool}, which is not installed")
    import pwd

    user = "farmhandjob"

    def make_user() -> Path:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", user], check=True)
        # A work directory the job user can pass through (pytest's are private to root).
        root = Path(tempfile.mkdtemp(prefix="farmhand-grpc-user-"))
        root.chmod(0o711)
        return root

    root = await trio.to_thread.run_sync(make_user)
    try:
        async with running_agent(config_for(root)) as served:
            client = Client.connect(served.port)
            ev = await client.run_all(
                job_id="as-user",
                command=sh("id -un; echo made by the job user > out.txt; cat out.txt"),
                user=user,
                artifacts=["out.txt"],
            )
            missing = await client.run_all(job_id="nobody", command=["true"], user="no-such-user")
            client.close()
    finally:
        await trio.to_thread.run_sync(partial(shutil.rmtree, root, ignore_errors=True))
    assert ev.final().finished.status == pb.Finished.SUCCEEDED, ev.lines()
    assert user in ev.lines() and "made by the job user" in ev.lines()
    [artifact] = ev.final().finished.artifacts
    assert (artifact.path, artifact.size) == ("out.txt", len("made by the job user\n"))
    assert missing.final().rejected.message == "job user 'no-such-user' does not exist"


# ------------------------------------------------------------------ the stubs


def test_the_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """ci_agent_pb2.py was generated from ci_agent.proto as it is now."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    status = protoc.main(
        ["protoc", f"-I{ROOT}", f"--descriptor_set_out={out}", "contrib/grpcagent/ci_agent.proto"]
    )
    assert status == 0
    [generated] = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file

    def drop_json_names(messages: Any) -> None:  # the Python stubs leave them out
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            drop_json_names(message.nested_type)

    drop_json_names(generated.message_type)
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert committed == generated, "run: python -m contrib.grpcagent.regenerate"


def test_settings_fail_the_way_the_worker_s_do(tmp_path: Path) -> None:
    """The gRPC agent reads its flags and FARMHAND_GRPC_* variables with the agent's
    settings engine: a bad value is one ConfigurationError naming where it came from."""
    import argparse

    from agent import ConfigurationError
    from contrib.grpcagent import load_config
    from contrib.grpcagent._cmd_grpc import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["serve"])
    cases = {
        "FARMHAND_GRPC_PORT": ("http", "FARMHAND_GRPC_PORT: expected an integer, got 'http'"),
        "FARMHAND_GRPC_SLOTS": ("0", "FARMHAND_GRPC_SLOTS: must be at least 1, got '0'"),
        "FARMHAND_GRPC_GRACE": ("-1", "FARMHAND_GRPC_GRACE: must be at least 0, got '-1'"),
        "FARMHAND_GRPC_INSECURE": ("maybe", "FARMHAND_GRPC_INSECURE: expected a boolean"),
        "FARMHAND_GRPC_TLS_CERT": ("/nonexistent.pem", "FARMHAND_GRPC_TLS_CERT: /nonexistent"),
    }
    for variable, (value, message) in cases.items():
        environ = {"FARMHAND_GRPC_WORK_DIR": str(tmp_path), variable: value}
        with pytest.raises(ConfigurationError) as caught:
            load_config(args, environ)
        assert str(caught.value).startswith(message), (variable, str(caught.value))
    with pytest.raises(ConfigurationError, match=r"^--work-dir \(or FARMHAND_GRPC_WORK_DIR\)"):
        load_config(args, {})
    config = load_config(
        args, {"FARMHAND_GRPC_WORK_DIR": str(tmp_path), "FARMHAND_GRPC_SLOTS": "4"}
    )
    assert (config.slots, config.work_dir) == (4, tmp_path)
