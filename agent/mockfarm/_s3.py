"""S3 for the mock farm's job attachments: moto's S3 on loopback, or an endpoint the user gives.

A farm with ``S3Config`` gives its default queue ``jobAttachmentSettings``
(the bucket and root prefix here) and tells clients and workers the S3
endpoint (``MockFarm.environ()``: ``AWS_ENDPOINT_URL_S3``). Without an
endpoint, moto's S3 server (``moto[server]``, a well-kept AWS fake) runs in a
thread of this process on ``127.0.0.1``, holding the objects in memory (large
ones spill to temporary files) until the farm closes; any credentials work.
With one (MinIO, real S3), the bucket must be reachable with the credentials
in the environment; it is created if missing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

DEFAULT_BUCKET = "farmhand-job-attachments"
DEFAULT_ROOT_PREFIX = "DeadlineCloud"


class S3Unavailable(Exception):
    """No S3 endpoint can be had (moto is not installed and none was given)."""


@attrs.frozen
class S3Config:
    """Job attachments for a mock farm: where its S3 is, and the queue's bucket and prefix."""

    #: An S3 endpoint to use; ``None``: serve moto's S3 on loopback.
    endpoint_url: str | None = None
    bucket: str = DEFAULT_BUCKET
    root_prefix: str = DEFAULT_ROOT_PREFIX

    def settings(self) -> dict[str, str]:
        """The queue's ``jobAttachmentSettings``."""
        return {"s3BucketName": self.bucket, "rootPrefix": self.root_prefix}


def moto_available() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


def _create_bucket(endpoint_url: str, bucket: str, region: str, keys: tuple[str, str]) -> None:
    import boto3
    from botocore.exceptions import ClientError

    s3: Any = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=keys[0],
        aws_secret_access_key=keys[1],
    )
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError:
        pass
    try:
        if region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
            )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise S3Unavailable(
                f"cannot create bucket {bucket!r} at {endpoint_url}: {exc}"
            ) from exc


@asynccontextmanager
async def open_s3(
    config: S3Config, *, region: str, keys: tuple[str, str], host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """The S3 endpoint URL for the block: the configured one, or moto's served here."""
    server: Any = None
    if config.endpoint_url:
        url = config.endpoint_url
    else:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise S3Unavailable(
                "serving S3 for job attachments needs moto: pip install 'farmhand[mockfarm]' "
                "(or give an S3 endpoint)"
            ) from exc
        # moto's werkzeug server logs every request; a farm's log does not need them.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
        await trio.to_thread.run_sync(server.start)
        url = f"http://{host}:{server.get_host_and_port()[1]}"
    try:
        await trio.to_thread.run_sync(_create_bucket, url, config.bucket, region, keys)
        yield url
    finally:
        if server is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(server.stop)
