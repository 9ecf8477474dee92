"""``python -m agent --farm-id FARM --fleet-id FLEET [options]``: the worker agent.

Configuration comes from flags, ``DEADLINE_WORKER_*`` variables and
``worker.toml``, as for the official agent (see ``agent._config``).

Signals:

- first SIGTERM or SIGINT: drain (``--drain-grace-seconds``, 4 s by default),
  then exit 0;
- a second one: drain with no grace left;
- a third: exit at once (the watchdog still kills what the jobs left running);
- SIGUSR1: finish the current work, take no more, then stop and exit 0.

Exit status: 0 after a drain or a stop asked for by the farm, by ``SIGUSR1``,
``--exit-after-jobs`` or ``--idle-timeout``; 1 when the farm gives up on the
worker (offline, not found) or an API error cannot be recovered from; 2 for a
bad configuration.
"""

from __future__ import annotations

import argparse
import os
import sys

import structlog
import trio

from ._config import ConfigError, WorkerConfig, configure_parser, load_config
from ._embed import serve_worker
from ._errors import FarmhandError, UnrecoverableError
from ._logging import configure_logging

log = structlog.get_logger("farmhand.main")


def configure(parser: argparse.ArgumentParser) -> None:
    configure_parser(parser)


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args, environ=os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        verbose=config.verbose,
        json_format=config.log_format == "json",
        file=config.worker_logs_dir / "worker-agent.log",
        max_bytes=config.log_max_bytes,
        backups=config.log_rotate_count,
    )
    for note in config.warnings:
        log.warning("config.note", note=note)
    return trio.run(serve, config)


async def serve(config: WorkerConfig) -> int:
    """Run the worker until it is stopped; the process exit status."""
    try:
        reason = await serve_worker(config, handle_signals=True)
    except FarmhandError as exc:
        kind = "worker.farm_gave_up" if isinstance(exc, UnrecoverableError) else "worker.failed"
        log.error(kind, error=str(exc), error_type=type(exc).__name__)
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
