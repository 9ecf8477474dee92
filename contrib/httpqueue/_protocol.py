"""The HTTP job queue's wire shapes: jobs, statuses, requirements, capabilities.

Both ends use this module: the worker to read what the server hands out and
to decide whether it can run it, the reference server to check what people
submit. Everything on the wire is JSON; see the README for the endpoints.

Requirements (on a job) and capabilities (of a worker)::

    "requirements": {
        "tools": {"python": ">=3.10", "blender": "4.1", "ffmpeg": ""},
        "gpus": 1,
        "labels": ["linux", "big-memory"]
    }

- ``tools``: the worker must have each tool, at a version that matches the
  PEP 440 specifier (``>=3.10,<4``, ``~=4.1``, ``==4.1.*``); a bare version
  ``4.1`` means ``==4.1.*``, an empty string or ``*`` any version. A worker
  learns its tools' versions by running a configured command (``python3
  --version``) and taking the first dotted number it prints.
- ``gpus``: at least this many GPUs (``true`` is 1).
- ``labels``: every one of them among the worker's labels.

A requirement the worker does not understand (an unknown key, a bad
specifier) is unmet too: the worker rejects the job, it never guesses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from actors import UnsafePathError, safe_id

#: What a worker reports about a job.
AGENT_STATUSES = frozenset({"running", "finished", "failed", "canceled", "stopped"})
#: A job's statuses on the server.
JOB_STATUSES = ("queued", "assigned", "running", "finished", "failed", "canceled", "stopped")
TERMINAL_STATUSES = frozenset({"finished", "failed", "canceled", "stopped"})
#: What a person can ask of a running job; the worker stops it and reports the same.
STOP_STATUSES = frozenset({"canceled", "stopped"})

_REQUIREMENT_KEYS = frozenset({"tools", "gpus", "labels"})
_VERSION_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)+)")
_NUMBER_RE = re.compile(r"(?<![\d.])(\d+)(?![\d.])")
_BARE_VERSION_RE = re.compile(r"\d+(?:\.\d+)*")


class ProtocolError(ValueError):
    """Wire data that does not have the shape the protocol asks for. One line."""


class UnsafeJobId(ProtocolError):
    """A job whose id cannot name its directory and log (``../x``, say): the worker
    fails that job, saying why, and touches no file for it."""

    def __init__(self, job_id: str, error: UnsafePathError) -> None:
        super().__init__(str(error))
        self.job_id = job_id


# ------------------------------------------------------------------ requirements


def version_specifier(text: str) -> SpecifierSet:
    """A tool's version requirement: PEP 440 specifiers, a bare version (``4.1``:
    ``==4.1.*``), or ``""``/``*`` for any. Raises ``ProtocolError``."""
    text = text.strip()
    if text in ("", "*"):
        return SpecifierSet("")
    if _BARE_VERSION_RE.fullmatch(text):
        text = f"=={text}.*"
    try:
        return SpecifierSet(text)
    except InvalidSpecifier as exc:
        raise ProtocolError(f"{text!r} is not a version requirement: {exc}") from exc


def _labels(value: Any, what: str) -> frozenset[str]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(item, str) and item for item in value
    ):
        raise ProtocolError(f"{what} must be a list of non-empty strings")
    return frozenset(value)


@attrs.frozen
class Requirements:
    """What a job needs of the worker that runs it (see the module docstring)."""

    tools: Mapping[str, str] = attrs.field(factory=dict)
    gpus: int = 0
    labels: frozenset[str] = frozenset()

    @classmethod
    def from_api(cls, value: Any) -> Requirements:
        """Read ``requirements`` from a job; ``None`` is no requirements. Raises
        ``ProtocolError`` for anything else that is not well formed."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ProtocolError("requirements must be an object")
        unknown = sorted(set(value) - _REQUIREMENT_KEYS)
        if unknown:
            raise ProtocolError(
                f"unknown requirement {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(_REQUIREMENT_KEYS))})"
            )
        tools = value.get("tools") or {}
        if not isinstance(tools, Mapping):
            raise ProtocolError("requirements.tools must map tool names to versions")
        for name, spec in tools.items():
            if not isinstance(name, str) or not name or not isinstance(spec, str):
                raise ProtocolError("requirements.tools must map tool names to version strings")
            try:
                version_specifier(spec)
            except ProtocolError as exc:
                raise ProtocolError(f"requirements.tools.{name}: {exc}") from exc
        gpus = value.get("gpus", 0)
        if gpus is True:
            gpus = 1
        elif gpus is False or gpus is None:
            gpus = 0
        if not isinstance(gpus, int) or gpus < 0:
            raise ProtocolError("requirements.gpus must be a whole number of GPUs (or true)")
        labels = _labels(value.get("labels") or [], "requirements.labels")
        return cls(dict(tools), gpus, labels)

    def to_api(self) -> dict[str, Any]:
        api: dict[str, Any] = {}
        if self.tools:
            api["tools"] = dict(self.tools)
        if self.gpus:
            api["gpus"] = self.gpus
        if self.labels:
            api["labels"] = sorted(self.labels)
        return api


