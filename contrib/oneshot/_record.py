"""A job record: what the table holds, what farmhand reads from it, and the work it means.

The record schema (README "One-shot job records" has the table) in short:
a record is keyed by ``job_id`` (``--key``), has a ``status`` that farmhand
moves from ``INITIALIZING`` to ``RUNNING`` to ``SUCCEEDED`` or ``FAILED``, and
carries its work:

- ``command`` (a list of strings), with optional ``env`` (a map of strings)
  and ``cwd`` (a string); or
- ``template`` (an OpenJD job template: its JSON/YAML text, or a map) with
  optional ``parameters`` (a map of strings or numbers) and ``env``;
- ``max_runtime_seconds`` (a number) lowers ``--max-runtime`` for this job.

The run mode (``--run-mode``, ``RUN_MODE``, else the record's ``run_mode``,
else ``RUN_SCRIPT``) says what the record means:

- ``RUN_SCRIPT``: run the record's command or template;
- ``RUN_COLLECTION``: process one collection. It needs ``COLLECTION_OWNER``
  (plus-worker's name; ``COLLECTION_ID`` is farmhand's alias): the record's
  ``collection_owner`` or ``collection_id``, else the task's variable (two
  that differ are an error). The work is the record's command or template,
  else the task's own ``--collection-command`` (``COLLECTION_COMMAND``). The
  job sees both names in its environment; a template that declares a
  ``CollectionOwner`` or ``CollectionId`` parameter gets it there too.
- ``RUN_ACTION``: run one action. It needs ``ACTION_ID`` (the record's
  ``action_id``, else the task's variable) and an action runner, the task's
  ``--action-command`` (``ACTION_COMMAND``), which sees ``ACTION_ID``; without
  one the record fails with "not supported".

A deployment may name variables it requires (``required``, e.g. plus-worker's
``USERNAME``, ``DYNAMO_STREAMS_TABLE``, ``PRIMARY_BUCKET``); a missing one
is a ``RecordError`` too.

Everything that is wrong with a record is a ``RecordError``: one line, which
farmhand writes to the record as its ``error_message``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from agent import JobSpecError
from agent.jobs import DocumentError, JobSpec, load_document

INITIALIZING = "INITIALIZING"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"

RUN_SCRIPT = "RUN_SCRIPT"
RUN_COLLECTION = "RUN_COLLECTION"
RUN_ACTION = "RUN_ACTION"
#: Each run mode and the variable it needs, by its plus-worker name first, then
#: farmhand's own name for it (an alias): both reach the job.
RUN_MODES: Mapping[str, tuple[str, ...]] = {
    RUN_SCRIPT: (),
    RUN_COLLECTION: ("COLLECTION_OWNER", "COLLECTION_ID"),
    RUN_ACTION: ("ACTION_ID",),
}
#: The parameters a RUN_COLLECTION template gets the collection in, when it declares them.
COLLECTION_PARAMETERS = {"CollectionId": "COLLECTION_ID", "CollectionOwner": "COLLECTION_OWNER"}


class RecordError(Exception):
    """The record cannot be run as it is; the message goes to its ``error_message``."""


@attrs.frozen
class JobRecord:
    """The record as read (``item``: plain values, numbers as ``Decimal``)."""

    job_id: str
    #: ``None`` when the record has no status (a string): it is not run.
    status: str | None
    item: Mapping[str, Any]

    @classmethod
    def from_item(cls, item: Mapping[str, Any], *, key: str) -> JobRecord:
        job_id = item.get(key)
        status = item.get("status")
        return cls(
            job_id=str(job_id),
            status=status if isinstance(status, str) else None,
            item=dict(item),
        )

    @property
    def attempt_id(self) -> str | None:
        value = self.item.get("attempt_id")
        return value if isinstance(value, str) else None

    @property
    def claimed_by(self) -> str | None:
        value = self.item.get("claimed_by")
        return value if isinstance(value, str) else None

    @property
    def cancel_requested(self) -> bool:
        return self.item.get("cancel_requested") is True


@attrs.frozen
class Work:
    """What a record means: the job to run and how long it may take."""

    spec: JobSpec
    mode: str
    #: Seconds; ``None``: no limit.
    max_runtime: float | None
    #: The run mode's variables (``COLLECTION_ID``...), also in the job's environment.
    variables: Mapping[str, str]


def resolve_work(
    record: JobRecord,
    *,
    mode: str | None,
    environ: Mapping[str, str],
    table: str,
    max_runtime: float | None,
    collection_command: str | None = None,
    action_command: str | None = None,
    required: tuple[str, ...] = (),
    template_dir: Path | None = None,
) -> Work:
    """The work ``record`` means in run ``mode`` (``None``: the record's or RUN_SCRIPT).

    Raises ``RecordError``."""
    item = record.item
    if mode is None:
        mode = _optional_str(item, "run_mode") or RUN_SCRIPT
    if mode not in RUN_MODES:
        known = " or ".join(RUN_MODES)
        raise RecordError(f"unknown run mode {mode!r}: use {known}")
    missing = [name for name in required if not environ.get(name)]
    if missing:
        raise RecordError(
            f"run mode {mode}: missing required environment variable"
            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        )
    variables = {"JOB_ID": record.job_id, "JOB_TABLE": table, "RUN_MODE": mode}
    names = RUN_MODES[mode]
    if names:
        value = _mode_variable(item, environ, names, mode)
        variables.update(dict.fromkeys(names, value))
    if mode == RUN_ACTION:
        return _action_work(record, variables, max_runtime, action_command)

    env = _string_map(item, "env")
    limit = _max_runtime(item, max_runtime)
    command = item.get("command")
    template = item.get("template")
    if command is not None and template is not None:
        raise RecordError("the record has both 'command' and 'template': give one")
    job_env = {**env, **variables}
    try:
        if command is not None:
            spec = JobSpec.from_command(
                _string_list(command, "command"), env=job_env, cwd=_optional_str(item, "cwd")
            )
        elif template is not None:
            spec = _template_spec(item, template, mode, variables, job_env, template_dir)
        elif mode == RUN_COLLECTION and collection_command:
            argv = _split(collection_command)
            spec = JobSpec.from_command(argv, env=job_env, cwd=_optional_str(item, "cwd"))
        elif mode == RUN_COLLECTION:
            raise RecordError(
                "the record has no work: give it 'command' or 'template', "
                "or give the task --collection-command (COLLECTION_COMMAND)"
            )
        else:
            raise RecordError(
                "the record has no work: give it 'command' (a list of strings) "
                "or 'template' (an OpenJD job template)"
            )
    except JobSpecError as exc:
        raise RecordError(str(exc)) from exc
    return Work(spec=spec, mode=mode, max_runtime=limit, variables=variables)


def _mode_variable(
    item: Mapping[str, Any], environ: Mapping[str, str], names: tuple[str, ...], mode: str
) -> str:
    """The value of the mode's variable: the record's attribute (any of ``names`` in
    lower case), else the task's variable (any of ``names``); two that differ are an error."""
    found: dict[str, str] = {}
    for name in names:
        attribute = name.lower()
        from_record = _optional_str(item, attribute)
        if from_record:
            found[f"the record's {attribute}"] = from_record
    for name in names:
        from_env = environ.get(name) or None
        if from_env:
            found[f"the task's {name}"] = from_env
    values = list(found.items())
    for where, value in values[1:]:
        if value != values[0][1]:
            raise RecordError(
                f"run mode {mode}: {values[0][0]} {values[0][1]!r} differs from {where} {value!r}"
            )
    if not values:
        wanted = " or ".join(names)
        raise RecordError(
            f"run mode {mode} needs {wanted}: set the task's environment variable "
            f"or the record's {' or '.join(name.lower() for name in names)}"
        )
    return values[0][1]


def _action_work(
    record: JobRecord,
    variables: Mapping[str, str],
    max_runtime: float | None,
    action_command: str | None,
) -> Work:
    """RUN_ACTION: the task's action runner with ``ACTION_ID``; without one, not supported."""
    if not action_command:
        raise RecordError(
            "run mode RUN_ACTION is not supported without an action runner: give the task "
            "--action-command (ACTION_COMMAND), which runs with ACTION_ID in its environment"
        )
    item = record.item
    env = {**_string_map(item, "env"), **variables}
    try:
        spec = JobSpec.from_command(
            _split(action_command, "action"), env=env, cwd=_optional_str(item, "cwd")
        )
    except JobSpecError as exc:
        raise RecordError(str(exc)) from exc
    return Work(
        spec=spec,
        mode=RUN_ACTION,
        max_runtime=_max_runtime(item, max_runtime),
        variables=variables,
    )


def _template_spec(
    item: Mapping[str, Any],
    template: Any,
    mode: str,
    variables: Mapping[str, str],
    env: Mapping[str, str],
    template_dir: Path | None,
) -> JobSpec:
    document = _template_document(template)
    parameters = _parameters(item)
    if mode == RUN_COLLECTION:
        declared = _declared_parameters(document)
        for parameter, variable in COLLECTION_PARAMETERS.items():
            if parameter in declared and parameter not in parameters:
                parameters[parameter] = variables[variable]
    return JobSpec.from_template(document, parameters, env=env, template_dir=template_dir)


def _template_document(template: Any) -> dict[str, Any]:
    if isinstance(template, Mapping):
        document: dict[str, Any] = _plain(dict(template))
        return document
    if not isinstance(template, str):
        raise RecordError("'template' must be the template's JSON/YAML text or a map")
    try:
        loaded = load_document(template, what="'template'")  # JSON is YAML too
    except DocumentError as exc:
        raise RecordError(str(exc)) from None
    if not isinstance(loaded, dict):
        raise RecordError("'template' must be a mapping")
    return loaded


def _declared_parameters(document: Mapping[str, Any]) -> set[str]:
    definitions = document.get("parameterDefinitions")
    if not isinstance(definitions, list):
        return set()
    return {
        definition["name"]
        for definition in definitions
        if isinstance(definition, Mapping) and isinstance(definition.get("name"), str)
    }


def _parameters(item: Mapping[str, Any]) -> dict[str, str]:
    raw = item.get("parameters")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RecordError("'parameters' must be a map of names to strings or numbers")
    values: dict[str, str] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, str | Decimal):
            raise RecordError(f"parameter {name!r} must be a string or a number")
        values[name] = _number_text(value) if isinstance(value, Decimal) else value
    return values


def _max_runtime(item: Mapping[str, Any], limit: float | None) -> float | None:
    raw = item.get("max_runtime_seconds")
    if raw is None:
        return limit
    if isinstance(raw, bool) or not isinstance(raw, Decimal) or not raw > 0:
        raise RecordError("'max_runtime_seconds' must be a positive number")
    seconds = float(raw)
    return seconds if limit is None else min(seconds, limit)


def _string_map(item: Mapping[str, Any], name: str) -> dict[str, str]:
    raw = item.get(name)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in raw.items()
    ):
        raise RecordError(f"{name!r} must be a map of strings to strings")
    return dict(raw)


def _string_list(raw: Any, name: str) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(arg, str) for arg in raw):
        raise RecordError(f"{name!r} must be a non-empty list of strings")
    return list(raw)


def _optional_str(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"{name!r} must be a string")
    return value or None


def _split(command: str, what: str = "collection") -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise RecordError(f"the {what} command {command!r} cannot be split: {exc}") from exc
    if not argv:
        raise RecordError(f"the {what} command is empty")
    return argv


def _number_text(value: Decimal) -> str:
    return str(int(value)) if value == value.to_integral_value() else str(value)


def _plain(value: Any) -> Any:
    """DynamoDB's numbers (``Decimal``) and sets as the JSON values a template has."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | set | frozenset):
        return [_plain(item) for item in value]
    return value
