"""HighLevel (GoHighLevel): asymmetric signatures over the raw body, checked with public keys.

``X-GHL-Signature`` is base64 Ed25519; the legacy ``X-WH-Signature`` is base64 RSA-SHA256
(PKCS#1 v1.5), which HighLevel stops sending on 2026-07-01. Both may arrive together; the
Ed25519 one is preferred, the legacy one is the fallback. Either is unforgeable without
HighLevel's private keys, so accepting whichever verifies costs no security.

``settings.public_key`` (one or more PEM blocks) replaces the published keys below, which is how a
key rotation at HighLevel, or a test, supplies its own keys. ``secrets`` is unused.

The body's ``timestamp`` (ISO 8601 or unix) is signed, so it is checked against the tolerance; a
body without one, or with one in a format not recognised, is accepted on its signature alone.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from webhook_server.config import VerificationConfig
from webhook_server.keys import highlevel_keys
from webhook_server.verify.base import (
    Reason,
    Rejected,
    Result,
    Verified,
    base64_signature,
    compact_json,
    iso_time,
    json_object,
    string_field,
    within_tolerance,
)

ED25519_HEADER = "X-GHL-Signature"
RSA_HEADER = "X-WH-Signature"

# HighLevel's published webhook keys, from the Webhook Integration Guide
# (https://marketplace.gohighlevel.com/docs/webhook/WebhookIntegrationGuide) and, for the RSA key,
# the "Webhook Authentication Guide" of HighLevel's API docs (docs/oauth/WebhookAuthentication.md,
# as mirrored in github.com/kleegr/kleegr-api-docs). The same two keys are hard-coded by many
# independent public integrations.
DEFAULT_PUBLIC_KEYS = """\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=
-----END PUBLIC KEY-----
-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----
"""

# Unix timestamps above this are taken as milliseconds (year 5138 in seconds).
_MILLISECONDS_FROM = 100_000_000_000

# The Ed25519 and RSA keys among PEM blocks (webhook_server.keys); kept under this name for callers.
public_keys = highlevel_keys


def _verify_one(key: Ed25519PublicKey | RSAPublicKey, signature: bytes, body: bytes) -> bool:
    try:
        if isinstance(key, Ed25519PublicKey):
            key.verify(signature, body)
        else:
            key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _check(
    value: str, keys: Sequence[Ed25519PublicKey | RSAPublicKey], header: str, body: bytes
) -> Rejected | None:
    signature = base64_signature(value, header)
    if isinstance(signature, Rejected):
        return signature
    if not keys:
        return Rejected(Reason.NO_SECRET, f"no public key for {header}")
    if any(_verify_one(key, signature, body) for key in keys):
        return None
    return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch from an ISO 8601 string or a unix number (s or ms)."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return None
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if number is None or not math.isfinite(number):
        return None
    return number / 1000 if number >= _MILLISECONDS_FROM else number


def _authenticate(headers: Mapping[str, str], body: bytes, pem: str) -> Rejected | None:
    """None when a present signature verifies; else why the preferred header failed."""
    ed25519_keys, rsa_keys = public_keys(pem)
    first: Rejected | None = None
    for header, keys in ((ED25519_HEADER, ed25519_keys), (RSA_HEADER, rsa_keys)):
        value = headers.get(header, "").strip()
        if not value:
            continue
        rejection = _check(value, keys, header, body)
        if rejection is None:
            return None
        first = first or rejection
    return first or Rejected(Reason.MISSING_HEADER, f"missing {ED25519_HEADER} or {RSA_HEADER}")


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    rejection = _authenticate(headers, body, settings.public_key or DEFAULT_PUBLIC_KEYS)
    if rejection is not None:
        return rejection
    event = json_object(body)
    timestamp = _timestamp(event.get("timestamp")) if event else None
    if timestamp is not None and not within_tolerance(timestamp, now, settings.tolerance_seconds):
        return Rejected(Reason.STALE_TIMESTAMP, "timestamp outside tolerance")
    return Verified(
        event_id=string_field(event, "webhookId"), event_type=string_field(event, "type")
    )


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    """Sign with a PEM private key: Ed25519 gives ``X-GHL-Signature``, RSA ``X-WH-Signature``."""
    key = serialization.load_pem_private_key(secret, password=None)
    if isinstance(key, Ed25519PrivateKey):
        header, signature = ED25519_HEADER, key.sign(body)
    elif isinstance(key, RSAPrivateKey):
        header, signature = RSA_HEADER, key.sign(body, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise ValueError("HighLevel signing needs an Ed25519 or RSA private key")
    return {"Content-Type": "application/json", header: base64.b64encode(signature).decode()}


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    event_id = event_id or str(uuid.uuid4())
    body = {
        "type": "ContactCreate",
        "webhookId": event_id,
        "timestamp": iso_time(now),
        "locationId": "loc_sample",
        "id": f"contact_{uuid.uuid4().hex[:8]}",
    }
    return compact_json(body), event_id
