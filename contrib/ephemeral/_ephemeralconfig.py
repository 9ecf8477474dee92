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

``ConfigError`` says what is wrong, in one line naming the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import yaml

from agent import JobSpecError
from agent.jobs import JobSpec

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


class ConfigError(Exception):
    """The job configuration cannot be used; one line."""


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

    def job_spec(
        self, *, work_dir: Path, bundle_dir: Path | None, env: Mapping[str, str]
    ) -> JobSpec:
        """The job to run; a relative ``cwd`` is taken from ``work_dir``. The working
        directory defaults to the bundle's. Raises ``ConfigError``."""
        variables = {**self.env, **env}
        cwd: Path | None = bundle_dir
        if self.cwd is not None:
            cwd = work_dir / self.cwd
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
            raw = yaml.safe_load(raw)  # JSON is YAML too
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(f"'template' is not valid JSON or YAML: {detail}") from exc
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
