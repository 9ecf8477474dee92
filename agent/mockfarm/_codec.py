"""The wire codec, driven by botocore's service models.

botocore's ``deadline`` (2023-10-12, rest-json) and ``logs`` (2014-03-28, JSON
1.1) models are the source of truth. Everything is compiled once per process:

- a route table from each operation's ``requestUri`` (a trie of path segments,
  so a lookup costs a few dict probes) and a table of ``X-Amz-Target`` names;
- for every input shape a validator: types, required members, ``min``/``max``
  lengths, sizes and values, enums, unions and (full-match) patterns, with
  timestamps and blobs converted to Python values. Unknown members are ignored,
  as AWS services do for forward compatibility; ``null`` counts as absent;
- for every output shape a serializer: members outside the model or a missing
  required member are a bug in a handler and raise; ``None`` is omitted;
  timestamps use the shape's ``timestampFormat``.

A request that breaks the model is a ``ValidationException`` whose message lists
the problems the way AWS does ("1 validation error detected: Value ... at
'farmId' failed to satisfy constraint: ...") and whose ``fieldList`` names them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, unquote

import attrs
import botocore.session

from ._errors import ApiError, validation

Validator = Callable[[Any], Any]
Serializer = Callable[[Any], Any]


class Serialized(dict[str, Any]):
    """A structure already serialized against its shape; later serializers keep it as is.

    The scheduler serializes each assigned session action once, when it is
    created, instead of on every UpdateWorkerSchedule response that lists it.
    """


DEADLINE = "deadline"
LOGS = "logs"

#: Outputs are trees the farm built (no cycles): skip the encoder's cycle check.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


class _Invalid(Exception):
    """Problems found while validating: ``(path parts, message, cannot_parse)``."""

    def __init__(self, problems: list[tuple[list[str], str, bool]]) -> None:
        super().__init__(problems)
        self.problems = problems

    @classmethod
    def one(cls, message: str, *, cannot_parse: bool = False) -> _Invalid:
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


def _json_type(value: Any) -> str:
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


def invalid_to_error(exc: _Invalid) -> ApiError:
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
        raise _Invalid.one("must be a timestamp", cannot_parse=True)
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise _Invalid.one("must be a valid timestamp", cannot_parse=True) from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            try:
                return datetime.fromtimestamp(float(value), UTC)
            except (OverflowError, OSError, ValueError):
                raise _Invalid.one(
                    f"Value '{_short(value)}' {{at}} is not a timestamp", cannot_parse=True
                ) from None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    raise _Invalid.one(f"must be a timestamp, not {_json_type(value)}", cannot_parse=True)


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


class _Compiler:
    """Compiles validators and serializers for the shapes of one model, once each."""

    def __init__(self) -> None:
        self._validators: dict[str, Validator] = {}
        self._serializers: dict[str, Serializer | None] = {}

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
                return _identity
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
        return _identity

    def _structure_validator(self, shape: Any) -> Validator:
        members = {name: self.validator(member) for name, member in shape.members.items()}
        required = tuple(shape.required_members)
        is_union = bool(shape.metadata.get("union"))

        def validate(value: Any) -> dict[str, Any]:
            # Validates and converts in place: the value is a fresh parse of the request.
            if type(value) is not dict:
                raise _Invalid.one(f"must be an object, not {_json_type(value)}", cannot_parse=True)
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
                except _Invalid as exc:
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
                raise _Invalid(problems)
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


def _identity(value: Any) -> Any:
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
        raise _Invalid.one("must be base64 text", cannot_parse=True)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid.one("must be valid base64", cannot_parse=True) from None


def _boolean_validator(value: Any) -> bool:
    if type(value) is not bool:
        raise _Invalid.one(f"must be a boolean, not {_json_type(value)}", cannot_parse=True)
    return value


def _string_validator(
    min_len: int | None,
    max_len: int | None,
    pattern: re.Pattern[str] | None,
    enum: frozenset[str] | None,
) -> Validator:
    def validate(value: Any) -> str:
        if type(value) is not str:
            raise _Invalid.one(f"must be a string, not {_json_type(value)}", cannot_parse=True)
        if enum is not None and value not in enum:
            raise _Invalid.one(
                f"Value '{_short(value)}' {{at}} failed to satisfy constraint: "
                f"Member must satisfy enum value set: [{', '.join(sorted(enum))}]"
            )
        if min_len is not None and len(value) < min_len:
            raise _Invalid.one(
                f"Value '{_short(value)}' {{at}} failed to satisfy constraint: "
                f"Member must have length greater than or equal to {min_len}"
            )
        if max_len is not None and len(value) > max_len:
            raise _Invalid.one(
                f"Value '{_short(value)}' {{at}} failed to satisfy constraint: "
                f"Member must have length less than or equal to {max_len}"
            )
        if pattern is not None and pattern.fullmatch(value) is None:
            raise _Invalid.one(
                f"Value '{_short(value)}' {{at}} failed to satisfy constraint: "
                f"Member must satisfy regular expression pattern: {pattern.pattern}"
            )
        return value

    if min_len is None and max_len is None and pattern is None and enum is None:

        def validate_plain(value: Any) -> str:
            if type(value) is not str:
                raise _Invalid.one(f"must be a string, not {_json_type(value)}", cannot_parse=True)
            return value

        return validate_plain
    return validate


def _range_check(value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise _Invalid.one(
            f"Value '{value}' {{at}} failed to satisfy constraint: "
            f"Member must have value greater than or equal to {low}"
        )
    if high is not None and value > high:
        raise _Invalid.one(
            f"Value '{value}' {{at}} failed to satisfy constraint: "
            f"Member must have value less than or equal to {high}"
        )


def _integer_validator(low: int | None, high: int | None) -> Validator:
    def validate(value: Any) -> Any:
        if type(value) is not int:
            if type(value) is float and value.is_integer():
                value = int(value)
            else:
                raise _Invalid.one(
                    f"must be an integer, not {_json_type(value)}", cannot_parse=True
                )
        _range_check(value, low, high)
        return value

    return validate


def _number_validator(low: float | None, high: float | None) -> Validator:
    def validate(value: Any) -> float:
        if type(value) is not float and type(value) is not int:
            raise _Invalid.one(f"must be a number, not {_json_type(value)}", cannot_parse=True)
        _range_check(value, low, high)
        return value

    return validate


def _size_check(count: int, low: int | None, high: int | None) -> None:
    if low is not None and count < low:
        raise _Invalid.one(
            f"Value {{at}} failed to satisfy constraint: Member must have length greater than or equal to {low} (got {count})"
        )
    if high is not None and count > high:
        raise _Invalid.one(
            f"Value {{at}} failed to satisfy constraint: Member must have length less than or equal to {high} (got {count})"
        )


def _list_validator(item: Validator, low: int | None, high: int | None) -> Validator:
    def validate(value: Any) -> list[Any]:
        if type(value) is not list:
            raise _Invalid.one(f"must be an array, not {_json_type(value)}", cannot_parse=True)
        _size_check(len(value), low, high)
        problems: list[tuple[list[str], str, bool]] | None = None
        for index, element in enumerate(value):
            try:
                converted = item(element)
            except _Invalid as exc:
                problems = (problems or []) + exc.under(f"[{index}]")
                continue
            if converted is not element:
                value[index] = converted
        if problems:
            raise _Invalid(problems)
        return value

    return validate


def _map_validator(key: Validator, item: Validator, low: int | None, high: int | None) -> Validator:
    def validate(value: Any) -> dict[str, Any]:
        if type(value) is not dict:
            raise _Invalid.one(f"must be an object, not {_json_type(value)}", cannot_parse=True)
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
            except _Invalid as exc:
                problems = (problems or []) + exc.under(f"[{name}]")
                continue
            if converted is not element:
                value[name] = converted
        if problems:
            raise _Invalid(problems)
        if nulls:
            for name in nulls:
                del value[name]
        return value

    return validate


# ------------------------------------------------------------------ operations


def _text_converter(shape: Any) -> Callable[[str], Any]:
    """Turns a URI label, query value or header (always text) into the member's type."""
    kind = shape.type_name
    if kind in ("integer", "long"):

        def to_int(text: str) -> int:
            try:
                return int(text)
            except ValueError:
                raise _Invalid.one(
                    f"Value '{_short(text)}' {{at}} is not an integer", cannot_parse=True
                ) from None

        return to_int
    if kind in ("float", "double"):

        def to_float(text: str) -> float:
            try:
                return float(text)
            except ValueError:
                raise _Invalid.one(
                    f"Value '{_short(text)}' {{at}} is not a number", cannot_parse=True
                ) from None

        return to_float
    if kind == "boolean":

        def to_bool(text: str) -> bool:
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            raise _Invalid.one(f"Value '{_short(text)}' {{at}} is not a boolean", cannot_parse=True)

        return to_bool
    return _identity


