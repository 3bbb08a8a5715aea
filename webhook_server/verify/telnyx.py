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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from webhook_server.config import VerificationConfig
from webhook_server.keys import ed25519_public_keys
from webhook_server.verify import timestamped
from webhook_server.verify.base import (
    Result,
    Verified,
    compact_json,
    iso_time,
    json_object,
    string_field,
)

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
SIGNATURE_BYTES = 64


def _verifies(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


SCHEME = timestamped.TimestampedScheme(
    signature_header=SIGNATURE_HEADER,
    timestamp_header=TIMESTAMP_HEADER,
    load_keys=ed25519_public_keys,
    verifies=_verifies,
    separator=b"|",
    signature_bytes=SIGNATURE_BYTES,
)
public_key_problem = SCHEME.public_key_problem


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    rejected = timestamped.check(SCHEME, headers, body, settings, now)
    if rejected is not None:
        return rejected
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
    signature = key.sign(SCHEME.signed(timestamp, body))
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
