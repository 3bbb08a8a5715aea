"""An OAuth 2.0 token client: the refresh_token and client_credentials grants (RFC 6749).

The ManagedSecret reconciler asks for a token and gets either a `TokenResponse` or one of two
errors that tell it what to do next: `TokenRejected` (the provider refused the credentials; retrying
the same request will not help, the user has to act) or `TokenEndpointUnavailable` (try again later,
after `backoff_seconds`, or the provider's Retry-After when it sent one).

Nothing here logs, and no exception message carries a client secret, refresh token or access token:
messages end up in conditions and Events that anyone who can read the resource sees.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp

from dfm_operator.api.managedsecret import ClientAuth
from webhook_server.bodies import read_limited
from webhook_server.outbound import exponential_backoff, parse_retry_after

MAX_RESPONSE_BYTES = 1024 * 1024
"""A token response is a few kilobytes; anything past this is not one."""

MAX_DESCRIPTION_CHARS = 200
MAX_EXPIRES_IN_SECONDS = 100 * 365 * 86_400

GRANT_REFRESH_TOKEN = "refresh_token"
GRANT_CLIENT_CREDENTIALS = "client_credentials"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# Condition reasons for a rejected token request.
REASON_REFRESH_TOKEN_REJECTED = "RefreshTokenRejected"
REASON_CLIENT_REJECTED = "ClientRejected"
REASON_TOKEN_REQUEST_REJECTED = "TokenRequestRejected"

# Codes of TokenEndpointUnavailable when the provider sent none of its own.
CODE_SERVER_ERROR = "server_error"
CODE_RATE_LIMITED = "rate_limited"
CODE_TIMEOUT = "timeout"
CODE_NETWORK_ERROR = "network_error"
CODE_INVALID_RESPONSE = "invalid_response"

_REJECTION_REASONS: Mapping[str, str] = {
    "invalid_grant": REASON_REFRESH_TOKEN_REJECTED,
    "invalid_client": REASON_CLIENT_REJECTED,
    "unauthorized_client": REASON_CLIENT_REJECTED,
}
# RFC 6749 §4.1.2.1 codes some providers also send from the token endpoint: they mean "later".
_TRANSIENT_ERROR_CODES = frozenset({"server_error", "temporarily_unavailable", "slow_down"})
# The error codes shown in Events and conditions: the registered ones (RFC 6749, 6750, 8628,
# 8693, 9449, OpenID Connect). Anything else the provider writes there is shown as
# CODE_UNRECOGNISED: it is free text, and a provider echoing a token into it is not unheard of.
KNOWN_ERROR_CODES = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "invalid_token",
        "insufficient_scope",
        "authorization_pending",
        "expired_token",
        "invalid_target",
        "invalid_dpop_proof",
        "use_dpop_nonce",
        "interaction_required",
        "login_required",
        "consent_required",
        *_TRANSIENT_ERROR_CODES,
    }
)
CODE_UNRECOGNISED = "unrecognised_error"


@dataclass(frozen=True)
class TokenResponse:
    """A successful token response (RFC 6749 §5.1).

    refresh_token is set only when the provider rotated it; None means keep the one you have.
    expires_at is None when the provider did not say when the token expires.
    """

    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None
    refresh_token: str | None = field(repr=False)
    scope: str | None


class OAuthError(Exception):
    """A token request that produced no token. str() is safe to show: it holds no secret."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


class TokenRejected(OAuthError):
    """The provider refused the credentials (RFC 6749 §5.2); the same request will fail again."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(code, message, status=status)
        self.reason = rejection_reason(code)
        self.description = description


class TokenEndpointUnavailable(OAuthError):
    """The token endpoint could not give an answer now; retry later.

    retry_after is the provider's Retry-After in seconds (429 or 503), or None.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, message, status=status)
        self.retry_after = retry_after


def rejection_reason(code: str) -> str:
    """The condition reason for a rejected token request with this OAuth error code."""
    return _REJECTION_REASONS.get(code, REASON_TOKEN_REQUEST_REJECTED)


