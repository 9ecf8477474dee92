"""``python -m agent uninstall``: undo ``python -m agent install``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._cmd_install import run_plan
from ._plan import DEFAULT_JOB_GROUP, DEFAULT_USER, Host, plan_uninstall


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Stop the worker service (a drain) and remove it and the sudoers rules "
        "`python -m agent install` wrote. --purge also removes worker.toml, the "
        "worker's directories (its identity: a new install is a new worker), the user "
        "and the group."
    )
    parser.add_argument("--user", default=DEFAULT_USER, help=f"default {DEFAULT_USER}")
    parser.add_argument("--group", default=DEFAULT_JOB_GROUP, help=f"default {DEFAULT_JOB_GROUP}")
    parser.add_argument("--purge", action="store_true", help="remove everything the install made")
    parser.add_argument("--dry-run", action="store_true", help="print every change and make none")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="change the tree below DIR instead of /",
    )


def main(args: argparse.Namespace) -> int:
    host = Host(root=args.root)
    return run_plan(
        host,
        lambda: plan_uninstall(host, user=args.user, group=args.group, purge=args.purge),
        dry_run=args.dry_run,
    )
