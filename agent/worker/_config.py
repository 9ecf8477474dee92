"""Worker configuration from the command line, ``DEADLINE_WORKER_*`` variables and ``worker.toml``.

Farmhand reads the official deadline-worker-agent's configuration, so an
existing install can switch without edits. Every setting is taken whole from the
first of these sources that sets it:

1. command-line flags (``configure_parser`` adds them; they default to "not given");
2. environment variables (``DEADLINE_WORKER_*``; an empty value counts as unset);
3. the config file: ``--config FILE``, else ``DEADLINE_WORKER_CONFIG_FILE``, else
   ``/etc/amazon/deadline/worker.toml``. A missing default file is fine; a
   missing file that was named explicitly is an error;
4. the defaults on ``WorkerConfig``.

Capabilities are one setting: ``DEADLINE_WORKER_CAPABILITIES`` (JSON, the
official ``{"amounts": {...}, "attributes": {...}}`` form) replaces the file's
``[capabilities.amounts]`` and ``[capabilities.attributes]`` tables, not merged
key by key. Configured capabilities override the detected ones per name
(``agent.worker._hostinfo``).

Every value given is checked, also one that a higher source overrides. Every
problem is a one-line ``ConfigError`` that names its source: the flag, the
variable, or the file and ``[section] key``. Booleans accept what the official
agent accepts (pydantic v1): ``true/false``, ``t/f``, ``yes/no``, ``y/n``,
``on/off``, ``1/0``, in any case.

Where farmhand differs from the official agent, on purpose:

- An unknown key or section in ``worker.toml`` is logged as a warning that names
  it (with the closest known key); the official agent ignores it silently. The
  removed ``[os] impersonation`` key is an error, as there.
- ``DEADLINE_WORKER_SESSION_ROOT_DIR`` works (the official agent maps it to a
  field that does not exist, so it is ignored there).
- The official example file documents ``cleanup_session_user_processes``,
  ``host_metrics_logging`` and ``host_metrics_logging_interval_seconds`` under
  ``[os]``, but the official agent reads them only from ``[worker]`` and
  ``[logging]``. Farmhand reads both places; the official one wins.
- Sections may be left out (the official agent requires ``[worker]``, ``[aws]``,
  ``[logging]``, ``[os]`` and ``[capabilities]`` to be present).
- ``session_runtime`` is checked and then ignored with a note: farmhand runs
  every session on its own runner. ``[telemetry]`` is accepted and ignored:
  farmhand sends no telemetry. ``windows_job_user`` is checked, then ignored
  with a note on POSIX and refused on Windows, which farmhand does not support.

Notes that should reach the log (unknown keys, ignored settings) are returned in
``WorkerConfig.warnings``; the caller logs them once logging is configured,
which itself depends on the configuration.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import attrs
from openjd.model import validate_amount_capability_name, validate_attribute_capability_name
from openjd.model.v2023_09 import STANDARD_AMOUNT_CAPABILITIES, STANDARD_ATTRIBUTE_CAPABILITIES

from .._errors import ConfigurationError
from .._settings import (
    Invalid,
    at_least,
    matching,
    one_of,
    parse_address,
    parse_bool,
    parse_float,
    parse_int,
    parse_path,
    parse_patterns,
    parse_port,
    parse_size,
    parse_url,
    suggest,
)
from ._hostinfo import Capabilities
from ._pause import PAUSE_POLICIES, PausePolicy
from ._throttle import ThrottleRule, parse_failure_throttle
from ._workhours import WorkHours, parse_work_hours

__all__ = [
    "CONFIG_FILE_ENV",
    "DEFAULT_CONFIG_FILE",
    "ConfigError",
    "WorkerConfig",
    "configure_parser",
    "load_config",
]

#: The official agent's config file on Linux and macOS.
DEFAULT_CONFIG_FILE = Path("/etc/amazon/deadline/worker.toml")
#: Names a config file to read instead of the default one (farmhand's addition).
CONFIG_FILE_ENV = "DEADLINE_WORKER_CONFIG_FILE"

_DEFAULT_SESSION_ROOT = (
    Path("/var/lib/deadline/sessions") if sys.platform == "darwin" else Path("/sessions")
)
#: The official agent's grace for a drain on SIGTERM/SIGINT (its ``_drain_scheduler``).
DEFAULT_DRAIN_GRACE_SECONDS = 4.0
#: The EC2 instance metadata service; configurable so tests can point it at loopback.
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"

SessionRuntime = Literal["python", "rust", "service-selected"]
LogFormat = Literal["json", "console"]
_SESSION_RUNTIMES: tuple[SessionRuntime, ...] = ("python", "rust", "service-selected")
_LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")


class ConfigError(ConfigurationError):
    """A setting cannot be used; the message is one line naming its source (flag, variable,
    or file and key). A ``ConfigurationError``, so one handler catches every setup problem."""


# --- capabilities -----------------------------------------------------------------

_STANDARD_AMOUNTS = tuple(STANDARD_AMOUNT_CAPABILITIES)
_STANDARD_ATTRIBUTES = tuple(STANDARD_ATTRIBUTE_CAPABILITIES)
#: The Deadline API takes at most 17 amounts and 17 attributes in UpdateWorker.
_API_MAX_CAPABILITIES = 17
#: ``AttributeCapabilityValue`` in the Deadline service model; 1 to 10 per attribute.
_ATTRIBUTE_VALUE_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_\-]{0,99}")
_ATTRIBUTE_VALUES_MAX = 10


def _parse_capabilities(
    amounts: object,
    attributes: object,
    *,
    where_amounts: str,
    where_attributes: str,
) -> Capabilities:
    """Validate configured capabilities (names as openjd-model checks them, values as the
    Deadline API takes them); raise ``ConfigError`` naming ``where_*``."""
    if not isinstance(amounts, Mapping):
        raise ConfigError(f"{where_amounts}: expected a table of name = number")
    if not isinstance(attributes, Mapping):
        raise ConfigError(f"{where_attributes}: expected a table of name = [labels]")
    parsed_amounts: dict[str, float] = {}
    for name, value in amounts.items():
        where = f"{where_amounts} {name!r}"
        _check_capability_name(name, validate_amount_capability_name, _STANDARD_AMOUNTS, where)
        try:
            number = parse_float(value)
        except Invalid as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if number < 0:
            raise ConfigError(f"{where}: must not be negative, got {value!r}")
        parsed_amounts[name] = number
    parsed_attributes: dict[str, tuple[str, ...]] = {}
    for name, values in attributes.items():
        where = f"{where_attributes} {name!r}"
        _check_capability_name(
            name, validate_attribute_capability_name, _STANDARD_ATTRIBUTES, where
        )
        parsed_attributes[name] = _attribute_values(values, where)
    _check_capability_count(parsed_amounts, _STANDARD_AMOUNTS, where_amounts, "amount")
    _check_capability_count(parsed_attributes, _STANDARD_ATTRIBUTES, where_attributes, "attr")
    return Capabilities(parsed_amounts, parsed_attributes)


def _check_capability_name(
    name: object,
    validate: Callable[..., None],
    standard: tuple[str, ...],
    where: str,
) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: capability names must be non-empty strings")
    if len(name) > 100:
        raise ConfigError(f"{where}: capability names are at most 100 characters")
    try:
        validate(capability_name=name, standard_capabilities=list(standard))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _attribute_values(values: object, where: str) -> tuple[str, ...]:
    if not isinstance(values, list | tuple):
        raise ConfigError(f"{where}: expected a list of labels, got {values!r}")
    if not 1 <= len(values) <= _ATTRIBUTE_VALUES_MAX:
        raise ConfigError(f"{where}: expected 1 to {_ATTRIBUTE_VALUES_MAX} labels")
    for value in values:
        if not isinstance(value, str) or not _ATTRIBUTE_VALUE_RE.fullmatch(value):
            raise ConfigError(
                f"{where}: label {value!r} must be a letter or '_' followed by letters, "
                "digits, '_' or '-' (at most 100 characters)"
            )
    return tuple(values)


def _check_capability_count(
    found: Mapping[str, object], standard: tuple[str, ...], where: str, kind: str
) -> None:
    custom = [name for name in found if name.lower() not in standard]
    limit = _API_MAX_CAPABILITIES - len(standard)
    if len(custom) > limit:
        raise ConfigError(
            f"{where}: at most {limit} custom {kind} capabilities, got {len(custom)} "
            f"(UpdateWorker takes {_API_MAX_CAPABILITIES} including the {len(standard)} standard ones)"
        )


# --- the configuration ----------------------------------------------------------------


@attrs.frozen
class WorkerConfig:
    """The worker's effective configuration (see the module docstring for its sources)."""

    farm_id: str
    fleet_id: str
    # [worker]
    cleanup_session_user_processes: bool = True
    worker_persistence_dir: Path = Path("/var/lib/deadline")
    session_root_dir: Path = _DEFAULT_SESSION_ROOT
    #: Accepted for compatibility and ignored: farmhand runs sessions on its own runner.
    session_runtime: SessionRuntime = "service-selected"
    # [aws]
    #: AWS profile for the bootstrap credentials (CreateWorker, AssumeFleetRoleForWorker).
    profile: str | None = None
    #: False: wait for the EC2 instance profile to be detached before working.
    allow_instance_profile: bool = True
    #: Used only when botocore resolves no region itself.
    region: str | None = None
    # [logging]
    verbose: bool = False
    worker_logs_dir: Path = Path("/var/log/amazon/deadline")
    local_session_logs: bool = True
    host_metrics_logging: bool = True
    host_metrics_logging_interval_seconds: float = 60.0
    structured_logs: bool = False
    # [os]
    #: Do not shut the host down when the farm stops the worker (``[os] shutdown_on_stop`` inverted).
    no_shutdown: bool = False
    run_jobs_as_agent_user: bool = False
    #: ``user:group`` for every job instead of the queue's ``jobRunAsUser``.
    posix_job_user: str | None = None
    windows_job_user: str | None = None
    windows_job_user_password_arn: str | None = None
    retain_session_dir: bool = False
    # [capabilities]
    capabilities: Capabilities = attrs.field(factory=Capabilities)
    # farmhand's own settings
    #: Deadline endpoint override; without it the AWS client layer resolves the endpoint
    #: (``AWS_ENDPOINT_URL_DEADLINE``, ``AWS_ENDPOINT_URL``, then the region's).
    endpoint_url: str | None = None
    #: S3 endpoint for job attachments; without it botocore resolves it
    #: (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, then the region's).
    s3_endpoint_url: str | None = None
    #: Job-attachment transfers at once per session.
    attachment_concurrency: int = 16
    #: Do not prefix worker API hosts with ``scheduling.`` (needed for a fake on loopback).
    disable_host_prefix: bool = False
    #: How long a worker-initiated drain (first SIGTERM/SIGINT) lets sessions wind down.
    drain_grace_seconds: float = DEFAULT_DRAIN_GRACE_SECONDS
    #: Watch IMDS for spot interruption and ASG termination notices.
    imds_monitor: bool = False
    imds_endpoint: str = DEFAULT_IMDS_ENDPOINT
    #: How often the IMDS monitor asks (one request each time, the two notices in turn).
    imds_interval_seconds: float = 1.0
    #: The shortest time between two UpdateWorkerSchedule calls made only to report
    #: successes while their session has more work (failures, and a session out of
    #: work, are reported at once).
    report_interval_seconds: float = 0.02
    #: Stop the worker after this many sessions have ended; ``None``: never.
    exit_after_jobs: int | None = None
    #: Stop the worker after this many seconds without work; ``None``: never.
    idle_timeout: float | None = None
    #: Drain and exit after this many seconds without a successful UpdateWorkerSchedule;
    #: 0: never. Running work goes on meanwhile, its reports and logs wait.
    farm_outage_limit: float = 600.0
    #: How long a session's launcher keeps its processes when the agent dies (not when
    #: it stops on purpose), waiting for an agent with the same worker id to take the
    #: session over; 0: they die with the agent. A little under the service's 600 s.
    restart_grace_seconds: float = 540.0
    #: Serve the health endpoint on this port (0: any free port); ``None``: no endpoint.
    health_port: int | None = None
    health_address: str = "127.0.0.1"
    log_format: LogFormat = "console"
    #: Rotated agent log files kept (0: none, the log is truncated when it rotates).
    log_rotate_count: int = 5
    #: Size at which the agent log rotates (0: never).
    log_max_bytes: int = 10 * 1024 * 1024
    #: Regular expressions whose matches are masked in the logs, as secrets are.
    secret_patterns: tuple[str, ...] = ()
    #: Secret values shorter than this are not masked (one letter would mask every copy of it).
    min_secret_length: int = 1
    #: Bytes a session's processes may use together (``None``: no limit); see the README.
    session_memory_limit: int | None = None
    #: Below this much available host memory, the largest session is stopped (``None``: never).
    host_memory_reserve: int | None = None
    #: Characters of output one action may print (``None``: no cap), and what then.
    action_output_limit: int | None = None
    action_output_limit_mode: Literal["truncate", "fail"] = "truncate"
    #: Pause after N failed task runs in a row, from 2 or more jobs, within SECONDS
    #: (``None``: never; ``agent.worker._throttle``).
    failure_throttle: ThrottleRule | None = None
    #: How long the failure throttle keeps the worker paused, from when it is paused.
    failure_cooldown_seconds: float = 600.0
    #: When the worker may take work, in local time (``None``: always; ``_workhours``).
    work_hours: WorkHours | None = None
    #: Take work only while systemd-logind says the host's users are idle (``_idle``).
    only_when_user_idle: bool = False
    #: A running task when a user returns or the work hours end: ``cancel`` (reported
    #: INTERRUPTED, so the farm runs it elsewhere) or ``finish``.
    when_user_returns: PausePolicy = "cancel"
    #: Where each setting that was not defaulted came from (flag, variable or file key).
    origins: Mapping[str, str] = attrs.field(factory=dict, eq=False, repr=False)
    #: The config file that was read, if any.
    config_file: Path | None = None
    #: Notes for the log: unknown keys, settings that are accepted but ignored.
    warnings: tuple[str, ...] = ()

    @property
    def shutdown_on_stop(self) -> bool:
        return not self.no_shutdown

    @property
    def worker_state_file(self) -> Path:
        return self.worker_persistence_dir / "worker.json"

    @property
    def worker_credentials_dir(self) -> Path:
        return self.worker_persistence_dir / "credentials"

    @property
    def posix_job_user_and_group(self) -> tuple[str, str] | None:
        if self.posix_job_user is None:
            return None
        user, _, group = self.posix_job_user.partition(":")
        return user, group


# --- the settings table ---------------------------------------------------------------------


@attrs.frozen
class _Setting:
    """One ``WorkerConfig`` field and where it may be set."""

    name: str
    parse: Callable[[object], object]
    #: The long flag (``None``: not settable on the command line); its ``dest`` is ``name``.
    flag: str | None
    env: str | None
    toml: tuple[str, str] | None
    help: str = ""
    #: For a flag that takes no value: what giving it sets.
    const: bool | None = None
    metavar: str | None = None
    short: str | None = None
    #: Repeatable flag; the values are collected into a list.
    append: bool = False
    #: Other places in the file that set it (the official example file's ``[os]`` keys).
    toml_aliases: tuple[tuple[str, str], ...] = ()
    #: The file's key says the opposite (``[os] shutdown_on_stop`` vs ``no_shutdown``).
    toml_inverted: bool = False


_E = "DEADLINE_WORKER_"

# One entry per line group: field, parser, flag, variable, file key, then the flag's details.
# fmt: off
_SETTINGS: tuple[_Setting, ...] = (
    _Setting("farm_id", matching(r"farm-[a-z0-9]{32}", "farm-<32 lower-case letters or digits>"),
             "--farm-id", _E + "FARM_ID", ("worker", "farm_id"),
             "the Deadline farm the worker belongs to"),
    _Setting("fleet_id", matching(r"fleet-[a-z0-9]{32}", "fleet-<32 lower-case letters or digits>"),
             "--fleet-id", _E + "FLEET_ID", ("worker", "fleet_id"),
             "the Deadline fleet the worker belongs to"),
    _Setting("cleanup_session_user_processes", parse_bool,
             "--no-cleanup-session-user-processes", _E + "CLEANUP_SESSION_USER_PROCESSES",
             ("worker", "cleanup_session_user_processes"),
             "leave a job user's processes running when no session uses the user any more",
             const=False, toml_aliases=(("os", "cleanup_session_user_processes"),)),
    _Setting("worker_persistence_dir", parse_path,
             "--persistence-dir", _E + "PERSISTENCE_DIR", ("worker", "worker_persistence_dir"),
             "where the worker keeps worker.json and its credentials (default /var/lib/deadline)",
             metavar="DIR"),
    _Setting("session_root_dir", parse_path,
             "--session-root-dir", _E + "SESSION_ROOT_DIR", ("worker", "session_root_dir"),
             f"where session directories are created (default {_DEFAULT_SESSION_ROOT})",
             metavar="DIR"),
    _Setting("session_runtime", one_of(_SESSION_RUNTIMES),
             "--session-runtime", None, ("worker", "session_runtime"),
             "accepted for compatibility with the official agent, and ignored",
             metavar="{python,rust,service-selected}"),
    _Setting("profile", matching(r".{1,64}", "an AWS profile name of 1 to 64 characters"),
             "--profile", _E + "PROFILE", ("aws", "profile"),
             "AWS profile for the bootstrap credentials"),
    _Setting("allow_instance_profile", parse_bool,
             "--disallow-instance-profile", _E + "ALLOW_INSTANCE_PROFILE",
             ("aws", "allow_ec2_instance_profile"),
             "wait until the EC2 instance profile is detached before working", const=False),
    _Setting("region", matching(r"[a-z0-9-]{1,64}", "an AWS region name such as us-west-2"),
             None, None, ("aws", "region")),
    _Setting("verbose", parse_bool,
             "--verbose", _E + "VERBOSE", ("logging", "verbose"),
             "log at debug level", const=True, short="-v"),
    _Setting("worker_logs_dir", parse_path,
             "--logs-dir", _E + "LOGS_DIR", ("logging", "worker_logs_dir"),
             "where the agent writes its logs (default /var/log/amazon/deadline)", metavar="DIR"),
    _Setting("local_session_logs", parse_bool,
             "--no-local-session-logs", _E + "LOCAL_SESSION_LOGS", ("logging", "local_session_logs"),
             "do not write session logs to the logs directory", const=False),
    _Setting("host_metrics_logging", parse_bool,
             "--no-host-metrics-logging", _E + "HOST_METRICS_LOGGING",
             ("logging", "host_metrics_logging"),
             "do not log host metrics periodically",
             const=False, toml_aliases=(("os", "host_metrics_logging"),)),
    _Setting("host_metrics_logging_interval_seconds", at_least(parse_float, 0, strictly=True),
             "--host-metrics-logging-interval-seconds", _E + "HOST_METRICS_LOGGING_INTERVAL_SECONDS",
             ("logging", "host_metrics_logging_interval_seconds"),
             "seconds between host metrics log lines (default 60)",
             metavar="SECONDS", toml_aliases=(("os", "host_metrics_logging_interval_seconds"),)),
    _Setting("structured_logs", parse_bool,
             "--structured-logs", _E + "STRUCTURED_LOGS", ("logging", "structured_logs"),
             "write the agent's log as JSON lines (the default --log-format becomes json)",
             const=True),
    _Setting("no_shutdown", parse_bool,
             "--no-shutdown", _E + "NO_SHUTDOWN", ("os", "shutdown_on_stop"),
             "do not shut the host down when the farm stops the worker",
             const=True, toml_inverted=True),
    _Setting("run_jobs_as_agent_user", parse_bool,
             "--run-jobs-as-agent-user", _E + "RUN_JOBS_AS_AGENT_USER",
             ("os", "run_jobs_as_agent_user"),
             "run every job as the agent's own user (insecure; for development)", const=True),
    _Setting("posix_job_user",
             matching(r"[a-zA-Z0-9_.][^:]{0,31}:[a-zA-Z0-9_.][^:]{0,31}", "user:group"),
             "--posix-job-user", _E + "POSIX_JOB_USER", ("os", "posix_job_user"),
             "run every job as this user instead of the queue's jobRunAsUser",
             metavar="USER:GROUP"),
    _Setting("windows_job_user", matching(r".{1,512}", "a Windows user name"),
             "--windows-job-user", _E + "WINDOWS_JOB_USER", ("os", "windows_job_user"),
             "(Windows only; not supported by farmhand)"),
    _Setting("windows_job_user_password_arn",
             matching(r"arn:aws:secretsmanager:[a-z0-9\-]+:\d{12}:secret[:/][a-zA-Z0-9/_+=.@:-]+",
                       "a Secrets Manager secret ARN"),
             "--windows-job-user-password-arn", _E + "WINDOWS_JOB_USER_PASSWORD_ARN",
             ("os", "windows_job_user_password_arn"),
             "(Windows only; not supported by farmhand)", metavar="ARN"),
    _Setting("retain_session_dir", parse_bool,
             "--retain-session-dir", _E + "RETAIN_SESSION_DIR", ("os", "retain_session_dir"),
             "keep session directories after their sessions end", const=True),
    # farmhand's own
    _Setting("endpoint_url", parse_url,
             "--endpoint-url", _E + "ENDPOINT_URL", ("aws", "endpoint_url"),
             "Deadline endpoint (default: $AWS_ENDPOINT_URL_DEADLINE, else the region's)",
             metavar="URL"),
    _Setting("s3_endpoint_url", parse_url,
             "--s3-endpoint-url", _E + "S3_ENDPOINT_URL", ("aws", "s3_endpoint_url"),
             "S3 endpoint for job attachments (default: $AWS_ENDPOINT_URL_S3, else the region's)",
             metavar="URL"),
    _Setting("attachment_concurrency", at_least(parse_int, 1),
             "--attachment-concurrency", _E + "ATTACHMENT_CONCURRENCY",
             ("worker", "attachment_concurrency"),
             "job-attachment transfers at once per session (default 16)", metavar="N"),
    _Setting("disable_host_prefix", parse_bool,
             "--disable-host-prefix", _E + "DISABLE_HOST_PREFIX", ("aws", "disable_host_prefix"),
             "do not prefix worker API hosts with 'scheduling.' (for a local fake farm)",
             const=True),
    _Setting("imds_monitor", parse_bool,
             "--imds-monitor", _E + "IMDS_MONITOR", ("aws", "imds_monitor"),
             "watch EC2 instance metadata for spot interruption and scale-in notices", const=True),
    _Setting("imds_endpoint", parse_url,
             "--imds-endpoint", _E + "IMDS_ENDPOINT", ("aws", "imds_endpoint"),
             f"instance metadata endpoint (default {DEFAULT_IMDS_ENDPOINT})", metavar="URL"),
    _Setting("imds_interval_seconds", at_least(parse_float, 0, strictly=True),
             "--imds-interval", _E + "IMDS_INTERVAL", ("aws", "imds_interval_seconds"),
             "seconds between the IMDS monitor's requests (default 1)", metavar="SECONDS"),
    _Setting("drain_grace_seconds", at_least(parse_float, 0),
             "--drain-grace-seconds", _E + "DRAIN_GRACE_SECONDS", ("worker", "drain_grace_seconds"),
             "how long a drain on the first SIGTERM/SIGINT waits for sessions "
             f"(default {DEFAULT_DRAIN_GRACE_SECONDS:g})", metavar="SECONDS"),
    _Setting("report_interval_seconds", at_least(parse_float, 0),
             "--report-interval-seconds", _E + "REPORT_INTERVAL_SECONDS",
             ("worker", "report_interval_seconds"),
             "at most one call per this many seconds to report successes while a session "
             "has more to run (default 0.02; failures go at once)", metavar="SECONDS"),
    _Setting("exit_after_jobs", at_least(parse_int, 1),
             "--exit-after-jobs", _E + "EXIT_AFTER_JOBS", ("worker", "exit_after_jobs"),
             "stop the worker after N sessions have ended", metavar="N"),
    _Setting("idle_timeout", at_least(parse_float, 0, strictly=True),
             "--idle-timeout", _E + "IDLE_TIMEOUT", ("worker", "idle_timeout"),
             "stop the worker after this many seconds without work", metavar="SECONDS"),
    _Setting("farm_outage_limit", at_least(parse_float, 0),
             "--farm-outage-limit", _E + "FARM_OUTAGE_LIMIT", ("worker", "farm_outage_limit"),
             "drain and exit 1 after this many seconds without reaching the farm (default "
             "600, the service's offline threshold; 0: never); work goes on meanwhile",
             metavar="SECONDS"),
    _Setting("restart_grace_seconds", at_least(parse_float, 0),
             "--restart-grace-seconds", _E + "RESTART_GRACE_SECONDS",
             ("worker", "restart_grace_seconds"),
             "when the agent dies (a crash, kill -9; not a stop), how long running sessions "
             "wait for the agent to come back and take them over (default 540, under the "
             "service's 600 s offline threshold; 0: they die with the agent)",
             metavar="SECONDS"),
    _Setting("health_port", parse_port,
             "--health-port", _E + "HEALTH_PORT", ("worker", "health_port"),
             "serve the health endpoint on this port (off unless set; 0: any free port)",
             metavar="PORT"),
    _Setting("health_address", parse_address,
             "--health-address", _E + "HEALTH_ADDRESS", ("worker", "health_address"),
             "address of the health endpoint (default 127.0.0.1)", metavar="ADDRESS"),
    _Setting("log_format", one_of(_LOG_FORMATS),
             "--log-format", _E + "LOG_FORMAT", ("logging", "log_format"),
             "format of the agent's log (default: json with --structured-logs, else console)",
             metavar="{json,console}"),
    _Setting("log_rotate_count", at_least(parse_int, 0),
             "--log-rotate-count", _E + "LOG_ROTATE_COUNT", ("logging", "log_rotate_count"),
             "rotated agent log files to keep (default 5)", metavar="N"),
    _Setting("log_max_bytes", at_least(parse_int, 0),
             "--log-max-bytes", _E + "LOG_MAX_BYTES", ("logging", "log_max_bytes"),
             "size at which the agent log rotates (default 10485760; 0: never)", metavar="BYTES"),
    _Setting("secret_patterns", parse_patterns,
             "--secret-pattern", _E + "SECRET_PATTERNS", ("logging", "secret_patterns"),
             "mask matches of this regular expression in the logs (repeatable)",
             metavar="REGEX", append=True),
    _Setting("session_memory_limit", parse_size,
             "--session-memory-limit", _E + "SESSION_MEMORY_LIMIT", ("worker", "session_memory_limit"),
             "kill an action whose session's processes use more memory than this together, "
             "and fail it saying so (4GiB, 512M; a step's amount.worker.memory may set less)",
             metavar="SIZE"),
    _Setting("host_memory_reserve", parse_size,
             "--host-memory-reserve", _E + "HOST_MEMORY_RESERVE", ("worker", "host_memory_reserve"),
             "when the host has less memory available than this, fail the running action of "
             "the session that holds the most, before the kernel's OOM killer picks (2GiB)",
             metavar="SIZE"),
    _Setting("action_output_limit", parse_size,
             "--action-output-limit", _E + "ACTION_OUTPUT_LIMIT", ("worker", "action_output_limit"),
             "keep at most this much of one action's output (10M, 1GiB); see "
             "--action-output-limit-mode", metavar="SIZE"),
    _Setting("action_output_limit_mode", one_of(("truncate", "fail")),
             "--action-output-limit-mode", _E + "ACTION_OUTPUT_LIMIT_MODE",
             ("worker", "action_output_limit_mode"),
             "past the output limit: truncate (drop the rest, with a note; the default) "
             "or fail the action"),
    _Setting("failure_throttle", parse_failure_throttle,
             "--failure-throttle", _E + "FAILURE_THROTTLE", ("worker", "failure_throttle"),
             "pause after N failed task runs in a row, from 2 or more jobs, within SECONDS "
             "(e.g. 5/300; off unless set)", metavar="N/SECONDS"),
    _Setting("failure_cooldown_seconds", at_least(parse_float, 0, strictly=True),
             "--failure-cooldown", _E + "FAILURE_COOLDOWN", ("worker", "failure_cooldown_seconds"),
             "how long the failure throttle keeps the worker paused, from when its last "
             "session has ended (default 600)", metavar="SECONDS"),
    _Setting("work_hours", parse_work_hours,
             "--work-hours", _E + "WORK_HOURS", ("worker", "work_hours"),
             "take work only in these hours, local time, e.g. 'Mon-Fri 19:00-07:00, Sat-Sun' "
             "(paused outside them)", metavar="HOURS"),
    _Setting("only_when_user_idle", parse_bool,
             "--only-when-user-idle", _E + "ONLY_WHEN_USER_IDLE", ("worker", "only_when_user_idle"),
             "take work only while systemd-logind says the host's users are idle", const=True),
    _Setting("when_user_returns", one_of(PAUSE_POLICIES),
             "--when-user-returns", _E + "WHEN_USER_RETURNS", ("worker", "when_user_returns"),
             "the running task when a user returns or the work hours end: cancel (reported "
             "INTERRUPTED, run elsewhere; the default) or finish", metavar="{cancel,finish}"),
    _Setting("min_secret_length", at_least(parse_int, 1),
             "--min-secret-length", _E + "MIN_SECRET_LENGTH", ("logging", "min_secret_length"),
             "do not mask secret values shorter than this (default 1)", metavar="N"),
)
# fmt: on

