"""The error throttle: a worker whose task runs keep failing, across jobs, pauses.

A task that fails on every worker is its job's problem, and the farm's retry
limits deal with it. A worker that fails task after task of *different* jobs is
more likely the problem itself (a full scratch disk, a lost mount, a broken
driver or licence), and it fails fast, so it takes work from the queue faster
than its healthy peers: a "black hole". Tractor blades pause after 5 errors in
30 s; Afanasy marks such a render SICK. ``--failure-throttle N/SECONDS``: after
N failed task runs in a row (no success between them) from at least two jobs,
within SECONDS, the worker pauses for ``--failure-cooldown`` seconds
(``Worker.pause``), then tries again. A success resets the count.

Only task runs count: a failed environment action ends its session, and its
job's next session on another worker tells the same story. A task that was
canceled, interrupted or never attempted counts neither way.
"""

from __future__ import annotations

import re
from collections import deque

import attrs

from .._settings import Invalid

#: A streak must span at least this many jobs to be the worker's fault.
MIN_JOBS = 2

_RULE = re.compile(r"(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*([smh]?)", re.IGNORECASE)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


@attrs.frozen
class ThrottleRule:
    """N failed task runs in a row, within ``seconds``."""

    failures: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.failures}/{self.seconds:g}"


def parse_failure_throttle(value: object) -> ThrottleRule:
    """``N/SECONDS`` (``5/300``; the seconds may be written ``5m`` or ``1h``)."""
    found = _RULE.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None:
        raise Invalid(
            "expected N/SECONDS, N failed task runs in a row within SECONDS "
            f"(e.g. 5/300 or 5/5m), got {value!r}"
        )
    failures = int(found.group(1))
    seconds = float(found.group(2)) * _UNITS[found.group(3).lower()]
    if failures < MIN_JOBS:
        raise Invalid(
            f"N must be at least {MIN_JOBS}: the failures must come from {MIN_JOBS} jobs, "
            f"got {value!r}"
        )
    if seconds <= 0:
        raise Invalid(f"SECONDS must be more than 0, got {value!r}")
    return ThrottleRule(failures, seconds)


@attrs.frozen
class Tripped:
    """The streak that tripped the throttle."""

    failures: int
    jobs: tuple[str, ...]
    #: From the first of these failures to the last.
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.failures} failed task runs in a row from {len(self.jobs)} jobs "
            f"within {self.seconds:.0f} s"
        )


class FailureThrottle:
    """Counts failed task runs in a row; ``record`` says when the rule is met."""

    def __init__(self, rule: ThrottleRule) -> None:
        self.rule = rule
        #: (time, job) of the failures in a row that are within the rule's seconds.
        self._recent: deque[tuple[float, str]] = deque()
        #: Failed task runs since the last success (for statistics; not trimmed by time).
        self.streak = 0
        self.trips = 0

    def record(self, job_id: str, *, failed: bool, now: float) -> Tripped | None:
        """A task run of ``job_id`` ended: failed, or succeeded (``failed=False``).
        Returns the streak when this failure meets the rule (the count starts again)."""
        if not failed:
            self._recent.clear()
            self.streak = 0
            return None
        self.streak += 1
        self._recent.append((now, job_id))
        while self._recent and now - self._recent[0][0] > self.rule.seconds:
            self._recent.popleft()
        jobs = {job for _, job in self._recent}
        if len(self._recent) < self.rule.failures or len(jobs) < MIN_JOBS:
            return None
        tripped = Tripped(len(self._recent), tuple(sorted(jobs)), now - self._recent[0][0])
        self._recent.clear()
        self.trips += 1
        return tripped
