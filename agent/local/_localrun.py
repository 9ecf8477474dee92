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

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol

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
    ActionEnded,
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
    step_memory_ceiling,
)

from .._documents import DocumentError, load_document, read_text
from .._signals import StopLevel, open_stop_signals
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
    #: Values saved with the job (a job bundle's ``parameter_values``), name -> value:
    #: ``parameters`` override them, and those that neither the template nor an
    #: ``--environment`` defines are left out (``LocalPlan.ignored_parameters``).
    saved_parameters: Mapping[str, Any] = attrs.field(factory=dict)
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
    #: Lazy: tasks are made as they are reached, whatever their number.
    actions: PlannedActions
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
    #: The number of task runs of each step in the plan.
    step_task_counts: Mapping[str, int] = attrs.field(factory=dict)
    #: Saved parameter values no template defines, left out (``LocalRunOptions``).
    ignored_parameters: tuple[str, ...] = ()


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
    defined = {
        str(definition.get("name"))
        for document in (template_document, *environment_documents)
        for definition in document.get("parameterDefinitions") or ()
    }
    # A bundle's saved values may be for the queue's environments (a submitter saves
    # CondaPackages, say): without those here, they are no business of this run.
    saved = {k: v for k, v in options.saved_parameters.items() if k in defined}
    ignored = tuple(k for k in options.saved_parameters if k not in defined)
    parameters = {**saved, **parse_job_parameters(options.parameters)}
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
    plan = plan_job(
        template,
        parameters,
        environments=environments,
        template_dir=options.template.parent,
        path_mapping_rules=rules,
        selection=selection,
        template_document=template_document,
        environment_documents=environment_documents,
    )
    return attrs.evolve(plan, ignored_parameters=ignored) if ignored else plan


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
        tasks: _Tasks
        if step is selected and (selection.task_params or selection.tasks):
            selected_tasks = _selected_tasks(step, selection)
            tasks = chosen[step.name] = tuple(selected_tasks[i] for i in range(len(selected_tasks)))
        elif step is selected:
            tasks = _selected_tasks(step, selection)
            if selection.maximum_tasks is not None:
                # A farm gets the chosen tasks listed: only as many as it may take.
                listed = min(len(tasks), _FARM_LISTED_TASKS_LIMIT)
                chosen[step.name] = tuple(tasks[i] for i in range(listed))
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
        PlannedActions(builder.segments),
        frozenset(extensions),
        tuple(path_mapping_rules),
        builder.task_count,
        template_document=template_document or {},
        environment_documents=tuple(environment_documents),
        steps=tuple(step.name for step in steps) if selection.step is not None else None,
        tasks=chosen,
        step_task_counts=builder.step_task_counts,
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


def _selected_tasks(step: Step, options: TaskSelection) -> _Tasks:
    iterator = StepParameterSpaceIterator(space=step.parameterSpace)
    if options.task_params or options.tasks:
        raw = [_parse_task_params(options.task_params)] if options.task_params else []
        if options.tasks:
            raw = _parse_tasks(options.tasks)
        return [_typed_task(step, iterator, values, index) for index, values in enumerate(raw)]
    if options.maximum_tasks is not None:
        if options.maximum_tasks < 1:
            raise TemplateError("--maximum-tasks must be at least 1")
        if options.maximum_tasks > sys.maxsize:
            raise TemplateError(f"--maximum-tasks must be at most {sys.maxsize}")
        return _Prefix(iterator, options.maximum_tasks)
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
            text = read_text(path, what="--tasks file")
        except DocumentError as exc:
            raise TemplateError(str(exc)) from None
    try:
        document = load_document(text, what="--tasks list")
    except DocumentError as exc:
        raise TemplateError(str(exc)) from None
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


#: More tasks than this listed for a farm would be refused there anyway (see
#: ``agent.local._farmrun``): a plan keeps no longer list of them.
_FARM_LISTED_TASKS_LIMIT = 10_001


class _Tasks(Protocol):
    """What a step's tasks are taken from: a tuple, or openjd-model's lazy space."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> TaskParameterSet: ...


class _Prefix:
    """The first ``count`` items of a (lazy) sequence of tasks, itself lazy."""

    def __init__(self, items: _Tasks, count: int) -> None:
        self._items = items
        self._count = min(count, len(items))

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> TaskParameterSet:
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        return self._items[index]

    def __iter__(self) -> Iterator[TaskParameterSet]:
        items = self._items
        return (items[i] for i in range(self._count))


@attrs.frozen
class _Segment:
    """``count`` consecutive actions from ``start``: one environment action, or a
    step's task runs (``tasks``), made by ``make(offset, parameters)``."""

    start: int
    count: int
    make: Callable[[int, TaskParameterSet | None], Runnable]
    tasks: _Tasks | None = None
    exit: bool = False

    def action(self, offset: int) -> Runnable:
        return self.make(offset, self.tasks[offset] if self.tasks is not None else None)

    def actions_from(self, first: int) -> Iterator[Runnable]:
        if self.tasks is None:
            yield from (self.action(i) for i in range(first, self.count))
            return
        # By index: openjd-model's space iterator is its own iterator (iterating it
        # twice would find it exhausted); indexing it is random access, and lazy.
        tasks = self.tasks
        yield from (self.make(i, tasks[i]) for i in range(first, self.count))


