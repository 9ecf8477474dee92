"""Job attachments for one session: what the job names, where it goes locally, and the moves.

The wire shapes come from the worker API's ``jobAttachmentDetails`` entity
(``attachments.manifests``: ``rootPath``, ``rootPathFormat``,
``inputManifestPath``, ``outputRelativeDirectories``, ...) and the queue's
``jobAttachmentSettings``. The local layout is the official worker agent's:
each manifest root is synced to ``<session dir>/assetroot-<shake256(rootPath), 10 bytes hex>``
and a path-mapping rule maps ``rootPath`` (in its ``rootPathFormat``) there.

- ``sync_inputs`` downloads the files of the job's input manifests (job-level
  sync) or of the output manifests of the steps a step depends on (the
  ``stepId`` variant), verifying every file's hash.
- ``OutputSnapshot`` records the files under a root's output directories when
  a task starts; ``upload_outputs`` finds what was written since, hashes it,
  uploads what the bucket lacks and writes the output manifest under the
  official key layout, returning what the action reports in ``manifests``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import trio

from ._errors import AttachmentError, ManifestError, collapse
from ._hashing import hash_bytes, hash_file_sync, hash_limiter
from ._manifest import Manifest, ManifestPath, check_relative_path, decode_manifest, merge_manifests
from ._s3 import (
    Progress,
    ProgressCallback,
    S3Settings,
    S3Transfers,
    TransferStatistics,
    output_manifest_partial_prefix,
    report_progress,
)

COPIED = "COPIED"
VIRTUAL = "VIRTUAL"


def local_root_name(root_path: str) -> str:
    """The session subdirectory a manifest root is synced into (the official agent's name)."""
    return "assetroot-" + hashlib.shake_256(root_path.encode()).hexdigest(10)


def manifest_name_hash(root_path: str, file_system_location_name: str | None = None) -> str:
    """The ``<h>`` of ``<h>_output`` / ``<h>_input`` manifest names."""
    return hash_bytes(f"{file_system_location_name or ''}{root_path}".encode())


@attrs.frozen
class ManifestProperties:
    """One entry of a job's ``attachments.manifests``."""

    root_path: str
    root_path_format: str  # "posix" or "windows"
    file_system_location_name: str | None = None
    input_manifest_path: str | None = None
    input_manifest_hash: str | None = None
    output_relative_directories: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, payload: Mapping[str, Any]) -> ManifestProperties:
        root = payload.get("rootPath")
        fmt = str(payload.get("rootPathFormat", "")).lower()
        if not isinstance(root, str) or not root:
            raise ManifestError(f"attachment manifest entry has no rootPath: {dict(payload)!r}")
        if fmt not in ("posix", "windows"):
            raise ManifestError(
                f"attachment manifest for {root!r}: rootPathFormat {fmt!r} is not posix or windows"
            )
        outputs = tuple(str(d) for d in payload.get("outputRelativeDirectories") or ())
        for directory in outputs:
            if directory not in (".", ""):
                check_relative_path(directory.replace("\\", "/").rstrip("/"))
        return cls(
            root_path=root,
            root_path_format=fmt,
            file_system_location_name=payload.get("fileSystemLocationName") or None,
            input_manifest_path=payload.get("inputManifestPath") or None,
            input_manifest_hash=payload.get("inputManifestHash") or None,
            output_relative_directories=outputs,
        )

    def to_api(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "rootPath": self.root_path,
            "rootPathFormat": self.root_path_format,
        }
        if self.file_system_location_name:
            result["fileSystemLocationName"] = self.file_system_location_name
        if self.input_manifest_path:
            result["inputManifestPath"] = self.input_manifest_path
        if self.input_manifest_hash:
            result["inputManifestHash"] = self.input_manifest_hash
        if self.output_relative_directories:
            result["outputRelativeDirectories"] = list(self.output_relative_directories)
        return result

    def local_output_directories(self) -> list[str]:
        """The output directories as local (POSIX) relative paths."""
        if self.root_path_format == "windows":
            return [d.replace("\\", "/") for d in self.output_relative_directories]
        return list(self.output_relative_directories)


@attrs.frozen
class JobAttachments:
    """A job's ``attachments`` (``manifests`` and ``fileSystem``)."""

    manifests: tuple[ManifestProperties, ...]
    file_system: str = COPIED

    @classmethod
    def from_api(cls, payload: Mapping[str, Any]) -> JobAttachments:
        """From ``attachments`` or a ``jobAttachmentDetails`` entity (which wraps it)."""
        if "attachments" in payload and isinstance(payload["attachments"], Mapping):
            payload = payload["attachments"]
        raw = payload.get("manifests") or ()
        if not isinstance(raw, list | tuple):
            raise ManifestError("attachments.manifests must be a list")
        return cls(
            manifests=tuple(ManifestProperties.from_api(m) for m in raw),
            file_system=str(payload.get("fileSystem") or COPIED).upper(),
        )

    def to_api(self) -> dict[str, Any]:
        return {"manifests": [m.to_api() for m in self.manifests], "fileSystem": self.file_system}


@attrs.frozen
class PathMapping:
    """A path-mapping rule from a manifest root to its local copy."""

    source_path_format: str  # "POSIX" or "WINDOWS"
    source_path: str
    destination_path: str

    def to_dict(self) -> dict[str, str]:
        return {
            "source_path_format": self.source_path_format,
            "source_path": self.source_path,
            "destination_path": self.destination_path,
        }


def path_mapping_rules(
    session_dir: Path,
    attachments: JobAttachments,
    storage_rules: Mapping[str, str] | None = None,
) -> list[PathMapping]:
    """One rule per manifest root that the job's own rules (a storage profile's) do not
    already map, to its ``assetroot-<hash>`` directory, as the official agent makes."""
    rules: dict[str, PathMapping] = {}
    for props in attachments.manifests:
        if props.file_system_location_name and (storage_rules or {}).get(props.root_path):
            continue
        rules[props.root_path] = PathMapping(
            source_path_format=props.root_path_format.upper(),
            source_path=props.root_path,
            destination_path=str(session_dir / local_root_name(props.root_path)),
        )
    return list(rules.values())


def local_root(
    session_dir: Path, props: ManifestProperties, storage_rules: Mapping[str, str] | None = None
) -> Path:
    """Where ``props``' root lives on this host."""
    if props.file_system_location_name:
        mapped = (storage_rules or {}).get(props.root_path)
        if mapped:
            return Path(mapped)
    return session_dir / local_root_name(props.root_path)


# ------------------------------------------------------------------ downloads


async def fetch_manifest(transfers: S3Transfers, key: str) -> tuple[Manifest, dict[str, str], Any]:
    """Download and decode the manifest at the full ``key``: ``(manifest, metadata, LastModified)``."""
    data, metadata, modified = await transfers.get_bytes(key)
    return decode_manifest(data, source=f"s3://{transfers.bucket}/{key}"), metadata, modified


def asset_root_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """The asset root an output manifest's S3 metadata names."""
    if "asset-root-json" in metadata:
        value = json.loads(metadata["asset-root-json"])
        return str(value)
    return metadata.get("asset-root")


def output_manifest_metadata(
    root_path: str, file_system_location_name: str | None
) -> dict[str, str]:
    """S3 user metadata for an output manifest (ASCII only: non-ASCII roots go JSON-escaped)."""
    metadata: dict[str, str] = {}
    try:
        root_path.encode("ascii")
        metadata["asset-root"] = root_path
    except UnicodeEncodeError:
        escaped = json.dumps(root_path, ensure_ascii=True)
        metadata["asset-root-json"] = escaped
        metadata["asset-root"] = escaped
    if file_system_location_name:
        metadata["file-system-location-name"] = file_system_location_name
    return metadata


_STEP_OUTPUT = re.compile(r"step-.*/.*/.*output.*")


def select_output_manifest_keys(keys: Iterable[str]) -> list[str]:
    """The output manifests a step's outputs consist of: per task, its latest session action's.

    The same rule as the official library: keys under ``task-*`` folders keep
    only the last ``<time>_<sessionaction>`` folder (by name); chunked steps'
    keys (no task folder) are all kept.
    """
    chosen: list[str] = []
    by_task: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        if not _STEP_OUTPUT.search(key):
            continue
        parts = key.split("/")
        for index, part in enumerate(parts):
            if "task-" in part:
                by_task["/".join(parts[: index + 1])].append(key)
                break
        else:
            chosen.append(key)
    for task_folder, files in by_task.items():
        depth = len(task_folder.split("/"))
        latest = max(f.split("/")[depth] for f in files)
        chosen.extend(f for f in files if f.startswith(f"{task_folder}/{latest}/"))
    return sorted(chosen)


async def fetch_output_manifests(
    transfers: S3Transfers,
    settings: S3Settings,
    *,
    farm_id: str,
    queue_id: str,
    job_id: str,
    step_id: str | None = None,
) -> dict[str, Manifest]:
    """A step's (or the whole job's) outputs, one merged manifest per asset root.

    Manifests are merged oldest first (by LastModified), so a later task run's
    file wins over an earlier one's.
    """
    if step_id:
        prefix = settings.step_output_prefix(farm_id, queue_id, job_id, step_id)
    else:
        prefix = settings.job_output_prefix(farm_id, queue_id, job_id)
    keys = select_output_manifest_keys(await transfers.list_keys(prefix))
    found: list[tuple[Any, str, Manifest]] = []

    async def one(key: str) -> None:
        manifest, metadata, modified = await fetch_manifest(transfers, key)
        root = asset_root_from_metadata(metadata)
        if not root:
            raise ManifestError(
                f"s3://{transfers.bucket}/{key}: output manifest has no asset-root metadata"
            )
        found.append((modified, key, manifest))
        roots[key] = root

    roots: dict[str, str] = {}
    try:
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(one, key)
    except* AttachmentError as group:
        raise collapse(group) from None
    grouped: dict[str, list[Manifest]] = defaultdict(list)
    for _, key, manifest in sorted(found, key=lambda item: (item[0], item[1])):
        grouped[roots[key]].append(manifest)
    merged: dict[str, Manifest] = {}
    for root, manifests in grouped.items():
        combined = merge_manifests(manifests)
        if combined is not None:
            merged[root] = combined
    return merged


async def download_files(
    transfers: S3Transfers,
    settings: S3Settings,
    jobs: Sequence[tuple[Manifest, Path]],
    *,
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 1.0,
) -> TransferStatistics:
    """Download every file of each ``(manifest, local root)``, at most ``max_concurrency`` at once.

    A file already there with the manifest's size and mtime is kept. Returns
    the final statistics; ``on_progress`` gets a snapshot every
    ``progress_interval`` seconds and once at the end.
    """
    entries: list[tuple[ManifestPath, Path]] = []
    for manifest, root in jobs:
        for entry in manifest.paths:
            check_relative_path(entry.path)
            entries.append((entry, root))
    progress = Progress(files_total=len(entries), bytes_total=sum(e.size for e, _ in entries))
    work: Iterator[tuple[ManifestPath, Path]] = iter(entries)

    async def worker() -> None:
        for entry, root in work:
            dest = root.joinpath(*PurePosixPath(entry.path).parts)
            await transfers.download_file(
                settings.data_key(entry.hash),
                dest,
                expected_hash=entry.hash,
                expected_size=entry.size,
                mtime_us=entry.mtime,
                progress=progress,
                display_path=entry.path,
                keep_existing=True,
            )

    try:
        async with trio.open_nursery() as nursery:
            if on_progress is not None:
                nursery.start_soon(report_progress, progress, on_progress, progress_interval)
            async with trio.open_nursery() as workers:
                for _ in range(min(transfers.max_concurrency, max(1, len(entries)))):
                    workers.start_soon(worker)
            nursery.cancel_scope.cancel(reason="downloads finished")
    except* AttachmentError as group:
        raise collapse(group) from None
    final = progress.statistics()
    if on_progress is not None:
        await on_progress(final)
    return final


@attrs.frozen
class SyncedRoot:
    """One manifest root synced into the session."""

    root_path: str
    local_path: Path
    files: int
    bytes: int


