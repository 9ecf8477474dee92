"""Asset manifests, version 2023-03-03, as AWS Deadline Cloud's job attachments write them.

A manifest lists the files under one asset root: each path (relative, with
``/`` separators), its xxh128 hash, size in bytes and mtime in microseconds.
``encode()`` gives the canonical JSON the official ``deadline`` library writes
(keys sorted, no whitespace, ASCII-escaped, paths ordered by their UTF-16
code units), so a manifest round-trips byte for byte and hashes the same.

``decode_manifest`` is strict where the official library is (the same
required fields, types, version and hash algorithm, at least one path,
alphanumeric hashes) and stricter where a worker must be: a path that is
absolute, empty or has a ``..`` component is refused, because it would write
outside the directory the manifest is synced into.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from ._errors import ManifestError

MANIFEST_VERSION = "2023-03-03"
HASH_ALG = "xxh128"
_HASH_RE = re.compile(r"[a-zA-Z0-9]+")
_DRIVE_RE = re.compile(r"[A-Za-z]:")


def _utf16_key(path: str) -> bytes:
    # RFC 8785 orders strings by UTF-16 code units; filenames in the wild can
    # hold lone surrogates (undecodable bytes), hence surrogatepass.
    return path.encode("utf-16-be", errors="surrogatepass")


def check_relative_path(path: str) -> str:
    """Return ``path`` if it is a safe relative manifest path, else raise ``ManifestError``."""
    if not isinstance(path, str) or not path:
        raise ManifestError(f"manifest path {path!r} is empty or not a string")
    if "\0" in path:
        raise ManifestError(f"manifest path {path!r} contains a NUL character")
    if path.startswith(("/", "\\")) or _DRIVE_RE.match(path):
        raise ManifestError(f"manifest path {path!r} is absolute; manifest paths must be relative")
    parts = re.split(r"[/\\]", path)
    if ".." in parts:
        raise ManifestError(
            f"manifest path {path!r} has a '..' component and would escape its root"
        )
    if any(part == "" for part in parts):
        raise ManifestError(f"manifest path {path!r} has an empty component")
    return path


@attrs.frozen
class ManifestPath:
    """One file of a manifest."""

    path: str
    hash: str
    size: int
    mtime: int  # microseconds since the epoch

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.hash, "mtime": self.mtime, "path": self.path, "size": self.size}


def _canonical_order(paths: Iterable[ManifestPath]) -> tuple[ManifestPath, ...]:
    return tuple(sorted(paths, key=lambda p: _utf16_key(p.path)))


@attrs.frozen
class Manifest:
    """A v2023-03-03 asset manifest (paths kept in canonical order)."""

    paths: tuple[ManifestPath, ...] = attrs.field(converter=_canonical_order)
    hash_alg: str = HASH_ALG
    #: ``totalSize`` as a decoded manifest gave it (kept so it re-encodes byte for byte).
    declared_total: int | None = None

    @classmethod
    def from_paths(cls, paths: Iterable[ManifestPath]) -> Manifest:
        """A manifest of ``paths``; a path given twice keeps its last entry."""
        by_path: dict[str, ManifestPath] = {}
        for entry in paths:
            check_relative_path(entry.path)
            by_path[entry.path] = entry
        return cls(tuple(by_path.values()))

    @property
    def total_size(self) -> int:
        if self.declared_total is not None:
            return self.declared_total
        return sum(p.size for p in self.paths)

    def to_json(self) -> dict[str, Any]:
        return {
            "hashAlg": self.hash_alg,
            "manifestVersion": MANIFEST_VERSION,
            "paths": [p.to_json() for p in self.paths],
            "totalSize": self.total_size,
        }

    def encode(self) -> str:
        """The canonical JSON text, exactly as the official library writes it."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def merge_manifests(manifests: Sequence[Manifest]) -> Manifest | None:
    """One manifest of all ``manifests``' paths; a later manifest wins a path (outputs over inputs)."""
    if not manifests:
        return None
    if len(manifests) == 1:
        return manifests[0]
    return Manifest.from_paths(p for m in manifests for p in m.paths)


def _require(obj: dict[str, Any], fields: Sequence[str], what: str) -> None:
    missing = [f for f in fields if f not in obj]
    if missing:
        raise ManifestError(f"{what} is missing required field(s) {missing}")


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"{what} must be an integer, not {value!r}")
    return value


def decode_manifest(text: str | bytes, *, source: str = "manifest") -> Manifest:
    """Parse a manifest, refusing what the official library refuses and unsafe paths.

    ``source`` (an S3 key or file name) is named in the error.
    """
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{source}: not valid JSON: {exc}") from exc
    try:
        if not isinstance(document, dict):
            raise ManifestError("a manifest must be a JSON object")
        if "manifestVersion" not in document:
            raise ManifestError('manifest is missing the required "manifestVersion" field')
        if document["manifestVersion"] != MANIFEST_VERSION:
            raise ManifestError(
                f"unknown manifest version {document['manifestVersion']!r} "
                f"(supported: {MANIFEST_VERSION})"
            )
        _require(document, ("hashAlg", "paths", "manifestVersion", "totalSize"), "manifest")
        if document["hashAlg"] != HASH_ALG:
            raise ManifestError(f"hashAlg must be {HASH_ALG!r}, not {document['hashAlg']!r}")
        total = _int(document["totalSize"], "totalSize")
        raw_paths = document["paths"]
        if not isinstance(raw_paths, list):
            raise ManifestError("paths must be a list")
        if not raw_paths:
            raise ManifestError("paths must have at least one item")
        entries: list[ManifestPath] = []
        for raw in raw_paths:
            if not isinstance(raw, dict):
                raise ManifestError(f"each path must be an object, not {raw!r}")
            _require(raw, ("path", "hash", "size", "mtime"), "path")
            path = raw["path"]
            if not isinstance(path, str):
                raise ManifestError(f"path must be a string, not {path!r}")
            check_relative_path(path)
            digest = raw["hash"]
            if not isinstance(digest, str) or not _HASH_RE.fullmatch(digest):
                raise ManifestError(f"the hash {digest!r} for path {path!r} is not alphanumeric")
            size = _int(raw["size"], f"size of {path!r}")
            if size < 0:
                raise ManifestError(f"size of {path!r} is negative")
            entries.append(
                ManifestPath(path, digest, size, _int(raw["mtime"], f"mtime of {path!r}"))
            )
    except ManifestError as exc:
        raise ManifestError(f"{source}: {exc}") from None
    deduplicated = Manifest.from_paths(entries)
    return attrs.evolve(deduplicated, declared_total=total)
