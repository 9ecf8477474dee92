"""The S3 side of job attachments: the key layout, a client, and streaming transfers.

Key layout (the queue's ``jobAttachmentSettings`` give the bucket and root prefix)::

    <rootPrefix>/Data/<xxh128>.xxh128                                   file contents, by hash
    <rootPrefix>/Manifests/<farm>/<queue>/Inputs/<guid>/<h(root)>_input  a job's input manifests
    <rootPrefix>/Manifests/<farm>/<queue>/<job>/<step>/<task>/<time>_<sessionaction>/<h(root)>_output

``S3Transfers`` moves files with a boto3 client in worker threads (STYLE §10),
at most ``max_concurrency`` at once (one ``trio.CapacityLimiter``). Every
transfer streams through a fixed-size buffer, so memory stays bounded whatever
the file sizes: a download is written and hashed chunk by chunk, and a file
at or above ``multipart_threshold`` moves in ranged parts (parallel, each a
bounded buffer). botocore retries throttling and transient API errors
(standard mode); a body that breaks mid-stream is fetched again. A downloaded
file's xxh128 and size are checked against its manifest before it takes its
name; a mismatch raises ``HashMismatchError`` naming the file.
"""

from __future__ import annotations

import datetime
import itertools
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
import xxhash

from ._errors import AttachmentError, HashMismatchError, MissingObjectError, TransferError, collapse
from ._hashing import HASH_CHUNK, hash_file_sync

T = TypeVar("T")

DATA_FOLDER = "Data"
MANIFEST_FOLDER = "Manifests"
INPUT_MANIFEST_FOLDER = "Inputs"

#: Default number of concurrent transfers (threads and HTTP connections).
DEFAULT_CONCURRENCY = 16
#: Files this large or larger move in ranged parts.
DEFAULT_MULTIPART_THRESHOLD = 64 << 20
DEFAULT_PART_SIZE = 8 << 20
#: Upload parts are read into memory (botocore signs their bytes); this many at once.
UPLOAD_PART_SIZE = 8 << 20
UPLOAD_PARTS_AT_ONCE = 4
#: Attempts at a body that breaks mid-stream (API errors are botocore's to retry).
STREAM_ATTEMPTS = 4


@attrs.frozen
class S3Settings:
    """A queue's ``jobAttachmentSettings``: where its attachments live."""

    bucket: str
    root_prefix: str

    @classmethod
    def from_api(cls, payload: Mapping[str, Any]) -> S3Settings:
        """From the wire shape ``{"s3BucketName": ..., "rootPrefix": ...}``."""
        bucket = payload.get("s3BucketName")
        prefix = payload.get("rootPrefix")
        if not isinstance(bucket, str) or not bucket:
            raise TransferError("jobAttachmentSettings has no s3BucketName")
        if not isinstance(prefix, str) or not prefix:
            raise TransferError("jobAttachmentSettings has no rootPrefix")
        return cls(bucket, prefix)

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}/{self.root_prefix}"

    def data_key(self, digest: str, hash_alg: str = "xxh128") -> str:
        return f"{self.root_prefix}/{DATA_FOLDER}/{digest}.{hash_alg}"

    def manifest_key(self, partial_key: str) -> str:
        """The full key of a manifest from its partial key (as jobs and reports name them)."""
        return f"{self.root_prefix}/{MANIFEST_FOLDER}/{partial_key}"

    def step_output_prefix(self, farm_id: str, queue_id: str, job_id: str, step_id: str) -> str:
        return f"{self.root_prefix}/{MANIFEST_FOLDER}/{farm_id}/{queue_id}/{job_id}/{step_id}/"

    def job_output_prefix(self, farm_id: str, queue_id: str, job_id: str) -> str:
        return f"{self.root_prefix}/{MANIFEST_FOLDER}/{farm_id}/{queue_id}/{job_id}/"


