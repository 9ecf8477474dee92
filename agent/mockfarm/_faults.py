"""Faults on demand: throttling, 500s, conflicts, latency, dropped connections.

A ``FaultConfig`` says, per operation (or for all of them through ``default``),
how often each fault happens. Draws come from one ``random.Random`` per
operation, seeded from ``(seed, operation)``, so a run is repeatable however the
calls of different operations interleave. The config is an immutable value; the
farm swaps it whole (``MockFarm.set_faults``, ``SIGHUP`` for ``serve``, or
``PUT /_mockfarm/faults``) while it runs.

Per request the draws are made in this order: latency, ``drop_rate`` (the
request is not applied and never answered), ``throttle_rate``, ``error_rate``,
``conflict_rate``, then ``drop_after_rate`` (the request is applied but its
response is lost). A dropped request looks like a network partition to the
client: no answer until its read timeout. (ASGI gives an application no way to
reset a connection before it answers; after ``drop_hold_seconds`` the farm
closes the connection after the response headers.) A worker listed in ``offline_workers`` (or
``"*"`` for every worker) gets ``ConflictException(STATUS_CONFLICT)`` on each
worker-scoped call, which is how the service tells an agent it is offline.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from ._apierrors import ApiError, conflict, internal, throttled

CONFLICT_REASONS = ("CONCURRENT_MODIFICATION", "STATUS_CONFLICT")


def _rate(_instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _non_negative(_instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


def _reason(_instance: Any, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in CONFLICT_REASONS:
        raise ValueError(f"conflict_reason must be one of {', '.join(CONFLICT_REASONS)}")


@attrs.frozen
class OperationFaults:
    """How one operation misbehaves. Rates are probabilities per call (0 to 1)."""

    #: ``ThrottlingException`` (429) with ``retryAfterSeconds``.
    throttle_rate: float = attrs.field(default=0.0, validator=_rate)
    #: ``retryAfterSeconds`` of throttling and 500 responses (``None``: not sent).
    retry_after_seconds: int | None = 1
    #: ``InternalServerErrorException`` (500).
    error_rate: float = attrs.field(default=0.0, validator=_rate)
    #: ``ConflictException`` (409) with ``conflict_reason``.
    conflict_rate: float = attrs.field(default=0.0, validator=_rate)
    conflict_reason: str = attrs.field(default="CONCURRENT_MODIFICATION", validator=_reason)
    #: Seconds added before answering, plus up to ``latency_jitter`` more.
    latency: float = attrs.field(default=0.0, validator=_non_negative)
    latency_jitter: float = attrs.field(default=0.0, validator=_non_negative)
    #: The request is dropped before it is applied (never answered).
    drop_rate: float = attrs.field(default=0.0, validator=_rate)
    #: The request is applied, then its response is lost.
    drop_after_rate: float = attrs.field(default=0.0, validator=_rate)
    #: A dropped request is never answered: the client times out. If it has not
    #: given up after this many seconds, the connection is closed after the headers.
    drop_hold_seconds: float = attrs.field(default=60.0, validator=_non_negative)

    @property
    def active(self) -> bool:
        return bool(
            self.throttle_rate
            or self.error_rate
            or self.conflict_rate
            or self.latency
            or self.latency_jitter
            or self.drop_rate
            or self.drop_after_rate
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "faults") -> OperationFaults:
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = {field.name for field in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


NO_FAULTS = OperationFaults()


def _operations(value: Mapping[str, OperationFaults]) -> Mapping[str, OperationFaults]:
    return dict(value)


def _workers(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


@attrs.frozen
class FaultConfig:
    """Faults for the whole farm: a default, per-operation overrides, offline workers."""

    seed: int = 0
    default: OperationFaults = NO_FAULTS
    #: Operation name (``UpdateWorkerSchedule``, ``PutLogEvents``...) -> its faults.
    operations: Mapping[str, OperationFaults] = attrs.field(factory=dict, converter=_operations)
    #: Worker ids the farm answers as offline; ``"*"`` means every worker.
    offline_workers: frozenset[str] = attrs.field(default=frozenset(), converter=_workers)

    def for_operation(self, name: str) -> OperationFaults:
        return self.operations.get(name, self.default)

    def with_operation(self, name: str, **settings: Any) -> FaultConfig:
        """A copy with ``name``'s faults changed (starting from its current ones)."""
        changed = attrs.evolve(self.for_operation(name), **settings)
        return attrs.evolve(self, operations={**self.operations, name: changed})

    def with_offline(self, worker_id: str, offline: bool = True) -> FaultConfig:
        """A copy with the "worker is offline" switch of ``worker_id`` set or cleared."""
        workers = set(self.offline_workers)
        if offline:
            workers.add(worker_id)
        else:
            workers.discard(worker_id)
        return attrs.evolve(self, offline_workers=frozenset(workers))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        """From the document form (see the README): seed, default, operations, offline_workers."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a fault config must be a mapping, got {type(data).__name__}")
        known = {"seed", "default", "operations", "offline_workers"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault setting(s) {', '.join(unknown)}")
        operations = data.get("operations") or {}
        if not isinstance(operations, Mapping):
            raise ValueError("operations: expected a mapping of operation names to faults")
        offline = data.get("offline_workers") or []
        if isinstance(offline, str) or not all(isinstance(w, str) for w in offline):
            raise ValueError("offline_workers: expected a list of worker ids")
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError("seed: expected an integer")
        return cls(
            seed=seed,
            default=OperationFaults.from_dict(data.get("default") or {}, where="default"),
            operations={
                str(name): OperationFaults.from_dict(value, where=f"operations.{name}")
                for name, value in operations.items()
            },
            offline_workers=frozenset(offline),
        )

    @classmethod
    def from_file(cls, path: Path) -> FaultConfig:
        """A JSON or YAML file holding the document form."""
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: not valid JSON/YAML: {exc}") from exc
        try:
            return cls.from_dict(data or {})
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "default": self.default.to_dict(),
            "operations": {name: f.to_dict() for name, f in self.operations.items()},
            "offline_workers": sorted(self.offline_workers),
        }


@attrs.frozen
class Decision:
    """What to do with one request."""

    delay: float = 0.0
    error: ApiError | None = None
    drop_before: bool = False
    drop_after: bool = False
    drop_hold: float = 60.0


PASS = Decision()

#: Operations that carry a worker id and answer ``STATUS_CONFLICT`` for an offline worker.
WORKER_OPERATIONS = frozenset(
    {
        "UpdateWorker",
        "UpdateWorkerSchedule",
        "BatchGetJobEntity",
        "AssumeFleetRoleForWorker",
        "AssumeQueueRoleForWorker",
    }
)


class FaultInjector:
    """Draws the faults of each request from the current ``FaultConfig``."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._config = FaultConfig()
        self._random: dict[str, random.Random] = {}
        self._active = False
        self.injected: dict[str, int] = {}
        self.configure(config or FaultConfig())

    @property
    def config(self) -> FaultConfig:
        return self._config

    def configure(self, config: FaultConfig) -> None:
        if config.seed != self._config.seed:
            self._random.clear()
        self._config = config
        self._active = bool(
            config.offline_workers
            or config.default.active
            or any(f.active for f in config.operations.values())
        )

    def _rng(self, operation: str) -> random.Random:
        rng = self._random.get(operation)
        if rng is None:
            rng = self._random[operation] = random.Random(f"{self._config.seed}:{operation}")
        return rng

    def decide(self, operation: str, worker_id: str | None) -> Decision:
        if not self._active:
            return PASS
        config = self._config
        if (
            worker_id is not None
            and operation in WORKER_OPERATIONS
            and (worker_id in config.offline_workers or "*" in config.offline_workers)
        ):
            self._count("offline")
            return Decision(
                error=conflict(
                    "STATUS_CONFLICT",
                    "worker",
                    worker_id,
                    f"Worker {worker_id} is offline.",
                    status="NOT_RESPONDING",
                )
            )
        faults = config.for_operation(operation)
        if not faults.active:
            return PASS
        rng = self._rng(operation)
        delay = faults.latency
        if faults.latency_jitter:
            delay += rng.random() * faults.latency_jitter
        if faults.drop_rate and rng.random() < faults.drop_rate:
            self._count("drop")
            return Decision(delay=delay, drop_before=True, drop_hold=faults.drop_hold_seconds)
        error: ApiError | None = None
        if faults.throttle_rate and rng.random() < faults.throttle_rate:
            self._count("throttle")
            error = throttled(retry_after_seconds=faults.retry_after_seconds)
        elif faults.error_rate and rng.random() < faults.error_rate:
            self._count("error")
            error = internal(
                "Injected internal server error", retry_after_seconds=faults.retry_after_seconds
            )
        elif faults.conflict_rate and rng.random() < faults.conflict_rate:
            self._count("conflict")
            resource_type, resource_id = ("worker", worker_id) if worker_id else ("farm", "*")
            error = conflict(
                faults.conflict_reason,
                resource_type,
                resource_id,
                f"Injected conflict ({faults.conflict_reason}).",
                status="NOT_RESPONDING" if faults.conflict_reason == "STATUS_CONFLICT" else None,
            )
        if error is not None:
            return Decision(delay=delay, error=error)
        drop_after = bool(faults.drop_after_rate and rng.random() < faults.drop_after_rate)
        if drop_after:
            self._count("drop_after")
        if not delay and not drop_after:
            return PASS
        return Decision(delay=delay, drop_after=drop_after, drop_hold=faults.drop_hold_seconds)

    def _count(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1
