"""Sessions that outlive their agent: what is kept on disk, and finding it again.

A session whose launcher holds (``SessionLauncher.hold``) keeps, in the
directory ``RestartHold.directory`` (the worker's persistence directory's
``sessions/``), files named after it:

- ``<session>.sock``: the launcher's unix socket (while it holds);
- ``<session>.output``: what the running action wrote while no agent was there;
- ``<session>.shipped``: how much of the session's log file has reached
  CloudWatch (``LogStream``'s shipped marker), so a new agent ships the rest;
- ``<session>.json``: the agent's side (``SessionState``), written atomically
  (a temporary file renamed over it) when the session is held, when the
  environments entered change and when an onEnter sets a variable: the
  session's queue, job and working directory, the environments entered with
  the variables they set, how many actions it started.

What changes with every action is not written to disk at all: each spawn
request carries it to the launcher (``meta``), which keeps it with the
action's pid and exit until the next spawn and hands it to the agent that
takes over: the action's id, kind, start, runtime deadline, cancel method,
environment and tag (``RunningRecord``), and the last few final reports the
agent had made (``EndedRecord``), so that one the farm never heard of (it
still assigns the action) is sent again.

A new agent with the same worker id calls ``find_held_sessions`` before it
tells the farm it started: every state file whose launcher answers is a
session to take over (``Held``); the rest are stale and removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from ._messages import ActionKind, ActionState, EnterEnvironment, Runnable
from ._paths import private_directory
from ._spawn import Reattached, SessionLauncher

log = structlog.get_logger("farmhand.restart")

#: The state file's format; another is ignored (and its session not taken over).
STATE_VERSION = 1
#: How long a launcher may take to hand its session over (it does once it has
#: seen its agent go: at once, for a dead one).
REATTACH_SECONDS = 10.0
#: Final reports kept in the state file: a report waits for the next sync (tens of
#: milliseconds) while the next actions start.
RECENT_ENDED = 8


@attrs.frozen
class RestartHold:
    """Keep a session through the agent's death: where, and for how long."""

    directory: Path
    grace: float

    def socket_path(self, session_id: str) -> Path:
        return self.directory / f"{session_id}.sock"

    def spill_path(self, session_id: str) -> Path:
        return self.directory / f"{session_id}.output"

    def state_path(self, session_id: str) -> Path:
        return self.directory / f"{session_id}.json"

    def shipped_path(self, session_id: str) -> Path:
        """How much of the session's log file is shipped (``LogStream``)."""
        return self.directory / f"{session_id}.shipped"


@attrs.frozen
class RunningRecord:
    """The action that runs, as the state file has it."""

    action_id: str | None
    kind: ActionKind
    pid: int
    started_at: datetime
    #: When its runtime limit ends, as a wall-clock timestamp (``None``: no limit).
    deadline: float | None
    cancel_mode: str
    notify_period: float
    #: The environment an onEnter is entering (its ``openjd_env`` lines apply to it).
    environment_id: str | None = None
    #: Its processes' ``FARMHAND_SESSION_TAG`` (a job user's are signalled by it).
    tag: str | None = None


@attrs.frozen
class EndedRecord:
    """The last action's final report (see the module docstring)."""

    action_id: str
    kind: ActionKind
    state: ActionState
    exit_code: int | None
    started_at: datetime | None
    ended_at: datetime | None
    message: str | None


def record_to_json(value: RunningRecord | EndedRecord) -> dict[str, Any]:
    data = attrs.asdict(value, recurse=False)
    for key, item in data.items():
        if isinstance(item, datetime):
            data[key] = item.isoformat()
        elif isinstance(item, ActionKind | ActionState):
            data[key] = item.value
    return data


def running_from_json(data: Mapping[str, Any], pid: int) -> RunningRecord:
    return RunningRecord(
        action_id=data["action_id"],
        kind=ActionKind(data["kind"]),
        pid=pid,
        started_at=datetime.fromisoformat(data["started_at"]),
        deadline=None if data["deadline"] is None else float(data["deadline"]),
        cancel_mode=str(data["cancel_mode"]),
        notify_period=float(data["notify_period"]),
        environment_id=data.get("environment_id"),
        tag=data.get("tag"),
    )


def ended_from_json(data: Mapping[str, Any]) -> EndedRecord:
    return EndedRecord(
        action_id=str(data["action_id"]),
        kind=ActionKind(data["kind"]),
        state=ActionState(data["state"]),
        exit_code=data["exit_code"],
        started_at=_datetime(data.get("started_at")),
        ended_at=_datetime(data.get("ended_at")),
        message=data.get("message"),
    )


@attrs.frozen
class SessionState:
    """The state file's content (see the module docstring)."""

    session_id: str
    queue_id: str
    job_id: str
    working_directory: Path
    #: Environments entered, outermost first, with the variables their onEnter set.
    entered: tuple[tuple[str, Mapping[str, str | None]], ...] = ()
    actions_started: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "session_id": self.session_id,
            "queue_id": self.queue_id,
            "job_id": self.job_id,
            "working_directory": str(self.working_directory),
            "entered": [[identifier, dict(changes)] for identifier, changes in self.entered],
            "actions_started": self.actions_started,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionState:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for a bad file."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"state version {data.get('version')!r} is not {STATE_VERSION}")
        return cls(
            session_id=str(data["session_id"]),
            queue_id=str(data["queue_id"]),
            job_id=str(data["job_id"]),
            working_directory=Path(data["working_directory"]),
            entered=tuple(
                (str(identifier), {str(k): v for k, v in dict(changes).items()})
                for identifier, changes in data.get("entered") or ()
            ),
            actions_started=int(data.get("actions_started") or 0),
        )


