"""Delivering stored events to their sources' targets: one :class:`Forwarder` per receiver.

Where a delivery comes from:

* **the writer**, for events this process just committed: their delivery rows are written
  leased to this process (``Store`` asks :meth:`Forwarder.reserve` before the batch) and handed
  over with the payload still in memory (:meth:`Forwarder.handoff`), so a delivery costs no
  extra round trip and starts as soon as the event is acknowledged;
* **the poller**, every ``pollIntervalSeconds`` (and at once when a queue drains while more is
  due): rows that are due and unleased, or whose lease ran out — retries, events of a replica
  that died, events written while this process had no room, events a sync inserted.

Memory is bounded: deliveries held (reserved, queued or in flight) are capped in number and
payload bytes; past the cap new events are simply left to the table, and polled back later. An
open circuit takes nothing from the writer and is not polled; what it had queued is put back
(``dfm_forward_deferred_total``) without spending an attempt. Outcomes are written in batches by
one recorder task. Every wait is bounded, and a delivery this process can no longer finish
within its lease is dropped from memory rather than sent late (the next holder sends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg

from webhook_server import tracing
from webhook_server.config import ForwardConfig, ForwardingConfig, Provider, SourceConfig
from webhook_server.forward import policy
from webhook_server.forward.http import AnswerError, Pool
from webhook_server.forward.request import build_headers, signing_keys
from webhook_server.logs import AccessLog, get_logger
from webhook_server.metrics import CIRCUIT_VALUES, ReceiverMetrics
from webhook_server.outbound import CircuitBreaker, CircuitState, parse_retry_after
from webhook_server.secrets import SourceSecrets
from webhook_server.store import UNAVAILABLE_ERRORS, Event, Reservation, Store
from webhook_server.store import outbox as table
from webhook_server.store.outbox import Claimed, Lease, Result, State

log = get_logger("dfm.forward")

# A delivery is sent only if its lease outlives the attempt by this much.
LEASE_MARGIN_SECONDS = 1.0
# How long the recorder waits before retrying after the database failed it.
RECORD_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
_DB_ERRORS = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


def default_replica_id() -> str:
    """The pod's name (its host name) and a suffix unique to this process."""
    return f"{socket.gethostname()[:100]}-{secrets.token_hex(4)}"


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class Target:
    """One source's target, as this process sees it: circuit, signing secrets, queue."""

    def __init__(
        self,
        source: SourceConfig,
        metrics: ReceiverMetrics,
        clock: Callable[[], float],
        cap: int,
    ) -> None:
        assert source.forward is not None
        self.key = source.key
        self.forward: ForwardConfig = source.forward
        self.cap = cap
        cb = self.forward.circuit_breaker
        self.breaker = CircuitBreaker(
            failure_threshold=cb.failure_threshold,
            cool_down_seconds=cb.cool_down_seconds,
            max_cool_down_seconds=cb.max_cool_down_seconds,
            clock=clock,
        )
        self.secrets = SourceSecrets(
            self.forward.signing_secrets, Provider.STANDARD, purpose="forward signing"
        )
        self.http = Pool(self.forward.url, max_idle=self.forward.max_concurrency)
        self.queue: deque[Claimed] = deque()
        self.in_flight = 0
        # What is being sent right now (its lease is given back should shutdown cut it short).
        self.sending: set[tuple[str, str, str, datetime]] = set()
        self.wake = asyncio.Event()
        # The last claim filled its room: more may be due.
        self.more_due = False
        self.circuit = CircuitState.CLOSED
        self.circuit_changed = False
        self.opened_at: datetime | None = None
        self.last_delivered_at: datetime | None = None
        self.last_failure_at: datetime | None = None
        self._keys_for: tuple[bytes, ...] | None = None
        self._keys: list[bytes] = []
        self.attempts = {
            o: metrics.forward_attempts.labels(self.key, o.value) for o in policy.Outcome
        }
        self.latency = metrics.forward_delivery_latency.labels(self.key)
        self.duration = metrics.forward_attempt_duration.labels(self.key)
        self.deferred = metrics.forward_deferred.labels(self.key)
        self.dead = {
            r: metrics.forward_dead_letters.labels(self.key, r.value) for r in policy.DeadReason
        }
        self.queued_gauge = metrics.forward_queued.labels(self.key)
        self.circuit_gauge = metrics.forward_circuit_state.labels(self.key)
        self.circuit_gauge.set(0)

    def keys(self, now: float) -> list[bytes]:
        """The signing keys valid now (current and, until it expires, previous)."""
        valid = tuple(self.secrets.valid_at(now))
        if valid != self._keys_for:
            self._keys_for = valid
            self._keys = signing_keys(valid)
        return self._keys

    @property
    def held(self) -> int:
        return len(self.queue) + self.in_flight

    def accepting(self, now: float) -> bool:
        """Room for the writer's deliveries: signable, circuit closed, queue below its cap."""
        return (
            self.breaker.state is CircuitState.CLOSED
            and self.held < self.cap
            and bool(self.keys(now))
        )

    def note_circuit(self, now: float) -> CircuitState | None:
        """Record a change of circuit state since last looked; returns the new state if so."""
        state = self.breaker.state
        if state is self.circuit:
            return None
        self.circuit = state
        self.circuit_changed = True
        self.circuit_gauge.set(CIRCUIT_VALUES[state.value])
        if state is CircuitState.OPEN and self.opened_at is None:
            self.opened_at = _utc(now)
        elif state is CircuitState.CLOSED:
            self.opened_at = None
        return state

    def circuit_row(self) -> table.CircuitRow:
        return table.CircuitRow(
            source=self.key,
            state=self.breaker.state.value,
            consecutive_failures=self.breaker.consecutive_failures,
            opened_at=self.opened_at,
            last_failure_at=self.last_failure_at,
            last_delivered_at=self.last_delivered_at,
        )


