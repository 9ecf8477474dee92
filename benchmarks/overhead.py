"""Per-task overhead of `python -m agent run` against a shell loop.

2,000 tasks of `true` (by default) through `python -m agent run` (its default
path: the embedded mock farm and one embedded worker, over loopback HTTP) and
through `python -m agent run --direct` (the session runner alone), against a
shell loop forking `/bin/true` as many times, and against `openjd run` when
the OpenJD CLI is available (`--openjd PATH`, `.bench/openjd/bin/openjd`, or
on PATH; install it with `python -m venv .bench/openjd && .bench/openjd/bin/pip
install openjd-cli`).

    python -m benchmarks.overhead [--tasks 2000] [--repeat 3]

Targets (issue 16), through the farm: at most 1.0 ms per task above the shell
loop, 64 MiB peak RSS and 0.4 s start-up to the first task (openjd-sessions
needs about 4.5 ms a task). The figures include start-up, spread over the
tasks. Start-up is also shown on its own, two ways: the whole run of a job of
one task (start, the task, and the way out), and from the command's start to
its first task's start (the task runs ``date +%s.%N``; its output, on the same
clock as the benchmark's, says when it ran). The exit status says whether the
default path met the per-task target.

farmhand runs with its bytecode cached (in a temporary directory, each command
run once first to fill it), as an installed farmhand has it;
``--compile-each-run`` measures it as a checkout run with
``PYTHONDONTWRITEBYTECODE=1`` and no ``__pycache__`` is, compiling every module
from source at each start (see ``_common.bytecode_cache_env``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    ROOT,
    Measurement,
    add_json_option,
    bytecode_cache_env,
    farmhand,
    find_openjd,
    median_of,
    run_measured,
    table,
    write_results,
)

TARGET_MS = 1.0
TARGET_RSS_MIB = 64.0
TARGET_STARTUP_S = 0.4


def template(tasks: int) -> dict[str, object]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "overhead",
        "steps": [
            {
                "name": "T",
                "parameterSpace": {
                    "taskParameterDefinitions": [
                        {"name": "I", "type": "INT", "range": f"1-{tasks}"}
                    ]
                },
                "script": {"actions": {"onRun": {"command": "true"}}},
            }
        ],
    }


def first_task_template() -> dict[str, object]:
    """One task that prints when it runs (seconds since the epoch)."""
    document = template(1)
    steps = document["steps"]
    assert isinstance(steps, list)
    steps[0]["script"] = {"actions": {"onRun": {"command": "date", "args": ["+%s.%N"]}}}
    return document


def to_first_task(argv: list[str], env: dict[str, str] | None) -> float:
    """Seconds from starting ``argv`` to its first task's start, by the task's own clock."""
    start = time.time()
    done = subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, check=True, timeout=120)
    stamps = re.findall(rb"^(\d+\.\d{9})$", done.stdout, re.MULTILINE)
    if not stamps:
        raise RuntimeError(f"no time stamp in the output of {argv}: {done.stdout[-500:]!r}")
    return float(stamps[0]) - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--openjd", help="path to the openjd CLI to compare against")
    parser.add_argument(
        "--compile-each-run",
        action="store_true",
        help="run farmhand as the environment says (PYTHONDONTWRITEBYTECODE honoured) "
        "instead of with its bytecode cached",
    )
    add_json_option(parser, "overhead")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.json"
        path.write_text(json.dumps(template(args.tasks)))
        one = Path(tmp) / "one.json"
        one.write_text(json.dumps(template(1)))
        stamp = Path(tmp) / "stamp.json"
        stamp.write_text(json.dumps(first_task_template()))
        env = None if args.compile_each_run else bytecode_cache_env(Path(tmp) / "pycache")

        def run_farmhand(*argv: str) -> Measurement:
            return run_measured(farmhand(*argv), env=env)

        if env is not None:
            for warm_up in (("run", str(one)), ("run", str(one), "--direct")):
                run_farmhand(*warm_up)
        shell = median_of(
            args.repeat,
            lambda: run_measured(
                ["sh", "-c", f"i=0; while [ $i -lt {args.tasks} ]; do /bin/true; i=$((i+1)); done"]
            ),
        )
        startup = median_of(args.repeat, lambda: run_farmhand("run", str(one)))
        startup_direct = median_of(args.repeat, lambda: run_farmhand("run", str(one), "--direct"))
        first = statistics.median(
            to_first_task(farmhand("run", str(stamp)), env) for _ in range(args.repeat)
        )
        first_direct = statistics.median(
            to_first_task(farmhand("run", str(stamp), "--direct"), env) for _ in range(args.repeat)
        )
        ours = median_of(args.repeat, lambda: run_farmhand("run", str(path)))
        direct = median_of(args.repeat, lambda: run_farmhand("run", str(path), "--direct"))
        rows: list[list[object]] = [
            ["runner", "total s", "ms/task", "ms/task above shell", "ratio to shell"]
        ]

        def row(name: str, seconds: float) -> list[object]:
            per_task = seconds / args.tasks * 1000
            above = (seconds - shell.seconds) / args.tasks * 1000
            return [
                name,
                f"{seconds:.3f}",
                f"{per_task:.3f}",
                f"{above:.3f}",
                f"{seconds / shell.seconds:.2f}x",
            ]

        rows.append(row("shell loop (/bin/true)", shell.seconds))
        rows.append(row("farmhand run (farm + worker)", ours.seconds))
        rows.append(row("farmhand run --direct", direct.seconds))
        runners = {
            "shell": {"seconds": shell.seconds, "peak_rss_mib": shell.peak_rss_mib},
            "farm": {"seconds": ours.seconds, "peak_rss_mib": ours.peak_rss_mib},
            "direct": {"seconds": direct.seconds, "peak_rss_mib": direct.peak_rss_mib},
        }
        openjd = find_openjd(args.openjd)
        if openjd:
            theirs = median_of(args.repeat, lambda: run_measured([openjd, "run", str(path)]))
            rows.append(row("openjd run", theirs.seconds))
            runners["openjd"] = {"seconds": theirs.seconds, "peak_rss_mib": theirs.peak_rss_mib}
        print(
            f"{args.tasks} tasks of `true`, median of {args.repeat} runs, farmhand's bytecode "
            + ("compiled at each run" if env is None else "cached")
        )
        print(table(rows))
        above_ms = (ours.seconds - shell.seconds) / args.tasks * 1000
        direct_ms = (direct.seconds - shell.seconds) / args.tasks * 1000
        print(
            f"farmhand start-up (a job of 1 task, the whole run): {startup.seconds:.3f} s "
            f"through the farm, {startup_direct.seconds:.3f} s direct"
        )
        print(
            f"farmhand start-up to the first task: {first:.3f} s through the farm, "
            f"{first_direct:.3f} s direct"
        )
        print(
            f"farmhand overhead: {above_ms:.3f} ms/task above the shell loop through the farm, "
            f"{direct_ms:.3f} direct (target <= {TARGET_MS} ms)"
        )
        print(
            f"peak RSS: {ours.peak_rss_mib:.1f} MiB through the farm, "
            f"{direct.peak_rss_mib:.1f} MiB direct (target <= {TARGET_RSS_MIB:g} MiB)"
        )
        print(
            f"targets through the farm: {above_ms:.3f} <= {TARGET_MS} ms/task "
            f"{_met(above_ms <= TARGET_MS)}, {ours.peak_rss_mib:.1f} <= {TARGET_RSS_MIB:g} MiB "
            f"{_met(ours.peak_rss_mib <= TARGET_RSS_MIB)}, start-up to the first task "
            f"{first:.3f} <= {TARGET_STARTUP_S} s {_met(first <= TARGET_STARTUP_S)}"
        )
        if not openjd:
            print("openjd CLI not found: pass --openjd PATH to compare")
        write_results(
            args.json,
            "overhead",
            parameters={
                "tasks": args.tasks,
                "repeat": args.repeat,
                "bytecode": "compiled at each run" if env is None else "cached",
            },
            results={
                # Medians of whole runs, start-up included: seconds and peak RSS (MiB).
                "runners": runners,
                "startup_seconds": {"farm": startup.seconds, "direct": startup_direct.seconds},
                # From the command's start to its first task's, medians.
                "first_task_seconds": {"farm": first, "direct": first_direct},
                "target_ms_above_shell": TARGET_MS,
            },
        )
        return 0 if above_ms <= TARGET_MS else 1


def _met(met: bool) -> str:
    return "(met)" if met else "(NOT met)"


if __name__ == "__main__":
    raise SystemExit(main())
