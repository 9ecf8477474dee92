"""``python -m agent oneshot --table T --job-id ID``: run one DynamoDB job record.

For a container task started per job (Fargate, Batch, a Kubernetes Job). The
table, job and run mode also come from the environment, in plus-worker's
names (a task definition written for plus-worker runs unchanged):
``DYNAMO_TABLE``, ``JOB_ID``, ``RUN_MODE`` (``COLLECTION_OWNER``,
``ACTION_ID``), ``REGION``, ``ACCESS_KEY``/``SECRET_KEY``, ``USERNAME``,
``DYNAMO_STREAMS_TABLE``, ``PRIMARY_BUCKET``; or in farmhand's own
(``JOB_TABLE``, ``COLLECTION_ID``). See ``contrib.oneshot._oneshotrun`` for
the steps and ``contrib._common`` for the exit statuses.
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
#: What a plus-worker task definition must give besides the table and the job
#: (its README's "Required (all modes)"; ACCESS_KEY/SECRET_KEY may be left to the
#: task role, REGION to the default chain).
PLUS_WORKER_REQUIRED = ("RUN_MODE", "USERNAME", "DYNAMO_STREAMS_TABLE", "PRIMARY_BUCKET")
#: plus-worker's records are keyed by ``object_id``.
PLUS_WORKER_KEY = "object_id"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--table", help="the DynamoDB table of job records (or DYNAMO_TABLE, or JOB_TABLE)"
    )
    parser.add_argument("--job-id", help="the record's key (or JOB_ID)")
    parser.add_argument(
        "--key",
        help="the table's partition key, a string attribute (default job_id; "
        "object_id when the table comes from DYNAMO_TABLE, as plus-worker's does)",
    )
    parser.add_argument(
        "--run-mode",
        help=f"what the record means: {', '.join(RUN_MODES)} (or RUN_MODE; "
        "default: the record's run_mode, else RUN_SCRIPT)",
    )
    parser.add_argument(
        "--collection-command",
        help="RUN_COLLECTION: the command to run when the record has no work of its own "
        "(or COLLECTION_COMMAND); it gets COLLECTION_OWNER and COLLECTION_ID in its environment",
    )
    parser.add_argument(
        "--action-command",
        help="RUN_ACTION: the action runner, run with ACTION_ID in its environment "
        "(or ACTION_COMMAND); without one RUN_ACTION is not supported",
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
    plus_worker = not args.table and bool(environ.get("DYNAMO_TABLE"))
    table = from_env(args.table, environ, "DYNAMO_TABLE") or from_env(None, environ, "JOB_TABLE")
    job_id = from_env(args.job_id, environ, "JOB_ID")
    if table is None or job_id is None:
        missing = [name for name, value in (("--table", table), ("--job-id", job_id)) if not value]
        print(
            f"error: {' and '.join(missing)} required (or DYNAMO_TABLE / JOB_TABLE and JOB_ID): "
            "without them no record can be reached",
            file=sys.stderr,
        )
        return Exit.CONFIGURATION
    access_key, secret_key = environ.get("ACCESS_KEY"), environ.get("SECRET_KEY")
    if bool(access_key) != bool(secret_key):
        given, missing_key = (
            ("ACCESS_KEY", "SECRET_KEY") if access_key else ("SECRET_KEY", "ACCESS_KEY")
        )
        print(
            f"error: {given} is set but {missing_key} is not: give both, or neither "
            "(then the task role's credentials are used)",
            file=sys.stderr,
        )
        return Exit.CONFIGURATION
    if access_key and secret_key:
        # plus-worker's explicit keys win over the default chain, as they do there; a
        # session token from another identity would not match them.
        os.environ["AWS_ACCESS_KEY_ID"] = access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = secret_key
        os.environ.pop("AWS_SESSION_TOKEN", None)
    setup_logging(args)
    settings = OneshotSettings(
        table=table,
        job_id=job_id,
        key=args.key or (PLUS_WORKER_KEY if plus_worker else "job_id"),
        # An unknown mode is not refused here: it is an error written to the record.
        run_mode=from_env(args.run_mode, environ, "RUN_MODE"),
        collection_command=from_env(args.collection_command, environ, "COLLECTION_COMMAND"),
        action_command=from_env(args.action_command, environ, "ACTION_COMMAND"),
        required=PLUS_WORKER_REQUIRED if plus_worker else (),
        region=args.region or environ.get("REGION") or None,
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