def iso_time(epoch: float) -> str:
    """``2024-01-02T03:04:05.678901Z``: the time stamp in output manifest keys."""
    stamp = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def output_manifest_partial_prefix(
    *,
    farm_id: str,
    queue_id: str,
    job_id: str,
    step_id: str,
    task_id: str | None,
    session_action_id: str,
    started_at: float,
) -> str:
    """Where a task run's output manifests go, under ``<rootPrefix>/Manifests/``."""
    parts = [farm_id, queue_id, job_id, step_id]
    if task_id:
        parts.append(task_id)
    parts.append(f"{iso_time(started_at)}_{session_action_id}")
    return "/".join(parts)


def make_s3_client(
    *,
    session: Any = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    max_pool_connections: int = DEFAULT_CONCURRENCY + 4,
    credentials: Mapping[str, str] | None = None,
) -> Any:
    """A boto3 S3 client for transfers (make it in the Trio thread, share it).

    ``credentials`` (``accessKeyId``, ``secretAccessKey``, ``sessionToken``, as
    AssumeQueueRoleForWorker returns them) override the session's chain.
    Response checksums are not validated by botocore: every download is
    checked against its xxh128 instead, which is stronger and costs one pass.
    """
    import boto3
    from botocore.config import Config

    if session is None:
        session = boto3.session.Session()
    config = Config(
        retries={"mode": "standard", "max_attempts": 8},
        max_pool_connections=max_pool_connections,
        response_checksum_validation="when_required",
        request_checksum_calculation="when_required",
        user_agent_extra="farmhand-attachments",
    )
    kwargs: dict[str, Any] = {"config": config}
    if region:
        kwargs["region_name"] = region
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if credentials is not None:
        kwargs["aws_access_key_id"] = credentials["accessKeyId"]
        kwargs["aws_secret_access_key"] = credentials["secretAccessKey"]
        kwargs["aws_session_token"] = credentials.get("sessionToken")
    return session.client("s3", **kwargs)


# ------------------------------------------------------------------ progress


@attrs.frozen
class TransferStatistics:
    """A snapshot of a batch of transfers."""

    files_total: int
    bytes_total: int
    files_done: int = 0
    files_skipped: int = 0
    bytes_done: int = 0
    bytes_skipped: int = 0
    elapsed: float = 0.0

    @property
    def percent(self) -> float:
        if self.bytes_total == 0:
            return 100.0 if self.files_done >= self.files_total else 0.0
        return min(100.0, 100.0 * (self.bytes_done + self.bytes_skipped) / self.bytes_total)

    @property
    def rate(self) -> float:
        """Bytes transferred per second so far."""
        return self.bytes_done / self.elapsed if self.elapsed > 0 else 0.0

    def describe(self, verb: str) -> str:
        """``Downloaded 3/10 files, 12.0 MiB of 40.0 MiB (30%) at 8.0 MiB/s``."""
        done = self.files_done + self.files_skipped
        return (
            f"{verb} {done}/{self.files_total} files, "
            f"{_mib(self.bytes_done + self.bytes_skipped)} of {_mib(self.bytes_total)} "
            f"({self.percent:.0f}%) at {_mib(self.rate)}/s"
        )


def _mib(count: float) -> str:
    return f"{count / (1 << 20):.1f} MiB"


class Progress:
    """Thread-safe counters for a batch of transfers; ``statistics()`` snapshots them."""

    def __init__(self, *, files_total: int, bytes_total: int) -> None:
        self._lock = threading.Lock()
        self._stats = TransferStatistics(files_total=files_total, bytes_total=bytes_total)
        self._started = time.monotonic()

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self._stats = attrs.evolve(self._stats, bytes_done=self._stats.bytes_done + count)

    def file_done(self, *, skipped_bytes: int | None = None) -> None:
        with self._lock:
            if skipped_bytes is None:
                self._stats = attrs.evolve(self._stats, files_done=self._stats.files_done + 1)
            else:
                self._stats = attrs.evolve(
                    self._stats,
                    files_skipped=self._stats.files_skipped + 1,
                    bytes_skipped=self._stats.bytes_skipped + skipped_bytes,
                )

    def statistics(self) -> TransferStatistics:
        with self._lock:
            return attrs.evolve(self._stats, elapsed=time.monotonic() - self._started)


#: Called (in the Trio task) with a snapshot every interval and once at the end.
ProgressCallback = Callable[[TransferStatistics], Awaitable[None]]


async def report_progress(
    progress: Progress, callback: ProgressCallback, interval: float = 1.0
) -> None:
    """Call ``callback`` with a snapshot every ``interval`` seconds until cancelled."""
    while True:
        await trio.sleep(interval)
        await callback(progress.statistics())


# ------------------------------------------------------------------ transfers


class _Stopped(Exception):
    """The Trio side gave up on this transfer (seen only by an abandoned thread)."""


def _stream_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    return (
        ConnectionClosedError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
        ConnectionError,
    )


def _error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


class _FastGet:
    """Whole-object GETs signed with botocore's SigV4 signer and sent with urllib3.

    botocore's client spends about 3 ms of CPU on each call (request building,
    handlers, parsing); for thousands of small files that is most of the time.
    A GET needs none of it: the URL is the client's own (learnt once from a
    presigned URL, so addressing style and endpoint are botocore's), the
    signature is botocore's, and anything but a clean 200 (an error, a
    redirect, a broken connection) returns ``None`` so the caller does the
    same GET through the client, which retries and explains errors.
    """

    def __init__(self, base_url: str, credentials: Any, region: str, max_concurrency: int) -> None:
        import urllib3
        from botocore.httpsession import get_cert_path

        self.base_url = base_url
        self.credentials = credentials
        self.region = region
        # The CA bundle botocore would use (AWS_CA_BUNDLE, else its default).
        ca_certs = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
        self.pool = urllib3.PoolManager(
            maxsize=max_concurrency,
            # One retry: a pooled keep-alive connection the server has closed.
            retries=urllib3.Retry(total=1, redirect=False, status=None, raise_on_status=False),
            timeout=urllib3.Timeout(connect=10, read=60),
            ca_certs=ca_certs if isinstance(ca_certs, str) else None,
        )

    @classmethod
    def for_client(cls, client: Any, bucket: str, max_concurrency: int) -> _FastGet | None:
        """A fast path for ``client``'s bucket, or ``None`` where it cannot be had as safely."""
        if any(
            os.environ.get(v) for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
        ):
            return None  # botocore honours proxies; this path does not
        if client.meta.config.proxies:
            return None
        # botocore keeps a client's credentials on its signer; no public accessor exists.
        credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
        region = client.meta.region_name
        if credentials is None or not region:
            return None
        try:
            probe = "farmhand-probe"
            url = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": probe}
            )
        except Exception:
            return None
        base = url.split("?", 1)[0]
        if not base.endswith("/" + probe):
            return None
        return cls(base[: -len(probe)], credentials, region, max_concurrency)

    def download(
        self,
        key: str,
        tmp: Path,
        chunk_size: int,
        progress: Progress | None,
        stop: threading.Event,
        name: str,
    ) -> tuple[str, int] | None:
        from urllib.parse import quote

        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        try:
            request = AWSRequest(method="GET", url=self.base_url + quote(key, safe="/~"))
            S3SigV4Auth(self.credentials.get_frozen_credentials(), "s3", self.region).add_auth(
                request
            )
            response = self.pool.request(
                "GET",
                request.url,
                headers=dict(request.headers.items()),
                preload_content=False,
                redirect=False,
            )
        except Exception:
            return None
        try:
            size = 0
            if response.status != 200:
                return None
            expected = response.headers.get("Content-Length")
            hasher = xxhash.xxh3_128()
            with open(tmp, "wb") as out:
                for chunk in response.stream(chunk_size):
                    if stop.is_set():
                        raise _Stopped(name)
                    out.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress.add_bytes(len(chunk))
            if expected is not None and int(expected) != size:
                raise ValueError("short body")
            return hasher.hexdigest(), size
        except _Stopped:
            raise
        except Exception:
            # A broken stream: the client's GET starts over (and retries).
            if progress is not None and size:
                progress.add_bytes(-size)
            return None
        finally:
            response.release_conn()


