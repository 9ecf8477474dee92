"""``python -m agent --farm-id FARM --fleet-id FLEET [options]``: the worker agent.

Configuration comes from flags, ``DEADLINE_WORKER_*`` variables and
``worker.toml``, as for the official agent (see ``agent.worker._config``).

Signals:

- first SIGTERM or SIGINT: drain (``--drain-grace-seconds``, 4 s by default):
  UpdateWorker(STOPPING), running actions reported INTERRUPTED at once and
  cancelled with their own method within the grace, environment exits within
  what is left, queued actions NEVER_ATTEMPTED, a final UpdateWorkerSchedule,
  UpdateWorker(STOPPED), then exit 0; heartbeats go on until then;
- a second one: the same with no grace left (actions killed, exits skipped);
- a third: exit at once (status 130; the watchdog still kills what the jobs
  left running);
- SIGUSR1: finish the actions the worker has, take no more, then stop and exit 0.

Other ways to stop, each a defined path:

- the farm asks (``desiredWorkerStatus=STOPPED``): drain, exit 0, and shut the
  host down unless ``--no-shutdown`` (the official agent's default);
- ``--exit-after-jobs N`` or ``--idle-timeout SECONDS``: drain, exit 0;
- a spot interruption or scale-in notice (``--imds-monitor``): drain at once
  with the time the notice leaves, exit 0;
- the worker's credentials cannot be renewed before they expire: drain within
  the time they have left, exit 1 (so the service manager restarts it, and the
  new process bootstraps fresh credentials);
- the farm gives up on the worker (offline, not found) or an API error cannot
  be recovered from: the sessions are cancelled (their processes killed), an
  UpdateWorker(STOPPED) is tried, exit 1.

Exit status 2 is a bad configuration.
"""

from __future__ import annotations

import argparse
import os
import sys

import structlog
import trio

from .._errors import ConfigurationError, FarmhandError, UnrecoverableError
from .._gc import tune_gc
from .._logging import configure_logging
from .._progress import StatusLine, is_terminal
from . import _credenv
from ._config import ConfigError, WorkerConfig, configure_parser, load_config
from ._embed import serve_worker
from ._hostconfig import HostConfigurationFailed

log = structlog.get_logger("farmhand.main")


def configure(parser: argparse.ArgumentParser) -> None:
    configure_parser(parser)


def preload(args: argparse.Namespace) -> None:
    """The two service models every worker call reads (parsed once, several MiB of
    objects), loaded before the start-up freeze (``agent._cli``) so that the
    collector never scans them again."""
    from ..deadline._client import service_model

    service_model("deadline")
    service_model("logs")


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args, environ=os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # No process this one starts inherits the worker's keys, and no job of this user
    # can read them from /proc/<pid>/environ or mem (see _credenv).
    _credenv.take_from_environment()
    _credenv.make_undumpable()
    configure_logging(
        verbose=config.verbose,
        json_format=config.log_format == "json",
        file=config.worker_logs_dir / "worker-agent.log",
        max_bytes=config.log_max_bytes,
        backups=config.log_rotate_count,
        secret_patterns=config.secret_patterns,
        min_secret_length=config.min_secret_length,
    )
    for note in config.warnings:
        log.warning("config.note", note=note)
    tune_gc()
    return trio.run(serve, config)


async def serve(config: WorkerConfig) -> int:
    """Run the worker until it is stopped; the process exit status."""
    try:
        # On a terminal (console log), a slow start-up shows how long it has taken.
        live = config.log_format != "json" and is_terminal(sys.stderr)
        progress = StatusLine(sys.stderr, live=live)
        reason = await serve_worker(config, handle_signals=True, progress=progress)
    except ConfigurationError as exc:
        # Found at start-up (no region, an unusable endpoint): a bad configuration.
        log.error("worker.bad_configuration", error=str(exc))
        return 2
    except HostConfigurationFailed as exc:
        # As the official agent: the farm was told STOPPED; the host goes, unless kept.
        log.error("worker.host_configuration_failed", error=str(exc))
        if config.shutdown_on_stop:
            await _shut_down_host()
        return 1
    except FarmhandError as exc:
        kind = "worker.farm_gave_up" if isinstance(exc, UnrecoverableError) else "worker.failed"
        log.error(kind, error=str(exc), error_type=type(exc).__name__)
        return 1
    if reason == "farm_unreachable":
        # Drained (worker.farm_unreachable says why); the service manager starts it afresh.
        return 1
    if reason == "credentials":
        # Drained; a fresh start (the service manager's) bootstraps new credentials.
        log.error("worker.credentials_lost", note="exit 1 so the service manager restarts it")
        return 1
    if reason == "farm" and config.shutdown_on_stop:
        await _shut_down_host()
    return 0


async def _shut_down_host() -> None:
    """The official agent's default when the farm stops a worker: shut the host down."""
    argv = (
        ["shutdown", "-h", "now"] if os.geteuid() == 0 else ["sudo", "-n", "shutdown", "-h", "now"]
    )
    log.warning(
        "worker.shutting_down_host",
        command=" ".join(argv),
        note="use --no-shutdown to keep the host up",
    )
    try:
        await trio.run_process(argv, check=False)
    except OSError as exc:
        log.error("worker.shutdown_failed", error=str(exc))
