"""The Events API end to end: a real receiver, a real PostgreSQL, a JWKS and a consumer on loopback.

Tokens are signed with a key whose public half a loopback JWKS server publishes, as Clerk's does;
every answer is checked against the API's own OpenAPI document.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jsonschema
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from openapi_spec_validator import validate

from tests.integration.test_forward import forward, github_headers
from tests.receivers import ClientFactory, Consumer, until_true
from webhook_server import logs
from webhook_server.config import (
    AuthConfig,
    EventsApiConfig,
    Provider,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.events_api.openapi import document
from webhook_server.store import Event, create_partitions, insert_events
from webhook_server.store.events import decode_id
from webhook_server.store.outbox import webhook_id

GITHUB_SECRET = "It's a Secret to Everybody"
ISSUER = "https://clerk.example.test"
AUDIENCE = "events-api"
READ, REPLAY = "events:read", "events:replay"


# -- keys, tokens and the JWKS ------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def jwks_url(aiohttp_server: Any, rsa_key: rsa.RSAPrivateKey) -> str:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    jwk.update(kid="k1", use="sig", alg="RS256")

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/.well-known/jwks.json"))


@dataclass
class Tokens:
    key: rsa.RSAPrivateKey

    def make(self, scope: str | list[str] | None = READ, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": "user_ops",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now - 5,
            "exp": now + 300,
            "scope": scope,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def tokens(rsa_key: rsa.RSAPrivateKey) -> Tokens:
    return Tokens(rsa_key)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token pyjwt refuses to make: alg none, or HS256 keyed with the RSA public key."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


# -- the OpenAPI document's schemas --------------------------------------------------------------


def check(schema: str, value: Any) -> None:
    """``value`` as the OpenAPI document's component ``schema`` says it is."""
    root = {"components": document()["components"], "$ref": f"#/components/schemas/{schema}"}
    jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(value)


async def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    check("Problem", body)
    assert body["status"] == status
    return body


# -- the receiver --------------------------------------------------------------------------------


def source(
    jwks_url: str | None,
    target: Consumer | None = None,
    *,
    name: str = "gh",
    **api: Any,
) -> SourceConfig:
    events_api = None
    if jwks_url is not None:
        events_api = EventsApiConfig(
            auth=AuthConfig(jwks_url=jwks_url, issuer=ISSUER, audiences=[AUDIENCE]), **api
        )
    return SourceConfig(
        namespace="ci",
        name=name,
        provider=Provider.GITHUB,
        verification=VerificationConfig(secrets=[SecretSource(value=GITHUB_SECRET)]),
        forward=forward(target, max_attempts=1) if target is not None else None,
        events_api=events_api,
    )


async def send(client: TestClient[Any, Any], delivery: str, body: bytes | None = None) -> None:
    body = body or json.dumps({"email": "ada@example.com", "n": delivery}).encode()
    response = await client.post("/hooks/ci/gh", data=body, headers=github_headers(body, delivery))
    assert response.status == 200, await response.text()


async def listed(client: TestClient[Any, Any], token: str, **query: Any) -> dict[str, Any]:
    response = await client.get("/events", params=query, headers=bearer(token))
    assert response.status == 200, await response.text()
    page: dict[str, Any] = await response.json()
    check("EventPage", page)
    return page


# -- closed unless configured --------------------------------------------------------------------


async def test_without_settings_the_api_does_not_exist(
    make_receiver: ClientFactory, tokens: Tokens
) -> None:
    client = await make_receiver(source(None))
    for method, path in (
        ("GET", "/events"),
        ("GET", "/events/openapi.json"),
        ("GET", "/events/abc"),
        ("POST", "/events/abc/replay"),
        ("POST", "/events/replay"),
    ):
        response = await client.request(
            method, path, headers=bearer(tokens.make(f"{READ} {REPLAY}"))
        )
        await problem(response, 404)


def test_a_source_path_under_events_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be under /events"):
        SourceConfig(
            name="x",
            provider=Provider.GITHUB,
            path="/events/x",
            verification=VerificationConfig(secrets=[SecretSource(value=GITHUB_SECRET)]),
        )


# -- the JWT matrix ------------------------------------------------------------------------------


