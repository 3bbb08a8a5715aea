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
from webhook_server.verify import timestamped
from webhook_server.verify.base import JSON_ERRORS, Result, body_digest, describe_batch

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def _verifies(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):  # ValueError: not a DER signature
        return False
    return True


SCHEME = timestamped.TimestampedScheme(
    signature_header=SIGNATURE_HEADER,
    timestamp_header=TIMESTAMP_HEADER,
    load_keys=p256_public_keys,
    verifies=_verifies,
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
    signature = key.sign(SCHEME.signed(timestamp, body), ec.ECDSA(hashes.SHA256()))
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
