"""The one backoff: how long to wait before trying again.

Every retry loop in farmhand (Deadline API calls, log uploads, restarted actors,
the contrib adapters' queue and AWS calls) waits the same way, the official
agent's (``NoOverflowExponentialBackoff``, capped at 30 s by default): before
retry ``n`` (1 for the first) wait ``base * U(0,1) * 2**(n-1)`` seconds, capped;
once ``n - 1`` passes ``2 * log2(cap / base)`` the exponent is never computed
and the wait is ``U(0.8 * cap, cap)``, so a loop that retries for days never
overflows. A server's ``retry-after`` is a lower bound with a little jitter:
``max(delay, after * (1 + U(0, 0.2)))``, ``after`` capped at 300 s so a confused
server cannot park anyone for days.

``backoff_delay`` and ``honour_retry_after`` are the pure functions (the random
draw passed in, so tests and property checks need no seeded generator);
``Backoff`` carries the attempt count and a generator for loops that keep
their own state.
"""

from __future__ import annotations

import math
import random
from typing import Final

#: The longest computed backoff, in seconds, unless a caller caps it otherwise.
MAX_BACKOFF: Final = 30.0
#: A server's ``retry-after`` beyond this is taken as this.
MAX_RETRY_AFTER: Final = 300.0


def backoff_delay(retry: int, unit: float, *, cap: float = MAX_BACKOFF, base: float = 1.0) -> float:
    """The wait before retry number ``retry`` (1 for the first), given ``unit`` from ``U[0, 1)``."""
    if retry < 1:
        raise ValueError(f"retry numbers start at 1, not {retry}")
    if cap <= 0 or base <= 0:
        raise ValueError(f"the backoff cap and base must be positive, not {cap} and {base}")
    if retry - 1 <= 2 * math.log2(max(cap / base, 1.0)):
        return min(base * unit * 2.0 ** (retry - 1), cap)
    return cap * (0.8 + 0.2 * unit)


def honour_retry_after(delay: float, retry_after: float | None, unit: float) -> float:
    """``delay``, raised to the server's ``retry_after`` plus up to 20 % jitter."""
    if retry_after is None or not retry_after > 0:
        return delay
    after = min(float(retry_after), MAX_RETRY_AFTER)
    # One product, not ``after + unit * 0.2 * after``: rounding is monotonic, so
    # this form can never come out above ``after * 1.2``, which the sum can.
    return max(delay, after * (1.0 + 0.2 * unit))


class Backoff:
    """A retry loop's backoff: ``next_delay()`` before each retry, ``reset()`` after a
    success."""

    def __init__(
        self,
        *,
        max_delay: float = MAX_BACKOFF,
        base: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.max_delay = max_delay
        self.base = base
        self._rng = rng or random.Random()
        #: Retries since the last success.
        self.attempt = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.attempt += 1
        delay = backoff_delay(self.attempt, self._rng.random(), cap=self.max_delay, base=self.base)
        return honour_retry_after(delay, retry_after, self._rng.random())

    def reset(self) -> None:
        self.attempt = 0
