"""Farmhand's errors: one small hierarchy, translated once at the edge.

Library errors (httpx, botocore) never leave the client layer; they become one
of these, chained with ``raise ... from exc``::

    FarmhandError
    ├── ConfigurationError         the setup cannot work (no region, bad endpoint URL)
    ├── CredentialsError           nothing to sign with, or refreshing credentials failed
    ├── InvalidRequestError        parameters break the service model; nothing was sent
    ├── JobSpecError               a job (template, parameters, command) cannot be run as given
    ├── TransportError             no HTTP answer: connect, read, protocol, no answer in time
    ├── ServiceError               the service answered with an error
    │   ├── ThrottlingError        429 and Throttling* codes: slow down
    │   ├── InternalServerError    5xx: the service failed
    │   ├── ConflictError          409 (``reason``, ``resource_id``, ``context``)
    │   ├── NotFoundError          404 (``resource_id``, ``resource_type``)
    │   ├── AccessDeniedError      403 and rejected credentials
    │   └── ValidationError        400: the service rejected the request
    ├── RetriesExhausted           a bounded retry budget ran out (``last_error``)
    ├── InstanceProfileAttached    --disallow-instance-profile, and the profile stays
    └── UnrecoverableError         the farm has given up on this worker
        ├── WorkerOffline          STATUS_CONFLICT on the worker: it is not online
        └── WorkerNotFound         the farm no longer knows the worker

Everything the clients raise is final for that call: retryable failures have
already been retried as the operation's policy allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class FarmhandError(Exception):
    """Base class of every error farmhand raises on purpose."""


class InstanceProfileAttached(FarmhandError):
    """``--disallow-instance-profile``, and the EC2 instance profile stayed attached."""


class ConfigurationError(FarmhandError):
    """The configuration cannot work, e.g. no AWS region or an unusable endpoint URL."""


class CredentialsError(FarmhandError):
    """There are no credentials to sign requests with, or refreshing them failed."""


class InvalidRequestError(FarmhandError, ValueError):
    """The parameters do not fit the service model; nothing was sent (a bug in the caller)."""

    def __init__(self, operation: str, report: str) -> None:
        super().__init__(f"{operation}: invalid parameters: {report}")
        self.operation = operation
        self.report = report


class JobSpecError(FarmhandError, ValueError):
    """A job spec cannot be run as given: a bad template, parameter or command. One line."""


class TransportError(FarmhandError):
    """The request got no HTTP answer.

    ``sent`` is false when the request certainly never reached the server (the
    connection could not be made). ``transient`` is false for failures that a
    retry cannot fix, such as an unsupported URL scheme.
    """

    def __init__(
        self, operation: str, message: str, *, sent: bool = True, transient: bool = True
    ) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.sent = sent
        self.transient = transient


class ServiceError(FarmhandError):
    """The service answered with an error.

    ``code`` is the error shape's name (``ConflictException``), ``fields`` its
    modeled members as botocore parses them, ``body`` the raw response body.
    """

    def __init__(
        self,
        operation: str,
        code: str,
        message: str,
        *,
        status: int,
        fields: Mapping[str, Any] | None = None,
        body: bytes = b"",
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.operation = operation
        self.code = code
        self.message = message
        self.status = status
        self.fields: Mapping[str, Any] = dict(fields or {})
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after
        self.reason: str | None = _str_or_none(self.fields.get("reason"))
        super().__init__(self._describe())

    def _describe(self) -> str:
        reason = f", {self.reason}" if self.reason else ""
        return f"{self.operation}: {self.code} (HTTP {self.status}{reason}): {self.message}"


class ThrottlingError(ServiceError):
    """The service asks the caller to slow down (429, ``ThrottlingException``)."""


class InternalServerError(ServiceError):
    """The service failed (5xx, ``InternalServerErrorException``)."""


class _ResourceError(ServiceError):
    """An error about one resource: ``resource_id``, ``resource_type`` and ``context``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resource_id: str | None = _str_or_none(self.fields.get("resourceId"))
        self.resource_type: str | None = _str_or_none(self.fields.get("resourceType"))
        context = self.fields.get("context")
        self.context: Mapping[str, Any] = dict(context) if isinstance(context, Mapping) else {}


class ConflictError(_ResourceError):
    """The request conflicts with the resource's state (409, ``ConflictException``).

    ``reason`` is one of the model's reasons (``STATUS_CONFLICT``,
    ``CONCURRENT_MODIFICATION``, ``RESOURCE_ALREADY_EXISTS``, ...); for a
    status conflict ``resource_status`` is the resource's current status.
    """

    @property
    def resource_status(self) -> str | None:
        return _str_or_none(self.context.get("status"))


class NotFoundError(_ResourceError):
    """The resource does not exist (404, ``ResourceNotFoundException``)."""


class AccessDeniedError(ServiceError):
    """The credentials may not do this, or were rejected (403)."""


class ValidationError(ServiceError):
    """The service rejected the request as malformed (400, ``ValidationException``)."""


class RetriesExhausted(FarmhandError):
    """A bounded retry budget ran out; ``last_error`` (also ``__cause__``) is the last failure."""

    def __init__(self, operation: str, attempts: int, last_error: Exception) -> None:
        super().__init__(f"{operation}: gave up after {attempts} attempts: {last_error}")
        self.operation = operation
        self.attempts = attempts
        self.last_error = last_error


class UnrecoverableError(FarmhandError):
    """The farm has given up on this worker; the agent must stop or start over."""


class WorkerOffline(UnrecoverableError):
    """A ``STATUS_CONFLICT`` on the worker: the farm does not count it as online.

    ``status`` is the worker's status as the farm reports it (``STOPPING``,
    ``NOT_RESPONDING``, ...), when it says.
    """

    def __init__(self, operation: str, worker_id: str, status: str | None) -> None:
        state = f" (status {status})" if status else ""
        super().__init__(f"{operation}: the farm says worker {worker_id} is not online{state}")
        self.operation = operation
        self.worker_id = worker_id
        self.status = status


class WorkerNotFound(UnrecoverableError):
    """The farm no longer knows the worker: it was deleted."""

    def __init__(self, operation: str, worker_id: str) -> None:
        super().__init__(f"{operation}: the farm no longer knows worker {worker_id}")
        self.operation = operation
        self.worker_id = worker_id


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
