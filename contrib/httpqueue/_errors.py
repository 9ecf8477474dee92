"""The HTTP queue adapter's configuration error (its own module: the settings and the
server's authentication both raise it)."""

from __future__ import annotations


class ConfigError(Exception):
    """A setting cannot be used. One line, naming where it came from."""
