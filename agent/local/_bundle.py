"""Job bundles for ``python -m agent run`` and ``check``: a directory as ``deadline
bundle submit`` reads it.

A bundle holds ``template.yaml`` (or ``.json``), and optionally
``parameter_values.yaml`` (or ``.json``; ``parameterValues: [{name, value}]``,
the values the bundle was saved with; ``-p`` overrides them, and ``run`` leaves
out those no template defines, as a queue environment's) and ``asset_references.yaml``
(``assetReferences``: ``inputs.filenames``, ``inputs.directories``,
``outputs.directories``). Run through the embedded farm, the bundle's files go
through job attachments as on a farm: the inputs (those files, the files
under those directories, and the PATH parameters whose ``dataFlow`` is ``IN``
or ``INOUT``) are hashed and uploaded to the farm's S3 under one asset root
(their common directory), the worker syncs them into its session and maps
the root there, and what the job writes under the output directories (and
the PATH parameters whose ``dataFlow`` is ``OUT`` or ``INOUT``) is uploaded
and then downloaded back to those paths.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .._words import counted
from ..attachments import (
    Manifest,
    ManifestPath,
    ProgressCallback,
    S3Settings,
    S3Transfers,
    TransferStatistics,
    download_files,
    fetch_output_manifests,
    hash_bytes,
    hash_file,
    make_s3_client,
)
from ._templates import TemplateError, read_document

_NAMES = ("template.yaml", "template.json", "template.yml")


def _find(directory: Path, stem: str) -> Path | None:
    for suffix in (".yaml", ".json", ".yml"):
        path = directory / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


@attrs.frozen
class JobBundle:
    """What a bundle directory says (see the module docstring)."""

    directory: Path
    template: Path
    #: ``parameter_values``, name -> value, as saved (the user's ``-p`` overrides them).
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    input_files: tuple[Path, ...] = ()
    input_directories: tuple[Path, ...] = ()
    output_directories: tuple[Path, ...] = ()

    @classmethod
    def read(cls, directory: Path) -> JobBundle:
        template = bundle_template(directory)
        parameters = read_parameter_values(directory)
        inputs: list[Path] = []
        input_dirs: list[Path] = []
        outputs: list[Path] = []
        refs_path = _find(directory, "asset_references")
        if refs_path is not None:
            refs = read_document(refs_path).get("assetReferences") or {}
            if not isinstance(refs, Mapping):
                raise TemplateError(f"{refs_path}: assetReferences must be a mapping")

            def paths(section: str, kind: str) -> list[Path]:
                value = (refs.get(section) or {}).get(kind) or []
                if not isinstance(value, list):
                    raise TemplateError(
                        f"{refs_path}: assetReferences.{section}.{kind} must be a list"
                    )
                return [_absolute(str(v), directory) for v in value]

            inputs = paths("inputs", "filenames")
            input_dirs = paths("inputs", "directories")
            outputs = paths("outputs", "directories")
        return cls(
            directory, template, parameters, tuple(inputs), tuple(input_dirs), tuple(outputs)
        )


def bundle_template(directory: Path) -> Path:
    """A bundle's ``template.yaml`` (or ``.json``, ``.yml``); ``TemplateError`` if none."""
    template = next((directory / n for n in _NAMES if (directory / n).is_file()), None)
    if template is None:
        raise TemplateError(
            f"{directory} is a directory, and a job bundle directory holds "
            "template.yaml or template.json"
        )
    return template


def read_parameter_values(directory: Path) -> dict[str, Any]:
    """A bundle's ``parameter_values.yaml`` (or ``.json``): ``parameterValues: [{name,
    value}]`` as name -> value; ``{}`` without one. Names with a colon
    (``deadline:priority``) are the submitter's settings, not the job's: left out."""
    values_path = _find(directory, "parameter_values")
    if values_path is None:
        return {}
    values = read_document(values_path).get("parameterValues") or []
    if not isinstance(values, list):
        raise TemplateError(f"{values_path}: parameterValues must be a list")
    parameters: dict[str, Any] = {}
    for entry in values:
        if not isinstance(entry, Mapping) or "name" not in entry or "value" not in entry:
            raise TemplateError(f"{values_path}: each parameter value needs a name and a value")
        name = str(entry["name"])
        if ":" not in name:
            parameters[name] = entry["value"]
    return parameters


def _absolute(path: str, base: Path) -> Path:
    candidate = Path(os.path.expanduser(path))
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


@attrs.frozen
class BundleAssets:
    """A bundle's files for job attachments: one asset root, the input files, the outputs."""

    root: Path
    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]

    @property
    def output_relative(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() or "." for p in self.outputs]


