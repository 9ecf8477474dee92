"""The error hierarchy: its shape matches the tree its docstring draws, and errors read well."""

from __future__ import annotations

import re

import pytest

from agent import _errors
from agent._errors import (
    ConflictError,
    FarmhandError,
    InvalidRequestError,
    NotFoundError,
    RetriesExhausted,
    ServiceError,
    ThrottlingError,
    TransportError,
    UnrecoverableError,
    WorkerNotFound,
    WorkerOffline,
)


def _drawn_tree() -> dict[str, str]:
    """``{class name: parent name}`` as the module docstring draws it."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (_errors.__doc__ or "").splitlines():
        match = re.match(r"^    (?:[│ ]   )*(?:[├└]── )?([A-Z]\w+)(?:\s|$)", line)
        if not match:
            continue
        name = match.group(1)
        depth = match.start(1) // 4  # the tree indents four columns a level
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def test_docstring_draws_every_public_error_with_its_parent() -> None:
    """Each public exception class appears in the docstring's tree under its real base class."""
    drawn = _drawn_tree()
    classes = {
        name: cls
        for name, cls in vars(_errors).items()
        if isinstance(cls, type) and issubclass(cls, Exception) and not name.startswith("_")
    }
    assert set(drawn) | {"FarmhandError"} == set(classes)
    for name, parent in drawn.items():
        assert issubclass(classes[name], classes[parent]), (name, parent)


def test_everything_is_a_farmhand_error() -> None:
    """Callers can catch FarmhandError for anything farmhand raises on purpose."""
    for cls in (ThrottlingError, TransportError, RetriesExhausted, WorkerOffline, WorkerNotFound):
        assert issubclass(cls, FarmhandError)


def test_errors_from_templates_and_adapters_are_farmhand_errors() -> None:
    """Template errors, the adapters' configuration errors (one class: the agent's) and
    the HTTP queue client's server errors sit in the one hierarchy."""
    from agent import ConfigurationError
    from agent.local._templates import TemplateError
    from contrib.ephemeral import ConfigError as EphemeralConfigError
    from contrib.grpcagent import ConfigError as GrpcConfigError
    from contrib.httpqueue import ConfigError as QueueConfigError
    from contrib.httpqueue._queueclient import ServerError

    assert EphemeralConfigError is GrpcConfigError is QueueConfigError is ConfigurationError
    for cls in (TemplateError, ConfigurationError, ServerError):
        assert issubclass(cls, FarmhandError), cls


def test_service_error_reads_its_fields() -> None:
    """A ServiceError keeps operation, code, status, reason and the raw body, and says them."""
    exc = ConflictError(
        "UpdateWorkerSchedule",
        "ConflictException",
        "The worker is not online",
        status=409,
        fields={
            "reason": "STATUS_CONFLICT",
            "resourceId": "worker-1",
            "resourceType": "worker",
            "context": {"status": "NOT_RESPONDING"},
        },
        body=b"{...}",
        request_id="r-1",
    )
    assert str(exc) == (
        "UpdateWorkerSchedule: ConflictException (HTTP 409, STATUS_CONFLICT): The worker is not online"
    )
    assert (exc.reason, exc.resource_id, exc.resource_type, exc.resource_status) == (
        "STATUS_CONFLICT",
        "worker-1",
        "worker",
        "NOT_RESPONDING",
    )
    assert (exc.body, exc.request_id, exc.retry_after) == (b"{...}", "r-1", None)


def test_resource_fields_tolerate_odd_values() -> None:
    """Non-string ids and a non-mapping context do not break a resource error."""
    exc = NotFoundError(
        "Op",
        "ResourceNotFoundException",
        "gone",
        status=404,
        fields={"resourceId": 7, "context": []},
    )
    assert (exc.resource_id, exc.context, exc.reason) == (None, {}, None)
    assert str(exc) == "Op: ResourceNotFoundException (HTTP 404): gone"


def test_retries_exhausted_names_the_last_error() -> None:
    """RetriesExhausted says how many attempts were made and what failed last."""
    last = TransportError("UpdateWorkerSchedule", "ConnectError: refused", sent=False)
    exc = RetriesExhausted("UpdateWorkerSchedule", 6, last)
    assert exc.last_error is last
    assert str(exc) == (
        "UpdateWorkerSchedule: gave up after 6 attempts: UpdateWorkerSchedule: ConnectError: refused"
    )


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (
            WorkerOffline("UpdateWorkerSchedule", "worker-1", "NOT_RESPONDING"),
            "UpdateWorkerSchedule: the farm says worker worker-1 is not online (status NOT_RESPONDING)",
        ),
        (
            WorkerOffline("UpdateWorker", "worker-1", None),
            "UpdateWorker: the farm says worker worker-1 is not online",
        ),
        (
            WorkerNotFound("UpdateWorker", "worker-1"),
            "UpdateWorker: the farm no longer knows worker worker-1",
        ),
    ],
)
def test_worker_errors_are_unrecoverable_and_say_why(exc: UnrecoverableError, text: str) -> None:
    """WorkerOffline and WorkerNotFound are UnrecoverableErrors with a plain message."""
    assert isinstance(exc, UnrecoverableError)
    assert str(exc) == text


def test_invalid_request_is_a_value_error() -> None:
    """InvalidRequestError is also a ValueError: it is a bug in the caller's parameters."""
    exc = InvalidRequestError("BatchGetJobEntity", "Invalid length for parameter identifiers")
    assert isinstance(exc, ValueError)
    assert not isinstance(exc, ServiceError)
    assert str(exc) == (
        "BatchGetJobEntity: invalid parameters: Invalid length for parameter identifiers"
    )
