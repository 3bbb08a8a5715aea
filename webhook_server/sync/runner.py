"""One sync run: walk the API's pages and commit each page's items as events of the sink.

Each page is one transaction: its events (through ``webhook_server.store.insert_events``, the
statement every event goes through) and the schedule's row in ``dfm_sync_state`` naming the next
page. A run that dies at any point (kill -9, OOM, node loss, its timeout) leaves the row at the
first page whose events are not committed; the next run resumes there. Nothing is stored twice
(dedup by (source, event id) would catch it anyway) and nothing is skipped.

Runs of one schedule never overlap (a PostgreSQL advisory lock). Across runs, a circuit breaker
(``webhook_server.outbound.CircuitBreaker``, its state kept in the row) stops calling an API
whose last runs all failed upstream: a skipped run fails at once, and a run after the cool-down
is the probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

from webhook_server.logs import get_logger
from webhook_server.outbound import CircuitBreaker
from webhook_server.store import (
    UNAVAILABLE_ERRORS,
    Event,
    create_partitions,
    insert_events,
    partition_missing,
    register_sources,
)
from webhook_server.store import partitions as store_partitions
from webhook_server.store.migrations import apply_migrations
from webhook_server.sync import state as sync_state
from webhook_server.sync.client import Fetcher, SleepFn, TokenSource, token_source
from webhook_server.sync.config import HttpConfig, SyncConfig
from webhook_server.sync.documents import (
    BadResponse,
    get_path,
    greatest,
    item_id,
    item_version,
    items_at,
    scalar_text,
)
from webhook_server.sync.pagination import PageRequest, describe, first_request, next_request
from webhook_server.sync.summary import (
    BAD_RESPONSE,
    DEADLINE_EXCEEDED,
    INTERRUPTED,
    STORE_UNAVAILABLE,
    SUCCEEDED,
    SYNCED,
    UPSTREAM_FAILING,
    UPSTREAM_REFUSED,
    RunSummary,
    SyncFailure,
)
from webhook_server.tracing import ACTIVE_TRACING, Tracing

log = get_logger("dfm.sync")

# The circuit across runs: this many runs in a row failing upstream open it; then runs are
# skipped for the cool-down (doubling up to the maximum while probes keep failing).
CIRCUIT_FAILURE_THRESHOLD = 3
CIRCUIT_COOL_DOWN_SECONDS = 300.0
CIRCUIT_MAX_COOL_DOWN_SECONDS = 3600.0
# Connecting to the store: attempts, and the wait before each retry.
CONNECT_RETRY_DELAYS = (0.5, 1.0, 2.0)
SYNC_HEADER = "x-dfm-sync-schedule"
APPLICATION_NAME = "dfm-sync"
STATEMENT_TIMEOUT_SECONDS = 60.0
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ProgramLimitExceededError,
)


@dataclass(frozen=True)
class Clock:
    """The run's clocks, injectable: wall time for records, monotonic for pacing and the
    circuit's wall-clock cool-down."""

    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic
    epoch: Callable[[], float] = time.time


def item_events(
    items: list[Any],
    http: HttpConfig,
    *,
    source: str,
    schedule: str,
    run_id: str,
    received_at: datetime,
    page: int,
) -> list[Event]:
    """A page's items as events of ``source``: id ``<eventType>/<item id>`` (``@<version>``
    with a versionField), type ``eventType``, the item as compact UTF-8 JSON, the run as the
    request id. Pure."""
    events = []
    for index, item in enumerate(items):
        position = f"item {index} of page {page + 1}"
        identity = item_id(item, http.id_field, position)
        if http.version_field is not None:
            identity += "@" + item_version(item, http.version_field, position)
        payload = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
        events.append(
            Event(
                source=source,
                event_id=f"{http.event_type}/{identity}",
                event_type=http.event_type,
                received_at=received_at,
                request_id=run_id,
                payload=payload,
                headers={SYNC_HEADER: schedule},
            )
        )
    return events


def _watermark_of(http: HttpConfig, items: list[Any], current: Any) -> Any:
    if http.incremental is None:
        return None
    field = http.incremental.field
    return greatest([current, *(get_path(item, field) for item in items if isinstance(item, dict))])


async def run_sync(
    config: SyncConfig,
    *,
    token: TokenSource | None = None,
    session: aiohttp.ClientSession | None = None,
    sleep: SleepFn = asyncio.sleep,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    tracing: Tracing | None = None,
) -> RunSummary:
    """Run one sync and say how it went; never raises for what went wrong upstream or in the
    store (the summary says it). ``stop`` set interrupts the run (a signal, in the CLI).

    With ``tracing``, the run is a ``dfm.sync.run`` span and each committed page a
    ``dfm.sync.page`` span, whose context the page's events carry to their deliveries."""
    run = _run_sync(config, token=token, session=session, sleep=sleep, clock=clock, stop=stop)
    if tracing is None:
        return await run
    attributes = {"dfm.sync.schedule": config.schedule, "dfm.source": config.sink.source}
    with tracing.span("dfm.sync.run", attributes) as span:
        token_ = ACTIVE_TRACING.set(tracing)
        try:
            summary = await run
        finally:
            ACTIVE_TRACING.reset(token_)
        span.set_attribute("dfm.sync.run_id", summary.run_id)
        span.set_attribute("dfm.sync.result", summary.result)
        span.set_attribute("dfm.sync.reason", summary.reason)
        span.set_attribute("dfm.sync.stored", summary.stored)
        if not summary.succeeded:
            tracing.error(span, summary.reason)
    return summary


