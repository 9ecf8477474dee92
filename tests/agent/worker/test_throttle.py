"""agent.worker._throttle: N failed task runs in a row, from two or more jobs, within T."""

from __future__ import annotations

import pytest

from agent._settings import Invalid
from agent.worker._throttle import FailureThrottle, ThrottleRule, parse_failure_throttle


def test_the_rule_is_n_over_seconds() -> None:
    assert parse_failure_throttle("5/300") == ThrottleRule(5, 300)
    assert parse_failure_throttle(" 3 / 5m ") == ThrottleRule(3, 300)
    assert parse_failure_throttle("4/1h") == ThrottleRule(4, 3600)
    assert str(ThrottleRule(5, 300)) == "5/300"
    for bad, message in [
        ("5", "expected N/SECONDS"),
        (5, "expected N/SECONDS"),
        ("1/300", "N must be at least 2"),
        ("5/0", "SECONDS must be more than 0"),
    ]:
        with pytest.raises(Invalid, match=message):
            parse_failure_throttle(bad)


def test_failures_across_jobs_within_the_window_trip_it_once() -> None:
    """Three in a row from two jobs within 60 s trip it; the count then starts again."""
    throttle = FailureThrottle(ThrottleRule(3, 60))
    assert throttle.record("a", failed=True, now=0) is None
    assert throttle.record("a", failed=True, now=10) is None
    tripped = throttle.record("b", failed=True, now=20)
    assert tripped is not None
    assert (tripped.failures, tripped.jobs, tripped.seconds) == (3, ("a", "b"), 20)
    assert tripped.describe() == "3 failed task runs in a row from 2 jobs within 20 s"
    assert throttle.record("c", failed=True, now=21) is None  # counting again
    assert (throttle.streak, throttle.trips) == (4, 1)


def test_one_job_a_success_or_old_failures_do_not_trip_it() -> None:
    throttle = FailureThrottle(ThrottleRule(3, 60))
    for now in range(5):
        assert throttle.record("a", failed=True, now=now) is None  # one job only
    throttle.record("a", failed=False, now=5)
    assert throttle.streak == 0
    assert throttle.record("a", failed=True, now=6) is None
    assert throttle.record("b", failed=True, now=7) is None  # two since the success
    assert throttle.record("c", failed=True, now=67) is None  # 6 left the window: 7, 67
    assert throttle.record("c", failed=True, now=68) is None  # 7 left: 67, 68, one job
    assert throttle.record("d", failed=True, now=69) is not None
