"""structlog configuration for farmhand's own log (not the jobs' output).

Events are named like ``session.started`` with details as key-value pairs, and
carry whatever ``structlog.contextvars`` has bound (worker, session, action ids).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(
    *,
    verbose: bool = False,
    quiet: bool = False,
    stream: TextIO | None = None,
    json_format: bool = False,
) -> None:
    """Send farmhand's log to ``stream`` (stderr by default): DEBUG and up when
    ``verbose``, WARNING and up when ``quiet``, INFO and up otherwise."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_format
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
