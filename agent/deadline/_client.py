"""A generic async client for one AWS service, driven by its botocore model.

botocore does everything that has to match the SDKs byte for byte: parameter
validation (``ParamValidator``), request serialization (its protocol
serializers), host prefixes, SigV4 signing (``SigV4Auth`` on an
``AWSRequest``) and response parsing (its protocol parsers). httpx carries the
bytes, on the ``httpx.AsyncClient`` the caller opened at the root.

Per call, after validation and serialization (once), each attempt signs the
request afresh (a credential swap shows up in the next attempt), sends it under
a per-attempt time limit, and turns the answer into a dict as botocore would
return it, or into one of ``agent._errors``. The operation's ``RetryPolicy``
decides what is retried; waits are ``trio.sleep``, so any enclosing cancel scope
ends them.

Everything that can be computed once is: service models, serializers, parsers
and per-operation data are shared by every client in the process, and the
SigV4 signer is rebuilt only when the credentials change.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import random as _random
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

import attrs
import botocore
import botocore.auth
import botocore.awsrequest
import botocore.exceptions
import botocore.model
import botocore.parsers
import botocore.serialize
import botocore.validate
import httpx
import structlog
import trio

from .._awskeys import FrozenCredentials
from .._errors import (
    AccessDeniedError,
    ConfigurationError,
    ConflictError,
    FarmhandError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    ThrottlingError,
    TransportError,
    ValidationError,
)
from .._httpbody import request_with_body
from .._servicemodels import service_model as _service_model
from ._credentials import CredentialHolder
from ._endpoints import ServiceEndpoint
from ._parse import create_parser
from ._retry import DEFAULT_POLICY, RETRY, Attempt, RandomSource, RetryPolicy

log = structlog.get_logger("farmhand.aws")

#: How long one attempt may take, connect to last byte, before it counts as a
#: transport failure (and is retried as one). Callers bound whole calls with
#: their own cancel scopes.
ATTEMPT_LIMIT: Final = 60.0


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "0"


USER_AGENT: Final = (
    f"farmhand/{_version('farmhand')} botocore/{botocore.__version__} httpx/{httpx.__version__}"
)

# Error codes by meaning; the HTTP status decides when the code is unknown.
_THROTTLING_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
_SERVER_CODES: Final = frozenset(
    {
        "InternalServerErrorException",
        "InternalServerException",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_CONFLICT_CODES: Final = frozenset({"ConflictException", "ResourceAlreadyExistsException"})
_NOT_FOUND_CODES: Final = frozenset({"ResourceNotFoundException", "NotFoundException"})
_ACCESS_CODES: Final = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
    }
)
_VALIDATION_CODES: Final = frozenset(
    {
        "ValidationException",
        "InvalidParameterException",
        "InvalidParameterValueException",
        "InvalidParameterCombination",
        "SerializationException",
    }
)


# ----------------------------------------------------------------------- shared, per process


def service_model(service: str) -> botocore.model.ServiceModel:
    """botocore's model for ``service``, loaded once per process and shared with
    everyone else reading it (the mock farm's codec does: ``agent._servicemodels``)."""
    return _service_model(service)


@functools.cache
def _serializer(protocol: str) -> Any:
    # Validation is ours (below), so it runs once per call, not per attempt.
    return botocore.serialize.create_serializer(protocol, include_validation=False)


@functools.cache
def _parser(protocol: str) -> Any:
    return create_parser(protocol)


_VALIDATOR: Final = botocore.validate.ParamValidator()

# What botocore's parsers raise on a body that does not fit the model: besides
# their own errors, whatever the JSON walk trips over.
_PARSE_ERRORS: Final = (
    botocore.exceptions.BotoCoreError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
)


@attrs.frozen
class _Operation:
    name: str
    model: botocore.model.OperationModel
    #: Members botocore fills with a fresh UUID when absent (``clientToken``).
    idempotent_members: tuple[str, ...]


@attrs.frozen
class _Request:
    """One call's request, serialized once; each attempt signs a copy."""

    method: str
    url: str
    http_url: httpx.URL
    headers: Mapping[str, str]
    body: bytes


_URL_CACHE_SIZE: Final = 256


@functools.cache
def _operation(service: str, name: str) -> _Operation:
    model = service_model(service)
    if name not in model.operation_names:
        raise ValueError(f"{service} has no operation {name!r}")
    operation = model.operation_model(name)
    return _Operation(name, operation, tuple(operation.idempotent_members))


# ----------------------------------------------------------------------- statistics


@attrs.frozen
class OperationStatistics:
    #: Calls made (each may take several attempts).
    calls: int = 0
    #: Retries (attempts after the first).
    retries: int = 0
    #: Calls that ended in an error.
    failures: int = 0


@attrs.frozen
class ClientStatistics:
    operations: Mapping[str, OperationStatistics]
    #: Retries by the error that caused them: ``ThrottlingException``, ``TransportError``...
    retries_by_code: Mapping[str, int]

    @property
    def calls(self) -> int:
        return sum(op.calls for op in self.operations.values())

    @property
    def retries(self) -> int:
        return sum(op.retries for op in self.operations.values())

    @property
    def failures(self) -> int:
        return sum(op.failures for op in self.operations.values())


@attrs.define
class _Counts:
    calls: int = 0
    retries: int = 0
    failures: int = 0


# ----------------------------------------------------------------------- the client


class ServiceClient:
    """Calls one AWS service's operations over ``http``, retrying per operation.

    ``policies`` maps operation names to their ``RetryPolicy``; others get
    ``default_policy``. ``random`` is the jitter source (``random.random``
    unless given; tests inject their own);
    ``attempt_limit`` bounds one attempt, in seconds. ``lanes`` maps operation
    names to their own ``httpx.AsyncClient`` (a connection pool of their own), so
    that those calls never wait for a connection behind the others: the worker
    gives ``UpdateWorkerSchedule``, its heartbeat, a lane when it shares ``http``
    with many workers.
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
        user_agent: str = USER_AGENT,
        lanes: Mapping[str, httpx.AsyncClient] | None = None,
    ) -> None:
        self._http = http
        self._lanes = dict(lanes or {})
        self.endpoint = endpoint
        self.credentials = credentials
        self.model = service_model(endpoint.service)
        self._protocol: str = self.model.protocol
        self._signing_name: str = self.model.signing_name
        self._policies = dict(policies or {})
        self._default_policy = default_policy
        self._random = random if random is not None else _random.random
        self._attempt_limit = attempt_limit
        self._user_agent = user_agent
        self._retry_event = f"{self.model.service_name}.retry"
        self._signer: botocore.auth.SigV4Auth | None = None
        self._signer_key: FrozenCredentials | None = None
        self._urls: dict[str, httpx.URL] = {}
        self._counts: dict[str, _Counts] = {}
        self._retries_by_code: Counter[str] = Counter()

    def policy(self, operation: str) -> RetryPolicy:
        """The retry policy ``operation`` runs under."""
        return self._policies.get(operation, self._default_policy)

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            operations={
                name: OperationStatistics(counts.calls, counts.retries, counts.failures)
                for name, counts in self._counts.items()
            },
            retries_by_code=dict(self._retries_by_code),
        )

    async def call(self, operation: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Call ``operation`` with ``params`` (botocore's names and types) and
        return the parsed response, retrying as its policy says."""
        op = _operation(self.endpoint.service, operation)
        params = self._check(op, params)
        request = self._serialize(op, params)
        policy = self.policy(operation)
        counts = self._counts.setdefault(operation, _Counts())
        counts.calls += 1
        started = trio.current_time()
        spent: Counter[str] = Counter()
        number = 1
        while True:
            try:
                return await self._attempt(op, request, number)
            except (ServiceError, TransportError) as exc:
                attempt = Attempt(operation, params, number, trio.current_time() - started)
                verdict = policy.decide(exc, attempt, spent)
                if verdict is not RETRY:
                    counts.failures += 1
                    if verdict is exc:
                        raise
                    raise verdict from exc
                error: ServiceError | TransportError = exc
            except FarmhandError:  # no credentials, a bad endpoint: nothing to retry
                counts.failures += 1
                raise
            delay = policy.delay(number, getattr(error, "retry_after", None), self._random)
            counts.retries += 1
            code = error.code if isinstance(error, ServiceError) else "TransportError"
            self._retries_by_code[code] += 1
            log_method = (
                log.info if isinstance(error, ThrottlingError | ConflictError) else log.warning
            )
            log_method(
                self._retry_event,
                operation=operation,
                attempt=number,
                delay=round(delay, 3),
                code=code,
                error=str(error),
            )
            await trio.sleep(delay)
            number += 1

    # ------------------------------------------------------------------- one call

    def _check(self, op: _Operation, params: Mapping[str, Any] | None) -> dict[str, Any]:
        params = dict(params or {})
        for name in op.idempotent_members:
            if params.get(name) is None:
                # As botocore does; the same token is reused by every retry,
                # so the service can recognise a repeated request.
                params[name] = str(uuid.uuid4())
        report = _VALIDATOR.validate(params, op.model.input_shape)
        if report.has_errors():
            raise InvalidRequestError(op.name, report.generate_report())
        return params

    def _serialize(self, op: _Operation, params: Mapping[str, Any]) -> _Request:
        try:
            request: dict[str, Any] = _serializer(self._protocol).serialize_to_request(
                params, op.model
            )
        except botocore.exceptions.ParamValidationError as exc:  # e.g. a bad host label
            raise InvalidRequestError(op.name, str(exc)) from exc
        if not self.endpoint.inject_host_prefix:
            request.pop("host_prefix", None)
        try:
            botocore.awsrequest.prepare_request_dict(
                request, endpoint_url=self.endpoint.url, user_agent=self._user_agent
            )
            url = self._url(request["url"])
        except (ValueError, httpx.InvalidURL) as exc:
            raise ConfigurationError(f"unusable endpoint URL {self.endpoint.url!r}: {exc}") from exc
        headers: dict[str, str] = dict(request["headers"])
        # Signed as sent: the Host header is what httpx will put on the wire.
        headers["Host"] = url.netloc.decode("ascii")
        body = request["body"]
        if isinstance(body, Mapping):
            # The query protocols (EC2, SQS's old one) serialize to form fields;
            # botocore's request preparer encodes them just so.
            body = urllib.parse.urlencode(body, doseq=True)
        return _Request(
            request["method"],
            request["url"],
            url,
            headers,
            body.encode() if isinstance(body, str) else body,
        )

    def _url(self, text: str) -> httpx.URL:
        # Parsing URLs is a good part of httpx's per-request cost, and a worker
        # calls the same few URLs over and over.
        url = self._urls.get(text)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[text] = httpx.URL(text)
        return url

    async def _sign(self, request: _Request, number: int) -> list[tuple[str, str]]:
        frozen = await self.credentials.frozen()
        if self._signer is None or frozen != self._signer_key:
            self._signer = botocore.auth.SigV4Auth(frozen, self._signing_name, self.endpoint.region)
            self._signer_key = frozen
        aws_request = botocore.awsrequest.AWSRequest(
            method=request.method, url=request.url, data=request.body, headers=request.headers
        )
        aws_request.context = {}
        aws_request.headers["amz-sdk-request"] = f"attempt={number}"
        self._signer.add_auth(aws_request)
        return list(aws_request.headers.items())

    async def _attempt(self, op: _Operation, request: _Request, number: int) -> dict[str, Any]:
        headers = await self._sign(request, number)
        http = self._lanes.get(op.name, self._http)
        # Not content=: see _httpbody (an attempt may be cut short mid-body).
        http_request = request_with_body(
            http, request.method, request.http_url, request.body, headers=headers
        )
        response: httpx.Response | None = None
        with trio.move_on_after(self._attempt_limit):
            try:
                response = await http.send(http_request)
            except httpx.RequestError as exc:
                raise _transport_error(op.name, exc) from exc
        if response is None:
            raise TransportError(op.name, f"no answer within {self._attempt_limit:g} s")
        return self._parse(op, response)

    def _parse(self, op: _Operation, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        body = response.content
        response_dict = {
            "status_code": status,
            "headers": response.headers,
            "body": body,
            "context": {"operation_name": op.name},
        }
        parser = _parser(self._protocol)
        if status < 300:
            try:
                parsed: dict[str, Any] = parser.parse(response_dict, op.model.output_shape)
            except _PARSE_ERRORS as exc:
                raise ServiceError(
                    op.name,
                    "MalformedResponse",
                    f"unreadable response: {exc}",
                    status=status,
                    body=body,
                    request_id=_request_id(response),
                ) from exc
            return parsed
        raise self._error(op, response, response_dict, parser)

    def _error(
        self,
        op: _Operation,
        response: httpx.Response,
        response_dict: dict[str, Any],
        parser: Any,
    ) -> ServiceError:
        status = response.status_code
        fields: Mapping[str, Any] = {}
        try:
            parsed = parser.parse(response_dict, op.model.output_shape)
            error = parsed.get("Error", {})
            code = str(error.get("Code") or status)
            message = str(error.get("Message") or "")
            shape = self.model.shape_for_error_code(code)
            if shape is not None:
                fields = parser.parse(response_dict, shape)
        except _PARSE_ERRORS:
            code, message, shape = str(status), response.reason_phrase, None
        if not message:
            message = str(fields.get("message") or response.reason_phrase)
        error_class = _error_class(code, status, shape)
        return error_class(
            op.name,
            code,
            message,
            status=status,
            fields=fields,
            body=response.content,
            request_id=_request_id(response),
            retry_after=_retry_after(fields, response),
        )


def _error_class(code: str, status: int, shape: botocore.model.Shape | None) -> type[ServiceError]:
    retryable = shape.metadata.get("retryable") if shape is not None else None
    if code in _THROTTLING_CODES or status == 429:
        return ThrottlingError
    if isinstance(retryable, Mapping) and retryable.get("throttling"):
        return ThrottlingError
    if code in _SERVER_CODES or status >= 500:
        return InternalServerError
    if code in _CONFLICT_CODES or status == 409:
        return ConflictError
    if code in _NOT_FOUND_CODES or status == 404:
        return NotFoundError
    if code in _ACCESS_CODES or status in (401, 403):
        return AccessDeniedError
    if code in _VALIDATION_CODES:
        return ValidationError
    return ServiceError


def _retry_after(fields: Mapping[str, Any], response: httpx.Response) -> float | None:
    # The model puts ``retryAfterSeconds`` in the Retry-After header (botocore
    # parses it into ``fields``); some servers put it in the JSON body instead.
    value = fields.get("retryAfterSeconds")
    if value is None:
        value = response.headers.get("retry-after")
    if value is None and response.content.startswith(b"{"):
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if isinstance(body, dict):
            value = body.get("retryAfterSeconds")
    try:
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):  # an HTTP date: not worth parsing for a lower bound
        return None
    return seconds if seconds is not None and seconds >= 0 else None


def _request_id(response: httpx.Response) -> str | None:
    value: str | None = response.headers.get("x-amzn-requestid") or response.headers.get(
        "x-amz-request-id"
    )
    return value


def _transport_error(operation: str, exc: httpx.RequestError) -> TransportError:
    # Only a failure to connect proves the request never left; anything later
    # (a reset, a read timeout) may have reached the server.
    sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    transient = not isinstance(exc, httpx.UnsupportedProtocol)
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return TransportError(operation, message, sent=sent, transient=transient)
