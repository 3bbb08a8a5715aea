"""Mailgun: HMAC-SHA256(webhook signing key, timestamp + token), hex, carried inside the body.

JSON webhooks put ``{"timestamp", "token", "signature"}`` under ``signature`` and the event under
``event-data``; form posts (legacy webhooks, routes) carry ``timestamp``, ``token`` and
``signature`` as fields beside the others.

Only the timestamp and the token are signed, not the rest of the body: whoever captures one
delivery could attach another body to its signature. So the timestamp is held to the tolerance,
and the token is a one-time value: the verifier hands it to the store (``replay_key``), which
refuses it when it comes again with another event before the tolerance has passed, across every
replica (PostgreSQL table ``webhook_replay_keys``). The same event again with the same token is a
redelivery (a duplicate), not a replay.
"""

from __future__ import annotations

import json
import secrets as random
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

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
from webhook_server.verify.forms import FORM_CONTENT_TYPE, first_values, form_params

SIGNATURE_FIELDS = ("timestamp", "token", "signature")
# Mailgun's tokens are 50 characters; the store keeps them, so anything far longer is refused.
MAX_TOKEN_CHARS = 256


def _fields(body: bytes) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
    """(JSON event, None) or (None, form fields); (None, None) when the body is neither."""
    event = json_object(body)
    if event is not None:
        return event, None
    params = form_params(body)
    return None, (first_values(params) if params else None)


def _signature_parts(
    event: dict[str, Any] | None, form: dict[str, str] | None
) -> tuple[str, str, str] | None:
    source: Mapping[str, Any] | None = form
    if event is not None:
        signature = event.get("signature")
        source = signature if isinstance(signature, dict) else None
    if source is None:
        return None
    timestamp, token, signature = (string_field(source, name) for name in SIGNATURE_FIELDS)
    if not (timestamp and token and signature):
        return None
    return timestamp, token, signature


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    if not secrets:
        return Rejected(Reason.NO_SECRET, "no signing key configured")
    event, form = _fields(body)
    parts = _signature_parts(event, form)
    if parts is None:
        return Rejected(Reason.MISSING_HEADER, "missing timestamp, token or signature in the body")
    timestamp, token, signature = parts
    if not is_timestamp(timestamp):
        return Rejected(Reason.MALFORMED, "malformed timestamp")
    if len(token) > MAX_TOKEN_CHARS:
        return Rejected(Reason.MALFORMED, "malformed token")
    try:
        given = bytes.fromhex(signature)
    except ValueError:
        return Rejected(Reason.MALFORMED, "malformed signature")
    content = header_bytes(timestamp + token)
    expected = [hmac_digest(secret, content) for secret in secrets]
    if not constant_time_any(expected, [given]):
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    seconds = int(timestamp)
    if not within_tolerance(seconds, now, settings.tolerance_seconds):
        return Rejected(Reason.STALE_TIMESTAMP, "timestamp outside tolerance")
    described = _describe(event, form)
    return Verified(
        event_id=described.event_id,
        event_type=described.event_type,
        replay_key=token,
        # A token can be replayed for as long as its timestamp passes the tolerance.
        replay_until=float(seconds + settings.tolerance_seconds),
    )


def _describe(event: dict[str, Any] | None, form: dict[str, str] | None) -> Verified:
    if event is not None:
        return Verified(
            event_id=string_field(event, "event-data", "id"),
            event_type=string_field(event, "event-data", "event"),
        )
    assert form is not None
    message_id = form.get("Message-Id") or form.get("message-id") or None
    kind = form.get("event") or None
    if message_id is None:
        return Verified(event_type=kind)
    return Verified(event_id=f"{message_id}:{kind}" if kind else message_id, event_type=kind)


def signature_fields(secret: bytes, now: float) -> dict[str, str]:
    """A fresh timestamp, token and signature, as Mailgun makes them."""
    timestamp, token = str(int(now)), random.token_hex(25)
    mac = hmac_digest(secret, (timestamp + token).encode())
    return {"timestamp": timestamp, "token": token, "signature": mac.hex()}


def sign_body(body: bytes, secret: bytes, settings: VerificationConfig, now: float) -> bytes:
    """``body`` with a fresh signature inside, where Mailgun puts it (JSON or form)."""
    fields = signature_fields(secret, now)
    event = json_object(body)
    if event is not None:
        return compact_json(
            {"signature": fields} | {k: v for k, v in event.items() if k != "signature"}
        )
    params = form_params(body)
    if params is None:
        raise ValueError("a Mailgun body is a JSON object or a form")
    kept = [(k, v) for k, v in params if k not in SIGNATURE_FIELDS]
    return urlencode([*kept, *fields.items()]).encode()


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    """Mailgun's signature is in the body (see :func:`sign_body`); only the content type here."""
    is_json = json_object(body) is not None
    return {"Content-Type": "application/json" if is_json else FORM_CONTENT_TYPE}


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    """A ``delivered`` event (JSON webhook), unsigned: :func:`sign_body` adds the signature."""
    event_id = event_id or uuid.uuid4().hex[:22]
    body = {
        "event-data": {
            "event": "delivered",
            "id": event_id,
            "timestamp": now,
            "recipient": "reader@example.com",
            "message": {"headers": {"message-id": f"{event_id}@example.com"}},
        }
    }
    return json.dumps(body, separators=(",", ":")).encode(), event_id
