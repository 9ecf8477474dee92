"""Memory cgroups: where the host has them, the kernel holds an action's memory limit
and counts its peak (issue 14), instead of the launcher's sampling.

Each session's launcher (``_launcher.py``) gets a memory cgroup of its own before it
starts anything, so every action it starts is charged there:

- **cgroup v2** with the ``memory`` controller available to ours: the session's
  cgroup below ``farmhand-<instance>`` (see ``_contain.py``) is the launcher's memory
  cgroup too, once ``+memory`` is in ``farmhand-<instance>``'s ``subtree_control``;
- **cgroup v1** with a writable ``memory`` hierarchy (hosts still on v1, and sandboxes
  that mount v1 controllers beside an empty v2 tree): ``farmhand-<instance>/l<pid>``
  below our own memory cgroup, one per launcher, removed with it.

For each action the launcher sets the limit (``memory.max``; v1
``memory.limit_in_bytes``; written only when it changes), resets the peak
(``memory.peak``, per open file, Linux 6.12 and later; v1
``memory.max_usage_in_bytes``) and, under a limit, notes the count of OOM kills
(``memory.events``; v1 ``memory.oom_control``): a kill in the cgroup while the
action ran is the kernel holding its limit. The launcher keeps these files open
from one action to the next (``_launchusage.MemoryCgroup``). Pages already charged when the launcher
joins stay with the cgroup they were charged to, so the launcher's own start is
not counted.

The cgroup counts what the kernel counts: anonymous memory and the page cache the
action's files brought in (which the kernel reclaims before it kills anything).
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import structlog

from . import _platform, _watchdog

log = structlog.get_logger("farmhand.memcg")


@attrs.frozen
class MemoryCgroupRoot:
    """Where the sessions' memory cgroups go: ``path`` is ``farmhand-<instance>``."""

    path: Path
    #: 1 or 2: which cgroup version's files.
    version: int

    def launcher_cgroup(self, pid: int) -> Path:
        """A v1 launcher's own memory cgroup (v2 launchers use their session's)."""
        return self.path / f"l{pid}"


def mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, file system type, super options) of each mount."""
    found: list[tuple[str, str, str]] = []
    try:
        with open("/proc/self/mountinfo") as file:
            for line in file:
                left, _, right = line.partition(" - ")
                fields = right.split()
                if len(fields) >= 3:
                    found.append((left.split()[4], fields[0], fields[2]))
    except OSError:
        pass
    return found


def memory_v1_mount() -> Path | None:
    """The cgroup v1 hierarchy that has the ``memory`` controller, if one is mounted."""
    for point, kind, options in mountinfo():
        if kind == "cgroup" and "memory" in options.split(","):
            return Path(point)
    return None


def own_memory_v1_cgroup() -> Path | None:
    """Our process's cgroup in the v1 ``memory`` hierarchy."""
    mount = memory_v1_mount()
    if mount is None:
        return None
    try:
        with open("/proc/self/cgroup") as file:
            for line in file:
                _number, controllers, path = line.rstrip("\n").split(":", 2)
                if "memory" in controllers.split(","):
                    return mount / path.lstrip("/")
    except (OSError, ValueError):
        pass
    return None


def _has_v2_memory(root: Path) -> bool:
    """Whether ``root`` (ours, with no processes) can give its children ``memory.*``."""
    try:
        if "memory" not in (root / "cgroup.controllers").read_text().split():
            return False
        (root / "cgroup.subtree_control").write_text("+memory")
    except OSError as exc:
        log.debug("memcg.no_v2_memory", path=str(root), error=str(exc))
        return False
    return True


def make_memory_root(instance: str, v2_root: Path | None) -> MemoryCgroupRoot | None:
    """The memory cgroups' root for this instance (made here for v1), or ``None`` where
    the host gives us no memory controller to write: the launcher samples then."""
    if not _platform.use_proc():
        return None
    if v2_root is not None and _has_v2_memory(v2_root):
        return MemoryCgroupRoot(v2_root, 2)
    parent = own_memory_v1_cgroup()
    if parent is None:
        return None
    root = parent / f"farmhand-{instance}"
    try:
        root.mkdir()
        # A v1 memory cgroup that does not count its children's use would hold nothing.
        if (root / "memory.use_hierarchy").read_text().strip() != "1":
            root.rmdir()
            return None
    except OSError as exc:
        log.debug("memcg.no_v1_memory", path=str(root), error=str(exc))
        return None
    return MemoryCgroupRoot(root, 1)


def plausible_root(text: str, mount: Path | None) -> str | None:
    """``text`` (from a registration) if it is one of our roots (``farmhand-*``) below
    ``mount``, else ``None``."""
    path = Path(text)
    if not text or mount is None or not path.is_absolute() or ".." in path.parts:
        return None
    if not path.name.startswith("farmhand-") or not path.is_relative_to(mount):
        return None
    return text


def plausible_v1_root(text: str) -> str | None:
    """A v1 memory root from a registration, if it is one of ours in the hierarchy."""
    return plausible_root(text, memory_v1_mount())


def remove_launcher_cgroup(path: Path) -> None:
    """Remove a v1 launcher's memory cgroup once the launcher has gone (its processes
    are gone with it; a cgroup stays busy for the moment the last one takes to exit)."""
    _watchdog.remove_cgroup(os.fspath(path), patience=1.0)
