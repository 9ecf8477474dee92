"""Job attachments for the worker's sessions: the ``AttachmentProvider`` the work sessions use.

A session whose queue has ``jobAttachmentSettings`` gets a ``SessionAttachments``:

- its ``env`` (``DEADLINE_JA_S3_BUCKET``, ``DEADLINE_JA_ROOT_PREFIX``) joins the
  session's variables, as the official agent sets them;
- ``sync_inputs`` is the ``syncInputJobAttachments`` action: the job's input
  manifests (or, with ``stepId``, the outputs of the steps that step depends
  on) are downloaded into the session directory, each root into
  ``assetroot-<hash>``, and the roots' path-mapping rules are added to the
  session, so PATH parameters and ``Session.PathMappingRulesFile`` point at the
  local copies. It runs in the worker process (S3 in threads), with the
  queue role's credentials when the queue has a role;
- ``task_hook`` gives each task run of a session that synced attachments a
  hook that records the output directories before the task and, once it has
  succeeded, uploads what it wrote there; the task is reported SUCCEEDED with
  the output manifests in its ``manifests`` only after that.

``fileSystem: VIRTUAL`` (the official agent's FUSE mount) is served by copying,
which the session log says once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio
from openjd.expr import PathMappingRule

from actors import HostContext, ResolvedJobUser

from ._errors import AttachmentError
from ._s3 import DEFAULT_CONCURRENCY, S3Settings, S3Transfers, TransferStatistics, make_s3_client
from ._sync import (
    VIRTUAL,
    JobAttachments,
    OutputSnapshot,
    local_root,
    path_mapping_rules,
    sync_inputs,
    upload_outputs,
)

log = structlog.get_logger("farmhand.attachments")


def _boto3_session(queue_env: Mapping[str, str] | None) -> Any:
    """A boto3 session with the queue role's credentials (its credential_process profile),
    else the agent's own credential chain."""
    import boto3
    import botocore.session

    core = botocore.session.Session()
    if queue_env and queue_env.get("AWS_PROFILE"):
        if queue_env.get("AWS_CONFIG_FILE"):
            core.set_config_variable("config_file", queue_env["AWS_CONFIG_FILE"])
        if queue_env.get("AWS_SHARED_CREDENTIALS_FILE"):
            core.set_config_variable("credentials_file", queue_env["AWS_SHARED_CREDENTIALS_FILE"])
        core.set_config_variable("profile", queue_env["AWS_PROFILE"])
    return boto3.session.Session(botocore_session=core)


def _share_tree(root: Path, user: ResolvedJobUser) -> None:
    """Give what was downloaded under ``root`` to the job user's group (it runs the tasks)."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chown(dirpath, -1, user.gid)
        os.chmod(dirpath, 0o770)
        for name in filenames:
            path = os.path.join(dirpath, name)
            os.chown(path, -1, user.gid)
            os.chmod(path, 0o660)
        del dirnames  # walked by os.walk


def _openjd_rules(
    attachments: JobAttachments, session_dir: Path, storage_rules: Mapping[str, str]
) -> list[PathMappingRule]:
    return [
        PathMappingRule.from_dict(r.to_dict())
        for r in path_mapping_rules(session_dir, attachments, storage_rules)
    ]


class WorkerAttachments:
    """The worker's job-attachment support (one per agent; it makes one per session)."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.max_concurrency = max_concurrency

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
        """The attachments of one session (``settings``: the queue's ``jobAttachmentSettings``)."""
        return SessionAttachments(
            self,
            S3Settings.from_api(settings),
            farm_id=farm_id,
            queue_id=queue_id,
            job_id=job_id,
            session_id=session_id,
            queue_env=queue_env,
            storage_rules=storage_rules,
        )


