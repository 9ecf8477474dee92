"""Sessions that outlive their agent: what is kept on disk, and finding it again.

A session whose launcher holds (``SessionLauncher.hold``) keeps, in the
directory ``RestartHold.directory`` (the worker's persistence directory's
``sessions/``), three files named after it:

- ``<session>.sock``: the launcher's unix socket, there only while it waits for
  an agent (it removes it when one connects or the grace passes);
- ``<session>.output``: what the running action wrote while no agent was there;
- ``<session>.json``: the agent's side (``SessionState``), written atomically
  (a temporary file renamed over it) whenever it changes: the session's
  queue, job and working directory, the environments entered with the
  variables their onEnter set, the running action (its id, kind, pid, start,
  runtime deadline and cancel method), and the last few actions' final reports,
  so that one the farm never heard of (it still assigns the action) is sent again.

A new agent with the same worker id calls ``find_held_sessions`` before it
tells the farm it started: every state file whose launcher answers is a
session to take over (``Held``); the rest are stale and removed.
"""

from __future__ import annotations

import json
import os
import tempfile
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
RECENT_ENDED = 16


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


@attrs.frozen
class SessionState:
    session_id: str
    queue_id: str
    job_id: str
    working_directory: Path
    #: Environments entered, outermost first, with the variables their onEnter set.
    entered: tuple[tuple[str, Mapping[str, str | None]], ...] = ()
    actions_started: int = 0
    running: RunningRecord | None = None
    #: The last few actions' final reports (``RECENT_ENDED``).
    ended: tuple[EndedRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        def record(value: Any) -> Any:
            if value is None:
                return None
            data = attrs.asdict(value, recurse=False)
            for key, item in data.items():
                if isinstance(item, datetime):
                    data[key] = item.isoformat()
                elif isinstance(item, ActionKind | ActionState):
                    data[key] = item.value
            return data

        return {
            "version": STATE_VERSION,
            "session_id": self.session_id,
            "queue_id": self.queue_id,
            "job_id": self.job_id,
            "working_directory": str(self.working_directory),
            "entered": [[identifier, dict(changes)] for identifier, changes in self.entered],
            "actions_started": self.actions_started,
            "running": record(self.running),
            "ended": [record(ended) for ended in self.ended],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionState:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for a bad file."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"state version {data.get('version')!r} is not {STATE_VERSION}")
        running = data.get("running")
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
            running=None
            if running is None
            else RunningRecord(
                action_id=running["action_id"],
                kind=ActionKind(running["kind"]),
                pid=int(running["pid"]),
                started_at=datetime.fromisoformat(running["started_at"]),
                deadline=None if running["deadline"] is None else float(running["deadline"]),
                cancel_mode=str(running["cancel_mode"]),
                notify_period=float(running["notify_period"]),
                environment_id=running.get("environment_id"),
                tag=running.get("tag"),
            ),
            ended=tuple(
                EndedRecord(
                    action_id=str(ended["action_id"]),
                    kind=ActionKind(ended["kind"]),
                    state=ActionState(ended["state"]),
                    exit_code=ended["exit_code"],
                    started_at=_datetime(ended.get("started_at")),
                    ended_at=_datetime(ended.get("ended_at")),
                    message=ended.get("message"),
                )
                for ended in data.get("ended") or ()
            ),
        )


def _datetime(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def write_state(path: Path, state: SessionState) -> None:
    """Write ``state`` to ``path`` atomically (0600)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".json.new")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(state.to_json(), file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@attrs.define(eq=False)
class Held:
    """A session an earlier agent left to its launcher, now ours (see the module
    docstring). Whoever takes it ends it: ``SessionRunner`` (through
    ``WorkSession``), or ``discard`` when the farm no longer assigns it."""

    state: SessionState
    reattached: Reattached

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
            if name.startswith(".") and name.endswith(".json.new"):
                (directory / name).unlink(missing_ok=True)  # a write cut short
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
        log.info(
            "restart.session_found",
            session_id=session_id,
            launcher=reattached.launcher.pid,
            running=state.running.action_id if state.running else None,
        )
        found[session_id] = Held(state, reattached)
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
