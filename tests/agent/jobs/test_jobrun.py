"""The one-job API: specs, runs, outcomes, stopping, and where the output goes."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from actors import ActionEnded, SessionEvent
from agent import JobSpecError
from agent.deadline import CredentialHolder, static_credentials
from agent.jobs import (
    JobRun,
    JobSpec,
    JobStatus,
    LogFile,
    OutputTail,
    Tee,
    open_cloudwatch_log,
    run_job,
)
from agent.mockfarm import open_mock_farm
from tests.session_harness import env, job, py, step

PY = sys.executable
TRAP_TERM = (
    "import signal, sys, time\n"
    "def on_term(*_):\n"
    "    print('got SIGTERM', flush=True); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, on_term)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)
IGNORE_TERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


class Lines:
    """A sink that keeps every line with the (Trio) time it came, and can wait for one."""

    def __init__(self) -> None:
        self.timed: list[tuple[float, str]] = []
        self._changed = trio.Event()

    def write(self, lines: Sequence[str]) -> None:
        now = trio.current_time()
        self.timed.extend((now, line) for line in lines)
        self._changed.set()
        self._changed = trio.Event()

    @property
    def lines(self) -> list[str]:
        return [line for _, line in self.timed]

    def output(self) -> list[str]:
        """The job's own lines, without farmhand's notes."""
        return [line for line in self.lines if not line.startswith("[farmhand]")]

    def time_of(self, fragment: str) -> float:
        return next(t for t, line in self.timed if fragment in line)

    async def wait_for(self, text: str) -> None:
        while text not in self.lines:
            await self._changed.wait()


def command(code: str, **options: object) -> JobSpec:
    return JobSpec.from_command([PY, "-c", code], **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------ commands


async def test_a_command_succeeds_with_its_output_env_and_directory(tmp_path: Path) -> None:
    """A command's lines reach every sink in order; env and cwd are applied; the outcome says so."""
    sink = Lines()
    log_path = tmp_path / "logs" / "job.log"
    code = "import os; print('one'); print('two', os.getcwd(), os.environ['COLOR'], flush=True)"
    with LogFile(log_path) as log_file:
        outcome = await run_job(
            command(code, env={"COLOR": "blue"}, cwd=tmp_path), sinks=[sink, log_file]
        )
    assert outcome.status is JobStatus.SUCCEEDED and outcome.succeeded
    assert outcome.exit_code == 0 and outcome.error is None
    assert outcome.actions == {"SUCCESS": 1}
    assert outcome.started_at <= outcome.completed_at
    assert outcome.duration >= 0
    assert sink.output() == ["one", f"two {tmp_path} blue"]
    text = log_path.read_text().splitlines()
    assert [line for line in text if not line.startswith("[farmhand]")] == sink.output()
    assert text[-1].startswith("[farmhand] job succeeded (")
    # The note names the user's command, not the launcher that runs it.
    assert any(
        line.startswith("[farmhand] running: ") and "-c" in line and f"(in {tmp_path})" in line
        for line in text
    )
    assert not any("/bin/sh" in line for line in text)


async def test_a_command_without_the_agents_environment(tmp_path: Path) -> None:
    """inherit_env=False gives the command only the variables it was given (and the session's)."""
    sink = Lines()
    os.environ["FARMHAND_TEST_LEAK"] = "leaked"
    try:
        code = "import os; print(sorted(k for k in os.environ if k.startswith('FARMHAND_TEST')))"
        spec = command(code, env={"FARMHAND_TEST_MINE": "1"}, inherit_env=False)
        outcome = await run_job(spec, sinks=[sink])
    finally:
        del os.environ["FARMHAND_TEST_LEAK"]
    assert outcome.succeeded
    assert sink.output() == ["['FARMHAND_TEST_MINE']"]


async def test_a_long_command_line_passes_through_verbatim() -> None:
    """Arguments are never format strings: braces, quotes and hundreds of them arrive as given."""
    args = [f"arg {{{{Task.Param.X}}}} {i} '\"$HOME" for i in range(300)]
    sink = Lines()
    code = "import json, sys; print(json.dumps(sys.argv[1:]))"
    outcome = await run_job(JobSpec.from_command([PY, "-c", code, *args]), sinks=[sink])
    assert outcome.succeeded
    assert json.loads(sink.output()[0]) == args


