"""Pure decisions of forwarding: what an answer means, and what happens to the delivery next.

No I/O, no clock: ``now`` and the random source are parameters, so every rule is unit-tested.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from webhook_server.config import ForwardConfig
from webhook_server.outbound import bounded_jitter_backoff
from webhook_server.store.outbox import State


class Outcome(enum.StrEnum):
    """What one attempt came to. A closed set: these are metric label values."""

    DELIVERED = "delivered"  # 2xx
    REDIRECT = "redirect"  # 3xx: redirects are not followed (the target must be the URL itself)
    CLIENT_ERROR = "client_error"  # 4xx but the three below
    REQUEST_TIMEOUT = "request_timeout"  # 408
    GONE = "gone"  # 410: the consumer says this endpoint is no more
    RATE_LIMITED = "rate_limited"  # 429
    SERVER_ERROR = "server_error"  # 5xx (and any other status)
    TIMEOUT = "timeout"  # no complete answer within timeoutSeconds
    CONNECTION_ERROR = "connection_error"  # refused, reset, DNS, TLS


class DeadReason(enum.StrEnum):
    """Why a delivery was dead-lettered. A closed set: metric label values and ``last_error``."""

    MAX_ATTEMPTS = "max_attempts"
    EXPIRED = "expired"  # maxAgeSeconds passed since the event was received
    GONE = "gone"  # the target answered 410


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if 300 <= status < 400:
        return Outcome.REDIRECT
    special = {408: Outcome.REQUEST_TIMEOUT, 410: Outcome.GONE, 429: Outcome.RATE_LIMITED}
    if status in special:
        return special[status]
    if 400 <= status < 500:
        return Outcome.CLIENT_ERROR
    return Outcome.SERVER_ERROR


@dataclass(frozen=True)
class Decision:
    """The delivery's next state; ``next_attempt_at`` matters while it is pending."""

    state: State
    next_attempt_at: datetime
    dead_reason: DeadReason | None = None


def decide(
    outcome: Outcome,
    *,
    attempts: int,
    received_at: datetime,
    now: datetime,
    retry_after: float | None,
    forward: ForwardConfig,
    rng: Callable[[], float] = random.random,
) -> Decision:
    """After an attempt (``attempts`` counts it): delivered, dead, or pending until when.

    A failure waits ``bounded_jitter_backoff`` (``backoff.minSeconds``, doubling ceiling up to
    ``backoff.maxSeconds``), or longer when the target's ``Retry-After`` asks for it (capped at
    ``backoff.maxSeconds``). No attempt is scheduled past ``maxAgeSeconds`` after the event was
    received: the last one is made at that age, and its failure is final. 410 Gone is final at
    once: the consumer has said it will not take this delivery, ever.
    """
    if outcome is Outcome.DELIVERED:
        return Decision(State.DELIVERED, now)
    if outcome is Outcome.GONE:
        return Decision(State.DEAD, now, DeadReason.GONE)
    if attempts >= forward.max_attempts:
        return Decision(State.DEAD, now, DeadReason.MAX_ATTEMPTS)
    deadline = received_at + timedelta(seconds=forward.max_age_seconds)
    if now >= deadline:
        return Decision(State.DEAD, now, DeadReason.EXPIRED)
    backoff = forward.backoff
    delay = bounded_jitter_backoff(
        attempts, low=backoff.min_seconds, high=backoff.max_seconds, rng=rng
    )
    if retry_after is not None:
        delay = max(delay, min(retry_after, backoff.max_seconds))
    return Decision(State.PENDING, min(now + timedelta(seconds=delay), deadline))
