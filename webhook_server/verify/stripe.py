"""Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`` over ``"{t}.{body}"``.

The ``whsec_...`` endpoint secret is the HMAC key as is (not base64-decoded). During a secret
roll Stripe sends one ``v1`` per active secret, so any of them may match.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from webhook_server.config import VerificationConfig
from webhook_server.verify.base import (
    Reason,
    Rejected,
    Result,
    Verified,
    compact_json,
    constant_time_any,
    hmac_digest,
    is_timestamp,
    json_object,
    string_field,
    within_tolerance,
)

SIGNATURE_HEADER = "Stripe-Signature"
SCHEME = "v1"


def _parse(value: str) -> tuple[int, list[bytes]] | None:
    """The timestamp and the decodable ``v1`` signatures; ``v0`` and unknown schemes are ignored."""
    timestamp: int | None = None
    signatures: list[bytes] = []
    for item in value.split(","):
        key, _, raw = item.strip().partition("=")
        if key == "t" and timestamp is None:
            if not is_timestamp(raw):
                return None
            timestamp = int(raw)
        elif key == SCHEME:
            try:
                signatures.append(bytes.fromhex(raw))
            except ValueError:
                continue
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def _signed_payload(timestamp: int, body: bytes) -> bytes:
    return f"{timestamp}.".encode() + body


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    if not secrets:
        return Rejected(Reason.NO_SECRET, "no secret configured")
    value = headers.get(SIGNATURE_HEADER, "").strip()
    if not value:
        return Rejected(Reason.MISSING_HEADER, f"missing {SIGNATURE_HEADER} header")
    parsed = _parse(value)
    if parsed is None:
        return Rejected(Reason.MALFORMED, f"malformed {SIGNATURE_HEADER} header")
    timestamp, given = parsed
    payload = _signed_payload(timestamp, body)
    expected = [hmac_digest(secret, payload) for secret in secrets]
    if not constant_time_any(expected, given):
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    if not within_tolerance(timestamp, now, settings.tolerance_seconds):
        return Rejected(Reason.STALE_TIMESTAMP, "timestamp outside tolerance")
    event = json_object(body)
    return Verified(event_id=string_field(event, "id"), event_type=string_field(event, "type"))


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    timestamp = int(now)
    signature = hmac_digest(secret, _signed_payload(timestamp, body)).hex()
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: f"t={timestamp},{SCHEME}={signature}",
    }


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    unique = uuid.uuid4().hex
    event_id = event_id or f"evt_{unique[:24]}"
    body = {
        "id": event_id,
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(now),
        "livemode": False,
        "data": {"object": {"id": f"pi_{unique[:24]}", "object": "payment_intent"}},
    }
    return compact_json(body), event_id
