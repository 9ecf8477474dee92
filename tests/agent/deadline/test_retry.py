"""Retry-policy decisions (the backoff itself: tests/actors/test_backoff.py)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from agent._errors import (
    AccessDeniedError,
    ConflictError,
    InternalServerError,
    RetriesExhausted,
    ServiceError,
    ThrottlingError,
    TransportError,
)
from agent.deadline import NO_RETRIES, RETRY, Attempt, RetryPolicy


def _service(cls: type[ServiceError], **fields: object) -> ServiceError:
    return cls("Op", cls.__name__, "message", status=400, fields=fields)


ATTEMPT = Attempt("Op", {}, 1, 0.0)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_service(ThrottlingError), "throttling"),
        (_service(InternalServerError), "server"),
        (TransportError("Op", "reset"), "transport"),
    ],
)
def test_budgets_are_counted_per_kind(error: ServiceError | TransportError, kind: str) -> None:
    """Each kind of failure spends its own budget; past it the call gives up."""
    policy = RetryPolicy(throttling=2, server_errors=2, transport_errors=2)
    spent: Counter[str] = Counter()
    assert policy.decide(error, ATTEMPT, spent) is RETRY
    assert policy.decide(error, ATTEMPT, spent) is RETRY
    assert spent == {kind: 2}
    verdict = policy.decide(error, Attempt("Op", {}, 3, 1.0), spent)
    assert isinstance(verdict, RetriesExhausted)
    assert (verdict.attempts, verdict.last_error) == (3, error)


def test_budgets_do_not_mix() -> None:
    """Throttling retries do not use up the transport budget."""
    policy = RetryPolicy(throttling=math.inf, transport_errors=1)
    spent: Counter[str] = Counter()
    for _ in range(50):
        assert policy.decide(_service(ThrottlingError), ATTEMPT, spent) is RETRY
    assert policy.decide(TransportError("Op", "reset"), ATTEMPT, spent) is RETRY


def test_conflict_reasons_are_retried_and_others_raised() -> None:
    """Only the policy's conflict reasons are retried; other conflicts are the answer."""
    policy = RetryPolicy()
    concurrent = _service(ConflictError, reason="CONCURRENT_MODIFICATION")
    exists = _service(ConflictError, reason="RESOURCE_ALREADY_EXISTS")
    assert policy.decide(concurrent, ATTEMPT, Counter()) is RETRY
    assert policy.decide(exists, ATTEMPT, Counter()) is exists


def test_terminal_errors_are_returned_as_they_are() -> None:
    """Access denied and non-transient transport failures are not retried."""
    denied = _service(AccessDeniedError)
    broken = TransportError("Op", "unsupported scheme", transient=False)
    assert RetryPolicy().decide(denied, ATTEMPT, Counter()) is denied
    assert RetryPolicy().decide(broken, ATTEMPT, Counter()) is broken


def test_no_retries_raises_the_error_itself() -> None:
    """NO_RETRIES hands back the failure itself, not RetriesExhausted."""
    throttled = _service(ThrottlingError)
    assert NO_RETRIES.decide(throttled, ATTEMPT, Counter()) is throttled


def test_rule_comes_before_the_table() -> None:
    """An operation's rule overrides the standard table; None falls through to it."""
    denied = _service(AccessDeniedError)
    throttled = _service(ThrottlingError)
    replacement = RuntimeError("mine")

    def rule(error: ServiceError, attempt: Attempt) -> RuntimeError | None:
        return replacement if error is denied else None

    policy = RetryPolicy(rule=rule)
    assert policy.decide(denied, ATTEMPT, Counter()) is replacement
    assert policy.decide(throttled, ATTEMPT, Counter()) is RETRY


def test_delay_draws_twice_with_retry_after() -> None:
    """The policy's delay draws once for the backoff and once for the retryAfter jitter."""
    draws = iter([0.25, 0.5])
    assert RetryPolicy().delay(3, 10.0, lambda: next(draws)) == 10.0 + 0.5 * 0.2 * 10.0
    capped = RetryPolicy(max_backoff=4.0)
    assert capped.delay(5, None, lambda: 0.75) == 4.0  # 0.75 * 16, capped
    assert capped.delay(6, None, lambda: 0.75) == pytest.approx(3.8)  # past 2*log2(4)


def test_give_up_after_bounds_unlimited_budgets_in_time() -> None:
    """With give_up_after, a retryable failure that late ends the call; an earlier one does not."""
    policy = RetryPolicy(transport_errors=math.inf, give_up_after=60.0)
    reset = TransportError("Op", "connection refused")
    spent: Counter[str] = Counter()
    assert policy.decide(reset, Attempt("Op", {}, 7, 59.9), spent) is RETRY
    verdict = policy.decide(reset, Attempt("Op", {}, 8, 60.0), spent)
    assert isinstance(verdict, RetriesExhausted)
    assert (verdict.attempts, verdict.last_error) == (8, reset)
    denied = _service(AccessDeniedError)  # terminal errors stay themselves
    assert policy.decide(denied, Attempt("Op", {}, 1, 99.0), Counter()) is denied
