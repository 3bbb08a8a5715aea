"""The forward outbox in PostgreSQL: claiming due deliveries, recording outcomes, circuits.

Rows of ``webhook_deliveries`` are written with their events by ``insert_events`` (one
statement, so an acknowledged event always has its delivery). From there on:

* a receiver **claims** due rows with ``FOR UPDATE SKIP LOCKED`` and a lease (``leased_by``,
  ``lease_until``); a lease that runs out (its holder died) makes the row claimable again;
* outcomes are **recorded** in batches, one ``UPDATE … FROM unnest(…)`` per batch, and only
  while the recorder still holds the lease (so a late answer never overwrites what another
  replica did after the lease passed to it);
* each process **upserts** its circuit per target on transitions and periodically, which is how
  the operator learns about circuits (webhook_server.store.stats).

Every function takes a connection and runs one statement: the caller owns pools and retries.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# A webhook-id is sent as a header and used by consumers to deduplicate: our event id when it is
# a plain token, else (or when it could be taken for one of ours) a stable id derived from the
# event's identity.
_HEADER_SAFE_ID = re.compile(r"^[A-Za-z0-9._:~+/=-]{1,200}$")
DERIVED_ID_PREFIX = "dfm_"


def webhook_id(source: str, subject: str, event_id: str) -> str:
    """The ``webhook-id`` of a stored event: the same on every attempt and every replica.

    The event id itself when it is a header-safe token (a provider's own id, such as Stripe's
    ``evt_…`` or GitHub's delivery GUID, or our ``sha256:…`` body hash) and the event is not
    scoped by a subject. Otherwise ``dfm_`` and 32 hex digits of the SHA-256 of
    (source, subject, event id): for ids with spaces or non-ASCII characters, and for ``jwt``
    sources, whose ids are only unique per token subject (two callers may both send id ``1``).
    An event id that itself starts with ``dfm_`` is derived too, so the two kinds never meet.
    """
    if (
        not subject
        and _HEADER_SAFE_ID.match(event_id)
        and not event_id.startswith(DERIVED_ID_PREFIX)
    ):
        return event_id
    digest = hashlib.sha256("\x00".join((source, subject, event_id)).encode()).hexdigest()
    return DERIVED_ID_PREFIX + digest[:32]


class State(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Lease:
    """A batch of deliveries held by ``owner`` until ``until``."""

    owner: str
    until: datetime


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this process holds, with what sending it needs."""

    source: str
    subject: str
    event_id: str
    received_at: datetime
    webhook_id: str
    event_type: str | None
    payload: bytes
    headers: dict[str, str]
    attempts: int
    lease_until: datetime
    # The trace context the delivery continues (webhook_deliveries.trace_parent), if any.
    traceparent: str | None = None
    # When a replay re-queued it (webhook_server.store.events), else None.
    requeued_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str, str, datetime]:
        return (self.source, self.subject, self.event_id, self.received_at)

    @property
    def age_from(self) -> datetime:
        """Where its age (for ``maxAgeSeconds`` and the delivery latency) counts from: its
        re-queueing for a replay, else its event's receipt."""
        return self.requeued_at or self.received_at


@dataclass(frozen=True, slots=True)
class Result:
    """What happened to one claimed delivery, to be written by :func:`record`.

    ``attempted`` is False for a delivery given back without a request (its target's circuit
    was open): its attempt count and last status stay as they were.
    """

    source: str
    subject: str
    event_id: str
    received_at: datetime
    state: State
    attempted: bool
    at: datetime
    next_attempt_at: datetime
    status: int | None = None
    error: str | None = None


