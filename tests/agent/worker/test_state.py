"""worker.json and the credentials cache: layout, permissions, atomicity, corruption."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog.testing

from agent.worker._state import (
    CachedCredentials,
    StateError,
    WorkerState,
    credentials_path,
    load_credentials,
    load_worker_state,
    remove_credentials,
    save_credentials,
    save_worker_state,
    state_path,
)

DATA = Path(__file__).resolve().parents[2] / "data"
WORKER = "worker-0123456789abcdef0123456789abcdef"
EXPIRES = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
CREDS = CachedCredentials("ASIAEXAMPLE", "secret-key", "session-token", EXPIRES)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- worker.json ---------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    """A saved state loads back equal, with and without its optional members."""
    for state in (
        WorkerState(WORKER),
        WorkerState(WORKER, "i-0a1b2c3d4e5f67890", host_configuration_succeeded=False),
    ):
        save_worker_state(tmp_path, state)
        assert load_worker_state(tmp_path) == state


def test_missing_file_is_no_worker(tmp_path: Path) -> None:
    """Without worker.json (or even the directory) there is no saved worker."""
    assert load_worker_state(tmp_path) is None
    assert load_worker_state(tmp_path / "absent") is None


def test_file_is_0600_and_new_directory_0700(tmp_path: Path) -> None:
    """worker.json is 0600 and a persistence directory created for it is 0700, whatever the umask."""
    persistence = tmp_path / "var" / "lib" / "deadline"
    old = os.umask(0o277)  # stricter than 0700: only an explicit chmod gives exactly 0700
    try:
        save_worker_state(persistence, WorkerState(WORKER))
    finally:
        os.umask(old)
    assert mode(state_path(persistence)) == 0o600
    assert mode(persistence) == 0o700


def test_an_existing_file_is_rewritten_0600(tmp_path: Path) -> None:
    """A world-readable worker.json left by someone else is replaced by a 0600 one."""
    path = state_path(tmp_path)
    path.write_text("{}")
    path.chmod(0o666)
    save_worker_state(tmp_path, WorkerState(WORKER))
    assert mode(path) == 0o600


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    """The admin's own directory permissions are left alone (only a new one is made 0700)."""
    tmp_path.chmod(0o750)
    save_worker_state(tmp_path, WorkerState(WORKER))
    assert mode(tmp_path) == 0o750


def test_a_world_writable_directory_is_a_warning(tmp_path: Path) -> None:
    """A world-writable persistence directory is named in a warning."""
    tmp_path.chmod(0o777)
    with structlog.testing.capture_logs() as logs:
        save_worker_state(tmp_path, WorkerState(WORKER))
    assert [(log["event"], log["path"]) for log in logs] == [
        ("state.directory_world_writable", str(tmp_path))
    ]


def test_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    """After saves only worker.json is in the directory."""
    for n in range(3):
        save_worker_state(tmp_path, WorkerState(WORKER, f"i-{n}"))
    assert [p.name for p in tmp_path.iterdir()] == ["worker.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the write fails before the rename, the old file is intact and the temp file is gone."""
    save_worker_state(tmp_path, WorkerState(WORKER, "i-old"))

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StateError, match=r"worker\.json: cannot write: No space left on device"):
        save_worker_state(tmp_path, WorkerState(WORKER, "i-new"))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["worker.json"]
    assert load_worker_state(tmp_path) == WorkerState(WORKER, "i-old")


def test_the_official_agents_file_is_reused(tmp_path: Path) -> None:
    """A worker.json written by the official agent loads as that worker."""
    state_path(tmp_path).write_bytes((DATA / "worker-state-official.json").read_bytes())
    state = load_worker_state(tmp_path)
    assert state == WorkerState(WORKER, "i-0a1b2c3d4e5f67890", True)


def test_the_written_file_is_what_the_official_agent_writes(tmp_path: Path) -> None:
    """The bytes match the official agent's ``json.dump`` of its dataclass without None members,
    so a switch back to the official agent keeps the worker too."""
    save_worker_state(tmp_path, WorkerState(WORKER, "i-0a1b2c3d4e5f67890", True))
    assert state_path(tmp_path).read_text() == (
        (DATA / "worker-state-official.json").read_text().strip()
    )
    save_worker_state(tmp_path, WorkerState(WORKER))
    assert json.loads(state_path(tmp_path).read_text()) == {"worker_id": WORKER}