@pytest.mark.parametrize(
    ("code", "exit_code", "error"),
    [
        ("import sys; sys.exit(3)", 3, "exit code 3"),
        ("import os; os.kill(os.getpid(), 9)", -9, "killed by SIGKILL"),
        (
            "print('openjd_fail: the frame is corrupt'); raise SystemExit(1)",
            1,
            "the frame is corrupt",
        ),
    ],
)
async def test_a_failing_command_says_why(code: str, exit_code: int, error: str) -> None:
    """A non-zero exit fails the job with its exit code and a one-line reason."""
    outcome = await run_job(command(code))
    assert outcome.status is JobStatus.FAILED
    assert (outcome.exit_code, outcome.error) == (exit_code, error)
    assert outcome.actions == {"FAILED": 1}


async def test_a_command_that_cannot_start(tmp_path: Path) -> None:
    """A missing program is exit code 127; a missing directory 126; both say which."""
    missing = await run_job(JobSpec.from_command(["farmhand-no-such-program", "x"]))
    assert missing.status is JobStatus.FAILED and missing.exit_code == 127
    assert missing.error == "cannot start farmhand-no-such-program: command not found"
    nowhere = await run_job(JobSpec.from_command(["true"], cwd=tmp_path / "missing"))
    assert nowhere.status is JobStatus.FAILED and nowhere.exit_code == 126
    assert nowhere.error == f"cannot change to directory {tmp_path / 'missing'}"


@pytest.mark.parametrize(
    ("argv", "options", "message"),
    [
        ([], {}, "a command needs at least a program to run"),
        ("echo hi", {}, "a command is a list of arguments, not one string"),
        (["echo", "a\0b"], {}, "is not a string without NUL"),
        (["echo"], {"env": {"A=B": "1"}}, "environment variable name 'A=B' is not usable"),
        (["echo"], {"env": {"A": 1}}, "environment variable A: the value must be a string"),
    ],
)
def test_a_bad_command_is_a_spec_error(
    argv: object, options: dict[str, object], message: str
) -> None:
    """A command that cannot be run is refused before anything starts, in one line."""
    with pytest.raises(JobSpecError, match=re.escape(message)):
        JobSpec.from_command(argv, **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------ stopping


async def test_cancel_sends_sigterm_and_the_job_can_clean_up() -> None:
    """A graceful cancel signals the process group; a job that exits on SIGTERM ends CANCELED."""
    sink = Lines()
    run = JobRun(command(TRAP_TERM), sinks=[sink], grace=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.run)
        await sink.wait_for("ready")
        run.cancel(reason="the user canceled it")
        outcome = await run.wait_ended()
    assert outcome.status is JobStatus.CANCELED
    assert outcome.error == "the user canceled it"
    assert outcome.exit_code is None
    assert "got SIGTERM" in sink.output()
    assert outcome.actions == {"CANCELED": 1}
    assert sink.lines[-1].startswith("[farmhand] job canceled: the user canceled it (")


async def test_a_job_that_ignores_sigterm_is_killed_when_the_grace_is_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SIGTERM first, SIGKILL exactly one grace later."""
    sink = Lines()
    run = JobRun(command(IGNORE_TERM), sinks=[sink], grace=7)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.run)
        await sink.wait_for("ready")
        start = trio.current_time()
        run.cancel()
        outcome = await run.wait_ended()
    assert outcome.status is JobStatus.CANCELED
    # The runner's notes come when the process has gone: at the kill.
    assert any("SIGTERM to process group" in line for line in sink.lines)
    assert sink.time_of("notify period over: killing process group") - start == pytest.approx(7)


async def test_cancel_with_no_grace_kills_at_once() -> None:
    """cancel(grace=0) kills the process group without a SIGTERM first."""
    sink = Lines()
    run = JobRun(command(TRAP_TERM), sinks=[sink], grace=600)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.run)
        await sink.wait_for("ready")
        run.cancel(grace=0)
        outcome = await run.wait_ended()
    assert outcome.status is JobStatus.CANCELED
    assert "got SIGTERM" not in sink.output()
    assert not any("SIGTERM to process group" in line for line in sink.lines)


async def test_a_later_request_shortens_the_grace_but_keeps_the_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first request decides the outcome; a second, shorter one brings the kill forward."""
    sink = Lines()
    run = JobRun(command(IGNORE_TERM), sinks=[sink])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.run)
        await sink.wait_for("ready")
        start = trio.current_time()
        run.cancel(grace=500, reason="canceled by the user")
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(2)
        run.interrupt(grace=0, reason="the agent is going away")
        outcome = await run.wait_ended()
    assert outcome.status is JobStatus.CANCELED
    assert outcome.error == "canceled by the user"
    assert sink.time_of("killing process group") - start == pytest.approx(2)


