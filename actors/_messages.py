"""Messages the actors exchange.

Commands flow *into* an actor through its inbox; events flow *out* of it through
the channel its owner gave it. Every message is an immutable attrs class.

Session runner
==============

Commands (``SessionCommand``)::

    Enqueue(actions)          append actions to the queue
    Replace(actions)          replace everything queued (not the running action)
    Cancel(action_ids, ...)   cancel the running action and/or drop queued ones
    Finish()                  no more actions will come: end once the queue is done
    Stop(grace, ...)          end the session: interrupt, exit environments, finish

Queued actions (``QueuedAction``) are either runnable as they are
(``EnterEnvironment``, ``ExitEnvironment``, ``RunTask``) or anything else with
an ``action_id``, ``kind`` and ``environment_id``, which the runner's resolver
turns into a runnable just before it runs (the Deadline scheduler queues wire
definitions whose job entities are fetched at that moment).

Events (``SessionEvent``)::

    ActionStarted             the action's process (or no-process action) began
    ActionOutput              a batch of output lines, in order
    ActionProgress            ``openjd_progress``
    ActionStatusMessage       ``openjd_status``
    ActionFailMessage         ``openjd_fail``
    SessionLog                a line the runner itself writes to the session log
    ActionEnded               the final state, exit code and last messages
    SessionEnded              the runner finished; nothing follows

Entity fetcher
==============

``Fetch(session_id, identifiers, reply_to)`` asks for job entities (the reply is
one outcome per identifier); ``Forget(session_id)`` drops a session's cache.

Log shipper
===========

``OpenLogStream(path, destination, compact_over, reply_to)`` opens a stream (the
reply is the ``LogStream``, written to synchronously); ``LogEvent`` is one
timestamped line of a batch handed to a ``LogSink``.

Scheduler
=========

What the farm says, already translated from its wire format by the farm client
(``agent/deadline/_schedule.py`` for Deadline)::

    Schedule                  one answer: assignments, cancels, interval, stop
    SessionAssignment         one assigned session and its actions
    AssignedAction            one action, typed (kind, environment, step, task)
    SessionLogConfig          where the session's log goes

Work sessions report to the scheduler (``SessionReport``)::

    ActionUpdate              started, progress, status, or the final state
    SessionReported           every update of the session has been sent
    SessionClosed             the session is over: log flushed, cache dropped

The owner commands the scheduler (``SchedulerCommand``)::

    SyncNow(reply_to, since)  call the farm now; reply once a later call is done
                              (or one that started at or after ``since``)
    WaitSessions(until, ...)  reply once the sessions are reported/closed/busy
    FinishSessions()          no new sessions; current ones finish what they have
    StopSessions(...)         stop every session (a drain)
    RefuseNewSessions()       no new sessions; current ones go on
    CancelRunning(...)        cancel the action every session is running
    CloseSchedule(reply_to)   make no more calls; reply once none is in flight

and hears from it (``SchedulerEvent``)::

    IntervalChanged           the farm wants a sync every N seconds
    FarmStopRequested         the farm asks the worker to stop
    SessionClosed             (as above) one more session is over

Heartbeat
=========

``SetInterval(seconds)`` changes how often it beats (latest wins).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs
import outcome
import trio

if TYPE_CHECKING:
    from openjd.expr import PathMappingRule
    from openjd.model import TaskParameterSet
    from openjd.model.v2023_09 import Environment, StepScript


class ActionKind(enum.Enum):
    ENV_ENTER = "env_enter"
    ENV_EXIT = "env_exit"
    TASK_RUN = "task_run"
    #: Done by the agent itself, not a process: syncing job attachments.
    SYNC_ATTACHMENTS = "sync_attachments"


class ActionState(enum.Enum):
    """How an action ended (``RUNNING`` only in snapshots of live actions)."""

    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TIMEOUT = "TIMEOUT"
    INTERRUPTED = "INTERRUPTED"
    NEVER_ATTEMPTED = "NEVER_ATTEMPTED"

    @property
    def succeeded(self) -> bool:
        return self is ActionState.SUCCESS


# --------------------------------------------------------------------------
# Actions


class QueuedAction(Protocol):
    """What the runner needs to know about a queued action before resolving it."""

    @property
    def action_id(self) -> str | None: ...

    @property
    def kind(self) -> ActionKind: ...

    @property
    def environment_id(self) -> str | None: ...


@attrs.frozen
class EnterEnvironment:
    """Enter an OpenJD environment: apply its ``variables``, run its ``onEnter``."""

    action_id: str
    environment_id: str
    environment: Environment
    #: The owning step's name, for step environments (``Step.Name``).
    step_name: str | None = None
    #: openjd-model's resolved symbol table for the scope (EXPR ``let`` values).
    resolved_symtab: Any = None
    #: Extra variables for this action's process only (e.g. DEADLINE_SESSIONACTION_ID).
    env: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def kind(self) -> ActionKind:
        return ActionKind.ENV_ENTER

    @property
    def name(self) -> str:
        return str(self.environment.name)


@attrs.frozen
class ExitEnvironment:
    """Run the ``onExit`` of the innermost entered environment and drop its variables.

    ``action_id`` is ``None`` for exits the runner makes itself when a session
    ends with environments still entered.
    """

    action_id: str | None
    environment_id: str
    env: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def kind(self) -> ActionKind:
        return ActionKind.ENV_EXIT


class HostContext(Protocol):
    """What an action the agent does itself (``HostAction``, ``TaskHook``) may use."""

    @property
    def working_directory(self) -> Path: ...

    @property
    def job_user(self) -> Any:
        """The ``ResolvedJobUser`` that runs the session's processes, or ``None``."""

    async def progress(self, percent: float) -> None:
        """Report progress (as ``openjd_progress`` would)."""

    async def status(self, message: str) -> None:
        """Report a status message (as ``openjd_status`` would)."""

    async def log(self, message: str, level: str = "info") -> None:
        """A line in the session log."""

    def add_path_mapping_rules(self, rules: Sequence[PathMappingRule]) -> None:
        """Add path-mapping rules for the session's later actions."""


class TaskHook(Protocol):
    """Work around a task run: ``before`` it starts, ``after`` it succeeds.

    ``after`` returns the action's ``manifests`` (job attachments' output
    manifests); an exception from either fails the action with its message.
    """

    async def before(self, context: HostContext) -> None: ...

    async def after(self, context: HostContext) -> Sequence[Mapping[str, str]]: ...


@attrs.frozen
class RunTask:
    """Run one task (or chunk) of a step."""

    action_id: str
    step_name: str
    script: StepScript
    parameters: TaskParameterSet = attrs.field(factory=dict)
    resolved_symtab: Any = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: Work before and after the task (job attachments' output upload).
    hook: TaskHook | None = None
    #: The step's own memory ceiling in bytes (``amount.worker.memory``; see
    #: ``actors._openjd.step_memory_ceiling``), on top of the session's limit.
    memory_limit: int | None = None

    @property
    def kind(self) -> ActionKind:
        return ActionKind.TASK_RUN

    @property
    def environment_id(self) -> None:
        return None

    @property
    def name(self) -> str:
        return self.step_name


@attrs.frozen
class HostAction:
    """An action the agent does itself, in-process: ``work(context)``.

    It succeeds when ``work`` returns and fails with the message of the
    exception it raises (syncing job attachments is one).
    """

    action_id: str
    label: str
    work: Callable[[HostContext], Awaitable[None]]
    env: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def kind(self) -> ActionKind:
        return ActionKind.SYNC_ATTACHMENTS

    @property
    def environment_id(self) -> None:
        return None

    @property
    def name(self) -> str:
        return self.label


Runnable = EnterEnvironment | ExitEnvironment | RunTask | HostAction


# --------------------------------------------------------------------------
# Commands


@attrs.frozen
class Enqueue:
    actions: tuple[QueuedAction, ...]


@attrs.frozen
class Replace:
    """Replace the queued actions; the running one and finished ones are untouched."""

    actions: tuple[QueuedAction, ...]


@attrs.frozen
class Cancel:
    """Cancel actions.

    The running action is cancelled with its own cancelation method (or within
    ``time_limit`` seconds, whichever is sooner) if ``action_ids`` is ``None`` or
    contains it. Queued actions named in ``action_ids`` are dropped and reported
    ``NEVER_ATTEMPTED``.
    """

    action_ids: frozenset[str] | None = None
    time_limit: float | None = None
    reason: str = "canceled"
    #: The running action fails, with ``reason`` as its message (not CANCELED).
    fail: bool = False


@attrs.frozen
class Finish:
    """No more actions will be queued: run what is queued, exit the environments
    still entered, and end. (Closing the inbox means the same.)

    ``running_only``: let the running action run to its end, but start no other
    task: the queued ones are reported ``NEVER_ATTEMPTED`` (the farm gives them to
    another worker) once it has ended; then the environments are exited."""

    running_only: bool = False


@attrs.frozen
class Stop:
    """End the session.

    The running action is reported ``running_state`` at once and cancelled within
    ``grace`` seconds; queued actions are reported ``NEVER_ATTEMPTED``; the
    entered environments are exited, innermost first, within what is left of
    ``grace`` (``None``: no limit beyond each action's own timeout).
    """

    grace: float | None = None
    running_state: ActionState = ActionState.INTERRUPTED
    reason: str = "stopped"


SessionCommand = Enqueue | Replace | Cancel | Finish | Stop


# --------------------------------------------------------------------------
# Events


@attrs.frozen
class ActionStarted:
    session_id: str
    action_id: str | None
    kind: ActionKind
    name: str
    #: Task parameter values as strings (empty for environment actions).
    parameters: Mapping[str, str]
    time: datetime


@attrs.frozen
class ActionOutput:
    session_id: str
    action_id: str | None
    lines: tuple[str, ...]


@attrs.frozen
class ActionProgress:
    session_id: str
    action_id: str | None
    progress: float


@attrs.frozen
class ActionStatusMessage:
    session_id: str
    action_id: str | None
    message: str


@attrs.frozen
class ActionFailMessage:
    session_id: str
    action_id: str | None
    message: str


@attrs.frozen
class SessionLog:
    """A line the runner writes to the session log (not the action's output)."""

    session_id: str
    action_id: str | None
    level: str
    message: str


@attrs.frozen
class ActionUsage:
    """What an action cost. Its wall time always; where its session has a launcher
    (every contained session), the CPU time of its processes (the action with the
    children it waited for, and anything of the session that ended while it ran)
    and the peak memory of the session's whole process tree while it ran: what its
    memory cgroup counted, where the host gives the session one (``_memcg.py``:
    resident memory and page cache, as the kernel charges them), else its resident
    memory sampled twice a second (and never below its largest single process).
    The figures survive a kill, a timeout or a cancel."""

    wall_seconds: float
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    peak_rss_bytes: int | None = None
    #: Peak GPU memory the session's processes held (where ``nvidia-smi`` is; sampled
    #: every 10 s and half a second after the start).
    peak_gpu_bytes: int | None = None

    def describe(self) -> str:
        """One line for a log: ``wall 1.204 s, CPU 0.81 s user + 0.10 s system, peak
        memory 152.3 MiB``."""
        parts = [f"wall {self.wall_seconds:.3f} s"]
        if self.cpu_user_seconds is not None and self.cpu_system_seconds is not None:
            parts.append(
                f"CPU {self.cpu_user_seconds:.2f} s user + {self.cpu_system_seconds:.2f} s system"
            )
        if self.peak_rss_bytes is not None:
            parts.append(f"peak memory {self.peak_rss_bytes / 2**20:.1f} MiB")
        if self.peak_gpu_bytes is not None:
            parts.append(f"peak GPU memory {self.peak_gpu_bytes / 2**20:.1f} MiB")
        return ", ".join(parts)

    def to_json(self) -> dict[str, float | int]:
        fields = {
            "wall_seconds": round(self.wall_seconds, 6),
            "cpu_user_seconds": self.cpu_user_seconds,
            "cpu_system_seconds": self.cpu_system_seconds,
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_gpu_bytes": self.peak_gpu_bytes,
        }
        return {k: v for k, v in fields.items() if v is not None}


@attrs.frozen
class ActionEnded:
    session_id: str
    action_id: str | None
    kind: ActionKind
    state: ActionState
    exit_code: int | None = None
    progress: float | None = None
    status_message: str | None = None
    fail_message: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    #: A task run's job-attachment output manifests (``None``: it has none to report).
    manifests: tuple[Mapping[str, str], ...] | None = None
    #: What its processes cost (``None``: it ran none, a host action).
    usage: ActionUsage | None = None


@attrs.frozen
class SessionEnded:
    session_id: str
    #: Whether every action that was attempted succeeded.
    succeeded: bool
    working_directory: str | None


SessionEvent = (
    ActionStarted
    | ActionOutput
    | ActionProgress
    | ActionStatusMessage
    | ActionFailMessage
    | SessionLog
    | ActionEnded
    | SessionEnded
)


# --------------------------------------------------------------------------
# Entity fetcher

#: The fetcher's answer to a ``Fetch``: one outcome per identifier, in order.
Replies = list[outcome.Outcome[dict[str, Any]]]


@attrs.frozen
class Fetch:
    """Ask for entities; the reply lists one outcome per identifier, in order."""

    session_id: str
    identifiers: tuple[dict[str, Any], ...]
    reply_to: trio.MemorySendChannel[Replies]


@attrs.frozen
class Forget:
    """The session ended: drop its cache."""

    session_id: str


FetcherCommand = Fetch | Forget


# --------------------------------------------------------------------------
# Log shipper


@attrs.frozen
class LogEvent:
    """One line of a batch for a ``LogSink``."""

    timestamp: int  # milliseconds since the epoch
    message: str


@attrs.frozen
class Destination:
    """A CloudWatch Logs stream."""

    group: str
    stream: str


class LogWriter(Protocol):
    """What an opened log stream offers its writer (``LogStream``)."""

    def write(self, lines: Iterable[str], *, at: datetime | None = None) -> None: ...

    def close(self) -> None: ...

    async def flush(self) -> None: ...


@attrs.frozen
class OpenLogStream:
    """Open a log stream writing to ``path`` and, with a destination, shipping there;
    the reply is the stream (``compact_over``: the file is a spool; ``shipped_marker``:
    where the shipped offset is kept; see ``LogStream``)."""

    path: Path
    destination: Destination | None
    reply_to: trio.MemorySendChannel[outcome.Outcome[LogWriter]]
    compact_over: int | None = None
    shipped_marker: Path | None = None


LogShipperCommand = OpenLogStream


# --------------------------------------------------------------------------
# Scheduler: what the farm assigns (already translated from its wire format)


@attrs.frozen
class AssignedAction:
    """One assigned session action, as the farm client translated it."""

    action_id: str
    kind: ActionKind
    #: The farm's name for the action type (``taskRun``, ``envEnter``, ...).
    type_name: str
    environment_id: str | None = None
    step_id: str | None = None
    task_id: str | None = None
    #: Task parameter values in the farm's typed form, parsed when the task runs.
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    #: Set when farmhand cannot run this type of action (it fails when it comes up).
    unsupported: str | None = None


@attrs.frozen
class SessionLogConfig:
    """Where a session's log goes; ``error`` is the farm's own complaint about it."""

    driver: str
    group: str | None = None
    stream: str | None = None
    error: str | None = None


@attrs.frozen
class SessionAssignment:
    """One session the farm assigns to this worker, with its actions in order."""

    session_id: str
    queue_id: str
    job_id: str
    actions: tuple[AssignedAction, ...]
    log_config: SessionLogConfig

    def unsafe_id(self) -> str | None:
        """Why one of the ids that name this session's files cannot be used, or None."""
        from ._paths import UnsafePathError, safe_id

        try:
            for value, what in (
                (self.session_id, "session id"),
                (self.queue_id, "queue id"),
                (self.job_id, "job id"),
            ):
                safe_id(value, what)
        except UnsafePathError as exc:
            return str(exc)
        return None


@attrs.frozen
class Schedule:
    """One answer of the farm to a sync."""

    #: The sessions assigned now (a session missing here is over).
    assigned: Mapping[str, SessionAssignment] = attrs.field(factory=dict)
    #: Assigned sessions the client could not read (logged there): left as they are.
    unreadable: frozenset[str] = frozenset()
    #: Per session, the actions the farm cancels.
    cancels: Mapping[str, frozenset[str]] = attrs.field(factory=dict)
    #: How often the farm wants a sync (``None``: unchanged).
    interval: float | None = None
    #: The farm asks the worker to stop.
    stop_requested: bool = False


# --------------------------------------------------------------------------
# Scheduler: what the work sessions report


@attrs.frozen
class ActionUpdate:
    """News of one action for the farm: ``state`` set means it is final.

    Fields left ``None`` are unchanged; the scheduler merges the updates of one
    action until a sync carries them.
    """

    session_id: str
    action_id: str
    kind: ActionKind
    state: ActionState | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    #: When a progress or status update was made (dropped once the action is final).
    updated_at: datetime | None = None
    progress: float | None = None
    message: str | None = None
    exit_code: int | None = None
    #: A successful task run's job-attachment output manifests.
    manifests: tuple[Mapping[str, str], ...] | None = None

    @property
    def final(self) -> bool:
        return self.state is not None

    def merged(self, newer: ActionUpdate) -> ActionUpdate:
        """This update with ``newer``'s fields on top (a final one drops ``updated_at``)."""
        changes = {
            field.name: value
            for field in attrs.fields(ActionUpdate)
            if (value := getattr(newer, field.name)) is not None
        }
        if newer.final and not self.final and newer.updated_at is None:
            changes["updated_at"] = None  # a final update replaces the transient fields
        return attrs.evolve(self, **changes)


def returned_updates(
    session_id: str,
    actions: Sequence[AssignedAction],
    *,
    first: ActionState,
    message: str,
    now: datetime,
    exits_fail: bool = False,
) -> list[ActionUpdate]:
    """Updates that give back actions that will not run: the first one ``first`` (the
    farm refuses NEVER_ATTEMPTED for the action it waits on), with ``message``; with
    ``exits_fail`` the environment exits FAILED too; every other one NEVER_ATTEMPTED."""
    updates = []
    for index, action in enumerate(actions):
        if index == 0 or (exits_fail and action.kind is ActionKind.ENV_EXIT):
            state = first if index == 0 else ActionState.FAILED
            updates.append(
                ActionUpdate(
                    session_id,
                    action.action_id,
                    action.kind,
                    state=state,
                    started_at=now,
                    ended_at=now,
                    message=message,
                )
            )
        else:
            updates.append(
                ActionUpdate(
                    session_id, action.action_id, action.kind, state=ActionState.NEVER_ATTEMPTED
                )
            )
    return updates


@attrs.frozen
class SessionReported:
    """Every update of the session has been sent (its log may still be shipping)."""

    session_id: str


@attrs.frozen
class SessionClosed:
    """A work session is over: its log flushed (or given up on), its cache dropped."""

    session_id: str
    succeeded: bool


SessionReport = ActionUpdate | SessionReported | SessionClosed


# --------------------------------------------------------------------------
# Scheduler: its owner's commands, and what it tells its owner


@attrs.frozen
class SyncNow:
    """Call the farm now; the reply comes once a call that started after this one is
    done (at once once the scheduler is closed or its sync loop has ended).

    With ``since`` (``trio.current_time()``), a call that started at or after it
    will do: one already done answers at once, one in flight when it is done, and
    only otherwise is a new call made (a heartbeat's slot: the farm needs a call
    per interval, whoever made it)."""

    reply_to: trio.MemorySendChannel[None]
    since: float | None = None


@attrs.frozen
class WaitSessions:
    """Reply once every session has ``reported`` (all updates pending, logs may still
    ship), once every session is ``closed`` (none left), or once there is a session
    (``busy``)."""

    until: Literal["reported", "closed", "busy"]
    reply_to: trio.MemorySendChannel[None]


@attrs.frozen
class FinishSessions:
    """Take no new sessions; each current one finishes the actions it has, then ends
    (the farm's later additions are returned once it has ended). ``running_only``:
    each finishes its running action only (see ``Finish``)."""

    running_only: bool = False


@attrs.frozen
class StopSessions:
    """Stop every session (a drain); later assignments are refused."""

    grace: float | None
    running_state: ActionState
    reason: str


@attrs.frozen
class RefuseNewSessions:
    """Take no new sessions (their first action is returned INTERRUPTED); current ones go on."""


@attrs.frozen
class CancelRunning:
    """Cancel the action every session (or only ``session_id``) is running (its own
    method, or within ``time_limit``); with ``fail`` it fails, ``reason`` its message."""

    time_limit: float | None
    reason: str
    session_id: str | None = None
    fail: bool = False


@attrs.frozen
class CloseSchedule:
    """Make no more calls (the worker is stopping); reply once no call is in flight."""

    reply_to: trio.MemorySendChannel[None]


@attrs.frozen
class ReopenSchedule:
    """Call the farm again after ``CloseSchedule`` and take new sessions again: a paused
    worker that the farm has STARTED again. A sync follows at once."""


SchedulerCommand = (
    SyncNow
    | WaitSessions
    | FinishSessions
    | StopSessions
    | RefuseNewSessions
    | CancelRunning
    | CloseSchedule
    | ReopenSchedule
)


@attrs.frozen
class IntervalChanged:
    """The farm wants a sync every ``seconds``."""

    seconds: float


@attrs.frozen
class FarmStopRequested:
    """The farm asks the worker to stop (``desiredWorkerStatus``)."""


SchedulerEvent = IntervalChanged | FarmStopRequested | SessionClosed


# --------------------------------------------------------------------------
# Heartbeat


@attrs.frozen
class SetInterval:
    """Beat every ``seconds`` from now on (latest wins; a shorter one applies at once)."""

    seconds: float


HeartbeatCommand = SetInterval