def test_unknown_members_are_ignored_with_a_warning(tmp_path: Path) -> None:
    """Members the official agent might add later are ignored and named, as it does."""
    state_path(tmp_path).write_text(json.dumps({"worker_id": WORKER, "future": 1, "x": 2}))
    with structlog.testing.capture_logs() as logs:
        assert load_worker_state(tmp_path) == WorkerState(WORKER)
    assert [(log["event"], log["members"]) for log in logs] == [
        ("state.unknown_members_ignored", ["future", "x"])
    ]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "Expecting value: line 1 column 1 (char 0)"),
        (b'{"worker_id": "worker-', "Unterminated string starting at: line 1 column 15 (char 14)"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"{}", "no worker_id"),
        (b'{"worker_id": "w-1"}', "worker_id must look like worker-<32 hex digits>, got 'w-1'"),
        (b'{"worker_id": 7}', "worker_id must look like worker-<32 hex digits>, got 7"),
        (b'{"worker_id": "%s", "instance_id": 5}' % WORKER.encode(),
         "instance_id must be a string, got 5"),
        (b'{"worker_id": "%s", "host_configuration_succeeded": "yes"}' % WORKER.encode(),
         "host_configuration_succeeded must be a boolean, got 'yes'"),
        (b"\xff\xfe{", "not UTF-8"),
    ],
)  # fmt: skip
def test_a_corrupt_file_is_set_aside(tmp_path: Path, content: bytes, reason: str) -> None:
    """A corrupt worker.json becomes worker.json.corrupt, a warning says why, and no worker loads."""
    path = state_path(tmp_path)
    path.write_bytes(content)
    with structlog.testing.capture_logs() as logs:
        assert load_worker_state(tmp_path) is None
    assert not path.exists()
    assert (tmp_path / "worker.json.corrupt").read_bytes() == content
    assert logs == [
        {
            "event": "state.corrupt",
            "log_level": "warning",
            "path": str(path),
            "reason": reason,
            "kept_as": str(tmp_path / "worker.json.corrupt"),
            "consequence": "a new worker will be created",
        }
    ]
    save_worker_state(tmp_path, WorkerState(WORKER))
    assert load_worker_state(tmp_path) == WorkerState(WORKER)


def test_an_unreadable_file_is_an_error_not_a_new_worker(tmp_path: Path) -> None:
    """A worker.json that cannot be read (here a directory) raises StateError, not "no worker"."""
    state_path(tmp_path).mkdir()
    with pytest.raises(
        StateError, match=r"worker\.json: cannot read the worker state: Is a directory"
    ):
        load_worker_state(tmp_path)


def test_persistence_path_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    """A persistence "directory" that is a file is a clear StateError."""
    blocker = tmp_path / "deadline"
    blocker.write_text("")
    with pytest.raises(StateError, match="exists and is not a directory"):
        save_worker_state(blocker, WorkerState(WORKER))


def test_worker_ids_are_checked() -> None:
    """A WorkerState cannot hold an id the API would refuse (or one that escapes a path)."""
    with pytest.raises(ValueError, match="worker-<32 hex digits>"):
        WorkerState("worker-../../etc")


# --- the credentials cache --------------------------------------------------------------------------


def test_credentials_round_trip_0600_in_a_0700_directory(tmp_path: Path) -> None:
    """Credentials save to credentials/<worker-id>.json (0600, directory 0700) and load back."""
    persistence = tmp_path / "deadline"
    save_credentials(persistence, WORKER, CREDS)
    path = credentials_path(persistence, WORKER)
    assert path == persistence / "credentials" / f"{WORKER}.json"
    assert (mode(path), mode(path.parent), mode(persistence)) == (0o600, 0o700, 0o700)
    assert load_credentials(persistence, WORKER) == CREDS
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_credentials_file_is_the_official_format(tmp_path: Path) -> None:
    """The cache file is botocore JSONFileCache content in credential_process form."""
    save_credentials(tmp_path, WORKER, CREDS)
    data = json.loads(credentials_path(tmp_path, WORKER).read_text())
    assert data == {
        "Version": 1,
        "AccessKeyId": "ASIAEXAMPLE",
        "SecretAccessKey": "secret-key",
        "SessionToken": "session-token",
        "Expiration": "2031-05-04T03:02:01Z",
    }
    # The official agent parses Expiration with exactly this format.
    assert datetime.strptime(data["Expiration"], "%Y-%m-%dT%H:%M:%SZ") == EXPIRES.replace(
        tzinfo=None
    )


