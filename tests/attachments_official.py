"""The official ``deadline`` CLI submits a job bundle with attachments; farmhand runs it.

    python -m tests.attachments_official DEADLINE_CLI WORKDIR [OFFICIAL_AGENT]

With ``OFFICIAL_AGENT`` (a ``deadline-worker-agent`` executable) the official
worker agent runs the job instead of farmhand's, against the same farm: the
proof that the mock farm speaks the service's attachment contract.

``tests/agent/attachments/test_official_client.py`` runs this inside a network
namespace with nothing but loopback (``unshare -rn``). It serves a mock farm
with moto's S3 and a farmhand worker (in this process), writes a job bundle
whose inputs have nested directories, spaces and non-ASCII names, an empty
file and a file of tens of MiB, and then, as a user would:

1. ``deadline bundle submit`` (hashes and uploads the inputs to S3 with the
   queue credentials of ``AssumeQueueRoleForUser``, then ``CreateJob``);
2. waits for the job (step ``Render`` writes outputs of the same kinds; step
   ``Composite`` depends on it and reads its outputs);
3. ``deadline job download-output`` brings the outputs back to the paths the
   bundle named.

It prints one JSON object: the job's status, every session action, what the
CLIs printed, and the downloaded files (path -> size and xxh128) beside the
files the job says it wrote.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
import trio
import xxhash
import yaml

from agent.mockfarm import FarmConfig, MockFarm, S3Config, open_mock_farm
from agent.worker._worker import open_agent
from tests.worker_harness import bootstrap_credentials, endpoints_for, worker_config

BIG = 24 << 20

RENDER = r"""
import hashlib, json, os, sys
scene, inputs, out = sys.argv[1], sys.argv[2], sys.argv[3]
seen = {}
for base, _, names in os.walk(inputs):
    for name in names:
        path = os.path.join(base, name)
        seen[os.path.relpath(path, inputs)] = os.path.getsize(path)
frames = os.path.join(out, "frames dir", "ünïcode ✓")
os.makedirs(frames, exist_ok=True)
with open(os.path.join(frames, "frame 0001.txt"), "w") as f:
    f.write("rendered " + open(scene).read())
open(os.path.join(out, "empty output"), "w").close()
with open(os.path.join(out, "big.exr"), "wb") as f:
    block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    for _ in range(24):
        f.write(block)
with open(os.path.join(out, "inputs seen.json"), "w") as f:
    json.dump(seen, f, sort_keys=True)
"""

COMPOSITE = r"""
import os, sys
out = sys.argv[1]
frame = open(os.path.join(out, "frames dir", "ünïcode ✓", "frame 0001.txt")).read()
big = os.path.getsize(os.path.join(out, "big.exr"))
os.makedirs(os.path.join(out, "comp"), exist_ok=True)
with open(os.path.join(out, "comp", "final.txt"), "w") as f:
    f.write(f"composite of [{frame}] and {big} bytes")
