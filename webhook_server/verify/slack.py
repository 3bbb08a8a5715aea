"""Slack: ``X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:{ts}:{body}")>``.

Slack bodies are JSON (Events API, including the ``url_verification`` handshake) or form-encoded
(slash commands; interactivity, whose JSON sits in the ``payload`` field). Only Events API
deliveries carry an event id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs

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
    is_timestamp,
    json_object,
    string_field,
    within_tolerance,
)

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
VERSION = "v0"
URL_VERIFICATION = "url_verification"


def _base_string(timestamp: str, body: bytes) -> bytes:
    return header_bytes(f"{VERSION}:{timestamp}:") + body


def _form_type(body: bytes) -> str | None:
    """The slash command, or the interactivity payload's ``type``."""
    try:
        form = parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        return None
    if command := form.get("command"):
        return command[0] or None
    if payload := form.get("payload"):
        return string_field(json_object(payload[0]), "type")
    return None


def _describe(body: bytes) -> Result:
    event = json_object(body)
    if event is None:
        return Verified(event_type=_form_type(body))
    event_type = string_field(event, "type")
    if event_type == URL_VERIFICATION:
        challenge = string_field(event, "challenge")
        if challenge is None:
            return Rejected(Reason.MALFORMED, "url_verification without challenge")
        return Verified(event_type=event_type, challenge=challenge)
    return Verified(
        event_id=string_field(event, "event_id"),
        event_type=string_field(event, "event", "type") or event_type,
    )


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
    timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
    if not (value and timestamp):
        return Rejected(Reason.MISSING_HEADER, f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
    if not is_timestamp(timestamp):
        return Rejected(Reason.MALFORMED, f"malformed {TIMESTAMP_HEADER} header")
    version, _, encoded = value.partition("=")
    try:
        given = bytes.fromhex(encoded)
    except ValueError:
        given = b""
    if version != VERSION or not given:
        return Rejected(Reason.MALFORMED, f"malformed {SIGNATURE_HEADER} header")
    base = _base_string(timestamp, body)
    expected = [hmac_digest(secret, base) for secret in secrets]
    if not constant_time_any(expected, [given]):
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    if not within_tolerance(int(timestamp), now, settings.tolerance_seconds):
        return Rejected(Reason.STALE_TIMESTAMP, "timestamp outside tolerance")
    return _describe(body)


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    timestamp = str(int(now))
    is_json = json_object(body) is not None
    return {
        "Content-Type": "application/json" if is_json else "application/x-www-form-urlencoded",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: f"{VERSION}={hmac_digest(secret, _base_string(timestamp, body)).hex()}",
    }


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    event_id = event_id or f"Ev{uuid.uuid4().hex[:10].upper()}"
    body = {
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(now),
        "event": {"type": "app_mention", "text": "hello", "channel": "C0000000000"},
    }
    return compact_json(body), event_id
