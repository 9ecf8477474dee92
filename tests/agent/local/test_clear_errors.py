"""Bad input to ``run``/``check`` and a closed output are one line and exit status 2,
never a traceback (issue 19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.session_harness import job, py, step

ROOT = Path(__file__).resolve().parents[3]
NOT_UTF8 = b"name: \xff\xfe caf\xe9\n"


def agent(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload]
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("template", "is not UTF-8"),
        ("environment", "is not UTF-8"),
        ("parameters", "is not UTF-8"),
        ("tasks", "is not UTF-8"),
        ("rules", "is not UTF-8"),
        ("deep", "nested"),
        ("deep-parameter", "nested"),
        ("extensions", "extensions"),
        ("maximum-tasks", "--maximum-tasks must be at most"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, where: str, message: str) -> None:
    template = tmp_path / "job.json"
    template.write_text(json.dumps(job(step("S", py("pass")))))
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(NOT_UTF8)
    args = ["run", str(template), "--direct"]
    if where == "template":
        args[1] = str(bad)
    elif where == "environment":
        args += ["--environment", str(bad)]
    elif where == "parameters":
        args += ["-p", f"file://{bad}"]
    elif where == "tasks":
        args += ["--tasks", f"file://{bad}"]
    elif where == "rules":
        args += ["--path-mapping-rules", f"file://{bad}"]
    elif where == "deep":
        template.write_text("[" * 100_000 + "]" * 100_000)
    elif where == "deep-parameter":
        args += ["-p", '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"]
    elif where == "extensions":
        template.write_text(json.dumps(job(step("S", py("pass")), extensions=[[], [None]])))
    elif where == "maximum-tasks":
        args += ["--maximum-tasks", str(10**24)]
    line = one_error_line(agent(*args))
    assert message in line
    if where in ("template", "deep", "extensions"):
        assert message in one_error_line(agent("check", args[1]))


def test_a_closed_output_is_one_line_and_exit_two() -> None:
    """``python -m agent ... | head -1``: the reader has gone before we are done."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "agent", "--help"],
            cwd=ROOT,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: the output was closed before everything was written"
    ]


@pytest.mark.parametrize("how", ["--direct", "through the farm"])
def test_run_refuses_a_session_root_someone_else_prepared(tmp_path: Path, how: str) -> None:
    template = tmp_path / "job.json"
    template.write_text(json.dumps(job(step("S", py("pass")))))
    shared = tmp_path / "shared"
    shared.mkdir()
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    elsewhere.chmod(0o1777)
    (shared / f"farmhand-sessions-{os.geteuid()}").symlink_to(elsewhere)
    extra = ["--direct"] if how == "--direct" else []
    result = agent("run", str(template), *extra, env={**os.environ, "TMPDIR": str(shared)})
    assert "is a symbolic link" in one_error_line(result)
    assert list(elsewhere.iterdir()) == []
