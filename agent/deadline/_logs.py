"""CloudWatch Logs (botocore's ``logs`` model, JSON 1.1) for the log shipper.

The endpoint comes from ``AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`` (the service id is
"CloudWatch Logs"; ``AWS_ENDPOINT_URL_LOGS`` is *not* read), ``AWS_ENDPOINT_URL``
or the config file's ``services`` section: ``resolve_endpoint("logs")``.

The client retries throttling, 5xx and transport failures a few times
(``LOGS_POLICY``); a caller with its own retry loop passes
``default_policy=NO_RETRIES`` and gets every failure at once. Errors map as:
``ThrottlingError``/``InternalServerError``/``TransportError``/
``RetriesExhausted``: try again later; ``NotFoundError``: the group or stream is
missing; ``ValidationError`` (``InvalidParameterException``): the batch is
unacceptable; ``AccessDeniedError``: the credentials cannot ship logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import httpx

from .._errors import ConflictError
from ._client import ATTEMPT_LIMIT, ServiceClient
from ._credentials import CredentialHolder
from ._endpoints import ServiceEndpoint
from ._retry import RandomSource, RetryPolicy

#: A few quick retries; the log shipper keeps its own, slower loop above this.
LOGS_POLICY: Final = RetryPolicy(
    throttling=3, server_errors=3, transport_errors=3, conflict_reasons=frozenset()
)


def _drop_none(**params: Any) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}


class LogsClient(ServiceClient):
    """CloudWatch Logs; any operation of the model goes through ``call``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        endpoint: ServiceEndpoint,
        credentials: CredentialHolder,
        *,
        policies: Mapping[str, RetryPolicy] | None = None,
        default_policy: RetryPolicy = LOGS_POLICY,
        random: RandomSource | None = None,
        attempt_limit: float = ATTEMPT_LIMIT,
    ) -> None:
        if endpoint.service != "logs":
            raise ValueError(f"a LogsClient needs a logs endpoint, not {endpoint.service}")
        super().__init__(
            http,
            endpoint,
            credentials,
            policies=policies,
            default_policy=default_policy,
            random=random,
            attempt_limit=attempt_limit,
        )

    async def put_log_events(
        self,
        *,
        log_group_name: str,
        log_stream_name: str,
        log_events: Sequence[Mapping[str, Any]],
        sequence_token: str | None = None,
    ) -> dict[str, Any]:
        """``PutLogEvents``: ``log_events`` are ``{"timestamp": ms, "message": str}``,
        in timestamp order; the response may hold ``rejectedLogEventsInfo``."""
        return await self.call(
            "PutLogEvents",
            _drop_none(
                logGroupName=log_group_name,
                logStreamName=log_stream_name,
                logEvents=list(log_events),
                sequenceToken=sequence_token,
            ),
        )

    async def create_log_group(self, *, log_group_name: str, exist_ok: bool = False) -> None:
        """``CreateLogGroup``; with ``exist_ok`` an existing group is not an error."""
        try:
            await self.call("CreateLogGroup", {"logGroupName": log_group_name})
        except ConflictError as exc:
            if not (exist_ok and exc.code == "ResourceAlreadyExistsException"):
                raise

    async def create_log_stream(
        self, *, log_group_name: str, log_stream_name: str, exist_ok: bool = False
    ) -> None:
        """``CreateLogStream``; with ``exist_ok`` an existing stream is not an error."""
        try:
            await self.call(
                "CreateLogStream",
                {"logGroupName": log_group_name, "logStreamName": log_stream_name},
            )
        except ConflictError as exc:
            if not (exist_ok and exc.code == "ResourceAlreadyExistsException"):
                raise

    async def get_log_events(
        self,
        *,
        log_group_name: str,
        log_stream_name: str,
        start_from_head: bool | None = None,
        next_token: str | None = None,
        limit: int | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
    ) -> dict[str, Any]:
        """``GetLogEvents``: ``events`` and the paging tokens."""
        return await self.call(
            "GetLogEvents",
            _drop_none(
                logGroupName=log_group_name,
                logStreamName=log_stream_name,
                startFromHead=start_from_head,
                nextToken=next_token,
                limit=limit,
                startTime=start_time,
                endTime=end_time,
            ),
        )

    async def describe_log_streams(
        self,
        *,
        log_group_name: str,
        log_stream_name_prefix: str | None = None,
        order_by: str | None = None,
        descending: bool | None = None,
        next_token: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """``DescribeLogStreams``: ``logStreams`` and ``nextToken``."""
        return await self.call(
            "DescribeLogStreams",
            _drop_none(
                logGroupName=log_group_name,
                logStreamNamePrefix=log_stream_name_prefix,
                orderBy=order_by,
                descending=descending,
                nextToken=next_token,
                limit=limit,
            ),
        )
