"""The session runner against real, tiny subprocesses: OpenJD session semantics."""

from __future__ import annotations

import json
import os
import signal
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

from actors import (
    ActionEnded,
    ActionKind,
    ActionOutput,
    ActionStarted,
    ActionState,
    Cancel,
    Enqueue,
    ExitEnvironment,
    Finish,
    Replace,
    RunTask,
    SessionLog,
    Stop,
)
from tests.session_harness import (
    PY,
    config_for,
    env,
    job,
    open_session,
    plan,
    py,
    run_plan,
    step,
)

ENTER, EXIT, TASK = ActionKind.ENV_ENTER, ActionKind.ENV_EXIT, ActionKind.TASK_RUN
OK, FAILED, NEVER = ActionState.SUCCESS, ActionState.FAILED, ActionState.NEVER_ATTEMPTED


def echo(text: str) -> dict[str, object]:
    return py(f"print({text!r})")


def int_range(name: str, spec: str) -> dict[str, object]:
    return {"taskParameterDefinitions": [{"name": name, "type": "INT", "range": spec}]}


# ---------------------------------------------------------------------- order


async def test_environments_enter_in_order_and_exit_in_reverse(tmp_path: Path) -> None:
    """Job environments are entered in order and exited in reverse around the tasks."""
    template = job(
        step(
            "S",
            echo("task"),
            stepEnvironments=[env("StepEnv", echo("enter step"), echo("exit step"))],
        ),
        jobEnvironments=[
            env("Outer", echo("enter outer"), echo("exit outer")),
            env("Inner", echo("enter inner"), echo("exit inner")),
        ],
    )
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    assert recorder.output() == [
        "enter outer",
        "enter inner",
        "enter step",
        "task",
        "exit step",
        "exit inner",
        "exit outer",
    ]
    assert recorder.states() == [OK] * 7
    assert recorder.session_ended().succeeded


async def test_failure_stops_later_work_but_entered_environments_exit(tmp_path: Path) -> None:
    """After a failed task no later task runs and no later environment is entered,
    but every entered environment still exits, innermost first."""
    template = job(
        step(
            "A",
            py("import sys; n = {{Task.Param.N}}; print('task', n); sys.exit(3 if n == 2 else 0)"),
            parameterSpace=int_range("N", "1-3"),
            stepEnvironments=[env("AEnv", echo("enter A"), echo("exit A"))],
        ),
        step(
            "B",
            echo("B task"),
            stepEnvironments=[env("BEnv", echo("enter B"), echo("exit B"))],
            dependencies=[{"dependsOn": "A"}],
        ),
        jobEnvironments=[env("JobEnv", echo("enter job"), echo("exit job"))],
    )
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    assert recorder.output() == ["enter job", "enter A", "task 1", "task 2", "exit A", "exit job"]
    kinds_states = [(kind, state) for kind, _, state in recorder.ended()]
    assert kinds_states == [
        (ENTER, OK),
        (ENTER, OK),
        (TASK, OK),
        (TASK, FAILED),
        (TASK, NEVER),  # task 3
        (ENTER, NEVER),  # BEnv
        (TASK, NEVER),  # B's task
        (EXIT, NEVER),  # BEnv's exit: it was never entered
        (EXIT, OK),  # AEnv
        (EXIT, OK),  # JobEnv
    ]
    failed = [e for e in recorder.events if isinstance(e, ActionEnded) and e.state is FAILED]
    assert failed[0].exit_code == 3
    assert not recorder.session_ended().succeeded


async def test_environment_whose_enter_failed_still_exits(tmp_path: Path) -> None:
    """An environment whose onEnter failed still has its onExit run; inner ones are not entered."""
    template = job(
        step("S", echo("task")),
        jobEnvironments=[
            env("Bad", py("import sys; print('entering'); sys.exit(1)"), echo("exiting bad")),
            env("Never", echo("enter never"), echo("exit never")),
        ],
    )
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    assert recorder.output() == ["entering", "exiting bad"]
    assert recorder.states() == [FAILED, NEVER, NEVER, NEVER, OK]


async def test_steps_run_in_dependency_order(tmp_path: Path) -> None:
    """Steps run after the steps they depend on, whatever their order in the template."""
    template = job(
        step("Last", echo("last"), dependencies=[{"dependsOn": "Middle"}]),
        step("First", echo("first")),
        step("Middle", echo("middle"), dependencies=[{"dependsOn": "First"}]),
    )
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    assert recorder.output() == ["first", "middle", "last"]


