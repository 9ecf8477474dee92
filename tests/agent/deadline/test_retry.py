"""Backoff arithmetic and retry-policy decisions."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent._errors import (
    AccessDeniedError,
    ConflictError,
    InternalServerError,
    RetriesExhausted,
    ServiceError,
    ThrottlingError,
    TransportError,
)
from agent.deadline import (
    MAX_BACKOFF,
    NO_RETRIES,
    RETRY,
    Attempt,
    RetryPolicy,
    backoff_delay,
    honour_retry_after,
)
from agent.deadline._retry import MAX_RETRY_AFTER

units = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
caps = st.floats(min_value=0.001, max_value=3600.0)


@given(retry=st.integers(min_value=1, max_value=10**30), unit=units, cap=caps)
def test_backoff_stays_within_zero_and_the_cap(retry: int, unit: float, cap: float) -> None:
    """Any retry number, however large, gives a delay in [0, cap] without overflowing."""
    delay = backoff_delay(retry, unit, cap=cap)
    assert 0.0 <= delay <= cap


@given(retry=st.integers(min_value=1, max_value=10), unit=units)
def test_early_backoff_is_full_jitter_exponential(retry: int, unit: float) -> None:
    """Early retries wait U(0,1) * 2**(retry-1), capped at 30 s."""
    assert backoff_delay(retry, unit) == min(unit * 2 ** (retry - 1), MAX_BACKOFF)


@given(retry=st.integers(min_value=11, max_value=10**30), unit=units)
def test_late_backoff_is_between_80_and_100_percent_of_the_cap(retry: int, unit: float) -> None:
    """Past 2*log2(30) retries the delay is U(24, 30), computed without 2**retry."""
    delay = backoff_delay(retry, unit)
    assert 0.8 * MAX_BACKOFF <= delay <= MAX_BACKOFF
    assert delay == pytest.approx(MAX_BACKOFF * (0.8 + 0.2 * unit))


def test_backoff_switches_form_after_two_log2_cap_retries() -> None:
    """Retry 10 still uses the exponential (0.01 * 512 = 5.12); retry 11 uses U(24, 30)."""
    assert 2 * math.log2(MAX_BACKOFF) == pytest.approx(9.81, abs=0.01)
    assert backoff_delay(10, 0.01) == pytest.approx(5.12)
    assert backoff_delay(11, 0.01) == pytest.approx(24.06)


@pytest.mark.parametrize(("retry", "cap"), [(0, 30.0), (-1, 30.0), (1, 0.0)])
def test_backoff_rejects_nonsense(retry: int, cap: float) -> None:
    """Retry numbers start at 1 and the cap must be positive."""
    with pytest.raises(ValueError, match=r"retry numbers|cap"):
        backoff_delay(retry, 0.5, cap=cap)


@given(
    delay=st.floats(min_value=0.0, max_value=30.0),
    after=st.floats(min_value=0.001, max_value=10_000.0),
    unit=units,
)
def test_retry_after_is_a_lower_bound_with_jitter(delay: float, after: float, unit: float) -> None:
    """The wait is at least retryAfter (capped at 300 s) and at most 20 % above the larger."""
    bound = min(after, MAX_RETRY_AFTER)
    result = honour_retry_after(delay, after, unit)
    assert result >= delay
    assert result >= bound
    assert result <= max(delay, bound * 1.2)
    assert result == max(delay, bound * (1.0 + 0.2 * unit))


def test_retry_after_jitter_never_rounds_above_its_bound() -> None:
    """The case CI found: 19.25 s with the largest jitter stays within 20 %."""
    assert honour_retry_after(0.0, 19.25, 0.9999999999999999) <= 19.25 * 1.2


@pytest.mark.parametrize("after", [None, 0.0, -5.0, math.nan])
def test_missing_retry_after_leaves_the_delay(after: float | None) -> None:
    """No, zero, negative or NaN retryAfter leaves the backoff alone."""
    assert honour_retry_after(1.5, after, 0.9) == 1.5


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
