"""One action's process: start it, pump its output, cancel it, time it out.

Everything here is event-driven. The process is waited on with a pidfd (trio's
``Process.wait``), its output is read as it arrives in chunks of up to
``CHUNK_BYTES``, and cancellation and timeouts are deadlines in one task; there
is no polling loop anywhere.

The process runs in its own session and process group (``setsid``), with stdin
from ``/dev/null`` and stderr merged into stdout through one pipe we create
ourselves, so the pipe can be enlarged to cut the number of reads (once a read
has filled the pipe's usual 64 KiB: resizing costs a quiet action tens of
microseconds for nothing). Signals go to
the whole group:

- ``TERMINATE`` sends SIGKILL to the group at once.
- ``NOTIFY_THEN_TERMINATE`` writes ``cancel_info.json`` (``{"NotifyEnd": ...}``)
  into the working directory, sends SIGTERM to the group, and SIGKILLs the group
  when the notify period ends. A later cancel with a shorter time limit brings
  that moment forward; a time limit of 0 makes it a plain terminate.

After a cancelled process exits, the group is swept with SIGKILL once more, so no
process of the group outlives a cancelled action. A process that exits while a
child still holds the output pipe gets ``STDOUT_GRACE_SECONDS`` to close it; then
a warning is logged and the action ends with the process's own exit code.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import math
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Protocol

import attrs
import trio

from ._spawn import (
    LaunchedProcess,
    PendingSpawn,
    Reattached,
    SessionLauncher,
    SpawnRequest,
    check_exec_arguments,
)

#: Largest read from the output pipe.
CHUNK_BYTES = 1 << 20
#: How long the output pipe may stay open after the process exits.
STDOUT_GRACE_SECONDS = 5.0
#: Bound on waiting for a SIGKILLed process to be reaped.
REAP_TIMEOUT_SECONDS = 10.0

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PIPE_BYTES = 1 << 20
#: A read this large filled a pipe of the usual size: the action writes a lot.
_FULL_PIPE_BYTES = 1 << 16


class CancelMode(enum.Enum):
    TERMINATE = "TERMINATE"
    NOTIFY_THEN_TERMINATE = "NOTIFY_THEN_TERMINATE"


@attrs.frozen
class CancelMethod:
    mode: CancelMode = CancelMode.TERMINATE
    #: Seconds between SIGTERM and SIGKILL for NOTIFY_THEN_TERMINATE.
    notify_period: float = 0.0


@attrs.frozen
class ProcessResult:
    exit_code: int | None
    #: The process was cancelled (by request or by its timeout) while running.
    canceled: bool
    timed_out: bool
    #: A cancel asked for the action to be reported FAILED (a malformed message).
    mark_failed: bool
    #: Why the process could not be started, if it could not.
    spawn_error: str | None = None
    pid: int | None = None
    #: What the process cost, as its launcher measured it (``None``: started directly).
    usage: Mapping[str, object] | None = None


LogFn = Callable[[str, str], None]


def _utc_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ActionControl:
    """The running action's cancel switch, safe to flip from any Trio task.

    Several cancels merge: the earliest kill deadline wins and "mark failed" is
    sticky. A cancel that arrives before the process has started is kept and
    applied the moment it starts (or the start is skipped altogether).
    """

    def __init__(self) -> None:
        self.requested = False
        self.mark_failed = False
        self.timed_out = False
        self.reason: str | None = None
        #: The earliest requested time limit, as an absolute ``trio.current_time()``.
        self.limit_deadline = math.inf
        self._changed = trio.Event()
        #: Called at the first request (the supervisor starts its canceller then).
        self.on_request: Callable[[], None] | None = None

    def cancel(
        self, *, time_limit: float | None = None, mark_failed: bool = False, reason: str
    ) -> None:
        """Ask for cancellation with the action's method, within ``time_limit`` seconds."""
        first = not self.requested
        if first:
            self.reason = reason
        self.requested = True
        self.mark_failed = self.mark_failed or mark_failed
        if time_limit is not None:
            self.limit_deadline = min(self.limit_deadline, trio.current_time() + time_limit)
        self._changed.set()
        self._changed = trio.Event()
        if first and self.on_request is not None:
            self.on_request()

    async def wait_changed(self) -> None:
        await self._changed.wait()


def _open_pipe() -> tuple[int, int]:
    return os.pipe2(os.O_CLOEXEC)


def _enlarge_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        pass  # a smaller pipe only means more reads


def _killpg(pgid: int, sig: signal.Signals) -> bool:
    """Signal a process group; ``False`` when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Members that changed user are out of reach; the rest were signalled.
        return True
    return True


def spawn_error_exit_code(exc: OSError) -> int:
    """The exit status a shell would give for a command it could not start."""
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
        return 127
    return 126


def _spawn_failed(argv: Sequence[str], exc: OSError) -> ProcessResult:
    return ProcessResult(
        spawn_error_exit_code(exc),
        canceled=False,
        timed_out=False,
        mark_failed=False,
        spawn_error=f"{argv[0]}: {exc.strerror or exc}",
    )


async def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    method: CancelMethod,
    runtime_limit: float | None,
    control: ActionControl,
    on_output: Callable[[bytes], Awaitable[None]],
    log: LogFn,
    launcher: SessionLauncher | None = None,
    also_signal: Callable[[signal.Signals], None] | None = None,
    file_group: int | None = None,
    memory_limit: int | None = None,
    launcher_meta: Mapping[str, object] | None = None,
    ahead: StartedAhead | None = None,
    on_ended: Callable[[ProcessResult], Awaitable[None]] | None = None,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion under ``control``; feed its output to ``on_output``.
    ``launcher_meta`` goes with the spawn request (``SessionLauncher.spawn(meta=)``).
    ``ahead``: its process, started already (``start_ahead``); a cancel that came
    before this kills it unreported, as if it had never started.
    ``on_ended(result)``: called once the process has ended and its output is read,
    before the clean-up (closing the pipe: system calls the next action need not
    wait for). ``meanwhile()``: called once the process runs and its output is
    read, before its exit is waited for (the runtime limit counts from before).

    ``launcher`` starts the process, when given (to contain it and whatever it
    starts); otherwise we start it ourselves.
    ``also_signal(sig)`` reaches processes the process group does not (a job
    user's, behind sudo); it then replaces the group signal for SIGTERM and
    adds to it for SIGKILL.
    ``file_group`` is the group that must be able to read ``cancel_info.json``.
    """
    if control.requested:
        if ahead is not None:
            await ahead.discard()
        return ProcessResult(None, canceled=True, timed_out=False, mark_failed=control.mark_failed)
    if ahead is not None:
        read_fd = ahead.read_fd
        try:
            process: _Process = await ahead.take()
        except OSError as exc:
            os.close(read_fd)
            return _spawn_failed(argv, exc)
        except BaseException:
            os.close(read_fd)
            raise
    else:
        try:
            check_exec_arguments(argv, env, cwd)
            read_fd, write_fd = _open_pipe()
        except OSError as exc:
            return _spawn_failed(argv, exc)
        try:
            process = await _spawn(
                argv, env, cwd, write_fd, read_fd, launcher, memory_limit, launcher_meta
            )
        except OSError as exc:
            os.close(read_fd)
            return _spawn_failed(argv, exc)
    return await _Supervisor(
        process,
        read_fd,
        method,
        runtime_limit,
        control,
        on_output,
        log,
        cwd,
        also_signal,
        file_group,
        on_ended,
        meanwhile,
    ).run()


async def _spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    write_fd: int,
    read_fd: int,
    launcher: SessionLauncher | None,
    memory_limit: int | None,
    launcher_meta: Mapping[str, object] | None,
) -> _Process:
    """Start ``argv`` writing to ``write_fd`` (closed here either way): through the
    launcher when there is one, else ourselves in a session of its own."""
    try:
        if launcher is not None:
            return await launcher.spawn(
                argv,
                env=env,
                cwd=cwd,
                output_fd=write_fd,
                output_read_fd=read_fd,
                memory_limit=memory_limit,
                meta=launcher_meta,
            )
        return await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    finally:
        os.close(write_fd)


@attrs.define(eq=False)
class StartedAhead:
    """An action's process started ahead of its turn (``start_ahead``): its spawn
    request sent, the answer not read yet, and the read end of its output pipe
    (ours to close). ``run_process(ahead=)`` runs it, or it is discarded."""

    spawn: PendingSpawn
    read_fd: int
    #: Run or discarded: no longer the runner's to let go.
    taken: bool = False

    async def take(self) -> LaunchedProcess:
        """Its process, to be run (``read_fd`` goes with it)."""
        self.taken = True
        return await self.spawn.started()

    async def discard(self) -> None:
        """Not to be run after all: its group killed before it was ever reported,
        its exit read (the launcher's next answer is then the next request's)."""
        self.taken = True
        try:
            process = await self.spawn.started()
        except OSError:
            return  # it never started
        finally:
            os.close(self.read_fd)
        _killpg(process.pid, signal.SIGKILL)
        await process.wait()

    def abandon(self) -> None:
        """We are going away without reading its answer: the launcher goes, and it
        with it (see ``PendingSpawn.abandon``)."""
        if not self.taken:
            self.taken = True
            self.spawn.abandon()
            os.close(self.read_fd)


def open_output_pipe() -> tuple[int, int]:
    """An action's output pipe, (read end, write end), made ahead (``start_ahead``)."""
    return _open_pipe()


async def start_ahead(
    launcher: SessionLauncher, request: SpawnRequest, pipe: tuple[int, int] | None = None
) -> StartedAhead | None:
    """Have ``launcher`` start a process now, its answer read later (``StartedAhead``),
    its output to ``pipe`` (``open_output_pipe``; ours until this returns, then the
    read end is the ``StartedAhead``'s); ``None`` if the request cannot be sent (its
    start then fails when the action is run the usual way)."""
    try:
        read_fd, write_fd = pipe if pipe is not None else _open_pipe()
    except OSError:
        return None
    try:
        spawn = await launcher.send_spawn(request, output_fd=write_fd)
    except OSError:
        os.close(read_fd)
        return None
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return StartedAhead(spawn, read_fd)


async def resume_process(
    reattached: Reattached,
    *,
    cwd: Path,
    method: CancelMethod,
    runtime_limit: float | None,
    control: ActionControl,
    on_output: Callable[[bytes], Awaitable[None]],
    log: LogFn,
    also_signal: Callable[[signal.Signals], None] | None = None,
    file_group: int | None = None,
) -> ProcessResult:
    """``run_process`` for an action a dead agent started, taken over from its
    launcher (``SessionLauncher.reattach``): first what it wrote while no agent
    was there (the spill file, removed once read), then its pipe, to its end.
    ``runtime_limit``: what is left of it."""
    process = reattached.process
    assert process is not None
    spill = reattached.spill
    if spill is not None:
        try:
            data = await trio.Path(spill).read_bytes()
        except OSError as exc:
            log("warning", f"the output the action wrote while no agent was there is lost: {exc}")
        else:
            for start in range(0, len(data), CHUNK_BYTES):
                await on_output(data[start : start + CHUNK_BYTES])
        await trio.Path(spill).unlink(missing_ok=True)
    read_fd = reattached.output_fd
    reattached.output_fd = None
    if read_fd is None:
        # No pipe came (its output had ended): an empty one reads as that end.
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.close(write_fd)
    supervisor = _Supervisor(
        process,
        read_fd,
        method,
        runtime_limit,
        control,
        on_output,
        log,
        cwd,
        also_signal,
        file_group,
    )
    return await supervisor.run()


