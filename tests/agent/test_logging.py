"""farmhand's own log: formats, bound ids, rotation, and secrets kept out of it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from actors._output import LIVE_SECRETS
from agent._logging import RotatingFile, add_log_sink, configure_logging, remove_log_sink
from tests.session_harness import job, plan, py, run_plan, step


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    configure_logging()  # closes the file a test configured
    structlog.reset_defaults()


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_configured_patterns_never_reach_the_stream_the_file_or_a_sink(tmp_path: Path) -> None:
    """A pattern's matches are masked in the event, in values, nested values and
    objects, before the stream, the rotating file and the CloudWatch sink see them."""
    stream = io.StringIO()
    sunk: list[str] = []
    configure_logging(
        stream=stream,
        json_format=True,
        file=tmp_path / "agent.log",
        secret_patterns=(r"tok-[0-9a-f]{8}",),
    )
    add_log_sink(sunk.extend)
    try:
        structlog.get_logger("t").info(
            "saw tok-00000001",
            error="bad tok-00000002",
            nested={"list": ["tok-00000003", 4]},
            obj=ValueError("tok-00000004"),
            count=7,
        )
    finally:
        remove_log_sink(sunk.extend)
    [record] = records(stream)
    everything = stream.getvalue() + (tmp_path / "agent.log").read_text() + "".join(sunk)
    assert "tok-" not in everything
    assert record["event"] == "saw ********"
    assert record["nested"] == {"list": ["********", 4]}
    assert record["obj"] == "********"
    assert record["count"] == 7
    assert len(sunk) == 1


def test_live_session_secrets_are_masked_until_the_session_forgets_them() -> None:
    """openjd_redacted_env values of running sessions are masked in the agent log too."""
    stream = io.StringIO()
    configure_logging(stream=stream, json_format=True)
    logger = structlog.get_logger("t")
    owner = object()
    LIVE_SECRETS.add(owner, "hunter2-value")
    try:
        logger.info("x", detail="leaked hunter2-value?")
    finally:
        LIVE_SECRETS.forget(owner)
    logger.info("y", detail="hunter2-value is no longer a secret")
    first, second = records(stream)
    assert first["detail"] == "leaked ********?"
    assert second["detail"] == "hunter2-value is no longer a secret"


async def test_session_and_action_ids_are_bound_to_log_lines(tmp_path: Path) -> None:
    """Log lines from inside a session carry its id, and from inside an action the action's."""
    stream = io.StringIO()
    configure_logging(stream=stream, json_format=True, verbose=True)
    await run_plan(plan(tmp_path, job(step("S", py("print(1)")))), tmp_path)
    started = [r for r in records(stream) if r["event"] == "session.action_started"]
    assert [(r["session_id"], r["action_id"]) for r in started] == [("local", "action-1")]


def test_console_format_is_one_line_per_record() -> None:
    """The console renderer writes key=value text, masked like JSON."""
    stream = io.StringIO()
    configure_logging(stream=stream, secret_patterns=("s3cr3t",))
    structlog.get_logger("t").warning("worker.thing", detail="has s3cr3t", n=1)
    [line] = stream.getvalue().splitlines()
    assert "worker.thing" in line and "n=1" in line and "********" in line
    assert "s3cr3t" not in line


def test_the_agent_log_rotates_and_keeps_only_its_backups(tmp_path: Path) -> None:
    """Past max_bytes the file rotates; only ``backups`` old files are kept."""
    path = tmp_path / "agent.log"
    log = RotatingFile(path, max_bytes=100, backups=2)
    for index in range(40):
        log.write(f"line {index:03d} " + "x" * 20)
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all(p.stat().st_size <= 100 + 40 for p in tmp_path.iterdir())
    assert "line 039" in path.read_text() or "line 039" in (tmp_path / "agent.log.1").read_text()
    assert (path.stat().st_mode & 0o777) == 0o640
