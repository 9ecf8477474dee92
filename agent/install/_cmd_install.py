"""``python -m agent install``: the official ``install-deadline-worker``'s steps for farmhand."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ._plan import (
    DEFAULT_JOB_GROUP,
    DEFAULT_USER,
    Host,
    InstallError,
    InstallOptions,
    apply,
    plan_install,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Set this host up to run the worker as a service: the agent's user, the job "
        "users' group, sudoers rules, directories, /etc/amazon/deadline/worker.toml "
        "and a systemd unit (launchd on macOS). Idempotent: a second run changes "
        "nothing. Values worker.toml has and no option names are kept."
    )
    parser.add_argument("--farm-id", help="the farm the worker belongs to (farm-...)")
    parser.add_argument("--fleet-id", help="the fleet the worker belongs to (fleet-...)")
    parser.add_argument("--region", help="the farm's AWS region (such as us-west-2)")
    parser.add_argument(
        "--user", default=DEFAULT_USER, help=f"the user the agent runs as (default {DEFAULT_USER})"
    )
    parser.add_argument(
        "--group",
        default=DEFAULT_JOB_GROUP,
        help="the group the agent shares with the users jobs run as; not the agent "
        f"user's own group (default {DEFAULT_JOB_GROUP})",
    )
    parser.add_argument(
        "--allow-shutdown",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let the agent shut the host down when the farm stops the worker "
        "(shutdown_on_stop, and a sudoers rule for it); default: as worker.toml says, "
        "else no",
    )
    parser.add_argument(
        "--disallow-instance-profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stop the worker if the EC2 instance profile stays attached "
        "(allow_ec2_instance_profile = false); default: as worker.toml says, else allowed",
    )
    parser.add_argument(
        "--no-install-service", action="store_true", help="do not install the service"
    )
    parser.add_argument(
        "--start", action="store_true", help="start the service now (it starts on boot anyway)"
    )
    parser.add_argument(
        "--scripts-path",
        type=Path,
        help="the directory holding the farmhand program the service runs "
        "(default: farmhand beside this Python, else this Python's -m agent)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print every change and make none")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="change the tree below DIR instead of / (an image); the service manager is left alone",
        metavar="DIR",
    )
    parser.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="accepted for the official installer's sake: farmhand's never asks",
    )


def main(args: argparse.Namespace) -> int:
    program: tuple[str, ...] | None = None
    if args.scripts_path is not None:
        candidate = args.scripts_path / "farmhand"
        if not candidate.is_file():
            print(f"error: no farmhand program in {args.scripts_path}", file=sys.stderr)
            return 2
        program = (str(candidate),)
    options = InstallOptions(
        farm_id=args.farm_id,
        fleet_id=args.fleet_id,
        region=args.region,
        user=args.user,
        group=args.group,
        allow_shutdown=args.allow_shutdown,
        allow_instance_profile=(
            None if args.disallow_instance_profile is None else not args.disallow_instance_profile
        ),
        install_service=not args.no_install_service,
        start=args.start,
        program=program,
    )
    host = Host(root=args.root)
    return run_plan(host, lambda: plan_install(options, host), dry_run=args.dry_run)


def run_plan(host: Host, plan: object, *, dry_run: bool) -> int:
    """Plan, then print or apply; the exit status (2: a bad option, 1: a step failed)."""
    assert callable(plan)
    try:
        changes = plan()
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not changes:
        print("nothing to change: this host is set up already")
    elif dry_run:
        print(f"{len(changes)} change{'s' if len(changes) != 1 else ''} (dry run: none made):")
        for change in changes:
            print(f"  would {change.what}")
    else:
        if os.geteuid() != 0:
            print(
                "error: this changes users, sudoers rules and system directories: run it "
                f"as root (sudo {shlex.join(sys.argv)}), or look first with --dry-run",
                file=sys.stderr,
            )
            return 2
        try:
            apply(changes, say=lambda what: print(f"  {what}"))
        except (InstallError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"done: {len(changes)} change{'s' if len(changes) != 1 else ''}")
    for note in host.notes:
        print(f"note: {note}")
    return 0
