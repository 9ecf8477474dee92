"""farmhand's host side: the CLI, configuration, farm clients and the embedding API.

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
    from ._errors import ConfigurationError as ConfigurationError
    from ._errors import CredentialsError as CredentialsError
    from ._errors import FarmhandError as FarmhandError
    from ._errors import JobSpecError as JobSpecError
    from ._errors import RetriesExhausted as RetriesExhausted
    from ._errors import ServiceError as ServiceError
    from ._errors import TransportError as TransportError
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
    from ._jobrun import run_job as run_job
    from ._jobstop import Shutdown as Shutdown
    from ._jobstop import ShutdownStatistics as ShutdownStatistics
    from ._jobstop import StopLevel as StopLevel
    from ._logging import configure_logging as configure_logging

#: public name -> the private module that defines it.
_EXPORTS: dict[str, str] = {
    "ConfigurationError": "._errors",
    "CredentialsError": "._errors",
    "FarmhandError": "._errors",
    "JobSpecError": "._errors",
    "RetriesExhausted": "._errors",
    "ServiceError": "._errors",
    "TransportError": "._errors",
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
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
