"""What the event store says about one source: the figures the operator puts in its status.

The data plane owns the schema, so it owns this query too; the operator calls
:func:`source_stats` through its one door to the event store (``dfm_operator.eventstore``).
Every replica's work is in the tables (deliveries, and circuits refreshed by each live process),
so one read gives the source's state whatever the number of receivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# A circuit row not refreshed for this long belongs to a process that is gone (receivers refresh
# theirs every statsIntervalSeconds, 15 s by default, and delete them when they stop).
CIRCUIT_LIVE_SECONDS = 120.0
# Dead letters this recent count as "just happened" (the Forwarding condition's DeadLettered).
RECENT_DEAD_SECONDS = 3600.0


@dataclass(frozen=True)
class SourceStats:
    last_event_at: datetime | None
    forward: bool  # whether its receivers registered it as forwarding
    pending: int
    retrying: int  # pending deliveries that failed at least once
    oldest_pending_at: datetime | None
    dead: int
    dead_recently: int  # dead-lettered within RECENT_DEAD_SECONDS
    last_delivered_at: datetime | None
    # The circuit of each live receiver process: "closed", "open" or "half_open".
    circuits: tuple[str, ...]


_STATS = """
SELECT
    (SELECT received_at FROM webhook_events WHERE source = $1
     ORDER BY received_at DESC LIMIT 1) AS last_event_at,
    (SELECT forward FROM webhook_sources WHERE source = $1) AS forward,
    (SELECT last_delivered_at FROM webhook_sources WHERE source = $1) AS last_delivered_at,
    p.pending, p.retrying, p.oldest_pending_at,
    d.dead, d.dead_recently,
    (SELECT coalesce(array_agg(state ORDER BY replica), '{}') FROM webhook_forward_circuits
     WHERE source = $1 AND updated_at >= $2) AS circuits
FROM (SELECT count(*) AS pending, count(*) FILTER (WHERE attempts > 0) AS retrying,
             min(COALESCE(requeued_at, received_at)) AS oldest_pending_at
      FROM webhook_deliveries WHERE state = 'pending' AND source = $1) p,
     (SELECT count(*) AS dead, count(*) FILTER (WHERE dead_at >= $3) AS dead_recently
      FROM webhook_deliveries WHERE state = 'dead' AND source = $1) d
"""


async def source_stats(conn: Any, source: str, now: datetime) -> SourceStats:
    """The figures of ``source`` (``<namespace>/<name>``) as of ``now``, in one statement."""
    row = await conn.fetchrow(
        _STATS,
        source,
        now - timedelta(seconds=CIRCUIT_LIVE_SECONDS),
        now - timedelta(seconds=RECENT_DEAD_SECONDS),
    )
    return SourceStats(
        last_event_at=row["last_event_at"],
        forward=bool(row["forward"]),
        pending=int(row["pending"]),
        retrying=int(row["retrying"]),
        oldest_pending_at=row["oldest_pending_at"],
        dead=int(row["dead"]),
        dead_recently=int(row["dead_recently"]),
        last_delivered_at=row["last_delivered_at"],
        circuits=tuple(row["circuits"]),
    )
