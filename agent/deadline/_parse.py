"""botocore's JSON response parsers, with the walk over each shape worked out once.

botocore parses a response by walking the output shape for every node of the
body: a ``getattr`` by type name, a method call, a shape lookup. For an
UpdateWorkerSchedule answer with dozens of assigned actions that is most of
the cost of a call. ``create_parser(protocol)`` returns botocore's own parser
class for ``rest-json`` or ``json`` whose ``_parse_shape`` runs a function
compiled once per shape instead: structures, lists and maps become loops over
precomputed members, and every leaf goes straight to the parser's own handler
(``int`` for a rest-json integer, the timestamp and blob parsers, the
JSON-value header decoder...). Everything else, the metadata, headers, payloads,
errors and tagged-union checks, is botocore's code, so the result is the same
dict botocore returns (``tests/agent/deadline/test_parse.py`` compares the two on
every output shape of both models).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import botocore.model
import botocore.parsers
import botocore.utils

Parse = Callable[[Any], Any]

_BASES: dict[str, type[Any]] = {
    "rest-json": botocore.parsers.RestJSONParser,
    "json": botocore.parsers.JSONParser,
}


def _key(shape: botocore.model.Shape) -> tuple[Any, ...]:
    # botocore makes a new Shape object at every reference; a shape is its model (the
    # resolver), its name and the traits the reference adds.
    return (
        id(shape._shape_resolver),
        shape.name,
        shape.type_name,
        json.dumps(shape.serialization, sort_keys=True, default=str),
    )


class _Compiled:
    """The compiled functions of one parser instance, by shape."""

    def __init__(self, parser: Any) -> None:
        self._parser = parser
        #: key -> (a shape of that key, keeping its resolver alive; the function's cell)
        self._by_key: dict[tuple[Any, ...], tuple[botocore.model.Shape, list[Parse]]] = {}

    def get(self, shape: botocore.model.Shape) -> Parse:
        key = _key(shape)
        entry = self._by_key.get(key)
        if entry is not None:
            return entry[1][0]
        # A cell, filled once compiled, so a recursive shape can refer to itself.
        cell: list[Parse] = []
        self._by_key[key] = (shape, cell)

        def deferred(node: Any) -> Any:
            return cell[0](node)

        cell.append(deferred)
        cell[0] = self._compile(shape)
        return cell[0]

    def _compile(self, shape: botocore.model.Shape) -> Parse:
        parser = self._parser
        kind = shape.type_name
        if kind == "structure" and not shape.is_document_type:
            assert isinstance(shape, botocore.model.StructureShape)
            fields = [
                (name, member.serialization.get("name", name), self.get(member))
                for name, member in shape.members.items()
            ]
            union = shape.is_tagged_union
            # A union's usual node: one known member, set (and no "__type").
            known = frozenset(wire for _, wire, _ in fields)

            def structure(node: Any) -> Any:
                if node is None:
                    return None
                # botocore's own check (it raises for a union with other than one member),
                # for any node but the usual one, which it passes.
                if (
                    union
                    and not (
                        len(node) == 1 and next(iter(node)) in known and None not in node.values()
                    )
                    and parser._has_unknown_tagged_union_member(shape, node)
                ):
                    return parser._handle_unknown_tagged_union_member(parser._get_first_key(node))
                parsed = {}
                get = node.get
                for name, wire, parse in fields:
                    raw = get(wire)
                    if raw is not None:
                        parsed[name] = parse(raw)
                return parsed

            return structure
        if kind == "list" and shape.serialization.get("location") != "header":
            assert isinstance(shape, botocore.model.ListShape)
            parse_item = self.get(shape.member)

            def listing(node: Any) -> Any:
                return [None if item is None else parse_item(item) for item in node]

            return listing
        if kind == "map":
            assert isinstance(shape, botocore.model.MapShape)
            parse_key, parse_value = self.get(shape.key), self.get(shape.value)

            def mapping(node: Any) -> Any:
                return {parse_key(key): parse_value(value) for key, value in node.items()}

            return mapping
        handler = getattr(type(parser), f"_handle_{kind}", None)
        if handler is None or handler is type(parser)._default_handle:
            return _identity
        if kind == "string" and not botocore.utils.is_json_value_header(shape):
            return _identity
        # Documents, header lists, timestamps, blobs, numbers: the parser's own.
        bound = getattr(parser, f"_handle_{kind}")
        return lambda node: bound(shape, node)


def _identity(node: Any) -> Any:
    return node


def create_parser(protocol: str) -> Any:
    """botocore's parser for ``protocol``, compiled as the module docstring says
    (other protocols: botocore's own)."""
    base = _BASES.get(protocol)
    if base is None:
        return botocore.parsers.create_parser(protocol)

    class CompiledParser(base):  # type: ignore[valid-type,misc]  # a botocore class chosen at run time
        def __init__(self) -> None:
            super().__init__()
            self._compiled = _Compiled(self)

        def _parse_shape(self, shape: botocore.model.Shape, node: Any) -> Any:
            return self._compiled.get(shape)(node)

    CompiledParser.__name__ = CompiledParser.__qualname__ = f"Compiled{base.__name__}"
    return CompiledParser()
