"""A NUL byte where exec cannot take one (an argument, a variable set with
``openjd_env``) fails that one action, saying so; the session's launcher lives
on and later actions run (issue 19)."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
import trio

from actors import ActionEnded, ActionState
from actors._spawn import SessionLauncher
from tests.session_harness import env, job, plan, py, run_plan, step

OK, FAILED = ActionState.SUCCESS, ActionState.FAILED


async def test_the_launcher_refuses_a_nul_and_keeps_serving(tmp_path: Path) -> None:
    launcher = await SessionLauncher.start()
    try:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            with pytest.raises(OSError, match="argument 1 contains a NUL byte") as caught:
                await launcher.spawn(
                    ["echo", "a\0b"], env=dict(os.environ), cwd=tmp_path, output_fd=write_fd
                )
            assert caught.value.errno == errno.EINVAL
            with pytest.raises(OSError, match="variable X contains a NUL byte"):
                await launcher.spawn(["true"], env={"X": "a\0b"}, cwd=tmp_path, output_fd=write_fd)
            # Past the agent's own check (an older agent, a bug): the launcher itself
            # answers with an error instead of dying.
            body = json.dumps({"spawn": ["echo", "a\0b"], "env": {}, "cwd": str(tmp_path)})
            await launcher._send(body.encode(), write_fd)
            reply = await launcher._receive()
            assert reply["errno"] == errno.EINVAL and "null" in reply["message"]
            process = await launcher.spawn(
                [sys.executable, "-c", "print('still here')"],
                env=dict(os.environ),
                cwd=tmp_path,
                output_fd=write_fd,
            )
        finally:
            os.close(write_fd)
        output = b""
        async with trio.lowlevel.FdStream(read_fd) as stream:
            while chunk := await stream.receive_some(65536):
                output += chunk
        assert await process.wait() == 0
        assert output == b"still here\n"
    finally:
        await launcher.aclose()


def _ends(recorder: object) -> list[ActionEnded]:
    return [e for e in recorder.events if isinstance(e, ActionEnded)]  # type: ignore[attr-defined]


async def test_a_nul_in_a_task_argument_fails_that_task_only(tmp_path: Path) -> None:
    template = job(
        step(
            "S",
            {"command": sys.executable, "args": ["-c", "print(1)", "{{Param.Word}}"]},
        ),
        parameterDefinitions=[{"name": "Word", "type": "STRING", "default": "a\u0000b"}],
        jobEnvironments=[env("E", py("print('entered')"), on_exit=py("print('exited')"))],
    )
    with trio.fail_after(60):
        recorder = await run_plan(plan(tmp_path, template), tmp_path)
    enter, task, exit_ = _ends(recorder)
    assert (enter.state, task.state, exit_.state) == (OK, FAILED, OK)
    assert "contains a NUL byte" in repr(recorder.events), recorder.events
    assert "launcher has exited" not in repr(recorder.events)
    assert "exited" in recorder.output()


async def test_a_nul_in_an_openjd_env_value_fails_the_action_that_printed_it(
    tmp_path: Path,
) -> None:
    enter = py("print('openjd_env: \"X=a\\\\u0000b\"', flush=True)")
    template = job(
        step("S", py("print('task')")),
        jobEnvironments=[env("E", enter, on_exit=py("print('exited')"))],
    )
    with trio.fail_after(60):
        recorder = await run_plan(plan(tmp_path, template), tmp_path)
    states = [e.state for e in _ends(recorder)]
    assert states[0] is FAILED and states[-1] is OK, recorder.events
    assert "X: the value contains a NUL byte" in repr(recorder.events)
    assert "launcher has exited" not in repr(recorder.events)
    assert "exited" in recorder.output()