async def test_every_bad_token_is_refused(
    make_receiver: ClientFactory, tokens: Tokens, jwks_url: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    client = await make_receiver(source(jwks_url))
    await send(client, "m1")
    now = int(time.time())
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    good_claims = {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "scope": READ}
    refused = {
        "no token": {},
        "not bearer": {"Authorization": f"Basic {tokens.make()}"},
        "expired": bearer(tokens.make(exp=now - 120, iat=now - 600)),
        "wrong audience": bearer(tokens.make(aud="someone-else")),
        "wrong issuer": bearer(tokens.make(iss="https://evil.example")),
        "alg none": bearer(handmade({"alg": "none", "kid": "k1"}, good_claims, None)),
        # HS256 keyed with the public key: what an RS/HS confusion would accept.
        "HS/RS confusion": bearer(
            handmade({"alg": "HS256", "kid": "k1", "typ": "JWT"}, good_claims, public_pem)
        ),
        "tampered": bearer(tokens.make()[:-4] + "AAAA"),
        # Only the Authorization header counts: a cookie is what a browser sends by itself.
        "session cookie": {"Cookie": f"__session={tokens.make()}"},
    }
    for what, headers in refused.items():
        response = await client.get("/events", headers=headers)
        body = await problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), what
        token = headers.get("Authorization", headers.get("Cookie", ""))
        for part in token.split("."):
            if len(part) > 8:
                assert part not in json.dumps(body), what

    # A token with the read scope reads, and cannot replay.
    read_only = tokens.make(READ)
    page = await listed(client, read_only)
    event = page["items"][0]
    response = await client.post(f"/events/{event['id']}/replay", headers=bearer(read_only))
    await problem(response, 403)
    assert 'scope="events:replay"' in response.headers["WWW-Authenticate"]
    response = await client.post(
        "/events/replay", json={"state": "dead"}, headers=bearer(read_only)
    )
    await problem(response, 403)
    # A token with the replay scope only cannot read; one with no scope at all can do nothing.
    for scope in (REPLAY, None, ["other"]):
        response = await client.get("/events", headers=bearer(tokens.make(scope)))
        await problem(response, 403)
        response = await client.get(f"/events/{event['id']}", headers=bearer(tokens.make(scope)))
        await problem(response, 403)
    # Scopes as a list (scp-style) count as well as a space-separated string.
    await listed(client, tokens.make([READ, REPLAY]))


async def test_the_scope_claim_is_configurable(
    make_receiver: ClientFactory, tokens: Tokens, jwks_url: str
) -> None:
    client = await make_receiver(
        source(jwks_url, scope_claim="permissions", read_scope="org:events:read",
               replay_scope="org:events:replay")
    )  # fmt: skip
    await listed(client, tokens.make(None, permissions=["org:events:read"]))
    response = await client.get("/events", headers=bearer(tokens.make(READ)))
    await problem(response, 403)


async def test_requests_past_the_budget_are_429_before_the_token_is_checked(
    make_receiver: ClientFactory, tokens: Tokens, jwks_url: str
) -> None:
    client = await make_receiver(source(jwks_url, requests_per_second=0.01, burst=2))
    token = tokens.make()
    await listed(client, token)
    await problem(await client.get("/events"), 401)
    response = await client.get("/events", headers=bearer(token))
    await problem(response, 429)
    assert int(response.headers["Retry-After"]) >= 1


# -- reading -------------------------------------------------------------------------------------


