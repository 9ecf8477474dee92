"""What an action's processes cost, as its session's launcher (``_launcher.py``)
measures it: CPU time from what it reaps, the peak memory of everything below it
(sampled from ``/proc``, or counted by the launcher's memory cgroup: ``_memcg.py``),
and GPU memory from ``nvidia-smi``.

Loaded by the launcher as a script's sibling, so it imports only the standard library
and ``_platform``, nothing else from the package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types


def _load_platform() -> types.ModuleType:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import _platform  # type: ignore[import-not-found,unused-ignore]
    finally:
        del sys.path[0]
    module: types.ModuleType = _platform
    return module


if __package__:
    from . import _platform
else:  # pragma: no cover - loaded by the launcher's own process
    _platform = _load_platform()

#: Seconds between samples of the memory of everything below us while an action runs.
SAMPLE_SECONDS = 0.5
#: The same, when a memory limit is to be held (a runaway has less time to grow).
LIMIT_SAMPLE_SECONDS = 0.1
#: Seconds between GPU samples while an action runs, where there is ``nvidia-smi``
#: (one run costs tens of milliseconds of CPU). ``FARMHAND_GPU_SAMPLE_SECONDS``
#: in the agent's environment changes it; 0 turns GPU sampling off.
GPU_SAMPLE_SECONDS = 10.0
#: The first GPU sample of an action comes this soon after it starts.
GPU_FIRST_SAMPLE_SECONDS = 0.5
#: ``ru_maxrss`` is in KiB on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


class Usage:
    """What an action's processes cost, for its exit report: CPU time of everything
    reaped while it ran (the action, with the children it waited for, and whatever
    was handed to us and ended), the largest single process (``ru_maxrss``), and
    the peak of the memory of everything below us, sampled every
    ``SAMPLE_SECONDS`` (the whole tree: several processes at once count together)."""

    def __init__(self, limit: int | None = None, cgroup: MemoryCgroup | None = None) -> None:
        #: Bytes the session's processes may use together (``None``: no limit).
        self.limit = limit
        #: The launcher's memory cgroup, armed for this action (``None``: sampling only).
        self.cgroup = cgroup if cgroup is not None and cgroup.arm(limit) else None
        #: The largest process the last sample found: (pid, name, bytes).
        self.last_largest: tuple[int, str, int] | None = None
        #: Set when they went over it: what to tell the agent.
        self.exceeded: dict[str, object] | None = None
        self.user = 0.0
        self.system = 0.0
        self.largest = 0
        self.tree = 0
        self.sampled = False
        #: The first sample: at once where only samples measure the tree; after the
        #: usual interval where a cgroup counts its peak (and the kernel holds the
        #: limit), as a sample taken as the action starts finds nothing to count.
        self.next_sample = time.monotonic() + (self.interval if self.cgroup is not None else 0.0)
        #: Peak GPU memory of the session's processes (``None``: not sampled).
        self.gpu: int | None = None
        self.next_gpu_sample = time.monotonic() + GPU_FIRST_SAMPLE_SECONDS

    @property
    def interval(self) -> float:
        """Seconds between samples."""
        return SAMPLE_SECONDS if self.limit is None else LIMIT_SAMPLE_SECONDS

    @property
    def watching_kernel(self) -> bool:
        """Whether the kernel holds a limit for this action (its cgroup's)."""
        return self.cgroup is not None and self.limit is not None

    def add(self, rusage: object, pid: int = 0, name: str | None = None) -> None:
        self.user += getattr(rusage, "ru_utime", 0.0)
        self.system += getattr(rusage, "ru_stime", 0.0)
        size = int(getattr(rusage, "ru_maxrss", 0)) * _MAXRSS_UNIT
        self.largest = max(self.largest, size)
        if name is None:
            return
        # Larger than any process a sample saw: most likely what the kernel killed
        # (which may have been heard of before its exit was).
        over = self.exceeded
        if over is not None and over.get("by") == "kernel":
            largest = over.get("largest")
            if size > (largest if isinstance(largest, int) else 0):
                over.update(pid=pid, name=name, largest=size)
            return
        known = self.last_largest
        if known is None or size > known[2]:
            self.last_largest = (pid, name, size)

    def sample(self, me: int) -> bool:
        """Measure; ``True`` when the limit has just been passed."""
        found = _platform.tree_memory(me)
        self.next_sample = time.monotonic() + self.interval
        if found is None:
            return False
        size, largest, largest_size = found
        self.sampled = True
        self.tree = max(self.tree, size)
        if self.limit is None or self.exceeded is not None:
            return False
        if self.cgroup is not None:
            # The kernel holds the limit: it kills in the cgroup when it is reached.
            known = self.last_largest
            if largest_size and (known is None or known[0] == largest or largest_size > known[2]):
                # Named now: it may be gone when the kernel is heard of.
                self.last_largest = (largest, _platform.process_name(largest), largest_size)
            return self.check_kernel_kill()
        if size <= self.limit:
            return False
        self.exceeded = {
            "limit": self.limit,
            "used": size,
            "pid": largest,
            "name": _platform.process_name(largest),
            "largest": largest_size,
            "by": "farmhand",
        }
        return True

    def check_kernel_kill(self) -> bool:
        """Whether the kernel has just killed in the cgroup for its limit (the rest of
        the action is then to be killed, as it would be at the sampler's limit)."""
        cgroup = self.cgroup
        if cgroup is None or self.limit is None or self.exceeded is not None:
            return False
        if not cgroup.oom_killed():
            return False
        pid, name, size = self.last_largest or (None, "?", None)
        self.exceeded = {
            "limit": self.limit,
            "used": cgroup.peak() or self.limit,
            "pid": pid,
            "name": name,
            "largest": size,
            "by": "kernel",
        }
        return True

    def report(self) -> dict[str, object]:
        # The kernel may have killed the action's own process between two samples.
        self.check_kernel_kill()
        counted = self.cgroup.peak() if self.cgroup is not None else None
        report: dict[str, object] = {
            "user": round(self.user, 6),
            "system": round(self.system, 6),
            # What the cgroup counted where there is one (what its limit holds);
            # else the sampled tree's, at least its largest process's.
            "peak_rss": counted if counted is not None else max(self.largest, self.tree),
            "sampled": self.sampled,
        }
        if counted is not None:
            report["cgroup"] = True
        if self.gpu is not None:
            report["peak_gpu"] = self.gpu
        if self.exceeded is not None:
            report["memory_limit"] = self.exceeded
        return report


def parse_compute_apps(text: str) -> dict[int, int]:
    """What ``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``
    prints, as pid -> bytes. A process on several GPUs has a line on each (summed);
    ``[N/A]`` (no figure, as under MIG) counts as 0; anything else is skipped."""
    used: dict[int, int] = {}
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not fields[0].isdigit():
            continue
        try:
            mib = 0.0 if fields[1].startswith("[") else float(fields[1])
        except ValueError:
            continue
        pid = int(fields[0])
        used[pid] = used.get(pid, 0) + int(mib * 2**20)
    return used


class GpuSampler:
    """The GPU memory the session's processes hold, from ``nvidia-smi``."""

    def __init__(self, program: str, interval: float) -> None:
        self.program = program
        self.interval = interval

    @classmethod
    def find(cls) -> GpuSampler | None:
        """One where ``nvidia-smi`` is on the PATH and sampling is not turned off."""
        try:
            interval = float(os.environ.get("FARMHAND_GPU_SAMPLE_SECONDS", GPU_SAMPLE_SECONDS))
        except ValueError:
            interval = GPU_SAMPLE_SECONDS
        if interval <= 0:
            return None
        for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
            candidate = os.path.join(directory or ".", "nvidia-smi")
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return cls(candidate, interval)
        return None

    def used_by(self, pids: set[int]) -> int | None:
        """Bytes of GPU memory ``pids`` hold together; ``None`` if nvidia-smi failed."""
        argv = [self.program, "--query-compute-apps=pid,used_memory"]
        argv.append("--format=csv,noheader,nounits")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        used = parse_compute_apps(done.stdout)
        return sum(size for pid, size in used.items() if pid in pids)


#: By cgroup version: its limit's, peak's and events' files, and what means no limit.
CGROUP_FILES = {
    1: ("memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.oom_control", "-1"),
    2: ("memory.max", "memory.peak", "memory.events", "max"),
}


class MemoryCgroup:
    """The launcher's memory cgroup (made and joined by the agent: ``_memcg.py``):
    per action, the limit written, the peak reset, the OOM kills counted.

    One per launcher, armed for each action (``Launcher.cgroup_for``): the limit is
    written only when it changes (nothing else writes it), and the peak and events
    files stay open, to be reset and read again, so an action's start and exit
    cost a write and a read or two rather than opening three files."""

    def __init__(self, path: str, version: int) -> None:
        self.path = path
        self.version = version
        self.limit_file, self.peak_file, self.events_file, self.unlimited = CGROUP_FILES[version]
        #: The open peak file (v2 ``memory.peak``: its peak is per open file), reset
        #: at each arm.
        self.peak_fd: int | None = None
        #: The peak could not be reset: ``peak`` has none to give (before Linux 6.12,
        #: which is so for every action).
        self.peak_unknown = False
        #: The open events file (``None``: not opened yet, or it could not be).
        self.events_fd: int | None = None
        #: What the limit file was last set to here (``None``: not yet, or unknown).
        self.limit_written: str | None = None
        self.kills_before = 0

    @classmethod
    def from_request(cls, value: object) -> MemoryCgroup | None:
        if not isinstance(value, list) or len(value) != 2:
            return None
        path, version = value
        if not isinstance(path, str) or version not in CGROUP_FILES:
            return None
        return cls(path, version)

    def same_as(self, value: object) -> bool:
        """Whether a spawn's ``memory_cgroup`` names this one."""
        return value == [self.path, self.version]

    def _write(self, name: str, text: str) -> None:
        with open(os.path.join(self.path, name), "w") as file:
            file.write(text)

    def arm(self, limit: int | None) -> bool:
        """Set for an action; ``False`` (sample instead) where a file would not take it."""
        text = str(limit) if limit is not None else self.unlimited
        if text != self.limit_written:
            self.limit_written = None
            try:
                self._write(self.limit_file, text)
            except OSError:
                return False
            self.limit_written = text
        if not self.peak_unknown:
            try:
                if self.peak_fd is None:
                    path = os.path.join(self.path, self.peak_file)
                    self.peak_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                # v2: Linux 6.12+, this open file's own peak; v1: the cgroup's.
                os.write(self.peak_fd, b"0" if self.version == 1 else b"reset\n")
            except OSError:
                # No peak of the action's own (before 6.12): the samples measure it.
                self.close()
                self.peak_unknown = True
        # Only a limit is watched for kills (``Usage.check_kernel_kill``).
        self.kills_before = self.oom_kills() if limit is not None else 0
        return True

    def close(self) -> None:
        if self.peak_fd is not None:
            os.close(self.peak_fd)
            self.peak_fd = None
        if self.events_fd is not None:
            os.close(self.events_fd)
            self.events_fd = None

    def oom_kills(self) -> int:
        try:
            if self.events_fd is None:
                path = os.path.join(self.path, self.events_file)
                self.events_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            text = os.pread(self.events_fd, 4096, 0).decode()
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def oom_killed(self) -> bool:
        return self.oom_kills() > self.kills_before

    def peak(self) -> int | None:
        """Bytes at the most the cgroup held since ``arm``."""
        if self.peak_unknown:
            return None
        try:
            if self.peak_fd is not None:
                return int(os.pread(self.peak_fd, 64, 0))
        except (OSError, ValueError):
            pass
        return None
