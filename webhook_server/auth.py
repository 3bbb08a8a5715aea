"""Bearer-JWT authentication, modelled on Clerk's manual session-token verification.

See https://clerk.com/docs/guides/sessions/manual-jwt-verification. A request carries its token in
``Authorization: Bearer <jwt>`` (cross-origin requests) or, when that header is absent, in the
``__session`` cookie (same-origin requests). The token is verified against either a static PEM
public key (``AuthConfig.public_key``, Clerk's "networkless" mode) or the keys published at
``AuthConfig.jwks_url``.

Security properties:

* The algorithm is pinned: the token header's ``alg`` must be one of ``AuthConfig.algorithms``
  (asymmetric only), checked before any key is touched, and ``algorithms=`` is always passed to
  :func:`jwt.decode`. A JWK that names its own ``alg`` must agree with the token's.
* ``exp`` is required; ``exp``, ``nbf`` and ``iat`` are checked against the injected clock with
  ``AuthConfig.leeway_seconds`` of leeway.
* Rejections carry a fixed, generic detail text; neither the token nor exception messages (which
  may quote it) ever reach the caller or the logs.
* The JWKS is fetched without blocking the event loop, bounded by a timeout, cached, and refetched
  on an unknown ``kid`` at most once every :attr:`JwtAuthenticator.REFETCH_MIN_INTERVAL_SECONDS`,
  with one in-flight fetch shared by every waiter.
* With no JWKS fetched yet (the endpoint down since start-up) a token cannot be checked at all:
  that is :data:`KEYS_UNAVAILABLE`, reason ``UNAVAILABLE``, a temporary condition and not a verdict
  on the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any

import aiohttp
import jwt
import structlog
from jwt.types import Options

from webhook_server.bodies import read_limited
from webhook_server.config import AuthConfig
from webhook_server.keys import PublicKey, jwt_key
from webhook_server.verify.base import Reason, Rejected

log = structlog.get_logger(__name__)


SESSION_COOKIE = "__session"
# Far above any real session token, far below anything that could hurt.
MAX_TOKEN_LENGTH = 16 * 1024
MAX_JWKS_BYTES = 1024 * 1024


# pyjwt's own time checks are off (it reads the system clock); :meth:`_check_claims` does them with
# the injected clock. Audience and issuer are checked there too, to map failures to fixed details.
_DECODE_OPTIONS: Options = {
    "require": ["exp"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "enforce_minimum_key_length": True,
}

MISSING_TOKEN = Rejected(Reason.MISSING_TOKEN, "bearer token required")
INVALID_TOKEN = Rejected(Reason.BAD_TOKEN, "invalid token")
ALGORITHM_NOT_ALLOWED = Rejected(Reason.BAD_TOKEN, "algorithm not allowed")
UNKNOWN_KEY = Rejected(Reason.BAD_TOKEN, "unknown signing key")
KEYS_UNAVAILABLE = Rejected(Reason.UNAVAILABLE, "signing keys unavailable")
EXPIRED = Rejected(Reason.BAD_TOKEN, "token expired")
NOT_YET_VALID = Rejected(Reason.BAD_TOKEN, "token not yet valid")
BAD_ISSUER = Rejected(Reason.BAD_TOKEN, "issuer not accepted")
BAD_AUDIENCE = Rejected(Reason.BAD_TOKEN, "audience not accepted")
BAD_AUTHORIZED_PARTY = Rejected(Reason.BAD_TOKEN, "authorized party not accepted")


class _KeyMismatch(Exception):
    """The JWK names an ``alg`` other than the token's."""


@dataclass(slots=True)
class _Jwk:
    """One usable signing key of a JWKS."""

    kid: str | None
    data: dict[str, Any]
    # The key's own "alg" member, when it has one: it then only verifies that algorithm.
    alg: str | None
    # PyJWK objects built from ``data``, one per algorithm they were asked for.
    built: dict[str, jwt.PyJWK] = field(default_factory=dict)

    def for_algorithm(self, alg: str) -> jwt.PyJWK:
        """The key bound to ``alg``; raises :class:`_KeyMismatch` or a pyjwt error."""
        if self.alg is not None and self.alg != alg:
            raise _KeyMismatch
        key = self.built.get(alg)
        if key is None:
            key = jwt.PyJWK(self.data, algorithm=alg)
            self.built[alg] = key
        return key


