"""Job attachments end to end: the mock farm (with moto's S3) and a farmhand worker.

Inputs are uploaded as a submitter would (our library; the official client's
own upload is in ``test_official_client.py``), the farm sends
``syncInputJobAttachments`` first (and the ``stepId`` variant before a
dependent step), the worker syncs, runs, uploads outputs; the official
library's download functions read what it wrote.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.attachments import (
    Manifest,
    ManifestPath,
    S3Settings,
    S3Transfers,
    hash_bytes,
    hash_file,
    make_s3_client,
)
from agent.mockfarm import ApiError, MockFarm, S3Config
from tests.worker_harness import farm_and_worker, py, wait_job

ROOT = "/home/artist/project ünïcode"


async def upload_inputs(farm: MockFarm, files: dict[str, bytes], tmp: Path) -> dict[str, Any]:
    """Upload ``files`` under ROOT as a submitter does; the job's ``attachments``."""
    assert farm.s3 is not None
    settings = S3Settings(farm.s3.bucket, farm.s3.root_prefix)
    xfer = S3Transfers(
        make_s3_client(endpoint_url=farm.s3_endpoint_url, region="us-west-2"), settings.bucket
    )
    entries = []
    for rel, data in files.items():
        path = tmp / "submit" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digest, size = await hash_file(path)
        entries.append(ManifestPath(rel, digest, size, path.stat().st_mtime_ns // 1000))
        if not await xfer.exists(settings.data_key(digest)):
            await xfer.upload_file(settings.data_key(digest), path, size=size)
    text = Manifest.from_paths(entries).encode().encode()
    partial_key = (
        f"{farm.farm_id}/{farm.queue_id}/Inputs/0123abcd/{hash_bytes(ROOT.encode())}_input"
    )
    await xfer.put_bytes(settings.manifest_key(partial_key), text)
    return {
        "manifests": [
            {
                "rootPath": ROOT,
                "rootPathFormat": "posix",
                "inputManifestPath": partial_key,
                "inputManifestHash": hash_bytes(text),
                "outputRelativeDirectories": ["renders"],
            }
        ],
        "fileSystem": "COPIED",
    }


# Step A reads the scene through its mapped path and writes renders; step B (which
# depends on A) reads A's render from the renders directory and writes its own.
STEP_A = (
    "import os,sys; scene=open(sys.argv[1]).read(); out=sys.argv[2]; "
    "os.makedirs(os.path.join(out,'frames dir','ü'),exist_ok=True); "
    "open(os.path.join(out,'frames dir','ü','frame.txt'),'w').write('rendered:'+scene); "
    "open(os.path.join(out,'empty'),'w').close(); "
    "print('scene at', sys.argv[1]); print('JA', os.environ['DEADLINE_JA_S3_BUCKET'], os.environ['DEADLINE_JA_ROOT_PREFIX'])"
)
STEP_B = (
    "import os,sys; out=sys.argv[1]; "
    "prev=open(os.path.join(out,'frames dir','ü','frame.txt')).read(); "
    "open(os.path.join(out,'comp.txt'),'w').write('comp of '+prev)"
)


def template() -> dict[str, Any]:
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "attachments",
        "parameterDefinitions": [
            {"name": "Scene", "type": "PATH", "objectType": "FILE", "dataFlow": "IN"},
            {"name": "Out", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT"},
        ],
        "steps": [
            {
                "name": "A",
                "script": {
                    "actions": {
                        "onRun": {
                            **py(STEP_A),
                            "args": [*py(STEP_A)["args"], "{{Param.Scene}}", "{{Param.Out}}"],
                        }
                    }
                },
            },
            {
                "name": "B",
                "dependencies": [{"dependsOn": "A"}],
                "script": {
                    "actions": {
                        "onRun": {**py(STEP_B), "args": [*py(STEP_B)["args"], "{{Param.Out}}"]}
                    }
                },
            },
        ],
    }


def official_outputs(farm: MockFarm, job_id: str, dest: Path) -> dict[str, bytes]:
    """Download the job's outputs with the official library, as `deadline job download-output` does."""
    import boto3
    from deadline.job_attachments.download import (
        download_files_from_manifests,
        get_output_manifests_by_asset_root,
    )
    from deadline.job_attachments.models import JobAttachmentS3Settings

    assert farm.s3 is not None
    # The official library resolves S3 through the environment: set it for this call
    # only (a leftover AWS_ENDPOINT_URL_S3 would send later tests' S3 calls here).
    saved = {name: os.environ.get(name) for name in ("AWS_ENDPOINT_URL_S3", "AWS_ACCOUNT_ID")}
    os.environ["AWS_ENDPOINT_URL_S3"] = farm.s3_endpoint_url
    os.environ["AWS_ACCOUNT_ID"] = "123456789012"
    try:
        settings = JobAttachmentS3Settings(farm.s3.bucket, farm.s3.root_prefix)
        session = boto3.session.Session()
        by_root = get_output_manifests_by_asset_root(
            settings, farm.farm_id, farm.queue_id, job_id, session=session
        )
        assert list(by_root) == [ROOT]
        for manifest in by_root[ROOT]:
            download_files_from_manifests(
                farm.s3.bucket,
                {str(dest): manifest},
                cas_prefix=settings.full_cas_prefix(),
                session=session,
            )
        return {
            p.relative_to(dest).as_posix(): p.read_bytes()
            for p in sorted(dest.rglob("*"))
            if p.is_file()
        }
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def test_job_with_attachments_runs_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs synced and path-mapped, outputs uploaded and reported, a dependent step fed."""
    async with farm_and_worker(tmp_path, s3=S3Config()) as (farm, _worker, events):
        attachments = await upload_inputs(
            farm, {"scene.txt": b"a scene", "tex/wood.png": os.urandom(5000)}, tmp_path
        )
        job_id = farm.create_job(
            template(),
            parameters={"Scene": f"{ROOT}/scene.txt", "Out": f"{ROOT}/renders"},
            attachments=attachments,
        )
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        job = farm.job(job_id)
        kinds = [(a.kind, a.step_id) for s in job.sessions for a in s.actions]
        step_b = job.steps[1].step_id
        assert kinds[0] == ("syncInputJobAttachments", None)
        assert ("syncInputJobAttachments", step_b) in kinds
        assert kinds.index(("syncInputJobAttachments", step_b)) < max(
            i for i, (k, _) in enumerate(kinds) if k == "taskRun"
        )
        task_runs = [a for s in job.sessions for a in s.actions if a.kind == "taskRun"]
        for action in task_runs:
            assert action.status == "SUCCEEDED"
            (entry,) = action.manifests or [{}]
            assert entry["outputManifestPath"].startswith(
                f"{farm.farm_id}/{farm.queue_id}/{job_id}/"
            )
            assert entry["outputManifestPath"].endswith("_output")
        lines = events.lines()
        assert any(line.startswith("scene at ") and "/assetroot-" in line for line in lines)
        assert f"JA {farm.s3.bucket} {farm.s3.root_prefix}" in lines  # type: ignore[union-attr]

        monkeypatch.setenv("AWS_ACCOUNT_ID", "123456789012")
        outputs = await trio.to_thread.run_sync(
            official_outputs, farm, job_id, tmp_path / "downloaded"
        )
    assert outputs == {
        "renders/frames dir/ü/frame.txt": b"rendered:a scene",
        "renders/empty": b"",
        "renders/comp.txt": b"comp of rendered:a scene",
    }


async def test_missing_input_fails_the_sync_and_the_job_never_succeeds(tmp_path: Path) -> None:
    """A manifest naming data the bucket lacks fails syncInputJobAttachments, naming the key;
    no task runs."""
    async with farm_and_worker(tmp_path, s3=S3Config()) as (farm, _worker, _events):
        attachments = await upload_inputs(farm, {"scene.txt": b"x"}, tmp_path)
        assert farm.s3 is not None
        s3 = make_s3_client(endpoint_url=farm.s3_endpoint_url, region="us-west-2")
        digest = hash_bytes(b"x")
        bucket, key = farm.s3.bucket, f"{farm.s3.root_prefix}/Data/{digest}.xxh128"
        await trio.to_thread.run_sync(lambda: s3.delete_object(Bucket=bucket, Key=key))
        job_id = farm.create_job(
            template(),
            parameters={"Scene": f"{ROOT}/scene.txt", "Out": f"{ROOT}/renders"},
            attachments=attachments,
            max_retries_per_task=0,
        )
        status = await wait_job(farm, job_id)
        assert status != "SUCCEEDED"
        sync = farm.job(job_id).sessions[0].actions[0]
        assert (sync.kind, sync.status) == ("syncInputJobAttachments", "FAILED")
        assert f"{digest}.xxh128 does not exist" in (sync.progress_message or "")
        ran = [a for s in farm.job(job_id).sessions for a in s.actions if a.kind == "taskRun"]
        assert all(a.status == "NEVER_ATTEMPTED" for a in ran)


async def test_failed_upload_fails_the_task(tmp_path: Path) -> None:
    """A task whose outputs cannot be uploaded (the bucket is gone) is FAILED with the reason."""
    async with farm_and_worker(tmp_path, s3=S3Config(bucket="doomed-bucket")) as (
        farm,
        _worker,
        _events,
    ):
        attachments = await upload_inputs(farm, {"scene.txt": b"x"}, tmp_path)
        # The task empties and deletes the bucket before it ends (moto takes any credentials).
        code = (
            "import boto3,os,sys; os.makedirs(sys.argv[2], exist_ok=True); open(os.path.join(sys.argv[2],'o.txt'),'w').write('o'); "
            f"s3=boto3.resource('s3', endpoint_url={farm.s3_endpoint_url!r}, region_name='us-west-2', "
            "aws_access_key_id='x', aws_secret_access_key='x'); b=s3.Bucket('doomed-bucket'); "
            "b.objects.all().delete(); b.delete()"
        )
        doc = template()
        doc["steps"] = [
            {
                "name": "A",
                "script": {
                    "actions": {
                        "onRun": {
                            **py(code),
                            "args": [*py(code)["args"], "{{Param.Scene}}", "{{Param.Out}}"],
                        }
                    }
                },
            }
        ]
        job_id = farm.create_job(
            doc,
            parameters={"Scene": f"{ROOT}/scene.txt", "Out": f"{ROOT}/renders"},
            attachments=attachments,
            max_retries_per_task=0,
        )
        assert await wait_job(farm, job_id) == "FAILED"
        [task_run] = [
            a for s in farm.job(job_id).sessions for a in s.actions if a.kind == "taskRun"
        ]
        assert task_run.status == "FAILED"
        assert task_run.process_exit_code == 0
        assert "uploading the task's outputs failed" in (task_run.progress_message or "")
        assert "doomed-bucket" in (task_run.progress_message or "")


async def test_create_job_with_attachments_needs_queue_settings(tmp_path: Path) -> None:
    """CreateJob with attachments on a queue without jobAttachmentSettings is refused."""
    async with farm_and_worker(tmp_path) as (farm, _worker, _events):
        with pytest.raises(ApiError, match="no jobAttachmentSettings"):
            farm.create_job(
                template(),
                parameters={"Scene": "/a/b", "Out": "/a/c"},
                attachments={"manifests": [{"rootPath": "/a", "rootPathFormat": "posix"}]},
            )
        assert json.dumps(farm.state.jobs) == "{}"


class _SlowS3:
    """An S3 endpoint that takes ``delay`` seconds over every request, then answers 404:
    a sync against it is slow on the wire, as a big download is."""

    def __init__(self, delay: float) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                time.sleep(delay)
                body = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>"
                self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_a_slow_sync_never_holds_up_the_heartbeat(tmp_path: Path) -> None:
    """While a sync waits on a slow S3 for seconds, the worker keeps calling
    UpdateWorkerSchedule at the farm's interval (transfers run in threads)."""
    slow = _SlowS3(delay=4.0)
    try:
        async with farm_and_worker(tmp_path, s3=S3Config(), s3_endpoint_url=slow.url) as (
            farm,
            _worker,
            _events,
        ):
            attachments = await upload_inputs(farm, {"scene.txt": b"x"}, tmp_path)
            job_id = farm.create_job(
                template(),
                parameters={"Scene": f"{ROOT}/scene.txt", "Out": f"{ROOT}/renders"},
                attachments=attachments,
                max_retries_per_task=0,
            )
            await wait_job(farm, job_id)
            sync = farm.job(job_id).sessions[0].actions[0]
            assert sync.kind == "syncInputJobAttachments"
            assert sync.status == "FAILED"
            assert "does not exist" in (sync.progress_message or "")
            assert sync.started_at is not None
            assert sync.ended_at is not None
            started = sync.started_at.timestamp()
            ended = sync.ended_at.timestamp()
            assert ended - started >= 3.9  # the manifest GET took the slow path
            beats = [
                c.timestamp.timestamp()
                for c in farm.calls_to("UpdateWorkerSchedule")
                if started < c.timestamp.timestamp() < ended
            ]
            # updateIntervalSeconds is 1: a heartbeat at least every 1.5 s while it waited.
            assert len(beats) >= int((ended - started) / 1.5), (len(beats), ended - started)
    finally:
        slow.close()


async def test_virtual_file_system_falls_back_to_copying_said_once(tmp_path: Path) -> None:
    """fileSystem VIRTUAL (a FUSE mount in the official agent) is served by copying, and the
    session log says so once, not once per sync."""
    async with farm_and_worker(tmp_path, s3=S3Config()) as (farm, _worker, _events):
        attachments = await upload_inputs(farm, {"scene.txt": b"virtual"}, tmp_path)
        attachments["fileSystem"] = "VIRTUAL"
        job_id = farm.create_job(
            template(),
            parameters={"Scene": f"{ROOT}/scene.txt", "Out": f"{ROOT}/renders"},
            attachments=attachments,
        )
        assert await wait_job(farm, job_id) == "SUCCEEDED"
        (session,) = farm.job(job_id).sessions
        syncs = [a for a in session.actions if a.kind == "syncInputJobAttachments"]
        assert len(syncs) == 2  # the job's inputs, then step B's dependencies
        # The log reaches the farm after the reports: wait for every action's end line.
        with trio.fail_after(30):
            await farm.wait_until(
                lambda: (
                    sum(" ended: " in line for line in farm.session_log(session.session_id))
                    >= len(session.actions)
                )
            )
        log = farm.session_log(session.session_id)
        said = [line for line in log if "fileSystem VIRTUAL" in line]
        assert len(said) == 1, said
        assert "copied into the session instead" in said[0]
