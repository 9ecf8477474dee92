"""``python -m agent grpc serve``: the push-model CI agent over gRPC.

::

    python -m agent grpc serve --work-dir DIR [--host 127.0.0.1] [--port 50051] [--slots N]
        [--tool NAME=COMMAND]... [--label LABEL]... [--artifacts s3://BUCKET/PREFIX]
        [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--token-file FILE] [--insecure]

Stops as every adapter does (``agent.Shutdown``): the first SIGTERM/SIGINT
takes no new job and interrupts the running ones within the grace, a second
kills them, a third exits at once; SIGUSR1 lets them finish. Exit status 0, or
2 for a bad option (one line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    from ._grpcconfig import configure_parser

    commands = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve jobs pushed over gRPC until SIGTERM/SIGINT")
    configure_parser(serve)


def main(args: argparse.Namespace) -> int:
    import trio

    from actors import Containment
    from agent import configure_logging
    from agent.jobs import Shutdown

    from ._grpcconfig import ConfigError, load_config
    from ._grpcserver import serve

    try:
        config = load_config(args, os.environ)
    except ConfigError as exc:
        print(f"python -m agent grpc serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(verbose=args.verbose)
    # The watchdog kills the jobs' processes even if this process is killed outright.
    containment = Containment()
    containment.start_watchdog()
    shutdown = Shutdown(grace=config.grace)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(shutdown.watch_signals)
            # Each job is a session of its own: its launcher is started ahead.
            await nursery.start(containment.keep_spare_launcher)
            await serve(config, containment=containment, shutdown=shutdown)
            nursery.cancel_scope.cancel(reason="the agent has stopped")

    failures: list[OSError] = []
    try:
        trio.run(run)
    except* OSError as group:  # the port is taken, the TLS files are unreadable...
        failures = _leaves(group)
    finally:
        containment.close()
    for failure in failures:
        print(f"python -m agent grpc serve: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _leaves(group: BaseExceptionGroup[OSError]) -> list[OSError]:
    found: list[OSError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
