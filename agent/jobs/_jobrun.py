"""Run one job to its end: the shared core of the contrib adapters.

A farm backend that is not Deadline (a job server, a table of job records, a
CI machine) gets a job from somewhere, runs it, and says how it went. This
module is the middle part, so that every adapter runs jobs the same way, with
the same session runner, process groups, containment, cancelation and
timeouts as the Deadline worker::

    spec = JobSpec.from_command(["render", "--frame", "12"], env={"JOB_ID": job_id})
    # or JobSpec.from_template(Path("job.yaml"), {"Frames": "1-10"})
    with LogFile(shared / "logs" / f"{job_id}.log") as log_file:
        run = JobRun(spec, sinks=[log_file], max_runtime=3600, grace=30)
        outcome = await run.run()           # run.cancel() from any other task
    outcome.status, outcome.exit_code, outcome.error, outcome.duration

A ``JobSpec`` is either an OpenJD job template with parameter values, planned
as ``python -m agent run`` plans it (environments entered, tasks in order,
environments exited), or a plain command: argv, environment and working
directory, run as the one task of a session (see ``COMMAND_LAUNCHER``).

Stopping a run (each callable from any task, before or during the run):

- ``cancel(grace=None)``: the job was canceled. The running action is
  cancelled with its own method, within ``grace`` seconds (the run's
  ``grace`` by default): for a command SIGTERM to its process group, SIGKILL
  when the grace is over; ``grace=0`` kills at once. Queued actions never run;
  entered environments are exited within what is left of the grace.
- ``interrupt(grace=None)``: the same, for an agent that is going away; the
  outcome is ``INTERRUPTED`` rather than ``CANCELED``.
- ``max_runtime``: when the run has taken that long, it is stopped the same
  way and its outcome is ``TIMEOUT``.

The first request decides the outcome; a later one can only shorten the grace.
``run()`` returns once every process of the job is gone.
"""

from __future__ import annotations

import enum
import re
import shlex
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

import attrs
import structlog
import trio
from openjd.expr import PathMappingRule
from openjd.model import JobParameterValues, ParameterValue, ParameterValueType
from openjd.model.v2023_09 import StepScript

from actors import (
    ActionEnded,
    ActionKind,
    ActionOutput,
    ActionStarted,
    ActionState,
    Containment,
    Runnable,
    RunTask,
    SessionCommand,
    SessionConfig,
    SessionEnded,
    SessionEvent,
    SessionLog,
    Stop,
)

# Re-exported (agent.jobs.JobUser): adapters name a job's user without reaching into actors.
from actors import JobUser as JobUser
from actors import JobUserError as JobUserError

from .._documents import DocumentError, load_document
from .._errors import JobSpecError
from ..local._localrun import TaskSelection, plan_job, start_session
from ..local._templates import (
    TemplateError,
    create_job,
    decode_environment,
    decode_job,
    load_environment_template,
    load_job_template,
    parse_job_parameters,
    parse_path_mapping_rules,
)
from ._joblog import OutputSink, Tee

log = structlog.get_logger("farmhand.jobrun")

#: Seconds a cancel, interrupt or timeout gives the job before it is killed.
DEFAULT_GRACE = 30.0
#: A command's own notify period: the longest OpenJD allows. A stop's grace is
#: what really decides when a command is killed.
_COMMAND_NOTIFY_SECONDS = 600
_ENV_NAME_RE = re.compile(r"[^=\0]+")


