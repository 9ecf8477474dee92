"""Where a job's raw log and artifacts go: S3 (any endpoint), under keys the server can predict.

Key layout, for the agent's ``--artifacts s3://BUCKET/PREFIX``::

    PREFIX<job_id>/log.txt                  the raw log (every output line)
    PREFIX<job_id>/artifacts/<path>         each artifact, by its path in the job's directory

A later run of the same job id replaces the keys of the earlier one. Without
``--artifacts`` the log stays on the agent (``<work-dir>/logs/<job_id>.log``,
reported as a ``file://`` URI) and artifacts are reported as not uploaded.

Uploads are boto3 calls in worker threads (one shared client, its own limiter);
they are not abandoned on cancel: botocore's timeouts bound them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from . import ci_agent_pb2 as pb
from ._grpcconfig import AgentConfig

log = structlog.get_logger("farmhand.grpcagent.storage")

S3_LIMITER = trio.CapacityLimiter(8)


class Storage:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._client: Any = None

    def log_key(self, job_id: str) -> str:
        return f"{self.config.prefix}{job_id}/log.txt"

    def artifact_key(self, job_id: str, path: str) -> str:
        return f"{self.config.prefix}{job_id}/artifacts/{path}"

    def _s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Made once, in the Trio thread (boto3 sessions are not thread-safe to create).
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.config.s3_endpoint_url,
                region_name=self.config.region,
                config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3}),
            )
        return self._client

    async def upload_log(self, job_id: str, local: Path) -> pb.Upload:
        size = _size(local)
        if self.config.bucket is None:
            return pb.Upload(path="", uri=local.as_uri(), size=size)
        return await self._put(local, self.log_key(job_id), "", size)

    async def upload_artifact(self, job_id: str, local: Path, path: str) -> pb.Upload:
        size = _size(local)
        if self.config.bucket is None:
            return pb.Upload(
                path=path, size=size, error="the agent has no artifact storage (--artifacts)"
            )
        return await self._put(local, self.artifact_key(job_id, path), path, size)

    async def _put(self, local: Path, key: str, path: str, size: int) -> pb.Upload:
        bucket = self.config.bucket
        uri = f"s3://{bucket}/{key}"
        try:
            client = self._s3()
            # Not abandoned on cancel (an upload half done is worse than a late one);
            # botocore's connect/read timeouts bound it.
            await trio.to_thread.run_sync(
                partial(client.upload_file, str(local), bucket, key), limiter=S3_LIMITER
            )
        except Exception as exc:  # botocore's errors have no common base worth naming
            error = " ".join(str(exc).split()) or type(exc).__name__
            log.warning("grpcagent.upload_failed", uri=uri, error=error)
            return pb.Upload(path=path, uri=uri, size=size, error=f"upload failed: {error}")
        return pb.Upload(path=path, uri=uri, size=size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
