from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from multidict import CIMultiDict

from webhook_server.config import VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified, shopify

SETTINGS = VerificationConfig()
NOW = 1_700_000_000.0
SECRET = b"shop-secret"
BODY = b'{"id":"evt_test","object":"event"}'
# Self-computed (no official vector exists); recomputed independently below.
VECTOR = "7vLV9ybidPlS5WRYkP64JzYXqZHbta+ucE+StEETyxQ="


def _reason(result: Verified | Rejected) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason


def test_vector_matches_an_independent_computation() -> None:
    digest = hmac.new(SECRET, BODY, hashlib.sha256).digest()
    assert base64.b64encode(digest).decode() == VECTOR


def test_vector_verifies() -> None:
    headers = CIMultiDict(
        {
            "X-Shopify-Hmac-Sha256": VECTOR,
            "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            "X-Shopify-Topic": "orders/create",
        }
    )
    result = shopify.verify(headers, BODY, [SECRET], SETTINGS, NOW)
    assert result == Verified(
        event_id="b54557e4-bdd9-4b37-8a5f-bf7d70bcd043", event_type="orders/create"
    )


def test_sign_then_verify_round_trip() -> None:
    headers = shopify.sign(BODY, SECRET, SETTINGS, NOW, "wh-1")
    assert headers["X-Shopify-Hmac-Sha256"] == VECTOR
    result = shopify.verify(CIMultiDict(headers), BODY, [SECRET], SETTINGS, NOW)
    assert result == Verified(event_id="wh-1", event_type=None)


def test_tampered_body_is_rejected() -> None:
    headers = CIMultiDict({"X-Shopify-Hmac-SHA256": VECTOR})
    result = shopify.verify(headers, BODY.replace(b"evt", b"EVT"), [SECRET], SETTINGS, NOW)
    assert _reason(result) is Reason.BAD_SIGNATURE


def test_wrong_secret_is_rejected() -> None:
    headers = CIMultiDict({"X-Shopify-Hmac-SHA256": VECTOR})
    assert _reason(shopify.verify(headers, BODY, [b"nope"], SETTINGS, NOW)) is Reason.BAD_SIGNATURE


def test_rotation_accepts_the_second_secret() -> None:
    headers = CIMultiDict({"X-Shopify-Hmac-SHA256": VECTOR})
    assert isinstance(shopify.verify(headers, BODY, [b"new", SECRET], SETTINGS, NOW), Verified)


def test_missing_header() -> None:
    result = shopify.verify(CIMultiDict(), BODY, [SECRET], SETTINGS, NOW)
    assert _reason(result) is Reason.MISSING_HEADER


@pytest.mark.parametrize("value", ["not base64!", "7vLV9ybidPlS5WRYkP64JzYXqZHbta+ucE+StEETyxQ"])
def test_malformed_header(value: str) -> None:
    headers = CIMultiDict({"X-Shopify-Hmac-SHA256": value})
    assert _reason(shopify.verify(headers, BODY, [SECRET], SETTINGS, NOW)) is Reason.MALFORMED


def test_hex_signature_is_not_accepted() -> None:
    hex_digest = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    headers = CIMultiDict({"X-Shopify-Hmac-SHA256": hex_digest})
    assert isinstance(shopify.verify(headers, BODY, [SECRET], SETTINGS, NOW), Rejected)


def test_no_secret() -> None:
    headers = CIMultiDict({"X-Shopify-Hmac-SHA256": VECTOR})
    assert _reason(shopify.verify(headers, BODY, [], SETTINGS, NOW)) is Reason.NO_SECRET
