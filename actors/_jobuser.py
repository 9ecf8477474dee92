"""Running actions as another OS user (a job user) through ``sudo``.

As the official agent does, an action for a job user runs as
``sudo -n -u USER -i -- SCRIPT``, where SCRIPT is a generated ``/bin/sh``
script that exports the session's variables (``OPENJD_SESSION_WORKING_DIR``,
``DEADLINE_*``, the environments' ``variables`` and ``openjd_env`` changes) on
top of the job user's own login environment (``sudo -i``; the agent's
environment is not passed on), changes to the working directory and
``exec``s the command. Every value is quoted with ``shlex.quote``; a variable whose name
is not a shell identifier cannot be expressed and is skipped with a warning.

The session's working directory is group-owned by the job user's group and
made 0770; files farmhand writes there for the job are group-readable (and
group-writable and executable where they must be).

``sudo`` may run the command on its own pseudo-terminal, in a session of its
own, so signals cannot rely on process groups: the process supervisor also
signals every process carrying the action's tag. When the agent cannot
signal the job user's processes itself (no root, no CAP_KILL), it signals
them through ``sudo -u USER kill``.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class JobUserError(Exception):
    """The job user cannot be used (unknown user or group, no sudo)."""


@attrs.frozen
class JobUser:
    """An OS user to run actions as; the group defaults to the user's primary group."""

    user: str
    group: str | None = None

    @classmethod
    def parse(cls, text: str) -> JobUser:
        """``user`` or ``user:group`` (the official agent's ``posix_job_user`` form)."""
        user, _, group = text.partition(":")
        if not user:
            raise JobUserError(f"bad job user {text!r}: expected USER or USER:GROUP")
        return cls(user, group or None)

    def resolve(self) -> ResolvedJobUser:
        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            raise JobUserError(f"job user {self.user!r} does not exist") from None
        if self.group is None:
            gid = entry.pw_gid
            group = grp.getgrgid(gid).gr_name
        else:
            try:
                gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise JobUserError(f"job group {self.group!r} does not exist") from None
            group = self.group
        return ResolvedJobUser(self.user, entry.pw_uid, group, gid)


@attrs.frozen
class ResolvedJobUser:
    user: str
    uid: int
    group: str
    gid: int

    @property
    def is_agent_user(self) -> bool:
        return self.uid == os.geteuid()


def sudo_path() -> str:
    path = shutil.which("sudo")
    if path is None:
        raise JobUserError("running actions as a job user needs sudo, which is not installed")
    return path


def launcher_script(
    argv: Sequence[str], env: Mapping[str, str | None], cwd: Path
) -> tuple[str, list[str]]:
    """The script text, and the names that could not be exported. A ``None``
    value unsets the variable."""
    lines = ["#!/bin/sh"]
    skipped = []
    for name, value in env.items():
        if _NAME_RE.fullmatch(name) is None:
            skipped.append(name)
        elif value is None:
            lines.append(f"unset {name}")
        else:
            lines.append(f"export {name}={shlex.quote(value)}")
    lines.append(f"cd {shlex.quote(str(cwd))} || exit 1")
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n", skipped


def sudo_argv(user: ResolvedJobUser, script: Path) -> list[str]:
    return [sudo_path(), "-n", "-u", user.user, "-i", "--", str(script)]


def share_with_group(path: Path, user: ResolvedJobUser, mode: int) -> None:
    """Give ``path`` to the job user's group with ``mode``."""
    os.chown(path, -1, user.gid)
    os.chmod(path, mode)


def signal_as(user: ResolvedJobUser, sig: signal.Signals, pids: Iterable[int]) -> None:
    """Signal processes of the job user, through sudo when we may not do it ourselves."""
    denied = []
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            denied.append(str(pid))
    if denied:
        subprocess.run(
            [
                sudo_path(),
                "-n",
                "-u",
                user.user,
                "kill",
                "-s",
                sig.name.removeprefix("SIG"),
                *denied,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=30,
        )


def remove_as(user: ResolvedJobUser, directory: Path) -> None:
    """Empty ``directory`` as the job user (for files we may not delete), then remove it."""
    entries = [str(p) for p in directory.iterdir()] if directory.exists() else []
    if entries:
        subprocess.run(
            [sudo_path(), "-n", "-u", user.user, "rm", "-rf", "--", *entries],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=300,
        )
    shutil.rmtree(directory, ignore_errors=True)