_CLAIM = """
WITH due AS (
    SELECT source, subject, event_id, received_at
    FROM webhook_deliveries
    WHERE state = 'pending' AND source = $1 AND next_attempt_at <= $2
      AND (lease_until IS NULL OR lease_until <= $2)
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE webhook_deliveries d
    SET lease_until = $4, leased_by = $5
    FROM due
    WHERE d.source = due.source AND d.subject = due.subject AND d.event_id = due.event_id
      AND d.received_at = due.received_at
    RETURNING d.source, d.subject, d.event_id, d.received_at, d.webhook_id, d.attempts,
              d.trace_parent, d.requeued_at
)
SELECT l.*, e.event_type, e.payload, e.headers::text AS headers
FROM leased l
JOIN webhook_events e
  ON e.source = l.source AND e.subject = l.subject AND e.event_id = l.event_id
 AND e.received_at = l.received_at
"""


async def claim(conn: Any, source: str, now: datetime, limit: int, lease: Lease) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries of ``source`` (oldest due first) to ``lease.owner``.

    Rows locked by another claimer are skipped, not waited for; rows whose lease has not run out
    are not due. A delivery whose event is gone (dropped by retention in between) is not
    returned; its row goes with the same partition.
    """
    rows = await conn.fetch(_CLAIM, source, now, limit, lease.until, lease.owner)
    return [
        Claimed(
            source=r["source"],
            subject=r["subject"],
            event_id=r["event_id"],
            received_at=r["received_at"],
            webhook_id=r["webhook_id"],
            event_type=r["event_type"],
            payload=bytes(r["payload"]),
            headers=json.loads(r["headers"]),
            attempts=r["attempts"],
            lease_until=lease.until,
            traceparent=r["trace_parent"],
            requeued_at=r["requeued_at"],
        )
        for r in rows
    ]


_RECORD = """
UPDATE webhook_deliveries d
SET state = r.state,
    attempts = d.attempts + CASE WHEN r.attempted THEN 1 ELSE 0 END,
    next_attempt_at = r.next_attempt_at,
    lease_until = NULL,
    leased_by = NULL,
    last_attempt_at = CASE WHEN r.attempted THEN r.at ELSE d.last_attempt_at END,
    last_status = CASE WHEN r.attempted THEN r.status ELSE d.last_status END,
    last_error = CASE WHEN r.attempted OR r.state = 'dead' THEN r.error ELSE d.last_error END,
    delivered_at = CASE WHEN r.state = 'delivered' THEN r.at ELSE d.delivered_at END,
    dead_at = CASE WHEN r.state = 'dead' THEN r.at ELSE d.dead_at END
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::bool[],
            $7::timestamptz[], $8::timestamptz[], $9::int[], $10::text[])
    AS r(source, subject, event_id, received_at, state, attempted, at, next_attempt_at, status,
         error)
WHERE d.source = r.source AND d.subject = r.subject AND d.event_id = r.event_id
  AND d.received_at = r.received_at AND d.state = 'pending' AND d.leased_by = $11
RETURNING d.source, d.subject, d.event_id, d.received_at
"""


async def record(conn: Any, results: Sequence[Result], owner: str) -> int:
    """Write ``results`` in one statement; returns how many rows this owner still held."""
    if not results:
        return 0
    rows = await conn.fetch(
        _RECORD,
        [r.source for r in results],
        [r.subject for r in results],
        [r.event_id for r in results],
        [r.received_at for r in results],
        [r.state.value for r in results],
        [r.attempted for r in results],
        [r.at for r in results],
        [r.next_attempt_at for r in results],
        [r.status for r in results],
        [r.error for r in results],
        owner,
    )
    return len(rows)


async def release(conn: Any, owner: str, keys: Sequence[tuple[str, str, str, datetime]]) -> int:
    """Give leases back without an attempt (at shutdown): the rows are claimable at once."""
    if not keys:
        return 0
    result: str = await conn.execute(
        """UPDATE webhook_deliveries d SET lease_until = NULL, leased_by = NULL
           FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
               AS k(source, subject, event_id, received_at)
           WHERE d.source = k.source AND d.subject = k.subject AND d.event_id = k.event_id
             AND d.received_at = k.received_at AND d.state = 'pending' AND d.leased_by = $5""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [k[3] for k in keys],
        owner,
    )
    return int(result.rpartition(" ")[2])


