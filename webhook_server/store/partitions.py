"""Daily partitions of ``webhook_events`` and of ``webhook_deliveries`` (same days, same bounds,
created and dropped together): naming and the pure create/drop decisions."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

PREFIX = "webhook_events_p"
DELIVERIES_PREFIX = "webhook_deliveries_p"
_NAME = re.compile(rf"^{PREFIX}(\d{{8}})$")


def partition_name(day: date) -> str:
    return f"{PREFIX}{day:%Y%m%d}"


def deliveries_partition_name(day: date) -> str:
    """The ``webhook_deliveries`` partition of the same day as ``partition_name(day)``."""
    return f"{DELIVERIES_PREFIX}{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    match = _NAME.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC).date()


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def days_to_create(now: datetime, ahead_days: int) -> list[date]:
    """Today (UTC) and the next ``ahead_days`` days."""
    today = utc_day(now)
    return [today + timedelta(days=offset) for offset in range(ahead_days + 1)]


def dropped_before(now: datetime, retention_days: int) -> datetime:
    """The oldest moment whose partition is still kept: rows received before it are dropped.

    A partition for day D holds rows in [D, D+1); it may go once D+1 <= now - retention, so rows
    go by whole days: up to a day after their own retention ends.
    """
    day = utc_day(now - timedelta(days=retention_days))
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def partitions_to_drop(existing: Iterable[str], now: datetime, retention_days: int) -> list[str]:
    """Partitions whose every row is older than the retention window (see ``dropped_before``)."""
    cutoff = dropped_before(now, retention_days)
    drop = []
    for name in existing:
        day = partition_day(name)
        if day is None:
            continue
        upper = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        if upper <= cutoff:
            drop.append(name)
    return sorted(drop)


def bounds(day: date) -> tuple[str, str]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start.isoformat(), (start + timedelta(days=1)).isoformat()
