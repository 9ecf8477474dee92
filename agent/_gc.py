"""Collector settings for the long-running processes: the worker and ``mockfarm serve``.

Both keep many long-lived objects (the farm its records; both botocore's service
models, parsed once) and allocate many short-lived ones per call; CPython's
default thresholds (a young collection every 700 allocations, the whole heap
every few seconds of calls) then rescan the long-lived ones over and over.
Freezing what exists after start-up and collecting the young generation less
often keeps that cost off the calls' path.
"""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Collect once, freeze what is left (never scanned again) and raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
