"""Mailchimp Transactional (Mandrill). Its SDK (mailchimp-transactional) has no signature helper
and Mandrill publishes no test vector, so the reference is its published algorithm ("How to
Authenticate Webhook Requests", mailchimp.com/developer/transactional/guides/track-respond-
activity-webhooks and the Mandrill KB article of the same name): the URL exactly as entered, then
each POST key and value sorted by key, HMAC-SHA1 with the webhook key, base64. The reference
below is written from those steps, apart from the code under test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from multidict import CIMultiDict

from webhook_server.config import VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified, mandrill

KEY = "demo-mandrill-webhook-key"
URL = "https://hooks.example.com/hooks/default/mandrill"
EVENTS = [
    {"event": "send", "_id": "a1", "ts": 1800000000, "msg": {"email": "é@example.com"}},
    {"event": "open", "_id": "a2", "ts": 1800000001},
    {"event": "open", "_id": "a3", "ts": 1800000002},
]
BODY = urlencode({"mandrill_events": json.dumps(EVENTS)}).encode()


def reference_signature(url: str, body: bytes, key: str = KEY) -> str:
    """The documented steps, in the order Mandrill lists them."""
    signed = url
    for name, value in sorted(parse_qsl(body.decode(), keep_blank_values=True)):
        signed += name + value
    return base64.b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def _verify(
    headers: dict[str, str], body: bytes = BODY, query: str = "", url: str = URL
) -> Verified | Rejected:
    settings = VerificationConfig(public_url=url)
    return mandrill.verify(CIMultiDict(headers), body, [KEY.encode()], settings, 0.0, query)


def test_a_signature_made_by_the_documented_steps_verifies_as_a_batch() -> None:
    result = _verify({"X-Mandrill-Signature": reference_signature(URL, BODY)})
    assert isinstance(result, Verified)
    assert (result.event_count, result.event_type) == (3, "open,send")
    assert result.event_id is not None
    assert result.event_id.startswith("sha256:")


def test_a_replay_that_re_encodes_the_form_is_the_same_event() -> None:
    # The signature covers the decoded parameters, not the bytes: %20 for +, say, still verifies.
    # So the id is a hash of the parameters, and such a replay is a duplicate, not a new event.
    signature = {"X-Mandrill-Signature": reference_signature(URL, BODY)}
    reencoded = urlencode({"mandrill_events": json.dumps(EVENTS)}, quote_via=quote).encode()
    assert reencoded != BODY
    first, replay = _verify(signature), _verify(signature, reencoded)
    assert isinstance(first, Verified)
    assert isinstance(replay, Verified)
    assert first.event_id == replay.event_id


def test_what_we_sign_matches_the_documented_steps() -> None:
    headers = mandrill.sign(BODY, KEY.encode(), VerificationConfig(public_url=URL), 0.0, None)
    assert headers["X-Mandrill-Signature"] == reference_signature(URL, BODY)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_the_url_as_entered_with_its_query_string_is_what_is_signed() -> None:
    signature = reference_signature(f"{URL}?tenant=a", BODY)
    assert isinstance(_verify({"X-Mandrill-Signature": signature}, query="tenant=a"), Verified)
    assert _reason(_verify({"X-Mandrill-Signature": signature})) is Reason.BAD_SIGNATURE
    # Mandrill: "a difference as small as a trailing slash" breaks it; no variant is tried.
    slash = reference_signature(URL + "/", BODY)
    assert _reason(_verify({"X-Mandrill-Signature": slash})) is Reason.BAD_SIGNATURE


def test_a_tampered_batch_is_refused() -> None:
    signature = reference_signature(URL, BODY)
    tampered = BODY.replace(b"open", b"spam")
    assert _reason(_verify({"X-Mandrill-Signature": signature}, tampered)) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({}, BODY, Reason.MISSING_HEADER),
        ({"X-Mandrill-Signature": "not base64!"}, BODY, Reason.MALFORMED),
        ({"X-Mandrill-Signature": "AAAA"}, b"mandrill_events=%FF", Reason.MALFORMED),
    ],
)
def test_missing_and_malformed(headers: dict[str, str], body: bytes, reason: Reason) -> None:
    assert _reason(_verify(headers, body)) is reason


def _reason(result: object) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason
