"""The one backoff: its arithmetic, and the loop state that carries it."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._backoff import (
    MAX_BACKOFF,
    MAX_RETRY_AFTER,
    Backoff,
    backoff_delay,
    honour_retry_after,
)

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


@pytest.mark.parametrize(
    ("retry", "cap", "base"), [(0, 30.0, 1.0), (-1, 30.0, 1.0), (1, 0.0, 1.0), (1, 30.0, 0.0)]
)
def test_backoff_rejects_nonsense(retry: int, cap: float, base: float) -> None:
    """Retry numbers start at 1; the cap and the base must be positive."""
    with pytest.raises(ValueError, match=r"retry numbers|cap"):
        backoff_delay(retry, 0.5, cap=cap, base=base)


@given(
    retry=st.integers(min_value=1, max_value=10**30),
    unit=units,
    base=st.floats(min_value=0.001, max_value=100.0),
    cap=caps,
)
def test_a_base_scales_the_start_and_keeps_the_cap(
    retry: int, unit: float, base: float, cap: float
) -> None:
    """With a base (the IMDS poll's interval, an actor's restart unit) the first wait is
    ``base * U(0,1)``, and no wait passes the cap, however late."""
    delay = backoff_delay(retry, unit, cap=cap, base=base)
    assert 0.0 <= delay <= cap
    if retry == 1:
        assert delay == min(base * unit, cap)


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


class _Unit(random.Random):
    """A generator whose every draw is ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_backoff_counts_retries_until_reset() -> None:
    """Each ``next_delay`` is the next retry's; ``reset`` starts over; a retry-after raises it."""
    backoff = Backoff(max_delay=10.0, rng=_Unit(0.5))
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    assert backoff.next_delay(retry_after=5.0) == pytest.approx(5.5)
