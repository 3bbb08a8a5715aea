"""Telnyx (API v2 webhooks): ``telnyx-signature-ed25519`` = base64 Ed25519 signature over
``"{telnyx-timestamp}|{body}"``, checked with the account's public key
(``verification.publicKey``: the base64 key the Mission Control portal shows, or PEM).

The timestamp is signed, so it is held to the tolerance. Several keys (whitespace-separated or PEM
blocks) may be given, for a key change at Telnyx; any may verify. ``secrets`` is unused.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from webhook_server.config import VerificationConfig
from webhook_server.keys import ed25519_public_keys
from webhook_server.verify.base import (
    Reason,
    Rejected,
    Result,
    Verified,
    compact_json,
    header_bytes,
    is_timestamp,
    iso_time,
    json_object,
    string_field,
    within_tolerance,
)

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
SIGNATURE_BYTES = 64


def public_key_problem(text: str) -> str | None:
    try:
        ed25519_public_keys(text)
    except ValueError as exc:
        return str(exc)
    return None


def _signed(timestamp: str, body: bytes) -> bytes:
    return header_bytes(timestamp) + b"|" + body


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    try:
        keys = ed25519_public_keys(settings.public_key or "")
    except ValueError:
        return Rejected(Reason.NO_SECRET, "no usable publicKey configured")
    value = headers.get(SIGNATURE_HEADER, "").strip()
    timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
    if not (value and timestamp):
        return Rejected(Reason.MISSING_HEADER, f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
    if not is_timestamp(timestamp):
        return Rejected(Reason.MALFORMED, f"malformed {TIMESTAMP_HEADER} header")
    try:
        signature = base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or a character that is not ASCII
        signature = b""
    if len(signature) != SIGNATURE_BYTES:
        return Rejected(Reason.MALFORMED, f"malformed {SIGNATURE_HEADER} header")
    message = _signed(timestamp, body)
    verified = False
    for key in keys:  # public keys: which one verified reveals nothing secret
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        verified = True
    if not verified:
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    if not within_tolerance(int(timestamp), now, settings.tolerance_seconds):
        return Rejected(Reason.STALE_TIMESTAMP, "timestamp outside tolerance")
    event = json_object(body)
    return Verified(
        event_id=string_field(event, "data", "id"),
        event_type=string_field(event, "data", "event_type"),
    )


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    """Sign with a PEM Ed25519 private key (the secret half of ``publicKey``)."""
    key = serialization.load_pem_private_key(secret, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("Telnyx signing needs an Ed25519 private key")
    timestamp = str(int(now))
    signature = key.sign(_signed(timestamp, body))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
    }


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    """A ``message.finalized`` event (an outbound SMS delivered), as Telnyx posts it."""
    event_id = event_id or str(uuid.uuid4())
    body = {
        "data": {
            "event_type": "message.finalized",
            "id": event_id,
            "occurred_at": iso_time(now),
            "payload": {
                "id": str(uuid.uuid4()),
                "direction": "outbound",
                "type": "SMS",
                "from": {"phone_number": "+15005550006"},
                "to": [{"phone_number": "+15005550001", "status": "delivered"}],
                "text": "Hello from df-middleware",
            },
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": "https://hooks.example.com/hooks/default/telnyx"},
    }
    return compact_json(body), event_id
