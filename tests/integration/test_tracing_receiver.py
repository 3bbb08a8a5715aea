"""Traces of a real receiver (real PostgreSQL, a loopback consumer), read from the SDK's
in-memory exporter: receive -> verify/store -> forward as parent and child, the batch linked to
its requests, the trace context carried by the delivery (in memory and in its row), the
consumer's ``traceparent`` naming the forward span, and nothing secret in any attribute."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags

from tests.integration.test_forward import (
    FORWARD_SECRET,
    GITHUB_SECRET,
    forward,
    github_headers,
    github_source,
)
from tests.receivers import Consumer, eventually
from webhook_server import logs
from webhook_server.store import Event, insert_events
from webhook_server.tracing import Tracing, current_ids, format_traceparent

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{INCOMING_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    provider.shutdown()


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    """Log lines (access log included) written here, with the active span's ids."""
    stream = io.StringIO()
    logs.configure(stream=stream)
    logs.with_trace_ids(current_ids)
    yield stream
    logs.with_trace_ids(None)
    logs.configure()


def by_name(exported: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exported.get_finished_spans() if s.name == name]


async def finished(exported: InMemorySpanExporter, name: str) -> bool:
    return bool(by_name(exported, name))


def one(exported: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = by_name(exported, name)
    assert len(found) == 1, f"{name}: {[s.name for s in exported.get_finished_spans()]}"
    return found[0]


def ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


async def test_one_event_is_one_trace_from_the_provider_to_the_consumer(
    make_receiver: Any,
    consumer: Consumer,
    spans: tuple[Tracing, InMemorySpanExporter],
    db: asyncpg.Connection,
    access_log: io.StringIO,
) -> None:
    tracing, exported = spans
    client = await make_receiver(github_source(forward(consumer)), tracing=tracing)
    body = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'
    headers = github_headers(body, "d-1")
    headers["traceparent"] = INCOMING
    response = await client.post("/hooks/ci/gh", data=body, headers=headers)
    assert response.status == 200
    await eventually(lambda: finished(exported, "POST"), "the forward span")

    server = one(exported, "POST /hooks/ci/gh")
    verify = one(exported, "dfm.verify")
    store = one(exported, "dfm.store")
    batch = one(exported, "INSERT webhook_events")
    sent = one(exported, "POST")

    # The provider's trace continued: the server span is the child of its traceparent.
    assert ids(server)[0] == INCOMING_TRACE
    assert parent_id(server) == "00f067aa0ba902b7"
    assert server.kind is SpanKind.SERVER
    assert server.attributes is not None
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/hooks/ci/gh"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["dfm.outcome"] == "stored"
    # receive -> verify, receive -> store -> forward: one trace, parent and child.
    assert parent_id(verify) == ids(server)[1]
    assert parent_id(store) == ids(server)[1]
    assert parent_id(sent) == ids(store)[1]
    assert {ids(s)[0] for s in (verify, store, sent)} == {INCOMING_TRACE}
    assert sent.kind is SpanKind.CLIENT
    assert sent.attributes is not None
    assert sent.attributes["http.response.status_code"] == 200
    assert sent.attributes["server.address"] == "127.0.0.1"
    assert sent.attributes["dfm.webhook_id"] == "d-1"
    # The batch commits many requests' events: its own trace, linked to each request's store.
    assert batch.kind is SpanKind.CLIENT
    assert batch.parent is None
    assert batch.attributes is not None
    assert batch.attributes["db.system.name"] == "postgresql"
    assert [ids_of(link.context) for link in batch.links] == [ids(store)]

    # The consumer sees the same trace, its parent being the forward attempt.
    [seen] = consumer.seen
    _, trace_id, parent, flags = seen.headers["traceparent"].split("-")
    assert (trace_id, parent, flags) == (INCOMING_TRACE, ids(sent)[1], "01")
    # The delivery row carries the store span's context (what another replica would continue).
    row = await db.fetchrow("SELECT trace_parent FROM webhook_deliveries WHERE event_id = 'd-1'")
    assert row is not None
    assert row["trace_parent"] == f"00-{INCOMING_TRACE}-{ids(store)[1]}-01"

    # Nothing secret, signed or sent as a body in any attribute of any span.
    forbidden = [
        GITHUB_SECRET,
        FORWARD_SECRET,
        FORWARD_SECRET.removeprefix("whsec_"),
        headers["X-Hub-Signature-256"],
        headers["X-Hub-Signature-256"].removeprefix("sha256="),
        seen.headers["webhook-signature"].split(",", 1)[1],
        body.decode(),
        "Keep it logically awesome",
    ]
    for span in exported.get_finished_spans():
        for key, value in (span.attributes or {}).items():
            for secret in forbidden:
                assert secret not in str(value), f"{span.name} {key} holds a secret or the body"
        for event in span.events:
            assert not event.attributes or all(
                s not in str(v) for v in event.attributes.values() for s in forbidden
            )

    # The request's access log line carries the server span's ids.
    lines = [json.loads(line) for line in access_log.getvalue().splitlines() if line]
    [request_line] = [line for line in lines if line.get("event") == "request"]
    assert (request_line["trace_id"], request_line["span_id"]) == ids(server)


def ids_of(context: SpanContext) -> tuple[str, str]:
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


async def test_a_signature_failure_is_a_client_error_not_a_failed_span(
    make_receiver: Any, consumer: Consumer, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exported = spans
    client = await make_receiver(github_source(forward(consumer)), tracing=tracing)
    body = b'{"hook_id": 2}'
    headers = github_headers(body, "d-2")
    headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    response = await client.post("/hooks/ci/gh", data=body, headers=headers)
    assert response.status == 401
    server = one(exported, "POST /hooks/ci/gh")
    verify = one(exported, "dfm.verify")
    assert server.attributes is not None
    assert verify.attributes is not None
    assert server.attributes["http.response.status_code"] == 401
    assert verify.attributes["dfm.outcome"] == "unauthorized"
    assert verify.status.status_code is StatusCode.UNSET
    assert server.status.status_code is StatusCode.UNSET  # a 4xx is not this server's error
    assert not by_name(exported, "dfm.store")  # never stored


async def test_a_delivery_polled_from_the_table_continues_the_trace_in_its_row(
    make_receiver: Any,
    consumer: Consumer,
    spans: tuple[Tracing, InMemorySpanExporter],
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    """What another replica (or this one after a restart) stored: the row's trace_parent is the
    forward span's parent, not whatever the process that claims it has in memory."""
    tracing, exported = spans
    # Creates the tables and registers ci/gh.
    client = await make_receiver(github_source(forward(consumer)), tracing=tracing)
    stored_by = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    event = Event(
        source="ci/gh",
        event_id="d-3",
        event_type="push",
        received_at=datetime.fromtimestamp(time.time(), UTC),
        request_id="elsewhere",
        payload=b'{"hook_id": 3}',
        headers={"content-type": "application/json"},
        trace=stored_by,
    )
    await insert_events(db, [event], forwarded={"ci/gh"})  # unleased: the poller claims it
    await eventually(lambda: finished(exported, "POST"), "the forward span")
    sent = one(exported, "POST")
    assert ids(sent)[0] == "0af7651916cd43dd8448eb211c80319c"
    assert parent_id(sent) == "b7ad6b7169203331"
    [seen] = consumer.seen
    assert seen.headers["traceparent"] == f"00-{ids(sent)[0]}-{ids(sent)[1]}-01"
    assert client is not None


async def test_tracing_off_stores_no_trace_and_still_continues_the_providers(
    make_receiver: Any, consumer: Consumer, db: asyncpg.Connection
) -> None:
    client = await make_receiver(github_source(forward(consumer)))
    body = b'{"hook_id": 4}'
    headers = github_headers(body, "d-4")
    headers["traceparent"] = INCOMING
    assert (await client.post("/hooks/ci/gh", data=body, headers=headers)).status == 200
    await eventually(lambda: _delivered(db, "d-4"), "the delivery")
    row = await db.fetchrow("SELECT trace_parent FROM webhook_deliveries WHERE event_id = 'd-4'")
    assert row is not None
    assert row["trace_parent"] is None
    [seen] = consumer.seen
    assert seen.headers["traceparent"].split("-")[1] == INCOMING_TRACE


async def _delivered(db: asyncpg.Connection, event_id: str) -> bool:
    state = await db.fetchval("SELECT state FROM webhook_deliveries WHERE event_id = $1", event_id)
    return bool(state == "delivered")


async def test_a_sync_run_is_a_trace_whose_pages_its_forwarded_items_continue(
    database_url: str,
    spans: tuple[Tracing, InMemorySpanExporter],
    db: asyncpg.Connection,
    served: list[TestServer],
) -> None:
    """A SyncSchedule's run and pages are spans; each stored item's delivery carries its page's
    context, so its forward attempt will be that page's child."""
    from tests.fake_api import FakeApi, contacts, serve
    from tests.integration import test_sync
    from webhook_server.store.migrations import apply_migrations

    tracing, exported = spans
    await apply_migrations(db)
    await db.execute(
        "INSERT INTO webhook_sources (source, retention_days, last_seen_at, forward)"
        " VALUES ($1, 30, now(), true)",
        test_sync.SINK,
    )
    base = await serve(FakeApi(contacts(7), "cursor", page_size=5), served)
    summary = await test_sync.run(test_sync.config(base, database_url, "cursor"), tracing=tracing)
    assert summary.succeeded
    run = one(exported, "dfm.sync.run")
    pages = by_name(exported, "dfm.sync.page")
    assert run.attributes is not None
    assert run.attributes["dfm.sync.result"] == "Succeeded"
    assert run.attributes["dfm.sync.run_id"] == summary.run_id
    assert [p.attributes["dfm.sync.stored"] for p in pages if p.attributes] == [5, 2]
    assert {parent_id(p) for p in pages} == {ids(run)[1]}
    rows = await db.fetch("SELECT event_id, trace_parent FROM webhook_deliveries ORDER BY event_id")
    assert len(rows) == 7
    first, second = (format_traceparent(p.context) for p in pages if p.context is not None)
    assert [r["trace_parent"] for r in rows] == [first] * 5 + [second] * 2
