"""Standard Webhooks (also Svix and Clerk): ``webhook-id``, ``webhook-timestamp``,
``webhook-signature`` with space-separated ``v1,<base64 HMAC-SHA256>`` entries over
``"{id}.{timestamp}.{body}"``.

Svix and Clerk send the same scheme under ``svix-*`` names, used when a ``webhook-*`` header is
absent. The secret is ``whsec_`` + base64 of the real key. A stored secret that does not decode
can never match anything, so it is skipped; when none decodes the request is refused as
``NO_SECRET``, which points the operator at the configuration rather than at the sender.
Asymmetric ``v1a`` signatures are not supported and are ignored.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence

from webhook_server.config import VerificationConfig
from webhook_server.keys import STANDARD_SECRET_PREFIX, standard_webhooks_key
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
    iso_time,
    json_object,
    string_field,
    within_tolerance,
)

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SVIX_ALIASES = {
    ID_HEADER: "svix-id",
    TIMESTAMP_HEADER: "svix-timestamp",
    SIGNATURE_HEADER: "svix-signature",
}
SECRET_PREFIX = STANDARD_SECRET_PREFIX
VERSION = "v1"


def decode_secret(secret: bytes) -> bytes | None:
    """The HMAC key inside a ``whsec_`` secret; like the reference libs, padding is optional."""
    return standard_webhooks_key(secret)


def _header(headers: Mapping[str, str], name: str) -> str:
    return (headers.get(name) or headers.get(SVIX_ALIASES[name]) or "").strip()


def _signatures(value: str) -> list[bytes]:
    signatures: list[bytes] = []
    for entry in value.split():
        version, _, encoded = entry.partition(",")
        if version != VERSION:
            continue
        try:
            signatures.append(base64.b64decode(encoded, validate=True))
        except ValueError:  # binascii.Error, or a character that is not ASCII
            continue
    return signatures


def _signed_content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    return header_bytes(f"{msg_id}.{timestamp}.") + body


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    keys = [key for key in map(decode_secret, secrets) if key is not None]
    if not keys:
        return Rejected(Reason.NO_SECRET, "no usable secret configured")
    msg_id = _header(headers, ID_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if not (msg_id and timestamp and signature):
        return Rejected(Reason.MISSING_HEADER, "missing webhook-id, -timestamp or -signature")
    if not is_timestamp(timestamp):
        return Rejected(Reason.MALFORMED, "malformed webhook-timestamp header")
    given = _signatures(signature)
    if not given:
        return Rejected(Reason.MALFORMED, "no v1 signature in webhook-signature header")
    content = _signed_content(msg_id, timestamp, body)
    expected = [hmac_digest(key, content) for key in keys]
    if not constant_time_any(expected, given):
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    if not within_tolerance(int(timestamp), now, settings.tolerance_seconds):
        return Rejected(Reason.STALE_TIMESTAMP, "timestamp outside tolerance")
    return Verified(event_id=msg_id, event_type=string_field(json_object(body), "type"))


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    key = decode_secret(secret)
    if key is None:
        raise ValueError("the secret is not a base64 (whsec_...) Standard Webhooks secret")
    msg_id = event_id or f"msg_{uuid.uuid4().hex}"
    timestamp = str(int(now))
    signature = base64.b64encode(hmac_digest(key, _signed_content(msg_id, timestamp, body)))
    return {
        "Content-Type": "application/json",
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: f"{VERSION},{signature.decode()}",
    }


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    unique = uuid.uuid4().hex
    event_id = event_id or f"msg_{unique[:27]}"
    body = {
        "type": "user.created",
        "timestamp": iso_time(now),
        "data": {"id": f"user_{unique[:8]}"},
    }
    return compact_json(body), event_id
