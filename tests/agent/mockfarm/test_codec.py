"""The mock farm's model-driven codec and its fault config."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent._servicemodels import service_model
from agent.deadline import service_model as client_model
from agent.mockfarm import ApiError, Farm, FaultConfig, OperationFaults
from agent.mockfarm._codec import _build_service, deadline_codec, logs_codec
from agent.mockfarm._faults import FaultInjector
from agent.mockfarm._shapes import CompilerStatistics

FARM = "farm-" + "a" * 32
FLEET = "fleet-" + "b" * 32
WORKER = "worker-" + "c" * 32
ACTION = "sessionaction-" + "d" * 32 + "-0"


def parse(
    operation: str, labels: dict[str, str], body: object, query: bytes = b""
) -> dict[str, object]:
    codec = deadline_codec()
    return codec.operations[operation].parse(labels, query, [], json.dumps(body).encode())


def test_every_handler_is_a_model_operation() -> None:
    """Each Deadline handler is named after an operation of botocore's model."""
    assert set(Farm().handlers) <= set(deadline_codec().operations)


def test_routes_come_from_the_model_uris() -> None:
    """Every operation is found from its own URI, labels decoded."""
    codec = deadline_codec()
    assert codec.router is not None
    for name, operation in codec.operations.items():
        http = codec.model.operation_model(name).http
        path = http["requestUri"].split("?")[0]
        filled = path.replace("{", "x-").replace("}", "")
        found = codec.router.match(http["method"], filled.encode())
        assert found is not None and found[0] is operation, name
    match = codec.router.match(
        "PATCH", f"/2023-10-12/farms/{FARM}/fleets/{FLEET}/workers/{WORKER}/schedule".encode()
    )
    assert match is not None
    assert match[0].name == "UpdateWorkerSchedule"
    assert match[1] == {"farmId": FARM, "fleetId": FLEET, "workerId": WORKER}


def test_one_model_is_shared_and_operations_compile_when_first_used() -> None:
    """The farm's codec and the worker's clients read one parsed model (issue 16); a
    codec compiles nothing until an operation is called, then only what it uses."""
    assert deadline_codec().model is service_model("deadline") is client_model("deadline")
    assert logs_codec().model is service_model("logs") is client_model("logs")
    codec = _build_service("deadline")
    assert codec.compiler.statistics() == CompilerStatistics(validators=0, serializers=0)
    assert set(codec.operations) == set(codec.model.operation_names)
    assert "UpdateWorkerSchedule" in codec.operations and "NoSuchOperation" not in codec.operations
    operation = codec.operations["UpdateWorkerSchedule"]
    assert codec.operations["UpdateWorkerSchedule"] is operation
    params = operation.parse({"farmId": FARM, "fleetId": FLEET, "workerId": WORKER}, b"", [], b"{}")
    assert params == {"farmId": FARM, "fleetId": FLEET, "workerId": WORKER}
    compiled = codec.compiler.statistics()
    assert 0 < compiled.validators < len(codec.model.shape_names) / 4
    assert compiled.serializers == 0
    codec.encode_output(
        operation, {"assignedSessions": {}, "cancelSessionActions": {}, "updateIntervalSeconds": 15}
    )
    assert codec.compiler.statistics().serializers > 0
    with pytest.raises(KeyError):
        codec.operations["NoSuchOperation"]


def test_valid_requests_parse_with_timestamps_converted() -> None:
    """ISO 8601 and epoch timestamps become aware datetimes; unknown members are ignored."""
    parsed = parse(
        "UpdateWorkerSchedule",
        {"farmId": FARM, "fleetId": FLEET, "workerId": WORKER},
        {
            "updatedSessionActions": {
                ACTION: {
                    "completedStatus": "SUCCEEDED",
                    "startedAt": "2026-01-02T03:04:05.5Z",
                    "endedAt": 1767323046,
                    "someFutureField": 1,
                    "progressMessage": None,
                }
            },
            "alsoUnknown": True,
        },
    )
    info = parsed["updatedSessionActions"][ACTION]  # type: ignore[index]
    assert info == {
        "completedStatus": "SUCCEEDED",
        "startedAt": datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC),
        "endedAt": datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
    }
    assert "alsoUnknown" not in parsed


@pytest.mark.parametrize(
    ("body", "reason", "field", "fragment"),
    [
        (
            {"identifiers": []},
            "FIELD_VALIDATION_FAILED",
            "identifiers",
            "greater than or equal to 1",
        ),
        ({}, "FIELD_VALIDATION_FAILED", "identifiers", "must not be null"),
        ({"identifiers": [{}]}, "FIELD_VALIDATION_FAILED", "identifiers[0]", "exactly one of"),
        (
            {"identifiers": [{"jobDetails": {"jobId": "job-1"}}]},
            "FIELD_VALIDATION_FAILED",
            "identifiers[0].jobDetails.jobId",
            "regular expression pattern: job-[0-9a-f]{32}",
        ),
        ({"identifiers": "all"}, "CANNOT_PARSE", "identifiers", "must be an array"),
    ],
)
def test_constraint_violations_are_validation_exceptions(
    body: object, reason: str, field: str, fragment: str
) -> None:
    """Lengths, required members, unions, patterns and types are checked by the model."""
    with pytest.raises(ApiError) as caught:
        parse("BatchGetJobEntity", {"farmId": FARM, "fleetId": FLEET, "workerId": WORKER}, body)
    error = caught.value
    assert error.code == "ValidationException"
    assert error.members["reason"] == reason
    assert error.members["fieldList"][0]["name"] == field
    assert fragment in error.message


