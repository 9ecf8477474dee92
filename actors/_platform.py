"""What containment asks of the operating system, behind one interface.

Linux has the fast, exact answers: ``/proc`` (every process's parent, state
and environment), pidfds, ``pipe2`` and a child subreaper (``prctl``).
Elsewhere (macOS, the BSDs) the POSIX fallback answers the same questions
with what every Unix has: ``ps -A -o pid= -o ppid= -o stat=`` for the process
table, polling for a process's end, ``pipe`` plus ``fcntl``, and no
subreaper, so a process that leaves its process group and whose parent dies
is found only by its tag, and only where ``ps`` shows environments (macOS
``ps -E`` for the agent's own user or as root).

``FARMHAND_POSIX_FALLBACK=1`` in the environment makes Linux use the fallback
too: that is how the fallback is tested on Linux (tests/actors/test_platform.py).

This module is loaded by file path from the launcher and the watchdog (which
run as ``python -I -S`` scripts), so it imports only the standard library.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

FALLBACK_VARIABLE = "FARMHAND_POSIX_FALLBACK"
_PR_SET_CHILD_SUBREAPER = 36


def use_proc() -> bool:
    """Whether ``/proc`` is there to be read (and the fallback is not forced)."""
    return os.environ.get(FALLBACK_VARIABLE, "") not in ("1", "true") and os.path.isdir(
        "/proc/self"
    )


def _proc_read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None


def _stat_fields(pid: str) -> list[bytes] | None:
    """``/proc/PID/stat`` after the command name: state, ppid, ..."""
    data = _proc_read(f"/proc/{pid}/stat")
    if data is None:
        return None
    return data[data.rfind(b")") + 2 :].split()


def process_table() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, state letter: ``R``, ``S``, ``Z``...)."""
    table: dict[int, tuple[int, str]] = {}
    if use_proc():
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            fields = _stat_fields(entry.name)
            if fields and len(fields) >= 2:
                table[int(entry.name)] = (int(fields[1]), fields[0].decode())
        return table
    try:
        output = subprocess.run(
            ["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "stat="],
            capture_output=True,
            check=False,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return table
    for line in output.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = (int(parts[1]), parts[2][:1])
    return table


def processes_of_user(uid: int) -> list[int]:
    """Every process running as ``uid`` (its effective user)."""
    if use_proc():
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid == uid:
                        found.append(int(entry.name))
                except OSError:
                    continue  # gone meanwhile
        return found
    try:
        output = subprocess.run(
            ["ps", "-A", "-o", "pid=", "-o", "uid="], capture_output=True, check=False, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = (line.split() for line in output.decode(errors="replace").splitlines())
    return [int(r[0]) for r in rows if len(r) == 2 and r[0].isdigit() and r[1] == str(uid)]


def live_children() -> dict[int, list[int]]:
    """The tree of live (not zombie) processes as parent -> children."""
    tree: dict[int, list[int]] = {}
    for pid, (ppid, state) in process_table().items():
        if state not in ("Z", "X"):
            tree.setdefault(ppid, []).append(pid)
    return tree


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    if use_proc():
        fields = _stat_fields(str(pid))
        return fields is not None and len(fields) > 0 and fields[0][:1] not in (b"Z", b"X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's: it exists
    entry = process_table().get(pid)
    return entry is not None and entry[1] not in ("Z", "X")


def tagged_processes(needle: bytes, *, exact: bool) -> list[int]:
    """Live processes whose environment has an entry equal to ``needle`` (or starting
    with it, unless ``exact``). The fallback finds only what ``ps -E`` shows."""
    own = os.getpid()
    found: list[int] = []

    def matches(items: list[bytes]) -> bool:
        return any(item == needle or (not exact and item.startswith(needle)) for item in items)

    if use_proc():
        for entry in os.scandir("/proc"):
            name = entry.name
            if not name.isdigit() or int(name) == own:
                continue
            fields = _stat_fields(name)
            if not fields or fields[0][:1] in (b"Z", b"X"):
                continue
            environ = _proc_read(f"/proc/{name}/environ")
            if environ is not None and matches(environ.split(b"\0")):
                found.append(int(name))
        return found
    # BSD/macOS: -E appends the environment to the command (of the user's own
    # processes, or all as root); procps (Linux): the "e" option does the same.
    output = b""
    for argv in (
        ["ps", "-A", "-E", "-ww", "-o", "pid=", "-o", "command="],
        ["ps", "eww", "-A", "-o", "pid=", "-o", "command="],
    ):
        try:
            result = subprocess.run(argv, capture_output=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0:
            output = result.stdout
            break
    for line in output.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit() and int(parts[0]) != own and matches(parts[1:]):
            found.append(int(parts[0]))
    return found


def tree_rss(pid: int) -> int | None:
    """Resident bytes of every process below ``pid`` (not ``pid`` itself); ``None``
    without /proc (the fallback has no cheap way to it)."""
    found = tree_memory(pid)
    return None if found is None else found[0]


def tree_memory(pid: int) -> tuple[int, int, int] | None:
    """``(total, largest pid, its bytes)``: the resident memory of every process below
    ``pid`` (not ``pid`` itself), found through ``/proc/<pid>/task/<tid>/children``;
    ``None`` without /proc."""
    if not use_proc():
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    largest, largest_size = 0, -1
    stack = _children(pid)
    seen: set[int] = set()
    while stack:
        child = stack.pop()
        if child in seen:
            continue
        seen.add(child)
        statm = _proc_read(f"/proc/{child}/statm")
        if statm is None:
            continue  # gone meanwhile
        fields = statm.split()
        if len(fields) > 1:
            size = int(fields[1]) * page
            total += size
            if size > largest_size:
                largest, largest_size = child, size
        stack.extend(_children(child))
    return total, largest, max(largest_size, 0)


def tree_pids(pid: int) -> list[int]:
    """Every process below ``pid`` (not ``pid`` itself), through /proc's children
    files; ``[]`` without /proc."""
    if not use_proc():
        return []
    found: list[int] = []
    stack = _children(pid)
    while stack:
        child = stack.pop()
        if child not in found:
            found.append(child)
            stack.extend(_children(child))
    return found


def process_name(pid: int) -> str:
    """The process's command name (``comm``), or ``"?"``."""
    data = _proc_read(f"/proc/{pid}/comm") if use_proc() else None
    return data.decode("utf-8", "replace").strip() if data else "?"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        data = _proc_read(f"/proc/{pid}/task/{tid}/children")
        if data:
            found.extend(int(child) for child in data.split())
    return found


def raise_oom_score(value: int) -> None:
    """Make this process (and what it starts) a likelier pick for the kernel's OOM
    killer than the agent; any process may raise its own score. No-op elsewhere."""
    try:
        with open("/proc/self/oom_score_adj", "w") as stream:
            stream.write(str(value))
    except OSError:
        pass


def become_subreaper() -> bool:
    """Make this process a child subreaper (Linux); whether it is one."""
    if not use_proc():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def nonblocking_pipe() -> tuple[int, int]:
    """A pipe whose ends are close-on-exec and non-blocking."""
    pipe2 = getattr(os, "pipe2", None)
    if pipe2 is not None and use_proc():
        read_end, write_end = pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        return read_end, write_end
    read_end, write_end = os.pipe()  # close-on-exec already (PEP 446)
    for fd in (read_end, write_end):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    return read_end, write_end


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (readable once it has exited), or ``None`` where the system
    has none (the caller polls ``is_alive``). ``OSError`` when the process is gone."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None or not use_proc():
        return None
    return int(pidfd_open(pid))


def unix_address(path: str) -> tuple[str, int | None]:
    """An address for ``path`` that bind and connect take (at most 107 bytes): a
    longer one goes through its directory's fd (``/proc/self/fd/N/NAME``, Linux),
    which the caller closes once bound or connected."""
    if len(os.fsencode(path)) < 100 or not os.path.isdir("/proc/self/fd"):
        return path, None
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{name}", fd


def listen_unix(path: str) -> socket.socket:
    """A unix socket listening at ``path`` (0600; a stale one there is replaced)."""
    import socket  # here: the watchdog, which loads this module too, needs none

    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address, fd = unix_address(path)
    mask = os.umask(0o177)
    try:
        listener.bind(address)
        listener.listen(4)
    except BaseException:
        listener.close()
        raise
    finally:
        os.umask(mask)
        if fd is not None:
            os.close(fd)
    return listener


def same_user(conn: socket.socket) -> bool:
    """Whether the peer runs as we do (or as root). Where the system cannot say,
    the socket's mode (0600, in a 0700 directory) is the check."""
    import socket
    import struct

    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return False
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())