class JobStatus(enum.Enum):
    """How a job ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"


_STOP_STATES = {
    JobStatus.CANCELED: ActionState.CANCELED,
    JobStatus.TIMEOUT: ActionState.TIMEOUT,
    JobStatus.INTERRUPTED: ActionState.INTERRUPTED,
}


@attrs.frozen
class JobOutcome:
    status: JobStatus
    #: The exit code of the command (or of the task that failed); ``None`` when the
    #: job was stopped before its process ended on its own, or nothing ran.
    exit_code: int | None
    #: Why the job did not succeed, in one line; ``None`` when it did.
    error: str | None
    started_at: datetime
    completed_at: datetime
    #: Seconds from start to end, on Trio's clock.
    duration: float
    #: Actions by final state (``ActionState`` values: ``SUCCESS``, ``FAILED``...).
    actions: Mapping[str, int] = attrs.field(factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED


# ------------------------------------------------------------------ specs


@attrs.frozen
class JobSpec:
    """What to run: build one with ``from_command`` or ``from_template``."""

    name: str
    actions: Sequence[Runnable]
    kind: Literal["template", "command"]
    parameter_values: JobParameterValues = attrs.field(factory=dict)
    extensions: frozenset[str] = frozenset()
    path_mapping_rules: tuple[PathMappingRule, ...] = ()
    #: Variables for every action of the job, on top of ``base_env``.
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: The environment the job starts from; ``None``: the agent's own.
    base_env: Mapping[str, str] | None = None
    task_count: int = 1
    #: A command's command line and working directory (``None`` for a template).
    argv: tuple[str, ...] | None = None
    cwd: str | None = None

    @classmethod
    def from_command(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        inherit_env: bool = True,
        name: str | None = None,
    ) -> JobSpec:
        """A plain command. It runs with the agent's environment (none with
        ``inherit_env=False``) plus ``env``, in ``cwd`` (default: the session's
        working directory, a fresh temporary directory). Raises ``JobSpecError``."""
        if isinstance(argv, str):
            raise JobSpecError("a command is a list of arguments, not one string")
        argv = tuple(argv)
        if not argv or not argv[0]:
            raise JobSpecError("a command needs at least a program to run")
        for arg in argv:
            if not isinstance(arg, str) or "\0" in arg:
                raise JobSpecError(f"command argument {arg!r} is not a string without NUL")
        variables = _check_env(env)
        if cwd is not None and (not str(cwd) or "\0" in str(cwd)):
            raise JobSpecError(f"working directory {str(cwd)!r} is not usable")
        name = name or Path(argv[0]).name
        task = RunTask(action_id="command", step_name=name, script=_command_script())
        return cls(
            name=name,
            actions=(task,),
            kind="command",
            parameter_values={
                "Argv": ParameterValue(type=ParameterValueType.LIST_STRING, value=list(argv)),
                "Cwd": ParameterValue(
                    type=ParameterValueType.STRING, value=str(cwd) if cwd is not None else ""
                ),
            },
            extensions=frozenset({"EXPR"}),
            env=variables,
            base_env=None if inherit_env else {},
            argv=argv,
            cwd=str(cwd) if cwd is not None else None,
        )

    @classmethod
    def from_template(
        cls,
        template: Path | str | Mapping[str, Any],
        parameters: Mapping[str, Any] | Sequence[str] = (),
        *,
        environments: Sequence[Path | Mapping[str, Any]] = (),
        path_mapping_rules: str | None = None,
        step: str | None = None,
        template_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
    ) -> JobSpec:
        """An OpenJD job template: a file (``Path``), the document's JSON/YAML text
        (``str``) or the decoded document (a mapping). ``parameters`` are plain values
        (``{"Frames": "1-10"}``) or ``-p``-style ``NAME=VALUE`` strings; environment
        templates wrap the job, outermost first; ``path_mapping_rules`` is a
        ``pathmapping-1.0`` document (inline JSON or ``file://``); ``step`` runs one
        step. As in ``openjd run``, relative PATH values given resolve against the
        current directory, relative defaults against ``template_dir`` (the
        template's directory, else the current one). Raises ``JobSpecError``."""
        try:
            if isinstance(template, Path):
                decoded = load_job_template(template)
                template_dir = template_dir or template.parent
            elif isinstance(template, str):
                decoded = decode_job(_parse_text(template, "job template"), source="job template")
            else:
                decoded = decode_job(dict(template), source="job template")
            decoded_envs = [
                load_environment_template(item)
                if isinstance(item, Path)
                else decode_environment(dict(item), source=f"environment template {index}")
                for index, item in enumerate(environments)
            ]
            if isinstance(parameters, Mapping):
                values = dict(parameters)
            elif isinstance(parameters, str):
                raise TemplateError("parameters are a mapping or a list of NAME=VALUE strings")
            else:
                values = parse_job_parameters(parameters)
            rules = parse_path_mapping_rules(path_mapping_rules) if path_mapping_rules else []
            plan = plan_job(
                decoded,
                values,
                template_dir=template_dir or Path.cwd(),
                environments=decoded_envs,
                path_mapping_rules=rules,
                selection=TaskSelection(step=step),
            )
        except TemplateError as exc:
            raise JobSpecError(str(exc)) from exc
        return cls(
            name=plan.job_name,
            actions=plan.actions,
            kind="template",
            parameter_values=plan.created.parameter_values,
            extensions=plan.extensions,
            path_mapping_rules=plan.path_mapping_rules,
            env=_check_env(env),
            base_env=None if inherit_env else {},
            task_count=plan.task_count,
        )


def _check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    variables: dict[str, str] = {}
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            raise JobSpecError(f"environment variable name {name!r} is not usable")
        if not isinstance(value, str) or "\0" in value:
            raise JobSpecError(f"environment variable {name}: the value must be a string")
        variables[name] = value
    return variables


def _parse_text(text: str, what: str) -> dict[str, Any]:
    try:
        document = load_document(text, what=what)  # JSON is YAML too
    except DocumentError as exc:
        raise TemplateError(str(exc)) from None
    if not isinstance(document, dict):
        raise TemplateError(f"the {what} must be a mapping")
    return document


#: How a command starts: a POSIX shell changes directory, says why when the command
#: cannot be found, and replaces itself with the command (which so keeps its process,
#: process group and containment tag). ``$1`` is the directory ("": stay), the rest is
#: the command line, passed as separate arguments and never read as a format string.
COMMAND_LAUNCHER = (
    '[ -z "$1" ] || cd -- "$1" 2>/dev/null'
    " || { printf 'openjd_fail: cannot change to directory %s\\n' \"$1\"; exit 126; }; "
    "shift; "
    'command -v "$1" >/dev/null 2>&1'
    " || { printf 'openjd_fail: cannot start %s: command not found\\n' \"$1\"; exit 127; }; "
    'exec "$@"'
)


@cache
def _command_script() -> StepScript:
    """The fixed script every command runs as: ``/bin/sh -c LAUNCHER farmhand CWD ARGV...``.

    The command line is a ``LIST[STRING]`` job parameter that the EXPR extension
    spreads into separate arguments, so a command of any length needs no template
    of its own, and no interpreter starts before it."""
    document = {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["EXPR"],
        "name": "command",
        "parameterDefinitions": [
            {"name": "Argv", "type": "LIST[STRING]"},
            {"name": "Cwd", "type": "STRING"},
        ],
        "steps": [
            {
                "name": "command",
                "script": {
                    "actions": {
                        "onRun": {
                            "command": "/bin/sh",
                            "args": [
                                "-c",
                                COMMAND_LAUNCHER,
                                "farmhand",
                                "{{Param.Cwd}}",
                                "{{Param.Argv}}",
                            ],
                            "cancelation": {
                                "mode": "NOTIFY_THEN_TERMINATE",
                                "notifyPeriodInSeconds": _COMMAND_NOTIFY_SECONDS,
                            },
                        }
                    }
                },
            }
        ],
    }
    here = Path.cwd()
    created = create_job(
        decode_job(document, source="command"),
        {"Argv": ["true"], "Cwd": ""},
        template_dir=here,
        current_dir=here,
    )
    script = created.job.steps[0].script
    assert script is not None
    return script


# ------------------------------------------------------------------ running


@attrs.frozen
class JobRunStatistics:
    state: Literal["new", "running", "stopping", "ended"]
    #: What a cancel, interrupt or timeout asked for, if one did.
    stop_requested: JobStatus | None
    output_lines: int
    actions_started: int


class JobRun:
    """One run of a ``JobSpec`` (see the module docstring). Run it once."""

    def __init__(
        self,
        spec: JobSpec,
        *,
        sinks: Sequence[OutputSink] = (),
        max_runtime: float | None = None,
        grace: float = DEFAULT_GRACE,
        session_id: str | None = None,
        session_root: Path | None = None,
        retain_working_directory: bool = False,
        containment: Containment | None = None,
        on_event: Callable[[SessionEvent], None] | None = None,
        notes: bool = True,
        job_user: JobUser | None = None,
        secret_patterns: Sequence[str] = (),
        memory_limit: int | None = None,
        output_limit: int | None = None,
        output_limit_mode: Literal["truncate", "fail"] = "truncate",
    ) -> None:
        """``sinks`` get every output line (and, with ``notes``, the runner's
        ``[farmhand]`` notes and a closing line); ``on_event`` sees every session
        event. ``containment`` is shared with the caller's other runs (one per
        process, with its watchdog started, is best); without one the run makes
        its own. ``job_user`` runs the job as that OS user (through ``sudo``, as the
        Deadline worker's job user); ``secret_patterns`` are regular expressions
        whose matches are masked in every line, as ``openjd_redacted_env`` values are.
        ``memory_limit``: bytes the job's processes may use together; an action over it
        is killed and fails with a message starting ``memory limit exceeded``.
        ``output_limit``: characters of output one action may print; past it the rest
        is dropped with a note (``output_limit_mode="truncate"``) or the action fails
        (``"fail"``), with a message starting ``output limit exceeded``."""
        if max_runtime is not None and max_runtime <= 0:
            raise ValueError(f"max_runtime must be positive, not {max_runtime}")
        self.spec = spec
        self.max_runtime = max_runtime
        self.grace = max(grace, 0.0)
        self.session_id = session_id or f"job-{uuid.uuid4().hex[:16]}"
        self._sink = Tee(sinks)
        self._session_root = session_root
        self._retain = retain_working_directory
        self._containment = containment
        self._on_event = on_event
        self._notes = notes
        self._job_user = job_user
        self._secret_patterns = tuple(secret_patterns)
        self._memory_limit = memory_limit
        self._output_limit = output_limit
        self._output_limit_mode: Literal["truncate", "fail"] = output_limit_mode
        self._state: Literal["new", "running", "stopping", "ended"] = "new"
        self._stop_status: JobStatus | None = None
        self._stop_reason: str | None = None
        self._pending: list[Stop] = []
        self._requests_changed = trio.Event()
        self._ended = trio.Event()
        self._outcome: JobOutcome | None = None
        self._ran = False
        # What the events said.
        self._states: Counter[str] = Counter()
        self._names: dict[str | None, str] = {}
        self._first_failure: ActionEnded | None = None
        self._last_exit_code: int | None = None
        self._session_succeeded = True
        self._output_lines = 0
        self._actions_started = 0

    # ---------------------------------------------------------------- control

    def cancel(self, *, grace: float | None = None, reason: str = "canceled") -> None:
        """Stop the job, within ``grace`` seconds (the run's grace by default); it ends
        ``CANCELED``."""
        self._request(JobStatus.CANCELED, grace, reason)

    def interrupt(self, *, grace: float | None = None, reason: str = "interrupted") -> None:
        """Stop the job because the agent is going away; it ends ``INTERRUPTED``."""
        self._request(JobStatus.INTERRUPTED, grace, reason)

    def _request(self, status: JobStatus, grace: float | None, reason: str) -> None:
        if self._state == "ended":
            return
        grace = self.grace if grace is None else max(grace, 0.0)
        if self._stop_status is None:
            self._stop_status = status
            self._stop_reason = reason
            if self._state == "running":
                self._state = "stopping"
            log.info(
                "jobrun.stop_requested",
                session_id=self.session_id,
                status=status.value,
                grace=grace,
                reason=reason,
            )
        self._pending.append(
            Stop(grace=grace, running_state=_STOP_STATES[self._stop_status], reason=reason)
        )
        self._requests_changed.set()
        self._requests_changed = trio.Event()

    # ---------------------------------------------------------------- state

    @property
    def outcome(self) -> JobOutcome | None:
        return self._outcome

    async def wait_ended(self) -> JobOutcome:
        await self._ended.wait()
        assert self._outcome is not None
        return self._outcome

    def statistics(self) -> JobRunStatistics:
        return JobRunStatistics(
            self._state, self._stop_status, self._output_lines, self._actions_started
        )

    # ---------------------------------------------------------------- running

    async def run(self) -> JobOutcome:
        """Run the job to its end and say how it went."""
        if self._ran:
            raise RuntimeError("a JobRun runs once")
        self._ran = True
        started_at = datetime.now(UTC)
        started = trio.current_time()
        spec = self.spec
        if self._stop_status is not None:
            # Stopped before it started: nothing runs.
            self._states[ActionState.NEVER_ATTEMPTED.value] = len(spec.actions)
            self._state = "stopping"
        else:
            self._state = "running"
            log.info("jobrun.started", session_id=self.session_id, job=spec.name, kind=spec.kind)
            await self._run_session()
        outcome = self._make_outcome(started_at, trio.current_time() - started)
        self._outcome = outcome
        self._state = "ended"
        if self._notes:
            self._write([_closing_line(outcome)])
        log.info(
            "jobrun.ended",
            session_id=self.session_id,
            status=outcome.status.value,
            exit_code=outcome.exit_code,
            error=outcome.error,
            duration=round(outcome.duration, 3),
        )
        self._ended.set()
        return outcome

    async def _run_session(self) -> None:
        spec = self.spec
        config = SessionConfig(
            session_id=self.session_id,
            job_parameter_values=spec.parameter_values,
            job_name=spec.name,
            path_mapping_rules=spec.path_mapping_rules,
            session_env=spec.env,
            base_env=spec.base_env,
            extensions=spec.extensions,
            root_directory=self._session_root,
            retain_working_directory=self._retain,
            job_user=self._job_user,
            secret_patterns=self._secret_patterns,
            memory_limit=self._memory_limit,
            output_limit=self._output_limit,
            output_limit_mode=self._output_limit_mode,
        )
        async with trio.open_nursery() as nursery:
            inbox, events_receive = await start_session(
                nursery, config, spec.actions, containment=self._containment, buffer=16
            )
            nursery.start_soon(self._forward_requests, inbox)
            if self.max_runtime is not None:
                nursery.start_soon(self._time_limit, self.max_runtime)
            with events_receive:
                async for event in events_receive:
                    self._handle(event)
            nursery.cancel_scope.cancel(reason="the job's session ended")

    async def _forward_requests(self, inbox: trio.MemorySendChannel[SessionCommand]) -> None:
        while True:
            while self._pending:
                stop = self._pending.pop(0)
                try:
                    await inbox.send(stop)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the session has ended
            await self._requests_changed.wait()

    async def _time_limit(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self._request(JobStatus.TIMEOUT, None, f"the maximum runtime of {seconds:g} s was reached")

    # ---------------------------------------------------------------- events

    def _handle(self, event: SessionEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
        if isinstance(event, ActionOutput):
            self._output_lines += len(event.lines)
            self._write(event.lines)
        elif isinstance(event, SessionLog):
            if self._notes:
                level = "" if event.level == "info" else f"{event.level}: "
                self._write([f"[farmhand] {level}{self._note_text(event.message)}"])
        elif isinstance(event, ActionStarted):
            self._actions_started += 1
            self._names[event.action_id] = event.name
            if self._notes and self.spec.kind == "template":
                params = "".join(f" {k}={v}" for k, v in event.parameters.items())
                self._write([f"==== {event.kind.value} {event.name}{params} ===="])
        elif isinstance(event, ActionEnded):
            self._action_ended(event)
        elif isinstance(event, SessionEnded):
            self._session_succeeded = event.succeeded

    def _note_text(self, message: str) -> str:
        spec = self.spec
        if spec.argv is not None and message.startswith("running: "):
            # The runner names the launcher; the user wants to see their command.
            where = f" (in {spec.cwd})" if spec.cwd else ""
            return f"running: {shlex.join(spec.argv)}{where}"
        return message

    def _action_ended(self, event: ActionEnded) -> None:
        self._states[event.state.value] += 1
        if event.state is ActionState.NEVER_ATTEMPTED:
            return
        if event.kind is ActionKind.TASK_RUN and event.exit_code is not None:
            self._last_exit_code = event.exit_code
        if not event.state.succeeded and self._first_failure is None:
            self._first_failure = event
        if self._notes and self.spec.kind == "template":
            name = self._names.get(event.action_id, event.kind.value)
            code = f", exit code {event.exit_code}" if event.exit_code is not None else ""
            self._write([f"==== {name}: {event.state.value}{code} ===="])

    def _write(self, lines: Sequence[str]) -> None:
        if lines:
            self._sink.write(lines)

    # ---------------------------------------------------------------- outcome

    def _make_outcome(self, started_at: datetime, duration: float) -> JobOutcome:
        # Every action that did not run was never attempted (the session runner is
        # not even handed the task runs a failed session would skip).
        never = ActionState.NEVER_ATTEMPTED.value
        attempted = sum(n for state, n in self._states.items() if state != never)
        if len(self.spec.actions) - attempted > 0:
            self._states[never] = len(self.spec.actions) - attempted
        actions = dict(self._states)
        failure = self._first_failure
        stopped = self._stop_status is not None and (
            not self._session_succeeded or actions.get(ActionState.NEVER_ATTEMPTED.value, 0) > 0
        )
        exit_code = failure.exit_code if failure is not None else self._last_exit_code
        error: str | None
        if stopped:
            assert self._stop_status is not None
            status, error = self._stop_status, self._stop_reason
            if failure is not None and failure.state is _STOP_STATES[status]:
                exit_code = None  # reported when the stop began, before the process ended
        elif self._session_succeeded:
            status, error = JobStatus.SUCCEEDED, None
        else:
            assert failure is not None
            status = JobStatus.TIMEOUT if failure.state is ActionState.TIMEOUT else JobStatus.FAILED
            error = self._describe_failure(failure)
        return JobOutcome(
            status=status,
            exit_code=exit_code,
            error=error,
            started_at=started_at,
            completed_at=datetime.now(UTC),
            duration=duration,
            actions=actions,
        )

    def _describe_failure(self, failure: ActionEnded) -> str:
        if failure.fail_message:
            detail = failure.fail_message
        elif failure.state is ActionState.TIMEOUT:
            detail = "ran past its timeout"
        elif failure.exit_code is not None and failure.exit_code < 0:
            detail = f"killed by {_signal_name(-failure.exit_code)}"
        elif failure.exit_code is not None:
            detail = f"exit code {failure.exit_code}"
        else:
            detail = failure.state.value.lower()
        if self.spec.kind == "command":
            return detail
        name = self._names.get(failure.action_id, failure.kind.value)
        return f"{name}: {detail}"


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _closing_line(outcome: JobOutcome) -> str:
    error = f": {outcome.error}" if outcome.error else ""
    return f"[farmhand] job {outcome.status.value}{error} ({outcome.duration:.1f} s)"


async def run_job(spec: JobSpec, **options: Any) -> JobOutcome:
    """``JobRun(spec, **options).run()``, for a run nobody needs to stop."""
    return await JobRun(spec, **options).run()
