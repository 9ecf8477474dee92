"""farmhand's worker agent, to run as a program (``python -m agent``) or inside another.

Embedding in a Trio program::

    async with agent.open_agent(config) as worker:
        ...                              # worker.statistics(), worker.wait_stop_requested()
        await worker.drain(grace)        # or leave the block: it drains too

Anywhere else::

    reason = agent.run(config)           # blocks this thread until the worker stops

The names are loaded on first use, so ``python -m agent run`` and ``check`` do
not pay for the worker's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import ConfigError as ConfigError
    from ._config import WorkerConfig as WorkerConfig
    from ._config import configure_parser as configure_parser
    from ._config import load_config as load_config
    from ._embed import run as run
    from ._embed import serve_worker as serve_worker
    from ._errors import FarmhandError as FarmhandError
    from ._errors import UnrecoverableError as UnrecoverableError
    from ._hostinfo import Capabilities as Capabilities
    from ._worker import Endpoints as Endpoints
    from ._worker import StopReason as StopReason
    from ._worker import Worker as Worker
    from ._worker import WorkerStatistics as WorkerStatistics
    from ._worker import open_agent as open_agent
    from ._worker import resolve_endpoints as resolve_endpoints

#: public name -> the private module that defines it
_LAZY = {
    "Capabilities": "._hostinfo",
    "ConfigError": "._config",
    "Endpoints": "._worker",
    "FarmhandError": "._errors",
    "StopReason": "._worker",
    "UnrecoverableError": "._errors",
    "Worker": "._worker",
    "WorkerConfig": "._config",
    "WorkerStatistics": "._worker",
    "configure_parser": "._config",
    "load_config": "._config",
    "open_agent": "._worker",
    "resolve_endpoints": "._worker",
    "run": "._embed",
    "serve_worker": "._embed",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
