"""The Events API: a source's stored events listed, read and replayed over HTTP.

See docs/events-api.md.

Closed unless configured: the routes are mounted only when at least one source of the receiver
has ``eventsApi``; without it ``/events`` is an unknown path (404, like any other), so a
receiver without the API looks no different from one that never had it. Each request concerns
one source (named by ``source``, by the event's id, or the receiver's only API source) and is
checked with that source's settings:

1. the source's API budget (``requestsPerSecond``/``burst``, per process): 429 past it, before
   the token is looked at, so a flood of bad tokens costs no key fetches;
2. the bearer token, from the ``Authorization`` header only (never the ``__session`` cookie: a
   browser sends cookies by itself, which would let any page make a signed-in user replay),
   verified by the same :class:`~webhook_server.auth.JwtAuthenticator` as ``spec.auth``: 401;
3. the scope the operation needs (``readScope`` to list and read, ``replayScope`` to replay): 403.

Payloads (and stored headers) are returned only when asked for (``include=payload``) and only to
a token with the read scope: they may hold personal data. Neither tokens nor payloads are logged.
Every error is problem+json with a fixed text.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from webhook_server.app import (
    ACCESS_LOG,
    CLOCK,
    CONFIG,
    LOGGED,
    METRICS,
    REQUEST_ID,
    STORE,
    Problem,
    problem_response,
)
from webhook_server.auth import JwtAuthenticator
from webhook_server.bodies import read_limited
from webhook_server.config import EVENTS_API_PREFIX, EventsApiConfig, SourceConfig
from webhook_server.events_api.openapi import document
from webhook_server.logs import get_logger
from webhook_server.ratelimit import TokenBucket
from webhook_server.store import UNAVAILABLE_ERRORS
from webhook_server.store import events as store_events
from webhook_server.verify import Reason, Rejected

log = get_logger("dfm.events_api")

# The only header a token is read from (see the module docstring).
_AUTHORIZATION = "Authorization"
# An unknown event, and one of a source without the API, get the same answer.
_NO_SUCH_EVENT = "no such event"
_NO_SUCH_SOURCE = "no such source"
# A fixed word for the metric label when the request named no usable source.
_UNKNOWN_SOURCE = "unknown"


@dataclass
class SourceApi:
    """One source's Events API: its settings, token verifier and request budget."""

    source: SourceConfig
    settings: EventsApiConfig
    authenticator: JwtAuthenticator
    bucket: TokenBucket

    @property
    def key(self) -> str:
        return self.source.key

    @property
    def forwards(self) -> bool:
        return self.source.forward is not None


EVENTS_API = web.AppKey("events_api", dict[str, SourceApi])
# What the access log and the metrics say about a request, filled in as it goes.
_SOURCE = web.RequestKey("events_api_source", str)
_SUBJECT = web.RequestKey("events_api_subject", str)


def mount(app: web.Application) -> bool:
    """Add the Events API's routes to the receiver ``app`` when a source configures it;
    returns whether it did."""
    config = app[CONFIG]
    clock = app[CLOCK]
    apis = {
        source.key: SourceApi(
            source=source,
            settings=source.events_api,
            authenticator=JwtAuthenticator(source.events_api.auth, clock=clock),
            bucket=TokenBucket(source.events_api.requests_per_second, source.events_api.burst),
        )
        for source in config.sources
        if source.events_api is not None
    }
    if not apis:
        return False
    app[EVENTS_API] = apis
    router = app.router
    # Fixed paths before the {id} patterns: "openapi.json" and "replay" are never event ids.
    router.add_get(f"{EVENTS_API_PREFIX}/openapi.json", _operation("openapi", openapi_view))
    router.add_get(EVENTS_API_PREFIX, _operation("list", list_view))
    router.add_post(f"{EVENTS_API_PREFIX}/replay", _operation("replay_bulk", bulk_replay_view))
    router.add_get(EVENTS_API_PREFIX + "/{id}", _operation("show", show_view))
    router.add_post(EVENTS_API_PREFIX + "/{id}/replay", _operation("replay", replay_view))
    app.cleanup_ctx.append(_auth_ctx)
    return True


