"""Shared helpers for the benchmark scripts.

Every benchmark measures its baseline in the same run, repeats each measurement
and takes the median, because these machines are noisy.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen
class Measurement:
    seconds: float
    #: Peak resident set size of the measured process tree's largest member, in MiB.
    peak_rss_mib: float


def run_measured(
    argv: Sequence[str], *, stdout: int | None = subprocess.DEVNULL, cwd: Path = ROOT
) -> Measurement:
    """Run ``argv`` to completion; wall time and peak RSS (from wait4)."""
    start = time.perf_counter()
    process = subprocess.Popen(list(argv), stdout=stdout, stderr=subprocess.DEVNULL, cwd=cwd)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} ... exited with {process.returncode}")
    return Measurement(elapsed, usage.ru_maxrss / 1024)


def median_of(repeat: int, measure: Callable[[], Measurement]) -> Measurement:
    results = [measure() for _ in range(repeat)]
    return Measurement(
        statistics.median(r.seconds for r in results), max(r.peak_rss_mib for r in results)
    )


def farmhand(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def find_openjd(explicit: str | None) -> str | None:
    """The `openjd` CLI to compare against: --openjd, else .bench/openjd/bin, else PATH."""
    if explicit:
        return explicit
    local = ROOT / ".bench" / "openjd" / "bin" / "openjd"
    if local.exists():
        return str(local)
    return shutil.which("openjd")


def table(rows: Sequence[Sequence[object]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )
