"""The Deadline client: wire format, signing, host prefixes and the contract's retry table."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import structlog
import trio
import trio.testing

from agent._errors import (
    AccessDeniedError,
    ConfigurationError,
    ConflictError,
    CredentialsError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    RetriesExhausted,
    ServiceError,
    ThrottlingError,
    TransportError,
    ValidationError,
    WorkerNotFound,
    WorkerOffline,
)
from agent.deadline import (
    WORKER_POLICIES,
    CredentialHolder,
    DeadlineClient,
    RetryPolicy,
    ServiceClient,
    ServiceEndpoint,
    entity_batch_limit,
    static_credentials,
)
from tests.agent.deadline.test_aws_support import (
    ACCESS_KEY,
    FARM,
    FLEET,
    QUEUE,
    SECRET_KEY,
    WORKER,
    FakeService,
    conflict,
    endpoint,
    error,
    holder,
    ok,
    verify_sigv4,
)

JOB = "job-" + "e" * 32


def half() -> float:
    """A 'random' source that always says 0.5, so backoff delays are exact."""
    return 0.5


@asynccontextmanager
async def open_deadline(
    fake: FakeService,
    *,
    credentials: CredentialHolder | None = None,
    inject_host_prefix: bool = True,
    **options: Any,
) -> AsyncIterator[DeadlineClient]:
    async with httpx.AsyncClient(transport=fake.transport) as http:
        yield DeadlineClient(
            http,
            endpoint(inject_host_prefix=inject_host_prefix),
            credentials or holder(),
            random=half,
            **options,
        )


Call = Callable[[DeadlineClient], Awaitable[dict[str, Any]]]

CALLS: dict[str, Call] = {
    "CreateWorker": lambda d: d.create_worker(farm_id=FARM, fleet_id=FLEET),
    "AssumeFleetRoleForWorker": lambda d: d.for_worker(
        FARM, FLEET, WORKER
    ).assume_fleet_role_for_worker(),
    "UpdateWorker": lambda d: d.for_worker(FARM, FLEET, WORKER).update_worker(status="STOPPED"),
    "UpdateWorkerSchedule": lambda d: d.for_worker(FARM, FLEET, WORKER).update_worker_schedule(),
    "BatchGetJobEntity": lambda d: d.for_worker(FARM, FLEET, WORKER).batch_get_job_entity(
        [{"jobDetails": {"jobId": JOB}}]
    ),
    "AssumeQueueRoleForWorker": lambda d: d.for_worker(
        FARM, FLEET, WORKER
    ).assume_queue_role_for_worker(QUEUE),
    "DeleteWorker": lambda d: d.for_worker(FARM, FLEET, WORKER).delete_worker(),
}


# ----------------------------------------------------------------------- wire format


EXPIRATION = "2026-11-24T17:00:00Z"
CAPABILITIES = {
    "amounts": [
        {"name": "amount.worker.vcpu", "value": 4.0},
        {"name": "amount.worker.memory", "value": 16384.0},
    ],
    "attributes": [
        {"name": "attr.worker.os.family", "values": ["linux"]},
        {"name": "attr.worker.cpu.arch", "values": ["x86_64"]},
    ],
}
CREDENTIALS = {
    "accessKeyId": "ASIAFLEET",
    "secretAccessKey": "fleet-secret",
    "sessionToken": "fleet-token",
    "expiration": EXPIRATION,
}
STARTED = datetime(2026, 11, 24, 15, 0, 0, tzinfo=UTC)
ENDED = datetime(2026, 11, 24, 15, 0, 7, 250000, tzinfo=UTC)
ACTION = "sessionaction-" + "f" * 32 + "-0"

# operation -> (call, params expected on the wire, response body, expected host)
ROUND_TRIPS: dict[str, tuple[Call, dict[str, Any], dict[str, Any], str]] = {
    "CreateWorker": (
        lambda d: d.create_worker(
            farm_id=FARM,
            fleet_id=FLEET,
            host_properties={
                "hostName": "render-01",
                "ipAddresses": {"ipV4Addresses": ["10.0.0.7"], "ipV6Addresses": []},
            },
        ),
        {
            "farmId": FARM,
            "fleetId": FLEET,
            "hostProperties": {
                "hostName": "render-01",
                "ipAddresses": {"ipV4Addresses": ["10.0.0.7"], "ipV6Addresses": []},
            },
        },
        {"workerId": WORKER},
        "scheduling.127.0.0.1:18080",
    ),
    "AssumeFleetRoleForWorker": (
        lambda d: d.assume_fleet_role_for_worker(farm_id=FARM, fleet_id=FLEET, worker_id=WORKER),
        {"farmId": FARM, "fleetId": FLEET, "workerId": WORKER},
        {"credentials": CREDENTIALS},
        "scheduling.127.0.0.1:18080",
    ),
    "UpdateWorker": (
        lambda d: d.update_worker(
            farm_id=FARM,
            fleet_id=FLEET,
            worker_id=WORKER,
            status="STARTED",
            capabilities=CAPABILITIES,
        ),
        {
            "farmId": FARM,
            "fleetId": FLEET,
            "workerId": WORKER,
            "status": "STARTED",
            "capabilities": CAPABILITIES,
        },
        {
            "log": {
                "logDriver": "awslogs",
                "options": {"logGroupName": "/aws/deadline/g", "logStreamName": WORKER},
            }
        },
        "scheduling.127.0.0.1:18080",
    ),
    "UpdateWorkerSchedule": (
        lambda d: d.update_worker_schedule(
            farm_id=FARM,
            fleet_id=FLEET,
            worker_id=WORKER,
            updated_session_actions={
                ACTION: {
                    "completedStatus": "SUCCEEDED",
                    "processExitCode": 0,
                    "progressMessage": "done",
                    "startedAt": STARTED,
                    "endedAt": ENDED,
                }
            },
        ),
        {
            "farmId": FARM,
            "fleetId": FLEET,
            "workerId": WORKER,
            "updatedSessionActions": {
                ACTION: {
                    "completedStatus": "SUCCEEDED",
                    "processExitCode": 0,
                    "progressMessage": "done",
                    "startedAt": "2026-11-24T15:00:00Z",
                    "endedAt": "2026-11-24T15:00:07.250000Z",
                }
            },
        },
        {"assignedSessions": {}, "cancelSessionActions": {}, "updateIntervalSeconds": 15},
        "scheduling.127.0.0.1:18080",
    ),
    "BatchGetJobEntity": (
        lambda d: d.batch_get_job_entity(
            farm_id=FARM,
            fleet_id=FLEET,
            worker_id=WORKER,
            identifiers=[{"jobDetails": {"jobId": JOB}}],
        ),
        {
            "farmId": FARM,
            "fleetId": FLEET,
            "workerId": WORKER,
            "identifiers": [{"jobDetails": {"jobId": JOB}}],
        },
        {
            "entities": [
                {
                    "jobDetails": {
                        "jobId": JOB,
                        "logGroupName": "/aws/deadline/q",
                        "schemaVersion": "jobtemplate-2023-09",
                    }
                }
            ],
            "errors": [],
        },
        "scheduling.127.0.0.1:18080",
    ),
    "AssumeQueueRoleForWorker": (
        lambda d: d.assume_queue_role_for_worker(
            farm_id=FARM, fleet_id=FLEET, worker_id=WORKER, queue_id=QUEUE
        ),
        {"farmId": FARM, "fleetId": FLEET, "workerId": WORKER, "queueId": QUEUE},
        {"credentials": CREDENTIALS},
        "scheduling.127.0.0.1:18080",
    ),
    "DeleteWorker": (
        lambda d: d.delete_worker(farm_id=FARM, fleet_id=FLEET, worker_id=WORKER),
        {"farmId": FARM, "fleetId": FLEET, "workerId": WORKER},
        {},
        "management.127.0.0.1:18080",
    ),
}


def _parsed(body: dict[str, Any]) -> dict[str, Any]:
    """What botocore makes of a response body: timestamps become datetimes."""
    parsed = dict(body)
    if "credentials" in parsed:
        parsed["credentials"] = dict(
            parsed["credentials"], expiration=datetime(2026, 11, 24, 17, 0, tzinfo=UTC)
        )
    return parsed


@pytest.mark.parametrize("operation", sorted(ROUND_TRIPS))
async def test_round_trip(operation: str) -> None:
    """Each worker operation puts its parameters on the wire as the model says and
    returns the response parsed as botocore would, on the model's host prefix."""
    call, wire, body, host = ROUND_TRIPS[operation]
    fake = FakeService(default=ok(body))
    async with open_deadline(fake) as deadline:
        response = await call(deadline)
    [seen] = fake.seen
    assert seen.operation == operation
    params = dict(seen.params)
    if operation == "CreateWorker":
        uuid.UUID(params.pop("clientToken"))  # botocore's idempotency token, filled in
    assert params == wire
    assert seen.host == host
    metadata = response.pop("ResponseMetadata")
    assert metadata["HTTPStatusCode"] == 200
    assert metadata["RequestId"] == "req-1"
    assert response == _parsed(body)