async def _auth_ctx(app: web.Application) -> AsyncIterator[None]:
    authenticators = [api.authenticator for api in app[EVENTS_API].values()]
    for authenticator in authenticators:
        await authenticator.start()
    yield
    for authenticator in authenticators:
        await authenticator.close()


# -- cross-cutting: outcome, metrics, access log -------------------------------------------------

_OUTCOMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    422: "too_many",
    429: "rate_limited",
    503: "unavailable",
}


def _operation(
    name: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``handler`` with the API's own outcome, metrics and access log line (the receiver's
    middleware counts source paths and unrouted requests; these are neither)."""

    async def view(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request[LOGGED] = True
        try:
            response = await handler(request)
            outcome = "ok"
        except Problem as problem:
            outcome = problem.outcome
            response = problem_response(
                problem.status, request[REQUEST_ID], problem.detail, problem.headers
            )
        except web.HTTPException as exc:
            outcome = _OUTCOMES.get(exc.status, "error")
            response = problem_response(exc.status, request[REQUEST_ID])
        except Exception as exc:
            outcome = "error"
            # The type only: an exception's text can quote what it choked on.
            log.error("unhandled error", request_id=request[REQUEST_ID], error=type(exc).__name__)
            response = problem_response(500, request[REQUEST_ID])
        source = request.get(_SOURCE, _UNKNOWN_SOURCE)
        request.app[METRICS].events_api_requests.labels(source, name, outcome).inc()
        request.app[ACCESS_LOG].write(
            event="events_api",
            request_id=request[REQUEST_ID],
            operation=name,
            source=source,
            # Who asked (the token's subject), for the audit trail of replays.
            subject=request.get(_SUBJECT),
            method=request.method,
            status=response.status,
            outcome=outcome,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return response

    return view


def _problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> Problem:
    return Problem(status, detail, outcome=_OUTCOMES.get(status, "error"), headers=headers)


# -- authorization -------------------------------------------------------------------------------


def _api_for(request: web.Request, source: str | None) -> SourceApi:
    """The API of the source a request names (or the only one); 400/404 otherwise."""
    apis = request.app[EVENTS_API]
    if source is None:
        if len(apis) != 1:
            raise _problem(400, "source is required: this receiver serves several sources")
        return next(iter(apis.values()))
    api = apis.get(source)
    if api is None:
        raise _problem(404, _NO_SUCH_SOURCE)
    return api


async def _authorize(request: web.Request, api: SourceApi, scope: str) -> None:
    """Budget, token and scope, in that order (see the module docstring)."""
    request[_SOURCE] = api.key
    allowed, retry_after = api.bucket.take()
    if not allowed:
        raise _problem(429, "too many requests", {"Retry-After": str(retry_after)})
    authorization = request.headers.get(_AUTHORIZATION)
    headers = {} if authorization is None else {_AUTHORIZATION: authorization}
    verdict = await api.authenticator.authenticate(headers)
    if isinstance(verdict, Rejected):
        raise _refused(verdict)
    subject = verdict.get("sub")
    if isinstance(subject, str) and len(subject) <= 256:
        request[_SUBJECT] = subject
    if scope not in _scopes(verdict, api.settings.scope_claim):
        raise _problem(
            403,
            f"the token lacks the {scope} scope",
            {hdrs.WWW_AUTHENTICATE: f'Bearer error="insufficient_scope", scope="{scope}"'},
        )


def _refused(rejected: Rejected) -> Problem:
    if rejected.reason is Reason.UNAVAILABLE:
        return _problem(503, "signing keys unavailable, retry later", {"Retry-After": "10"})
    if rejected.reason is Reason.MISSING_TOKEN:
        return _problem(401, "bearer token required", {hdrs.WWW_AUTHENTICATE: "Bearer"})
    # The verifier's fixed text (never the token, never an exception's message).
    return _problem(
        401,
        rejected.detail or "invalid token",
        {hdrs.WWW_AUTHENTICATE: 'Bearer error="invalid_token"'},
    )


def _scopes(claims: Mapping[str, Any], claim: str) -> set[str]:
    """The token's scopes: an OAuth ``scope`` string (space-separated) or a list of strings."""
    value = claims.get(claim)
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {v for v in value if isinstance(v, str)}
    return set()


