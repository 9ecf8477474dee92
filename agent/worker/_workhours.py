"""Work hours: the days and times a workstation's worker may take work (``--work-hours``).

The format is a comma-separated list of windows, in the host's local time::

    Mon-Fri 19:00-07:00, Sat-Sun 00:00-24:00
    Mon 18:30-23:00, Wed 18:30-23:00, Sat-Sun
    Fri-Mon 20:00-06:00

Each window is ``DAYS [HH:MM-HH:MM]``:

- ``DAYS`` is a day (``Mon``, or ``Monday``; any case) or a range of days
  (``Mon-Fri``; a range may wrap, ``Fri-Mon`` is Friday to Monday). The days
  are those the window *starts* on.
- The times are a start (``00:00`` to ``23:59``) and an end (``00:01`` to
  ``24:00``). An end at or before the start runs past midnight into the next
  day: ``Mon-Fri 19:00-07:00`` is Monday 19:00 to Tuesday 07:00, ..., Friday
  19:00 to Saturday 07:00. Without times the window is the whole day.
- Windows may overlap; together they are the hours the worker may work.

``parse_work_hours`` reads it (raising ``Invalid`` with what is wrong and
where); ``WorkHours.allows(moment)`` says whether a local time is inside, and
``WorkHours.next_change(moment)`` when that next changes, so the worker can
sleep until then. Times are naive local times (``datetime.now()``); across a
daylight-saving change the worker looks again at least once a minute, so a
window opens or closes within a minute of the wall clock saying so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs

from .._settings import Invalid, suggest

DAY_MINUTES = 24 * 60
WEEK_MINUTES = 7 * DAY_MINUTES

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EXAMPLE = "e.g. 'Mon-Fri 19:00-07:00, Sat-Sun 00:00-24:00'"
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


@attrs.frozen
class Window:
    """One window: it starts on each of ``days`` (0 = Monday) at ``start`` minutes past
    midnight and lasts ``minutes``."""

    days: tuple[int, ...]
    start: int
    minutes: int
    text: str


@attrs.frozen
class WorkHours:
    """When the worker may take work (see the module docstring)."""

    windows: tuple[Window, ...]
    #: The merged intervals of the week, in minutes from Monday 00:00, unrolled over
    #: three weeks (the previous, this and the next), so a window that wraps past
    #: Sunday midnight, and a lookup near either end of the week, need no special case.
    intervals: tuple[tuple[float, float], ...] = attrs.field(repr=False)

    def __str__(self) -> str:
        return ", ".join(window.text for window in self.windows)

    @property
    def always(self) -> bool:
        """The windows cover the whole week."""
        return any(start <= 0 and end >= WEEK_MINUTES for start, end in self.intervals)

    def allows(self, moment: datetime) -> bool:
        """Whether ``moment`` (a local time) is inside a window."""
        at = _minute_of_week(moment)
        return any(start <= at < end for start, end in self.intervals)

    def next_change(self, moment: datetime) -> datetime | None:
        """When ``allows`` next changes after ``moment`` (``None``: never, the windows
        cover the whole week)."""
        if self.always:
            return None
        at = _minute_of_week(moment)
        for start, end in self.intervals:
            if start <= at < end:
                return moment + timedelta(minutes=end - at)
            if start > at:
                return moment + timedelta(minutes=start - at)
        raise AssertionError("the intervals span three weeks")  # pragma: no cover


def _minute_of_week(moment: datetime) -> float:
    return (
        moment.weekday() * DAY_MINUTES
        + moment.hour * 60
        + moment.minute
        + (moment.second + moment.microsecond / 1e6) / 60
    )


def _day(word: str, clause: str) -> int:
    lowered = word.lower()
    if lowered in _DAYS:
        return _DAYS.index(lowered)
    if lowered in _FULL_DAYS:
        return _FULL_DAYS.index(lowered)
    raise Invalid(
        f"{clause!r}: {word!r} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"
        f"{suggest(word.capitalize(), _NAMES)}"
    )


def _days(text: str, clause: str) -> tuple[int, ...]:
    first, dash, last = text.partition("-")
    if not dash:
        return (_day(first, clause),)
    start, end = _day(first, clause), _day(last, clause)
    return tuple((start + offset) % 7 for offset in range((end - start) % 7 + 1))


def _minutes(text: str, clause: str, *, end: bool) -> int:
    found = _TIME.fullmatch(text)
    if found is None:
        raise Invalid(f"{clause!r}: {text!r} is not a time (HH:MM, 24-hour clock)")
    hours, minutes = int(found.group(1)), int(found.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        latest = "24:00" if end else "23:59"
        raise Invalid(f"{clause!r}: {text!r} is not a time from 00:00 to {latest}")
    return hours * 60 + minutes


def _window(clause: str) -> Window:
    words = clause.split()
    if len(words) == 1:
        days, span = _days(words[0], clause), None
    elif len(words) == 2:
        days, span = _days(words[0], clause), words[1]
    else:
        raise Invalid(f"{clause!r}: expected DAYS HH:MM-HH:MM ({_EXAMPLE})")
    if span is None:
        return Window(days, 0, DAY_MINUTES, _describe(days, "00:00-24:00"))
    first, dash, last = span.partition("-")
    if not dash:
        raise Invalid(f"{clause!r}: expected a start and an end, HH:MM-HH:MM")
    start, end = _minutes(first, clause, end=False), _minutes(last, clause, end=True)
    if start == end:
        raise Invalid(
            f"{clause!r}: the window is empty (for the whole day write 00:00-24:00, or the days alone)"
        )
    minutes = end - start if end > start else end + DAY_MINUTES - start
    return Window(days, start, minutes, _describe(days, f"{first}-{last}"))


def _describe(days: Sequence[int], span: str) -> str:
    names = _NAMES[days[0]] if len(days) == 1 else f"{_NAMES[days[0]]}-{_NAMES[days[-1]]}"
    return f"{names} {span}"


def _merged(windows: Sequence[Window]) -> tuple[tuple[float, float], ...]:
    spans = sorted(
        (
            week + day * DAY_MINUTES + window.start,
            week + day * DAY_MINUTES + window.start + window.minutes,
        )
        for window in windows
        for day in window.days
        for week in (-WEEK_MINUTES, 0, WEEK_MINUTES)
    )
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((float(start), float(end)))
    return tuple(merged)


def parse_work_hours(value: object) -> WorkHours:
    """``--work-hours``: a string of comma-separated windows (see the module docstring),
    or, in ``worker.toml``, a list of such strings."""
    if isinstance(value, list | tuple):
        if not all(isinstance(item, str) for item in value):
            raise Invalid(
                f"expected a list of windows such as 'Mon-Fri 19:00-07:00', got {value!r}"
            )
        value = ", ".join(value)
    if not isinstance(value, str):
        raise Invalid(f"expected work hours ({_EXAMPLE}), got {value!r}")
    clauses = [clause.strip() for clause in value.split(",")]
    if not any(clauses):
        raise Invalid(f"expected at least one window ({_EXAMPLE})")
    for clause in clauses:
        if not clause:
            raise Invalid(f"{value!r}: an empty window between commas")
    windows = tuple(_window(clause) for clause in clauses)
    return WorkHours(windows, _merged(windows))
