"""Value parsers for settings read from flags, environment variables and TOML files.

Each parser takes a command-line or environment string, or a TOML value, and
returns the typed value or raises ``Invalid`` saying why (without saying where
the value came from: the caller knows, and names the flag, variable or key).
The worker's settings table (``agent/worker/_config.py``) is built from them, and
the contrib adapters read theirs with them through ``FlagsAndEnvironment`` (a
flag, else ``PREFIX_NAME`` in the environment, else a default), so every setting
parses and fails the same way: a ``ConfigurationError`` of one line that names
the flag or variable. ``suggest`` names the closest known word for an unknown one.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from ._errors import ConfigurationError


class Invalid(ValueError):
    """A value is unusable; the message says why, without the source."""


T = TypeVar("T")

_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise Invalid(f"expected a boolean (true/false, yes/no, on/off, 1/0), got {value!r}")


def parse_float(value: object) -> float:
    number: float
    if isinstance(value, bool):
        raise Invalid(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise Invalid(f"expected a number, got {value!r}") from None
    else:
        raise Invalid(f"expected a number, got {value!r}")
    if not math.isfinite(number):
        raise Invalid(f"expected a finite number, got {value!r}")
    return number


def parse_int(value: object) -> int:
    if isinstance(value, bool):
        raise Invalid(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise Invalid(f"expected an integer, got {value!r}")


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes: an integer, or a number with K, M, G or T (KiB, MiB, GiB, TiB; ``4G``,
    ``512MiB``, ``1.5GB``: binary units, as docker and ulimit read them)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        found = _SIZE.fullmatch(value.strip())
        if found:
            number, unit = float(found.group(1)), found.group(2).upper()
            size = int(number * 1024 ** " KMGT".index(unit or " "))
            if size > 0:
                return size
    raise Invalid(f"expected a size such as 4GiB, 512M or a number of bytes, got {value!r}")


def parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {value!r}")
    return value


def parse_path(value: object) -> Path:
    text = parse_str(value)
    if not text:
        raise Invalid("expected a path, got an empty string")
    return Path(text).absolute()


def existing_file(value: object) -> Path:
    path = parse_path(value)
    if not path.is_file():
        raise Invalid(f"{path}: no such file")
    return path


def seconds(*, zero: bool = False) -> Callable[[object], float]:
    """A number of seconds: positive, or 0 or more with ``zero``."""
    kind = "a number of seconds, 0 or more" if zero else "a positive number of seconds"

    def parse_seconds(value: object) -> float:
        try:
            number = parse_float(value)
        except Invalid:
            number = math.nan
        if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
            raise Invalid(f"must be {kind}, not {value!r}")
        return number

    return parse_seconds


def at_least(
    parse: Callable[[object], T], low: float, *, strictly: bool = False
) -> Callable[[object], T]:
    def parse_bounded(value: object) -> T:
        result = parse(value)
        number = cast(float, result)
        if number < low or (strictly and number == low):
            bound = "greater than" if strictly else "at least"
            raise Invalid(f"must be {bound} {low:g}, got {value!r}")
        return result

    return parse_bounded


def matching(pattern: str, what: str) -> Callable[[object], str]:
    compiled = re.compile(pattern)

    def parse_matching(value: object) -> str:
        text = parse_str(value)
        if not compiled.fullmatch(text):
            raise Invalid(f"expected {what}, got {text!r}")
        return text

    return parse_matching


def one_of(choices: tuple[T, ...]) -> Callable[[object], T]:
    def parse_choice(value: object) -> T:
        for choice in choices:
            if value == choice:
                return choice
        raise Invalid(f"expected one of {', '.join(map(str, choices))}, got {value!r}")

    return parse_choice


def parse_url(value: object) -> str:
    text = parse_str(value)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"expected an http:// or https:// URL, got {text!r}")
    return text


def parse_port(value: object) -> int:
    port = parse_int(value)
    if not 0 <= port <= 65535:
        raise Invalid(f"expected a port number from 0 to 65535, got {value!r}")
    return port


_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*")


def parse_address(value: object) -> str:
    text = parse_str(value)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(text):
            raise Invalid(f"expected an IP address or host name, got {text!r}") from None
    return text


def parse_patterns(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        # DEADLINE_WORKER_SECRET_PATTERNS holds a JSON list (regular expressions may hold commas).
        try:
            value = json.loads(value)
        except ValueError:
            raise Invalid(
                'expected a JSON list of regular expressions, e.g. ["tok-[0-9a-f]+"]'
            ) from None
    if not isinstance(value, list | tuple):
        raise Invalid(f"expected a list of regular expressions, got {value!r}")
    patterns: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise Invalid(f"item {index}: expected a non-empty regular expression, got {item!r}")
        try:
            compiled = re.compile(item)
        except re.error as exc:
            raise Invalid(f"item {index}: {item!r} is not a regular expression: {exc}") from None
        if compiled.match(""):
            raise Invalid(f"item {index}: {item!r} matches the empty string")
        patterns.append(item)
    return tuple(patterns)


def suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class FlagsAndEnvironment:
    """One program's settings: the flag ``--name`` (an attribute of ``args``, ``None`` or
    ``False`` when not given), else the environment variable ``prefix + NAME``, else a
    default. Values are parsed with the parsers above; an unusable one raises
    ``ConfigurationError`` naming where it came from."""

    def __init__(
        self,
        args: Any,
        environ: Mapping[str, str],
        prefix: str = "",
        *,
        variables: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """``variables`` names a setting's variables where another system's contract
        fixes them (the first set wins; ``()``: a flag only); the others are
        ``prefix + NAME``."""
        self._args = args
        self._environ = environ
        self.prefix = prefix
        self._variables = dict(variables or {})

    def flag(self, name: str) -> str:
        return "--" + name.replace("_", "-")

    def variables(self, name: str) -> tuple[str, ...]:
        found = self._variables.get(name)
        if found is not None:
            return found
        return (self.prefix + name.upper(),) if self.prefix else ()

    def describe(self, name: str) -> str:
        """``--work-dir (or FARMHAND_GRPC_WORK_DIR)``."""
        names = self.variables(name)
        return f"{self.flag(name)} (or {names[0]})" if names else self.flag(name)

    def raw(self, name: str) -> tuple[str, object] | None:
        """Where the setting was given and its value as given; ``None`` if it was not
        (an empty variable is not given)."""
        value = getattr(self._args, name, None)
        if value is not None and value is not False:
            return self.flag(name), value
        for variable in self.variables(name):
            text = self._environ.get(variable)
            if text:
                return variable, text
        return None

    def optional(self, name: str, parse: Callable[[object], T]) -> T | None:
        found = self.raw(name)
        if found is None:
            return None
        where, value = found
        try:
            return parse(value)
        except Invalid as exc:
            raise ConfigurationError(f"{where}: {exc}") from None

    def get(self, name: str, parse: Callable[[object], T], default: T) -> T:
        value = self.optional(name, parse)
        return default if value is None else value

    def required(self, name: str, parse: Callable[[object], T]) -> T:
        value = self.optional(name, parse)
        if value is None:
            raise ConfigurationError(f"{self.describe(name)} is required")
        return value