async def test_requests_are_signed_with_sigv4() -> None:
    """Requests carry a SigV4 Authorization (checked by the fake against the bytes sent)
    and the session token."""
    fake = FakeService()
    async with open_deadline(fake) as deadline:
        await CALLS["UpdateWorkerSchedule"](deadline)
    [seen] = fake.seen
    assert seen.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDFARMHANDFAKE/")
    assert "/us-west-2/deadline/aws4_request" in seen.headers["authorization"]
    assert seen.headers["x-amz-security-token"] == "session-token"
    assert seen.headers["user-agent"].startswith("farmhand/")


async def test_host_prefix_can_be_disabled() -> None:
    """With host-prefix injection off, requests go to the endpoint's own host."""
    fake = FakeService()
    async with open_deadline(fake, inject_host_prefix=False) as deadline:
        await CALLS["UpdateWorkerSchedule"](deadline)
        await CALLS["DeleteWorker"](deadline)
    assert [seen.host for seen in fake.seen] == ["127.0.0.1:18080", "127.0.0.1:18080"]


async def test_endpoint_path_is_kept() -> None:
    """An endpoint URL with a path keeps it in front of the operation's path."""
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return ok({})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        deadline = DeadlineClient(
            http,
            ServiceEndpoint("deadline", "http://127.0.0.1:18080/farm", "us-west-2", False),
            holder(),
        )
        await CALLS["UpdateWorkerSchedule"](deadline)
    assert paths == [f"/farm/2023-10-12/farms/{FARM}/fleets/{FLEET}/workers/{WORKER}/schedule"]


async def test_credential_swap_signs_the_next_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Credentials set between attempts sign the retry, and later calls."""
    fake = FakeService()
    fake.secrets["ASIAFLEET"] = "fleet-secret"
    credentials = holder()

    def swap_then_fail(request: httpx.Request) -> httpx.Response:
        credentials.set_from_api(CREDENTIALS)
        return error(500, "InternalServerErrorException")

    fake.answer(swap_then_fail)
    async with open_deadline(fake, credentials=credentials) as deadline:
        await CALLS["UpdateWorkerSchedule"](deadline)
        await CALLS["UpdateWorkerSchedule"](deadline)
    assert [seen.access_key for seen in fake.seen] == ["AKIDFARMHANDFAKE", "ASIAFLEET", "ASIAFLEET"]
    assert fake.seen[1].headers["x-amz-security-token"] == "fleet-token"


async def test_no_credentials_is_a_clear_error() -> None:
    """With no credentials the call fails with CredentialsError and sends nothing."""
    fake = FakeService()
    async with open_deadline(fake, credentials=CredentialHolder()) as deadline:
        with pytest.raises(CredentialsError, match="no credentials"):
            await CALLS["UpdateWorkerSchedule"](deadline)
    assert fake.seen == []
    assert deadline.statistics().operations["UpdateWorkerSchedule"].failures == 1


async def test_invalid_parameters_are_rejected_before_sending() -> None:
    """Parameters that break the model raise InvalidRequestError naming the problem; nothing is sent."""
    fake = FakeService()
    async with open_deadline(fake) as deadline:
        worker = deadline.for_worker(FARM, FLEET, WORKER)
        with pytest.raises(InvalidRequestError, match="processExitCode"):
            await worker.update_worker_schedule({ACTION: {"processExitCode": "zero"}})
        with pytest.raises(InvalidRequestError, match="identifiers"):
            await worker.batch_get_job_entity([])
        with pytest.raises(ValueError, match="no operation"):
            await deadline.call("NoSuchOperation", {})
    assert fake.seen == []


def test_entity_batch_limit_comes_from_the_model() -> None:
    """BatchGetJobEntity takes at most 10 identifiers, as botocore's model says."""
    assert entity_batch_limit() == 10


def test_every_worker_operation_has_a_policy() -> None:
    """The retry table covers exactly the seven worker operations."""
    assert set(WORKER_POLICIES) == set(CALLS)


def test_client_needs_a_deadline_endpoint() -> None:
    """A DeadlineClient refuses another service's endpoint."""
    with pytest.raises(ValueError, match="deadline endpoint"):
        DeadlineClient(httpx.AsyncClient(), endpoint("logs"), holder())


# ----------------------------------------------------------------------- the retry table

RETRIED = "retried"

