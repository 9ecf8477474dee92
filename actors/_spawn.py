"""The agent's side of a session's launcher (``_launcher.py``).

A ``SessionLauncher`` is one small process per session that starts the
session's actions for us and stays the ancestor of everything they start (it
is a child subreaper), so that ``sweep()`` can kill whatever the session left,
daemons included, and closing it, or the agent dying, kills the rest.

``spawn()`` returns a ``LaunchedProcess``, which looks like the part of
``trio.Process`` the action supervisor uses: ``pid``, ``returncode`` and
``wait()``. Its pid leads its own session and process group, as an action
started directly would.

One exchange at a time: a session runs one action at a time, and the lock
makes ``sweep()`` wait for a running action's process to end. ``send_spawn()``
is a spawn's request alone, its answer read later (``PendingSpawn``): the
session starts its next task's process so while it reports the last one.

Restarts: ``hold()`` asks the launcher to keep the session's processes for a
grace period should the agent die (not when it closes the launcher on
purpose: ``release()`` first), waiting for an agent on a unix socket; while it
holds, each action's output pipe is shared with it, so the output outlives the
agent. ``SessionLauncher.reattach(socket)`` is the new agent's side: it takes
the session over, with its running action (or its exit), the spill file of
what the action wrote meanwhile, and the output pipe (``Reattached``).
"""

from __future__ import annotations

import array
import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from . import _launcher, _memcg, _platform

log = structlog.get_logger("farmhand.spawn")

#: Bound on the launcher's exit once told to go (it sweeps first).
EXIT_TIMEOUT_SECONDS = 30.0
#: Bound on waiting for a killed action whose launcher is gone.
REAP_TIMEOUT_SECONDS = 10.0


async def _kill_and_wait(pid: int) -> None:
    """SIGKILL the group ``pid`` leads and wait until ``pid`` is gone (not our child:
    we watch it through a pidfd, or poll where the system has none)."""
    try:
        pidfd = _platform.open_pidfd(pid)
    except OSError:
        return  # already gone
    try:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            os.kill(pid, signal.SIGKILL)
        with trio.move_on_after(REAP_TIMEOUT_SECONDS):
            if pidfd is not None:
                await trio.lowlevel.wait_readable(pidfd)
            else:
                delay = 0.001
                while _platform.is_alive(pid):
                    await trio.sleep(delay)  # POSIX fallback: no pidfd to wait on
                    delay = min(delay * 2, 0.05)
    except OSError:
        pass
    finally:
        if pidfd is not None:
            os.close(pidfd)


async def _acquire(lock: trio.Lock) -> None:
    """``await lock.acquire()``, without its loop step when the lock is free: every task
    ready then would run first, and a spawn request would wait for them."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


class _Holding:
    """``async with _Holding(lock):``, taking it as ``_acquire`` does (``async with
    lock`` would take a loop step even when the lock is free)."""

    __slots__ = ("_lock",)

    def __init__(self, lock: trio.Lock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        await _acquire(self._lock)

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


def check_exec_arguments(argv: Sequence[str], env: Mapping[str, str], cwd: Path | str) -> None:
    """What exec cannot take, as the ``OSError`` (EINVAL) a failed start is: a NUL
    byte in an argument, a variable or the directory, an unusable variable name.
    Checked before anything is started, so that only this action fails."""
    for index, argument in enumerate(argv):
        if "\0" in argument:
            raise OSError(errno.EINVAL, f"argument {index} contains a NUL byte")
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise OSError(errno.EINVAL, f"environment variable name {name!r} is not usable")
        if "\0" in value:
            raise OSError(errno.EINVAL, f"environment variable {name} contains a NUL byte")
    if "\0" in str(cwd):
        raise OSError(errno.EINVAL, "the working directory contains a NUL byte")


class LauncherGone(OSError):
    """The session's launcher exited or stopped answering."""