def extract_version(text: str) -> str | None:
    """The first dotted number in a tool's ``--version`` output (``Docker version
    24.0.7, build afdd53b`` -> ``24.0.7``), else the first plain number."""
    match = _VERSION_RE.search(text) or _NUMBER_RE.search(text)
    return match.group(1) if match else None


@attrs.frozen
class Capabilities:
    """What a worker has: tool versions (``None``: configured but not found), GPUs, labels."""

    tools: Mapping[str, str | None] = attrs.field(factory=dict)
    gpus: int = 0
    labels: frozenset[str] = frozenset()

    def unmet(self, requirements: Requirements) -> list[str]:
        """Why this worker cannot run a job with ``requirements`` (empty: it can)."""
        reasons: list[str] = []
        for name, wanted in sorted(requirements.tools.items()):
            have = self.tools.get(name)
            if name not in self.tools:
                reasons.append(f"tool {name} is not configured on this worker")
                continue
            if have is None:
                reasons.append(f"tool {name} is not available on this worker")
                continue
            specifier = version_specifier(wanted)
            try:
                ok = specifier.contains(Version(have), prereleases=True)
            except InvalidVersion:
                ok = False
            if not ok:
                reasons.append(f"tool {name} is version {have}, the job needs {wanted}")
        if requirements.gpus > self.gpus:
            reasons.append(f"the job needs {requirements.gpus} GPU(s), this worker has {self.gpus}")
        missing = sorted(requirements.labels - self.labels)
        if missing:
            reasons.append(f"this worker lacks the label(s) {', '.join(missing)}")
        return reasons

    def to_api(self) -> dict[str, Any]:
        return {"tools": dict(self.tools), "gpus": self.gpus, "labels": sorted(self.labels)}


# ------------------------------------------------------------------ jobs


def _string(payload: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{name} must be a non-empty string")
    return value


def _seconds(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ProtocolError(f"{what} must be a positive number of seconds")
    return float(value)


@attrs.frozen
class JobOffer:
    """A job as ``next-job`` hands it to a worker.

    ``requirements`` stays raw until ``requirements()`` reads it, so that a
    worker can reject a job whose requirements it cannot read.
    """

    job_id: str
    job_name: str
    config_path: str
    raw_requirements: Any = None
    #: The job's own limit on its runtime, in seconds.
    timeout: float | None = None

    @classmethod
    def from_api(cls, payload: Any) -> JobOffer:
        """Raises ``ProtocolError`` (with the job id when there is one)."""
        if not isinstance(payload, Mapping):
            raise ProtocolError("a job must be an object")
        job_id = _string(payload, "job_id")
        assert job_id is not None
        try:
            safe_id(job_id, "job_id")
        except UnsafePathError as exc:
            raise UnsafeJobId(job_id, exc) from exc
        try:
            config_path = _string(payload, "config_path")
            job_name = _string(payload, "job_name", required=False) or job_id
            timeout = _seconds(payload.get("timeout"), "timeout")
        except ProtocolError as exc:
            raise ProtocolError(f"job {job_id}: {exc}") from exc
        assert config_path is not None
        return cls(job_id, job_name, config_path, payload.get("requirements"), timeout)

    def requirements(self) -> Requirements:
        return Requirements.from_api(self.raw_requirements)


def job_submission(payload: Any) -> dict[str, Any]:
    """Check what a person submits (``POST /api/jobs``); the fields a new job gets.
    Raises ``ProtocolError``."""
    if not isinstance(payload, Mapping):
        raise ProtocolError("the body must be a JSON object")
    unknown = sorted(
        set(payload) - {"job_name", "config_path", "requirements", "timeout", "priority"}
    )
    if unknown:
        raise ProtocolError(f"unknown field(s) {', '.join(unknown)}")
    config_path = _string(payload, "config_path")
    job_name = _string(payload, "job_name", required=False) or ""
    requirements = Requirements.from_api(payload.get("requirements"))
    timeout = _seconds(payload.get("timeout"), "timeout")
    priority = payload.get("priority", 50)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise ProtocolError("priority must be a whole number from 0 to 100")
    return {
        "job_name": job_name,
        "config_path": config_path,
        "requirements": requirements.to_api(),
        "timeout": timeout,
        "priority": priority,
    }


def labels_from(values: Iterable[str]) -> frozenset[str]:
    """Labels from flags and ``LABELS`` (comma-separated), without blanks."""
    labels: set[str] = set()
    for value in values:
        labels.update(part.strip() for part in value.split(",") if part.strip())
    return frozenset(labels)