THROTTLED = error(429, "ThrottlingException", "slow down")
THROTTLED_AFTER = httpx.Response(
    429,
    headers={"x-amzn-ErrorType": "ThrottlingException", "Retry-After": "3"},
    content=b'{"message": "slow down"}',
)
SERVER = error(500, "InternalServerErrorException", "oops")
SERVER_CONTRACT_SPELLING = error(500, "InternalServerException", "oops")
GATEWAY = httpx.Response(502, content=b"<html>Bad Gateway</html>")
DENIED = error(403, "AccessDeniedException", "denied")
INVALID = error(400, "ValidationException", "bad", reason="FIELD_VALIDATION_FAILED")
CONCURRENT = conflict("CONCURRENT_MODIFICATION", WORKER)
WORKER_CONFLICT = conflict("STATUS_CONFLICT", WORKER, "NOT_RESPONDING")
WORKER_MISSING = error(
    404, "ResourceNotFoundException", "gone", resourceId=WORKER, resourceType="worker"
)
OTHER_MISSING = error(404, "ResourceNotFoundException", "gone", resourceId=JOB, resourceType="job")

COMMON = [
    ("throttled", THROTTLED, RETRIED),
    ("throttled-retry-after", THROTTLED_AFTER, RETRIED),
    ("500", SERVER, RETRIED),
    ("500-contract-spelling", SERVER_CONTRACT_SPELLING, RETRIED),
    ("502-html", GATEWAY, RETRIED),
    ("access-denied", DENIED, AccessDeniedError),
    ("validation", INVALID, ValidationError),
]

SPECIFIC: dict[str, list[tuple[str, httpx.Response, Any]]] = {
    "CreateWorker": [
        ("concurrent-modification", conflict("CONCURRENT_MODIFICATION", FLEET), RETRIED),
        ("fleet-being-created", conflict("STATUS_CONFLICT", FLEET, "CREATE_IN_PROGRESS"), RETRIED),
        ("fleet-not-active", conflict("STATUS_CONFLICT", FLEET, "SUSPENDED"), ConflictError),
        ("already-exists", conflict("RESOURCE_ALREADY_EXISTS", WORKER), ConflictError),
        ("not-found", error(404, "ResourceNotFoundException", "no fleet"), NotFoundError),
    ],
    "AssumeFleetRoleForWorker": [
        ("concurrent-modification", CONCURRENT, ConflictError),
        ("worker-conflict", WORKER_CONFLICT, ConflictError),
        ("not-found", WORKER_MISSING, WorkerNotFound),
    ],
    "UpdateWorker": [
        ("concurrent-modification", CONCURRENT, RETRIED),
        ("profile-attached", conflict("STATUS_CONFLICT", WORKER, "ASSOCIATED"), RETRIED),
        ("worker-conflict", WORKER_CONFLICT, WorkerOffline),
        ("fleet-conflict", conflict("STATUS_CONFLICT", FLEET, "SUSPENDED"), ConflictError),
        ("not-found", WORKER_MISSING, WorkerNotFound),
    ],
    "UpdateWorkerSchedule": [
        ("concurrent-modification", CONCURRENT, RETRIED),
        ("worker-conflict", WORKER_CONFLICT, WorkerOffline),
        ("fleet-conflict", conflict("STATUS_CONFLICT", FLEET, "SUSPENDED"), ConflictError),
        ("other-conflict", conflict("CONFLICT_EXCEPTION", WORKER), ConflictError),
        ("not-found", WORKER_MISSING, WorkerNotFound),
    ],
    "BatchGetJobEntity": [
        ("worker-not-found", WORKER_MISSING, WorkerNotFound),
        ("job-not-found", OTHER_MISSING, NotFoundError),
    ],
    "AssumeQueueRoleForWorker": [
        ("concurrent-modification", CONCURRENT, ConflictError),
        ("queue-conflict", conflict("STATUS_CONFLICT", QUEUE, "IDLE"), RETRIED),
        ("worker-conflict", WORKER_CONFLICT, WorkerOffline),
        ("worker-not-found", WORKER_MISSING, WorkerNotFound),
        ("queue-not-found", OTHER_MISSING, NotFoundError),
    ],
    "DeleteWorker": [
        ("concurrent-modification", CONCURRENT, ConflictError),
        ("not-found", WORKER_MISSING, WorkerNotFound),
    ],
}

TABLE = [
    pytest.param(operation, answer, expected, id=f"{operation}-{name}")
    for operation in CALLS
    for name, answer, expected in [*COMMON, *SPECIFIC[operation]]
]


