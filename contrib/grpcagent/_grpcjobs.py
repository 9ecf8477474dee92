"""The agent's Trio side: slots, requirement checks, and each job through the one-job API.

``CiAgent`` knows nothing of gRPC's threads: the server (``_grpcserver.py``) calls
its synchronous entry points in the Trio thread (``TrioToken.run_sync_soon``)
and gets each job's events back through the ``EventStream`` it passed in.

A job, once ``start`` has given it a slot (or rejected it at once: no free slot,
the agent is stopping, the id is running already)::

    requirements   tools (version specifiers; a tool that fails is probed again,
                   in case it was installed since), labels, free disk, the job user
                   -> REJECTED (REQUIREMENTS) with every unmet one
    ACCEPTED       its directory <work-dir>/jobs/<job_id> is made fresh
    prepare        optional; exit status cannot_run_status -> REJECTED (PREPARATION)
    run            the lane, its output streamed and logged, progress passed on
    upload         the raw log and the artifacts (``_grpcstorage``)
    FINISHED       status, exit code or signal, error, times, upload locations

Every run goes through ``JobRun`` (session runner, process groups, containment,
timeouts, redaction) with the agent's ``Shutdown`` guarding it. A cancel (the
``Cancel`` call, or the client's stream going away with ``CANCEL_JOB``) stops
the running phase cooperatively (SIGTERM, SIGKILL after the grace) and skips
the ones after it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Protocol

import attrs
import structlog
import trio
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from actors import ActionProgress, Containment, SessionEvent, UnsafePathError, safe_id
from agent import JobSpecError
from agent.jobs import (
    JobOutcome,
    JobRun,
    JobSpec,
    JobStatus,
    JobUser,
    JobUserError,
    LogFile,
    OutputTail,
    Shutdown,
)

from . import ci_agent_pb2 as pb
from ._grpcconfig import AgentConfig
from ._grpcstorage import Storage

log = structlog.get_logger("farmhand.grpcagent")

#: Seconds a tool's version command may take.
TOOL_PROBE_SECONDS = 10.0
#: "Cannot run here now" (EX_TEMPFAIL), unless the request names another status.
DEFAULT_CANNOT_RUN_STATUS = 75
#: What a job inherits from the agent's environment; the rest comes in the request.
INHERITED_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME", "SHELL")
_VERSION_RE = re.compile(r"(\d+(?:\.\d+)+)")
_NUMBER_RE = re.compile(r"(\d+)")
_STATUSES = {
    JobStatus.SUCCEEDED: pb.Finished.SUCCEEDED,
    JobStatus.FAILED: pb.Finished.FAILED,
    JobStatus.CANCELED: pb.Finished.CANCELED,
    JobStatus.TIMEOUT: pb.Finished.TIMEOUT,
    JobStatus.INTERRUPTED: pb.Finished.INTERRUPTED,
}


class EventStream(Protocol):
    """One ``Run`` call's way back to its client. Every method is non-blocking."""

    def post(self, event: pb.RunEvent) -> None: ...

    def post_lines(self, phase: str, lines: Sequence[str]) -> None: ...

    def fail(self, code: str, message: str) -> None:
        """End the call with a gRPC error (``code``: a ``grpc.StatusCode`` name)."""

    def close(self) -> None:
        """The last event has been posted."""


class RequestError(Exception):
    """A request that cannot be run anywhere as it is (bad id, no command...)."""


@attrs.frozen
class AgentStatistics:
    slots: int
    running_jobs: tuple[str, ...]
    accepted: int
    rejected: int
    finished: int


def extract_version(text: str) -> str | None:
    """The first dotted number in a tool's version output, else the first number."""
    match = _VERSION_RE.search(text) or _NUMBER_RE.search(text)
    return match.group(1) if match else None


class _StreamSink:
    """A ``JobRun`` sink that sends lines to the client (when it is still there)."""

    def __init__(self, job: _Job, phase: str) -> None:
        self._job = job
        self._phase = phase

    def write(self, lines: Sequence[str]) -> None:
        if not self._job.detached:
            self._job.stream.post_lines(self._phase, lines)


