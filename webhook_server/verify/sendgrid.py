"""SendGrid Event Webhook (email broadcast events): ``X-Twilio-Email-Event-Webhook-Signature`` =
base64 DER ECDSA P-256/SHA-256 signature over ``{X-Twilio-Email-Event-Webhook-Timestamp}{body}``,
checked with the verification key SendGrid shows once signing is on (``verification.publicKey``:
that base64 key, or PEM).

One POST carries a batch: a JSON array of events (delivered, open, click, bounce, ...). The batch
is stored once, as it came, with a stable id (``sha256:`` and the body's hash: a redelivery of
the same batch is a duplicate) and ``event_count`` set to its number of events; the event type
lists the kinds it holds, sorted and comma-separated (``delivered,open``). Each event's own
``sg_event_id`` stays in the payload for consumers.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhook_server.config import VerificationConfig
from webhook_server.keys import p256_public_keys
from webhook_server.verify.base import (
    JSON_ERRORS,
    Reason,
    Rejected,
    Result,
    body_digest,
    describe_batch,
    header_bytes,
    is_timestamp,
    within_tolerance,
)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def public_key_problem(text: str) -> str | None:
    try:
        p256_public_keys(text)
    except ValueError as exc:
        return str(exc)
    return None


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    try:
        keys = p256_public_keys(settings.public_key or "")
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
        return Rejected(Reason.MALFORMED, f"malformed {SIGNATURE_HEADER} header")
    message = header_bytes(timestamp) + body
    verified = False
    for key in keys:
        try:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):  # ValueError: not a DER signature
            continue
        verified = True
    if not verified:
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    if not within_tolerance(int(timestamp), now, settings.tolerance_seconds):
        return Rejected(Reason.STALE_TIMESTAMP, "timestamp outside tolerance")
    try:
        events = json.loads(body)
    except JSON_ERRORS:
        events = None
    return describe_batch(events, "event", body_digest(body))


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    """Sign with a PEM ECDSA P-256 private key (the secret half of ``publicKey``)."""
    key = serialization.load_pem_private_key(secret, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("SendGrid signing needs an ECDSA P-256 private key")
    timestamp = str(int(now))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
    }


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    """A batch of two events (``delivered`` and ``open``) ending in CRLF, as SendGrid posts it.

    With ``event_id`` the batch is the same bytes every time that day (a redelivery)."""
    unique = event_id or uuid.uuid4().hex
    at = int(now) // 86_400 * 86_400 if event_id else int(now)
    message = f"{unique[:22]}.filterdrecv-sample-0"
    events = [
        {
            "email": "reader@example.com",
            "event": kind,
            "sg_event_id": f"{kind}-{unique}",
            "sg_message_id": message,
            "smtp-id": f"<{unique[:22]}@example.com>",
            "timestamp": at,
        }
        for kind in ("delivered", "open")
    ]
    body = json.dumps(events, separators=(",", ":")).encode() + b"\r\n"
    return body, body_digest(body)