@pytest.mark.parametrize(("operation", "answer", "expected"), TABLE)
async def test_retry_table(
    operation: str, answer: httpx.Response, expected: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """Each operation retries what the contract retries and raises the rest with its meaning."""
    fake = FakeService()
    fake.answer(answer)
    async with open_deadline(fake) as deadline:
        if expected is RETRIED:
            await CALLS[operation](deadline)
            assert fake.operations() == [operation, operation]
            assert deadline.statistics().operations[operation].retries == 1
        else:
            with pytest.raises(expected) as caught:
                await CALLS[operation](deadline)
            assert fake.operations() == [operation]
            assert deadline.statistics().operations[operation].failures == 1
            if not isinstance(caught.value, ServiceError):
                assert isinstance(caught.value.__cause__, ServiceError)


@pytest.mark.parametrize("operation", sorted(CALLS))
async def test_transport_errors_are_retried_a_bounded_number_of_times(
    operation: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Connection failures are retried five times, then the call raises RetriesExhausted."""
    fake = FakeService(default=httpx.ConnectError("connection refused"))
    async with open_deadline(fake) as deadline:
        with pytest.raises(RetriesExhausted) as caught:
            await CALLS[operation](deadline)
    assert caught.value.attempts == 6
    assert isinstance(caught.value.last_error, TransportError)
    assert caught.value.__cause__ is caught.value.last_error
    assert "ConnectError: connection refused" in str(caught.value)
    assert len(fake.seen) == 6


async def test_transport_recovery(autojump_clock: trio.testing.MockClock) -> None:
    """A read failure, then an answer: the call succeeds on the retry."""
    fake = FakeService(default=ok({"updateIntervalSeconds": 15}))
    fake.answer(httpx.ReadError("connection reset"))
    async with open_deadline(fake) as deadline:
        response = await CALLS["UpdateWorkerSchedule"](deadline)
    assert response["updateIntervalSeconds"] == 15
    assert deadline.statistics().retries_by_code == {"TransportError": 1}


async def test_create_worker_reuses_its_client_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Retries of CreateWorker send the same clientToken, so the farm can dedupe them."""
    fake = FakeService(default=ok({"workerId": WORKER}))
    fake.answer(httpx.ReadTimeout("slow"), SERVER)
    async with open_deadline(fake) as deadline:
        await CALLS["CreateWorker"](deadline)
        await CALLS["CreateWorker"](deadline)
    tokens = [seen.params["clientToken"] for seen in fake.seen]
    assert tokens[0] == tokens[1] == tokens[2] != tokens[3]


async def test_unsupported_scheme_is_not_retried() -> None:
    """An endpoint httpx cannot speak to fails at once, not after retries."""
    fake = FakeService()
    async with httpx.AsyncClient(transport=fake.transport) as http:
        deadline = DeadlineClient(
            http, ServiceEndpoint("deadline", "ftp://127.0.0.1", "us-west-2"), holder()
        )
        fake.default = httpx.UnsupportedProtocol("ftp")
        with pytest.raises(TransportError) as caught:
            await CALLS["UpdateWorkerSchedule"](deadline)
    assert not caught.value.transient
    assert len(fake.seen) == 1


async def test_bad_endpoint_url_is_a_configuration_error() -> None:
    """An endpoint URL httpx cannot parse is a ConfigurationError, not a retried failure."""
    fake = FakeService()
    async with httpx.AsyncClient(transport=fake.transport) as http:
        deadline = DeadlineClient(
            http, ServiceEndpoint("deadline", "http://[::1", "us-west-2", False), holder()
        )
        with pytest.raises(ConfigurationError):
            await CALLS["UpdateWorkerSchedule"](deadline)
    assert fake.seen == []


async def test_entity_server_errors_are_retried_five_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """BatchGetJobEntity retries a 5xx only five times (the contract's limit), with backoff."""
    fake = FakeService(default=SERVER)
    async with open_deadline(fake) as deadline:
        start = trio.current_time()
        with pytest.raises(RetriesExhausted) as caught:
            await CALLS["BatchGetJobEntity"](deadline)
    assert isinstance(caught.value.last_error, InternalServerError)
    assert [t - start for t in fake.times()] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5]


async def test_entity_throttling_is_retried_until_it_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """BatchGetJobEntity retries throttling past the 5xx limit."""
    fake = FakeService(default=ok({"entities": [], "errors": []}))
    fake.answer(*[THROTTLED] * 8)
    async with open_deadline(fake) as deadline:
        await CALLS["BatchGetJobEntity"](deadline)
    assert len(fake.seen) == 9


async def test_unknown_error_code_is_terminal() -> None:
    """A 4xx with a code the table does not know is raised as a plain ServiceError."""
    fake = FakeService(default=error(402, "ServiceQuotaExceededException", "quota", reason="Q"))
    async with open_deadline(fake) as deadline:
        with pytest.raises(ServiceError) as caught:
            await CALLS["UpdateWorkerSchedule"](deadline)
    exc = caught.value
    assert type(exc) is ServiceError
    assert (exc.code, exc.status, exc.reason, exc.message) == (
        "ServiceQuotaExceededException",
        402,
        "Q",
        "quota",
    )
    assert exc.operation == "UpdateWorkerSchedule"
    assert b'"reason": "Q"' in exc.body
    assert len(fake.seen) == 1


async def test_malformed_success_is_a_service_error() -> None:
    """A 200 whose body does not fit the model is a MalformedResponse ServiceError."""
    fake = FakeService(default=httpx.Response(200, content=b"[1, 2]"))
    async with open_deadline(fake) as deadline:
        with pytest.raises(ServiceError, match="MalformedResponse"):
            await CALLS["UpdateWorkerSchedule"](deadline)


async def test_conflict_error_carries_its_context() -> None:
    """A ConflictError exposes reason, resource id and type, and the resource's status."""
    fake = FakeService(default=conflict("STATUS_CONFLICT", FLEET, "SUSPENDED"))
    async with open_deadline(fake) as deadline:
        with pytest.raises(ConflictError) as caught:
            await CALLS["CreateWorker"](deadline)
    exc = caught.value
    assert (exc.reason, exc.resource_id, exc.resource_type, exc.resource_status) == (
        "STATUS_CONFLICT",
        FLEET,
        "worker",
        "SUSPENDED",
    )
    assert str(exc) == "CreateWorker: ConflictException (HTTP 409, STATUS_CONFLICT): conflict"


async def test_worker_offline_carries_the_status() -> None:
    """WorkerOffline names the worker and the status the farm gave, from a ConflictError."""
    fake = FakeService(default=WORKER_CONFLICT)
    async with open_deadline(fake) as deadline:
        with pytest.raises(WorkerOffline) as caught:
            await CALLS["UpdateWorkerSchedule"](deadline)
    assert (caught.value.worker_id, caught.value.status) == (WORKER, "NOT_RESPONDING")
    assert isinstance(caught.value.__cause__, ConflictError)


# ----------------------------------------------------------------------- contract dances


async def test_started_from_stopping_goes_through_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """UpdateWorker(STARTED) on a STOPPING worker sets STOPPED first, then STARTED again."""
    fake = FakeService(default=ok({}))
    fake.answer(conflict("STATUS_CONFLICT", WORKER, "STOPPING"))
    async with open_deadline(fake) as deadline:
        await deadline.for_worker(FARM, FLEET, WORKER).update_worker(status="STARTED")
    assert [seen.params.get("status") for seen in fake.seen] == ["STARTED", "STOPPED", "STARTED"]


async def test_started_from_stopping_gives_up_eventually(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A farm that keeps the worker STOPPING ends the dance with WorkerOffline."""
    stopping = conflict("STATUS_CONFLICT", WORKER, "NOT_COMPATIBLE")

    def answer(request: httpx.Request) -> httpx.Response:
        return ok({}) if b"STOPPED" in request.content else stopping

    fake = FakeService(default=answer)
    async with open_deadline(fake) as deadline:
        with pytest.raises(WorkerOffline, match="NOT_COMPATIBLE"):
            await deadline.for_worker(FARM, FLEET, WORKER).update_worker(status="STARTED")
    assert [seen.params["status"] for seen in fake.seen] == ["STARTED", "STOPPED"] * 3 + ["STARTED"]


async def test_stopping_worker_is_offline_when_not_starting() -> None:
    """A STATUS_CONFLICT while asking for STOPPING is WorkerOffline, with no dance."""
    fake = FakeService(default=conflict("STATUS_CONFLICT", WORKER, "STOPPED"))
    async with open_deadline(fake) as deadline:
        with pytest.raises(WorkerOffline):
            await deadline.for_worker(FARM, FLEET, WORKER).update_worker(status="STOPPING")
    assert len(fake.seen) == 1


async def test_delete_stops_a_running_worker_first() -> None:
    """DeleteWorker on a worker that is not STOPPED stops it, then deletes again."""
    fake = FakeService(default=ok({}))
    fake.answer(conflict("STATUS_CONFLICT", WORKER, "STARTED"))
    async with open_deadline(fake) as deadline:
        await CALLS["DeleteWorker"](deadline)
    assert fake.operations() == ["DeleteWorker", "UpdateWorker", "DeleteWorker"]
    assert fake.seen[1].params["status"] == "STOPPED"


async def test_delete_conflict_on_another_resource_is_raised() -> None:
    """DeleteWorker's conflict on another resource is raised as it is."""
    fake = FakeService(default=conflict("STATUS_CONFLICT", FLEET, "ACTIVE"))
    async with open_deadline(fake) as deadline:
        with pytest.raises(ConflictError):
            await CALLS["DeleteWorker"](deadline)
    assert fake.operations() == ["DeleteWorker"]


async def test_queue_conflict_is_retried_for_ten_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A queue in STATUS_CONFLICT is retried for 10 s (eventual consistency), then given up."""
    fake = FakeService(default=conflict("STATUS_CONFLICT", QUEUE, "IDLE"))
    async with open_deadline(fake) as deadline:
        start = trio.current_time()
        with pytest.raises(RetriesExhausted) as caught:
            await CALLS["AssumeQueueRoleForWorker"](deadline)
    assert isinstance(caught.value.last_error, ConflictError)
    # Attempts at 0, 0.5, 1.5, 3.5, 7.5 are within 10 s; the one at 15.5 is not.
    assert [t - start for t in fake.times()] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5]


# ----------------------------------------------------------------------- timing


async def test_backoff_times_are_exact(autojump_clock: trio.testing.MockClock) -> None:
    """With U(0,1) fixed at 0.5, retries wait 0.5, 1, 2, 4... seconds, capped at 30."""
    fake = FakeService(default=ok({}))
    fake.answer(*[SERVER] * 9)
    async with open_deadline(fake) as deadline:
        start = trio.current_time()
        await CALLS["UpdateWorkerSchedule"](deadline)
    waits = [b - a for a, b in zip(fake.times(), fake.times()[1:], strict=False)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert trio.current_time() - start == sum(waits)


async def test_retry_after_is_a_lower_bound(autojump_clock: trio.testing.MockClock) -> None:
    """retryAfterSeconds=3 (the model's Retry-After header) turns a 0.5 s backoff
    into 3 + 0.5 * 0.2 * 3 = 3.3 s."""
    fake = FakeService(default=ok({}))
    fake.answer(THROTTLED_AFTER)
    async with open_deadline(fake) as deadline:
        await CALLS["UpdateWorkerSchedule"](deadline)
    first, second = fake.times()
    assert second - first == pytest.approx(3.3)


async def test_retry_after_in_the_body_counts_too(autojump_clock: trio.testing.MockClock) -> None:
    """A retryAfterSeconds member in the JSON body is honoured like the model's header."""
    fake = FakeService(default=ok({}))
    fake.answer(error(500, "InternalServerErrorException", "busy", retryAfterSeconds=10))
    async with open_deadline(fake) as deadline:
        await CALLS["UpdateWorkerSchedule"](deadline)
    first, second = fake.times()
    assert second - first == pytest.approx(11.0)


async def test_cancellation_ends_a_backoff_wait(autojump_clock: trio.testing.MockClock) -> None:
    """A caller's cancel scope ends the retry loop in the middle of a backoff wait."""
    fake = FakeService(default=SERVER)
    async with open_deadline(fake) as deadline:
        start = trio.current_time()
        with trio.move_on_after(10) as scope:
            await CALLS["UpdateWorkerSchedule"](deadline)
    assert scope.cancelled_caught
    assert trio.current_time() - start == 10
    assert [t - start for t in fake.times()] == [0.0, 0.5, 1.5, 3.5, 7.5]
    stats = deadline.statistics().operations["UpdateWorkerSchedule"]
    assert (stats.calls, stats.retries, stats.failures) == (1, 5, 0)


async def test_hung_attempt_is_cut_off_and_retried(autojump_clock: trio.testing.MockClock) -> None:
    """An attempt that gets no answer within the attempt limit is retried as a transport failure."""
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep_forever()
        return ok({"updateIntervalSeconds": 15})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        deadline = DeadlineClient(http, endpoint(), holder(), random=half, attempt_limit=5)
        start = trio.current_time()
        response = await CALLS["UpdateWorkerSchedule"](deadline)
    assert response["updateIntervalSeconds"] == 15
    assert trio.current_time() - start == 5.5
    assert deadline.statistics().retries_by_code == {"TransportError": 1}


# ----------------------------------------------------------------------- logs and statistics


async def test_retries_are_logged_and_counted(autojump_clock: trio.testing.MockClock) -> None:
    """Each retry logs deadline.retry with operation, attempt, delay and code, and is counted."""
    fake = FakeService(default=ok({}))
    fake.answer(THROTTLED, SERVER)
    async with open_deadline(fake) as deadline:
        with structlog.testing.capture_logs() as logs:
            await CALLS["UpdateWorkerSchedule"](deadline)
        await CALLS["UpdateWorkerSchedule"](deadline)
    retries = [entry for entry in logs if entry["event"] == "deadline.retry"]
    assert [(e["operation"], e["attempt"], e["delay"], e["code"]) for e in retries] == [
        ("UpdateWorkerSchedule", 1, 0.5, "ThrottlingException"),
        ("UpdateWorkerSchedule", 2, 1.0, "InternalServerErrorException"),
    ]
    assert [e["log_level"] for e in retries] == ["info", "warning"]
    stats = deadline.statistics()
    assert stats.operations["UpdateWorkerSchedule"].calls == 2
    assert stats.operations["UpdateWorkerSchedule"].retries == 2
    assert (stats.calls, stats.retries, stats.failures) == (2, 2, 0)
    assert stats.retries_by_code == {"ThrottlingException": 1, "InternalServerErrorException": 1}


async def test_policies_can_be_overridden() -> None:
    """A caller's policy replaces the table's entry for that operation."""
    fake = FakeService(default=THROTTLED)
    async with open_deadline(
        fake, policies={"UpdateWorkerSchedule": RetryPolicy(throttling=0)}
    ) as deadline:
        with pytest.raises(ThrottlingError):
            await CALLS["UpdateWorkerSchedule"](deadline)
    assert len(fake.seen) == 1


async def test_static_credentials_need_both_keys() -> None:
    """Credentials without a secret are a CredentialsError before anything is sent."""
    with pytest.raises(CredentialsError):
        CredentialHolder(static_credentials("AKID", ""))


async def test_worker_client_fits_the_actors() -> None:
    """A WorkerClient, through DeadlineSchedule, is the scheduler's ScheduleApi and its
    batch_get_job_entity the fetcher's BatchGet, as those are typed (mypy checks the
    assignments)."""
    from actors import BatchGet, ScheduleApi
    from agent.deadline import DeadlineSchedule, WireSchedule

    fake = FakeService(default=ok({"updateIntervalSeconds": 15, "entities": [], "errors": []}))
    async with open_deadline(fake) as deadline:
        worker = deadline.for_worker(FARM, FLEET, WORKER)
        wire: WireSchedule = worker
        api: ScheduleApi = DeadlineSchedule(wire)
        batch_get: BatchGet = worker.batch_get_job_entity
        assert (await api.sync({})).interval == 15
        assert (await batch_get([{"jobDetails": {"jobId": JOB}}]))["entities"] == []
    assert fake.operations() == ["UpdateWorkerSchedule", "BatchGetJobEntity"]


async def test_query_protocol_bodies_are_form_encoded_and_signed() -> None:
    """An ec2-protocol operation goes out as a signed form body, and its XML answer is parsed."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = (
            b'<TerminateInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            b"<requestId>r-1</requestId><instancesSet><item><instanceId>i-1</instanceId>"
            b"<currentState><code>32</code><name>shutting-down</name></currentState>"
            b"</item></instancesSet></TerminateInstancesResponse>"
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/xml"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = ServiceClient(http, endpoint("ec2"), holder())
        answer = await client.call("TerminateInstances", {"InstanceIds": ["i-1", "i-2"]})
    [request] = seen
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert verify_sigv4(request, {ACCESS_KEY: SECRET_KEY}, service="ec2") == ACCESS_KEY
    assert dict(urllib.parse.parse_qsl(request.content.decode())) == {
        "Action": "TerminateInstances",
        "Version": "2016-11-15",
        "InstanceId.1": "i-1",
        "InstanceId.2": "i-2",
    }
    [item] = answer["TerminatingInstances"]
    assert (item["InstanceId"], item["CurrentState"]["Name"]) == ("i-1", "shutting-down")


async def test_schedule_lane_carries_update_worker_schedule_only() -> None:
    """schedule_http (a lane): UpdateWorkerSchedule goes through it, every other call
    through http, so that the heartbeat never queues behind them for a connection."""
    seen: dict[str, list[str]] = {"http": [], "lane": []}

    def recorder(name: str) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            seen[name].append(request.url.path.rsplit("/", 1)[-1])
            return ok(
                {"assignedSessions": {}, "cancelSessionActions": {}, "updateIntervalSeconds": 15}
            )

        return httpx.MockTransport(handler)

    async with (
        httpx.AsyncClient(transport=recorder("http")) as http,
        httpx.AsyncClient(transport=recorder("lane")) as lane,
    ):
        deadline = DeadlineClient(http, endpoint(), holder(), schedule_http=lane)
        worker = deadline.for_worker(FARM, FLEET, WORKER)
        await worker.update_worker_schedule()
        await worker.update_worker(status="STOPPED")
        await worker.update_worker_schedule()
    assert seen == {"http": [WORKER], "lane": ["schedule", "schedule"]}
