"""The CloudWatch Logs client: JSON 1.1 on the wire, error mapping, a few quick retries."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import structlog
import trio
import trio.testing

from agent._errors import (
    AccessDeniedError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    RetriesExhausted,
    ServiceError,
    ThrottlingError,
    ValidationError,
)
from agent.deadline import NO_RETRIES, LogsClient, RetryPolicy, ServiceEndpoint
from tests.agent.deadline.test_aws_support import FakeService, endpoint, holder, json_error, ok

GROUP = "/aws/deadline/farm-x/queue-y"
STREAM = "session-" + "1" * 32
EVENTS = [{"timestamp": 1700000000000, "message": "hello"}]


def fake_logs(*answers: httpx.Response) -> FakeService:
    fake = FakeService("logs", default=ok({}, protocol="json"))
    fake.answer(*answers)
    return fake


@asynccontextmanager
async def open_logs(fake: FakeService, **options: Any) -> AsyncIterator[LogsClient]:
    async with httpx.AsyncClient(transport=fake.transport) as http:
        yield LogsClient(http, endpoint("logs"), holder(), random=lambda: 0.5, **options)


async def test_put_log_events_round_trip() -> None:
    """PutLogEvents goes out as JSON 1.1 with its X-Amz-Target, signed for 'logs'."""
    fake = fake_logs(ok({"nextSequenceToken": "t-2"}, protocol="json"))
    events = [
        {"timestamp": 1700000000000, "message": "hello"},
        {"timestamp": 1700000000001, "message": "é"},
    ]
    async with open_logs(fake) as logs:
        response = await logs.put_log_events(
            log_group_name=GROUP, log_stream_name=STREAM, log_events=events
        )
    [seen] = fake.seen
    assert seen.operation == "PutLogEvents"
    assert seen.headers["x-amz-target"] == "Logs_20140328.PutLogEvents"
    assert seen.params == {"logGroupName": GROUP, "logStreamName": STREAM, "logEvents": events}
    assert seen.host == "127.0.0.1:18080"  # logs has no host prefix
    assert response["nextSequenceToken"] == "t-2"


@pytest.mark.parametrize(
    ("method", "kwargs", "operation", "params"),
    [
        ("create_log_group", {"log_group_name": GROUP}, "CreateLogGroup", {"logGroupName": GROUP}),
        (
            "create_log_stream",
            {"log_group_name": GROUP, "log_stream_name": STREAM},
            "CreateLogStream",
            {"logGroupName": GROUP, "logStreamName": STREAM},
        ),
        (
            "get_log_events",
            {
                "log_group_name": GROUP,
                "log_stream_name": STREAM,
                "start_from_head": True,
                "limit": 5,
            },
            "GetLogEvents",
            {"logGroupName": GROUP, "logStreamName": STREAM, "startFromHead": True, "limit": 5},
        ),
        (
            "describe_log_streams",
            {"log_group_name": GROUP, "log_stream_name_prefix": "session-"},
            "DescribeLogStreams",
            {"logGroupName": GROUP, "logStreamNamePrefix": "session-"},
        ),
    ],
)
async def test_operations_round_trip(
    method: str, kwargs: dict[str, Any], operation: str, params: dict[str, Any]
) -> None:
    """Each typed method sends its operation with botocore's parameter names."""
    fake = fake_logs()
    async with open_logs(fake) as logs:
        await getattr(logs, method)(**kwargs)
    [seen] = fake.seen
    assert (seen.operation, seen.params) == (operation, params)


async def test_get_log_events_parses_events() -> None:
    """GetLogEvents returns the events and tokens as botocore parses them."""
    body = {
        "events": [{"timestamp": 1, "message": "a", "ingestionTime": 2}],
        "nextForwardToken": "f/1",
        "nextBackwardToken": "b/1",
    }
    fake = fake_logs(ok(body, protocol="json"))
    async with open_logs(fake) as logs:
        response = await logs.get_log_events(log_group_name=GROUP, log_stream_name=STREAM)
    response.pop("ResponseMetadata")
    assert response == body


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            json_error("ResourceNotFoundException", "The specified log stream does not exist."),
            NotFoundError,
        ),
        (json_error("InvalidParameterException"), ValidationError),
        (json_error("UnrecognizedClientException"), AccessDeniedError),
        (json_error("AccessDeniedException"), AccessDeniedError),
        (json_error("DataAlreadyAcceptedException"), ServiceError),
        (json_error("ResourceAlreadyExistsException"), ConflictError),
    ],
)
async def test_errors_are_mapped_and_not_retried(
    answer: httpx.Response, expected: type[Exception]
) -> None:
    """JSON 1.1 errors (__type) map onto the hierarchy; client errors are not retried."""
    fake = fake_logs(answer)
    async with open_logs(fake) as logs:
        with pytest.raises(expected) as caught:
            await logs.put_log_events(
                log_group_name=GROUP, log_stream_name=STREAM, log_events=EVENTS
            )
    assert type(caught.value) is expected
    assert caught.value.args[0].startswith("PutLogEvents: ")
    assert len(fake.seen) == 1


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (json_error("ThrottlingException", "Rate exceeded"), ThrottlingError),
        (json_error("ServiceUnavailableException", status=500), InternalServerError),
    ],
)
async def test_transient_errors_get_three_quick_retries(
    answer: httpx.Response, expected: type[Exception], autojump_clock: trio.testing.MockClock
) -> None:
    """Throttling and 5xx are retried three times, then RetriesExhausted for the shipper."""
    fake = FakeService("logs", default=answer)
    async with open_logs(fake) as logs:
        with (
            structlog.testing.capture_logs() as captured,
            pytest.raises(RetriesExhausted) as caught,
        ):
            await logs.create_log_stream(log_group_name=GROUP, log_stream_name=STREAM)
    assert isinstance(caught.value.last_error, expected)
    assert len(fake.seen) == 4
    assert [entry["event"] for entry in captured] == ["logs.retry"] * 3