_CAPABILITIES_ENV = _E + "CAPABILITIES"
_TOML_SECTIONS = ("worker", "aws", "logging", "os", "capabilities", "telemetry")
#: Keys of the official agent that farmhand accepts and does not use.
_TOML_IGNORED = {("telemetry", "opt_out"), ("telemetry", "identifier")}


def _toml_keys() -> dict[tuple[str, str], tuple[_Setting, bool]]:
    """(section, key) -> (setting, is an alias)."""
    keys: dict[tuple[str, str], tuple[_Setting, bool]] = {}
    for setting in _SETTINGS:
        if setting.toml is not None:
            keys[setting.toml] = (setting, False)
        for alias in setting.toml_aliases:
            keys[alias] = (setting, True)
    return keys


_TOML_KEYS = _toml_keys()


# --- the command line --------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the worker's flags (the official agent's names, then farmhand's) to ``parser``.

    Every flag defaults to ``None``, "not given", so the environment and the file apply."""
    parser.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        default=None,
        help=f"read this worker.toml (default: ${CONFIG_FILE_ENV}, else {DEFAULT_CONFIG_FILE})",
    )
    for setting in _SETTINGS:
        if setting.flag is None:
            continue
        names = (setting.short, setting.flag) if setting.short else (setting.flag,)
        if setting.const is not None:
            parser.add_argument(
                *names,
                dest=setting.name,
                action="store_const",
                const=setting.const,
                default=None,
                help=setting.help,
            )
        else:
            parser.add_argument(
                *names,
                dest=setting.name,
                action="append" if setting.append else "store",
                metavar=setting.metavar,
                default=None,
                help=setting.help,
            )


# --- loading ---------------------------------------------------------------------------------


def load_config(
    args: argparse.Namespace | None,
    *,
    environ: Mapping[str, str],
    config_file: Path | None = DEFAULT_CONFIG_FILE,
) -> WorkerConfig:
    """Build the configuration from ``args`` (``configure_parser``'s flags), ``environ`` and a
    ``worker.toml``: the one ``--config`` or ``DEADLINE_WORKER_CONFIG_FILE`` names (it must
    exist), else ``config_file`` (skipped when missing; ``None`` reads no file).

    Raises ``ConfigError`` (one line, naming the source) for anything unusable."""
    warnings: list[str] = []
    cli: dict[str, object] = {}
    if args is not None:
        for setting in _SETTINGS:
            value = getattr(args, setting.name, None)
            if value is not None:
                cli[setting.name] = value
    env = {name: value for name, value in environ.items() if value != ""}

    path, named_by = _choose_file(args, env, config_file)
    file_values: dict[str, tuple[object, str]] = {}
    file_capabilities: Capabilities | None = None
    if path is not None:
        document = _read_toml(path, named_by)
        if document is not None:
            file_values, file_capabilities = _from_document(document, path, warnings)
        else:
            path = None

    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    for setting in _SETTINGS:
        # Highest first. Every value given is checked, also one a higher source overrides,
        # so a bad line in the file fails now rather than on the day the override goes.
        given: list[tuple[object, str, bool]] = []
        if setting.name in cli:
            given.append((cli[setting.name], setting.flag or setting.name, False))
        if setting.env is not None and setting.env in env:
            given.append((env[setting.env], setting.env, False))
        if setting.name in file_values:
            given.append((*file_values[setting.name], setting.toml_inverted))
        for raw, where, inverted in reversed(given):
            try:
                value = setting.parse(raw)
            except Invalid as exc:
                raise ConfigError(f"{where}: {exc}") from None
            values[setting.name] = (not value) if inverted else value
            origins[setting.name] = where

    if _CAPABILITIES_ENV in env:
        values["capabilities"] = _capabilities_from_env(env[_CAPABILITIES_ENV])
        origins["capabilities"] = _CAPABILITIES_ENV
    elif file_capabilities is not None:
        values["capabilities"] = file_capabilities
        origins["capabilities"] = f"{path}: [capabilities]"

    for name, (flag, env_name, key) in {
        "farm_id": ("--farm-id", "DEADLINE_WORKER_FARM_ID", "[worker] farm_id"),
        "fleet_id": ("--fleet-id", "DEADLINE_WORKER_FLEET_ID", "[worker] fleet_id"),
    }.items():
        if name not in values:
            in_file = f"{key} in {path}" if path is not None else f"{key} in worker.toml"
            raise ConfigError(f"{name} is not set: pass {flag}, set {env_name}, or set {in_file}")

    if "log_format" not in values:
        values["log_format"] = "json" if values.get("structured_logs") else "console"
    _check_combinations(values, origins, warnings)
    return WorkerConfig(
        **values,  # type: ignore[arg-type]  # each value was parsed for its field above
        origins=MappingProxyType(origins),
        config_file=path,
        warnings=tuple(warnings),
    )


def _choose_file(
    args: argparse.Namespace | None, env: Mapping[str, str], default: Path | None
) -> tuple[Path | None, str | None]:
    """The file to read and what named it (``None``: the default, which may be missing)."""
    named = getattr(args, "config_file", None) if args is not None else None
    if named is not None:
        return Path(named), "--config"
    if CONFIG_FILE_ENV in env:
        return Path(env[CONFIG_FILE_ENV]), CONFIG_FILE_ENV
    return default, None


def _read_toml(path: Path, named_by: str | None) -> dict[str, Any] | None:
    # Imported here: ``python -m agent run``'s worker reads no config file.
    import tomllib

    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        if named_by is None:
            return None
        raise ConfigError(f"{named_by}: config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8") from None


def _from_document(
    document: Mapping[str, Any], path: Path, warnings: list[str]
) -> tuple[dict[str, tuple[object, str]], Capabilities | None]:
    """Raw values by setting name, each with where it was found, and the capabilities."""
    found: dict[str, tuple[object, str]] = {}
    capabilities: Capabilities | None = None
    for section, table in document.items():
        if section not in _TOML_SECTIONS:
            warnings.append(
                f"{path}: unknown section [{section}] ignored{suggest(section, _TOML_SECTIONS)}"
            )
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table, got {table!r}")
        if section == "capabilities":
            capabilities = _capabilities_from_file(table, path, warnings)
            continue
        for key, value in table.items():
            where = f"{path}: [{section}] {key}"
            if (section, key) == ("os", "impersonation"):
                raise ConfigError(
                    f"{where}: this option has been removed; use run_jobs_as_agent_user instead"
                )
            if (section, key) in _TOML_IGNORED:
                continue
            entry = _TOML_KEYS.get((section, key))
            if entry is None:
                known = [k for s, k in _TOML_KEYS if s == section]
                warnings.append(f"{where}: unknown key ignored{suggest(key, known)}")
                continue
            setting, is_alias = entry
            if setting.name in found:
                # Only an official key and its [os] alias can meet here; the official one wins.
                official = found[setting.name][1] if is_alias else where
                ignored = where if is_alias else found[setting.name][1]
                warnings.append(f"{ignored}: ignored, {official} is set too")
                if is_alias:
                    continue
            found[setting.name] = (value, where)
    return found, capabilities


def _capabilities_from_file(
    table: Mapping[str, Any], path: Path, warnings: list[str]
) -> Capabilities:
    for key in table:
        if key not in ("amounts", "attributes"):
            warnings.append(
                f"{path}: [capabilities] {key}: unknown key ignored (capabilities go in "
                "[capabilities.amounts] and [capabilities.attributes])"
            )
    return _parse_capabilities(
        table.get("amounts", {}),
        table.get("attributes", {}),
        where_amounts=f"{path}: [capabilities.amounts]",
        where_attributes=f"{path}: [capabilities.attributes]",
    )


def _capabilities_from_env(text: str) -> Capabilities:
    where = _CAPABILITIES_ENV
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f'{where}: expected a JSON object {{"amounts": {{}}, "attributes": {{}}}}'
        )
    unknown = sorted(set(data) - {"amounts", "attributes"})
    if unknown:
        raise ConfigError(f"{where}: unknown member {unknown[0]!r} (expected amounts, attributes)")
    return _parse_capabilities(
        data.get("amounts", {}),
        data.get("attributes", {}),
        where_amounts=f"{where}: amounts",
        where_attributes=f"{where}: attributes",
    )


def _check_combinations(
    values: Mapping[str, object], origins: Mapping[str, str], warnings: list[str]
) -> None:
    if values.get("run_jobs_as_agent_user") and values.get("posix_job_user") is not None:
        raise ConfigError(
            f"{origins['posix_job_user']}: a posix job user cannot be set when jobs run as the "
            f"agent user ({origins['run_jobs_as_agent_user']})"
        )
    for name in ("windows_job_user", "windows_job_user_password_arn"):
        if name in values:
            if sys.platform == "win32":
                raise ConfigError(f"{origins[name]}: farmhand does not support Windows job users")
            warnings.append(
                f"{origins[name]}: {name} is ignored on this platform; use posix_job_user"
            )
    if "session_runtime" in values:
        warnings.append(
            f"{origins['session_runtime']}: session_runtime={values['session_runtime']} is "
            "accepted for compatibility and ignored; farmhand runs sessions on its own runner"
        )
