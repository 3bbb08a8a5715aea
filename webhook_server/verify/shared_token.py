"""A shared token, for senders that cannot sign (HighLevel workflow webhooks, Postmark, internal
tools): the request carries the secret itself, as ``Authorization: Bearer <token>``
(``tokenScheme: bearer``, the default), in a named header (``header``), or as HTTP Basic
credentials (``basic``; a secret ``user:password`` must match both, a secret without ``:`` is the
password and any user name goes).

Weaker than a signature: the token travels with every request, so anyone who sees one request
(a proxy's log, a sender's dashboard) can send anything; nothing ties it to the body; and there is
no timestamp, so nothing stops a replay. ``verification.idHeader`` (or a body ``id``) deduplicates
redeliveries, and ``spec.auth`` can add a signed, expiring JWT (with ``tokenScheme: header``,
since both would read ``Authorization`` otherwise). Tokens are compared as SHA-256 digests in
constant time, so neither their content nor their length leaks; every secret currently valid
(a ManagedSecret's ``current`` and, during its grace period, ``previous``) is accepted.

Named ``shared_token`` so it never shadows the standard library's ``token`` module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence

from webhook_server.config import TokenScheme, VerificationConfig
from webhook_server.verify.base import (
    Reason,
    Rejected,
    Result,
    Verified,
    constant_time_any,
    event_from_body,
    generic_sample,
    header_bytes,
)

AUTHORIZATION = "Authorization"
# A token shorter than this is guessable; it is the only thing that authenticates the sender.
MIN_TOKEN_CHARS = 16


def secret_problem(value: bytes) -> str | None:
    if len(value.strip()) < MIN_TOKEN_CHARS:
        return (
            f"is shorter than {MIN_TOKEN_CHARS} characters: a shared token is all that "
            "authenticates the sender"
        )
    return None


def _authorization(headers: Mapping[str, str], scheme: str) -> str | None:
    name, _, value = headers.get(AUTHORIZATION, "").strip().partition(" ")
    value = value.strip()
    return value if name.lower() == scheme and value else None


def _given(headers: Mapping[str, str], settings: VerificationConfig) -> bytes | Rejected:
    """The credential the request presents, as bytes."""
    scheme = settings.token_scheme or TokenScheme.BEARER
    if scheme is TokenScheme.HEADER:
        if not settings.header:
            return Rejected(Reason.NO_SECRET, "no token header configured")
        value = headers.get(settings.header, "").strip()
        if not value:
            return Rejected(Reason.MISSING_TOKEN, f"missing {settings.header} header")
        return header_bytes(value)
    credential = _authorization(headers, scheme.value)
    if credential is None:
        return Rejected(Reason.MISSING_TOKEN, f"missing Authorization: {scheme.value.title()}")
    if scheme is TokenScheme.BEARER:
        return header_bytes(credential)
    try:
        return base64.b64decode(credential, validate=True)
    except (binascii.Error, ValueError):
        return Rejected(Reason.MALFORMED, "malformed Basic credentials")


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    if not secrets:
        return Rejected(Reason.NO_SECRET, "no token configured")
    given = _given(headers, settings)
    if isinstance(given, Rejected):
        return given
    basic = settings.token_scheme is TokenScheme.BASIC
    password = given.partition(b":")[2]
    # Every secret against the credential (Basic without a user in the secret: its password),
    # all compared, so timing tells nothing of which matched.
    pairs = [
        (_digest(secret), _digest(password if basic and b":" not in secret else given))
        for secret in secrets
    ]
    matched = False
    for expected, presented in pairs:
        matched |= constant_time_any([expected], [presented])
    if not matched:
        return Rejected(Reason.BAD_TOKEN, "invalid token")
    header_id = headers.get(settings.id_header, "").strip() if settings.id_header else ""
    header_type = headers.get(settings.type_header, "").strip() if settings.type_header else ""
    if header_id and header_type:
        return Verified(event_id=header_id, event_type=header_type)
    return event_from_body(body, header_id, header_type)


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    """The headers a sender configured with the token adds (there is nothing to sign)."""
    headers = {"Content-Type": "application/json"}
    token = secret.decode()
    scheme = settings.token_scheme or TokenScheme.BEARER
    if scheme is TokenScheme.HEADER:
        if not settings.header:
            raise ValueError("tokenScheme header needs verification.header")
        headers[settings.header] = token
    elif scheme is TokenScheme.BASIC:
        credentials = token if ":" in token else f"dfm:{token}"
        headers[AUTHORIZATION] = "Basic " + base64.b64encode(credentials.encode()).decode()
    else:
        headers[AUTHORIZATION] = f"Bearer {token}"
    if settings.id_header and event_id:
        headers[settings.id_header] = event_id
    return headers


sample = generic_sample