@attrs.define(eq=False)
class Operation:
    """One operation's compiled request parser and response serializer."""

    name: str
    service: str
    #: HTTP status of a successful response.
    status: int
    validate: Validator
    serialize: Serializer | None
    #: ``(member, wire name, converter)`` for querystring members.
    query: tuple[tuple[str, str, Callable[[str], Any], bool], ...] = ()
    #: ``(member, lower-case header name, converter)`` for header members.
    headers: tuple[tuple[str, bytes, Callable[[str], Any]], ...] = ()
    #: ``label name -> member`` for URI labels.
    labels: Mapping[str, str] = attrs.Factory(dict)
    #: Members that do not come from the JSON body.
    located: frozenset[str] = frozenset()
    #: The member carrying the idempotency token, if any.
    idempotency_token: str | None = None

    def parse(
        self,
        labels: Mapping[str, str],
        query_string: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
    ) -> dict[str, Any]:
        """The validated input of one request; raises ``ApiError`` (ValidationException)."""
        params = decode_json_object(body)
        try:
            if self.located:
                for name in self.located:
                    params.pop(name, None)
                for label, text in labels.items():
                    params[self.labels[label]] = text
                if self.query and query_string:
                    self._parse_query(params, query_string)
                if self.headers:
                    self._parse_headers(params, headers)
            return self.validate(params)  # type: ignore[no-any-return]
        except _Invalid as exc:
            raise invalid_to_error(exc) from None

    def _parse_query(self, params: dict[str, Any], query_string: bytes) -> None:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        for member, wire, convert, is_list in self.query:
            values = [value for key, value in pairs if key == wire]
            if not values:
                continue
            try:
                params[member] = [convert(v) for v in values] if is_list else convert(values[-1])
            except _Invalid as exc:
                raise _Invalid(exc.under(member)) from None

    def _parse_headers(
        self, params: dict[str, Any], headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        found = dict(headers)
        for member, wire, convert in self.headers:
            raw = found.get(wire)
            if raw is not None:
                try:
                    params[member] = convert(raw.decode("latin-1"))
                except _Invalid as exc:
                    raise _Invalid(exc.under(member)) from None


def decode_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``)."""
    if not body or body.isspace():
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise validation(
            f"The request body is not valid JSON: {exc}", reason="CANNOT_PARSE"
        ) from None
    if type(value) is not dict:
        raise validation(
            f"The request body must be a JSON object, not {_json_type(value)}",
            reason="CANNOT_PARSE",
        )
    return value


# ------------------------------------------------------------------ routing


@attrs.define(eq=False)
class _Node:
    literal: dict[str, _Node] = attrs.Factory(dict)
    label: _Node | None = None
    label_name: str | None = None
    greedy: bool = False
    operations: dict[str, Operation] = attrs.Factory(dict)


class RestJsonRouter:
    """Finds the operation for a method and a raw path."""

    def __init__(self) -> None:
        self._root = _Node()
        #: ``(method, raw path) -> match``: agents call the same few paths again and again.
        self._cache: dict[tuple[str, bytes], tuple[Operation, dict[str, str]] | None] = {}

    def add(self, method: str, template: str, operation: Operation) -> None:
        node = self._root
        for segment in template.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1]
                greedy = name.endswith("+")
                name = name.rstrip("+")
                if node.label is None:
                    node.label = _Node()
                    node.label_name = name
                    node.greedy = greedy
                node = node.label
            else:
                node = node.literal.setdefault(segment, _Node())
        node.operations[method] = operation

    def match(self, method: str, raw_path: bytes) -> tuple[Operation, dict[str, str]] | None:
        key = (method, raw_path)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._match(method, raw_path)
        if len(self._cache) >= 50_000:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _match(self, method: str, raw_path: bytes) -> tuple[Operation, dict[str, str]] | None:
        segments = raw_path.decode("latin-1").strip("/").split("/")
        labels: dict[str, str] = {}
        node = self._walk(self._root, segments, 0, labels)
        if node is None:
            return None
        operation = node.operations.get(method)
        if operation is None:
            return None
        return operation, labels

    def _walk(
        self, node: _Node, segments: list[str], index: int, labels: dict[str, str]
    ) -> _Node | None:
        if index == len(segments):
            return node if node.operations else None
        segment = segments[index]
        child = node.literal.get(segment)
        if child is not None:
            found = self._walk(child, segments, index + 1, labels)
            if found is not None:
                return found
        if node.label is not None and node.label_name is not None and segment:
            if node.greedy:
                labels[node.label_name] = unquote("/".join(segments[index:]))
                return node.label if node.label.operations else None
            labels[node.label_name] = unquote(segment)
            found = self._walk(node.label, segments, index + 1, labels)
            if found is not None:
                return found
            labels.pop(node.label_name, None)
        return None


@attrs.define(eq=False)
class ServiceCodec:
    """One service: its operations, routes and error statuses."""

    name: str
    model: Any
    operations: dict[str, Operation]
    router: RestJsonRouter | None
    #: ``X-Amz-Target`` prefix for JSON 1.1 services.
    target_prefix: str | None
    error_status: dict[str, int]
    compiler: _Compiler
    #: Error shape -> ``member -> header`` for members sent as headers.
    error_headers: dict[str, dict[str, bytes]] = attrs.Factory(dict)
    shape_serializers: dict[str, Serializer | None] = attrs.Factory(dict)

    def status_of(self, error: ApiError) -> int:
        if error.status is not None:
            return error.status
        return self.error_status.get(error.code, 400)

    def error_response(self, error: ApiError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body of an error, laid out by its error shape: members
        the shape puts in headers (``retryAfterSeconds`` is ``Retry-After``) go there."""
        headers = [(b"x-amzn-errortype", error.code.encode())]
        located = self.error_headers.get(error.code, {})
        body: dict[str, Any] = {"message": error.message}
        if self.target_prefix is not None:
            body["__type"] = error.code
        for name, value in error.members.items():
            header = located.get(name)
            if header is None:
                body[name] = value
            else:
                headers.append((header, str(value).encode()))
        payload = json.dumps(body, separators=(",", ":"), default=str).encode()
        return self.status_of(error), headers, payload

    def serialize_shape(self, shape_name: str, value: Mapping[str, Any]) -> Serialized:
        """Serialize a structure of the named shape once, for reuse in later outputs."""
        serializer = self.shape_serializers.get(shape_name)
        if serializer is None:
            serializer = self.shape_serializers[shape_name] = self.compiler.serializer(
                self.model.shape_for(shape_name)
            )
        assert serializer is not None
        return Serialized(serializer(value))

    def encode_output(self, operation: Operation, output: Mapping[str, Any]) -> bytes:
        wire = output if operation.serialize is None else operation.serialize(output)
        return _ENCODER.encode(wire).encode()


