"""One assigned session: from assigned actions to a SessionRunner and back.

A ``WorkSession`` is started by the scheduler (``nursery.start``) for each
``SessionAssignment`` the farm makes; its inbox takes the runner's commands. It

1. opens the session's log through the log shipper: the local file
   ``<logs>/<queue>/<session>.log`` (0600) and, when the assignment's log
   configuration says ``awslogs``, the CloudWatch stream it names;
2. fetches ``jobDetails`` (through the entity fetcher) and starts a
   ``SessionRunner`` with the job's parameters, path-mapping rules and the
   ``DEADLINE_*`` session variables;
3. passes the scheduler's commands (``Replace`` with the assigned actions,
   ``Cancel``, ``Stop``) to the runner; the runner's resolver turns each
   ``AssignedAction`` into a runnable just before it runs, fetching the step
   or environment it needs;
4. turns the runner's events into ``ActionUpdate`` messages for the scheduler
   (started, progress, status, the final state) and into log lines;
5. when the runner ends, says ``SessionReported``, flushes the log (bounded),
   drops the session's entity cache and says ``SessionClosed``.

A session an earlier agent left to its launcher (``Held``, found at start) is
taken over instead of started: the same log file (appended to), the
environments it entered and the action it runs resolved again from the
farm's assignment, and the runner given a ``SessionResume``.

If the session cannot start (bad log configuration, ``jobDetails`` failing,
no credentials for a queue that has a role), its first action is reported
FAILED and the others NEVER_ATTEMPTED, as the worker API contract asks.

A job whose queue has a role (``queueRoleArn``) gets the queue's credentials
from a ``QueueCredentialSource`` (the agent's ``AssumeQueueRoleForWorker``
manager) for the session's lifetime, as the variables ``AWS_PROFILE``,
``AWS_CONFIG_FILE`` and ``AWS_SHARED_CREDENTIALS_FILE`` (a ``credential_process``
profile); the agent's own ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
``AWS_SESSION_TOKEN`` are then not passed on, so they cannot shadow it. If the
credentials can no longer be refreshed, the session is stopped: its running
action FAILED (cancelled with its own method), the rest NEVER_ATTEMPTED.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs
import structlog
import trio

from ._channels import ready_items, send_ready
from ._contain import Containment
from ._entities import (
    EntityError,
    EnvironmentDetails,
    JobDetails,
    StepDetails,
    environment_details_id,
    job_attachment_details_id,
    job_details_id,
    parse_environment_details,
    parse_job_details,
    parse_step_details,
    step_details_id,
    task_parameters_from_wire,
)
from ._fetcher import fetch
from ._jobuser import JobUser, JobUserError, ResolvedJobUser
from ._logship import LogStream, open_log_stream
from ._messages import (
    ActionEnded,
    ActionKind,
    ActionOutput,
    ActionProgress,
    ActionStarted,
    ActionState,
    ActionStatusMessage,
    ActionUpdate,
    AssignedAction,
    Destination,
    Enqueue,
    EnterEnvironment,
    ExitEnvironment,
    FetcherCommand,
    Finish,
    Forget,
    HostAction,
    HostContext,
    LogShipperCommand,
    Replace,
    Runnable,
    RunTask,
    SessionAssignment,
    SessionClosed,
    SessionCommand,
    SessionEnded,
    SessionEvent,
    SessionLog,
    SessionReport,
    SessionReported,
    Stop,
    TaskHook,
    returned_updates,
)
from ._openjd import step_memory_ceiling
from ._output import Redactor
from ._paths import path_under
from ._restart import Held, RestartHold, SessionResume
from ._session import SessionRunner
from ._sessionconfig import SessionConfig
from ._turn import Turn

log = structlog.get_logger("farmhand.worksession")


def final_update(session_id: str, event: ActionEnded) -> ActionUpdate:
    """The update that reports an action's end."""
    assert event.action_id is not None
    if event.state is ActionState.NEVER_ATTEMPTED:
        return ActionUpdate(session_id, event.action_id, event.kind, state=event.state)
    message = event.status_message
    if not event.state.succeeded:
        message = event.fail_message or message
        if event.state is ActionState.TIMEOUT:
            message = message or "TIMEOUT - Exceeded the allotted runtime limit."
    return ActionUpdate(
        session_id,
        event.action_id,
        event.kind,
        state=event.state,
        started_at=event.started_at,
        ended_at=event.ended_at or datetime.now(UTC),
        exit_code=event.exit_code,
        message=message or None,
        progress=event.progress,
        manifests=event.manifests,
    )


