"""Output decoding, line splitting, redaction and the openjd_* message protocol."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors._output import (
    MAX_LINE_CHARS,
    REDACTED,
    Fail,
    Ignored,
    LogLevel,
    Malformed,
    Message,
    OutputProcessor,
    Progress,
    Redactor,
    Secret,
    SetEnv,
    Status,
    UnsetEnv,
    parse_message,
)


def run(chunks: list[bytes], *, secrets: tuple[str, ...] = (), max_line: int = MAX_LINE_CHARS):
    redactor = Redactor()
    for secret in secrets:
        redactor.add(secret)
    messages: list[Message] = []

    def on_messages(batch: list[Message]) -> None:
        messages.extend(batch)
        for message in batch:
            if isinstance(message, Secret):
                redactor.add(message.value)

    processor = OutputProcessor(redactor, on_messages, max_line=max_line)
    lines: list[str] = []
    for chunk in chunks:
        lines.extend(processor.feed(chunk))
    lines.extend(processor.finish())
    return lines, messages


def reference_lines(data: bytes) -> list[str]:
    """What the output should be: CR, LF and CRLF end lines; a last line is kept."""
    text = data.decode("utf-8", "backslashreplace")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        return []
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


def test_lf_cr_and_crlf_all_end_lines() -> None:
    """LF, CR and CRLF each end exactly one line."""
    lines, _ = run([b"a\nb\rc\r\nd\n"])
    assert lines == ["a", "b", "c", "d"]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    """A CR at the end of one chunk and LF at the start of the next make one line end."""
    lines, _ = run([b"a\r", b"\nb\r", b"c\n"])
    assert lines == ["a", "b", "c"]


def test_last_line_without_newline_is_kept() -> None:
    """Output that does not end in a newline still yields its last line."""
    lines, _ = run([b"first\nlast"])
    assert lines == ["first", "last"]


def test_empty_lines_are_kept() -> None:
    """Blank lines are output lines too."""
    lines, _ = run([b"\n\nx\n\n"])
    assert lines == ["", "", "x", ""]


def test_invalid_utf8_is_shown_as_escapes() -> None:
    """Bytes that are not UTF-8 appear as \\xNN instead of failing the action."""
    lines, _ = run([b"ok \xff\xfe end\n"])
    assert lines == ["ok \\xff\\xfe end"]


def test_multibyte_character_split_across_chunks() -> None:
    """A UTF-8 character cut between two reads is decoded whole."""
    data = "héllo ✓\n".encode()
    cut = data.index("✓".encode()) + 1
    lines, _ = run([data[:cut], data[cut:]])
    assert lines == ["héllo ✓"]


def test_long_lines_are_split_at_the_limit() -> None:
    """A line over the limit becomes several lines of at most the limit."""
    line = "x" * (2 * MAX_LINE_CHARS + 5)
    lines, _ = run([line.encode() + b"\n"])
    assert [len(part) for part in lines] == [MAX_LINE_CHARS, MAX_LINE_CHARS, 5]


def test_long_line_without_newline_is_split_as_it_arrives() -> None:
    """A huge line with no newline is emitted in pieces, not buffered whole."""
    redactor = Redactor()
    processor = OutputProcessor(redactor, lambda _: None, max_line=10)
    assert processor.feed(b"a" * 25) == ["a" * 10, "a" * 10]
    assert processor.finish() == ["a" * 5]


@settings(max_examples=300)
@given(
    data=st.binary(max_size=300).map(
        lambda b: b.replace(b"\x00", b"\r")  # plenty of line ends
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8),
)
def test_chunking_never_changes_the_lines(data: bytes, cuts: list[int]) -> None:
    """However the output is cut into reads, the lines are the same."""
    points = sorted({c for c in cuts if c <= len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    lines, _ = run(chunks)
    assert lines == reference_lines(data)


def test_a_long_line_is_never_cut_inside_a_secret() -> None:
    """A forced split of a long line moves so a secret stays whole (and masked)."""
    lines, _ = run([b"123456SECRET" + b"x" * 30], secrets=("SECRET",), max_line=10)
    assert "".join(lines) == f"123456{REDACTED}" + "x" * 30
    assert all("SEC" not in line and "RET" not in line for line in lines)


@settings(max_examples=300)
@given(
    text=st.text(alphabet=st.sampled_from("aaaab"), max_size=60),
    secret=st.text(alphabet="ab", min_size=2, max_size=6),
    chunk=st.integers(min_value=1, max_value=7),
)
def test_a_secret_never_leaks_whatever_the_chunking(text: str, secret: str, chunk: int) -> None:
    """A secret in a long line is never visible, not even in halves split over
    reads and forced line splits."""
    data = (text + secret + text).encode()
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    lines, _ = run(chunks, secrets=(secret,), max_line=5)
    # One input line: its pieces joined back must not show the secret anywhere.
    assert secret not in "".join(lines)
    assert REDACTED in "".join(lines)


def test_secret_announced_on_a_line_is_masked_on_that_line() -> None:
    """The openjd_redacted_env line itself never shows the value."""
    lines, messages = run([b"openjd_redacted_env: TOKEN=hunter2\nuse hunter2 now\n"])
    assert lines == [f"openjd_redacted_env: TOKEN={REDACTED}", f"use {REDACTED} now"]
    assert SetEnv("TOKEN", "hunter2", redacted=True) in messages


def test_multiline_secret_parts_are_masked() -> None:
    """A JSON-form secret with newlines is masked whole and line by line."""
    lines, _ = run(
        [b'openjd_redacted_env: "KEY=-----BEGIN-----\\nmiddle-part\\n-----END-----"\n'],
    )
    lines2, _ = run(
        [b"x -----BEGIN----- y\nmiddle-part\n-----END-----\n"],
        secrets=("-----BEGIN-----\nmiddle-part\n-----END-----",),
    )
    assert "middle-part" not in "\n".join(lines)
    assert lines2 == [f"x {REDACTED} y", REDACTED, REDACTED]


def test_minimum_secret_length_avoids_masking_letters() -> None:
    """A value shorter than the minimum is not masked."""
    redactor = Redactor(min_length=4)
    redactor.add("e")
    redactor.add("long-secret")
    assert redactor.redact("e long-secret") == f"e {REDACTED}"


def test_parse_progress_status_fail() -> None:
    """The three status messages parse to their values."""
    assert parse_message("openjd_progress: 42.5") == [Progress(42.5)]
    assert parse_message("openjd_status: rendering") == [Status("rendering")]
    assert parse_message("openjd_fail: license missing") == [Fail("license missing")]


def test_progress_out_of_range_or_not_a_number_is_ignored() -> None:
    """Progress must be a number from 0 to 100; anything else is noted and ignored."""
    for value in ("101", "-1", "half", "nan", "inf"):
        [message] = parse_message(f"openjd_progress: {value}")
        assert isinstance(message, Ignored)


def test_parse_env_forms() -> None:
    """openjd_env takes NAME=value and the JSON-quoted form; unset takes a name."""
    assert parse_message("openjd_env: FOO=bar baz") == [SetEnv("FOO", "bar baz")]
    assert parse_message("openjd_env: FOO=") == [SetEnv("FOO", "")]
    assert parse_message('openjd_env: "FOO=a\\nb"') == [SetEnv("FOO", "a\nb")]
    assert parse_message("openjd_unset_env: FOO") == [UnsetEnv("FOO")]
    assert parse_message("openjd_session_runtime_loglevel: debug") == [LogLevel("DEBUG")]


def test_malformed_env_commands() -> None:
    """Broken environment commands are Malformed (they fail the action)."""
    for line in (
        "openjd_env: 1BAD=x",
        "openjd_env: NOEQUALS",
        'openjd_env: "FOO=unterminated',
        "openjd_unset_env: not a name",
    ):
        assert any(isinstance(m, Malformed) for m in parse_message(line)), line


def test_near_misses_are_malformed() -> None:
    """Wrong case, a missing space or leading blanks make a near miss."""
    for line in (
        "openjd_env:NOSPACE=1",
        "OPENJD_ENV: FOO=1",
        "  openjd_env: FOO=1",
        "openjd_unset_env:FOO",
        "openjd_env",
    ):
        assert any(isinstance(m, Malformed) for m in parse_message(line)), line


def test_lookalikes_are_ordinary_lines() -> None:
    """Lines that merely start like a command are not messages."""
    for line in (
        "openjd_environment: ready",
        "openjd_envy",
        "echo openjd_env: FOO=1",
        "openjd_progress:50",
    ):
        assert parse_message(line) == [], line


def test_near_miss_redacted_env_masks_the_value() -> None:
    """A malformed openjd_redacted_env still keeps its value out of the log."""
    lines, messages = run([b"openjd_redacted_env:PASS=swordfish\n"])
    assert "swordfish" not in "\n".join(lines)
    assert any(isinstance(m, Malformed) for m in messages)


# --------------------------------------------------------------------------
# Configured secret patterns

TOKEN = r"tok-[0-9a-f]{8}"


def run_patterns(
    chunks: list[bytes], patterns: tuple[str, ...], *, max_line: int = MAX_LINE_CHARS
) -> list[str]:
    processor = OutputProcessor(Redactor(patterns=patterns), lambda _: None, max_line=max_line)
    lines: list[str] = []
    for chunk in chunks:
        lines.extend(processor.feed(chunk))
    lines.extend(processor.finish())
    return lines


def test_pattern_matches_are_masked() -> None:
    """Every match of a configured pattern is masked; the rest of the line stays."""
    lines = run_patterns([b"key tok-0123abcd and tok-ffffffff.\nnone here\n"], (TOKEN,))
    assert lines == [f"key {REDACTED} and {REDACTED}.", "none here"]


def test_patterns_match_within_one_line() -> None:
    """A pattern never matches across a line end, and ^/$ are the line's ends."""
    redactor = Redactor(patterns=(r"pass\s+\S+", r"^secret$"))
    assert redactor.redact("pass\nword\nsecret\nnot secret") == "pass\nword\n********\nnot secret"
    assert redactor.redact("pass word") == REDACTED


def test_a_pattern_that_can_match_nothing_masks_only_real_matches() -> None:
    """Empty matches are ignored, so a zero-width pattern cannot mask between letters."""
    assert Redactor(patterns=("(?=q)",)).redact("quiet") == "quiet"
    assert Redactor(patterns=("q*",)).redact("aqqa") == f"a{REDACTED}a"


def test_overlapping_value_and_pattern_are_masked_as_one() -> None:
    """A secret value inside a pattern's match leaves no part of either visible."""
    redactor = Redactor(patterns=(TOKEN,))
    redactor.add("3abcd and")
    assert redactor.redact("tok-0123abcd and more") == f"{REDACTED} more"


@settings(max_examples=300)
@given(
    parts=st.lists(
        st.one_of(
            st.text(alphabet="xyz -\n", max_size=12),
            st.text(alphabet="0123456789abcdef", min_size=8, max_size=8).map("tok-".__add__),
        ),
        max_size=12,
    ),
    chunk=st.integers(min_value=1, max_value=9),
    # Matches up to the line limit are kept whole (the limit is 64,000 in use).
    max_line=st.integers(min_value=12, max_value=40),
)
def test_a_pattern_match_never_leaks_whatever_the_chunking(
    parts: list[str], chunk: int, max_line: int
) -> None:
    """Tokens split over reads, and over forced splits of long lines, never show a
    single hex digit (the text around them has none)."""
    data = "".join(parts).encode()
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    out = "\n".join(run_patterns(chunks, (TOKEN,), max_line=max_line))
    assert not set(out) & set("0123456789abcdef"), out
    if any(part.startswith("tok-") for part in parts):
        assert "*" in out  # masked (a mask itself may be cut by the line limit)


@settings(max_examples=300)
@given(
    data=st.text(alphabet="abcqz \n", max_size=80).map(str.encode),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=8),
)
def test_pattern_masking_does_not_depend_on_the_chunking(data: bytes, cuts: list[int]) -> None:
    """Whatever the reads, the masked lines are those of the output read in one go."""
    patterns = (r"ab+c", r"^q", r"z$", r"a\s*c")
    points = sorted({c for c in cuts if c <= len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert run_patterns(chunks, patterns) == run_patterns([data], patterns)
