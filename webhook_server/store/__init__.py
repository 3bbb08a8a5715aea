"""The durable event store: one asyncpg pool, migrations, partitions and a batching writer.

A request is acknowledged only after the batch holding its event has committed. The writer
takes whatever is queued when it is free (no timer: latency stays low when idle, batches grow
under load), writes the batch in one statement, then resolves each request's future.

Up to ``writerConcurrency`` batches commit at once, grouped by queue depth: with nothing in
flight a batch starts at once; beside a commit in flight another starts once as many events wait
as that commit holds (or as ``maxQueuedEvents`` leaves room for), or once it has taken
``STALL_SECONDS`` (so a slow commit, a checkpoint's fsync, holds nobody behind it for longer than
that). At moderate load this makes fewer, larger commits than starting whatever is queued the
moment a slot is free, which costs less per event.

Every turn of the event loop between a commit and its answers is a loop's worth of other
requests in front of them, so the path is kept short: each writer is one long-lived task that
commits its own batch, resolves the batch's futures and calls their ``then`` (the one-pass
route's answer) as soon as the database replies, and gives the connection back in a task the
answers do not wait for.

Every wait is bounded, so a database that hangs (rather than fails) costs bounded latency and
memory: events waiting for or in a commit are capped in number and bytes (past either, submit
fails at once), and a request whose event has not committed within ``commitTimeoutSeconds`` is
told so by a sweeper (one task, not a timer per request). Neither acknowledges anything: the event
may still commit later, and the provider's retry is then answered "duplicate".
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import orjson

from webhook_server import tracing
from webhook_server.config import DatabaseConfig, SourceConfig
from webhook_server.logs import get_logger
from webhook_server.metrics import ReceiverMetrics
from webhook_server.store import outbox, partitions
from webhook_server.store.migrations import apply_migrations
from webhook_server.store.outbox import Lease

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from webhook_server.tracing import Tracing

log = get_logger("dfm.store")

# A commit in flight longer than this no longer holds the next batch back (see the module doc).
STALL_SECONDS = 0.005
# Set while the writer gives back a connection whose insert left nothing to undo (see
# Store._reset_connection): task-local, so no other user of the pool is affected.
_CLEAN_RELEASE: contextvars.ContextVar[bool] = contextvars.ContextVar("clean", default=False)

MAINTENANCE_LOCK_ID = 0x64666D02
# Held (in the transaction that creates one partition) by whoever creates partitions: the
# maintenance run, or a receiver meeting a missing one. Concurrent CREATE TABLE IF NOT EXISTS of
# the same partition otherwise fails in all but one of them with a unique violation on the catalog.
PARTITION_LOCK_ID = 0x64666D03
# Errors that mean "the database is not there right now": answered 503, retried by the provider.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)


class StoreUnavailable(Exception):
    """The event was not committed; the caller must not acknowledge it."""


class StoreOverloaded(StoreUnavailable):
    """Too many events (or bytes) already wait for a commit: refused without queueing."""


class CommitTimeout(StoreUnavailable):
    """The event did not commit within the deadline; it may still commit later."""


class EventRefused(Exception):
    """PostgreSQL refuses this event's data (it would every time): not committed, not retryable."""


class ReplayRefused(Exception):
    """The event's replay key (a signed one-time value) is already held by another event: a
    replay of a captured signature. Not committed, not retryable."""


# Errors about one event's values, not about the database: the batch is split so that only the
# event that causes them fails.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ProgramLimitExceededError,
    UnicodeEncodeError,
)


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, five
# times the cost of a plain one, on every request. Nothing changes an Event once it is made
# (tracing makes a new one with dataclasses.replace).
@dataclass(slots=True)
class Event:
    source: str
    event_id: str
    event_type: str | None
    received_at: datetime
    request_id: str
    payload: bytes
    headers: dict[str, str]
    # The dedup scope within the source: the token's subject for a jwt source (two callers may
    # choose the same Idempotency-Key), "" for a provider's own ids.
    subject: str = ""
    # How many provider events the payload holds (a SendGrid or Mandrill batch); None for one.
    event_count: int | None = None
    # A signed one-time value no other event may use before ``replay_until`` (Mailgun's token).
    replay_key: str | None = None
    replay_until: datetime | None = None
    # With tracing on: the span that stored it (its request's ``dfm.store``, or a sync page),
    # which its batch links to and its delivery continues (``webhook_deliveries.trace_parent``).
    trace: SpanContext | None = field(default=None, compare=False)


