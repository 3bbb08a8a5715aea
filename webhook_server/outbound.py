"""Manners for calls we make to other people's servers: back-off, Retry-After, circuit breaking.

Shared by everything that calls out and must not hammer a struggling peer: forwarding stored
events to their consumer, scheduled syncs pulling from a provider's API, and the operator's OAuth
token requests. Pure apart from an injectable clock and random source, so every decision is
unit-tested without sleeping.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
"""A Retry-After further away than this is taken as this: a peer's typo must not park work
for years."""


def exponential_backoff(failures: int, *, base: float, cap: float) -> float:
    """The ceiling of the wait after ``failures`` failures in a row: base, 2·base, 4·base, …, cap.

    Fewer than one failure counts as one, so a caller never retries in a tight loop.
    """
    exponent = min(max(failures, 1) - 1, 64)
    return float(min(base * 2.0**exponent, cap))


def full_jitter_backoff(
    failures: int,
    *,
    base: float,
    cap: float,
    rng: Callable[[], float] = random.random,
) -> float:
    """A wait drawn uniformly from [0, exponential_backoff] ("full jitter").

    Spreads the retries of many clients that failed together, so a peer that comes back is not
    met by all of them at once. Never below ``base / 10``: a zero wait is a tight loop.
    """
    ceiling = exponential_backoff(failures, base=base, cap=cap)
    return max(ceiling * rng(), base / 10.0)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from ``now``: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).

    None when absent or unreadable; capped at MAX_RETRY_AFTER_SECONDS; a date in the past is 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    reference = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - reference).total_seconds(), 0.0), MAX_RETRY_AFTER_SECONDS)


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops calling a peer that keeps failing, then lets one probe find out whether it is back.

    closed: every call goes through; ``failure_threshold`` consecutive failures open it.
    open: no call goes through until ``cool_down_seconds`` have passed since it opened.
    half_open: exactly one call (the probe) goes through; its success closes the circuit, its
    failure opens it again for another cool-down (doubled each time, up to
    ``max_cool_down_seconds``, so a peer that stays down is probed less and less often).
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cool_down_seconds: float = 30.0,
        max_cool_down_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.base_cool_down = cool_down_seconds
        self.max_cool_down = max(max_cool_down_seconds, cool_down_seconds)
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._cool_down = cool_down_seconds
        self._probe_out = False

    @property
    def state(self) -> CircuitState:
        """The state now (an open circuit whose cool-down has passed reads as half-open)."""
        if self._state is CircuitState.OPEN and self._clock() >= self._opened_at + self._cool_down:
            return CircuitState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    def retry_in(self) -> float:
        """Seconds until a call may be tried again (0 when one may go now)."""
        if self._state is CircuitState.OPEN:
            return max(self._opened_at + self._cool_down - self._clock(), 0.0)
        if self._state is CircuitState.HALF_OPEN and self._probe_out:
            return self._cool_down
        return 0.0

    def allow(self) -> bool:
        """May a call go now? In half-open, True once (the probe) until its result is recorded."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        if self._probe_out:
            return False
        self._state = CircuitState.HALF_OPEN
        self._probe_out = True
        return True

    def record_success(self) -> None:
        self._state = CircuitState.CLOSED
        self._consecutive_failures = 0
        self._cool_down = self.base_cool_down
        self._probe_out = False

    def record_failure(self) -> None:
        self._consecutive_failures += 1
        if self._state is CircuitState.HALF_OPEN:
            self._open(min(self._cool_down * 2.0, self.max_cool_down))
        elif (
            self._state is CircuitState.CLOSED
            and self._consecutive_failures >= self.failure_threshold
        ):
            self._open(self.base_cool_down)

    def _open(self, cool_down: float) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._cool_down = cool_down
        self._probe_out = False

    def snapshot(self) -> CircuitSnapshot:
        """What the breaker knows, to keep across processes (a scheduled sync keeps it in
        PostgreSQL between runs). Times are the breaker's clock's: persist with a wall clock."""
        state = CircuitState.CLOSED if self._state is CircuitState.CLOSED else CircuitState.OPEN
        return CircuitSnapshot(state, self._consecutive_failures, self._opened_at, self._cool_down)

    def restore(self, snapshot: CircuitSnapshot) -> None:
        """Continue from ``snapshot``; a probe that was out when it was taken is forgotten (its
        process is gone), so the next call after the cool-down is the probe."""
        self._state = snapshot.state
        self._consecutive_failures = max(snapshot.consecutive_failures, 0)
        self._opened_at = snapshot.opened_at
        self._cool_down = min(max(snapshot.cool_down, self.base_cool_down), self.max_cool_down)
        self._probe_out = False


@dataclass(frozen=True)
class CircuitSnapshot:
    """A :class:`CircuitBreaker`'s state as plain values (``to_json`` / ``from_json``)."""

    state: CircuitState
    consecutive_failures: int
    opened_at: float
    cool_down: float

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "consecutiveFailures": self.consecutive_failures,
            "openedAt": self.opened_at,
            "coolDown": self.cool_down,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CircuitSnapshot:
        """Read what ``to_json`` wrote; anything unreadable is a closed circuit."""
        try:
            state = CircuitState(data["state"])
            return cls(
                CircuitState.OPEN if state is CircuitState.HALF_OPEN else state,
                int(data["consecutiveFailures"]),
                float(data["openedAt"]),
                float(data["coolDown"]),
            )
        except (KeyError, TypeError, ValueError):
            return cls(CircuitState.CLOSED, 0, 0.0, 0.0)


class Pacer:
    """Spaces calls to at most ``rate`` a second (a token bucket of depth ``burst``) for callers
    that wait rather than refuse: ``delay()`` says how long the next call must wait and books it.
    """

    def __init__(
        self, rate: float, burst: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1 or math.isnan(rate):
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def delay(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate
