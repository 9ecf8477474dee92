"""Reading OpenJD templates, job parameters and path-mapping rules from users.

All parsing and validation is openjd-model's; this module only finds the
documents (files, inline JSON, ``file://`` references), asks openjd-model to
decode them, and turns its errors into one clear ``TemplateError`` line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
from openjd.expr import PathMappingRule
from openjd.model import (
    DecodeValidationError,
    EnvironmentTemplate,
    Job,
    JobParameterValues,
    JobTemplate,
    create_job_with_symbol_tables,
    decode_environment_template,
    decode_job_template,
    preprocess_job_parameters,
)

from actors import SUPPORTED_EXTENSIONS

from .._documents import DocumentError, load_document, read_text
from .._errors import FarmhandError


class TemplateError(FarmhandError):
    """A template, parameter or rule the user gave us is unusable. One line, no traceback."""


def _first_line(text: str) -> str:
    return " ".join(text.split())


def read_document(path: Path) -> dict[str, Any]:
    """A JSON or YAML document (by extension; YAML is tried for anything else),
    loaded within ``_documents``' bounds (size, YAML aliases, nesting)."""
    try:
        text = read_text(path, what="template")
        document = load_document(
            text, json_only=path.suffix.lower() == ".json", what=f"template {path}"
        )
    except DocumentError as exc:
        raise TemplateError(str(exc)) from None
    if not isinstance(document, dict):
        raise TemplateError(
            f"{path}: the document must be a mapping, not {type(document).__name__}"
        )
    return document


def decode_job(document: dict[str, Any], *, source: str) -> JobTemplate:
    try:
        template = decode_job_template(template=document, supported_extensions=SUPPORTED_EXTENSIONS)
    except (DecodeValidationError, NotImplementedError, TypeError, ValueError) as exc:
        # TypeError/ValueError: openjd-model trips over some malformed documents
        # (such as ``extensions: [[], [null]]``) before it can report them.
        raise TemplateError(f"{source}: {_first_line(str(exc))}") from exc
    _check_extensions(template.extensions, source)
    return template


def decode_environment(document: dict[str, Any], *, source: str) -> EnvironmentTemplate:
    try:
        template = decode_environment_template(
            template=document, supported_extensions=SUPPORTED_EXTENSIONS
        )
    except (DecodeValidationError, NotImplementedError, TypeError, ValueError) as exc:
        raise TemplateError(f"{source}: {_first_line(str(exc))}") from exc
    _check_extensions(template.extensions, source)
    return template


def _check_extensions(extensions: Iterable[str] | None, source: str) -> None:
    unsupported = sorted(set(extensions or ()) - SUPPORTED_EXTENSIONS)
    if unsupported:
        raise TemplateError(
            f"{source}: extension(s) {', '.join(unsupported)} are not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})"
        )


def load_job_template(path: Path) -> JobTemplate:
    return decode_job(read_document(path), source=str(path))


def load_environment_template(path: Path) -> EnvironmentTemplate:
    return decode_environment(read_document(path), source=str(path))


def load_any_template(path: Path) -> JobTemplate | EnvironmentTemplate:
    """A job or environment template, chosen by its ``specificationVersion``."""
    document = read_document(path)
    version = str(document.get("specificationVersion", ""))
    if version.startswith("environment-"):
        return decode_environment(document, source=str(path))
    return decode_job(document, source=str(path))


# ---------------------------------------------------------------- parameters

_KEY_VALUE_RE = re.compile(r"([^=]+)=(.*)", re.DOTALL)


def parse_job_parameters(arguments: Sequence[str]) -> dict[str, Any]:
    """``-p`` arguments as ``openjd run`` takes them: ``NAME=VALUE``, inline JSON
    objects, or ``file://PATH`` to a JSON/YAML mapping; later ones win."""
    values: dict[str, Any] = {}
    for argument in arguments:
        text = argument.strip()
        if text.startswith("file://"):
            document = _read_parameter_file(Path(text.removeprefix("file://")).expanduser())
            values.update(document)
        elif text.startswith("{"):
            try:
                document = load_document(text, json_only=True, what="job parameter JSON")
            except DocumentError as exc:
                raise TemplateError(str(exc)) from None
            if not isinstance(document, dict):
                raise TemplateError(f"job parameter {text!r} must be a JSON object")
            values.update(document)
        elif match := _KEY_VALUE_RE.fullmatch(text):
            values[match[1].strip()] = match[2]
        else:
            raise TemplateError(
                f"job parameter {text!r} must be NAME=VALUE, a JSON object or file://PATH"
            )
    return values


def _read_parameter_file(path: Path) -> dict[str, Any]:
    try:
        text = read_text(path, what="parameter file")
        document = load_document(
            text, json_only=path.suffix.lower() == ".json", what=f"parameter file {path}"
        )
    except DocumentError as exc:
        raise TemplateError(str(exc)) from None
    if not isinstance(document, dict):
        raise TemplateError(f"parameter file {path} must hold a mapping of names to values")
    return document


@attrs.frozen
class CreatedJob:
    job: Job
    parameter_values: JobParameterValues
    #: openjd-model's resolved symbol tables per step (EXPR ``let`` values).
    step_symbol_tables: dict[str, Any]


def create_job(
    template: JobTemplate,
    parameters: dict[str, Any],
    *,
    environments: Sequence[EnvironmentTemplate] = (),
    template_dir: Path,
    current_dir: Path,
) -> CreatedJob:
    """Instantiate ``template`` with ``parameters`` (defaults applied, types checked)."""
    try:
        values = preprocess_job_parameters(
            job_template=template,
            job_parameter_values=parameters,
            job_template_dir=template_dir.resolve(),
            current_working_dir=current_dir.resolve(),
            environment_templates=list(environments),
        )
        created = create_job_with_symbol_tables(
            job_template=template,
            job_parameter_values=values,
            environment_templates=list(environments),
        )
    except (ValueError, DecodeValidationError) as exc:
        raise TemplateError(_first_line(str(exc))) from exc
    return CreatedJob(created.job, values, dict(created.step_symbol_tables or {}))


# ---------------------------------------------------------------- path mapping


def parse_path_mapping_rules(argument: str) -> list[PathMappingRule]:
    """``--path-mapping-rules``: a ``pathmapping-1.0`` document, inline or ``file://``."""
    text = argument.strip()
    if text.startswith("file://"):
        path = Path(text.removeprefix("file://")).expanduser()
        try:
            text = read_text(path, what="path mapping rules")
        except DocumentError as exc:
            raise TemplateError(str(exc)) from None
    try:
        document = load_document(text, what="path mapping rules")
    except DocumentError as exc:
        raise TemplateError(str(exc)) from None
    if not isinstance(document, dict):
        raise TemplateError(
            "path mapping rules must be an object with 'version' and 'path_mapping_rules'"
        )
    if document.get("version") != "pathmapping-1.0":
        raise TemplateError("path mapping rules must have version 'pathmapping-1.0'")
    rules = document.get("path_mapping_rules")
    if not isinstance(rules, list):
        raise TemplateError("path mapping rules must contain a list named 'path_mapping_rules'")
    parsed: list[PathMappingRule] = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise TemplateError(f"path mapping rule {index} must be an object")
        try:
            parsed.append(PathMappingRule.from_dict(rule))
        except (ValueError, TypeError, KeyError) as exc:
            raise TemplateError(f"path mapping rule {index}: {_first_line(str(exc))}") from exc
    return parsed