_INSERT = """
WITH incoming AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                         $5::text[], $6::bytea[], $7::jsonb[], $8::text[], $9::integer[],
                         $10::text[], $14::text[])
        AS t(source, event_id, event_type, received_at, request_id, payload, headers, subject,
             event_count, webhook_id, trace_parent)
), fresh AS (
    INSERT INTO webhook_event_ids (source, subject, event_id, received_at)
    SELECT source, subject, event_id, received_at FROM incoming
    ON CONFLICT DO NOTHING
    RETURNING source, subject, event_id
), queued AS (
    -- The forward outbox: a fresh event of a forwarding source gets its delivery in the same
    -- statement, so an acknowledged event always has one.
    INSERT INTO webhook_deliveries
        (source, subject, event_id, received_at, webhook_id, next_attempt_at, lease_until,
         leased_by, trace_parent)
    SELECT i.source, i.subject, i.event_id, i.received_at, i.webhook_id, i.received_at,
           $12::timestamptz, $13::text, i.trace_parent
    FROM incoming i JOIN fresh f USING (source, subject, event_id)
    WHERE CASE WHEN $11::text[] IS NULL
               THEN EXISTS (SELECT 1 FROM webhook_sources s
                            WHERE s.source = i.source AND s.forward)
               ELSE i.source = ANY($11::text[]) END
)
INSERT INTO webhook_events
    (source, subject, event_id, event_type, received_at, request_id, payload, headers,
     event_count)
SELECT i.source, i.subject, i.event_id, i.event_type, i.received_at, i.request_id, i.payload,
       i.headers, i.event_count
FROM incoming i JOIN fresh f USING (source, subject, event_id)
RETURNING source, subject, event_id
"""

# Replay keys: claim (the first event to use a key owns it), then read who owns each, which sees
# keys committed by other replicas meanwhile (ON CONFLICT waited for them).
_CLAIM_REPLAY_KEYS = """
INSERT INTO webhook_replay_keys (source, replay_key, subject, event_id, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
ON CONFLICT (source, replay_key) DO NOTHING
"""
_REPLAY_KEY_OWNERS = """
SELECT k.source, k.replay_key, k.subject, k.event_id
FROM webhook_replay_keys k
JOIN unnest($1::text[], $2::text[]) AS t(source, replay_key) USING (source, replay_key)
"""

_Key = tuple[str, str, str]


def _key(event: Event) -> _Key:
    return (event.source, event.subject, event.event_id)


_PARTITION_MISSING = "23514"  # check_violation: "no partition of relation ... found for row"


@dataclass(eq=False, slots=True)
class Reservation:
    """Room the forwarder keeps in memory for one batch's deliveries, and their lease."""

    lease: Lease
    events: int
    bytes: int


class Outbox(Protocol):
    """What the writer asks of the forwarder (webhook_server.forward.Forwarder).

    Before a batch commits, ``reserve`` says whether the forwarder has room in memory for the
    batch's deliveries; if so they are written leased to it, and ``handoff`` gives it those that
    were committed (payloads are in memory already: no round trip to read them back) and frees
    the rest of the room. Otherwise (no room, its target's circuit open, the forwarder stopping)
    they are written unleased, due at once for any replica's poller.
    """

    forwarded: frozenset[str]

    def reserve(self, events: Sequence[Event]) -> Reservation | None: ...

    def handoff(self, reservation: Reservation, committed: Sequence[Event]) -> None: ...


Then = Callable[[asyncio.Future[bool]], None]


@dataclass(slots=True)
class _Pending:
    event: Event
    future: asyncio.Future[bool]
    # What the event counts against maxQueuedBytes (see held_size).
    size: int
    # Called with the future once it is resolved (see Store.enqueue).
    then: Then | None = None

    def settle(self, result: bool | None = None, exc: BaseException | None = None) -> None:
        """Resolve the future (unless the deadline sweeper already failed it), then call
        ``then`` at once: not on a later turn of the event loop, as a done callback would be."""
        future = self.future
        if future.done():
            return
        then, self.then = self.then, None
        if then is not None:
            future.remove_done_callback(then)
        if exc is None:
            future.set_result(bool(result))
        else:
            future.set_exception(exc)
            future.exception()  # the request may be gone: never "never retrieved"
        if then is not None:
            try:
                then(future)
            except Exception as error:
                # The writer goes on: one request's answer must not cost the others theirs.
                _log_quietly("error", "answer after commit failed", error=type(error).__name__)


def held_size(event: Event) -> int:
    """What one queued event counts against ``maxQueuedBytes``: its payload and its stored headers
    at their JSON size (a name and a value in quotes, a colon, a comma: 6 characters each)."""
    headers = event.headers
    return (
        len(event.payload)
        + sum(map(len, headers))
        + sum(map(len, headers.values()))
        + 6 * len(headers)
    )