class Forwarder:
    """The forward outbox of one receiver process (implements ``webhook_server.store.Outbox``)."""

    def __init__(
        self,
        config: ForwardingConfig,
        sources: Sequence[SourceConfig],
        store: Store,
        metrics: ReceiverMetrics,
        access_log: AccessLog,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.access_log = access_log
        self.replica = config.replica_id or default_replica_id()
        self._clock = clock
        self._rng = rng
        forwarding = [s for s in sources if s.forward is not None]
        # The memory budget is shared fairly: no target's backlog can take all of it.
        share = max(config.max_queued_events // max(len(forwarding), 1), 1)
        self.targets: dict[str, Target] = {}
        for source in forwarding:
            assert source.forward is not None
            cap = max(share, source.forward.max_concurrency)
            self.targets[source.key] = Target(source, metrics, clock, cap)
        self.forwarded = frozenset(self.targets)
        slowest = max((t.forward.timeout_seconds for t in self.targets.values()), default=0.0)
        # A delivery keeps its lease for a queue wait plus its attempt, with room to spare.
        self.lease_seconds = max(config.lease_seconds, 4 * slowest)
        self._held_events = 0
        self._held_bytes = 0
        self._left_in_table = False
        self._results: list[Result] = []
        self._results_ready = asyncio.Event()
        self._poll_wake = asyncio.Event()
        # Set while no attempt is in flight (what shutdown waits for).
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self._workers: list[asyncio.Task[None]] = []
        self._loops: list[asyncio.Task[None]] = []
        self._recorder: asyncio.Task[None] | None = None
        # Set while the recorder is not in the middle of a write (shutdown waits for it).
        self._recorder_idle = asyncio.Event()
        self._recorder_idle.set()
        self._running = False
        self._closing = False
        # Spans (webhook_server.tracing), when tracing is on.
        self.tracing: tracing.Tracing | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.targets:
            return
        for target in self.targets.values():
            for number in range(target.forward.max_concurrency):
                self._workers.append(
                    asyncio.create_task(self._worker(target), name=f"forward-{target.key}-{number}")
                )
        self._loops.append(asyncio.create_task(self._poll_loop(), name="forward-poll"))
        self._loops.append(asyncio.create_task(self._stats_loop(), name="forward-stats"))
        self._recorder = asyncio.create_task(self._record_loop(), name="forward-record")
        self._running = True
        log.info(
            "forwarding",
            replica=self.replica,
            targets=sorted(self.targets),
            lease_seconds=self.lease_seconds,
        )

    async def close(self) -> None:
        """Stop taking work, let attempts in flight finish (``shutdownGraceSeconds``), record
        their outcomes, give back the leases of what was not sent, forget this replica's
        circuits. Bounded: a database or target that hangs cannot hold shutdown for long."""
        if not self._running:
            return
        self._closing = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.shutdown_grace_seconds):
                await self._idle.wait()
        cut_short = [key for t in self.targets.values() for key in t.sending]
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        # Queued, and cut short past the grace period (the target may have it: at least once).
        unsent = [item.key for t in self.targets.values() for item in t.queue] + cut_short
        for target in self.targets.values():
            target.queue.clear()
        if self._recorder is not None:
            # A write in progress finishes (its outcomes are in no other list); the rest is
            # written below.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.store.statement_timeout_seconds):
                    await self._recorder_idle.wait()
            self._recorder.cancel()
            await asyncio.gather(self._recorder, return_exceptions=True)
        pool = self.store.pool
        if pool is not None:
            with contextlib.suppress(*_DB_ERRORS, TimeoutError):
                async with asyncio.timeout(self.store.config.connect_timeout_seconds + 5):
                    async with pool.acquire() as conn:
                        await table.record(conn, self._results, self.replica)
                        self._results = []
                        released = await table.release(conn, self.replica, unsent)
                        await table.forget_replica(conn, self.replica)
                        if released:
                            log.info("forward leases given back", deliveries=released)
        for target in self.targets.values():
            target.http.close()
        self._running = False

    # -- the writer's side (webhook_server.store.Outbox) ---------------------------------------

    def reserve(self, events: Sequence[Event]) -> Reservation | None:
        if not self._running or self._closing:
            return None
        now = self._clock()
        size = sum(len(e.payload) for e in events)
        if (
            self._held_events + len(events) > self.config.max_queued_events
            or self._held_bytes + size > self.config.max_queued_bytes
            or not all(self.targets[key].accepting(now) for key in {e.source for e in events})
        ):
            self._left_in_table = True
            return None
        self._held_events += len(events)
        self._held_bytes += size
        return Reservation(Lease(self.replica, _utc(now + self.lease_seconds)), len(events), size)

    def handoff(self, reservation: Reservation, committed: Sequence[Event]) -> None:
        self._held_events -= reservation.events
        self._held_bytes -= reservation.bytes
        until = reservation.lease.until
        for event in committed:
            self._enqueue(
                Claimed(
                    source=event.source,
                    subject=event.subject,
                    event_id=event.event_id,
                    received_at=event.received_at,
                    webhook_id=table.webhook_id(event.source, event.subject, event.event_id),
                    event_type=event.event_type,
                    payload=event.payload,
                    headers=event.headers,
                    attempts=0,
                    lease_until=until,
                    traceparent=(
                        None if event.trace is None else tracing.format_traceparent(event.trace)
                    ),
                )
            )

    # -- memory ---------------------------------------------------------------------------------

    def _enqueue(self, item: Claimed) -> None:
        target = self.targets[item.source]
        target.queue.append(item)
        self._held_events += 1
        self._held_bytes += len(item.payload)
        target.wake.set()

    def _release(self, item: Claimed) -> None:
        self._held_events -= 1
        self._held_bytes -= len(item.payload)

    def held(self) -> tuple[int, int]:
        """Deliveries held in memory (reserved, queued, in flight) and their payload bytes."""
        return self._held_events, self._held_bytes

    def refresh_gauges(self) -> None:
        for target in self.targets.values():
            target.queued_gauge.set(target.held)
            target.note_circuit(self._clock())

    # -- sending ----------------------------------------------------------------------------------

    async def _worker(self, target: Target) -> None:
        while not self._closing:
            if not target.queue:
                target.wake.clear()
                await target.wake.wait()
                continue
            item = target.queue.popleft()
            target.in_flight += 1
            target.sending.add(item.key)
            self._in_flight += 1
            self._idle.clear()
            try:
                await self._process(target, item)
            except Exception as exc:  # never lose the worker; the lease makes it retried
                log.error("forward attempt failed unexpectedly", source=target.key,
                          error=type(exc).__name__)  # fmt: skip
            finally:
                target.in_flight -= 1
                target.sending.discard(item.key)
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()
                self._release(item)
            if (target.more_due or self._left_in_table) and target.held < target.cap // 2:
                target.more_due = False
                self._left_in_table = False
                self._poll_wake.set()

    async def _process(self, target: Target, item: Claimed) -> None:
        now = self._clock()
        forward = target.forward
        if item.lease_until.timestamp() - now < forward.timeout_seconds + LEASE_MARGIN_SECONDS:
            # It would be sent after the lease ran out, possibly by two replicas at once:
            # whoever claims it next sends it.
            return
        keys = target.keys(now)
        if not keys:
            self._defer(target, [item], self.config.stats_interval_seconds)
            return
        if not target.breaker.allow():
            # Open (or its probe is out): this one and everything queued go back to the table.
            waiting = [item, *target.queue]
            target.queue.clear()
            for queued in waiting[1:]:
                self._release(queued)
            self._defer(target, waiting, max(target.breaker.retry_in(), 0.1))
            return
        attempt = item.attempts + 1
        headers = build_headers(
            payload=item.payload,
            webhook_id=item.webhook_id,
            keys=keys,
            now=now,
            stored_headers=item.headers,
            source=target.key,
            event_type=item.event_type,
            attempt=attempt,
            parent=item.traceparent,
        )
        started = time.perf_counter()
        if self.tracing is None:
            status, retry_after, outcome = await self._send(target, item, headers)
        else:
            status, retry_after, outcome = await self._send_traced(target, item, headers, attempt)
        elapsed = time.perf_counter() - started
        now = self._clock()
        at = _utc(now)
        if outcome is policy.Outcome.DELIVERED:
            target.breaker.record_success()
            target.last_delivered_at = at
            target.latency.observe(max(now - item.age_from.timestamp(), 0.0))
        else:
            target.breaker.record_failure()
            target.last_failure_at = at
        self._circuit_moved(target, now)
        target.attempts[outcome].inc()
        target.duration.observe(elapsed)
        decision = policy.decide(
            outcome,
            attempts=attempt,
            received_at=item.age_from,
            now=at,
            retry_after=parse_retry_after(retry_after, at) if retry_after else None,
            forward=forward,
            rng=self._rng,
        )
        if decision.dead_reason is not None:
            target.dead[decision.dead_reason].inc()
            log.warning(
                "delivery dead-lettered",
                source=target.key,
                webhook_id=item.webhook_id,
                attempts=attempt,
                reason=decision.dead_reason.value,
                status=status,
            )
        self._results.append(
            Result(
                source=item.source,
                subject=item.subject,
                event_id=item.event_id,
                received_at=item.received_at,
                state=decision.state,
                attempted=True,
                at=at,
                next_attempt_at=decision.next_attempt_at,
                status=status,
                error=(
                    decision.dead_reason.value
                    if decision.dead_reason is not None
                    else None
                    if outcome is policy.Outcome.DELIVERED
                    else outcome.value
                ),
            )
        )
        self._results_ready.set()
        if outcome is not policy.Outcome.DELIVERED:
            # Failed attempts only: a delivery is in the table (delivered_at, attempts) and the
            # metrics; a line per success would cost as much as the request's own log line.
            self.access_log.write(
                event="forward",
                source=target.key,
                webhook_id=item.webhook_id,
                attempt=attempt,
                outcome=outcome.value,
                status=status,
                state=decision.state.value,
                latency_ms=round(elapsed * 1000, 2),
            )

    async def _send(
        self, target: Target, item: Claimed, headers: dict[str, str]
    ) -> tuple[int | None, str | None, policy.Outcome]:
        try:
            async with asyncio.timeout(target.forward.timeout_seconds):
                answer = await target.http.post(item.payload, headers)
        except TimeoutError:
            return None, None, policy.Outcome.TIMEOUT
        except (OSError, AnswerError):  # refused, reset, DNS, TLS, not HTTP
            return None, None, policy.Outcome.CONNECTION_ERROR
        return answer.status, answer.retry_after, policy.classify(answer.status)

    async def _send_traced(
        self, target: Target, item: Claimed, headers: dict[str, str], attempt: int
    ) -> tuple[int | None, str | None, policy.Outcome]:
        """``_send`` in a client span, whose ``traceparent`` the target gets."""
        assert self.tracing is not None
        attributes = {
            "dfm.source": target.key,
            "dfm.webhook_id": item.webhook_id,
            "dfm.attempt": attempt,
            "http.request.resend_count": attempt - 1 if attempt > 1 else None,
        }
        parent = item.traceparent or item.headers.get(tracing.TRACEPARENT)
        with self.tracing.forward_span(target.forward.url, parent, attributes) as span:
            self.tracing.inject(headers, span)
            status, retry_after, outcome = await self._send(target, item, headers)
            self.tracing.forwarded(span, status, outcome.value)
        return status, retry_after, outcome

    def _defer(self, target: Target, items: Sequence[Claimed], seconds: float) -> None:
        """Put deliveries back without an attempt, due in ``seconds``."""
        now = self._clock()
        at = _utc(now)
        due = _utc(now + seconds)
        for item in items:
            target.deferred.inc()
            self._results.append(
                Result(
                    source=item.source,
                    subject=item.subject,
                    event_id=item.event_id,
                    received_at=item.received_at,
                    state=State.PENDING,
                    attempted=False,
                    at=at,
                    next_attempt_at=due,
                )
            )
        self._results_ready.set()

    def _circuit_moved(self, target: Target, now: float) -> None:
        state = target.note_circuit(now)
        if state is None:
            return
        if state is CircuitState.CLOSED:
            log.info("forward circuit closed", source=target.key)
        else:
            log.warning(
                "forward circuit " + state.value.replace("_", "-"),
                source=target.key,
                consecutive_failures=target.breaker.consecutive_failures,
                retry_in=round(target.breaker.retry_in(), 1),
            )
        self._results_ready.set()  # the recorder saves the transition
        if state is CircuitState.CLOSED:
            self._poll_wake.set()  # the backlog can flow again

    # -- the table's side -----------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        interval = self.config.poll_interval_seconds
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._poll_wake.wait()
            self._poll_wake.clear()
            pool = self.store.pool
            if pool is None:
                continue
            try:
                await self._poll(pool)
                failures = 0
            except _DB_ERRORS as exc:
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("forward poll failed", error=type(exc).__name__, times=failures)

    async def _poll(self, pool: asyncpg.Pool) -> None:
        now = self._clock()
        for target in self.targets.values():
            state = target.breaker.state
            if state is CircuitState.OPEN or not target.keys(now):
                continue
            room = min(
                target.cap - target.held,
                self.config.claim_batch,
                self.config.max_queued_events - self._held_events,
            )
            if state is CircuitState.HALF_OPEN:
                # One delivery is the probe; the rest waits for its verdict.
                room = min(room, 0 if target.held else 1)
            if room <= 0 or self._held_bytes >= self.config.max_queued_bytes:
                continue
            lease = Lease(self.replica, _utc(now + self.lease_seconds))
            async with pool.acquire(timeout=self.store.config.connect_timeout_seconds) as conn:
                claimed = await table.claim(conn, target.key, _utc(now), room, lease)
            for item in claimed:
                self._enqueue(item)
            target.more_due = len(claimed) == room

    async def _record_loop(self) -> None:
        """Write outcomes (and circuit transitions) in batches: whatever piled up meanwhile."""
        retry = 0
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            results, self._results = self._results, []
            circuits = [t for t in self.targets.values() if t.circuit_changed]
            for target in circuits:
                target.circuit_changed = False
            pool = self.store.pool
            self._recorder_idle.clear()
            try:
                if pool is None:
                    raise ConnectionError("store not ready")
                async with pool.acquire(timeout=self.store.config.connect_timeout_seconds) as conn:
                    await table.record(conn, results, self.replica)
                    if circuits:
                        await table.save_circuits(
                            conn, self.replica, [t.circuit_row() for t in circuits],
                            _utc(self._clock()),
                        )  # fmt: skip
                retry = 0
            except (*_DB_ERRORS, ConnectionError) as exc:
                # Kept and written once the database answers; until then the leases may run
                # out and another replica deliver again (at least once).
                self._results = results + self._results
                for target in circuits:
                    target.circuit_changed = True
                delay = RECORD_RETRY_SECONDS[min(retry, len(RECORD_RETRY_SECONDS) - 1)]
                if retry == 0:
                    log.warning("forward outcomes not recorded yet", error=type(exc).__name__)
                retry += 1
                self._recorder_idle.set()
                await asyncio.sleep(delay)
                self._results_ready.set()
            finally:
                self._recorder_idle.set()

    async def _stats_loop(self) -> None:
        """Refresh the backlog gauges and this process's circuit rows; dead-letter what is past
        its target's maxAgeSeconds and held by nobody."""
        while True:
            pool = self.store.pool
            if pool is not None:
                try:
                    await self._refresh(pool)
                except _DB_ERRORS as exc:
                    log.warning("forward stats not refreshed", error=type(exc).__name__)
            await asyncio.sleep(self.config.stats_interval_seconds)

    async def _refresh(self, pool: asyncpg.Pool) -> None:
        now = self._clock()
        at = _utc(now)
        async with pool.acquire(timeout=self.store.config.connect_timeout_seconds) as conn:
            for target in self.targets.values():
                expired = await table.expire(conn, target.key, at, target.forward.max_age_seconds)
                if expired:
                    target.dead[policy.DeadReason.EXPIRED].inc(expired)
                    log.warning(
                        "deliveries dead-lettered", source=target.key, reason="expired",
                        deliveries=expired,
                    )  # fmt: skip
                backlog = await table.backlog(conn, target.key)
                target_metrics(self.metrics, target.key, backlog, at)
                target.note_circuit(now)
            await table.save_circuits(
                conn, self.replica, [t.circuit_row() for t in self.targets.values()], at
            )


def target_metrics(
    metrics: ReceiverMetrics, source: str, backlog: table.Backlog, now: datetime
) -> None:
    metrics.forward_backlog.labels(source).set(backlog.pending)
    metrics.forward_dead_letters_stored.labels(source).set(backlog.dead)
    age = (now - backlog.oldest_pending).total_seconds() if backlog.oldest_pending else 0.0
    metrics.forward_oldest_pending_age.labels(source).set(max(age, 0.0))
