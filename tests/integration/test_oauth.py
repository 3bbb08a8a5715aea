"""The OAuth 2.0 token client against a local token endpoint that behaves like a real one.

The endpoint rotates refresh tokens (a used one is dead), checks client authentication both ways,
and can be told to fail the ways real providers do: 5xx, 429, garbage bodies, slowness.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dfm_operator.oauth import (
    CODE_UNRECOGNISED,
    KNOWN_ERROR_CODES,
    MAX_RESPONSE_BYTES,
    OAuthError,
    TokenEndpointUnavailable,
    TokenRejected,
    TokenResponse,
    backoff_seconds,
    request_token,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CLIENT_ID = "dfm-operator"
CLIENT_SECRET = "cs-very-secret-0123456789"
ODD_CLIENT_ID = "id:with spaces&x"
ODD_CLIENT_SECRET = "s3cr%t:+/é"
INITIAL_REFRESH_TOKEN = "rt-initial-abcdef"
FAST_TIMEOUT = 0.3

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


# -- the token endpoint --------------------------------------------------------------------------


@dataclass
class Issued:
    request: dict[str, str]
    headers: dict[str, str]


@dataclass
class Provider:
    """A token endpoint's state: its clients, live refresh tokens, and how it should misbehave."""

    clients: dict[str, str] = field(
        default_factory=lambda: {CLIENT_ID: CLIENT_SECRET, ODD_CLIENT_ID: ODD_CLIENT_SECRET}
    )
    refresh_tokens: dict[str, str] = field(
        default_factory=lambda: {INITIAL_REFRESH_TOKEN: CLIENT_ID}
    )
    allowed_scopes: frozenset[str] = frozenset({"read", "write", "sync:run"})
    expires_in: Any = 3600
    mode: str = "normal"
    retry_after: str | None = None
    forced: tuple[int, Any] | None = None
    requests: list[Issued] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_token(self, kind: str) -> str:
        return f"{kind}-{next(self.counter):04d}-opaque"

    @property
    def last(self) -> Issued:
        return self.requests[-1]


def oauth_error(status: int, error: str, description: str | None = None) -> web.Response:
    body = {"error": error}
    if description is not None:
        body["error_description"] = description
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="token"'
    return web.json_response(body, status=status, headers=headers)


def authenticate(provider: Provider, request: web.Request, form: dict[str, str]) -> str | None:
    """The client id when the credentials are right (RFC 6749 §2.3.1, both methods)."""
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Basic "):
        decoded = base64.b64decode(authorization.removeprefix("Basic ")).decode("ascii")
        raw_id, _, raw_secret = decoded.partition(":")
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    return client_id if provider.clients.get(client_id) == secret else None


def make_handler(provider: Provider) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def token(request: web.Request) -> web.StreamResponse:
        form = {key: str(value) for key, value in (await request.post()).items()}
        provider.requests.append(Issued(form, dict(request.headers)))

        if provider.mode == "slow":
            await provider.release.wait()
        elif provider.mode == "slow_body":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(b'{"access_token": "at-')
            await provider.release.wait()
            return response
        elif provider.mode == "redirect":
            raise web.HTTPFound("/stolen")
        elif provider.forced is not None:
            status, forced_body = provider.forced
            headers = {"Retry-After": provider.retry_after} if provider.retry_after else {}
            if isinstance(forced_body, bytes):
                return web.Response(status=status, body=forced_body, headers=headers)
            return web.json_response(forced_body, status=status, headers=headers)

        client_id = authenticate(provider, request, form)
        if client_id is None:
            return oauth_error(401, "invalid_client", "Client authentication failed.")
        scopes = form.get("scope", "").split()
        if not set(scopes) <= provider.allowed_scopes:
            return oauth_error(400, "invalid_scope")

        grant = form.get("grant_type")
        body: dict[str, Any] = {"access_token": provider.new_token("at"), "token_type": "Bearer"}
        if grant == "refresh_token":
            presented = form.get("refresh_token", "")
            if provider.refresh_tokens.pop(presented, None) != client_id:
                # Providers echo the token back more often than they should.
                return oauth_error(400, "invalid_grant", f"Refresh token {presented} is invalid.")
            rotated = provider.new_token("rt")
            provider.refresh_tokens[rotated] = client_id
            body["refresh_token"] = rotated
        elif grant != "client_credentials":
            return oauth_error(400, "unsupported_grant_type")
        if provider.expires_in is not None:
            body["expires_in"] = provider.expires_in
        if scopes:
            body["scope"] = " ".join(scopes)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    return token


