"""Backoff: how long a failed job waits before its next try."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from ._exceptions import AsyncJobsError


class BackoffPolicy(Protocol):
    """Anything with ``delay(failed_try) -> seconds`` can be a job's ``backoff``."""

    def delay(self, failed_try: int) -> float: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with a cap and jitter.

    After try ``n`` fails, the nominal delay is ``d = min(cap, base * factor**(n-1))``;
    the actual delay is drawn uniformly from ``[d * (1 - jitter), d]``.
    """

    base: float = 15.0
    factor: float = 2.0
    cap: float = 6 * 3600.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.factor >= 1 and self.cap >= self.base):
            raise AsyncJobsError("Backoff needs base > 0, factor >= 1 and cap >= base")
        if not 0 <= self.jitter <= 1:
            raise AsyncJobsError("Backoff jitter is a fraction from 0 to 1")

    def nominal(self, failed_try: int) -> float:
        """The delay before jitter."""
        exponent = max(0, failed_try - 1)
        if exponent > 1000:  # factor ** exponent would overflow; the cap applies anyway
            return self.cap
        return float(min(self.cap, self.base * self.factor**exponent))

    def bounds(self, failed_try: int) -> tuple[float, float]:
        """(shortest, longest) delay after try ``failed_try`` fails."""
        high = self.nominal(failed_try)
        return high * (1 - self.jitter), high

    def delay(self, failed_try: int, rng: random.Random | None = None) -> float:
        """A delay in :meth:`bounds`."""
        low, high = self.bounds(failed_try)
        return (rng or random).uniform(low, high)


DEFAULT_BACKOFF = Backoff()
