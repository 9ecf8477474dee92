"""The errors the mock farm answers with, in the services' own vocabulary.

Every failure a handler wants the client to see is an ``ApiError``: the error
shape's name (``code``), a message, and the shape's other members (``reason``,
``retryAfterSeconds``, ``resourceId``, ...). The codec turns it into the wire
form of the service that was called: for Deadline (rest-json) the
``x-amzn-ErrorType`` header, a JSON body with the members and the HTTP status
from the model's ``error.httpStatusCode``; for CloudWatch Logs (JSON 1.1) a
``__type`` member and status 400 (500 for server faults).

The helpers below build the Deadline shapes with their required members::

    ApiError
    ├── validation(...)          ValidationException            400
    ├── not_found(...)           ResourceNotFoundException      404
    ├── access_denied(...)       AccessDeniedException          403
    ├── conflict(...)            ConflictException              409
    ├── throttled(...)           ThrottlingException            429
    └── internal(...)            InternalServerErrorException   500
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ApiError(Exception):
    """An error response: the error shape's name, its message and other members."""

    def __init__(
        self, code: str, message: str, *, status: int | None = None, **members: Any
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        #: ``None``: take the status from the service model's error shape.
        self.status = status
        self.members = {name: value for name, value in members.items() if value is not None}


def validation(
    message: str,
    *,
    reason: str = "FIELD_VALIDATION_FAILED",
    fields: Sequence[tuple[str, str]] = (),
) -> ApiError:
    """``ValidationException``; ``fields`` are ``(name, message)`` pairs for ``fieldList``."""
    field_list = [{"name": name, "message": text} for name, text in fields] or None
    return ApiError("ValidationException", message, reason=reason, fieldList=field_list)


def not_found(resource_type: str, resource_id: str, message: str | None = None) -> ApiError:
    return ApiError(
        "ResourceNotFoundException",
        message or f"The {resource_type} {resource_id!r} does not exist.",
        resourceType=resource_type,
        resourceId=resource_id,
    )


def access_denied(message: str) -> ApiError:
    return ApiError("AccessDeniedException", message)


def conflict(
    reason: str,
    resource_type: str,
    resource_id: str,
    message: str,
    *,
    status: str | None = None,
) -> ApiError:
    """``ConflictException``; ``status`` goes into ``context.status`` as the service does."""
    return ApiError(
        "ConflictException",
        message,
        reason=reason,
        resourceType=resource_type,
        resourceId=resource_id,
        context={"status": status} if status is not None else None,
    )


def throttled(
    message: str = "Rate exceeded", *, retry_after_seconds: int | None = None
) -> ApiError:
    return ApiError("ThrottlingException", message, retryAfterSeconds=retry_after_seconds)


def internal(
    message: str = "Internal server error", *, retry_after_seconds: int | None = None
) -> ApiError:
    return ApiError("InternalServerErrorException", message, retryAfterSeconds=retry_after_seconds)