def _peer_pid(sock: trio.socket.SocketType) -> int:
    """The pid of the process at the other end of a unix socket (Linux); 0 elsewhere."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return 0
    creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


async def _receive_attach(sock: trio.socket.SocketType) -> tuple[bytes, list[int], bytes]:
    """The launcher's first line on a reattach, the fds that came with it, and
    whatever followed it."""
    data = b""
    fds: list[int] = []
    space = socket.CMSG_SPACE(4 * array.array("i").itemsize)
    while b"\n" not in data:
        chunk, ancillary, _flags, _addr = await sock.recvmsg(65536, space if not fds else 0)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
        if not chunk:
            for fd in fds:
                os.close(fd)
            raise LauncherGone(errno.EPIPE, "the session's launcher has exited")
        data += chunk
    for fd in fds:
        os.set_inheritable(fd, False)
    line, rest = data.split(b"\n", 1)
    return line, fds, rest


class Reattached:
    """A session taken over from its launcher (``SessionLauncher.reattach``)."""

    def __init__(
        self,
        *,
        launcher: SessionLauncher,
        process: LaunchedProcess | None,
        output_fd: int | None,
        spill: Path | None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.launcher = launcher
        #: What the agent that started the action said of it (``spawn(meta=)``).
        self.meta = meta
        #: The action that was running when the agent died (its ``returncode`` set
        #: if it has ended since); ``None`` if none was.
        self.process = process
        #: The read end of its output pipe (ours to close); ``None`` if none came.
        self.output_fd = output_fd
        #: What it wrote while no agent was there, before what the pipe still holds
        #: (ours to read and remove); ``None`` if it wrote nothing.
        self.spill = spill


class _AdoptedProcess:
    """A launcher an earlier agent started: not our child, so watched through a
    pidfd (or polled where the system has none) rather than waited for."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not _platform.is_alive(self.pid):
            self.returncode = 0
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def wait(self) -> int:
        try:
            pidfd = _platform.open_pidfd(self.pid)
        except OSError:
            pidfd = None  # already gone
        try:
            if pidfd is not None:
                await trio.lowlevel.wait_readable(pidfd)
            delay = 0.001
            while self.poll() is None:
                await trio.sleep(delay)  # POSIX fallback: no pidfd to wait on
                delay = min(delay * 2, 0.05)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        self.returncode = 0
        return 0


class LaunchedProcess:
    """An action's process, started by the launcher."""

    def __init__(self, launcher: SessionLauncher, pid: int) -> None:
        self._launcher = launcher
        self.pid = pid
        self.returncode: int | None = None
        #: What it cost, as the launcher measured it (see ``_launchusage.Usage``), once
        #: it has ended; ``None`` if the launcher went first.
        self.usage: Mapping[str, object] | None = None

    async def wait(self) -> int:
        if self.returncode is None:
            self.returncode, self.usage = await self._launcher._wait_exit(self.pid)
        return self.returncode


@attrs.frozen
class SpawnRequest:
    """A spawn's request, ready to send (``SessionLauncher.spawn_request``)."""

    #: The request without its environment.
    fields: dict[str, object]
    #: The environment, whole (a copy of the caller's).
    env: dict[str, str]
    command: str
    #: The environment of the last spawn sent when it was made (``None``: none was),
    #: and the request encoded for a launcher that has that one.
    base: dict[str, str] | None
    encoded: bytes

    def body(self, last_env: dict[str, str] | None) -> bytes:
        """The request as sent after a spawn with ``last_env``: as encoded, when that is
        the environment it was made against, else with the whole environment."""
        if last_env is self.base:
            return self.encoded
        return json.dumps({**self.fields, "env": self.env}).encode()


def _env_changes(base: Mapping[str, str], env: Mapping[str, str]) -> dict[str, object] | None:
    """What ``env`` changes in ``base`` (``{"set": {...}, "unset": [...]}``), or ``None``
    when that is not much shorter than ``env`` itself."""
    changed = {name: value for name, value in env.items() if base.get(name) != value}
    unset = [name for name in base if name not in env]
    if len(changed) + len(unset) > len(env) // 2:
        return None
    return {"set": changed, "unset": unset}