@dataclass
class Endpoint:
    provider: Provider
    url: str
    session: aiohttp.ClientSession

    async def token(self, **overrides: Any) -> TokenResponse:
        arguments: dict[str, Any] = {
            "token_url": self.url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "client_auth": "client_secret_post",
            "refresh_token": INITIAL_REFRESH_TOKEN,
            "scopes": ["read", "write"],
            "now": NOW,
        }
        arguments.update(overrides)
        return await request_token(self.session, **arguments)


@pytest.fixture
async def endpoint(aiohttp_server: AiohttpServer) -> AsyncIterator[Endpoint]:
    provider = Provider()
    stolen: list[web.Request] = []

    async def steal(request: web.Request) -> web.Response:
        stolen.append(request)
        return web.json_response({"access_token": "at-stolen", "token_type": "Bearer"})

    app = web.Application()
    app.router.add_post("/oauth/token", make_handler(provider))
    app.router.add_route("*", "/stolen", steal)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        yield Endpoint(provider, str(server.make_url("/oauth/token")), session)
    provider.release.set()
    assert not stolen, "credentials followed a redirect"


def assert_safe(exc: OAuthError, *secrets: str) -> None:
    shown = " ".join([str(exc), repr(exc), *map(str, exc.args)])
    for secret in secrets:
        assert secret not in shown


ALL_SECRETS = (CLIENT_SECRET, ODD_CLIENT_SECRET, INITIAL_REFRESH_TOKEN, "at-", "rt-0")


# -- grants --------------------------------------------------------------------------------------


async def test_refresh_grant_returns_the_token_and_the_rotated_refresh_token(
    endpoint: Endpoint,
) -> None:
    token = await endpoint.token()

    assert token.access_token.startswith("at-")
    assert token.token_type == "Bearer"
    assert token.expires_at == NOW + timedelta(seconds=3600)
    assert token.scope == "read write"
    assert token.refresh_token is not None
    assert token.refresh_token != INITIAL_REFRESH_TOKEN
    assert token.refresh_token in endpoint.provider.refresh_tokens

    sent = endpoint.provider.last
    assert sent.request == {
        "grant_type": "refresh_token",
        "refresh_token": INITIAL_REFRESH_TOKEN,
        "scope": "read write",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.headers["Accept"] == "application/json"
    assert "Authorization" not in sent.headers


async def test_the_rotated_refresh_token_works_and_the_old_one_is_rejected(
    endpoint: Endpoint,
) -> None:
    first = await endpoint.token()
    second = await endpoint.token(refresh_token=first.refresh_token)
    assert second.refresh_token not in (None, first.refresh_token)
    assert second.access_token != first.access_token

    with pytest.raises(TokenRejected) as caught:
        await endpoint.token(refresh_token=first.refresh_token)

    rejected = caught.value
    assert rejected.code == "invalid_grant"
    assert rejected.reason == "RefreshTokenRejected"
    assert rejected.status == 400
    assert "invalid_grant" in str(rejected)
    assert rejected.description == "Refresh token *** is invalid."
    assert first.refresh_token is not None
    assert_safe(rejected, first.refresh_token, *ALL_SECRETS)


async def test_client_credentials_grant_sends_no_refresh_token(endpoint: Endpoint) -> None:
    endpoint.provider.expires_in = "1800"

    token = await endpoint.token(refresh_token=None, scopes=[])

    assert token.refresh_token is None
    assert token.scope is None
    assert token.expires_at == NOW + timedelta(seconds=1800)
    assert endpoint.provider.last.request == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }


async def test_scopes_are_sent_space_joined(endpoint: Endpoint) -> None:
    token = await endpoint.token(refresh_token=None, scopes=["read", "sync:run", "write"])

    assert endpoint.provider.last.request["scope"] == "read sync:run write"
    assert token.scope == "read sync:run write"


async def test_no_expires_in_means_no_expiry(endpoint: Endpoint) -> None:
    endpoint.provider.expires_in = None

    token = await endpoint.token(refresh_token=None)

    assert token.expires_at is None


async def test_basic_auth_form_encodes_the_client_id_and_secret(endpoint: Endpoint) -> None:
    token = await endpoint.token(
        client_id=ODD_CLIENT_ID,
        client_secret=ODD_CLIENT_SECRET,
        client_auth="client_secret_basic",
        refresh_token=None,
    )

    assert token.access_token
    sent = endpoint.provider.last
    encoded = "id%3Awith+spaces%26x:s3cr%25t%3A%2B%2F%C3%A9"
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(encoded.encode()).decode()
    assert "client_id" not in sent.request
    assert "client_secret" not in sent.request


