"""Back-off, Retry-After, circuit breaker and pacing: the manners of every outbound call."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from webhook_server.outbound import (
    MAX_RETRY_AFTER_SECONDS,
    CircuitBreaker,
    CircuitSnapshot,
    CircuitState,
    Pacer,
    exponential_backoff,
    full_jitter_backoff,
    parse_retry_after,
)

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    assert [exponential_backoff(n, base=1, cap=10) for n in range(0, 7)] == [
        1.0,
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]
    assert exponential_backoff(10**9, base=1, cap=60) == 60.0


def test_full_jitter_spans_zero_to_the_ceiling_but_never_zero() -> None:
    assert full_jitter_backoff(4, base=1, cap=60, rng=lambda: 1.0) == 8.0
    assert full_jitter_backoff(4, base=1, cap=60, rng=lambda: 0.5) == 4.0
    # A zero draw would be a tight loop: the floor is a tenth of the base.
    assert full_jitter_backoff(4, base=1, cap=60, rng=lambda: 0.0) == pytest.approx(0.1)


def test_full_jitter_spreads_clients_that_failed_together() -> None:
    import random

    rng = random.Random(7)
    waits = [full_jitter_backoff(6, base=1, cap=60, rng=rng.random) for _ in range(200)]
    assert all(0.1 <= w <= 32 for w in waits)
    assert len({round(w, 3) for w in waits}) > 150


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Fri, 04 Dec 2026 12:00:30 GMT", 30.0),
        ("Fri, 04 Dec 2026 11:00:00 GMT", 0.0),  # in the past: now
        ("soon", None),
        ("-5", None),
        ("", None),
        ("٣", None),  # a non-ASCII digit is not delay-seconds
        (str(10**12), MAX_RETRY_AFTER_SECONDS),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_circuit_opens_after_the_threshold_and_probes_once_after_the_cool_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cool_down_seconds=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow()
    assert breaker.retry_in() == 10

    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # and nothing else while it is out
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.consecutive_failures == 0
    assert all(breaker.allow() for _ in range(5))


def test_a_failed_probe_reopens_for_a_longer_cool_down_up_to_the_maximum() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        failure_threshold=1, cool_down_seconds=10, max_cool_down_seconds=25, clock=clock
    )
    breaker.record_failure()
    cool_downs = []
    for _ in range(3):
        clock.now += breaker.retry_in()
        assert breaker.allow()
        breaker.record_failure()
        assert breaker.state is CircuitState.OPEN
        cool_downs.append(breaker.retry_in())
    assert cool_downs == [20, 25, 25]
    clock.now += 25
    assert breaker.allow()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.retry_in() == 10  # a fresh outage starts from the base cool-down


def test_successes_reset_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=Clock())
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is CircuitState.CLOSED


def test_a_circuit_continues_in_another_process_from_its_snapshot() -> None:
    # A sync keeps its circuit in PostgreSQL between runs: each run is a new process.
    clock = Clock()
    first = CircuitBreaker(
        failure_threshold=2, cool_down_seconds=10, max_cool_down_seconds=40, clock=clock
    )
    first.record_failure()
    first.record_failure()
    clock.now += 10
    assert first.allow()  # the probe goes out, and its process dies before it reports
    saved = CircuitSnapshot.from_json(first.snapshot().to_json())
    assert saved.state is CircuitState.OPEN

    second = CircuitBreaker(
        failure_threshold=2, cool_down_seconds=10, max_cool_down_seconds=40, clock=clock
    )
    second.restore(saved)
    assert second.consecutive_failures == 2
    assert second.allow()  # the lost probe is forgotten: this call is the probe
    second.record_failure()
    assert second.retry_in() == 20  # and a failed probe doubles the cool-down, as in one process
    third = CircuitBreaker(failure_threshold=2, cool_down_seconds=10, clock=clock)
    third.restore(CircuitSnapshot.from_json(second.snapshot().to_json()))
    assert not third.allow()
    assert third.retry_in() == 20


def test_an_unreadable_snapshot_is_a_closed_circuit() -> None:
    for data in ({}, {"state": "ajar"}, {"state": "open", "consecutiveFailures": "x"}):
        snapshot = CircuitSnapshot.from_json(data)
        assert (snapshot.state, snapshot.consecutive_failures) == (CircuitState.CLOSED, 0)


def test_pacer_spaces_calls_to_the_rate_after_the_burst() -> None:
    clock = Clock()
    pacer = Pacer(rate=4, burst=2, clock=clock)
    assert [pacer.delay() for _ in range(4)] == [0.0, 0.0, 0.25, 0.5]
    clock.now += 1.0  # the two booked calls have gone, and the burst is saved up again
    assert [pacer.delay() for _ in range(3)] == [0.0, 0.0, 0.25]


def test_pacer_refuses_a_nonsensical_rate() -> None:
    with pytest.raises(ValueError, match="rate"):
        Pacer(rate=0)
