"""Leftovers of a previous incarnation: when agent, launcher and watchdog are all
killed at once, the next agent to start ends what is left of the old sessions
(issue 19)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from actors._contain import Containment, reap_stale_instances

ROOT = Path(__file__).resolve().parents[2]

#: A task that leaves a daemon behind (double fork, own session), then waits.
TASK = """
import os, sys, time
out = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(out, 'w') as fifo:
            fifo.write(f'daemon {os.getpid()}\\n')
        time.sleep(600)
    os._exit(0)
with open(out, 'w') as fifo:
    fifo.write(f'task {os.getpid()}\\n')
time.sleep(600)
"""


def _read_pids(fifo: Path) -> dict[str, int]:
    """What the task and its daemon write to ``fifo``, each when it is running."""
    pids: dict[str, int] = {}
    while len(pids) < 2:
        with fifo.open() as lines:
            for line in lines:
                name, pid = line.split()
                pids[name] = int(pid)
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_new_start_ends_what_a_killed_agent_launcher_and_watchdog_left(
    tmp_path: Path,
) -> None:
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "leftovers",
        "steps": [
            {
                "name": "S",
                "script": {
                    "actions": {
                        "onRun": {
                            "command": sys.executable,
                            "args": ["-c", TASK, str(tmp_path / "fifo")],
                        }
                    }
                },
            }
        ],
    }
    (tmp_path / "job.json").write_text(json.dumps(template))
    os.mkfifo(tmp_path / "fifo")
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", str(tmp_path / "job.json"), "--direct"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pids: dict[str, int] = {}
        reader = threading.Thread(
            target=lambda: pids.update(_read_pids(tmp_path / "fifo")), daemon=True
        )
        reader.start()
        reader.join(60)
        task, daemon = pids["task"], pids["daemon"]
        helpers = _children(agent.pid)
        kinds = sorted(
            "launcher" if "_launcher.py" in _cmdline(pid) else "watchdog"
            for pid in helpers
            if "_launcher.py" in _cmdline(pid) or "_watchdog.py" in _cmdline(pid)
        )
        assert kinds == ["launcher", "watchdog"], [_cmdline(pid) for pid in helpers]
        # All at once: nobody is left to clean up. Stopped first, so the watchdog
        # cannot see the agent die and end the session before its own kill lands.
        for pid in (agent.pid, *helpers):
            os.kill(pid, signal.SIGSTOP)
        for pid in (agent.pid, *helpers):
            os.kill(pid, signal.SIGKILL)
        agent.wait()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    registry = tmp_path / f"farmhand-instances-{os.geteuid()}"
    sessions = tmp_path / f"farmhand-sessions-{os.geteuid()}"
    assert _alive(task) and _alive(daemon)
    [leftover] = list(sessions.iterdir())
    [registration] = list(registry.glob("*.lock"))
    lines = registration.read_text().splitlines()
    cgroup = lines[0].removeprefix("cgroup ")
    # A cgroup v1 memory root (``_memcg.py``), where the host has one to write.
    memcgs = [line.removeprefix("memcg ") for line in lines if line.startswith("memcg ")]
    assert all(Path(memcg).is_dir() for memcg in memcgs)

    # The next agent starts: its containment ends what the old one left.
    containment = Containment(use_cgroup=False)
    try:
        containment.start_watchdog(registry=registry)
        assert not _alive(task) and not _alive(daemon)
        assert not leftover.exists()
        assert not registration.exists()
        assert not cgroup or not Path(cgroup).exists()
        assert not any(Path(memcg).exists() for memcg in memcgs)
        # ... and it registered itself, held, so a third start leaves it alone.
        assert (registry / f"{containment.instance}.lock").exists()
        assert reap_stale_instances(registry) == []
    finally:
        containment.close()
    assert list(registry.iterdir()) == []


def test_a_live_instance_is_never_taken_for_a_dead_one(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    first = Containment(use_cgroup=False)
    first.start_watchdog(registry=registry)
    try:
        sleeper = subprocess.Popen(
            ["sleep", "600"], env={**os.environ, **first.action_environment("s1", 1)}
        )
        second = Containment(use_cgroup=False)
        second.start_watchdog(registry=registry)
        second.close()
        assert sleeper.poll() is None
        assert reap_stale_instances(registry) == []
        assert sleeper.poll() is None
    finally:
        first.close()  # its watchdog ends what it left
    assert sleeper.wait(timeout=30) == -signal.SIGKILL
    assert list(registry.iterdir()) == []