#: Plans of up to this many actions are made when planned (and kept).
_MADE_AT_ONCE = 4096


class PlannedActions(Sequence[Runnable]):
    """A session's actions, in order, made as they are reached: a step's task runs
    come from its parameter space (openjd-model's ``StepParameterSpaceIterator``,
    itself lazy), so the plan takes the same memory for ten tasks as for 10**8."""

    def __init__(self, segments: Sequence[_Segment]) -> None:
        self._segments = tuple(segments)
        self._length = sum(segment.count for segment in self._segments)
        # A small plan is made once, so that its actions keep their identity.
        self._made: tuple[Runnable, ...] | None = None
        if self._length <= _MADE_AT_ONCE:
            self._made = tuple(self._make_from(0))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        if self._made is not None:
            return self._made[index]
        for segment in self._segments:
            if index < segment.start + segment.count:
                return segment.action(index - segment.start)
        raise IndexError(index)  # pragma: no cover - the length says otherwise

    def __iter__(self) -> Iterator[Runnable]:
        return self.iter_from(0)

    def iter_from(self, start: int, *, exits_only: bool = False) -> Iterator[Runnable]:
        """The actions from ``start`` on; with ``exits_only``, only the environment
        exits among them (what a session that is ending still runs), without making
        the task runs in between."""
        if self._made is not None:
            return (
                action
                for action in self._made[start:]
                if not exits_only or isinstance(action, ExitEnvironment)
            )
        return self._make_from(start, exits_only=exits_only)

    def _make_from(self, start: int, *, exits_only: bool = False) -> Iterator[Runnable]:
        for segment in self._segments:
            end = segment.start + segment.count
            if end <= start:
                continue
            if exits_only and not segment.exit:
                continue
            yield from segment.actions_from(max(start - segment.start, 0))


class _PlanBuilder:
    def __init__(self, created: CreatedJob) -> None:
        self.created = created
        self.segments: list[_Segment] = []
        self.length = 0
        self.task_count = 0
        self.step_task_counts: dict[str, int] = {}
        self._entered: list[str] = []  # environment ids to exit, outermost first

    def _add_one(self, action: Runnable, *, exit: bool = False) -> None:
        self.segments.append(_Segment(self.length, 1, lambda _o, _t: action, exit=exit))
        self.length += 1

    def _next_id(self) -> str:
        return f"action-{self.length + 1}"

    def enter(self, identifier: str, environment: Any, *, step: Step | None = None) -> None:
        symtab = self.created.step_symbol_tables.get(step.name) if step is not None else None
        self._add_one(
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
        self._add_one(
            ExitEnvironment(action_id=self._next_id(), environment_id=identifier), exit=True
        )
        self._entered.remove(identifier)

    def step(self, step: Step, tasks: _Tasks) -> None:
        step_envs = [f"STEP:{step.name}:{env.name}" for env in step.stepEnvironments or ()]
        for identifier, environment in zip(step_envs, step.stepEnvironments or (), strict=True):
            self.enter(identifier, environment, step=step)
        symtab = self.created.step_symbol_tables.get(step.name)
        first = self.length + 1
        name, script = step.name, step.script
        ceiling = step_memory_ceiling(step)

        def make(offset: int, parameters: TaskParameterSet | None) -> Runnable:
            assert parameters is not None
            return RunTask(
                action_id=f"action-{first + offset}",
                step_name=name,
                script=script,
                parameters=parameters,
                resolved_symtab=symtab,
                memory_limit=ceiling,
            )

        count = len(tasks)
        if count:
            self.segments.append(_Segment(self.length, count, make, tasks=tasks))
            self.length += count
        self.task_count += count
        self.step_task_counts[step.name] = self.step_task_counts.get(step.name, 0) + count
        for identifier in reversed(step_envs):
            self.exit(identifier)

    def exit_all(self) -> None:
        for identifier in reversed(list(self._entered)):
            self.exit(identifier)


@attrs.frozen
class Limits:
    """What one action may use: memory (bytes, its session's processes together) and
    output (characters), and what to do past the output limit."""

    memory: int | None = None
    output: int | None = None
    output_mode: Literal["truncate", "fail"] = "truncate"


def session_config(plan: LocalPlan, *, preserve: bool, session_id: str = "local") -> SessionConfig:
    return SessionConfig(
        session_id=session_id,
        job_parameter_values=plan.created.parameter_values,
        job_name=plan.job_name,
        path_mapping_rules=plan.path_mapping_rules,
        extensions=plan.extensions,
        retain_working_directory=preserve,
    )


#: Actions enqueued ahead of the ones that have ended, at most (and in chunks of).
_AHEAD = 256
_CHUNK = 64


async def start_session(
    nursery: trio.Nursery,
    config: SessionConfig,
    actions: Sequence[Runnable],
    *,
    containment: Containment | None = None,
    buffer: int = 8,
) -> tuple[trio.MemorySendChannel[SessionCommand], trio.MemoryReceiveChannel[SessionEvent]]:
    """Start a ``SessionRunner`` in ``nursery`` to run ``actions``, then nothing more
    (``Finish``); its inbox, for cancels and stops, and its events, which end when
    the session has.

    The actions are handed over as the session gets to them, a few hundred ahead of
    the last one that ended, so a plan of 10**8 tasks (``PlannedActions``) starts at
    once and takes no more memory than one of ten. Once an action has failed (or
    was cancelled) the session runs only environment exits: those alone follow,
    and the other actions are never made (callers count them as never attempted).
    """
    runner_send, runner_receive = trio.open_memory_channel[SessionEvent](buffer)
    events_send, events_receive = trio.open_memory_channel[SessionEvent](buffer)
    runner = SessionRunner(config, runner_send, containment=containment)
    progress = _Progress()

    async def run_runner(
        *, task_status: trio.TaskStatus[trio.MemorySendChannel[SessionCommand]]
    ) -> None:
        with runner_send:
            await runner.run(task_status=task_status)

    async def relay() -> None:
        with runner_receive, events_send:
            async for event in runner_receive:
                if isinstance(event, ActionEnded):
                    progress.ended(event)
                await events_send.send(event)
        progress.close()

    inbox: trio.MemorySendChannel[SessionCommand] = await nursery.start(run_runner)
    nursery.start_soon(relay)
    nursery.start_soon(_feed, inbox, actions, progress)
    return inbox, events_receive


class _Progress:
    """How far the session has got: what the feeder waits on."""

    def __init__(self) -> None:
        self.count = 0
        self.ending = False
        self.closed = False
        self._changed = trio.Event()

    def ended(self, event: ActionEnded) -> None:
        self.count += 1
        if (
            event.state is not ActionState.SUCCESS
            and event.state is not ActionState.NEVER_ATTEMPTED
        ):
            self.ending = True
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self) -> None:
        await self._changed.wait()