class _Job:
    def __init__(self, request: pb.RunRequest, stream: EventStream, grace: float) -> None:
        self.request = request
        self.job_id = request.job_id
        self.stream = stream
        self.grace = request.grace_seconds if request.grace_seconds > 0 else grace
        self.detached = False
        self.canceled: str | None = None
        self.current: JobRun | None = None

    def cancel(self, reason: str, grace: float | None = None) -> None:
        if self.canceled is None:
            self.canceled = reason
        if self.current is not None:
            self.current.cancel(grace=self.grace if grace is None else grace, reason=reason)

    def attach(self, run: JobRun) -> None:
        self.current = run
        if self.canceled is not None:
            run.cancel(grace=self.grace, reason=self.canceled)


class CiAgent:
    """The jobs of one agent (see the module docstring)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        containment: Containment | None = None,
        shutdown: Shutdown | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.config = config
        self.shutdown = shutdown or Shutdown(grace=config.grace)
        self.storage = storage or Storage(config)
        self._containment = containment
        self._jobs: dict[str, _Job] = {}
        self._tools: dict[str, str | None] = dict.fromkeys(config.tools)
        self._nursery: trio.Nursery | None = None
        self._accepted = 0
        self._rejected = 0
        self._finished = 0
        self._changed = trio.Event()

    # ---------------------------------------------------------------- state

    def statistics(self) -> AgentStatistics:
        return AgentStatistics(
            self.config.slots, tuple(self._jobs), self._accepted, self._rejected, self._finished
        )

    async def wait_until(self, predicate: Callable[[AgentStatistics], bool]) -> AgentStatistics:
        """Wait until ``predicate(statistics())`` holds (checked on every change)."""
        while not predicate(stats := self.statistics()):
            await self._changed.wait()
        return stats

    def _bump(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def capacity(self) -> pb.CapacityReply:
        try:
            free_disk = shutil.disk_usage(self.config.work_dir).free
        except OSError:
            free_disk = 0
        return pb.CapacityReply(
            slots=self.config.slots,
            free_slots=max(self.config.slots - len(self._jobs), 0),
            running_jobs=sorted(self._jobs),
            tools=[pb.Tool(name=n, version=v or "") for n, v in sorted(self._tools.items())],
            labels=sorted(self.config.labels),
            free_disk_bytes=free_disk,
            accepting=self.shutdown.accepting,
        )

    # ---------------------------------------------------------------- running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe the tools, take jobs until the shutdown stops taking them, then wait for
        the running ones to end."""
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        for name in self._tools:
            await self._probe(name)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self.shutdown.wait_requested()
            log.info("grpcagent.stopping", reason=self.shutdown.reason, running=len(self._jobs))
            await self.wait_until(lambda s: not s.running_jobs)
            self._nursery = None

    def start(self, request: pb.RunRequest, stream: EventStream) -> None:
        """A ``Run`` call arrived (in the Trio thread): reject it or give it a slot."""
        try:
            _check_request(request)
        except RequestError as exc:
            stream.fail("INVALID_ARGUMENT", str(exc))
            return
        reason: tuple[pb.Rejected.Reason, str] | None = None
        if self._nursery is None or not self.shutdown.accepting:
            reason = (pb.Rejected.STOPPING, f"the agent is stopping ({self.shutdown.reason})")
        elif request.job_id in self._jobs:
            reason = (pb.Rejected.DUPLICATE, f"job {request.job_id} is running here already")
        elif len(self._jobs) >= self.config.slots:
            reason = (
                pb.Rejected.CAPACITY,
                f"no free slot: {len(self._jobs)} of {self.config.slots} in use",
            )
        if reason is not None:
            self._reject(stream, request.job_id, *reason)
            return
        assert self._nursery is not None
        job = _Job(request, stream, self.config.grace)
        self._jobs[job.job_id] = job
        self._bump()
        self._nursery.start_soon(self._job, job, name=f"job {job.job_id}")

    def cancel(self, job_id: str, grace: float | None = None) -> bool:
        """The ``Cancel`` call: whether a job with that id is here."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        log.info("grpcagent.cancel", job_id=job_id, grace=grace)
        job.cancel("canceled by the server", grace)
        return True

    def stream_gone(self, job_id: str, stream: EventStream) -> None:
        """The client's stream ended before the job did."""
        job = self._jobs.get(job_id)
        if job is None or job.stream is not stream:
            return
        job.detached = True
        if job.request.on_disconnect == pb.KEEP_RUNNING:
            log.info("grpcagent.client_gone_job_kept", job_id=job_id)
        else:
            log.info("grpcagent.client_gone_job_canceled", job_id=job_id)
            job.cancel("the client went away")

    def _reject(
        self, stream: EventStream, job_id: str, reason: pb.Rejected.Reason, message: str
    ) -> None:
        self._rejected += 1
        self._bump()
        log.info("grpcagent.rejected", job_id=job_id, reason=pb.Rejected.Reason.Name(reason),
                 message=message)  # fmt: skip
        stream.post(pb.RunEvent(rejected=pb.Rejected(reason=reason, message=message)))
        stream.close()

    # ---------------------------------------------------------------- one job

    async def _job(self, job: _Job) -> None:
        structlog.contextvars.bind_contextvars(job_id=job.job_id)
        # The last word is said once the slot is free, so that a client that calls
        # again at once never finds its own finished job in the way.
        last: Callable[[], None] | None = None
        try:
            last = await self._job_phases(job)
        finally:
            del self._jobs[job.job_id]
            self._bump()
            if last is not None:
                last()
            structlog.contextvars.unbind_contextvars("job_id")

    async def _job_phases(self, job: _Job) -> Callable[[], None]:
        """Everything but the final message, which it returns (as a call)."""
        request = job.request
        stream = job.stream
        unmet = await self._unmet(request)
        if unmet:
            return partial(self._reject, stream, job.job_id, pb.Rejected.REQUIREMENTS,
                           "; ".join(unmet))  # fmt: skip
        directory = self.config.work_dir / "jobs" / job.job_id
        log_path = self.config.work_dir / "logs" / f"{job.job_id}.log"
        try:
            await trio.to_thread.run_sync(_fresh_directory, directory, request.user,
                                          request.group)  # fmt: skip
            log_file = await trio.to_thread.run_sync(_open_log, log_path)
        except (OSError, JobUserError) as exc:
            return partial(stream.fail, "INTERNAL", f"cannot prepare the job's directory: {exc}")
        self._accepted += 1
        self._bump()
        log.info("grpcagent.accepted", job_id=job.job_id, command=shlex.join(request.command))
        stream.post(
            pb.RunEvent(accepted=pb.Accepted(job_id=job.job_id, working_directory=str(directory)))
        )
        try:
            with log_file:
                ended = await self._phases(job, directory, log_file)
            if isinstance(ended, pb.Finished):
                await self._upload(job, directory, log_path, ended)
        finally:
            if not self.config.keep_work_dirs:
                with trio.CancelScope(shield=True):  # bounded: a local rm
                    await trio.to_thread.run_sync(_remove, directory)
        if isinstance(ended, str):
            return partial(self._reject, stream, job.job_id, pb.Rejected.PREPARATION, ended)
        finished = ended
        self._finished += 1
        log.info(
            "grpcagent.finished",
            status=pb.Finished.Status.Name(finished.status),
            exit_code=finished.exit_code if finished.HasField("exit_code") else None,
            error=finished.error or None,
        )

        def answer() -> None:
            stream.post(pb.RunEvent(finished=finished))
            stream.close()

        return answer

    async def _phases(self, job: _Job, directory: Path, log_file: LogFile) -> pb.Finished | str:
        """Prepare (if asked) and run the lane: the final message, or why the job cannot
        run here now, when its preparation step said so (it is rejected)."""
        request = job.request
        env = {name: os.environ[name] for name in INHERITED_VARIABLES if name in os.environ}
        env.update(request.env)
        if request.prepare:
            tail = OutputTail(20)
            outcome = await self._run(job, "prepare", request.prepare, env, directory,
                                      [log_file, tail, _StreamSink(job, "prepare")])  # fmt: skip
            cannot_run = request.cannot_run_status or DEFAULT_CANNOT_RUN_STATUS
            if outcome.status is JobStatus.FAILED and outcome.exit_code == cannot_run:
                lines = [line for line in tail.lines if not line.startswith("[farmhand]")]
                said = f": {lines[-1]}" if lines else ""
                return f"the preparation step cannot run here now (exit status {cannot_run}){said}"
            if not outcome.succeeded:
                finished = _finished(outcome)
                finished.error = f"preparation: {outcome.error}"
                return finished
        outcome = await self._run(job, "run", request.command, env, directory,
                                  [log_file, _StreamSink(job, "run")],
                                  max_runtime=request.max_runtime_seconds or None)  # fmt: skip
        return _finished(outcome)

    async def _run(
        self,
        job: _Job,
        phase: str,
        argv: Sequence[str],
        env: dict[str, str],
        directory: Path,
        sinks: list[LogFile | OutputTail | _StreamSink],
        *,
        max_runtime: float | None = None,
    ) -> JobOutcome:
        request = job.request
        spec = JobSpec.from_command(list(argv), env=env, cwd=directory, inherit_env=False)
        stream = job.stream

        def on_event(event: SessionEvent) -> None:
            if isinstance(event, ActionProgress) and not job.detached:
                stream.post(pb.RunEvent(progress=pb.Progress(percent=event.progress)))

        run = JobRun(
            spec,
            sinks=sinks,
            max_runtime=max_runtime,
            grace=job.grace,
            session_id=f"{job.job_id}-{phase}",
            session_root=self.config.work_dir / "sessions",
            containment=self._containment,
            on_event=on_event,
            job_user=JobUser(request.user, request.group or None) if request.user else None,
            secret_patterns=[re.escape(s) for s in request.secrets if s],
        )
        job.attach(run)
        try:
            with self.shutdown.guard(run):
                return await run.run()
        finally:
            job.current = None

    async def _upload(
        self, job: _Job, directory: Path, log_path: Path, finished: pb.Finished
    ) -> None:
        artifacts: list[pb.Upload] = []
        for pattern in job.request.artifacts:
            found = await trio.to_thread.run_sync(_matches, directory, pattern)
            if isinstance(found, str):
                artifacts.append(pb.Upload(path=pattern, error=found))
            for path in found if not isinstance(found, str) else ():
                artifacts.append(
                    await self.storage.upload_artifact(job.job_id, directory / path, path)
                )
        finished.log.CopyFrom(await self.storage.upload_log(job.job_id, log_path))
        finished.artifacts.extend(artifacts)
        finished.upload_failed = bool(finished.log.error) or any(a.error for a in artifacts)

    # ---------------------------------------------------------------- requirements

    async def _probe(self, name: str) -> str | None:
        command = self.config.tools[name]
        version: str | None = None
        with trio.move_on_after(TOOL_PROBE_SECONDS) as scope:
            try:
                result = await trio.run_process(
                    shlex.split(command), capture_stdout=True, capture_stderr=True, check=False
                )
            except OSError as exc:
                log.warning("grpcagent.tool_unavailable", tool=name, error=str(exc))
            else:
                if result.returncode == 0:
                    version = extract_version(
                        (result.stdout + result.stderr).decode(errors="replace")
                    )
                if version is None:
                    log.warning("grpcagent.tool_unavailable", tool=name, status=result.returncode)
        if scope.cancelled_caught:
            log.warning("grpcagent.tool_unavailable", tool=name, error="timed out")
        self._tools[name] = version
        return version

    async def _unmet(self, request: pb.RunRequest) -> list[str]:
        unmet: list[str] = []
        needs = request.requirements
        for name, spec_text in sorted(needs.tools.items()):
            try:
                spec = SpecifierSet(spec_text)
            except InvalidSpecifier:
                unmet.append(f"tool {name}: {spec_text!r} is not a version specifier")
                continue
            if name not in self._tools:
                unmet.append(f"this agent does not offer tool {name}")
                continue
            version = self._tools[name]
            if version is None or not _satisfies(spec, version):
                # Installed or upgraded since the last look, perhaps.
                version = await self._probe(name)
            if version is None:
                unmet.append(f"tool {name} is not usable here")
            elif not _satisfies(spec, version):
                unmet.append(f"tool {name} is version {version}, the job needs {spec_text}")
        missing = sorted(set(needs.labels) - self.config.labels)
        if missing:
            unmet.append(f"this agent lacks the label(s) {', '.join(missing)}")
        if needs.min_free_disk_bytes:
            try:
                free = shutil.disk_usage(self.config.work_dir).free
            except OSError as exc:
                unmet.append(f"cannot tell the free disk space: {exc.strerror or exc}")
            else:
                if free < needs.min_free_disk_bytes:
                    unmet.append(
                        f"{free} bytes free on the work disk, the job needs "
                        f"{needs.min_free_disk_bytes}"
                    )
        if request.user:
            try:
                JobUser(request.user, request.group or None).resolve()
            except JobUserError as exc:
                unmet.append(str(exc))
        return unmet


def _satisfies(spec: SpecifierSet, version: str) -> bool:
    try:
        return spec.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def _check_request(request: pb.RunRequest) -> None:
    try:
        safe_id(request.job_id, "job_id")
    except UnsafePathError as exc:
        raise RequestError(str(exc)) from exc
    if not request.command or not request.command[0]:
        raise RequestError("command: a program to run is required")
    for argv, what in ((request.command, "command"), (request.prepare, "prepare")):
        if any("\0" in arg for arg in argv):
            raise RequestError(f"{what}: arguments cannot contain NUL")
    try:
        JobSpec.from_command(["true"], env=dict(request.env))
    except JobSpecError as exc:
        raise RequestError(f"env: {exc}") from exc
    for pattern in request.artifacts:
        if not pattern or pattern.startswith("/") or ".." in Path(pattern).parts or "\0" in pattern:
            raise RequestError(
                f"artifacts: {pattern!r} must be a relative path inside the job's directory"
            )
    if request.max_runtime_seconds < 0 or request.grace_seconds < 0:
        raise RequestError("max_runtime_seconds and grace_seconds must not be negative")
    if request.group and not request.user:
        raise RequestError("group: a group needs a user")


def _finished(outcome: JobOutcome) -> pb.Finished:
    finished = pb.Finished(
        status=_STATUSES[outcome.status],
        error=outcome.error or "",
        started_at=_rfc3339(outcome.started_at),
        ended_at=_rfc3339(outcome.completed_at),
        duration_seconds=outcome.duration,
    )
    if outcome.exit_code is not None:
        if outcome.exit_code < 0:
            finished.signal = -outcome.exit_code
        else:
            finished.exit_code = outcome.exit_code
    return finished


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fresh_directory(directory: Path, user: str, group: str) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o700)
    if user:
        # The job user works here through its group (as the session runner's own
        # working directories are shared).
        resolved = JobUser(user, group or None).resolve()
        os.chown(directory, -1, resolved.gid)
        directory.chmod(0o2770)


def _open_log(path: Path) -> LogFile:
    path.unlink(missing_ok=True)  # a new run of the same job id starts a new log
    return LogFile(path, mode=0o600)


def _remove(directory: Path) -> None:
    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:  # a job user's files the agent may not delete, say
        log.warning("grpcagent.cleanup_failed", path=str(directory), error=str(exc))


def _matches(directory: Path, pattern: str) -> list[str] | str:
    """Files under ``directory`` matching ``pattern`` (relative paths, sorted), or why none."""
    root = directory.resolve()
    found: list[str] = []
    for path in sorted(directory.glob(pattern)):
        if not path.is_file():
            continue
        real = path.resolve()
        if not real.is_relative_to(root):
            return f"{path.relative_to(directory)} leads outside the job's directory"
        found.append(path.relative_to(directory).as_posix())
    return found or "no file matches"
