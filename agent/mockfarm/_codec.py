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

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, unquote

import attrs

from .._documents import DocumentError, load_json
from .._servicemodels import service_model
from ._apierrors import ApiError, validation
from ._shapes import (
    Invalid,
    Serialized,
    Serializer,
    ShapeCompiler,
    Validator,
    identity,
    invalid_to_error,
    json_type,
    text_converter,
)

DEADLINE = "deadline"
LOGS = "logs"

#: Outputs are trees the farm built (no cycles): skip the encoder's cycle check.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


@attrs.define(eq=False)
class Operation:
    """One operation's compiled request parser and response serializer.

    ``validate`` and ``serialize`` are compiled from the model on their first call
    (``Operation.compiled`` gives them compiled): a process serves a few of a
    model's two hundred operations, and compiling all of them at start-up cost
    more time and memory than serving most runs."""

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

    @classmethod
    def compiled(
        cls,
        compiler: ShapeCompiler,
        input_shape: Any,
        output_shape: Any,
        **fields: Any,
    ) -> Operation:
        """An operation whose validator and serializer ``compiler`` builds from the
        input and output shapes (``None``: no input, no output) when first called."""
        operation: Operation = cls(validate=identity, serialize=None, **fields)
        if input_shape is not None:

            def validate(params: Any) -> Any:
                operation.validate = compiler.validator(input_shape)
                return operation.validate(params)

            operation.validate = validate
        if output_shape is not None:

            def serialize(output: Any) -> Any:
                compiled = compiler.serializer(output_shape)
                operation.serialize = compiled if compiled is not None else identity
                return operation.serialize(output)

            operation.serialize = serialize
        return operation

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
        except Invalid as exc:
            raise invalid_to_error(exc) from None

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` validated as a request's input is (for callers that build the
        input themselves, such as the monitor's actions); raises ``ApiError``."""
        try:
            return self.validate(params)  # type: ignore[no-any-return]
        except Invalid as exc:
            raise invalid_to_error(exc) from None

    def _parse_query(self, params: dict[str, Any], query_string: bytes) -> None:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        for member, wire, convert, is_list in self.query:
            values = [value for key, value in pairs if key == wire]
            if not values:
                continue
            try:
                params[member] = [convert(v) for v in values] if is_list else convert(values[-1])
            except Invalid as exc:
                raise Invalid(exc.under(member)) from None

    def _parse_headers(
        self, params: dict[str, Any], headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        found = dict(headers)
        for member, wire, convert in self.headers:
            raw = found.get(wire)
            if raw is not None:
                try:
                    params[member] = convert(raw.decode("latin-1"))
                except Invalid as exc:
                    raise Invalid(exc.under(member)) from None


def decode_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``), nested at most
    ``MAX_DEPTH`` deep (a deeper one is a 400, not a RecursionError)."""
    if not body or body.isspace():
        return {}
    try:
        value = load_json(body, what="request body")
    except DocumentError as exc:
        raise validation(f"{str(exc)[:1].upper()}{str(exc)[1:]}", reason="CANNOT_PARSE") from None
    if type(value) is not dict:
        raise validation(
            f"The request body must be a JSON object, not {json_type(value)}",
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
    #: method -> operation name
    operations: dict[str, str] = attrs.Factory(dict)


class RestJsonRouter:
    """Finds the operation for a method and a raw path; ``operations`` maps the names
    routes were added with to the operations (built when first matched)."""

    def __init__(self, operations: Mapping[str, Operation]) -> None:
        self._root = _Node()
        self._operations = operations
        #: ``(method, raw path) -> match``: agents call the same few paths again and again.
        self._cache: dict[tuple[str, bytes], tuple[Operation, dict[str, str]] | None] = {}

    def add(self, method: str, template: str, operation: str) -> None:
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
        name = node.operations.get(method)
        if name is None:
            return None
        return self._operations[name], labels

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
    operations: Mapping[str, Operation]
    router: RestJsonRouter | None
    #: ``X-Amz-Target`` prefix for JSON 1.1 services.
    target_prefix: str | None
    error_status: dict[str, int]
    compiler: ShapeCompiler
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


class _Operations(Mapping[str, Operation]):
    """A model's operations by name, each built when first asked for: a process serves
    a few of a model's operations, and building all of them at start-up cost more
    time and memory than serving most runs (``Operation.compiled`` defers the rest)."""

    def __init__(self, service: str, model: Any, compiler: ShapeCompiler) -> None:
        self._service = service
        self._model = model
        self._compiler = compiler
        self._names: frozenset[str] = frozenset(model.operation_names)
        self._built: dict[str, Operation] = {}

    def __getitem__(self, name: str) -> Operation:
        operation = self._built.get(name)
        if operation is None:
            if name not in self._names:
                raise KeyError(name)
            operation = self._built[name] = _build_operation(
                self._service, self._model.operation_model(name), self._compiler
            )
        return operation

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._model.operation_names)

    def __len__(self) -> int:
        return len(self._names)


def _build_operation(service: str, op_model: Any, compiler: ShapeCompiler) -> Operation:
    input_shape = op_model.input_shape
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
                query.append((member_name, wire, text_converter(target), is_list))
            elif location == "header":
                headers.append((member_name, wire.lower().encode(), text_converter(member)))
            else:
                continue
            located.add(member_name)
    return Operation.compiled(
        compiler,
        input_shape,
        op_model.output_shape,
        name=op_model.name,
        service=service,
        status=int(op_model.http.get("responseCode", 200)),
        query=tuple(query),
        headers=tuple(headers),
        labels=labels,
        located=frozenset(located),
        idempotency_token=token,
    )


def _build_service(name: str) -> ServiceCodec:
    model = service_model(name)
    compiler = ShapeCompiler()
    protocol = model.metadata["protocol"]
    operations = _Operations(name, model, compiler)
    router = RestJsonRouter(operations) if protocol == "rest-json" else None
    if router is not None:
        # The routes from the model's description: no operation is built for them.
        for op_name, description in model._service_description["operations"].items():
            http = description["http"]
            router.add(http["method"], http["requestUri"].split("?")[0], op_name)
    error_status = {}
    error_headers: dict[str, dict[str, bytes]] = {}
    for shape_name, description in model._service_description["shapes"].items():
        if not description.get("exception"):
            continue  # as botocore's ``error_shapes``, without resolving every shape
        shape = model.shape_for(shape_name)
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
