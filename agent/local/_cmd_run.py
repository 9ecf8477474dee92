"""``python -m agent run TEMPLATE``: run a job template on this machine.

Flag-compatible with ``openjd run``::

    python -m agent run TEMPLATE [-p NAME=VALUE]... [--step NAME] [--run-dependencies]
        [--environment ENV.yaml]... [--path-mapping-rules JSON|file://FILE]
        [--task-param NAME=VALUE]... | [--tasks JSON|file://FILE] | [--maximum-tasks N]
        [--preserve] [--output human|jsonl|json] [--verbose] [--direct]
        [--monitor [PORT] [--monitor-actions]]

By default the job goes through the whole agent: an embedded mock farm and one
embedded worker in this process, over loopback HTTP (``agent.local._farmrun``).
``--direct`` hands the session to the session runner without farm or worker
(``agent.local._localrun``); a plan the Deadline API cannot carry (two
``--environment`` templates with one name, a URI path-mapping rule) runs
directly too. Both print the same output.

``TEMPLATE`` may be a job bundle directory, as ``deadline bundle submit``
takes (``template.yaml``, ``parameter_values.yaml``, ``asset_references.yaml``;
``agent.local._bundle``): its saved parameter values come first (``-p``
overrides them), through the farm its files go through job attachments
(moto's S3 in this process), and the job's outputs come back to the paths the
bundle names.

``--monitor`` serves the embedded farm's monitor page (``agent.mockfarm._monitor``)
while the job runs, and prints its address; the farm then keeps the session's
log for it (without, the worker ships none).

``--output``: ``human`` (``human-readable``, as ``openjd run`` spells it) for a
person, ``jsonl`` for one event per line as it happens, ``json`` for one
document when the run is over (``openjd run --output json``'s shape; see
``agent.local._render``).

Exit status: 0 when every action succeeded, 1 otherwise, 2 for a bad template,
parameter or option (one line on stderr, no traceback), 128+N when the user
interrupted the run with signal N (130 for SIGINT, 143 for SIGTERM), as a
shell reports an interrupted command.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from actors import Containment, UnsafeDirectoryError, default_session_root, private_directory

from .._logging import configure_logging
from .._settings import parse_size
from ._localrun import (
    Limits,
    LocalPlan,
    LocalRunOptions,
    plan_local_session,
    run_local_session,
    session_config,
)
from ._render import HumanRenderer, JsonlRenderer, JsonRenderer, error_document
from ._templates import TemplateError

if TYPE_CHECKING:
    from ._bundle import JobBundle


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "template", type=Path, help="the job template (JSON or YAML), or a job bundle directory"
    )
    parser.add_argument(
        "-p",
        "--job-param",
        dest="parameters",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a job parameter: NAME=VALUE, a JSON object, or file://PATH (repeatable)",
    )
    parser.add_argument("--step", help="run only this step (by default every step, in order)")
    deps = parser.add_mutually_exclusive_group()
    deps.add_argument(
        "--run-dependencies",
        action="store_true",
        help="with --step, run the step's dependencies first",
    )
    deps.add_argument("--no-run-dependencies", dest="run_dependencies", action="store_false")
    parser.add_argument(
        "--environment",
        "--env",
        dest="environments",
        action="append",
        type=Path,
        default=[],
        metavar="ENV.yaml",
        help="an environment template to enter around the job (repeatable, outermost first)",
    )
    parser.add_argument(
        "--path-mapping-rules", help="pathmapping-1.0 rules: inline JSON or file://FILE"
    )
    tasks = parser.add_mutually_exclusive_group()
    tasks.add_argument(
        "--task-param",
        "-tp",
        dest="task_params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="run one task with these parameter values (repeat for each parameter)",
    )
    tasks.add_argument(
        "--tasks", help="run these tasks: a JSON/YAML list of mappings or file://FILE"
    )
    tasks.add_argument("--maximum-tasks", type=int, help="run at most this many tasks of the step")
    parser.add_argument(
        "--preserve", action="store_true", help="keep the session's working directory"
    )
    parser.add_argument(
        "--memory-limit",
        type=_size,
        metavar="SIZE",
        help="kill an action whose processes use more memory than this together, and "
        "fail it saying so (4GiB, 512M; a step's amount.worker.memory may set less)",
    )
    parser.add_argument(
        "--output-limit",
        type=_size,
        metavar="SIZE",
        help="keep at most this much of one action's output (10M); see --output-limit-mode",
    )
    parser.add_argument(
        "--output-limit-mode",
        choices=["truncate", "fail"],
        default="truncate",
        help="past the output limit: drop the rest with a note (default) or fail the action",
    )
    parser.add_argument(
        "--output",
        choices=["human", "human-readable", "jsonl", "json"],
        default="human",
        help="human (default): output as it comes plus a summary; jsonl: one JSON event "
        "per line; json: one JSON document at the end, as `openjd run --output json`",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="also show the runner's notes")
    parser.add_argument(
        "--direct",
        action="store_true",
        help="run the session without the embedded farm and worker (same output)",
    )
    parser.add_argument(
        "--monitor",
        nargs="?",
        const=0,
        type=int,
        metavar="PORT",
        help="serve the embedded farm's monitor page while the job runs (on 127.0.0.1, "
        "PORT or any free port) and print its address; the farm then keeps the session log",
    )
    parser.add_argument(
        "--monitor-actions",
        action="store_true",
        help="with --monitor: let the page cancel, suspend and requeue the job and its tasks",
    )


def preload(args: argparse.Namespace) -> None:
    """The farm and the worker, unless the run is direct (see ``agent._cli``)."""
    if not args.direct:
        import agent.local._farmrun  # noqa: F401


def main(args: argparse.Namespace) -> int:
    # The session's own output is the point here; farmhand's log says only what matters.
    configure_logging(verbose=args.verbose, quiet=not args.verbose, stream=sys.stderr)

    def refuse(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        if args.output == "json":
            print(error_document(message))
        return 2

    if args.monitor is not None and args.direct:
        return refuse("--monitor shows the embedded farm, and --direct runs without one")
    if args.monitor_actions and args.monitor is None:
        return refuse("--monitor-actions needs --monitor")
    bundle: JobBundle | None = None
    template = args.template
    if args.template.is_dir():
        # Imported here: a bundle's job attachments are no part of a plain template's run.
        from ._bundle import JobBundle

        try:
            bundle = JobBundle.read(args.template)
        except TemplateError as exc:
            return refuse(str(exc))
        template = bundle.template
    options = LocalRunOptions(
        template=template,
        parameters=args.parameters,
        saved_parameters=bundle.parameters if bundle is not None else {},
        step=args.step,
        run_dependencies=args.run_dependencies,
        environments=args.environments,
        path_mapping_rules=args.path_mapping_rules,
        task_params=args.task_params,
        tasks=args.tasks,
        maximum_tasks=args.maximum_tasks,
        preserve=args.preserve,
    )
    try:
        plan = plan_local_session(options)
        private_directory(default_session_root())
    except (TemplateError, UnsafeDirectoryError) as exc:
        return refuse(str(exc))
    if plan.ignored_parameters:
        names = ", ".join(plan.ignored_parameters)
        print(
            f"[farmhand] note: the bundle's parameter values for {names} left out: "
            "no template here defines them (a queue environment's? pass it with --environment)",
            file=sys.stderr,
        )
    out = sys.stdout.buffer
    renderer: HumanRenderer | JsonlRenderer | JsonRenderer
    if args.output == "jsonl":
        renderer = JsonlRenderer(out, verbose=args.verbose)
    elif args.output == "json":
        renderer = JsonRenderer(
            out, job_name=plan.job_name, step_name=args.step, verbose=args.verbose
        )
    else:
        err = sys.stderr.buffer
        renderer = HumanRenderer(out, err, verbose=args.verbose, live=sys.stderr.isatty())
    reason = None
    if not args.direct:
        # Imported here: the direct runner does not pay for the farm and the worker.
        from ..mockfarm import MonitorConfig
        from ._farmrun import quota_exceeded, run_through_farm, why_not_through_farm

        past = quota_exceeded(plan)
        if past is not None:
            # A farm would refuse the job; the direct runner takes any size, lazily.
            return refuse(
                f"{past}: a farm refuses such a job (--direct runs it here, "
                "one task at a time, or --maximum-tasks N runs the first N)"
            )
        reason = why_not_through_farm(plan)
    if reason is not None:
        print(f"[farmhand] note: running the session directly: {reason}", file=sys.stderr)
        if args.monitor is not None:
            print("[farmhand] note: no monitor page without the farm", file=sys.stderr)
    try:
        succeeded: bool | None = None  # the direct runner has no verdict beyond the events
        if args.direct or reason is not None:
            limits = Limits(args.memory_limit, args.output_limit, args.output_limit_mode)
            _run_direct(plan, renderer, preserve=args.preserve, limits=limits)
        else:
            status = trio.run(
                partial(
                    run_through_farm,
                    plan,
                    renderer,
                    preserve=args.preserve,
                    bundle=bundle,
                    on_interrupt=renderer.interrupted,
                    limits=Limits(args.memory_limit, args.output_limit, args.output_limit_mode),
                    monitor=MonitorConfig(actions=args.monitor_actions)
                    if args.monitor is not None
                    else None,
                    monitor_port=args.monitor or 0,
                )
            )
            succeeded = status == "SUCCEEDED"
    except TemplateError as exc:
        return refuse(str(exc))
    except KeyboardInterrupt:
        # A ^C before the run reads signals itself (the farm starting, say): nothing of
        # the job's ran yet, or what ran was ended as the run unwound.
        renderer.interrupted("SIGINT")
    try:
        renderer.finish(planned=len(plan.actions), succeeded=succeeded)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader has gone (the runner cancelled the job when it noticed, see
        # OutputGuard). What is still buffered goes nowhere, not to a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return renderer.exit_status


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_direct(
    plan: LocalPlan,
    renderer: HumanRenderer | JsonlRenderer | JsonRenderer,
    *,
    preserve: bool,
    limits: Limits | None = None,
) -> None:
    config = session_config(plan, preserve=preserve)
    if limits is not None:
        config = attrs.evolve(
            config,
            memory_limit=limits.memory,
            output_limit=limits.output,
            output_limit_mode=limits.output_mode,
        )
    # The watchdog kills what this session started even if we are killed with SIGKILL.
    containment = Containment()
    containment.start_watchdog()
    try:
        trio.run(
            partial(
                run_local_session,
                plan,
                config,
                renderer,
                containment=containment,
                on_interrupt=renderer.interrupted,
            )
        )
    finally:
        containment.close()
