"""A worker process against a served mock farm, against the official agent on the same farm.

    python -m benchmarks.served [--tasks 200] [--rounds 3] [--no-official]
        [--pipeline-depth N] [--pipeline-seconds S]

The farm is ``python -m agent mockfarm serve`` with its defaults (state in SQLite,
the long poll, two task runs assigned ahead; a fresh state directory and a free
port; ``--pipeline-depth`` and ``--pipeline-seconds`` pass the farm's own
options, to compare). farmhand's worker (``python -m agent --farm-id ... --fleet-id ...``) starts
and goes idle; then ``--rounds`` jobs of ``--tasks`` tasks of ``true`` are
submitted one after another, each timed from its first task's start to its end
(the job's ``startedAt`` and ``endedAt``, as the farm recorded them); its pick-up
(``createdAt`` to ``startedAt``) is printed beside it. The worker
is then stopped and, with ``.venv-official`` present (``.ci/run`` installs the
official agent 0.33.6 there), the official ``deadline-worker-agent`` runs one
such job against the same farm process: the baseline. Everything runs inside a
network namespace that has only loopback (``unshare -rn``; the official agent
calls the EC2 metadata service), which this script enters itself.

Target (issue 16): farmhand's median at most 0.6 s for 200 tasks, and at least
60 times faster than the official agent in the same run. The exit status says
whether both were met (without the official agent, only the first).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from agent.mockfarm import make_client
from benchmarks._common import ROOT, add_json_option, table, write_results

TARGET_SECONDS = 0.6
TARGET_RATIO = 60.0
OFFICIAL = ROOT / ".venv-official" / "bin" / "deadline-worker-agent"
INSIDE = "FARMHAND_SERVED_INSIDE_NETNS"


def template(tasks: int) -> dict[str, Any]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "served",
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


@contextmanager
def served_farm(state_dir: Path, *options: str) -> Iterator[dict[str, str]]:
    """``python -m agent mockfarm serve`` (defaults but the port and state directory)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "mockfarm",
            "serve",
            "--port",
            "0",
            "--state-dir",
            str(state_dir),
            *options,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    found: dict[str, str] = {}
    for line in process.stdout:
        if match := re.match(r"mock farm listening on (\S+)", line):
            found["endpoint"] = match[1]
        elif (match := re.match(r"\s+(farm|fleet|queue)\s+(\S+)", line)) or (
            match := re.match(r"\s+export (AWS_ENDPOINT_URL_S3)=(\S+)", line)
        ):
            found[match[1]] = match[2]
        if {"endpoint", "farm", "fleet", "queue"} <= found.keys():
            break
    found["pid"] = str(process.pid)
    try:
        yield found
    finally:
        process.terminate()
        process.wait(timeout=30)


def farm_environ(farm: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL_DEADLINE=farm["endpoint"],
        AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=farm["endpoint"],
        AWS_DISABLE_HOST_PREFIX_INJECTION="true",
        AWS_DEFAULT_REGION="us-west-2",
        AWS_ACCESS_KEY_ID="AKIDMOCKFARM",
        AWS_SECRET_ACCESS_KEY="mockfarm-secret",
        AWS_EC2_METADATA_DISABLED="true",
        DEADLINE_CLOUD_TELEMETRY_OPT_OUT="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    if "AWS_ENDPOINT_URL_S3" in farm:
        env["AWS_ENDPOINT_URL_S3"] = farm["AWS_ENDPOINT_URL_S3"]
    return env


def wait_idle(deadline: Any, farm: dict[str, str], timeout: float = 120) -> None:
    """Until a worker of the fleet is STARTED and has called UpdateWorkerSchedule once."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        workers = deadline.list_workers(farmId=farm["farm"], fleetId=farm["fleet"])["workers"]
        if any(w["status"] in ("STARTED", "IDLE") for w in workers):
            time.sleep(1.0)  # its first UpdateWorkerSchedule: now held by the farm
            return
        time.sleep(0.1)
    raise TimeoutError("no worker started")


def run_job(
    deadline: Any, farm: dict[str, str], tasks: int, timeout: float = 600
) -> tuple[float, float]:
    """Submit a job, wait for it; seconds from its first task's start to its end, and
    from its creation to its first task's start (the pick-up)."""
    job_id = deadline.create_job(
        farmId=farm["farm"],
        queueId=farm["queue"],
        template=json.dumps(template(tasks)),
        templateType="JSON",
        priority=50,
    )["jobId"]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = deadline.get_job(farmId=farm["farm"], queueId=farm["queue"], jobId=job_id)
        if job["taskRunStatus"] in ("SUCCEEDED", "FAILED", "CANCELED"):
            if job["taskRunStatus"] != "SUCCEEDED":
                raise RuntimeError(f"job {job_id}: {job['taskRunStatus']}")
            return (
                (job["endedAt"] - job["startedAt"]).total_seconds(),
                (job["startedAt"] - job["createdAt"]).total_seconds(),
            )
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not end within {timeout:g} s")


def cpu_seconds(process: psutil.Process) -> float:
    """The process's CPU time and its children's (the worker's session launchers)."""
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def agent_options(farm: dict[str, str], directory: Path) -> list[str]:
    """The options both agents are started with (farmhand's worker takes the official
    agent's), their directories made below ``directory``."""
    options = ["--farm-id", farm["farm"], "--fleet-id", farm["fleet"]]
    options += ["--run-jobs-as-agent-user", "--no-shutdown"]
    for option, name in (
        ("--logs-dir", "logs"),
        ("--persistence-dir", "persistence"),
        ("--session-root-dir", "sessions"),
    ):
        (directory / name).mkdir(parents=True)
        options += [option, str(directory / name)]
    return options


def farm_options(args: argparse.Namespace) -> list[str]:
    """The farm's own options that were passed through (none: its defaults)."""
    options: list[str] = []
    for name in ("pipeline_depth", "pipeline_seconds"):
        value = getattr(args, name)
        if value is not None:
            options += ["--" + name.replace("_", "-"), value]
    return options


def inside(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="farmhand-served-") as tmp:
        root = Path(tmp)
        options = farm_options(args)
        with served_farm(root / "state", *options) as farm:
            env = farm_environ(farm)
            deadline = make_client("deadline", farm["endpoint"])
            ours: list[float] = []
            pickups: list[float] = []
            worker = subprocess.Popen(
                [sys.executable, "-m", "agent", *agent_options(farm, root / "f")],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(root / "farmhand.log").open("wb"),
            )
            me = psutil.Process(worker.pid)
            farm_process = psutil.Process(int(farm["pid"]))
            try:
                wait_idle(deadline, farm)
                for round_ in range(args.rounds):
                    cpu0, farm0 = cpu_seconds(me), cpu_seconds(farm_process)
                    seconds, pickup = run_job(deadline, farm, args.tasks)
                    ours.append(seconds)
                    pickups.append(pickup)
                    cpu, farm_cpu = cpu_seconds(me) - cpu0, cpu_seconds(farm_process) - farm0
                    print(
                        f"  farmhand, round {round_ + 1}: {seconds:.3f} s (picked up after "
                        f"{pickup * 1000:.0f} ms); CPU per task: "
                        f"worker {cpu / args.tasks * 1000:.2f} ms, "
                        f"farm {farm_cpu / args.tasks * 1000:.2f} ms",
                        file=sys.stderr,
                    )
            finally:
                stop(worker)
            theirs: float | None = None
            their_pickup: float | None = None
            if OFFICIAL.is_file() and not args.no_official:
                official = subprocess.Popen(
                    [str(OFFICIAL), *agent_options(farm, root / "o")],
                    cwd=root,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    # farmhand's worker is STOPPED now; wait for the official one.
                    time.sleep(3)
                    wait_idle(deadline, farm)
                    theirs, their_pickup = run_job(deadline, farm, args.tasks)
                    print(
                        f"  official agent: {theirs:.3f} s (picked up after "
                        f"{their_pickup * 1000:.0f} ms)",
                        file=sys.stderr,
                    )
                finally:
                    stop(official)
    return {
        "farmhand_seconds": ours,
        "official_seconds": theirs,
        "farmhand_pickup_seconds": pickups,
        "official_pickup_seconds": their_pickup,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument(
        "--pipeline-depth", help="the farm's --pipeline-depth (default: its default)"
    )
    parser.add_argument(
        "--pipeline-seconds", help="the farm's --pipeline-seconds (default: its default)"
    )
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    add_json_option(parser, "served")
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(inside(args)))
        return 0
    argv = [sys.executable, "-m", "benchmarks.served", "--inside"]
    argv += ["--tasks", str(args.tasks), "--rounds", str(args.rounds)]
    argv += ["--no-official"] if args.no_official else []
    options = farm_options(args)
    argv += options
    netns = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    done = subprocess.run(netns + argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    ours, theirs = result["farmhand_seconds"], result["official_seconds"]
    median = statistics.median(ours)
    rows: list[list[object]] = [["agent", "first task start to job end", "per task", "ratio"]]
    rows.append(
        [
            f"farmhand (median of {len(ours)})",
            f"{median:.3f} s ({', '.join(f'{s:.3f}' for s in ours)})",
            f"{median / args.tasks * 1000:.2f} ms",
            "",
        ]
    )
    met = median <= TARGET_SECONDS
    if theirs is not None:
        ratio = theirs / median
        rows.append(
            [
                "official agent 0.33.6 (baseline)",
                f"{theirs:.3f} s",
                f"{theirs / args.tasks * 1000:.1f} ms",
                f"{ratio:.0f}x farmhand",
            ]
        )
        met = met and ratio >= TARGET_RATIO
    farm = " ".join(options) or "defaults"
    print(f"{args.tasks} tasks of `true`, a served mock farm ({farm}):")
    print(table(rows))
    print(
        f"target: at most {TARGET_SECONDS:g} s and at least {TARGET_RATIO:g}x the official "
        f"agent: {'met' if met else 'NOT met'}"
        + ("" if not options else " (the target is for the farm's defaults)")
    )
    write_results(
        args.json,
        "served",
        parameters={
            "tasks": args.tasks,
            "rounds": args.rounds,
            "pipeline_depth": args.pipeline_depth,
            "pipeline_seconds": args.pipeline_seconds,
        },
        results=result,
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
