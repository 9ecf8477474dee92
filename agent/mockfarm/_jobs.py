"""From a CreateJob request to steps, tasks and the entities a worker fetches.

openjd-model does all the OpenJD work: decoding and validating the template,
applying and checking parameters (``preprocess_job_parameters``), instantiating
the job with its symbol tables, ordering the steps (``StepDependencyGraph``) and
expanding each step's parameter space into tasks (``StepParameterSpaceIterator``).
This module only moves the results into the shapes the Deadline API uses: the
``{"int": "4"}`` parameter unions, ``stepDetails.template`` (the step template as
a JSON object, which is what the service sends and what the official agent
parses with ``parse_model(StepTemplate)``) and ``environmentDetails.template``
(an ``Environment`` object).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from openjd.model import (
    DecodeValidationError,
    DocumentType,
    EnvironmentTemplate,
    JobTemplate,
    ParameterValue,
    ParameterValueType,
    StepDependencyGraph,
    StepParameterSpaceIterator,
    create_job_with_symbol_tables,
    decode_environment_template,
    decode_job_template,
    model_to_object,
    preprocess_job_parameters,
)
from openjd.model.v2023_09 import ExtensionName

from .._documents import DocumentError, load_document
from ._apierrors import validation

JOB_SCHEMA = "jobtemplate-2023-09"
ENVIRONMENT_SCHEMA = "environment-2023-09"

#: Every extension openjd-model knows; the service accepts what the model accepts.
EXTENSIONS = tuple(extension.value for extension in ExtensionName)

#: ParameterValueType -> the member of the Deadline ``JobParameter`` union.
_JOB_PARAMETER_KEYS = {
    ParameterValueType.STRING: "string",
    ParameterValueType.PATH: "path",
    ParameterValueType.INT: "int",
    ParameterValueType.FLOAT: "float",
    ParameterValueType.BOOL: "bool",
    ParameterValueType.RANGE_EXPR: "rangeExpr",
    ParameterValueType.LIST_STRING: "stringList",
    ParameterValueType.LIST_PATH: "pathList",
    ParameterValueType.LIST_INT: "intList",
    ParameterValueType.LIST_FLOAT: "floatList",
    ParameterValueType.LIST_BOOL: "boolList",
    ParameterValueType.LIST_LIST_INT: "intListList",
    ParameterValueType.CHUNK_INT: "chunkInt",
}

_STEP_PARAMETER_TYPES = {"CHUNK[INT]": "CHUNK_INT"}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _json(value: Any) -> Any:
    """openjd-model objects (enums, range expressions) as plain JSON values."""
    return json.loads(json.dumps(value, default=str))


def _wire_scalar(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return [_wire_scalar(item) for item in value]
    return str(value)


def parameter_to_wire(value: ParameterValue) -> dict[str, Any]:
    """``ParameterValue(INT, "4")`` -> ``{"int": "4"}``."""
    return {_JOB_PARAMETER_KEYS[value.type]: _wire_scalar(value.value)}


def parameter_from_wire(wire: Mapping[str, Any]) -> Any:
    """The value of a ``JobParameter`` union, as ``preprocess_job_parameters`` takes it."""
    [(_, value)] = wire.items()
    return value


def parse_template_text(text: str, template_type: str | None, *, what: str) -> dict[str, Any]:
    """A JSON or YAML document that must be an object."""
    document_type = DocumentType.JSON if template_type == "JSON" else DocumentType.YAML
    try:
        # Bounded: size, YAML aliases and nesting (a "billion laughs" is refused in
        # milliseconds instead of freezing the farm).
        document = load_document(text, json_only=template_type == "JSON", what=what)
    except DocumentError as exc:
        raise validation(_sentence(str(exc)), reason="OTHER") from None
    if not isinstance(document, dict):
        raise validation(f"The {what} must be a {document_type.value} object.", reason="OTHER")
    return document


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}."


def decode_environment(text: str, template_type: str) -> EnvironmentTemplate:
    document = parse_template_text(text, template_type, what="environment template")
    try:
        return decode_environment_template(template=document, supported_extensions=EXTENSIONS)
    except (DecodeValidationError, NotImplementedError, ValueError) as exc:
        raise validation(_one_line(str(exc)), reason="OTHER") from None


@attrs.frozen
class EnvironmentSpec:
    name: str
    #: The ``Environment`` object, as ``environmentDetails.template``.
    template: dict[str, Any]
    schema_version: str
    symbol_table: str | None = None


@attrs.frozen
class StepSpec:
    name: str
    description: str | None
    #: The step template, as ``stepDetails.template``.
    template: dict[str, Any]
    dependencies: tuple[str, ...]
    environments: tuple[EnvironmentSpec, ...]
    #: The step's parameter space (random access), or the chunked tasks listed.
    space: Sequence[Mapping[str, ParameterValue]]
    #: ``GetStep.parameterSpace`` or ``None``.
    parameter_space: dict[str, Any] | None
    #: ``{"amounts": [...], "attributes": [...]}`` with numbers resolved, or ``None``.
    host_requirements: dict[str, Any] | None
    symbol_table: str | None

    @property
    def task_count(self) -> int:
        return len(self.space)

    def task_parameters(self, index: int) -> dict[str, dict[str, str]]:
        """Task ``index``'s ``parameters`` in wire form (``{"Frame": {"int": "4"}}``)."""
        return {name: parameter_to_wire(value) for name, value in self.space[index].items()}