def test_the_official_agents_credentials_are_reused(tmp_path: Path) -> None:
    """A cache file written by the official agent loads."""
    target = tmp_path / "credentials" / f"{WORKER}.json"
    target.parent.mkdir()
    target.write_bytes((DATA / "credentials-official.json").read_bytes())
    creds = load_credentials(tmp_path, WORKER)
    assert creds is not None
    assert creds.access_key_id == "ASIAFARMHANDEXAMPLE1"
    assert creds.expiration == EXPIRES


def test_missing_credentials_are_none(tmp_path: Path) -> None:
    """No cache file: nothing cached."""
    assert load_credentials(tmp_path, WORKER) is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{", "not valid JSON (line 1, column 2)"),
        (b'{"Version": 2}', "Version must be 1, got 2"),
        (b'{"Version": 1, "AccessKeyId": "A", "SecretAccessKey": "S", "SessionToken": ""}',
         "SessionToken must be a non-empty string"),
        (b'{"Version": 1, "AccessKeyId": "A", "SecretAccessKey": "S", "SessionToken": "T", '
         b'"Expiration": "soon"}', "expiration must be an ISO 8601 time, got 'soon'"),
        (b"\xff", "not UTF-8"),
    ],
)  # fmt: skip
def test_corrupt_credentials_are_deleted_without_logging_secrets(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    """A corrupt cache file is deleted with a warning that holds no part of its content."""
    save_credentials(tmp_path, WORKER, CREDS)
    path = credentials_path(tmp_path, WORKER)
    path.write_bytes(content.replace(b'"S"', b'"very-secret"'))
    with structlog.testing.capture_logs() as logs:
        assert load_credentials(tmp_path, WORKER) is None
    assert not path.exists()
    assert logs == [
        {
            "event": "state.credentials_corrupt",
            "log_level": "warning",
            "path": str(path),
            "reason": reason,
        }
    ]
    assert "very-secret" not in repr(logs)


def test_remove_credentials(tmp_path: Path) -> None:
    """Removing the cache deletes the file; removing it again is fine."""
    save_credentials(tmp_path, WORKER, CREDS)
    remove_credentials(tmp_path, WORKER)
    assert load_credentials(tmp_path, WORKER) is None
    remove_credentials(tmp_path, WORKER)


@pytest.mark.parametrize(
    "expiration",
    [
        EXPIRES,
        EXPIRES.astimezone(timezone(timedelta(hours=-7))),
        "2031-05-04T03:02:01Z",
        "2031-05-04T03:02:01+00:00",
        EXPIRES.timestamp(),
    ],
)
def test_credentials_from_the_api_in_any_time_form(expiration: object) -> None:
    """AssumeFleetRoleForWorker's expiration is taken as a datetime, ISO text or epoch seconds."""
    creds = CachedCredentials.from_api(
        {
            "accessKeyId": "ASIAEXAMPLE",
            "secretAccessKey": "secret-key",
            "sessionToken": "session-token",
            "expiration": expiration,
        }
    )
    assert creds == CREDS
    assert creds.expiration.tzinfo is UTC


def test_credentials_repr_hides_the_secrets() -> None:
    """The secret key and session token never appear in a repr (and so in a log)."""
    assert "secret-key" not in repr(CREDS)
    assert "session-token" not in repr(CREDS)
    assert "ASIAEXAMPLE" in repr(CREDS)


def test_a_worker_id_cannot_escape_the_credentials_directory(tmp_path: Path) -> None:
    """A worker id that is not worker-<32 hex> is refused before it becomes a path."""
    with pytest.raises(ValueError, match="worker-<32 hex digits>"):
        save_credentials(tmp_path, "../../etc/passwd", CREDS)
