"""JwtAuthenticator: Clerk-style bearer JWT verification against a loopback JWKS server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from webhook_server.auth import JwtAuthenticator
from webhook_server.config import AuthConfig
from webhook_server.verify.base import Reason, Rejected

NOW = 1_700_000_000.0
ISSUER = "https://clerk.example.test"
ORIGIN = "https://app.example.test"

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


# -- keys and tokens -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, alg: str | None = "RS256") -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig")
    if alg is not None:
        jwk["alg"] = alg
    return jwk


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig", alg="ES256")
    return jwk


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "user_123",
        "sid": "sess_123",
        "iss": ISSUER,
        "iat": int(NOW) - 10,
        "nbf": int(NOW) - 10,
        "exp": int(NOW) + 60,
        "azp": ORIGIN,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, payload: dict[str, Any], *, alg: str = "RS256", kid: str | None = "k1") -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A compact JWS built by hand (for tokens pyjwt refuses to produce)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_rejected(
    result: Rejected | dict[str, Any], reason: Reason, token: str | None = None
) -> Rejected:
    assert isinstance(result, Rejected), result
    assert result.reason is reason
    assert result.detail
    if token is not None:
        assert token not in result.detail
        for part in token.split("."):
            if len(part) > 8:
                assert part not in result.detail
    return result


# -- clocks and the JWKS server ------------------------------------------------------------------


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@dataclass
class JwksState:
    keys: list[dict[str, Any]]
    requests: int = 0
    delay: float = 0.0
    status: int = 200
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Jwks:
    state: JwksState
    url: str


@pytest.fixture
async def jwks(
    aiohttp_server: AiohttpServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> Jwks:
    state = JwksState(keys=[rsa_jwk(rsa_key, "k1"), ec_jwk(ec_key, "ec1")])

    async def handler(request: web.Request) -> web.StreamResponse:
        state.requests += 1
        if state.delay:
            await asyncio.sleep(state.delay)
        if state.status != 200:
            return web.Response(status=state.status, text="unavailable")
        return web.json_response({"keys": state.keys})

    app = web.Application()
    app.router.add_get("/jwks", handler)
    server = await aiohttp_server(app)
    return Jwks(state=state, url=str(server.make_url("/jwks")))


@dataclass
class Env:
    clock: Clock
    mono: Clock
    make: Callable[..., Awaitable[JwtAuthenticator]]


@pytest.fixture
async def env(jwks: Jwks) -> AsyncIterator[Env]:
    clock, mono = Clock(NOW), Clock(1000.0)
    created: list[JwtAuthenticator] = []

    async def make(start: bool = True, **settings: Any) -> JwtAuthenticator:
        if "public_key" not in settings:
            settings.setdefault("jwks_url", jwks.url)
        settings.setdefault("issuer", ISSUER)
        settings.setdefault("authorized_parties", [ORIGIN])
        auth = JwtAuthenticator(AuthConfig(**settings), clock=clock, monotonic=mono)
        created.append(auth)
        if start:
            await auth.start()
        return auth

    yield Env(clock=clock, mono=mono, make=make)
    for auth in created:
        await auth.close()


# -- valid tokens --------------------------------------------------------------------------------


async def test_valid_rs256_via_jwks(env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make()
    assert auth.ready
    assert jwks.state.requests == 1
    result = await auth.authenticate(bearer(sign(rsa_key, claims())))
    assert isinstance(result, dict)
    assert result["sub"] == "user_123"
    assert result["sid"] == "sess_123"
    assert jwks.state.requests == 1  # served from the cache


async def test_valid_es256_via_jwks(
    env: Env, jwks: Jwks, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    auth = await env.make()
    result = await auth.authenticate(bearer(sign(ec_key, claims(), alg="ES256", kid="ec1")))
    assert isinstance(result, dict)
    assert result["sub"] == "user_123"


@pytest.mark.parametrize("kind", ["ed25519", "ec"])
async def test_valid_static_pem(
    env: Env,
    jwks: Jwks,
    kind: str,
    ed_key: ed25519.Ed25519PrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    key, alg = (ed_key, "EdDSA") if kind == "ed25519" else (ec_key, "ES256")
    auth = await env.make(start=False, public_key=public_pem(key))
    assert auth.ready  # a static key needs no start()
    token = sign(key, claims(), alg=alg, kid=None)
    result = await auth.authenticate(bearer(token))
    assert isinstance(result, dict)
    assert result["sub"] == "user_123"
    await auth.start()
    assert isinstance(await auth.authenticate(bearer(token)), dict)
    assert jwks.state.requests == 0


async def test_static_pem_one_line_with_escaped_newlines(
    env: Env, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    auth = await env.make(public_key=public_pem(ed_key).replace("\n", "\\n"))
    result = await auth.authenticate(bearer(sign(ed_key, claims(), alg="EdDSA", kid=None)))
    assert isinstance(result, dict)


def test_static_pem_rejected_at_construction(ed_key: ed25519.Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="PEM"):
        JwtAuthenticator(AuthConfig(public_key="not a key"))
    with pytest.raises(ValueError, match="cannot verify"):
        JwtAuthenticator(AuthConfig(public_key=public_pem(ed_key), algorithms=["RS256"]))


async def test_token_without_kid_uses_the_only_key(
    env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.state.keys = [rsa_jwk(rsa_key, "k1")]
    auth = await env.make()
    token = sign(rsa_key, claims(), kid=None)
    assert isinstance(await auth.authenticate(bearer(token)), dict)


async def test_token_without_kid_is_ambiguous_with_several_keys(
    env: Env, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = await env.make()
    token = sign(rsa_key, claims(), kid=None)
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "unknown signing key"


# -- time ----------------------------------------------------------------------------------------


async def test_expired(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make(leeway_seconds=5)
    token = sign(rsa_key, claims(exp=int(NOW) - 10))
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "token expired"


async def test_expired_within_leeway_passes(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make(leeway_seconds=5)
    token = sign(rsa_key, claims(exp=int(NOW) - 3))
    assert isinstance(await auth.authenticate(bearer(token)), dict)
    env.clock.now = NOW + 2  # now 5 s past exp: exactly the leeway, expired
    assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)


async def test_injected_clock_drives_expiry(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make(leeway_seconds=0)
    token = sign(rsa_key, claims(exp=int(NOW) + 60))
    assert isinstance(await auth.authenticate(bearer(token)), dict)
    env.clock.now = NOW + 61
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "token expired"


async def test_nbf_in_the_future(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make(leeway_seconds=5)
    token = sign(rsa_key, claims(nbf=int(NOW) + 60))
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "token not yet valid"
    env.clock.now = NOW + 56  # within leeway of nbf
    assert isinstance(await auth.authenticate(bearer(token)), dict)


async def test_iat_in_the_future(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make(leeway_seconds=5)
    token = sign(rsa_key, claims(iat=int(NOW) + 60, nbf=None))
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "token not yet valid"


async def test_exp_is_required(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make()
    token = sign(rsa_key, claims(exp=None))
    assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)


# -- issuer, audience, authorized party ----------------------------------------------------------


async def test_wrong_issuer(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make()
    token = sign(rsa_key, claims(iss="https://evil.example.test"))
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "issuer not accepted"
    token = sign(rsa_key, claims(iss=None))
    assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)


async def test_audience_mismatch(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make(audiences=["api://webhooks"])
    for aud in ("api://other", ["api://a", "api://b"], None):
        token = sign(rsa_key, claims(aud=aud))
        result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
        assert result.detail == "audience not accepted"


async def test_audience_list_intersection(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make(audiences=["api://webhooks", "api://admin"])
    for aud in ("api://admin", ["api://other", "api://webhooks"]):
        token = sign(rsa_key, claims(aud=aud))
        assert isinstance(await auth.authenticate(bearer(token)), dict)


async def test_audience_not_configured_ignores_aud(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make()
    for aud in ("api://anything", None):
        assert isinstance(await auth.authenticate(bearer(sign(rsa_key, claims(aud=aud)))), dict)


async def test_azp_not_allowed(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make()
    token = sign(rsa_key, claims(azp="https://evil.example.test"))
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "authorized party not accepted"


async def test_azp_missing_is_accepted(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make()
    assert isinstance(await auth.authenticate(bearer(sign(rsa_key, claims(azp=None)))), dict)


async def test_azp_not_checked_without_authorized_parties(
    env: Env, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = await env.make(authorized_parties=[])
    token = sign(rsa_key, claims(azp="https://anywhere.example.test"))
    assert isinstance(await auth.authenticate(bearer(token)), dict)


# -- key rotation and the JWKS cache -------------------------------------------------------------


async def test_unknown_kid_refetches_once(
    env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    auth = await env.make()
    assert jwks.state.requests == 1
    jwks.state.keys = [rsa_jwk(rsa_key2, "k2")]  # rotated on the server
    token = sign(rsa_key2, claims(), kid="k2")

    # Right after the first fetch the refetch is rate-limited.
    env.mono.now += 1
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "unknown signing key"
    assert jwks.state.requests == 1

    env.mono.now += 10
    assert isinstance(await auth.authenticate(bearer(token)), dict)
    assert jwks.state.requests == 2
    # The old key is gone with the rotation.
    old = sign(rsa_key, claims(), kid="k1")
    assert_rejected(await auth.authenticate(bearer(old)), Reason.BAD_TOKEN, old)
    assert jwks.state.requests == 2


async def test_unknown_kid_flood_fetches_at_most_once(
    env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = await env.make()
    assert jwks.state.requests == 1
    env.mono.now += 11
    jwks.state.delay = 0.1  # so the requests overlap the fetch in flight
    tokens = [sign(rsa_key, claims(), kid=f"unknown-{uuid.uuid4()}") for _ in range(25)]
    results = await asyncio.gather(*(auth.authenticate(bearer(t)) for t in tokens))
    for token, result in zip(tokens, results, strict=True):
        assert_rejected(result, Reason.BAD_TOKEN, token)
    assert jwks.state.requests == 2  # one shared fetch

    for _ in range(3):  # still within 10 s of that fetch
        env.mono.now += 3
        token = sign(rsa_key, claims(), kid=f"unknown-{uuid.uuid4()}")
        assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert jwks.state.requests == 2
    # Known keys keep working throughout.
    assert isinstance(await auth.authenticate(bearer(sign(rsa_key, claims()))), dict)


async def test_cache_expiry_refetches(env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make(jwks_cache_seconds=60)
    token = sign(rsa_key, claims())
    assert isinstance(await auth.authenticate(bearer(token)), dict)
    env.mono.now += 30
    assert isinstance(await auth.authenticate(bearer(token)), dict)
    assert jwks.state.requests == 1
    env.mono.now += 31
    assert isinstance(await auth.authenticate(bearer(token)), dict)
    assert jwks.state.requests == 2


async def test_jwks_down_uses_cached_keys(env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make(jwks_cache_seconds=60)
    jwks.state.status = 503
    env.mono.now += 120  # cache expired: a refetch is tried, fails, the cached keys still serve
    token = sign(rsa_key, claims())
    assert isinstance(await auth.authenticate(bearer(token)), dict)
    assert jwks.state.requests == 2
    assert auth.ready


async def test_jwks_slow_beyond_timeout(env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey) -> None:
    # Slower than the 0.3 s timeout, quicker than the 5 s default, and far apart from both: a
    # loaded machine neither reaches the answer nor the bound below by accident.
    jwks.state.delay = 4.0
    started = time.monotonic()
    auth = await env.make(jwks_timeout_seconds=0.3)
    assert not auth.ready
    env.mono.now += 11
    token = sign(rsa_key, claims())
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.UNAVAILABLE, token)
    assert result.detail == "signing keys unavailable"
    assert time.monotonic() - started < 3.0  # two 0.3 s timeouts (start, then the request)
    assert not auth.ready


async def test_jwks_unavailable_without_cache_is_rate_limited(
    env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.state.status = 500
    auth = await env.make()
    assert not auth.ready
    token = sign(rsa_key, claims())
    for _ in range(5):
        # Temporary, not the token's fault: the receiver answers 503, not 401.
        result = assert_rejected(await auth.authenticate(bearer(token)), Reason.UNAVAILABLE, token)
        assert result.detail == "signing keys unavailable"
    assert jwks.state.requests == 1
    jwks.state.status = 200
    env.mono.now += 10
    assert isinstance(await auth.authenticate(bearer(token)), dict)
    assert auth.ready
    assert jwks.state.requests == 2


async def test_lazy_fetch_without_start(env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make(start=False)
    assert not auth.ready
    assert isinstance(await auth.authenticate(bearer(sign(rsa_key, claims()))), dict)
    assert auth.ready
    assert jwks.state.requests == 1


async def test_unusable_jwks_entries_are_skipped(
    env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.state.keys = [
        {"kty": "oct", "kid": "k1", "k": b64url(b"secret"), "alg": "HS256"},
        {**rsa_jwk(rsa_key, "enc1"), "use": "enc"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        rsa_jwk(rsa_key, "k1"),
    ]
    auth = await env.make()
    assert isinstance(await auth.authenticate(bearer(sign(rsa_key, claims()))), dict)
    token = sign(rsa_key, claims(), kid="enc1")
    assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)


async def test_provided_session_is_not_closed(jwks: Jwks, rsa_key: rsa.RSAPrivateKey) -> None:
    async with aiohttp.ClientSession() as session:
        auth = JwtAuthenticator(AuthConfig(jwks_url=jwks.url), clock=lambda: NOW)
        await auth.start(session)
        assert auth.ready
        await auth.close()
        assert not session.closed


# -- algorithm pinning ---------------------------------------------------------------------------


async def test_alg_none_rejected(env: Env, jwks: Jwks) -> None:
    auth = await env.make(start=False)
    for alg in ("none", "None", "NONE"):
        token = handmade({"alg": alg, "typ": "JWT", "kid": "k1"}, claims(), secret=None)
        result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
        assert result.detail == "algorithm not allowed"
    assert jwks.state.requests == 0  # refused before any key was fetched


async def test_hs256_with_public_key_as_secret_rejected_jwks(
    env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = await env.make(start=False)
    secret = public_pem(rsa_key).encode()
    token = handmade({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims(), secret)
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "algorithm not allowed"
    assert jwks.state.requests == 0


async def test_hs256_with_public_key_as_secret_rejected_static(
    env: Env, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = public_pem(rsa_key)
    auth = await env.make(public_key=pem)
    for secret in (pem.encode(), pem.strip().encode()):
        token = handmade({"alg": "HS256", "typ": "JWT"}, claims(), secret)
        result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
        assert result.detail == "algorithm not allowed"


async def test_algorithm_outside_configured_list(
    env: Env, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    auth = await env.make(algorithms=["RS256"])
    token = sign(ec_key, claims(), alg="ES256", kid="ec1")
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "algorithm not allowed"


async def test_jwk_alg_must_match_token_alg(
    env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = await env.make()
    token = sign(rsa_key, claims(), alg="PS256", kid="k1")  # the JWK says RS256
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "algorithm not allowed"


async def test_jwk_without_alg_accepts_a_compatible_alg(
    env: Env, jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.state.keys = [rsa_jwk(rsa_key, "k1", alg=None)]
    auth = await env.make()
    for alg in ("RS256", "PS256", "RS512"):
        assert isinstance(await auth.authenticate(bearer(sign(rsa_key, claims(), alg=alg))), dict)
    token = handmade({"alg": "ES256", "kid": "k1"}, claims(), b"x")  # an RSA key cannot be EC
    assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)


async def test_static_key_rejects_other_key_type_alg(
    env: Env, ed_key: ed25519.Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = await env.make(public_key=public_pem(ed_key))
    token = sign(rsa_key, claims(), alg="RS256", kid=None)
    result = assert_rejected(await auth.authenticate(bearer(token)), Reason.BAD_TOKEN, token)
    assert result.detail == "algorithm not allowed"


async def test_bad_signature_and_garbage(
    env: Env, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    auth = await env.make()
    forged = sign(rsa_key2, claims(), kid="k1")  # right kid, wrong private key
    result = assert_rejected(await auth.authenticate(bearer(forged)), Reason.BAD_TOKEN, forged)
    assert result.detail == "invalid token"
    header, _payload, signature = sign(rsa_key, claims()).split(".")
    tampered_payload = b64url(json.dumps(claims(sub="admin")).encode())
    tampered = f"{header}.{tampered_payload}.{signature}"
    assert_rejected(await auth.authenticate(bearer(tampered)), Reason.BAD_TOKEN, tampered)
    for junk in ("abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9..", "x" * 20_000):
        assert_rejected(await auth.authenticate(bearer(junk)), Reason.BAD_TOKEN, junk)


# -- where the token comes from ------------------------------------------------------------------


async def test_missing_token(env: Env) -> None:
    auth = await env.make()
    for headers in (
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
        {"Cookie": "other=1"},
        {"Cookie": "__session="},
    ):
        result = assert_rejected(await auth.authenticate(headers), Reason.MISSING_TOKEN)
        assert result.detail == "bearer token required"


async def test_token_from_session_cookie(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make()
    token = sign(rsa_key, claims())
    result = await auth.authenticate({"Cookie": f"theme=dark; __session={token}; other=1"})
    assert isinstance(result, dict)
    assert result["sub"] == "user_123"
    # Header names are matched case-insensitively even in a plain dict.
    assert isinstance(await auth.authenticate({"cookie": f"__session={token}"}), dict)
    assert isinstance(await auth.authenticate({"authorization": f"bearer {token}"}), dict)


async def test_authorization_header_wins_over_cookie(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = await env.make()
    good = sign(rsa_key, claims())
    bad = sign(rsa_key, claims(iss="https://evil.example.test"))
    result = await auth.authenticate(
        {"Authorization": f"Bearer {bad}", "Cookie": f"__session={good}"}
    )
    assert_rejected(result, Reason.BAD_TOKEN, bad)


async def test_multidict_headers(env: Env, rsa_key: rsa.RSAPrivateKey) -> None:
    from multidict import CIMultiDict

    auth = await env.make()
    headers = CIMultiDict({"AUTHORIZATION": f"Bearer {sign(rsa_key, claims())}"})
    assert isinstance(await auth.authenticate(headers), dict)


async def test_concurrent_requests_share_the_fetch_in_flight(
    env: Env, jwks: Jwks, rsa_key2: rsa.RSAPrivateKey
) -> None:
    auth = await env.make()
    jwks.state.keys = [rsa_jwk(rsa_key2, "k2")]
    jwks.state.delay = 0.1
    env.mono.now += 11
    token = sign(rsa_key2, claims(), kid="k2")
    results = await asyncio.gather(*(auth.authenticate(bearer(token)) for _ in range(20)))
    assert all(isinstance(r, dict) for r in results), results  # every waiter saw the new key
    assert jwks.state.requests == 2
