"""Loading JSON and YAML documents that may be hostile, within fixed bounds.

Every template, parameter file, task list and path-mapping document farmhand
reads goes through ``load_document`` before openjd-model sees it, so that a
small document cannot make the reader take the host down:

- the text is at most ``TEMPLATE_MAX_CHARS`` long: Deadline Cloud's own limit
  for CreateJob's ``template`` (read from botocore's service model, so it moves
  with the service);
- YAML aliases may repeat what an anchor names, but the document they expand
  to (counted on the composed node graph, once per shared node, before anything
  constructs or walks the data) may hold at most ``ALIAS_BUDGET`` nodes more
  than the text itself writes: the "billion laughs" grows to billions and is
  refused after counting a few hundred nodes;
- nesting is at most ``MAX_DEPTH`` levels, in JSON and YAML alike (deeper
  documents would exhaust the interpreter's stack in the parser or in whatever
  walks them next).

Whatever goes wrong is a ``DocumentError``: one line, no traceback. Decoding
the text from bytes (a non-UTF-8 file) is ``read_text``'s job, which says so in
the same way.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import yaml

#: Aliases may add this many nodes to what the document writes out.
ALIAS_BUDGET = 100_000

#: Containers inside containers, at most (a job template needs about 10).
MAX_DEPTH = 100

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where built


class DocumentError(ValueError):
    """A document is unreadable, malformed or past the bounds above. One line."""


@cache
def template_max_chars() -> int:
    """The longest template Deadline Cloud accepts in CreateJob (``JobTemplate``'s
    ``max`` in botocore's ``deadline`` model: 1,000,000 characters in 2023-10-12).

    Every ``run`` reads a template, ``--direct`` ones too, which need nothing else
    of botocore: so the number is read from the model file's ``JobTemplate`` shape
    alone (a few milliseconds), not by parsing the whole model with botocore's
    loader (60 ms and 6 MiB, issue 16). With ``AWS_DATA_PATH`` set, or if the file
    is not as expected, the model comes from botocore's loader after all."""
    found = None if os.environ.get("AWS_DATA_PATH") else _job_template_max_from_file()
    if found is not None:
        return found
    from ._servicemodels import service_model

    return int(service_model("deadline").shape_for("JobTemplate").metadata["max"])


#: A string shape is one flat object: ``"JobTemplate":{"type":"string","max":1000000,...}``.
_JOB_TEMPLATE_SHAPE = re.compile(rb'"JobTemplate"\s*:\s*(\{[^{}]*\})')


def _job_template_max_from_file() -> int | None:
    spec = importlib.util.find_spec("botocore")
    if spec is None or not spec.submodule_search_locations:
        return None
    service = Path(next(iter(spec.submodule_search_locations))) / "data" / "deadline"
    try:
        latest = max(entry.name for entry in service.iterdir() if entry.is_dir())
        # In botocore's order (its ``JSONFileLoader``): ``.json`` first, then ``.json.gz``.
        for name, opener in (("service-2.json", open), ("service-2.json.gz", gzip.open)):
            path = service / latest / name
            if path.is_file():
                with opener(path, "rb") as file:
                    match = _find_job_template(file.read)
                break
        else:
            return None
    except (OSError, ValueError, EOFError):  # ValueError: no version directory
        return None
    if match is None:
        return None
    try:
        value = json.loads(match.decode("utf-8")).get("max")
    except ValueError:  # UnicodeDecodeError too
        return None
    return value if type(value) is int and value > 0 else None


def _find_job_template(read: Callable[[int], bytes]) -> bytes | None:
    """The ``JobTemplate`` shape's object, read only as far as it: a third of the model,
    and the name found with ``bytes.find`` (a regex search of the text from its start
    took longer than decompressing it)."""
    key = b'"JobTemplate"'
    data = b""
    start = 0
    while chunk := read(1 << 16):
        data += chunk
        while (at := data.find(key, start)) != -1:
            if data.find(b"}", at) == -1:
                break  # what follows the name is not all here yet
            match = _JOB_TEMPLATE_SHAPE.match(data, at)
            if match is not None:
                return match.group(1)
            start = at + 1  # the name, not the shape's definition ("shape":"JobTemplate")
        else:
            start = max(start, len(data) - len(key))
    return None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def read_text(path: Path, *, what: str) -> str:
    """A file's text, UTF-8, at most ``template_max_chars()`` characters."""
    limit = template_max_chars()
    try:
        with path.open("rb") as file:
            data = file.read(4 * limit + 1)  # UTF-8 takes at most 4 bytes a character
    except OSError as exc:
        raise DocumentError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"{what} {path} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})"
        ) from None
    check_size(text, what=f"{what} {path}")
    return text


def check_size(text: str, *, what: str) -> None:
    limit = template_max_chars()
    if len(text) > limit:
        raise DocumentError(f"the {what} is {len(text):,} characters long; the limit is {limit:,}")


def load_document(text: str, *, json_only: bool = False, what: str = "document") -> Any:
    """``text`` as JSON (``json_only``) or YAML (which reads JSON too), bounded."""
    check_size(text, what=what)
    try:
        value = _load_json(text) if json_only else _load_yaml(text)
    except RecursionError:
        raise DocumentError(f"the {what} is nested too deeply") from None
    except (yaml.YAMLError, ValueError) as exc:
        if isinstance(exc, DocumentError):
            raise DocumentError(f"the {what} {exc}") from None
        kind = "JSON" if json_only else "JSON or YAML"
        raise DocumentError(f"the {what} is not valid {kind}: {_one_line(exc)}") from None
    return value


def _load_json(text: str) -> Any:
    value = json.loads(text)
    _check_depth(value)
    return value


def load_json(data: str | bytes, *, what: str = "body") -> Any:
    """JSON at most ``MAX_DEPTH`` deep (any size: bound that before), for request
    bodies. ``DocumentError`` says what is wrong in one line."""
    try:
        return _load_json(data)  # type: ignore[arg-type]
    except RecursionError:
        raise DocumentError(f"the {what} is nested too deeply") from None
    except DocumentError as exc:
        raise DocumentError(f"the {what} {exc}") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise DocumentError(f"the {what} is not valid JSON: {_one_line(exc)}") from None


def _check_depth(value: Any) -> None:
    """No deeper than ``MAX_DEPTH``, walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= MAX_DEPTH:
            raise DocumentError(f"is nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)


def _load_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node) -> None:
    """Refuse a node graph that expands past the alias budget or ``MAX_DEPTH``.

    Aliases make the graph share nodes; its expanded size is computed bottom-up,
    once per node (memoised by identity), so counting costs what the text holds.
    An alias that refers to its own ancestor (a cycle) counts as past the budget.
    """
    expanded: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    # Iterative post-order walk: (node, children visited?).
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            expanded[key] = 1 + sum(expanded[id(child)] for child in children)
            height[key] = 1 + max((height[id(child)] for child in children), default=0)
            if height[key] > MAX_DEPTH:
                raise DocumentError(f"is nested more than {MAX_DEPTH} levels deep")
            continue
        if key in expanded:
            continue
        if key in on_path:
            raise DocumentError("refers to itself through an alias")
        if isinstance(node, yaml.ScalarNode):
            expanded[key] = height[key] = 1
            continue
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    written = len(expanded)
    if expanded[id(root)] > written + ALIAS_BUDGET:
        raise DocumentError(
            f"expands through YAML aliases to {expanded[id(root)]:,} nodes from "
            f"{written:,} (at most {ALIAS_BUDGET:,} more are allowed)"
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []
