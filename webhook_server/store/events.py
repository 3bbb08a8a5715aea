"""Reading stored events and replaying their deliveries: the one query code of the Events API
(webhook_server.events_api) and of ``dfm events`` (dfm.events_cmd).

An event is named by an opaque id that encodes its primary key (source, subject, event id,
received_at): the provider's own event id is only unique per source (and per token subject for
``jwt`` sources). Lists are newest first and paged by keyset on that same key, never by OFFSET:
a page starts strictly after the last row of the previous one, so rows committed meanwhile never
shift a page (no event is listed twice, none that existed when the walk began is skipped).

A replay puts an event's delivery back in the forward outbox: pending, due now, with a fresh
attempt budget and its age counted from now (``requeued_at``), and the same ``webhook_id``, so
the consumer sees the same ``webhook-id`` header again and can deduplicate. A delivery already
pending is left alone (it is queued); an event of a forwarding source without a delivery row
(stored before its source forwarded) gets one. Rows are re-queued by one upsert that only
touches rows that are not pending, so two replays racing each other, or a replay racing the
forwarder, re-queue a delivery at most once.

Every function takes a connection: the caller owns pools, timeouts and retries.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from webhook_server.store.outbox import webhook_id

# What the delivery of an event can be: the outbox's states, and "none" (no delivery: the source
# does not forward, or did not when the event was stored).
DELIVERY_STATES = ("pending", "delivered", "dead", "none")
# Replays select events in one of these states (never pending: those are queued already).
REPLAYABLE_STATES = ("delivered", "dead", "none")
MAX_PAGE_SIZE = 500
# Payloads can be up to a source's maxBodyBytes each: a page that carries them is kept small.
MAX_PAYLOAD_PAGE_SIZE = 20
DEFAULT_PAGE_SIZE = 50

EventKey = tuple[str, str, str, datetime]
# Far above the longest id of a storable event (source, subject and event id of at most a few
# hundred characters each, 4 bytes a character at worst, in base64).
MAX_ID_CHARS = 16_384


class BadEventId(ValueError):
    """Not an id this module made (or a damaged one)."""


def encode_id(key: EventKey) -> str:
    """The opaque, URL-safe id of the event ``key`` (also a list cursor)."""
    source, subject, event_id, received_at = key
    micros = _micros(received_at)
    raw = json.dumps(
        [source, subject, event_id, micros], separators=(",", ":"), ensure_ascii=False
    ).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_id(text: str) -> EventKey:
    """The key an :func:`encode_id` id names; raises :class:`BadEventId` for anything else."""
    if not text or len(text) > MAX_ID_CHARS:
        raise BadEventId("not an event id")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadEventId("not an event id") from None
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, str) for v in value[:3])
        or not isinstance(value[3], int)
        or isinstance(value[3], bool)
    ):
        raise BadEventId("not an event id")
    try:
        received_at = _EPOCH + timedelta(microseconds=value[3])
    except OverflowError:
        raise BadEventId("not an event id") from None
    return (value[0], value[1], value[2], received_at)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(at: datetime) -> int:
    delta = at.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events: every field narrows the selection; None means "any"."""

    # Source keys (namespace/name). None: every source in the database.
    sources: Sequence[str] | None = None
    event_type: str | None = None
    # The provider's own event id (unique per source, and per subject for jwt sources).
    event_id: str | None = None
    # received_at in [since, until).
    since: datetime | None = None
    until: datetime | None = None
    # One of DELIVERY_STATES.
    state: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in DELIVERY_STATES:
            raise ValueError(f"state must be one of {', '.join(DELIVERY_STATES)}")


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event's row in the forward outbox, as the table has it."""

    state: str
    webhook_id: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    dead_at: datetime | None
    requeued_at: datetime | None
    replays: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    source: str
    subject: str
    event_id: str
    event_type: str | None
    received_at: datetime
    request_id: str
    event_count: int
    size: int
    delivery: Delivery | None
    # Only when asked for.
    payload: bytes | None = None
    headers: dict[str, str] | None = None

    @property
    def key(self) -> EventKey:
        return (self.source, self.subject, self.event_id, self.received_at)

    @property
    def id(self) -> str:
        return encode_id(self.key)

    def to_json(self) -> dict[str, Any]:
        """The event as the Events API answers it (and ``dfm events -o json`` prints it)."""
        out: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "eventId": self.event_id,
            "subject": self.subject or None,
            "type": self.event_type,
            "receivedAt": _time(self.received_at),
            "requestId": self.request_id,
            "eventCount": self.event_count,
            "size": self.size,
            "delivery": None,
        }
        d = self.delivery
        if d is not None:
            out["delivery"] = {
                "state": d.state,
                "webhookId": d.webhook_id,
                "attempts": d.attempts,
                "nextAttemptAt": _time(d.next_attempt_at) if d.state == "pending" else None,
                "lastAttemptAt": _time(d.last_attempt_at),
                "lastStatus": d.last_status,
                "lastError": d.last_error,
                "deliveredAt": _time(d.delivered_at),
                "deadAt": _time(d.dead_at),
                "requeuedAt": _time(d.requeued_at),
                "replays": d.replays,
            }
        if self.payload is not None:
            try:
                out["payload"] = self.payload.decode("utf-8")
                out["payloadEncoding"] = "utf-8"
            except UnicodeDecodeError:
                out["payload"] = base64.b64encode(self.payload).decode()
                out["payloadEncoding"] = "base64"
            out["headers"] = self.headers or {}
        return out


