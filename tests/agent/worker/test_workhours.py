"""agent.worker._workhours: the --work-hours format, and when the hours open and close."""

from __future__ import annotations

from datetime import datetime

import pytest

from agent._settings import Invalid
from agent.worker._workhours import parse_work_hours

# 2024-05-06 is a Monday.
MON, TUE, FRI, SAT, SUN = 6, 7, 10, 11, 12


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, minute, second)


def test_weeknights_and_weekends() -> None:
    """A window belongs to the day it starts on; an end before the start is the next day."""
    hours = parse_work_hours("Mon-Fri 19:00-07:00, Sat-Sun 00:00-24:00")
    assert str(hours) == "Mon-Fri 19:00-07:00, Sat-Sun 00:00-24:00"
    assert not hours.allows(at(MON, 18, 59, 59))
    assert hours.allows(at(MON, 19))
    assert hours.allows(at(TUE, 6, 59, 59))
    assert not hours.allows(at(TUE, 7))
    assert hours.allows(at(SAT, 12)) and hours.allows(at(SUN, 23, 59))
    # Monday morning follows Sunday's window, not a Monday evening one.
    assert not hours.allows(at(MON, 6))
    assert hours.next_change(at(MON, 6)) == at(MON, 19)
    assert hours.next_change(at(TUE, 3)) == at(TUE, 7)
    # Friday night runs into the weekend: one span from Friday 19:00 to Monday 00:00.
    assert hours.next_change(at(FRI, 20)) == at(MON + 7, 0)


def test_a_wrapping_day_range_and_whole_days() -> None:
    """``Fri-Mon`` is Friday to Monday; days alone are whole days; case is free."""
    hours = parse_work_hours("fri-mon 20:00-06:00")
    assert [window.days for window in hours.windows] == [(4, 5, 6, 0)]
    assert hours.allows(at(MON, 21)) and hours.allows(at(TUE, 5))
    assert not hours.allows(at(TUE, 21))
    whole = parse_work_hours(["Saturday", "Sun"])  # worker.toml may give a list
    assert str(whole) == "Sat 00:00-24:00, Sun 00:00-24:00"
    assert whole.allows(at(SAT, 0)) and not whole.allows(at(MON, 0))
    assert whole.next_change(at(SAT, 10)) == at(MON + 7, 0)


def test_the_whole_week_never_changes() -> None:
    hours = parse_work_hours("Mon-Sun")
    assert hours.always and hours.allows(at(TUE, 3))
    assert hours.next_change(at(TUE, 3)) is None
    assert not parse_work_hours("Mon-Sat").always


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "Mun 10:00-11:00",
            "'Mun' is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun) (did you mean 'Sun'?)",
        ),
        ("Mon 25:00-26:00", "'25:00' is not a time from 00:00 to 23:59"),
        ("Mon 10:00-24:30", "'24:30' is not a time from 00:00 to 24:00"),
        ("Mon 10-11", "'10' is not a time (HH:MM, 24-hour clock)"),
        ("Mon 10:00", "expected a start and an end, HH:MM-HH:MM"),
        ("Mon 10:00-10:00", "the window is empty (for the whole day write 00:00-24:00"),
        ("Mon 10:00 - 11:00", "expected DAYS HH:MM-HH:MM (e.g. 'Mon-Fri 19:00-07:00"),
        ("Mon 10:00-11:00,", "an empty window between commas"),
        ("", "expected at least one window"),
        (7, "expected work hours (e.g. 'Mon-Fri 19:00-07:00, Sat-Sun 00:00-24:00'), got 7"),
        (["Mon", 3], "expected a list of windows"),
    ],
)
def test_mistakes_say_what_and_where(text: object, message: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_work_hours(text)
    assert message in str(caught.value)
