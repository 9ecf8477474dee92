"""The worker agent with an asyncio program as its host, for ``benchmarks/pipeline.py``:

    python -m benchmarks.asynciohost --farm-id FARM --fleet-id FLEET [python -m agent's flags]

What ``python -m agent`` does (the same configuration, credentials handling,
logging and frozen imports), except that ``asyncio.run`` hosts it:
``agent.open_agent`` runs the worker's Trio tree as a guest on the asyncio loop
(``agent/worker/_guest.py``). SIGTERM and SIGINT drain it, as in the README's
asyncio example; the farm stopping the worker (or a limit) drains it too.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys

import agent
from agent.worker import _credenv


async def serve(config: agent.WorkerConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with agent.open_agent(config) as worker:
        signalled = asyncio.create_task(stop.wait())
        requested = asyncio.create_task(worker.wait_stop_requested())
        await asyncio.wait({signalled, requested}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        requested.cancel()
        await worker.drain(worker.stop_grace)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.asynciohost", description=__doc__)
    agent.configure_parser(parser)
    try:
        config = agent.load_config(parser.parse_args(), environ=os.environ)
    except agent.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _credenv.take_from_environment()
    _credenv.make_undumpable()
    agent.configure_logging(
        verbose=config.verbose,
        json_format=config.log_format == "json",
        file=config.worker_logs_dir / "worker-agent.log",
        max_bytes=config.log_max_bytes,
        backups=config.log_rotate_count,
        secret_patterns=config.secret_patterns,
        min_secret_length=config.min_secret_length,
    )
    agent.open_agent  # noqa: B018  (imported now, to be frozen with the rest)
    gc.freeze()  # as python -m agent does (agent._cli.main)
    return asyncio.run(serve(config))


if __name__ == "__main__":
    raise SystemExit(main())
