"""The operator's forwarding status, decided from the event store's figures (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dfm_operator import constants as c
from dfm_operator.api import ForwardStatus
from dfm_operator.policies import (
    forward_figures,
    forwarding_condition,
    settled_count,
    settled_time,
)
from webhook_server.store.stats import SourceStats

NOW = datetime(2026, 12, 4, 12, 30, 45, tzinfo=UTC)
HEALTHY = SourceStats(
    last_event_at=NOW - timedelta(seconds=3),
    forward=True,
    pending=2,
    retrying=0,
    oldest_pending_at=NOW - timedelta(seconds=1),
    dead=0,
    dead_recently=0,
    last_delivered_at=NOW - timedelta(seconds=2),
    circuits=("closed", "closed"),
)


def reason(stats: SourceStats | None, error: str | None = None) -> tuple[bool | None, str]:
    condition = forwarding_condition(stats, NOW, error)
    assert condition.type == c.FORWARDING
    return condition.status, condition.reason


def test_delivering_idle_and_lagging() -> None:
    assert reason(HEALTHY) == (True, "Delivering")
    idle = replace(
        HEALTHY, pending=0, oldest_pending_at=None, last_delivered_at=NOW - timedelta(hours=1)
    )
    assert reason(idle) == (True, "Idle")
    assert reason(replace(idle, last_delivered_at=None)) == (True, "Idle")
    assert reason(None) == (True, "Idle")  # no receiver has made the tables yet
    behind = replace(HEALTHY, pending=5000, oldest_pending_at=NOW - timedelta(minutes=20))
    assert reason(behind) == (True, "Lagging")


def test_failures_most_serious_first() -> None:
    failing = replace(
        HEALTHY,
        retrying=3,
        oldest_pending_at=NOW - timedelta(minutes=10),
        last_delivered_at=NOW - timedelta(minutes=8),
    )
    assert reason(failing) == (False, "TargetFailing")
    # Retries while other deliveries still succeed: not failing (yet).
    assert reason(replace(failing, last_delivered_at=NOW - timedelta(minutes=1))) == (
        True,
        "Lagging",
    )
    assert reason(replace(HEALTHY, dead=4, dead_recently=1)) == (False, "DeadLettered")
    # Dead letters from long ago are kept and counted, but no longer the news.
    assert reason(replace(HEALTHY, dead=4, dead_recently=0)) == (True, "Delivering")
    opened = replace(failing, circuits=("closed", "open"), dead_recently=2)
    status, why = reason(opened)
    assert (status, why) == (False, "CircuitOpen")
    assert "1 of 2 receivers" in forwarding_condition(opened, NOW).message
    assert reason(HEALTHY, error="OSError") == (None, "StoreUnreachable")


def test_condition_messages_do_not_change_with_the_figures() -> None:
    # A message quoting a count would change the condition (and cost a status write) each read.
    a = forwarding_condition(replace(HEALTHY, pending=3), NOW)
    b = forwarding_condition(replace(HEALTHY, pending=4000), NOW)
    assert a == b


@pytest.mark.parametrize(
    ("written", "now", "kept"),
    [
        (None, 7, 7),
        (0, 1, 1),  # from zero: always
        (1, 0, 0),  # to zero: always
        (3, 4, 4),  # small figures: every change
        (100, 109, 100),  # under a tenth: kept
        (100, 110, 110),  # a tenth: rewritten
        (5000, 4600, 5000),
        (5000, 4400, 4400),
    ],
)
def test_counts_are_rewritten_when_they_move_meaningfully(
    written: int | None, now: int, kept: int
) -> None:
    assert settled_count(written, now) == kept


def test_figures_are_settled_against_what_status_holds() -> None:
    figures = forward_figures(
        replace(HEALTHY, pending=105, dead=3, circuits=("closed", "half_open")),
        {"backlog": 100, "deadLetters": 3},
    )
    status = ForwardStatus.model_validate(figures).model_dump(by_alias=True, mode="json")
    assert status == {
        "backlog": 100,
        "deadLetters": 3,
        "oldestPendingTime": "2026-12-04T12:30:44Z",
        "lastDeliveryTime": "2026-12-04T12:30:43Z",
        "circuit": "HalfOpen",
    }
    # Within the same minute the written time stays; into the next one it is rewritten, exact.
    written = {"lastDeliveryTime": "2026-12-04T12:30:05Z"}
    assert settled_time(written["lastDeliveryTime"], NOW) == NOW.replace(second=5, microsecond=0)
    later = NOW + timedelta(seconds=20)
    assert settled_time(written["lastDeliveryTime"], later) == later
    assert settled_time(None, None) is None
    assert forward_figures(replace(HEALTHY, circuits=("open", "half_open")), None)["circuit"] == (
        "Open"
    )
    assert forward_figures(replace(HEALTHY, circuits=()), None)["circuit"] == "Closed"
