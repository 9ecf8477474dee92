"""Shared helpers for the benchmark scripts.

Every benchmark measures its baseline in the same run, repeats each measurement
and takes the median, because these machines are noisy. Each writes what it
measured as JSON beside its printed table (``add_json_option``, ``write_results``:
``benchmarks/results/<name>.json`` by default), which ``python -m benchmarks.plot``
draws.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen
class Measurement:
    seconds: float
    #: Peak resident set size of the measured process tree's largest member, in MiB.
    peak_rss_mib: float


def run_measured(
    argv: Sequence[str],
    *,
    stdout: int | None = subprocess.DEVNULL,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
) -> Measurement:
    """Run ``argv`` to completion; wall time and peak RSS (from wait4)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        list(argv), stdout=stdout, stderr=subprocess.DEVNULL, cwd=cwd, env=env
    )
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


def bytecode_cache_env(directory: Path) -> dict[str, str]:
    """The environment with Python's bytecode cached under ``directory``, as an installed
    farmhand has it (pip compiles a wheel's modules when it installs them). Without
    (``PYTHONDONTWRITEBYTECODE`` set, as on some CI machines, and a source checkout
    with no ``__pycache__``), every run compiles farmhand's two hundred modules from
    source first: a fixed cost of a few hundred milliseconds that no change to
    farmhand's code moves. Run each command once before timing it, to fill the cache."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(directory)
    return env


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


# ---------------------------------------------------------------- results as JSON

#: Where each benchmark writes its results by default (``benchmarks/results/<name>.json``);
#: ``python -m benchmarks.plot`` draws them.
RESULTS_DIR = ROOT / "benchmarks" / "results"
#: The shape of a results document; ``plot`` refuses others.
RESULTS_SCHEMA = 1


def _json_path(text: str) -> Path | None:
    return None if text in ("", "-") else Path(text)


def add_json_option(parser: argparse.ArgumentParser, name: str) -> None:
    """``--json PATH``: where the results go as JSON, beside the printed table
    (default ``benchmarks/results/<name>.json``; ``-`` for nowhere)."""
    parser.add_argument(
        "--json",
        type=_json_path,
        default=RESULTS_DIR / f"{name}.json",
        metavar="PATH",
        help=f"also write the results there as JSON (default benchmarks/results/{name}.json; "
        "'-': not at all); python -m benchmarks.plot draws them",
    )


def write_results(
    path: Path | None,
    benchmark: str,
    *,
    parameters: Mapping[str, Any],
    results: Mapping[str, Any],
) -> None:
    """Write one run's results: what was run (``parameters``), what it measured
    (``results``: plain numbers in seconds, MiB, ... as each script documents), and
    where and when (the machine's CPUs and load, Python, the commit)."""
    if path is None:
        return
    document = {
        "benchmark": benchmark,
        "schema": RESULTS_SCHEMA,
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": [round(load, 2) for load in os.getloadavg()],
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
        },
        "commit": _commit(),
        "parameters": dict(parameters),
        "results": dict(results),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"results written to {path}", flush=True)


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def read_results(path: Path) -> dict[str, Any]:
    """A results document; ``ValueError`` when it is not one this version draws."""
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("schema") != RESULTS_SCHEMA:
        raise ValueError(f"{path}: not a results document of schema {RESULTS_SCHEMA}")
    return document