async def test_tasks_run_in_parameter_space_order(tmp_path: Path) -> None:
    """Tasks follow the parameter space: the last parameter varies fastest."""
    template = job(
        step(
            "S",
            {"command": PY, "args": ["-c", "print('{{Task.Param.A}}{{Task.Param.B}}')"]},
            parameterSpace={
                "taskParameterDefinitions": [
                    {"name": "A", "type": "INT", "range": "1-2"},
                    {"name": "B", "type": "STRING", "range": ["x", "y", "z"]},
                ]
            },
        )
    )
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    assert recorder.output() == ["1x", "1y", "1z", "2x", "2y", "2z"]
    assert recorder.started_names()[0] == (TASK, "S", {"A": "1", "B": "x"})


async def test_variables_only_environment_runs_no_process(tmp_path: Path) -> None:
    """An environment with only variables succeeds without starting a process."""
    template = job(
        step("S", py("import os; print(os.environ['COLOR'])")),
        jobEnvironments=[env("Vars", variables={"COLOR": "blue"})],
    )
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    enter, _, exit_ = (e for e in recorder.events if isinstance(e, ActionEnded))
    assert (enter.state, enter.exit_code) == (OK, None)
    assert (exit_.state, exit_.exit_code) == (OK, None)
    assert recorder.output() == ["blue"]
    assert sum("running:" in line for line in recorder.logs()) == 1  # only the task ran


# ---------------------------------------------------------------------- variables


async def test_actions_inherit_agent_environment_and_working_directory(tmp_path: Path) -> None:
    """Actions see the agent's environment plus OPENJD_SESSION_WORKING_DIR, and run there."""
    template = job(
        step(
            "S",
            py(
                "import os; print(os.environ['AGENT_VAR']); print(os.environ['OPENJD_SESSION_WORKING_DIR'] == os.getcwd())"
            ),
        )
    )
    lp = plan(tmp_path, template)
    recorder = await run_plan(lp, tmp_path, base_env={**os.environ, "AGENT_VAR": "from-agent"})
    assert recorder.output() == ["from-agent", "True"]


async def test_inner_variables_override_outer_until_the_inner_exits(tmp_path: Path) -> None:
    """An inner environment's variable wins; the outer value is back after it exits."""
    show = py("import os; print(os.environ.get('LAYER'), os.environ.get('ONLY_INNER'))")
    template = job(
        step(
            "S",
            show,
            stepEnvironments=[env("Inner", variables={"LAYER": "inner", "ONLY_INNER": "yes"})],
        ),
        jobEnvironments=[env("Outer", on_exit=show, variables={"LAYER": "outer"})],
    )
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    assert recorder.output() == ["inner yes", "outer None"]


async def test_openjd_env_from_on_enter_applies_in_order_to_later_actions(tmp_path: Path) -> None:
    """openjd_env (plain and JSON), and openjd_unset_env from onEnter apply in print order."""
    enter = py(
        "print('openjd_env: A=1'); print('openjd_env: B=two words'); "
        "print('openjd_env: \"MULTI=line1\\\\nline2\"'); print('openjd_env: A=3'); "
        "print('openjd_unset_env: REMOVE_ME')"
    )
    show = py(
        "import os; print(repr((os.environ.get('A'), os.environ.get('B'), os.environ.get('MULTI'), os.environ.get('REMOVE_ME'))))"
    )
    template = job(step("S", show), jobEnvironments=[env("E", enter)])
    lp = plan(tmp_path, template)
    recorder = await run_plan(lp, tmp_path, base_env={**os.environ, "REMOVE_ME": "x"})
    assert recorder.output()[-1] == repr(("3", "two words", "line1\nline2", None))


async def test_openjd_env_printed_by_a_task_is_ignored(tmp_path: Path) -> None:
    """A task cannot change the session's variables."""
    template = job(
        step(
            "S",
            py("import os; print(os.environ.get('X')); print('openjd_env: X=from-task')"),
            parameterSpace=int_range("N", "1-2"),
        )
    )
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    assert [line for line in recorder.output() if not line.startswith("openjd")] == ["None", "None"]
    assert recorder.states() == [OK, OK]


async def test_redacted_values_never_appear_in_any_line(tmp_path: Path) -> None:
    """openjd_redacted_env sets the variable and its value never shows in output."""
    secret = "s3cr3t-value-42"
    enter = py(f"print('openjd_redacted_env: TOKEN={secret}'); print('enter sees {secret}')")
    task = py(
        "import os; print('task has', os.environ['TOKEN']); print(os.environ['TOKEN'][::-1][::-1])"
    )
    template = job(
        step("S", task), jobEnvironments=[env("E", enter)], extensions=["REDACTED_ENV_VARS"]
    )
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    everything = "\n".join(recorder.output() + recorder.logs())
    assert secret not in everything
    assert "task has ********" in recorder.output()
    assert recorder.states() == [OK, OK, OK]


async def test_redacted_env_without_the_extension_masks_but_does_not_set(tmp_path: Path) -> None:
    """Without REDACTED_ENV_VARS the value is still masked, but not set (as openjd-sessions)."""
    enter = py("print('openjd_redacted_env: TOKEN=abcdef123')")
    task = py("import os; print(os.environ.get('TOKEN'))")
    template = job(step("S", task), jobEnvironments=[env("E", enter)])
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    assert "abcdef123" not in "\n".join(recorder.output() + recorder.logs())
    assert recorder.output()[-1] == "None"
    assert any("REDACTED_ENV_VARS" in line for line in recorder.logs())


async def test_a_malformed_redacted_env_value_is_masked_in_messages_too(tmp_path: Path) -> None:
    """The near miss fails the action; its value is masked in the fail message and notes."""
    enter = py("print('openjd_redacted_env:PASS=swordfish99')")
    template = job(step("S", py("print('never')")), jobEnvironments=[env("E", enter)])
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    ended = [e for e in recorder.events if isinstance(e, ActionEnded)]
    texts = recorder.output() + recorder.logs() + [e.fail_message or "" for e in ended]
    assert ended[0].state is FAILED
    assert ended[0].fail_message and "incorrectly formatted" in ended[0].fail_message
    assert "swordfish99" not in "\n".join(texts)


async def test_secret_patterns_mask_output_notes_parameters_and_messages(tmp_path: Path) -> None:
    """A configured pattern is masked in output, the runner's notes (the command line),
    task parameters and the status and fail messages reported to the farm."""
    token = "tok-0123abcd"
    task = step(
        "S",
        {"command": PY, "args": ["-c", CODE, token, "{{Task.Param.Key}}"]},
        parameterSpace={
            "taskParameterDefinitions": [{"name": "Key", "type": "STRING", "range": [token]}]
        },
    )
    lp = plan(tmp_path, job(task))
    recorder = await run_plan(lp, tmp_path, secret_patterns=(r"tok-[0-9a-f]{8}",))
    [started] = [e for e in recorder.events if isinstance(e, ActionStarted)]
    [ended] = [e for e in recorder.events if isinstance(e, ActionEnded)]
    texts = [*recorder.output(), *recorder.logs(), *started.parameters.values()]
    texts += [ended.status_message or "", ended.fail_message or ""]
    assert token not in "\n".join(texts)
    assert "uses ********" in recorder.output()
    assert ended.status_message == "status ********"
    assert ended.fail_message == "fail ********"
    assert started.parameters == {"Key": "********"}


CODE = (
    "import sys; print('uses', sys.argv[1]); print('openjd_status: status', sys.argv[2]);"
    " print('openjd_fail: fail', sys.argv[1]); sys.exit(1)"
)


# ---------------------------------------------------------------------- messages


async def test_progress_status_and_fail_messages_are_reported(tmp_path: Path) -> None:
    """openjd_progress/status/fail are reported; openjd_fail alone does not fail the action."""
    task = py(
        "print('openjd_progress: 10'); print('openjd_status: halfway'); print('openjd_progress: 55.5');"
        "print('openjd_progress: 250'); print('openjd_fail: only a note')"
    )
    recorder = await run_plan(plan(tmp_path, job(step("S", task))), tmp_path)
    [ended] = [e for e in recorder.events if isinstance(e, ActionEnded)]
    assert (ended.state, ended.progress, ended.status_message, ended.fail_message) == (
        OK,
        55.5,
        "halfway",
        "only a note",
    )
    assert any("openjd_progress '250' ignored" in line for line in recorder.logs())


async def test_fail_message_is_kept_when_the_exit_code_fails(tmp_path: Path) -> None:
    """A failing action reports the openjd_fail message it printed."""
    task = py("import sys; print('openjd_fail: out of licenses'); sys.exit(9)")
    recorder = await run_plan(plan(tmp_path, job(step("S", task))), tmp_path)
    [ended] = [e for e in recorder.events if isinstance(e, ActionEnded)]
    assert (ended.state, ended.exit_code, ended.fail_message) == (FAILED, 9, "out of licenses")


@pytest.mark.parametrize(
    "line",
    ["openjd_env:NOSPACE=1", "openjd_env: 1BAD=x", "OPENJD_ENV: X=1", "openjd_unset_env: 1X"],
)
async def test_malformed_env_line_fails_the_action_at_once(tmp_path: Path, line: str) -> None:
    """A malformed or near-miss env command fails the running action without waiting for it."""
    enter = py(f"import sys, time; print({line!r}, flush=True); time.sleep(600)")
    template = job(step("S", echo("task")), jobEnvironments=[env("E", enter)])
    with trio.fail_after(30):
        recorder = await run_plan(plan(tmp_path, template), tmp_path)
    enter_end = recorder.events[[isinstance(e, ActionEnded) for e in recorder.events].index(True)]
    assert isinstance(enter_end, ActionEnded)
    assert enter_end.state is FAILED
    assert enter_end.exit_code == -signal.SIGKILL
    assert recorder.states()[1:] == [NEVER, OK]  # the task; the environment's (absent) exit


