"""Ids from a server, and the paths built from them, that cannot leave their root.

A job system hands the worker ids (a job id, a session id, a queue id) that end up
in file names: a job's directory, its log, a session's log. A hostile or broken
server can send ``../../../../tmp/x``. Every id is checked against one safe shape
before it is used, and every path built from one is checked to stay under its
root, so a bad id fails that job with a clear message and never the worker::

    job_dir = path_under(shared_dir, "jobs", safe_id(offer.job_id, "job_id"))
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

#: Letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit; at most
#: 128 characters. Every id Deadline Cloud makes fits, and so do UUIDs.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class UnsafePathError(ValueError):
    """An id that cannot be a file name, or a path that would leave its root. One line."""


def safe_id(value: object, what: str) -> str:
    """``value`` if it is a safe id (``SAFE_ID``), else ``UnsafePathError`` naming ``what``."""
    if isinstance(value, str) and SAFE_ID.fullmatch(value):
        return value
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise UnsafePathError(
        f"{what} {shown} is not a safe id (1-128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit)"
    )


def path_under(root: Path, *parts: str) -> Path:
    """``root`` joined with ``parts``, refused with ``UnsafePathError`` unless it stays
    under ``root``, lexically and after resolving the symbolic links that exist."""
    base = Path(os.path.abspath(root))
    path = Path(os.path.abspath(base.joinpath(*parts)))
    if path == base or not path.is_relative_to(base):
        raise UnsafePathError(f"{'/'.join(parts)!r} leaves {str(root)!r}")
    real_base = Path(os.path.realpath(base))
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(real_base):
        raise UnsafePathError(f"{str(path)!r} leads out of {str(root)!r} (through a link)")
    return path


class UnsafeDirectoryError(OSError):
    """A directory we would write sessions into is not ours alone. One line."""


def private_directory(path: Path) -> Path:
    """``path`` as a directory only we can write to: made (mode 0700) if missing,
    and otherwise checked with ``lstat``: a real directory, not a symbolic link,
    owned by us, not writable by group or others. In a shared directory such as
    ``/tmp`` anyone can create the name first; such a directory is refused."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeDirectoryError(
            f"cannot create the session directory {path}: {exc.strerror or exc}"
        ) from None
    info = os.lstat(path)
    problem = None
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid != os.geteuid():
        problem = f"belongs to uid {info.st_uid}, not to us (uid {os.geteuid()})"
    elif info.st_mode & 0o022:
        problem = f"can be written by others (mode {stat.S_IMODE(info.st_mode):04o})"
    if problem is not None:
        raise UnsafeDirectoryError(
            f"refusing to use {path} for sessions: it {problem}; remove it, "
            "or point TMPDIR (or the session root) somewhere private"
        )
    return path