def _build_service(name: str) -> ServiceCodec:
    model = botocore.session.get_session().get_service_model(name)
    compiler = _Compiler()
    protocol = model.metadata["protocol"]
    router = RestJsonRouter() if protocol == "rest-json" else None
    operations: dict[str, Operation] = {}
    for op_name in model.operation_names:
        op_model = model.operation_model(op_name)
        input_shape = op_model.input_shape
        output_shape = op_model.output_shape
        query: list[tuple[str, str, Callable[[str], Any], bool]] = []
        headers: list[tuple[str, bytes, Callable[[str], Any]]] = []
        labels: dict[str, str] = {}
        located: set[str] = set()
        token: str | None = None
        if input_shape is not None:
            for member_name, member in input_shape.members.items():
                location = member.serialization.get("location")
                wire = member.serialization.get("name", member_name)
                if member.metadata.get("idempotencyToken"):
                    token = member_name
                if location == "uri":
                    labels[wire] = member_name
                elif location == "querystring":
                    is_list = member.type_name == "list"
                    target = member.member if is_list else member
                    query.append((member_name, wire, _text_converter(target), is_list))
                elif location == "header":
                    headers.append((member_name, wire.lower().encode(), _text_converter(member)))
                else:
                    continue
                located.add(member_name)
        operation = Operation(
            name=op_name,
            service=name,
            status=int(op_model.http.get("responseCode", 200)),
            validate=compiler.validator(input_shape) if input_shape is not None else _identity,
            serialize=compiler.serializer(output_shape) if output_shape is not None else None,
            query=tuple(query),
            headers=tuple(headers),
            labels=labels,
            located=frozenset(located),
            idempotency_token=token,
        )
        operations[op_name] = operation
        if router is not None:
            router.add(
                op_model.http["method"], op_model.http["requestUri"].split("?")[0], operation
            )
    error_status = {}
    error_headers: dict[str, dict[str, bytes]] = {}
    for shape in model.error_shapes:
        error_headers[shape.name] = {
            member_name: member.serialization["name"].encode()
            for member_name, member in shape.members.items()
            if member.serialization.get("location") == "header"
        }
        error = shape.metadata.get("error") or {}
        status = error.get("httpStatusCode")
        if status is None:
            status = 500 if shape.name in _SERVER_FAULTS else 400
        error_status[shape.name] = int(status)
    return ServiceCodec(
        name=name,
        model=model,
        operations=operations,
        router=router,
        target_prefix=model.metadata.get("targetPrefix") if protocol == "json" else None,
        error_status=error_status,
        compiler=compiler,
        error_headers=error_headers,
    )


#: JSON 1.1 error shapes without an ``httpStatusCode`` that are server faults.
_SERVER_FAULTS = frozenset({"ServiceUnavailableException", "InternalServerException"})


@cache
def deadline_codec() -> ServiceCodec:
    """The compiled Deadline codec (built on first use, then shared)."""
    return _build_service(DEADLINE)


@cache
def logs_codec() -> ServiceCodec:
    """The compiled CloudWatch Logs codec (built on first use, then shared)."""
    return _build_service(LOGS)
