"""Turning an action's raw output into lines, OpenJD messages and redacted text.

Output is read in large chunks and each step here works on a whole chunk with
C-speed string operations. Per-line Python work happens only for lines that
carry an ``openjd_`` message, so a task printing millions of lines costs a few
string passes per chunk, not a Python loop per line.

- ``LineSplitter`` decodes UTF-8 incrementally (invalid bytes become ``\\xNN``),
  ends lines at CR, LF or CRLF (also a CRLF split across two chunks), and keeps a
  last line that has no newline.
- ``Redactor`` masks secret values and matches of configured patterns.
- ``parse_message`` recognises the ``openjd_*`` stdout protocol.
- ``OutputProcessor`` ties them together: bytes in, finished lines out, messages
  handed to a callback *before* redaction is applied, so a secret announced on a
  line is already masked on that very line. Lines longer than
  ``MAX_LINE_CHARS`` characters are split, never inside a secret, so a value
  cannot leak in two halves. Memory is bounded by one chunk plus one maximal
  line, whatever the output size.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator

import attrs

#: Lines longer than this many characters are split into several lines.
MAX_LINE_CHARS = 64_000

#: What a redacted value is replaced with.
REDACTED = "********"

_MESSAGE_RE = re.compile(
    r"openjd_(progress|status|fail|env|redacted_env|unset_env|session_runtime_loglevel): (.+)"
)
# A line that looks like an environment command but is not well formed: wrong
# case, no space after the colon, leading blanks. Anchored on ':', a blank or the
# end, so `openjd_environment: ready` is an ordinary line.
_NEAR_MISS_RE = re.compile(r"(openjd_env|openjd_redacted_env|openjd_unset_env)(?::|\s|\Z)")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR"})


# --------------------------------------------------------------------------
# Lines


class LineSplitter:
    """Incremental bytes-to-text conversion that hands back whole lines."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
        #: The start of a line whose end has not arrived yet.
        self.pending = ""
        self._skip_lf = False  # the previous text ended in CR; a leading LF is its pair

    def feed(self, data: bytes) -> str | None:
        """Decode ``data``; return the lines it completed, joined with ``\\n``."""
        return self._split(self._decoder.decode(data))

    def finish(self) -> str | None:
        """End of output: return the rest, the last line even without a newline."""
        block = self._split(self._decoder.decode(b"", final=True))
        if self.pending:
            tail, self.pending = self.pending, ""
            block = tail if block is None else f"{block}\n{tail}"
        return block

    def cut_pending(self, at: int) -> str:
        """Remove and return the first ``at`` characters of the pending line."""
        piece, self.pending = self.pending[:at], self.pending[at:]
        return piece

    def _split(self, text: str) -> str | None:
        if self._skip_lf and text:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if not text:
            return None
        text = self.pending + text
        end = max(text.rfind("\n"), text.rfind("\r"))
        if end < 0:
            self.pending = text
            return None
        self.pending = text[end + 1 :]
        if text[end] == "\r":
            # A CR at the very end may be the first half of a CRLF.
            self._skip_lf = end == len(text) - 1
            complete = text[:end]
        elif end > 0 and text[end - 1] == "\r":
            complete = text[: end - 1]
        else:
            complete = text[:end]
        if "\r" in complete:
            complete = complete.replace("\r\n", "\n").replace("\r", "\n")
        return complete


# --------------------------------------------------------------------------
# Redaction


