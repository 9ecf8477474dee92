"""Pictures of what the benchmarks measured.

    python -m benchmarks.plot [--results benchmarks/results] [--out benchmarks] [NAME...]

Every benchmark writes its results as JSON (``benchmarks/results/<name>.json``, see
``benchmarks._common.write_results``); this draws each document it finds (or the
ones named) as ``<out>/<name>.png`` with matplotlib's Agg backend (no display
needed): per-task overhead by path against the shell loop and ``openjd run``,
output throughput and memory by size, the fleet's heartbeat lateness and memory
by worker count, pick-up and drain against the official agent, the attachment
downloads against the official client and boto3, and the rest. A document of a
benchmark it has no picture for is skipped, saying so. Each picture's footer
says where and when it was measured (CPUs, load average, commit), as the
figures are only comparable within one run.

Needs matplotlib (``pip install 'farmhand[bench]'``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: before anything imports pyplot

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from benchmarks._common import RESULTS_DIR, ROOT, read_results

Plotter = Callable[[Mapping[str, Any]], Figure]
PLOTTERS: dict[str, Plotter] = {}
#: One colour per contender, the same in every picture.
COLOURS = {
    "shell": "#888888",
    "farmhand": "#1f77b4",
    "farm": "#1f77b4",
    "direct": "#2ca02c",
    "official": "#d62728",
    "openjd": "#d62728",
    "boto3": "#9467bd",
    "idle": "#888888",
    "busy": "#1f77b4",
    "trio": "#1f77b4",
    "asyncio": "#ff7f0e",
}


def plotter(name: str) -> Callable[[Plotter], Plotter]:
    def register(fn: Plotter) -> Plotter:
        PLOTTERS[name] = fn
        return fn

    return register


def _figure(
    document: Mapping[str, Any], title: str, columns: int, rows: int = 1
) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(5.2 * columns, 4.2 * rows), layout="constrained")
    axes = [figure.add_subplot(rows, columns, index + 1) for index in range(rows * columns)]
    figure.suptitle(title, fontsize=12)
    machine = document.get("machine") or {}
    load = machine.get("load_average") or ["?"]
    footer = (
        f"{document.get('recorded', '?')} · {machine.get('cpus', '?')} CPUs, load {load[0]} · "
        f"Python {machine.get('python', '?')} · commit {document.get('commit') or '?'} · "
        f"{_parameters(document.get('parameters') or {})}"
    )
    figure.text(0.5, -0.01, footer, ha="center", va="top", fontsize=7, color="#555555")
    return figure, axes


def _parameters(parameters: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in parameters.items())


def _bars(
    ax: Axes,
    labels: Sequence[str],
    values: Sequence[float],
    colours: Sequence[str],
    fmt: str = "{:.2f}",
) -> None:
    bars = ax.bar(list(labels), list(values), color=list(colours))
    ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=8, padding=2)
    ax.tick_params(axis="x", labelsize=8)
    ax.margins(y=0.15)


def _target(ax: Axes, value: float, label: str) -> None:
    ax.axhline(value, color="#d62728", linestyle="--", linewidth=1)
    ax.annotate(
        label,
        (0, value),
        xycoords=("axes fraction", "data"),
        xytext=(3, 3),
        textcoords="offset points",
        fontsize=7,
        color="#d62728",
    )


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- one per benchmark


@plotter("overhead")
def overhead(document: Mapping[str, Any]) -> Figure:
    results, tasks = document["results"], document["parameters"]["tasks"]
    runners: Mapping[str, Mapping[str, float]] = results["runners"]
    names = {
        "shell": "shell loop",
        "direct": "run --direct",
        "farm": "run (farm + worker)",
        "openjd": "openjd run",
    }
    order = [name for name in names if name in runners]
    figure, (left, right) = _figure(document, f"Per-task overhead: {tasks} tasks of `true`", 2)
    shell = runners["shell"]["seconds"]
    _bars(
        left,
        [names[n] for n in order],
        [runners[n]["seconds"] / tasks * 1000 for n in order],
        [COLOURS[n] for n in order],
    )
    _target(
        left,
        shell / tasks * 1000 + results["target_ms_above_shell"],
        f"target: shell + {results['target_ms_above_shell']} ms",
    )
    left.set_ylabel("ms per task (start-up included)")
    above = [(runners[n]["seconds"] - shell) / tasks * 1000 for n in order if n != "shell"]
    left.set_title(
        "above the shell loop: "
        + ", ".join(f"{n} {a:.2f}" for n, a in zip(order[1:], above, strict=True))
        + " ms",
        fontsize=8,
    )
    startup = results["startup_seconds"]
    _bars(
        right,
        ["run --direct", "run (farm + worker)"],
        [startup["direct"], startup["farm"]],
        [COLOURS["direct"], COLOURS["farm"]],
    )
    right.set_ylabel("seconds")
    right.set_title("start-up (one task)", fontsize=9)
    return figure


@plotter("output")
def output(document: Mapping[str, Any]) -> Figure:
    results = document["results"]
    figure, (left, right) = _figure(document, "Output: one task printing N MiB", 2)
    paths = sorted({run["path"] for run in results["runs"]})
    sizes = sorted({run["mib"] for run in results["runs"]})
    for path in paths:
        runs = sorted((r for r in results["runs"] if r["path"] == path), key=lambda r: r["mib"])
        colour = COLOURS.get(path)
        # Where the output's time is within the start-up's noise there is no such rate.
        clean = [r for r in runs if r["mib_per_s_without_startup"] is not None]
        left.plot(
            [r["mib"] for r in clean],
            [r["mib_per_s_without_startup"] for r in clean],
            marker="o",
            color=colour,
            label=f"{path}, start-up taken out",
        )
        left.plot(
            [r["mib"] for r in runs],
            [r["mib_per_s"] for r in runs],
            marker=".",
            linestyle=":",
            color=colour,
            label=f"{path}, whole command",
        )
        right.plot(
            [r["mib"] for r in runs],
            [r["peak_rss_mib"] for r in runs],
            marker="o",
            color=colour,
            label=path,
        )
    openjd = results.get("openjd")
    if openjd:
        left.plot(
            [openjd["mib"]],
            [openjd["mib"] / openjd["seconds"]],
            marker="s",
            color=COLOURS["openjd"],
            linestyle="",
            label="openjd run",
        )
        right.plot(
            [openjd["mib"]],
            [openjd["peak_rss_mib"]],
            marker="s",
            color=COLOURS["openjd"],
            linestyle="",
            label="openjd run",
        )
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_xlabel("MiB printed")
        ax.legend(fontsize=7)
    _target(left, results["target_mib_per_s"], f"target ≥ {results['target_mib_per_s']:g} MiB/s")
    left.set_ylabel("MiB/s")
    left.set_ylim(bottom=0)
    _target(right, results["target_rss_mib"], f"target ≤ {results['target_rss_mib']:g} MiB")
    right.set_ylabel("peak RSS, MiB")
    right.set_ylim(bottom=0)
    return figure


@plotter("fleet")
def fleet(document: Mapping[str, Any]) -> Figure:
    # The layout measured (``pools``: the baseline "one" may not finish; see fleet.py).
    done = [s for s in document["results"]["sizes"] if "timed_out" not in s]
    sizes = sorted(
        [s for s in done if s.get("pools", "lanes") == "lanes"] or done,
        key=lambda s: s["workers"],
    )
    workers = [s["workers"] for s in sizes]
    figure, (late, memory, rate) = _figure(document, "Many workers in one process", 3)

    def ms(key: str) -> list[float]:
        return [(s[key] or 0.0) * 1000 for s in sizes]

    # UpdateWorkerSchedule lateness as the farm sees it (fleet.py); older documents
    # have only the heartbeat's own figure (how late each beat started).
    farm_view = all("uws_lateness_p99_working" in s for s in sizes)
    p99, worst = (
        ("uws_lateness_p99_", "uws_lateness_max_")
        if farm_view
        else ("lateness_p99_", "lateness_max_")
    )
    late.plot(workers, ms(p99 + "working"), marker="o", label="p99, working")
    late.plot(workers, ms(p99 + "idle"), marker="o", label="p99, idle")
    late.plot(workers, ms(worst + "working"), marker="x", linestyle=":", label="worst, working")
    late.plot(workers, ms(worst + "idle"), marker="x", linestyle=":", label="worst, idle")
    late.set_yscale("symlog", linthresh=1)
    late.set_ylabel("lateness, ms")
    late.set_title(
        "how late each UpdateWorkerSchedule went out"
        if farm_view
        else "how late each beat started",
        fontsize=9,
    )
    late.legend(fontsize=7)
    memory.plot(workers, [s["memory_per_worker_mib"] for s in sizes], marker="o")
    memory.set_ylabel("MiB per worker")
    memory.set_ylim(bottom=0)
    memory.set_title("memory the process gained, per worker", fontsize=9)
    rate.plot(workers, [s["tasks_per_second_running"] for s in sizes], marker="o", label="running")
    rate.plot(
        workers,
        [s["tasks_per_second_from_submission"] for s in sizes],
        marker="o",
        label="from submission",
    )
    rate.set_ylabel("tasks/s")
    rate.set_ylim(bottom=0)
    rate.legend(fontsize=8)
    rate.set_title("throughput (2 vCPUs spawn every task)", fontsize=9)
    for ax in (late, memory, rate):
        ax.set_xlabel("workers")
    return figure


@plotter("pickup")
def pickup(document: Mapping[str, Any]) -> Figure:
    results = document["results"]
    interval = document["parameters"]["interval"]
    figure, (ax,) = _figure(document, "Pick-up: a new job on an idle worker", 1)
    labels = [f"polling ({interval} s)", "long poll"]
    values = [
        _median([s["running"] for s in results["polling"]]) * 1000,
        _median([s["running"] for s in results["long_poll"]]) * 1000,
    ]
    colours = [COLOURS["shell"], COLOURS["farmhand"]]
    if results.get("official_assigned") is not None:
        labels.append("official agent\n(assigned)")
        values.append(results["official_assigned"] * 1000)
        colours.append(COLOURS["official"])
    _bars(ax, labels, values, colours, fmt="{:.0f} ms")
    for index, key in enumerate(("polling", "long_poll")):
        ax.plot(
            [index] * len(results[key]),
            [s["running"] * 1000 for s in results[key]],
            "k.",
            alpha=0.5,
        )
    ax.set_yscale("log")
    _target(ax, results["target_running_seconds"] * 1000, "target ≤ 100 ms")
    ax.set_ylabel("submission → task running, ms (median; dots: each job)")
    return figure


@plotter("served")
def served(document: Mapping[str, Any]) -> Figure:
    results = document["results"]
    figure, (ax,) = _figure(document, "A worker process against mockfarm serve", 1)
    ours = results["farmhand_seconds"]
    labels, values = ["farmhand\n(median)"], [_median(ours)]
    colours = [COLOURS["farmhand"]]
    if results.get("official_seconds") is not None:
        labels.append("official agent")
        values.append(results["official_seconds"])
        colours.append(COLOURS["official"])
    _bars(ax, labels, values, colours, fmt="{:.2f} s")
    ax.plot([0] * len(ours), ours, "k.", alpha=0.5)
    ax.set_yscale("log")
    _target(ax, 0.6, "target ≤ 0.6 s")
    ax.set_ylabel("first task start → job end, s (dots: each job)")
    return figure


@plotter("drain")
def drain(document: Mapping[str, Any]) -> Figure:
    results = document["results"]
    figure, (ax,) = _figure(document, "Drain: SIGTERM to each step of the stop contract", 1)
    keys = ["stopping", "interrupted", "stopped", "exit"]
    width = 0.38
    for offset, kind in ((-width / 2, "idle"), (width / 2, "busy")):
        values = [_median([run[k] for run in results[kind] if k in run]) * 1000 for k in keys]
        bars = ax.bar(
            [i + offset for i in range(len(keys))],
            [0 if v != v else v for v in values],
            width,
            color=COLOURS[kind],
            label=f"{kind} (median)",
        )
        ax.bar_label(
            bars, labels=["" if v != v else f"{v:.0f}" for v in values], fontsize=8, padding=2
        )
    ax.set_xticks(range(len(keys)), ["STOPPING", "INTERRUPTED", "STOPPED", "process exit"])
    official = results["official_stopped_reference"] * 1000
    ax.hlines(official, 2 - width, 2 + width, color=COLOURS["official"], linestyle="--")
    ax.annotate(
        "official agent ≈ 350 ms",
        (2, official),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        fontsize=7,
        color=COLOURS["official"],
    )
    ax.set_ylabel("ms after SIGTERM")
    ax.legend(fontsize=8)
    return figure


@plotter("drain-restart")
def drain_restart(document: Mapping[str, Any]) -> Figure:
    results = document["results"]
    figure, (ax,) = _figure(document, "Restart: a new agent's start to its first report", 1)
    kinds = [("fresh", "fresh start\n(baseline)", "idle"), ("reattached", "re-attached", "busy")]
    values = [_median(results[key]) * 1000 for key, _, _ in kinds]
    _bars(
        ax, [label for _, label, _ in kinds], values, [COLOURS[c] for *_, c in kinds], "{:.0f} ms"
    )
    for index, (key, _, _) in enumerate(kinds):
        ax.plot([index] * len(results[key]), [s * 1000 for s in results[key]], "k.", alpha=0.5)
    ax.set_ylabel("ms from the agent's start (median; dots: each round)")
    return figure


@plotter("attachments")
def attachments(document: Mapping[str, Any]) -> Figure:
    downloads = document["results"]["downloads"]
    sets = list(dict.fromkeys(d["data_set"] for d in downloads))
    figure, axes = _figure(document, "Job attachments: downloading a manifest", 2, len(sets))
    for index, data_set in enumerate(sets):
        rows = [d for d in downloads if d["data_set"] == data_set]
        names = [d["contender"] for d in rows]
        colours = [COLOURS.get(n, "#333333") for n in names]
        title = f"{rows[0]['files']} × {rows[0]['mib'] / rows[0]['files']:.3g} MiB"
        seconds, cpu = axes[2 * index], axes[2 * index + 1]
        _bars(seconds, names, [d["seconds"] for d in rows], colours, fmt="{:.2f} s")
        seconds.set_ylabel("seconds (transfer)")
        seconds.set_title(f"{title}: time", fontsize=9)
        _bars(cpu, names, [d["cpu_seconds"] for d in rows], colours, fmt="{:.2f} s")
        cpu.set_ylabel("client CPU seconds (start-up included)")
        cpu.set_title(f"{title}: CPU", fontsize=9)
    return figure


@plotter("taskcount")
def taskcount(document: Mapping[str, Any]) -> Figure:
    results = document["results"]
    sizes = results["sizes"]
    figure, (ax,) = _figure(document, "run --direct: memory against the parameter space", 1)
    ax.plot([s["tasks"] for s in sizes], [s["peak_rss_mib"] for s in sizes], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("tasks in the step")
    ax.set_ylabel("peak RSS, MiB")
    ax.set_ylim(bottom=0)
    baseline = sizes[0]["peak_rss_mib"]
    _target(ax, baseline * results["target_ratio"], f"target ≤ {results['target_ratio']}x")
    return figure


@plotter("pipeline")
def pipeline(document: Mapping[str, Any]) -> Figure:
    results, parameters = document["results"], document["parameters"]
    tasks, shell = parameters["tasks"], results["shell_seconds"]
    hosts: Mapping[str, list[Mapping[str, Any]]] = results["hosts"]
    depths = parameters["pipeline_depths"]
    figure, (per_task, cpu) = _figure(
        document, f"The worker process against a farm: {tasks} tasks of `true`", 2
    )
    width = 0.8 / max(1, len(hosts))
    for h, (host, runs) in enumerate(hosts.items()):
        above = [
            _median([(run["results"][d]["span"] - shell) / tasks * 1000 for run in runs])
            for d in range(len(depths))
        ]
        cpus = [
            _median([run["results"][d]["cpu"] / tasks * 1000 for run in runs])
            for d in range(len(depths))
        ]
        xs = [d + (h - (len(hosts) - 1) / 2) * width for d in range(len(depths))]
        for ax, values in ((per_task, above), (cpu, cpus)):
            bars = ax.bar(xs, values, width, color=COLOURS.get(host), label=f"{host} host")
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8, padding=2)
    for ax in (per_task, cpu):
        ax.set_xticks(range(len(depths)), [f"depth {d}" for d in depths])
        ax.legend(fontsize=8)
        ax.margins(y=0.15)
    _target(per_task, results["target_ms_above_shell"], "target ≤ 3 ms")
    per_task.set_ylim(top=max(per_task.get_ylim()[1], results["target_ms_above_shell"] * 1.15))
    per_task.set_ylabel("ms per task above the shell loop")
    cpu.set_ylabel("worker CPU ms per task")
    return figure


@plotter("mockfarm")
def mockfarm(document: Mapping[str, Any]) -> Figure:
    results = document["results"]
    phases = {
        "bare": "bare ASGI",
        "farm": "in memory",
        "stored": "SQLite",
    }
    present = [p for p in phases if results.get(p)]

    def median_round(rounds: list[Mapping[str, Any]]) -> Mapping[str, Any]:
        return sorted(rounds, key=lambda r: r["rate"])[len(rounds) // 2]

    chosen = {p: median_round(results[p]) for p in present}
    figure, (rate, latency) = _figure(
        document, f"Mock farm: {document['parameters']['workers']} scripted workers", 2
    )
    colours = ["#888888", "#1f77b4", "#ff7f0e"][: len(present)]
    _bars(
        rate, [phases[p] for p in present], [chosen[p]["rate"] for p in present], colours, "{:.0f}"
    )
    rate.set_ylabel("UpdateWorkerSchedule calls/s (median round)")
    _target(rate, results["target_rate"], f"target ≥ {results['target_rate']:,}/s")
    width = 0.38
    for offset, key in ((-width / 2, "p50"), (width / 2, "p99")):
        bars = latency.bar(
            [i + offset for i in range(len(present))],
            [chosen[p][key] for p in present],
            width,
            label=key,
        )
        latency.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    latency.set_xticks(range(len(present)), [phases[p] for p in present])
    latency.set_ylabel("latency, ms")
    latency.legend(fontsize=8)
    return figure


@plotter("httpqueue")
def httpqueue(document: Mapping[str, Any]) -> Figure:
    results, jobs = document["results"], document["parameters"]["jobs"]
    seconds = results["seconds"]
    figure, (ax,) = _figure(document, f"HTTP job queue: {jobs} jobs of `true`", 1)
    names = {
        "shell": "shell loop",
        "jobrun": "JobRun (one-job API)",
        "httpqueue": "httpqueue worker",
    }
    _bars(
        ax,
        list(names.values()),
        [seconds[k] / jobs * 1000 for k in names],
        ["#888888", "#2ca02c", "#1f77b4"],
        fmt="{:.1f} ms",
    )
    _target(
        ax,
        seconds["jobrun"] / jobs * 1000 + results["target_ms_above_jobrun"],
        f"target: JobRun + {results['target_ms_above_jobrun']:g} ms",
    )
    ax.set_ylabel("ms per job")
    return figure


@plotter("grpcagent")
def grpcagent(document: Mapping[str, Any]) -> Figure:
    results, jobs = document["results"], document["parameters"]["jobs"]
    seconds = results["seconds"]
    figure, (per_job, latency) = _figure(document, f"gRPC CI agent: {jobs} jobs of `true`", 2)
    names = {
        "plain": "plain\nsubprocess",
        "jobrun": "JobRun",
        "jobrun_spare": "JobRun,\nspare launcher",
        "agent": "gRPC agent",
    }
    _bars(
        per_job,
        list(names.values()),
        [seconds[k] / jobs * 1000 for k in names],
        ["#888888", "#2ca02c", "#98df8a", "#1f77b4"],
        fmt="{:.1f}",
    )
    per_job.set_ylabel("ms per job")
    width = 0.38
    for offset, key in ((-width / 2, "plain"), (width / 2, "agent")):
        values = sorted(results["latency_ms"][key])
        if not values:
            continue
        picks = [
            values[min(len(values) - 1, round(q * (len(values) - 1)))] for q in (0.5, 0.9, 0.99)
        ]
        bars = latency.bar(
            [i + offset for i in range(3)],
            picks,
            width,
            label="plain pipe" if key == "plain" else "gRPC agent",
            color="#888888" if key == "plain" else "#1f77b4",
        )
        latency.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    latency.set_xticks(range(3), ["median", "p90", "p99"])
    _target(latency, results["target_p99_ms"], f"p99 target < {results['target_p99_ms']:g} ms")
    latency.set_ylabel("first-output latency, ms")
    latency.legend(fontsize=8)
    return figure


@plotter("soak")
def soak(document: Mapping[str, Any]) -> Figure:
    results = document["results"]
    samples = results["samples"]
    title = (
        f"Soak: {results['jobs']} jobs under {document['parameters']['fault_rate']:.0%} faults; "
        f"lost {results['lost']}, duplicated {results['duplicated']}"
    )
    figure, (rss, fds) = _figure(document, title, 2)
    times = [s[0] for s in samples]
    rss.plot(times, [s[1] for s in samples], marker=".")
    rss.set_ylabel("agent RSS, MiB")
    fds.plot(times, [s[2] for s in samples], marker=".", color="#ff7f0e")
    fds.set_ylabel("open file descriptors")
    for ax in (rss, fds):
        ax.axvline(results["warmup_seconds"], color="#888888", linestyle=":", linewidth=1)
        ax.set_xlabel("seconds (dotted: end of the warm-up)")
        ax.set_ylim(bottom=0)
    return figure


# ---------------------------------------------------------------- the command


def render(document: Mapping[str, Any]) -> Figure | None:
    """The picture of one results document (``None``: no picture for that benchmark)."""
    draw = PLOTTERS.get(str(document.get("benchmark")))
    return None if draw is None else draw(document)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", help="benchmarks to draw (default: every result)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where the JSONs are")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks", help="where PNGs go")
    parser.add_argument("--dpi", type=int, default=96)
    args = parser.parse_args(argv)
    paths = (
        [args.results / f"{name}.json" for name in args.names]
        if args.names
        else sorted(args.results.glob("*.json"))
    )
    if not paths:
        print(f"no results in {args.results}: run a benchmark first", file=sys.stderr)
        return 1
    status = 0
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        try:
            document = read_results(path)
            figure = render(document)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            print(f"{path}: cannot draw it: {exc!r}", file=sys.stderr)
            status = 1
            continue
        if figure is None:
            print(f"{path}: no picture for benchmark {document.get('benchmark')!r}, skipped")
            continue
        target = args.out / f"{path.stem}.png"
        figure.savefig(target, dpi=args.dpi, bbox_inches="tight")
        print(f"{target}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