@attrs.frozen
class JobSpec:
    name: str
    description: str | None
    parameters: dict[str, dict[str, Any]]
    extensions: tuple[str, ...]
    job_environments: tuple[EnvironmentSpec, ...]
    #: In dependency order (a step comes after every step it depends on).
    steps: tuple[StepSpec, ...]
    template: JobTemplate


def decode_job(text: str, template_type: str | None) -> JobTemplate:
    """Parse and validate a job template (the costly, state-free part of CreateJob, which
    the farm runs in a worker thread); any problem is a ``ValidationException``."""
    document = parse_template_text(text, template_type, what="job template")
    try:
        return decode_job_template(template=document, supported_extensions=EXTENSIONS)
    except (DecodeValidationError, NotImplementedError, ValueError) as exc:
        raise validation(_one_line(str(exc)), reason="OTHER") from None


def build_job(
    text: str,
    template_type: str | None,
    parameters: Mapping[str, Mapping[str, Any]],
    *,
    queue_environments: Sequence[EnvironmentTemplate] = (),
    decoded: JobTemplate | None = None,
) -> JobSpec:
    """Validate and instantiate a job; any problem is a ``ValidationException``.
    ``decoded``: ``decode_job(text, template_type)``, when the caller has it already."""
    template = decoded if decoded is not None else decode_job(text, template_type)
    try:
        values = preprocess_job_parameters(
            job_template=template,
            job_parameter_values={
                name: parameter_from_wire(wire) for name, wire in parameters.items()
            },
            # A service never sees the submitter's file system: PATH values stay as given.
            job_template_dir=Path(),
            current_working_dir=Path(),
            allow_job_template_dir_walk_up=True,
            environment_templates=list(queue_environments),
        )
        created = create_job_with_symbol_tables(
            job_template=template,
            job_parameter_values=values,
            environment_templates=list(queue_environments),
        )
    except (DecodeValidationError, NotImplementedError, ValueError) as exc:
        raise validation(_one_line(str(exc)), reason="OTHER") from None
    job = created.job
    extensions = tuple(str(getattr(e, "value", e)) for e in template.extensions or ())
    uses_expr = "EXPR" in extensions
    step_tables = created.step_symbol_tables or {}
    job_table = created.job_symbol_table.to_json_str() if uses_expr else None
    templates_by_name = {step.name: step for step in template.steps}
    steps = []
    for step in StepDependencyGraph(job=job).topo_sorted():
        instantiated = step.step if hasattr(step, "step") else step
        step_template = templates_by_name[instantiated.name]
        table = step_tables.get(instantiated.name)
        table_text = table.to_json_str() if (uses_expr and table is not None) else None
        try:
            # Random access: a task's parameters are computed when it is assigned.
            space: Any = StepParameterSpaceIterator(space=instantiated.parameterSpace)
            if getattr(space, "chunks_parameter_name", None) is not None:
                # Chunks are formed while iterating; keep them as a list.
                space = list(space)
        except (ValueError, KeyError) as exc:
            raise validation(
                f"Step {instantiated.name}: {_one_line(str(exc))}", reason="OTHER"
            ) from None
        steps.append(
            StepSpec(
                name=instantiated.name,
                description=getattr(step_template, "description", None),
                template=_json(model_to_object(model=step_template)),
                dependencies=tuple(d.dependsOn for d in instantiated.dependencies or ()),
                environments=tuple(
                    EnvironmentSpec(
                        env.name, _json(model_to_object(model=env)), JOB_SCHEMA, table_text
                    )
                    for env in step_template.stepEnvironments or ()
                ),
                space=space,
                parameter_space=_parameter_space(instantiated),
                host_requirements=_host_requirements(instantiated),
                symbol_table=table_text,
            )
        )
    return JobSpec(
        name=job.name,
        description=getattr(template, "description", None),
        parameters={name: parameter_to_wire(value) for name, value in values.items()},
        extensions=extensions,
        job_environments=tuple(
            EnvironmentSpec(env.name, _json(model_to_object(model=env)), JOB_SCHEMA, job_table)
            for env in template.jobEnvironments or ()
        ),
        steps=tuple(steps),
        template=template,
    )