async def test_list_filters_and_payloads_only_on_request(
    make_receiver: ClientFactory, tokens: Tokens, jwks_url: str, db: asyncpg.Connection
) -> None:
    client = await make_receiver(source(jwks_url))
    for n in range(3):
        await send(client, f"d{n}")
    token = tokens.make()
    page = await listed(client, token)
    assert [e["eventId"] for e in page["items"]] == ["d2", "d1", "d0"]
    assert page["nextCursor"] is None
    first = page["items"][0]
    assert first["source"] == "ci/gh"
    assert first["type"] == "push"
    assert first["delivery"] is None  # this source does not forward
    # No payload, no headers unless asked for.
    assert "payload" not in first
    assert "headers" not in first
    assert "ada@example.com" not in json.dumps(page)

    full = await listed(client, token, include="payload", eventId="d1")
    [one] = full["items"]
    assert json.loads(one["payload"]) == {"email": "ada@example.com", "n": "d1"}
    assert one["payloadEncoding"] == "utf-8"
    assert one["headers"]["x-github-event"] == "push"
    assert not any("signature" in name for name in one["headers"])

    response = await client.get(f"/events/{first['id']}", headers=bearer(token))
    assert response.status == 200
    shown = await response.json()
    check("Event", shown)
    assert shown == first
    response = await client.get(
        f"/events/{first['id']}", params={"include": "payload"}, headers=bearer(token)
    )
    assert json.loads((await response.json())["payload"])["n"] == "d2"

    # Filters: type, time range, delivery state.
    assert (await listed(client, token, type="issues"))["items"] == []
    received = datetime.fromisoformat(first["receivedAt"])
    since = (received - timedelta(microseconds=1)).isoformat()
    assert [e["eventId"] for e in (await listed(client, token, since=since))["items"]] == ["d2"]
    until = first["receivedAt"]
    assert [e["eventId"] for e in (await listed(client, token, until=until))["items"]] == [
        "d1",
        "d0",
    ]
    assert len((await listed(client, token, state="none"))["items"]) == 3
    assert (await listed(client, token, state="dead"))["items"] == []

    # Bad parameters: problem+json, never an echo of what was sent.
    for query in (
        {"state": "lost"},
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "21", "include": "payload"},
        {"limit": "many"},
        {"since": "yesterday"},
        {"since": "2026-01-01T00:00:00"},
        {"include": "everything"},
        {"cursor": "not-a-cursor"},
        {"colour": "blue"},
    ):
        response = await client.get("/events", params=query, headers=bearer(token))
        detail = (await problem(response, 400)).get("detail", "")
        for chosen in ("lost", "many", "yesterday", "everything", "not-a-cursor", "colour"):
            assert chosen not in detail, query
    # An id that is not one, or names another source: 404, like an unknown event.
    await problem(await client.get("/events/nonsense", headers=bearer(token)), 404)
    other = _id_of("ci/other", "d1", received)
    await problem(await client.get(f"/events/{other}", headers=bearer(token)), 404)
    missing = _id_of("ci/gh", "nope", received)
    await problem(await client.get(f"/events/{missing}", headers=bearer(token)), 404)


def _id_of(source_key: str, event_id: str, at: datetime) -> str:
    from webhook_server.store.events import encode_id

    return encode_id((source_key, "", event_id, at))


async def test_a_receiver_with_several_api_sources_needs_the_source_named(
    make_receiver: ClientFactory, tokens: Tokens, jwks_url: str
) -> None:
    client = await make_receiver(source(jwks_url), source(jwks_url, name="gh2"))
    token = tokens.make()
    await problem(await client.get("/events", headers=bearer(token)), 400)
    await problem(
        await client.get("/events", params={"source": "ci/x"}, headers=bearer(token)), 404
    )
    assert (await listed(client, token, source="ci/gh2"))["items"] == []


async def test_the_openapi_document_is_valid_and_served(
    make_receiver: ClientFactory, jwks_url: str
) -> None:
    validate(document())
    client = await make_receiver(source(jwks_url))
    response = await client.get("/events/openapi.json")
    assert response.status == 200
    served = await response.json()
    assert served == document()
    assert served["openapi"] == "3.1.0"
    assert set(served["paths"]) == {
        "/events", "/events/{id}", "/events/{id}/replay", "/events/replay", "/events/openapi.json"
    }  # fmt: skip


# -- pages under concurrent inserts --------------------------------------------------------------