class PendingSpawn:
    """A spawn request sent, its answer not yet read (``SessionLauncher.send_spawn``)."""

    def __init__(self, launcher: SessionLauncher, command: str) -> None:
        self._launcher = launcher
        self._command = command
        self._open = True

    async def started(self) -> LaunchedProcess:
        """The process, once the launcher has started it. Raises ``OSError`` as exec
        would (``FileNotFoundError`` for a missing command), or ``LauncherGone``."""
        launcher = self._launcher
        if not self._open:
            raise RuntimeError("this spawn's answer was read or abandoned already")
        self._open = False
        try:
            with launcher._exchange():
                reply = await launcher._receive()
                while "exit" in reply or "held" in reply:  # a process the last sweep
                    reply = await launcher._receive()  # killed, or a release's answer
        finally:
            launcher._lock.release()
        if "pid" in reply:
            return LaunchedProcess(launcher, int(reply["pid"]))
        code = int(reply.get("errno") or errno.EIO)
        raise OSError(code, str(reply.get("message") or os.strerror(code)), self._command)

    def abandon(self) -> None:
        """The answer will not be read (we are going away): the launcher goes, and
        whatever it started with it. Called by the task that sent the request."""
        if self._open:
            self._open = False
            log.warning("spawn.exchange_abandoned", launcher=self._launcher.pid)
            self._launcher._close_socket()
            self._launcher._lock.release()


