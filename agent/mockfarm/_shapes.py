"""Validators and serializers compiled from botocore shapes (see ``_codec``).

For every input shape a validator: types, required members, ``min``/``max``
lengths, sizes and values, enums, unions and (full-match) patterns, with
timestamps and blobs converted to Python values. For every output shape a
serializer. Problems are collected as ``Invalid`` and become one
``ValidationException`` (``invalid_to_error``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from ._apierrors import ApiError, validation

Validator = Callable[[Any], Any]
Serializer = Callable[[Any], Any]


class Serialized(dict[str, Any]):
    """A structure already serialized against its shape; later serializers keep it as is.

    The scheduler serializes each assigned session action once, when it is
    created, instead of on every UpdateWorkerSchedule response that lists it.
    """


class Invalid(Exception):
    """Problems found while validating: ``(path parts, message, cannot_parse)``."""

    def __init__(self, problems: list[tuple[list[str], str, bool]]) -> None:
        super().__init__(problems)
        self.problems = problems

    @classmethod
    def one(cls, message: str, *, cannot_parse: bool = False) -> Invalid:
        return cls([([], message, cannot_parse)])

    def under(self, part: str) -> list[tuple[list[str], str, bool]]:
        for path, _, _ in self.problems:
            path.insert(0, part)
        return self.problems


def _render_path(parts: list[str]) -> str:
    text = ""
    for part in parts:
        text += part if part.startswith("[") or not text else "." + part
    return text or "(body)"


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 100 else text[:97] + "..."


def _at(message: str, name: str | None) -> str:
    if "{at}" not in message:
        message = "Value {at} " + message
    return message.replace(" {at}", "" if name is None else f" at '{name}'")


def invalid_to_error(exc: Invalid) -> ApiError:
    """The ``ValidationException`` for problems found in a request."""
    problems = exc.problems
    rendered = [(_render_path(path), message) for path, message, _ in problems]
    fields = [(name, _at(message, None)) for name, message in rendered]
    count = len(problems)
    summary = "; ".join(_at(message, name) for name, message in rendered[:10])
    cannot_parse = any(flag for _, _, flag in problems)
    noun = "error" if count == 1 else "errors"
    return validation(
        f"{count} validation {noun} detected: {summary}",
        reason="CANNOT_PARSE" if cannot_parse else "FIELD_VALIDATION_FAILED",
        fields=fields,
    )


# ------------------------------------------------------------------ timestamps


def parse_timestamp(value: Any) -> datetime:
    """An epoch number or an ISO 8601 string, as botocore may send either."""
    if isinstance(value, bool):
        raise Invalid.one("must be a timestamp", cannot_parse=True)
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise Invalid.one("must be a valid timestamp", cannot_parse=True) from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            try:
                return datetime.fromtimestamp(float(value), UTC)
            except (OverflowError, OSError, ValueError):
                raise Invalid.one(
                    f"Value '{_short(value)}' {{at}} is not a timestamp", cannot_parse=True
                ) from None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    raise Invalid.one(f"must be a timestamp, not {json_type(value)}", cannot_parse=True)


def format_iso8601(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ------------------------------------------------------------------ validators


def _compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error:
        # A few models use ECMA/ICU classes (\p{L}) that Python's re lacks; the
        # length and type checks still apply to those members.
        return None


@attrs.frozen
class CompilerStatistics:
    #: Shapes a validator was compiled for (each once).
    validators: int
    #: Shapes a serializer was compiled for (each once).
    serializers: int


class ShapeCompiler:
    """Compiles validators and serializers for the shapes of one model, once each."""

    def __init__(self) -> None:
        self._validators: dict[str, Validator] = {}
        self._serializers: dict[str, Serializer | None] = {}

    def statistics(self) -> CompilerStatistics:
        return CompilerStatistics(len(self._validators), len(self._serializers))

    # -- input

    def validator(self, shape: Any) -> Validator:
        key = shape.name
        found = self._validators.get(key)
        if found is not None:
            return found
        cell: list[Validator] = []

        def forward(value: Any) -> Any:
            return cell[0](value)

        # Recursive shapes meet the forwarder while they are being compiled.
        self._validators[key] = forward
        compiled = self._compile_validator(shape)
        cell.append(compiled)
        self._validators[key] = compiled
        return compiled

    def _compile_validator(self, shape: Any) -> Validator:
        kind = shape.type_name
        meta = shape.metadata
        if kind == "structure":
            if getattr(shape, "is_document_type", False) or meta.get("document"):
                return identity
            return self._structure_validator(shape)
        if kind == "list":
            return _list_validator(self.validator(shape.member), meta.get("min"), meta.get("max"))
        if kind == "map":
            return _map_validator(
                self.validator(shape.key),
                self.validator(shape.value),
                meta.get("min"),
                meta.get("max"),
            )
        if kind == "string":
            return _string_validator(
                meta.get("min"),
                meta.get("max"),
                _compile_pattern(meta.get("pattern")),
                frozenset(shape.enum) if shape.enum else None,
            )
        if kind in ("integer", "long"):
            return _integer_validator(meta.get("min"), meta.get("max"))
        if kind in ("float", "double"):
            return _number_validator(meta.get("min"), meta.get("max"))
        if kind == "boolean":
            return _boolean_validator
        if kind == "timestamp":
            return parse_timestamp
        if kind == "blob":
            return _blob_validator
        return identity

    def _structure_validator(self, shape: Any) -> Validator:
        members = {name: self.validator(member) for name, member in shape.members.items()}
        required = tuple(shape.required_members)
        is_union = bool(shape.metadata.get("union"))

        def validate(value: Any) -> dict[str, Any]:
            # Validates and converts in place: the value is a fresh parse of the request.
            if type(value) is not dict:
                raise Invalid.one(f"must be an object, not {json_type(value)}", cannot_parse=True)
            problems: list[tuple[list[str], str, bool]] | None = None
            dropped: list[str] | None = None
            for name, item in value.items():
                check = members.get(name)
                if check is None or item is None:
                    # Unknown members are ignored, and null is absent.
                    dropped = (dropped or []) + [name]
                    continue
                try:
                    converted = check(item)
                except Invalid as exc:
                    problems = (problems or []) + exc.under(name)
                    continue
                if converted is not item:
                    value[name] = converted
            if dropped:
                for name in dropped:
                    del value[name]
            out = value
            for name in required:
                if name not in out:
                    problems = (problems or []) + [
                        (
                            [name],
                            "Value null {at} failed to satisfy constraint: Member must not be null",
                            False,
                        )
                    ]
            if is_union and len(out) != 1 and not problems:
                problems = [
                    (
                        [],
                        f"Value {{at}} must set exactly one of {', '.join(members)}"
                        f" (got {', '.join(out) or 'none'})",
                        False,
                    )
                ]
            if problems:
                raise Invalid(problems)
            return out

        return validate

    # -- output

    def serializer(self, shape: Any) -> Serializer | None:
        """``None`` means "send the value as it is" (strings, numbers, documents)."""
        key = shape.name
        if key in self._serializers:
            found = self._serializers[key]
            return found
        cell: list[Serializer | None] = []

        def forward(value: Any) -> Any:
            ser = cell[0]
            return value if ser is None else ser(value)

        self._serializers[key] = forward
        compiled = self._compile_serializer(shape)
        cell.append(compiled)
        self._serializers[key] = compiled
        return compiled

    def _compile_serializer(self, shape: Any) -> Serializer | None:
        kind = shape.type_name
        if kind == "structure":
            if getattr(shape, "is_document_type", False) or shape.metadata.get("document"):
                return None
            return self._structure_serializer(shape)
        if kind == "list":
            item = self.serializer(shape.member)
            if item is None:
                return _list_copy
            return lambda value: [item(x) for x in value]
        if kind == "map":
            value_ser = self.serializer(shape.value)
            if value_ser is None:
                return _map_copy
            return lambda value: {k: value_ser(v) for k, v in value.items() if v is not None}
        if kind == "timestamp":
            fmt = shape.serialization.get("timestampFormat")
            if fmt == "iso8601":
                return format_iso8601
            return _epoch_seconds
        if kind == "blob":
            return _blob_serializer
        return None

    def _structure_serializer(self, shape: Any) -> Serializer:
        serializers = {name: self.serializer(member) for name, member in shape.members.items()}
        required = tuple(shape.required_members)
        shape_name = shape.name

        def serialize(value: Mapping[str, Any]) -> dict[str, Any]:
            if type(value) is Serialized:
                return value
            out: dict[str, Any] = {}
            for name, item in value.items():
                if item is None:
                    continue
                try:
                    ser = serializers[name]
                except KeyError:
                    raise ValueError(f"{shape_name} has no member {name!r}") from None
                out[name] = item if ser is None else ser(item)
            for name in required:
                if name not in out:
                    raise ValueError(f"{shape_name}: required member {name!r} is missing")
            return out

        return serialize


def identity(value: Any) -> Any:
    return value


def _list_copy(value: Any) -> Any:
    return list(value)


def _map_copy(value: Any) -> Any:
    return {k: v for k, v in value.items() if v is not None}


def _epoch_seconds(value: datetime) -> float:
    return value.timestamp()


def _blob_serializer(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _blob_validator(value: Any) -> bytes:
    if type(value) is not str:
        raise Invalid.one("must be base64 text", cannot_parse=True)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid.one("must be valid base64", cannot_parse=True) from None


def _boolean_validator(value: Any) -> bool:
    if type(value) is not bool:
        raise Invalid.one(f"must be a boolean, not {json_type(value)}", cannot_parse=True)
    return value


def _string_validator(
    min_len: int | None,
    max_len: int | None,
    pattern: re.Pattern[str] | None,
    enum: frozenset[str] | None,
) -> Validator:
    def validate(value: Any) -> str:
        if type(value) is not str:
            raise Invalid.one(f"must be a string, not {json_type(value)}", cannot_parse=True)
        if enum is not None and value not in enum:
            raise Invalid.one(
                f"Value '{_short(value)}' {{at}} failed to satisfy constraint: "
                f"Member must satisfy enum value set: [{', '.join(sorted(enum))}]"
            )
        if min_len is not None and len(value) < min_len:
            raise Invalid.one(
                f"Value '{_short(value)}' {{at}} failed to satisfy constraint: "
                f"Member must have length greater than or equal to {min_len}"
            )
        if max_len is not None and len(value) > max_len:
            raise Invalid.one(
                f"Value '{_short(value)}' {{at}} failed to satisfy constraint: "
                f"Member must have length less than or equal to {max_len}"
            )
        if pattern is not None and pattern.fullmatch(value) is None:
            raise Invalid.one(
                f"Value '{_short(value)}' {{at}} failed to satisfy constraint: "
                f"Member must satisfy regular expression pattern: {pattern.pattern}"
            )
        return value

    if min_len is None and max_len is None and pattern is None and enum is None:

        def validate_plain(value: Any) -> str:
            if type(value) is not str:
                raise Invalid.one(f"must be a string, not {json_type(value)}", cannot_parse=True)
            return value

        return validate_plain
    return validate


def _range_check(value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise Invalid.one(
            f"Value '{value}' {{at}} failed to satisfy constraint: "
            f"Member must have value greater than or equal to {low}"
        )
    if high is not None and value > high:
        raise Invalid.one(
            f"Value '{value}' {{at}} failed to satisfy constraint: "
            f"Member must have value less than or equal to {high}"
        )


def _integer_validator(low: int | None, high: int | None) -> Validator:
    def validate(value: Any) -> Any:
        if type(value) is not int:
            if type(value) is float and value.is_integer():
                value = int(value)
            else:
                raise Invalid.one(f"must be an integer, not {json_type(value)}", cannot_parse=True)
        _range_check(value, low, high)
        return value

    return validate


def _number_validator(low: float | None, high: float | None) -> Validator:
    def validate(value: Any) -> float:
        if type(value) is not float and type(value) is not int:
            raise Invalid.one(f"must be a number, not {json_type(value)}", cannot_parse=True)
        _range_check(value, low, high)
        return value

    return validate


def _size_check(count: int, low: int | None, high: int | None) -> None:
    if low is not None and count < low:
        raise Invalid.one(
            f"Value {{at}} failed to satisfy constraint: Member must have length greater than or equal to {low} (got {count})"
        )
    if high is not None and count > high:
        raise Invalid.one(
            f"Value {{at}} failed to satisfy constraint: Member must have length less than or equal to {high} (got {count})"
        )


def _list_validator(item: Validator, low: int | None, high: int | None) -> Validator:
    def validate(value: Any) -> list[Any]:
        if type(value) is not list:
            raise Invalid.one(f"must be an array, not {json_type(value)}", cannot_parse=True)
        _size_check(len(value), low, high)
        problems: list[tuple[list[str], str, bool]] | None = None
        for index, element in enumerate(value):
            try:
                converted = item(element)
            except Invalid as exc:
                problems = (problems or []) + exc.under(f"[{index}]")
                continue
            if converted is not element:
                value[index] = converted
        if problems:
            raise Invalid(problems)
        return value

    return validate


def _map_validator(key: Validator, item: Validator, low: int | None, high: int | None) -> Validator:
    def validate(value: Any) -> dict[str, Any]:
        if type(value) is not dict:
            raise Invalid.one(f"must be an object, not {json_type(value)}", cannot_parse=True)
        _size_check(len(value), low, high)
        problems: list[tuple[list[str], str, bool]] | None = None
        nulls: list[str] | None = None
        for name, element in value.items():
            if element is None:
                nulls = (nulls or []) + [name]
                continue
            try:
                key(name)
                converted = item(element)
            except Invalid as exc:
                problems = (problems or []) + exc.under(f"[{name}]")
                continue
            if converted is not element:
                value[name] = converted
        if problems:
            raise Invalid(problems)
        if nulls:
            for name in nulls:
                del value[name]
        return value

    return validate


# ------------------------------------------------------------------ operations


def text_converter(shape: Any) -> Callable[[str], Any]:
    """Turns a URI label, query value or header (always text) into the member's type."""
    kind = shape.type_name
    if kind in ("integer", "long"):

        def to_int(text: str) -> int:
            try:
                return int(text)
            except ValueError:
                raise Invalid.one(
                    f"Value '{_short(text)}' {{at}} is not an integer", cannot_parse=True
                ) from None

        return to_int
    if kind in ("float", "double"):

        def to_float(text: str) -> float:
            try:
                return float(text)
            except ValueError:
                raise Invalid.one(
                    f"Value '{_short(text)}' {{at}} is not a number", cannot_parse=True
                ) from None

        return to_float
    if kind == "boolean":

        def to_bool(text: str) -> bool:
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            raise Invalid.one(f"Value '{_short(text)}' {{at}} is not a boolean", cannot_parse=True)

        return to_bool
    return identity
