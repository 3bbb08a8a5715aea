"""SendGrid's Event Webhook against a delivery SendGrid signed (published in its SDK's tests) and
the SDK's own verifier (sendgrid.EventWebhook) for what we sign."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict
from pydantic import ValidationError
from sendgrid import EventWebhook

from webhook_server.config import Provider, SourceConfig, VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified, sendgrid

# sendgrid-python, test/unit/test_eventwebhook.py: a key, signature and timestamp SendGrid made.
SG_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw"
    "+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
SG_SIGNATURE = (
    "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLt"
    "EZtM="
)
SG_TIMESTAMP = "1600112502"
SG_PAYLOAD = (
    json.dumps(
        [
            {
                "email": "hello@world.com",
                "event": "dropped",
                "reason": "Bounced Address",
                "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
                "sg_message_id": (
                    "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"
                ),
                "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
                "timestamp": 1600112492,
            }
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    + "\r\n"
).encode()
HEADERS = {
    "X-Twilio-Email-Event-Webhook-Signature": SG_SIGNATURE,
    "X-Twilio-Email-Event-Webhook-Timestamp": SG_TIMESTAMP,
}

KEY = ec.generate_private_key(ec.SECP256R1())
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
PUBLIC = base64.b64encode(
    KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


def _verify(
    headers: dict[str, str], body: bytes, now: float, key: str = SG_KEY
) -> Verified | Rejected:
    return sendgrid.verify(CIMultiDict(headers), body, [], VerificationConfig(public_key=key), now)


def test_a_delivery_sendgrid_signed_verifies_as_a_batch_of_one() -> None:
    result = _verify(HEADERS, SG_PAYLOAD, 1_600_112_502)
    assert isinstance(result, Verified)
    assert result.event_count == 1
    assert result.event_type == "dropped"
    assert result.event_id is not None
    assert result.event_id.startswith("sha256:")


def test_the_published_delivery_tampered_or_late_is_refused() -> None:
    assert _reason(_verify(HEADERS, SG_PAYLOAD.rstrip(), 1_600_112_502)) is Reason.BAD_SIGNATURE
    late = dict(HEADERS, **{"X-Twilio-Email-Event-Webhook-Timestamp": "1600112503"})
    assert _reason(_verify(late, SG_PAYLOAD, 1_600_112_503)) is Reason.BAD_SIGNATURE
    assert _reason(_verify(HEADERS, SG_PAYLOAD, 1_600_112_502 + 301)) is Reason.STALE_TIMESTAMP
    assert _reason(_verify(HEADERS, SG_PAYLOAD, 1_600_112_502, key=PUBLIC)) is Reason.BAD_SIGNATURE


def test_what_we_sign_the_sendgrid_sdk_verifies() -> None:
    body, _ = sendgrid.sample(time.time(), None)
    headers = sendgrid.sign(body, PEM, VerificationConfig(), time.time(), None)
    webhook = EventWebhook(PUBLIC)
    signature = headers["X-Twilio-Email-Event-Webhook-Signature"]
    timestamp = headers["X-Twilio-Email-Event-Webhook-Timestamp"]
    assert webhook.verify_signature(body.decode(), signature, timestamp)
    assert not webhook.verify_signature(body.decode() + " ", signature, timestamp)


def test_a_batch_is_one_stable_id_with_its_count_and_kinds() -> None:
    events = [
        {"event": kind, "sg_event_id": str(i)}
        for i, kind in enumerate(["open", "delivered", "open"])
    ]
    body = json.dumps(events).encode()
    headers = sendgrid.sign(body, PEM, VerificationConfig(), 1_800_000_000, None)
    first = _verify(headers, body, 1_800_000_000, PUBLIC)
    again = _verify(
        sendgrid.sign(body, PEM, VerificationConfig(), 1_800_000_060, None),
        body,
        1_800_000_060,
        PUBLIC,
    )
    assert isinstance(first, Verified)
    assert first == again  # a redelivery of the batch, signed anew, is the same event
    assert (first.event_count, first.event_type) == (3, "delivered,open")


@pytest.mark.parametrize(
    ("body", "count", "kind"),
    [
        (b"[]", 0, "batch"),
        (b'{"event":"open"}', None, None),  # not a batch: stored, uncounted
        (json.dumps([{"event": "x y"}]).encode(), 1, "batch"),  # an odd kind is not spelled out
    ],
)
def test_odd_batches(body: bytes, count: int | None, kind: str | None) -> None:
    result = _verify(
        sendgrid.sign(body, PEM, VerificationConfig(), 1_800_000_000, None),
        body,
        1_800_000_000,
        PUBLIC,
    )
    assert isinstance(result, Verified)
    assert (result.event_count, result.event_type) == (count, kind)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, Reason.MISSING_HEADER),
        ({"X-Twilio-Email-Event-Webhook-Signature": "AAAA"}, Reason.MISSING_HEADER),
        (
            {
                "X-Twilio-Email-Event-Webhook-Signature": "é",
                "X-Twilio-Email-Event-Webhook-Timestamp": "1",
            },
            Reason.MALFORMED,
        ),
        (
            {
                "X-Twilio-Email-Event-Webhook-Signature": "AAAA",
                "X-Twilio-Email-Event-Webhook-Timestamp": "x",
            },
            Reason.MALFORMED,
        ),
        (
            {
                "X-Twilio-Email-Event-Webhook-Signature": "AAAA",
                "X-Twilio-Email-Event-Webhook-Timestamp": "1600112502",
            },
            Reason.BAD_SIGNATURE,
        ),
    ],
)
def test_missing_and_malformed_headers(headers: dict[str, str], reason: Reason) -> None:
    assert _reason(_verify(headers, SG_PAYLOAD, 1_600_112_502)) is reason


def test_a_key_that_is_not_p256_is_refused_by_the_config() -> None:
    rsa_like = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
    with pytest.raises(ValidationError, match="not an ECDSA P-256 public key"):
        SourceConfig(
            name="s",
            provider=Provider.SENDGRID,
            verification=VerificationConfig(public_key=rsa_like),
        )


def _reason(result: object) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason
