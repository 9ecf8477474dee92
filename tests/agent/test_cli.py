"""``python -m agent``: the command table and its help."""

from __future__ import annotations

import pytest

from agent import _cli


def test_help_lists_the_commands_and_the_workers_own_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m agent --help` shows every command and the worker's options, which
    used to appear only with `--farm-id x --help`."""
    assert _cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in _cli.COMMANDS:
        assert f"\n  {name} " in out
    assert "the worker agent (no command):" in out
    assert "--farm-id FARM_ID" in out and "--run-jobs-as-agent-user" in out


def test_no_arguments_is_the_usage_on_stderr_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: python -m agent <command>")


def test_a_keyboard_interrupt_is_one_line_and_status_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """^C before a command reads signals itself (while it imports) exits 130 with one
    line, as a shell reports an interrupted command, not with a traceback (issue 17)."""

    def interrupted(argv: object = None, *, freeze_imports: bool = False) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "main", interrupted)
    with pytest.raises(SystemExit) as exited:
        _cli.program()
    assert exited.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"
