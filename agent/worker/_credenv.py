"""Keeping the worker's own AWS credentials away from the jobs it runs.

A job must never get the worker's credentials: with them it could act as the
worker on the farm (take work, report other jobs' results) or use whatever else
the worker's role may do. Two ways they could leak, and what closes each:

- **Inheritance.** Jobs are started with the agent's environment as a base. The
  session runner removes every variable that carries or points at AWS credentials
  (``actors.AGENT_CREDENTIAL_VARIABLES``) from every job's environment; a queue's
  own role credentials are then added by the session, as the official agent does.
- **Reading the agent.** A job of the agent's own user could read the agent's
  ``/proc/<pid>/environ`` (the environment it was started with) or its memory.
  The worker program takes static keys out of ``os.environ`` at start, so no
  process it starts inherits them, signs with them from memory, and marks itself
  not dumpable (``prctl(PR_SET_DUMPABLE, 0)``), which makes its ``/proc/<pid>``
  files readable by root alone. A job running as root can read anything; run jobs
  as another user (the default with a queue's job user) to keep them out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import botocore.session

#: The static keys that botocore reads from the environment.
_STATIC_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3


# Standard library only (no attrs, botocore imported when used): the process-hardening
# half runs in any interpreter, the tests' unprivileged one included.
@dataclasses.dataclass(frozen=True, repr=False)
class StaticCredentials:
    """Keys taken from the environment (never printed)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None

    def __repr__(self) -> str:
        return f"StaticCredentials(access_key_id={self.access_key_id[:4]}...)"


_taken: StaticCredentials | None = None


def take_from_environment(environ: MutableMapping[str, str] | None = None) -> bool:
    """Move static AWS keys out of ``environ`` (``os.environ``) into this process's
    memory, where ``aws_session`` finds them; whether there were any."""
    global _taken
    environ = os.environ if environ is None else environ
    values = {name: environ.pop(name, None) for name in _STATIC_KEYS}
    access, secret, token = (values[name] for name in _STATIC_KEYS)
    if access and secret:
        _taken = StaticCredentials(access, secret, token or None)
        return True
    return False


def aws_session(profile: str | None) -> botocore.session.Session:
    """A botocore session for the worker's own calls: the environment and config files,
    with ``profile``; static keys taken from the environment win, as they would there."""
    import botocore.session

    session = botocore.session.Session(profile=profile)
    if _taken is not None and profile is None:
        session.set_credentials(
            _taken.access_key_id, _taken.secret_access_key, _taken.session_token
        )
    return session


def make_undumpable() -> bool:
    """Make this process's ``/proc/<pid>`` files (environ, mem) readable by root alone;
    whether it could (Linux only). Children do not inherit it across exec."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return False
    return bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
