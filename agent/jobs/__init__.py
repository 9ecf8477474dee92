"""The one-job API: what ``contrib/`` adapters build on.

Adapters that get their jobs from something other than a Deadline farm describe a
job with ``JobSpec``, run it with ``JobRun`` (its output to sinks such as
``LogFile`` or ``open_cloudwatch_log``), and stop it with ``Shutdown`` on signals.
The kit also carries what adapters share with the worker: the GPU probe, the
ASGI types and ``hypercorn_config`` for a small HTTP server, and
``request_with_body`` for an HTTP client. Errors are ``agent``'s.

Names are imported when first used (PEP 562), as in ``agent``: an adapter's
HTTP server does not pay for the job runner. To export a name, add it to
``_EXPORTS`` and to the ``TYPE_CHECKING`` block.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._asgi import Receive as Receive
    from .._asgi import Scope as Scope
    from .._asgi import Send as Send
    from .._asgi import answer_lifespan as answer_lifespan
    from .._asgi import hypercorn_config as hypercorn_config
    from .._asgi import is_loopback as is_loopback
    from .._documents import DocumentError as DocumentError
    from .._documents import load_document as load_document
    from .._documents import load_json as load_json
    from .._httpbody import BytesBody as BytesBody
    from .._httpbody import request_with_body as request_with_body
    from .._settings import FlagsAndEnvironment as FlagsAndEnvironment
    from .._settings import Invalid as Invalid
    from .._settings import at_least as at_least
    from .._settings import existing_file as existing_file
    from .._settings import matching as matching
    from .._settings import one_of as one_of
    from .._settings import parse_address as parse_address
    from .._settings import parse_bool as parse_bool
    from .._settings import parse_float as parse_float
    from .._settings import parse_int as parse_int
    from .._settings import parse_path as parse_path
    from .._settings import parse_port as parse_port
    from .._settings import parse_str as parse_str
    from .._settings import parse_url as parse_url
    from .._settings import seconds as seconds
    from .._signals import StopLevel as StopLevel
    from .._signals import StopRequest as StopRequest
    from .._signals import StopSignals as StopSignals
    from .._signals import open_stop_signals as open_stop_signals
    from .._signals import stop_server_on_signals as stop_server_on_signals
    from ..worker._hostinfo import GpuInfo as GpuInfo
    from ..worker._hostinfo import NvidiaSmiReport as NvidiaSmiReport
    from ..worker._hostinfo import probe_gpus as probe_gpus
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

#: public name -> the private module that defines it.
_EXPORTS: dict[str, str] = {
    "GpuInfo": "..worker._hostinfo",
    "NvidiaSmiReport": "..worker._hostinfo",
    "probe_gpus": "..worker._hostinfo",
    "Receive": ".._asgi",
    "Scope": ".._asgi",
    "Send": ".._asgi",
    "answer_lifespan": ".._asgi",
    "is_loopback": ".._asgi",
    "hypercorn_config": ".._asgi",
    "FlagsAndEnvironment": ".._settings",
    "Invalid": ".._settings",
    "at_least": ".._settings",
    "existing_file": ".._settings",
    "matching": ".._settings",
    "one_of": ".._settings",
    "parse_address": ".._settings",
    "parse_bool": ".._settings",
    "parse_float": ".._settings",
    "parse_int": ".._settings",
    "parse_path": ".._settings",
    "parse_port": ".._settings",
    "parse_str": ".._settings",
    "parse_url": ".._settings",
    "seconds": ".._settings",
    "DocumentError": ".._documents",
    "load_document": ".._documents",
    "load_json": ".._documents",
    "BytesBody": ".._httpbody",
    "request_with_body": ".._httpbody",
    "LogFile": "._joblog",
    "OutputSink": "._joblog",
    "OutputTail": "._joblog",
    "Tee": "._joblog",
    "open_cloudwatch_log": "._joblog",
    "DEFAULT_GRACE": "._jobrun",
    "JobOutcome": "._jobrun",
    "JobRun": "._jobrun",
    "JobRunStatistics": "._jobrun",
    "JobSpec": "._jobrun",
    "JobStatus": "._jobrun",
    "JobUser": "._jobrun",
    "JobUserError": "._jobrun",
    "run_job": "._jobrun",
    "Shutdown": "._jobstop",
    "ShutdownStatistics": "._jobstop",
    "StopLevel": ".._signals",
    "StopRequest": ".._signals",
    "StopSignals": ".._signals",
    "open_stop_signals": ".._signals",
    "stop_server_on_signals": ".._signals",
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
