"""Mailgun against its SDK's verifier (mailgun.security.SecurityGuard.verify_webhook) for what we
sign, and signatures computed as Mailgun's "Securing webhooks" guide describes (hex HMAC-SHA256 of
timestamp + token with the webhook signing key) for the other direction: the SDK cannot sign."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest
from mailgun.security import SecurityGuard
from multidict import CIMultiDict

from webhook_server.config import VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified, mailgun

KEY = "demo-mailgun-webhook-signing-key"
NOW = 1_800_000_000
EVENT = {"event-data": {"event": "opened", "id": "DACSsAdVSeGpLid7TN03WA", "timestamp": NOW}}


def _signature(timestamp: str, token: str, key: str = KEY) -> str:
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


MAILGUN_TOKEN = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"


def _json_body(timestamp: str = str(NOW), token: str = MAILGUN_TOKEN, **event: object) -> bytes:
    body = {
        "signature": {
            "timestamp": timestamp,
            "token": token,
            "signature": _signature(timestamp, token),
        }
    }
    return json.dumps(body | (event or EVENT)).encode()


def _verify(
    body: bytes, now: float = NOW, secrets: list[bytes] | None = None
) -> Verified | Rejected:
    return mailgun.verify(CIMultiDict(), body, secrets or [KEY.encode()], VerificationConfig(), now)


def test_a_json_webhook_verifies_names_its_event_and_hands_over_its_token() -> None:
    result = _verify(_json_body())
    assert isinstance(result, Verified)
    assert (result.event_id, result.event_type) == ("DACSsAdVSeGpLid7TN03WA", "opened")
    assert result.replay_key == MAILGUN_TOKEN
    assert result.replay_until == NOW + 300


def test_what_we_sign_the_mailgun_sdk_verifies_json_and_form() -> None:
    signed = mailgun.sign_body(json.dumps(EVENT).encode(), KEY.encode(), VerificationConfig(), NOW)
    fields = json.loads(signed)["signature"]
    assert SecurityGuard.verify_webhook(
        KEY, fields["token"], fields["timestamp"], fields["signature"], max_age_seconds=0
    )
    assert json.loads(signed)["event-data"] == EVENT["event-data"]
    assert isinstance(_verify(signed), Verified)

    form = urlencode({"event": "delivered", "Message-Id": "<m1@example.com>"}).encode()
    signed_form = mailgun.sign_body(form, KEY.encode(), VerificationConfig(), NOW)
    values = dict(pair.split("=", 1) for pair in signed_form.decode().split("&"))
    assert SecurityGuard.verify_webhook(
        KEY, values["token"], values["timestamp"], values["signature"], max_age_seconds=0
    )
    result = _verify(signed_form)
    assert isinstance(result, Verified)
    assert (result.event_id, result.event_type) == ("<m1@example.com>:delivered", "delivered")


def test_a_signature_moved_onto_another_body_verifies_here_so_the_store_must_refuse_the_token() -> (
    None
):
    # Only timestamp + token are signed: the replay key is what stops this (see the store tests).
    original = _verify(_json_body())
    forged = _verify(_json_body(**{"event-data": {"event": "complained", "id": "forged"}}))
    assert isinstance(original, Verified)
    assert isinstance(forged, Verified)
    assert original.replay_key == forged.replay_key
    assert original.event_id != forged.event_id


def test_stale_tampered_and_wrong_key_deliveries_are_refused() -> None:
    assert _reason(_verify(_json_body(), now=NOW + 301)) is Reason.STALE_TIMESTAMP
    body = json.loads(_json_body())
    body["signature"]["token"] = "another-token"
    assert _reason(_verify(json.dumps(body).encode())) is Reason.BAD_SIGNATURE
    assert _reason(_verify(_json_body(), secrets=[b"another-key"])) is Reason.BAD_SIGNATURE
    assert isinstance(_verify(_json_body(), secrets=[b"new-key", KEY.encode()]), Verified)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"event-data": {}}', Reason.MISSING_HEADER),
        (b"event=delivered", Reason.MISSING_HEADER),
        (b"\xff\xfe", Reason.MISSING_HEADER),
        (
            json.dumps(
                {"signature": {"timestamp": "soon", "token": "t", "signature": "00"}}
            ).encode(),
            Reason.MALFORMED,
        ),
        (
            json.dumps({"signature": {"timestamp": "1", "token": "t", "signature": "zz"}}).encode(),
            Reason.MALFORMED,
        ),
        (
            json.dumps(
                {"signature": {"timestamp": "1", "token": "t" * 300, "signature": "00"}}
            ).encode(),
            Reason.MALFORMED,
        ),
    ],
)
def test_missing_and_malformed_signatures(body: bytes, reason: Reason) -> None:
    assert _reason(_verify(body)) is reason


def _reason(result: object) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason
