"""Job attachments library: manifests, hashing, S3 transfers (moto on loopback), interop.

The interop tests run the official ``deadline.job_attachments`` code against
the same moto S3 server: what it uploads, ours downloads, and the reverse.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import xxhash

from agent.attachments import (
    HashMismatchError,
    JobAttachments,
    Manifest,
    ManifestError,
    ManifestPath,
    MissingObjectError,
    OutputSnapshot,
    S3Settings,
    S3Transfers,
    TransferStatistics,
    decode_manifest,
    fetch_output_manifests,
    hash_file,
    local_root_name,
    make_s3_client,
    path_mapping_rules,
    sync_inputs,
    upload_outputs,
)
from tests.aws_harness import REGION, Moto

BUCKET = "farmhand-attachments"
SETTINGS = S3Settings(BUCKET, "DeadlineCloud")
FARM, QUEUE, JOB = (
    "farm-0123456789abcdef0123456789abcdef",
    "queue-0123456789abcdef0123456789abcdef",
    "job-0123456789abcdef0123456789abcdef",
)
STEP = "step-0123456789abcdef0123456789abcdef"

# What a job would bring: nested directories, spaces, non-ASCII, an empty file.
FILES: dict[str, bytes] = {
    "scene.txt": b"the scene\n",
    "textures/wood grain.png": os.urandom(70_000),
    "textures/деревья/ñandú 木.bin": b"unicode name\n" * 100,
    "empty": b"",
    "deep/a/b/c/d.txt": b"deep\n",
}


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[Moto]:
    server = Moto()
    server.start()
    server.client("s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto_s3: Moto, monkeypatch: pytest.MonkeyPatch) -> Moto:
    """Point boto3 (ours and the official library's) at moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_s3.url)
    monkeypatch.setenv("AWS_ACCOUNT_ID", "123456789012")
    return moto_s3


def transfers(moto: Moto, **options: Any) -> S3Transfers:
    client = make_s3_client(region=REGION, endpoint_url=moto.url)
    return S3Transfers(client, BUCKET, **options)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ manifests


def official_manifest(paths: list[tuple[str, str, int, int]]) -> Any:
    from deadline.job_attachments.asset_manifests import HashAlgorithm
    from deadline.job_attachments.asset_manifests.v2023_03_03 import (
        AssetManifest,
    )
    from deadline.job_attachments.asset_manifests.v2023_03_03 import (
        ManifestPath as OPath,
    )

    return AssetManifest(
        hash_alg=HashAlgorithm.XXH128,
        paths=[OPath(path=p, hash=h, size=s, mtime=m) for p, h, s, m in paths],
        total_size=sum(s for _, _, s, _ in paths),
    )


SAMPLE = [
    ("b/ü.txt", "a" * 32, 3, 1_700_000_000_000_001),
    ("a b/c.txt", "0123456789abcdef0123456789abcdef", 0, 5),
    ("Z.txt", "f" * 32, 10, 7),
    ("\U0001f600/emoji", "e" * 32, 1, 1),
    ("ﬀ/ligature", "d" * 32, 2, 2),
    ("a", "c" * 32, 4, 4),
]


def test_encode_is_byte_identical_to_the_official_library() -> None:
    """Our canonical JSON equals the official library's, including UTF-16 path order."""
    ours = Manifest.from_paths(ManifestPath(*p) for p in SAMPLE).encode()
    assert ours == official_manifest(SAMPLE).encode()


def test_decode_reads_what_the_official_library_writes() -> None:
    """A manifest the official library encodes decodes to the same paths and re-encodes the same."""
    text = official_manifest(SAMPLE).encode()
    manifest = decode_manifest(text)
    assert {(p.path, p.hash, p.size, p.mtime) for p in manifest.paths} == set(SAMPLE)
    assert manifest.encode() == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"hashAlg":"xxh128","paths":[],"totalSize":0}', "manifestVersion"),
        ('{"manifestVersion":"2099-01-01"}', "unknown manifest version"),
        ('{"manifestVersion":"2023-03-03","hashAlg":"md5","paths":[],"totalSize":0}', "hashAlg"),
        ('{"manifestVersion":"2023-03-03","hashAlg":"xxh128","totalSize":0}', "missing required"),
        (
            '{"manifestVersion":"2023-03-03","hashAlg":"xxh128","paths":[],"totalSize":0}',
            "at least one",
        ),
    ],
)
def test_decode_refuses_malformed_manifests(text: str, message: str) -> None:
    """Malformed manifests are refused with a one-line error naming the source."""
    with pytest.raises(ManifestError, match=message) as info:
        decode_manifest(text, source="s3://b/k")
    assert str(info.value).startswith("s3://b/k: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "path",
    ["../escape", "a/../../b", "/etc/passwd", "C:/Windows/x", "\\\\server\\share", "a//b", ""],
)
def test_decode_refuses_paths_that_escape(path: str) -> None:
    """Absolute paths and ``..`` components are refused, so nothing lands outside the root."""
    doc = {
        "manifestVersion": "2023-03-03",
        "hashAlg": "xxh128",
        "totalSize": 1,
        "paths": [{"path": path, "hash": "ab", "size": 1, "mtime": 1}],
    }
    with pytest.raises(ManifestError):
        decode_manifest(json.dumps(doc))


