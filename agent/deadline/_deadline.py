"""The Deadline Cloud worker API: typed calls and the contract's retry table.

``WORKER_POLICIES`` is the worker API contract (``docs/worker_api_contract.md``
in the official agent) as a table, with the official agent's fixes and ours:

============================  =========================================================  ============================================================
operation                     retried                                                    terminal, or what the error means
============================  =========================================================  ============================================================
``CreateWorker``              throttling, 5xx, ``CONCURRENT_MODIFICATION``, transport     ``RESOURCE_ALREADY_EXISTS`` and other conflicts,
                              (bounded; safe: a ``clientToken`` dedups), the fleet in     access, validation, not found: raised as they are
                              ``STATUS_CONFLICT`` while ``CREATE_IN_PROGRESS``
``AssumeFleetRoleForWorker``  throttling, 5xx, transport (bounded)                        not found -> ``WorkerNotFound``; conflicts (fleet not
                                                                                          active; bootstrap credentials while online), access,
                                                                                          validation: raised as they are
``UpdateWorker``              throttling, 5xx, ``CONCURRENT_MODIFICATION``, transport     not found -> ``WorkerNotFound``; ``STATUS_CONFLICT`` on the
                              (bounded), worker ``ASSOCIATED`` (instance profile still    worker -> ``WorkerOffline``; asking for ``STARTED`` from
                              attached)                                                   ``STOPPING``/``NOT_COMPATIBLE`` first goes to ``STOPPED``
``UpdateWorkerSchedule``      throttling, 5xx, ``CONCURRENT_MODIFICATION``; transport     not found -> ``WorkerNotFound``; ``STATUS_CONFLICT`` on the
                              5 times, then ``RetriesExhausted``                          worker -> ``WorkerOffline``; others raised as they are
``BatchGetJobEntity``         throttling; 5xx and transport 5 times each, then            not found for the worker -> ``WorkerNotFound``; others
                              ``RetriesExhausted`` (the contract: "a limited number")     raised as they are (they fail the actions that needed them)
``AssumeQueueRoleForWorker``  throttling, 5xx, transport (bounded); the queue in          ``STATUS_CONFLICT`` on the worker -> ``WorkerOffline``; not
                              ``STATUS_CONFLICT`` for 10 s (eventual consistency),        found for the worker -> ``WorkerNotFound``; access,
                              then ``RetriesExhausted``                                   validation, queue not found: raised as they are
``DeleteWorker``              throttling, 5xx, transport (bounded)                        not found -> ``WorkerNotFound``; ``STATUS_CONFLICT`` on the
                                                                                          worker: ``delete_worker`` stops it, then deletes again
============================  =========================================================  ============================================================

Unlike the official agent, every wait is a ``trio.sleep`` that any enclosing
cancel scope ends (shutdown bounds the "forever" retries that way), and both
spellings of the 5xx code (``InternalServerErrorException`` in the model,
``InternalServerException`` in the contract) are retried.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import httpx
import structlog

from .._errors import (
    ConflictError,
    NotFoundError,
    RetriesExhausted,
    ServiceError,
    WorkerNotFound,
    WorkerOffline,
)
from ._client import ATTEMPT_LIMIT, ServiceClient, service_model
from ._credentials import CredentialHolder
from ._endpoints import ServiceEndpoint
from ._retry import DEFAULT_POLICY, RETRY, Attempt, RandomSource, RetryPolicy, Verdict

log = structlog.get_logger("farmhand.deadline")

#: How long a queue in ``STATUS_CONFLICT`` is retried (the contract: eventual consistency).
QUEUE_CONFLICT_WINDOW: Final = 10.0
#: How many 5xx answers one ``BatchGetJobEntity`` call retries.
ENTITY_SERVER_RETRIES: Final = 5
#: How many times ``update_worker`` goes through ``STOPPED`` before giving up on ``STARTED``.
_STOP_FIRST_LIMIT: Final = 3

_STATUS_CONFLICT: Final = "STATUS_CONFLICT"


def _worker_id(attempt: Attempt) -> str:
    return str(attempt.params.get("workerId", ""))


def _on_worker(error: ServiceError, attempt: Attempt) -> bool:
    return (
        isinstance(error, ConflictError)
        and error.reason == _STATUS_CONFLICT
        and error.resource_id == attempt.params.get("workerId")
    )


def _worker_gone(error: ServiceError, attempt: Attempt) -> Verdict | None:
    """Not found: the worker is gone (operations on the worker itself)."""
    if isinstance(error, NotFoundError):
        return WorkerNotFound(attempt.operation, _worker_id(attempt))
    return None


def _worker_gone_if_named(error: ServiceError, attempt: Attempt) -> Verdict | None:
    """Not found naming the worker: it is gone; another resource: raised as it is."""
    if isinstance(error, NotFoundError) and error.resource_id == attempt.params.get("workerId"):
        return WorkerNotFound(attempt.operation, _worker_id(attempt))
    return None


def _offline(error: ServiceError, attempt: Attempt) -> Verdict | None:
    if _on_worker(error, attempt):
        assert isinstance(error, ConflictError)
        return WorkerOffline(attempt.operation, _worker_id(attempt), error.resource_status)
    return None


def _create_worker_rule(error: ServiceError, attempt: Attempt) -> Verdict | None:
    if (
        isinstance(error, ConflictError)
        and error.reason == _STATUS_CONFLICT
        and error.resource_id == attempt.params.get("fleetId")
        and error.resource_status == "CREATE_IN_PROGRESS"
    ):
        return RETRY  # the fleet is still being created
    return None


def _update_worker_rule(error: ServiceError, attempt: Attempt) -> Verdict | None:
    if _on_worker(error, attempt):
        assert isinstance(error, ConflictError)
        if error.resource_status == "ASSOCIATED":
            return RETRY  # the instance profile is still being detached
        return WorkerOffline(attempt.operation, _worker_id(attempt), error.resource_status)
    return _worker_gone(error, attempt)


def _schedule_rule(error: ServiceError, attempt: Attempt) -> Verdict | None:
    return _offline(error, attempt) or _worker_gone(error, attempt)


def _queue_role_rule(error: ServiceError, attempt: Attempt) -> Verdict | None:
    if (
        isinstance(error, ConflictError)
        and error.reason == _STATUS_CONFLICT
        and error.resource_id == attempt.params.get("queueId")
    ):
        if attempt.elapsed <= QUEUE_CONFLICT_WINDOW:
            return RETRY  # eventual consistency: the queue may not know of us yet
        return RetriesExhausted(attempt.operation, attempt.number, error)
    return _offline(error, attempt) or _worker_gone_if_named(error, attempt)


_NO_CONFLICT_RETRIES: Final = frozenset[str]()

#: Each worker operation's retry policy (see the module docstring).
WORKER_POLICIES: Final[Mapping[str, RetryPolicy]] = {
    "CreateWorker": RetryPolicy(rule=_create_worker_rule),
    "AssumeFleetRoleForWorker": RetryPolicy(
        conflict_reasons=_NO_CONFLICT_RETRIES, rule=_worker_gone
    ),
    "UpdateWorker": RetryPolicy(rule=_update_worker_rule),
    "UpdateWorkerSchedule": RetryPolicy(rule=_schedule_rule),
    "BatchGetJobEntity": RetryPolicy(
        server_errors=ENTITY_SERVER_RETRIES,
        conflict_reasons=_NO_CONFLICT_RETRIES,
        rule=_worker_gone_if_named,
    ),
    "AssumeQueueRoleForWorker": RetryPolicy(
        conflict_reasons=_NO_CONFLICT_RETRIES, rule=_queue_role_rule
    ),
    "DeleteWorker": RetryPolicy(conflict_reasons=_NO_CONFLICT_RETRIES, rule=_worker_gone),
}


@functools.cache
def entity_batch_limit() -> int:
    """The most identifiers one ``BatchGetJobEntity`` takes, from the service model (10)."""
    shape = service_model("deadline").operation_model("BatchGetJobEntity").input_shape
    return int(shape.members["identifiers"].metadata["max"])


def _drop_none(**params: Any) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}


class DeadlineClient(ServiceClient):
    """The Deadline Cloud API (botocore's ``deadline`` model) with the worker contract's retries.

    Create one per set of credentials and share it; ``for_worker`` binds the
    ids of one worker. Any operation of the model can go through ``call``; the
    worker operations have typed methods below.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        endpoint: ServiceEndpoint,
        credentials: CredentialHolder,
        *,
        policies: Mapping[str, RetryPolicy] | None = None,
        default_policy: RetryPolicy = DEFAULT_POLICY,
        random: RandomSource | None = None,
        attempt_limit: float = ATTEMPT_LIMIT,
        schedule_http: httpx.AsyncClient | None = None,
    ) -> None:
        """``schedule_http``: a connection pool for ``UpdateWorkerSchedule`` alone (see
        ``ServiceClient``'s ``lanes``); ``None``: it goes through ``http`` too."""
        if endpoint.service != "deadline":
            raise ValueError(f"a DeadlineClient needs a deadline endpoint, not {endpoint.service}")
        super().__init__(
            http,
            endpoint,
            credentials,
            policies={**WORKER_POLICIES, **(policies or {})},
            default_policy=default_policy,
            random=random,
            attempt_limit=attempt_limit,
            lanes=None if schedule_http is None else {"UpdateWorkerSchedule": schedule_http},
        )

    def for_worker(self, farm_id: str, fleet_id: str, worker_id: str) -> WorkerClient:
        """The worker operations with this worker's ids filled in."""
        return WorkerClient(self, farm_id, fleet_id, worker_id)

    async def create_worker(
        self,
        *,
        farm_id: str,
        fleet_id: str,
        host_properties: Mapping[str, Any] | None = None,
        client_token: str | None = None,
    ) -> dict[str, Any]:
        """``CreateWorker``: register this host; the response has ``workerId``."""
        return await self.call(
            "CreateWorker",
            _drop_none(
                farmId=farm_id,
                fleetId=fleet_id,
                hostProperties=host_properties,
                clientToken=client_token,
            ),
        )

    async def assume_fleet_role_for_worker(
        self, *, farm_id: str, fleet_id: str, worker_id: str
    ) -> dict[str, Any]:
        """``AssumeFleetRoleForWorker``: the worker's own credentials (``credentials``)."""
        return await self.call(
            "AssumeFleetRoleForWorker",
            {"farmId": farm_id, "fleetId": fleet_id, "workerId": worker_id},
        )

    async def update_worker(
        self,
        *,
        farm_id: str,
        fleet_id: str,
        worker_id: str,
        status: str | None = None,
        capabilities: Mapping[str, Any] | None = None,
        host_properties: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``UpdateWorker``. Asking for ``STARTED`` while the farm has the worker
        ``STOPPING`` or ``NOT_COMPATIBLE`` first sets it ``STOPPED``, as the contract says."""
        params = _drop_none(
            farmId=farm_id,
            fleetId=fleet_id,
            workerId=worker_id,
            status=status,
            capabilities=capabilities,
            hostProperties=host_properties,
        )
        stops = 0
        while True:
            try:
                return await self.call("UpdateWorker", params)
            except WorkerOffline as exc:
                if (
                    status != "STARTED"
                    or exc.status not in ("STOPPING", "NOT_COMPATIBLE")
                    or stops >= _STOP_FIRST_LIMIT
                ):
                    raise
                stops += 1
                log.info("deadline.stop_before_start", worker_id=worker_id, status=exc.status)
            await self.update_worker(
                farm_id=farm_id, fleet_id=fleet_id, worker_id=worker_id, status="STOPPED"
            )

    async def update_worker_schedule(
        self,
        *,
        farm_id: str,
        fleet_id: str,
        worker_id: str,
        updated_session_actions: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """``UpdateWorkerSchedule``: report action updates, get the assigned work."""
        return await self.call(
            "UpdateWorkerSchedule",
            {
                "farmId": farm_id,
                "fleetId": fleet_id,
                "workerId": worker_id,
                "updatedSessionActions": dict(updated_session_actions or {}),
            },
        )

    async def batch_get_job_entity(
        self,
        *,
        farm_id: str,
        fleet_id: str,
        worker_id: str,
        identifiers: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        """``BatchGetJobEntity`` for at most ``entity_batch_limit()`` identifiers."""
        return await self.call(
            "BatchGetJobEntity",
            {
                "farmId": farm_id,
                "fleetId": fleet_id,
                "workerId": worker_id,
                "identifiers": list(identifiers),
            },
        )

    async def assume_queue_role_for_worker(
        self, *, farm_id: str, fleet_id: str, worker_id: str, queue_id: str
    ) -> dict[str, Any]:
        """``AssumeQueueRoleForWorker``: the queue's credentials, if it has a role."""
        return await self.call(
            "AssumeQueueRoleForWorker",
            {"farmId": farm_id, "fleetId": fleet_id, "workerId": worker_id, "queueId": queue_id},
        )

    async def delete_worker(self, *, farm_id: str, fleet_id: str, worker_id: str) -> dict[str, Any]:
        """``DeleteWorker``. A worker that is not ``STOPPED`` is stopped first, as the contract says."""
        params = {"farmId": farm_id, "fleetId": fleet_id, "workerId": worker_id}
        try:
            return await self.call("DeleteWorker", params)
        except ConflictError as exc:
            if exc.reason != _STATUS_CONFLICT or exc.resource_id != worker_id:
                raise
            log.info("deadline.stop_before_delete", worker_id=worker_id, status=exc.resource_status)
        await self.update_worker(
            farm_id=farm_id, fleet_id=fleet_id, worker_id=worker_id, status="STOPPED"
        )
        return await self.call("DeleteWorker", params)


@attrs.frozen
class WorkerClient:
    """One worker's operations, its ids bound.

    ``update_worker_schedule`` fits the scheduler's ``ScheduleApi`` and
    ``batch_get_job_entity`` the entity fetcher's ``BatchGet``.
    """

    deadline: DeadlineClient
    farm_id: str
    fleet_id: str
    worker_id: str

    async def assume_fleet_role_for_worker(self) -> dict[str, Any]:
        return await self.deadline.assume_fleet_role_for_worker(
            farm_id=self.farm_id, fleet_id=self.fleet_id, worker_id=self.worker_id
        )

    async def update_worker(
        self,
        *,
        status: str | None = None,
        capabilities: Mapping[str, Any] | None = None,
        host_properties: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return await self.deadline.update_worker(
            farm_id=self.farm_id,
            fleet_id=self.fleet_id,
            worker_id=self.worker_id,
            status=status,
            capabilities=capabilities,
            host_properties=host_properties,
        )

    async def update_worker_schedule(
        self, updated_session_actions: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, Any]:
        return await self.deadline.update_worker_schedule(
            farm_id=self.farm_id,
            fleet_id=self.fleet_id,
            worker_id=self.worker_id,
            updated_session_actions=updated_session_actions,
        )

    async def batch_get_job_entity(
        self, identifiers: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        return await self.deadline.batch_get_job_entity(
            farm_id=self.farm_id,
            fleet_id=self.fleet_id,
            worker_id=self.worker_id,
            identifiers=identifiers,
        )

    async def assume_queue_role_for_worker(self, queue_id: str) -> dict[str, Any]:
        return await self.deadline.assume_queue_role_for_worker(
            farm_id=self.farm_id,
            fleet_id=self.fleet_id,
            worker_id=self.worker_id,
            queue_id=queue_id,
        )

    async def delete_worker(self) -> dict[str, Any]:
        return await self.deadline.delete_worker(
            farm_id=self.farm_id, fleet_id=self.fleet_id, worker_id=self.worker_id
        )
