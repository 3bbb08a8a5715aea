from __future__ import annotations

from multidict import CIMultiDict

from webhook_server.config import VerificationConfig
from webhook_server.verify import Verified, bearer

SETTINGS = VerificationConfig()
NOW = 1_700_000_000.0
BODY = b'{"id":"evt_1","type":"order.paid"}'


def test_idempotency_key_wins_over_body_id() -> None:
    headers = CIMultiDict({"idempotency-key": "key-1"})
    result = bearer.verify(headers, BODY, [], SETTINGS, NOW)
    assert result == Verified(event_id="key-1", event_type="order.paid")


def test_body_id_when_no_idempotency_key() -> None:
    assert bearer.verify(CIMultiDict(), BODY, [], SETTINGS, NOW) == Verified(
        event_id="evt_1", event_type="order.paid"
    )


def test_non_json_body_has_no_id() -> None:
    assert bearer.verify(CIMultiDict(), b"plain text", [], SETTINGS, NOW) == Verified()


def test_sign_round_trip() -> None:
    headers = bearer.sign(BODY, b"", SETTINGS, NOW, "evt_9")
    assert headers == {"Content-Type": "application/json", "Idempotency-Key": "evt_9"}
    result = bearer.verify(CIMultiDict(headers), BODY, [], SETTINGS, NOW)
    assert result == Verified(event_id="evt_9", event_type="order.paid")


def test_sign_invents_a_key() -> None:
    first = bearer.sign(BODY, b"", SETTINGS, NOW, None)["Idempotency-Key"]
    assert first
    assert first != bearer.sign(BODY, b"", SETTINGS, NOW, None)["Idempotency-Key"]