async def test_maximum_runtime_times_the_job_out() -> None:
    """Past max_runtime the job is stopped gracefully (SIGTERM first) and ends TIMEOUT."""
    # A real clock: trio starts processes in a thread, and a jumping clock would
    # reach the limit before the process exists.
    sink = Lines()
    run = JobRun(command(TRAP_TERM), sinks=[sink], max_runtime=0.5, grace=30)
    outcome = await run.run()
    assert outcome.status is JobStatus.TIMEOUT
    assert outcome.error == "the maximum runtime of 0.5 s was reached"
    assert outcome.duration >= 0.5
    assert any("SIGTERM to process group" in line for line in sink.lines)
    assert not any("killing process group" in line for line in sink.lines)


async def test_interrupt_is_its_own_outcome() -> None:
    """An agent going away interrupts the job: INTERRUPTED, not CANCELED."""
    sink = Lines()
    run = JobRun(command(TRAP_TERM), sinks=[sink])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.run)
        await sink.wait_for("ready")
        run.interrupt(reason="SIGTERM")
        outcome = await run.wait_ended()
    assert (outcome.status, outcome.error) == (JobStatus.INTERRUPTED, "SIGTERM")


async def test_a_run_stopped_before_it_starts_runs_nothing(tmp_path: Path) -> None:
    """cancel() before run(): nothing starts, and the outcome says it was canceled."""
    marker = tmp_path / "ran"
    sink = Lines()
    run = JobRun(command(f"open({str(marker)!r}, 'w')"), sinks=[sink])
    run.cancel(reason="canceled while queued")
    outcome = await run.run()
    assert (outcome.status, outcome.error) == (JobStatus.CANCELED, "canceled while queued")
    assert outcome.actions == {"NEVER_ATTEMPTED": 1}
    assert not marker.exists()
    assert sink.lines == [
        f"[farmhand] job canceled: canceled while queued ({outcome.duration:.1f} s)"
    ]
    with pytest.raises(RuntimeError, match="runs once"):
        await run.run()


async def test_a_stop_after_the_job_succeeded_changes_nothing() -> None:
    """A cancel that comes after the work is done does not turn success into CANCELED."""
    run = JobRun(command("print('done')"))
    outcome = await run.run()
    run.cancel()
    assert outcome.succeeded and run.outcome is outcome
    assert run.statistics().state == "ended"


# ------------------------------------------------------------------ templates


async def test_a_template_job_with_parameters_runs_every_task(tmp_path: Path) -> None:
    """A template with job parameters runs as `agent run` plans it; notes frame each action."""
    template = job(
        step(
            "Render",
            py("print('frame {{Task.Param.Frame}} of {{Param.Shot}}')"),
            parameterSpace={
                "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": "1-3"}]
            },
        ),
        parameterDefinitions=[{"name": "Shot", "type": "STRING"}],
        jobEnvironments=[env("Studio", py("print('enter')"), py("print('exit')"))],
    )
    sink = Lines()
    spec = JobSpec.from_template(template, {"Shot": "sh010"}, env={"STUDIO": "1"})
    assert (spec.name, spec.kind, spec.task_count) == ("test job", "template", 3)
    outcome = await run_job(spec, sinks=[sink])
    assert outcome.succeeded and outcome.exit_code == 0
    assert outcome.actions == {"SUCCESS": 5}
    assert sink.output() == [
        "==== env_enter Studio ====",
        "enter",
        "==== Studio: SUCCESS, exit code 0 ====",
        "==== task_run Render Frame=1 ====",
        "frame 1 of sh010",
        "==== Render: SUCCESS, exit code 0 ====",
        "==== task_run Render Frame=2 ====",
        "frame 2 of sh010",
        "==== Render: SUCCESS, exit code 0 ====",
        "==== task_run Render Frame=3 ====",
        "frame 3 of sh010",
        "==== Render: SUCCESS, exit code 0 ====",
        "==== env_exit Studio ====",
        "exit",
        "==== Studio: SUCCESS, exit code 0 ====",
    ]


async def test_a_failed_task_fails_the_template_job_and_exits_still_run() -> None:
    """The first failing task names the job's error; later tasks never run; exits do."""
    template = job(
        step(
            "Render",
            py("import sys; print('frame {{Task.Param.Frame}}'); sys.exit({{Task.Param.Frame}})"),
            parameterSpace={
                "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": "0-3"}]
            },
        ),
        jobEnvironments=[env("Studio", None, py("print('cleaned up')"))],
    )
    sink = Lines()
    outcome = await run_job(JobSpec.from_template(json.dumps(template)), sinks=[sink])
    assert outcome.status is JobStatus.FAILED
    assert (outcome.exit_code, outcome.error) == (1, "Render: exit code 1")
    assert outcome.actions == {"SUCCESS": 3, "FAILED": 1, "NEVER_ATTEMPTED": 2}
    assert "cleaned up" in sink.output() and "frame 2" not in sink.output()


