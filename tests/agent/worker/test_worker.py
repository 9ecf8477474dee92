"""The whole worker against the embedded mock farm over real loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from agent.mockfarm import FarmConfig, FaultConfig, OperationFaults
from agent.worker._state import load_worker_state
from tests.session_harness import memory_cgroups_here
from tests.worker_harness import (
    assert_each_final_reported_once,
    farm_and_worker,
    final_reports,
    py,
    simple_job,
    wait_job,
)


async def test_a_job_runs_to_success_with_logs_in_cloudwatch(tmp_path: Path) -> None:
    """Bootstrap, run a job with an environment and three tasks, ship the session log."""
    async with farm_and_worker(tmp_path) as (farm, worker, events):
        job_id = farm.create_job(simple_job(py("print('frame {{Task.Param.Frame}}')")))
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        [session] = [s for s in farm.state.sessions.values() if s.job.job_id == job_id]
        with trio.fail_after(30):
            await farm.wait_until(lambda: "frame 3" in farm.session_log(session.session_id))
        log = farm.session_log(session.session_id)
        stats = worker.statistics()
    assert [line for line in log if line in ("entered", "frame 1", "frame 2", "frame 3")] == [
        "entered",
        "frame 1",
        "frame 2",
        "frame 3",
    ]
    assert {"frame 1", "frame 2", "frame 3", "entered", "exited"} <= set(events.lines())
    assert stats.actions.get("SUCCEEDED", 0) >= 4
    assert stats.worker_id.startswith("worker-")
    state = load_worker_state(tmp_path / "persistence")
    assert state is not None and state.worker_id == stats.worker_id
    # The local session log is there too, private to the agent.
    [local] = list((tmp_path / "logs").rglob(f"{session.session_id}.log"))
    assert (local.stat().st_mode & 0o777) == 0o600
    assert "frame 2" in local.read_text()


async def test_a_failed_task_fails_the_job(tmp_path: Path) -> None:
    """A failing task is reported FAILED with its exit code and message."""
    async with farm_and_worker(tmp_path) as (farm, _worker, _events):
        job_id = farm.create_job(
            simple_job(py("import sys; print('openjd_fail: bad frame'); sys.exit(2)"), frames="1")
        )
        assert await wait_job(farm, job_id) == "FAILED"
        [task] = [t for step in farm.job(job_id).steps for t in step.tasks]
        with trio.fail_after(30):
            await farm.wait_until(lambda: not farm.job(job_id).active_sessions)
        statuses = assert_each_final_reported_once(farm, job_id)
    assert task.status == "FAILED"
    assert list(statuses.values()) == ["SUCCEEDED", "FAILED", "SUCCEEDED"]  # enter, task, exit
    [failed] = [
        fields
        for call in farm.calls_to("UpdateWorkerSchedule")
        for fields in (call.input.get("updatedSessionActions") or {}).values()
        if fields.get("completedStatus") == "FAILED"
    ]
    assert (failed["processExitCode"], failed["progressMessage"]) == (2, "bad frame")


async def test_cancel_from_the_farm_stops_the_running_task(tmp_path: Path) -> None:
    """Cancelling the job cancels the running action on the worker."""
    async with farm_and_worker(tmp_path) as (farm, _worker, events):
        job_id = farm.create_job(
            simple_job(py("import time; print('running', flush=True); time.sleep(600)"), frames="1")
        )
        with trio.fail_after(30):
            await events.wait_line("running")
        farm.cancel_job(job_id)
        assert await wait_job(farm, job_id) == "CANCELED"
        with trio.fail_after(30):
            await farm.wait_until(lambda: not farm.job(job_id).active_sessions)
        statuses = assert_each_final_reported_once(farm, job_id)
    # The environment was entered, the task canceled by the farm, the environment exited.
    assert list(statuses.values()) == ["SUCCEEDED", "CANCELED", "SUCCEEDED"]


async def test_throttling_errors_and_dropped_connections_lose_nothing(tmp_path: Path) -> None:
    """With throttling, 500s, requests dropped before and answers lost after being applied,
    every action's final status reaches the farm, once, and no log line is lost or doubled."""
    hold = {"drop_hold_seconds": 0.2, "retry_after_seconds": 0}
    faults = (
        # With seed 84 the first ten UpdateWorkerSchedule calls meet a lost answer, a 500,
        # a dropped request and a throttle, none in a row (so backoffs stay short).
        FaultConfig(seed=84)
        .with_operation(
            "UpdateWorkerSchedule",
            throttle_rate=0.15,
            error_rate=0.1,
            drop_rate=0.05,
            drop_after_rate=0.1,
            **hold,
        )
        .with_operation("BatchGetJobEntity", error_rate=0.2, throttle_rate=0.1, **hold)
        .with_operation("PutLogEvents", throttle_rate=0.2, error_rate=0.1, retry_after_seconds=0)
    )
    async with farm_and_worker(tmp_path, faults=faults) as (farm, worker, _events):
        job_id = farm.create_job(
            simple_job(py("print('frame {{Task.Param.Frame}}')"), frames="1-8")
        )
        assert await wait_job(farm, job_id, 120) == "SUCCEEDED"
        with trio.fail_after(60):
            # A report whose answer was lost is sent again, maybe after the farm is done.
            await farm.wait_until(
                lambda: (
                    not farm.job(job_id).active_sessions
                    and worker.statistics().updates_pending == 0
                )
            )
        statuses = assert_each_final_reported_once(farm, job_id)
        [session] = farm.job(job_id).sessions
        with trio.fail_after(60):
            await farm.wait_until(lambda: "exited" in farm.session_log(session.session_id))
        log = farm.session_log(session.session_id)
        injected = farm.statistics().faults_injected
        resent = sum(len(r) - 1 for r in final_reports(farm).values())
        stats = worker.statistics()
    assert set(statuses.values()) == {"SUCCEEDED"} and len(statuses) == 10  # enter, 8, exit
    for frame in range(1, 9):
        assert log.count(f"frame {frame}") == 1, frame
    # The faults did happen, and some reports had to be sent again.
    assert {"throttle", "error", "drop", "drop_after"} <= set(injected), injected
    assert resent > 0
    assert stats.api_retries > 0


async def test_a_timeout_fails_the_action_and_the_environment_still_exits(tmp_path: Path) -> None:
    """An action over its timeout is reported FAILED with the TIMEOUT message; the rest of
    the session is never attempted, and the environment's exit runs."""
    task = {**py("import time; print('started', flush=True); time.sleep(60)"), "timeout": 1}
    async with farm_and_worker(tmp_path) as (farm, _worker, events):
        job_id = farm.create_job(simple_job(task, frames="1-2"), max_failed_tasks_count=1)
        assert await wait_job(farm, job_id) == "FAILED"
        with trio.fail_after(30):
            await farm.wait_until(lambda: not farm.job(job_id).active_sessions)
        statuses = assert_each_final_reported_once(farm, job_id)
    assert list(statuses.values()) == ["SUCCEEDED", "FAILED", "NEVER_ATTEMPTED", "SUCCEEDED"]
    [failed] = [
        fields
        for call in farm.calls_to("UpdateWorkerSchedule")
        for fields in (call.input.get("updatedSessionActions") or {}).values()
        if fields.get("completedStatus") == "FAILED"
    ]
    assert failed["progressMessage"].startswith("TIMEOUT")
    assert events.lines().count("exited") == 1


async def test_an_entity_error_fails_only_the_action_that_needs_it(tmp_path: Path) -> None:
    """When BatchGetJobEntity answers one entity with an error (here the second step's
    details, gone from the farm), only the action that needs it fails: the first step's
    tasks succeed, the rest is never attempted, the environment exits."""
    template = simple_job(py("print('render {{Task.Param.Frame}}')"), frames="1-2")
    template["steps"].append(
        {
            "name": "Encode",
            "dependencies": [{"dependsOn": "Render"}],
            "script": {"actions": {"onRun": py("print('encode')")}},
        }
    )
    async with farm_and_worker(tmp_path) as (farm, _worker, events):
        job_id = farm.create_job(template)
        encode = farm.job(job_id).steps[1]
        del farm.state.steps[encode.step_id]  # the farm no longer finds it
        assert await wait_job(farm, job_id) == "FAILED"
        with trio.fail_after(30):
            await farm.wait_until(lambda: not farm.job(job_id).active_sessions)
        statuses = assert_each_final_reported_once(farm, job_id)
        [session] = farm.job(job_id).sessions
        failed = [a for a in session.actions if a.status == "FAILED"]
    assert list(statuses.values()) == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED", "SUCCEEDED"]
    [action] = failed
    assert action.task is not None and action.task.step is encode
    assert "not found" in (action.progress_message or "")
    assert "render 2" in events.lines() and "encode" not in events.lines()


async def test_farm_asks_the_worker_to_stop(tmp_path: Path) -> None:
    """desiredWorkerStatus=STOPPED makes wait_stop_requested return 'farm'."""
    async with farm_and_worker(tmp_path) as (farm, worker, _events):
        farm.request_worker_stop(worker.worker_id)
        with trio.fail_after(30):
            assert await worker.wait_stop_requested() == "farm"
        await worker.drain(0)
        status = farm.worker(worker.worker_id).status
    assert status == "STOPPED"


async def test_drain_interrupts_running_work_and_stops_the_worker(tmp_path: Path) -> None:
    """drain(): the running task is reported INTERRUPTED, the worker ends STOPPED."""
    async with farm_and_worker(tmp_path) as (farm, worker, events):
        job_id = farm.create_job(
            simple_job(
                py("import time; print('running', flush=True); time.sleep(600)"), frames="1-2"
            )
        )
        with trio.fail_after(30):
            await events.wait_line("running")
        with trio.fail_after(30):
            await worker.drain(2)
        status = farm.worker(worker.worker_id).status
        tasks = [t for step in farm.job(job_id).steps for t in step.tasks]
    assert status == "STOPPED"
    # INTERRUPTED work goes back to the queue for another worker.
    assert all(t.status in ("READY", "PENDING") for t in tasks), [t.status for t in tasks]


async def test_a_drain_names_the_exit_the_worker_runs_itself(tmp_path: Path) -> None:
    """The job environment's exit, run by the worker on a drain (the farm did not assign
    it), is named in the session log, its start and end lines alike, not ``None``."""
    async with farm_and_worker(tmp_path) as (farm, worker, events):
        job_id = farm.create_job(
            simple_job(py("import time; print('running', flush=True); time.sleep(600)"))
        )
        with trio.fail_after(30):
            await events.wait_line("running")
        # The farm assigns the exit itself once it hears of the interrupted task: it must
        # not hear of it until the worker has run the exit on its own.
        farm.set_faults(
            FaultConfig(
                operations={
                    "UpdateWorkerSchedule": OperationFaults(
                        error_rate=1.0, retry_after_seconds=None
                    )
                }
            )
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.drain, 30)
            with trio.fail_after(30):
                await events.wait_line("exited")
            farm.set_faults(FaultConfig())
        session_id = farm.job(job_id).sessions[0].session_id

        def banners() -> list[str]:
            return [line for line in farm.session_log(session_id) if "env_exit" in line]

        with trio.fail_after(30):
            await farm.wait_until(lambda: len(banners()) == 2)
    assert banners() == [
        "==== env_exit Env (run by the worker) ====",
        "==== env_exit Env (run by the worker) ended: SUCCESS, exit code 0 ====",
    ]


async def test_the_agent_log_goes_to_cloudwatch(tmp_path: Path) -> None:
    """The agent's own log lines reach its CloudWatch stream as JSON."""
    async with farm_and_worker(tmp_path) as (farm, worker, _events):
        from agent._logging import configure_logging

        configure_logging(quiet=False)
        import structlog

        structlog.get_logger("test").info("hello.cloudwatch", marker=42)
        with trio.fail_after(30):
            await farm.wait_until(
                lambda: any("hello.cloudwatch" in m for m in farm.worker_log(worker.worker_id))
            )
        [line] = [m for m in farm.worker_log(worker.worker_id) if "hello.cloudwatch" in m]
    assert json.loads(line)["marker"] == 42


async def test_exit_after_jobs(tmp_path: Path) -> None:
    """With exit_after_jobs=1, the worker asks to stop after its first session."""
    config = FarmConfig(update_interval_seconds=1, max_retries_per_task=0)
    async with farm_and_worker(tmp_path, farm_config=config, exit_after_jobs=1) as (
        farm,
        worker,
        _events,
    ):
        job_id = farm.create_job(simple_job(py("print('x')"), frames="1"))
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        with trio.fail_after(60):
            assert await worker.wait_stop_requested() == "exit_after_jobs"


async def test_secrets_never_reach_the_session_log_file_or_cloudwatch(tmp_path: Path) -> None:
    """Configured patterns and openjd_redacted_env values are masked in the local session
    log and in CloudWatch, including the runner's own lines (the command line)."""
    template = simple_job(py("print('frame uses tok-0123abcd')"), frames="1", environments=False)
    template["extensions"] = ["REDACTED_ENV_VARS"]
    template["jobEnvironments"] = [
        {
            "name": "Secrets",
            "script": {"actions": {"onEnter": py("print('openjd_redacted_env: PW=swordfish-42')")}},
        }
    ]
    template["steps"][0]["script"]["actions"]["onRun"] = py(
        "import os; print('frame uses tok-0123abcd and', os.environ['PW'])"
    )
    async with farm_and_worker(tmp_path, secret_patterns=(r"tok-[0-9a-f]{8}",)) as (
        farm,
        _worker,
        _events,
    ):
        job_id = farm.create_job(template)
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        [session] = [s for s in farm.state.sessions.values() if s.job.job_id == job_id]
        with trio.fail_after(30):
            await farm.wait_until(
                lambda: any("frame uses" in line for line in farm.session_log(session.session_id))
            )
        cloudwatch = "\n".join(farm.session_log(session.session_id))
    [local] = list((tmp_path / "logs").rglob(f"{session.session_id}.log"))
    for text in (cloudwatch, local.read_text()):
        assert "frame uses ******** and ********" in text
        assert "tok-0123abcd" not in text and "swordfish-42" not in text


SHOW_CREDENTIALS = """
import configparser, json, os, shlex, subprocess
import botocore.session
config = configparser.ConfigParser()
config.read(os.environ["AWS_CONFIG_FILE"])
command = config["profile " + os.environ["AWS_PROFILE"]]["credential_process"]
printed = json.loads(subprocess.run(shlex.split(command), capture_output=True, check=True).stdout)
sdk = botocore.session.Session().get_credentials()
print("process", printed["AccessKeyId"], "sdk", sdk.access_key, flush=True)
print("profile", os.environ["AWS_PROFILE"], "env key", os.environ.get("AWS_ACCESS_KEY_ID"))
"""


async def test_a_job_gets_its_queues_credentials_through_a_profile(tmp_path: Path) -> None:
    """A queue with a role: one AssumeQueueRoleForWorker; the job's SDK and the
    credential_process see the queue's credentials, not the agent's; a queue without
    a role gets no profile; no credentials are left behind."""
    async with farm_and_worker(tmp_path) as (farm, _worker, events):
        queue_id = farm.create_queue("With role", role_arn="arn:aws:iam::1:role/Q")
        job_id = farm.create_job(
            simple_job(py(SHOW_CREDENTIALS), frames="1-2", environments=False), queue_id=queue_id
        )
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        plain = farm.create_job(
            simple_job(py("import os; print('plain', os.environ.get('AWS_PROFILE'))"), frames="1")
        )
        assert await wait_job(farm, plain) == "SUCCEEDED"
        calls = farm.calls_to("AssumeQueueRoleForWorker")
    assert not (tmp_path / "persistence" / "queues").exists()
    shown = [line.split() for line in events.lines() if line.startswith("process ")]
    assert len(shown) == 2
    for _, process_key, _, sdk_key in shown:
        assert process_key == sdk_key and process_key.startswith("ASIA")
    assert f"profile deadline-{queue_id} env key None" in events.lines()
    assert "plain None" in events.lines()
    assert [c.input["queueId"] for c in calls] == [queue_id]


