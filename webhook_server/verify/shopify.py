"""Shopify: ``X-Shopify-Hmac-Sha256`` = base64 HMAC-SHA256(secret, body).

No timestamp is signed; duplicates are caught by the store on ``X-Shopify-Webhook-Id``.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping, Sequence

from webhook_server.config import VerificationConfig
from webhook_server.verify.base import (
    Reason,
    Rejected,
    Result,
    Verified,
    constant_time_any,
    hmac_digest,
)

SIGNATURE_HEADER = "X-Shopify-Hmac-Sha256"
WEBHOOK_ID_HEADER = "X-Shopify-Webhook-Id"
TOPIC_HEADER = "X-Shopify-Topic"


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
) -> Result:
    if not secrets:
        return Rejected(Reason.NO_SECRET, "no secret configured")
    value = headers.get(SIGNATURE_HEADER, "").strip()
    if not value:
        return Rejected(Reason.MISSING_HEADER, f"missing {SIGNATURE_HEADER} header")
    try:
        given = base64.b64decode(value, validate=True)
    except binascii.Error:
        return Rejected(Reason.MALFORMED, f"malformed {SIGNATURE_HEADER} header")
    expected = [hmac_digest(secret, body) for secret in secrets]
    if not constant_time_any(expected, [given]):
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    return Verified(
        event_id=headers.get(WEBHOOK_ID_HEADER) or None,
        event_type=headers.get(TOPIC_HEADER) or None,
    )


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: base64.b64encode(hmac_digest(secret, body)).decode(),
        WEBHOOK_ID_HEADER: event_id or str(uuid.uuid4()),
    }