class Redactor:
    """Masks secrets in output text: registered values and configured patterns.

    All values are matched by one regular expression, longest first, in a single
    left-to-right scan, so masking a text and choosing where it may be cut agree
    on exactly where each secret is. A value spanning several lines (the JSON
    form of ``openjd_redacted_env`` allows newlines) is masked whole; its first
    and last lines are masked where they appear inside a line, and its middle
    lines where a whole line equals them, as openjd-sessions does. Values shorter
    than ``min_length`` are not registered, so a one-letter "secret" does not mask
    every ``e`` in the log.

    ``patterns`` are regular expressions (the worker's ``secret_patterns``); each
    is matched within one line (``^`` and ``$`` are the line's ends), and every
    non-empty match is masked. Where a value and a match overlap, their union is
    masked as one.
    """

    def __init__(
        self, *, min_length: int = 1, patterns: Iterable[str | re.Pattern[str]] = ()
    ) -> None:
        self._min_length = max(1, min_length)
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._whole_lines: set[str] = set()
        self._regexes = tuple(
            p if isinstance(p, re.Pattern) else re.compile(p, re.MULTILINE) for p in patterns
        )
        self.longest = 0

    def __bool__(self) -> bool:
        return self._pattern is not None or bool(self._whole_lines) or bool(self._regexes)

    @property
    def min_length(self) -> int:
        return self._min_length

    @property
    def has_patterns(self) -> bool:
        """Whether configured patterns are matched (their matches have no known length)."""
        return bool(self._regexes)

    def add(self, value: str) -> bool:
        """Register ``value`` (and its lines, if it has several) for masking; whether
        anything was long enough to register."""
        parts = value.split("\n")
        candidates = {value}
        if len(parts) > 1:
            candidates.update((parts[0], parts[-1]))
            self._whole_lines.update(p for p in parts[1:-1] if len(p) >= self._min_length)
        new = {c for c in candidates if len(c) >= self._min_length} - self._values
        if new:
            self._values |= new
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered)))
            self.longest = len(ordered[0])
        return len(value) >= self._min_length

    def redact(self, text: str) -> str:
        if not self._regexes:
            return text if self._pattern is None else self._pattern.sub(REDACTED, text)
        spans = self._spans(text)
        if not spans:
            return text
        parts = []
        last = 0
        for start, end in spans:
            parts.append(text[last:start])
            parts.append(REDACTED)
            last = end
        parts.append(text[last:])
        return "".join(parts)

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Where the secrets in ``text`` are: sorted, overlapping ones merged."""
        found: list[tuple[int, int]] = []
        if self._pattern is not None:
            found.extend(match.span() for match in self._pattern.finditer(text))
        for regex in self._regexes:
            if regex.search(text) is None:
                continue  # the common case: one C-speed scan of the whole block
            offset = 0
            for line in text.split("\n"):
                for match in regex.finditer(line):
                    start, end = match.span()
                    if end > start:  # a pattern that can match nothing masks nothing there
                        found.append((offset + start, offset + end))
                offset += len(line) + 1
        if len(found) < 2:
            return found
        found.sort()
        merged = [found[0]]
        for start, end in found[1:]:
            last_start, last_end = merged[-1]
            if start < last_end:
                merged[-1] = (last_start, max(last_end, end))
            else:
                merged.append((start, end))
        return merged

    def redact_whole_lines(self, lines: list[str]) -> list[str]:
        whole = self._whole_lines
        if not whole:
            return lines
        return [REDACTED if line in whole else line for line in lines]

    def safe_cut(self, text: str, at: int) -> int:
        """A cut position near ``at`` that does not fall inside a secret in ``text``.

        The cut moves back to the start of the secret that straddles ``at``; if
        that secret starts at 0, forward to its end.
        """
        if self._regexes:
            spans: Iterable[tuple[int, int]] = self._spans(text)
        elif self._pattern is not None:
            spans = (m.span() for m in self._pattern.finditer(text, 0, at + self.longest))
        else:
            return at
        for start, end in spans:
            if start >= at:
                break
            if at < end:
                return start if start > 0 else end
        return at


class SecretRegistry:
    """The secret values of the sessions alive in this process, for text written
    outside them: the agent's own log masks them too (``agent._logging``).

    Each session adds its values under an owner key and forgets them when it ends,
    so a long-running worker does not collect the secrets of every job it ran.
    ``version`` changes whenever the set does, so a reader can cache its matcher.
    """

    def __init__(self) -> None:
        self._by_owner: dict[object, set[str]] = {}
        self.version = 0

    def add(self, owner: object, value: str) -> None:
        values = self._by_owner.setdefault(owner, set())
        if value not in values:
            values.add(value)
            self.version += 1

    def forget(self, owner: object) -> None:
        if self._by_owner.pop(owner, None):
            self.version += 1

    def values(self) -> set[str]:
        return {value for values in self._by_owner.values() for value in values}


#: The process's live session secrets (see ``SecretRegistry``).
LIVE_SECRETS = SecretRegistry()


# --------------------------------------------------------------------------
# The openjd_* stdout protocol


@attrs.frozen
class Progress:
    value: float


@attrs.frozen
class Status:
    message: str


@attrs.frozen
class Fail:
    message: str


@attrs.frozen
class SetEnv:
    name: str
    value: str
    redacted: bool = False


@attrs.frozen
class UnsetEnv:
    name: str


@attrs.frozen
class LogLevel:
    level: str


@attrs.frozen
class Secret:
    """A value to mask from now on (it may or may not also be set as a variable)."""

    value: str


@attrs.frozen
class Ignored:
    """A recognised message with an unusable value: noted, otherwise ignored."""

    note: str


@attrs.frozen
class Malformed:
    """A broken environment command. It fails the running action, except a
    malformed ``openjd_redacted_env`` when the REDACTED_ENV_VARS extension is on
    (then it is only noted, as openjd-sessions does)."""

    error: str
    redacted: bool = False


Message = Progress | Status | Fail | SetEnv | UnsetEnv | LogLevel | Secret | Ignored | Malformed


def parse_message(line: str) -> list[Message]:
    """Parse one output line; ``[]`` when it is not an ``openjd_`` message."""
    match = _MESSAGE_RE.fullmatch(line)
    if match is None:
        return _near_miss(line)
    kind, body = match.group(1), match.group(2)
    if kind == "progress":
        try:
            value = float(body)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 100.0:
            return [Ignored(f"openjd_progress {body!r} ignored: it must be a number from 0 to 100")]
        return [Progress(value)]
    if kind == "status":
        return [Status(body)]
    if kind == "fail":
        return [Fail(body)]
    if kind == "unset_env":
        name = body.lstrip()
        if _NAME_RE.fullmatch(name) is None:
            return [Malformed(f"openjd_unset_env: {name!r} is not a variable name")]
        return [UnsetEnv(name)]
    if kind == "session_runtime_loglevel":
        level = body.strip().upper()
        if level not in _LOG_LEVELS:
            return [Ignored(f"openjd_session_runtime_loglevel {body.strip()!r} is not a log level")]
        return [LogLevel(level)]
    return _parse_assignment(body.lstrip(), redacted=kind == "redacted_env")


def _near_miss(line: str) -> list[Message]:
    lowered = line.lstrip().lower()
    if _NEAR_MISS_RE.match(lowered) is None:
        return []
    messages: list[Message] = []
    if lowered.startswith("openjd_redacted_env"):
        # Whatever follows the command may be secret: mask all of it.
        rest = line.lstrip()[len("openjd_redacted_env") :].lstrip(":").strip()
        if rest:
            messages.append(Secret(rest.partition("=")[2] or rest))
    messages.append(Malformed(f"incorrectly formatted openjd env command: {line.strip()[:200]!r}"))
    return messages


def _parse_assignment(text: str, *, redacted: bool) -> list[Message]:
    command = "openjd_redacted_env" if redacted else "openjd_env"
    if _ASSIGNMENT_RE.fullmatch(text):
        name, _, value = text.partition("=")
        if "\0" in value:  # no process could be started with it
            return _nul_in_value(command, name, value, redacted)
        return [Secret(value), SetEnv(name, value, True)] if redacted else [SetEnv(name, value)]
    messages: list[Message] = []
    if redacted:
        # Mask what follows the first '=' (or everything) even though it is malformed.
        messages.append(Secret(text.partition("=")[2] or text))
    if text.startswith('"'):
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as exc:
            messages.append(
                Malformed(f"{command}: bad JSON string: {exc.msg} (column {exc.colno})", redacted)
            )
            return messages
        if isinstance(decoded, str) and _ASSIGNMENT_RE.fullmatch(decoded):
            name, _, value = decoded.partition("=")
            if "\0" in value:
                return [*messages, *_nul_in_value(command, name, value, redacted)]
            if redacted:
                return [*messages, Secret(value), SetEnv(name, value, True)]
            return [SetEnv(name, value)]
    messages.append(Malformed(f"{command}: expected NAME=value", redacted))
    return messages


def _nul_in_value(command: str, name: str, value: str, redacted: bool) -> list[Message]:
    secret: list[Message] = [Secret(value)] if redacted else []
    return [*secret, Malformed(f"{command}: {name}: the value contains a NUL byte", redacted)]


def _message_lines(block: str) -> Iterator[str]:
    """The lines of ``block`` that contain ``openjd_`` in any case, in order."""
    lowered = block.lower()
    pos = lowered.find("openjd_")
    while pos >= 0:
        start = block.rfind("\n", 0, pos) + 1
        end = block.find("\n", pos)
        if end < 0:
            end = len(block)
        yield block[start:end]
        pos = lowered.find("openjd_", end)


# --------------------------------------------------------------------------
# Putting it together


class OutputProcessor:
    """Bytes in; redacted lines out; messages to ``on_messages`` as they appear.

    ``on_messages`` runs synchronously before the lines carrying those messages
    are redacted, so a secret set on a line is masked on that line too.
    """

    def __init__(
        self,
        redactor: Redactor,
        on_messages: Callable[[list[Message]], None],
        *,
        max_line: int = MAX_LINE_CHARS,
    ) -> None:
        self._splitter = LineSplitter()
        self._redactor = redactor
        self._on_messages = on_messages
        self._max_line = max_line

    def feed(self, data: bytes) -> list[str]:
        lines = self._block(self._splitter.feed(data))
        if len(self._splitter.pending) > self._max_line:
            lines.extend(self._overflow())
        return lines

    def finish(self) -> list[str]:
        lines = self._overflow()
        lines.extend(self._block(self._splitter.finish()))
        return lines

    def _block(self, block: str | None) -> list[str]:
        if block is None:
            return []
        if "openjd_" in block.lower():
            messages = [m for line in _message_lines(block) for m in parse_message(line)]
            if messages:
                self._on_messages(messages)
        redactor = self._redactor
        if redactor:
            block = redactor.redact(block)
        lines = block.split("\n")
        if redactor:
            lines = redactor.redact_whole_lines(lines)
        limit = self._max_line
        if max(map(len, lines)) > limit:
            lines = [
                line[i : i + limit] for line in lines for i in range(0, max(len(line), 1), limit)
            ]
        return lines

    def _overflow(self) -> list[str]:
        """Cut the pending partial line into pieces of at most ``max_line``.

        At least the longest secret's length (``max_line`` with patterns) is held
        back, so a secret at the end of what has arrived is seen whole before any
        cut near it is chosen.
        """
        pieces: list[str] = []
        splitter, redactor, limit = self._splitter, self._redactor, self._max_line
        hold = max(redactor.longest - 1, 0)
        if redactor.has_patterns:
            # A pattern's match has no known length: a match of up to ``limit``
            # characters is seen whole before a cut near it is chosen.
            hold = max(hold, limit)
        while len(splitter.pending) > limit + hold:
            at = redactor.safe_cut(splitter.pending, limit) if redactor else limit
            piece = splitter.cut_pending(at)
            if "openjd_" in piece.lower():
                messages = parse_message(piece)
                if messages:
                    self._on_messages(messages)
            pieces.append(redactor.redact(piece) if redactor else piece)
        return pieces