def parse_jwks(document: Any) -> list[_Jwk]:
    """The usable signature keys of a JWKS document; raises ValueError when there are none.

    Symmetric (``oct``) keys, keys marked for encryption, and keys pyjwt cannot load are skipped.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: list[_Jwk] = []
    for item in document["keys"]:
        if not isinstance(item, dict) or item.get("kty") == "oct":
            continue
        if item.get("use", "sig") != "sig":
            continue
        kid = item.get("kid")
        alg = item.get("alg")
        if (kid is not None and not isinstance(kid, str)) or (
            alg is not None and not isinstance(alg, str)
        ):
            continue
        entry = _Jwk(kid=kid, data=item, alg=alg)
        try:
            # Validates the key now; binds it to its own alg, or the one its type implies.
            built = jwt.PyJWK(item)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        entry.built[built.algorithm_name] = built
        keys.append(entry)
    if not keys:
        raise ValueError("no usable signing keys")
    return keys


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def extract_token(headers: Mapping[str, str]) -> str | None:
    """The bearer token of a request: the Authorization header, else the ``__session`` cookie.

    A present Authorization header that is not ``Bearer <token>`` yields None (the cookie is only
    consulted when there is no Authorization header at all).
    """
    authorization = _header(headers, "Authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None
    cookie_header = _header(headers, "Cookie")
    if not cookie_header:
        return None
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(cookie_header)
    except CookieError:
        return None
    morsel = cookies.get(SESSION_COOKIE)
    if morsel is None:
        return None
    return morsel.value.strip() or None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class JwtAuthenticator:
    """Verifies bearer JWTs (Clerk session tokens and the like) for one source.

    Claims rules:

    * ``exp`` is required, ``nbf`` and ``iat`` are checked when present, all against ``clock()``
      with ``leeway_seconds`` of leeway.
    * ``iss`` must equal ``issuer`` when one is configured.
    * When ``audiences`` is non-empty, the token's ``aud`` (a string or a list) must contain one of
      them; when it is empty, ``aud`` is neither required nor checked.
    * ``azp`` (authorized party): when ``authorized_parties`` is non-empty and the token has an
      ``azp``, it must be one of them. A token without ``azp`` is accepted: Clerk sets ``azp`` to
      the ``Origin`` of the request that minted the token and omits it when that Origin was empty
      (server-side and non-browser clients), so its absence is not a sign of forgery.

    ``clock`` supplies the wall time (unix seconds) for the claim checks; ``monotonic`` the time
    base of the JWKS cache and the refetch rate limit. Both are injectable for tests.
    """

    REFETCH_MIN_INTERVAL_SECONDS = 10.0

    def __init__(
        self,
        config: AuthConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._monotonic = monotonic
        self._algorithms: tuple[str, ...] = tuple(config.algorithms)
        self._static_key: PublicKey | None = None
        self._static_algorithms: tuple[str, ...] = ()
        if config.public_key is not None:
            # Checked when the config was validated (AuthConfig): this cannot fail here.
            self._static_key, self._static_algorithms = jwt_key(config.public_key, self._algorithms)
        self._jwks_url = config.jwks_url
        self._keys: list[_Jwk] | None = None
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when a static key is configured or the JWKS has been fetched at least once."""
        return self._static_key is not None or self._keys is not None

    async def start(self, session: aiohttp.ClientSession | None = None) -> None:
        """Take (or create) the HTTP session and, in JWKS mode, try a first fetch.

        A failed first fetch is logged, not raised: :attr:`ready` stays False and the fetch is
        retried on demand.
        """
        if session is not None:
            if self._owns_session and self._session is not None:
                await self._session.close()
            self._session, self._owns_session = session, False
        if self._jwks_url is None:
            return
        if self._session is None:
            self._session, self._owns_session = aiohttp.ClientSession(), True
        if self._keys is None:
            await self._refresh()

    async def close(self) -> None:
        """Cancel a fetch in flight and close the HTTP session if this object created it."""
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()
        self._owns_session = False

    # -- authentication ----------------------------------------------------------------------

    async def authenticate(self, headers: Mapping[str, str]) -> Rejected | dict[str, Any]:
        """The verified claims of the request's token, or why it was refused."""
        token = extract_token(headers)
        if token is None:
            return MISSING_TOKEN
        if len(token) > MAX_TOKEN_LENGTH:
            return INVALID_TOKEN
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            return INVALID_TOKEN
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            return ALGORITHM_NOT_ALLOWED
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return INVALID_TOKEN

        key: PublicKey | jwt.PyJWK
        algorithms: list[str]
        if self._static_key is not None:
            if alg not in self._static_algorithms:
                return ALGORITHM_NOT_ALLOWED
            key, algorithms = self._static_key, list(self._static_algorithms)
        else:
            resolved = await self._resolve_jwk(kid, alg)
            if isinstance(resolved, Rejected):
                return resolved
            key, algorithms = resolved, list(self._algorithms)

        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key, algorithms=algorithms, options=_DECODE_OPTIONS
            )
        except jwt.InvalidAlgorithmError:
            return ALGORITHM_NOT_ALLOWED
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            return INVALID_TOKEN
        return self._check_claims(claims)

    def _check_claims(self, claims: dict[str, Any]) -> Rejected | dict[str, Any]:
        now = self._clock()
        leeway = float(self._config.leeway_seconds)
        exp = _number(claims.get("exp"))
        if exp is None:
            return INVALID_TOKEN
        if exp <= now - leeway:
            return EXPIRED
        for name in ("nbf", "iat"):
            if name in claims:
                value = _number(claims[name])
                if value is None:
                    return INVALID_TOKEN
                if value > now + leeway:
                    return NOT_YET_VALID
        if self._config.issuer is not None and claims.get("iss") != self._config.issuer:
            return BAD_ISSUER
        if self._config.audiences:
            aud = claims.get("aud")
            given = [aud] if isinstance(aud, str) else aud
            if not isinstance(given, list) or not any(
                isinstance(a, str) and a in self._config.audiences for a in given
            ):
                return BAD_AUDIENCE
        parties = self._config.authorized_parties
        if parties and "azp" in claims and claims["azp"] not in parties:
            return BAD_AUTHORIZED_PARTY
        return claims

    # -- JWKS --------------------------------------------------------------------------------

    async def _resolve_jwk(self, kid: str | None, alg: str) -> Rejected | jwt.PyJWK:
        if self._keys is None or self._expired():
            await self._refresh()
        if self._keys is None:
            return KEYS_UNAVAILABLE
        found = self._find(kid, alg)
        if found is None and kid is not None:
            # Possibly a rotated key: refetch (rate-limited, shared with concurrent callers).
            await self._refresh()
            found = self._find(kid, alg)
        if found is None:
            return UNKNOWN_KEY
        if isinstance(found, Rejected):
            return found
        return found

    def _find(self, kid: str | None, alg: str) -> Rejected | jwt.PyJWK | None:
        keys = self._keys or []
        if kid is None:
            # Without a kid only an unambiguous set will do.
            candidates = keys if len(keys) == 1 else []
        else:
            candidates = [k for k in keys if k.kid == kid]
        if not candidates:
            return None
        # Prefer a key that names this alg, then one that names none.
        best = min(candidates, key=lambda k: (k.alg != alg, k.alg is not None))
        try:
            return best.for_algorithm(alg)
        except _KeyMismatch:
            return ALGORITHM_NOT_ALLOWED
        except (jwt.PyJWTError, ValueError, TypeError):
            return INVALID_TOKEN

    def _expired(self) -> bool:
        if self._fetched_at is None:
            return True
        return self._monotonic() - self._fetched_at >= self._config.jwks_cache_seconds

    async def _refresh(self) -> None:
        """Fetch the JWKS unless one was tried too recently; join a fetch already in flight."""
        if self._inflight is None:
            now = self._monotonic()
            if (
                self._last_attempt is not None
                and now - self._last_attempt < self.REFETCH_MIN_INTERVAL_SECONDS
            ):
                return
            self._last_attempt = now
            task = asyncio.create_task(self._fetch())
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        # Shielded: a cancelled waiter (a client gone away) must not cancel the shared fetch.
        await asyncio.shield(self._inflight)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> None:
        """One JWKS fetch. Never raises (except on cancellation); keeps the old keys on failure."""
        assert self._jwks_url is not None
        if self._session is None:
            self._session, self._owns_session = aiohttp.ClientSession(), True
        timeout = self._config.jwks_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                async with self._session.get(
                    self._jwks_url,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    headers={"Accept": "application/json"},
                ) as response:
                    response.raise_for_status()
                    body = await read_limited(
                        response.content, response.content_length, MAX_JWKS_BYTES
                    )
            if body is None:
                raise ValueError("JWKS document too large")
            keys = parse_jwks(json.loads(body))
        except Exception as exc:  # any failure: keep the cached keys (a closed session, too)
            log.warning(
                "jwks fetch failed",
                url=self._jwks_url,
                error=type(exc).__name__,
                cached_keys=len(self._keys or []),
            )
            return
        self._keys = keys
        self._fetched_at = self._monotonic()
        log.info("jwks fetched", url=self._jwks_url, keys=len(keys))
