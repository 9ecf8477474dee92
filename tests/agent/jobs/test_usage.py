"""What an action cost (issue 14): CPU time and the peak memory of its whole process
tree, measured by the session's launcher, reported on ActionEnded and in the log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from actors import (
    MEMORY_LIMIT_FAILURE,
    OUTPUT_LIMIT_FAILURE,
    ActionEnded,
    ActionUsage,
    Containment,
    SessionEvent,
    _memcg,
)
from agent.jobs import JobRun, JobSpec, JobStatus, OutputTail
from tests.session_harness import job, memory_cgroups_here, py, step

MiB = 2**20

#: Three children, each touching 40 MiB, alive together for a second; the parent
#: itself stays small. Then the parent spins for a while (CPU of its own).
FORKED_TREE = """
import os, time
children = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        block = bytearray(40 * 2**20)
        for at in range(0, len(block), 4096):
            block[at] = 1
        time.sleep(1.5)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
deadline = time.process_time() + 0.3
while time.process_time() < deadline:
    pass
"""


async def _run(code: str, **options: float) -> tuple[list[ActionEnded], list[str], JobStatus]:
    events: list[SessionEvent] = []
    tail = OutputTail(200)
    run = JobRun(
        JobSpec.from_command([sys.executable, "-c", code]),
        sinks=[tail],
        on_event=events.append,
        **options,  # type: ignore[arg-type]
    )
    outcome = await run.run()
    return [e for e in events if isinstance(e, ActionEnded)], tail.lines, outcome.status


async def test_a_forked_trees_peak_and_cpu_are_counted() -> None:
    """The tree's peak is the children's sum (about 120 MiB), not the largest process's
    40 MiB; the CPU includes the children's and the parent's own spin."""
    [ended], lines, status = await _run(FORKED_TREE)
    assert status is JobStatus.SUCCEEDED
    usage = ended.usage
    assert usage is not None
    assert usage.peak_rss_bytes is not None and usage.peak_rss_bytes > 100 * MiB, usage
    assert usage.cpu_user_seconds is not None and usage.cpu_system_seconds is not None
    assert usage.cpu_user_seconds + usage.cpu_system_seconds >= 0.3
    assert usage.wall_seconds >= 1.5
    if shutil.which("nvidia-smi") is None:
        assert usage.peak_gpu_bytes is None  # nothing to ask, nothing said
    [line] = [line for line in lines if line.startswith("[farmhand] usage: ")]
    assert line == f"[farmhand] usage: {usage.describe()}"
    assert "peak memory" in line and "CPU" in line


HOLD_30_MIB = (
    "import time\nblock = bytearray(30 * 2**20)\n"
    "for at in range(0, len(block), 4096):\n    block[at] = 1\n"
    "print('holding', flush=True)\ntime.sleep(60)\n"
)


async def test_an_action_killed_at_its_timeout_still_reports_what_it_cost() -> None:
    """Past its own timeout the action is killed; its usage comes with its end."""
    template = job(step("Hold", {**py(HOLD_30_MIB), "timeout": 2}))
    events: list[SessionEvent] = []
    run = JobRun(JobSpec.from_template(template), on_event=events.append)
    outcome = await run.run()
    assert outcome.status is JobStatus.TIMEOUT
    [ended] = [e for e in events if isinstance(e, ActionEnded)]
    usage = ended.usage
    assert usage is not None and usage.peak_rss_bytes is not None
    assert usage.peak_rss_bytes > 30 * MiB
    assert 2 <= usage.wall_seconds < 30


async def test_a_stopped_action_logs_what_it_cost() -> None:
    """A stop (here the run's own time limit) reports the action at once, before its
    process is gone; the usage line follows in the log once it is."""
    _, lines, status = await _run(HOLD_30_MIB, max_runtime=1.5, grace=0)
    assert status is JobStatus.TIMEOUT
    [line] = [line for line in lines if line.startswith("[farmhand] usage: ")]
    assert "peak memory" in line


def test_usage_reads_as_one_line_and_as_json() -> None:
    usage = ActionUsage(1.2, 0.8, 0.1, 150 * MiB)
    assert (
        usage.describe() == "wall 1.200 s, CPU 0.80 s user + 0.10 s system, peak memory 150.0 MiB"
    )
    assert usage.to_json() == {
        "wall_seconds": 1.2,
        "cpu_user_seconds": 0.8,
        "cpu_system_seconds": 0.1,
        "peak_rss_bytes": 150 * MiB,
    }
    assert ActionUsage(0.5).describe() == "wall 0.500 s"
    assert ActionUsage(0.5).to_json() == {"wall_seconds": 0.5}


@pytest.mark.parametrize("output", ["jsonl", "human"])
def test_run_shows_what_each_action_cost(tmp_path: Path, output: str) -> None:
    """``run``: jsonl's action_ended carries usage; the human result line and summary
    name CPU and peak memory."""
    template = tmp_path / "job.json"
    template.write_text(json.dumps(job(step("Use", py("print('hi')")))))
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", str(template), "--output", output],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    if output == "jsonl":
        [ended] = [
            e for e in map(json.loads, done.stdout.splitlines()) if e["event"] == "action_ended"
        ]
        assert set(ended["usage"]) == {
            "wall_seconds",
            "cpu_user_seconds",
            "cpu_system_seconds",
            "peak_rss_bytes",
        }
        assert ended["usage"]["peak_rss_bytes"] > 0
    else:
        text = done.stdout + done.stderr
        assert "SUCCESS (exit 0, " in text and "peak memory" in text
        assert "; CPU " in text


ALLOCATE = (
    "import sys, time\nblock = bytearray(int(sys.argv[1]) * 2**20)\n"
    "for at in range(0, len(block), 4096):\n    block[at] = 1\n"
    "print('allocated', flush=True)\ntime.sleep(float(sys.argv[2]))\n"
)


@pytest.fixture(params=["sampled", "cgroup"])
def memory_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way a limit is held: the launcher's sampling (as on a host without a memory
    controller to write), and the kernel's, through a memory cgroup (where there is one)."""
    if request.param == "sampled":
        monkeypatch.setattr(_memcg, "make_memory_root", lambda instance, v2_root: None)
    elif not memory_cgroups_here():
        pytest.skip("no writable memory cgroup here (cgroup v2 memory controller or v1 memory)")
    return str(request.param)


async def test_an_action_over_the_memory_limit_fails_saying_so(memory_guard: str) -> None:
    """Over the limit its processes are killed and it fails with a message that names
    the limit, the use and the largest process; a job under the limit runs on."""
    events: list[SessionEvent] = []
    over = JobRun(
        JobSpec.from_command([sys.executable, "-c", ALLOCATE, "300", "30"]),
        on_event=events.append,
        memory_limit=150 * MiB,
    )
    outcome = await over.run()
    assert outcome.status is JobStatus.FAILED and outcome.exit_code == -9
    [ended] = [e for e in events if isinstance(e, ActionEnded)]
    assert ended.fail_message is not None
    if memory_guard == "sampled":
        assert ended.fail_message.startswith(f"{MEMORY_LIMIT_FAILURE}: its processes used ")
        assert "over the 150.0 MiB limit (largest: pid " in ended.fail_message
        assert ended.fail_message.endswith("; farmhand killed them")
    else:
        assert ended.fail_message.startswith(
            f"{MEMORY_LIMIT_FAILURE}: its processes reached the 150.0 MiB limit (largest: pid "
        )
        assert ended.fail_message.endswith(
            "; the kernel's OOM killer ended one in the session's memory cgroup, farmhand the rest"
        )
        # The kernel counted up to its limit, and no further.
        assert ended.usage is not None and ended.usage.peak_rss_bytes is not None
        assert 140 * MiB <= ended.usage.peak_rss_bytes <= 151 * MiB
    assert " python" in ended.fail_message  # the largest process, by name
    assert ended.usage is not None and ended.usage.wall_seconds < 20

    under = JobRun(
        JobSpec.from_command([sys.executable, "-c", ALLOCATE, "30", "0.5"]),
        memory_limit=150 * MiB,
    )
    assert (await under.run()).status is JobStatus.SUCCEEDED


#: Three children, each touching 40 MiB, alive together (each waits for the others to
#: be ready) for a moment far shorter than the launcher's sampling interval.
SPIKE = """
import os
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
children = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        block = bytearray(40 * 2**20)
        for at in range(0, len(block), 4096):
            block[at] = 1
        os.write(ready_w, b"x")
        os.read(go_r, 1)  # until the parent closes its end
        os._exit(0)
    children.append(pid)
for _ in children:
    os.read(ready_r, 1)
os.close(go_w)
for pid in children:
    os.waitpid(pid, 0)
"""


async def test_a_memory_cgroup_counts_a_peak_between_samples() -> None:
    """Where a memory cgroup charges the action, a tree's brief peak (three 40 MiB
    children together for a moment, well inside one sampling interval) is counted
    whole."""
    if not memory_cgroups_here():
        pytest.skip("no writable memory cgroup here (cgroup v2 memory controller or v1 memory)")
    [ended], _lines, status = await _run(SPIKE)
    assert status is JobStatus.SUCCEEDED
    assert ended.usage is not None and ended.usage.peak_rss_bytes is not None
    assert ended.usage.peak_rss_bytes >= 120 * MiB


async def test_the_launchers_memory_cgroups_are_removed_with_them(tmp_path: Path) -> None:
    """A v1 launcher's memory cgroup is removed when it goes, and the instance's root
    when the containment closes."""
    containment = Containment()
    root = containment.memory_root
    if root is None or root.version != 1:
        containment.close()
        pytest.skip("no cgroup v1 memory hierarchy to write here")
    try:
        launcher = await containment.start_launcher("session-1")
        assert launcher is not None and launcher.memory_cgroup is not None
        path = launcher.memory_cgroup[0]
        assert str(launcher.pid) in (path / "cgroup.procs").read_text().split()
        await launcher.sweep_and_close()
        await containment.sweep("session-1", swept_below=True)
        assert not path.exists()
    finally:
        containment.close()
    assert not root.path.exists()


@pytest.mark.parametrize(
    ("megabytes", "status"), [(200, JobStatus.FAILED), (20, JobStatus.SUCCEEDED)]
)
async def test_a_steps_memory_requirement_is_its_ceiling(megabytes: int, status: JobStatus) -> None:
    """``amount.worker.memory`` (max, else min, in MiB) caps the step's tasks."""
    template = job(
        step(
            "Render",
            {"command": sys.executable, "args": ["-c", ALLOCATE, str(megabytes), "1"]},
            hostRequirements={"amounts": [{"name": "amount.worker.memory", "max": 100}]},
        )
    )
    outcome = await JobRun(JobSpec.from_template(template)).run()
    assert outcome.status is status, outcome
    if status is JobStatus.FAILED:
        assert outcome.error is not None and MEMORY_LIMIT_FAILURE in outcome.error


async def test_actions_are_the_kernels_first_pick_when_memory_runs_out() -> None:
    """Actions inherit the launcher's raised oom_score_adj; the agent keeps its own."""
    tail = OutputTail()
    outcome = await JobRun(
        JobSpec.from_command(["cat", "/proc/self/oom_score_adj"]), sinks=[tail], notes=False
    ).run()
    assert outcome.succeeded
    assert tail.lines == ["500"]
    assert int(Path("/proc/self/oom_score_adj").read_text()) < 500  # noqa: ASYNC240


#: 2,000 lines of 99 characters and a newline: 200,000 characters.
CHATTY = "import sys\nfor n in range(2000):\n    print(f'{n:05d}' + 'x' * 94)\nprint('openjd_progress: 100')\n"


async def test_output_past_the_limit_is_truncated_with_a_note() -> None:
    """``truncate``: the first lines are kept whole, the rest dropped with one note; the
    action runs to its end (the pipe is still read) and succeeds; messages still work."""
    tail = OutputTail(5000)
    events: list[SessionEvent] = []
    run = JobRun(
        JobSpec.from_command([sys.executable, "-c", CHATTY]),
        sinks=[tail],
        on_event=events.append,
        output_limit=10_000,
    )
    outcome = await run.run()
    assert outcome.status is JobStatus.SUCCEEDED
    kept = [line for line in tail.lines if not line.startswith("[farmhand]")]
    assert kept == [f"{n:05d}" + "x" * 94 for n in range(100)]  # 100 x 100 = 10,000
    [note] = [line for line in tail.lines if OUTPUT_LIMIT_FAILURE in line]
    assert "more than 9.8 KiB" in note and "it runs on" in note
    [ended] = [e for e in events if isinstance(e, ActionEnded)]
    assert ended.progress == 100  # read past the cap


async def test_output_past_the_limit_fails_the_action_in_fail_mode() -> None:
    events: list[SessionEvent] = []
    code = "import time\nfor n in range(2000):\n    print('y' * 99, flush=True)\ntime.sleep(60)\n"
    run = JobRun(
        JobSpec.from_command([sys.executable, "-c", code]),
        on_event=events.append,
        output_limit=10_000,
        output_limit_mode="fail",
    )
    outcome = await run.run()
    assert outcome.status is JobStatus.FAILED
    [ended] = [e for e in events if isinstance(e, ActionEnded)]
    assert ended.fail_message is not None
    assert ended.fail_message.startswith(f"{OUTPUT_LIMIT_FAILURE}: the action printed more than")
    assert ended.usage is not None and ended.usage.wall_seconds < 30  # stopped, not slept out


def test_nvidia_smi_compute_apps_are_read_as_recorded() -> None:
    """As nvidia-smi 550 prints ``--query-compute-apps=pid,used_memory
    --format=csv,noheader,nounits``: a line per process per GPU, ``[N/A]`` under MIG."""
    from actors._launchusage import parse_compute_apps

    recorded = "41230, 10240\n41231, [N/A]\n41230, 2048\n\nNo running processes found\n"
    assert parse_compute_apps(recorded) == {41230: 12288 * MiB, 41231: 0}
    assert parse_compute_apps("") == {}


FAKE_NVIDIA_SMI = """#!/bin/sh
# Stands in for nvidia-smi: every process named sleep holds 512 MiB on the GPU.
for pid in $(ls /proc); do
    case $pid in *[!0-9]*) continue ;; esac
    [ "$(cat /proc/$pid/comm 2>/dev/null)" = sleep ] && echo "$pid, 512"
done
echo "1, [N/A]"
"""


async def test_gpu_memory_is_sampled_where_nvidia_smi_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nvidia-smi on the PATH, the launcher asks it about the session's processes:
    the action's peak GPU memory is theirs (and only theirs)."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("FARMHAND_GPU_SAMPLE_SECONDS", "0.2")
    events: list[SessionEvent] = []
    outcome = await JobRun(JobSpec.from_command(["sleep", "1.5"]), on_event=events.append).run()
    assert outcome.succeeded
    [ended] = [e for e in events if isinstance(e, ActionEnded)]
    assert ended.usage is not None and ended.usage.peak_gpu_bytes == 512 * MiB
    assert "peak GPU memory 512.0 MiB" in ended.usage.describe()


@pytest.mark.parametrize("version", [1, 2])
def test_the_launcher_reads_each_cgroup_versions_files(tmp_path: Path, version: int) -> None:
    """The files of each version, as the kernel lays them out (a host here has one
    version at most, so the other is read from a copy): the limit written before the
    action, "no limit" as that version spells it, OOM kills counted from the events."""
    from actors._launchusage import MemoryCgroup

    if version == 1:
        events, key_file = "memory.oom_control", "memory.limit_in_bytes"
        text = "oom_kill_disable 0\nunder_oom 0\noom_kill {}\n"
        (tmp_path / "memory.max_usage_in_bytes").write_text("4096\n")
    else:
        events, key_file = "memory.events", "memory.max"
        text = "low 0\nhigh 0\nmax 7\noom 1\noom_kill {}\noom_group_kill 0\n"
        (tmp_path / "memory.peak").write_text("")
    (tmp_path / events).write_text(text.format(2))
    (tmp_path / key_file).write_text("")
    cgroup = MemoryCgroup.from_request([str(tmp_path), version])
    assert cgroup is not None and cgroup.arm(150 * MiB)
    assert (tmp_path / key_file).read_text() == str(150 * MiB)
    assert not cgroup.oom_killed()
    (tmp_path / events).write_text(text.format(3))
    assert cgroup.oom_killed()
    assert cgroup.arm(None)
    assert (tmp_path / key_file).read_text() == ("-1" if version == 1 else "max")
    cgroup.close()
    assert MemoryCgroup.from_request([str(tmp_path), 3]) is None
    assert MemoryCgroup.from_request("garbage") is None
