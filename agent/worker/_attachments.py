"""The worker's job-attachment support, made when a session first needs it.

Only sessions of queues with ``jobAttachmentSettings`` use job attachments, and
``agent.attachments`` (manifests, hashing, S3 transfers, with xxhash) is ~7 ms
and 0.4 MiB to import: a worker whose sessions never sync anything, such as
``python -m agent run`` of a plain template, never imports it (issue 16). The
first session that does gets the same ``WorkerAttachments`` every later one
shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..attachments._worker import SessionAttachments, WorkerAttachments
    from ._config import WorkerConfig


class LazyAttachments:
    """An ``actors.AttachmentProvider``: ``agent.attachments``' ``WorkerAttachments`` with
    these settings, imported and made at the first ``open_session``."""

    def __init__(
        self, *, endpoint_url: str | None, region: str | None, max_concurrency: int
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.max_concurrency = max_concurrency
        self._made: WorkerAttachments | None = None

    @classmethod
    def for_worker(cls, config: WorkerConfig) -> LazyAttachments:
        return cls(
            endpoint_url=config.s3_endpoint_url,
            region=config.region,
            max_concurrency=config.attachment_concurrency,
        )

    @property
    def made(self) -> bool:
        """Whether a session has needed job attachments yet."""
        return self._made is not None

    def open_session(
        self,
        *,
        settings: Mapping[str, Any],
        farm_id: str,
        queue_id: str,
        job_id: str,
        session_id: str,
        queue_env: Mapping[str, str] | None,
        storage_rules: Mapping[str, str] | None = None,
    ) -> SessionAttachments:
        if self._made is None:
            from ..attachments._worker import WorkerAttachments

            self._made = WorkerAttachments(
                endpoint_url=self.endpoint_url,
                region=self.region,
                max_concurrency=self.max_concurrency,
            )
        return self._made.open_session(
            settings=settings,
            farm_id=farm_id,
            queue_id=queue_id,
            job_id=job_id,
            session_id=session_id,
            queue_env=queue_env,
            storage_rules=storage_rules,
        )