@pytest.mark.parametrize("client_auth", ["client_secret_basic", "client_secret_post"])
async def test_a_wrong_client_secret_is_client_rejected(
    endpoint: Endpoint, client_auth: str
) -> None:
    wrong = "cs-wrong-secret-9876543210"
    with pytest.raises(TokenRejected) as caught:
        await endpoint.token(client_secret=wrong, client_auth=client_auth)

    assert caught.value.code == "invalid_client"
    assert caught.value.reason == "ClientRejected"
    assert caught.value.status == 401
    assert_safe(caught.value, wrong, *ALL_SECRETS)
    assert INITIAL_REFRESH_TOKEN in endpoint.provider.refresh_tokens


async def test_an_unknown_scope_is_a_rejected_request(endpoint: Endpoint) -> None:
    with pytest.raises(TokenRejected) as caught:
        await endpoint.token(scopes=["admin"])

    assert caught.value.code == "invalid_scope"
    assert caught.value.reason == "TokenRequestRejected"


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (400, "invalid_grant", "RefreshTokenRejected"),
        (400, "invalid_client", "ClientRejected"),
        (401, "invalid_client", "ClientRejected"),
        (400, "unauthorized_client", "ClientRejected"),
        (400, "unsupported_grant_type", "TokenRequestRejected"),
        (400, "invalid_scope", "TokenRequestRejected"),
        (400, "invalid_request", "TokenRequestRejected"),
        (200, "bad_refresh_token", "TokenRequestRejected"),
    ],
)
async def test_oauth_errors_are_rejections_with_a_reason(
    endpoint: Endpoint, status: int, error: str, reason: str
) -> None:
    endpoint.provider.forced = (status, {"error": error})

    with pytest.raises(TokenRejected) as caught:
        await endpoint.token()

    # Only registered codes are repeated (in Events and conditions); others are free text.
    shown = error if error in KNOWN_ERROR_CODES else CODE_UNRECOGNISED
    assert (caught.value.code, caught.value.reason, caught.value.status) == (shown, reason, status)


async def test_provider_text_is_scrubbed_and_shortened(endpoint: Endpoint) -> None:
    endpoint.provider.forced = (
        400,
        {
            "error": f"bad_token_{INITIAL_REFRESH_TOKEN}",
            "error_description": f"client {CLIENT_SECRET}\nsaid " + "x" * 1000,
        },
    )

    with pytest.raises(TokenRejected) as caught:
        await endpoint.token()

    # A code that is not a registered one is never repeated: it may echo a token in any form.
    assert caught.value.code == CODE_UNRECOGNISED
    assert caught.value.description is not None
    assert caught.value.description.startswith("client *** said xxx")
    assert len(caught.value.description) == 200
    assert "\n" not in str(caught.value)
    assert_safe(caught.value, *ALL_SECRETS)


@pytest.mark.parametrize("echo", ["{rt}", "invalid_grant:{rt}", "{rt_half}", "rt%2F{rt}"])
async def test_a_token_echoed_in_the_error_code_is_never_repeated(
    endpoint: Endpoint, echo: str
) -> None:
    # Cut, URL-encoded or prefixed echoes escape a search for the exact secret; a closed set of
    # codes does not care.
    code = echo.format(rt=INITIAL_REFRESH_TOKEN, rt_half=INITIAL_REFRESH_TOKEN[:12])
    endpoint.provider.forced = (400, {"error": code})

    with pytest.raises(TokenRejected) as caught:
        await endpoint.token()

    assert caught.value.code == CODE_UNRECOGNISED
    assert INITIAL_REFRESH_TOKEN[:12] not in caught.value.code


async def test_a_bare_401_is_a_client_rejection(endpoint: Endpoint) -> None:
    endpoint.provider.forced = (401, b"Unauthorized")

    with pytest.raises(TokenRejected) as caught:
        await endpoint.token()

    assert caught.value.reason == "ClientRejected"


# -- transient failures --------------------------------------------------------------------------


async def test_a_server_error_is_transient(endpoint: Endpoint) -> None:
    endpoint.provider.forced = (500, b"<html>Internal Server Error</html>")

    with pytest.raises(TokenEndpointUnavailable) as caught:
        await endpoint.token()

    assert caught.value.code == "server_error"
    assert caught.value.status == 500
    assert caught.value.retry_after is None
    assert_safe(caught.value, *ALL_SECRETS)