async def _feed(
    inbox: trio.MemorySendChannel[SessionCommand],
    actions: Sequence[Runnable],
    progress: _Progress,
) -> None:
    position = 0
    pending = iter(actions)
    try:
        while position < len(actions) and not progress.closed:
            if progress.ending:
                # Only exits still run: hand those over, skip the rest unmade.
                if isinstance(actions, PlannedActions):
                    exits = list(actions.iter_from(position, exits_only=True))
                else:
                    exits = [
                        a for a in islice(actions, position, None) if isinstance(a, ExitEnvironment)
                    ]
                if exits:
                    await inbox.send(Enqueue(tuple(exits)))
                break
            if position - progress.count >= _AHEAD:
                await progress.wait()
                continue
            chunk = tuple(islice(pending, _CHUNK))
            position += len(chunk)
            await inbox.send(Enqueue(chunk))
        await inbox.send(Finish())
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the session has ended


async def run_local_session(
    plan: LocalPlan,
    config: SessionConfig,
    on_event: Callable[[SessionEvent], None],
    *,
    handle_signals: bool = True,
    containment: Containment | None = None,
    on_interrupt: Callable[[str], None] | None = None,
) -> None:
    """Run the plan to its end, passing each event to ``on_event`` in order.

    With ``handle_signals``, SIGINT/SIGTERM cancel the running action with its
    own method (the environment exits still run); a second signal kills what
    is running at once; a third skips the remaining exits. ``on_interrupt``
    hears of the first one (``"SIGINT"``), before anything is cancelled.
    """
    async with trio.open_nursery() as nursery:
        inbox, events_receive = await start_session(
            nursery, config, plan.actions, containment=containment
        )
        if handle_signals:
            nursery.start_soon(_forward_signals, inbox, on_interrupt)
        # The output gone (a closed pipe) interrupts the run as a first signal does.
        output = OutputGuard(
            on_event,
            lambda: nursery.start_soon(inbox.send, Cancel(reason="the output was closed")),
        )
        with events_receive:
            async for event in events_receive:
                output(event)
        nursery.cancel_scope.cancel(reason="session ended")


async def _forward_signals(
    inbox: trio.MemorySendChannel[SessionCommand],
    on_interrupt: Callable[[str], None] | None,
) -> None:
    escalation: dict[StopLevel, SessionCommand] = {
        StopLevel.GRACEFUL: Cancel(reason="interrupted by a signal"),
        StopLevel.IMMEDIATE: Cancel(
            time_limit=0, reason="interrupted again: killing the running action"
        ),
        StopLevel.ABANDON: Stop(
            grace=0,
            running_state=ActionState.CANCELED,
            reason="interrupted three times: skipping the rest",
        ),
    }
    with open_stop_signals() as signals:
        async for request in signals:
            log.info("run.signal", signal=request.signal, count=request.count)
            if on_interrupt is not None and request.level is StopLevel.GRACEFUL:
                on_interrupt(request.signal)
            command = escalation.pop(request.level, None)
            if command is not None:
                try:
                    await inbox.send(command)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
