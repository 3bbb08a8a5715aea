"""Shopify: ``X-Shopify-Hmac-Sha256`` = base64 HMAC-SHA256(secret, body).

Only the body is signed: no timestamp, and not ``X-Shopify-Webhook-Id``. The store drops
Shopify's redeliveries by that id, but a replayed body with a new id verifies and is stored as a
new event, as with GitHub (see docs/receiver.md). The scheme is the generic HMAC one with
Shopify's header names, so it is that, preset.
"""

from __future__ import annotations

import uuid

from webhook_server.config import SignatureEncoding, VerificationConfig
from webhook_server.verify import generic_hmac
from webhook_server.verify.base import compact_json

SIGNATURE_HEADER = "X-Shopify-Hmac-Sha256"
WEBHOOK_ID_HEADER = "X-Shopify-Webhook-Id"
TOPIC_HEADER = "X-Shopify-Topic"

SCHEME = VerificationConfig(
    header=SIGNATURE_HEADER,
    encoding=SignatureEncoding.BASE64,
    id_header=WEBHOOK_ID_HEADER,
    type_header=TOPIC_HEADER,
)

verify = generic_hmac.preset_verifier(SCHEME)
sign = generic_hmac.preset_signer(SCHEME)


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    body = {"id": int(now * 1000), "email": "buyer@example.com", "total_price": "10.00"}
    return compact_json(body), event_id or str(uuid.uuid4())
