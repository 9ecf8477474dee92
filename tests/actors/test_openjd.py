"""actors._openjd: what an OpenJD action runs, in which environment, with which cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openjd.expr import PathFormat, PathMappingRule
from openjd.model import decode_environment_template

from actors._messages import EnterEnvironment, ExitEnvironment
from actors._openjd import (
    ENV_ACTION_DEFAULT_NOTIFY_SECONDS,
    ENV_EXIT_DEFAULT_TIMEOUT_SECONDS,
    ActionSetupError,
    SessionContext,
    describe_command,
    sort_path_mapping_rules,
)
from actors._process import CancelMode


def environment(name: str, **fields: Any) -> Any:
    template = {
        "specificationVersion": "environment-2023-09",
        "environment": {"name": name, **fields},
    }
    return decode_environment_template(template=template).environment


def enter(identifier: str, env: Any) -> EnterEnvironment:
    return EnterEnvironment(
        action_id=f"enter-{identifier}", environment_id=identifier, environment=env
    )


def context(tmp_path: Path, **kwargs: Any) -> SessionContext:
    return SessionContext(
        session_id="session-1", working_directory=tmp_path, base_env={"KEEP": "1"}, **kwargs
    )


def test_describe_command_hides_redacted_values() -> None:
    assert describe_command(["echo", "a b"]) == "echo 'a b'"
    shown = describe_command(["echo", "openjd_redacted_env: SECRET=hunter2"])
    assert "hunter2" not in shown and shown.endswith("openjd_redacted_env: ********")


def test_path_mapping_rules_most_specific_first() -> None:
    rules = [
        PathMappingRule(
            source_path_format=PathFormat.POSIX, source_path="/mnt", destination_path="/a"
        ),
        PathMappingRule(
            source_path_format=PathFormat.POSIX,
            source_path="/mnt/shared/projects",
            destination_path="/b",
        ),
        PathMappingRule(
            source_path_format=PathFormat.WINDOWS,
            source_path="C:\\shared\\renders",
            destination_path="/c",
        ),
    ]
    ordered = sort_path_mapping_rules(rules)
    assert [rule.destination_path for rule in ordered] == ["/b", "/c", "/a"]


def test_environment_variables_apply_while_entered_and_go_on_exit(tmp_path: Path) -> None:
    session = context(tmp_path)
    outer = environment("Outer", variables={"COLOR": "red", "SHAPE": "circle"})
    inner = environment("Inner", variables={"COLOR": "blue"})
    assert session.prepare_enter(enter("outer", outer)).argv is None  # no onEnter to run
    session.prepare_enter(enter("inner", inner))
    assert session.entered == ("outer", "inner")
    env = session.process_env({"EXTRA": "x"})
    assert env["COLOR"] == "blue" and env["SHAPE"] == "circle" and env["EXTRA"] == "x"
    assert env["KEEP"] == "1" and env["OPENJD_SESSION_WORKING_DIR"] == str(tmp_path)
    session.finish_exit("inner")
    assert session.process_env({})["COLOR"] == "red"  # the outer value comes back


def test_openjd_env_changes_only_the_environment_being_entered(tmp_path: Path) -> None:
    session = context(tmp_path)
    assert not session.set_variable("A", "1")  # no onEnter running
    session.prepare_enter(enter("e", environment("E", variables={"X": "1"})))
    session.entering = "e"
    assert session.set_variable("A", "1") and session.set_variable("KEEP", None)
    session.entering = None
    env = session.process_env({})
    assert env["A"] == "1" and "KEEP" not in env


def test_on_exit_gets_the_default_timeout_and_notify_period(tmp_path: Path) -> None:
    session = context(tmp_path)
    script = {
        "actions": {
            "onEnter": {"command": "true"},
            "onExit": {
                "command": "echo",
                "args": ["bye"],
                "cancelation": {"mode": "NOTIFY_THEN_TERMINATE"},
            },
        }
    }
    entered = session.prepare_enter(enter("e", environment("E", script=script)))
    assert entered.argv == ("true",) and entered.timeout is None
    exited = session.prepare_exit(ExitEnvironment(action_id="exit-e", environment_id="e"))
    assert exited.argv == ("echo", "bye")
    assert exited.timeout == ENV_EXIT_DEFAULT_TIMEOUT_SECONDS
    assert exited.method.mode is CancelMode.NOTIFY_THEN_TERMINATE
    assert exited.method.notify_period == ENV_ACTION_DEFAULT_NOTIFY_SECONDS


def test_environments_enter_once_and_exit_innermost_first(tmp_path: Path) -> None:
    session = context(tmp_path)
    session.prepare_enter(enter("outer", environment("Outer", variables={"X": "1"})))
    session.prepare_enter(enter("inner", environment("Inner", variables={"X": "2"})))
    with pytest.raises(ActionSetupError, match="already entered"):
        session.prepare_enter(enter("inner", environment("Inner", variables={"X": "2"})))
    with pytest.raises(ActionSetupError, match="innermost entered environment is 'inner'"):
        session.prepare_exit(ExitEnvironment(action_id=None, environment_id="outer"))