async def test_temporarily_unavailable_is_transient(endpoint: Endpoint) -> None:
    endpoint.provider.forced = (503, {"error": "temporarily_unavailable"})
    endpoint.provider.retry_after = "30"

    with pytest.raises(TokenEndpointUnavailable) as caught:
        await endpoint.token()

    assert caught.value.code == "temporarily_unavailable"
    assert caught.value.retry_after == 30.0


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [
        ("7", 7.0),
        (format_datetime(NOW + timedelta(seconds=120), usegmt=True), 120.0),
        (format_datetime(NOW - timedelta(seconds=5), usegmt=True), 0.0),
        ("soon", None),
    ],
)
async def test_rate_limiting_carries_retry_after(
    endpoint: Endpoint, retry_after: str, seconds: float | None
) -> None:
    endpoint.provider.forced = (429, {"message": "slow down"})
    endpoint.provider.retry_after = retry_after

    with pytest.raises(TokenEndpointUnavailable) as caught:
        await endpoint.token()

    assert caught.value.code == "rate_limited"
    assert caught.value.status == 429
    assert caught.value.retry_after == seconds


@pytest.mark.parametrize(
    "body",
    [
        b"<html>maintenance</html>",
        b'{"token_type": "Bearer", "expires_in": 3600}',
        b'{"access_token": "", "token_type": "Bearer"}',
        b'["at-in-a-list"]',
        b'{"access_token": "at-x", "token_type": "Bearer", "expires_in": "an hour"}',
        b'{"access_token": "at-x", "token_type": "Bearer", "expires_in": -1}',
        b"\xff\xfe not utf-8",
    ],
)
async def test_a_malformed_success_is_an_invalid_response(endpoint: Endpoint, body: bytes) -> None:
    endpoint.provider.forced = (200, body)

    with pytest.raises(TokenEndpointUnavailable) as caught:
        await endpoint.token()

    assert caught.value.code == "invalid_response"
    assert_safe(caught.value, "at-x", *ALL_SECRETS)


async def test_an_oversized_body_is_not_read(endpoint: Endpoint) -> None:
    padding = "x" * (MAX_RESPONSE_BYTES + 1)
    endpoint.provider.forced = (200, {"access_token": "at-big", "padding": padding})

    with pytest.raises(TokenEndpointUnavailable) as caught:
        await endpoint.token()

    assert caught.value.code == "invalid_response"


async def test_a_redirect_is_not_followed(endpoint: Endpoint) -> None:
    endpoint.provider.mode = "redirect"

    with pytest.raises(TokenEndpointUnavailable) as caught:
        await endpoint.token()

    assert caught.value.status == 302


@pytest.mark.parametrize("mode", ["slow", "slow_body"])
async def test_a_slow_endpoint_times_out(endpoint: Endpoint, mode: str) -> None:
    endpoint.provider.mode = mode
    started = time.monotonic()

    with pytest.raises(TokenEndpointUnavailable) as caught:
        await endpoint.token(timeout_seconds=FAST_TIMEOUT)

    # The 0.3 s asked for, not the 10 s default (the endpoint never answers): a bound a loaded
    # machine does not reach by accident.
    assert time.monotonic() - started < 3.0
    assert caught.value.code == "timeout"
    assert "0.3s" in str(caught.value)


async def test_a_closed_port_is_a_network_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TokenEndpointUnavailable) as caught:
            await request_token(
                session,
                token_url=f"http://127.0.0.1:{port}/oauth/token",
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                client_auth="client_secret_basic",
                refresh_token=INITIAL_REFRESH_TOKEN,
                scopes=[],
                now=NOW,
                timeout_seconds=FAST_TIMEOUT,
            )

    assert caught.value.code == "network_error"
    assert caught.value.status is None
    assert_safe(caught.value, *ALL_SECRETS)


async def test_an_unknown_client_auth_is_a_programming_error(endpoint: Endpoint) -> None:
    with pytest.raises(ValueError, match="private_key_jwt"):
        await endpoint.token(client_auth="private_key_jwt")
    assert not endpoint.provider.requests


# -- values --------------------------------------------------------------------------------------


def test_token_response_repr_hides_the_tokens() -> None:
    token = TokenResponse("at-secret", "Bearer", NOW, "rt-secret", "read")

    assert "at-secret" not in repr(token)
    assert "rt-secret" not in repr(token)
    assert "Bearer" in repr(token)


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_seconds(n) for n in range(1, 10)] == [
        10.0,
        20.0,
        40.0,
        80.0,
        160.0,
        320.0,
        640.0,
        900.0,
        900.0,
    ]
    assert backoff_seconds(0) == 10.0
    assert backoff_seconds(10_000) == 900.0
    assert [backoff_seconds(n, base=1.5, cap=5.0) for n in range(1, 5)] == [1.5, 3.0, 5.0, 5.0]
