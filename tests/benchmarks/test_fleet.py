"""The fleet benchmark's measure of UpdateWorkerSchedule lateness, as the farm sees it."""

from __future__ import annotations

from benchmarks.fleet import due_lateness


def test_each_answer_makes_one_call_due_within_its_interval() -> None:
    events = [
        ("sent", 0.0, 0.0),
        ("answered", 1.0, 15.0),  # next due at 16
        ("sent", 10.0, 0.0),  # a report: on time
        ("answered", 12.0, 15.0),  # due at 27
        ("sent", 29.5, 0.0),  # 2.5 s late
        ("answered", 30.0, 0.0),  # held and answered: due at once
        ("sent", 30.25, 0.0),
        ("answered", 45.0, 15.0),  # due at 60: still owed at the end
    ]
    assert due_lateness(events, 70.0) == [(16.0, 0.0), (27.0, 2.5), (30.0, 0.25), (60.0, 10.0)]


def test_a_retried_call_counts_its_first_attempt_and_a_due_time_ahead_is_not_owed() -> None:
    events = [
        ("answered", 0.0, 15.0),
        ("sent", 14.0, 0.0),  # no answer in time: retried
        ("sent", 74.0, 0.0),
        ("answered", 75.0, 15.0),
    ]
    assert due_lateness(events, 80.0) == [(15.0, 0.0)]
