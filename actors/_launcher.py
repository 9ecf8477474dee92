"""A session's launcher: the process that starts the session's actions.

This file is run as a script (``python -I -S _launcher.py``), one process per
session, so it imports only the standard library and nothing from the package.
``_spawn.py`` is the agent's side of it.

Why a separate process: it is a child subreaper (``PR_SET_CHILD_SUBREAPER``),
so every process started for the session stays below it, daemons included:
when a process's parent exits, the kernel hands it to the launcher, not to
init. Whatever is left when the session ends is therefore found by walking one
process tree, with no help from the processes themselves (they may change
their environment, process group and session as they like). Where a cgroup is
used, the agent moves the launcher into the session's cgroup before it starts
anything, so every action starts inside it. Moving an action's process after
it has started would race with its first fork.

The protocol, over a stream socket on fd 0: the agent sends JSON objects, each
after its length (4 bytes, big-endian); the launcher answers with JSON lines.

    agent -> {"spawn": [argv...], "env": {...}, "cwd": PATH, "memory_limit": BYTES,
              "memory_cgroup": [PATH, VERSION], "meta": ANY},
             or, instead of "env", "env_changes": {"set": {...}, "unset": [NAME...]}:
             the last spawn's environment (this launcher's, whichever agent sent
             it) with these changes;
             with one fd (SCM_RIGHTS, on the length) for the action's stdout and
             stderr; over the (optional) limit, the action's processes are killed
             and its exit's usage says so ("memory_limit": {limit, used, pid,
             name, largest, by}); with a memory cgroup (ours: see ``_memcg.py``),
             the kernel holds the limit and counts the peak
    launcher -> {"pid": N} or {"errno": E, "message": TEXT}
    launcher -> {"exit": N, "code": C, "usage": {...}}  once the action's process
                has ended (C as ``subprocess`` reports it: negative for a signal;
                usage: see ``_launchusage.Usage``)
    agent -> {"sweep": true}
    launcher -> {"swept": COUNT}  once every process below it is gone
    agent -> {"hold": {"grace": S, "socket": PATH, "spill": PATH, "files": [PATH...],
              "directory": PATH}}  or  {"hold": null}
    launcher -> {"held": true|false}

A spawn may carry a second fd: the read end of the action's output pipe, which
the launcher keeps (and never reads while the agent is there) so that the
action's output outlives the agent.

When the socket closes (the agent is done, or dead), the launcher kills every
process below it and exits, unless it was told to hold (``{"hold": {...}}``):
then it keeps the session's processes running for ``grace`` seconds and
accepts an agent on the unix socket ``socket`` (0600; it listens from the hold
on, so an agent that connects before the launcher has seen the old one go
waits in the backlog). While
it waits it reads the action's output itself (a bounded buffer, appended to
the file ``spill``), and keeps the action's exit status and usage. An agent
that connects gets, first, one line with one fd (SCM_RIGHTS: the output pipe's
read end, when there is one):

    launcher -> {"attached": PID or null, "spill": PATH or null,
                 "exit": {"exit": N, "code": C, "usage": {...}} or null, "meta": ANY}

(``exit`` and ``meta``: the last action's, kept until the next spawn or sweep:
its exit report, and what the agent said of it when it asked for it.)

after which the protocol goes on as before, over that connection, and the
launcher no longer holds (the new agent says ``hold`` again). When the grace
passes with no agent, the launcher kills everything below it, removes the
socket, the spill file, ``files`` and the session's ``directory``, and exits.
``{"hold": null}`` (a deliberate stop: drain, SIGTERM, cancel) puts back the
old rule: a closed socket kills everything at once.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import types


def _load(name: str) -> types.ModuleType:
    """A stdlib-only sibling module (``_platform``, ``_launchusage``): imported in the
    package, imported from this file's directory when it runs as a script (``python
    -I -S``, no package), through the plain import system (its cached bytecode, no
    importlib.util: a session's start pays for every import here)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        module: types.ModuleType = __import__(name)
    finally:
        del sys.path[0]
    return module


if __package__:
    from . import _launchusage, _platform
else:  # pragma: no cover - the script's own process
    _platform = _load("_platform")
    _launchusage = _load("_launchusage")

#: Bytes of an action's output kept in memory while no agent is there; more goes
#: to the spill file (and, should that fail, the pipe is left unread: the action
#: waits for its writes, and nothing is lost).
HELD_OUTPUT_BYTES = 1 << 16
#: Largest read from the output pipe while no agent is there.
HELD_READ_BYTES = 1 << 16
#: What actions get as ``oom_score_adj`` (they inherit ours): when the host runs out
#: of memory, the kernel picks a job's process before the agent.
ACTION_OOM_SCORE_ADJ = 500


#: Received fds close on exec as they arrive (Linux), with no system call of their own.
_CMSG_CLOEXEC: int = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

#: Bound on kill rounds in one sweep (each round kills everything found below).
SWEEP_ROUNDS = 100
#: Bound on one sweep, in real time (the agent does not time it out).
SWEEP_SECONDS = 10.0


def _become_subreaper() -> bool:
    # Where there is no subreaper (not Linux), the tag and the process groups
    # still find the session's processes.
    return bool(_platform.become_subreaper())


def _children_of(pid: int) -> dict[int, list[int]]:
    """The tree of live processes as parent -> children."""
    tree: dict[int, list[int]] = _platform.live_children()
    return tree


def _descendants(pid: int) -> list[int]:
    tree = _children_of(pid)
    found: list[int] = []
    stack = list(tree.get(pid, ()))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(tree.get(child, ()))
    return found


class _HeldOutput:
    """The action's output read while no agent is there: a bounded buffer, appended
    to the spill file when it fills."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.buffer = bytearray()
        self.written = 0
        self.failed = path is None

    @property
    def full(self) -> bool:
        return self.failed and len(self.buffer) >= HELD_OUTPUT_BYTES

    def add(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= HELD_OUTPUT_BYTES:
            self.flush()

    def flush(self) -> bool:
        """Append the buffer to the spill file; ``False`` if it cannot be."""
        if not self.buffer:
            return True
        if self.path is None:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(self.buffer)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError:
            self.failed = True
            return False
        self.written += len(self.buffer)
        self.buffer = bytearray()
        return True


class Launcher:
    def __init__(self, sock: socket.socket, *, subreaper: bool = True) -> None:
        #: The agent's connection (``None``: the agent is gone, we hold).
        self.sock: socket.socket | None = sock
        #: Whether everything our actions start stays below us (Linux): only then
        #: does a clean sweep mean nothing of the session is left anywhere.
        self.subreaper = subreaper
        self.me = os.getpid()
        #: The action process whose exit the agent waits for.
        self.action: subprocess.Popen[bytes] | None = None
        #: What the running action has cost so far.
        self.usage = _launchusage.Usage()
        #: The memory cgroup the last spawn named (see ``cgroup_for``).
        self.memory_cgroup: _launchusage.MemoryCgroup | None = None
        #: GPU memory sampling, where there is a GPU to ask about.
        self.gpu = _launchusage.GpuSampler.find()
        #: Swept and asked to exit: nothing is left to sweep on the way out.
        self.done = False
        #: Whether the last sweep left nothing below us.
        self.clean = True
        #: The read end of the action's output pipe, when the spawn gave us one: ours
        #: to read only while no agent is there.
        self.output: int | None = None
        #: The last action's exit report, until the next spawn or sweep: an agent that
        #: comes back gets it (the one before may have died before it read it).
        self.last_exit: dict[str, object] | None = None
        #: What the agent said of the last action (a spawn's ``meta``), likewise.
        self.meta: object = None
        #: What to do when the agent goes (``None``: kill everything; see the docstring).
        self.hold: dict[str, object] | None = None
        #: Where an agent connects while we hold (listening from the hold on).
        self.listener: socket.socket | None = None
        self.listener_path = ""
        #: The hold we were under when the grace passed with no agent: its files go.
        self.expired: dict[str, object] | None = None
        #: The last spawn's environment (the next may say only what differs).
        self.env: dict[str, str] | None = None
        #: The actions' stdin, opened once (``subprocess.DEVNULL`` opens it per spawn).
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        wake_read, wake_write = _platform.nonblocking_pipe()
        self.wake = wake_read
        signal.set_wakeup_fd(wake_write)
        # A handler (not SIG_DFL) so SIGCHLD reaches the wakeup fd.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def send(self, message: dict[str, object]) -> None:
        if self.sock is None:
            return  # no agent now: one that comes back gets ``last_exit``
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # the agent is gone; the loop sees the socket close

    def receive(self) -> tuple[dict[str, object] | None, list[int]]:
        """The next request and the fds that came with it; ``None`` at the end."""
        if self.sock is None:
            return None, []
        try:
            header, fds, _flags, _addr = socket.recv_fds(self.sock, 4, 4, _CMSG_CLOEXEC)
            for fd in fds if not _CMSG_CLOEXEC else ():
                # Not inherited: the action gets it as its stdout and stderr only, so
                # nothing it leaves behind holds its output open by accident.
                os.set_inheritable(fd, False)
            while header and len(header) < 4:
                more = self.sock.recv(4 - len(header))
                if not more:
                    break
                header += more
            if len(header) < 4:
                return None, fds
            (size,) = struct.unpack("!I", header)
            body = bytearray()
            while len(body) < size:
                chunk = self.sock.recv(min(size - len(body), 1 << 20))
                if not chunk:
                    return None, fds
                body += chunk
        except OSError:
            return None, []
        return json.loads(body), fds

    def reap(self) -> None:
        while True:
            name = None
            try:
                if self.usage.watching_kernel:
                    # Named before it is reaped (a zombie still has its name): the
                    # kernel's OOM victim is one of these, and only they know it.
                    waited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    if waited is None:
                        return
                    name = _platform.process_name(waited.si_pid)
                    pid, status, rusage = os.wait4(waited.si_pid, 0)
                else:
                    pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            action = self.action
            if action is not None:
                self.usage.add(rusage, pid, name)
            if action is not None and pid == action.pid:
                self.action = None
                code = os.waitstatus_to_exitcode(status)
                # We reaped it, not the Popen: say so, or the Popen would try to
                # reap the pid later (and could take a new child's status).
                action.returncode = code
                self.last_exit = {"exit": pid, "code": code, "usage": self.usage.report()}
                self.send(self.last_exit)

    def spawn(self, request: dict[str, object], fds: list[int]) -> None:
        argv = [str(arg) for arg in request["spawn"]]  # type: ignore[attr-defined]
        env = self.env_of(request)
        cwd = str(request["cwd"])
        limit = request.get("memory_limit")
        kept = fds[1] if len(fds) == 2 else None
        self.set_output(None)
        self.last_exit = None
        self.meta = None
        try:
            if len(fds) not in (1, 2) or not argv or env is None:
                raise OSError(
                    errno.EINVAL, "a spawn request needs an argv, an environment and one or two fds"
                )
            # Limit set and peak reset before the action starts.
            usage = _launchusage.Usage(
                int(limit) if isinstance(limit, int) and limit > 0 else None,
                self.cgroup_for(request.get("memory_cgroup")),
            )
            process = _spawn(argv, env, cwd, fds[0], self.devnull)
        except OSError as exc:
            self.send({"errno": exc.errno or errno.EIO, "message": exc.strerror or str(exc)})
        except (ValueError, TypeError) as exc:
            # What exec cannot take (a NUL byte, say) fails this request, not the launcher.
            self.send({"errno": errno.EINVAL, "message": str(exc)})
        else:
            self.action = process
            self.usage = usage
            self.set_output(kept)
            kept = None
            self.meta = request.get("meta")
            self.send({"pid": process.pid})
        finally:
            for fd in fds:
                if fd != self.output:
                    os.close(fd)

    def env_of(self, request: dict[str, object]) -> dict[str, str] | None:
        """A spawn's environment: its ``env``, or the last spawn's with its ``env_changes``
        (``None``: neither is usable)."""
        whole = request.get("env")
        changes = request.get("env_changes")
        if isinstance(whole, dict):
            env = {str(k): str(v) for k, v in whole.items()}
        elif isinstance(changes, dict) and self.env is not None:
            env = dict(self.env)
            env.update({str(k): str(v) for k, v in changes.get("set", {}).items()})
            for name in changes.get("unset", ()):
                env.pop(str(name), None)
        else:
            return None
        self.env = env
        return env

    def cgroup_for(self, value: object) -> _launchusage.MemoryCgroup | None:
        """The memory cgroup a spawn names (its ``memory_cgroup``): the one the last
        spawn named, when it is the same, so its files stay open and its limit is
        written only when it changes."""
        if self.memory_cgroup is not None and self.memory_cgroup.same_as(value):
            return self.memory_cgroup
        if self.memory_cgroup is not None:
            self.memory_cgroup.close()
        self.memory_cgroup = _launchusage.MemoryCgroup.from_request(value)
        return self.memory_cgroup

    def set_output(self, fd: int | None) -> None:
        if self.output is not None:
            os.close(self.output)
        self.output = fd

    def sample_gpu(self) -> None:
        assert self.gpu is not None
        used = self.gpu.used_by(set(_platform.tree_pids(self.me)))
        self.usage.next_gpu_sample = time.monotonic() + self.gpu.interval
        if used is not None:
            self.usage.gpu = max(self.usage.gpu or 0, used)

    def kill_action(self) -> None:
        """Over its memory limit: the action's process group and everything below it
        go now (its exit is reported as it is reaped, with the reason)."""
        action = self.action
        if action is None:
            return
        try:
            os.killpg(action.pid, signal.SIGKILL)
        except OSError:
            pass
        for pid in [action.pid, *_descendants(action.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def sweep(self) -> int:
        """Kill everything below us, round after round, until nothing is left."""
        killed: set[int] = set()
        deadline = time.monotonic() + SWEEP_SECONDS
        self.clean = False
        for _ in range(SWEEP_ROUNDS):
            found = _descendants(self.me)
            if not found:
                self.clean = True
                break
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except OSError:
                    pass
            # Their children are handed to us as they die; reap, then look again.
            self.wait_children_gone(set(found), deadline)
            if time.monotonic() > deadline:
                break
        self.reap()
        return len(killed)

    def wait_children_gone(self, pids: set[int], deadline: float) -> None:
        while pids:
            self.reap()
            pids = {pid for pid in pids if _exists(pid)}
            remaining = deadline - time.monotonic()
            if not pids or remaining <= 0:
                return
            select.select([self.wake], [], [], remaining)
            _drain(self.wake)

    def tick(self) -> float | None:
        """Sample what is due while an action runs; seconds until the next sample
        (``None``: no action runs)."""
        if self.action is None:
            return None
        if time.monotonic() >= self.usage.next_sample and self.usage.sample(self.me):
            self.kill_action()
        due = self.usage.next_sample
        if self.gpu is not None:
            if time.monotonic() >= self.usage.next_gpu_sample:
                self.sample_gpu()
            due = min(due, self.usage.next_gpu_sample)
        return max(0.0, due - time.monotonic())

    def serve(self) -> None:
        while True:
            assert self.sock is not None
            sock = self.sock.fileno()
            timeout = self.tick()
            readable, _, _ = select.select([sock, self.wake], [], [], timeout)
            if self.wake in readable:
                _drain(self.wake)
                self.reap()
            if sock not in readable:
                continue
            request, fds = self.receive()
            if request is None:
                for fd in fds:
                    os.close(fd)
                if self.hold is not None and self.wait_for_agent():
                    continue
                return
            if "spawn" in request:
                self.spawn(request, fds)
                continue
            for fd in fds:
                os.close(fd)
            if "hold" in request:
                self.set_hold(request["hold"])
                self.send({"held": self.hold is not None})
                continue
            if request.get("sweep"):
                self.set_output(None)
                self.last_exit = None
                swept = self.sweep()
                self.send({"swept": swept, "clean": self.clean, "holds": self.subreaper})
                if request.get("exit"):
                    # The session's end in one exchange: swept, answered, gone.
                    self.done = True
                    return

    def wait_for_agent(self) -> bool:
        """The agent went while we hold: keep everything running, read the action's
        output, and wait for an agent to connect on the hold's socket. ``True`` once
        one has (it is ``self.sock`` now); ``False`` when the grace passed first."""
        hold, listener = self.hold, self.listener
        assert hold is not None
        assert listener is not None
        self.hold = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        deadline = time.monotonic() + float(hold["grace"])  # type: ignore[arg-type]
        held = _HeldOutput(str(hold["spill"]) if hold.get("spill") else None)
        eof = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.expired = hold
                    return False
                due = self.tick()
                watch = [listener.fileno(), self.wake]
                if self.output is not None and not eof and not held.full:
                    watch.append(self.output)
                timeout = remaining if due is None else min(due, remaining)
                readable, _, _ = select.select(watch, [], [], timeout)
                if self.wake in readable:
                    _drain(self.wake)
                    self.reap()
                if self.output is not None and self.output in readable:
                    try:
                        chunk = os.read(self.output, HELD_READ_BYTES)
                    except BlockingIOError:
                        chunk = None
                    if chunk == b"":
                        eof = True
                    elif chunk:
                        held.add(chunk)
                if listener.fileno() not in readable:
                    continue
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                if not _platform.same_user(conn) or not held.flush():
                    conn.close()
                    continue
                # Gone before the agent hears from us: one agent at a time.
                self.close_listener()
                if self.attach(conn, held):
                    return True
                self.set_hold(hold)  # that agent went at once: wait for another
                if self.listener is None:
                    self.expired = hold
                    return False
                listener = self.listener
                self.hold = None
        finally:
            self.close_listener()

    def set_hold(self, hold: object) -> None:
        """Hold (a usable request: listen on its socket now, so that an agent that
        comes early waits in the backlog) or not (``None``)."""
        self.close_listener()
        self.hold = None
        if not isinstance(hold, dict) or not hold.get("socket") or not hold.get("grace"):
            return
        try:
            self.listener = _platform.listen_unix(str(hold["socket"]))
        except OSError:
            return  # nowhere to wait: not held
        self.listener_path = str(hold["socket"])
        self.hold = hold

    def close_listener(self) -> None:
        if self.listener is None:
            return
        self.listener.close()
        self.listener = None
        try:
            os.unlink(self.listener_path)
        except OSError:
            pass

    def attach(self, conn: socket.socket, held: _HeldOutput) -> bool:
        """Hand the session to the agent on ``conn``: what runs, the spill file, the
        last exit, and the output pipe (see the module docstring)."""
        conn.setblocking(True)
        self.reap()  # an exit whose SIGCHLD has not woken us yet is known too
        message: dict[str, object] = {
            "attached": self.action.pid if self.action is not None else None,
            "spill": held.path if held.written else None,
            "exit": self.last_exit,
            "meta": self.meta,
        }
        data = json.dumps(message).encode() + b"\n"
        fds = [self.output] if self.output is not None else []
        try:
            sent = socket.send_fds(conn, [data], fds)
            if sent < len(data):
                conn.sendall(data[sent:])
        except OSError:
            conn.close()
            return False
        self.sock = conn
        return True

    def remove_held_files(self) -> None:
        """The grace passed with no agent, and everything is swept: the files of the
        session's hold go too (the socket went with the wait)."""
        hold = self.expired
        if hold is None:
            return
        files = hold.get("files")
        paths = [hold.get("spill"), *(files if isinstance(files, list) else [])]
        for path in paths:
            if isinstance(path, str) and path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        directory = hold.get("directory")
        if isinstance(directory, str) and directory:
            import shutil  # only here: a session's start does not pay for it

            shutil.rmtree(directory, ignore_errors=True)


def _spawn(
    argv: list[str], env: dict[str, str], cwd: str, output: int, devnull: int
) -> subprocess.Popen[bytes]:
    """Start ``argv`` exactly as trio (``subprocess``) would start it directly: in a
    new session, found on the ``PATH`` of ``env``, stdin from /dev/null (``devnull``,
    an fd of it), stdout and stderr to ``output``. Raises the ``OSError`` exec raised.

    ``subprocess`` forks with vfork here, and resets SIGPIPE and SIGXFSZ, which
    Python ignores. (Not ``posix_spawn``: glibc's leaves its internal signals 32
    and 33 ignored in the new program. Not a fork with Python code in the
    child: its copy-on-write faults cost milliseconds.)
    """
    return subprocess.Popen(
        argv,
        stdin=devnull,
        stdout=output,
        stderr=output,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


def _exists(pid: int) -> bool:
    return bool(_platform.is_alive(pid))


def _drain(fd: int) -> None:
    try:
        while len(os.read(fd, 4096)) == 4096:
            pass  # a read short of that took all there was: no second read to say so
    except BlockingIOError:
        pass


def _ignore(signum: int, frame: object) -> None:
    """Terminal and stop signals are not for us: the launcher goes when its socket
    closes. (A handler, not SIG_IGN, which the actions would inherit.)"""


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        # One the agent was started ignoring (``nohup``) stays ignored: the actions
        # inherit it, as they would from the agent itself.
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _ignore)
    subreaper = _become_subreaper()
    _platform.raise_oom_score(ACTION_OOM_SCORE_ADJ)
    sock = socket.socket(fileno=0)
    launcher = Launcher(sock, subreaper=subreaper)
    try:
        launcher.serve()
    finally:
        if not launcher.done:
            launcher.sweep()
        launcher.close_listener()
        launcher.remove_held_files()
    return 0


if __name__ == "__main__":
    code = main()
    # Nothing to flush or finalize: skip the interpreter's teardown, which the
    # agent would otherwise wait for at the end of every session.
    os._exit(code)