class _Process(Protocol):
    """What the supervisor needs of a process: ``trio.Process`` or a launched one."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


class _Supervisor:
    def __init__(
        self,
        process: _Process,
        read_fd: int,
        method: CancelMethod,
        runtime_limit: float | None,
        control: ActionControl,
        on_output: Callable[[bytes], Awaitable[None]],
        log: LogFn,
        cwd: Path,
        also_signal: Callable[[signal.Signals], None] | None,
        file_group: int | None,
        on_ended: Callable[[ProcessResult], Awaitable[None]] | None = None,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._process = process
        self._on_ended = on_ended
        self._meanwhile = meanwhile
        self._also_signal = also_signal
        self._file_group = file_group
        self._stream = trio.lowlevel.FdStream(read_fd)
        self._method = method
        self._runtime_limit = runtime_limit
        self._control = control
        self._on_output = on_output
        self._log = log
        self._cwd = cwd
        self._canceled = False
        self._exited = False
        self._stop_reading = False
        self._read_scope: trio.CancelScope | None = None
        self._pump_done = trio.Event()

    async def run(self) -> ProcessResult:
        process = self._process
        control = self._control
        limit = self._runtime_limit
        deadline = math.inf if limit is None else trio.current_time() + limit
        result: ProcessResult | None = None
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump)
                # The canceller is a task of its own only once a cancel is asked for:
                # most actions end without one, and a task costs loop steps at its
                # start and end, the latter between the exit and the next spawn.
                if control.requested:
                    self._start_canceller(nursery)
                else:
                    control.on_request = partial(self._start_canceller, nursery)
                if self._meanwhile is not None:
                    await self._meanwhile()
                await self._wait_exit(deadline)
                self._exited = True
                control.on_request = None
                await self._drain_output()
                if not self._canceled:
                    # The usual end, decided (no canceller can start now): ``on_ended``
                    # (the next task's spawn) need not wait for the nursery's exit, a
                    # loop step. Its failure is raised as itself, after the nursery.
                    result = self._result()
                    try:
                        await self._ended(result)
                    except Exception as exc:
                        failure = exc
                nursery.cancel_scope.cancel(reason="the action's process has ended")
            if failure is not None:
                raise failure
            if result is None:
                # Cancelled: sweep the group (members that ignored SIGTERM, or were
                # still starting up, go with the action), then it has ended.
                self._signal(signal.SIGKILL)
                result = self._result()
                await self._ended(result)
        finally:
            control.on_request = None
            if process.returncode is None:
                # We are being cancelled from outside (the agent is going down
                # hard): nothing of this action may outlive us.
                self._signal(signal.SIGKILL)
                with trio.move_on_after(REAP_TIMEOUT_SECONDS, shield=True):
                    await process.wait()
            self._stream.close()
        return result

    def _result(self) -> ProcessResult:
        process, control = self._process, self._control
        return ProcessResult(
            process.returncode,
            canceled=self._canceled,
            timed_out=control.timed_out and self._canceled,
            mark_failed=control.mark_failed and self._canceled,
            pid=process.pid,
            usage=getattr(process, "usage", None),
        )

    async def _ended(self, result: ProcessResult) -> None:
        if self._on_ended is not None:
            await self._on_ended(result)

    def _start_canceller(self, nursery: trio.Nursery) -> None:
        self._control.on_request = None
        if not self._exited:
            nursery.start_soon(self._canceller)

    async def _wait_exit(self, deadline: float) -> None:
        """Wait for the process to exit; past its runtime limit, cancel it (TIMEOUT)."""
        process = self._process
        control = self._control
        if self._runtime_limit is not None:
            with trio.move_on_at(deadline):
                await process.wait()
                return
            if not control.requested:
                control.timed_out = True
                self._log(
                    "info", f"TIMEOUT: the runtime limit of {self._runtime_limit:g} s was reached"
                )
                control.cancel(reason="timeout")
        await process.wait()

    async def _pump(self) -> None:
        stream = self._stream
        enlarged = False
        try:
            while not self._stop_reading:
                with trio.CancelScope() as scope:
                    self._read_scope = scope
                    data = await stream.receive_some(CHUNK_BYTES)
                self._read_scope = None
                if scope.cancelled_caught or not data:
                    break
                if not enlarged and len(data) >= _FULL_PIPE_BYTES:
                    enlarged = True
                    _enlarge_pipe(stream.fileno())
                await self._on_output(data)
        finally:
            self._pump_done.set()

    async def _drain_output(self) -> None:
        """After exit: read what is left; give a child holding the pipe a grace period."""
        if self._pump_done.is_set():
            return  # usually: the pipe ended with the process (no loop step spent)
        with trio.move_on_after(STDOUT_GRACE_SECONDS):
            await self._pump_done.wait()
            return
        self._log(
            "warning",
            f"the process exited but its output stayed open for {STDOUT_GRACE_SECONDS:g} s "
            "(a child process still holds it); ending the action",
        )
        self._stop_reading = True
        if self._read_scope is not None:
            self._read_scope.cancel(reason="output grace period over")
        await self._pump_done.wait()

    async def _canceller(self) -> None:
        """Started at the first cancel request (or the runtime limit, as one)."""
        control = self._control
        if self._exited:
            return  # too late: it ended on its own (a child may still hold the pipe)
        self._canceled = True
        pgid = self._process.pid
        if self._method.mode is CancelMode.TERMINATE:
            self._log("info", f"canceling: killing process group {pgid}")
            self._signal(signal.SIGKILL)
            return
        notify_deadline = trio.current_time() + self._method.notify_period
        notified = False
        while True:
            kill_at = min(notify_deadline, control.limit_deadline)
            remaining = kill_at - trio.current_time()
            if remaining <= 0:
                self._log("info", f"canceling: killing process group {pgid}")
                self._signal(signal.SIGKILL)
                return
            if not self._write_cancel_info(remaining):
                self._log("warning", "terminating at once instead")
                self._signal(signal.SIGKILL)
                return
            if not notified:
                self._log(
                    "info",
                    f"canceling: SIGTERM to process group {pgid}; "
                    f"SIGKILL in {remaining:.0f} s unless it exits",
                )
                self._signal(signal.SIGTERM)
                notified = True
            with trio.move_on_at(kill_at):
                await control.wait_changed()
                continue
            self._log("info", f"notify period over: killing process group {pgid}")
            self._signal(signal.SIGKILL)
            return

    def _signal(self, sig: signal.Signals) -> None:
        # With a helper (a job user's processes, behind sudo), a notify signal goes
        # through it alone: signalling sudo too would make sudo relay a second
        # copy, and a job's handler would run twice. SIGKILL goes both ways.
        if self._also_signal is None or sig == signal.SIGKILL:
            _killpg(self._process.pid, sig)
        if self._also_signal is not None:
            try:
                self._also_signal(sig)
            except Exception as exc:  # never let a signalling helper break the supervisor
                self._log("warning", f"could not signal the job user's processes: {exc!r}")

    def _write_cancel_info(self, remaining: float) -> bool:
        notify_end = datetime.now(UTC) + timedelta(seconds=remaining)
        path = self._cwd / "cancel_info.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            if self._file_group is not None:
                os.fchown(fd, -1, self._file_group)
                os.fchmod(fd, 0o640)
            with os.fdopen(fd, "w") as file:
                json.dump({"NotifyEnd": _utc_z(notify_end)}, file)
        except OSError as exc:
            self._log("warning", f"could not write {path}: {exc}")
            return False
        return True
