"""What a session needs to know before its first action (``SessionConfig``), and
where sessions go by default."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import attrs
from openjd.expr import PathMappingRule
from openjd.model import JobParameterValues

from ._jobuser import JobUser
from ._restart import RestartHold


@attrs.frozen
class SessionConfig:
    """What a session needs to know before its first action."""

    session_id: str
    job_parameter_values: JobParameterValues = attrs.field(factory=dict)
    job_name: str | None = None
    path_mapping_rules: Sequence[PathMappingRule] = ()
    #: Extra variables for every action of the session (e.g. ``DEADLINE_*``).
    session_env: Mapping[str, str] = attrs.field(factory=dict)
    #: The environment actions inherit; ``None`` means this process's.
    base_env: Mapping[str, str] | None = None
    #: OpenJD extensions the templates declared.
    extensions: frozenset[str] = frozenset()
    #: Where the working directory is created; ``None`` for the system default.
    root_directory: Path | None = None
    retain_working_directory: bool = False
    #: Secrets shorter than this are not masked (so one letter does not mask the log).
    min_secret_length: int = 1
    #: Regular expressions whose matches are masked in every line and message, as
    #: ``openjd_redacted_env`` values are.
    secret_patterns: tuple[str, ...] = ()
    #: Run the actions as this OS user (through sudo); ``None``: as the agent's user.
    job_user: JobUser | None = None
    #: When the last session running as the job user ends, kill every process that user
    #: still has, daemons started outside the session included (the official agent's
    #: ``cleanup_session_user_processes``). Never for the agent's own user.
    cleanup_user_processes: bool = False
    #: Bytes the session's processes may use together while an action runs (``None``:
    #: no limit). An action over it is killed and fails saying so; a task's step may
    #: set a lower ceiling of its own (``RunTask.memory_limit``).
    memory_limit: int | None = None
    #: Characters of output one action may print (``None``: no cap). Past it, by
    #: ``output_limit_mode``: ``truncate`` keeps the first part and drops the rest
    #: with a note (the action runs on); ``fail`` fails the action.
    output_limit: int | None = None
    output_limit_mode: Literal["truncate", "fail"] = "truncate"
    #: Keep the session through the agent's death (``_sessionkeep.py``); the queue
    #: and job ids go into its state file.
    restart_hold: RestartHold | None = None
    queue_id: str = ""
    job_id: str = ""


def default_session_root() -> Path:
    """Where sessions go when no root is configured: a directory of this user's
    own in the temporary directory (``/tmp/farmhand-sessions-<uid>``), which
    ``private_directory`` makes or checks before use."""
    return Path(tempfile.gettempdir()) / f"farmhand-sessions-{os.geteuid()}"
