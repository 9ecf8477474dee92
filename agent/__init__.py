"""farmhand's host side: the worker agent, its configuration, and farmhand's errors.

Embedding the worker in a Trio or an asyncio program (under asyncio its Trio
tree runs as a guest on the program's loop, which then owns the signals)::

    async with agent.open_agent(config) as worker:
        ...                              # worker.statistics(), worker.wait_stop_requested()
        await worker.drain(grace)        # or leave the block: it drains too

Anywhere else::

    reason = agent.run(config)           # blocks this thread until the worker stops

The package is laid out by concern: ``agent.worker`` (the worker host),
``agent.local`` (``run`` and ``check``), ``agent.jobs`` (the one-job API that
``contrib/`` adapters use: ``JobSpec``, ``JobRun``, ``Shutdown``, log sinks),
``agent.deadline`` (the service clients) and ``agent.mockfarm``.

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
    from ._errors import UnrecoverableError as UnrecoverableError
    from ._logging import configure_logging as configure_logging
    from .worker._config import ConfigError as ConfigError
    from .worker._config import WorkerConfig as WorkerConfig
    from .worker._config import configure_parser as configure_parser
    from .worker._config import load_config as load_config
    from .worker._embed import run as run
    from .worker._embed import serve_worker as serve_worker
    from .worker._fleethttp import FleetHttp as FleetHttp
    from .worker._fleethttp import open_fleet_http as open_fleet_http
    from .worker._hostinfo import Capabilities as Capabilities
    from .worker._worker import Endpoints as Endpoints
    from .worker._worker import StopReason as StopReason
    from .worker._worker import Worker as Worker
    from .worker._worker import WorkerStatistics as WorkerStatistics
    from .worker._worker import open_agent as open_agent
    from .worker._worker import resolve_endpoints as resolve_endpoints

#: public name -> the private module that defines it.
_EXPORTS: dict[str, str] = {
    "ConfigurationError": "._errors",
    "CredentialsError": "._errors",
    "FarmhandError": "._errors",
    "JobSpecError": "._errors",
    "RetriesExhausted": "._errors",
    "ServiceError": "._errors",
    "TransportError": "._errors",
    "UnrecoverableError": "._errors",
    "configure_logging": "._logging",
    "ConfigError": ".worker._config",
    "WorkerConfig": ".worker._config",
    "configure_parser": ".worker._config",
    "load_config": ".worker._config",
    "run": ".worker._embed",
    "serve_worker": ".worker._embed",
    "FleetHttp": ".worker._fleethttp",
    "open_fleet_http": ".worker._fleethttp",
    "Capabilities": ".worker._hostinfo",
    "Endpoints": ".worker._worker",
    "StopReason": ".worker._worker",
    "Worker": ".worker._worker",
    "WorkerStatistics": ".worker._worker",
    "open_agent": ".worker._worker",
    "resolve_endpoints": ".worker._worker",
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
