"""The receiver end to end over HTTP, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dfm.samples import sample_event
from tests.receivers import ReceiverServer
from webhook_server import logs
from webhook_server.app import CLOCK, STORE, create_app, stored_headers
from webhook_server.config import (
    CorsConfig,
    DatabaseConfig,
    LimitsConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.metrics import ReceiverMetrics
from webhook_server.store import Event, EventRefused, Store
from webhook_server.verify import SIGNERS

GITHUB_SECRET = "It's a Secret to Everybody"
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def github_source(**overrides: Any) -> SourceConfig:
    fields: dict[str, Any] = {
        "namespace": "ci",
        "name": "gh",
        "provider": Provider.GITHUB,
        "verification": VerificationConfig(secrets=[SecretSource(value=GITHUB_SECRET)]),
    }
    fields.update(overrides)
    return SourceConfig(**fields)


def github_headers(body: bytes, delivery: str, secret: str = GITHUB_SECRET) -> dict[str, str]:
    headers = SIGNERS[Provider.GITHUB](
        body, secret.encode(), VerificationConfig(), time.time(), delivery
    )
    headers["Content-Type"] = "application/json"
    return headers


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_client(
    aiohttp_client: ClientFactory, database_url: str, one_pass: bool
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def make(
        *sources: SourceConfig, clock: Callable[[], float] = time.time, db_url: str | None = None
    ) -> TestClient[Any, Any]:
        config = ReceiverConfig(
            sources=list(sources) or [github_source()],
            database=DatabaseConfig(url=db_url or database_url, maintenance_interval_seconds=3600),
        )
        app = create_app(config, clock=clock)
        client = await aiohttp_client(ReceiverServer(app, one_pass=one_pass))
        assert await app[STORE].wait_ready(60), "store did not become ready"
        return client

    return make


async def test_signed_event_is_stored_byte_for_byte_and_redelivery_is_not_stored_twice(
    make_client: Any, db: asyncpg.Connection
) -> None:
    client = await make_client()
    # Odd spacing and key order: the stored payload must be exactly what was sent.
    body = b'{"zen":  "Design for failure.",\n "hook_id": 7, "z": "\xc3\xa9"}'
    headers = github_headers(body, "delivery-1") | {"X-GitHub-Event": "ping"}

    first = await client.post("/hooks/ci/gh", data=body, headers=headers)
    assert first.status == 200
    assert (await first.json())["status"] == "stored"
    again = await client.post("/hooks/ci/gh", data=body, headers=headers)
    assert again.status == 200
    assert (await again.json())["status"] == "duplicate"

    rows = await db.fetch("SELECT * FROM webhook_events")
    assert len(rows) == 1
    row = rows[0]
    assert row["source"] == "ci/gh"
    assert row["event_id"] == "delivery-1"
    assert row["event_type"] == "ping"
    assert bytes(row["payload"]) == body
    stored_headers = json.loads(row["headers"])
    assert "x-hub-signature-256" not in stored_headers
    assert stored_headers["x-github-event"] == "ping"
    assert row["request_id"] == first.headers["X-Request-Id"]


@pytest.mark.parametrize(
    "provider",
    [Provider.GITHUB, Provider.STRIPE, Provider.STANDARD, Provider.SHOPIFY, Provider.SLACK],
)
async def test_every_provider_stores_a_signed_sample_and_refuses_a_tampered_one(
    make_client: Any, db: asyncpg.Connection, provider: Provider
) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    source = SourceConfig(
        name="src",
        provider=provider,
        verification=VerificationConfig(secrets=[SecretSource(value=secret)]),
    )
    client = await make_client(source)
    body, event_id = sample_event(provider)
    headers = SIGNERS[provider](body, secret.encode(), source.verification, time.time(), event_id)

    ok = await client.post(source.route, data=body, headers=headers)
    assert ok.status == 200, await ok.text()
    tampered = await client.post(
        source.route, data=body.replace(b"}", b',"x":1}', 1), headers=headers
    )
    assert tampered.status == 401
    assert tampered.content_type == "application/problem+json"
    problem = await tampered.json()
    assert problem["status"] == 401
    assert problem["requestId"] == tampered.headers["X-Request-Id"]
    assert secret not in await tampered.text()
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 1


async def test_missing_signature_and_wrong_secret_are_401_and_counted(make_client: Any) -> None:
    client = await make_client()
    body = b'{"a":1}'
    missing = await client.post("/hooks/ci/gh", data=body)
    wrong = await client.post("/hooks/ci/gh", data=body, headers=github_headers(body, "d", "nope"))
    assert (missing.status, wrong.status) == (401, 401)
    metrics = await (await client.get("/metrics")).text()
    assert 'dfm_receiver_signature_failures_total{reason="missing_header",source="ci/gh"} 1.0' in (
        metrics
    )
    assert 'dfm_receiver_signature_failures_total{reason="bad_signature",source="ci/gh"} 1.0' in (
        metrics
    )
    assert GITHUB_SECRET not in metrics


async def test_body_over_the_limit_is_413_with_and_without_content_length(
    make_client: Any,
) -> None:
    client = await make_client(github_source(limits=LimitsConfig(max_body_bytes=100)))
    big = b"x" * 101
    declared = await client.post("/hooks/ci/gh", data=big, headers=github_headers(big, "d1"))
    assert declared.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 20

    streamed = await client.post("/hooks/ci/gh", data=chunks())
    assert streamed.status == 413
    assert streamed.content_type == "application/problem+json"


async def test_rate_limit_answers_429_with_retry_after(make_client: Any) -> None:
    client = await make_client(github_source(limits=LimitsConfig(requests_per_second=0.1, burst=2)))
    body = b"{}"
    statuses = []
    for i in range(3):
        resp = await client.post("/hooks/ci/gh", data=body, headers=github_headers(body, f"r{i}"))
        statuses.append(resp.status)
    assert statuses == [200, 200, 429]
    assert int(resp.headers["Retry-After"]) >= 1


async def test_cors_only_for_allowed_origins(make_client: Any) -> None:
    client = await make_client(
        github_source(cors=CorsConfig(allowed_origins=["https://app.example.com"]))
    )
    ok = await client.options(
        "/hooks/ci/gh",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    denied = await client.options("/hooks/ci/gh", headers={"Origin": "https://evil.example"})
    assert denied.status == 403
    assert "Access-Control-Allow-Origin" not in denied.headers

    body = b"{}"
    posted = await client.post(
        "/hooks/ci/gh",
        data=body,
        headers=github_headers(body, "c1") | {"Origin": "https://evil.example"},
    )
    assert posted.status == 200
    assert "Access-Control-Allow-Origin" not in posted.headers


async def test_no_cors_headers_by_default(make_client: Any) -> None:
    client = await make_client()
    resp = await client.options("/hooks/ci/gh", headers={"Origin": "https://app.example.com"})
    assert resp.status == 403


async def test_slack_url_verification_answers_the_challenge_without_storing(
    make_client: Any, db: asyncpg.Connection
) -> None:
    source = SourceConfig(
        name="slack",
        provider=Provider.SLACK,
        verification=VerificationConfig(secrets=[SecretSource(value="s3")]),
    )
    client = await make_client(source)
    body = (
        b'{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",'
        b'"type":"url_verification"}'
    )
    headers = SIGNERS[Provider.SLACK](body, b"s3", source.verification, time.time(), None)
    resp = await client.post(source.route, data=body, headers=headers)
    assert resp.status == 200
    assert (await resp.json())["challenge"].startswith("3eZbrw1aBm2")
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0


async def test_redelivery_after_midnight_is_still_a_duplicate(
    make_client: Any, db: asyncpg.Connection
) -> None:
    before_midnight = datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC).timestamp()
    clock = Clock(before_midnight)
    source = github_source(
        verification=VerificationConfig(
            secrets=[SecretSource(value=GITHUB_SECRET)], tolerance_seconds=300
        )
    )
    client = await make_client(source, clock=clock)
    body = b'{"n":1}'
    assert (
        await client.post(source.route, data=body, headers=github_headers(body, "m1"))
    ).status == 200
    clock.now += 120  # the provider retries two minutes later: a new UTC day
    resp = await client.post(source.route, data=body, headers=github_headers(body, "m1"))
    assert (await resp.json())["status"] == "duplicate"
    partitions = await db.fetch("SELECT tableoid::regclass::text AS p FROM webhook_events")
    assert [r["p"] for r in partitions] == ["webhook_events_p20261127"]


async def test_partitions_created_ahead_and_dropped_after_retention(
    make_client: Any, db: asyncpg.Connection
) -> None:
    start = datetime(2026, 3, 1, 12, tzinfo=UTC)
    clock = Clock(start.timestamp())
    source = github_source(retention_days=7)
    client = await make_client(source, clock=clock)
    store = client.app[STORE]
    await store.maintain(start)
    names = {
        r["relname"]
        for r in await db.fetch(
            "SELECT relname FROM pg_class WHERE relname LIKE 'webhook_events_p%' AND relkind = 'r'"
        )
    }
    assert {"webhook_events_p20260301", "webhook_events_p20260304"} <= names

    body = b'{"old":true}'
    assert (
        await client.post(source.route, data=body, headers=github_headers(body, "o1"))
    ).status == 200
    later = start + timedelta(days=9)
    assert await store.maintain(later)
    names = {
        r["relname"]
        for r in await db.fetch(
            "SELECT relname FROM pg_class WHERE relname LIKE 'webhook_events_p%' AND relkind = 'r'"
        )
    }
    assert "webhook_events_p20260301" not in names
    assert f"webhook_events_p{later:%Y%m%d}" in names
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0
    # The dedup key expired with the event: the same id is new again.
    assert await db.fetchval("SELECT count(*) FROM webhook_event_ids") == 0


async def test_a_dedup_key_outlives_its_event_so_a_late_redelivery_is_still_a_duplicate(
    make_client: Any, db: asyncpg.Connection
) -> None:
    # The longest retention's events go with their whole UTC-day partition, up to a day after
    # received_at + retention; a shorter retention's go by DELETE at exactly that time. The dedup
    # key must last as long as the event in both cases, or a redelivery meanwhile is stored twice.
    start = datetime(2026, 3, 1, 12, tzinfo=UTC)
    clock = Clock(start.timestamp())
    long = github_source(name="long", retention_days=7)
    short = github_source(name="short", retention_days=3)
    client = await make_client(long, short, clock=clock)
    store = client.app[STORE]
    body = b'{"late":true}'

    async def deliver(source: SourceConfig) -> str:
        resp = await client.post(source.route, data=body, headers=github_headers(body, "k1"))
        assert resp.status == 200
        return str((await resp.json())["status"])

    assert [await deliver(long), await deliver(short)] == ["stored", "stored"]

    # received_at + 7 days + 1 hour: the long event's partition (day 1) stays until day 9.
    later = start + timedelta(days=7, hours=1)
    assert await store.maintain(later)
    events = dict(await db.fetch("SELECT source, count(*) FROM webhook_events GROUP BY source"))
    assert events == {long.key: 1}
    ids = {r["source"] for r in await db.fetch("SELECT source FROM webhook_event_ids")}
    assert ids == {long.key}  # the short source's key went with its event, not before
    clock.now = later.timestamp()
    assert await deliver(long) == "duplicate"
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 1

    # Once the partition is dropped, the key goes too: event and key leave together.
    assert await store.maintain(datetime(2026, 3, 9, 0, 0, 1, tzinfo=UTC))
    assert await db.fetchval("SELECT count(*) FROM webhook_events WHERE source = $1", long.key) == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_event_ids") == 0


async def test_maintenance_runs_in_one_replica_at_a_time(
    make_client: Any, database_url: str
) -> None:
    client = await make_client()
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", 0x64666D02)
        assert await client.app[STORE].maintain(datetime.now(UTC)) is False
    finally:
        await holder.close()
    assert await client.app[STORE].maintain(datetime.now(UTC)) is True


async def test_a_replica_started_during_anothers_maintenance_still_protects_its_retention(
    make_client: Any, database_url: str, db: asyncpg.Connection
) -> None:
    # Two receivers share the database: one keeps events 7 days, the other 30. Partitions are
    # dropped by the longest retention of the sources the database knows, so a receiver must make
    # its sources known even when another replica holds the maintenance lock at its start-up.
    start = datetime(2026, 3, 1, 12, tzinfo=UTC)
    short = github_source(name="short", retention_days=7)
    long = github_source(name="long", retention_days=30)
    short_client = await make_client(short, clock=Clock(start.timestamp()))
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", 0x64666D02)
        long_client = await make_client(long, clock=Clock(start.timestamp()))
    finally:
        await holder.close()
    body = b'{"keep":"30 days"}'
    resp = await long_client.post(long.route, data=body, headers=github_headers(body, "l1"))
    assert resp.status == 200

    assert await short_client.app[STORE].maintain(start + timedelta(days=9))
    assert await db.fetchval("SELECT count(*) FROM webhook_events WHERE source = $1", long.key) == 1
    retention = dict(await db.fetch("SELECT source, retention_days FROM webhook_sources"))
    assert retention == {short.key: 7, long.key: 30}


async def test_concurrent_partition_creation_never_fails_a_batch(
    make_client: Any, database_url: str, db: asyncpg.Connection
) -> None:
    # Several receivers meeting a missing partition at once all create it: none may get a 503.
    day = datetime(2026, 5, 17, 8, tzinfo=UTC)
    sources = [github_source(name=f"r{i}") for i in range(4)]
    clients = [await make_client(source, clock=Clock(day.timestamp())) for source in sources]
    for round_ in range(5):
        clock_day = day + timedelta(days=round_)
        for client in clients:
            client.app[CLOCK].now = clock_day.timestamp()  # type: ignore[attr-defined]
        answers = await asyncio.gather(
            *(
                client.post(
                    source.route, data=b"{}", headers=github_headers(b"{}", f"d{round_}-{n}")
                )
                for source, client in zip(sources, clients, strict=True)
                for n in range(3)
            )
        )
        assert [a.status for a in answers] == [200] * len(answers)
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 5 * 4 * 3


STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def standard_source() -> SourceConfig:
    return SourceConfig(
        name="std",
        provider=Provider.STANDARD,
        verification=VerificationConfig(secrets=[SecretSource(value=STANDARD_SECRET)]),
    )


@pytest.mark.parametrize(
    ("event_id", "body", "detail"),
    [
        ("msg_" + "x" * 300, b'{"type":"invoice.paid"}', "the event id must be at most 256"),
        ("msg_1", b'{"type":"invoice\\u0000paid"}', "the event type must be at most 256"),
        ("msg_2", b'{"type":"\\ud800"}', "the event type must be at most 256"),
    ],
)
async def test_an_event_id_or_type_the_store_cannot_keep_is_a_400_not_a_503(
    make_client: Any, db: asyncpg.Connection, event_id: str, body: bytes, detail: str
) -> None:
    # Signed, so authentic, but unstorable: a 503 would make the provider retry it forever.
    source = standard_source()
    client = await make_client(source)
    headers = SIGNERS[Provider.STANDARD](
        body, STANDARD_SECRET.encode(), source.verification, time.time(), event_id
    )
    resp = await client.post(source.route, data=body, headers=headers)
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["detail"].startswith(detail)
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0


async def test_a_header_that_is_not_utf8_is_stored_with_a_replacement_character(
    make_client: Any, db: asyncpg.Connection
) -> None:
    # aiohttp's client encodes headers as UTF-8, so the request is written by hand.
    client = await make_client()
    body = b'{"n":1}'
    signed = github_headers(body, "latin-1")
    head = "".join(f"{name}: {value}\r\n" for name, value in signed.items()).encode()
    request = (
        b"POST /hooks/ci/gh HTTP/1.1\r\nHost: x\r\nX-Note: caf\xe9\r\n"
        + head
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    stored = await db.fetchval("SELECT headers->>'x-note' FROM webhook_events")
    assert stored == "caf\ufffd"


async def test_a_refused_event_fails_alone_and_its_batch_is_committed(
    database_url: str, db: asyncpg.Connection
) -> None:
    # Past the receiver's checks nothing should be refused; should PostgreSQL refuse one event
    # anyway, the others queued with it are still committed and only that one fails.
    source = github_source()
    store = Store(
        DatabaseConfig(url=database_url, maintenance_interval_seconds=3600),
        [source],
        ReceiverMetrics(),
    )
    await store.start()
    try:
        assert await store.wait_ready(60)

        def event(event_id: str, event_type: str = "push") -> Event:
            return Event(
                source=source.key,
                event_id=event_id,
                event_type=event_type,
                received_at=datetime.now(UTC),
                request_id=event_id,
                payload=b"{}",
                headers={},
            )

        submitted = [store.submit(event(f"ok-{n}")) for n in range(20)]
        submitted.insert(7, store.submit(event("bad", "nul\x00inside")))
        results = await asyncio.gather(*submitted, return_exceptions=True)
    finally:
        await store.close()
    refused = results.pop(7)
    assert isinstance(refused, EventRefused)
    assert results == [True] * 20
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 20
    assert await db.fetchval("SELECT count(*) FROM webhook_event_ids") == 20


async def test_events_without_provider_id_dedupe_on_identical_bodies(
    make_client: Any, db: asyncpg.Connection
) -> None:
    source = SourceConfig(
        name="generic",
        provider=Provider.HMAC,
        verification=VerificationConfig(secrets=[SecretSource(value="k")], header="X-Sig"),
    )
    client = await make_client(source)
    body = b"plain text event"
    headers = SIGNERS[Provider.HMAC](body, b"k", source.verification, time.time(), None)
    headers.pop("X-Request-Id", None)
    for _ in range(2):
        assert (await client.post(source.route, data=body, headers=headers)).status == 200
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 1


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "X-Hub-Signature-256",
        "X-Api-Key",
        "x-api_key",
        "X_API_KEY",
        "x-apikey",
        "x-webhook-key",
        "X-Key",
        "x-access-key",
        "x-jwt",
        "x-jwt-assertion",
        "x-session",
        "x-session-id",
        "x-credential",
        "x-amz-credentials",
        "x_auth_token",
        "x-client-secret",
        "x-password",
        "x-passwd",
    ],
)
def test_credential_headers_are_never_stored(name: str) -> None:
    assert stored_headers({name: "s3cr3t", "X-GitHub-Event": "push"}, set()) == {
        "x-github-event": "push"
    }


@pytest.mark.parametrize(
    "name",
    [
        # Identifiers a reader needs and no one can abuse: an idempotency key names a request.
        "Idempotency-Key",
        "X-Idempotency-Key",
        "X-GitHub-Delivery",
        "X-Shopify-Webhook-Id",
        "X-Request-Id",
        "User-Agent",
        "Content-Type",
        "X-Keyboard-Layout",
        "X-Monkey",
    ],
)
def test_useful_headers_are_stored(name: str) -> None:
    assert stored_headers({name: "value"}, set()) == {name.lower(): "value"}


async def test_health_endpoints(make_client: Any) -> None:
    client = await make_client()
    assert (await client.get("/livez")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"]["database"] is True


async def test_unknown_path_and_method_are_problem_json(make_client: Any) -> None:
    client = await make_client()
    missing = await client.post("/hooks/nope")
    assert missing.status == 404
    assert missing.content_type == "application/problem+json"
    wrong = await client.get("/hooks/ci/gh")
    assert wrong.status == 405
    assert wrong.content_type == "application/problem+json"


async def test_logs_are_json_lines_without_bodies_or_secrets(make_client: Any) -> None:
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        client = await make_client()
        body = b'{"card":"4242424242424242"}'
        await client.post("/hooks/ci/gh", data=body, headers=github_headers(body, "l1"))
        await client.post("/hooks/ci/gh", data=body, headers=github_headers(body, "l2", "bad"))
    finally:
        logs.configure()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    requests = [line for line in lines if line.get("event") == "request"]
    assert [r["status"] for r in requests] == [200, 401]
    assert all(r["source"] == "ci/gh" and r["request_id"] for r in requests)
    text = stream.getvalue()
    assert "4242424242424242" not in text
    assert GITHUB_SECRET not in text
    assert "sha256=" not in text


async def test_secret_rotation_on_disk_is_picked_up_without_restart(
    make_client: Any, tmp_path: Any
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("old-secret")
    source = github_source(
        verification=VerificationConfig(secrets=[SecretSource(file=str(secret_file))])
    )
    client = await make_client(source)
    body = b"{}"
    assert (
        await client.post(source.route, data=body, headers=github_headers(body, "s1", "old-secret"))
    ).status == 200
    secret_file.write_text("new-secret")
    from webhook_server.app import reload_secrets

    assert reload_secrets(client.app) == ["ci/gh"]
    assert (
        await client.post(source.route, data=body, headers=github_headers(body, "s2", "new-secret"))
    ).status == 200
    assert (
        await client.post(source.route, data=body, headers=github_headers(body, "s3", "old-secret"))
    ).status == 401


def _unused(_: web.Application) -> None:  # keeps the web import meaningful for type checkers
    return None


async def test_jwt_source_needs_a_valid_bearer_token(
    make_client: Any, db: asyncpg.Connection
) -> None:
    import jwt as pyjwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from webhook_server.config import AuthConfig

    key = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    source = SourceConfig(
        name="orders",
        provider=Provider.JWT,
        auth=AuthConfig(
            public_key=public_pem, issuer="https://clerk.example.com", audiences=["orders-api"]
        ),
    )
    client = await make_client(source)
    now = int(time.time())
    claims = {
        "iss": "https://clerk.example.com",
        "aud": "orders-api",
        "sub": "user_1",
        "iat": now,
        "exp": now + 60,
    }
    token = pyjwt.encode(claims, key, algorithm="ES256")
    body = b'{"id":"ord_1","type":"order.created"}'

    ok = await client.post(source.route, data=body, headers={"Authorization": f"Bearer {token}"})
    assert ok.status == 200
    assert (await ok.json())["eventId"] == "ord_1"
    expired = pyjwt.encode(claims | {"exp": now - 60}, key, algorithm="ES256")
    refused = await client.post(
        source.route, data=body, headers={"Authorization": f"Bearer {expired}"}
    )
    assert refused.status == 401
    assert expired not in await refused.text()
    assert (await client.post(source.route, data=body)).status == 401
    row = await db.fetchrow("SELECT event_type, headers FROM webhook_events")
    assert row["event_type"] == "order.created"
    assert "authorization" not in json.loads(row["headers"])


async def test_jwks_endpoint_down_is_a_503_with_retry_after_not_a_signature_failure(
    make_client: Any, aiohttp_server: Any, db: asyncpg.Connection
) -> None:
    from webhook_server.config import AuthConfig

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    jwks_app = web.Application()
    jwks_app.router.add_get("/jwks", down)
    jwks = await aiohttp_server(jwks_app)
    source = SourceConfig(
        name="orders", provider=Provider.JWT, auth=AuthConfig(jwks_url=str(jwks.make_url("/jwks")))
    )
    client = await make_client(source)
    # Any well-formed token will do: with no keys it cannot be checked, right or wrong.
    token = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJleHAiOjR9.c2ln"
    resp = await client.post(source.route, data=b"{}", headers={"Authorization": f"Bearer {token}"})

    assert resp.status == 503
    assert resp.content_type == "application/problem+json"
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["detail"] == "signing keys unavailable"
    metrics = await (await client.get("/metrics")).text()
    assert "dfm_receiver_signature_failures_total{" not in metrics
    outcome = 'dfm_receiver_requests_total{outcome="auth_unavailable",source="default/orders"}'
    assert f"{outcome} 1.0" in metrics
    # Readiness does not follow the identity provider: the other sources keep being served.
    assert (await client.get("/readyz")).status == 200
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0


async def test_shutdown_commits_every_accepted_event(
    aiohttp_client: Any, database_url: str, one_pass: bool
) -> None:
    config = ReceiverConfig(sources=[github_source()], database=DatabaseConfig(url=database_url))
    app = create_app(config)
    client = await aiohttp_client(ReceiverServer(app, one_pass=one_pass))
    assert await app[STORE].wait_ready(60)
    import asyncio

    async def post(i: int) -> int:
        body = f'{{"i":{i}}}'.encode()
        resp = await client.post("/hooks/ci/gh", data=body, headers=github_headers(body, f"s{i}"))
        return resp.status

    statuses = await asyncio.gather(*(post(i) for i in range(200)))
    await client.close()  # runs the app's cleanup: drain, flush, close the pool
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM webhook_events")
    finally:
        await conn.close()
    assert statuses.count(200) == 200
    assert stored == 200