@dataclass
class Store:
    config: DatabaseConfig
    sources: Sequence[SourceConfig]
    metrics: ReceiverMetrics
    # The forwarder, when a source forwards (set before start()).
    outbox: Outbox | None = None
    # Spans (webhook_server.tracing), when tracing is on.
    tracing: Tracing | None = None
    statement_timeout_seconds: float = 10.0
    # How often the sweeper fails requests past their commit deadline (the overshoot bound).
    sweep_interval_seconds: float = 0.1
    _pool: asyncpg.Pool | None = None
    _queue: asyncio.Queue[_Pending] = field(default_factory=asyncio.Queue)
    # Every submitted event's deadline and future in submission order (so in deadline order),
    # until it is resolved: not the event, whose payload is let go as soon as it is committed.
    _deadlines: deque[tuple[float, asyncio.Future[bool]]] = field(default_factory=deque)
    # Events (and their bytes, see held_size) queued or in a commit.
    _held_events: int = 0
    _held_bytes: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Connections given back to the pool after a commit, off the answers' path (see
    # _insert_and_release): awaited on close.
    _releases: set[asyncio.Task[None]] = field(default_factory=set)
    _closing: bool = False
    # The health check's query (check): at most one in flight, outliving a check that gave up.
    _probe: asyncio.Task[bool] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    # The writer waiting beside a commit in flight: set when enough events wait or a commit ends.
    _group_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _group_depth: int = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; the receiver serves (with 503s) until ready."""
        self._tasks.append(asyncio.create_task(self._connect_loop(), name="store-connect"))
        self._tasks.append(asyncio.create_task(self._writer_loop(), name="store-writer"))
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="store-deadlines"))

    async def wait_ready(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._ready.wait()
        return self._ready.is_set()

    async def close(self) -> None:
        """Refuse new events, commit the queued ones, then close the pool.

        Bounded: with a database that hangs, the queued events (none of them acknowledged, their
        requests were answered 503) are given up after a commit's worst case.
        """
        self._closing = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(
                self.config.commit_timeout_seconds + self.statement_timeout_seconds
            ):
                await self._queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._releases, return_exceptions=True)
        if self._probe is not None and not self._probe.done():
            # Bounded by itself (check); closing the pool below frees what it still holds.
            self._probe.cancel()
            await asyncio.wait({self._probe}, timeout=1.0)
        if self._pool is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.connect_timeout_seconds):
                    await self._pool.close()
                    return
            self._pool.terminate()

    async def _create_pool(self) -> asyncpg.Pool:
        kwargs: dict[str, Any] = {}
        if self.config.pgbouncer:
            kwargs["statement_cache_size"] = 0
        pool = await asyncpg.create_pool(
            self.config.resolve_url(),
            min_size=self.config.pool_min_size,
            max_size=self.config.pool_max_size,
            timeout=self.config.connect_timeout_seconds,
            command_timeout=self.statement_timeout_seconds,
            server_settings={"application_name": "dfm-receiver", "timezone": "UTC"},
            reset=_reset_connection,
            **kwargs,
        )
        assert pool is not None
        return pool

    async def _connect_loop(self) -> None:
        delay = 0.2
        while True:
            try:
                pool = await self._create_pool()
                async with pool.acquire() as conn:
                    applied = await apply_migrations(conn)
                    if applied:
                        log.info("migrations applied", migrations=applied)
                self._pool = pool
                await self.maintain(datetime.now(UTC))
                break
            except Exception as exc:
                log.warning(
                    "database not reachable yet",
                    error=type(exc).__name__,
                    retry_in=delay,
                    **_why_unusable(exc, self.config),
                )
                log.debug("database error detail", detail=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._ready.set()
        self.metrics.store_ready.set(1)
        log.info("event store ready")
        while True:
            await asyncio.sleep(self.config.maintenance_interval_seconds)
            try:
                await self.maintain(datetime.now(UTC))
            except UNAVAILABLE_ERRORS as exc:
                log.warning("partition maintenance skipped", error=type(exc).__name__)

    # -- health --------------------------------------------------------------------------------

    async def check(self, seconds: float = 2.0) -> bool:
        """Is the store ready (migrated, partitions made) and did the database answer within
        ``seconds``?

        Bounded by ``seconds`` even when the database hangs. The query runs as a task of its
        own (``_select_one``), which a check waits for at most ``seconds``; a later check waits
        on the same one while it runs, so at most one is in flight."""
        pool = self._pool
        if pool is None or not self._ready.is_set() or self._closing:
            return False
        probe = self._probe
        if probe is None or probe.done():
            probe = self._probe = asyncio.create_task(
                self._select_one(pool, seconds), name="store-check"
            )
        done, _ = await asyncio.wait({probe}, timeout=seconds)
        healthy = bool(done) and not probe.cancelled() and probe.result()
        self.metrics.store_ready.set(1 if healthy else 0)
        return healthy

    async def _select_one(self, pool: asyncpg.Pool, seconds: float) -> bool:
        """``SELECT 1`` on a connection of the pool, within ``seconds`` once it has one (a
        connection within the connect timeout). A query that times out has its connection
        terminated: cancelling it would wait for the server to acknowledge the cancel before
        the connection goes back to the pool, which a hung server never does."""
        try:
            conn = await pool.acquire(timeout=self.config.connect_timeout_seconds)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            return False
        try:
            await conn.fetchval("SELECT 1", timeout=seconds)
        except TimeoutError:
            conn.terminate()
            return False
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            return False
        except Exception as exc:  # whatever else: not ready, said once by its type only
            log.warning("database check failed", error=type(exc).__name__)
            return False
        finally:
            await pool.release(conn)
        return True

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The pool once the store is ready (migrated, partitions made), for the forwarder."""
        return self._pool if self._ready.is_set() else None

    def pool_stats(self) -> tuple[int, int]:
        if self._pool is None:
            return 0, 0
        size = self._pool.get_size()
        return size, size - self._pool.get_idle_size()

    # -- writing -------------------------------------------------------------------------------

    async def submit(self, event: Event) -> bool:
        """Commit ``event``; True when it is new, False for a duplicate of a stored one.

        Raises StoreUnavailable when it could not be committed: StoreOverloaded at once when too
        much already waits, CommitTimeout when the deadline passed first.
        """
        if self.tracing is not None and event.trace is None:
            return await self.tracing.submit(self.submit, event)
        return await self.enqueue(event)

    def enqueue(self, event: Event, then: Then | None = None) -> asyncio.Future[bool]:
        """``submit`` without the wait (and without a span): the future is resolved once the
        event's batch has committed (True when new), or fails as ``submit`` would. Raises
        StoreUnavailable or StoreOverloaded at once.

        ``then`` is called with the future once it is resolved: by the writer, right after the
        commit (in the same turn of the event loop that sees the commit, not on a later one), or
        as a done callback when the deadline fails it first. The receiver's one-pass route
        answers from it, with no task per request."""
        if self._closing or not self._ready.is_set():
            raise StoreUnavailable("event store not ready")
        size = held_size(event)
        # One event is always taken into an empty queue, however large (its headers may push it
        # past maxQueuedBytes, which the config keeps at least maxBodyBytes).
        if self._held_events and (
            self._held_events >= self.config.max_queued_events
            or self._held_bytes + size > self.config.max_queued_bytes
        ):
            self.metrics.store_overloaded.inc()
            raise StoreOverloaded("too many events waiting for a commit")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._held_events += 1
        self._held_bytes += size
        self._deadlines.append((time.monotonic() + self.config.commit_timeout_seconds, future))
        if then is not None:
            future.add_done_callback(then)
        self._queue.put_nowait(_Pending(event, future, size, then))
        if self._group_depth and self._queue.qsize() + 1 >= self._group_depth:
            self._group_wake.set()
        return future

    def held(self) -> tuple[int, int]:
        """Events waiting for or in a commit, and their bytes (payloads and stored headers)."""
        return self._held_events, self._held_bytes

    async def _sweep_loop(self) -> None:
        """Fail the requests whose deadline passed (their events stay queued: they may commit)."""
        deadlines = self._deadlines
        while True:
            await asyncio.sleep(self.sweep_interval_seconds)
            now = time.monotonic()
            while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
                _, future = deadlines.popleft()
                if not future.done():
                    self.metrics.commit_timeouts.inc()
                    future.set_exception(CommitTimeout("no commit before the deadline"))
                    # Nobody may be waiting any more (the client went away): never "unretrieved".
                    future.exception()

    async def _writer_loop(self) -> None:
        """``writer_concurrency`` writers, each committing what is queued once it is free. Dedup
        stays exact across their commits: the second insert of an id waits for the first
        transaction on the unique key, then conflicts (or inserts, had the first failed).

        Each writer is one long-lived task that commits its batch itself, so between an event
        being queued and its answer being written the event loop turns only for a writer to
        wake and for the database's reply (a task per batch cost another turn, and the pool's
        release three more: under load, each is another loop's worth of requests in front of
        the answers). One free writer at a time puts a batch together (``assembling``): it takes
        the first event and waits beside the commits in flight, so the events queued meanwhile
        go into its batch rather than into a batch of their own."""
        # Each writer's batch in flight: when it started and how many events it holds.
        flushing: dict[int, tuple[float, int]] = {}
        assembling = asyncio.Lock()
        await asyncio.gather(
            *(
                self._writer(slot, flushing, assembling)
                for slot in range(self.config.writer_concurrency)
            )
        )

    async def _writer(
        self, slot: int, flushing: dict[int, tuple[float, int]], assembling: asyncio.Lock
    ) -> None:
        while True:
            batch: list[_Pending] = []
            try:
                async with assembling:
                    batch.append(await self._queue.get())
                    await self._group_beside(flushing)
                    while len(batch) < self.config.max_batch and not self._queue.empty():
                        batch.append(self._queue.get_nowait())
                    flushing[slot] = (time.monotonic(), len(batch))
                if self.tracing is None:
                    await self._flush(batch)
                else:
                    async with self.tracing.batch([p.event.trace for p in batch]):
                        await self._flush(batch)
            except Exception as exc:
                # _flush answers the insert's own errors; this is a failure on its way (a log
                # line refused, the batch's span): the batch is answered 503 and the writer goes
                # on, or every later request would wait out its deadline.
                _fail(batch, StoreUnavailable("event not committed"))
                _log_quietly("error", "writer failed", error=type(exc).__name__)
            finally:
                flushing.pop(slot, None)
                self._group_wake.set()
                for pending in batch:
                    self._held_events -= 1
                    self._held_bytes -= pending.size
                    self._queue.task_done()

    async def _group_beside(self, flushing: dict[int, tuple[float, int]]) -> None:
        """Beside commits in flight, wait (one event is queued already) until as many events
        wait as the largest of them holds, one of them ends, or the oldest has run
        ``STALL_SECONDS``."""
        if not flushing:
            return
        oldest = min(started for started, _ in flushing.values())
        # As many as the largest commit in flight holds, but no more than maxQueuedEvents leaves
        # room for beside the commits in flight (past it, new events are refused, not queued).
        in_flight = self._held_events - self._queue.qsize() - 1
        room = self.config.max_queued_events - in_flight
        depth = min(max(size for _, size in flushing.values()), room)
        left = oldest + STALL_SECONDS - time.monotonic()
        if left <= 0 or self._queue.qsize() + 1 >= depth:
            return
        self._group_wake.clear()
        self._group_depth = depth
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._group_wake.wait()
        finally:
            self._group_depth = 0

    async def _flush(self, batch: list[_Pending]) -> None:
        # Within one batch the first delivery of an id wins; the others are its duplicates.
        unique: dict[_Key, _Pending] = {}
        for pending in batch:
            unique.setdefault(_key(pending.event), pending)
        started = time.perf_counter()
        try:
            fresh, replayed = await self._insert([p.event for p in unique.values()])
        except DATA_ERRORS as exc:
            if len(unique) > 1:
                # One event's values are refused: commit the others one by one.
                by_key: dict[_Key, list[_Pending]] = {}
                for pending in batch:
                    by_key.setdefault(_key(pending.event), []).append(pending)
                for same_event in by_key.values():
                    await self._flush(same_event)
                return
            self.metrics.store_errors.inc()
            _fail(batch, EventRefused("event refused"))
            _log_quietly("error", "event refused by the database", error=type(exc).__name__)
            return
        except Exception as exc:
            self.metrics.store_errors.inc()
            _fail(batch, StoreUnavailable("event not committed"))
            _log_quietly(
                "error", "batch not committed", error=type(exc).__name__, events=len(batch)
            )
            return
        self.metrics.commit_duration.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(unique))
        for pending in batch:
            key = _key(pending.event)
            if key in replayed:
                pending.settle(exc=ReplayRefused("replay key already used"))
                continue
            pending.settle(key in fresh and unique[key] is pending)

    async def _insert(self, events: list[Event]) -> tuple[set[_Key], set[_Key]]:
        """Commit ``events``: (the keys of those new, the keys of those refused as replays).

        Deliveries of forwarding sources are written with them, leased to this process's
        forwarder when it has room, and handed to it once committed.
        """
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("no pool")
        forwarder = self.outbox
        forwarded = forwarder.forwarded if forwarder is not None else frozenset()
        to_forward = [e for e in events if e.source in forwarded]
        reservation = forwarder.reserve(to_forward) if forwarder and to_forward else None
        lease = reservation.lease if reservation is not None else None
        try:
            fresh, replayed = await self._insert_with_retries(pool, events, forwarded, lease)
        except BaseException:
            if reservation is not None and forwarder is not None:
                # Possibly committed after all (the answer was lost): then the leases run out
                # and the deliveries are claimed like any other.
                forwarder.handoff(reservation, [])
            raise
        if reservation is not None and forwarder is not None:
            # Every fresh event of a forwarding source got its delivery in the same statement.
            forwarder.handoff(reservation, [e for e in to_forward if _key(e) in fresh])
        return fresh, replayed

    async def _insert_with_retries(
        self,
        pool: asyncpg.Pool,
        events: list[Event],
        forwarded: frozenset[str],
        lease: Lease | None,
    ) -> tuple[set[_Key], set[_Key]]:
        # Bounded waits: for a connection (every one may be stuck in a hung database) and, by the
        # pool's command timeout, for the statement.
        acquire_timeout = self.config.connect_timeout_seconds
        for attempt in range(3):
            try:
                return await _insert_and_release(
                    pool, acquire_timeout, events, forwarded, lease, self._releases
                )
            except asyncpg.PostgresError as exc:
                if not partition_missing(exc) or attempt == 2:
                    raise
                async with pool.acquire(timeout=acquire_timeout) as conn:
                    await create_partitions(
                        conn, {partitions.utc_day(e.received_at) for e in events}
                    )
            except (asyncpg.exceptions.ConnectionDoesNotExistError, ConnectionResetError):
                # A connection broken by a database restart: asyncpg replaces it on the next
                # acquire, so one retry avoids a needless 503 after recovery.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- partitions and retention --------------------------------------------------------------

    async def maintain(self, now: datetime) -> bool:
        """Create partitions ahead, drop expired ones, prune expired dedup keys.

        Runs in whichever replica holds the maintenance advisory lock; returns False elsewhere.
        """
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            # Every replica registers its sources, lock or not: partitions are dropped by the
            # longest retention registered, so an unregistered source would lose its events.
            await self._register_sources(conn, now)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK_ID):
                return False
            try:
                await create_partitions(
                    conn, set(partitions.days_to_create(now, self.config.partitions_ahead_days))
                )
                await self._expire(conn, now)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK_ID)
        return True

    async def _register_sources(self, conn: Any, now: datetime) -> None:
        await register_sources(
            conn,
            [(s.key, s.retention_days) for s in self.sources],
            now,
            forwarding={s.key for s in self.sources if s.forward is not None},
        )

    async def _expire(self, conn: Any, now: datetime) -> None:
        longest = await conn.fetchval("SELECT max(retention_days) FROM webhook_sources")
        if longest is None:
            return
        existing = [
            r["relname"]
            for r in await conn.fetch(
                """SELECT c.relname FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                   JOIN pg_class p ON p.oid = i.inhparent
                   WHERE p.relname = 'webhook_events'"""
            )
        ]
        for name in partitions.partitions_to_drop(existing, now, int(longest)):
            day = partitions.partition_day(name)
            assert day is not None
            # The day's deliveries go with its events (dead letters included). One statement
            # (one transaction) each, so that no lock on one table is held while waiting for
            # the other: that would deadlock with queries that read both.
            await conn.execute(f"DROP TABLE IF EXISTS {partitions.deliveries_partition_name(day)}")
            await conn.execute(f"DROP TABLE IF EXISTS {name}")
            log.info("partition dropped", partition=name)
        # Sources that keep less than the longest retention lose their older rows by DELETE.
        for row in await conn.fetch(
            "SELECT source, retention_days FROM webhook_sources WHERE retention_days < $1",
            longest,
        ):
            cutoff = now - timedelta(days=row["retention_days"])
            for table in ("webhook_deliveries", "webhook_events"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE source = $1 AND received_at < $2",  # noqa: S608
                    row["source"],
                    cutoff,
                )
        # A dedup key goes no earlier than its event, or a redelivery in between is stored twice:
        # for the longest retention that is when the event's whole day is dropped, for the others
        # when the DELETE above takes it.
        # Replay keys past their expiry: their signatures fail the tolerance check anyway.
        await conn.execute("DELETE FROM webhook_replay_keys WHERE expires_at < $1", now)
        await conn.execute(
            """DELETE FROM webhook_event_ids i USING webhook_sources s
               WHERE i.source = s.source
                 AND i.received_at < CASE
                     WHEN s.retention_days >= $2 THEN $3::timestamptz
                     ELSE $1::timestamptz - make_interval(days => s.retention_days)
                 END""",
            now,
            longest,
            partitions.dropped_before(now, int(longest)),
        )
        # Circuits of processes that stopped without saying so (killed): no longer anyone's.
        await conn.execute(
            "DELETE FROM webhook_forward_circuits WHERE updated_at < $1",
            now - timedelta(days=1),
        )