def backoff_seconds(consecutive_failures: int, *, base: float = 10.0, cap: float = 900.0) -> float:
    """How long to wait after this many failures in a row: base, 2·base, 4·base, … at most cap.

    Fewer than one failure counts as one, so a caller never retries in a tight loop.
    """
    return exponential_backoff(consecutive_failures, base=base, cap=cap)


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The Authorization header of client_secret_basic.

    RFC 6749 §2.3.1 form-urlencodes id and secret before joining them with ':', so an id with ':'
    or non-ASCII characters survives; many clients skip this and break on such ids.
    """
    credentials = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(credentials.encode("ascii")).decode("ascii")


def token_request_form(*, refresh_token: str | None, scopes: Sequence[str]) -> dict[str, str]:
    """The grant's form fields, without client authentication (RFC 6749 §6 and §4.4.2)."""
    form: dict[str, str]
    if refresh_token is not None:
        form = {"grant_type": GRANT_REFRESH_TOKEN, "refresh_token": refresh_token}
    else:
        form = {"grant_type": GRANT_CLIENT_CREDENTIALS}
    if scopes:
        form["scope"] = " ".join(scopes)
    return form


async def request_token(
    session: aiohttp.ClientSession,
    *,
    token_url: str,
    client_id: str,
    client_secret: str,
    client_auth: str,
    refresh_token: str | None,
    scopes: Sequence[str],
    now: datetime,
    timeout_seconds: float = 10.0,
) -> TokenResponse:
    """Ask the token endpoint for an access token.

    With a refresh token, the refresh_token grant; without, client_credentials. `now` is when the
    request is made; expires_at is counted from it. Raises TokenRejected or
    TokenEndpointUnavailable, and ValueError for a client_auth that is not a ClientAuth value.
    """
    auth = ClientAuth(client_auth)
    form = token_request_form(refresh_token=refresh_token, scopes=scopes)
    headers = {"Accept": "application/json", "Content-Type": FORM_CONTENT_TYPE}
    if auth is ClientAuth.CLIENT_SECRET_BASIC:
        headers["Authorization"] = basic_authorization(client_id, client_secret)
    else:
        form["client_id"] = client_id
        form["client_secret"] = client_secret
    secrets = (client_secret, refresh_token or "")

    try:
        async with session.post(
            token_url,
            data=urlencode(form).encode("ascii"),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            allow_redirects=False,
            raise_for_status=False,
        ) as response:
            status = response.status
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
            body = await read_limited(response.content, response.content_length, MAX_RESPONSE_BYTES)
    except TimeoutError:
        raise TokenEndpointUnavailable(
            CODE_TIMEOUT, f"token endpoint did not answer within {timeout_seconds:g}s"
        ) from None
    except aiohttp.ClientError as exc:
        raise TokenEndpointUnavailable(
            CODE_NETWORK_ERROR, f"could not reach the token endpoint: {_describe(exc)}"
        ) from None

    if body is None:
        raise TokenEndpointUnavailable(
            CODE_INVALID_RESPONSE,
            f"token endpoint sent more than {MAX_RESPONSE_BYTES} bytes (HTTP {status})",
            status=status,
        )
    document = _json_object(body)
    if 200 <= status < 300 and document is not None and "access_token" in document:
        return parse_token_response(document, now=now, status=status)
    raise error_for_response(status, document, retry_after=retry_after, secrets=secrets)


def parse_token_response(
    document: Mapping[str, Any], *, now: datetime, status: int = 200
) -> TokenResponse:
    """A TokenResponse from a successful response's JSON, or TokenEndpointUnavailable.

    expires_in may be a number or a numeric string (both are seen in the wild); token_type is
    required by RFC 6749 but some providers omit it, and Bearer is the only type in use.
    """

    def invalid(what: str) -> TokenEndpointUnavailable:
        return TokenEndpointUnavailable(
            CODE_INVALID_RESPONSE, f"token endpoint sent {what} (HTTP {status})", status=status
        )

    access_token = document.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise invalid("no access_token")
    token_type = document.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not token_type:
        raise invalid("an invalid token_type")
    refresh_token = document.get("refresh_token")
    if refresh_token is not None and not isinstance(refresh_token, str):
        raise invalid("an invalid refresh_token")
    scope = document.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise invalid("an invalid scope")
    try:
        expires_in = _expires_in(document.get("expires_in"))
    except ValueError:
        raise invalid("an invalid expires_in") from None
    return TokenResponse(
        access_token=access_token,
        token_type=token_type,
        expires_at=None if expires_in is None else now + timedelta(seconds=expires_in),
        refresh_token=refresh_token or None,
        scope=scope,
    )


