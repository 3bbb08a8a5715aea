"""The texting and broadcast providers end to end over HTTP, against a real PostgreSQL: Twilio
behind an Ingress, Mailgun tokens refused across replicas, SendGrid batches stored once with their
count, Mandrill's HEAD check."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import MultiDict
from twilio.request_validator import RequestValidator
from yarl import URL

from dfm_operator.api import WebhookSource
from dfm_operator.builders.webhooksource import ReceiverInputs, build_receiver_config
from dfm_operator.settings import OperatorSettings
from tests.receivers import ReceiverServer
from webhook_server.app import METRICS, STORE, create_app
from webhook_server.config import (
    DatabaseConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.verify import mailgun, mandrill, sendgrid, twilio

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
TWILIO_TOKEN = "twilio-auth-token-for-tests"
MAILGUN_KEY = "mailgun-signing-key-for-tests"
PUBLIC = "https://hooks.example.com/hooks/default/twilio"


@pytest.fixture
def make_client(aiohttp_client: ClientFactory, database_url: str, one_pass: bool) -> ClientFactory:
    async def make(*sources: SourceConfig, clock: Callable[[], float] = time.time) -> Any:
        config = ReceiverConfig(
            sources=list(sources),
            database=DatabaseConfig(url=database_url, maintenance_interval_seconds=3600),
        )
        app = create_app(config, clock=clock)
        client = await aiohttp_client(ReceiverServer(app, one_pass=one_pass))
        assert await app[STORE].wait_ready(60), "store did not become ready"
        return client

    return make


def _secret(value: str) -> VerificationConfig:
    return VerificationConfig(secrets=[SecretSource(value=value)])


# -- Twilio: the signed URL is the public one ------------------------------------------------------

STATUS = [
    ("AccountSid", "AC" + "0" * 32),
    ("MessageSid", "SM" + "1" * 32),
    ("MessageStatus", "delivered"),
    ("SmsStatus", "delivered"),
    ("Body", "café + tea"),
]


def _twilio_signature(url: str, params: list[tuple[str, str]]) -> str:
    return str(RequestValidator(TWILIO_TOKEN).compute_signature(url, MultiDict(params)))


async def test_twilio_behind_an_ingress_verifies_the_public_url_and_stores_the_form_as_sent(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    # The operator renders the receiver config from a source exposed through an Ingress with TLS:
    # the receiver is told https://<host><path>, the URL Twilio calls.
    source = WebhookSource.model_validate(
        {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "WebhookSource",
            "metadata": {"name": "twilio", "namespace": "default"},
            "spec": {
                "provider": "twilio",
                "verification": {"secretRef": {"name": "twilio"}},
                "exposure": {"ingress": {"host": "hooks.example.com", "tlsSecretName": "tls"}},
            },
        }
    )
    rendered = build_receiver_config(source, ReceiverInputs(settings=OperatorSettings()))
    assert rendered.sources[0].verification.public_url == PUBLIC
    config = rendered.sources[0].model_copy(
        update={"verification": rendered.sources[0].verification.model_copy(
            update={"secrets": [SecretSource(value=TWILIO_TOKEN)]}
        )}
    )  # fmt: skip
    client = await make_client(config)
    # Exactly the bytes Twilio sends (its own encoding, spaces as +), kept byte for byte.
    body = urlencode(STATUS).encode()
    signature = _twilio_signature(f"{PUBLIC}?tenant=a%2Fb", STATUS)
    headers = {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
        # What a proxy adds, and what an attacker could send: never consulted.
        "X-Forwarded-Host": "evil.example.com",
        "X-Forwarded-Proto": "http",
    }
    # Sent exactly as written (the client would otherwise decode %2F): the receiver must rebuild
    # the query string as it arrived, escapes included.
    target = URL("/hooks/default/twilio?tenant=a%2Fb", encoded=True)
    answer = await client.post(target, data=body, headers=headers)
    assert answer.status == 200, await answer.text()
    assert (await answer.json())["eventId"] == "SM" + "1" * 32 + ":delivered"
    row = await db.fetchrow("SELECT * FROM webhook_events")
    assert bytes(row["payload"]) == body
    assert row["event_type"] == "message.delivered"
    assert "x-twilio-signature" not in json.loads(row["headers"])

    # Signed for the URL the receiver itself sees (as a receiver trusting Host would rebuild):
    # not what Twilio signs, so refused.
    seen = f"http://{client.host}:{client.port}/hooks/default/twilio?tenant=a%2Fb"
    headers["X-Twilio-Signature"] = _twilio_signature(seen, STATUS)
    refused = await client.post(target, data=body, headers=headers)
    assert refused.status == 401
    # The query string is part of what is signed.
    headers["X-Twilio-Signature"] = signature
    refused = await client.post("/hooks/default/twilio?tenant=other", data=body, headers=headers)
    assert refused.status == 401


async def test_twilio_json_is_verified_through_bodysha256(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    source = SourceConfig(
        name="twilio",
        provider=Provider.TWILIO,
        verification=VerificationConfig(
            secrets=[SecretSource(value=TWILIO_TOKEN)], public_url=PUBLIC
        ),
    )
    client = await make_client(source)
    body = b'{"id": "EV1", "type": "com.twilio.messaging.message.delivered"}'
    query = twilio.query(body, source.verification)
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(f"{PUBLIC}?{query}", {})
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
    answer = await client.post(f"/hooks/default/twilio?{query}", data=body, headers=headers)
    assert answer.status == 200, await answer.text()
    assert (await answer.json())["eventId"] == "EV1"
    tampered = await client.post(
        f"/hooks/default/twilio?{query}", data=body.replace(b"EV1", b"EV2"), headers=headers
    )
    assert tampered.status == 401


# -- Mailgun: a token is used once, across replicas ---------------------------------------------


def _mailgun_source() -> SourceConfig:
    return SourceConfig(
        name="mailgun", provider=Provider.MAILGUN, verification=_secret(MAILGUN_KEY)
    )


def _mailgun_body(event_id: str, fields: dict[str, str], kind: str = "delivered") -> bytes:
    event = {"signature": fields, "event-data": {"id": event_id, "event": kind}}
    return json.dumps(event).encode()


async def test_a_mailgun_token_reused_with_another_event_is_refused_by_every_replica(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    now = time.time()
    replica_a = await make_client(_mailgun_source())
    replica_b = await make_client(_mailgun_source())
    fields = mailgun.signature_fields(MAILGUN_KEY.encode(), now)
    genuine = _mailgun_body("evt-genuine", fields)
    # The captured signature, moved onto a body of the attacker's choosing.
    forged = _mailgun_body("evt-forged", fields, kind="unsubscribed")

    first = await replica_a.post("/hooks/default/mailgun", data=genuine)
    assert first.status == 200
    assert (await first.json())["status"] == "stored"
    replayed = await replica_b.post("/hooks/default/mailgun", data=forged)
    assert replayed.status == 401
    assert (await replayed.json())["detail"] == "this signature was already used"
    # Mailgun's own redelivery of the same event with the same token: a duplicate, not a replay.
    again = await replica_b.post("/hooks/default/mailgun", data=genuine)
    assert again.status == 200
    assert (await again.json())["status"] == "duplicate"

    assert await db.fetchval("SELECT array_agg(event_id) FROM webhook_events") == ["evt-genuine"]
    assert await db.fetchval("SELECT event_id FROM webhook_replay_keys") == "evt-genuine"
    metrics = replica_b.app[METRICS]
    replays = metrics.signature_failures.labels("default/mailgun", "replayed")._value.get()
    assert replays == 1


async def test_two_replicas_racing_one_token_store_exactly_one_event(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    replicas = [await make_client(_mailgun_source()) for _ in range(2)]
    for attempt in range(5):
        fields = mailgun.signature_fields(MAILGUN_KEY.encode(), time.time())
        answers = await asyncio.gather(
            *(
                replica.post(
                    "/hooks/default/mailgun", data=_mailgun_body(f"e{attempt}-{i}", fields)
                )
                for i, replica in enumerate(replicas)
            )
        )
        assert sorted(a.status for a in answers) == [200, 401]
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 5


async def test_a_failed_store_leaves_the_token_unclaimed(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    # The key is claimed in the event's transaction: an event that cannot be stored (a NUL byte
    # PostgreSQL refuses in text) holds no key, so Mailgun's retry is not taken for a replay.
    client = await make_client(_mailgun_source())
    fields = mailgun.signature_fields(MAILGUN_KEY.encode(), time.time())
    bad = json.dumps({"signature": fields, "event-data": {"id": "ok", "event": "x\u0000y"}})
    refused = await client.post("/hooks/default/mailgun", data=bad.encode())
    assert refused.status == 400
    assert await db.fetchval("SELECT count(*) FROM webhook_replay_keys") == 0
    stored = await client.post("/hooks/default/mailgun", data=_mailgun_body("ok", fields))
    assert stored.status == 200


async def test_expired_replay_keys_are_pruned_by_maintenance(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    client = await make_client(_mailgun_source())
    fields = mailgun.signature_fields(MAILGUN_KEY.encode(), time.time())
    assert (
        await client.post("/hooks/default/mailgun", data=_mailgun_body("e", fields))
    ).status == 200
    store = client.app[STORE]
    await store.maintain(datetime.now(UTC))
    assert await db.fetchval("SELECT count(*) FROM webhook_replay_keys") == 1
    await store.maintain(datetime.now(UTC) + timedelta(seconds=301))
    assert await db.fetchval("SELECT count(*) FROM webhook_replay_keys") == 0


# -- SendGrid and Mandrill: one batch, one row, its count ---------------------------------------


async def test_a_sendgrid_batch_is_stored_once_with_its_event_count(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    source = SourceConfig(
        name="sendgrid",
        provider=Provider.SENDGRID,
        verification=VerificationConfig(public_key=public),
    )
    client = await make_client(source)
    events = [{"event": k, "sg_event_id": str(i)} for i, k in enumerate(["open", "click", "open"])]
    body = json.dumps(events).encode() + b"\r\n"
    for _ in range(2):  # SendGrid's retry signs the same batch anew: a duplicate
        headers = sendgrid.sign(body, pem, source.verification, time.time(), None)
        answer = await client.post("/hooks/default/sendgrid", data=body, headers=headers)
        assert answer.status == 200
    answers = await answer.json()
    assert (answers["status"], answers["eventCount"]) == ("duplicate", 3)
    row = await db.fetchrow("SELECT event_count, event_type, payload FROM webhook_events")
    assert (row["event_count"], row["event_type"], bytes(row["payload"])) == (3, "click,open", body)


async def test_mandrill_answers_its_head_check_and_stores_a_batch(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    url = "https://hooks.example.com/hooks/default/mandrill"
    source = SourceConfig(
        name="mandrill",
        provider=Provider.MANDRILL,
        verification=VerificationConfig(
            secrets=[SecretSource(value="mandrill-key")], public_url=url
        ),
    )
    client = await make_client(source)
    head = await client.head("/hooks/default/mandrill")
    assert head.status == 200
    body, event_id = mandrill.sample(time.time(), None)
    headers = mandrill.sign(body, b"mandrill-key", source.verification, time.time(), None)
    answer = await client.post("/hooks/default/mandrill", data=body, headers=headers)
    assert answer.status == 200
    assert (await answer.json())["eventId"] == event_id
    assert await db.fetchval("SELECT event_count FROM webhook_events") == 1
    # Other providers do not answer HEAD.
    github = SourceConfig(name="gh", provider=Provider.GITHUB, verification=_secret("s"))
    other = await make_client(github)
    assert (await other.head("/hooks/default/gh")).status == 405