async def _insert_and_release(
    pool: asyncpg.Pool,
    acquire_timeout: float,
    events: list[Event],
    forwarded: frozenset[str],
    lease: Lease | None,
    releases: set[asyncio.Task[None]],
) -> tuple[set[_Key], set[_Key]]:
    """``insert_events`` on a pool connection.

    After a successful insert the connection goes back in a task the batch's answers do not
    wait for (``pool.release`` shields a task of its own: three turns of the event loop),
    without asyncpg's reset round trip (see ``_reset_connection``). Meanwhile a writer that
    goes straight on to its next batch takes another connection: the writers hold up to twice
    ``writerConcurrency`` connections of the pool at a peak. A failed insert's connection goes
    back, reset, before the error is raised."""
    conn = await pool.acquire(timeout=acquire_timeout)
    try:
        result = await insert_events(conn, events, forwarded=forwarded, lease=lease)
    except BaseException:
        await pool.release(conn, timeout=acquire_timeout)
        raise
    task = asyncio.create_task(_release_clean(pool, conn, acquire_timeout))
    releases.add(task)
    task.add_done_callback(releases.discard)
    return result


async def _release_clean(pool: asyncpg.Pool, conn: Any, seconds: float) -> None:
    """Give back a connection whose insert committed (in a task of its own: the flag is set in
    its copy of the context only)."""
    _CLEAN_RELEASE.set(True)
    try:
        await pool.release(conn, timeout=seconds)
    except Exception as exc:
        # asyncpg has closed the connection; its slot in the pool opens a new one when needed.
        _log_quietly("warning", "connection release failed", error=type(exc).__name__)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """What the pool runs on a connection given back, after asyncpg has ended any transaction
    left open. asyncpg's default sends ``get_reset_query()`` (advisory locks released, cursors
    closed, ``UNLISTEN *``, ``RESET ALL``): one more round trip and one more transaction on the
    server for every batch. A connection the writer gives back after a successful insert has
    none of that to undo (one statement, or one transaction that committed; no session setting,
    lock or cursor), so it skips it; every other release (maintenance, the forwarder, a failed
    insert) gets asyncpg's query as before."""
    if _CLEAN_RELEASE.get():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