async def test_a_failed_queue_credentials_renewal_stops_only_that_queues_session(
    tmp_path: Path,
) -> None:
    """Short-lived credentials are renewed (the worker's too); when the farm stops
    giving a queue credentials, that queue's running task FAILS with the reason while
    the other queue's session keeps running."""
    release = tmp_path / "release"
    config = FarmConfig(
        update_interval_seconds=1,
        max_retries_per_task=0,
        max_sessions_per_worker=2,
        credentials_lifetime_seconds=6,
    )
    async with farm_and_worker(tmp_path, farm_config=config) as (farm, worker, events):
        queue_id = farm.create_queue("With role", role_arn="arn:aws:iam::1:role/Q")
        with_role = farm.create_job(
            simple_job(
                py("import time; print('role task', flush=True); time.sleep(600)"),
                frames="1",
                environments=False,
            ),
            queue_id=queue_id,
        )
        other = farm.create_job(
            simple_job(
                py(
                    "import os, time\n"
                    "print('other task', flush=True)\n"
                    f"while not os.path.exists({str(release)!r}): time.sleep(0.05)"
                ),
                frames="1",
                environments=False,
            )
        )
        with trio.fail_after(30):
            await events.wait_line("role task")
            await events.wait_line("other task")
        farm.state.queues[queue_id].role_arn = None  # the farm gives no more credentials
        assert await wait_job(farm, with_role, 30) == "FAILED"
        assert farm.job(other).status not in ("SUCCEEDED", "FAILED")
        [task] = [t for step in farm.job(other).steps for t in step.tasks]
        running = task.status
        release.touch()
        assert await wait_job(farm, other, 30) == "SUCCEEDED"
        fleet_renewals = len(farm.calls_to("AssumeFleetRoleForWorker"))
        stopped = worker.stop_reason
    assert running == "RUNNING"
    failed = [
        fields
        for call in farm.calls_to("UpdateWorkerSchedule")
        for fields in (call.input.get("updatedSessionActions") or {}).values()
        if fields.get("completedStatus") == "FAILED"
    ]
    assert any("queue's credentials" in f.get("progressMessage", "") for f in failed), failed
    assert fleet_renewals >= 2  # the worker's 6-second credentials were renewed in time
    assert stopped is None


async def test_without_local_session_logs_the_log_still_reaches_cloudwatch(
    tmp_path: Path,
) -> None:
    """--no-local-session-logs: no <logs>/<queue>/<session>.log is kept, the lines still
    reach CloudWatch (through a spool file that is removed once shipped)."""
    async with farm_and_worker(tmp_path, local_session_logs=False) as (farm, worker, _events):
        job_id = farm.create_job(simple_job(py("print('frame {{Task.Param.Frame}}')"), frames="1"))
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        [session] = farm.job(job_id).sessions
        with trio.fail_after(30):
            await farm.wait_until(lambda: "exited" in farm.session_log(session.session_id))
            # The spool goes once the log is shipped, before the session is done.
            await farm.wait_until(lambda: worker.statistics().sessions_finished == 1)
        spool = list((tmp_path / "logs" / ".spool").glob("*"))
    assert spool == []
    assert "frame 1" in farm.session_log(session.session_id)
    assert not list((tmp_path / "logs").rglob(f"{session.session_id}.log"))


async def test_a_host_may_keep_session_logs_out_of_cloudwatch(tmp_path: Path) -> None:
    """open_agent(ship_session_logs=False): the host sees the output (on_event) and the
    local log has it; nothing goes to the session's CloudWatch stream."""
    async with farm_and_worker(tmp_path, ship_session_logs=False) as (farm, _worker, events):
        job_id = farm.create_job(simple_job(py("print('frame {{Task.Param.Frame}}')"), frames="1"))
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        [session] = farm.job(job_id).sessions
        with trio.fail_after(30):
            await farm.wait_until(lambda: not farm.job(job_id).active_sessions)
    assert "frame 1" in events.lines()
    assert farm.session_log(session.session_id) == []
    [local] = list((tmp_path / "logs").rglob(f"{session.session_id}.log"))
    assert "frame 1" in local.read_text()


async def test_an_idle_worker_gets_a_new_job_in_its_held_call(tmp_path: Path) -> None:
    """At the service's 15 s interval, the farm holds the idle worker's call (long poll):
    a job submitted then reaches it in that call, with no call after the submission."""
    config = FarmConfig(update_interval_seconds=15, max_retries_per_task=0)
    async with farm_and_worker(tmp_path, farm_config=config) as (farm, worker, _events):
        with trio.fail_after(30):
            await farm.wait_until(lambda: farm.app.held_calls > 0)
        submitted = trio.current_time()
        job_id = farm.create_job(simple_job(py("print('frame')"), frames="1"))
        with trio.fail_after(10):  # well inside the 15 s a polling worker could wait
            await farm.wait_until(lambda: bool(farm.job(job_id).sessions))
        after = [c for c in farm.calls_to("UpdateWorkerSchedule") if c.time >= submitted]
        assert after == []
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        assert worker.statistics().heartbeat_age is not None


