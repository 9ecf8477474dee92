"""AWS for the contrib adapters: one set of clients, one retry rule, a few helpers.

``open_aws(services)`` at an adapter's root gives it what every call needs:

- one ``httpx.AsyncClient`` and one ``CredentialHolder`` (botocore's default
  chain: environment, profile, ECS task role, instance profile);
- one async ``ServiceClient`` per service (botocore's models over httpx, as
  the Deadline and CloudWatch Logs clients), its endpoint resolved as boto3
  resolves it, so ``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_<SERVICE>``
  (``_DYNAMODB``, ``_SSM``, ``_SQS``, ``_EC2``...) point it elsewhere;
- one retry rule for every call: throttling, 5xx and connection failures are
  retried with exponential backoff (full jitter, capped at 30 s) for up to
  ``retry_seconds`` from the first attempt; then the call raises
  ``RetriesExhausted`` from the last failure. Anything else (not found,
  access denied, a failed condition) is the answer at once.

Calls are Trio-native, so a cancel scope ends one at any point. The adapters
cancel only reads and idempotent writes that way; a status write that must
land runs shielded, bounded by its retry window.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import attrs
import botocore.session
import httpx
import trio
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from agent import ConfigurationError, CredentialsError
from agent.deadline import (
    CredentialHolder,
    RetryPolicy,
    ServiceClient,
    ServiceEndpoint,
    load_default_credentials,
    resolve_endpoint,
)

#: How long one call retries throttling, 5xx and connection failures by default.
DEFAULT_RETRY_SECONDS = 600.0


def adapter_policy(retry_seconds: float) -> RetryPolicy:
    """Retry what is transient, for as long as ``retry_seconds`` allows."""
    return RetryPolicy(
        throttling=math.inf,
        server_errors=math.inf,
        transport_errors=math.inf,
        conflict_reasons=frozenset(),
        give_up_after=retry_seconds,
    )


@attrs.define(eq=False)
class Aws:
    """The clients of one adapter process (see the module docstring)."""

    http: httpx.AsyncClient
    credentials: CredentialHolder
    region: str
    retry_seconds: float
    clients: Mapping[str, ServiceClient]

    def client(self, service: str) -> ServiceClient:
        try:
            return self.clients[service]
        except KeyError:
            raise ValueError(f"no {service} client was opened") from None


@asynccontextmanager
async def open_aws(
    services: Iterable[str],
    *,
    region: str | None = None,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
    http: httpx.AsyncClient | None = None,
    random: Callable[[], float] | None = None,
) -> AsyncIterator[Aws]:
    """Clients for ``services`` (botocore names: ``dynamodb``, ``ssm``, ``sqs``, ``ec2``).

    Raises ``ConfigurationError`` when there is no region or an endpoint is
    unusable, ``CredentialsError`` when the default chain finds no credentials.
    """
    names = list(dict.fromkeys(services))
    session = botocore.session.Session()

    def resolve() -> dict[str, ServiceEndpoint]:
        return {name: resolve_endpoint(name, session=session, region=region) for name in names}

    # Reads the AWS config file; no network.
    endpoints = await trio.to_thread.run_sync(resolve)
    credentials = await load_default_credentials(session)
    if credentials is None:
        raise CredentialsError(
            "no AWS credentials found (environment, profile, ECS task role or instance profile)"
        )
    holder = CredentialHolder(credentials)
    resolved_region = (
        next(iter(endpoints.values())).region if endpoints else region or _session_region(session)
    )
    policy = adapter_policy(retry_seconds)
    own_http = http is None
    client = http or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
    try:
        clients = {
            name: ServiceClient(client, endpoint, holder, default_policy=policy, random=random)
            for name, endpoint in endpoints.items()
        }
        yield Aws(client, holder, resolved_region, retry_seconds, clients)
    finally:
        if own_http:
            with trio.CancelScope(shield=True):
                await client.aclose()


def _session_region(session: botocore.session.Session) -> str:
    region = session.get_config_variable("region")
    if not region:
        raise ConfigurationError("no AWS region: set AWS_DEFAULT_REGION or pass --region")
    return str(region)


# ----------------------------------------------------------------------- DynamoDB values

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()


def to_attribute(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value (floats go through ``Decimal``)."""
    result: dict[str, Any] = _SERIALIZER.serialize(_decimals(value))
    return result


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB item as plain Python values (numbers as ``Decimal``)."""
    return {name: _DESERIALIZER.deserialize(value) for name, value in item.items()}


def _decimals(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {key: _decimals(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_decimals(item) for item in value]
    return value


# ----------------------------------------------------------------------- timestamps


def iso(moment: datetime) -> str:
    """``2026-12-01T21:29:58.123Z``: UTC, milliseconds."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def utc_now() -> datetime:
    return datetime.now(UTC)
