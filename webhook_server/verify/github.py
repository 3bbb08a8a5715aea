"""GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``.

GitHub signs no timestamp, so replays are caught only by deduplicating on ``X-GitHub-Delivery``.
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
    constant_time_any,
    hmac_digest,
    json_object,
)

SIGNATURE_HEADER = "X-Hub-Signature-256"
DELIVERY_HEADER = "X-GitHub-Delivery"
EVENT_HEADER = "X-GitHub-Event"
PREFIX = "sha256="

# A key that only one kind of payload carries, so ``dfm send`` can label a sample sensibly.
_EVENT_BY_KEY = (("zen", "ping"), ("pull_request", "pull_request"), ("commits", "push"))


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
    if not value.startswith(PREFIX):
        return Rejected(Reason.MALFORMED, f"malformed {SIGNATURE_HEADER} header")
    try:
        given = bytes.fromhex(value.removeprefix(PREFIX))
    except ValueError:
        return Rejected(Reason.MALFORMED, f"malformed {SIGNATURE_HEADER} header")
    expected = [hmac_digest(secret, body) for secret in secrets]
    if not constant_time_any(expected, [given]):
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    return Verified(
        event_id=headers.get(DELIVERY_HEADER) or None,
        event_type=headers.get(EVENT_HEADER) or None,
    )


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    payload = json_object(body) or {}
    event = next((name for key, name in _EVENT_BY_KEY if key in payload), "ping")
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: PREFIX + hmac_digest(secret, body).hex(),
        DELIVERY_HEADER: event_id or str(uuid.uuid4()),
        EVENT_HEADER: event,
    }