# -- parameters ----------------------------------------------------------------------------------


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _problem(400, f"{name} must be an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise _problem(400, f"{name} must carry a time zone (Z or an offset)")
    return parsed.astimezone(UTC)


def _single(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise _problem(400, f"{name} may be given once")
    return values[0] if values else None


_LIST_PARAMS = frozenset({"source", "type", "eventId", "since", "until", "state", "limit",
                          "cursor", "include"})  # fmt: skip


def _with_payload(request: web.Request) -> bool:
    include = _single(request, "include")
    if include not in (None, "payload"):
        raise _problem(400, "include may only be payload")
    return include == "payload"


# -- views ---------------------------------------------------------------------------------------


async def openapi_view(request: web.Request) -> web.Response:
    """The OpenAPI document (no token needed: it describes the API, it holds no data)."""
    return web.json_response(document())


async def list_view(request: web.Request) -> web.Response:
    if set(request.query) - _LIST_PARAMS:
        raise _problem(400, f"unknown query parameter (known: {', '.join(sorted(_LIST_PARAMS))})")
    api = _api_for(request, _single(request, "source"))
    settings = api.settings
    await _authorize(request, api, settings.read_scope)
    with_payload = _with_payload(request)
    state = _single(request, "state")
    if state is not None and state not in store_events.DELIVERY_STATES:
        raise _problem(400, f"state must be one of {', '.join(store_events.DELIVERY_STATES)}")
    limit_text = _single(request, "limit")
    try:
        wanted = None if limit_text is None else int(limit_text)
    except ValueError:
        raise _problem(400, "limit must be a whole number") from None
    try:
        limit = store_events.page_size(wanted, with_payload)
    except ValueError as exc:
        raise _problem(400, str(exc)) from None
    selection = store_events.EventFilter(
        sources=[api.key],
        event_type=_single(request, "type"),
        event_id=_single(request, "eventId"),
        since=_time(_single(request, "since"), "since"),
        until=_time(_single(request, "until"), "until"),
        state=state,
    )
    cursor = _single(request, "cursor")
    try:
        async with _connection(request) as conn:
            page = await store_events.list_events(
                conn, selection, limit=limit, cursor=cursor, with_payload=with_payload
            )
    except store_events.BadEventId:
        raise _problem(400, "cursor is not one this API gave out") from None
    return web.json_response(page.to_json())


async def show_view(request: web.Request) -> web.Response:
    if set(request.query) - {"include"}:
        raise _problem(400, "unknown query parameter (known: include)")
    key, api = _event_api(request)
    await _authorize(request, api, api.settings.read_scope)
    with_payload = _with_payload(request)
    async with _connection(request) as conn:
        event = await store_events.get_event(conn, key, with_payload=with_payload)
    if event is None:
        raise _problem(404, _NO_SUCH_EVENT)
    return web.json_response(event.to_json())


async def replay_view(request: web.Request) -> web.Response:
    key, api = _event_api(request)
    await _authorize(request, api, api.settings.replay_scope)
    now = datetime.fromtimestamp(request.app[CLOCK](), UTC)
    async with _connection(request) as conn:
        event = await store_events.get_event(conn, key)
        if event is None:
            raise _problem(404, _NO_SUCH_EVENT)
        if not api.forwards:
            raise _problem(409, "this source does not forward: there is no delivery to replay")
        if not await store_events.requeue(conn, [key], now):
            raise _problem(409, "the delivery is pending already: it will be attempted")
        event = await store_events.get_event(conn, key)
    assert event is not None
    request.app[METRICS].events_api_replays.labels(api.key).inc()
    log.info(
        "delivery re-queued",
        request_id=request[REQUEST_ID],
        source=api.key,
        webhook_id=event.delivery.webhook_id if event.delivery else None,
        subject=request.get(_SUBJECT),
    )
    return web.json_response(event.to_json(), status=202)


class BulkReplay(BaseModel):
    """The body of ``POST /events/replay``: which events to replay."""

    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True)

    source: str | None = None
    state: Literal["dead", "delivered", "none"] | None = None
    type: Annotated[str, Field(max_length=256)] | None = None
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = False


MAX_BULK_BODY_BYTES = 16 * 1024


async def bulk_replay_view(request: web.Request) -> web.Response:
    body = await read_limited(request.content, request.content_length, MAX_BULK_BODY_BYTES)
    if body is None:
        raise _problem(413, "request body too large")
    try:
        wanted = BulkReplay.model_validate_json(body or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        # The message only: pydantic's "input" would quote what was sent.
        raise _problem(400, f"{where}: {first['msg']}"[:300]) from None
    api = _api_for(request, wanted.source)
    await _authorize(request, api, api.settings.replay_scope)
    for name, at in (("since", wanted.since), ("until", wanted.until)):
        if at is not None and at.tzinfo is None:
            raise _problem(400, f"{name} must carry a time zone (Z or an offset)")
    if wanted.state != "dead" and wanted.since is None:
        raise _problem(
            400, 'say which events: state "dead", or a time range (since, and until if wanted)'
        )
    if not api.forwards:
        raise _problem(409, "this source does not forward: there is no delivery to replay")
    selection = store_events.EventFilter(
        sources=[api.key],
        event_type=wanted.type,
        since=wanted.since,
        until=wanted.until,
        state=wanted.state,
    )
    now = datetime.fromtimestamp(request.app[CLOCK](), UTC)
    try:
        async with _connection(request) as conn:
            result = await store_events.replay_bulk(
                conn, selection, now, max_events=api.settings.max_bulk_replay,
                dry_run=wanted.dry_run,
            )  # fmt: skip
    except store_events.TooManyToReplay as exc:
        raise _problem(
            422,
            f"more than {exc.allowed} events selected: narrow the time range "
            "(eventsApi.maxBulkReplay)",
        ) from None
    if not wanted.dry_run:
        request.app[METRICS].events_api_replays.labels(api.key).inc(result.requeued)
        log.info(
            "deliveries re-queued",
            request_id=request[REQUEST_ID],
            source=api.key,
            deliveries=result.requeued,
            subject=request.get(_SUBJECT),
        )
    return web.json_response(
        {**result.to_json(), "dryRun": wanted.dry_run}, status=200 if wanted.dry_run else 202
    )


def _event_api(request: web.Request) -> tuple[store_events.EventKey, SourceApi]:
    """The event an ``{id}`` names and its source's API; 404 for anything else (before the
    token is checked: it reveals nothing an unknown id would not)."""
    try:
        key = store_events.decode_id(request.match_info["id"])
    except store_events.BadEventId:
        raise _problem(404, _NO_SUCH_EVENT) from None
    api = request.app[EVENTS_API].get(key[0])
    if api is None:
        raise _problem(404, _NO_SUCH_EVENT)
    return key, api


@contextlib.asynccontextmanager
async def _connection(request: web.Request) -> AsyncIterator[Any]:
    """A connection of the receiver's pool; 503 while the store is not ready or fails."""
    store = request.app[STORE]
    pool = store.pool
    if pool is None:
        raise _unavailable()
    try:
        async with pool.acquire(timeout=store.config.connect_timeout_seconds) as conn:
            yield conn
    except asyncpg.DataError:
        # A value PostgreSQL cannot compare (a NUL character in a type, say): the request's.
        raise _problem(400, "a parameter cannot be searched for") from None
    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
        raise _unavailable() from exc


def _unavailable() -> Problem:
    return _problem(503, "event store unavailable, retry later", {"Retry-After": "5"})
