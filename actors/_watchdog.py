"""Finding and killing every process started for farmhand's sessions.

This file is also run as a script (``python -I -S _watchdog.py TAG [CGROUP [LOCK [MEMCG]]]``)
by the watchdog that outlives a killed agent, so it imports only the standard
library and nothing from the package.

A process belongs to farmhand when its environment carries
``FARMHAND_SESSION_TAG=<instance>/<session>/<action>`` (every action's process gets it,
and children inherit it), or when it is in one of our cgroups. Daemonised
grandchildren that leave their process group keep both.

Session ids are deliberately not used to find processes: once an action's
leader has exited, its pid (the session id) can be reused by an unrelated
process, which must never be killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import types


def _load_platform() -> types.ModuleType:
    """``_platform`` (stdlib only): imported in the package, imported from this file's
    directory when it runs as a script (``python -I -S``, no package), through the
    plain import system (its cached bytecode, no importlib.util: a session's start
    pays for every import here)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import _platform  # type: ignore[import-not-found,unused-ignore]
    finally:
        del sys.path[0]
    module: types.ModuleType = _platform
    return module


if __package__:
    from . import _platform
else:  # pragma: no cover - the script's own process
    _platform = _load_platform()


TAG_VARIABLE = "FARMHAND_SESSION_TAG"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None


def find_processes(tag: str, *, exact: bool = False) -> list[int]:
    """Live processes carrying ``tag`` in their environment (a prefix, unless ``exact``)."""
    found: list[int] = _platform.tagged_processes(f"{TAG_VARIABLE}={tag}".encode(), exact=exact)
    return found


def _cgroup_members(path: str) -> set[int]:
    """The pids in a cgroup directory and below."""
    members: set[int] = set()
    for root, _dirs, _files in os.walk(path):
        for pid in (_read(os.path.join(root, "cgroup.procs")) or b"").split():
            try:
                members.add(int(pid))
            except ValueError:
                pass
    return members


def kill_cgroup(path: str) -> None:
    """Kill every process in a cgroup directory and below (best effort): v2's
    ``cgroup.kill`` where there is one, else (older kernels, cgroup v1) each member.
    Returns once they are gone (bounded, as ``kill_all``): a dying process has no
    environment left to find it by, but it is not dead yet."""
    members = _cgroup_members(path)
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as file:
            file.write("1")
    except OSError:
        # Kernels before 5.14 and cgroup v1 have no cgroup.kill: signal each member.
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    _wait_gone(members)


def _wait_gone(pids: set[int]) -> None:
    """Wait (at most ``KILL_WAIT_SECONDS``) for killed processes to be gone. SIGKILL is
    delivered when a process next runs: on a busy host a scan can still see it."""
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        waiting = {pid for pid in waiting if _platform.is_alive(pid)}
        if waiting:
            time.sleep(0.01)


def kill_cgroup_except(path: str, keep: frozenset[str]) -> None:
    """``kill_cgroup`` for everything in ``path`` but the cgroups in ``keep`` (held
    sessions'): the other child cgroups one by one, and the members of ``path``."""
    if not keep:
        kill_cgroup(path)
        return
    try:
        children = [entry.path for entry in os.scandir(path) if entry.is_dir()]
    except OSError:
        children = []
    for child in children:
        if child not in keep:
            kill_cgroup(child)
    members: set[int] = set()
    for pid in (_read(os.path.join(path, "cgroup.procs")) or b"").split():
        try:
            os.kill(int(pid), signal.SIGKILL)
            members.add(int(pid))
        except (OSError, ValueError):
            pass
    _wait_gone(members)


def parse_held(line: str, held: dict[str, str]) -> bool:
    """Apply a held-session line (``h<tag>\\t<cgroup>\\t<memory cgroup>`` or ``u<tag>``)
    to ``held`` (tag -> its cgroups, tab-separated); ``False`` if it is not one."""
    if line.startswith("h"):
        tag, _, cgroup = line[1:].partition("\t")
        held[tag] = cgroup
        return True
    if line.startswith("u"):
        held.pop(line[1:], None)
        return True
    return False


def remove_cgroup(path: str, *, patience: float = 2.0) -> None:
    """Remove a cgroup directory tree, deepest first, once its killed members are
    gone (a cgroup stays busy for the moment its processes take to exit)."""
    deadline = time.monotonic() + patience
    for root, _dirs, _files in os.walk(path, topdown=False):
        while True:
            try:
                os.rmdir(root)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)  # a bounded wait for the kernel to finish the kill


def kill_all(
    tag: str, *, exact: bool = False, rounds: int = 20, keep: frozenset[str] = frozenset()
) -> int:
    """SIGKILL matching processes; scan again (a process may have forked while
    we looked) until a scan finds none, at most ``rounds`` times. Processes whose
    tag starts with one in ``keep`` (held sessions') are left alone."""
    killed: set[int] = set()
    for _ in range(rounds):
        pids = find_processes(tag, exact=exact)
        if keep:
            kept = {pid for prefix in keep for pid in find_processes(prefix)}
            pids = [pid for pid in pids if pid not in kept]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
    # Return once they are gone (bounded), so "killed" means dead.
    _wait_gone(killed)
    return len(killed)


#: The longest ``kill_all`` waits for what it killed to be gone.
KILL_WAIT_SECONDS = 5.0


def main(argv: list[str]) -> int:
    """The watchdog: wait for the agent to go (EOF on stdin), then clean up.

    While it waits, the agent tells it about session working directories, one
    line each: ``+PATH`` (created) and ``-PATH`` (removed or to be kept). Those
    still listed when the agent is gone are removed after its processes. Sessions
    whose launchers hold them through the agent's death (``h<tag>\\t<cgroups>``,
    until ``u<tag>``) are left to their launchers.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    tag = argv[1]
    cgroup = argv[2] if len(argv) > 2 else ""
    registration = argv[3] if len(argv) > 3 else ""
    # A cgroup v1 memory hierarchy's root of ours (``_memcg.py``), if any.
    memcg = argv[4] if len(argv) > 4 else ""
    lock = None
    if registration:
        # Held (shared) while we live: the next agent leaves this instance to us.
        try:
            import fcntl

            lock = open(registration, "rb")  # noqa: SIM115
            fcntl.flock(lock, fcntl.LOCK_SH)
        except OSError:
            lock = None
    directories: set[str] = set()
    held: dict[str, str] = {}
    pending = b""
    try:
        while chunk := os.read(0, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                path = line[1:].decode("utf-8", "surrogateescape")
                if line.startswith(b"+"):
                    directories.add(path)
                elif line.startswith(b"-"):
                    directories.discard(path)
                else:
                    parse_held(line.decode("utf-8", "surrogateescape"), held)
    except OSError:
        pass
    # Held sessions' cgroups (their launchers end them) stay; the rest go.
    keep = frozenset(path for paths in held.values() for path in paths.split("\t") if path)
    for root in (cgroup, memcg):
        if root:
            kill_cgroup_except(root, keep)
    kill_all(tag, keep=frozenset(held))
    for root in (cgroup, memcg):
        if root and not held:
            remove_cgroup(root)
    for path in directories:
        shutil.rmtree(path, ignore_errors=True)
    if lock is not None:
        # Cleaned up: nothing is left for a later agent to end.
        try:
            os.unlink(registration)
        except OSError:
            pass
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
