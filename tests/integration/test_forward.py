"""Forwarding end to end: a real receiver, a real PostgreSQL and a loopback consumer.

The consumer is an aiohttp app on 127.0.0.1 that answers from a script (500, 429 with
Retry-After, 410, a hang past the timeout, 200) and records every request. Time that matters
to a decision (back-off, Retry-After, circuit cool-down, leases, max age) comes from a clock the
test moves; the forwarder polls every 20 ms of real time, so nothing waits for the wall clock.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from standardwebhooks import Webhook, WebhookVerificationError

from tests.receivers import Clock, Consumer, Seen, eventually
from webhook_server.app import FORWARDER, STORE
from webhook_server.config import (
    BackoffConfig,
    CircuitBreakerConfig,
    ForwardConfig,
    Provider,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.store import Event, insert_events
from webhook_server.store.outbox import webhook_id
from webhook_server.verify import SIGNERS

GITHUB_SECRET = "It's a Secret to Everybody"
FORWARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEXT_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


def forward(consumer: Consumer, **overrides: Any) -> ForwardConfig:
    fields: dict[str, Any] = {
        "url": consumer.url,
        "signing_secrets": [SecretSource(value=FORWARD_SECRET)],
        "timeout_seconds": 2.0,
        "max_attempts": 8,
        "backoff": BackoffConfig(min_seconds=1, max_seconds=60),
        "circuit_breaker": CircuitBreakerConfig(failure_threshold=100, cool_down_seconds=30),
    }
    fields.update(overrides)
    return ForwardConfig(**fields)


def github_source(fwd: ForwardConfig | None, name: str = "gh") -> SourceConfig:
    return SourceConfig(
        namespace="ci",
        name=name,
        provider=Provider.GITHUB,
        verification=VerificationConfig(secrets=[SecretSource(value=GITHUB_SECRET)]),
        forward=fwd,
    )


def github_headers(body: bytes, delivery: str) -> dict[str, str]:
    headers = SIGNERS[Provider.GITHUB](
        body, GITHUB_SECRET.encode(), VerificationConfig(), time.time(), delivery
    )
    headers["Content-Type"] = "application/json"
    headers["X-GitHub-Event"] = "push"
    return headers


async def delivery(db: asyncpg.Connection, event_id: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM webhook_deliveries WHERE event_id = $1", event_id)
    assert row is not None, f"no delivery row for {event_id}"
    return row


async def send(client: TestClient[Any, Any], delivery_id: str, body: bytes | None = None) -> None:
    body = body or json.dumps({"ref": "refs/heads/main", "n": delivery_id}).encode()
    headers = github_headers(body, delivery_id)
    response = await client.post("/hooks/ci/gh", data=body, headers=headers)
    assert response.status == 200, await response.text()


def verified_by_sdk(seen: Seen, secret: str) -> bool:
    try:
        Webhook(secret).verify(seen.body, seen.headers)
    except WebhookVerificationError:
        return False
    return True


# -- delivery semantics ---------------------------------------------------------------------------


async def test_an_event_is_delivered_once_signed_with_its_id_and_trace(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    client = await make_receiver(github_source(forward(consumer)))
    body = b'{"zen": "Keep it logically awesome.",  "hook_id": 1}'
    headers = github_headers(body, "d-1")
    headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await client.post("/hooks/ci/gh", data=body, headers=headers)
    assert response.status == 200

    await eventually(lambda: _delivered(db, "d-1"), "the delivery to be recorded")
    [seen] = consumer.seen
    assert seen.body == body  # the raw payload, byte for byte
    assert seen.headers["webhook-id"] == "d-1"  # our event id: a header-safe token
    assert verified_by_sdk(seen, FORWARD_SECRET)
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["dfm-source"] == "ci/gh"
    assert seen.headers["dfm-event-type"] == "push"
    assert seen.headers["dfm-attempt"] == "1"
    trace = seen.headers["traceparent"].split("-")
    assert trace[1] == "4bf92f3577b34da6a3ce929d0e0e4736"  # the provider's trace, continued
    assert trace[2] != "00f067aa0ba902b7"  # as a new span
    row = await delivery(db, "d-1")
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)
    assert row["delivered_at"] >= row["received_at"]
    assert row["leased_by"] is None

    # A redelivery of the stored event is a duplicate: not stored, not forwarded again.
    again = await client.post("/hooks/ci/gh", data=body, headers=headers)
    assert (await again.json())["status"] == "duplicate"
    await asyncio.sleep(0.2)
    assert len(consumer.seen) == 1
    metrics = await (await client.get("/metrics")).text()
    assert 'dfm_forward_attempts_total{outcome="delivered",source="ci/gh"} 1.0' in metrics
    assert 'dfm_forward_delivery_latency_seconds_count{source="ci/gh"} 1.0' in metrics


async def _delivered(db: asyncpg.Connection, event_id: str) -> bool:
    state = await db.fetchval("SELECT state FROM webhook_deliveries WHERE event_id = $1", event_id)
    return bool(state == "delivered")


async def test_a_target_that_fails_three_times_gets_it_on_the_fourth_attempt(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    clock = Clock()
    consumer.script.extend([500, 502, 503])
    client = await make_receiver(github_source(forward(consumer)), clock=clock)
    await send(client, "d-1")
    for attempt in range(1, 4):
        await eventually(lambda n=attempt: _attempts(db, "d-1", n), f"attempt {attempt}")
        row = await delivery(db, "d-1")
        assert row["state"] == "pending"
        # Full jitter between backoff.minSeconds (1 s) and a ceiling doubling per failure.
        wait = (row["next_attempt_at"] - row["last_attempt_at"]).total_seconds()
        assert 1.0 <= wait <= 2.0 ** (attempt - 1) + 0.01
        await asyncio.sleep(0.1)
        assert len(consumer.seen) == attempt  # nothing goes before it is due
        # Just past the due time: the clock is a float and the row's time has microseconds, so
        # advancing by exactly ``wait`` can land a rounding error short of due.
        clock.advance(wait + 0.001)
    await eventually(lambda: _delivered(db, "d-1"), "the fourth attempt to succeed")
    row = await delivery(db, "d-1")
    assert (row["attempts"], row["last_status"], row["last_error"]) == (4, 200, None)
    assert [s.headers["dfm-attempt"] for s in consumer.seen] == ["1", "2", "3", "4"]
    assert set(consumer.ids()) == {"d-1"}  # every attempt carries the same webhook-id
    metrics = await (await client.get("/metrics")).text()
    assert 'dfm_forward_attempts_total{outcome="server_error",source="ci/gh"} 3.0' in metrics


async def _attempts(db: asyncpg.Connection, event_id: str, count: int) -> bool:
    row = await db.fetchrow(
        "SELECT attempts, leased_by FROM webhook_deliveries WHERE event_id = $1", event_id
    )
    return row is not None and row["attempts"] >= count and row["leased_by"] is None


async def test_429_with_retry_after_is_honoured_and_capped_by_the_maximum_back_off(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    clock = Clock()
    consumer.script.extend([(429, {"Retry-After": "120"}), (503, {"Retry-After": "99999"})])
    fwd = forward(consumer, backoff=BackoffConfig(min_seconds=1, max_seconds=600))
    client = await make_receiver(github_source(fwd), clock=clock)
    await send(client, "d-1")

    await eventually(lambda: _attempts(db, "d-1", 1), "the 429")
    row = await delivery(db, "d-1")
    assert (row["last_status"], row["last_error"]) == (429, "rate_limited")
    assert (row["next_attempt_at"] - row["last_attempt_at"]).total_seconds() == 120
    clock.advance(119)
    await asyncio.sleep(0.2)
    assert len(consumer.seen) == 1  # not before the consumer said
    clock.advance(1)

    await eventually(lambda: _attempts(db, "d-1", 2), "the 503")
    row = await delivery(db, "d-1")
    # Retry-After beyond backoff.maxSeconds waits backoff.maxSeconds.
    assert (row["next_attempt_at"] - row["last_attempt_at"]).total_seconds() == 600
    clock.advance(600)
    await eventually(lambda: _delivered(db, "d-1"), "the third attempt")
    assert (await delivery(db, "d-1"))["attempts"] == 3


async def test_a_target_that_hangs_past_the_timeout_is_retried(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    clock = Clock()
    consumer.script.append("hang")
    # A timeout a loaded machine cannot reach by accident: the retry (answered at once) must
    # not time out too, or it waits for a clock the test no longer moves.
    client = await make_receiver(github_source(forward(consumer, timeout_seconds=3)), clock=clock)
    await send(client, "d-1")
    # The provider's 200 never waits for the consumer: it came while the attempt was still
    # waiting for the hanging consumer (nothing recorded about it yet).
    row = await delivery(db, "d-1")
    assert (row["attempts"], row["last_error"]) == (0, None)
    await eventually(lambda: _attempts(db, "d-1", 1), "the attempt to time out")
    row = await delivery(db, "d-1")
    assert (row["state"], row["last_status"], row["last_error"]) == ("pending", None, "timeout")
    clock.advance(1)
    await eventually(lambda: _delivered(db, "d-1"), "the retry")
    assert len(consumer.seen) == 2


async def test_3xx_is_a_failure_and_redirects_are_not_followed(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    clock = Clock()
    consumer.script.append((307, {"Location": consumer.url + "?again"}))
    client = await make_receiver(github_source(forward(consumer)), clock=clock)
    await send(client, "d-1")
    await eventually(lambda: _attempts(db, "d-1", 1), "the redirect")
    await asyncio.sleep(0.1)
    assert len(consumer.seen) == 1  # the Location was not followed
    row = await delivery(db, "d-1")
    assert (row["state"], row["last_status"], row["last_error"]) == ("pending", 307, "redirect")


# -- dead letters -------------------------------------------------------------------------------


async def test_after_max_attempts_the_delivery_is_dead_lettered_and_kept(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    clock = Clock()
    consumer.default = 500
    client = await make_receiver(github_source(forward(consumer, max_attempts=3)), clock=clock)
    await send(client, "d-1")
    for attempt in (1, 2):
        await eventually(lambda n=attempt: _attempts(db, "d-1", n), f"attempt {attempt}")
        clock.advance(60)
    await eventually(lambda: _state(db, "d-1", "dead"), "the dead letter")
    row = await delivery(db, "d-1")
    assert (row["attempts"], row["last_status"], row["last_error"]) == (3, 500, "max_attempts")
    assert row["dead_at"] is not None
    clock.advance(3600)
    await asyncio.sleep(0.2)
    assert len(consumer.seen) == 3  # dead is final
    # Kept and visible: the row and its event stay until retention drops them together.
    assert await db.fetchval("SELECT count(*) FROM webhook_events WHERE event_id = 'd-1'") == 1
    metrics = await _metrics_when(client, 'dfm_forward_dead_letters_stored{source="ci/gh"} 1.0')
    assert 'dfm_forward_dead_letters_total{reason="max_attempts",source="ci/gh"} 1.0' in metrics


async def _state(db: asyncpg.Connection, event_id: str, state: str) -> bool:
    found = await db.fetchval("SELECT state FROM webhook_deliveries WHERE event_id = $1", event_id)
    return bool(found == state)


async def _metrics_when(client: TestClient[Any, Any], line: str) -> str:
    async def check() -> str | None:
        text = await (await client.get("/metrics")).text()
        return text if line in text else None

    result: str = await eventually(check, line)
    return result


async def test_410_gone_is_dead_lettered_at_once(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    consumer.script.append(410)
    client = await make_receiver(github_source(forward(consumer)))
    await send(client, "d-1")
    await eventually(lambda: _state(db, "d-1", "dead"), "the dead letter")
    row = await delivery(db, "d-1")
    assert (row["attempts"], row["last_status"], row["last_error"]) == (1, 410, "gone")


async def test_a_delivery_older_than_max_age_is_dead_lettered_without_an_attempt(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    clock = Clock()
    consumer.default = "hang"
    fwd = forward(consumer, max_age_seconds=3600, timeout_seconds=0.2)
    client = await make_receiver(github_source(fwd), clock=clock)
    await send(client, "d-1")
    await eventually(lambda: _attempts(db, "d-1", 1), "the first attempt")
    row = await delivery(db, "d-1")
    assert row["next_attempt_at"] <= row["received_at"] + timedelta(hours=1)
    clock.advance(3601)
    await eventually(lambda: _state(db, "d-1", "dead"), "expiry")
    row = await delivery(db, "d-1")
    assert row["last_error"] in ("expired",)
    assert row["attempts"] in (1, 2)  # the sweep or the last attempt at maxAge: never beyond


# -- the circuit breaker -----------------------------------------------------------------------


async def test_the_circuit_opens_after_consecutive_failures_and_closes_after_a_good_probe(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    clock = Clock()
    consumer.default = 503
    fwd = forward(
        consumer,
        max_concurrency=1,
        backoff=BackoffConfig(min_seconds=1, max_seconds=1),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=3, cool_down_seconds=30),
    )
    client = await make_receiver(github_source(fwd), clock=clock)
    for n in range(6):
        await send(client, f"d-{n}")
    await eventually(lambda: _circuit(db, "open"), "the circuit to open")
    assert len(consumer.seen) == 3  # three failures in a row, then nothing
    metrics = await _metrics_when(client, 'dfm_forward_circuit_state{source="ci/gh"} 2.0')
    assert 'dfm_forward_deferred_total{source="ci/gh"}' in metrics
    # Deferred deliveries spent no attempt and wait for the end of the cool-down.
    await eventually(lambda: _none_leased(db), "the queued deliveries to be put back")
    untried = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE attempts = 0")
    assert untried == 3

    clock.advance(10)  # within the cool-down: the backlog stays in the table
    await asyncio.sleep(0.3)
    assert len(consumer.seen) == 3
    # Ingest is not slowed: events keep being stored and acknowledged; the backlog grows.
    await send(client, "d-late")
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'") == 7

    consumer.default = 200
    clock.advance(25)  # past the cool-down: one probe, then the rest
    await eventually(lambda: _circuit(db, "closed"), "the circuit to close")
    for _ in range(5):
        clock.advance(2)
        await asyncio.sleep(0.1)
    await eventually(lambda: _all_delivered(db, 7), "the backlog to drain")
    assert set(consumer.ids()) >= {f"d-{n}" for n in range(6)} | {"d-late"}


async def _circuit(db: asyncpg.Connection, state: str) -> bool:
    found = await db.fetchval("SELECT state FROM webhook_forward_circuits WHERE source = 'ci/gh'")
    return bool(found == state)


async def _none_leased(db: asyncpg.Connection) -> bool:
    leased = await db.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE leased_by IS NOT NULL"
    )
    return bool(leased == 0)


async def _all_delivered(db: asyncpg.Connection, count: int) -> bool:
    delivered = await db.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'"
    )
    return bool(delivered == count)


# -- signing ------------------------------------------------------------------------------------


async def test_during_a_rotation_both_secrets_sign_and_either_consumer_verifies(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection, tmp_path: Path
) -> None:
    clock = Clock()
    managed = tmp_path / "forward-signing"  # a ManagedSecret's Secret, as kubelet mounts it
    managed.mkdir()
    (managed / "current").write_text(NEXT_SECRET)
    (managed / "previous").write_text(FORWARD_SECRET)
    # A short grace period: the SDK checks webhook-timestamp against the wall clock (5 min).
    expires = datetime.fromtimestamp(clock.now + 60, UTC).isoformat()
    (managed / "previous-expires-at").write_text(expires)
    fwd = forward(consumer, signing_secrets=[SecretSource(dir=str(managed))])
    client = await make_receiver(github_source(fwd), clock=clock)

    await send(client, "d-1")
    await eventually(lambda: _delivered(db, "d-1"), "the delivery")
    seen = consumer.seen[0]
    assert len(seen.headers["webhook-signature"].split()) == 2
    # A consumer that has not picked up the new secret yet, and one that has: both accept.
    assert verified_by_sdk(seen, FORWARD_SECRET)
    assert verified_by_sdk(seen, NEXT_SECRET)
    assert not verified_by_sdk(seen, "whsec_" + "A" * 32)

    clock.advance(61)  # the grace period is over: only the current secret signs
    await send(client, "d-2")
    await eventually(lambda: _delivered(db, "d-2"), "the second delivery")
    seen = consumer.seen[1]
    assert len(seen.headers["webhook-signature"].split()) == 1
    assert verified_by_sdk(seen, NEXT_SECRET)
    assert not verified_by_sdk(seen, FORWARD_SECRET)


async def test_without_a_usable_signing_secret_nothing_is_sent_but_events_are_stored(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection, tmp_path: Path
) -> None:
    secret_file = tmp_path / "signing"
    secret_file.write_text("not base64 !")
    fwd = forward(consumer, signing_secrets=[SecretSource(file=str(secret_file))])
    client = await make_receiver(github_source(fwd))
    await send(client, "d-1")
    ready = await (await client.get("/readyz")).json()
    assert ready["status"] == "ok"  # ingest is not held up
    assert ready["checks"]["forwardSigning"] is False
    await asyncio.sleep(0.3)
    assert consumer.seen == []  # never sent unsigned
    assert await _state(db, "d-1", "pending")

    secret_file.write_text(FORWARD_SECRET)
    from webhook_server.app import reload_secrets

    assert reload_secrets(client.app) == ["ci/gh"]
    await eventually(lambda: _delivered(db, "d-1"), "the delivery once signable")
    assert verified_by_sdk(consumer.seen[0], FORWARD_SECRET)


def test_webhook_ids_are_stable_header_safe_and_scoped() -> None:
    assert webhook_id("ns/a", "", "evt_1Nq2") == "evt_1Nq2"
    assert webhook_id("ns/a", "", "sha256:ab12") == "sha256:ab12"
    spaced = webhook_id("ns/a", "", "order 17/ä")
    assert spaced.startswith("dfm_")
    assert len(spaced) == 36
    assert spaced == webhook_id("ns/a", "", "order 17/ä")  # stable
    # jwt sources: ids are chosen per caller, so the subject is part of the identity.
    assert webhook_id("ns/a", "user_1", "1") != webhook_id("ns/a", "user_2", "1")
    assert webhook_id("ns/a", "user_1", "1").startswith("dfm_")
    # An id shaped like a derived one is derived too: the two kinds never collide.
    assert webhook_id("ns/a", "", spaced) != spaced


# -- the outbox ------------------------------------------------------------------------------


async def test_events_inserted_without_a_receiver_get_deliveries_and_are_polled(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection, database_url: str
) -> None:
    # A sync (or any writer that does not know the source's forward config) inserts through the
    # same store function; the source's receiver registered that it forwards.
    client = await make_receiver(github_source(forward(consumer)))
    conn = await asyncpg.connect(database_url)
    try:
        now = datetime.now(UTC)
        events = [
            Event("ci/gh", f"sync-{n}", "contact", now, "sync", b"{}", {}) for n in range(3)
        ] + [Event("ci/other", "x-1", None, now, "sync", b"{}", {})]
        fresh, replayed = await insert_events(conn, events)
    finally:
        await conn.close()
    assert (len(fresh), replayed) == (4, set())
    queued = await db.fetch("SELECT source, event_id FROM webhook_deliveries ORDER BY event_id")
    assert [(r["source"], r["event_id"]) for r in queued] == [
        ("ci/gh", f"sync-{n}") for n in range(3)
    ]  # the other source does not forward: no delivery
    await eventually(lambda: _all_delivered(db, 3), "the polled deliveries")
    assert sorted(consumer.ids()) == ["sync-0", "sync-1", "sync-2"]
    await client.close()


async def test_ingest_never_waits_for_a_consumer_that_hangs(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    consumer.default = "hang"
    client = await make_receiver(
        github_source(forward(consumer, timeout_seconds=30, max_concurrency=2)),
        max_queued_events=10,
    )
    await asyncio.gather(*(send(client, f"d-{n}") for n in range(60)))
    # Stored and acknowledged while the target hangs: no attempt has ended (each waits for its
    # 30 s timeout), so no acknowledgement waited for one.
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 60
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE attempts > 0") == 0
    forwarder = client.app[FORWARDER]
    events, _ = forwarder.held()
    assert events <= 10  # the rest waits in the table, not in memory
    await _metrics_when(client, 'dfm_forward_backlog{source="ci/gh"} 60.0')


async def test_deliveries_and_dead_letters_go_with_their_events_at_retention(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    start = datetime(2026, 3, 1, 12, tzinfo=UTC)
    clock = Clock()
    clock.now = start.timestamp()
    consumer.default = 410  # dead letters at once: they must stay as long as their events
    long = github_source(forward(consumer, max_age_seconds=86400), name="long")
    short = github_source(forward(consumer, max_age_seconds=86400), name="short")
    long = long.model_copy(update={"retention_days": 7})
    short = short.model_copy(update={"retention_days": 3})
    client = await make_receiver(long, short, clock=clock)
    for source in (long, short):
        body = b'{"kept": "until retention"}'
        response = await client.post(source.route, data=body, headers=github_headers(body, "e1"))
        assert response.status == 200
    await eventually(
        lambda: _count(db, "SELECT count(*) FROM webhook_deliveries WHERE state = 'dead'", 2),
        "two dead letters",
    )
    store = client.app[STORE]
    # Past the short retention: its delivery row goes with its event (DELETE), the long one stays.
    assert await store.maintain(start + timedelta(days=4))
    rows = await db.fetch("SELECT source, state FROM webhook_deliveries")
    assert [(r["source"], r["state"]) for r in rows] == [(long.key, "dead")]
    # Past the long retention: the day's delivery partition is dropped with the events'.
    assert await store.maintain(start + timedelta(days=9))
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0
    left = await db.fetch(
        "SELECT relname FROM pg_class WHERE relname LIKE '%_p20260301' AND relkind = 'r'"
    )
    assert left == []


async def _count(db: asyncpg.Connection, query: str, expected: int) -> bool:
    return bool(await db.fetchval(query) == expected)