def _datetime(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def write_state(path: Path, state: SessionState) -> None:
    """Write ``state`` to ``path`` atomically (0600): a temporary file beside it (one
    writer per session, so one name), renamed over it."""
    temporary = path.with_name(f".{path.name}.new")
    data = json.dumps(state.to_json()).encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


@attrs.define(eq=False)
class Held:
    """A session an earlier agent left to its launcher, now ours (see the module
    docstring). Whoever takes it ends it: ``SessionRunner`` (through
    ``WorkSession``), or ``discard`` when the farm no longer assigns it."""

    state: SessionState
    reattached: Reattached

    @property
    def running(self) -> RunningRecord | None:
        """The last action the launcher started (running, or ended since), as the
        agent described it when it asked for it; ``None`` if there was none."""
        meta = self.reattached.meta
        process = self.reattached.process
        described = meta.get("running") if meta is not None else None
        if process is None or not isinstance(described, dict):
            return None
        try:
            return running_from_json(described, process.pid)
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def ended(self) -> tuple[EndedRecord, ...]:
        """The final reports the agent had made before it asked for that action."""
        meta = self.reattached.meta
        try:
            return tuple(ended_from_json(item) for item in (meta or {}).get("ended") or ())
        except (KeyError, TypeError, ValueError):
            return ()

    async def discard(self, hold: RestartHold) -> None:
        """Kill what the session runs, remove its files and its working directory."""
        reattached = self.reattached
        if reattached.output_fd is not None:
            os.close(reattached.output_fd)
            reattached.output_fd = None
        await reattached.launcher.sweep_and_close()
        remove_files(hold, self.state.session_id)
        await trio.to_thread.run_sync(
            _remove_tree, self.state.working_directory, abandon_on_cancel=False
        )


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def remove_files(hold: RestartHold, session_id: str) -> None:
    for path in (
        hold.state_path(session_id),
        hold.spill_path(session_id),
        hold.socket_path(session_id),
        hold.shipped_path(session_id),
    ):
        try:
            path.unlink()
        except OSError:
            pass


async def find_held_sessions(hold: RestartHold) -> dict[str, Held]:
    """The sessions whose launchers wait in ``hold.directory`` (see the module
    docstring), by session id; stale files there are removed."""
    directory = hold.directory
    found: dict[str, Held] = {}
    if not await trio.Path(directory).is_dir():
        return found
    await trio.to_thread.run_sync(private_directory, directory)  # ours, and private
    names = sorted(await trio.to_thread.run_sync(os.listdir, directory))
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            stem = name.rsplit(".", 1)[0]
            if name.startswith(".") or f"{stem}.json" not in names:
                # A write cut short, or what is left of a session that is gone.
                (directory / name).unlink(missing_ok=True)
            continue
        session_id = name.removesuffix(".json")
        try:
            text = await trio.Path(directory / name).read_text(encoding="utf-8")
            state = SessionState.from_json(json.loads(text))
            if state.session_id != session_id:
                raise ValueError("the file's session id is not its name's")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("restart.bad_state", path=str(directory / name), error=str(exc))
            remove_files(hold, session_id)
            continue
        with trio.move_on_after(REATTACH_SECONDS) as waited:
            try:
                reattached = await SessionLauncher.reattach(hold.socket_path(session_id))
            except OSError as exc:
                # Its launcher is gone (the grace passed, or it died with the agent).
                log.info("restart.session_gone", session_id=session_id, error=str(exc))
                remove_files(hold, session_id)
                continue
        if waited.cancelled_caught:
            # Its launcher does not let go: its agent is alive (another process with
            # this persistence directory). Not ours; left as it is.
            log.warning("restart.session_busy", session_id=session_id)
            continue
        held = found[session_id] = Held(state, reattached)
        running = held.running
        log.info(
            "restart.session_found",
            session_id=session_id,
            launcher=reattached.launcher.pid,
            running=running.action_id if running is not None else None,
        )
    return found


@attrs.frozen
class SessionResume:
    """What a ``SessionRunner`` needs to take over a held session (``WorkSession``
    resolves it from the farm's assignment)."""

    held: Held
    #: The entered environments, resolved again, with the changes they made.
    environments: tuple[tuple[EnterEnvironment, Mapping[str, str | None]], ...] = ()
    #: The running action, resolved again from the assignment (``None``: it could not
    #: be, or nothing was running): its name, parameters and hook.
    running: Runnable | None = None
    #: Whether the farm still assigns the running action (else it goes, unreported).
    assigned: bool = True
    #: Final reports of actions the farm still assigns: it never had them.
    unreported: tuple[EndedRecord, ...] = ()