# ------------------------------------------------------------------ credentials


class QueueCredentialsError(Exception):
    """The queue's credentials cannot be had; the session fails with this message."""


@attrs.define(eq=False)
class QueueAccess:
    """A session's share of its queue's credentials."""

    #: ``AWS_PROFILE``, ``AWS_CONFIG_FILE``, ``AWS_SHARED_CREDENTIALS_FILE``.
    env: Mapping[str, str]
    #: Set when the credentials can no longer be refreshed (``error`` says why).
    failed: trio.Event = attrs.field(factory=trio.Event)
    error: str | None = None


class QueueCredentialSource(Protocol):
    """Where sessions get their queue's credentials (``agent._queuecreds``)."""

    def open_access(
        self, queue_id: str, role_arn: str, job_user: ResolvedJobUser | None
    ) -> AbstractAsyncContextManager[QueueAccess | None]:
        """Share the queue's credentials for the block (``None``: the farm gave none).
        Raises ``QueueCredentialsError`` when they cannot be had."""
        ...


#: The agent's own credentials, not passed to jobs that get a queue profile.
#: Variables that carry the agent's own AWS credentials or point at them: never part of
#: a job's environment (a queue's role credentials are added by the session instead).
AGENT_CREDENTIAL_VARIABLES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_CREDENTIAL_EXPIRATION",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    }
)


class SessionAttachments(Protocol):
    """Job attachments of one session (``agent.attachments.SessionAttachments``)."""

    @property
    def env(self) -> Mapping[str, str]:
        """``DEADLINE_JA_S3_BUCKET`` and ``DEADLINE_JA_ROOT_PREFIX``."""
        ...

    async def sync_inputs(
        self, context: HostContext, details: Mapping[str, Any], dependencies: Sequence[str]
    ) -> None:
        """``syncInputJobAttachments`` (``dependencies``: the ``stepId`` variant's steps)."""

    def task_hook(self, *, step_id: str, task_id: str | None, action_id: str) -> TaskHook | None:
        """The output upload around one task run (``None``: nothing was synced)."""


class AttachmentProvider(Protocol):
    """Where sessions of queues with ``jobAttachmentSettings`` get their attachments."""

    def open_session(
        self,
        *,
        settings: Mapping[str, Any],
        farm_id: str,
        queue_id: str,
        job_id: str,
        session_id: str,
        queue_env: Mapping[str, str] | None,
        storage_rules: Mapping[str, str] | None = None,
    ) -> SessionAttachments: ...


@attrs.frozen
class WorkerIdentity:
    farm_id: str
    fleet_id: str
    worker_id: str


# ------------------------------------------------------------------ the session


def _resolved(job_user: JobUser | None) -> ResolvedJobUser | None:
    """The job user's ids, for sharing files with it (``None``: the agent's user, or one
    that does not resolve; the runner then fails the actions with the reason)."""
    if job_user is None:
        return None
    try:
        resolved = job_user.resolve()
    except JobUserError:
        return None
    return None if resolved.is_agent_user else resolved