class SessionLauncher:
    """See the module docstring. Start one with ``await SessionLauncher.start()``."""

    def __init__(
        self, process: trio.Process | _AdoptedProcess, sock: trio.socket.SocketType
    ) -> None:
        self._process = process
        self._sock = sock
        self._buffer = b""
        self._lock = trio.Lock()
        #: Sends only: ``release()`` sends while an exchange waits for an exit.
        self._send_lock = trio.Lock()
        self._gone = False
        #: The memory cgroup its actions are charged to, as (path, cgroup version),
        #: set by ``join_memory_cgroup`` (``_memcg.py``).
        self.memory_cgroup: tuple[Path, int] | None = None
        #: A v1 memory cgroup made for this launcher alone, removed once it has gone.
        self._own_memory_cgroup: Path | None = None
        #: Whether the launcher holds the session should we die (``hold()``).
        self._held = False
        #: The environment of the last spawn sent (``spawn_request``).
        self._sent_env: dict[str, str] | None = None

    @property
    def held(self) -> bool:
        return self._held

    @classmethod
    async def start(cls, *, cgroup_procs: Path | None = None) -> SessionLauncher:
        """Start a launcher; move it into the cgroup first, if one is given.

        Raises ``OSError`` when it cannot be started.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with theirs:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-I", "-S", _launcher.__file__],
                    stdin=theirs.fileno(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    # No terminal signals: it must outlive a Ctrl-C long enough to
                    # clean up, and it goes when its socket closes.
                    start_new_session=True,
                )
        except BaseException:
            ours.close()
            raise
        launcher = cls(process, trio.socket.from_stdlib_socket(ours))
        if cgroup_procs is not None:
            await launcher.join_cgroup(cgroup_procs)
        return launcher

    async def join_cgroup(self, cgroup_procs: Path) -> bool:
        """Move the launcher into a cgroup. Only before it has started anything: what
        it starts afterwards is then born in the cgroup. A failure is logged and
        ``False`` returned (the tag still finds the session's processes)."""
        # A migration waits for an RCU grace period (milliseconds): not on the loop.
        try:
            await trio.to_thread.run_sync(cgroup_procs.write_text, str(self._process.pid))
        except OSError as exc:
            log.debug("spawn.cgroup_failed", path=str(cgroup_procs), error=str(exc))
            return False
        return True

    async def join_memory_cgroup(self, path: Path, version: int, *, own: bool) -> bool:
        """Have its actions charged to the memory cgroup ``path`` (``_memcg.py``): the
        kernel then holds their limit and counts their peak. ``own``: a v1 cgroup
        made for it alone, to move it into now and remove when it has gone (a v2
        session cgroup it was moved into already)."""
        if own:
            if not await self.join_cgroup(path / "cgroup.procs"):
                return False
            self._own_memory_cgroup = path
        self.memory_cgroup = (path, version)
        return True

    def _remove_own_memory_cgroup(self) -> None:
        path, self._own_memory_cgroup = self._own_memory_cgroup, None
        if path is not None:
            _memcg.remove_launcher_cgroup(path)

    def discard(self) -> None:
        """End a launcher that never started anything (a spare) without awaiting it:
        for synchronous clean-up paths only; ``aclose()`` is the way otherwise."""
        self._close_socket()
        try:
            self._process.kill()
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 1.0
        while self._process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)  # it was SIGKILLed: gone within a scheduler tick
        self._remove_own_memory_cgroup()

    @property
    def pid(self) -> int:
        return self._process.pid

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        output_fd: int,
        output_read_fd: int | None = None,
        memory_limit: int | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> LaunchedProcess:
        """Start ``argv`` with stdout and stderr on ``output_fd`` (which stays ours to close).
        ``output_read_fd``: the pipe's read end, shared with the launcher while it holds
        (``hold()``), so the output outlives us. ``meta``: what an agent that takes
        the session over should know of the action (``Reattached.meta``).
        ``memory_limit``: bytes the session's processes may use together while it runs;
        past it the launcher kills it (its usage then says so).

        Raises ``OSError`` as exec would (``FileNotFoundError`` for a missing command).
        """
        request = self.spawn_request(argv, env=env, cwd=cwd, memory_limit=memory_limit, meta=meta)
        pending = await self.send_spawn(request, output_fd=output_fd, output_read_fd=output_read_fd)
        return await pending.started()

    def spawn_request(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        memory_limit: int | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> SpawnRequest:
        """A spawn's request, made ready to send (``send_spawn``) as ``spawn`` would
        send it. Raises ``OSError`` (EINVAL) for what exec cannot take.

        A session's actions share most of their environment: the request carries only
        what differs from the last spawn's (``env_changes``; the launcher keeps that
        one), which was checked when it was made, so only the changes are checked."""
        whole = dict(env)
        base = self._sent_env
        changes = _env_changes(base, whole) if base is not None else None
        changed = changes["set"] if changes is not None else whole
        assert isinstance(changed, dict)
        check_exec_arguments(argv, changed, cwd)
        request: dict[str, object] = {"spawn": list(argv), "cwd": str(cwd)}
        if memory_limit is not None:
            request["memory_limit"] = int(memory_limit)
        if meta is not None and self._held:
            request["meta"] = dict(meta)
        if self.memory_cgroup is not None:
            request["memory_cgroup"] = [str(self.memory_cgroup[0]), self.memory_cgroup[1]]
        encoded = json.dumps(
            {**request, "env_changes": changes}
            if changes is not None
            else {**request, "env": whole}
        ).encode()
        return SpawnRequest(request, whole, argv[0], base, encoded)

    async def send_spawn(
        self, request: SpawnRequest, *, output_fd: int, output_read_fd: int | None = None
    ) -> PendingSpawn:
        """``spawn``'s request alone: the launcher starts the process while we go on,
        and ``PendingSpawn.started()`` reads its answer. Until then the launcher is
        this exchange's (its other exchanges wait); the task that sent it reads the
        answer, or ``abandon()``s it. ``output_fd`` may be closed once this returns.

        Raises ``LauncherGone``.
        """
        fds = [output_fd]
        if output_read_fd is not None and self._held:
            fds.append(output_read_fd)
        await _acquire(self._lock)
        try:
            with self._exchange():
                await self._send(request.body(self._sent_env), *fds)
        except BaseException:
            self._lock.release()
            raise
        self._sent_env = request.env  # the launcher's now, should the next differ little
        return PendingSpawn(self, request.command)

    async def _wait_exit(self, pid: int) -> tuple[int, Mapping[str, object] | None]:
        async with _Holding(self._lock):
            try:
                while True:
                    reply = await self._receive()
                    if reply.get("exit") == pid:
                        usage = reply.get("usage")
                        return int(reply["code"]), usage if isinstance(usage, dict) else None
            except LauncherGone:
                # Its status is lost with the launcher: make sure it is gone too.
                log.error("spawn.launcher_gone", launcher=self._process.pid, pid=pid)
                await _kill_and_wait(pid)
                return -signal.SIGKILL, None

    async def sweep(self) -> int:
        """Kill every process below the launcher; how many were killed.

        The launcher bounds its own sweep (in real time), so there is no timeout
        here; one would also fire at once under a test's autojump clock.
        """
        if self._gone:
            return 0
        async with self._lock:
            with self._exchange():
                try:
                    await self._send(json.dumps({"sweep": True}).encode())
                    while True:
                        reply = await self._receive()
                        if "swept" in reply:
                            return int(reply["swept"])
                except LauncherGone:
                    return 0

    async def sweep_for_reuse(self) -> int | None:
        """Sweep (see ``sweep``) and say whether the launcher can serve another
        session: how many processes were killed, or ``None`` if it has gone, could
        not kill everything below it, or is no subreaper (what its actions started
        may have left its tree)."""
        if self._gone:
            return None
        async with self._lock:
            with self._exchange():
                try:
                    await self._send(json.dumps({"sweep": True}).encode())
                    while True:
                        reply = await self._receive()
                        if "swept" in reply:
                            usable = reply.get("clean") and reply.get("holds")
                            return int(reply["swept"]) if usable else None
                except LauncherGone:
                    return None

    async def sweep_and_close(self) -> int | None:
        """A session's end in one exchange: the launcher kills every process below it,
        says how many, and exits. ``None`` if what the session started is not known
        to be gone (the launcher had gone already, or is no subreaper, so processes
        may have left its tree): the caller looks for them by other means."""
        if self._gone:
            await self.aclose()
            return None
        swept: int | None = None
        async with self._lock:
            with self._exchange():
                try:
                    await self._send(json.dumps({"sweep": True, "exit": True}).encode())
                    while True:
                        reply = await self._receive()
                        if "swept" in reply:
                            swept = int(reply["swept"]) if reply.get("holds") else None
                            break
                except LauncherGone:
                    pass
        await self.aclose()
        return swept

    async def hold(
        self,
        *,
        grace: float,
        socket_path: Path,
        spill: Path,
        files: Sequence[Path] = (),
        directory: Path | None = None,
    ) -> bool:
        """Should we die, keep the session's processes for ``grace`` seconds and wait
        for an agent on ``socket_path`` (see ``reattach``), reading the action's
        output into ``spill``; when none comes, kill them and remove ``spill``,
        ``files`` and ``directory``. Only actions spawned after this share their
        output. ``False`` if the launcher is gone."""
        request: dict[str, object] = {
            "hold": {
                "grace": float(grace),
                "socket": str(socket_path),
                "spill": str(spill),
                "files": [str(path) for path in files],
                "directory": str(directory) if directory is not None else None,
            }
        }
        self._held = await self._ask_hold(request)
        return self._held

    async def release(self) -> None:
        """A deliberate end (drain, stop, cancel): closing the launcher, or dying,
        kills the session's processes at once again. Does not wait for the running
        action's exchange (its answer is skipped by whoever reads next)."""
        if self._held and not self._gone:
            self._held = False
            with self._exchange():
                try:
                    await self._send(json.dumps({"hold": None}).encode())
                except LauncherGone:
                    pass

    async def _ask_hold(self, request: dict[str, object]) -> bool:
        if self._gone:
            return False
        async with self._lock:
            with self._exchange():
                try:
                    await self._send(json.dumps(request).encode())
                    while True:
                        reply = await self._receive()
                        if "held" in reply:
                            return bool(reply["held"])
                except LauncherGone:
                    return False

    @classmethod
    async def reattach(cls, socket_path: Path) -> Reattached:
        """Take over a session whose agent died, from its launcher waiting on
        ``socket_path``. The launcher no longer holds (``hold()`` again).

        Raises ``OSError`` when no launcher waits there (``LauncherGone`` when one
        went away during the exchange).
        """
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            address, dir_fd = _platform.unix_address(str(socket_path))
            try:
                await sock.connect(address)
            finally:
                if dir_fd is not None:
                    os.close(dir_fd)
            pid = _peer_pid(sock)
            line, fds, rest = await _receive_attach(sock)
        except BaseException:
            sock.close()
            raise
        launcher = cls(_AdoptedProcess(pid), sock)
        launcher._buffer = rest
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            for fd in fds:
                os.close(fd)
            await launcher.aclose()
            raise LauncherGone(errno.EPROTO, "the session's launcher answered nonsense") from None
        process: LaunchedProcess | None = None
        if message.get("attached") is not None:
            process = LaunchedProcess(launcher, int(message["attached"]))
        exit_report = message.get("exit")
        if isinstance(exit_report, dict) and exit_report.get("exit") is not None:
            process = LaunchedProcess(launcher, int(exit_report["exit"]))
            process.returncode = int(exit_report["code"])
            usage = exit_report.get("usage")
            process.usage = usage if isinstance(usage, dict) else None
        spill = message.get("spill")
        meta = message.get("meta")
        return Reattached(
            launcher=launcher,
            process=process,
            output_fd=fds[0] if fds else None,
            spill=Path(spill) if isinstance(spill, str) else None,
            meta=meta if isinstance(meta, dict) else None,
        )

    @contextmanager
    def _exchange(self) -> Iterator[None]:
        """A request and its answer. Abandoned halfway (cancelled), the stream would
        hold an answer the next exchange would take for its own: let the launcher
        go instead (it kills what is below it and exits)."""
        try:
            yield
        except BaseException:
            if not self._gone:
                log.warning("spawn.exchange_abandoned", launcher=self._process.pid)
                self._close_socket()
            raise

    async def aclose(self) -> None:
        """Let it go: it kills whatever is left below it and exits."""
        self._close_socket()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(EXIT_TIMEOUT_SECONDS):
                await self._process.wait()
            if self._process.returncode is None:
                self._process.kill()
                await self._process.wait()
            if self._own_memory_cgroup is not None:
                await trio.to_thread.run_sync(self._remove_own_memory_cgroup)

    def _close_socket(self) -> None:
        self._gone = True
        self._sock.close()

    async def _send(self, body: bytes, *fds: int) -> None:
        if self._gone:
            raise LauncherGone(errno.EPIPE, "the session's launcher has exited")
        data = memoryview(struct.pack("!I", len(body)) + body)
        ancillary: list[tuple[int, int, Any]] = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        try:
            async with _Holding(self._send_lock):
                sent = await self._sock.sendmsg([data], ancillary)
                while sent < len(data):
                    sent += await self._sock.send(data[sent:])
        except OSError as exc:
            self._gone = True
            raise LauncherGone(errno.EPIPE, "the session's launcher has exited") from exc

    async def _receive(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            if self._gone:
                raise LauncherGone(errno.EPIPE, "the session's launcher has exited")
            try:
                chunk = await self._sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._gone = True
                raise LauncherGone(errno.EPIPE, "the session's launcher has exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply
