"""A token bucket per source: ``rate`` tokens a second, at most ``burst`` saved up."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> tuple[bool, int]:
        """Take one token: (allowed, seconds to wait before retrying when not allowed)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True, 0
        return False, max(1, math.ceil((1.0 - self._tokens) / self.rate))

    def give_back(self) -> None:
        """Return a token taken by :meth:`take` (never above ``burst``)."""
        self._tokens = min(self.burst, self._tokens + 1.0)