@attrs.frozen
class WorkSessionOptions:
    logs_dir: Path
    session_root: Path | None = None
    retain_working_directory: bool = False
    local_session_logs: bool = True
    min_secret_length: int = 1
    #: Regular expressions whose matches are masked in the session's log and messages.
    secret_patterns: tuple[str, ...] = ()
    #: How long a finished session may wait for its log to reach CloudWatch.
    log_flush_seconds: float = 30.0
    #: Send session logs to the CloudWatch stream the farm names (an embedding host
    #: that shows the output itself may turn it off).
    ship_session_logs: bool = True
    #: Run every job as the agent's own user, whatever the queue says.
    run_jobs_as_agent_user: bool = False
    #: Run every job as this user, whatever the queue says.
    job_user_override: JobUser | None = None
    #: Kill a job user's processes when no session runs as it any more.
    cleanup_user_processes: bool = False
    #: Let jobs inherit the agent's AWS credential variables: only for ``run``, whose
    #: jobs are the user's own, as with ``openjd run``. A farm's jobs never get them.
    jobs_get_agent_credentials: bool = False
    #: Bytes a session's processes may use together (``SessionConfig.memory_limit``).
    memory_limit: int | None = None
    #: ``SessionConfig.output_limit`` and ``output_limit_mode``.
    output_limit: int | None = None
    output_limit_mode: Literal["truncate", "fail"] = "truncate"
    #: Keep sessions through the agent's death (``SessionConfig.restart_hold``).
    restart_hold: RestartHold | None = None


