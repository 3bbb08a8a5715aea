"""Vonage signed webhooks (Messages, Voice): ``Authorization: Bearer <JWT>``, HS256 with the
account's signature secret, whose ``payload_hash`` claim is the hex SHA-256 of the body.

The JWT is checked here rather than by a JWT library so that its algorithm stays pinned to HS256
(any other ``alg`` is refused), every valid secret is compared in constant time, and the clock is
the one given. ``iat`` is signed, so it is held to the tolerance; ``exp``, when present, must not
have passed. A token without ``payload_hash`` does not cover the body and is refused.

Because the scheme reads ``Authorization``, a vonage source cannot also use ``spec.auth``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from webhook_server.config import VerificationConfig
from webhook_server.verify.base import (
    Reason,
    Rejected,
    Result,
    Verified,
    compact_json,
    constant_time_any,
    header_bytes,
    hmac_digest,
    iso_time,
    json_object,
    string_field,
    within_tolerance,
)

AUTHORIZATION = "Authorization"
ALGORITHM = "HS256"
ISSUER = "Vonage"
# A JWT larger than this is no Vonage token (they are a few hundred bytes).
MAX_TOKEN_CHARS = 8192


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get(AUTHORIZATION, "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    if not secrets:
        return Rejected(Reason.NO_SECRET, "no signature secret configured")
    token = _bearer(headers)
    if token is None:
        return Rejected(Reason.MISSING_TOKEN, "missing Authorization: Bearer token")
    parts = token.split(".")
    if len(token) > MAX_TOKEN_CHARS or len(parts) != 3 or not token.isascii():
        return Rejected(Reason.MALFORMED, "malformed token")
    try:
        header = json_object(_b64url(parts[0]))
        claims = json_object(_b64url(parts[1]))
        given = _b64url(parts[2])
    except (binascii.Error, ValueError):
        return Rejected(Reason.MALFORMED, "malformed token")
    if header is None or claims is None:
        return Rejected(Reason.MALFORMED, "malformed token")
    if header.get("alg") != ALGORITHM:
        return Rejected(Reason.BAD_TOKEN, f"token algorithm must be {ALGORITHM}")
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    expected = [hmac_digest(secret, signing_input) for secret in secrets]
    if not constant_time_any(expected, [given]):
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    payload_hash = claims.get("payload_hash")
    if not isinstance(payload_hash, str):
        return Rejected(Reason.BAD_SIGNATURE, "the token does not cover the body (no payload_hash)")
    actual = hashlib.sha256(body).hexdigest().encode()
    if not constant_time_any([actual], [header_bytes(payload_hash.lower())]):
        return Rejected(Reason.BAD_SIGNATURE, "the body does not match payload_hash")
    issued = _number(claims.get("iat"))
    if issued is None:
        return Rejected(Reason.MALFORMED, "the token has no iat")
    if not within_tolerance(issued, now, settings.tolerance_seconds):
        return Rejected(Reason.STALE_TIMESTAMP, "token issued outside tolerance")
    expires = _number(claims.get("exp"))
    if expires is not None and expires < now:
        return Rejected(Reason.STALE_TIMESTAMP, "token expired")
    return _describe(json_object(body))


def _describe(event: dict[str, Any] | None) -> Verified:
    """Messages events name a ``message_uuid``, Voice events a call ``uuid``; each status change of
    one message or call is an event of its own."""
    status = string_field(event, "status")
    message = string_field(event, "message_uuid")
    if message is not None:
        status = status or "inbound"
        return Verified(event_id=f"{message}:{status}", event_type=f"message.{status}")
    call = string_field(event, "uuid")
    if call is not None and status is not None:
        return Verified(event_id=f"{call}:{status}", event_type=f"call.{status}")
    return Verified()


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    header = _b64url_encode(compact_json({"alg": ALGORITHM, "typ": "JWT"}))
    claims = {
        "iat": int(now),
        "jti": str(uuid.uuid4()),
        "iss": ISSUER,
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": "abcd1234",
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    }
    payload = _b64url_encode(compact_json(claims))
    signature = _b64url_encode(hmac_digest(secret, f"{header}.{payload}".encode()))
    return {
        "Content-Type": "application/json",
        AUTHORIZATION: f"Bearer {header}.{payload}.{signature}",
    }


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    """A Messages API status webhook: an SMS ``delivered``."""
    message = event_id or str(uuid.uuid4())
    body = {
        "message_uuid": message,
        "to": "447700900000",
        "from": "447700900001",
        "timestamp": iso_time(now),
        "status": "delivered",
        "channel": "sms",
    }
    return compact_json(body), f"{message}:delivered"
