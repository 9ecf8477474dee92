"""``python -m agent ephemeral --config-parameter NAME``: one job on a throw-away instance.

For one-job instances launched by an orchestrator (a CI runner per job): the
job configuration is the JSON in an SSM parameter (``--config-parameter``, or
``JOB_CONFIG_PARAMETER``). A runs-fleet instance's environment works as it is:
``RUNS_FLEET_INSTANCE_ID``, ``RUNS_FLEET_SSM_PARAMETER`` (default
``/runs-fleet/runners/{instance-id}/config``), ``RUNS_FLEET_LOG_GROUP``,
``RUNS_FLEET_MAX_RUNTIME`` (minutes), ``RUNS_FLEET_CONFIG_BUCKET`` (the runner
cache) and ``RUNS_FLEET_TERMINATION_QUEUE_URL``. See ``contrib.ephemeral._ephemeralrun`` for the steps and
``contrib._common`` for the exit statuses.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import trio

from .._common import Exit, add_common_arguments, from_env, positive_seconds, setup_logging
from .._common import log_group as common_log_group
from ._ephemeralrun import EphemeralSettings, run_ephemeral
from ._instance import imds_endpoint
from ._runner import GITHUB_API_URL

DEFAULT_LOG_GROUP = "/farmhand/ephemeral"
DEFAULT_TIMEOUT_MINUTES = 360.0
#: runs-fleet's parameter, when its instance id is given and no parameter is.
RUNS_FLEET_PARAMETER = "/runs-fleet/runners/{instance-id}/config"


def default_cache_dir(environ: dict[str, str]) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "farmhand" / "bundles"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-parameter",
        help="the SSM parameter holding the job configuration (or RUNS_FLEET_SSM_PARAMETER, "
        "or JOB_CONFIG_PARAMETER); {instance-id} in it is this instance's id",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="the bundle cache (or BUNDLE_CACHE_DIR; default ~/.cache/farmhand/bundles)",
    )
    parser.add_argument(
        "--timeout-minutes",
        type=positive_seconds,
        metavar="MINUTES",
        help="the safety timeout, from the start (or RUNS_FLEET_MAX_RUNTIME; default 360; "
        "the job configuration's timeout_minutes overrides it)",
    )
    parser.add_argument(
        "--queue-url",
        help="the SQS queue for the termination message when the job configuration "
        "names none (or RUNS_FLEET_TERMINATION_QUEUE_URL, or TERMINATION_QUEUE_URL)",
    )
    parser.add_argument(
        "--runner-bucket",
        help="runs-fleet: the S3 bucket caching the actions runner under "
        "runners/{version}/{arch}/ (or RUNS_FLEET_CONFIG_BUCKET)",
    )
    parser.add_argument(
        "--github-api-url",
        default=GITHUB_API_URL,
        help=f"runs-fleet: the GitHub API the runner release is found in (default "
        f"{GITHUB_API_URL})",
    )
    parser.add_argument(
        "--no-terminate",
        dest="terminate",
        action="store_false",
        help="leave the instance running at the end",
    )
    parser.add_argument(
        "--terminate-command",
        help="end the instance with this command (split like a shell would) rather than "
        "EC2 TerminateInstances",
    )
    parser.add_argument(
        "--instance-id",
        help="this instance's id (or RUNS_FLEET_INSTANCE_ID, or INSTANCE_ID; default: IMDS)",
    )
    parser.add_argument(
        "--imds-endpoint",
        help="the instance-metadata service (default AWS_EC2_METADATA_SERVICE_ENDPOINT, "
        "else http://169.254.169.254; off with AWS_EC2_METADATA_DISABLED=true)",
    )
    parser.add_argument(
        "--keep-work-dir", action="store_true", help="do not clean the work directory"
    )
    add_common_arguments(parser, grace=90.0, default_log_group=DEFAULT_LOG_GROUP)


def main(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    instance_id = from_env(args.instance_id, environ, "RUNS_FLEET_INSTANCE_ID") or from_env(
        None, environ, "INSTANCE_ID"
    )
    parameter = from_env(args.config_parameter, environ, "RUNS_FLEET_SSM_PARAMETER") or from_env(
        None, environ, "JOB_CONFIG_PARAMETER"
    )
    if parameter is None and environ.get("RUNS_FLEET_INSTANCE_ID"):
        parameter = RUNS_FLEET_PARAMETER
    if parameter is None:
        print(
            "error: --config-parameter required (or RUNS_FLEET_SSM_PARAMETER, "
            "JOB_CONFIG_PARAMETER, or RUNS_FLEET_INSTANCE_ID for runs-fleet's)",
            file=sys.stderr,
        )
        return Exit.CONFIGURATION
    timeout_minutes = args.timeout_minutes
    if timeout_minutes is None:
        raw = environ.get("RUNS_FLEET_MAX_RUNTIME")
        try:
            timeout_minutes = positive_seconds(raw) if raw else DEFAULT_TIMEOUT_MINUTES
        except argparse.ArgumentTypeError as exc:
            print(f"error: RUNS_FLEET_MAX_RUNTIME (minutes): {exc}", file=sys.stderr)
            return Exit.CONFIGURATION
    terminate_command = None
    if args.terminate_command:
        try:
            terminate_command = tuple(shlex.split(args.terminate_command))
        except ValueError as exc:
            print(f"error: --terminate-command: {exc}", file=sys.stderr)
            return Exit.CONFIGURATION
    log_group = args.log_group
    if log_group == DEFAULT_LOG_GROUP and environ.get("RUNS_FLEET_LOG_GROUP"):
        try:
            log_group = common_log_group(environ["RUNS_FLEET_LOG_GROUP"])
        except argparse.ArgumentTypeError as exc:
            print(f"error: RUNS_FLEET_LOG_GROUP: {exc}", file=sys.stderr)
            return Exit.CONFIGURATION
    setup_logging(args)
    cache_dir = from_env(
        str(args.cache_dir) if args.cache_dir else None, environ, "BUNDLE_CACHE_DIR"
    )
    settings = EphemeralSettings(
        config_parameter=parameter,
        cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(environ),
        work_dir=args.work_dir,
        region=args.region,
        timeout_minutes=timeout_minutes,
        grace=args.grace,
        retry_seconds=args.retry_seconds,
        log_group=log_group,
        cloudwatch=args.cloudwatch,
        queue_url=(
            from_env(args.queue_url, environ, "RUNS_FLEET_TERMINATION_QUEUE_URL")
            or from_env(None, environ, "TERMINATION_QUEUE_URL")
        ),
        terminate=args.terminate,
        terminate_command=terminate_command or None,
        instance_id=instance_id,
        imds_endpoint=imds_endpoint(args.imds_endpoint, environ),
        keep_work_dir=args.keep_work_dir,
        runner_bucket=from_env(args.runner_bucket, environ, "RUNS_FLEET_CONFIG_BUCKET"),
        github_api_url=args.github_api_url,
        environ=environ,
    )
    return trio.run(run_ephemeral, settings)