def error_for_response(
    status: int,
    document: Mapping[str, Any] | None,
    *,
    retry_after: float | None = None,
    secrets: Sequence[str] = (),
) -> OAuthError:
    """The error a response without a token means: rejected for good, or unavailable for now.

    A 400/401 with an OAuth error code (RFC 6749 §5.2) is a rejection. A 401 without one is a
    rejection of the client. A 2xx with an error code (GitHub answers 200 with an error) is read
    like a 400. Everything else — 5xx, 429, other statuses, bodies that are not token responses —
    is transient. `secrets` are cut out of the provider's error_description before it is kept.
    """
    code = _known_code(document.get("error")) if document else None
    if code and (status in (400, 401) or 200 <= status < 300):
        if code in _TRANSIENT_ERROR_CODES:
            return TokenEndpointUnavailable(
                code,
                f"token endpoint is unavailable: {code} (HTTP {status})",
                status=status,
                retry_after=retry_after,
            )
        raw = document.get("error_description") if document is not None else None
        description = _safe_text(raw, secrets, MAX_DESCRIPTION_CHARS)
        message = f"token endpoint rejected the request: {code} (HTTP {status})"
        if description:
            message = f"{message}: {description}"
        return TokenRejected(code, message, status=status, description=description)
    if status == 401:
        return TokenRejected(
            "invalid_client",
            "token endpoint rejected the client credentials (HTTP 401)",
            status=status,
        )
    if status == 429:
        message = "token endpoint is rate limiting (HTTP 429)"
        unavailable_code = CODE_RATE_LIMITED
    elif status >= 500:
        message = f"token endpoint failed (HTTP {status})"
        unavailable_code = code or CODE_SERVER_ERROR
    elif 200 <= status < 300:
        message = f"token endpoint sent no access_token (HTTP {status})"
        unavailable_code = CODE_INVALID_RESPONSE
        if document is None:
            message = f"token endpoint sent a body that is not a JSON object (HTTP {status})"
    else:
        message = f"token endpoint answered HTTP {status}"
        unavailable_code = CODE_INVALID_RESPONSE
    if retry_after is not None:
        message = f"{message}, retry after {retry_after:g}s"
    return TokenEndpointUnavailable(
        unavailable_code, message, status=status, retry_after=retry_after
    )


def _known_code(value: object) -> str | None:
    """The provider's error code if it is a registered one, CODE_UNRECOGNISED if it is another."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) and value in KNOWN_ERROR_CODES else CODE_UNRECOGNISED


def _expires_in(value: object) -> float | None:
    """expires_in as seconds, None when absent; ValueError when not a non-negative number."""
    if value is None:
        return None
    if isinstance(value, str):
        value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expires_in is not a number")
    if not math.isfinite(value) or value < 0:
        raise ValueError("expires_in is out of range")
    # A larger value would overflow datetime; a token valid a century has no expiry worth noting.
    return float(min(value, MAX_EXPIRES_IN_SECONDS))


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _safe_text(value: object, secrets: Sequence[str], limit: int) -> str | None:
    """Provider text (error, error_description): printable, short, any echoed secret cut out."""
    if not isinstance(value, str):
        return None
    for secret in secrets:
        if secret:
            value = value.replace(secret, "***")
    text = "".join(ch if ch.isprintable() else " " for ch in value).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text or None


def _describe(exc: aiohttp.ClientError) -> str:
    """A short account of a connection failure: the error's kind and the OS reason, if any."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return f"{type(exc).__name__} ({reason})"
    return type(exc).__name__
