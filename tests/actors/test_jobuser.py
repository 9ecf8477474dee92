"""Running actions as a job user through sudo (needs root, useradd and sudo)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from actors import ActionEnded, ActionState, Cancel
from actors._jobuser import JobUser, launcher_script
from tests.session_harness import config_for, env, job, open_session, plan, py, run_plan, sh, step

USER = "farmhandjob"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "creating a job user needs root"
    for tool in ("useradd", "sudo"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture(scope="module")
def job_user() -> str:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
    return USER


@pytest.fixture
def root() -> Iterator[Path]:
    """A session root the job user can reach (pytest's own tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="farmhand-jobuser-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_launcher_script_quotes_everything(tmp_path: Path) -> None:
    """The generated script exports values verbatim and skips names sh cannot express."""
    text, skipped = launcher_script(
        ["echo", "a b", "$HOME"],
        {"PLAIN": "x", "TRICKY": "it's $(bad) `cmd`\nline2", "BAD-NAME": "1"},
        tmp_path,
    )
    assert skipped == ["BAD-NAME"]
    result = subprocess.run(
        ["/bin/sh", "-c", text.replace("exec echo", "printf '%s|' \"$TRICKY\"; exec echo")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "it's $(bad) `cmd`\nline2|a b $HOME\n"


async def test_actions_run_as_the_job_user(tmp_path: Path, job_user: str, root: Path) -> None:
    """Actions run as the job user, in the group-shared working directory, with the session's
    variables, and can read the embedded files."""
    # (The job user cannot run this test's Python, which lives under /root: plain sh.)
    script = (
        'id -un; [ "$(pwd)" = "$OPENJD_SESSION_WORKING_DIR" ] && echo True; '
        'echo "$FROM_ENV"; cat "{{Task.File.Data}}"; echo; stat -c %a .; echo "home=$HOME"'
    )
    task = step(
        "S",
        sh(script),
        script={"embeddedFiles": [{"name": "Data", "type": "TEXT", "data": "file data"}]},
    )
    template = job(task, jobEnvironments=[env("E", variables={"FROM_ENV": "value with 'quotes'"})])
    lp = plan(tmp_path, template)
    recorder = await run_plan(lp, tmp_path, job_user=JobUser(job_user), root_directory=root)
    home = pwd.getpwnam(job_user).pw_dir
    assert recorder.output() == [
        job_user,
        "True",
        "value with 'quotes'",
        "file data",
        "770",
        f"home={home}",
    ]
    assert recorder.states() == [ActionState.SUCCESS] * 3


async def test_cancel_reaches_the_job_users_processes(
    tmp_path: Path, job_user: str, root: Path
) -> None:
    """A cancel kills the job user's process tree behind sudo; nothing of it is left."""
    lp = plan(tmp_path, job(step("S", sh("sleep 600 & echo ready; sleep 601"))))
    config = attrs.evolve(config_for(lp, tmp_path), job_user=JobUser(job_user), root_directory=root)
    with trio.fail_after(60):
        async with open_session(config) as session:
            await session.enqueue(lp.actions)
            await session.recorder.wait_for_line("ready")
            await session.send(Cancel(reason="test"))
    [ended] = [e for e in session.recorder.events if isinstance(e, ActionEnded)]
    assert ended.state is ActionState.CANCELED
    left = await trio.run_process(
        ["pgrep", "-u", job_user, "-f", "sleep 60"], capture_stdout=True, check=False
    )
    assert left.stdout.strip() == b"", f"job user processes left: {left.stdout!r}"


async def test_notify_reaches_the_job_user(tmp_path: Path, job_user: str, root: Path) -> None:
    """NOTIFY_THEN_TERMINATE's SIGTERM reaches a job user's process, which can read cancel_info.json."""
    script = "trap 'echo term $(cat cancel_info.json); exit 0' TERM; echo ready; while :; do sleep 1; done"
    on_run = {
        **sh(script),
        "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 30},
    }
    lp = plan(tmp_path, job(step("S", on_run)))
    config = attrs.evolve(config_for(lp, tmp_path), job_user=JobUser(job_user), root_directory=root)
    with trio.fail_after(60):
        async with open_session(config) as session:
            await session.enqueue(lp.actions)
            await session.recorder.wait_for_line("ready")
            await session.send(Cancel(reason="test"))
    terms = [line for line in session.recorder.output() if line.startswith("term ")]
    assert len(terms) == 1, f"output {session.recorder.output()}, log {session.recorder.logs()}"
    [term] = terms
    assert '"NotifyEnd"' in term
    [ended] = [e for e in session.recorder.events if isinstance(e, ActionEnded)]
    assert ended.state is ActionState.CANCELED


async def test_an_unknown_job_user_fails_every_action_clearly(tmp_path: Path) -> None:
    """A job user that does not exist fails the actions with a message saying so."""
    lp = plan(tmp_path, job(step("S", py("print('never')"))))
    recorder = await run_plan(lp, tmp_path, job_user=JobUser("no-such-user-farmhand"))
    [ended] = [e for e in recorder.events if isinstance(e, ActionEnded)]
    assert ended.state is ActionState.FAILED
    assert "no-such-user-farmhand" in (ended.fail_message or "")
    assert recorder.output() == []


def test_job_user_parsing() -> None:
    """user and user:group forms, as the official agent's posix_job_user."""
    assert JobUser.parse("render") == JobUser("render", None)
    assert JobUser.parse("render:artists") == JobUser("render", "artists")
    root_group = grp.getgrgid(0).gr_name
    resolved = JobUser("root").resolve()
    assert (resolved.uid, resolved.group, resolved.is_agent_user) == (
        0,
        root_group,
        os.geteuid() == 0,
    )
    assert stat.S_IMODE(0o770) == 0o770


@pytest.mark.parametrize("cleanup", [True, False])
async def test_the_job_users_other_processes_go_when_its_last_session_ends(
    tmp_path: Path, job_user: str, root: Path, cleanup: bool
) -> None:
    """With cleanup_user_processes (the worker's cleanup_session_user_processes, on by
    default), a process of the job user's that no session started (a daemon it left
    through another door) is killed when the last session running as that user ends;
    without it, it is left alone."""
    # It says its pid (that of the sleep it becomes) once it runs as the job user.
    outsider = await trio.lowlevel.open_process(
        ["sudo", "-n", "-u", job_user, "sh", "-c", "echo $$; exec sleep 600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert outsider.stdout is not None
        said = b""
        with trio.fail_after(30):
            while not said.endswith(b"\n"):
                said += await outsider.stdout.receive_some()
        sleeper = int(said)
        uid = pwd.getpwnam(job_user).pw_uid
        assert sleeper in _processes_of(uid)
        lp = plan(tmp_path, job(step("S", sh("echo hi"))))
        recorder = await run_plan(
            lp,
            tmp_path,
            job_user=JobUser(job_user),
            root_directory=root,
            cleanup_user_processes=cleanup,
        )
        assert recorder.output() == ["hi"]
        assert (sleeper in _processes_of(uid)) is not cleanup
    finally:
        await trio.run_process(["pkill", "-KILL", "-u", job_user], check=False)
        with trio.fail_after(30):
            await outsider.wait()


def _processes_of(uid: int) -> list[int]:
    from actors._platform import processes_of_user

    return [p for p in processes_of_user(uid) if _state(p) not in (b"Z", b"")]


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return b""


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/comm").read_bytes().strip()
    except OSError:
        return b""