# ---------------------------------------------------------------------- processes


async def test_action_process_setup(tmp_path: Path) -> None:
    """Each action leads its own session and group, reads /dev/null, and stderr joins stdout."""
    code = (
        "import os, sys; "
        "print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid()); "
        "print(repr(sys.stdin.read())); sys.stdout.flush(); "
        "print('to stderr', file=sys.stderr)"
    )
    recorder = await run_plan(plan(tmp_path, job(step("S", py(code)))), tmp_path)
    assert recorder.output() == ["True True", "''", "to stderr"]


async def test_death_by_signal_is_a_negative_exit_code(tmp_path: Path) -> None:
    """A process killed by a signal reports minus the signal number."""
    task = py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    recorder = await run_plan(plan(tmp_path, job(step("S", task))), tmp_path)
    [ended] = [e for e in recorder.events if isinstance(e, ActionEnded)]
    assert (ended.state, ended.exit_code) == (FAILED, -signal.SIGSEGV)


async def test_command_not_found_is_a_failed_action_with_127(tmp_path: Path) -> None:
    """A command that does not exist fails its action with exit code 127."""
    template = job(
        step("S", {"command": "no-such-command-farmhand"}),
        jobEnvironments=[env("E", on_exit=echo("exit ran"))],
    )
    recorder = await run_plan(plan(tmp_path, template), tmp_path)
    task_end = next(e for e in recorder.events if isinstance(e, ActionEnded) and e.kind is TASK)
    assert (task_end.state, task_end.exit_code) == (FAILED, 127)
    assert "no-such-command-farmhand" in (task_end.fail_message or "")
    assert recorder.output() == ["exit ran"]


# ---------------------------------------------------------------------- cancel


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


SPAWN_GRANDCHILD = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "print('child', child.pid, flush=True); "
)


def _child_pid(lines: list[str]) -> int:
    [line] = [line for line in lines if line.startswith("child ")]
    return int(line.split()[1])


async def test_cancel_terminate_kills_the_whole_process_group(tmp_path: Path) -> None:
    """TERMINATE (the default) kills the action and every process of its group at once."""
    task = py(SPAWN_GRANDCHILD + "time.sleep(600)")
    lp = plan(tmp_path, job(step("S", task), jobEnvironments=[env("E", on_exit=echo("exited"))]))
    with trio.fail_after(30):
        async with open_session(config_for(lp, tmp_path)) as session:
            await session.enqueue(lp.actions)
            await session.recorder.wait_for(
                lambda e: (
                    isinstance(e, ActionOutput)
                    and any(line.startswith("child ") for line in e.lines)
                )
            )
            await session.send(Cancel(reason="test"))
    recorder = session.recorder
    task_end = next(e for e in recorder.events if isinstance(e, ActionEnded) and e.kind is TASK)
    assert (task_end.state, task_end.exit_code) == (ActionState.CANCELED, -signal.SIGKILL)
    assert not _alive(_child_pid(recorder.output()))
    assert recorder.output()[-1] == "exited"  # the environment still exits


