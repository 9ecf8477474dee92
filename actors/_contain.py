"""No orphaned processes: every process started for a session dies with it.

``Containment`` keeps the processes of each session findable:

- every action's environment carries
  ``FARMHAND_SESSION_TAG=<instance>/<session>/<action>``,
  which children inherit, also daemons that left the process group (and the
  process group itself is killed when an action is cancelled);
- each session's actions are started by its launcher (``_spawn.py``), a
  child subreaper: whatever they start stays below it, daemons included, and
  ``SessionLauncher.sweep()`` kills that whole tree;
- where a cgroup v2 subtree is writable, each session gets a cgroup below
  ``farmhand-<instance>``, and its launcher is moved into it before it starts
  anything, so every action is born inside; members of a cgroup cannot leave
  it on their own. (Moving each action's process from the agent once it has
  started would race with its first fork: a migration waits for an RCU grace
  period, several milliseconds, and a child forked meanwhile stays behind.)
- where a memory controller can be written (cgroup v2's, or a v1 ``memory``
  hierarchy), each launcher's actions are charged to a memory cgroup
  (``_memcg.py``): the kernel holds an action's memory limit and counts its peak.

``sweep(session)`` kills whatever of a session is still alive when it ends.

What this needs from the OS (the process table, process environments, pidfds,
the subreaper) is behind ``_platform``: Linux's ``/proc`` and ``prctl`` where
they exist, a POSIX fallback elsewhere (``ps``, polling, process groups; no
subreaper and no cgroups, so the tag is what finds a process that left its
group, where ``ps`` can show environments).

If the agent itself is killed (even with SIGKILL), a small watchdog process
(``_watchdog.py``, started in its own session and deaf to terminal signals)
sees its pipe from the agent close, kills every process carrying the
instance's tag and everything in its cgroups, removes the session working
directories it was told about, and exits.

If agent, launcher and watchdog are all killed at once, nobody is left to
clean up. So each instance registers itself when its watchdog starts: a file
``<instance>.lock`` in a private per-user directory
(``$TMPDIR/farmhand-instances-<uid>``), which the agent and its watchdog hold
a shared ``flock`` on while they live, and which lists the instance's cgroup
and its session directories. The next instance to start takes every
registration nobody holds any more (an exclusive lock succeeds only then) as
a previous incarnation's, ends what is left of it (tagged processes, its
cgroup, its session directories), logs what it ended, and removes the file.
Registrations are written under their final name only once locked, so a live
instance is never taken for a dead one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import IO

import attrs
import structlog
import trio

from . import _memcg, _platform, _watchdog
from ._paths import UnsafeDirectoryError, private_directory
from ._spawn import SessionLauncher
from ._watchdog import TAG_VARIABLE

log = structlog.get_logger("farmhand.contain")


def _cgroup2_mount() -> Path | None:
    if not _platform.use_proc():
        return None  # no /proc: no cgroups either (or the POSIX fallback is forced)
    for point, kind, _options in _memcg.mountinfo():
        if kind == "cgroup2":
            return Path(point)
    return None


def _own_cgroup() -> Path | None:
    mount = _cgroup2_mount()
    if mount is None:
        return None
    try:
        with open("/proc/self/cgroup") as file:
            for line in file:
                if line.startswith("0::"):
                    return mount / line[3:].strip().lstrip("/")
    except OSError:
        pass
    return None


def instances_directory() -> Path:
    """Where running instances register (see the module docstring)."""
    return Path(tempfile.gettempdir()) / f"farmhand-instances-{os.geteuid()}"


def _registration(
    directory: Path, instance: str, cgroup_root: Path | None, memory_root: Path | None
) -> IO[str]:
    """``<instance>.lock`` in ``directory``, held (shared) through the returned file.
    Written and locked under a temporary name first: a reaper never sees it unheld."""
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".new-", suffix=".lock")
    file = os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape")
    try:
        fcntl.flock(file, fcntl.LOCK_SH)
        file.write(f"cgroup {cgroup_root or ''}\n")
        if memory_root is not None:
            file.write(f"memcg {memory_root}\n")
        file.flush()
        os.rename(temporary, directory / f"{instance}.lock")
    except BaseException:
        file.close()
        Path(temporary).unlink(missing_ok=True)
        raise
    return file


def _plausible_cgroup(text: str) -> str | None:
    """A cgroup root from a registration, if it is one of ours under the cgroup2 mount."""
    return _memcg.plausible_root(text, _cgroup2_mount())


def reap_stale_instances(directory: Path | None = None) -> list[dict[str, object]]:
    """End what is left of instances whose agent and watchdog are both gone (see the
    module docstring); one report per instance ended, each also logged."""
    directory = directory or instances_directory()
    ended: list[dict[str, object]] = []
    try:
        names = sorted(entry.name for entry in os.scandir(directory))
    except OSError:
        return ended
    for name in names:
        if not name.endswith(".lock") or name.startswith("."):
            continue
        path = directory / name
        try:
            file = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        except OSError:
            continue
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: that instance is alive (or its watchdog is cleaning up)
            instance = name.removesuffix(".lock")
            cgroup = None
            memcg = None
            directories: set[str] = set()
            held: dict[str, str] = {}
            for line in file.read().splitlines():
                kind, _, value = line.partition(" ")
                if kind == "cgroup":
                    cgroup = _plausible_cgroup(value)
                elif kind == "memcg":
                    memcg = _memcg.plausible_v1_root(value)
                elif kind == "+":
                    directories.add(value)
                elif kind == "-":
                    directories.discard(value)
                elif kind in ("h", "u"):
                    _watchdog.parse_held(kind + value, held)
            populated = bool(cgroup) and Path(cgroup or "").exists()
            # Held sessions' cgroups (their launchers end them) stay; the rest go.
            keep = frozenset(p for paths in held.values() for p in paths.split("\t") if p)
            if cgroup and populated:
                _watchdog.kill_cgroup_except(cgroup, keep)
            if memcg and os.path.isdir(memcg):
                _watchdog.kill_cgroup_except(memcg, keep)
            killed = _watchdog.kill_all(f"{instance}/", keep=frozenset(held))
            if cgroup and populated and not held:
                _watchdog.remove_cgroup(cgroup)
            if memcg and not held:
                _watchdog.remove_cgroup(memcg)
            removed = [d for d in sorted(directories) if os.path.isdir(d)]
            for leftover in removed:
                shutil.rmtree(leftover, ignore_errors=True)
            path.unlink(missing_ok=True)
        report: dict[str, object] = {
            "instance": instance,
            "processes": killed,
            "cgroup": cgroup if populated else None,
            "directories": removed,
        }
        if killed or populated or removed:
            log.warning("contain.stale_instance_ended", **report)
        ended.append(report)
    return ended


@attrs.define
class _SpareLauncher:
    """A launcher started ahead of its session, in a cgroup of its own if any."""

    launcher: SessionLauncher
    cgroup: Path | None

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.launcher.aclose()
        self._remove_cgroup()

    def discard(self) -> None:
        """``aclose`` for synchronous clean-up paths."""
        self.launcher.discard()
        self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        if self.cgroup is not None:
            try:
                self.cgroup.rmdir()
            except OSError as exc:
                log.debug("contain.spare_cgroup_left", path=str(self.cgroup), error=str(exc))


#: How many launchers may wait for sessions (taken back from ended sessions, or
#: started ahead); more are closed.
SPARE_POOL = 2


class Containment:
    """See the module docstring."""

    def __init__(self, *, use_cgroup: bool = True, instance: str | None = None) -> None:
        self.instance = instance or uuid.uuid4().hex[:16]
        #: Launchers ready for the next sessions (see ``keep_spare_launcher``), newest last.
        self._spares: list[_SpareLauncher] = []
        #: Whether ``keep_spare_launcher`` runs (and so takes launchers back).
        self._keeping = False
        #: Each running session's launcher's cgroup (``None``: it is in none).
        self._launcher_cgroups: dict[str, Path | None] = {}
        #: The launcher (its pid) of each session that has one, for ``session_memory``.
        self._session_launchers: dict[str, int] = {}
        self._spare_taken = trio.Event()
        #: Set (and replaced) when a spare is put in place or the keeper stops.
        self._spare_ready = trio.Event()
        #: A spare is being started now.
        self._spare_coming = False
        #: The spare being started has its process (its cgroup moves may be under way).
        self._spare_spawned = False
        #: Set (and replaced) when a spare's process is started or the keeper stops.
        self._spare_spawn = trio.Event()
        self._spares_made = 0
        #: Sessions that took a spare launcher, and the cgroup it came in.
        self._claimed_cgroups: dict[str, Path] = {}
        #: Job users' uids -> how many sessions run as them now.
        self._user_sessions: dict[int, int] = {}
        self._cgroup_root: Path | None = self._make_cgroup_root() if use_cgroup else None
        #: Where launchers' memory cgroups are, if the host lets us write any.
        self._memory_root = (
            _memcg.make_memory_root(self.instance, self._cgroup_root) if use_cgroup else None
        )
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._registration: IO[str] | None = None
        self._registration_path: Path | None = None

    @property
    def cgroup_root(self) -> Path | None:
        return self._cgroup_root

    @property
    def memory_root(self) -> _memcg.MemoryCgroupRoot | None:
        return self._memory_root

    @property
    def _own_memory_root(self) -> Path | None:
        """The v1 memory root, ours to remove (a v2 one is ``cgroup_root``)."""
        root = self._memory_root
        return root.path if root is not None and root.version == 1 else None

    async def _join_memory_cgroup(self, launcher: SessionLauncher, cgroup: Path | None) -> None:
        """Charge a new launcher's actions to a memory cgroup, where there is one: its
        session cgroup (v2), or one of its own (v1). Without, it samples."""
        root = self._memory_root
        if root is None:
            return
        if root.version == 2:
            if cgroup is not None:
                await launcher.join_memory_cgroup(cgroup, 2, own=False)
            return
        path = root.launcher_cgroup(launcher.pid)
        try:
            path.mkdir()
        except OSError as exc:
            log.debug("contain.no_memory_cgroup", path=str(path), error=str(exc))
            return
        if not await launcher.join_memory_cgroup(path, 1, own=True):
            _memcg.remove_launcher_cgroup(path)

    def _make_cgroup_root(self) -> Path | None:
        parent = _own_cgroup()
        if parent is None:
            return None
        root = parent / f"farmhand-{self.instance}"
        try:
            root.mkdir()
        except OSError as exc:
            log.debug("contain.no_cgroup", path=str(root), error=str(exc))
            return None
        return root

    def tag(self, session_id: str) -> str:
        """The prefix of the tags of every process of a session."""
        return f"{self.instance}/{session_id}/"

    def action_environment(self, session_id: str, action: int) -> dict[str, str]:
        """The variable an action's processes carry: ``<instance>/<session>/<action>``."""
        return {TAG_VARIABLE: f"{self.tag(session_id)}{action}"}

    def _session_cgroup(self, session_id: str) -> Path | None:
        if self._cgroup_root is None:
            return None
        claimed = self._claimed_cgroups.get(session_id)
        if claimed is not None:
            return claimed
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in session_id)[:200]
        return self._cgroup_root / safe

    async def start_launcher(self, session_id: str) -> SessionLauncher | None:
        """Start the launcher of a session's actions, in the session's cgroup if any.

        ``None`` (with a warning) when it cannot be started: the actions are then
        started directly, and the tag and the cgroup are what finds their processes.
        """
        spare = await self._take_spare(session_id)
        if spare is not None:
            self._session_launchers[session_id] = spare.pid
            return spare
        cgroup = self._session_cgroup(session_id)
        if cgroup is not None:
            try:
                cgroup.mkdir(exist_ok=True)
            except OSError as exc:
                log.debug("contain.no_session_cgroup", path=str(cgroup), error=str(exc))
                cgroup = None
        try:
            launcher = await SessionLauncher.start()
        except OSError as exc:
            log.warning("contain.no_launcher", session_id=session_id, error=str(exc))
            return None
        if cgroup is not None and not await launcher.join_cgroup(cgroup / "cgroup.procs"):
            cgroup = None
        await self._join_memory_cgroup(launcher, cgroup)
        self._launcher_cgroups[session_id] = cgroup
        self._session_launchers[session_id] = launcher.pid
        return launcher

    def hold_user(self, uid: int) -> None:
        """A session runs as ``uid`` (see ``release_user``)."""
        self._user_sessions[uid] = self._user_sessions.get(uid, 0) + 1

    def release_user(self, uid: int) -> bool:
        """A session that ran as ``uid`` ended; whether no session runs as it any more."""
        left = self._user_sessions.get(uid, 1) - 1
        if left > 0:
            self._user_sessions[uid] = left
            return False
        self._user_sessions.pop(uid, None)
        return True

    @property
    def spare_pid(self) -> int | None:
        """The pid of the launcher the next session takes, if one is ready."""
        return self._spares[-1].launcher.pid if self._spares else None

    async def wait_spare_launcher(self) -> int:
        """Wait until a spare launcher is ready (see `keep_spare_launcher`, which must
        be running); the pid of the one the next session takes."""
        while not self._spares:
            await self._spare_ready.wait()
        return self._spares[-1].launcher.pid

    async def wait_spare_spawned(self) -> None:
        """Wait until the spare launcher's process is started (or the keeper, which must
        be running, has stopped): not for its moves into cgroups, which take the kernel
        a few milliseconds each in a thread and can overlap what the host does next.
        The session that takes it waits for those (``python -m agent run``: its farm
        and worker start meanwhile)."""
        while self._keeping and not self._spares and not self._spare_spawned:
            await self._spare_spawn.wait()

    def session_memory(self) -> dict[str, int]:
        """Resident bytes of each running session's processes (those below its
        launcher), for the host memory guard; empty without /proc."""
        sizes: dict[str, int] = {}
        for session_id, pid in list(self._session_launchers.items()):
            size = _platform.tree_rss(pid)
            if size is not None:
                sizes[session_id] = size
        return sizes

    async def _take_spare(self, session_id: str) -> SessionLauncher | None:
        """A spare launcher, its cgroup now the session's; ``None`` if there is none,
        or it could not join a cgroup where the session should have one."""
        if not self._spares and self._spare_coming:
            # On its way (sessions back to back): sooner, and one interpreter start
            # fewer, than a launcher of the session's own.
            await self._spare_ready.wait()
        if not self._spares:
            return None
        spare = self._spares.pop()
        self._spare_taken.set()
        if self._cgroup_root is not None:
            if spare.cgroup is None:
                await spare.aclose()
                return None
            # cgroup v2 cannot rename a cgroup, and moving a process waits an RCU
            # grace period: the session keeps the spare's cgroup under its name.
            self._claimed_cgroups[session_id] = spare.cgroup
        self._launcher_cgroups[session_id] = spare.cgroup
        return spare.launcher

    def recycle_launcher(self, session_id: str, launcher: SessionLauncher) -> bool:
        """Take back a session's launcher that swept everything below it, cleanly (so
        nothing of the session is left, in its cgroup either), as a spare for the
        next session: no interpreter to start, no cgroup to make or remove. ``False``
        (the caller closes it) unless ``keep_spare_launcher`` runs and fewer than
        ``SPARE_POOL`` spares wait."""
        cgroup = self._launcher_cgroups.pop(session_id, None)
        self._session_launchers.pop(session_id, None)
        if not self._keeping or len(self._spares) >= SPARE_POOL:
            return False
        if self._cgroup_root is not None and cgroup is None:
            return False  # not in a cgroup of its own: a session here should have one
        self._claimed_cgroups.pop(session_id, None)
        self._spares.append(_SpareLauncher(launcher, cgroup))
        self._announce_spare()
        return True

    async def keep_spare_launcher(
        self,
        *,
        sessions: int | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the next session's launcher started ahead, in a cgroup of its own that
        the session takes over, so a session waits neither for the
        launcher's interpreter to start nor for a cgroup migration (together about
        20 ms); and take a session's launcher back at its end (``recycle_launcher``)
        for a later one, so sessions one after another start no interpreter at all.
        For hosts that run many short sessions (the one-job adapters), and for a
        host that knows how many sessions it will run (``sessions``: no launcher is
        started ahead beyond them; ``python -m agent run`` runs one, and starts its
        launcher while the farm and the worker start). It costs an idle process or
        two. Run it in the host's nursery; cancelled, it ends the spares."""
        self._keeping = True
        task_status.started()
        started = 0
        try:
            while True:
                if not self._spares and (sessions is None or started < sessions):
                    started += 1
                    self._spare_coming = True
                    try:
                        spare = await self._make_spare()
                    finally:
                        self._spare_coming = self._spare_spawned = False
                    if spare is None:
                        return  # launchers cannot be started here: sessions say so
                    self._spares.append(spare)
                    self._announce_spare()
                await self._spare_taken.wait()
                self._spare_taken = trio.Event()
        finally:
            self._keeping = False
            spares, self._spares = self._spares, []
            self._announce_spare()
            self._announce_spawn()
            with trio.CancelScope(shield=True):
                for spare in spares:
                    await spare.aclose()

    def _announce_spare(self) -> None:
        self._spare_ready.set()
        self._spare_ready = trio.Event()

    def _announce_spawn(self) -> None:
        self._spare_spawn.set()
        self._spare_spawn = trio.Event()

    async def _make_spare(self) -> _SpareLauncher | None:
        try:
            launcher = await SessionLauncher.start()
        except OSError as exc:
            log.warning("contain.no_spare_launcher", error=str(exc))
            return None
        self._spare_spawned = True
        self._announce_spawn()
        cgroup: Path | None = None
        if self._cgroup_root is not None:
            self._spares_made += 1
            cgroup = self._cgroup_root / f".spare-{self._spares_made}"
            try:
                cgroup.mkdir()
                if not await launcher.join_cgroup(cgroup / "cgroup.procs"):
                    cgroup.rmdir()
                    cgroup = None
            except OSError as exc:
                log.debug("contain.no_spare_cgroup", path=str(cgroup), error=str(exc))
                cgroup = None
        await self._join_memory_cgroup(launcher, cgroup)
        return _SpareLauncher(launcher, cgroup)

    async def sweep(self, session_id: str, *, swept_below: bool = False) -> int:
        """Kill every process left of a session. Returns how many were signalled.

        Its cgroup holds every process of the session (none can leave it), and a
        launcher that swept (``swept_below``: a subreaper, nothing of its actions
        could get out from below it) held them too: the scan of every process's
        environment for the session's tag, the last resort, is made only where
        neither did."""
        cgroup = self._session_cgroup(session_id)

        def work() -> int:
            contained = False
            if cgroup is not None and cgroup.exists():
                _watchdog.kill_cgroup(str(cgroup))
                contained = True
            killed = 0 if contained or swept_below else _watchdog.kill_all(self.tag(session_id))
            if cgroup is not None:
                _watchdog.remove_cgroup(str(cgroup))
            return killed

        # /proc scans are quick, but not free on a busy host: keep them off the loop.
        killed = await trio.to_thread.run_sync(work)
        self._claimed_cgroups.pop(session_id, None)
        self._launcher_cgroups.pop(session_id, None)
        self._session_launchers.pop(session_id, None)
        if killed:
            log.info("contain.swept", session_id=session_id, processes=killed)
        return killed

    # ---- the watchdog

    def start_watchdog(self, *, registry: Path | None = None) -> None:
        """End what previous incarnations left (``reap_stale_instances``), register
        this instance, and start the process that cleans up if this one dies.
        Idempotent. ``registry``: where instances register (``instances_directory()``)."""
        if self._watchdog is not None:
            return
        directory = registry or instances_directory()
        try:
            private_directory(directory)
            reap_stale_instances(directory)
            self._registration = _registration(
                directory, self.instance, self._cgroup_root, self._own_memory_root
            )
            self._registration_path = directory / f"{self.instance}.lock"
        except (UnsafeDirectoryError, OSError) as exc:
            # Containment still works; only a later start cannot find our leftovers.
            log.warning("contain.not_registered", directory=str(directory), error=str(exc))
        argv = [
            sys.executable,
            "-I",
            "-S",
            _watchdog.__file__,
            self.instance,
            str(self._cgroup_root or ""),
            str(self._registration_path or ""),
            str(self._own_memory_root or ""),
        ]
        self._watchdog = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # no terminal signals: it must outlive us
            close_fds=True,
        )

    def track_directory(self, path: Path) -> None:
        """Have the watchdog remove ``path`` if we die before we remove it (and the
        next instance, if the watchdog dies with us)."""
        self._tell_watchdog(b"+" + os.fsencode(path))
        self._register_line(f"+ {path}")

    def untrack_directory(self, path: Path) -> None:
        self._tell_watchdog(b"-" + os.fsencode(path))
        self._register_line(f"- {path}")

    def hold_session(self, session_id: str, directory: Path, launcher: SessionLauncher) -> None:
        """The session's launcher holds it should we die (``SessionLauncher.hold``):
        the watchdog, and a later agent ending this instance's leftovers, leave its
        processes, its cgroups and its working directory to the launcher."""
        tag = self.tag(session_id)
        cgroup = self._launcher_cgroups.get(session_id)
        memory = launcher.memory_cgroup[0] if launcher.memory_cgroup is not None else None
        line = f"{tag}\t{cgroup or ''}\t{memory or ''}"
        self._tell_watchdog(b"h" + os.fsencode(line))
        self._register_line(f"h {line}")
        self.untrack_directory(directory)

    def adopt_launcher(self, session_id: str, launcher: SessionLauncher) -> None:
        """A session taken over from an earlier agent: its launcher counts as the
        session's (``session_memory``)."""
        self._session_launchers[session_id] = launcher.pid

    def release_session(self, session_id: str, directory: Path) -> None:
        """Undo ``hold_session``: the session is ours to end again."""
        tag = self.tag(session_id)
        self._tell_watchdog(b"u" + os.fsencode(tag))
        self._register_line(f"u {tag}")
        self.track_directory(directory)

    def _register_line(self, line: str) -> None:
        registration = self._registration
        if registration is None or "\n" in line:
            return
        try:
            registration.write(line + "\n")
            registration.flush()
        except (OSError, ValueError):
            pass

    def _tell_watchdog(self, line: bytes) -> None:
        watchdog = self._watchdog
        if watchdog is None or watchdog.stdin is None or b"\n" in line:
            return
        try:
            watchdog.stdin.write(line + b"\n")
            watchdog.stdin.flush()
        except (BrokenPipeError, ValueError):
            log.warning("contain.watchdog_gone")

    @property
    def watchdog_pid(self) -> int | None:
        return self._watchdog.pid if self._watchdog is not None else None

    def close(self) -> None:
        """Normal exit: let the watchdog sweep what is left, and remove our cgroups."""
        spares, self._spares = self._spares, []
        for spare in spares:  # keep_spare_launcher was not cancelled first
            spare.discard()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.stdin is not None:
            watchdog.stdin.close()
            try:
                watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()
        else:
            for root in (self._cgroup_root, self._own_memory_root):
                if root is not None:
                    _watchdog.kill_cgroup(str(root))
            if self._cgroup_root is not None or self._own_memory_root is not None:
                _watchdog.kill_all(self.instance)
        for root in (self._cgroup_root, self._own_memory_root):
            if root is not None:
                _watchdog.remove_cgroup(str(root))
        registration, self._registration = self._registration, None
        if registration is not None:
            if self._registration_path is not None:
                self._registration_path.unlink(missing_ok=True)
            registration.close()