def select_steps_and_tasks(
    spec: JobSpec,
    steps: Sequence[str] | None,
    tasks: Mapping[str, Sequence[Mapping[str, ParameterValue]]] | None,
) -> JobSpec:
    """Keep only the ``steps`` named (dropping dependencies on the others) and give the
    steps named in ``tasks`` exactly those tasks, in that order."""
    known = {step.name for step in spec.steps}
    unknown = sorted((set(steps or ()) | set(tasks or ())) - known)
    if unknown:
        raise validation(f"The job has no step named {', '.join(unknown)}.", reason="OTHER")
    keep = known if steps is None else set(steps)
    selected = []
    for step in spec.steps:
        if step.name not in keep:
            continue
        dependencies = tuple(name for name in step.dependencies if name in keep)
        template = step.template
        if dependencies != step.dependencies:
            template = {k: v for k, v in template.items() if k != "dependencies"}
            if dependencies:
                template["dependencies"] = [{"dependsOn": name} for name in dependencies]
        space = step.space if tasks is None or step.name not in tasks else list(tasks[step.name])
        selected.append(
            attrs.evolve(step, dependencies=dependencies, template=template, space=space)
        )
    return attrs.evolve(spec, steps=tuple(selected))


def queue_environment_spec(template: EnvironmentTemplate) -> EnvironmentSpec:
    return EnvironmentSpec(
        template.environment.name,
        _json(model_to_object(model=template.environment)),
        ENVIRONMENT_SCHEMA,
    )


def _parameter_space(step: Any) -> dict[str, Any] | None:
    space = step.parameterSpace
    if space is None:
        return None
    definitions = space.taskParameterDefinitions
    items = (
        definitions.items()
        if isinstance(definitions, Mapping)
        else ((d.name, d) for d in definitions)
    )
    parameters = []
    for name, definition in items:
        type_name = str(getattr(definition.type, "value", definition.type))
        entry: dict[str, Any] = {
            "name": name,
            "type": _STEP_PARAMETER_TYPES.get(type_name, type_name),
        }
        chunks = getattr(definition, "chunks", None)
        if chunks is not None:
            entry["chunks"] = {
                "defaultTaskCount": int(chunks.defaultTaskCount),
                "rangeConstraint": str(
                    getattr(chunks.rangeConstraint, "value", chunks.rangeConstraint)
                ),
            }
            if getattr(chunks, "targetRuntimeSeconds", None) is not None:
                entry["chunks"]["targetRuntimeSeconds"] = int(chunks.targetRuntimeSeconds)
        parameters.append(entry)
    result: dict[str, Any] = {"parameters": parameters}
    if space.combination:
        result["combination"] = str(space.combination)
    return result


def _host_requirements(step: Any) -> dict[str, Any] | None:
    requirements = step.hostRequirements
    if requirements is None:
        return None
    raw = _json(model_to_object(model=requirements))
    amounts = []
    for amount in raw.get("amounts") or ():
        entry: dict[str, Any] = {"name": amount["name"]}
        for bound in ("min", "max"):
            if amount.get(bound) is not None:
                entry[bound] = float(amount[bound])
        amounts.append(entry)
    attributes = []
    for attribute in raw.get("attributes") or ():
        entry = {"name": attribute["name"]}
        for key in ("anyOf", "allOf"):
            if attribute.get(key) is not None:
                entry[key] = [str(v) for v in attribute[key]]
        attributes.append(entry)
    return {"amounts": amounts, "attributes": attributes}


def worker_satisfies(
    requirements: Mapping[str, Any] | None, capabilities: Mapping[str, Any] | None
) -> bool:
    """Whether a worker's reported capabilities meet a step's host requirements."""
    if not requirements:
        return True
    capabilities = capabilities or {}
    amounts = {a["name"]: a["value"] for a in capabilities.get("amounts") or ()}
    attributes = {
        a["name"]: {str(v).lower() for v in a["values"]}
        for a in capabilities.get("attributes") or ()
    }
    for amount in requirements.get("amounts") or ():
        value = amounts.get(amount["name"])
        if value is None:
            return False
        if "min" in amount and value < amount["min"]:
            return False
        if "max" in amount and value > amount["max"]:
            return False
    for attribute in requirements.get("attributes") or ():
        values = attributes.get(attribute["name"])
        if values is None:
            return False
        any_of = {v.lower() for v in attribute.get("anyOf") or ()}
        all_of = {v.lower() for v in attribute.get("allOf") or ()}
        if any_of and not values & any_of:
            return False
        if all_of and not all_of <= values:
            return False
    return True


#: Where the farm's app puts what a ``PREPARERS`` function made, in the parameters.
PREPARED = "__prepared__"


def prepare_create_job(params: Mapping[str, Any]) -> JobTemplate | None:
    """CreateJob's template, parsed and validated: run by the app in a worker thread, so a
    big template (the service takes up to 1 MB) does not hold the farm's loop."""
    if params.get("sourceJobId") or not params.get("template"):
        return None  # the handler says what is wrong
    text, template_type = require_template(params)
    return decode_job(text, template_type)


#: Per operation, state-free work the app runs in a worker thread before the handler.
PREPARERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {"CreateJob": prepare_create_job}


def require_template(params: Mapping[str, Any]) -> tuple[str, str | None]:
    text = params.get("template")
    if not text:
        raise validation(
            "CreateJob needs a template (copying a job with sourceJobId is not supported by the mock farm).",
            reason="OTHER",
        )
    return text, params.get("templateType")
