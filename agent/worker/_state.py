"""The worker's state on disk, in the official agent's layout, so an install keeps its worker.

``<persistence>/worker.json`` holds the worker's identity between runs:
``{"worker_id": "worker-<32 hex>", "instance_id": "i-...", "host_configuration_succeeded": true}``;
members that are ``None`` are left out, as the official agent writes it.

- A missing file means no worker yet: the bootstrap calls CreateWorker.
- A corrupt file (not JSON, not an object, no valid ``worker_id``, a member of the
  wrong type) is renamed to ``worker.json.corrupt`` (replacing an older one), a
  warning names the problem, and it loads as no worker. The bootstrap then creates
  a new worker; the old one goes offline on the farm.
- Unknown members are ignored with a warning, as the official agent does.
- A file that cannot be read (permissions, I/O) raises ``StateError``: creating a
  second worker would not fix that.

``<persistence>/credentials/<worker-id>.json`` caches the fleet-role credentials
(``AssumeFleetRoleForWorker``) in botocore's ``JSONFileCache`` layout and the
``credential_process`` format: ``Version`` 1, ``AccessKeyId``, ``SecretAccessKey``,
``SessionToken`` and ``Expiration`` as ``YYYY-MM-DDTHH:MM:SSZ``. A corrupt cache file
is deleted with a warning and loads as nothing, as in the official agent; the
credentials are then fetched again.

Every file is written atomically (a temporary file in the same directory, fsync,
rename, fsync of the directory) with mode 0600; a missing directory is created
0700. The functions block on small local writes; call them from Trio with
``trio.to_thread.run_sync`` where a stall matters.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import structlog

from .._errors import FarmhandError

__all__ = [
    "CachedCredentials",
    "StateError",
    "WorkerState",
    "credentials_path",
    "load_credentials",
    "load_worker_state",
    "remove_credentials",
    "save_credentials",
    "save_worker_state",
    "state_path",
]

log = structlog.get_logger("farmhand.state")

STATE_FILE = "worker.json"
CREDENTIALS_DIR = "credentials"
#: The official agent's (and the credential_process) ``Expiration`` format.
EXPIRATION_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_WORKER_ID_RE = re.compile(r"worker-[0-9a-f]{32}")


class StateError(FarmhandError):
    """The worker's state file or credentials cache cannot be read or written."""


def state_path(persistence_dir: Path) -> Path:
    return persistence_dir / STATE_FILE


def credentials_path(persistence_dir: Path, worker_id: str) -> Path:
    _check_worker_id(worker_id)
    return persistence_dir / CREDENTIALS_DIR / f"{worker_id}.json"


def _check_worker_id(worker_id: object) -> str:
    if not isinstance(worker_id, str) or not _WORKER_ID_RE.fullmatch(worker_id):
        raise ValueError(f"worker_id must look like worker-<32 hex digits>, got {worker_id!r}")
    return worker_id


# --- worker.json ----------------------------------------------------------------------------


