"""The GitHub Actions runner of a runs-fleet instance: find it, cache it, run it once.

The lifecycle runs-fleet's agent describes:

1. find the release: the GitHub releases API's latest ``actions/runner``
   (``GET {api}/repos/actions/runner/releases/latest``; the API base is
   ``--github-api-url``, for GitHub Enterprise Server or a test's fake), and
   its asset ``actions-runner-linux-{arch}-{version}.tar.gz``;
2. take the tarball from the S3 cache (``RUNS_FLEET_CONFIG_BUCKET``) at
   ``runners/{version}/{arch}/actions-runner-{version}.tar.gz`` when it is
   there, else download it from the release and **write it back** to that
   key, so the next instance finds it (a write-back that fails is a warning:
   this instance has its runner). A release that publishes a ``digest``
   (``sha256:...``) has every copy checked against it;
3. unpack it (tarfile's ``data`` filter) into the work directory;
4. run it just in time, and so ephemeral (one job, then it exits):
   ``./run.sh`` with the JIT configuration in ``ACTIONS_RUNNER_INPUT_JITCONFIG``.

The JIT token is a secret. The runner reads any of its options from
``ACTIONS_RUNNER_INPUT_<NAME>`` (the same as ``--jitconfig <token>``) and
removes the variable from its own environment once read, so the job's steps
never inherit it. Given that way it is on no command line, so no process
listing shows it; it is never logged, never in the job's CloudWatch stream,
and never in a repr. What remains: the initial environment block of
``run.sh`` and the listener (``/proc/<pid>/environ``), readable only by the
same user and root, as with any runner started from an environment.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import botocore.exceptions
import httpx
import structlog
import trio

from actors import backoff_delay
from agent import RetriesExhausted

from ._bundle import _TRANSIENT_CODES, _TRANSIENT_ERRORS, S3_LIMITER, BundleError

log = structlog.get_logger("farmhand.ephemeral")

GITHUB_API_URL = "https://api.github.com"
#: The variable the runner reads ``--jitconfig`` from (and then removes).
JIT_VARIABLE = "ACTIONS_RUNNER_INPUT_JITCONFIG"
_CHUNK = 1 << 20
_T = TypeVar("_T")


class RunnerError(Exception):
    """The runner cannot be had; one line."""


class _Transient(Exception):
    pass


def runner_arch(machine: str | None = None) -> str:
    """The runner's name for this machine's architecture (``x64``, ``arm64``, ``arm``)."""
    name = (machine or platform.machine()).lower()
    if name in ("x86_64", "amd64", "x64"):
        return "x64"
    if name in ("aarch64", "arm64"):
        return "arm64"
    if name.startswith("arm"):
        return "arm"
    raise RunnerError(f"no actions runner is published for the architecture {name!r}")


@attrs.frozen
class RunnerRelease:
    version: str
    arch: str
    url: str
    #: The release's published sha256 (hex), when it gives one.
    sha256: str | None = None

    @property
    def cache_key(self) -> str:
        return f"runners/{self.version}/{self.arch}/actions-runner-{self.version}.tar.gz"


async def latest_release(
    http: httpx.AsyncClient, api_url: str, arch: str, *, retry_seconds: float
) -> RunnerRelease:
    """The latest ``actions/runner`` release's tarball for ``arch``. Raises ``RunnerError``."""
    url = f"{api_url.rstrip('/')}/repos/actions/runner/releases/latest"
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}

    async def get() -> httpx.Response:
        try:
            response = await http.get(url, headers=headers)
        except httpx.TransportError as exc:
            raise _Transient(str(exc) or type(exc).__name__) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"HTTP {response.status_code}")
        return response

    response = await _retrying(get, f"GET {url}", retry_seconds)
    if response.status_code != 200:
        raise RunnerError(f"{url}: HTTP {response.status_code}")
    try:
        document = response.json()
        tag = document["tag_name"]
        assets = document["assets"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RunnerError(f"{url}: not a release document") from exc
    version = str(tag).removeprefix("v")
    name = f"actions-runner-linux-{arch}-{version}.tar.gz"
    for asset in assets if isinstance(assets, list) else []:
        if isinstance(asset, dict) and asset.get("name") == name:
            digest = asset.get("digest")
            sha256 = (
                digest.removeprefix("sha256:")
                if isinstance(digest, str) and digest.startswith("sha256:")
                else None
            )
            download = asset.get("browser_download_url")
            if not isinstance(download, str):
                break
            return RunnerRelease(version, arch, download, sha256)
    raise RunnerError(f"release {tag} has no asset {name}")


class RunnerFetcher:
    """The runner tarball, through the S3 cache (see the module docstring)."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        s3: Any,
        bucket: str | None,
        retry_seconds: float,
    ) -> None:
        self._http = http
        self._s3 = s3
        self.bucket = bucket
        self.retry_seconds = retry_seconds

    async def fetch(self, release: RunnerRelease, path: Path) -> str:
        """Put the tarball at ``path``; where it came from (``s3`` or ``download``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.bucket is not None:
            found = await self._s3_call(_s3_get, self.bucket, release.cache_key, path)
            if found and await self._verified(release, path, "the S3 cache"):
                log.info(
                    "runner.cached",
                    version=release.version,
                    source=f"s3://{self.bucket}/{release.cache_key}",
                )
                return "s3"
        await self._download(release, path)
        if self.bucket is not None:
            try:
                await self._s3_call(_s3_put, self.bucket, release.cache_key, path)
            except (BundleError, RetriesExhausted) as exc:
                log.warning("runner.cache_write_failed", error=str(exc))
            else:
                log.info(
                    "runner.cache_written",
                    version=release.version,
                    target=f"s3://{self.bucket}/{release.cache_key}",
                )
        return "download"

    async def _verified(self, release: RunnerRelease, path: Path, where: str) -> bool:
        if release.sha256 is None:
            return True
        # Abandoned on cancel: it only reads.
        digest = await trio.to_thread.run_sync(
            _sha256_of, path, abandon_on_cancel=True, limiter=S3_LIMITER
        )
        if digest == release.sha256:
            return True
        log.warning("runner.digest_mismatch", where=where, sha256=digest, expected=release.sha256)
        await trio.Path(path).unlink(missing_ok=True)
        return False

    async def _download(self, release: RunnerRelease, path: Path) -> None:
        async def get() -> None:
            try:
                async with self._http.stream("GET", release.url, follow_redirects=True) as answer:
                    if answer.status_code >= 500 or answer.status_code == 429:
                        raise _Transient(f"HTTP {answer.status_code}")
                    if answer.status_code != 200:
                        raise RunnerError(f"{release.url}: HTTP {answer.status_code}")
                    async with await trio.open_file(path, "wb") as file:
                        async for chunk in answer.aiter_bytes(_CHUNK):
                            await file.write(chunk)
            except httpx.TransportError as exc:
                raise _Transient(str(exc) or type(exc).__name__) from exc

        await _retrying(get, f"GET {release.url}", self.retry_seconds)
        if not await self._verified(release, path, "the download"):
            raise RunnerError(
                f"{release.url}: its sha256 is not the release's {release.sha256}; not used"
            )
        size = (await trio.Path(path).stat()).st_size
        log.info("runner.downloaded", version=release.version, bytes=size)

    async def _s3_call(self, fn: Callable[..., _T], *args: Any) -> _T:
        async def call() -> _T:
            # Not abandoned: a put must not be left running; both are bounded by
            # botocore's timeouts.
            return await trio.to_thread.run_sync(partial(fn, self._s3, *args), limiter=S3_LIMITER)

        result: _T = await _retrying(
            call, f"S3 {fn.__name__.removeprefix('_s3_')}", self.retry_seconds
        )
        return result


async def _retrying(fn: Callable[[], Any], what: str, retry_seconds: float) -> Any:
    started = trio.current_time()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except _Transient as exc:
            if trio.current_time() - started >= retry_seconds:
                raise RetriesExhausted(what, attempt, exc) from exc
            delay = backoff_delay(attempt, random.random())
            log.warning("runner.retry", operation=what, attempt=attempt, delay=round(delay, 3))
            await trio.sleep(delay)


def _s3_get(s3: Any, bucket: str, key: str, path: Path) -> bool:
    """Download ``key`` to ``path``; ``False`` when there is no such object."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        with open(path, "wb") as file:
            for chunk in body.iter_chunks(_CHUNK):
                file.write(chunk)
    except botocore.exceptions.ClientError as exc:
        path.unlink(missing_ok=True)
        code, status = _error_of(exc)
        if code in ("NoSuchKey", "404") or status == 404:
            return False
        if code in _TRANSIENT_CODES or status >= 500:
            raise _Transient(code) from exc
        raise BundleError(f"s3://{bucket}/{key}: {code or status}") from exc
    except _TRANSIENT_ERRORS as exc:
        path.unlink(missing_ok=True)
        raise _Transient(str(exc)) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise BundleError(f"s3://{bucket}/{key}: {exc}") from exc
    return True


def _s3_put(s3: Any, bucket: str, key: str, path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            s3.put_object(Bucket=bucket, Key=key, Body=file)
    except botocore.exceptions.ClientError as exc:
        code, status = _error_of(exc)
        if code in _TRANSIENT_CODES or status >= 500:
            raise _Transient(code) from exc
        raise BundleError(f"s3://{bucket}/{key}: {code or status}") from exc
    except _TRANSIENT_ERRORS as exc:
        raise _Transient(str(exc)) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise BundleError(f"s3://{bucket}/{key}: {exc}") from exc
    return True


def _error_of(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return str(error.get("Code", "")), status


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def runner_env(token: str) -> dict[str, str]:
    """The variables ``run.sh`` gets on top of the job's: the JIT configuration, and
    leave to run as root where the instance runs farmhand as root."""
    env = {JIT_VARIABLE: token}
    if os.geteuid() == 0:
        env["RUNNER_ALLOW_RUNASROOT"] = "1"
    return env
