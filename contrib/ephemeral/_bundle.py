"""The runner or tool bundle: a tar.gz in S3, cached on local disk by its sha256.

``BundleCache.fetch(bundle)`` returns a local copy whose sha256 is the one the
job configuration names:

- a cached copy (``<cache>/<sha256>.tar.gz``, e.g. baked into the AMI) is
  used when its content still has that sha256; one that does not (a torn
  write, a bad disk) is deleted and fetched again;
- otherwise the object is downloaded to a temporary file next to it, hashed
  as it arrives, and moved into place only when the sha256 matches. A
  mismatch is a ``BundleError`` (nothing is cached); so is a missing object
  or bucket, or access denied.

S3 is called with boto3 (its signing and addressing are S3's own), in worker
threads with their own limiter; connection failures, throttling and 5xx are
retried with backoff for ``retry_seconds``, then the fetch raises
``RetriesExhausted``. ``extract`` unpacks the archive with tarfile's ``data``
filter: no absolute paths, no links out of the directory, no devices.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tarfile
import threading
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import structlog
import trio

from actors import backoff_delay
from agent import RetriesExhausted

from ._ephemeralconfig import BundleRef

log = structlog.get_logger("farmhand.ephemeral")

#: Threads doing S3 and disk work for bundles.
S3_LIMITER = trio.CapacityLimiter(4)
_CHUNK = 1 << 20
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
    }
)
_TRANSIENT_ERRORS = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
)


class BundleError(Exception):
    """The bundle cannot be had as configured; one line."""


class _Transient(Exception):
    pass


class _Stopped(Exception):
    pass


def open_s3_client(region: str | None) -> Any:
    """A boto3 S3 client that does not retry on its own (``BundleCache`` does).

    boto3 resolves the endpoint (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``)
    and credentials itself. Create it once, in the Trio thread, and share it."""
    session = boto3.session.Session(region_name=region)
    config = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": 1},
        connect_timeout=10,
        read_timeout=60,
    )
    return session.client("s3", config=config)


class BundleCache:
    def __init__(
        self,
        s3: Any,
        directory: Path,
        *,
        retry_seconds: float,
        random: Callable[[], float] = random.random,
    ) -> None:
        self._s3 = s3
        self.directory = directory
        self.retry_seconds = retry_seconds
        self._random = random

    def path_for(self, bundle: BundleRef) -> Path:
        return self.directory / f"{bundle.sha256}.tar.gz"

    async def fetch(self, bundle: BundleRef) -> Path:
        """A verified local copy of ``bundle`` (see the module docstring)."""
        path = self.path_for(bundle)
        if path.exists():
            # Abandoned on cancel: it only reads.
            digest = await trio.to_thread.run_sync(
                _sha256_of, path, abandon_on_cancel=True, limiter=S3_LIMITER
            )
            if digest == bundle.sha256:
                log.info("bundle.cached", bundle=bundle.url, path=str(path))
                return path
            log.warning(
                "bundle.cache_corrupt",
                bundle=bundle.url,
                path=str(path),
                sha256=digest,
                expected=bundle.sha256,
            )
            path.unlink(missing_ok=True)
        await self._download(bundle, path)
        return path

    async def _download(self, bundle: BundleRef, path: Path) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BundleError(f"cannot create the cache directory {self.directory}: {exc}") from exc
        temporary = self.directory / f".{bundle.sha256}.{uuid.uuid4().hex[:8]}.part"
        started = trio.current_time()
        attempt = 0
        while True:
            attempt += 1
            stop = threading.Event()
            try:
                # Abandoned on cancel: a read of S3. The thread sees ``stop`` at its
                # next chunk and removes its temporary file itself.
                digest, size = await trio.to_thread.run_sync(
                    partial(_download_to, self._s3, bundle, temporary, stop),
                    abandon_on_cancel=True,
                    limiter=S3_LIMITER,
                )
            except _Transient as exc:
                if trio.current_time() - started >= self.retry_seconds:
                    raise RetriesExhausted("S3 GetObject", attempt, exc) from exc
                delay = backoff_delay(attempt, self._random())
                log.warning(
                    "s3.retry",
                    operation="GetObject",
                    bundle=bundle.url,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=str(exc),
                )
                await trio.sleep(delay)
                continue
            finally:
                stop.set()
            break
        if digest != bundle.sha256:
            temporary.unlink(missing_ok=True)
            raise BundleError(
                f"{bundle.url}: its sha256 is {digest}, the job configuration says "
                f"{bundle.sha256}; not used"
            )
        os.replace(temporary, path)
        log.info("bundle.downloaded", bundle=bundle.url, path=str(path), bytes=size)

    async def extract(self, archive: Path, destination: Path, *, source: str) -> None:
        """Unpack ``archive`` into ``destination`` (created). Raises ``BundleError``."""
        # Not abandoned: it writes into the work directory, which is cleaned after.
        await trio.to_thread.run_sync(
            partial(_extract, archive, destination, source), limiter=S3_LIMITER
        )
        log.info("bundle.extracted", bundle=source, directory=str(destination))


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download_to(
    s3: Any, bundle: BundleRef, temporary: Path, stop: threading.Event
) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        try:
            response = s3.get_object(Bucket=bundle.bucket, Key=bundle.key)
            body = response["Body"]
            with open(temporary, "wb") as file:
                for chunk in body.iter_chunks(_CHUNK):
                    if stop.is_set():
                        raise _Stopped()
                    digest.update(chunk)
                    file.write(chunk)
                    size += len(chunk)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code in _TRANSIENT_CODES or status >= 500:
                raise _Transient(f"{code or status}: {error.get('Message', '')}") from exc
            raise BundleError(f"{bundle.url}: {_describe(code, status, error)}") from exc
        except _TRANSIENT_ERRORS as exc:
            raise _Transient(str(exc)) from exc
        except botocore.exceptions.BotoCoreError as exc:  # no credentials, a bad endpoint
            raise BundleError(f"{bundle.url}: {exc}") from exc
        except OSError as exc:
            raise BundleError(f"{bundle.url}: cannot write {temporary}: {exc}") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


def _describe(code: str, status: int, error: Any) -> str:
    if code == "NoSuchKey" or (status == 404 and code in ("", "404")):
        return "no such object"
    if code == "NoSuchBucket":
        return "no such bucket"
    if code in ("AccessDenied", "403") or status == 403:
        return "access denied"
    return f"{code or status}: {error.get('Message', '')}"


def _extract(archive: Path, destination: Path, source: str) -> None:
    try:
        if destination.exists():
            shutil.rmtree(destination)
        destination.mkdir(parents=True)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{source}: cannot unpack it as a tar.gz: {exc}") from exc
