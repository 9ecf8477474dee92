"""Retry policies: which failures of an operation are retried, how often, how long to wait.

The backoff is farmhand's one backoff (``actors._backoff``), the official
agent's: full-jitter exponential, capped at 30 s, never overflowing, with a
``retryAfterSeconds`` from the service as a lower bound.

A ``RetryPolicy`` says, per kind of failure, how many retries a call may spend
(``math.inf``: as long as it takes; callers bound those with their cancel
scopes). An operation's ``rule`` reads the errors whose meaning depends on the
operation (conflicts, not-found) before the standard table:

- ``ThrottlingError``: retried (``throttling`` budget);
- ``InternalServerError``: retried (``server_errors`` budget);
- ``ConflictError`` whose ``reason`` is in ``conflict_reasons``
  (``CONCURRENT_MODIFICATION``): retried, no budget;
- a transient ``TransportError``: retried (``transport_errors`` budget);
- anything else is raised as it is.

When a budget runs out the call raises ``RetriesExhausted`` from the last error.
``give_up_after`` bounds all the budgets in time as well: a failure that comes
that many seconds or more after the call's first attempt is not retried (so a
call takes at most about that long, plus one backoff and one attempt).
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from actors import MAX_BACKOFF, backoff_delay, honour_retry_after

from .._errors import (
    ConflictError,
    InternalServerError,
    RetriesExhausted,
    ServiceError,
    ThrottlingError,
    TransportError,
)

#: How many transport failures one call retries before giving up.
TRANSPORT_RETRIES: Final = 5

RandomSource = Callable[[], float]
"""A source of uniform floats in ``[0, 1)``, like ``random.random``."""


class _Retry(enum.Enum):
    RETRY = "retry"


#: A rule's verdict: retry the call (after the backoff).
RETRY: Final = _Retry.RETRY

Verdict = _Retry | Exception
"""``RETRY``, or the exception the call raises (chained from the failure when it is another)."""


@attrs.frozen
class Attempt:
    """What a rule knows about the attempt that just failed."""

    operation: str
    params: Mapping[str, Any]
    #: 1 for the first attempt.
    number: int
    #: Seconds since the first attempt started, on the Trio clock.
    elapsed: float


Rule = Callable[[ServiceError, Attempt], Verdict | None]
"""An operation's own reading of an error: a verdict, or ``None`` for the standard table."""


@attrs.frozen
class RetryPolicy:
    """How one operation treats each kind of failure (see the module docstring)."""

    throttling: float = math.inf
    server_errors: float = math.inf
    transport_errors: float = TRANSPORT_RETRIES
    conflict_reasons: frozenset[str] = frozenset({"CONCURRENT_MODIFICATION"})
    rule: Rule | None = None
    max_backoff: float = MAX_BACKOFF
    #: Seconds from the first attempt after which no failure is retried (``None``: no limit).
    give_up_after: float | None = None

    def decide(
        self, error: ServiceError | TransportError, attempt: Attempt, spent: Counter[str]
    ) -> Verdict:
        """``RETRY`` or the exception to raise; ``spent`` counts this call's retries by kind."""
        if isinstance(error, ServiceError) and self.rule is not None:
            verdict = self.rule(error, attempt)
            if verdict is not None:
                return verdict
        kind, budget = self._budget(error)
        if kind is None:
            return error
        if self.give_up_after is not None and attempt.elapsed >= self.give_up_after:
            return RetriesExhausted(attempt.operation, attempt.number, error)
        if spent[kind] >= budget:
            if budget == 0:  # never retried: the error is the answer
                return error
            return RetriesExhausted(attempt.operation, attempt.number, error)
        spent[kind] += 1
        return RETRY

    def _budget(self, error: ServiceError | TransportError) -> tuple[str | None, float]:
        if isinstance(error, ThrottlingError):
            return "throttling", self.throttling
        if isinstance(error, InternalServerError):
            return "server", self.server_errors
        if isinstance(error, ConflictError) and error.reason in self.conflict_reasons:
            return "conflict", math.inf
        if isinstance(error, TransportError) and error.transient:
            return "transport", self.transport_errors
        return None, 0

    def delay(self, retry: int, retry_after: float | None, random: RandomSource) -> float:
        """The wait before retry number ``retry``."""
        delay = backoff_delay(retry, random(), cap=self.max_backoff)
        if retry_after is not None:
            delay = honour_retry_after(delay, retry_after, random())
        return delay


#: The standard table with no rule: for operations without a policy of their own.
DEFAULT_POLICY: Final = RetryPolicy()

#: For callers that retry on their own (the log shipper): every failure is raised at once.
NO_RETRIES: Final = RetryPolicy(
    throttling=0, server_errors=0, transport_errors=0, conflict_reasons=frozenset()
)
