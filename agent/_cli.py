"""Command-line entry point: ``python -m agent <command> ...``.

Each command lives in its own module and is imported only when it is chosen, so
``python -m agent run`` does not pay for the mock farm's imports and the worker
does not pay for the local runner's. A command module provides two functions:

``configure(parser: argparse.ArgumentParser) -> None``
    adds the command's arguments;
``main(args: argparse.Namespace) -> int``
    runs the command and returns the process exit status;
``preload(args: argparse.Namespace) -> None`` (optional)
    imports what ``main`` will import lazily, so it is frozen with the rest
    (see ``main``'s ``freeze_imports``).

With no command (``python -m agent --farm-id ... --fleet-id ...``) the worker
agent itself runs, as the official ``deadline-worker-agent`` does.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Protocol, cast

#: command name -> (module, one-line help). Contrib adapters register here too;
#: they are separate modules but not separate programs.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("agent.local._cmd_run", "run an OpenJD job template locally, like `openjd run`"),
    "check": ("agent.local._cmd_check", "validate an OpenJD job or environment template"),
    "install": ("agent.install._cmd_install", "set this host up to run the worker as a service"),
    "uninstall": ("agent.install._cmd_uninstall", "undo `install`"),
    "mockfarm": (
        "agent.mockfarm._cmd_mockfarm",
        "serve or drive the Deadline-compatible mock farm",
    ),
    "httpqueue": (
        "contrib.httpqueue._cmd_httpqueue",
        "work an HTTP job queue, or serve the reference one",
    ),
    "oneshot": (
        "contrib.oneshot._cmd_oneshot",
        "run one DynamoDB job record (a task started per job)",
    ),
    "ephemeral": (
        "contrib.ephemeral._cmd_ephemeral",
        "run the one job of a throw-away CI instance",
    ),
    "grpc": (
        "contrib.grpcagent._cmd_grpc",
        "serve CI jobs pushed over gRPC (a push-model agent)",
    ),
}

#: The command used when the first argument names none of the above.
WORKER_COMMAND = ("agent.worker._cmd_worker", "run the worker agent against a Deadline farm")


class _CommandModule(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


def _load(module_name: str) -> _CommandModule:
    return cast(_CommandModule, importlib.import_module(module_name))


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: python -m agent <command> [options]",
        "       python -m agent --farm-id FARM --fleet-id FLEET [options]",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `python -m agent <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, freeze_imports: bool = False) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its status.

    ``freeze_imports`` (for the program, not for callers in a process of their
    own): once the command is loaded, move everything alive to the collector's
    permanent generation. Modules, models and templates live as long as the
    process; without this every full collection, and the one at exit, walks
    them all again (a few hundred milliseconds in a short ``run``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        # The worker is the command without a name: its own options belong here too.
        module_name, help_ = WORKER_COMMAND
        worker = argparse.ArgumentParser(prog="python -m agent", description=help_)
        _load(module_name).configure(worker)
        print(_usage() + "\n\nthe worker agent (no command):\n\n" + worker.format_help())
        return 0
    if args and args[0] in COMMANDS:
        name = args.pop(0)
        module_name, help_ = COMMANDS[name]
        prog = f"python -m agent {name}"
    else:
        module_name, help_ = WORKER_COMMAND
        prog = "python -m agent"
        if not args:
            print(_usage(), file=sys.stderr)
            return 2
    module = _load(module_name)
    parser = argparse.ArgumentParser(prog=prog, description=help_)
    module.configure(parser)
    namespace = parser.parse_args(args)
    if freeze_imports:
        preload = getattr(module, "preload", None)
        if preload is not None:
            preload(namespace)
        gc.freeze()
    return module.main(namespace)


def program() -> None:
    """The ``farmhand`` program (as ``python -m agent``)."""
    # httpx's package imports its own command-line client (``httpx._main``, for
    # ``httpx.main``), which imports click, pygments and rich: where click is
    # installed, ~10 ms and 1.8 MiB, even when rich is not and the import then
    # fails (httpx puts a stub ``main`` in its place). This program never runs
    # httpx's client: a ``None`` entry makes that import fail at once, as it does
    # without the CLI's dependencies (issue 16).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    try:
        code = main(freeze_imports=True)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``... | head -1``): what is left to print goes nowhere,
        # not into a traceback, neither now nor when the interpreter flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("error: the output was closed before everything was written", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        # ^C before the command reads signals itself (while it imports, say): a line
        # and the status a shell gives an interrupted command, not a traceback.
        print("interrupted", file=sys.stderr)
        code = 128 + signal.SIGINT
    # Exiting, the interpreter would collect every object the command left (botocore's
    # service models above all, loaded after the start-up freeze): about 0.6 s for
    # the worker. Frozen, they go with the process.
    gc.freeze()
    sys.exit(code)