"""


def write_bundle(workdir: Path) -> tuple[Path, Path]:
    """The project (inputs) and the job bundle; returns (bundle dir, project dir)."""
    project = workdir / "project ✓"
    inputs = project / "inputs"
    files = {
        "tex dir/wood grain.png": os.urandom(70_000),
        "données/ñandú 木.bin": b"non-ascii\n" * 100,
        "empty.txt": b"",
        "cache/sim.bgeo": os.urandom(BIG + 12_345),
    }
    for rel, data in files.items():
        path = inputs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (project / "scene.txt").write_text("the scene")
    python = sys.executable
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "attachments proof",
        "parameterDefinitions": [
            {"name": "SceneFile", "type": "PATH", "objectType": "FILE", "dataFlow": "IN"},
            {"name": "InputDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "IN"},
            {"name": "OutputDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT"},
        ],
        "steps": [
            {
                "name": "Render",
                "script": {
                    "embeddedFiles": [{"name": "Run", "type": "TEXT", "data": RENDER}],
                    "actions": {
                        "onRun": {
                            "command": python,
                            "args": [
                                "{{Task.File.Run}}",
                                "{{Param.SceneFile}}",
                                "{{Param.InputDir}}",
                                "{{Param.OutputDir}}",
                            ],
                        }
                    },
                },
            },
            {
                "name": "Composite",
                "dependencies": [{"dependsOn": "Render"}],
                "script": {
                    "embeddedFiles": [{"name": "Run", "type": "TEXT", "data": COMPOSITE}],
                    "actions": {
                        "onRun": {
                            "command": python,
                            "args": ["{{Task.File.Run}}", "{{Param.OutputDir}}"],
                        }
                    },
                },
            },
        ],
    }
    bundle = workdir / "bundle"
    bundle.mkdir()
    (bundle / "template.yaml").write_text(yaml.safe_dump(template, allow_unicode=True))
    values = {
        "parameterValues": [
            {"name": "SceneFile", "value": str(project / "scene.txt")},
            {"name": "InputDir", "value": str(inputs)},
            {"name": "OutputDir", "value": str(project / "out")},
        ]
    }
    (bundle / "parameter_values.yaml").write_text(yaml.safe_dump(values, allow_unicode=True))
    references = {
        "assetReferences": {
            "inputs": {"filenames": [str(project / "scene.txt")], "directories": []},
            "outputs": {"directories": [str(project / "out")]},
            "referencedPaths": [],
        }
    }
    (bundle / "asset_references.yaml").write_text(yaml.safe_dump(references, allow_unicode=True))
    return bundle, project


def tree(root: Path) -> dict[str, list[Any]]:
    return {
        p.relative_to(root).as_posix(): [
            p.stat().st_size,
            xxhash.xxh3_128_hexdigest(p.read_bytes()),
        ]
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    done = await trio.run_process(
        argv, env=env, cwd=cwd, capture_stdout=True, capture_stderr=True, check=False
    )
    return {
        "argv": argv[1:3],
        "exit": done.returncode,
        "output": (done.stdout + done.stderr).decode(errors="replace")[-4000:],
    }


@asynccontextmanager
async def farmhand_worker(farm: MockFarm, workdir: Path) -> AsyncIterator[None]:
    worker = worker_config(farm, workdir / "worker", s3_endpoint_url=farm.s3_endpoint_url)
    async with open_agent(
        worker, endpoints=endpoints_for(farm), bootstrap_credentials=bootstrap_credentials()
    ):
        yield


@asynccontextmanager
async def official_worker(farm: MockFarm, workdir: Path, agent: str) -> AsyncIterator[None]:
    """deadline-worker-agent against the farm (the recipe of tests/mockfarm_official.py)."""
    for name in ("logs", "persist", "sessions"):
        (workdir / "official" / name).mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **farm.environ(),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    argv = [
        agent, "--farm-id", farm.farm_id, "--fleet-id", farm.fleet_id,
        "--run-jobs-as-agent-user", "--no-shutdown",
        "--logs-dir", str(workdir / "official" / "logs"),
        "--persistence-dir", str(workdir / "official" / "persist"),
        "--session-root-dir", str(workdir / "official" / "sessions"),
    ]  # fmt: skip
    with (workdir / "official" / "agent-output.log").open("wb") as sink:
        process = await trio.lowlevel.open_process(argv, env=env, stdout=sink, stderr=sink)
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(30):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def main(cli: str, workdir: Path, agent: str | None = None) -> dict[str, Any]:
    bundle, project = write_bundle(workdir)
    config = FarmConfig(
        update_interval_seconds=1, max_retries_per_task=0, worker_timeout_seconds=60
    )
    report: dict[str, Any] = {}
    async with open_mock_farm(config=config, s3=S3Config()) as farm:
        worker = official_worker(farm, workdir, agent) if agent else farmhand_worker(farm, workdir)
        async with worker:
            (workdir / "home").mkdir()
            deadline_config = workdir / "deadline.ini"
            deadline_config.write_text(
                f"[defaults]\nfarm_id = {farm.farm_id}\nqueue_id = {farm.queue_id}\n"
                "[telemetry]\nopt_out = true\n"
            )
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(workdir / "home"),
                "LANG": "C.UTF-8",
                "PYTHONIOENCODING": "utf-8",
                **farm.environ(),
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_ACCOUNT_ID": farm.config.account_id,
                "DEADLINE_CONFIG_FILE_PATH": str(deadline_config),
                "DEADLINE_CLOUD_TELEMETRY_OPT_OUT": "true",
            }
            submit = await run_cli(
                [
                    cli,
                    "bundle",
                    "submit",
                    "--farm-id",
                    farm.farm_id,
                    "--queue-id",
                    farm.queue_id,
                    "--yes",
                    "--known-asset-path",
                    str(workdir),
                    str(bundle),
                ],
                env,
                workdir,
            )
            report["submit"] = submit
            jobs = list(farm.state.jobs.values())
            if submit["exit"] != 0 or len(jobs) != 1:
                report["calls"] = [f"{c.operation} {c.status} {c.error}" for c in farm.calls]
                return report
            job = jobs[0]
            report["attachments"] = job.attachments
            with trio.move_on_after(120) as waited:
                report["job_status"] = await farm.wait_for_job(job.job_id)
            report["timed_out"] = waited.cancelled_caught
            report["actions"] = [
                [action.kind, action.step_id is not None, action.status, action.progress_message]
                for session in job.sessions
                for action in session.actions
            ]
            report["manifests"] = [
                action.manifests
                for session in job.sessions
                for action in session.actions
                if action.kind == "taskRun"
            ]
            report["session_log"] = [
                line for s in job.sessions for line in farm.session_log(s.session_id)
            ][-60:]
            download = await run_cli(
                [
                    cli, "job", "download-output", "--farm-id", farm.farm_id, "--queue-id", farm.queue_id,
                    "--job-id", job.job_id, "--yes", "--output", "json",
                ],
                env,
                workdir,
            )  # fmt: skip
            report["download"] = download
            report["downloaded"] = tree(project / "out") if (project / "out").is_dir() else {}
            report["inputs"] = tree(project / "inputs")
            report["errors"] = [
                f"{c.operation}: {c.error}" for c in farm.calls if c.error is not None
            ]
    return report


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    agent = sys.argv[3] if len(sys.argv) > 3 else None
    print(json.dumps(trio.run(main, sys.argv[1], Path(sys.argv[2]), agent)))
