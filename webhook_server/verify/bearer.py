"""Bearer-token sources (``provider: jwt``): the body carries no signature, because the request is
authenticated by its JWT before this runs. This only names the event.

Named ``bearer`` so it never shadows PyJWT's ``jwt`` package.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from webhook_server.config import VerificationConfig
from webhook_server.verify.base import Result, Verified, generic_sample, json_object, string_field

IDEMPOTENCY_HEADER = "Idempotency-Key"


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    event = json_object(body)
    return Verified(
        event_id=headers.get(IDEMPOTENCY_HEADER, "").strip() or string_field(event, "id"),
        event_type=string_field(event, "type"),
    )


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    return {"Content-Type": "application/json", IDEMPOTENCY_HEADER: event_id or str(uuid.uuid4())}


sample = generic_sample