async def insert_events(
    conn: Any,
    events: Sequence[Event],
    *,
    forwarded: Collection[str] | None = None,
    lease: Lease | None = None,
) -> tuple[set[_Key], set[_Key]]:
    """Insert ``events`` unless their (source, subject, event_id) is already stored: (the keys
    of those new, the keys of those refused as replays of another event's replay key). The one
    path every event goes through: a receiver's batch, and each page of a sync
    (``webhook_server.sync.runner``), inside the caller's transaction when it has one (a
    savepoint then, for the replay keys).

    The same statement writes the forward outbox: every new event of a source that forwards gets
    its row in ``webhook_deliveries``, so an event is never stored without the delivery its
    source asks for. ``forwarded`` names those sources (a receiver knows its own config); None
    means "as registered in webhook_sources by the sources' receivers" (a sync does not know).
    ``lease`` hands the new deliveries to their writer (webhook_server.forward delivers them from
    memory); without one they are due at once for any replica's poller.

    Dedup keys are locked in one order by every batch, so concurrent batches holding the same
    ids wait for each other instead of deadlocking. Within ``events`` the first of a key wins.
    """
    unique: dict[_Key, Event] = {}
    for event in events:
        unique.setdefault(_key(event), event)
    ordered = [unique[k] for k in sorted(unique)]
    outbox_args = (
        None if forwarded is None else sorted(forwarded),
        None if lease is None else lease.until,
        None if lease is None else lease.owner,
    )
    if not any(e.replay_key is not None for e in ordered):
        rows = await conn.fetch(
            _INSERT, *_insert_args(ordered, forwarded), *outbox_args, _trace_args(ordered)
        )
        return {(r["source"], r["subject"], r["event_id"]) for r in rows}, set()
    async with conn.transaction():
        replayed = await _claim_replay_keys(conn, ordered)
        kept = [e for e in ordered if _key(e) not in replayed]
        rows = (
            await conn.fetch(
                _INSERT, *_insert_args(kept, forwarded), *outbox_args, _trace_args(kept)
            )
            if kept
            else []
        )
    return {(r["source"], r["subject"], r["event_id"]) for r in rows}, replayed


def partition_missing(exc: BaseException) -> bool:
    """Whether ``exc`` says an event's day has no partition yet (create it, then retry)."""
    return getattr(exc, "sqlstate", None) == _PARTITION_MISSING


async def register_sources(
    conn: Any,
    sources: Sequence[tuple[str, int]],
    now: datetime,
    *,
    forwarding: Collection[str] | None = None,
) -> None:
    """Record each (source, retention days): partitions are dropped by the longest retention
    registered, so a source that stores events must be registered or it loses them.

    A source's receivers also say whether it forwards (``forwarding``: the keys that do), which
    is what inserts that do not know (a sync's) go by; without it the flag is left as it is.
    """
    if forwarding is not None:
        await conn.executemany(
            """INSERT INTO webhook_sources (source, retention_days, last_seen_at, forward)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (source) DO UPDATE
               SET retention_days = EXCLUDED.retention_days,
                   last_seen_at = EXCLUDED.last_seen_at,
                   forward = EXCLUDED.forward""",
            [(key, retention, now, key in forwarding) for key, retention in sources],
        )
        return
    await conn.executemany(
        """INSERT INTO webhook_sources (source, retention_days, last_seen_at)
           VALUES ($1, $2, $3)
           ON CONFLICT (source) DO UPDATE
           SET retention_days = EXCLUDED.retention_days,
               last_seen_at = EXCLUDED.last_seen_at""",
        [(key, retention, now) for key, retention in sources],
    )


def _insert_args(events: list[Event], forwarded: Collection[str] | None) -> tuple[list[Any], ...]:
    """The statement's arrays. A delivery's webhook id is derived only for the events that may
    get a delivery: those of ``forwarded`` sources (all of them when None: the database says)."""
    return (
        [e.source for e in events],
        [e.event_id for e in events],
        [e.event_type for e in events],
        [e.received_at for e in events],
        [e.request_id for e in events],
        [e.payload for e in events],
        [_headers_json(e.headers) for e in events],
        [e.subject for e in events],
        [1 if e.event_count is None else e.event_count for e in events],
        [
            outbox.webhook_id(e.source, e.subject, e.event_id)
            if forwarded is None or e.source in forwarded
            else None
            for e in events
        ],
    )


def _trace_args(events: list[Event]) -> list[str | None] | None:
    """Each event's ``trace_parent`` for its delivery; None (every one NULL) when untraced."""
    if all(e.trace is None for e in events):
        return None
    return [None if e.trace is None else tracing.format_traceparent(e.trace) for e in events]


def _headers_json(headers: dict[str, str]) -> str:
    """Stored headers as JSON text: orjson (a tenth of ``json.dumps``'s cost on the writer), or
    ``json.dumps`` for what orjson refuses (a lone surrogate), so that such an event fails alone
    with the data error PostgreSQL gives it, as before, rather than its whole batch."""
    try:
        return orjson.dumps(headers).decode()
    except orjson.JSONEncodeError:
        return json.dumps(headers)


