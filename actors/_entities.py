"""Deadline job entities: identifiers, strict validation, and parsing into OpenJD.

``BatchGetJobEntity`` returns four kinds of entity. Each is checked field by
field (required fields present, types right, no unknown fields, as the worker
API contract asks) and then turned into openjd-model objects:

- ``jobDetails``: job parameters, path-mapping rules, the run-as user, the log
  group, the queue role, the declared extensions;
- ``stepDetails``: the step's template (script) and dependencies;
- ``environmentDetails``: an environment of the queue, the job or a step;
- ``jobAttachmentDetails``: the job's attachments (input manifests, output directories).

A problem is an ``EntityError`` naming the entity and the field, so the one
action that needed the entity fails with a message a person can act on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from openjd.expr import PathMappingRule, SerializedSymbolTable
from openjd.model import (
    DecodeValidationError,
    ParameterValue,
    ParameterValueType,
    TaskParameterSet,
    parse_model,
)
from openjd.model.v2023_09 import Environment, StepTemplate

from ._openjd import SUPPORTED_EXTENSIONS

EntityKey = tuple[str, ...]

JOB_SCHEMA = "jobtemplate-2023-09"
ENVIRONMENT_SCHEMA = "environment-2023-09"


class EntityError(Exception):
    """An entity could not be fetched, or is not what the contract says."""

    def __init__(self, key: EntityKey, code: str, message: str) -> None:
        super().__init__(f"{describe_key(key)}: {code}: {message}")
        self.key = key
        self.code = code
        self.message = message


def describe_key(key: EntityKey) -> str:
    kind, *ids = key
    return f"{kind}({', '.join(i for i in ids if i)})"


# ------------------------------------------------------------------ identifiers


def job_details_id(job_id: str) -> dict[str, Any]:
    return {"jobDetails": {"jobId": job_id}}


def step_details_id(job_id: str, step_id: str) -> dict[str, Any]:
    return {"stepDetails": {"jobId": job_id, "stepId": step_id}}


def job_attachment_details_id(job_id: str) -> dict[str, Any]:
    return {"jobAttachmentDetails": {"jobId": job_id}}


def environment_details_id(job_id: str, environment_id: str) -> dict[str, Any]:
    return {"environmentDetails": {"jobId": job_id, "environmentId": environment_id}}


_ID_FIELDS = {
    "jobDetails": ("jobId",),
    "stepDetails": ("jobId", "stepId"),
    "environmentDetails": ("jobId", "environmentId"),
    "jobAttachmentDetails": ("jobId", "stepId"),
}


def key_of(wrapper: Mapping[str, Any]) -> EntityKey:
    """The cache key of an identifier, an entity or an error: ``(kind, ids...)``."""
    if len(wrapper) != 1:
        raise ValueError(f"expected exactly one entity kind, got {sorted(wrapper)}")
    [(kind, body)] = wrapper.items()
    fields = _ID_FIELDS.get(kind)
    if fields is None or not isinstance(body, Mapping):
        raise ValueError(f"unknown entity kind {kind!r}")
    return (kind, *(str(body.get(name) or "") for name in fields))


# ------------------------------------------------------------------ validation


@attrs.frozen
class F:
    """One field of an entity: name, type, required, and sub-fields for objects."""

    name: str
    type: type | tuple[type, ...]
    required: bool = True
    fields: tuple[F, ...] | None = None


def _check(data: Any, fields: Sequence[F], where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    for field in fields:
        value = data.get(field.name)
        path = f"{where}.{field.name}"
        if value is None:
            if field.required:
                raise ValueError(f"{path}: required field missing")
            continue
        if not isinstance(value, field.type):
            raise ValueError(
                f"{path}: expected {_type_name(field.type)}, got {type(value).__name__}"
            )
        if field.fields is not None:
            items = value if isinstance(value, list) else [value]
            for index, item in enumerate(items):
                _check(item, field.fields, f"{path}[{index}]" if isinstance(value, list) else path)
    unknown = sorted(set(data) - {field.name for field in fields})
    if unknown:
        raise ValueError(f"{where}: unexpected field(s) {', '.join(unknown)}")


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {dict: "object", list: "list", str: "string", int: "integer", bool: "boolean"}
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(names.get(t, t.__name__) for t in types)


_JOB_DETAILS = (
    F("jobId", str),
    F("logGroupName", str),
    F("schemaVersion", str),
    F("parameters", dict, required=False),
    F(
        "pathMappingRules",
        list,
        required=False,
        fields=(F("sourcePathFormat", str), F("sourcePath", str), F("destinationPath", str)),
    ),
    F(
        "jobRunAsUser",
        dict,
        required=False,
        fields=(
            F("posix", dict, required=False, fields=(F("user", str), F("group", str))),
            F("windows", dict, required=False, fields=(F("user", str), F("passwordArn", str))),
            F("runAs", str),
        ),
    ),
    F(
        "jobAttachmentSettings",
        dict,
        required=False,
        fields=(F("s3BucketName", str), F("rootPrefix", str)),
    ),
    F("queueRoleArn", str, required=False),
    F("extensions", list, required=False),
)
_STEP_DETAILS = (
    F("jobId", str),
    F("stepId", str),
    F("schemaVersion", str),
    F("template", dict),
    F("dependencies", list, required=False),
    F("resolvedSymbolTable", str, required=False),
    F("extensions", list, required=False),
)
_ENVIRONMENT_DETAILS = (
    F("jobId", str),
    F("environmentId", str),
    F("schemaVersion", str),
    F("template", dict),
    F("resolvedSymbolTable", str, required=False),
    F("extensions", list, required=False),
)
_JOB_ATTACHMENT_DETAILS = (F("jobId", str), F("attachments", dict))

_SPECS = {
    "jobDetails": _JOB_DETAILS,
    "stepDetails": _STEP_DETAILS,
    "environmentDetails": _ENVIRONMENT_DETAILS,
    "jobAttachmentDetails": _JOB_ATTACHMENT_DETAILS,
}

_PARAMETER_SHAPES: dict[str, tuple[ParameterValueType, Any]] = {
    "string": (ParameterValueType.STRING, str),
    "path": (ParameterValueType.PATH, str),
    "int": (ParameterValueType.INT, str),
    "float": (ParameterValueType.FLOAT, str),
    "chunkInt": (ParameterValueType.CHUNK_INT, str),
    "bool": (ParameterValueType.BOOL, (str, bool)),
    "rangeExpr": (ParameterValueType.RANGE_EXPR, str),
    "stringList": (ParameterValueType.LIST_STRING, list),
    "pathList": (ParameterValueType.LIST_PATH, list),
    "intList": (ParameterValueType.LIST_INT, list),
    "floatList": (ParameterValueType.LIST_FLOAT, list),
    "boolList": (ParameterValueType.LIST_BOOL, list),
    "intListList": (ParameterValueType.LIST_LIST_INT, list),
}
_TRUE = frozenset({"true", "yes", "on", "1", "1.0"})
_FALSE = frozenset({"false", "no", "off", "0", "0.0"})


def validate(kind: str, data: Any) -> None:
    """Check one entity strictly. Raises ``ValueError`` naming the field."""
    spec = _SPECS.get(kind)
    if spec is None:
        raise ValueError(f"unknown entity kind {kind!r}")
    _check(data, spec, kind)
    if kind == "jobDetails":
        parameters_from_wire(data.get("parameters") or {}, where="jobDetails.parameters")
        run_as = data.get("jobRunAsUser")
        if run_as is not None and run_as["runAs"] not in (
            "QUEUE_CONFIGURED_USER",
            "WORKER_AGENT_USER",
        ):
            raise ValueError(f"jobDetails.jobRunAsUser.runAs: unknown value {run_as['runAs']!r}")
    if kind == "stepDetails" and not all(
        isinstance(d, str) for d in data.get("dependencies") or ()
    ):
        raise ValueError("stepDetails.dependencies: expected a list of strings")


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ValueError(f"{name}: {value!r} is not a boolean")


def parameters_from_wire(wire: Mapping[str, Any], *, where: str) -> dict[str, ParameterValue]:
    """Job or task parameters in their wire form (``{"Frame": {"int": "4"}}``)."""
    result: dict[str, ParameterValue] = {}
    for name, value in wire.items():
        path = f"{where}.{name}"
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError(f"{path}: expected an object with exactly one type key")
        [(type_key, raw)] = value.items()
        shape = _PARAMETER_SHAPES.get(type_key)
        if shape is None:
            raise ValueError(f"{path}: unknown parameter type {type_key!r}")
        value_type, python_type = shape
        if not isinstance(raw, python_type):
            raise ValueError(f"{path}: a {type_key} value must be {_type_name(python_type)}")
        if value_type is ParameterValueType.BOOL:
            raw = _bool(path, raw)
        elif value_type is ParameterValueType.LIST_BOOL:
            raw = [_bool(path, item) for item in raw]
        result[name] = ParameterValue(type=value_type, value=raw)
    return result


# ------------------------------------------------------------------ parsed entities


@attrs.frozen
class JobDetails:
    job_id: str
    log_group_name: str
    parameters: dict[str, ParameterValue]
    path_mapping_rules: tuple[PathMappingRule, ...]
    #: ``QUEUE_CONFIGURED_USER`` or ``WORKER_AGENT_USER`` (``None``: not given).
    run_as: str | None
    posix_user: str | None
    posix_group: str | None
    queue_role_arn: str | None
    extensions: frozenset[str]
    job_attachments: bool
    #: The queue's ``jobAttachmentSettings`` (``s3BucketName``, ``rootPrefix``), if any.
    job_attachment_settings: Mapping[str, Any] | None = None


@attrs.frozen
class StepDetails:
    step_id: str
    template: StepTemplate
    dependencies: tuple[str, ...]
    resolved_symtab: Any


@attrs.frozen
class EnvironmentDetails:
    environment_id: str
    environment: Environment
    resolved_symtab: Any


def _extensions(data: Mapping[str, Any], key: EntityKey) -> list[str]:
    declared = [str(e) for e in data.get("extensions") or ()]
    unsupported = sorted(set(declared) - SUPPORTED_EXTENSIONS)
    if unsupported:
        raise EntityError(
            key, "UnsupportedExtension", f"farmhand does not support {', '.join(unsupported)}"
        )
    return declared


def _symtab(data: Mapping[str, Any], key: EntityKey) -> Any:
    text = data.get("resolvedSymbolTable")
    if not text:
        return None
    try:
        return SerializedSymbolTable.from_json_str(text)
    except ValueError as exc:
        raise EntityError(key, "ValidationFailed", f"resolvedSymbolTable: {exc}") from exc


def _schema(data: Mapping[str, Any], key: EntityKey, allowed: tuple[str, ...]) -> None:
    if data["schemaVersion"] not in allowed:
        raise EntityError(
            key, "UnsupportedSchema", f"schema {data['schemaVersion']!r} is not supported"
        )


def parse_job_details(data: Mapping[str, Any]) -> JobDetails:
    key = ("jobDetails", str(data.get("jobId")))
    _schema(data, key, (JOB_SCHEMA,))
    _extensions(data, key)
    try:
        parameters = parameters_from_wire(data.get("parameters") or {}, where="parameters")
        rules = tuple(
            PathMappingRule.from_dict(
                {
                    "source_path_format": "WINDOWS"
                    if rule["sourcePathFormat"].upper() == "WINDOWS"
                    else "POSIX",
                    "source_path": rule["sourcePath"],
                    "destination_path": rule["destinationPath"],
                }
            )
            for rule in data.get("pathMappingRules") or ()
        )
    except ValueError as exc:
        raise EntityError(key, "ValidationFailed", str(exc)) from exc
    run_as = data.get("jobRunAsUser") or {}
    posix = run_as.get("posix") or {}
    return JobDetails(
        job_id=str(data["jobId"]),
        log_group_name=str(data["logGroupName"]),
        parameters=parameters,
        path_mapping_rules=rules,
        run_as=run_as.get("runAs"),
        posix_user=posix.get("user"),
        posix_group=posix.get("group"),
        queue_role_arn=data.get("queueRoleArn"),
        extensions=frozenset(data.get("extensions") or ()),
        job_attachments=bool(data.get("jobAttachmentSettings")),
        job_attachment_settings=dict(data["jobAttachmentSettings"])
        if isinstance(data.get("jobAttachmentSettings"), Mapping)
        else None,
    )


def parse_step_details(data: Mapping[str, Any]) -> StepDetails:
    key = ("stepDetails", str(data.get("jobId")), str(data.get("stepId")))
    _schema(data, key, (JOB_SCHEMA,))
    extensions = _extensions(data, key)
    template = dict(data["template"])
    if "name" not in template:
        # The service may send the step's script alone.
        template = {"name": "Step", "script": template}
    try:
        step = parse_model(model=StepTemplate, obj=template, supported_extensions=extensions)
    except (DecodeValidationError, ValueError) as exc:
        raise EntityError(
            key, "ValidationFailed", f"template: {' '.join(str(exc).split())}"
        ) from exc
    return StepDetails(
        str(data["stepId"]), step, tuple(data.get("dependencies") or ()), _symtab(data, key)
    )


def parse_environment_details(data: Mapping[str, Any]) -> EnvironmentDetails:
    key = ("environmentDetails", str(data.get("jobId")), str(data.get("environmentId")))
    _schema(data, key, (JOB_SCHEMA, ENVIRONMENT_SCHEMA))
    extensions = _extensions(data, key)
    try:
        environment = parse_model(
            model=Environment, obj=data["template"], supported_extensions=extensions
        )
    except (DecodeValidationError, ValueError) as exc:
        raise EntityError(
            key, "ValidationFailed", f"template: {' '.join(str(exc).split())}"
        ) from exc
    return EnvironmentDetails(str(data["environmentId"]), environment, _symtab(data, key))


def task_parameters_from_wire(wire: Mapping[str, Any]) -> TaskParameterSet:
    """A ``taskRun`` action's ``parameters``."""
    return parameters_from_wire(wire, where="taskRun.parameters")
