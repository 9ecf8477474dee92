"""xxh128 hashing of files and bytes, the hash job attachments name their data by.

``hash_file_sync`` reads into one reused buffer (bounded memory, no copy per
chunk); ``hash_file`` runs it in a worker thread so the Trio loop never waits
on a disk read or a hash (xxhash releases the GIL on large buffers, so several
files hash in parallel).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import trio
import xxhash

#: Read size for hashing; large enough that the per-call overhead vanishes.
HASH_CHUNK = 1 << 20
#: Concurrent hashing threads (disk and CPU bound; more does not help).
HASH_LIMITER_TOKENS = 4


class HashStopped(Exception):
    """The caller gave up on this hash (seen only by an abandoned thread)."""


def hash_bytes(data: bytes) -> str:
    """The xxh128 hex digest of ``data``."""
    return xxhash.xxh3_128_hexdigest(data)


def hash_file_sync(
    path: str | os.PathLike[str], *, stop: threading.Event | None = None
) -> tuple[str, int]:
    """Return ``(xxh128 hex digest, size in bytes)`` of the file at ``path``.

    ``stop`` (set from another thread) abandons the read between chunks.
    """
    hasher = xxhash.xxh3_128()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as file:
        while True:
            if stop is not None and stop.is_set():
                raise HashStopped(str(path))
            count = file.readinto(view)
            if not count:
                break
            hasher.update(view[:count])
            size += count
    return hasher.hexdigest(), size


_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("hash_limiter")


def hash_limiter() -> trio.CapacityLimiter:
    """The hashing threads' limiter (one per Trio run)."""
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(HASH_LIMITER_TOKENS)
        _LIMITER.set(limiter)
        return limiter


async def hash_file(path: Path, *, limiter: trio.CapacityLimiter | None = None) -> tuple[str, int]:
    """``hash_file_sync`` in a worker thread: ``(digest, size)``."""
    stop = threading.Event()
    try:
        # abandon_on_cancel: hashing is a pure read; the stop event ends the
        # abandoned thread at its next chunk.
        return await trio.to_thread.run_sync(
            lambda: hash_file_sync(path, stop=stop),
            abandon_on_cancel=True,
            limiter=limiter or hash_limiter(),
        )
    finally:
        stop.set()
