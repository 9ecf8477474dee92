"""The job configuration an ephemeral runner reads from SSM Parameter Store.

One JSON object (README "Ephemeral CI runner" has the table); unknown keys are
an error, so a typo never goes unnoticed::

    {
      "job_id": "ci-4711",                                  # required
      "command": ["./run.sh", "--once"],                    # or "template" (+ "parameters")
      "env": {"RUNNER_TOKEN": "..."},
      "cwd": "actions-runner",                              # relative: to the work directory
      "bundle": {"bucket": "tools", "key": "runner-2.320.0.tar.gz",
                 "sha256": "<64 hex digits>", "directory": "actions-runner"},
      "timeout_minutes": 360, "grace_seconds": 90,
      "log_group": "/ci/runners", "log_stream": "ci-4711",
      "termination_queue_url": "https://sqs.us-west-2.amazonaws.com/123456789012/ci-done",
      "cancel_parameter": "/ci/jobs/ci-4711/cancel", "cancel_poll_seconds": 30,
      "terminate_command": ["sudo", "shutdown", "-h", "now"]
    }

Or runs-fleet's runner document, as runs-fleet's orchestrator writes it to
``/runs-fleet/runners/{instance-id}/config``: recognised by its ``jit_token``,
it means "run one GitHub Actions runner, just in time and ephemeral"::

    {"org": "acme", "repo": "acme/app", "jit_token": "<encoded JIT config>",
     "labels": ["runs-fleet=123", "runner=2cpu-linux-arm64"],
     "runner_group": "default", "job_id": "4711"}

``ConfigError`` says what is wrong, in one line naming the key (never a value
of ``jit_token`` or ``cache_token``: they are secrets).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import attrs

from agent import ConfigurationError, JobSpecError
from agent.jobs import DocumentError, JobSpec, load_document

_SHA256 = re.compile(r"[0-9a-f]{64}")
_LOG_GROUP = re.compile(r"[.\-_/#A-Za-z0-9]{1,512}")
_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,2048}")
_KEYS = frozenset(
    {
        "job_id",
        "command",
        "template",
        "parameters",
        "env",
        "cwd",
        "bundle",
        "timeout_minutes",
        "grace_seconds",
        "log_group",
        "log_stream",
        "termination_queue_url",
        "cancel_parameter",
        "cancel_poll_seconds",
        "terminate_command",
    }
)
_BUNDLE_KEYS = frozenset({"bucket", "key", "sha256", "directory"})
#: runs-fleet's runner document: its README's keys, then the others its
#: orchestrator writes there (``run_id``, ``is_org``, the cache's and the queue's).
RUNS_FLEET_KEYS = frozenset(
    {
        "org",
        "repo",
        "jit_token",
        "labels",
        "runner_group",
        "job_id",
        "run_id",
        "is_org",
        "cache_url",
        "cache_token",
        "termination_queue_url",
    }
)

#: A setting that cannot be used (one line): the agent's own error, so one handler
#: catches every setup problem.
ConfigError = ConfigurationError


@attrs.frozen
class BundleRef:
    """A tar.gz in S3, its sha256, and the directory (in the work directory) it goes to."""

    bucket: str
    key: str
    sha256: str
    directory: str = "bundle"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@attrs.frozen
class RunnerRegistration:
    """A GitHub Actions runner to register just in time (and so ephemeral: one job)."""

    org: str
    #: A secret: the runner's encoded JIT configuration. Never logged, never in a repr.
    jit_token: str = attrs.field(repr=False)
    repo: str | None = None
    labels: tuple[str, ...] = ()
    runner_group: str | None = None


@attrs.frozen
class JobConfig:
    job_id: str
    command: tuple[str, ...] | None = None
    template: Mapping[str, Any] | None = None
    parameters: Mapping[str, str] = attrs.field(factory=dict)
    env: Mapping[str, str] = attrs.field(factory=dict)
    cwd: str | None = None
    bundle: BundleRef | None = None
    timeout_minutes: float | None = None
    grace_seconds: float | None = None
    log_group: str | None = None
    log_stream: str | None = None
    termination_queue_url: str | None = None
    cancel_parameter: str | None = None
    cancel_poll_seconds: float = 30.0
    terminate_command: tuple[str, ...] | None = None
    #: runs-fleet's document: run this runner (no command or template).
    runner: RunnerRegistration | None = None

    @classmethod
    def from_json(cls, text: str, *, source: str) -> JobConfig:
        """Parse and check the configuration ``text`` (from ``source``, for messages)."""
        try:
            document = json.loads(text, parse_float=Decimal)
        except ValueError as exc:
            raise ConfigError(f"{source}: not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ConfigError(f"{source}: the job configuration must be a JSON object")
        try:
            return cls._from_document(document)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def _from_document(cls, document: Mapping[str, Any]) -> JobConfig:
        if "jit_token" in document:
            return cls._from_runs_fleet(document)
        unknown = sorted(set(document) - _KEYS)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
        job_id = document.get("job_id")
        if not isinstance(job_id, str) or not job_id.strip() or len(job_id) > 256:
            raise ConfigError("'job_id' must be a string of 1-256 characters")
        command = document.get("command")
        template = document.get("template")
        if (command is None) == (template is None):
            raise ConfigError("give exactly one of 'command' (a list of strings) or 'template'")
        if command is not None:
            command = _string_list(command, "command")
        if template is not None:
            template = _template(template)
        elif "parameters" in document:
            raise ConfigError("'parameters' are for a 'template'")
        queue = _optional_str(document, "termination_queue_url")
        if queue is not None and not queue.startswith(("https://", "http://")):
            raise ConfigError("'termination_queue_url' must be the queue's URL (https://...)")
        log_group = _optional_str(document, "log_group")
        if log_group is not None and not _LOG_GROUP.fullmatch(log_group):
            raise ConfigError("'log_group' may hold only letters, digits and . - _ / #")
        cancel = _optional_str(document, "cancel_parameter")
        if cancel is not None and not _PARAMETER_NAME.fullmatch(cancel):
            raise ConfigError("'cancel_parameter' is not an SSM parameter name")
        terminate = document.get("terminate_command")
        return cls(
            job_id=job_id,
            command=tuple(command) if command is not None else None,
            template=template,
            parameters=_parameters(document.get("parameters")),
            env=_string_map(document.get("env"), "env"),
            cwd=_optional_str(document, "cwd"),
            bundle=_bundle(document.get("bundle")),
            timeout_minutes=_number(document, "timeout_minutes", positive=True),
            grace_seconds=_number(document, "grace_seconds", positive=False),
            log_group=log_group,
            log_stream=_optional_str(document, "log_stream"),
            termination_queue_url=queue,
            cancel_parameter=cancel,
            cancel_poll_seconds=_number(document, "cancel_poll_seconds", positive=True) or 30.0,
            terminate_command=(
                tuple(_string_list(terminate, "terminate_command"))
                if terminate is not None
                else None
            ),
        )

    @classmethod
    def _from_runs_fleet(cls, document: Mapping[str, Any]) -> JobConfig:
        unknown = sorted(set(document) - RUNS_FLEET_KEYS)
        if unknown:
            raise ConfigError(
                f"runs-fleet runner config: unknown key {unknown[0]!r} "
                f"(known: {', '.join(sorted(RUNS_FLEET_KEYS))})"
            )
        token = document.get("jit_token")
        if not isinstance(token, str) or not token.strip():
            raise ConfigError("'jit_token' must be a non-empty string (the encoded JIT config)")
        org = document.get("org")
        if not isinstance(org, str) or not org:
            raise ConfigError("'org' must be a non-empty string")
        labels = document.get("labels")
        if labels is None:
            labels = []
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ConfigError("'labels' must be a list of strings")
        for name in ("cache_url", "cache_token"):
            if document.get(name) is not None and not isinstance(document[name], str):
                raise ConfigError(f"{name!r} must be a string")
        if document.get("is_org") is not None and not isinstance(document["is_org"], bool):
            raise ConfigError("'is_org' must be true or false")
        job_id = _id_text(document, "job_id") or _id_text(document, "run_id") or "runner"
        queue = document.get("termination_queue_url") or None
        if queue is not None and (
            not isinstance(queue, str) or not queue.startswith(("https://", "http://"))
        ):
            raise ConfigError("'termination_queue_url' must be the queue's URL (https://...)")
        return cls(
            job_id=job_id,
            runner=RunnerRegistration(
                org=org,
                jit_token=token.strip(),
                repo=_optional_str(document, "repo") if document.get("repo") else None,
                labels=tuple(labels),
                runner_group=(
                    _optional_str(document, "runner_group")
                    if document.get("runner_group")
                    else None
                ),
            ),
            termination_queue_url=queue,
        )

    @property
    def runs_fleet(self) -> bool:
        """Whether this is runs-fleet's runner document (its message format, too)."""
        return self.runner is not None

    def job_spec(
        self, *, work_dir: Path, bundle_dir: Path | None, env: Mapping[str, str]
    ) -> JobSpec:
        """The job to run; a relative ``cwd`` is taken from ``work_dir``. The working
        directory defaults to the bundle's. Raises ``ConfigError``."""
        variables = {**self.env, **env}
        cwd: Path | None = bundle_dir
        if self.cwd is not None:
            cwd = work_dir / self.cwd
        if self.runner is not None:
            raise ConfigError("a runner document has no job of its own to run")
        try:
            if self.command is not None:
                return JobSpec.from_command(self.command, env=variables, cwd=cwd)
            assert self.template is not None
            return JobSpec.from_template(
                self.template,
                self.parameters,
                env=variables,
                template_dir=bundle_dir or work_dir,
            )
        except JobSpecError as exc:
            raise ConfigError(str(exc)) from exc


def _id_text(document: Mapping[str, Any], name: str) -> str | None:
    """An id that may come as a string or a number (GitHub's job and run ids are numbers)."""
    value = document.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ConfigError(f"{name!r} must be a string or a number")
    text = str(value)
    if len(text) > 256:
        raise ConfigError(f"{name!r} must be 1-256 characters")
    return text


def _bundle(raw: Any) -> BundleRef | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("'bundle' must be an object with bucket, key and sha256")
    unknown = sorted(set(raw) - _BUNDLE_KEYS)
    if unknown:
        raise ConfigError(f"'bundle': unknown key {unknown[0]!r}")
    for name in ("bucket", "key", "sha256"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise ConfigError(f"'bundle' needs {name!r} (a string)")
    sha256 = raw["sha256"].lower()
    if not _SHA256.fullmatch(sha256):
        raise ConfigError("'bundle.sha256' must be 64 hexadecimal digits")
    directory = raw.get("directory", "bundle")
    if not isinstance(directory, str) or not _relative_path(directory):
        raise ConfigError("'bundle.directory' must be a relative path inside the work directory")
    return BundleRef(raw["bucket"], raw["key"], sha256, directory)


def _relative_path(text: str) -> bool:
    path = PurePosixPath(text)
    return bool(text) and not path.is_absolute() and ".." not in path.parts and "\0" not in text


def _template(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = load_document(raw, what="'template'")  # JSON is YAML too
        except DocumentError as exc:
            raise ConfigError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError("'template' must be an OpenJD job template (an object, or its text)")
    plain: dict[str, Any] = _plain(raw)
    return plain


def _plain(value: Any) -> Any:
    """JSON numbers were read as ``Decimal``; a template wants ints and floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _parameters(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("'parameters' must be an object of names to strings or numbers")
    values: dict[str, str] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            raise ConfigError(f"parameter {name!r} must be a string or a number")
        values[name] = value if isinstance(value, str) else str(value)
    return values


def _string_map(raw: Any, name: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(value, str) for value in raw.values()):
        raise ConfigError(f"{name!r} must be an object of strings")
    return dict(raw)


def _string_list(raw: Any, name: str) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(item, str) for item in raw):
        raise ConfigError(f"{name!r} must be a non-empty list of strings")
    return list(raw)


def _optional_str(document: Mapping[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name!r} must be a non-empty string")
    return value


def _number(document: Mapping[str, Any], name: str, *, positive: bool) -> float | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ConfigError(f"{name!r} must be a number")
    number = float(value)
    if (positive and not number > 0) or number < 0 or number == float("inf"):
        bound = "more than 0" if positive else "0 or more"
        raise ConfigError(f"{name!r} must be {bound}")
    return number