def test_decode_refuses_non_integer_sizes_and_bad_hashes() -> None:
    """Types are checked as the official validator checks them (a bool is not an int)."""
    base = {"manifestVersion": "2023-03-03", "hashAlg": "xxh128", "totalSize": 1}
    for entry, message in [
        ({"path": "a", "hash": "ab", "size": True, "mtime": 1}, "integer"),
        ({"path": "a", "hash": "ab", "size": "1", "mtime": 1}, "integer"),
        ({"path": "a", "hash": "a/b", "size": 1, "mtime": 1}, "alphanumeric"),
        ({"path": "a", "hash": "ab", "size": 1}, "missing"),
    ]:
        with pytest.raises(ManifestError, match=message):
            decode_manifest(json.dumps({**base, "paths": [entry]}))


# ------------------------------------------------------------------ hashing


async def test_hash_file_matches_xxh128_and_the_official_hash(tmp_path: Path) -> None:
    """hash_file gives the xxh3-128 hex digest the official library gives, across chunk borders."""
    from deadline.job_attachments.asset_manifests import HashAlgorithm
    from deadline.job_attachments.asset_manifests import hash_file as official_hash

    data = os.urandom((3 << 20) + 12345)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    digest, size = await hash_file(path)
    assert (digest, size) == (xxhash.xxh3_128_hexdigest(data), len(data))
    assert digest == official_hash(str(path), HashAlgorithm.XXH128)
    if shutil.which("xxhsum"):
        out = await trio.run_process(["xxhsum", "-H2", str(path)], capture_stdout=True)
        assert out.stdout.decode().split()[0].endswith(digest)


# ------------------------------------------------------------------ transfers


