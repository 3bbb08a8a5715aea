"""The receiver's lock-free request metrics expose what prometheus_client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from webhook_server.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram, ReceiverMetrics


def _exposed(registry: CollectorRegistry) -> list[str]:
    """The sample lines, without prometheus_client's ``_created`` series (ours have none)."""
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line and not line.startswith("#") and "_created" not in line
    ]


def test_loop_histogram_exposes_the_same_buckets_count_and_sum_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("latency", "doc", ["source"], LATENCY_BUCKETS, ours)
    reference = Histogram("latency", "doc", ["source"], buckets=LATENCY_BUCKETS, registry=theirs)
    # On a bound (counted in its own bucket, "le"), between bounds, past the last one.
    for value in (0.0005, 0.001, 0.003, 0.0099, 0.01, 0.7, 10.0, 42.0):
        loop.labels("ns/a").observe(value)
        reference.labels("ns/a").observe(value)
    loop.labels("ns/b").observe(0.02)
    reference.labels("ns/b").observe(0.02)
    assert _exposed(ours) == _exposed(theirs)


def test_loop_counter_exposes_totals_by_label_like_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("requests", "doc", ["source", "outcome"], ours)
    reference = Counter("requests", "doc", ["source", "outcome"], registry=theirs)
    for counter in (loop, reference):
        counter.labels("ns/a", "stored").inc()
        counter.labels("ns/a", "stored").inc()
        counter.labels("ns/a", "unauthorized").inc(3)
    assert _exposed(ours) == _exposed(theirs)
    with pytest.raises(ValueError, match="only go up"):
        loop.labels("ns/a", "stored").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        loop.labels("ns/a")


def test_the_receiver_registry_refuses_a_second_metric_of_the_same_name() -> None:
    metrics = ReceiverMetrics()
    with pytest.raises(ValueError, match="dfm_receiver_requests"):
        Counter("dfm_receiver_requests", "again", registry=metrics.registry)
