"""What the one-job AWS adapters share: exit statuses, the job's log, CLI plumbing.

Exit statuses (the same for ``oneshot`` and ``ephemeral``, so an orchestrator's
retry rules can read them)::

    0    the job succeeded
    1    the job failed
    2    bad configuration: arguments, environment, the job record or config,
         a missing table or parameter, access denied
    3    the job cannot be run here (oneshot: no such record, or not INITIALIZING)
    4    AWS could not be reached for a required call (after retrying), or the
         final status could not be written / the report could not be sent
    5    the job was canceled
    124  the job reached its maximum runtime
    128+N  the job was interrupted by signal N (143 for SIGTERM)
"""

from __future__ import annotations

import argparse
import enum
import re
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from agent import FarmhandError, RetriesExhausted, TransportError, configure_logging
from agent.jobs import JobOutcome, JobStatus, LogFile, OutputSink, Shutdown, open_cloudwatch_log

from ._aws import DEFAULT_RETRY_SECONDS, Aws


class Exit(enum.IntEnum):
    SUCCEEDED = 0
    FAILED = 1
    CONFIGURATION = 2
    NOT_RUNNABLE = 3
    AWS_UNAVAILABLE = 4
    CANCELED = 5
    TIMEOUT = 124


def exit_status(outcome: JobOutcome, shutdown: Shutdown) -> int:
    """The process exit status for how the job ended (see the module docstring)."""
    status = outcome.status
    if status is JobStatus.SUCCEEDED:
        return Exit.SUCCEEDED
    if status is JobStatus.TIMEOUT:
        return Exit.TIMEOUT
    if status is JobStatus.CANCELED:
        return Exit.CANCELED
    if status is JobStatus.INTERRUPTED:
        return interrupted_status(shutdown)
    return Exit.FAILED


def interrupted_status(shutdown: Shutdown) -> int:
    """128 + the number of the signal that stopped us (SIGTERM when unknown)."""
    try:
        number = signal.Signals[shutdown.reason or "SIGTERM"].value
    except KeyError:
        number = signal.SIGTERM.value
    return 128 + number


def failure_status(error: FarmhandError) -> int:
    """4 for AWS that could not be reached (retried until the window closed), else 2."""
    if isinstance(error, RetriesExhausted) or (
        isinstance(error, TransportError) and error.transient
    ):
        return Exit.AWS_UNAVAILABLE
    return Exit.CONFIGURATION


# ----------------------------------------------------------------------- the job's log

_STREAM_FORBIDDEN = re.compile(r"[:*]")


def log_stream_name(*parts: str) -> str:
    """A CloudWatch stream name from ``parts`` (``:`` and ``*`` are not allowed there)."""
    name = "/".join(part for part in parts if part)
    return _STREAM_FORBIDDEN.sub("_", name)[:512] or "job"


@asynccontextmanager
async def open_job_log(
    aws: Aws | None, *, group: str, stream: str, spool: Path
) -> AsyncIterator[OutputSink]:
    """The job's log: ``spool`` on local disk, shipped to CloudWatch ``group``/``stream``
    when ``aws`` is given (the shipper keeps trying while CloudWatch is unreachable)."""
    if aws is None:
        with LogFile(spool) as log_file:
            yield log_file
        return
    async with open_cloudwatch_log(
        group,
        stream,
        spool=spool,
        http=aws.http,
        credentials=aws.credentials,
        region=aws.region,
    ) as cloud:
        yield cloud


# ----------------------------------------------------------------------- CLI

_LOG_GROUP_RE = re.compile(r"[.\-_/#A-Za-z0-9]{1,512}")


def log_group(text: str) -> str:
    if not _LOG_GROUP_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"log group {text!r}: use 1-512 of letters, digits and . - _ / #"
        )
    return text


def positive_seconds(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def seconds_or_zero(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def add_common_arguments(
    parser: argparse.ArgumentParser, *, grace: float, default_log_group: str
) -> None:
    """Options every AWS adapter has."""
    parser.add_argument("--region", help="the AWS region (default: as boto3 finds it)")
    parser.add_argument(
        "--grace",
        type=seconds_or_zero,
        default=grace,
        metavar="SECONDS",
        help=f"how long a stopped job gets between SIGTERM and SIGKILL (default {grace:g})",
    )
    parser.add_argument(
        "--retry-seconds",
        type=positive_seconds,
        default=DEFAULT_RETRY_SECONDS,
        metavar="SECONDS",
        help="how long one AWS call retries throttling, 5xx and connection failures "
        f"(default {DEFAULT_RETRY_SECONDS:g})",
    )
    parser.add_argument(
        "--log-group",
        type=log_group,
        default=default_log_group,
        help=f"the CloudWatch log group for the job's output (default {default_log_group})",
    )
    parser.add_argument(
        "--no-cloudwatch",
        dest="cloudwatch",
        action="store_false",
        help="keep the job's output in the local log only",
    )
    parser.add_argument("--work-dir", type=Path, help="where the job's files and local log go")
    parser.add_argument(
        "--log-format",
        choices=["console", "json"],
        default="console",
        help="farmhand's own log on stderr: console text (default) or JSON lines",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def setup_logging(args: argparse.Namespace) -> None:
    configure_logging(verbose=args.verbose, json_format=args.log_format == "json")


def from_env(value: str | None, environ: Mapping[str, str], name: str) -> str | None:
    """``value`` if given, else the environment's ``name`` (empty counts as unset)."""
    if value:
        return value
    return environ.get(name) or None
