"""Prometheus metrics of one receiver. Labels carry source keys and closed-set values only.

The two metrics every request updates (``dfm_receiver_requests`` and
``dfm_receiver_request_duration_seconds``) are :class:`LoopCounter` and :class:`LoopHistogram`:
plain numbers updated by the event loop's thread alone, read at scrape time. prometheus_client's
own take a lock per update and go through several calls each (about 2 us a request, against
0.3 us). Everything else is prometheus_client's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# Receive -> delivered spans milliseconds (delivered from memory) to hours (a consumer outage).
DELIVERY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 21600.0, 86400.0,
)  # fmt: skip
# Circuit states as gauge values.
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class LoopCounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class LoopCounter:
    """A labelled counter updated from one thread (the event loop's), without a lock; exported
    like prometheus_client's Counter (``<name>_total``). ``labels(...).inc()`` as there."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], LoopCounterChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> LoopCounterChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = LoopCounterChild()
        return child

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        return [family]


class LoopHistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        # One count per bucket (not cumulative) and one past the last bound (+Inf).
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class LoopHistogram:
    """A labelled histogram updated from one thread (the event loop's), without a lock; exported
    like prometheus_client's Histogram (``_bucket`` with ``le``, ``_count``, ``_sum``)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._children: dict[tuple[str, ...], LoopHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> LoopHistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = LoopHistogramChild(self.bounds)
        return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, list(_cumulative(self.bounds, child.counts)), child.sum)
        return [family]


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> Iterator[tuple[str, float]]:
    total = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        yield floatToGoString(bound), float(total)  # type: ignore[no-untyped-call]


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = LoopCounter(
            "dfm_receiver_requests",
            "Webhook requests by source and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        self.signature_failures = Counter(
            "dfm_receiver_signature_failures",
            "Requests refused by signature or token verification, by reason.",
            ["source", "reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "dfm_receiver_duplicates",
            "Redeliveries of an event already stored (answered 2xx, not stored again).",
            ["source"],
            registry=r,
        )
        self.latency = LoopHistogram(
            "dfm_receiver_request_duration_seconds",
            "Time from request start to response, by source.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dfm_receiver_store_batch_size",
            "Events committed per database round trip.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.commit_duration = Histogram(
            "dfm_receiver_store_commit_duration_seconds",
            "Time a committed batch spent going to the database: taking a pool connection, the "
            "statement and the commit, and a missing day partition's creation (the database's "
            "share of a request's latency). Batches that fail are counted in "
            "dfm_receiver_store_errors_total instead.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "dfm_receiver_store_errors",
            "Batches that failed to commit (their requests were answered 503).",
            registry=r,
        )
        self.pool_size = Gauge(
            "dfm_receiver_db_pool_size", "Open database connections.", registry=r
        )
        self.pool_in_use = Gauge(
            "dfm_receiver_db_pool_in_use", "Database connections in use.", registry=r
        )
        self.secret_reloads = Counter(
            "dfm_receiver_secret_reloads",
            "Times a source's secrets changed on disk and were reloaded.",
            ["source"],
            registry=r,
        )
        self.store_overloaded = Counter(
            "dfm_receiver_store_overloaded",
            "Events refused at once (503) because the store queue was full (events or bytes).",
            registry=r,
        )
        self.commit_timeouts = Counter(
            "dfm_receiver_commit_timeouts",
            "Requests answered 503 because their event had not committed within the deadline.",
            registry=r,
        )
        self.store_queued_events = Gauge(
            "dfm_receiver_store_queued_events", "Events waiting for or in a commit.", registry=r
        )
        self.store_queued_bytes = Gauge(
            "dfm_receiver_store_queued_bytes",
            "Payload bytes of the events waiting for or in a commit.",
            registry=r,
        )
        self.connections_open = Gauge(
            "dfm_receiver_connections_open", "Open client connections.", registry=r
        )
        self.connections_closed = Counter(
            "dfm_receiver_connections_closed",
            "Connections closed by the receiver's limits: header_timeout (the request's head did "
            "not arrive in time), evicted (an idle one closed to make room at the connection "
            "cap), over_capacity (refused at the cap, nothing idle to close).",
            ["reason"],
            registry=r,
        )
        self.store_ready = Gauge(
            "dfm_receiver_store_ready", "1 when the event store is reachable.", registry=r
        )
        # -- forwarding (webhook_server.forward) --------------------------------------------
        self.forward_attempts = Counter(
            "dfm_forward_attempts",
            "Delivery attempts to a source's forward target, by outcome: delivered, redirect, "
            "client_error, request_timeout, gone, rate_limited, server_error, timeout, "
            "connection_error.",
            ["source", "outcome"],
            registry=r,
        )
        self.forward_dead_letters = Counter(
            "dfm_forward_dead_letters",
            "Deliveries this process dead-lettered, by reason: max_attempts, expired, gone.",
            ["source", "reason"],
            registry=r,
        )
        self.forward_deferred = Counter(
            "dfm_forward_deferred",
            "Deliveries put back without an attempt because the target's circuit was open.",
            ["source"],
            registry=r,
        )
        self.forward_delivery_latency = Histogram(
            "dfm_forward_delivery_latency_seconds",
            "From an event's receipt (or its replay's re-queueing) to its successful delivery (all "
            "attempts and waits).",
            ["source"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.forward_attempt_duration = Histogram(
            "dfm_forward_attempt_duration_seconds",
            "Duration of one delivery attempt (request to answer, or to the timeout).",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.forward_backlog = Gauge(
            "dfm_forward_backlog",
            "Deliveries pending in the event store (every replica's), refreshed periodically.",
            ["source"],
            registry=r,
        )
        self.forward_oldest_pending_age = Gauge(
            "dfm_forward_oldest_pending_age_seconds",
            "Age of the oldest pending delivery (0 when none), refreshed periodically.",
            ["source"],
            registry=r,
        )
        self.forward_dead_letters_stored = Gauge(
            "dfm_forward_dead_letters_stored",
            "Dead letters kept in the event store (they go with their events at retention).",
            ["source"],
            registry=r,
        )
        self.forward_circuit_state = Gauge(
            "dfm_forward_circuit_state",
            "This process's circuit to the source's target: 0 closed, 1 half-open, 2 open.",
            ["source"],
            registry=r,
        )
        self.forward_queued = Gauge(
            "dfm_forward_queued",
            "Deliveries this process holds in memory (queued or in flight).",
            ["source"],
            registry=r,
        )
        self.events_api_requests = Counter(
            "dfm_events_api_requests",
            "Events API requests by source, operation (list, show, replay, replay_bulk, "
            "openapi) and outcome.",
            ["source", "operation", "outcome"],
            registry=r,
        )
        self.events_api_replays = Counter(
            "dfm_events_api_replayed_deliveries",
            "Deliveries re-queued through the Events API, by source.",
            ["source"],
            registry=r,
        )
        # -- worker processes (webhook_server.workers) -------------------------------------
        self.worker_peer_unanswered = Counter(
            "dfm_receiver_worker_peer_unanswered",
            "Times another worker of the pod (peer: its index) did not answer this one in time, "
            "for a scrape, a liveness or a readiness check.",
            ["peer"],
            registry=r,
        )