async def _run_sync(
    config: SyncConfig,
    *,
    token: TokenSource | None,
    session: aiohttp.ClientSession | None,
    sleep: SleepFn,
    clock: Clock | None,
    stop: asyncio.Event | None,
) -> RunSummary:
    clock = clock or Clock()
    summary = RunSummary(config.schedule, uuid.uuid4().hex, clock.now())
    source = token if token is not None else token_source(config.token)
    owned = session is None
    http_session = session or aiohttp.ClientSession()
    log.info(
        "sync run started",
        schedule=config.schedule,
        sink=config.sink.source,
        url=describe(config.http.url),
        pagination=config.http.style,
    )
    work = asyncio.ensure_future(_run(config, summary, source, http_session, sleep, clock))
    waiters: set[asyncio.Future[Any]] = {work}
    stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
    if stopping is not None:
        waiters.add(stopping)
    try:
        async with asyncio.timeout(config.run_timeout_seconds):
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            _fail(
                summary,
                INTERRUPTED,
                "stopped by a signal; the next run continues after the last committed page",
            )
        else:
            work.result()
    except TimeoutError:
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        _fail(
            summary,
            DEADLINE_EXCEEDED,
            f"the run took longer than its timeout ({config.run_timeout_seconds:g} s); the next "
            "run continues after the last committed page",
        )
    except SyncFailure as exc:
        _fail(summary, exc.reason, str(exc))
    except BadResponse as exc:
        _fail(summary, BAD_RESPONSE, str(exc))
    finally:
        if stopping is not None:
            stopping.cancel()
        if owned:
            await http_session.close()
    summary.finished_at = clock.now()
    log.info("sync run finished", **summary.to_json())
    return summary


def _fail(summary: RunSummary, reason: str, message: str) -> None:
    summary.result, summary.reason, summary.message = "Failed", reason, message


async def _connect(config: SyncConfig, sleep: SleepFn) -> Any:
    db = config.database
    kwargs: dict[str, Any] = {"statement_cache_size": 0} if db.pgbouncer else {}
    for delay in (*CONNECT_RETRY_DELAYS, None):
        try:
            return await asyncpg.connect(
                db.resolve_url(),
                timeout=db.connect_timeout_seconds,
                command_timeout=STATEMENT_TIMEOUT_SECONDS,
                server_settings={"application_name": APPLICATION_NAME, "timezone": "UTC"},
                **kwargs,
            )
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError, ValueError) as exc:
            if delay is None:
                raise SyncFailure(
                    STORE_UNAVAILABLE, f"the event store is unreachable ({type(exc).__name__})"
                ) from None
            log.warning("event store not reachable yet", error=type(exc).__name__, retry_in=delay)
            await sleep(delay)
    raise AssertionError("unreachable")


async def _run(
    config: SyncConfig,
    summary: RunSummary,
    token: TokenSource | None,
    session: aiohttp.ClientSession,
    sleep: SleepFn,
    clock: Clock,
) -> None:
    conn = await _connect(config, sleep)
    try:
        await _with_store(config, summary, token, session, sleep, clock, conn)
    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
        raise SyncFailure(
            STORE_UNAVAILABLE, f"the event store failed ({type(exc).__name__})"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.close(timeout=5))


async def _with_store(
    config: SyncConfig,
    summary: RunSummary,
    token: TokenSource | None,
    session: aiohttp.ClientSession,
    sleep: SleepFn,
    clock: Clock,
    conn: Any,
) -> None:
    schedule, http = config.schedule, config.http
    applied = await apply_migrations(conn)
    if applied:
        log.info("migrations applied", migrations=applied)
    if not await sync_state.lock(conn, schedule):
        log.info("another run of this schedule holds its lock; waiting", schedule=schedule)
        await sync_state.wait_for_lock(conn, schedule)
    now = clock.now()
    await create_partitions(conn, set(store_partitions.days_to_create(now, 3)))
    await register_sources(conn, [(config.sink.source, config.sink.retention_days)], now)

    current = await sync_state.load(conn, schedule, http.fingerprint())
    breaker = CircuitBreaker(
        failure_threshold=CIRCUIT_FAILURE_THRESHOLD,
        cool_down_seconds=CIRCUIT_COOL_DOWN_SECONDS,
        max_cool_down_seconds=CIRCUIT_MAX_COOL_DOWN_SECONDS,
        clock=clock.epoch,
    )
    if current.circuit is not None:
        breaker.restore(current.circuit)
    if not breaker.allow():
        when = datetime.fromtimestamp(clock.epoch() + breaker.retry_in(), UTC)
        raise SyncFailure(
            UPSTREAM_FAILING,
            f"not calling the API: its last {breaker.consecutive_failures} run(s) failed "
            f"upstream; the first run after {when.isoformat(timespec='seconds')} tries again",
        )

    resumed = current.resume is not None
    if current.resume is not None:
        log.info(
            "resuming an unfinished run",
            page=current.resume.number + 1,
            items_so_far=current.run_items,
        )
        current = replace(current, run_id=current.run_id or summary.run_id)
    else:
        current = replace(
            current, run_id=summary.run_id, run_started_at=now, run_items=0, run_watermark=None
        )
    await sync_state.start_run(conn, schedule, current, now)
    summary.resumed = resumed

    fetcher = Fetcher(
        http, config.retry, session, token, sleep=sleep, wall_clock=clock.now,
        monotonic=clock.monotonic,
    )  # fmt: skip
    try:
        await _walk(config, summary, conn, fetcher, current, clock)
    except SyncFailure as exc:
        if exc.reason == UPSTREAM_FAILING:
            breaker.record_failure()
            await sync_state.save_circuit(conn, schedule, breaker.snapshot(), clock.now())
        raise
    breaker.record_success()
    await sync_state.save_circuit(conn, schedule, breaker.snapshot(), clock.now())