async def _claim_replay_keys(conn: Any, events: list[Event]) -> set[_Key]:
    """Claim every event's replay key in the caller's transaction; the keys of the events whose
    replay key another event holds. The same event with the same key (a redelivery) is not a
    replay: it goes on to be answered as a duplicate."""
    claims = sorted(
        (e.source, e.replay_key, e.subject, e.event_id, e.replay_until)
        for e in events
        if e.replay_key is not None and e.replay_until is not None
    )
    # In one order in every batch, so two claiming the same keys wait rather than deadlock.
    await conn.execute(_CLAIM_REPLAY_KEYS, *(list(column) for column in zip(*claims, strict=True)))
    owners = {
        (r["source"], r["replay_key"]): (r["subject"], r["event_id"])
        for r in await conn.fetch(
            _REPLAY_KEY_OWNERS, [c[0] for c in claims], [c[1] for c in claims]
        )
    }
    return {
        _key(e)
        for e in events
        if e.replay_key is not None
        and owners.get((e.source, e.replay_key)) != (e.subject, e.event_id)
    }


def _log_quietly(level: str, message: str, **fields: Any) -> None:
    """Log from the writer's error paths: a stdout that refuses the line must not end the
    writer (every later request would wait out its deadline)."""
    with contextlib.suppress(Exception):
        getattr(log, level)(message, **fields)


def _fail(batch: list[_Pending], exc: Exception) -> None:
    for pending in batch:
        pending.settle(exc=exc)


def _why_unusable(exc: Exception, config: DatabaseConfig) -> dict[str, str]:
    """A hint for errors that retrying will not cure by itself (never the URL: it may hold a
    password). The receiver still retries: a mounted Secret can appear or change later."""
    if isinstance(exc, OSError) and exc.filename is not None and config.url_file:
        return {"hint": f"cannot read urlFile {config.url_file}: {exc.strerror or exc}"}
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError | ValueError):
        return {"hint": "the database URL is not a usable postgresql:// URL"}
    if isinstance(
        exc,
        asyncpg.exceptions.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError,
    ):
        return {"hint": "the database refused the URL's user or password"}
    return {}


async def create_partitions(conn: Any, days: set[date]) -> None:
    """Create the events' and the deliveries' partitions of ``days`` (if missing).

    One transaction per partition: creating a partition locks its parent exclusively, and a
    transaction holding ``webhook_events`` while it waits for ``webhook_deliveries`` deadlocks
    with a query that reads the two in the other order (a claim).
    """
    # Names and bounds come from dates we computed, never from input, so formatting is safe.
    for day in sorted(days):
        low, high = partitions.bounds(day)
        for name, parent in (
            (partitions.partition_name(day), "webhook_events"),
            (partitions.deliveries_partition_name(day), "webhook_deliveries"),
        ):
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} "
                    f"PARTITION OF {parent} FOR VALUES FROM ('{low}') TO ('{high}')"
                )