def bundle_assets(
    bundle: JobBundle,
    template: Mapping[str, Any],
    parameter_values: Mapping[str, Any],
) -> BundleAssets | None:
    """The bundle's inputs and outputs (with its PATH parameters by ``dataFlow``), or
    ``None`` when it has neither."""
    files: set[Path] = set(bundle.input_files)
    input_dirs = list(bundle.input_directories)
    outputs = list(bundle.output_directories)
    for definition in template.get("parameterDefinitions") or ():
        if definition.get("type") != "PATH":
            continue
        value = parameter_values.get(definition.get("name"))
        if value is None or not str(getattr(value, "value", value)):
            continue
        path = _absolute(str(getattr(value, "value", value)), bundle.directory)
        flow = str(definition.get("dataFlow", "NONE")).upper()
        is_dir = definition.get("objectType") == "DIRECTORY" or path.is_dir()
        if flow in ("IN", "INOUT"):
            if is_dir:
                input_dirs.append(path)
            else:
                files.add(path)
        if flow in ("OUT", "INOUT"):
            outputs.append(path if is_dir else path.parent)
    for directory in input_dirs:
        if not directory.is_dir():
            raise TemplateError(f"input directory {directory} does not exist")
        for base, _dirs, names in os.walk(directory):
            files.update(Path(base) / name for name in names)
    for path in files:
        if not path.is_file():
            raise TemplateError(f"input file {path} does not exist")
    if not files and not outputs:
        return None
    everything = [str(p) for p in files] + [str(p) for p in outputs]
    root = Path(os.path.commonpath(everything)) if everything else bundle.directory
    if files and root in files:
        root = root.parent  # a single input file: its directory is the root
    return BundleAssets(root, tuple(sorted(files)), tuple(dict.fromkeys(outputs)))


def _transfers(endpoint_url: str, bucket: str, keys: tuple[str, str]) -> S3Transfers:
    credentials = {"accessKeyId": keys[0], "secretAccessKey": keys[1]}
    client = make_s3_client(endpoint_url=endpoint_url, region="us-west-2", credentials=credentials)
    return S3Transfers(client, bucket)


async def upload_inputs(
    assets: BundleAssets,
    *,
    endpoint_url: str,
    settings: S3Settings,
    farm_id: str,
    queue_id: str,
    keys: tuple[str, str],
    on_progress: Callable[[TransferStatistics], None] | None = None,
) -> tuple[dict[str, Any], int, int]:
    """Hash and upload the inputs (what the bucket has is skipped) with ``keys`` (the
    farm's S3 takes them); the job's ``attachments``, the number of files and bytes.
    ``on_progress`` hears how far it is after each file."""
    xfer = _transfers(endpoint_url, settings.bucket, keys)
    entries: list[ManifestPath] = []
    total = sum(path.stat().st_size for path in assets.inputs)
    for path in assets.inputs:
        digest, size = await hash_file(path)
        entries.append(
            ManifestPath(
                path.relative_to(assets.root).as_posix(),
                digest,
                size,
                path.stat().st_mtime_ns // 1000,
            )
        )
        if not await xfer.exists(settings.data_key(digest)):
            await xfer.upload_file(settings.data_key(digest), path, size=size)
        if on_progress is not None:
            on_progress(
                TransferStatistics(
                    files_total=len(assets.inputs),
                    bytes_total=total,
                    files_done=len(entries),
                    bytes_done=sum(e.size for e in entries),
                )
            )
    entry: dict[str, Any] = {"rootPath": str(assets.root), "rootPathFormat": "posix"}
    if entries:
        text = Manifest.from_paths(entries).encode().encode()
        partial_key = f"{farm_id}/{queue_id}/Inputs/{uuid.uuid4().hex}/{hash_bytes(str(assets.root).encode())}_input"
        await xfer.put_bytes(settings.manifest_key(partial_key), text)
        entry["inputManifestPath"] = partial_key
        entry["inputManifestHash"] = hash_bytes(text)
    if assets.outputs:
        entry["outputRelativeDirectories"] = assets.output_relative
    return (
        {"manifests": [entry], "fileSystem": "COPIED"},
        len(entries),
        sum(e.size for e in entries),
    )


async def download_outputs(
    assets: BundleAssets,
    *,
    endpoint_url: str,
    settings: S3Settings,
    farm_id: str,
    queue_id: str,
    job_id: str,
    keys: tuple[str, str],
    on_progress: ProgressCallback | None = None,
) -> TransferStatistics | None:
    """Bring the job's outputs back to the paths the bundle named (``None``: there were none)."""
    xfer = _transfers(endpoint_url, settings.bucket, keys)
    by_root = await fetch_output_manifests(
        xfer, settings, farm_id=farm_id, queue_id=queue_id, job_id=job_id
    )
    manifest = by_root.get(str(assets.root))
    if manifest is None:
        return None
    return await download_files(xfer, settings, [(manifest, assets.root)], on_progress=on_progress)


def describe(stats: TransferStatistics | None, root: Path, sources: Sequence[Path]) -> str:
    if stats is None:
        return f"no outputs to download to {', '.join(map(str, sources)) or root}"
    files = counted(stats.files_done + stats.files_skipped, "output file")
    return f"{files} downloaded under {root}"


def transfer_progress(what: str, stats: TransferStatistics) -> str:
    """``[farmhand] uploading the bundle's inputs: 3 of 10 files, 12.0 of 40.0 MiB``."""
    done = stats.files_done + stats.files_skipped
    moved = (stats.bytes_done + stats.bytes_skipped) / 2**20
    return (
        f"[farmhand] {what}: {done} of {counted(stats.files_total, 'file')}, "
        f"{moved:.1f} of {stats.bytes_total / 2**20:.1f} MiB"
    )
