"""The one exponential back-off every retry loop uses (edge and cloud).

Each caller used to carry its own ``delay = min(delay * 2, cap)``; the parameters differ
(an update download starts at 0.5 s and stops at 10 s, a refused prediction batch at 1 s and
60 s, a camera spreads out with jitter) but the rule is one: start at ``initial``, double per
failure, never above ``maximum``, optionally ±``jitter`` so many clients do not retry in step,
and start over after a success. Pure, so it is tested without sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    failures: int,
    initial: float,
    maximum: float,
    jitter: float = 0.0,
    factor: float = 2.0,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """``initial * factor**(failures-1)`` capped at ``maximum``, times ``1 ± jitter``."""
    base = (
        maximum
        if at_maximum(failures, initial, maximum, factor)
        else initial * factor ** max(failures - 1, 0)
    )
    if not jitter:
        return float(base)
    return float(base * (1 + uniform(-jitter, jitter)))


def at_maximum(failures: int, initial: float, maximum: float, factor: float = 2.0) -> bool:
    """True once the un-jittered delay has reached the cap (still retrying, at the slowest pace).

    Counted without computing ``factor**failures``: a source that stays down for days counts
    thousands of failures, and ``2**1100`` no longer converts to a float (OverflowError).
    """
    if failures <= 0:
        return False
    delay = initial
    for _ in range(failures - 1):
        if delay >= maximum:
            return True
        delay *= factor
    return delay >= maximum


class Backoff:
    """The running state of one retry loop: ``next()`` after each failure, ``reset()`` after a success.

    ``current`` is the last delay handed out (0 before the first failure), which status pages
    show as "retrying in N s".
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        jitter: float = 0.0,
        factor: float = 2.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter < 1:
            raise ValueError(
                f"back-off needs 0 < initial <= maximum, factor >= 1 and 0 <= jitter < 1 "
                f"(got initial={initial}, maximum={maximum}, factor={factor}, jitter={jitter})"
            )
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.factor = factor
        self._uniform = uniform
        self.failures = 0
        self.current = 0.0

    def next(self) -> float:
        """Count one more failure and return how long to wait before the next try."""
        self.failures += 1
        self.current = backoff_delay(
            self.failures, self.initial, self.maximum, self.jitter, self.factor, self._uniform
        )
        return self.current

    def reset(self) -> None:
        self.failures = 0
        self.current = 0.0

    @property
    def at_maximum(self) -> bool:
        """True once the un-jittered delay has reached the cap (still retrying, at the slowest pace)."""
        return at_maximum(self.failures, self.initial, self.maximum, self.factor)
