"""The default session root is a private directory of our own, made safely; one
that someone else prepared (a symlink, another owner, writable by others) is
refused with a clear message (issue 19)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from actors import UnsafeDirectoryError, default_session_root, private_directory


@pytest.fixture
def tmpdir_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_the_default_root_is_per_user_and_made_private(tmpdir_here: Path) -> None:
    root = default_session_root()
    assert root == tmpdir_here / f"farmhand-sessions-{os.geteuid()}"
    assert private_directory(root) == root
    info = os.lstat(root)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert private_directory(root) == root  # found again: still fine
    root.chmod(0o711)  # traversable for a job user, writable only by us: fine
    assert private_directory(root) == root


def test_a_symlink_to_a_world_writable_directory_is_refused(tmpdir_here: Path) -> None:
    elsewhere = tmpdir_here / "attacker"
    elsewhere.mkdir()
    elsewhere.chmod(0o1777)
    default_session_root().symlink_to(elsewhere)
    with pytest.raises(UnsafeDirectoryError, match="is a symbolic link"):
        private_directory(default_session_root())


def test_a_directory_others_can_write_is_refused(tmpdir_here: Path) -> None:
    root = default_session_root()
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(UnsafeDirectoryError, match="can be written by others"):
        private_directory(root)
    root.chmod(0o770)
    with pytest.raises(UnsafeDirectoryError, match=r"mode 0770"):
        private_directory(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away takes root")
def test_a_directory_of_another_user_is_refused(tmpdir_here: Path) -> None:
    root = default_session_root()
    root.mkdir(mode=0o700)
    os.chown(root, 12345, 12345)
    with pytest.raises(UnsafeDirectoryError, match="belongs to uid 12345"):
        private_directory(root)


def test_a_file_in_its_place_is_refused(tmpdir_here: Path) -> None:
    default_session_root().write_text("")
    with pytest.raises(UnsafeDirectoryError, match="is not a directory"):
        private_directory(default_session_root())