async def test_a_worker_whose_job_ended_gets_the_next_job_in_its_held_call(
    tmp_path: Path,
) -> None:
    """The answer to the report that ends the worker's last session asks it to call
    again at once, and that call is held: the next job reaches it there, not at the
    15 s interval after the first job ended."""
    config = FarmConfig(update_interval_seconds=15, max_retries_per_task=0)
    async with farm_and_worker(tmp_path, farm_config=config) as (farm, worker, _events):
        first = farm.create_job(simple_job(py("print('frame')"), frames="1"))
        assert await wait_job(farm, first) == "SUCCEEDED"
        with trio.fail_after(10):  # well inside the 15 s a polling worker would wait
            await farm.wait_until(
                lambda: not farm.job(first).active_sessions and farm.app.held_calls > 0
            )
        submitted = trio.current_time()
        second = farm.create_job(simple_job(py("print('frame')"), frames="1"))
        with trio.fail_after(10):
            await farm.wait_until(lambda: bool(farm.job(second).sessions))
        after = [c for c in farm.calls_to("UpdateWorkerSchedule") if c.time >= submitted]
        assert after == []
        assert await wait_job(farm, second) == "SUCCEEDED"
        assert worker.statistics().sessions_finished >= 1


async def test_a_task_over_the_session_memory_limit_is_reported_failed_for_memory(
    tmp_path: Path,
) -> None:
    """--session-memory-limit: the task is killed and reported FAILED with a progress
    message that starts "memory limit exceeded", which a farm can tell from others."""
    code = (
        "import time\nblock = bytearray(300 * 2**20)\n"
        "for at in range(0, len(block), 4096):\n    block[at] = 1\ntime.sleep(30)\n"
    )
    async with farm_and_worker(tmp_path, session_memory_limit=150 * 2**20) as (farm, _w, _e):
        job_id = farm.create_job(simple_job(py(code), frames="1", environments=False))
        assert await wait_job(farm, job_id) == "FAILED"
    [failed] = [
        fields
        for call in farm.calls_to("UpdateWorkerSchedule")
        for fields in (call.input.get("updatedSessionActions") or {}).values()
        if fields.get("completedStatus") == "FAILED"
    ]
    assert failed["processExitCode"] == -9
    # Held by the kernel where a memory cgroup can be written, else by sampling.
    said = "reached the 150.0 MiB limit" if memory_cgroups_here() else "used "
    assert failed["progressMessage"].startswith(f"memory limit exceeded: its processes {said}")


async def test_the_farm_keeps_what_each_action_cost(tmp_path: Path) -> None:
    """The worker's session log says what each action cost; the mock farm keeps it
    with the session action (and its monitor shows it there)."""
    async with farm_and_worker(tmp_path) as (farm, _worker, _events):
        job_id = farm.create_job(simple_job(py("print('frame')"), frames="1"))
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        [session] = farm.job(job_id).sessions
        with trio.fail_after(30):
            await farm.wait_until(lambda: all(a.usage for a in session.actions))
    for action in session.actions:
        assert action.usage is not None
        assert set(action.usage) >= {
            "wall_seconds",
            "cpu_user_seconds",
            "cpu_system_seconds",
            "peak_rss_bytes",
        }
        assert action.usage["peak_rss_bytes"] > 2**20


def test_a_usage_line_reads_as_numbers() -> None:
    from agent.mockfarm._farmbase import usage_from_log

    line = (
        "[farmhand] usage: wall 1.888 s, CPU 0.29 s user + 0.13 s system, "
        "peak memory 203.9 MiB, peak GPU memory 512.0 MiB"
    )
    assert usage_from_log(line) == {
        "wall_seconds": 1.888,
        "cpu_user_seconds": 0.29,
        "cpu_system_seconds": 0.13,
        "peak_rss_bytes": 203.9 * 2**20,
        "peak_gpu_bytes": 512 * 2**20,
    }
    assert usage_from_log("[farmhand] usage: wall 0.5 s") == {"wall_seconds": 0.5}
    assert usage_from_log("usage: wall 1 s") is None