class SessionAttachments:
    """Job attachments of one session (see the module docstring)."""

    def __init__(
        self,
        worker: WorkerAttachments,
        settings: S3Settings,
        *,
        farm_id: str,
        queue_id: str,
        job_id: str,
        session_id: str,
        queue_env: Mapping[str, str] | None,
        storage_rules: Mapping[str, str] | None,
    ) -> None:
        self._worker = worker
        self.settings = settings
        self.farm_id = farm_id
        self.queue_id = queue_id
        self.job_id = job_id
        self.session_id = session_id
        self._queue_env = dict(queue_env) if queue_env else None
        self._storage_rules = dict(storage_rules or {})
        self._transfers: S3Transfers | None = None
        #: The job's attachments, once a job-level sync has run in this session.
        self.attachments: JobAttachments | None = None
        self._said_virtual = False

    @property
    def env(self) -> dict[str, str]:
        return {
            "DEADLINE_JA_S3_BUCKET": self.settings.bucket,
            "DEADLINE_JA_ROOT_PREFIX": self.settings.root_prefix,
        }

    async def _transfers_for_session(self) -> S3Transfers:
        if self._transfers is None:
            # In a thread: resolving the queue's credential_process profile runs a
            # process, and botocore loads its S3 model from disk.
            worker, queue_env = self._worker, self._queue_env
            client = await trio.to_thread.run_sync(
                lambda: make_s3_client(
                    session=_boto3_session(queue_env),
                    region=worker.region,
                    endpoint_url=worker.endpoint_url,
                    max_pool_connections=worker.max_concurrency + 4,
                )
            )
            self._transfers = S3Transfers(
                client, self.settings.bucket, max_concurrency=self._worker.max_concurrency
            )
        return self._transfers

    async def sync_inputs(
        self, context: HostContext, details: Mapping[str, Any], dependencies: Sequence[str]
    ) -> None:
        """``syncInputJobAttachments``; ``details`` is the ``jobAttachmentDetails`` entity."""
        attachments = JobAttachments.from_api(details)
        session_dir = context.working_directory
        what = (
            f"outputs of {len(dependencies)} step(s) this step depends on"
            if dependencies
            else "job inputs"
        )
        if attachments.file_system == VIRTUAL and not self._said_virtual:
            self._said_virtual = True
            await context.log(
                "fileSystem VIRTUAL (a FUSE mount in the official agent) is not offered by "
                "farmhand; the job's attachments are copied into the session instead"
            )
        if not dependencies:
            self.attachments = attachments
            rules = _openjd_rules(attachments, session_dir, self._storage_rules)
            context.add_path_mapping_rules(rules)
            for rule in rules:
                await context.log(f"path mapping: {rule.source_path} -> {rule.destination_path}")
        elif self.attachments is None:
            # A step-dependency sync without the job-level one (the farm sends both).
            self.attachments = attachments
            context.add_path_mapping_rules(
                _openjd_rules(attachments, session_dir, self._storage_rules)
            )
        await context.log(
            f"syncing {what} from s3://{self.settings.bucket}/{self.settings.root_prefix}"
        )
        last_status = 0.0

        async def on_progress(stats: TransferStatistics) -> None:
            nonlocal last_status
            await context.progress(stats.percent)
            now = time.monotonic()
            if (
                now - last_status >= 1.0
                or stats.files_done + stats.files_skipped == stats.files_total
            ):
                last_status = now
                await context.status(stats.describe("Downloaded"))

        synced, stats = await sync_inputs(
            await self._transfers_for_session(),
            self.settings,
            attachments,
            session_dir,
            farm_id=self.farm_id,
            queue_id=self.queue_id,
            job_id=self.job_id,
            dependencies=dependencies,
            storage_rules=self._storage_rules,
            on_progress=on_progress,
        )
        user = context.job_user
        if isinstance(user, ResolvedJobUser):
            for root in synced:
                await trio.to_thread.run_sync(_share_tree, root.local_path, user)
        for root in synced:
            await context.log(
                f"{root.root_path}: {root.files} file(s), {root.bytes} bytes in {root.local_path}"
            )
        await context.log(
            stats.describe("Downloaded") + f"; {stats.files_skipped} already in place"
        )

    def task_hook(
        self, *, step_id: str, task_id: str | None, action_id: str
    ) -> OutputUpload | None:
        """The output upload of one task run, or ``None`` when the session synced no attachments."""
        if self.attachments is None:
            return None
        return OutputUpload(self, step_id=step_id, task_id=task_id, action_id=action_id)


class OutputUpload:
    """A task run's outputs: snapshot before, upload after (a ``TaskHook``)."""

    def __init__(
        self, owner: SessionAttachments, *, step_id: str, task_id: str | None, action_id: str
    ) -> None:
        self._owner = owner
        self.step_id = step_id
        self.task_id = task_id
        self.action_id = action_id
        self._before: OutputSnapshot | None = None
        self._started = time.time()

    async def before(self, context: HostContext) -> None:
        attachments = self._owner.attachments
        assert attachments is not None
        self._started = time.time()
        self._before = await OutputSnapshot.take(
            context.working_directory, attachments, self._owner._storage_rules
        )

    async def after(self, context: HostContext) -> Sequence[Mapping[str, str]]:
        owner = self._owner
        attachments = owner.attachments
        assert attachments is not None
        assert self._before is not None
        dirs = [
            str(local_root(context.working_directory, p, owner._storage_rules) / d)
            for p in attachments.manifests
            for d in p.local_output_directories()
        ]
        if not dirs:
            return [{} for _ in attachments.manifests]

        async def on_progress(stats: TransferStatistics) -> None:
            await context.status(stats.describe("Uploaded"))

        async def say(message: str) -> None:
            await context.log(message)

        lines: list[str] = []
        try:
            reports = await upload_outputs(
                await owner._transfers_for_session(),
                owner.settings,
                attachments,
                context.working_directory,
                self._before,
                farm_id=owner.farm_id,
                queue_id=owner.queue_id,
                job_id=owner.job_id,
                step_id=self.step_id,
                task_id=self.task_id,
                session_action_id=self.action_id,
                started_at=self._started,
                storage_rules=owner._storage_rules,
                on_progress=on_progress,
                log=lines.append,
            )
        except AttachmentError as exc:
            raise AttachmentError(f"uploading the task's outputs failed: {exc}") from exc
        for line in lines:
            await say(line)
        return [r.to_api() for r in reports]
