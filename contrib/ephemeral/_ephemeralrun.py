"""Run the one job of a throw-away instance, report it, clean up, and end the instance.

The steps:

1. find this instance's id (``--instance-id``, else IMDSv2);
2. read the job configuration from SSM Parameter Store (``--config-parameter``)
   and check it (``JobConfig``);
3. fetch the bundle through the local cache, verify its sha256, unpack it;
   or, for runs-fleet's runner document, fetch the actions runner through the
   S3 cache and set it to run just in time (``contrib.ephemeral._runner``);
4. run the job (``JobRun``) under the safety timeout (``--timeout-minutes``,
   360 by default, counted from the start, so a slow fetch counts too), its
   output to CloudWatch and the local spool; a ``cancel_parameter`` that
   appears cancels it;
5. send the termination message to SQS (shielded, retried for
   ``--retry-seconds``) and print it on stdout;
6. flush the log, clean the work directory, and terminate the instance
   (EC2 ``TerminateInstances``, or a configured command; ``--no-terminate``
   skips it).

Whatever goes wrong before the job (a bad configuration, a missing bundle,
AWS out of reach, a signal, the timeout) still ends in steps 5 and 6 with a
``failure``, ``timeout`` or ``interrupted`` message, so an orchestrator always
hears back and no instance lingers.

Signals (``Shutdown``): the first SIGTERM or SIGINT forwards SIGTERM to the
job and gives it the grace period (``grace_seconds``, ``--grace``, 90 s)
before SIGKILL; a second kills it at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from actors import Containment, Heartbeat
from agent import FarmhandError, ServiceError
from agent.jobs import JobRun, JobSpec, JobStatus, Shutdown

from .._aws import Aws, iso, open_aws, utc_now
from .._common import (
    Exit,
    exit_status,
    failure_status,
    interrupted_status,
    log_stream_name,
    open_job_log,
)
from ._bundle import BundleCache, BundleError, _extract, open_s3_client
from ._ephemeralconfig import ConfigError, JobConfig
from ._instance import instance_id_from_imds, run_terminate_command
from ._runner import (
    GITHUB_API_URL,
    RunnerError,
    RunnerFetcher,
    latest_release,
    runner_arch,
    runner_env,
)

log = structlog.get_logger("farmhand.ephemeral")

#: The message's status for each way a job ends (a cancel is an interruption).
_STATUS = {
    JobStatus.SUCCEEDED: "success",
    JobStatus.FAILED: "failure",
    JobStatus.TIMEOUT: "timeout",
    JobStatus.INTERRUPTED: "interrupted",
    JobStatus.CANCELED: "interrupted",
}


@attrs.frozen
class EphemeralSettings:
    config_parameter: str
    cache_dir: Path
    #: ``None``: a fresh temporary directory.
    work_dir: Path | None = None
    region: str | None = None
    timeout_minutes: float = 360.0
    grace: float = 90.0
    retry_seconds: float = 600.0
    log_group: str = "/farmhand/ephemeral"
    cloudwatch: bool = True
    queue_url: str | None = None
    terminate: bool = True
    terminate_command: tuple[str, ...] | None = None
    instance_id: str | None = None
    #: The metadata service (``None``: do not ask it).
    imds_endpoint: str | None = None
    keep_work_dir: bool = False
    #: runs-fleet: the S3 bucket of the runner cache (``RUNS_FLEET_CONFIG_BUCKET``).
    runner_bucket: str | None = None
    #: The GitHub API the runner release is looked up in.
    github_api_url: str = GITHUB_API_URL
    #: The runner's architecture (``None``: this machine's).
    runner_arch: str | None = None
    environ: Mapping[str, str] = attrs.field(factory=dict)


#: The placeholder in runs-fleet's parameter name (``/runs-fleet/runners/{instance-id}/config``).
INSTANCE_PLACEHOLDER = "{instance-id}"


@attrs.frozen
class Report:
    """The termination message, as sent to SQS."""

    instance_id: str | None
    job_id: str | None
    status: str
    exit_code: int | None
    duration_seconds: int
    started_at: str
    completed_at: str
    error: str | None
    #: The signal that interrupted the job (runs-fleet's ``interrupted_by``).
    interrupted_by: str | None = None
    #: runs-fleet's format: ``exit_code`` -1 when there is none, ``error`` and
    #: ``interrupted_by`` only when set (its message's ``omitempty``).
    runs_fleet: bool = False

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "instance_id": self.instance_id,
            "job_id": self.job_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "duration_seconds": self.duration_seconds,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "error": self.error,
        }
        if not self.runs_fleet:
            return message
        if self.exit_code is None:
            message["exit_code"] = -1
        if self.error is None:
            del message["error"]
        if self.interrupted_by:
            message["interrupted_by"] = self.interrupted_by
        return message


@attrs.frozen
class _Ended:
    status: str
    exit: int
    error: str | None
    exit_code: int | None = None


async def run_ephemeral(settings: EphemeralSettings) -> int:
    """Run the one job (see the module docstring); the process exit status."""
    shutdown = Shutdown(grace=settings.grace)
    # The watchdog kills what the job started even if this process is SIGKILLed.
    containment = Containment()
    containment.start_watchdog()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(shutdown.watch_signals)
            status = await _Ephemeral(settings, shutdown, containment).run()
            nursery.cancel_scope.cancel(reason="the job is done")
    finally:
        containment.close()
    return status


class _Ephemeral:
    def __init__(
        self, settings: EphemeralSettings, shutdown: Shutdown, containment: Containment
    ) -> None:
        self.settings = settings
        self.shutdown = shutdown
        self.containment = containment
        self.started_at = utc_now()
        self.started = trio.current_time()
        self.config: JobConfig | None = None
        self.instance_id: str | None = settings.instance_id
        self.work_dir: Path | None = None
        self._created_work_dir = False

    async def run(self) -> int:
        settings = self.settings
        try:
            async with open_aws(
                ["ssm", "sqs", "ec2"], region=settings.region, retry_seconds=settings.retry_seconds
            ) as aws:
                return await self._run(aws)
        except FarmhandError as exc:
            # No region or no credentials: nothing can be reported.
            status = failure_status(exc)
            log.error("ephemeral.failed", error=str(exc), exit_status=status)
            return status

    async def _run(self, aws: Aws) -> int:
        settings = self.settings
        if self.instance_id is None and settings.imds_endpoint is not None:
            self.instance_id = await instance_id_from_imds(settings.imds_endpoint)
        if self.instance_id is None:
            log.warning(
                "ephemeral.no_instance_id",
                note="give --instance-id (INSTANCE_ID) or run where the metadata service answers",
            )
        structlog.contextvars.bind_contextvars(instance_id=self.instance_id)
        async with contextlib.AsyncExitStack() as stack:
            try:
                ended = await self._attempt(aws, stack)
            except Exception as exc:
                # Not the job: farmhand could not run it (e.g. the log could not be
                # opened, or a bug). The orchestrator must still hear back.
                log.exception("ephemeral.internal_error")
                ended = _Ended("failure", Exit.FAILED, f"farmhand could not run the job: {exc!r}")
            report = Report(
                instance_id=self.instance_id,
                job_id=self.config.job_id if self.config else settings.environ.get("JOB_ID"),
                status=ended.status,
                exit_code=ended.exit_code,
                # Whole seconds, as runs-fleet's message has them.
                duration_seconds=int(trio.current_time() - self.started),
                started_at=iso(self.started_at),
                completed_at=iso(utc_now()),
                error=ended.error,
                interrupted_by=(
                    self.shutdown.reason or "stop" if ended.status == "interrupted" else None
                ),
                runs_fleet=self.config.runs_fleet if self.config else False,
            )
            print(json.dumps(report.message()), flush=True)
            sent = await self._send_report(aws, report)
        # The job's log is flushed (the stack closed it); now nothing is left to keep.
        await self._clean()
        await self._terminate(aws)
        return ended.exit if sent else Exit.AWS_UNAVAILABLE

    # ------------------------------------------------------------------- the job

    async def _attempt(self, aws: Aws, stack: contextlib.AsyncExitStack) -> _Ended:
        settings = self.settings
        deadline = self.started + settings.timeout_minutes * 60
        with self.shutdown.while_accepting() as stop_scope, trio.move_on_at(deadline) as timer:
            try:
                work_dir = self._make_work_dir()
                config = self.config = await self._read_config(aws)
                if config.timeout_minutes is not None:
                    deadline = self.started + config.timeout_minutes * 60
                    timer.deadline = deadline
                if config.grace_seconds is not None:
                    self.shutdown.grace = config.grace_seconds
                spec, bundle_dir = await self._prepare(aws, config, work_dir)
            except ConfigError as exc:
                return self._fail(Exit.CONFIGURATION, f"bad configuration: {exc}")
            except BundleError as exc:
                return self._fail(Exit.CONFIGURATION, f"bundle: {exc}")
            except RunnerError as exc:
                return self._fail(Exit.CONFIGURATION, f"runner: {exc}")
            except FarmhandError as exc:
                return self._fail(failure_status(exc), str(exc))
        if stop_scope.cancelled_caught:
            return self._interrupted("before the job started")
        if timer.cancelled_caught:
            return self._timed_out(deadline, "before the job started")
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            return self._timed_out(deadline, "before the job started")

        stream = config.log_stream or log_stream_name(self.instance_id or "local", config.job_id)
        group = config.log_group or settings.log_group
        sink = await stack.enter_async_context(
            open_job_log(
                aws if settings.cloudwatch else None,
                group=group,
                stream=stream,
                spool=work_dir / ".farmhand" / "job.log",
            )
        )
        log.info(
            "ephemeral.running",
            job_id=config.job_id,
            job=spec.name,
            bundle_dir=str(bundle_dir) if bundle_dir else None,
            timeout=round(remaining, 3),
            log_group=group if settings.cloudwatch else None,
            log_stream=stream if settings.cloudwatch else None,
        )
        run = JobRun(
            spec,
            sinks=[sink],
            max_runtime=remaining,
            grace=self.shutdown.grace,
            session_id=f"ephemeral-{hashlib.sha256(config.job_id.encode()).hexdigest()[:12]}",
            session_root=work_dir / ".farmhand" / "sessions",
            containment=self.containment,
        )
        async with trio.open_nursery() as nursery:
            if config.cancel_parameter is not None:
                poll = partial(self._poll_cancel, aws, config.cancel_parameter, run)
                nursery.start_soon(Heartbeat(poll, config.cancel_poll_seconds).run)
            with self.shutdown.guard(run):
                outcome = await run.run()
            nursery.cancel_scope.cancel(reason="the job has ended")
        error = outcome.error
        if outcome.status is JobStatus.TIMEOUT and outcome.exit_code is None:
            error = self._timeout_text(deadline)
        return _Ended(
            status=_STATUS[outcome.status],
            exit=exit_status(outcome, self.shutdown),
            error=error,
            exit_code=outcome.exit_code,
        )

    def _make_work_dir(self) -> Path:
        wanted = self.settings.work_dir
        try:
            if wanted is None:
                path = Path(tempfile.mkdtemp(prefix="farmhand-ephemeral-"))
                self._created_work_dir = True
            elif wanted.exists():
                if not wanted.is_dir() or any(wanted.iterdir()):
                    raise ConfigError(f"the work directory {wanted} is not an empty directory")
                path = wanted
            else:
                wanted.mkdir(parents=True)
                path = wanted
                self._created_work_dir = True
        except OSError as exc:
            raise ConfigError(f"cannot make the work directory: {exc}") from exc
        self.work_dir = path
        return path

    async def _read_config(self, aws: Aws) -> JobConfig:
        name = self.settings.config_parameter
        if INSTANCE_PLACEHOLDER in name:
            if self.instance_id is None:
                raise ConfigError(f"the parameter {name} names the instance, whose id is not known")
            name = name.replace(INSTANCE_PLACEHOLDER, self.instance_id)
        try:
            answer = await aws.client("ssm").call(
                "GetParameter", {"Name": name, "WithDecryption": True}
            )
        except ServiceError as exc:
            if exc.code == "ParameterNotFound":
                raise ConfigError(f"there is no SSM parameter {name}") from exc
            raise ConfigError(f"cannot read SSM parameter {name}: {exc}") from exc
        config = JobConfig.from_json(answer["Parameter"]["Value"], source=f"SSM parameter {name}")
        structlog.contextvars.bind_contextvars(job_id=config.job_id)
        log.info("ephemeral.config_loaded", parameter=name)
        return config

    async def _prepare(
        self, aws: Aws, config: JobConfig, work_dir: Path
    ) -> tuple[JobSpec, Path | None]:
        if config.runner is not None:
            return await self._prepare_runner(aws, config, work_dir), None
        bundle = config.bundle
        bundle_dir = work_dir / bundle.directory if bundle is not None else None
        env = {"FARMHAND_JOB_ID": config.job_id, "FARMHAND_WORK_DIR": str(work_dir)}
        if bundle_dir is not None:
            env["FARMHAND_BUNDLE_DIR"] = str(bundle_dir)
        # Checked before anything is fetched: a bad template costs no download.
        spec = config.job_spec(work_dir=work_dir, bundle_dir=bundle_dir, env=env)
        if bundle is not None and bundle_dir is not None:
            s3 = open_s3_client(self.settings.region)
            cache = BundleCache(
                s3, self.settings.cache_dir, retry_seconds=self.settings.retry_seconds
            )
            archive = await cache.fetch(bundle)
            await cache.extract(archive, bundle_dir, source=bundle.url)
        return spec, bundle_dir

    async def _prepare_runner(self, aws: Aws, config: JobConfig, work_dir: Path) -> JobSpec:
        """runs-fleet: the actions runner, fetched through the S3 cache, unpacked, and
        set to run just in time (see ``contrib.ephemeral._runner``)."""
        settings = self.settings
        registration = config.runner
        assert registration is not None
        arch = runner_arch(settings.runner_arch)
        release = await latest_release(
            aws.http, settings.github_api_url, arch, retry_seconds=settings.retry_seconds
        )
        log.info(
            "runner.release",
            version=release.version,
            arch=arch,
            org=registration.org,
            repo=registration.repo,
            labels=list(registration.labels),
            runner_group=registration.runner_group,
        )
        if settings.runner_bucket is None:
            log.warning("runner.no_cache", note="RUNS_FLEET_CONFIG_BUCKET is not set: downloading")
        fetcher = RunnerFetcher(
            http=aws.http,
            s3=open_s3_client(settings.region) if settings.runner_bucket else None,
            bucket=settings.runner_bucket,
            retry_seconds=settings.retry_seconds,
        )
        archive = work_dir / ".farmhand" / f"actions-runner-{release.version}.tar.gz"
        await fetcher.fetch(release, archive)
        runner_dir = work_dir / "actions-runner"
        # Not abandoned: it writes into the work directory, which is cleaned after.
        await trio.to_thread.run_sync(partial(_extract, archive, runner_dir, release.url))
        archive.unlink()
        log.info("runner.unpacked", directory=str(runner_dir))
        env = {
            "FARMHAND_JOB_ID": config.job_id,
            "FARMHAND_WORK_DIR": str(work_dir),
            **runner_env(registration.jit_token),
        }
        # The token goes in the environment, never on the command line (which the
        # session's log shows, and any process listing).
        return JobSpec.from_command(["./run.sh"], env=env, cwd=runner_dir, name="actions-runner")

    async def _poll_cancel(self, aws: Aws, name: str, run: JobRun) -> None:
        # A read: cancelling it when the job ends is harmless.
        try:
            await aws.client("ssm").call("GetParameter", {"Name": name})
        except ServiceError as exc:
            if exc.code != "ParameterNotFound":
                log.warning("ephemeral.cancel_poll_failed", parameter=name, error=str(exc))
            return
        except FarmhandError as exc:
            log.warning("ephemeral.cancel_poll_failed", parameter=name, error=str(exc))
            return
        log.info("ephemeral.cancel_requested", parameter=name)
        run.cancel(reason=f"canceled: SSM parameter {name} is set")

    # ------------------------------------------------------------------- endings

    def _fail(self, exit: int, error: str) -> _Ended:
        log.error("ephemeral.job_not_run", error=error)
        return _Ended("failure", exit, error)

    def _interrupted(self, when: str) -> _Ended:
        reason = self.shutdown.reason or "stop"
        log.warning("ephemeral.interrupted", reason=reason, when=when)
        return _Ended("interrupted", interrupted_status(self.shutdown), f"{reason} {when}")

    def _timed_out(self, deadline: float, when: str) -> _Ended:
        error = f"{self._timeout_text(deadline)} {when}"
        log.error("ephemeral.timeout", error=error)
        return _Ended("timeout", Exit.TIMEOUT, error)

    def _timeout_text(self, deadline: float) -> str:
        minutes = (deadline - self.started) / 60
        return f"the safety timeout of {minutes:g} minutes was reached"

    async def _send_report(self, aws: Aws, report: Report) -> bool:
        config_url = self.config.termination_queue_url if self.config else None
        if self.config is not None and self.config.runs_fleet:
            # runs-fleet: RUNS_FLEET_TERMINATION_QUEUE_URL first, then its document's.
            url = self.settings.queue_url or config_url
        else:
            url = config_url or self.settings.queue_url
        message = report.message()
        if not url:
            log.error(
                "ephemeral.report_not_sent",
                report=message,
                why="no termination_queue_url in the job configuration and no --queue-url",
            )
            return False
        params: dict[str, Any] = {"QueueUrl": url, "MessageBody": json.dumps(message)}
        if url.endswith(".fifo"):
            params["MessageGroupId"] = report.job_id or report.instance_id or "farmhand"
            identity = f"{report.instance_id}/{report.job_id}/{report.started_at}"
            params["MessageDeduplicationId"] = hashlib.sha256(identity.encode()).hexdigest()
        # The message must go out: shielded, bounded by the retry window.
        with trio.CancelScope(shield=True):
            try:
                await aws.client("sqs").call("SendMessage", params)
            except FarmhandError as exc:
                log.error("ephemeral.report_not_sent", report=message, why=str(exc))
                return False
        log.info("ephemeral.reported", queue_url=url, status=report.status)
        return True

    async def _clean(self) -> None:
        work_dir = self.work_dir
        if work_dir is None:
            return
        if self.settings.keep_work_dir:
            log.info("ephemeral.work_dir_kept", work_dir=str(work_dir))
            return
        # Not abandoned: the instance ends next, and the directory must be gone first.
        await trio.to_thread.run_sync(partial(_remove, work_dir, keep=not self._created_work_dir))
        log.info("ephemeral.cleaned", work_dir=str(work_dir))

    async def _terminate(self, aws: Aws) -> None:
        settings = self.settings
        if not settings.terminate:
            log.info("ephemeral.not_terminating", reason="--no-terminate")
            return
        command = (self.config.terminate_command if self.config else None) or (
            settings.terminate_command
        )
        if command:
            await run_terminate_command(command)
            return
        if self.instance_id is None:
            log.error("ephemeral.terminate_failed", error="this instance's id is not known")
            return
        log.warning("ephemeral.terminating", instance_id=self.instance_id)
        with trio.CancelScope(shield=True):
            try:
                await aws.client("ec2").call(
                    "TerminateInstances", {"InstanceIds": [self.instance_id]}
                )
            except FarmhandError as exc:
                log.error("ephemeral.terminate_failed", error=str(exc))


def _remove(path: Path, *, keep: bool) -> None:
    """Remove ``path`` (only its contents with ``keep``), making read-only parts writable."""

    def retry(function: Callable[..., Any], name: str, *_: Any) -> None:
        try:
            Path(name).parent.chmod(0o700)
            Path(name).chmod(0o700)
            function(name)
        except OSError as exc:
            log.warning("ephemeral.clean_failed", path=name, error=str(exc))

    targets = list(path.iterdir()) if keep else [path]
    for target in targets:
        if target.is_dir() and not target.is_symlink():
            if sys.version_info >= (3, 12):
                shutil.rmtree(target, onexc=retry)
            else:
                shutil.rmtree(target, onerror=retry)
        else:
            target.unlink(missing_ok=True)