async def _walk(
    config: SyncConfig,
    summary: RunSummary,
    conn: Any,
    fetcher: Fetcher,
    current: sync_state.SyncState,
    clock: Clock,
) -> None:
    schedule, http = config.schedule, config.http
    watermark_text = scalar_text(current.watermark)
    request: PageRequest | None = current.resume or first_request(http, watermark_text)
    run_watermark = current.run_watermark
    while request is not None and summary.pages < http.max_pages:
        try:
            page = await fetcher.get(request)
        except SyncFailure as exc:
            if not (exc.reason == UPSTREAM_REFUSED and summary.resumed and summary.pages == 0):
                raise
            # A cursor kept from an earlier run may have expired: start that walk over once.
            log.warning("the API refused the resume point; starting from the first page",
                        reason=str(exc))  # fmt: skip
            await sync_state.forget_resume(conn, schedule, clock.now())
            summary.resumed = False
            run_watermark = None
            request = first_request(http, watermark_text)
            continue
        items = [] if page.body is None else items_at(page.body, http.items_path)
        received_at = clock.now()
        events = item_events(
            items, http, source=config.sink.source, schedule=schedule, run_id=summary.run_id,
            received_at=received_at, page=request.number,
        )  # fmt: skip
        problem: BadResponse | None = None
        try:
            following = next_request(http, request, page.headers, page.body, len(items))
        except BadResponse as exc:
            # This page's items are good: keep them, and this page as the resume point.
            following, problem = request, exc
        run_watermark = _watermark_of(http, items, run_watermark)
        tracing = ACTIVE_TRACING.get()
        if tracing is None:
            fresh = await _commit(conn, schedule, events, following, run_watermark, received_at)
        else:
            fresh = await tracing.sync_page(
                {"dfm.sync.schedule": schedule, "dfm.sync.page": request.number + 1},
                events,
                functools.partial(
                    _commit, conn, schedule, following=following, run_watermark=run_watermark,
                    now=received_at,
                ),
            )  # fmt: skip
        summary.pages += 1
        summary.items += len(items)
        summary.stored += fresh
        log.info(
            "page committed",
            schedule=schedule,
            page=request.number + 1,
            items=len(items),
            stored=fresh,
        )
        if problem is not None:
            raise problem
        request = following
    now = clock.now()
    if request is None:
        watermark = greatest([current.watermark, run_watermark])
        await sync_state.finish_run(conn, schedule, watermark, now)
        summary.complete = True
        summary.message = f"{summary.items} item(s), {summary.stored} new, {summary.pages} page(s)"
    else:
        summary.message = (
            f"{summary.items} item(s), {summary.stored} new; stopped after maxPages "
            f"({http.max_pages}): the next run continues from page {request.number + 1}"
        )
    summary.result, summary.reason = SUCCEEDED, SYNCED


async def _commit(
    conn: Any,
    schedule: str,
    events: list[Event],
    following: PageRequest | None,
    run_watermark: Any,
    now: datetime,
) -> int:
    """A page's events and the row naming the next page, in one transaction; returns how many
    events were new. A missing day partition is created and the page committed again."""
    for attempt in range(2):
        try:
            async with conn.transaction():
                fresh, _ = await insert_events(conn, events) if events else (set(), set())
                await sync_state.save_page(
                    conn, schedule, following, len(events), run_watermark, now
                )
            return len(fresh)
        except asyncpg.PostgresError as exc:
            if partition_missing(exc) and attempt == 0:
                await create_partitions(conn, {store_partitions.utc_day(now)})
                continue
            if isinstance(exc, DATA_ERRORS):
                raise BadResponse(
                    f"PostgreSQL refused an item of this page ({type(exc).__name__})"
                ) from None
            raise
    raise AssertionError("unreachable")
