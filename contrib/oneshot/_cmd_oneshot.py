"""``python -m agent oneshot --table T --job-id ID``: run one DynamoDB job record.

For a container task started per job (Fargate, Batch, a Kubernetes Job). The
table, job and run mode also come from ``JOB_TABLE``, ``JOB_ID`` and
``RUN_MODE``. See ``contrib.oneshot._oneshotrun`` for the steps and
``contrib._common`` for the exit statuses.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import trio

from .._common import (
    Exit,
    add_common_arguments,
    from_env,
    positive_seconds,
    setup_logging,
)
from ._oneshotrun import OneshotSettings, run_oneshot
from ._record import RUN_MODES

DEFAULT_LOG_GROUP = "/farmhand/oneshot"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", help="the DynamoDB table of job records (or JOB_TABLE)")
    parser.add_argument("--job-id", help="the record's key (or JOB_ID)")
    parser.add_argument(
        "--key",
        default="job_id",
        help="the table's partition key, a string attribute (default job_id)",
    )
    parser.add_argument(
        "--run-mode",
        help=f"what the record means: {', '.join(RUN_MODES)} (or RUN_MODE; "
        "default: the record's run_mode, else RUN_SCRIPT)",
    )
    parser.add_argument(
        "--collection-command",
        help="RUN_COLLECTION: the command to run when the record has no work of its own "
        "(or COLLECTION_COMMAND); it gets COLLECTION_ID in its environment",
    )
    parser.add_argument(
        "--max-runtime",
        type=positive_seconds,
        default=6 * 3600.0,
        metavar="SECONDS",
        help="stop the job after this long (default 21600); a record's "
        "max_runtime_seconds can only lower it",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how often heartbeat_at is stamped and cancel_requested read (default 30)",
    )
    # Below the usual 30 s kill delay of ECS and Kubernetes, leaving time for the final write.
    add_common_arguments(parser, grace=20.0, default_log_group=DEFAULT_LOG_GROUP)


def main(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    table = from_env(args.table, environ, "JOB_TABLE")
    job_id = from_env(args.job_id, environ, "JOB_ID")
    if table is None or job_id is None:
        missing = [name for name, value in (("--table", table), ("--job-id", job_id)) if not value]
        print(f"error: {' and '.join(missing)} required (or JOB_TABLE / JOB_ID)", file=sys.stderr)
        return Exit.CONFIGURATION
    setup_logging(args)
    settings = OneshotSettings(
        table=table,
        job_id=job_id,
        key=args.key,
        # An unknown mode is not refused here: it is an error written to the record.
        run_mode=from_env(args.run_mode, environ, "RUN_MODE"),
        collection_command=from_env(args.collection_command, environ, "COLLECTION_COMMAND"),
        region=args.region,
        max_runtime=args.max_runtime,
        grace=args.grace,
        heartbeat_interval=args.heartbeat_interval,
        retry_seconds=args.retry_seconds,
        log_group=args.log_group,
        cloudwatch=args.cloudwatch,
        work_dir=args.work_dir or Path(tempfile.gettempdir()) / "farmhand-oneshot",
        environ=environ,
    )
    return trio.run(run_oneshot, settings)
