"""A running `dfm local` exporting real spans over OTLP/HTTP to a loopback collector.

The collector is a small aiohttp app decoding the protobuf with opentelemetry-proto, as an
OpenTelemetry Collector would; the forward target is another. One signed delivery, with a
provider's ``traceparent``, must come out as one trace: the server span continuing the
provider's, ``dfm.store`` its child, the forward ``POST`` the store span's child, and the
consumer given that forward span as its parent.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from standardwebhooks.webhooks import Webhook

from tests.integration.test_cli import DFM, ROOT
from tests.receivers import serving
from tests.tools import free_port, wait_ready

PROVIDER_SECRET = "whsec_f0WfAjd7HSFo6j89zIgxkTgyCdu/WPbF"
FORWARD_SECRET = "whsec_vUHpHz5TFBOu+0P6NoXJBDoBQp/2umHp"
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_PARENT = "00f067aa0ba902b7"

MANIFEST = """\
apiVersion: v1
kind: Secret
metadata: {{name: orders-webhook}}
stringData: {{secret: {provider}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: orders-forward-signing}}
stringData: {{current: {forward}}}
---
apiVersion: dfm.dev/v1alpha1
kind: WebhookSource
metadata: {{name: orders}}
spec:
  provider: standard
  verification:
    secretRef: {{name: orders-webhook, key: secret}}
  forward:
    url: {url}
    signingSecretRef: {{name: orders-forward-signing}}
"""


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]


@dataclass
class Collector:
    spans: list[Span] = field(default_factory=list)
    requests: int = 0

    async def export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest.FromString(body)
        self.requests += 1
        for resource_spans in message.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=[(li.trace_id.hex(), li.span_id.hex()) for li in span.links],
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class Consumer:
    headers: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.headers.append(dict(request.headers))
        return web.Response(text="ok")


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    seen = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", seen.export)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield seen, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def consumer() -> AsyncIterator[tuple[Consumer, str]]:
    seen = Consumer()
    async with serving(seen.handle) as url:
        yield seen, url


async def _until(check: Any, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_dfm_local_exports_one_trace_from_provider_to_consumer(
    tmp_path: Path,
    database_url: str,
    collector: tuple[Collector, str],
    consumer: tuple[Consumer, str],
) -> None:
    spans, endpoint = collector
    delivered, url = consumer
    (tmp_path / "orders.yaml").write_text(
        MANIFEST.format(provider=PROVIDER_SECRET, forward=FORWARD_SECRET, url=url)
    )
    port = free_port()
    env = dict(
        os.environ,
        DFM_DATA_DIR=str(tmp_path / "dfm-data"),
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_TRACES_SAMPLER="always_on",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    env.pop("OTEL_SERVICE_NAME", None)
    env.pop("OTEL_RESOURCE_ATTRIBUTES", None)
    proc = subprocess.Popen(  # noqa: ASYNC220 - a child process the test stops below
        [*DFM, "local", "-f", str(tmp_path), "--database-url", database_url, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, proc, lambda: "dfm local exited early")
        body = '{"type":"order.paid","id":"o-1"}'
        now = datetime.now(UTC)
        headers = {
            "webhook-id": "msg_trace_1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(PROVIDER_SECRET).sign("msg_trace_1", now, body),
            "Content-Type": "application/json",
            "traceparent": f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01",
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(base + "/hooks/default/orders", data=body, headers=headers) as response,
        ):
            assert response.status == 200, await response.text()
        await _until(lambda: delivered.headers, "the consumer to get the event")
        await _until(lambda: spans.named("POST"), "the forward span to be exported")
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 30)

    [server] = spans.named("POST /hooks/default/orders")
    [store] = spans.named("dfm.store")
    [verify] = spans.named("dfm.verify")
    [sent] = spans.named("POST")
    [batch] = spans.named("INSERT webhook_events")
    assert {s.service for s in spans.spans} == {"dfm-receiver"}
    # receive -> store -> forward: parent and child, in the provider's trace.
    assert (server.trace_id, server.parent) == (INCOMING_TRACE, INCOMING_PARENT)
    assert verify.parent == server.span_id
    assert store.parent == server.span_id
    assert sent.parent == store.span_id
    assert {s.trace_id for s in (verify, store, sent)} == {INCOMING_TRACE}
    assert batch.links == [(INCOMING_TRACE, store.span_id)]
    assert server.attributes["http.response.status_code"] == 200
    assert sent.attributes["http.response.status_code"] == 200
    assert batch.attributes["db.system.name"] == "postgresql"
    # The consumer sees the same trace, the forward attempt as its parent.
    [received] = delivered.headers
    assert received["traceparent"] == f"00-{INCOMING_TRACE}-{sent.span_id}-01"
    # Nothing signed or secret went out with the spans.
    exported = repr([s.attributes for s in spans.spans])
    for secret in (PROVIDER_SECRET, FORWARD_SECRET, headers["webhook-signature"], "order.paid"):
        assert secret.split(",")[-1].removeprefix("whsec_") not in exported
