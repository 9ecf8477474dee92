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
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

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


@attrs.frozen
class Finish:
    """No more actions will be queued: run what is queued, exit the environments
    still entered, and end. (Closing the inbox means the same.)"""


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