async def test_a_task_past_its_own_timeout_is_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The template's own action timeout makes the job TIMEOUT, naming the step."""
    on_run = {**py("import time; time.sleep(600)"), "timeout": 30}
    outcome = await run_job(JobSpec.from_template(job(step("Sim", on_run))))
    assert (outcome.status, outcome.error) == (JobStatus.TIMEOUT, "Sim: ran past its timeout")


async def test_a_template_file_with_cli_style_parameters(tmp_path: Path) -> None:
    """A template file takes `-p`-style parameters; relative PATH defaults are from its directory."""
    path = tmp_path / "job.json"
    template = job(
        step("Echo", py("print('{{Param.Input}} {{Param.Scene}}')")),
        parameterDefinitions=[
            {"name": "Input", "type": "PATH"},
            {"name": "Scene", "type": "PATH", "default": "scene.blend"},
        ],
    )
    path.write_text(json.dumps(template))
    sink = Lines()
    outcome = await run_job(JobSpec.from_template(path, ["Input=/data/in.exr"]), sinks=[sink])
    assert outcome.succeeded
    assert f"/data/in.exr {tmp_path / 'scene.blend'}" in sink.output()


@pytest.mark.parametrize(
    ("template", "parameters", "message"),
    [
        ("specificationVersion: [", {}, "the job template is not valid JSON or YAML"),
        ({"specificationVersion": "jobtemplate-2023-09", "name": "x"}, {}, "steps"),
        (
            job(step("A", py("pass")), parameterDefinitions=[{"name": "N", "type": "INT"}]),
            {},
            "N",
        ),
        (job(step("A", py("pass"))), "N=1", "parameters are a mapping or a list"),
    ],
)
def test_a_bad_template_is_a_spec_error(template: object, parameters: object, message: str) -> None:
    """Bad templates and parameters are refused in one line, before anything runs."""
    with pytest.raises(JobSpecError, match=re.escape(message)) as info:
        JobSpec.from_template(template, parameters)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


async def test_on_event_sees_every_session_event() -> None:
    """on_event gets the runner's raw events, the final state included."""
    seen: list[SessionEvent] = []
    await run_job(command("print('x')"), on_event=seen.append, notes=False)
    [ended] = [e for e in seen if isinstance(e, ActionEnded)]
    assert ended.exit_code == 0


# ------------------------------------------------------------------ sinks


async def test_notes_can_be_left_out() -> None:
    """notes=False: the sinks get the job's own lines only."""
    sink = Lines()
    await run_job(command("print('only me')"), sinks=[sink], notes=False)
    assert sink.lines == ["only me"]


def test_log_file_appends_with_optional_timestamps(tmp_path: Path) -> None:
    """LogFile appends (creating its directory); timestamps are UTC with milliseconds."""
    path = tmp_path / "a" / "b.log"
    with LogFile(path) as plain:
        plain.write(["one", "two"])
    with LogFile(path, timestamps=True) as stamped:
        stamped.write(["three"])
    lines = path.read_text().splitlines()
    assert lines[:2] == ["one", "two"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z three", lines[2])
    with pytest.raises(trio.ClosedResourceError):
        stamped.write(["late"])


def test_tee_skips_a_failing_sink() -> None:
    """One broken sink does not keep the lines from the others."""
    tail = OutputTail(2)

    class Broken:
        def write(self, lines: Sequence[str]) -> None:
            raise OSError(28, "No space left on device")

    tee = Tee([Broken(), tail])
    tee.write(["a", "b"])
    tee.write(["c"])
    assert tail.lines == ["b", "c"]
    assert tail.contains("c", "zzz") and not tail.contains("a")


async def test_cloudwatch_log_ships_every_line_and_makes_the_group(tmp_path: Path) -> None:
    """open_cloudwatch_log creates a missing group and stream and ships the job's lines."""
    credentials = CredentialHolder(static_credentials("AKIDTEST", "secret"))
    async with open_mock_farm() as farm:
        async with open_cloudwatch_log(
            "/farmhand/jobs",
            "job-1",
            spool=tmp_path / "job-1.log",
            credentials=credentials,
            endpoint_url=farm.endpoint_url,
        ) as stream:
            outcome = await run_job(command("print('to the cloud')"), sinks=[stream])
        assert outcome.succeeded
        messages = farm.logs.messages("/farmhand/jobs", "job-1")
    assert "to the cloud" in messages
    assert messages[-1].startswith("[farmhand] job succeeded")
    # The spool is the local copy.
    assert "to the cloud" in (tmp_path / "job-1.log").read_text()