def _time(at: datetime | None) -> str | None:
    if at is None:
        return None
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


_COLUMNS = """
SELECT e.source, e.subject, e.event_id, e.event_type, e.received_at, e.request_id,
       e.event_count, octet_length(e.payload) AS size, {payload}
       d.state, d.webhook_id, d.attempts, d.next_attempt_at, d.last_attempt_at, d.last_status,
       d.last_error, d.delivered_at, d.dead_at, d.requeued_at, d.replays
FROM webhook_events e
LEFT JOIN webhook_deliveries d
  ON d.source = e.source AND d.subject = e.subject AND d.event_id = e.event_id
 AND d.received_at = e.received_at
"""
_WITH_PAYLOAD = "e.payload, e.headers::text AS headers,"
_COUNT_WITH_DELIVERY = """
SELECT count(*) FROM webhook_events e
JOIN webhook_deliveries d
  ON d.source = e.source AND d.subject = e.subject AND d.event_id = e.event_id
 AND d.received_at = e.received_at
"""
# The keyset order: newest first, the rest of the primary key breaking ties.
_ORDER = "ORDER BY e.received_at DESC, e.source DESC, e.subject DESC, e.event_id DESC"


def _where(selection: EventFilter, args: list[Any]) -> list[str]:
    """SQL conditions for ``selection`` (only those it sets, so the planner prunes partitions
    by time and uses the (source, received_at) index); values go to ``args``."""

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = []
    if selection.sources is not None:
        where.append(f"e.source = ANY({arg(list(selection.sources))}::text[])")
    if selection.event_type is not None:
        where.append(f"e.event_type = {arg(selection.event_type)}")
    if selection.event_id is not None:
        where.append(f"e.event_id = {arg(selection.event_id)}")
    if selection.since is not None:
        where.append(f"e.received_at >= {arg(selection.since)}")
    if selection.until is not None:
        where.append(f"e.received_at < {arg(selection.until)}")
    if selection.state == "none":
        where.append("d.state IS NULL")
    elif selection.state is not None:
        where.append(f"d.state = {arg(selection.state)}")
    return where


def _stored(row: Any, with_payload: bool) -> StoredEvent:
    delivery = None
    if row["state"] is not None:
        delivery = Delivery(
            state=row["state"],
            webhook_id=row["webhook_id"],
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            last_attempt_at=row["last_attempt_at"],
            last_status=row["last_status"],
            last_error=row["last_error"],
            delivered_at=row["delivered_at"],
            dead_at=row["dead_at"],
            requeued_at=row["requeued_at"],
            replays=row["replays"],
        )
    return StoredEvent(
        source=row["source"],
        subject=row["subject"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        received_at=row["received_at"],
        request_id=row["request_id"],
        event_count=row["event_count"],
        size=row["size"],
        delivery=delivery,
        payload=bytes(row["payload"]) if with_payload else None,
        headers=json.loads(row["headers"]) if with_payload else None,
    )


@dataclass(frozen=True, slots=True)
class Page:
    items: list[StoredEvent]
    # The cursor of the next page; None on the last one.
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        return {"items": [e.to_json() for e in self.items], "nextCursor": self.next_cursor}


def page_size(limit: int | None, with_payload: bool) -> int:
    """The page size for ``limit`` (default 50); raises ValueError outside 1 to
    :data:`MAX_PAGE_SIZE` (:data:`MAX_PAYLOAD_PAGE_SIZE` with payloads)."""
    cap = MAX_PAYLOAD_PAGE_SIZE if with_payload else MAX_PAGE_SIZE
    if limit is None:
        return min(DEFAULT_PAGE_SIZE, cap)
    if not 1 <= limit <= cap:
        raise ValueError(
            f"limit must be between 1 and {MAX_PAGE_SIZE} ({MAX_PAYLOAD_PAGE_SIZE} with payloads)"
        )
    return limit


async def list_events(
    conn: Any,
    selection: EventFilter,
    *,
    limit: int,
    cursor: str | None = None,
    with_payload: bool = False,
) -> Page:
    """One page of the events ``selection`` names, newest first, after ``cursor`` (a previous
    page's ``next_cursor``); raises :class:`BadEventId` for a cursor this module did not make."""
    args: list[Any] = []
    where = _where(selection, args)
    if cursor is not None:
        after = decode_id(cursor)
        params = []
        for value in (after[3], after[0], after[1], after[2]):
            args.append(value)
            params.append(f"${len(args)}")
        where.append(
            f"(e.received_at, e.source, e.subject, e.event_id) < "
            f"({params[0]}::timestamptz, {params[1]}::text, {params[2]}::text, {params[3]}::text)"
        )
    args.append(limit + 1)
    sql = (
        _COLUMNS.format(payload=_WITH_PAYLOAD if with_payload else "")
        + (f"WHERE {' AND '.join(where)}\n" if where else "")
        + f"{_ORDER}\nLIMIT ${len(args)}"
    )
    rows = await conn.fetch(sql, *args)
    items = [_stored(r, with_payload) for r in rows[:limit]]
    return Page(items, items[-1].id if len(rows) > limit and items else None)


async def get_event(conn: Any, key: EventKey, *, with_payload: bool = False) -> StoredEvent | None:
    source, subject, event_id, received_at = key
    sql = (
        _COLUMNS.format(payload=_WITH_PAYLOAD if with_payload else "")
        + "WHERE e.source = $1 AND e.subject = $2 AND e.event_id = $3 AND e.received_at = $4"
    )
    row = await conn.fetchrow(sql, source, subject, event_id, received_at)
    return None if row is None else _stored(row, with_payload)


async def find_events(
    conn: Any, event_id: str, sources: Sequence[str] | None = None, limit: int = 10
) -> list[StoredEvent]:
    """Events whose provider id is ``event_id`` (several when sources or subjects share it)."""
    page = await list_events(
        conn, EventFilter(sources=sources, event_id=event_id), limit=limit, with_payload=False
    )
    return page.items


async def forwarding_sources(conn: Any, sources: Collection[str]) -> set[str]:
    """Which of ``sources`` forward, as their receivers last registered them."""
    rows = await conn.fetch(
        "SELECT source FROM webhook_sources WHERE forward AND source = ANY($1::text[])",
        list(sources),
    )
    return {r["source"] for r in rows}


@dataclass(frozen=True, slots=True)
class ReplayResult:
    # Deliveries put back in the outbox by this replay.
    requeued: int
    # Selected events whose delivery was pending already (left alone: queued).
    already_pending: int
    # The events re-queued (for a single replay, the caller reads it back).
    keys: list[EventKey]

    def to_json(self) -> dict[str, Any]:
        return {"requeued": self.requeued, "alreadyPending": self.already_pending}


class TooManyToReplay(Exception):
    """A bulk replay selects more events than allowed at once."""

    def __init__(self, selected: int, allowed: int) -> None:
        super().__init__(f"more than {allowed} events selected")
        self.selected = selected
        self.allowed = allowed


_REQUEUE = """
INSERT INTO webhook_deliveries AS d
    (source, subject, event_id, received_at, webhook_id, state, attempts, next_attempt_at,
     requeued_at, replays)
SELECT source, subject, event_id, received_at, webhook_id, 'pending', 0, $6, $6, 1
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
    AS r(source, subject, event_id, received_at, webhook_id)
ON CONFLICT (source, subject, event_id, received_at) DO UPDATE
SET state = 'pending', attempts = 0, next_attempt_at = EXCLUDED.next_attempt_at,
    lease_until = NULL, leased_by = NULL, delivered_at = NULL, dead_at = NULL,
    requeued_at = EXCLUDED.requeued_at, replays = d.replays + 1
WHERE d.state <> 'pending'
RETURNING d.source, d.subject, d.event_id, d.received_at
"""


async def requeue(conn: Any, keys: Sequence[EventKey], now: datetime) -> list[EventKey]:
    """Put the deliveries of ``keys`` back in the outbox (creating missing ones); returns the
    keys actually re-queued (a delivery pending by then is left alone). The caller has checked
    that their sources forward."""
    if not keys:
        return []
    ordered = sorted(keys)
    rows = await conn.fetch(
        _REQUEUE,
        [k[0] for k in ordered],
        [k[1] for k in ordered],
        [k[2] for k in ordered],
        [k[3] for k in ordered],
        [webhook_id(k[0], k[1], k[2]) for k in ordered],
        now,
    )
    return [(r["source"], r["subject"], r["event_id"], r["received_at"]) for r in rows]


async def replay_bulk(
    conn: Any,
    selection: EventFilter,
    now: datetime,
    *,
    max_events: int,
    dry_run: bool = False,
) -> ReplayResult:
    """Re-queue the deliveries of every event ``selection`` names (its sources must forward:
    the caller checks). Events whose delivery is pending are counted, not touched. Raises
    :class:`TooManyToReplay` when more than ``max_events`` would be re-queued (nothing is)."""
    args: list[Any] = []
    where = [*_where(selection, args), "d.state IS DISTINCT FROM 'pending'"]
    args.append(max_events + 1)
    sql = (
        "SELECT e.source, e.subject, e.event_id, e.received_at, d.state\n"
        "FROM webhook_events e\nLEFT JOIN webhook_deliveries d\n"
        "  ON d.source = e.source AND d.subject = e.subject AND d.event_id = e.event_id\n"
        " AND d.received_at = e.received_at\n"
        f"WHERE {' AND '.join(where)}\n"
        f"ORDER BY e.received_at, e.source, e.subject, e.event_id\nLIMIT ${len(args)}"
    )
    pending_args: list[Any] = []
    pending_where = _where(replace(selection, state="pending"), pending_args)
    count_pending = _COUNT_WITH_DELIVERY + "WHERE " + " AND ".join(pending_where)
    async with conn.transaction():
        rows = await conn.fetch(sql, *args)
        if len(rows) > max_events:
            raise TooManyToReplay(len(rows), max_events)
        already = 0
        if selection.state is None:
            already = int(await conn.fetchval(count_pending, *pending_args))
        keys = [(r["source"], r["subject"], r["event_id"], r["received_at"]) for r in rows]
        if dry_run:
            return ReplayResult(len(keys), already, keys)
        done = await requeue(conn, keys, now)
    return ReplayResult(len(done), already + len(keys) - len(done), done)
