"""The fleet's host configuration script, run once per host before the worker takes work.

A fleet may carry ``hostConfiguration {scriptBody, scriptTimeoutSeconds}``; the farm
hands it to the worker in the answer to ``UpdateWorker(STARTED)``. As the official
agent does, the worker

- skips it when ``worker.json`` says it succeeded on this host before
  (``host_configuration_succeeded``), with a line saying so;
- otherwise writes it to ``<persistence>/host_configuration.sh`` (mode 0700) and runs it
  there as root (directly when the agent is root, else through ``sudo -n -u root -i``),
  with ``DEADLINE_FARM_ID``, ``DEADLINE_FLEET_ID``, ``DEADLINE_WORKER_ID``,
  ``HOST_CONFIG_TIMEOUT_SECONDS`` and the fleet role's credentials in ``AWS_*``;
- puts every line it prints in the agent log (so in the worker's CloudWatch stream),
  with the credentials and the configured secret patterns masked;
- on exit 0 records the success in ``worker.json`` and goes on; on any other end raises
  ``HostConfigurationFailed`` (the worker then tells the farm it STOPPED and, unless
  ``--no-shutdown``, shuts the host down, as the official agent does).

Unlike the official agent, which leaves the timeout to the service (the worker goes
NOT_RESPONDING), farmhand enforces it itself: past ``scriptTimeoutSeconds`` (300 when
not given) the script's whole process tree is stopped (SIGTERM, then SIGKILL after a
short grace) through the one-job API's containment, and the worker stops with a
message that says it timed out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from actors import Containment, JobUser

from .._errors import FarmhandError
from ._config import WorkerConfig
from ._state import WorkerState, save_worker_state

__all__ = ["DEFAULT_TIMEOUT", "HostConfigurationFailed", "run_host_configuration"]

log = structlog.get_logger("farmhand.hostconfig")

#: The service's default (and minimum) ``scriptTimeoutSeconds``.
DEFAULT_TIMEOUT = 300
#: Seconds a timed-out script gets between SIGTERM and SIGKILL.
STOP_GRACE = 10.0
SCRIPT_NAME = "host_configuration.sh"


class HostConfigurationFailed(FarmhandError):
    """The fleet's host configuration script failed or timed out: the worker may not work."""

    def __init__(self, message: str, exit_code: int | None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _AgentLogSink:
    """The script's lines, one agent log record each."""

    def write(self, lines: Sequence[str]) -> None:
        for line in lines:
            log.info("host_configuration.output", line=line)


async def run_host_configuration(
    config: WorkerConfig,
    worker_id: str,
    host_configuration: Mapping[str, Any] | None,
    state: WorkerState,
    credentials: tuple[str, str, str | None] | None,
    *,
    containment: Containment | None = None,
    limit_seconds: float | None = None,
) -> WorkerState:
    """Run the script if there is one to run; the worker's state, updated when it ran
    and succeeded. ``credentials`` is the fleet role's (key id, secret, token);
    ``limit_seconds`` overrides the script's own (tests). Raises ``HostConfigurationFailed``."""
    body = (host_configuration or {}).get("scriptBody")
    if not isinstance(body, str) or not body.strip():
        return state
    if state.host_configuration_succeeded:
        log.info(
            "host_configuration.skipped",
            note="it succeeded on this host before (worker.json); not running it again",
        )
        return state
    declared = (host_configuration or {}).get("scriptTimeoutSeconds")
    limit = limit_seconds if limit_seconds is not None else float(declared or DEFAULT_TIMEOUT)

    # The one-job API (and its template machinery) only when a fleet has a script.
    from ..jobs import JobRun, JobSpec, JobStatus

    directory = config.worker_persistence_dir
    script = directory / SCRIPT_NAME
    await trio.to_thread.run_sync(_write_script, script, body)
    env = {
        "DEADLINE_FARM_ID": config.farm_id,
        "DEADLINE_FLEET_ID": config.fleet_id,
        "DEADLINE_WORKER_ID": worker_id,
        "HOST_CONFIG_TIMEOUT_SECONDS": str(int(limit)),
    }
    secrets: list[str] = list(config.secret_patterns)
    if credentials is not None:
        key_id, secret, token = credentials
        env["AWS_ACCESS_KEY_ID"] = key_id
        env["AWS_SECRET_ACCESS_KEY"] = secret
        secrets.append(re.escape(secret))
        if token:
            env["AWS_SESSION_TOKEN"] = token
            secrets.append(re.escape(token))
    # A script without "#!" is a shell script, as a shell would take it.
    argv = [str(script)] if body.startswith("#!") else ["/bin/sh", str(script)]
    spec = JobSpec.from_command(argv, env=env, cwd=directory, name="host-configuration")
    run = JobRun(
        spec,
        sinks=[_AgentLogSink()],
        max_runtime=limit,
        grace=min(STOP_GRACE, limit),
        session_id=f"host-configuration-{worker_id}",
        containment=containment,
        notes=False,
        job_user=None if os.geteuid() == 0 else JobUser("root"),
        secret_patterns=secrets,
    )
    log.info("host_configuration.running", timeout_seconds=limit, script=str(script))
    try:
        outcome = await run.run()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove, script)
    if outcome.status is JobStatus.SUCCEEDED:
        log.info(
            "host_configuration.succeeded",
            exit_code=outcome.exit_code,
            duration=round(outcome.duration, 3),
        )
        state = attrs.evolve(state, host_configuration_succeeded=True)
        await trio.to_thread.run_sync(save_worker_state, directory, state)
        return state
    if outcome.status is JobStatus.TIMEOUT:
        message = (
            f"the fleet's host configuration script ran past its {limit:g} s "
            "(scriptTimeoutSeconds) and was stopped"
        )
    elif outcome.exit_code is not None:
        message = f"the fleet's host configuration script failed with exit code {outcome.exit_code}"
    else:
        message = f"the fleet's host configuration script did not run: {outcome.error}"
    log.critical(
        "host_configuration.failed",
        error=message,
        exit_code=outcome.exit_code,
        note="the worker cannot run jobs; it stops",
    )
    raise HostConfigurationFailed(message, outcome.exit_code)


def _write_script(path: Path, body: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o700)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(body)
    os.chmod(path, 0o700)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
