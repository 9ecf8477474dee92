"""``python -m agent check TEMPLATE``: validate a job or environment template."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._templates import TemplateError, load_any_template


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("template", type=Path, help="a job or environment template (JSON or YAML)")


def main(args: argparse.Namespace) -> int:
    try:
        template = load_any_template(args.template)
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    version = str(template.specificationVersion.value)
    kind = "environment" if version.startswith("environment-") else "job"
    print(f"{args.template}: a valid {version} {kind} template")
    return 0