class WorkSession:
    """See the module docstring. Start with ``inbox = await nursery.start(session.run)``;
    the inbox takes the runner's commands (``Replace``, ``Cancel``, ``Finish``, ``Stop``)."""

    def __init__(
        self,
        assignment: SessionAssignment,
        *,
        identity: WorkerIdentity,
        fetcher: trio.MemorySendChannel[FetcherCommand],
        reports: trio.MemorySendChannel[SessionReport],
        shipper: trio.MemorySendChannel[LogShipperCommand],
        options: WorkSessionOptions,
        on_event: Any = None,
        containment: Containment | None = None,
        queue_credentials: QueueCredentialSource | None = None,
        attachments: AttachmentProvider | None = None,
        held: Held | None = None,
        starts: trio.CapacityLimiter | None = None,
    ) -> None:
        self.assignment = assignment
        self._turn = Turn(starts)  # to start in (``_turn.py``)
        #: The session as an earlier agent left it, to take over.
        self._held = held
        self._queue_credentials = queue_credentials
        self._attachment_provider = attachments
        self._attachments: SessionAttachments | None = None
        self.session_id = assignment.session_id
        self._identity = identity
        self._fetcher = fetcher
        self._reports = reports
        self._shipper = shipper
        self._options = options
        self._on_event = on_event
        self._containment = containment
        # The scheduler never waits on a session: its commands queue here. They are few
        # (one per UpdateWorkerSchedule response at most): the buffer is no memory risk.
        self._command_send, self._command_receive = trio.open_memory_channel[SessionCommand](
            math.inf
        )
        self._steps: dict[str, StepDetails] = {}
        self._environments: dict[str, EnvironmentDetails] = {}
        self._kinds: dict[str, ActionKind] = {}
        self._stream: LogStream | None = None
        #: ``kind name params (id)`` of the latest action that started: its end line says it.
        self._last_started = "action"
        self._spool: Path | None = None
        #: Where the log stream keeps its shipped offset through a restart.
        self._marker: Path | None = None

    # ---- the session's task

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[
            trio.MemorySendChannel[SessionCommand]
        ] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the session; ``started`` with its inbox, which never blocks the sender
        (the scheduler's commands are few: one per UpdateWorkerSchedule at most)."""
        task_status.started(self._command_send)
        # Every log line of the session (and of the runner it starts) carries its ids.
        with structlog.contextvars.bound_contextvars(
            session_id=self.session_id,
            queue_id=self.assignment.queue_id,
            job_id=self.assignment.job_id,
        ):
            await self._run()

    def _command(self, command: SessionCommand) -> None:
        try:
            self._command_send.send_nowait(command)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the session has ended; nothing to do

    async def _run(self) -> None:
        succeeded = False
        try:
            with self._command_send:
                await self._turn.take()
                self._stream = await self._open_log()
                job = await self._job_details()
                if job is not None:
                    succeeded = await self._run_runner(job)
        finally:
            self._turn.end()
            with trio.CancelScope(shield=True):
                held, self._held = self._held, None
                if held is not None and self._options.restart_hold is not None:
                    # Never handed to a runner (the session could not start): it ends here.
                    await held.discard(self._options.restart_hold)
                await self._finish(succeeded)

    async def _open_log(self) -> LogStream | None:
        """The session's log: the local file ``<logs>/<queue>/<session>.log`` and, when
        the assignment names a CloudWatch stream and shipping is on, that stream. With
        no local logs the lines wait for CloudWatch in a spool file removed at the end;
        with neither, the session has no log (its events still reach ``on_event``)."""
        config = self.assignment.log_config
        options = self._options
        destination = None
        if (
            options.ship_session_logs
            and config.driver == "awslogs"
            and config.group
            and config.stream
            and not config.error
        ):
            destination = Destination(config.group, config.stream)
        if options.local_session_logs:
            path = path_under(options.logs_dir, self.assignment.queue_id, f"{self.session_id}.log")
            hold = options.restart_hold
            # Kept through a restart: how much of it is shipped (a new agent ships the rest).
            marker = hold.shipped_path(self.session_id) if hold is not None else None
            if marker is not None and destination is not None:
                try:
                    await trio.Path(marker.parent).mkdir(mode=0o700, parents=True, exist_ok=True)
                except OSError:
                    marker = None
            self._marker = marker if destination is not None else None
            return await open_log_stream(
                self._shipper, path, destination, shipped_marker=self._marker
            )
        if destination is None:
            return None
        self._spool = path_under(options.logs_dir, ".spool", f"{self.session_id}.log")
        return await open_log_stream(self._shipper, self._spool, destination, compact_over=1 << 20)

    async def _job_details(self) -> JobDetails | None:
        config = self.assignment.log_config
        if config.error or config.driver != "awslogs":
            reason = config.error or f"log driver {config.driver!r} is not supported (only awslogs)"
            await self._fail_session(f"bad log configuration: {reason}")
            return None
        [reply] = await fetch(
            self._fetcher, self.session_id, [job_details_id(self.assignment.job_id)]
        )
        try:
            return parse_job_details(reply.unwrap())
        except EntityError as exc:
            await self._fail_session(f"cannot get the job's details: {exc}")
            return None

    async def _fail_session(self, message: str) -> None:
        """Report the queued actions as the contract asks: first FAILED, rest NEVER_ATTEMPTED."""
        if self._options.secret_patterns:
            message = Redactor(patterns=self._options.secret_patterns).redact(message)
        log.error("worksession.setup_failed", session_id=self.session_id, error=message)
        self._write([f"[farmhand] session setup failed: {message}"])
        # Everything assigned so far, once each (a later Replace repeats what is still assigned).
        actions: dict[str, AssignedAction] = {}
        while True:
            try:
                command = self._command_receive.receive_nowait()
            except trio.WouldBlock:
                break
            for action in command.actions if isinstance(command, Enqueue | Replace) else ():
                if isinstance(action, AssignedAction):
                    actions.setdefault(action.action_id, action)
        for update in returned_updates(
            self.session_id,
            list(actions.values()),
            first=ActionState.FAILED,
            message=message,
            now=datetime.now(UTC),
        ):
            await self._report(update)

    async def _run_runner(self, job: JobDetails) -> bool:
        job_user = self._job_user(job)
        async with contextlib.AsyncExitStack() as stack:
            access: QueueAccess | None = None
            if job.queue_role_arn and self._queue_credentials is not None:
                try:
                    access = await stack.enter_async_context(
                        self._queue_credentials.open_access(
                            self.assignment.queue_id, job.queue_role_arn, _resolved(job_user)
                        )
                    )
                except QueueCredentialsError as exc:
                    await self._fail_session(f"cannot get the queue's credentials: {exc}")
                    return False
            return await self._run_with(job, job_user, access)

    async def _run_with(
        self, job: JobDetails, job_user: JobUser | None, access: QueueAccess | None
    ) -> bool:
        identity = self._identity
        session_env = {
            "DEADLINE_SESSION_ID": self.session_id,
            "DEADLINE_FARM_ID": identity.farm_id,
            "DEADLINE_QUEUE_ID": self.assignment.queue_id,
            "DEADLINE_JOB_ID": self.assignment.job_id,
            "DEADLINE_FLEET_ID": identity.fleet_id,
            "DEADLINE_WORKER_ID": identity.worker_id,
        }
        if access is not None:
            session_env.update(access.env)
        base_env: Mapping[str, str] = os.environ
        if not self._options.jobs_get_agent_credentials:
            base_env = {k: v for k, v in os.environ.items() if k not in AGENT_CREDENTIAL_VARIABLES}
        if job.job_attachment_settings and self._attachment_provider is not None:
            try:
                self._attachments = self._attachment_provider.open_session(
                    settings=job.job_attachment_settings,
                    farm_id=identity.farm_id,
                    queue_id=self.assignment.queue_id,
                    job_id=self.assignment.job_id,
                    session_id=self.session_id,
                    queue_env=access.env if access is not None else None,
                    # A root in a storage profile's location lives where the job's
                    # path-mapping rules put it, as with the official agent.
                    storage_rules={
                        str(rule.source_path): str(rule.destination_path)
                        for rule in job.path_mapping_rules
                    },
                )
            except Exception as exc:  # bad settings fail this session only
                await self._fail_session(f"bad jobAttachmentSettings: {exc}")
                return False
            session_env.update(self._attachments.env)
        config = SessionConfig(
            session_id=self.session_id,
            job_parameter_values=job.parameters,
            path_mapping_rules=job.path_mapping_rules,
            session_env=session_env,
            base_env=base_env,
            extensions=job.extensions,
            root_directory=self._options.session_root,
            retain_working_directory=self._options.retain_working_directory,
            min_secret_length=self._options.min_secret_length,
            secret_patterns=self._options.secret_patterns,
            job_user=job_user,
            cleanup_user_processes=self._options.cleanup_user_processes,
            memory_limit=self._options.memory_limit,
            output_limit=self._options.output_limit,
            output_limit_mode=self._options.output_limit_mode,
            restart_hold=self._options.restart_hold,
            queue_id=self.assignment.queue_id,
            job_id=self.assignment.job_id,
        )
        resume = await self._resume() if self._held is not None else None
        events_send, events_receive = trio.open_memory_channel[SessionEvent](16)
        runner = SessionRunner(
            config,
            events_send,
            resolver=self._resolve,
            containment=self._containment,
            resume=resume,
        )
        self._held = None  # the runner's to end now
        succeeded = False

        async def run_runner(
            *, task_status: trio.TaskStatus[trio.MemorySendChannel[SessionCommand]]
        ) -> None:
            with events_send:
                await runner.run(task_status=task_status)

        async with trio.open_nursery() as nursery:
            inbox = await nursery.start(run_runner)
            nursery.start_soon(self._forward_commands, inbox)
            if access is not None:
                nursery.start_soon(self._stop_when_failed, access)
            with events_receive:
                async for event in ready_items(events_receive):
                    if isinstance(event, SessionEnded):
                        succeeded = event.succeeded
                    await self._handle_event(event)
            nursery.cancel_scope.cancel(reason="the session runner ended")
        return succeeded

    async def _resume(self) -> SessionResume:
        """What the runner needs to take the held session over: its environments
        and its running action resolved again, and the final reports the farm
        never had (it still assigns those actions)."""
        held = self._held
        assert held is not None
        state = held.state
        assigned = {action.action_id: action for action in self.assignment.actions}
        environments = []
        for environment_id, changes in state.entered:
            details, step = await self._environment(environment_id)
            enter = EnterEnvironment(
                action_id="",
                environment_id=environment_id,
                environment=details.environment,
                step_name=str(step.template.name) if step else None,
                resolved_symtab=details.resolved_symtab,
            )
            environments.append((enter, changes))
        running = None
        record = held.running
        still_assigned = record is not None and record.action_id in assigned
        if record is not None and record.action_id in assigned:
            try:
                running = await self._resolve(assigned[record.action_id])
            except Exception as exc:  # it runs on without its hook; its name is lost
                log.warning("worksession.resume_resolve_failed", error=str(exc))
        self._write(["[farmhand] taking the session over after an agent restart"])
        return SessionResume(
            held,
            environments=tuple(environments),
            running=running,
            assigned=still_assigned,
            unreported=tuple(ended for ended in held.ended if ended.action_id in assigned),
        )

    def _job_user(self, job: JobDetails) -> JobUser | None:
        """Who runs the actions: the configured override, else the agent's user when
        configured or asked for, else the queue's job user."""
        options = self._options
        if options.job_user_override is not None:
            return options.job_user_override
        if options.run_jobs_as_agent_user or job.run_as == "WORKER_AGENT_USER":
            return None
        if job.posix_user:
            return JobUser(job.posix_user, job.posix_group)
        return None

    async def _stop_when_failed(self, access: QueueAccess) -> None:
        """The queue's credentials are gone: stop this session (only this queue's)."""
        await access.failed.wait()
        reason = f"the queue's credentials could not be refreshed: {access.error}"
        log.error("worksession.queue_credentials_failed", error=access.error)
        self._write([f"[farmhand] {reason}; stopping the session"])
        self._command(Stop(grace=None, running_state=ActionState.FAILED, reason=reason))

    async def _forward_commands(self, inbox: trio.MemorySendChannel[SessionCommand]) -> None:
        """Pass the scheduler's commands to the runner. After ``Finish`` the session
        keeps only the actions it had: the farm's later additions are ignored (the
        scheduler returns them once the session ends) except environment exits, and
        its removals and cancels still apply. After ``Stop`` only exits are added, and
        a second ``Stop`` (a hurried drain) still gets through."""
        assigned: set[str] = set()
        frozen: set[str] | None = None
        with inbox:
            async for command in self._command_receive:
                if isinstance(command, Replace):
                    if frozen is None:
                        assigned = {a.action_id for a in command.actions if a.action_id}
                    else:
                        kept = tuple(
                            action
                            for action in command.actions
                            if action.action_id in frozen or action.kind is ActionKind.ENV_EXIT
                        )
                        command = Replace(kept)
                elif isinstance(command, Finish) and frozen is None:
                    frozen = assigned
                elif isinstance(command, Stop):
                    frozen = set()  # a stop ends the queue; a later one may hurry it
                try:
                    await inbox.send(command)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the runner has ended; nothing left to tell it

    # ---- resolving wire actions into runnables

    async def _resolve(self, item: Any) -> Runnable:
        if isinstance(item, ExitEnvironment) and item.action_id is None:
            # An exit the runner makes itself (a stop, or the end of a finished session).
            return item
        if not isinstance(item, AssignedAction):
            raise TypeError(f"unexpected queued action {item!r}")
        if item.unsupported is not None:
            raise EntityError(("action", item.action_id), "Unsupported", item.unsupported)
        base_env = {"DEADLINE_SESSIONACTION_ID": item.action_id}
        if item.kind is ActionKind.ENV_ENTER:
            environment_id = self._required(item, item.environment_id, "environment id")
            details, step = await self._environment(environment_id)
            return EnterEnvironment(
                action_id=item.action_id,
                environment_id=environment_id,
                environment=details.environment,
                step_name=str(step.template.name) if step else None,
                resolved_symtab=details.resolved_symtab,
                env=base_env,
            )
        if item.kind is ActionKind.ENV_EXIT:
            return ExitEnvironment(
                action_id=item.action_id,
                environment_id=self._required(item, item.environment_id, "environment id"),
                env=base_env,
            )
        if item.kind is ActionKind.SYNC_ATTACHMENTS:
            dependent = item.step_id
            label = (
                f"job attachments of step {dependent}'s dependencies"
                if dependent
                else "job attachments"
            )
            return HostAction(
                action_id=item.action_id,
                label=label,
                work=partial(self._sync_attachments, dependent),
                env=base_env,
            )
        step_id = self._required(item, item.step_id, "step id")
        step = await self._step(step_id)
        if step.template.script is None:
            raise EntityError(
                ("stepDetails", self.assignment.job_id, step_id),
                "ValidationFailed",
                "the step has no script",
            )
        env = {**base_env, "DEADLINE_STEP_ID": step_id}
        if item.task_id:
            env["DEADLINE_TASK_ID"] = item.task_id
        try:
            parameters = task_parameters_from_wire(item.parameters)
        except ValueError as exc:
            raise EntityError(("taskRun", item.action_id), "ValidationFailed", str(exc)) from exc
        hook = None
        if self._attachments is not None:
            hook = self._attachments.task_hook(
                step_id=step_id, task_id=item.task_id or None, action_id=item.action_id
            )
        return RunTask(
            action_id=item.action_id,
            step_name=str(step.template.name),
            script=step.template.script,
            parameters=parameters,
            resolved_symtab=step.resolved_symtab,
            env=env,
            hook=hook,
            memory_limit=step_memory_ceiling(step.template),
        )

    async def _sync_attachments(self, step_id: str | None, context: HostContext) -> None:
        """``syncInputJobAttachments``: the one place a sync becomes library work."""
        if self._attachments is None:
            if self._attachment_provider is None:
                raise EntityError(
                    ("action", "syncInputJobAttachments"),
                    "Unsupported",
                    "this worker was started without job-attachment support",
                )
            raise EntityError(
                ("jobDetails", self.assignment.job_id),
                "ValidationFailed",
                "the farm asked for a job-attachment sync but the job's queue has no "
                "jobAttachmentSettings",
            )
        [reply] = await fetch(
            self._fetcher, self.session_id, [job_attachment_details_id(self.assignment.job_id)]
        )
        details = reply.unwrap()
        dependencies: tuple[str, ...] = ()
        if step_id is not None:
            dependencies = (await self._step(step_id)).dependencies
        await self._attachments.sync_inputs(context, details, dependencies)

    @staticmethod
    def _required(action: AssignedAction, value: str | None, what: str) -> str:
        if value is None:
            raise EntityError(("action", action.action_id), "ValidationFailed", f"no {what}")
        return value

    async def _step(self, step_id: str) -> StepDetails:
        step = self._steps.get(step_id)
        if step is None:
            [reply] = await fetch(
                self._fetcher, self.session_id, [step_details_id(self.assignment.job_id, step_id)]
            )
            step = self._steps[step_id] = parse_step_details(reply.unwrap())
        return step

    async def _environment(
        self, environment_id: str
    ) -> tuple[EnvironmentDetails, StepDetails | None]:
        job_id = self.assignment.job_id
        step_id = environment_id.split(":")[1] if environment_id.startswith("STEP:") else None
        details = self._environments.get(environment_id)
        identifiers = []
        if details is None:
            identifiers.append(environment_details_id(job_id, environment_id))
        if step_id is not None and step_id not in self._steps:
            identifiers.append(step_details_id(job_id, step_id))
        if identifiers:
            replies = await fetch(self._fetcher, self.session_id, identifiers)
            if details is None:
                details = self._environments[environment_id] = parse_environment_details(
                    replies[0].unwrap()
                )
            if step_id is not None and step_id not in self._steps:
                self._steps[step_id] = parse_step_details(replies[-1].unwrap())
        assert details is not None
        return details, self._steps.get(step_id) if step_id else None

    # ---- events out

    async def _handle_event(self, event: SessionEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
        if isinstance(event, ActionOutput):
            self._write(event.lines)
            return
        self._turn.end()  # it has started: the next session's turn
        action_id = event.action_id if not isinstance(event, SessionEnded) else None
        if isinstance(event, ActionStarted):
            if action_id is not None:
                self._kinds[action_id] = event.kind
            params = [f"{k}={v}" for k, v in event.parameters.items()]
            # An exit the worker runs on its own (a drain) has no action id.
            self._last_started = " ".join(
                [event.kind.value, event.name, *params, f"({action_id or 'run by the worker'})"]
            )
            self._write([f"==== {self._last_started} ===="])
            if action_id is not None:
                await self._report(
                    ActionUpdate(self.session_id, action_id, event.kind, started_at=event.time)
                )
        elif isinstance(event, ActionProgress):
            if action_id is not None:
                await self._report(
                    ActionUpdate(
                        self.session_id,
                        action_id,
                        self._kinds.get(action_id, ActionKind.TASK_RUN),
                        progress=event.progress,
                        updated_at=datetime.now(UTC),
                    )
                )
        elif isinstance(event, ActionStatusMessage):
            if action_id is not None:
                await self._report(
                    ActionUpdate(
                        self.session_id,
                        action_id,
                        self._kinds.get(action_id, ActionKind.TASK_RUN),
                        message=event.message,
                        updated_at=datetime.now(UTC),
                    )
                )
        elif isinstance(event, SessionLog):
            self._write(
                [
                    f"[farmhand] {event.level}: {event.message}"
                    if event.level != "info"
                    else f"[farmhand] {event.message}"
                ]
            )
        elif isinstance(event, ActionEnded):
            update = final_update(self.session_id, event) if action_id is not None else None
            if event.state is not ActionState.NEVER_ATTEMPTED:
                code = f", exit code {event.exit_code}" if event.exit_code is not None else ""
                self._write([f"==== {self._last_started} ended: {event.state.value}{code} ===="])
                if update is not None and update.ended_at is not None:
                    update = attrs.evolve(update, ended_at=self._after_logged(update.ended_at))
            if update is not None:
                await self._report(update)

    def _after_logged(self, ended: datetime) -> datetime:
        """``ended``, or just after the action's last log line if that is later.

        Readers ask CloudWatch for an action's lines up to its ``endedAt``, which
        excludes events stamped at that millisecond or later; the end line and the
        failure message are stamped when they are written, after the process ended.
        """
        if self._stream is None:
            return ended
        # Two milliseconds on: a reader's float arithmetic (``int(t.timestamp() * 1000)``)
        # may lose one, and the last line must stay before the bound.
        after_ms = self._stream.last_timestamp_ms + 2
        if int(ended.timestamp() * 1000) >= after_ms:
            return ended
        return datetime.fromtimestamp(after_ms // 1000, UTC) + timedelta(
            milliseconds=after_ms % 1000
        )

    def _write(self, lines: Any) -> None:
        if self._stream is not None:
            try:
                self._stream.write(lines)
            except OSError as exc:  # a full disk must not stop the job
                log.error(
                    "worksession.log_write_failed", session_id=self.session_id, error=str(exc)
                )

    async def _report(self, report: SessionReport) -> None:
        try:
            await send_ready(self._reports, report)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("worksession.report_dropped", session_id=self.session_id)

    async def _finish(self, succeeded: bool) -> None:
        # A drain can tell the farm STOPPED now; the log is flushed after.
        with trio.move_on_after(10):
            await self._report(SessionReported(self.session_id))
        stream = self._stream
        if stream is not None:
            stream.close()
            with trio.move_on_after(self._options.log_flush_seconds) as scope:
                await stream.flush()
            if scope.cancelled_caught:
                pending = stream.statistics().bytes_pending
                log.warning(
                    "worksession.log_flush_timeout",
                    session_id=self.session_id,
                    bytes_pending=pending,
                )
            elif self._spool is not None:
                # Shipped: a spool is not a log to keep (one that is not is left for
                # the uploader, which goes on after the session).
                self._spool.unlink(missing_ok=True)
            if self._marker is not None and not scope.cancelled_caught:
                await trio.Path(self._marker).unlink(missing_ok=True)
        try:
            self._fetcher.send_nowait(Forget(self.session_id))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the cache goes with the fetcher, or on the next Forget
        with trio.move_on_after(10):
            await self._report(SessionClosed(self.session_id, succeeded))
