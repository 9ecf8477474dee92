"""``python -m agent check TEMPLATE``: validate a job or environment template."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openjd.model import EnvironmentTemplate

from ._templates import TemplateError, load_any_template


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("template", type=Path, help="a job or environment template (JSON or YAML)")


def main(args: argparse.Namespace) -> int:
    try:
        template = load_any_template(args.template)
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kind = "environment" if isinstance(template, EnvironmentTemplate) else "job"
    print(f"{args.template}: a valid {template.specificationVersion.value} {kind} template")
    return 0