def test_enums_and_ranges_are_checked() -> None:
    """Enum values and numeric ranges are validated, all problems reported."""
    with pytest.raises(ApiError) as caught:
        parse(
            "UpdateWorkerSchedule",
            {"farmId": FARM, "fleetId": FLEET, "workerId": WORKER},
            {
                "updatedSessionActions": {
                    ACTION: {"completedStatus": "DONE", "progressPercent": 101}
                }
            },
        )
    assert caught.value.message.startswith("2 validation errors detected: ")
    names = [f["name"] for f in caught.value.members["fieldList"]]
    assert names == [
        f"updatedSessionActions[{ACTION}].completedStatus",
        f"updatedSessionActions[{ACTION}].progressPercent",
    ]


def test_query_members_are_typed() -> None:
    """Querystring members are converted to their shape's type."""
    codec = deadline_codec()
    operation = codec.operations["ListJobs"]
    parsed = operation.parse(
        {"farmId": FARM, "queueId": "queue-" + "e" * 32}, b"maxResults=5", [], b""
    )
    assert parsed["maxResults"] == 5
    with pytest.raises(ApiError) as caught:
        operation.parse(
            {"farmId": FARM, "queueId": "queue-" + "e" * 32}, b"maxResults=lots", [], b""
        )
    assert caught.value.members["reason"] == "CANNOT_PARSE"


def test_outputs_are_serialized_from_the_model() -> None:
    """None is omitted, timestamps are ISO 8601, members outside the shape are bugs."""
    codec = deadline_codec()
    operation = codec.operations["GetFarm"]
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    output = {
        "farmId": FARM,
        "displayName": "x",
        "createdAt": created,
        "createdBy": "me",
        "costScaleFactor": 1.0,
        "description": None,
    }
    assert json.loads(codec.encode_output(operation, output)) == {
        "farmId": FARM,
        "displayName": "x",
        "createdAt": "2026-01-02T03:04:05.000000Z",
        "createdBy": "me",
        "costScaleFactor": 1.0,
    }
    with pytest.raises(ValueError, match="no member 'extra'"):
        codec.encode_output(operation, {**output, "extra": 1})
    with pytest.raises(ValueError, match="required member 'farmId'"):
        codec.encode_output(operation, {k: v for k, v in output.items() if k != "farmId"})


def test_error_members_follow_their_shape() -> None:
    """retryAfterSeconds is the Retry-After header; other members go in the body."""
    codec = deadline_codec()
    error = ApiError("ThrottlingException", "slow down", retryAfterSeconds=3, quotaCode="q")
    status, headers, body = codec.error_response(error)
    assert status == 429
    assert (b"retry-after", b"3") in [(k.lower(), v) for k, v in headers]
    assert json.loads(body) == {"message": "slow down", "quotaCode": "q"}
    status, headers, body = logs_codec().error_response(
        ApiError("ResourceNotFoundException", "gone")
    )
    assert status == 400
    assert json.loads(body) == {"message": "gone", "__type": "ResourceNotFoundException"}


def test_fault_configs_load_from_documents(tmp_path: Path) -> None:
    """The document form round-trips; unknown settings and bad rates are rejected."""
    document = {
        "seed": 3,
        "default": {"latency": 0.01},
        "operations": {"UpdateWorkerSchedule": {"throttle_rate": 0.2, "retry_after_seconds": 2}},
        "offline_workers": [WORKER],
    }
    path = tmp_path / "faults.yaml"
    path.write_text(json.dumps(document))
    config = FaultConfig.from_file(path)
    assert config.for_operation("UpdateWorkerSchedule") == OperationFaults(
        throttle_rate=0.2, retry_after_seconds=2
    )
    assert config.for_operation("GetJob") == OperationFaults(latency=0.01)
    assert FaultConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown setting"):
        FaultConfig.from_dict({"operations": {"GetJob": {"throttle": 1}}})
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultConfig.from_dict({"default": {"error_rate": 2}})
    with pytest.raises(ValueError, match="conflict_reason"):
        OperationFaults(conflict_reason="NOPE")


def test_fault_draws_are_seeded_per_operation() -> None:
    """Each operation's draws depend only on the seed and its own calls."""
    config = FaultConfig(seed=9, default=OperationFaults(error_rate=0.5))

    def draws(interleave: bool) -> list[bool]:
        injector = FaultInjector(config)
        out = []
        for _ in range(30):
            if interleave:
                injector.decide("ListJobs", None)
            out.append(injector.decide("GetJob", None).error is not None)
        return out

    assert draws(False) == draws(True)
    assert 0 < sum(draws(False)) < 30
