"""Running a job template on this machine in one session, as ``openjd run`` does.

``plan_local_session`` turns a template, parameters and options into the ordered
list of actions for one session:

    external environments (``--environment``) entered, in the order given
    job environments entered
    for each step (dependency order): its environments entered, its tasks,
        its environments exited
    job environments exited, external environments exited

``run_local_session`` hands the plan to a ``SessionRunner`` and passes every
event to a callback. After a failure the runner reports the rest
NEVER_ATTEMPTED and still runs the exits of the environments that were entered.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio
from openjd.expr import PathMappingRule
from openjd.model import (
    EnvironmentTemplate,
    Job,
    JobTemplate,
    ParameterValue,
    ParameterValueType,
    Step,
    StepDependencyGraph,
    StepParameterSpaceIterator,
    TaskParameterSet,
)

from actors import (
    ActionState,
    Cancel,
    Containment,
    Enqueue,
    EnterEnvironment,
    ExitEnvironment,
    Finish,
    Runnable,
    RunTask,
    SessionCommand,
    SessionConfig,
    SessionEvent,
    SessionRunner,
    Stop,
)

from ._render import OutputGuard
from ._templates import (
    CreatedJob,
    TemplateError,
    create_job,
    decode_environment,
    decode_job,
    parse_job_parameters,
    parse_path_mapping_rules,
    read_document,
)

log = structlog.get_logger("farmhand.run")


@attrs.frozen
class LocalRunOptions:
    template: Path
    parameters: Sequence[str] = ()
    step: str | None = None
    run_dependencies: bool = False
    environments: Sequence[Path] = ()
    path_mapping_rules: str | None = None
    task_params: Sequence[str] = ()
    tasks: str | None = None
    maximum_tasks: int | None = None
    preserve: bool = False


@attrs.frozen
class LocalPlan:
    job_name: str
    created: CreatedJob
    actions: tuple[Runnable, ...]
    extensions: frozenset[str]
    path_mapping_rules: tuple[PathMappingRule, ...]
    #: Number of task runs in the plan.
    task_count: int
    #: What a farm needs to run the same session (``agent.local._farmrun``): the documents
    #: as read, the steps chosen (``None``: all of them) and the tasks chosen for a
    #: step when they are not its whole parameter space.
    template_document: Mapping[str, Any] = attrs.field(factory=dict)
    environment_documents: tuple[Mapping[str, Any], ...] = ()
    steps: tuple[str, ...] | None = None
    tasks: Mapping[str, tuple[TaskParameterSet, ...]] = attrs.field(factory=dict)


@attrs.frozen
class TaskSelection:
    """Which steps and tasks of a job run (``openjd run``'s selection flags)."""

    step: str | None = None
    run_dependencies: bool = False
    task_params: Sequence[str] = ()
    tasks: str | None = None
    maximum_tasks: int | None = None


def plan_local_session(options: LocalRunOptions) -> LocalPlan:
    """Validate everything and lay out the session's actions. Raises ``TemplateError``."""
    environment_documents = [read_document(path) for path in options.environments]
    environments = [
        decode_environment(document, source=str(path))
        for document, path in zip(environment_documents, options.environments, strict=True)
    ]
    template_document = read_document(options.template)
    template = decode_job(template_document, source=str(options.template))
    parameters = parse_job_parameters(options.parameters)
    rules = (
        tuple(parse_path_mapping_rules(options.path_mapping_rules))
        if options.path_mapping_rules
        else ()
    )
    selection = TaskSelection(
        step=options.step,
        run_dependencies=options.run_dependencies,
        task_params=options.task_params,
        tasks=options.tasks,
        maximum_tasks=options.maximum_tasks,
    )
    return plan_job(
        template,
        parameters,
        environments=environments,
        template_dir=options.template.parent,
        path_mapping_rules=rules,
        selection=selection,
        template_document=template_document,
        environment_documents=environment_documents,
    )


def plan_job(
    template: JobTemplate,
    parameters: Mapping[str, Any],
    *,
    template_dir: Path,
    environments: Sequence[EnvironmentTemplate] = (),
    path_mapping_rules: Sequence[PathMappingRule] = (),
    selection: TaskSelection = TaskSelection(),
    template_document: Mapping[str, Any] | None = None,
    environment_documents: Sequence[Mapping[str, Any]] = (),
) -> LocalPlan:
    """Lay out one session's actions for a decoded template and plain parameter values
    (``{"Frames": "1-10"}``; defaults and types come from the template). Raises
    ``TemplateError``. Relative PATH parameters resolve against ``template_dir``.
    ``template_document`` and ``environment_documents`` (the documents as read) go
    into the plan for running it through a farm."""
    created = create_job(
        template,
        dict(parameters),
        environments=environments,
        template_dir=template_dir,
        current_dir=Path.cwd(),
    )
    job = created.job
    steps, selected = _select_steps(job, selection)
    chosen: dict[str, tuple[TaskParameterSet, ...]] = {}
    builder = _PlanBuilder(created)
    for index, env_template in enumerate(environments):
        builder.enter(f"EXTERNAL:{index}:{env_template.environment.name}", env_template.environment)
    for environment in job.jobEnvironments or ():
        builder.enter(f"JOB:{environment.name}", environment)
    for step in steps:
        tasks: Iterable[TaskParameterSet]
        if step is selected and (
            selection.task_params or selection.tasks or selection.maximum_tasks is not None
        ):
            tasks = chosen[step.name] = tuple(_selected_tasks(step, selection))
        elif step is selected:
            tasks = _selected_tasks(step, selection)
        else:
            tasks = StepParameterSpaceIterator(space=step.parameterSpace)
        builder.step(step, tasks)
    builder.exit_all()
    extensions = set(template.extensions or ())
    for env_template in environments:
        extensions.update(env_template.extensions or ())
    return LocalPlan(
        str(job.name),
        created,
        tuple(builder.actions),
        frozenset(extensions),
        tuple(path_mapping_rules),
        builder.task_count,
        template_document=template_document or {},
        environment_documents=tuple(environment_documents),
        steps=tuple(step.name for step in steps) if selection.step is not None else None,
        tasks=chosen,
    )


def _select_steps(job: Job, options: TaskSelection) -> tuple[list[Step], Step | None]:
    steps = job.steps
    by_name = {step.name: step for step in steps}
    if options.step is not None:
        selected = by_name.get(options.step)
        if selected is None:
            raise TemplateError(
                f"no step named {options.step!r}; the job's steps are: {', '.join(by_name)}"
            )
        chosen = _dependencies(selected, by_name) if options.run_dependencies else []
        return [*chosen, selected], selected
    if options.task_params or options.tasks or options.maximum_tasks:
        if len(steps) != 1:
            raise TemplateError(
                "--task-param, --tasks and --maximum-tasks need --step when the job has several steps"
            )
        return [steps[0]], steps[0]
    if len(steps) == 1:
        return [steps[0]], steps[0]
    try:
        ordered = StepDependencyGraph(job=job).topo_sorted()
    except (RuntimeError, ValueError) as exc:
        raise TemplateError(str(exc)) from exc
    return list(ordered), None


def _dependencies(step: Step, by_name: dict[str, Step]) -> list[Step]:
    """``step``'s transitive dependencies, each after its own dependencies."""
    ordered: list[Step] = []
    seen: set[str] = set()

    def visit(current: Step) -> None:
        for dependency in current.dependencies or ():
            name = dependency.dependsOn
            if name not in seen:
                seen.add(name)
                visit(by_name[name])
                ordered.append(by_name[name])

    visit(step)
    return ordered


def _selected_tasks(step: Step, options: TaskSelection) -> Iterable[TaskParameterSet]:
    iterator = StepParameterSpaceIterator(space=step.parameterSpace)
    if options.task_params or options.tasks:
        raw = [_parse_task_params(options.task_params)] if options.task_params else []
        if options.tasks:
            raw = _parse_tasks(options.tasks)
        return [_typed_task(step, iterator, values, index) for index, values in enumerate(raw)]
    if options.maximum_tasks is not None:
        if options.maximum_tasks < 1:
            raise TemplateError("--maximum-tasks must be at least 1")
        return islice(iterator, options.maximum_tasks)
    return iterator


def _parse_task_params(arguments: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for argument in arguments:
        name, sep, value = argument.strip().partition("=")
        if not sep or not name:
            raise TemplateError(f"task parameter {argument!r} must be NAME=VALUE")
        if name in values:
            raise TemplateError(f"task parameter {name!r} is given more than once")
        values[name] = value
    return values


def _parse_tasks(argument: str) -> list[dict[str, str]]:
    text = argument.strip()
    if text.startswith("file://"):
        path = Path(text.removeprefix("file://")).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    import yaml  # only needed here

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"--tasks is not valid JSON/YAML: {exc}") from exc
    if not isinstance(document, list) or not all(isinstance(item, dict) for item in document):
        raise TemplateError("--tasks must be a list of mappings from task parameter name to value")
    return [{str(k): str(v) for k, v in item.items()} for item in document]


def _typed_task(
    step: Step, iterator: StepParameterSpaceIterator, values: dict[str, str], index: int
) -> TaskParameterSet:
    names = set(iterator.names)
    if set(values) != names:
        missing, extra = sorted(names - set(values)), sorted(set(values) - names)
        parts = [
            f"missing {', '.join(missing)}" if missing else "",
            f"unknown {', '.join(extra)}" if extra else "",
        ]
        raise TemplateError(f"task {index}: {'; '.join(p for p in parts if p)}")
    assert step.parameterSpace is not None
    definitions = step.parameterSpace.taskParameterDefinitions
    typed = {
        name: ParameterValue(type=ParameterValueType(definitions[name].type), value=value)
        for name, value in values.items()
    }
    try:
        iterator.validate_containment(typed)
    except ValueError as exc:
        raise TemplateError(f"task {index}: {exc}") from exc
    return typed


class _PlanBuilder:
    def __init__(self, created: CreatedJob) -> None:
        self.created = created
        self.actions: list[Runnable] = []
        self.task_count = 0
        self._entered: list[str] = []  # environment ids to exit, outermost first

    def _next_id(self) -> str:
        return f"action-{len(self.actions) + 1}"

    def enter(self, identifier: str, environment: Any, *, step: Step | None = None) -> None:
        symtab = self.created.step_symbol_tables.get(step.name) if step is not None else None
        self.actions.append(
            EnterEnvironment(
                action_id=self._next_id(),
                environment_id=identifier,
                environment=environment,
                step_name=step.name if step is not None else None,
                resolved_symtab=symtab,
            )
        )
        self._entered.append(identifier)

    def exit(self, identifier: str) -> None:
        self.actions.append(ExitEnvironment(action_id=self._next_id(), environment_id=identifier))
        self._entered.remove(identifier)

    def step(self, step: Step, tasks: Iterable[TaskParameterSet]) -> None:
        step_envs = [f"STEP:{step.name}:{env.name}" for env in step.stepEnvironments or ()]
        for identifier, environment in zip(step_envs, step.stepEnvironments or (), strict=True):
            self.enter(identifier, environment, step=step)
        symtab = self.created.step_symbol_tables.get(step.name)
        for parameters in tasks:
            self.actions.append(
                RunTask(
                    action_id=self._next_id(),
                    step_name=step.name,
                    script=step.script,
                    parameters=parameters,
                    resolved_symtab=symtab,
                )
            )
            self.task_count += 1
        for identifier in reversed(step_envs):
            self.exit(identifier)

    def exit_all(self) -> None:
        for identifier in reversed(list(self._entered)):
            self.exit(identifier)


def session_config(plan: LocalPlan, *, preserve: bool, session_id: str = "local") -> SessionConfig:
    return SessionConfig(
        session_id=session_id,
        job_parameter_values=plan.created.parameter_values,
        job_name=plan.job_name,
        path_mapping_rules=plan.path_mapping_rules,
        extensions=plan.extensions,
        retain_working_directory=preserve,
    )


async def start_session(
    nursery: trio.Nursery,
    config: SessionConfig,
    actions: Sequence[Runnable],
    *,
    containment: Containment | None = None,
    buffer: int = 8,
) -> tuple[trio.MemorySendChannel[SessionCommand], trio.MemoryReceiveChannel[SessionEvent]]:
    """Start a ``SessionRunner`` in ``nursery`` with ``actions`` queued and nothing more
    to come (``Finish``); its inbox, for cancels and stops, and its events, which end
    when the session has."""
    events_send, events_receive = trio.open_memory_channel[SessionEvent](buffer)
    runner = SessionRunner(config, events_send, containment=containment)

    async def run_runner(
        *, task_status: trio.TaskStatus[trio.MemorySendChannel[SessionCommand]]
    ) -> None:
        with events_send:
            await runner.run(task_status=task_status)

    inbox: trio.MemorySendChannel[SessionCommand] = await nursery.start(run_runner)
    await inbox.send(Enqueue(tuple(actions)))
    await inbox.send(Finish())
    return inbox, events_receive


async def run_local_session(
    plan: LocalPlan,
    config: SessionConfig,
    on_event: Callable[[SessionEvent], None],
    *,
    handle_signals: bool = True,
    containment: Containment | None = None,
) -> None:
    """Run the plan to its end, passing each event to ``on_event`` in order.

    With ``handle_signals``, SIGINT/SIGTERM cancel the running action with its
    own method (the environment exits still run); a second signal kills what
    is running at once; a third skips the remaining exits.
    """
    async with trio.open_nursery() as nursery:
        inbox, events_receive = await start_session(
            nursery, config, plan.actions, containment=containment
        )
        if handle_signals:
            nursery.start_soon(_forward_signals, inbox)
        # The output gone (a closed pipe) interrupts the run as a first signal does.
        output = OutputGuard(
            on_event,
            lambda: nursery.start_soon(inbox.send, Cancel(reason="the output was closed")),
        )
        with events_receive:
            async for event in events_receive:
                output(event)
        nursery.cancel_scope.cancel(reason="session ended")


async def _forward_signals(inbox: trio.MemorySendChannel[SessionCommand]) -> None:
    escalation: list[SessionCommand] = [
        Cancel(reason="interrupted by a signal"),
        Cancel(time_limit=0, reason="interrupted again: killing the running action"),
        Stop(
            grace=0,
            running_state=ActionState.CANCELED,
            reason="interrupted three times: skipping the rest",
        ),
    ]
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for signum in signals:
            log.info("run.signal", signal=signal.Signals(signum).name, count=count + 1)
            if count < len(escalation):
                try:
                    await inbox.send(escalation[count])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            count += 1
