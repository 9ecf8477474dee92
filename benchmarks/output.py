"""Output throughput and memory of one task printing a lot.

One task prints N MiB in 100-byte lines (`cat` of a file), every line going
through the runner and out of `python -m agent run` (to /dev/null), against
`cat` of the same data through a pipe. Sizes 5, 50 and 500 MiB by default.
Both paths of `run` are measured: through the embedded farm and worker (where
every line also goes to the session's local log and, through PutLogEvents, to
the farm), and `--direct`.

    python -m benchmarks.output [--sizes 5,50,500] [--repeat 3] [--output human|jsonl]
        [--paths farm,direct]

Targets: at least 100 MiB/s and peak RSS at most 80 MiB at every size
(openjd-sessions: 3.4 MiB/s). Throughput is reported both over the whole
command and with farmhand's start-up (a run printing nothing) taken out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from functools import partial
from pathlib import Path

from benchmarks._common import (
    add_json_option,
    farmhand,
    find_openjd,
    median_of,
    run_measured,
    table,
    write_results,
)

TARGET_MIB_S = 100.0
TARGET_RSS_MIB = 80.0
LINE = b"x" * 99 + b"\n"


def template(data: Path | None) -> dict[str, object]:
    on_run = {"command": "cat", "args": [str(data)]} if data else {"command": "true"}
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "output",
        "steps": [{"name": "T", "script": {"actions": {"onRun": on_run}}}],
    }


def write_data(path: Path, mib: int) -> None:
    block = LINE * (1024 * 1024 // len(LINE) + 1)
    remaining = mib * 1024 * 1024
    with path.open("wb") as file:
        while remaining > 0:
            piece = block[:remaining]
            file.write(piece)
            remaining -= len(piece)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5,50,500")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", choices=["human", "jsonl"], default="human")
    parser.add_argument("--openjd", help="path to the openjd CLI to compare against (slow)")
    parser.add_argument("--paths", default="farm,direct", help="farm, direct or both (default)")
    add_json_option(parser, "output")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    ok = True
    measured: list[dict[str, object]] = []
    rows: list[list[object]] = [
        [
            "path",
            "MiB",
            "cat|cat s",
            "farmhand s",
            "MiB/s",
            "MiB/s (no start-up)",
            "ratio to cat",
            "peak RSS MiB",
        ]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.json"
        empty.write_text(json.dumps(template(None)))
        paths = [p.strip() for p in args.paths.split(",")]
        extra = {"farm": [], "direct": ["--direct"]}
        startups = {
            path: median_of(
                args.repeat,
                partial(
                    run_measured, farmhand("run", str(empty), "--output", args.output, *extra[path])
                ),
            )
            for path in paths
        }
        for mib, path in ((mib, path) for mib in sizes for path in paths):
            startup = startups[path]
            data = Path(tmp) / f"data-{mib}.txt"
            if not data.exists():
                write_data(data, mib)
            job = Path(tmp) / f"job-{mib}.json"
            job.write_text(json.dumps(template(data)))
            cat = median_of(args.repeat, partial(run_measured, ["sh", "-c", f"cat {data} | cat"]))
            ours = median_of(
                args.repeat,
                partial(
                    run_measured,
                    farmhand("run", str(job), "--output", args.output, *extra[path]),
                ),
            )
            rate = mib / ours.seconds
            # Below a tenth of the start-up, the difference is noise, not a rate.
            output_seconds = ours.seconds - startup.seconds
            measurable = output_seconds > startup.seconds / 10
            rate_no_startup = mib / output_seconds if measurable else rate
            rows.append(
                [
                    path,
                    mib,
                    f"{cat.seconds:.3f}",
                    f"{ours.seconds:.3f}",
                    f"{rate:.0f}",
                    f"{rate_no_startup:.0f}" if measurable else "(within noise)",
                    f"{ours.seconds / cat.seconds:.1f}x",
                    f"{ours.peak_rss_mib:.1f}",
                ]
            )
            measured.append(
                {
                    "path": path,
                    "mib": mib,
                    "cat_seconds": cat.seconds,
                    "seconds": ours.seconds,
                    "mib_per_s": rate,
                    # None where the output's time is within the start-up's noise.
                    "mib_per_s_without_startup": rate_no_startup if measurable else None,
                    "peak_rss_mib": ours.peak_rss_mib,
                }
            )
            ok = ok and rate_no_startup >= TARGET_MIB_S and ours.peak_rss_mib <= TARGET_RSS_MIB
            if path == paths[-1]:
                data.unlink()
        print(
            f"one task printing N MiB in 100-byte lines, --output {args.output}, median of {args.repeat}"
        )
        print(table(rows))
        for path, startup in startups.items():
            print(
                f"farmhand start-up ({path}, no output): {startup.seconds:.3f} s, "
                f"peak RSS {startup.peak_rss_mib:.1f} MiB"
            )
        openjd = find_openjd(args.openjd)
        openjd_result: dict[str, float] | None = None
        if openjd and args.openjd:
            data = Path(tmp) / "data-5.txt"
            write_data(data, 5)
            job = Path(tmp) / "job-openjd.json"
            job.write_text(json.dumps(template(data)))
            theirs = run_measured([openjd, "run", str(job)])
            openjd_result = {
                "mib": 5,
                "seconds": theirs.seconds,
                "peak_rss_mib": theirs.peak_rss_mib,
            }
            print(
                f"openjd run, 5 MiB: {theirs.seconds:.2f} s ({5 / theirs.seconds:.1f} MiB/s), peak RSS {theirs.peak_rss_mib:.0f} MiB"
            )
    write_results(
        args.json,
        "output",
        parameters={"sizes_mib": sizes, "repeat": args.repeat, "output": args.output},
        results={
            "runs": measured,
            "startup": {
                path: {"seconds": m.seconds, "peak_rss_mib": m.peak_rss_mib}
                for path, m in startups.items()
            },
            "openjd": openjd_result,
            "target_mib_per_s": TARGET_MIB_S,
            "target_rss_mib": TARGET_RSS_MIB,
        },
    )
    print(
        f"targets: >= {TARGET_MIB_S:.0f} MiB/s, peak RSS <= {TARGET_RSS_MIB:.0f} MiB: {'met' if ok else 'NOT MET'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