async def upload_tree(moto: Moto, root: Path, **options: Any) -> Manifest:
    """Upload a tree's files by hash with S3Transfers and return its manifest."""
    xfer = transfers(moto, **options)
    entries = []
    for rel, _data in read_tree(root).items():
        path = root / rel
        digest, size = await hash_file(path)
        entries.append(ManifestPath(rel, digest, size, path.stat().st_mtime_ns // 1000))
        if not await xfer.exists(SETTINGS.data_key(digest)):
            await xfer.upload_file(SETTINGS.data_key(digest), path, size=size)
    return Manifest.from_paths(entries)


async def test_round_trip_streams_whole_and_ranged(moto_s3: Moto, tmp_path: Path) -> None:
    """Files go up and come back identical (with mtimes), small ones whole and big ones in parts."""
    from agent.attachments import download_files

    files = dict(FILES)
    files["big/render.exr"] = os.urandom((12 << 20) + 7)  # above the threshold: ranged parts
    src = tmp_path / "src"
    write_tree(src, files)
    options = {"multipart_threshold": 5 << 20, "part_size": 5 << 20, "chunk_size": 64 << 10}
    manifest = await upload_tree(moto_s3, src, **options)
    dest = tmp_path / "dest"
    seen: list[TransferStatistics] = []

    async def on_progress(stats: TransferStatistics) -> None:
        seen.append(stats)

    stats = await download_files(
        transfers(moto_s3, **options), SETTINGS, [(manifest, dest)], on_progress=on_progress
    )
    assert read_tree(dest) == files
    for entry in manifest.paths:
        assert (dest / entry.path).stat().st_mtime_ns // 1000 == entry.mtime
    assert stats.files_done == len(files) and stats.bytes_done == sum(map(len, files.values()))
    assert seen[-1] == stats
    assert not list(dest.rglob(".farmhand-*"))  # no temporary files left behind


async def test_download_skips_files_already_in_place(moto_s3: Moto, tmp_path: Path) -> None:
    """A file with the manifest's size and mtime is not downloaded again."""
    from agent.attachments import download_files

    src = tmp_path / "src"
    write_tree(src, {"a.txt": b"aaa"})
    manifest = await upload_tree(moto_s3, src)
    dest = tmp_path / "dest"
    first = await download_files(transfers(moto_s3), SETTINGS, [(manifest, dest)])
    second = await download_files(transfers(moto_s3), SETTINGS, [(manifest, dest)])
    assert (first.files_done, first.files_skipped) == (1, 0)
    assert (second.files_done, second.files_skipped) == (0, 1)


async def test_hash_mismatch_fails_naming_the_file(moto_s3: Moto, tmp_path: Path) -> None:
    """Data that does not hash to the manifest's hash fails, naming the file, and leaves nothing."""
    from agent.attachments import download_files

    digest = "0" * 32
    moto_s3.client("s3").put_object(Bucket=BUCKET, Key=SETTINGS.data_key(digest), Body=b"tampered")
    manifest = Manifest.from_paths([ManifestPath("shots/sh010 плёнка.exr", digest, 8, 1)])
    dest = tmp_path / "dest"
    with pytest.raises(HashMismatchError, match=re.escape("shots/sh010 плёнка.exr")) as info:
        await download_files(transfers(moto_s3), SETTINGS, [(manifest, dest)])
    assert info.value.path == "shots/sh010 плёнка.exr"
    assert read_tree(dest) == {}


async def test_missing_object_is_a_clear_error(moto_s3: Moto, tmp_path: Path) -> None:
    """A manifest naming data the bucket lacks fails with the key in the message."""
    from agent.attachments import download_files

    digest = "1" * 32
    manifest = Manifest.from_paths([ManifestPath("gone.txt", digest, 1, 1)])
    with pytest.raises(MissingObjectError, match=f"{digest}.xxh128 does not exist"):
        await download_files(transfers(moto_s3), SETTINGS, [(manifest, tmp_path)])


async def test_transfers_stay_within_the_concurrency_limit(moto_s3: Moto, tmp_path: Path) -> None:
    """No more transfer threads run at once than max_concurrency."""
    from agent.attachments import download_files

    src = tmp_path / "src"
    write_tree(src, {f"f{i}.txt": f"file {i}".encode() for i in range(40)})
    manifest = await upload_tree(moto_s3, src)
    xfer = transfers(moto_s3, max_concurrency=3)
    peak = 0
    real_download = xfer._download_whole
    import threading

    lock = threading.Lock()
    running = 0

    def counting_download(*args: Any) -> Any:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return real_download(*args)
        finally:
            with lock:
                running -= 1

    xfer._download_whole = counting_download  # type: ignore[method-assign,assignment]
    await download_files(xfer, SETTINGS, [(manifest, tmp_path / "dest")])
    assert read_tree(tmp_path / "dest") == read_tree(src)
    assert 1 <= peak <= 3


# ------------------------------------------------------------------ sessions


def attachments_for(root: str, manifest_path: str | None, outputs: list[str]) -> JobAttachments:
    entry: dict[str, Any] = {"rootPath": root, "rootPathFormat": "posix"}
    if manifest_path:
        entry["inputManifestPath"] = manifest_path
    if outputs:
        entry["outputRelativeDirectories"] = outputs
    return JobAttachments.from_api({"manifests": [entry], "fileSystem": "COPIED"})


def official_upload_inputs(root: Path, files: list[Path]) -> dict[str, Any]:
    """Upload inputs with the official library, as `deadline bundle submit` does; its attachments."""
    import boto3
    from deadline.job_attachments.models import JobAttachmentS3Settings
    from deadline.job_attachments.upload import S3AssetManager

    manager = S3AssetManager(
        farm_id=FARM,
        queue_id=QUEUE,
        job_attachment_settings=JobAttachmentS3Settings(BUCKET, SETTINGS.root_prefix),
        session=boto3.session.Session(),
    )
    groups = manager.prepare_paths_for_upload(
        input_paths=[str(f) for f in files], output_paths=[str(root / "out")], referenced_paths=[]
    )
    _, manifests = manager.hash_assets_and_create_manifest(
        groups.asset_groups, groups.total_input_files, groups.total_input_bytes
    )
    _, attachments = manager.upload_assets(manifests)
    return attachments.to_dict()


async def test_official_upload_is_synced_by_ours(s3_env: Moto, tmp_path: Path) -> None:
    """Inputs the official library uploads are synced by ours into assetroot-<hash> with a path-mapping rule."""
    src = tmp_path / "submitter" / "project"
    write_tree(src, FILES)
    attachments_dict = await trio.to_thread.run_sync(
        official_upload_inputs, src, [src / rel for rel in FILES]
    )
    attachments = JobAttachments.from_api(attachments_dict)
    (props,) = attachments.manifests
    session_dir = tmp_path / "session"
    session_dir.mkdir()
    synced, stats = await sync_inputs(
        transfers(s3_env),
        SETTINGS,
        attachments,
        session_dir,
        farm_id=FARM,
        queue_id=QUEUE,
        job_id=JOB,
    )
    local = session_dir / local_root_name(props.root_path)
    assert [s.local_path for s in synced] == [local]
    assert read_tree(local) == FILES
    from deadline.job_attachments._utils import _get_unique_dest_dir_name

    assert local.name == _get_unique_dest_dir_name(props.root_path)
    (rule,) = path_mapping_rules(session_dir, attachments)
    assert rule.to_dict() == {
        "source_path_format": "POSIX",
        "source_path": props.root_path,
        "destination_path": str(local),
    }
    assert stats.files_done == len(FILES)


async def test_our_outputs_are_read_by_the_official_library(s3_env: Moto, tmp_path: Path) -> None:
    """Outputs we upload are found and downloaded by the official library's output functions."""
    from deadline.job_attachments.download import (
        download_files_from_manifests,
        get_output_manifests_by_asset_root,
    )
    from deadline.job_attachments.models import JobAttachmentS3Settings

    root_path = "/home/artist/проект shots"
    attachments = attachments_for(root_path, None, ["renders"])
    session_dir = tmp_path / "session"
    local = session_dir / local_root_name(root_path)
    write_tree(local, {"renders/old.txt": b"before the task"})
    before = await OutputSnapshot.take(session_dir, attachments)
    outputs = {
        "renders/frame 0001.exr": os.urandom(50_000),
        "renders/ünïcode/deep/f.txt": b"x",
        "renders/empty": b"",
    }
    write_tree(local, outputs)
    xfer = transfers(s3_env)
    (report,) = await upload_outputs(
        xfer,
        SETTINGS,
        attachments,
        session_dir,
        before,
        farm_id=FARM,
        queue_id=QUEUE,
        job_id=JOB,
        step_id=STEP,
        task_id="task-0123456789abcdef0123456789abcdef-0",
        session_action_id="sessionaction-0123456789abcdef0123456789abcdef-1",
        started_at=1_700_000_000.5,
    )
    api = report.to_api()
    assert api["outputManifestPath"].startswith(f"{FARM}/{QUEUE}/{JOB}/{STEP}/task-")
    assert api["outputManifestPath"].endswith("_output")
    assert report.files == 3  # old.txt was there before the task: not an output

    s3_settings = JobAttachmentS3Settings(BUCKET, SETTINGS.root_prefix)

    def official_download() -> dict[str, Any]:
        import boto3

        by_root = get_output_manifests_by_asset_root(
            s3_settings, FARM, QUEUE, JOB, step_id=STEP, session=boto3.session.Session()
        )
        assert list(by_root) == [root_path]
        dest = tmp_path / "official"
        download_files_from_manifests(
            BUCKET,
            {str(dest): by_root[root_path][0]},
            cas_prefix=s3_settings.full_cas_prefix(),
            session=boto3.session.Session(),
        )
        return read_tree(dest)

    assert await trio.to_thread.run_sync(official_download) == outputs

    # And ours reads them back the same way (what a dependent step's sync does).
    by_root = await fetch_output_manifests(
        xfer, SETTINGS, farm_id=FARM, queue_id=QUEUE, job_id=JOB, step_id=STEP
    )
    assert sorted(p.path for p in by_root[root_path].paths) == sorted(outputs)


async def test_upload_skips_data_the_bucket_has(s3_env: Moto, tmp_path: Path) -> None:
    """An output whose hash is already in the bucket is not uploaded again (HEAD first)."""
    attachments = attachments_for("/r/skip", None, ["out"])
    session_dir = tmp_path / "s"
    local = session_dir / local_root_name("/r/skip")
    before = await OutputSnapshot.take(session_dir, attachments)
    write_tree(
        local, {"out/a.txt": b"same bytes", "out/b.txt": b"same bytes", "out/c.txt": b"other"}
    )
    xfer = transfers(s3_env)
    digest = xxhash.xxh3_128_hexdigest(b"other")
    s3_env.client("s3").put_object(Bucket=BUCKET, Key=SETTINGS.data_key(digest), Body=b"other")
    puts: list[str] = []
    real_put = xfer.client.put_object

    def spy(**kwargs: Any) -> Any:
        puts.append(kwargs["Key"])
        return real_put(**kwargs)

    xfer.client.put_object = spy
    (report,) = await upload_outputs(
        xfer,
        SETTINGS,
        attachments,
        session_dir,
        before,
        farm_id=FARM,
        queue_id=QUEUE,
        job_id=JOB,
        step_id=STEP,
        task_id=None,
        session_action_id="sessionaction-x-0",
        started_at=0.0,
    )
    data_puts = [k for k in puts if "/Data/" in k]
    assert data_puts == [SETTINGS.data_key(xxhash.xxh3_128_hexdigest(b"same bytes"))]
    assert report.files == 3


async def test_throttling_and_broken_streams_are_retried(moto_s3: Moto, tmp_path: Path) -> None:
    """503 SlowDown answers (botocore retries) and a body cut mid-stream (we refetch) still complete."""
    from botocore.awsrequest import AWSResponse
    from botocore.exceptions import ResponseStreamingError

    from agent.attachments import download_files

    src = tmp_path / "src"
    files = {f"f{i}.bin": os.urandom(3000) for i in range(4)}
    write_tree(src, files)
    manifest = await upload_tree(moto_s3, src)
    xfer = transfers(moto_s3, chunk_size=1024, fast_get=False)
    throttled: list[str] = []

    class SlowDownRaw:
        def stream(self, **_kwargs: Any) -> Iterator[bytes]:
            yield b""

    def slow_down(request: Any, **_kwargs: Any) -> AWSResponse | None:
        if request.method == "GET" and request.url not in throttled:
            throttled.append(request.url)
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            response = AWSResponse(request.url, 503, {}, SlowDownRaw())
            response._content = body
            return response
        return None

    xfer.client.meta.events.register_first("before-send.s3.GetObject", slow_down)
    real_get = xfer.client.get_object
    broken: set[str] = set()

    def breaking_get(**kwargs: Any) -> Any:
        response = real_get(**kwargs)
        if kwargs["Key"] not in broken:
            broken.add(kwargs["Key"])
            body = response["Body"]
            real_read = body.read
            calls = 0

            def read(amt: int | None = None) -> bytes:
                nonlocal calls
                calls += 1
                if calls == 2:
                    raise ResponseStreamingError(error="connection reset by peer")
                return bytes(real_read(amt))

            body.read = read
        return response

    xfer.client.get_object = breaking_get
    await download_files(xfer, SETTINGS, [(manifest, tmp_path / "dest")])
    assert read_tree(tmp_path / "dest") == files
    assert len(throttled) >= len(files)
    assert len(broken) == len(files)


async def test_fast_gets_are_used_and_fall_back_to_the_client(
    moto_s3: Moto, tmp_path: Path
) -> None:
    """Small GETs bypass the botocore client; when that path fails, the client's GET does it."""
    from agent.attachments import download_files

    src = tmp_path / "src"
    files = {f"f{i}.bin": os.urandom(1000) for i in range(5)}
    write_tree(src, files)
    manifest = await upload_tree(moto_s3, src)
    xfer = transfers(moto_s3)
    client_gets: list[str] = []
    real_get = xfer.client.get_object

    def counting_get(**kwargs: Any) -> Any:
        client_gets.append(kwargs["Key"])
        return real_get(**kwargs)

    xfer.client.get_object = counting_get
    await download_files(xfer, SETTINGS, [(manifest, tmp_path / "fast")])
    assert read_tree(tmp_path / "fast") == files
    assert client_gets == []
    assert xfer._fast_get is not None
    xfer._fast_get.base_url = "http://127.0.0.1:9/nothing-listens-here/"
    await download_files(xfer, SETTINGS, [(manifest, tmp_path / "fallback")])
    assert read_tree(tmp_path / "fallback") == files
    assert len(client_gets) == len(files)


async def test_files_with_one_hash_in_one_directory(moto_s3: Moto, tmp_path: Path) -> None:
    """Duplicates (and empty files) share a hash and a directory; all of them arrive."""
    from agent.attachments import download_files

    src = tmp_path / "src"
    files = {f"d/copy{i}.bin": b"same bytes" for i in range(6)}
    files.update({f"d/empty{i}": b"" for i in range(6)})
    write_tree(src, files)
    manifest = await upload_tree(moto_s3, src)
    await download_files(transfers(moto_s3), SETTINGS, [(manifest, tmp_path / "dest")])
    assert read_tree(tmp_path / "dest") == files


def test_storage_profile_roots_stay_where_the_jobs_rules_put_them(tmp_path: Path) -> None:
    """A root in a storage profile's location that the job's rules map lives there (no rule
    of ours); one they do not map is synced into the session like any other."""
    from agent.attachments import local_root

    attachments = JobAttachments.from_api(
        {
            "manifests": [
                {
                    "rootPath": "/mnt/shared",
                    "rootPathFormat": "posix",
                    "fileSystemLocationName": "Shared",
                },
                {
                    "rootPath": "C:\\\\proj",
                    "rootPathFormat": "windows",
                    "fileSystemLocationName": "Local",
                },
                {"rootPath": "/home/a/p", "rootPathFormat": "posix"},
            ]
        }
    )
    storage = {"/mnt/shared": "/srv/shared"}
    rules = [r.to_dict() for r in path_mapping_rules(tmp_path, attachments, storage)]
    assert rules == [
        {
            "source_path_format": "WINDOWS",
            "source_path": "C:\\\\proj",
            "destination_path": str(tmp_path / local_root_name("C:\\\\proj")),
        },
        {
            "source_path_format": "POSIX",
            "source_path": "/home/a/p",
            "destination_path": str(tmp_path / local_root_name("/home/a/p")),
        },
    ]
    shared, windows, _ = attachments.manifests
    assert local_root(tmp_path, shared, storage) == Path("/srv/shared")
    assert local_root(tmp_path, windows, storage) == tmp_path / local_root_name("C:\\\\proj")
