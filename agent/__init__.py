"""farmhand's host side: the worker agent, the one-job API, configuration and clients.

Embedding the worker in a Trio program::

    async with agent.open_agent(config) as worker:
        ...                              # worker.statistics(), worker.wait_stop_requested()
        await worker.drain(grace)        # or leave the block: it drains too

Anywhere else::

    reason = agent.run(config)           # blocks this thread until the worker stops

The one-job API, for adapters that get their jobs from something other than a
Deadline farm (see ``contrib/``): describe a job with ``JobSpec``, run it with
``JobRun`` (its output to sinks such as ``LogFile`` or ``open_cloudwatch_log``),
and stop it with ``Shutdown`` on signals.

The public names are imported when first used (PEP 562), not with the
package: every ``python -m agent <command>`` imports this package, and the
CLI loads only what the chosen command needs. To export a name, add it to
``_EXPORTS`` and to the ``TYPE_CHECKING`` block, which is what type checkers
and readers see.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._asgi import Receive as Receive
    from ._asgi import Scope as Scope
    from ._asgi import Send as Send
    from ._asgi import answer_lifespan as answer_lifespan
    from ._asgi import hypercorn_config as hypercorn_config
    from ._config import ConfigError as ConfigError
    from ._config import WorkerConfig as WorkerConfig
    from ._config import configure_parser as configure_parser
    from ._config import load_config as load_config
    from ._embed import run as run
    from ._embed import serve_worker as serve_worker
    from ._errors import ConfigurationError as ConfigurationError
    from ._errors import CredentialsError as CredentialsError
    from ._errors import FarmhandError as FarmhandError
    from ._errors import JobSpecError as JobSpecError
    from ._errors import RetriesExhausted as RetriesExhausted
    from ._errors import ServiceError as ServiceError
    from ._errors import TransportError as TransportError
    from ._errors import UnrecoverableError as UnrecoverableError
    from ._hostinfo import Capabilities as Capabilities
    from ._hostinfo import GpuInfo as GpuInfo
    from ._hostinfo import NvidiaSmiReport as NvidiaSmiReport
    from ._hostinfo import probe_gpus as probe_gpus
    from ._httpbody import BytesBody as BytesBody
    from ._httpbody import request_with_body as request_with_body
    from ._joblog import LogFile as LogFile
    from ._joblog import OutputSink as OutputSink
    from ._joblog import OutputTail as OutputTail
    from ._joblog import Tee as Tee
    from ._joblog import open_cloudwatch_log as open_cloudwatch_log
    from ._jobrun import DEFAULT_GRACE as DEFAULT_GRACE
    from ._jobrun import JobOutcome as JobOutcome
    from ._jobrun import JobRun as JobRun
    from ._jobrun import JobRunStatistics as JobRunStatistics
    from ._jobrun import JobSpec as JobSpec
    from ._jobrun import JobStatus as JobStatus
    from ._jobrun import JobUser as JobUser
    from ._jobrun import JobUserError as JobUserError
    from ._jobrun import run_job as run_job
    from ._jobstop import Shutdown as Shutdown
    from ._jobstop import ShutdownStatistics as ShutdownStatistics
    from ._jobstop import StopLevel as StopLevel
    from ._logging import configure_logging as configure_logging
    from ._worker import Endpoints as Endpoints
    from ._worker import StopReason as StopReason
    from ._worker import Worker as Worker
    from ._worker import WorkerStatistics as WorkerStatistics
    from ._worker import open_agent as open_agent
    from ._worker import resolve_endpoints as resolve_endpoints

#: public name -> the private module that defines it.
_EXPORTS: dict[str, str] = {
    # the worker agent
    "ConfigError": "._config",
    "WorkerConfig": "._config",
    "configure_parser": "._config",
    "load_config": "._config",
    "run": "._embed",
    "serve_worker": "._embed",
    "FarmhandError": "._errors",
    "UnrecoverableError": "._errors",
    "ConfigurationError": "._errors",
    "CredentialsError": "._errors",
    "RetriesExhausted": "._errors",
    "ServiceError": "._errors",
    "TransportError": "._errors",
    "Capabilities": "._hostinfo",
    "Endpoints": "._worker",
    "StopReason": "._worker",
    "Worker": "._worker",
    "WorkerStatistics": "._worker",
    "open_agent": "._worker",
    "resolve_endpoints": "._worker",
    # the one-job API and what adapters share
    "JobSpecError": "._errors",
    "GpuInfo": "._hostinfo",
    "NvidiaSmiReport": "._hostinfo",
    "probe_gpus": "._hostinfo",
    "Receive": "._asgi",
    "Scope": "._asgi",
    "Send": "._asgi",
    "answer_lifespan": "._asgi",
    "hypercorn_config": "._asgi",
    "BytesBody": "._httpbody",
    "request_with_body": "._httpbody",
    "LogFile": "._joblog",
    "OutputSink": "._joblog",
    "OutputTail": "._joblog",
    "Tee": "._joblog",
    "open_cloudwatch_log": "._joblog",
    "DEFAULT_GRACE": "._jobrun",
    "JobOutcome": "._jobrun",
    "JobRun": "._jobrun",
    "JobUser": "._jobrun",
    "JobUserError": "._jobrun",
    "JobRunStatistics": "._jobrun",
    "JobSpec": "._jobrun",
    "JobStatus": "._jobrun",
    "run_job": "._jobrun",
    "Shutdown": "._jobstop",
    "ShutdownStatistics": "._jobstop",
    "StopLevel": "._jobstop",
    "configure_logging": "._logging",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
