"""What an action's output does: ``openjd_*`` messages applied to the running action
and its session, and the per-action output cap (``SessionConfig.output_limit``)."""

from __future__ import annotations

from typing import Literal

from . import _output
from ._hostwork import RunningAction
from ._messages import (
    ActionFailMessage,
    ActionKind,
    ActionProgress,
    ActionStatusMessage,
    SessionEvent,
    SessionLog,
)
from ._openjd import SessionContext


def apply_messages(
    session_id: str,
    owner: object,
    messages: list[_output.Message],
    running: RunningAction,
    context: SessionContext,
    pending: list[SessionEvent],
) -> None:
    """Act on ``openjd_*`` messages (synchronously, before redaction); the events they
    make go to ``pending``. ``owner`` (the session runner) holds the live secrets."""
    sid, action_id = session_id, running.action_id
    for message in messages:
        if isinstance(message, _output.Progress):
            running.progress = message.value
            pending.append(ActionProgress(sid, action_id, message.value))
        elif isinstance(message, _output.Status):
            running.status_message = message.message
            pending.append(ActionStatusMessage(sid, action_id, message.message))
        elif isinstance(message, _output.Fail):
            running.fail_message = message.message
            pending.append(ActionFailMessage(sid, action_id, message.message))
        elif isinstance(message, _output.Secret):
            if context.redactor.add(message.value):
                # Also kept out of the agent's own log while the session lives.
                _output.LIVE_SECRETS.add(id(owner), message.value)
        elif isinstance(message, _output.SetEnv | _output.UnsetEnv):
            pending.extend(_apply_variable(sid, message, running, context))
        elif isinstance(message, _output.Malformed):
            if message.redacted and context.redacted_env_allowed:
                pending.append(
                    SessionLog(sid, action_id, "warning", f"{message.error}; no variable set")
                )
                continue
            running.fail_message = message.error
            running.mark_failed = True
            pending.append(ActionFailMessage(sid, action_id, message.error))
            pending.append(
                SessionLog(sid, action_id, "error", f"{message.error}; failing the action")
            )
            running.control.cancel(mark_failed=True, reason=message.error)
        elif isinstance(message, _output.Ignored):
            pending.append(SessionLog(sid, action_id, "warning", message.note))


def _apply_variable(
    sid: str,
    message: _output.SetEnv | _output.UnsetEnv,
    running: RunningAction,
    context: SessionContext,
) -> list[SessionEvent]:
    action_id = running.action_id
    if running.kind is not ActionKind.ENV_ENTER:
        name = message.name
        return [
            SessionLog(
                sid,
                action_id,
                "info",
                f"{name}: variables can only be set by an environment's onEnter; ignored",
            )
        ]
    if isinstance(message, _output.UnsetEnv):
        context.set_variable(message.name, None)
        return []
    if message.redacted and not context.redacted_env_allowed:
        return [
            SessionLog(
                sid,
                action_id,
                "warning",
                f"openjd_redacted_env: {message.name} is masked but not set; the template "
                "must declare the REDACTED_ENV_VARS extension",
            )
        ]
    context.set_variable(message.name, message.value)
    return []


def output_limit_reached(
    session_id: str,
    cap: OutputCap,
    mode: Literal["truncate", "fail"],
    running: RunningAction,
    pending: list[SessionEvent],
) -> None:
    """The action's output has just passed its cap: say so, and fail it in ``fail``
    mode (cancelled its own way)."""
    sid, action_id = session_id, running.action_id
    message = f"{OUTPUT_LIMIT_FAILURE}: the action printed more than {cap.describe()}"
    if mode == "fail":
        running.fail_message = message
        running.mark_failed = True
        pending.append(ActionFailMessage(sid, action_id, message))
        pending.append(SessionLog(sid, action_id, "error", f"{message}; failing the action"))
        running.control.cancel(mark_failed=True, reason=message)
    else:
        pending.append(
            SessionLog(
                sid,
                action_id,
                "warning",
                f"{message}; the rest of its output is not kept (it runs on)",
            )
        )


#: How an output-limit message starts (a failure, or the note where output stops).
OUTPUT_LIMIT_FAILURE = "output limit exceeded"


class OutputCap:
    """Counts an action's output (characters, a newline each line) against its cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.full = False
        #: Set by the ``take`` that crossed the cap, and only by it.
        self.crossed_now = False

    def take(self, lines: list[str]) -> list[str]:
        """The lines that still fit (whole lines only); nothing once the cap is reached."""
        self.crossed_now = False
        if self.full:
            return []
        kept: list[str] = []
        for line in lines:
            size = len(line) + 1
            if self.used + size > self.limit:
                self.full = self.crossed_now = True
                break
            self.used += size
            kept.append(line)
        return kept

    def describe(self) -> str:
        if self.limit >= 2**20:
            return f"{self.limit / 2**20:.1f} MiB"
        if self.limit >= 2**10:
            return f"{self.limit / 2**10:.1f} KiB"
        return f"{self.limit} characters"