async def sync_inputs(
    transfers: S3Transfers,
    settings: S3Settings,
    attachments: JobAttachments,
    session_dir: Path,
    *,
    farm_id: str,
    queue_id: str,
    job_id: str,
    dependencies: Sequence[str] = (),
    storage_rules: Mapping[str, str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[list[SyncedRoot], TransferStatistics]:
    """``syncInputJobAttachments``: the job's inputs, or (``dependencies``) those steps' outputs.

    Manifests are written to ``<session dir>/manifests/<h(root)>_job`` (or
    ``_step``), as the official agent does.
    """
    grouped: dict[Path, tuple[str, list[Manifest]]] = {}

    def add(root_path: str, local: Path, manifest: Manifest) -> None:
        grouped.setdefault(local, (root_path, []))[1].append(manifest)

    if not dependencies:
        keyed = [p for p in attachments.manifests if p.input_manifest_path]
        fetched: dict[int, Manifest] = {}

        async def one(index: int, props: ManifestProperties) -> None:
            assert props.input_manifest_path is not None
            manifest, _, _ = await fetch_manifest(
                transfers, settings.manifest_key(props.input_manifest_path)
            )
            fetched[index] = manifest

        try:
            async with trio.open_nursery() as nursery:
                for index, props in enumerate(keyed):
                    nursery.start_soon(one, index, props)
        except* AttachmentError as group:
            raise collapse(group) from None
        for index, props in enumerate(keyed):
            add(props.root_path, local_root(session_dir, props, storage_rules), fetched[index])
    else:
        for step_id in dependencies:
            outputs = await fetch_output_manifests(
                transfers,
                settings,
                farm_id=farm_id,
                queue_id=queue_id,
                job_id=job_id,
                step_id=step_id,
            )
            for root_path, manifest in outputs.items():
                add(root_path, session_dir / local_root_name(root_path), manifest)

    jobs: list[tuple[Manifest, Path]] = []
    synced: list[SyncedRoot] = []
    manifest_dir = session_dir / "manifests"
    suffix = "step" if dependencies else "job"

    def write_manifest(root_path: str, local: Path, merged: Manifest) -> None:
        manifest_dir.mkdir(parents=True, exist_ok=True)
        (manifest_dir / f"{hash_bytes(root_path.encode())}_{suffix}").write_text(merged.encode())
        local.mkdir(parents=True, exist_ok=True)

    for local, (root_path, manifests) in grouped.items():
        merged = merge_manifests(manifests)
        if merged is None:
            continue
        await trio.to_thread.run_sync(write_manifest, root_path, local, merged)
        jobs.append((merged, local))
        synced.append(SyncedRoot(root_path, local, len(merged.paths), merged.total_size))
    stats = await download_files(transfers, settings, jobs, on_progress=on_progress)
    return synced, stats


# ------------------------------------------------------------------ outputs


def _scan(directory: Path) -> dict[str, tuple[int, int]]:
    """``{absolute path: (size, mtime_ns)}`` of the regular files under ``directory``."""
    found: dict[str, tuple[int, int]] = {}
    if not directory.is_dir():
        return found
    for dirpath, _dirnames, filenames in os.walk(directory):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            found[path] = (st.st_size, st.st_mtime_ns)
    return found


@attrs.frozen
class OutputSnapshot:
    """The files under each root's output directories when a task run started."""

    files: Mapping[str, tuple[int, int]]

    @classmethod
    def take_sync(
        cls,
        session_dir: Path,
        attachments: JobAttachments,
        storage_rules: Mapping[str, str] | None = None,
    ) -> OutputSnapshot:
        files: dict[str, tuple[int, int]] = {}
        for props in attachments.manifests:
            root = local_root(session_dir, props, storage_rules)
            for directory in props.local_output_directories():
                files.update(_scan(root / directory))
        return cls(files)

    @classmethod
    async def take(
        cls,
        session_dir: Path,
        attachments: JobAttachments,
        storage_rules: Mapping[str, str] | None = None,
    ) -> OutputSnapshot:
        return await trio.to_thread.run_sync(cls.take_sync, session_dir, attachments, storage_rules)


def _changed_outputs(
    session_dir: Path, props: ManifestProperties, root: Path, before: OutputSnapshot
) -> list[tuple[str, Path]]:
    """``(manifest path, absolute path)`` of files written under ``props``' outputs since ``before``."""
    real_session = os.path.realpath(session_dir)
    real_root = os.path.realpath(root)
    out: dict[str, Path] = {}
    for directory in props.local_output_directories():
        for path, stat in _scan(root / directory).items():
            if before.files.get(path) == stat:
                continue
            real = os.path.realpath(path)
            # Never upload what resolves outside the session (or outside its root).
            if (
                os.path.commonpath([real, real_session]) != real_session
                and os.path.commonpath([real, real_root]) != real_root
            ):
                continue
            relative = Path(path).relative_to(root).as_posix()
            out[relative] = Path(path)
    return sorted(out.items())


@attrs.frozen
class OutputManifestReport:
    """What one root's outputs became: the ``manifests`` entry of the action's report."""

    root_path: str
    manifest_path: str | None  # partial key, under <rootPrefix>/Manifests/
    manifest_hash: str | None
    files: int = 0
    bytes: int = 0
    uploaded_files: int = 0

    def to_api(self) -> dict[str, str]:
        if self.manifest_path is None or self.manifest_hash is None:
            return {}
        return {"outputManifestPath": self.manifest_path, "outputManifestHash": self.manifest_hash}


async def upload_outputs(
    transfers: S3Transfers,
    settings: S3Settings,
    attachments: JobAttachments,
    session_dir: Path,
    before: OutputSnapshot,
    *,
    farm_id: str,
    queue_id: str,
    job_id: str,
    step_id: str,
    task_id: str | None,
    session_action_id: str,
    started_at: float,
    storage_rules: Mapping[str, str] | None = None,
    on_progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> list[OutputManifestReport]:
    """Upload what the task wrote under each root's output directories; one report per root.

    Reports come in the order of ``attachments.manifests`` (the order the
    service expects in the action's ``manifests``); a root with nothing new
    reports no manifest.
    """
    say = log or (lambda _msg: None)
    partial_prefix = output_manifest_partial_prefix(
        farm_id=farm_id,
        queue_id=queue_id,
        job_id=job_id,
        step_id=step_id,
        task_id=task_id,
        session_action_id=session_action_id,
        started_at=started_at,
    )
    plans: list[tuple[ManifestProperties, Path, list[tuple[str, Path]]]] = []
    for props in attachments.manifests:
        root = local_root(session_dir, props, storage_rules)
        changed = await trio.to_thread.run_sync(_changed_outputs, session_dir, props, root, before)
        plans.append((props, root, changed))
    files = [(relative, path) for _, _, changed in plans for relative, path in changed]
    total_bytes = await trio.to_thread.run_sync(
        lambda: sum(os.stat(path).st_size for _, path in files)
    )
    progress = Progress(files_total=len(files), bytes_total=total_bytes)
    hashed: dict[Path, ManifestPath] = {}
    claimed: set[str] = set()
    uploaded = 0
    work: Iterator[tuple[str, Path]] = iter(files)

    def hash_and_stat(path: Path) -> tuple[str, int, int]:
        digest, size = hash_file_sync(path)
        return digest, size, os.stat(path).st_mtime_ns // 1000

    async def worker() -> None:
        """Hash a file, then upload it unless the bucket (or another worker) has it."""
        nonlocal uploaded
        for relative, path in work:
            digest, size, mtime = await trio.to_thread.run_sync(
                hash_and_stat, path, limiter=hash_limiter()
            )
            entry = hashed[path] = ManifestPath(relative, digest, size, mtime)
            key = settings.data_key(digest)
            if digest in claimed:
                progress.file_done(skipped_bytes=size)  # another worker has it in hand
                continue
            claimed.add(digest)
            if await transfers.exists(key):
                progress.file_done(skipped_bytes=size)
                continue
            await transfers.upload_file(
                key, path, size=size, progress=progress, display_path=entry.path
            )
            uploaded += 1

    try:
        async with trio.open_nursery() as nursery:
            if on_progress is not None:
                nursery.start_soon(report_progress, progress, on_progress)
            async with trio.open_nursery() as workers:
                for _ in range(min(transfers.max_concurrency, max(1, len(files)))):
                    workers.start_soon(worker)
            nursery.cancel_scope.cancel(reason="uploads finished")
    except* AttachmentError as group:
        raise collapse(group) from None
    if on_progress is not None:
        await on_progress(progress.statistics())

    reports: list[OutputManifestReport] = []
    for props, _root, changed in plans:
        if not changed:
            say(
                f"No output written under {props.root_path} {list(props.output_relative_directories)}"
            )
            reports.append(OutputManifestReport(props.root_path, None, None))
            continue
        manifest = Manifest.from_paths(hashed[path] for _, path in changed)
        data = manifest.encode().encode("utf-8")
        name = f"{manifest_name_hash(props.root_path, props.file_system_location_name)}_output"
        partial_key = f"{partial_prefix}/{name}"
        await transfers.put_bytes(
            settings.manifest_key(partial_key),
            data,
            metadata=output_manifest_metadata(props.root_path, props.file_system_location_name),
        )
        say(
            f"Uploaded {len(changed)} output file(s) of {props.root_path}; "
            f"manifest s3://{settings.bucket}/{settings.manifest_key(partial_key)}"
        )
        reports.append(
            OutputManifestReport(
                props.root_path,
                partial_key,
                hash_bytes(data),
                files=len(changed),
                bytes=manifest.total_size,
                uploaded_files=uploaded,
            )
        )
    return reports


__all__ = [
    "COPIED",
    "VIRTUAL",
    "JobAttachments",
    "ManifestProperties",
    "OutputManifestReport",
    "OutputSnapshot",
    "PathMapping",
    "SyncedRoot",
    "download_files",
    "fetch_manifest",
    "fetch_output_manifests",
    "local_root",
    "local_root_name",
    "path_mapping_rules",
    "sync_inputs",
    "upload_outputs",
]