@attrs.frozen
class WorkerState:
    """The worker's identity, kept between runs."""

    worker_id: str = attrs.field(validator=lambda _self, _attr, value: _check_worker_id(value))
    #: The EC2 instance the worker was created on; another instance id means a cloned image.
    instance_id: str | None = None
    #: Set once the fleet's host configuration script has succeeded on this host.
    host_configuration_succeeded: bool | None = None

    @classmethod
    def from_json(cls, data: object) -> WorkerState:
        """From the decoded file; raises ``ValueError`` saying what is wrong. Unknown members
        are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if "worker_id" not in data:
            raise ValueError("no worker_id")
        instance_id = data.get("instance_id")
        if instance_id is not None and not isinstance(instance_id, str):
            raise ValueError(f"instance_id must be a string, got {instance_id!r}")
        succeeded = data.get("host_configuration_succeeded")
        if succeeded is not None and not isinstance(succeeded, bool):
            raise ValueError(f"host_configuration_succeeded must be a boolean, got {succeeded!r}")
        return cls(_check_worker_id(data["worker_id"]), instance_id, succeeded)

    def to_json(self) -> dict[str, str | bool]:
        data: dict[str, str | bool] = {"worker_id": self.worker_id}
        if self.instance_id is not None:
            data["instance_id"] = self.instance_id
        if self.host_configuration_succeeded is not None:
            data["host_configuration_succeeded"] = self.host_configuration_succeeded
        return data


_KNOWN_STATE_MEMBERS = frozenset(attrs.fields_dict(WorkerState))


def load_worker_state(persistence_dir: Path) -> WorkerState | None:
    """The saved worker, or ``None`` when there is none or the file was corrupt (see above)."""
    path = state_path(persistence_dir)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        _set_aside_corrupt(path, "not UTF-8")
        return None
    except OSError as exc:
        raise StateError(f"{path}: cannot read the worker state: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
        state = WorkerState.from_json(data)
    except ValueError as exc:
        _set_aside_corrupt(path, str(exc))
        return None
    unknown = sorted(set(data) - _KNOWN_STATE_MEMBERS)
    if unknown:
        log.warning("state.unknown_members_ignored", path=str(path), members=unknown)
    return state


def _set_aside_corrupt(path: Path, reason: str) -> None:
    corrupt = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, corrupt)
    except OSError as exc:
        raise StateError(
            f"{path}: the worker state is corrupt ({reason}) and cannot be moved aside: "
            f"{exc.strerror or exc}"
        ) from exc
    log.warning(
        "state.corrupt",
        path=str(path),
        reason=reason,
        kept_as=str(corrupt),
        consequence="a new worker will be created",
    )


def save_worker_state(persistence_dir: Path, state: WorkerState) -> None:
    """Write ``worker.json`` atomically, mode 0600 (the directory is created 0700)."""
    _write_private(state_path(persistence_dir), json.dumps(state.to_json()))


# --- credentials/<worker-id>.json -----------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_expiration(value: object) -> datetime:
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            return _utc(datetime.fromisoformat(value))
        except ValueError:
            pass
    raise ValueError(f"expiration must be an ISO 8601 time, got {value!r}")


def _required_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


@attrs.frozen
class CachedCredentials:
    """Temporary AWS credentials for the worker (the fleet role)."""

    access_key_id: str
    secret_access_key: str = attrs.field(repr=False)
    session_token: str = attrs.field(repr=False)
    #: When they expire, in UTC.
    expiration: datetime = attrs.field(converter=_utc)

    @classmethod
    def from_api(cls, credentials: Mapping[str, Any]) -> CachedCredentials:
        """From the ``credentials`` of AssumeFleetRoleForWorker (``accessKeyId``, ...,
        ``expiration`` as a datetime, an ISO 8601 string or epoch seconds)."""
        return cls(
            _required_str(credentials, "accessKeyId"),
            _required_str(credentials, "secretAccessKey"),
            _required_str(credentials, "sessionToken"),
            _parse_expiration(credentials.get("expiration")),
        )

    @classmethod
    def from_cache(cls, data: object) -> CachedCredentials:
        """From a decoded cache file; raises ``ValueError`` saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("Version") != 1:
            raise ValueError(f"Version must be 1, got {data.get('Version')!r}")
        return cls(
            _required_str(data, "AccessKeyId"),
            _required_str(data, "SecretAccessKey"),
            _required_str(data, "SessionToken"),
            _parse_expiration(_required_str(data, "Expiration")),
        )

    def to_cache(self) -> dict[str, str | int]:
        return {
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "SessionToken": self.session_token,
            "Expiration": self.expiration.strftime(EXPIRATION_FORMAT),
        }


def load_credentials(persistence_dir: Path, worker_id: str) -> CachedCredentials | None:
    """The cached credentials (perhaps expired), or ``None`` when there are none or the file
    was corrupt (it is then deleted)."""
    path = credentials_path(persistence_dir, worker_id)
    try:
        text = path.read_bytes().decode("utf-8")
        return CachedCredentials.from_cache(json.loads(text))
    except FileNotFoundError:
        return None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        # Never log the content: it may hold a secret.
        log.warning("state.credentials_corrupt", path=str(path), reason=_safe_reason(exc))
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    except OSError as exc:
        raise StateError(f"{path}: cannot read the credentials: {exc.strerror or exc}") from exc


def _safe_reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON (line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    return str(exc)


def save_credentials(persistence_dir: Path, worker_id: str, credentials: CachedCredentials) -> None:
    """Write the credentials cache atomically, mode 0600 (directories created 0700)."""
    path = credentials_path(persistence_dir, worker_id)
    _ensure_private_dir(persistence_dir)
    _write_private(path, json.dumps(credentials.to_cache()))


def remove_credentials(persistence_dir: Path, worker_id: str) -> None:
    """Forget the cached credentials (the worker was deleted, say); fine if there are none."""
    with contextlib.suppress(FileNotFoundError):
        credentials_path(persistence_dir, worker_id).unlink()


# --- private files ----------------------------------------------------------------------------


def _ensure_private_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not directory.is_dir():
            raise StateError(f"{directory}: exists and is not a directory") from None
        if directory.stat().st_mode & stat.S_IWOTH:
            log.warning(
                "state.directory_world_writable",
                path=str(directory),
                note="anyone on this host can replace the worker's identity and credentials",
            )
        return
    except OSError as exc:
        raise StateError(f"{directory}: cannot create: {exc.strerror or exc}") from exc
    # mkdir's mode is filtered by the umask; make sure it is exactly 0700.
    directory.chmod(0o700)


def _write_private(path: Path, text: str) -> None:
    _ensure_private_dir(path.parent)
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StateError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise StateError(f"{path}: cannot write: {exc.strerror or exc}") from exc
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; some file systems refuse to open a directory, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
