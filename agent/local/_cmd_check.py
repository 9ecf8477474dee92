"""``python -m agent check TEMPLATE``: validate a job or environment template.

``TEMPLATE`` may be a job bundle directory (``agent.local._bundle``): its
``template.yaml`` (or ``.json``) is checked, and its ``parameter_values.yaml``
(or ``.json``) is read, so a malformed one is reported too. ``--output json``
prints ``openjd check --output json``'s document: ``{"status": "success"|"error",
"message": TEXT}``.

Exit status: 0 for a valid template, 2 otherwise (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._words import counted
from ._bundle import bundle_template, read_parameter_values
from ._templates import TemplateError, load_any_template


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "template",
        type=Path,
        help="a job or environment template (JSON or YAML), or a job bundle directory",
    )
    parser.add_argument(
        "--output",
        choices=["human", "human-readable", "json"],
        default="human",
        help="human (default): one line; json: a JSON document, as `openjd check --output json`",
    )


def main(args: argparse.Namespace) -> int:
    try:
        message = _check(args.template)
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.output == "json":
            print(json.dumps({"status": "error", "message": str(exc)}, indent=4))
        return 2
    if args.output == "json":
        print(json.dumps({"status": "success", "message": message}, indent=4))
    else:
        print(message)
    return 0


def _check(path: Path) -> str:
    if not path.is_dir():
        return _describe(path)
    text = f"{_describe(bundle_template(path))} in a job bundle"
    values = read_parameter_values(path)
    return f"{text}, with {counted(len(values), 'saved parameter value')}" if values else text


def _describe(path: Path) -> str:
    template = load_any_template(path)
    version = str(template.specificationVersion.value)
    kind = "environment" if version.startswith("environment-") else "job"
    return f"{path}: a valid {version} {kind} template"
