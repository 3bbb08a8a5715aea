"""The receiver's aiohttp application: one route per source, health, metrics.

Per request: content encoding -> unverified-request budget (or, when it is empty, the verification
lane) -> size limit, body budget and body deadline -> bearer token (when configured) -> signature
-> the source's rate limit -> dedupe and durable store -> 2xx. The 2xx is sent only after the
event's batch has committed. A response given before the body was read closes the connection: a
refused body is never drained (nor decompressed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import math
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook_server import wire
from webhook_server.admission import Admission, BodyBudgetSpent, BodyReader, ByteBudget
from webhook_server.auth import JwtAuthenticator
from webhook_server.bodies import read_limited
from webhook_server.config import Provider, ReceiverConfig, ServerConfig, SourceConfig
from webhook_server.forward import Forwarder
from webhook_server.logs import AccessLog, get_logger
from webhook_server.metrics import ReceiverMetrics
from webhook_server.ratelimit import TokenBucket
from webhook_server.secrets import SourceSecrets
from webhook_server.store import (
    CommitTimeout,
    Event,
    EventRefused,
    ReplayRefused,
    Store,
    StoreOverloaded,
    StoreUnavailable,
)
from webhook_server.tracing import Tracing
from webhook_server.verify import PROVIDERS, VERIFIERS, Reason, Rejected, Verified, Verifier
from webhook_server.workers import PEER_CHECK_SECONDS, Peers, Worker

log = get_logger("dfm.receiver")

PROBLEM_JSON = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-Id"
ACCESS_LOG_FLUSH_SECONDS = 1.0
# Request ids: a random per-process prefix and a counter (unique, and cheaper than uuid4).
_REQUEST_PREFIX = secrets.token_hex(6)
_REQUEST_COUNTER = itertools.count(1)


def _new_request_prefix() -> None:
    # A forked worker (webhook_server.workers) would otherwise repeat its siblings' ids.
    global _REQUEST_PREFIX, _REQUEST_COUNTER
    _REQUEST_PREFIX = secrets.token_hex(6)
    _REQUEST_COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_new_request_prefix)
# The JWKS is not refetched sooner than this, so an earlier retry would meet the same outage.
AUTH_RETRY_AFTER = str(math.ceil(JwtAuthenticator.REFETCH_MIN_INTERVAL_SECONDS))

# Never stored: credentials and signatures. Matched by name and by pattern (with "_" read as
# "-"), so a provider's signature or key header we do not know by name is still dropped. A "key"
# word counts (x-api-key, x-webhook-key) except in idempotency-key: that one names a request (the
# jwt provider's event id), grants nothing, and is what a reader matches retries on, so it is kept.
_SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "set-cookie"})
_SENSITIVE_PATTERN = re.compile(
    r"signature|hmac|secret|token|auth|passw|credential|session|jwt|cookie|apikey|accesskey"
    r"|(?<!idempotency)(?:^|-)key(?:-|$)"
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# An event id or type the store can always index and a reader can always print: bounded, with no
# control characters and no lone surrogates (which PostgreSQL refuses). A provider's are far
# shorter; a longer or stranger one is refused with 400 rather than failing its whole batch.
MAX_EVENT_ID_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# Providers send identity bodies. Anything else is refused (415) before a byte of the body is
# read: decompressing is work an unauthenticated client could multiply a thousandfold.
_IDENTITY = frozenset({"", "identity"})
# The metric label of 404s and of 405s off every source's path: a fixed word, never the path.
UNROUTED = "unrouted"
_UNROUTED_OUTCOMES = {404: "not_found", 405: "method_not_allowed"}
# What reading the body raises when the client goes away or the body ends early.
_BODY_CUT = (ConnectionError, RequestPayloadError, asyncio.IncompleteReadError)


class Problem(Exception):
    """An error answered as application/problem+json with a generic text."""

    def __init__(
        self,
        status: int,
        detail: str = "",
        *,
        outcome: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.outcome = outcome
        self.headers = dict(headers or {})


@dataclass
class SourceRuntime:
    config: SourceConfig
    verify: Verifier
    # Authentic deliveries (limits.requestsPerSecond/burst).
    bucket: TokenBucket
    # Requests not (yet) verified: taken before the body is read, given back once verified.
    unverified: TokenBucket
    secrets: SourceSecrets
    authenticator: JwtAuthenticator | None
    metrics: ReceiverMetrics
    # Headers never stored for this source besides the usual ones (its signature, timestamp).
    extra_sensitive: set[str] = field(default_factory=set)
    # Spans (webhook_server.tracing), when tracing is on.
    tracing: Tracing | None = None
    _outcomes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Computed once (SourceConfig.key formats it on every call).
        self.key = self.config.key
        # Labelled children resolved once: labels() costs more than the increment itself.
        self.latency = self.metrics.latency.labels(self.key)
        self.stored_headers = HeaderFilter(self.extra_sensitive)

    def count(self, outcome: str) -> None:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.metrics.requests.labels(self.key, outcome)
        child.inc()


CONFIG = web.AppKey("config", ReceiverConfig)
METRICS = web.AppKey("metrics", ReceiverMetrics)
STORE = web.AppKey("store", Store)
# Set only when a source forwards.
FORWARDER = web.AppKey("forwarder", Forwarder)
SOURCES = web.AppKey("sources", dict[str, SourceRuntime])
# The same runtimes by path: a 405 (the router matched no route) is still counted to its source.
SOURCES_BY_PATH = web.AppKey("sources_by_path", dict[str, SourceRuntime])
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
ACCESS_LOG = web.AppKey("access_log", AccessLog)
ADMISSION = web.AppKey("admission", Admission)
REQUEST_ID = web.RequestKey("request_id", str)
OUTCOME = web.RequestKey("outcome", str)
# Set only when tracing is on.
TRACING = web.AppKey("tracing", Tracing)
PEERS = web.AppKey("peers", Peers)


@dataclass
class Draining:
    """Set by webhook_server.server for the shutdown delay: every answer then closes its
    connection (``Connection: close``), so that a sender on a keep-alive connection opens a new
    one, which Kubernetes routes to a pod that is not stopping."""

    active: bool = False


DRAINING = web.AppKey("draining", Draining)
EVENT_ID = web.RequestKey("event_id", str)
# Set by a handler that counts and logs its request itself (webhook_server.events_api).
LOGGED = web.RequestKey("logged", bool)


@functools.lru_cache(maxsize=1024)
def _sensitive(lower_name: str) -> bool:
    name = lower_name.replace("_", "-")
    return name in _SENSITIVE_HEADERS or bool(_SENSITIVE_PATTERN.search(name))


def stored_headers(headers: Mapping[str, str], extra_sensitive: set[str]) -> dict[str, str]:
    """The headers of a request that are stored with its event (lower-case names)."""
    return HeaderFilter(extra_sensitive)(headers)


class HeaderFilter:
    """``stored_headers`` for one source, deciding once per header name as sent: senders repeat
    the same names, so each request costs a dict lookup per header. At most ``MAX_NAMES`` names
    of at most ``MAX_NAME_CHARS`` are remembered (about 200 KiB per source at worst); a client
    choosing new or long names gets them decided every time."""

    MAX_NAMES = 1024
    MAX_NAME_CHARS = 64

    def __init__(self, extra_sensitive: Collection[str]) -> None:
        self._extra = frozenset(extra_sensitive)
        # The name as sent -> its lower-case name when kept, "" when dropped.
        self._decided: dict[str, str] = {}

    def __call__(self, headers: Mapping[str, str]) -> dict[str, str]:
        decided = self._decided
        kept: dict[str, str] = {}
        for name, value in headers.items():
            lower = decided.get(name)
            if lower is None:
                lower = self._decide(name)
            if lower:
                kept[lower] = value if value.isascii() else _printable(value)
        return kept

    def _decide(self, name: str) -> str:
        lower = name.lower()
        keep = "" if lower in self._extra or _sensitive(lower) else lower
        if len(self._decided) < self.MAX_NAMES and len(name) <= self.MAX_NAME_CHARS:
            self._decided[name] = keep
        return keep


def _printable(value: str) -> str:
    """A header value as valid UTF-8 text: bytes that were not UTF-8 (decoded by aiohttp as lone
    surrogates) become U+FFFD, so jsonb accepts it and the request is stored rather than failed."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _check_event_field(value: str | None, what: str) -> None:
    if value is not None and (len(value) > MAX_EVENT_ID_CHARS or _CONTROL.search(value)):
        raise Problem(
            400,
            f"{what} must be at most {MAX_EVENT_ID_CHARS} characters, without control characters",
            outcome="malformed",
        )