async def test_no_retries_for_a_caller_that_retries_itself() -> None:
    """With NO_RETRIES the first failure is raised as it is."""
    fake = FakeService("logs", default=json_error("ThrottlingException"))
    async with open_logs(fake, default_policy=NO_RETRIES) as logs:
        with pytest.raises(ThrottlingError):
            await logs.put_log_events(
                log_group_name=GROUP, log_stream_name=STREAM, log_events=EVENTS
            )
    assert len(fake.seen) == 1


async def test_per_operation_policy() -> None:
    """A policy for one operation leaves the others on the default."""
    fake = FakeService("logs", default=json_error("ThrottlingException"))
    async with open_logs(fake, policies={"CreateLogGroup": NO_RETRIES}) as logs:
        with pytest.raises(ThrottlingError):
            await logs.create_log_group(log_group_name=GROUP)
        assert logs.policy("PutLogEvents") == RetryPolicy(
            throttling=3, server_errors=3, transport_errors=3, conflict_reasons=frozenset()
        )


async def test_exist_ok_accepts_an_existing_group_and_stream() -> None:
    """With exist_ok, ResourceAlreadyExistsException is success; without it, a ConflictError."""
    exists = json_error("ResourceAlreadyExistsException", "The specified log group already exists")
    fake = fake_logs(exists, exists, exists)
    async with open_logs(fake) as logs:
        await logs.create_log_group(log_group_name=GROUP, exist_ok=True)
        await logs.create_log_stream(log_group_name=GROUP, log_stream_name=STREAM, exist_ok=True)
        with pytest.raises(ConflictError):
            await logs.create_log_group(log_group_name=GROUP)


async def test_exist_ok_does_not_hide_other_errors() -> None:
    """exist_ok swallows only 'already exists', not a missing group."""
    fake = fake_logs(json_error("ResourceNotFoundException"))
    async with open_logs(fake) as logs:
        with pytest.raises(NotFoundError):
            await logs.create_log_stream(
                log_group_name=GROUP, log_stream_name=STREAM, exist_ok=True
            )


def test_client_needs_a_logs_endpoint() -> None:
    """A LogsClient refuses another service's endpoint."""
    with pytest.raises(ValueError, match="logs endpoint"):
        LogsClient(httpx.AsyncClient(), endpoint("deadline"), holder())


async def test_against_moto_over_loopback() -> None:
    """Against moto's CloudWatch Logs server on loopback: create, put, read back, describe."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    await trio.to_thread.run_sync(server.start)
    try:
        host, port = server.get_host_and_port()
        async with httpx.AsyncClient(trust_env=False) as http:
            logs = LogsClient(
                http, ServiceEndpoint("logs", f"http://{host}:{port}", "us-west-2"), holder()
            )
            await logs.create_log_group(log_group_name=GROUP)
            await logs.create_log_group(log_group_name=GROUP, exist_ok=True)
            await logs.create_log_stream(log_group_name=GROUP, log_stream_name=STREAM)
            now = int(time.time() * 1000)  # moto, like CloudWatch, drops events that are too old
            await logs.put_log_events(
                log_group_name=GROUP,
                log_stream_name=STREAM,
                log_events=[{"timestamp": now + i, "message": f"line {i}"} for i in range(3)],
            )
            got = await logs.get_log_events(
                log_group_name=GROUP, log_stream_name=STREAM, start_from_head=True
            )
            streams = await logs.describe_log_streams(log_group_name=GROUP)
            with pytest.raises(NotFoundError):
                await logs.put_log_events(
                    log_group_name=GROUP, log_stream_name="missing", log_events=EVENTS
                )
    finally:
        await trio.to_thread.run_sync(server.stop)
    assert [event["message"] for event in got["events"]] == ["line 0", "line 1", "line 2"]
    assert [stream["logStreamName"] for stream in streams["logStreams"]] == [STREAM]