async def expire(conn: Any, source: str, now: datetime, max_age_seconds: float) -> int:
    """Dead-letter the pending deliveries of ``source`` older than ``max_age_seconds`` (counted
    from their re-queueing when replayed) that no one holds (a delivery in flight is decided by
    its holder); returns how many."""
    result: str = await conn.execute(
        """UPDATE webhook_deliveries
           SET state = 'dead', dead_at = $2::timestamptz, last_error = 'expired',
               lease_until = NULL, leased_by = NULL
           WHERE state = 'pending' AND source = $1
             AND COALESCE(requeued_at, received_at)
                 < $2::timestamptz - make_interval(secs => $3::double precision)
             AND (lease_until IS NULL OR lease_until <= $2)""",
        source,
        now,
        max_age_seconds,
    )
    return int(result.rpartition(" ")[2])


@dataclass(frozen=True, slots=True)
class Backlog:
    """A source's deliveries as the table has them (every replica's)."""

    pending: int
    oldest_pending: datetime | None
    dead: int


async def backlog(conn: Any, source: str) -> Backlog:
    row = await conn.fetchrow(
        """SELECT
               (SELECT count(*) FROM webhook_deliveries
                WHERE state = 'pending' AND source = $1) AS pending,
               (SELECT min(COALESCE(requeued_at, received_at)) FROM webhook_deliveries
                WHERE state = 'pending' AND source = $1) AS oldest,
               (SELECT count(*) FROM webhook_deliveries
                WHERE state = 'dead' AND source = $1) AS dead""",
        source,
    )
    return Backlog(int(row["pending"]), row["oldest"], int(row["dead"]))


@dataclass(frozen=True, slots=True)
class CircuitRow:
    source: str
    state: str
    consecutive_failures: int
    opened_at: datetime | None
    last_failure_at: datetime | None
    # This process's last successful delivery to the target (kept per source, the latest wins).
    last_delivered_at: datetime | None


async def save_circuits(conn: Any, replica: str, rows: Sequence[CircuitRow], now: datetime) -> None:
    """Upsert this process's circuit row per target (a transition, or the periodic refresh),
    and move each source's last delivery time forward."""
    if not rows:
        return
    await conn.execute(
        """WITH r AS (
               SELECT * FROM unnest($3::text[], $4::text[], $5::int[], $6::timestamptz[],
                                    $7::timestamptz[], $8::timestamptz[])
                   AS r(source, state, failures, opened_at, failed, delivered)
           ), delivered AS (
               UPDATE webhook_sources s
               SET last_delivered_at = GREATEST(s.last_delivered_at, r.delivered)
               FROM r WHERE s.source = r.source AND r.delivered IS NOT NULL
           )
           INSERT INTO webhook_forward_circuits AS c
               (source, replica, state, consecutive_failures, opened_at, last_failure_at,
                updated_at)
           SELECT r.source, $1, r.state, r.failures, r.opened_at, r.failed, $2 FROM r
           ON CONFLICT (source, replica) DO UPDATE
           SET state = EXCLUDED.state,
               consecutive_failures = EXCLUDED.consecutive_failures,
               opened_at = EXCLUDED.opened_at,
               last_failure_at = GREATEST(c.last_failure_at, EXCLUDED.last_failure_at),
               updated_at = EXCLUDED.updated_at""",
        replica,
        now,
        [r.source for r in rows],
        [r.state for r in rows],
        [r.consecutive_failures for r in rows],
        [r.opened_at for r in rows],
        [r.last_failure_at for r in rows],
        [r.last_delivered_at for r in rows],
    )


async def forget_replica(conn: Any, replica: str) -> None:
    """This process is going away: its circuits are no longer anyone's state."""
    await conn.execute("DELETE FROM webhook_forward_circuits WHERE replica = $1", replica)
