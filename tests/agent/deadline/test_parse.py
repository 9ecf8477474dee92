"""The compiled response parsers return exactly what botocore's parsers return."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import botocore.model
import botocore.parsers
import pytest

from agent.deadline import service_model
from agent.deadline._parse import create_parser


def sample(shape: botocore.model.Shape, rng: random.Random, depth: int = 0) -> Any:
    """A body value for ``shape``, with the odd null, unknown member and unknown union tag."""
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(shape, botocore.model.StructureShape)
        if shape.is_document_type:
            return {"any": [1, "two", None]}
        members = list(shape.members.items())
        if shape.is_tagged_union:
            if rng.random() < 0.15:
                return {"someFutureMember": {"x": 1}}
            name, member = rng.choice(members)
            return {member.serialization.get("name", name): sample(member, rng, depth + 1)}
        value: dict[str, Any] = {}
        for name, member in members:
            if depth > 6 or member.serialization.get("location"):
                continue
            roll = rng.random()
            if roll < 0.1:
                value[member.serialization.get("name", name)] = None
            elif roll < 0.85:
                value[member.serialization.get("name", name)] = sample(member, rng, depth + 1)
        if rng.random() < 0.2:
            value["unknownToTheModel"] = "ignored"
        return value
    if kind == "list":
        assert isinstance(shape, botocore.model.ListShape)
        return [
            None if rng.random() < 0.05 else sample(shape.member, rng, depth + 1)
            for _ in range(rng.randint(0, 3) if depth < 6 else 0)
        ]
    if kind == "map":
        assert isinstance(shape, botocore.model.MapShape)
        return {
            f"k{i}": sample(shape.value, rng, depth + 1)
            for i in range(rng.randint(0, 3) if depth < 6 else 0)
        }
    if kind == "timestamp":
        return rng.choice([1_700_000_000.25, "2026-11-24T15:54:01.123Z", 1_700_000_000])
    if kind == "blob":
        return base64.b64encode(b"bytes").decode()
    if kind == "boolean":
        return rng.choice([True, False])
    if kind in ("integer", "long"):
        return rng.randint(-5, 10_000)
    if kind in ("float", "double"):
        return rng.choice([1.5, 3, -0.25])
    return rng.choice(["text", "ünïcode", ""])


def parse_both(protocol: str, shape: botocore.model.Shape, body: Any) -> tuple[Any, Any]:
    response = {
        "status_code": 200,
        "headers": {"x-amzn-requestid": "req-1"},
        "body": json.dumps(body).encode(),
        "context": {"operation_name": "Test"},
    }
    ours = create_parser(protocol).parse(dict(response), shape)
    theirs = botocore.parsers.create_parser(protocol).parse(dict(response), shape)
    return ours, theirs


@pytest.mark.parametrize("service", ["deadline", "logs"])
def test_every_output_shape_parses_as_botocore_parses_it(service: str) -> None:
    """For every operation of both models, random bodies parse to botocore's result."""
    model = service_model(service)
    protocol = model.metadata["protocol"]
    rng = random.Random(f"{service}-parse")
    checked = 0
    for operation in model.operation_names:
        shape = model.operation_model(operation).output_shape
        if shape is None or shape.event_stream_name:
            continue  # event streams are not JSON bodies (and no worker call has one)
        for _ in range(5):
            body = sample(shape, rng)
            try:
                ours, theirs = parse_both(protocol, shape, body)
            except botocore.parsers.ResponseParserError:
                with pytest.raises(botocore.parsers.ResponseParserError):
                    create_parser(protocol).parse(
                        {"status_code": 200, "headers": {}, "body": json.dumps(body).encode()},
                        shape,
                    )
                continue
            assert ours == theirs, operation
            checked += 1
    assert checked > 100


def test_assigned_sessions_parse_as_botocore_parses_them() -> None:
    """An UpdateWorkerSchedule answer with many actions, the call this is for."""
    shape = service_model("deadline").operation_model("UpdateWorkerSchedule").output_shape
    actions = [
        {
            "sessionActionId": f"sessionaction-{'a' * 32}-{n}",
            "definition": {
                "taskRun": {"stepId": "s", "taskId": "t", "parameters": {"F": {"int": str(n)}}}
            },
        }
        for n in range(64)
    ]
    body = {
        "assignedSessions": {
            "session-1": {
                "queueId": "q",
                "jobId": "j",
                "sessionActions": actions,
                "logConfiguration": {"logDriver": "awslogs", "options": {}, "parameters": {}},
            }
        },
        "cancelSessionActions": {"session-1": ["x"]},
        "updateIntervalSeconds": 15,
        "desiredWorkerStatus": None,
    }
    ours, theirs = parse_both("rest-json", shape, body)
    assert ours == theirs
    assert "desiredWorkerStatus" not in ours