def json_response(
    data: Mapping[str, Any],
    status: int = 200,
    *,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """``data`` as a UTF-8 JSON body, encoded by orjson (aiohttp's json_response goes through
    ``json.dumps`` and a text body: about four times the cost)."""
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type=content_type,
        charset="utf-8",
        headers=headers,
    )


def problem_body(status: int, request_id: str, detail: str = "") -> bytes:
    problem: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "requestId": request_id,
    }
    if detail:
        problem["detail"] = detail
    return orjson.dumps(problem)


def problem_response(
    status: int, request_id: str, detail: str = "", headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=problem_body(status, request_id, detail),
        status=status,
        content_type=PROBLEM_JSON,
        charset="utf-8",
        headers=headers,
    )


# -- middleware ----------------------------------------------------------------------------------


@web.middleware
async def request_context(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id, problem+json for every error, access log, metrics."""
    started = time.perf_counter()
    request_id = request[REQUEST_ID] = request_id_of(request.headers)
    runtime = _runtime_for(request)
    outcome = "ok"
    try:
        response = await handler(request)
        outcome = request.get(OUTCOME, "ok")
    except Problem as problem:
        outcome = problem.outcome
        response = problem_response(problem.status, request_id, problem.detail, problem.headers)
    except web.HTTPException as exc:
        outcome = _UNROUTED_OUTCOMES.get(exc.status, "http_error")
        response = problem_response(exc.status, request_id, headers=_allow_header(exc))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        outcome = "error"
        # The type only: an exception's text can quote what it choked on.
        log.error("unhandled error", request_id=request_id, error=type(exc).__name__)
        response = problem_response(500, request_id)
    if not request.content.is_eof() or request.app[DRAINING].active:
        # Answered before the body was read (refused): close rather than drain it. Stopping:
        # close, so the sender's next request goes to another pod.
        response.force_close()
    response.headers[REQUEST_ID_HEADER] = request_id
    if request.get(LOGGED):
        return response
    if runtime is None and response.status in _UNROUTED_OUTCOMES:
        runtime = request.app[SOURCES_BY_PATH].get(request.path)
        if runtime is None:
            _count_unrouted(request, request_id, response.status, outcome, started)
            return response
    if runtime is not None:
        _apply_cors(request, runtime, response)
        elapsed = time.perf_counter() - started
        runtime.count(outcome)
        runtime.latency.observe(elapsed)
        request.app[ACCESS_LOG].request(
            request_id,
            runtime.key,
            request.method,
            response.status,
            outcome,
            request.get(EVENT_ID),
            round(elapsed * 1000, 2),
        )
    return response


@web.middleware
async def trace_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The server span of each request to a source (outside ``request_context``, so that its
    access log line carries the span's ids); installed only when tracing is on."""
    runtime = _runtime_for(request)
    if runtime is None:
        return await handler(request)
    tracing = request.app[TRACING]
    with tracing.server_span(
        request.method,
        runtime.config.route,
        request.headers,
        scheme=request.scheme,
        remote=request.remote,
        source=runtime.config.key,
    ) as span:
        response = await handler(request)
        tracing.answered(
            span,
            response.status,
            outcome=request.get(OUTCOME),
            request_id=request.get(REQUEST_ID, ""),
        )
        return response


def _count_unrouted(
    request: web.Request, request_id: str, status: int, outcome: str, started: float
) -> None:
    """A 404 or 405 off every source's path: counted and logged under a fixed label, with
    neither the path nor anything else the client chose."""
    request.app[METRICS].requests.labels(UNROUTED, outcome).inc()
    request.app[ACCESS_LOG].request(
        request_id,
        UNROUTED,
        request.method if request.method in hdrs.METH_ALL else "OTHER",
        status,
        outcome,
        None,
        round((time.perf_counter() - started) * 1000, 2),
    )


def new_request_id() -> str:
    return f"{_REQUEST_PREFIX}{next(_REQUEST_COUNTER):010x}"


def request_id_of(headers: Mapping[str, str]) -> str:
    """The client's ``X-Request-Id`` when it is a safe one, else a new id."""
    incoming = headers.get(REQUEST_ID_HEADER, "")
    return incoming if incoming and _REQUEST_ID.match(incoming) else new_request_id()


def _runtime_for(request: web.Request) -> SourceRuntime | None:
    resource = request.match_info.route.resource
    return None if resource is None else request.app[SOURCES].get(resource.canonical)


def _allow_header(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def cors_headers(runtime: SourceRuntime, headers: Mapping[str, str]) -> dict[str, str]:
    """What a response to a request with these headers adds for the source's CORS origins."""
    allowed = runtime.config.cors.allowed_origins
    if not allowed:
        return {}
    origin = headers.get("Origin")
    if not origin or origin not in allowed:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
        "Access-Control-Expose-Headers": REQUEST_ID_HEADER,
    }


def _apply_cors(request: web.Request, runtime: SourceRuntime, response: web.StreamResponse) -> None:
    response.headers.update(cors_headers(runtime, request.headers))


# -- handlers ------------------------------------------------------------------------------------


async def _read_body(
    request: web.Request,
    limit: int,
    deadline_seconds: float,
    budget: ByteBudget,
    too_large: Problem | None = None,
) -> bytes:
    """The whole body, at most ``limit`` bytes (413, or ``too_large``), within
    ``deadline_seconds`` of the end of the headers (408). A client that goes away, or a body that
    ends early, is its own outcome.

    For a body still arriving (one that came whole with its head is ``_read_unverified``'s): what
    it has received is held in ``budget`` until it is read; past the budget, 503 (see
    ``webhook_server.admission``).
    """
    content = request.content
    body: bytes | None
    try:
        reader = BodyReader(budget, content)
        try:
            async with asyncio.timeout(deadline_seconds):
                body = await read_limited(
                    content, request.content_length, limit, on_chunk=reader.take
                )
        finally:
            reader.release()
    except TimeoutError:
        raise Problem(
            408, "the request body did not arrive in time", outcome="body_timeout"
        ) from None
    except BodyBudgetSpent:
        raise Problem(
            503,
            "too many request bodies in progress, retry later",
            outcome="body_budget",
            headers={"Retry-After": "1"},
        ) from None
    except _BODY_CUT:
        raise Problem(400, "the request body ended early", outcome="disconnected") from None
    if body is None:
        raise too_large or Problem(413, "request body too large", outcome="too_large")
    return body


async def _read_unverified(
    request: web.Request, runtime: SourceRuntime, token: bool, retry_after: int
) -> bytes:
    """The body of a request not verified yet.

    With a token of the source's unverified budget: up to ``limits.maxBodyBytes``. Without one
    (a flood spent it), through the verification lane: a body of at most
    ``server.verificationLane.maxBodyBytes`` is still read and verified — at once when it came
    with its head, else in one of the lane's slots (a few per client address) — so that signed
    deliveries get through an unsigned flood; anything else is 429, its body unread.
    """
    server = request.app[CONFIG].server
    admission = request.app[ADMISSION]
    if request.content.is_eof():
        # It all came with its head (the usual webhook), so it is in memory already: taken as it
        # is, with no timer, budget, lane slot or await, under the one-pass route's limits.
        body = request.content.read_nowait(-1)
        check_whole_body(runtime, admission, len(body), token, retry_after)
        return body
    limit = runtime.config.limits.max_body_bytes
    if token:
        return await _read_body(request, limit, server.body_timeout_seconds, admission.bodies)
    refused = _unverified_refused(retry_after)
    limit = min(limit, admission.lane_max_body_bytes)
    declared = request.content_length
    if declared is not None and declared > limit:
        raise refused
    client = admission.clients.of(request.remote, request.headers)
    if not admission.lane.enter(client):
        raise refused
    try:
        return await _read_body(
            request, limit, server.body_timeout_seconds, admission.bodies, too_large=refused
        )
    finally:
        admission.lane.leave(client)


def _unverified_refused(retry_after: int) -> Problem:
    return Problem(
        429,
        "too many unverified requests",
        outcome="unverified_rate_limited",
        headers={"Retry-After": str(retry_after)},
    )


def check_whole_body(
    runtime: SourceRuntime, admission: Admission, size: int, token: bool, retry_after: int
) -> None:
    """``_read_unverified``'s limits for a body that came whole with its head: up to
    ``limits.maxBodyBytes`` with a token of the unverified budget (else 413), up to the
    verification lane's ``maxBodyBytes`` without one (else 429)."""
    limit = runtime.config.limits.max_body_bytes
    if token:
        if size > limit:
            raise Problem(413, "request body too large", outcome="too_large")
    elif size > min(limit, admission.lane_max_body_bytes):
        raise _unverified_refused(retry_after)


def _reject(runtime: SourceRuntime, metrics: ReceiverMetrics, rejected: Rejected) -> Problem:
    if rejected.reason is Reason.UNAVAILABLE:
        # An outage of ours (the JWKS endpoint), not a bad request: the sender should retry, and
        # the signature-failure metric must not alert on forgeries that are not there.
        return Problem(
            503,
            rejected.detail or "verification unavailable, retry later",
            outcome="auth_unavailable",
            headers={"Retry-After": AUTH_RETRY_AFTER},
        )
    metrics.signature_failures.labels(runtime.config.key, rejected.reason.value).inc()
    if rejected.reason is Reason.MALFORMED:
        return Problem(400, rejected.detail or "malformed request", outcome="malformed")
    return Problem(401, rejected.detail or "verification failed", outcome="unauthorized")


def check_encoding(headers: Mapping[str, str]) -> None:
    """415 for a compressed body, before a byte of it is read."""
    encoding = headers.get(hdrs.CONTENT_ENCODING)
    if encoding is not None and encoding.strip().lower() not in _IDENTITY:
        raise Problem(
            415,
            "Content-Encoding is not accepted: send the body uncompressed",
            outcome="unsupported_encoding",
            headers={"Accept-Encoding": "identity"},
        )


def admit(runtime: SourceRuntime, token: bool, result: Verified) -> None:
    """An authentic delivery: the unverified budget gets its token back, the source's own budget
    pays (429 when it is spent)."""
    if token:
        runtime.unverified.give_back()
    allowed, retry_after = runtime.bucket.take()
    if not allowed:
        raise Problem(
            429,
            "rate limit exceeded",
            outcome="rate_limited",
            headers={"Retry-After": str(retry_after)},
        )


def event_of(
    runtime: SourceRuntime,
    result: Verified,
    claims: dict[str, Any] | None,
    body: bytes,
    headers: Mapping[str, str],
    request_id: str,
    now: float,
) -> Event:
    """The event a verified delivery stores (400 when its id, type or subject cannot be)."""
    _check_event_field(result.event_id, "the event id")
    _check_event_field(result.event_type, "the event type")
    subject = _subject(runtime.config, claims)
    return Event(
        source=runtime.key,
        # Without a provider id, identical bodies are the same event.
        event_id=result.event_id or "sha256:" + hashlib.sha256(body).hexdigest(),
        event_type=result.event_type,
        received_at=datetime.fromtimestamp(now, UTC),
        request_id=request_id,
        payload=body,
        headers=runtime.stored_headers(headers),
        subject=subject,
        event_count=result.event_count,
        replay_key=result.replay_key,
        replay_until=(
            None
            if result.replay_until is None
            else datetime.fromtimestamp(result.replay_until, UTC)
        ),
    )


# What the store may fail a delivery with: answered as store_problem says, never 2xx.
NOT_COMMITTED = (StoreUnavailable, EventRefused, ReplayRefused)


def store_problem(runtime: SourceRuntime, exc: Exception) -> Problem:
    """What a delivery the store did not commit is answered."""
    if isinstance(exc, EventRefused):
        return Problem(400, "the event cannot be stored", outcome="unstorable")
    if isinstance(exc, ReplayRefused):
        # A signed one-time value (Mailgun's token) already used for another event: a replay.
        runtime.metrics.signature_failures.labels(runtime.key, Reason.REPLAYED.value).inc()
        return Problem(401, "this signature was already used", outcome="replayed")
    if isinstance(exc, StoreOverloaded):
        detail, outcome = "event store overloaded, retry later", "store_overloaded"
    elif isinstance(exc, CommitTimeout):
        detail, outcome = "event not committed in time, retry later", "commit_timeout"
    elif isinstance(exc, StoreUnavailable):
        detail, outcome = "event store unavailable, retry later", "store_unavailable"
    else:
        raise exc
    return Problem(503, detail, outcome=outcome, headers={"Retry-After": "5"})


def stored_answer(
    runtime: SourceRuntime, event: Event, result: Verified, is_new: bool, request_id: str
) -> tuple[str, bytes]:
    """The outcome and JSON body of the 200 for a committed (or duplicate) event."""
    if not is_new:
        runtime.metrics.duplicates.labels(runtime.key).inc()
    outcome = "stored" if is_new else "duplicate"
    answer: dict[str, Any] = {
        "status": outcome,
        "eventId": event.event_id,
        "requestId": request_id,
    }
    if result.event_count is not None:
        answer["eventCount"] = result.event_count
    return outcome, orjson.dumps(answer)


async def receive(request: web.Request) -> web.Response:
    app = request.app
    runtime = _runtime_for(request)
    assert runtime is not None
    source = runtime.config

    check_encoding(request.headers)
    token, retry_after = runtime.unverified.take()
    body = await _read_unverified(request, runtime, token, retry_after)

    now = app[CLOCK]()
    if runtime.tracing is None:
        claims, result = await _verify(request, runtime, body, now)
    else:
        claims, result = await runtime.tracing.traced(
            "dfm.verify",
            {"dfm.source": source.key, "dfm.provider": source.provider.value},
            _verify(request, runtime, body, now),
        )
    admit(runtime, token, result)
    if result.challenge is not None:
        request[OUTCOME] = "challenge"
        return json_response({"challenge": result.challenge})

    request_id = request[REQUEST_ID]
    event = event_of(runtime, result, claims, body, request.headers, request_id, now)
    request[EVENT_ID] = event.event_id
    # No per-request timer: the store's sweeper bounds the wait (commitTimeoutSeconds).
    try:
        is_new = await app[STORE].submit(event)
    except NOT_COMMITTED as exc:
        raise store_problem(runtime, exc) from exc
    request[OUTCOME], answer = stored_answer(runtime, event, result, is_new, request_id)
    return web.Response(body=answer, content_type="application/json", charset="utf-8")


def verify_signature(
    runtime: SourceRuntime, headers: Mapping[str, str], body: bytes, now: float, query: str
) -> Verified:
    """The signature's verdict; a rejection is raised as its Problem."""
    result = runtime.verify(
        headers, body, runtime.secrets.valid_at(now), runtime.config.verification, now, query
    )
    if isinstance(result, Rejected):
        raise _reject(runtime, runtime.metrics, result)
    assert isinstance(result, Verified)
    return result


async def _verify(
    request: web.Request, runtime: SourceRuntime, body: bytes, now: float
) -> tuple[dict[str, Any] | None, Verified]:
    """The bearer token's claims (when the source asks for one) and the signature's verdict;
    a rejection is raised as its Problem."""
    claims: dict[str, Any] | None = None
    if runtime.authenticator is not None:
        authenticated = await runtime.authenticator.authenticate(request.headers)
        if isinstance(authenticated, Rejected):
            raise _reject(runtime, runtime.metrics, authenticated)
        claims = authenticated
    # The query string as sent (percent-escapes kept): Twilio and Mandrill sign the URL.
    query = request.raw_path.partition("?")[2]
    return claims, verify_signature(runtime, request.headers, body, now, query)


def _subject(source: SourceConfig, claims: dict[str, Any] | None) -> str:
    """The dedup scope of a jwt source's event: its token's subject ("" without one)."""
    if source.provider is not Provider.JWT or claims is None:
        return ""
    subject = claims.get("sub")
    if not isinstance(subject, str):
        return ""
    _check_event_field(subject, "the token subject")
    return subject


async def preflight(request: web.Request) -> web.Response:
    runtime = _runtime_for(request)
    assert runtime is not None
    origin = request.headers.get("Origin")
    if not origin or origin not in runtime.config.cors.allowed_origins:
        raise Problem(403, "origin not allowed", outcome="cors_refused")
    request[OUTCOME] = "preflight"
    headers = {
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Max-Age": "600",
    }
    requested = request.headers.get("Access-Control-Request-Headers")
    if requested:
        headers["Access-Control-Allow-Headers"] = requested
    return web.Response(status=204, headers=headers)


async def probe(request: web.Request) -> web.Response:
    """``HEAD`` on a source's path, for providers that check a URL exists before they use it
    (Mandrill). Answers 200 with no body and reads nothing."""
    request[OUTCOME] = "probe"
    return web.Response(status=200)


def _unavailable(detail: str, **members: Any) -> web.Response:
    """A probe's 503, as problem+json (``members``: its extension members)."""
    problem = {"type": "about:blank", "title": "Service Unavailable", "status": 503}
    return json_response(
        {**problem, "detail": detail, **members}, status=503, content_type=PROBLEM_JSON
    )


async def livez(request: web.Request) -> web.Response:
    peers = request.app.get(PEERS)
    stuck = await peers.stuck() if peers is not None else []
    if not stuck:
        return json_response({"status": "ok"})
    # A probe reaches one worker, chosen by the kernel: each answers for all of the pod's, so a
    # worker whose event loop is stuck fails the pod's liveness whichever worker is asked.
    return _unavailable(f"workers not answering: {', '.join(map(str, stuck))}")


async def readiness_checks(app: web.Application, seconds: float = 2.0) -> dict[str, bool]:
    """This process's readiness checks: ``database`` and ``secrets`` decide, ``auth`` and
    ``forwardSigning`` inform. ``seconds``: how long the database may take to answer."""
    store_ok = await app[STORE].check(seconds)
    sources = app[SOURCES].values()
    checks = {
        "database": store_ok,
        "secrets": all(rt.secrets.loaded for rt in sources),
        "auth": all(rt.authenticator is None or rt.authenticator.ready for rt in sources),
    }
    forwarder = app.get(FORWARDER)
    if forwarder is not None:
        # Informational, like auth: ingest never waits for forwarding. Without a usable signing
        # secret nothing is sent; events are still stored and their deliveries wait.
        checks["forwardSigning"] = all(t.secrets.loaded for t in forwarder.targets.values())
    return checks


_DECIDING = ("database", "secrets")


async def readyz(request: web.Request) -> web.Response:
    peers = request.app.get(PEERS)
    if peers is None:
        checks = await readiness_checks(request.app)
        failing = [name for name in _DECIDING if not checks[name]]
        members: dict[str, Any] = {"checks": checks}
    else:
        # A probe reaches one worker, chosen by the kernel, and each worker has its own pool and
        # secrets: it answers for all of the pod's, so that the pod leaves the endpoints when one
        # worker cannot store (the kernel would still hand that worker its share of requests).
        checks, others = await asyncio.gather(readiness_checks(request.app), peers.readiness())
        workers = {peers.worker.index: checks, **others}
        failing = []
        for index, worker_checks in sorted(workers.items()):
            if worker_checks is None:
                failing.append(f"worker {index} not answering")
                continue
            failing += [
                f"{name} (worker {index})" for name in _DECIDING if not worker_checks.get(name)
            ]
        members = {"checks": checks, "workers": {str(i): c for i, c in sorted(workers.items())}}
    if not failing:
        return json_response({"status": "ok", **members})
    # Like every other non-2xx answer: problem+json (its checks as extension members).
    return _unavailable(f"not ready: {', '.join(failing)}", **members)


def refresh_gauges(app: web.Application) -> None:
    """Set the gauges read from the store and the forwarder, before their series are read."""
    metrics = app[METRICS]
    store = app[STORE]
    size, in_use = store.pool_stats()
    metrics.pool_size.set(size)
    metrics.pool_in_use.set(in_use)
    events, held_bytes = store.held()
    metrics.store_queued_events.set(events)
    metrics.store_queued_bytes.set(held_bytes)
    forwarder = app.get(FORWARDER)
    if forwarder is not None:
        forwarder.refresh_gauges()


async def metrics_view(request: web.Request) -> web.Response:
    peers = request.app.get(PEERS)
    if peers is not None:
        body = await peers.exposition()
    else:
        refresh_gauges(request.app)
        body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- the one-pass route --------------------------------------------------------------------------

# The source paths the one-pass route matches byte for byte: ones aiohttp's router would match
# only after decoding or normalising (percent-escapes, dot segments, other characters) are left
# to the router.
_LITERAL_PATH = re.compile(r"^(?:/(?!\.{1,2}(?:/|$))[A-Za-z0-9._~-]+)+/?$")
# Called once per request with its status, body, content type and headers.
Reply = Callable[[int, bytes, bytes, list[tuple[str, str]]], None]


class OnePass:
    """A source's usual delivery in one pass, without aiohttp's request, middleware or response.

    The receiver's protocol (``webhook_server.server``) hands it a ``POST`` to a source's path
    whose head and whole body came in one read. It runs what ``request_context`` and ``receive``
    run for that request, in the same order and with the same answers, metrics and access-log
    line (request id, Content-Encoding, the unverified budget and the body limits, signature,
    rate limit, event, store), and is answered by the store's writer right after the commit: no
    task, no request and no response object per delivery. Everything else goes through aiohttp as
    before: sources with a bearer token (``spec.auth``: the JWKS may need a fetch), a receiver
    with tracing on, other methods and paths, bodies still arriving, chunked bodies, HTTP/1.0,
    ``Expect``.
    """

    def __init__(self, app: web.Application) -> None:
        self.routes: dict[str, SourceRuntime] = {}
        if TRACING not in app:
            self.routes = {
                runtime.config.route: runtime
                for runtime in app[SOURCES].values()
                if runtime.authenticator is None and _LITERAL_PATH.match(runtime.config.route)
            }
        self.store = app[STORE]
        self.clock = app[CLOCK]
        self.admission = app[ADMISSION]
        self.access_log = app[ACCESS_LOG]
        self.draining = app[DRAINING]

    def route(self, target: str) -> tuple[SourceRuntime, str] | None:
        """The source a request target (``path[?query]``, as sent) is for, and its query."""
        path, _, query = target.partition("?")
        runtime = self.routes.get(path)
        return None if runtime is None else (runtime, query)

    def handle(
        self,
        runtime: SourceRuntime,
        headers: Mapping[str, str],
        body: bytes,
        query: str,
        reply: Reply,
    ) -> None:
        started = time.perf_counter()
        request_id = request_id_of(headers)
        answer = functools.partial(self._answer, runtime, headers, request_id, started, reply)
        event: Event | None = None
        try:
            check_encoding(headers)
            token, retry_after = runtime.unverified.take()
            check_whole_body(runtime, self.admission, len(body), token, retry_after)
            now = self.clock()
            result = verify_signature(runtime, headers, body, now, query)
            admit(runtime, token, result)
            if result.challenge is None:
                event = event_of(runtime, result, None, body, headers, request_id, now)
                stored = event
                self.store.enqueue(
                    event,
                    lambda future: self._committed(
                        answer, runtime, stored, result, request_id, future
                    ),
                )
        except Problem as problem:
            _refuse(answer, problem, request_id, _event_id(event))
            return
        except NOT_COMMITTED as exc:
            _refuse(answer, store_problem(runtime, exc), request_id, _event_id(event))
            return
        except Exception as exc:
            _fail(answer, exc, request_id, _event_id(event))
            return
        if event is None:
            answer(200, orjson.dumps({"challenge": result.challenge}), "challenge")

    def _committed(
        self,
        answer: functools.partial[None],
        runtime: SourceRuntime,
        event: Event,
        result: Verified,
        request_id: str,
        future: asyncio.Future[bool],
    ) -> None:
        if future.cancelled():
            exc: BaseException | None = StoreUnavailable("event not committed")
        else:
            exc = future.exception()
        try:
            if exc is None:
                outcome, body = stored_answer(runtime, event, result, future.result(), request_id)
                answer(200, body, outcome, event_id=event.event_id)
            elif isinstance(exc, NOT_COMMITTED):
                _refuse(answer, store_problem(runtime, exc), request_id, event.event_id)
            else:
                _fail(answer, exc, request_id, event.event_id)
        except Exception as error:
            # Answered all the same (``reply`` answers a request once): never left hanging.
            _fail(answer, error, request_id, event.event_id)

    def _answer(
        self,
        runtime: SourceRuntime,
        request_headers: Mapping[str, str],
        request_id: str,
        started: float,
        reply: Reply,
        status: int,
        body: bytes,
        outcome: str,
        headers: Mapping[str, str] | None = None,
        content_type: bytes = wire.JSON,
        *,
        event_id: str | None = None,
    ) -> None:
        """Count and log the request as ``request_context`` does, then answer it (answered even
        when counting or logging fails: a stdout that refuses writes must not hang a client)."""
        elapsed = time.perf_counter() - started
        try:
            runtime.count(outcome)
            runtime.latency.observe(elapsed)
            self.access_log.request(
                request_id, runtime.key, "POST", status, outcome, event_id, round(elapsed * 1e3, 2)
            )
        except Exception as exc:
            log.error(
                "request not counted or logged", request_id=request_id, error=type(exc).__name__
            )
        out = [(REQUEST_ID_HEADER, request_id)]
        if headers:
            out.extend(headers.items())
        out.extend(cors_headers(runtime, request_headers).items())
        reply(status, body, content_type, out)


def _event_id(event: Event | None) -> str | None:
    return None if event is None else event.event_id


def _refuse(
    answer: functools.partial[None], problem: Problem, request_id: str, event_id: str | None = None
) -> None:
    body = problem_body(problem.status, request_id, problem.detail)
    answer(
        problem.status, body, problem.outcome, problem.headers, wire.PROBLEM_JSON, event_id=event_id
    )


def _fail(
    answer: functools.partial[None],
    exc: BaseException,
    request_id: str,
    event_id: str | None = None,
) -> None:
    # The type only: an exception's text can quote what it choked on.
    log.error("unhandled error", request_id=request_id, error=type(exc).__name__)
    answer(500, problem_body(500, request_id), "error", None, wire.PROBLEM_JSON, event_id=event_id)


# -- lifecycle -----------------------------------------------------------------------------------


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.start()
    yield
    await store.close()


async def _forward_ctx(app: web.Application) -> AsyncIterator[None]:
    """Started after the store and closed before it: its last outcomes and the leases it gives
    back are written through the store's pool."""
    forwarder = app.get(FORWARDER)
    if forwarder is None:
        yield
        return
    await forwarder.start()
    yield
    await forwarder.close()


async def _peers_ctx(app: web.Application) -> AsyncIterator[None]:
    peers = app[PEERS]
    await peers.start()
    yield
    await peers.stop()


async def _auth_ctx(app: web.Application) -> AsyncIterator[None]:
    authenticators = [rt.authenticator for rt in app[SOURCES].values() if rt.authenticator]
    for authenticator in authenticators:
        await authenticator.start()
    yield
    for authenticator in authenticators:
        await authenticator.close()


async def _secret_reload_ctx(app: web.Application) -> AsyncIterator[None]:
    """Re-read mounted secrets periodically (kubelet swaps the files in place on a change), and
    flush the buffered access log at the same pace.

    A failing pass is logged and the next one runs: were the task to end, rotated secrets would
    never be picked up again and the access log would stop flushing, both silently.
    """

    async def loop() -> None:
        while True:
            await asyncio.sleep(min(app[CONFIG].secret_reload_seconds, ACCESS_LOG_FLUSH_SECONDS))
            _keep_going("access log flush", app[ACCESS_LOG].flush)
            _keep_going("secret reload", lambda: reload_secrets(app))

    task = asyncio.create_task(loop(), name="secret-reload")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    _keep_going("access log flush", app[ACCESS_LOG].flush)


def _keep_going(step: str, run: Callable[[], object]) -> None:
    """Run one periodic step; a failure is logged by type only (an OSError's text names the file)
    and swallowed. Logging may fail too when stdout is what broke: that is swallowed as well."""
    try:
        run()
    except Exception as exc:
        with contextlib.suppress(Exception):
            log.error("periodic step failed", step=step, error=type(exc).__name__)


def reload_secrets(app: web.Application) -> list[str]:
    """Reload every source's secrets from disk; returns the sources whose secrets changed.

    A source whose files cannot be read (a permission, a directory where a file should be) keeps
    its previous secrets and does not hold up the others.
    """
    changed = []
    for runtime in app[SOURCES].values():
        try:
            reloaded = runtime.secrets.reload()
        except Exception as exc:
            log.error("secrets not reloaded", source=runtime.config.key, error=type(exc).__name__)
            continue
        if reloaded:
            changed.append(runtime.config.key)
            app[METRICS].secret_reloads.labels(runtime.config.key).inc()
            log.info(
                "secrets reloaded", source=runtime.config.key, values=len(runtime.secrets.values)
            )
    forwarder = app.get(FORWARDER)
    for target in forwarder.targets.values() if forwarder is not None else ():
        try:
            reloaded = target.secrets.reload()
        except Exception as exc:
            log.error("forward signing secrets not reloaded", source=target.key,
                      error=type(exc).__name__)  # fmt: skip
            continue
        if reloaded:
            if target.key not in changed:
                changed.append(target.key)
            app[METRICS].secret_reloads.labels(target.key).inc()
            log.info(
                "forward signing secrets reloaded",
                source=target.key,
                values=len(target.secrets.values),
            )
    return changed


def build_runtime(
    source: SourceConfig, clock: Callable[[], float], metrics: ReceiverMetrics
) -> SourceRuntime:
    v = source.verification
    return SourceRuntime(
        config=source,
        verify=VERIFIERS[source.provider],
        bucket=TokenBucket(source.limits.requests_per_second, source.limits.burst),
        unverified=TokenBucket(
            source.limits.unverified_requests_per_second, source.limits.unverified_burst
        ),
        secrets=SourceSecrets(v.secrets, source.provider),
        authenticator=JwtAuthenticator(source.auth, clock=clock) if source.auth else None,
        metrics=metrics,
        extra_sensitive={h.lower() for h in (v.header, v.timestamp_header) if h},
    )


def handler_args(server: ServerConfig) -> dict[str, Any]:
    """aiohttp's per-connection settings, whichever server runs the app (tests included).

    Bodies are never decompressed (a Content-Encoding is refused instead) and never drained
    after a response (``lingering_time`` 0: the connection closes instead).
    """
    return {
        "auto_decompress": False,
        "lingering_time": 0,
        "keepalive_timeout": server.idle_timeout_seconds,
        "max_line_size": server.max_request_line_bytes,
        "max_field_size": server.max_header_bytes,
        "max_headers": server.max_headers,
    }


def create_app(
    config: ReceiverConfig,
    *,
    metrics: ReceiverMetrics | None = None,
    clock: Callable[[], float] = time.time,
    tracing: Tracing | None = None,
    worker: Worker | None = None,
) -> web.Application:
    """The receiver; ``tracing`` (webhook_server.tracing.from_env) turns spans on; ``worker``:
    which of several processes sharing the port this is (webhook_server.workers)."""
    metrics = metrics or ReceiverMetrics()
    largest = max((s.limits.max_body_bytes for s in config.sources), default=1024 * 1024)
    app = web.Application(
        middlewares=[request_context] if tracing is None else [trace_requests, request_context],
        client_max_size=largest + 1,
        handler_args=handler_args(config.server),
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[CLOCK] = clock
    app[DRAINING] = Draining()
    store = app[STORE] = Store(config.database, config.sources, metrics, tracing=tracing)
    if tracing is not None:
        app[TRACING] = tracing
    access_log = app[ACCESS_LOG] = AccessLog(worker=worker.index if worker is not None else None)
    app[ADMISSION] = Admission.build(config.server, largest)
    if any(source.forward is not None for source in config.sources):
        forwarding = config.forwarding
        if worker is not None and forwarding.replica_id is not None:
            # Leases are held per process: two workers under one id would take each other's.
            forwarding = forwarding.model_copy(
                update={"replica_id": f"{forwarding.replica_id}-w{worker.index}"}
            )
        forwarder = Forwarder(forwarding, config.sources, store, metrics, access_log, clock=clock)
        store.outbox = forwarder
        forwarder.tracing = tracing
        app[FORWARDER] = forwarder
    sources: dict[str, SourceRuntime] = {}
    for source in config.sources:
        resource = app.router.add_resource(source.route)
        resource.add_route("POST", receive)
        resource.add_route("OPTIONS", preflight)
        if PROVIDERS[source.provider].answers_head:
            resource.add_route("HEAD", probe)
        sources[resource.canonical] = build_runtime(source, clock, metrics)
        sources[resource.canonical].tracing = tracing
    app[SOURCES] = sources
    app[SOURCES_BY_PATH] = {rt.config.route: rt for rt in sources.values()}
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    if any(source.events_api is not None for source in config.sources):
        # Imported here: it builds on this module (and only a receiver that has it needs it).
        from webhook_server.events_api import mount

        mount(app)
    if worker is not None:
        app[PEERS] = Peers(
            worker,
            metrics.registry,
            functools.partial(refresh_gauges, app),
            lambda index: metrics.worker_peer_unanswered.labels(str(index)).inc(),
            # Within the asking worker's wait, so that a database that hangs reads as
            # "database (worker N)", not as a worker that does not answer.
            functools.partial(readiness_checks, app, PEER_CHECK_SECONDS),
        )
        app.cleanup_ctx.append(_peers_ctx)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_forward_ctx)
    app.cleanup_ctx.append(_auth_ctx)
    app.cleanup_ctx.append(_secret_reload_ctx)
    return app
