"""Tracing's configuration by OTEL_*, the traceparent it sends, reconciles as spans, trace ids in
log lines; with the SDK's in-memory exporter."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import StatusCode

from dfm_operator.builders.syncschedule import build_children as build_sync_children
from dfm_operator.builders.webhooksource import ReceiverInputs, build_children
from dfm_operator.kernel import Context, InvalidSpec, OperatorMetrics, measured
from dfm_operator.settings import OperatorSettings, WorkloadTracing
from tests.unit import test_builders, test_syncschedule
from webhook_server import logs, tracing
from webhook_server.forward.request import build_headers
from webhook_server.tracing import Tracing, TracingConfigError, from_env

PROVIDERS = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STORED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def memory() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    provider.shutdown()


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "receiver", "OTEL_TRACES_SAMPLER": "always_on"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_tracing_is_off_unless_an_exporter_or_endpoint_is_configured(
    environ: dict[str, str],
) -> None:
    assert from_env("dfm-receiver", environ) is None


def test_an_otlp_endpoint_turns_tracing_on_with_the_services_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    on = from_env("dfm-receiver", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert on is not None
    try:
        assert on.provider.resource.attributes["service.name"] == "dfm-receiver"
    finally:
        on.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "payments-hooks")
    named = from_env("dfm-receiver", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert named is not None
    try:
        assert named.provider.resource.attributes["service.name"] == "payments-hooks"
    finally:
        named.shutdown()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "only http/protobuf",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin: not supported"),
    ],
)
def test_what_tracing_cannot_honour_is_one_clear_error(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(TracingConfigError, match=message):
        from_env("dfm-receiver", environ)


def test_the_cli_says_so_in_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "receiver.yaml"
    config.write_text("database:\n  url: postgresql://127.0.0.1:9/x\nsources: []\n")
    done = subprocess.run(
        [sys.executable, "-m", "dfm.cli", "receiver", "--config", str(config)],
        env={"OTEL_TRACES_EXPORTER": "jaeger", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "dfm receiver: error: OTEL_TRACES_EXPORTER=jaeger: not supported (otlp, console or none)"
    ]


def test_tracing_off_imports_no_sdk() -> None:
    """The receiver's memory and start-up do not pay for the SDK when tracing is off."""
    code = (
        "import sys, webhook_server.app, webhook_server.server, webhook_server.tracing\n"
        "from webhook_server.tracing import from_env\n"
        "assert from_env('x', {}) is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_a_delivery_continues_its_own_trace_first_then_the_providers() -> None:
    common: dict[str, Any] = {
        "payload": b"{}",
        "webhook_id": "evt_1",
        "keys": [b"k" * 24],
        "now": 1_700_000_000.0,
        "source": "ns/name",
        "event_type": None,
        "attempt": 1,
    }
    provider = {"traceparent": PROVIDERS}
    own = build_headers(stored_headers=provider, parent=STORED, **common)["traceparent"]
    assert own.split("-")[1] == STORED.split("-")[1]
    assert own.split("-")[2] != STORED.split("-")[2]
    theirs = build_headers(stored_headers=provider, **common)["traceparent"]
    assert theirs.split("-")[1] == PROVIDERS.split("-")[1]
    fresh = build_headers(stored_headers={}, **common)["traceparent"]
    assert tracing.parse(fresh) is not None


def test_the_forward_span_names_the_target_by_host_only(
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    """A target URL's path or query may be a capability (a Slack-style hook URL): not recorded."""
    traced, exported = memory
    url = "https://hooks.example.com/services/T0/B0/s3cr3tpath?token=abc"
    headers: dict[str, str] = {}
    with traced.forward_span(url, STORED, {"dfm.source": "ns/name"}) as span:
        traced.inject(headers, span)
        traced.forwarded(span, 503, "server_error")
    [sent] = exported.get_finished_spans()
    attributes = dict(sent.attributes or {})
    assert attributes["server.address"] == "hooks.example.com"
    assert attributes["server.port"] == 443
    assert attributes["http.response.status_code"] == 503
    assert attributes["error.type"] == "503"
    assert sent.status.status_code is StatusCode.ERROR
    assert not any("s3cr3t" in str(v) or "abc" in str(v) for v in attributes.values())
    assert sent.parent is not None
    assert f"{sent.parent.span_id:016x}" == STORED.split("-")[2]
    assert headers["traceparent"].split("-")[2] == f"{sent.context.span_id:016x}"


async def test_a_reconcile_is_a_span_with_its_object_and_result(
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    traced, exported = memory
    ctx = Context(
        kube=cast(Any, None),
        settings=OperatorSettings(),
        metrics=OperatorMetrics(),
        tracing=traced,
    )
    body = {"metadata": {"namespace": "payments", "name": "stripe", "generation": 3}}
    async with measured(ctx, "WebhookSource", body) as result:
        result[0] = "ready"
    with pytest.raises(InvalidSpec):
        async with measured(ctx, "WebhookSource", body):
            raise InvalidSpec("spec.forward.url: not a URL")
    ready, invalid = exported.get_finished_spans()
    assert ready.name == "reconcile WebhookSource"
    assert dict(ready.attributes or {}) == {
        "dfm.kind": "WebhookSource",
        "k8s.namespace.name": "payments",
        "dfm.name": "stripe",
        "dfm.generation": 3,
        "dfm.result": "ready",
    }
    assert (invalid.attributes or {})["dfm.result"] == "invalid"
    assert (invalid.attributes or {})["error.type"] == "InvalidSpec"
    assert "not a URL" not in json.dumps(dict(invalid.attributes or {}))


def test_log_lines_carry_the_active_spans_ids(
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    traced, _ = memory
    stream = io.StringIO()
    logs.configure(stream=stream)
    logs.with_trace_ids(tracing.current_ids)
    try:
        log = logs.get_logger("test")
        log.info("outside")
        with traced.span("work") as span:
            log.info("inside")
        context = span.get_span_context()
    finally:
        logs.with_trace_ids(None)
        logs.configure()
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"


def _container(children: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [child] = [ch for ch in children if ch["kind"] == kind]
    spec = child["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else child["spec"]
    [container] = spec["template"]["spec"]["containers"]
    return cast(dict[str, Any], container)


def test_receivers_and_sync_jobs_get_the_charts_tracing_as_otel_env() -> None:
    off = OperatorSettings()
    on = OperatorSettings(
        tracing=WorkloadTracing(
            endpoint="http://otel-collector.monitoring:4318",
            sampler="parentbased_traceidratio",
            sampler_arg="0.25",
            resource_attributes="deployment.environment=prod",
        )
    )
    hooks = test_builders.source()
    assert "env" not in _container(
        build_children(hooks, ReceiverInputs(settings=off)), "Deployment"
    )
    receiver = _container(build_children(hooks, ReceiverInputs(settings=on)), "Deployment")
    assert {e["name"]: e["value"] for e in receiver["env"]} == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.monitoring:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "dfm-receiver",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=payments,"
        "k8s.deployment.name=stripe-main-receiver,dfm.webhooksource=stripe-main,"
        "deployment.environment=prod",
    }
    sync_inputs = replace(test_syncschedule.inputs(), settings=on)
    job = _container(build_sync_children(test_syncschedule.schedule(), sync_inputs), "CronJob")
    env = {e["name"]: e["value"] for e in job["env"]}
    assert env["OTEL_SERVICE_NAME"] == "dfm-sync"
    assert env["OTEL_RESOURCE_ATTRIBUTES"].startswith("k8s.namespace.name=crm,")
    # What the receiver does with it: tracing on, named as the operator said.
    assert tracing.configured(env)


def test_an_unsampled_request_makes_no_child_spans_and_its_context_flows_on() -> None:
    """Not sampled (here by the provider's traceparent, flags 00): verify and store reuse the
    server span, so the delivery continues the same (unsampled) trace and costs no spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = Tracing(provider)
    unsampled = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}
    with (
        traced.server_span(
            "POST", "/hooks/a/b", unsampled, scheme="http", remote=None, source="a/b"
        ) as server,
        traced.span("dfm.store") as store,
    ):
        assert store is server
        stored = tracing.format_traceparent(store.get_span_context())
    assert not exporter.get_finished_spans()
    assert stored.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert stored.endswith("-00")
    headers: dict[str, str] = {}
    with traced.forward_span("http://consumer:8080/events", stored, {}) as sent:
        traced.inject(headers, sent)
    assert headers["traceparent"].split("-")[1::2] == ["4bf92f3577b34da6a3ce929d0e0e4736", "00"]
    provider.shutdown()