class S3Transfers:
    """Streaming, bounded, concurrent transfers to and from one bucket (see module docstring)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        chunk_size: int = HASH_CHUNK,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        fast_get: bool = True,
    ) -> None:
        from botocore.exceptions import ClientError, NoCredentialsError

        self.client = client
        self.bucket = bucket
        self.max_concurrency = max_concurrency
        self.limiter = trio.CapacityLimiter(max_concurrency)
        self.chunk_size = chunk_size
        self.multipart_threshold = max(multipart_threshold, part_size)
        self.part_size = part_size
        self._upload_parts_limiter = trio.CapacityLimiter(UPLOAD_PARTS_AT_ONCE)
        self._client_error = ClientError
        self._no_credentials = NoCredentialsError
        self._tmp_ids = itertools.count()
        self._fast_get = _FastGet.for_client(client, bucket, max_concurrency) if fast_get else None
        self._stream_errors = _stream_errors()

    # -- plumbing

    async def _thread(self, fn: Callable[..., T], *args: Any, idempotent: bool = True) -> T:
        """Run ``fn(*args, stop)`` in a worker thread under the limiter.

        ``stop`` is a ``threading.Event`` set when the caller is cancelled; the
        streaming loops check it between chunks, so an abandoned thread ends
        soon and the limiter token (released when the thread finishes) comes back.
        """
        stop = threading.Event()
        try:
            # abandon_on_cancel: downloads write to a temporary name and uploads
            # are atomic in S3, so an abandoned transfer leaves nothing half-done
            # under a real name; the stop event ends the thread at its next chunk.
            return await trio.to_thread.run_sync(
                partial(fn, *args, stop), abandon_on_cancel=idempotent, limiter=self.limiter
            )
        finally:
            stop.set()

    def _translate(self, exc: BaseException, key: str, what: str) -> Exception:
        code, status = _error_code(exc)
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return MissingObjectError(
                f"{what}: s3://{self.bucket}/{key} does not exist", bucket=self.bucket, key=key
            )
        if code == "NoSuchBucket":
            return TransferError(f"{what}: bucket {self.bucket!r} does not exist")
        if (
            code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch")
            or status == 403
        ):
            return TransferError(
                f"{what}: access to s3://{self.bucket}/{key} denied ({code or status}); "
                "check the queue role's S3 permissions"
            )
        return TransferError(f"{what}: s3://{self.bucket}/{key}: {exc}")

    def _retrying(self, fn: Callable[[], T], key: str, what: str) -> T:
        """Call ``fn``; retry a stream broken mid-body; translate S3's errors."""
        for attempt in range(1, STREAM_ATTEMPTS + 1):
            try:
                return fn()
            except self._client_error as exc:
                raise self._translate(exc, key, what) from exc
            except self._no_credentials as exc:
                raise TransferError(
                    f"{what}: no AWS credentials for s3://{self.bucket}: the queue has no role "
                    "(queueRoleArn) and this worker has no credentials of its own for S3"
                ) from exc
            except self._stream_errors as exc:
                if attempt == STREAM_ATTEMPTS:
                    raise TransferError(
                        f"{what}: s3://{self.bucket}/{key} failed {attempt} times: {exc}"
                    ) from exc
                time.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    # -- small objects

    async def get_bytes(self, key: str) -> tuple[bytes, dict[str, str], datetime.datetime]:
        """A small object (a manifest): ``(body, user metadata, LastModified)``."""

        def run(stop: threading.Event) -> tuple[bytes, dict[str, str], datetime.datetime]:
            def once() -> tuple[bytes, dict[str, str], datetime.datetime]:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
                with response["Body"] as body:
                    data = body.read()
                return data, dict(response.get("Metadata", {})), response["LastModified"]

            return self._retrying(once, key, "download")

        return await self._thread(run)

    async def put_bytes(
        self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None
    ) -> None:
        def run(stop: threading.Event) -> None:
            self._retrying(
                lambda: self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=data, Metadata=dict(metadata or {})
                ),
                key,
                "upload",
            )

        await self._thread(run)

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists (HEAD)."""

        def run(stop: threading.Event) -> bool:
            try:
                self._retrying(
                    lambda: self.client.head_object(Bucket=self.bucket, Key=key), key, "check"
                )
            except MissingObjectError:
                return False
            except self._client_error as exc:
                code, status = _error_code(exc)
                if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise self._translate(exc, key, "check") from exc
            return True

        return await self._thread(run)

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``."""

        def run(stop: threading.Event) -> list[str]:
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            try:
                for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                    keys.extend(item["Key"] for item in page.get("Contents", []))
            except self._client_error as exc:
                raise self._translate(exc, prefix, "list") from exc
            return keys

        return await self._thread(run)

    # -- files

    async def download_file(
        self,
        key: str,
        dest: Path,
        *,
        expected_hash: str,
        expected_size: int,
        mtime_us: int | None = None,
        progress: Progress | None = None,
        display_path: str | None = None,
        keep_existing: bool = False,
    ) -> bool:
        """Stream ``key`` into ``dest``, check its xxh128 and size, then give it its name.

        The data goes to a temporary name beside ``dest`` first, so ``dest``
        never holds a partial or unverified file. ``keep_existing``: a file
        already at ``dest`` with this size and mtime is kept (``False`` returned).
        """
        name = display_path or str(dest)
        # Unique per transfer: two entries with one hash (duplicates, empty files) may
        # land in one directory at once.
        tmp = dest.parent / f".farmhand-{os.getpid()}-{next(self._tmp_ids)}.part"

        def finish(digest: str, size: int) -> None:
            """Verify, date and name the file (in the worker thread: it may touch a slow disk)."""
            if size != expected_size or digest != expected_hash:
                raise HashMismatchError(
                    f"{name}: downloaded data does not match its manifest "
                    f"(xxh128 {digest}, {size} bytes; expected {expected_hash}, {expected_size} bytes)",
                    path=name,
                )
            if mtime_us is not None:
                os.utime(tmp, ns=(mtime_us * 1000, mtime_us * 1000))
            os.replace(tmp, dest)

        def prepare() -> bool:
            """Whether to download: ``False`` when the file is already in place."""
            if keep_existing:
                try:
                    st = dest.stat()
                except OSError:
                    pass
                else:
                    if st.st_size == expected_size and (
                        mtime_us is None or st.st_mtime_ns // 1000 == mtime_us
                    ):
                        return False
            dest.parent.mkdir(parents=True, exist_ok=True)
            return True

        def whole(stop: threading.Event) -> bool:
            if not prepare():
                return False
            try:
                finish(*self._download_whole(key, tmp, progress, name, stop))
            finally:
                tmp.unlink(missing_ok=True)
            return True

        if expected_size < self.multipart_threshold:
            fetched = await self._thread(whole)
        elif fetched := await self._thread(lambda stop: prepare()):
            try:
                digest, size = await self._download_parts(key, tmp, expected_size, progress, name)
                await self._thread(lambda stop: finish(digest, size))
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(partial(tmp.unlink, missing_ok=True))
        if progress is not None:
            if fetched:
                progress.file_done()
            else:
                progress.file_done(skipped_bytes=expected_size)
        return fetched

    def _download_whole(
        self, key: str, tmp: Path, progress: Progress | None, name: str, stop: threading.Event
    ) -> tuple[str, int]:
        fast = self._fast_get
        if fast is not None:
            result = fast.download(key, tmp, self.chunk_size, progress, stop, name)
            if result is not None:
                return result

        def once() -> tuple[str, int]:
            hasher = xxhash.xxh3_128()
            size = 0
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            with response["Body"] as body, open(tmp, "wb") as out:
                while True:
                    if stop.is_set():
                        raise _Stopped(name)
                    chunk = body.read(self.chunk_size)
                    if not chunk:
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress.add_bytes(len(chunk))
            return hasher.hexdigest(), size

        return self._retrying(once, key, f"download of {name}")

    async def _download_parts(
        self, key: str, tmp: Path, size: int, progress: Progress | None, name: str
    ) -> tuple[str, int]:
        def allocate() -> None:
            with open(tmp, "wb") as out:
                out.truncate(size)

        await trio.to_thread.run_sync(allocate)

        def part(start: int, end: int, stop: threading.Event) -> None:
            def once() -> None:
                response = self.client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
                )
                offset = start
                fd = os.open(tmp, os.O_WRONLY)
                try:
                    with response["Body"] as body:
                        while offset < end:
                            if stop.is_set():
                                raise _Stopped(name)
                            chunk = body.read(min(self.chunk_size, end - offset))
                            if not chunk:
                                raise TransferError(
                                    f"download of {name}: s3://{self.bucket}/{key} ended at byte "
                                    f"{offset}, expected {size} bytes"
                                )
                            os.pwrite(fd, chunk, offset)
                            offset += len(chunk)
                            if progress is not None:
                                progress.add_bytes(len(chunk))
                finally:
                    os.close(fd)

            self._retrying(once, key, f"download of {name}")

        try:
            async with trio.open_nursery() as nursery:
                for start in range(0, size, self.part_size):
                    nursery.start_soon(self._thread, part, start, min(size, start + self.part_size))
        except* AttachmentError as group:
            raise collapse(group) from None
        return await self._thread(lambda stop: hash_file_sync(tmp, stop=stop))

    async def upload_file(
        self,
        key: str,
        src: Path,
        *,
        size: int,
        progress: Progress | None = None,
        display_path: str | None = None,
    ) -> None:
        """Stream the file ``src`` (``size`` bytes) to ``key``."""
        name = display_path or str(src)
        if size >= self.multipart_threshold:
            await self._upload_parts(key, src, size, progress, name)
        else:
            await self._thread(self._upload_whole, key, src, progress, name)
        if progress is not None:
            progress.file_done()

    def _upload_whole(
        self, key: str, src: Path, progress: Progress | None, name: str, stop: threading.Event
    ) -> None:
        def once() -> None:
            with open(src, "rb") as body:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

        self._retrying(once, key, f"upload of {name}")
        if progress is not None:
            progress.add_bytes(src.stat().st_size)

    async def _upload_parts(
        self, key: str, src: Path, size: int, progress: Progress | None, name: str
    ) -> None:
        def create(stop: threading.Event) -> str:
            response = self._retrying(
                lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=key),
                key,
                f"upload of {name}",
            )
            return str(response["UploadId"])

        upload_id = await self._thread(create)
        etags: dict[int, str] = {}

        def part(number: int, start: int, length: int, stop: threading.Event) -> None:
            if stop.is_set():
                raise _Stopped(name)
            with open(src, "rb") as file:
                file.seek(start)
                data = file.read(length)

            def once() -> None:
                response = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
                etags[number] = str(response["ETag"])

            self._retrying(once, key, f"upload of {name}")
            if progress is not None:
                progress.add_bytes(len(data))

        # S3 allows 10,000 parts; keep each part's buffer small unless the file is huge.
        part_size = max(UPLOAD_PART_SIZE, -(-size // 9000))

        async def send(number: int, start: int) -> None:
            async with self._upload_parts_limiter:
                await self._thread(part, number, start, min(part_size, size - start))

        try:
            try:
                async with trio.open_nursery() as nursery:
                    for index, start in enumerate(range(0, size, part_size)):
                        nursery.start_soon(send, index + 1, start)
            except* AttachmentError as group:
                raise collapse(group) from None

            def complete(stop: threading.Event) -> None:
                parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
                self._retrying(
                    lambda: self.client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    ),
                    key,
                    f"upload of {name}",
                )

            await self._thread(complete)
        except BaseException:
            with trio.move_on_after(10, shield=True):
                await self._thread(
                    lambda stop: self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
                )
            raise
