"""Memory and start-up of `run --direct` against the size of the parameter space.

A job whose one step has N tasks (`range: 1-N`) and whose first task fails, so the
run ends after one task whatever N is: what is measured is what the plan of N
tasks costs. The baseline is the same job with N = 10, in the same run.

    python -m benchmarks.taskcount [--sizes 10,10000,1000000,100000000] [--repeat 3]

Target: peak RSS flat (at most 1.1x the baseline) up to 10**8 tasks; before the
plan was made lazily it grew about 0.6 GB per million tasks (issue 19).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

from benchmarks._common import (
    ROOT,
    Measurement,
    add_json_option,
    farmhand,
    median_of,
    table,
    write_results,
)

TARGET_RATIO = 1.1


def template(count: int) -> dict[str, object]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "taskcount",
        "steps": [
            {
                "name": "S",
                "parameterSpace": {
                    "taskParameterDefinitions": [
                        {"name": "F", "type": "INT", "range": f"1-{count}"}
                    ]
                },
                "script": {"actions": {"onRun": {"command": "false"}}},
            }
        ],
    }


def measure(path: Path) -> Measurement:
    start = time.perf_counter()
    process = subprocess.Popen(
        farmhand("run", str(path), "--direct"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 1:  # the first task fails: exit 1
        raise RuntimeError(f"run exited with {os.waitstatus_to_exitcode(status)}")
    return Measurement(elapsed, usage.ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,10000,1000000,100000000")
    parser.add_argument("--repeat", type=int, default=3)
    add_json_option(parser, "taskcount")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as directory:
        results = {}
        for count in sizes:
            path = Path(directory) / f"job-{count}.json"
            path.write_text(json.dumps(template(count)))
            results[count] = median_of(args.repeat, partial(measure, path))
    baseline = results[sizes[0]]
    rows: list[list[object]] = [["tasks", "wall s", "peak RSS MiB", "RSS / baseline"]]
    for count in sizes:
        result = results[count]
        ratio = result.peak_rss_mib / baseline.peak_rss_mib
        rows.append(
            [f"{count:,}", f"{result.seconds:.2f}", f"{result.peak_rss_mib:.1f}", f"{ratio:.2f}x"]
        )
    print(table(rows))
    worst = max(results[c].peak_rss_mib for c in sizes) / baseline.peak_rss_mib
    verdict = "met" if worst <= TARGET_RATIO else "NOT met"
    print(f"largest / baseline peak RSS: {worst:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
    write_results(
        args.json,
        "taskcount",
        parameters={"sizes": sizes, "repeat": args.repeat},
        results={
            "sizes": [
                {"tasks": c, "seconds": results[c].seconds, "peak_rss_mib": results[c].peak_rss_mib}
                for c in sizes
            ],
            "target_ratio": TARGET_RATIO,
        },
    )


if __name__ == "__main__":
    main()