async def test_pages_are_stable_while_events_keep_arriving(
    make_receiver: ClientFactory,
    tokens: Tokens,
    jwks_url: str,
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    """Keyset pages: a walk sees every event that existed when it began exactly once, however
    many arrive meanwhile (newer ones, and ones received earlier but committed late). An OFFSET
    walk would list events twice as new ones push the old ones down."""
    client = await make_receiver(source(jwks_url))
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=100)
    await create_partitions(db, {base.date(), datetime.now(UTC).date()})
    # Three events per received_at, so the key's tie-breakers matter too.
    existing = [_event(f"old-{n:04d}", base + timedelta(seconds=n // 3)) for n in range(240)]
    await insert_events(db, existing)
    token = tokens.make()
    stop, progressed = asyncio.Event(), asyncio.Event()
    inserted = 0

    async def keep_inserting() -> None:
        nonlocal inserted
        conn = await asyncpg.connect(database_url)
        try:
            while not stop.is_set():
                late = base + timedelta(seconds=(inserted * 7) % 80, microseconds=1)
                # One newer than everything (arriving now), one received inside the range
                # being walked but committed only now.
                batch = [
                    _event(f"new-{inserted:04d}", datetime.now(UTC)),
                    _event(f"late-{inserted:04d}", late),
                ]
                await insert_events(conn, batch)
                inserted += 1
                progressed.set()
                await asyncio.sleep(0)
        finally:
            await conn.close()

    writer = asyncio.create_task(keep_inserting())
    seen: list[str] = []
    cursor = None
    pages = 0
    try:
        while True:
            query: dict[str, Any] = {"limit": 25}
            if cursor:
                query["cursor"] = cursor
            page = await listed(client, token, **query)
            seen.extend(e["eventId"] for e in page["items"])
            pages += 1
            # Let the writer commit between pages.
            progressed.clear()
            await asyncio.wait_for(progressed.wait(), 30)
            cursor = page["nextCursor"]
            if cursor is None:
                break
    finally:
        stop.set()
        await writer
    assert pages >= 10
    assert inserted >= pages
    assert len(seen) == len(set(seen)), "an event was listed twice"
    old = [s for s in seen if s.startswith("old-")]
    # Every one, newest first (ties by the rest of the key, descending).
    expected = sorted(existing, key=lambda e: (e.received_at, e.event_id), reverse=True)
    assert old == [e.event_id for e in expected], "an existing event was skipped or misplaced"
    # And what arrived meanwhile is there to see on a new walk.
    assert len((await listed(client, token, limit=500))["items"]) == min(500, 240 + 2 * inserted)


def _event(event_id: str, at: datetime) -> Event:
    return Event(
        source="ci/gh",
        event_id=event_id,
        event_type="push",
        received_at=at,
        request_id="r",
        payload=b"{}",
        headers={},
    )


# -- replays -------------------------------------------------------------------------------------


async def test_a_dead_lettered_event_is_delivered_once_more_with_the_same_webhook_id(
    make_receiver: ClientFactory,
    tokens: Tokens,
    jwks_url: str,
    consumer: Consumer,
    db: asyncpg.Connection,
) -> None:
    consumer.default = 500
    client = await make_receiver(source(jwks_url, consumer))
    await send(client, "evt-dead")

    await until_true(
        db,
        "SELECT state = 'dead' FROM webhook_deliveries WHERE event_id = 'evt-dead'",
        "the delivery to be dead-lettered",
    )
    assert consumer.ids() == ["evt-dead"]
    page = await listed(client, tokens.make(), state="dead")
    [event] = page["items"]
    assert event["delivery"]["state"] == "dead"
    assert event["delivery"]["lastError"] == "max_attempts"

    consumer.default = 200
    replayer = tokens.make(f"{READ} {REPLAY}")
    response = await client.post(f"/events/{event['id']}/replay", headers=bearer(replayer))
    assert response.status == 202, await response.text()
    requeued = await response.json()
    check("Event", requeued)
    assert requeued["delivery"]["state"] in ("pending", "delivered")
    assert requeued["delivery"]["replays"] == 1

    await until_true(
        db,
        "SELECT state = 'delivered' FROM webhook_deliveries WHERE event_id = 'evt-dead'",
        "the replay to be delivered",
    )
    # Once more, and with the same webhook-id (so the consumer can tell it is the same event).
    assert consumer.ids() == ["evt-dead", "evt-dead"]
    assert consumer.ids()[1] == webhook_id("ci/gh", "", "evt-dead")
    assert consumer.seen[1].body == consumer.seen[0].body
    assert consumer.seen[1].headers["dfm-attempt"] == "1"
    shown = await (await client.get(f"/events/{event['id']}", headers=bearer(replayer))).json()
    assert shown["delivery"]["state"] == "delivered"
    assert shown["delivery"]["attempts"] == 1
    assert shown["delivery"]["requeuedAt"] is not None
    # Nothing further arrives.
    await asyncio.sleep(0.3)
    assert len(consumer.seen) == 2


async def test_bulk_replay_of_the_dead_letters(
    make_receiver: ClientFactory,
    tokens: Tokens,
    jwks_url: str,
    consumer: Consumer,
    db: asyncpg.Connection,
) -> None:
    consumer.default = 500
    client = await make_receiver(source(jwks_url, consumer, max_bulk_replay=3))
    for n in range(3):
        await send(client, f"b{n}")

    await until_true(
        db, "SELECT count(*) = 3 FROM webhook_deliveries WHERE state = 'dead'", "three dead letters"
    )
    replayer = tokens.make(REPLAY)
    # Nothing bounded selected: refused.
    await problem(await client.post("/events/replay", json={}, headers=bearer(replayer)), 400)
    await problem(
        await client.post("/events/replay", json={"state": "dead", "colour": 1},
                          headers=bearer(replayer)), 400,
    )  # fmt: skip
    dry = await client.post(
        "/events/replay", json={"state": "dead", "dryRun": True}, headers=bearer(replayer)
    )
    assert dry.status == 200
    result = await dry.json()
    check("ReplayResult", result)
    assert result == {"requeued": 3, "alreadyPending": 0, "dryRun": True}
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE state = 'dead'") == 3

    consumer.default = 200
    response = await client.post("/events/replay", json={"state": "dead"}, headers=bearer(replayer))
    assert response.status == 202, await response.text()
    assert (await response.json())["requeued"] == 3

    await until_true(
        db,
        "SELECT count(*) = 3 FROM webhook_deliveries WHERE state = 'delivered'",
        "three deliveries",
    )
    assert sorted(consumer.ids()) == sorted(["b0", "b1", "b2"] * 2)

    # A time range: every event in it, delivered ones too; more than maxBulkReplay: refused.
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    await send(client, "b3")
    await until_true(
        db,
        "SELECT state = 'delivered' FROM webhook_deliveries WHERE event_id = 'b3'",
        "b3 delivered",
    )
    too_many = await client.post("/events/replay", json={"since": since}, headers=bearer(replayer))
    await problem(too_many, 422)
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'") == 0
    [b3] = (await listed(client, tokens.make(), eventId="b3"))["items"]
    recent = await client.post(
        "/events/replay",
        json={"since": b3["receivedAt"], "type": "push", "state": "delivered", "dryRun": True},
        headers=bearer(replayer),
    )  # fmt: skip
    assert recent.status == 200
    assert (await recent.json())["requeued"] == 1


async def test_replay_conflicts(
    make_receiver: ClientFactory,
    tokens: Tokens,
    jwks_url: str,
    consumer: Consumer,
    db: asyncpg.Connection,
) -> None:
    consumer.script.append("hang")
    client = await make_receiver(source(jwks_url, consumer), source(jwks_url, name="quiet"))
    await send(client, "p1")
    replayer = tokens.make(f"{READ} {REPLAY}")
    [event] = (await listed(client, replayer, source="ci/gh"))["items"]
    # Pending (in flight to a target that hangs): queued already.
    response = await client.post(f"/events/{event['id']}/replay", headers=bearer(replayer))
    await problem(response, 409)
    # A source that does not forward has nothing to replay.
    quiet_body = json.dumps({"n": 1}).encode()
    response = await client.post(
        "/hooks/ci/quiet", data=quiet_body, headers=github_headers(quiet_body, "q1")
    )
    assert response.status == 200
    [quiet] = (await listed(client, replayer, source="ci/quiet"))["items"]
    await problem(await client.post(f"/events/{quiet['id']}/replay", headers=bearer(replayer)), 409)
    await problem(
        await client.post("/events/replay", json={"source": "ci/quiet", "state": "dead"},
                          headers=bearer(replayer)), 409,
    )  # fmt: skip
    assert decode_id(event["id"])[2] == "p1"


async def test_tokens_and_payloads_never_reach_the_logs(
    make_receiver: ClientFactory, tokens: Tokens, jwks_url: str
) -> None:
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        client = await make_receiver(source(jwks_url))
        await send(client, "secretive", json.dumps({"card": "4242424242424242"}).encode())
        token = tokens.make()
        await listed(client, token, include="payload")
        await client.get("/events", headers=bearer(token + "x"))
        await client.get("/events", headers=bearer(tokens.make(REPLAY)))
        await asyncio.sleep(0)
    finally:
        logs.configure()
    text = stream.getvalue()
    assert "4242424242424242" not in text
    for part in token.split("."):
        assert part not in text
    lines = [json.loads(line) for line in text.splitlines()]
    api = [line for line in lines if line.get("event") == "events_api"]
    assert [(line["operation"], line["status"], line["outcome"]) for line in api] == [
        ("list", 200, "ok"),
        ("list", 401, "unauthorized"),
        ("list", 403, "forbidden"),
    ]
    assert api[0]["subject"] == "user_ops"


async def test_a_replay_of_an_old_event_is_not_expired_before_it_is_attempted(
    db: asyncpg.Connection,
) -> None:
    """forward.maxAgeSeconds counts from the replay for a replayed delivery: an event older than
    it is re-queued, claimed and given its full budget, not dead-lettered again at once."""
    from webhook_server.store import apply_migrations, register_sources
    from webhook_server.store import outbox as table
    from webhook_server.store.events import requeue

    await apply_migrations(db)
    now = datetime.now(UTC)
    old = now - timedelta(days=2)
    await create_partitions(db, {old.date(), now.date()})
    await register_sources(db, [("ci/gh", 30)], now, forwarding={"ci/gh"})
    await insert_events(db, [_event("ancient", old)])
    await db.execute("UPDATE webhook_deliveries SET state = 'dead', dead_at = $1", old)
    assert await table.expire(db, "ci/gh", now, 3600) == 0

    [key] = await requeue(db, [("ci/gh", "", "ancient", old)], now)
    assert key[2] == "ancient"
    # A second replay while it is pending does nothing.
    assert await requeue(db, [key], now) == []
    assert await table.expire(db, "ci/gh", now + timedelta(minutes=59), 3600) == 0
    backlog = await table.backlog(db, "ci/gh")
    assert (backlog.pending, backlog.oldest_pending) == (1, now)
    [claimed] = await table.claim(
        db, "ci/gh", now, 10, table.Lease("r1", now + timedelta(minutes=1))
    )
    assert (claimed.attempts, claimed.requeued_at, claimed.age_from) == (0, now, now)
    assert claimed.webhook_id == webhook_id("ci/gh", "", "ancient")
    # Past maxAge from the replay (and nobody holding it), it is dead-lettered as usual.
    assert await table.expire(db, "ci/gh", now + timedelta(hours=2), 3600) == 1


async def test_replays_racing_each_other_requeue_a_delivery_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    from webhook_server.store import apply_migrations, register_sources
    from webhook_server.store.events import EventFilter, replay_bulk, requeue

    await apply_migrations(db)
    now = datetime.now(UTC)
    await create_partitions(db, {now.date()})
    await register_sources(db, [("ci/gh", 30)], now, forwarding={"ci/gh"})
    await insert_events(db, [_event(f"race-{n}", now - timedelta(seconds=n)) for n in range(50)])
    await db.execute("UPDATE webhook_deliveries SET state = 'dead', dead_at = $1", now)
    keys = [("ci/gh", "", f"race-{n}", now - timedelta(seconds=n)) for n in range(50)]
    others = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        single, bulk_a, bulk_b = await asyncio.gather(
            requeue(others[0], keys, now),
            replay_bulk(others[1], EventFilter(state="dead"), now, max_events=100),
            replay_bulk(others[2], EventFilter(state="dead"), now, max_events=100),
        )
    finally:
        for conn in others:
            await conn.close()
    # Every delivery was re-queued by exactly one of them.
    assert len(single) + bulk_a.requeued + bulk_b.requeued == 50
    counts = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE replays = 1) AS once, "
        "count(*) FILTER (WHERE state = 'pending') AS pending FROM webhook_deliveries"
    )
    assert (counts["once"], counts["pending"]) == (50, 50)
