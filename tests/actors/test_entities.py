"""Parsing Deadline job entities into OpenJD objects, strictly."""

from __future__ import annotations

from typing import Any

import pytest
from openjd.model import ParameterValue, ParameterValueType

from actors._entities import (
    EntityError,
    key_of,
    parse_environment_details,
    parse_job_details,
    parse_step_details,
    task_parameters_from_wire,
    validate,
)

JOB = "job-" + "b" * 32


def job_details(**fields: Any) -> dict[str, Any]:
    return {
        "jobId": JOB,
        "logGroupName": "/aws/deadline/farm/queue",
        "schemaVersion": "jobtemplate-2023-09",
        **fields,
    }


def test_job_details_parameters_rules_and_user() -> None:
    """jobDetails gives typed parameters, path-mapping rules and the run-as user."""
    data = job_details(
        parameters={
            "Frames": {"string": "1-10"},
            "Scene": {"path": "/studio/a.ma"},
            "Count": {"int": "4"},
            "Gain": {"float": "0.5"},
            "Denoise": {"bool": "Yes"},
            "Flags": {"boolList": [True, "off"]},
        },
        pathMappingRules=[
            {
                "sourcePathFormat": "windows",
                "sourcePath": "Z:\\proj",
                "destinationPath": "/mnt/proj",
            }
        ],
        jobRunAsUser={
            "runAs": "QUEUE_CONFIGURED_USER",
            "posix": {"user": "render", "group": "render"},
        },
        queueRoleArn="arn:aws:iam::123456789012:role/q",
    )
    validate("jobDetails", data)
    details = parse_job_details(data)
    assert details.parameters["Count"] == ParameterValue(type=ParameterValueType.INT, value="4")
    assert details.parameters["Denoise"].value is True
    assert details.parameters["Flags"].value == [True, False]
    assert details.path_mapping_rules[0].apply(path="Z:\\proj\\x.ma") == (True, "/mnt/proj/x.ma")
    assert (details.run_as, details.posix_user, details.posix_group) == (
        "QUEUE_CONFIGURED_USER",
        "render",
        "render",
    )
    assert details.log_group_name == "/aws/deadline/farm/queue"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"parameters": {"X": {"int": 4}}}, "parameters.X: a int value must be string"),
        ({"parameters": {"X": {"nope": "1"}}}, "unknown parameter type 'nope'"),
        ({"parameters": {"X": {"bool": "maybe"}}}, "not a boolean"),
        ({"jobRunAsUser": {"runAs": "ROOT"}}, "unknown value 'ROOT'"),
        (
            {"jobRunAsUser": {"posix": {"user": "u"}, "runAs": "QUEUE_CONFIGURED_USER"}},
            "posix.group: required field missing",
        ),
        ({"logGroupName": 5}, "logGroupName: expected string"),
        ({"extra": True}, "unexpected field(s) extra"),
    ],
)
def test_job_details_validation_names_the_problem(fields: dict[str, Any], message: str) -> None:
    """A malformed jobDetails is refused with the offending field in the message."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate("jobDetails", job_details(**fields))


def test_unsupported_schema_and_extensions_are_entity_errors() -> None:
    """An unknown schema version or extension is an EntityError for that entity."""
    with pytest.raises(EntityError, match="UnsupportedSchema"):
        parse_job_details(job_details(schemaVersion="jobtemplate-2099-01"))
    with pytest.raises(EntityError, match="WRAP_ACTIONS"):
        parse_job_details(job_details(extensions=["WRAP_ACTIONS"]))


def test_step_details_with_and_without_a_name() -> None:
    """stepDetails templates parse whether the service sends the whole step or its script."""
    script = {"actions": {"onRun": {"command": "echo", "args": ["{{Task.Param.F}}"]}}}
    named = {
        "jobId": JOB,
        "stepId": "step-1",
        "schemaVersion": "jobtemplate-2023-09",
        "template": {
            "name": "Render",
            "script": script,
            "parameterSpace": {
                "taskParameterDefinitions": [{"name": "F", "type": "INT", "range": "1-3"}]
            },
        },
        "dependencies": ["step-0"],
    }
    validate("stepDetails", named)
    parsed = parse_step_details(named)
    assert parsed.template.name == "Render"
    assert parsed.dependencies == ("step-0",)
    bare = {**named, "template": script}
    bare_script = parse_step_details(bare).template.script
    assert bare_script is not None
    assert bare_script.actions.onRun.command == "echo"


def test_bad_step_template_is_an_entity_error() -> None:
    """A template openjd-model rejects fails with its message."""
    data = {
        "jobId": JOB,
        "stepId": "s",
        "schemaVersion": "jobtemplate-2023-09",
        "template": {"name": "S", "script": {"actions": {}}},
    }
    with pytest.raises(EntityError, match="ValidationFailed"):
        parse_step_details(data)


def test_environment_details_from_queue_or_job() -> None:
    """environmentDetails parse with either schema version."""
    for schema in ("jobtemplate-2023-09", "environment-2023-09"):
        data = {
            "jobId": JOB,
            "environmentId": "JOB:env",
            "schemaVersion": schema,
            "template": {"name": "Env", "variables": {"A": "1"}},
        }
        validate("environmentDetails", data)
        assert parse_environment_details(data).environment.name == "Env"


def test_keys_and_task_parameters() -> None:
    """Identifiers, entities and errors map to the same key; task parameters are typed."""
    assert key_of({"stepDetails": {"jobId": JOB, "stepId": "s"}}) == ("stepDetails", JOB, "s")
    assert key_of({"stepDetails": {"jobId": JOB, "stepId": "s", "code": "X", "message": "m"}}) == (
        "stepDetails",
        JOB,
        "s",
    )
    assert key_of({"jobAttachmentDetails": {"jobId": JOB}}) == ("jobAttachmentDetails", JOB, "")
    params = task_parameters_from_wire({"F": {"int": "3"}, "C": {"chunkInt": "1-5"}})
    assert params["F"] == ParameterValue(type=ParameterValueType.INT, value="3")
    assert params["C"].type is ParameterValueType.CHUNK_INT
    with pytest.raises(ValueError, match="exactly one entity kind"):
        key_of({"stepDetails": {}, "jobDetails": {}})