NOTIFY_AWARE = (
    "import json, os, signal, sys, time\n"
    "def on_term(*_):\n"
    "    info = json.load(open(os.path.join(os.environ['OPENJD_SESSION_WORKING_DIR'], 'cancel_info.json')))\n"
    "    print('term', info['NotifyEnd'], flush=True)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, on_term)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def _notify(on_run: dict[str, object], period: int | None = None) -> dict[str, object]:
    cancelation: dict[str, object] = {"mode": "NOTIFY_THEN_TERMINATE"}
    if period is not None:
        cancelation["notifyPeriodInSeconds"] = period
    return {**on_run, "cancelation": cancelation}


async def test_notify_then_terminate_writes_cancel_info_then_sigterm(tmp_path: Path) -> None:
    """NOTIFY_THEN_TERMINATE writes cancel_info.json before sending SIGTERM to the group."""
    lp = plan(tmp_path, job(step("S", _notify(py(NOTIFY_AWARE), period=50))))
    before = datetime.now(UTC)
    with trio.fail_after(30):
        async with open_session(config_for(lp, tmp_path)) as session:
            await session.enqueue(lp.actions)
            await session.recorder.wait_for_line("ready")
            await session.send(Cancel(reason="test"))
    [ended] = [e for e in session.recorder.events if isinstance(e, ActionEnded)]
    assert (ended.state, ended.exit_code) == (ActionState.CANCELED, 0)
    [term] = [line for line in session.recorder.output() if line.startswith("term ")]
    notify_end = datetime.strptime(term.split()[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 45 <= (notify_end - before).total_seconds() <= 55


IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)


@pytest.mark.parametrize(
    ("where", "expected_period"),
    [("task", 120), ("environment", 30)],
)
async def test_notify_period_defaults_then_kill(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, where: str, expected_period: int
) -> None:
    """Without notifyPeriodInSeconds a task gets 120 s and an environment action 30 s
    between SIGTERM and SIGKILL."""
    action = _notify(py(IGNORES_TERM))
    if where == "task":
        template = job(step("S", action))
    else:
        template = job(step("S", echo("task")), jobEnvironments=[env("E", action)])
    lp = plan(tmp_path, template)
    async with open_session(config_for(lp, tmp_path)) as session:
        await session.enqueue(lp.actions)
        await session.recorder.wait_for_line("ready")
        canceled_at = trio.current_time()
        await session.send(Cancel(reason="test"))
        ended = await session.recorder.wait_for(lambda e: isinstance(e, ActionEnded))
        killed_after = trio.current_time() - canceled_at
    assert isinstance(ended, ActionEnded)
    assert (ended.state, ended.exit_code) == (ActionState.CANCELED, -signal.SIGKILL)
    assert expected_period <= killed_after < expected_period + 1


async def test_cancel_time_limit_shortens_the_notify_period(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A second cancel with a time limit brings the SIGKILL forward."""
    lp = plan(tmp_path, job(step("S", _notify(py(IGNORES_TERM), period=500))))
    async with open_session(config_for(lp, tmp_path)) as session:
        await session.enqueue(lp.actions)
        await session.recorder.wait_for_line("ready")
        start = trio.current_time()
        await session.send(Cancel(reason="first"))
        await trio.sleep(10)
        await session.send(Cancel(time_limit=5, reason="hurry"))
        await session.recorder.wait_for(lambda e: isinstance(e, ActionEnded))
        assert 15 <= trio.current_time() - start < 16


async def test_timeout_is_timeout_even_if_the_command_then_exits_zero(tmp_path: Path) -> None:
    """An action over its timeout is cancelled with its method and ends TIMEOUT."""
    task = _notify(
        {
            **py(
                "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(600)"
            ),
            "timeout": 1,
        },
        period=30,
    )
    with trio.fail_after(30):
        recorder = await run_plan(plan(tmp_path, job(step("S", task))), tmp_path)
    [ended] = [e for e in recorder.events if isinstance(e, ActionEnded)]
    assert (ended.state, ended.exit_code) == (ActionState.TIMEOUT, 0)


async def test_on_exit_without_timeout_gets_five_minutes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An environment's onExit with no timeout of its own times out after 300 s."""
    template = job(
        step("S", echo("task")),
        jobEnvironments=[env("E", on_exit=py("import time; time.sleep(3600)"))],
    )
    lp = plan(tmp_path, template)
    async with open_session(config_for(lp, tmp_path)) as session:
        await session.enqueue(lp.actions)
        exit_started = await session.recorder.wait_for(
            lambda e: isinstance(e, ActionStarted) and e.kind is EXIT
        )
        start = trio.current_time()
        ended = await session.recorder.wait_for(
            lambda e: isinstance(e, ActionEnded) and e.kind is EXIT
        )
        assert 300 <= trio.current_time() - start < 301
    assert isinstance(exit_started, ActionStarted)
    assert isinstance(ended, ActionEnded)
    assert ended.state is ActionState.TIMEOUT


async def test_child_holding_output_open_ends_the_action_after_a_grace(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """When the command exits but a child keeps its output open, the action ends
    after 5 s with the command's own exit code and a warning."""
    task = py(SPAWN_GRANDCHILD + "sys.exit(4)")
    lp = plan(tmp_path, job(step("S", task)))
    try:
        async with open_session(config_for(lp, tmp_path)) as session:
            await session.enqueue(lp.actions)
            await session.recorder.wait_for(lambda e: isinstance(e, ActionStarted))
            start = trio.current_time()
            ended = await session.recorder.wait_for(lambda e: isinstance(e, ActionEnded))
            waited = trio.current_time() - start
    finally:
        for line in session.recorder.output():
            if line.startswith("child "):
                try:
                    os.kill(int(line.split()[1]), signal.SIGKILL)
                except ProcessLookupError:
                    pass  # the session's sweep got it first
    assert isinstance(ended, ActionEnded)
    assert (ended.state, ended.exit_code) == (FAILED, 4)
    assert 5 <= waited < 6
    assert any("output stayed open" in line for line in session.recorder.logs())


# ---------------------------------------------------------------------- output


async def test_output_lines_from_a_real_process(tmp_path: Path) -> None:
    """CR, LF, CRLF and a last line without newline come through as lines, bad bytes escaped."""
    code = "import sys; sys.stdout.buffer.write(b'one\\rtwo\\r\\nthree\\n\\xff four')"
    recorder = await run_plan(plan(tmp_path, job(step("S", py(code)))), tmp_path)
    assert recorder.output() == ["one", "two", "three", "\\xff four"]


async def test_large_output_is_read_in_big_chunks(tmp_path: Path) -> None:
    """A megabyte of short lines arrives in a handful of batches, not line by line."""
    code = "import sys; sys.stdout.write('x' * 99 + '\\n') if False else sys.stdout.write(('x' * 99 + '\\n') * 10000)"
    recorder = await run_plan(plan(tmp_path, job(step("S", py(code)))), tmp_path)
    batches = [e for e in recorder.events if isinstance(e, ActionOutput)]
    assert sum(len(b.lines) for b in batches) == 10000
    assert len(batches) <= 20


# ---------------------------------------------------------------------- embedded files


async def test_embedded_files_are_written_before_every_action(tmp_path: Path) -> None:
    """Embedded files are rewritten for each action, 0600 or 0700 when runnable, with
    generated names when none is given."""
    inspect = (
        "import os, stat; "
        "p = '{{Task.File.Data}}'; s = '{{Task.File.Script}}'; "
        "print(open(p).read().strip(), oct(stat.S_IMODE(os.stat(p).st_mode)), oct(stat.S_IMODE(os.stat(s).st_mode)), os.path.basename(s)); "
        "open(p, 'w').write('clobbered')"
    )
    task = step(
        "S",
        py(inspect),
        parameterSpace=int_range("N", "1-2"),
        script={
            "embeddedFiles": [
                {"name": "Data", "type": "TEXT", "data": "frame {{Task.Param.N}}"},
                {
                    "name": "Script",
                    "type": "TEXT",
                    "filename": "run.sh",
                    "runnable": True,
                    "data": "#!/bin/sh\necho hi\n",
                },
            ]
        },
    )
    recorder = await run_plan(plan(tmp_path, job(task)), tmp_path)
    assert recorder.output() == ["frame 1 0o600 0o700 run.sh", "frame 2 0o600 0o700 run.sh"]


async def test_environment_files_are_available_to_enter_and_exit(tmp_path: Path) -> None:
    """Env.File.* is written for both onEnter and onExit."""
    show = py("print(open('{{Env.File.Conf}}').read())")
    environment = env("E", show, show)
    environment["script"]["embeddedFiles"] = [
        {"name": "Conf", "type": "TEXT", "data": "wd={{Session.WorkingDirectory}}"}
    ]
    recorder = await run_plan(
        plan(tmp_path, job(step("S", echo("t")), jobEnvironments=[environment])), tmp_path
    )
    enter_line, _, exit_line = recorder.output()
    assert enter_line == exit_line
    assert enter_line.startswith("wd=" + str(tmp_path / "sessions"))


async def test_runnable_embedded_script_as_command(tmp_path: Path) -> None:
    """A runnable embedded file can be the command itself."""
    task = step(
        "S",
        {"command": "{{Task.File.Run}}"},
        script={
            "embeddedFiles": [
                {
                    "name": "Run",
                    "type": "TEXT",
                    "runnable": True,
                    "data": '#!/bin/sh\necho "from script $0"\n',
                }
            ]
        },
    )
    recorder = await run_plan(plan(tmp_path, job(task)), tmp_path)
    [line] = recorder.output()
    assert line.startswith("from script ") and "embedded_files" in line


# ---------------------------------------------------------------------- session


async def test_working_directory_is_removed_unless_kept(tmp_path: Path) -> None:
    """The session's working directory is deleted at the end, or kept when asked."""
    task = py("import os; print(os.getcwd())")
    lp = plan(tmp_path, job(step("S", task)))
    removed = await run_plan(lp, tmp_path)
    kept = await run_plan(lp, tmp_path, retain_working_directory=True)
    assert not await trio.Path(removed.output()[0]).exists()
    assert await trio.Path(kept.output()[0]).is_dir()
    assert kept.session_ended().working_directory == kept.output()[0]


async def test_path_mapping_applies_to_path_parameters(tmp_path: Path) -> None:
    """PATH job parameters are mapped, and the rules are available to actions."""
    template = job(
        step(
            "S",
            py(
                "import json; print('{{Param.Scene}}', '{{RawParam.Scene}}', '{{Session.HasPathMappingRules}}'); "
                "print(json.load(open('{{Session.PathMappingRulesFile}}'))['path_mapping_rules'][0]['destination_path'])"
            ),
        ),
        parameterDefinitions=[{"name": "Scene", "type": "PATH"}],
    )
    rules = json.dumps(
        {
            "version": "pathmapping-1.0",
            "path_mapping_rules": [
                {
                    "source_path_format": "POSIX",
                    "source_path": "/studio/proj",
                    "destination_path": "/mnt/proj",
                }
            ],
        }
    )
    lp = plan(
        tmp_path, template, parameters=["Scene=/studio/proj/shot1.ma"], path_mapping_rules=rules
    )
    recorder = await run_plan(lp, tmp_path)
    assert recorder.output() == ["/mnt/proj/shot1.ma /studio/proj/shot1.ma true", "/mnt/proj"]


# ---------------------------------------------------------------------- commands


async def test_cancel_of_a_queued_action_drops_only_that_action(tmp_path: Path) -> None:
    """Cancelling a queued action reports it NEVER_ATTEMPTED; the others run."""
    lp = plan(
        tmp_path,
        job(step("S", py("print({{Task.Param.N}})"), parameterSpace=int_range("N", "1-3"))),
    )
    tasks = [a for a in lp.actions if isinstance(a, RunTask)]
    async with open_session(config_for(lp, tmp_path)) as session:
        await session.send(
            Cancel(action_ids=frozenset({tasks[1].action_id}))
        )  # nothing queued yet: no-op
        await session.send(Enqueue(tuple(tasks)))
        await session.send(Cancel(action_ids=frozenset({tasks[2].action_id})))
    recorder = session.recorder
    assert recorder.end_of(tasks[2].action_id).state is NEVER
    assert recorder.end_of(tasks[0].action_id).state is OK
    assert recorder.end_of(tasks[1].action_id).state is OK


async def test_replace_swaps_the_queue_but_not_the_running_action(tmp_path: Path) -> None:
    """Replace keeps the running action, skips finished ones and queues the new list."""
    lp = plan(
        tmp_path,
        job(
            step(
                "S",
                py(
                    "import time; print({{Task.Param.N}}, flush=True); {{Task.Param.N}} == 1 and time.sleep(1)"
                ),
                parameterSpace=int_range("N", "1-4"),
            )
        ),
    )
    t1, t2, t3, t4 = (a for a in lp.actions if isinstance(a, RunTask))
    async with open_session(config_for(lp, tmp_path)) as session:
        await session.enqueue([t1, t2])
        await session.recorder.wait_for_line("1")
        # The farm re-sends the running action and asks for 4 then 3 instead of 2.
        await session.send(Replace((t1, t4, t3)))
    ran = session.recorder.output()
    assert ran == ["1", "4", "3"]
    assert session.recorder.states() == [OK, OK, OK]


async def test_stop_reports_interrupted_at_once_and_exits_environments(tmp_path: Path) -> None:
    """Stop reports the running action INTERRUPTED before it is gone, never attempts the
    queue, runs the environment exits within what is left of the grace, and kills an
    exit still running when the grace is over."""
    # Real time: the processes must get to react to their signals.
    template = job(
        step("S", _notify(py(NOTIFY_AWARE), period=100), parameterSpace=int_range("N", "1-3")),
        jobEnvironments=[
            env("Outer", echo("enter outer"), echo("exit outer")),
            env(
                "Inner",
                echo("enter inner"),
                py("import time; print('exit inner', flush=True); time.sleep(600)"),
            ),
        ],
    )
    lp = plan(tmp_path, template)
    with trio.fail_after(30):
        async with open_session(config_for(lp, tmp_path)) as session:
            await session.enqueue(lp.actions)
            await session.recorder.wait_for_line("ready")
            start = trio.current_time()
            await session.send(Stop(grace=2, reason="draining"))
            inner_exit = await session.recorder.wait_for(
                lambda e: isinstance(e, ActionEnded) and e.kind is EXIT
            )
            killed_after = trio.current_time() - start
    # Reported while handling the Stop, before the process was even signalled.
    events = session.recorder.events
    [interrupted] = [e for e in events if isinstance(e, ActionEnded) and e.action_id == "action-3"]
    [signalled] = [
        e
        for e in events
        if isinstance(e, SessionLog) and e.message.startswith("canceling: SIGTERM")
    ]
    assert interrupted.state is ActionState.INTERRUPTED
    assert events.index(interrupted) < events.index(signalled)
    assert isinstance(inner_exit, ActionEnded)
    assert inner_exit.state is ActionState.CANCELED
    assert 2 <= killed_after < 4
    # The task's SIGTERM handler ran; the inner exit ran until the grace was over;
    # the outer exit had no time left.
    words = [line.split()[0] for line in session.recorder.output()]
    assert words == ["enter", "enter", "ready", "term", "exit"]
    assert session.recorder.states() == [
        OK,
        OK,
        ActionState.INTERRUPTED,
        NEVER,
        NEVER,
        ActionState.CANCELED,
        NEVER,
    ]


async def test_finish_running_only_ends_the_running_task_and_returns_the_queue(
    tmp_path: Path,
) -> None:
    """Finish(running_only=True): the running task runs to its end (no signal), the
    queued tasks are never attempted, reported only after the running one's end, and
    the environment's exit runs."""
    flag = tmp_path / "go"
    waits = f"import os, time\nprint('ready', flush=True)\nwhile not os.path.exists({str(flag)!r}):\n    time.sleep(0.01)\n"
    template = job(
        step("S", py(waits), parameterSpace=int_range("N", "1-3")),
        jobEnvironments=[env("E", echo("enter"), echo("exit"))],
    )
    lp = plan(tmp_path, template)
    with trio.fail_after(30):
        async with open_session(config_for(lp, tmp_path)) as session:
            await session.enqueue(lp.actions)
            await session.recorder.wait_for_line("ready")
            await session.send(Finish(running_only=True))
            await trio.testing.wait_all_tasks_blocked()
            ended = [e for e in session.recorder.events if isinstance(e, ActionEnded)]
            assert [e.state for e in ended] == [OK]  # nothing reported while it runs
            flag.touch()
    assert session.recorder.states() == [OK, OK, NEVER, NEVER, OK]
    assert session.recorder.output().count("ready") == 1
    assert "exit" in session.recorder.output()


async def test_stop_with_no_grace_skips_the_exits(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Stop(grace=0) kills the running action and does not run environment exits."""
    template = job(
        step("S", py(IGNORES_TERM)), jobEnvironments=[env("E", echo("enter"), echo("exit"))]
    )
    lp = plan(tmp_path, template)
    async with open_session(config_for(lp, tmp_path)) as session:
        await session.enqueue(lp.actions)
        await session.recorder.wait_for_line("ready")
        await session.send(Stop(grace=0))
    assert "exit" not in session.recorder.output()
    assert session.recorder.states() == [OK, ActionState.INTERRUPTED, NEVER]


async def test_resolver_failure_fails_only_that_action(tmp_path: Path) -> None:
    """An action whose definition cannot be resolved fails; the session goes on ending cleanly."""
    lp = plan(
        tmp_path,
        job(step("S", echo("task")), jobEnvironments=[env("E", echo("enter"), echo("exit"))]),
    )
    task = lp.actions[1]

    async def resolver(item: object) -> object:
        if item is task:
            raise LookupError("stepDetails: ResourceNotFoundException")
        return item

    async with open_session(config_for(lp, tmp_path), resolver=resolver) as session:
        await session.enqueue(lp.actions)
    recorder = session.recorder
    assert recorder.states() == [OK, FAILED, OK]
    assert "ResourceNotFoundException" in (recorder.end_of(task.action_id).fail_message or "")
    assert recorder.output() == ["enter", "exit"]


async def test_remaining_environments_exit_when_the_session_finishes(tmp_path: Path) -> None:
    """Environments still entered when the queue runs dry are exited at the end."""
    lp = plan(
        tmp_path,
        job(step("S", echo("task")), jobEnvironments=[env("E", echo("enter"), echo("exit"))]),
    )
    async with open_session(config_for(lp, tmp_path)) as session:
        await session.enqueue([a for a in lp.actions if not isinstance(a, ExitEnvironment)])
    assert session.recorder.output() == ["enter", "task", "exit"]
    assert session.recorder.ended()[-1] == (EXIT, None, OK)


class _StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_a_silent_running_action_costs_no_wakeups(tmp_path: Path) -> None:
    """Nothing polls: while a silent process runs, the runner's tasks do not wake."""
    lp = plan(
        tmp_path, job(step("S", py("import time; print('ready', flush=True); time.sleep(3)")))
    )
    counter = _StepCounter()
    async with open_session(config_for(lp, tmp_path)) as session:
        await session.enqueue(lp.actions)
        await session.recorder.wait_for_line("ready")
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(counter)
        await trio.sleep(1)  # a window to observe, not an ordering device
        trio.lowlevel.remove_instrument(counter)
        await session.send(Cancel())
    # This test's own task wakes once for its sleep; a poll would add hundreds.
    assert counter.steps <= 2


async def test_file_modes_of_the_working_directory(tmp_path: Path) -> None:
    """The working directory and its files directory are private to the agent user."""
    task = py(
        "import os, stat; print(oct(stat.S_IMODE(os.stat('.').st_mode)), oct(stat.S_IMODE(os.stat('embedded_files').st_mode)))"
    )
    recorder = await run_plan(plan(tmp_path, job(step("S", task))), tmp_path)
    assert recorder.output() == [f"{oct(stat.S_IRWXU)} {oct(stat.S_IRWXU)}"]
