"""Traces: W3C Trace Context always, OpenTelemetry spans when ``OTEL_*`` configures them.

Off (the default) nothing here is imported beyond this module and every hook on the request path
is one ``is None`` check: a forwarded request still continues the trace its event came with
(:func:`child_traceparent`, no SDK). On (:func:`from_env`), the OpenTelemetry SDK records spans
and exports them over OTLP/HTTP, and its W3C propagator makes the ids:

* ``POST <route>`` (server) per webhook request, continuing an incoming ``traceparent``;
* ``dfm.verify`` (bearer token and signature) and ``dfm.store`` (submit until committed), its
  children;
* ``INSERT webhook_events`` (client, PostgreSQL) per batch the writer commits: many requests'
  events commit in one statement, so it is a root span *linked* to each request's ``dfm.store``
  span rather than the child of one of them;
* ``POST`` (client) per forward attempt, the child of the event's ``dfm.store`` span: the
  delivery carries that span's context (in memory, and in ``webhook_deliveries.trace_parent``
  for the poller), and the target gets the attempt's own ``traceparent``.

Attributes follow OpenTelemetry's HTTP and database semantic conventions, plus ``dfm.*`` ids and
outcomes. Never a secret, signature, token, query string, header value or body: the forward
target's URL is reduced to its scheme, host and port (its path may hold a capability token).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, Span, SpanContext

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# version 00: "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = "01"
INSTRUMENTATION = "df-middleware"
# The tracing of the work running in this context, for code a Tracing is not passed to (a sync's
# pages): None when off.
ACTIVE_TRACING: ContextVar[Tracing | None] = ContextVar("dfm_tracing", default=None)
_T = TypeVar("_T")


class TracingConfigError(ValueError):
    """``OTEL_*`` asks for something this process cannot do (one line, said at start)."""


def parse(value: str | None) -> tuple[str, str] | None:
    """(trace id, flags) of a valid ``traceparent``, else None (W3C Trace Context §3.2)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00" and rest:
        return None  # version 00 has exactly four fields
    return trace_id, flags


def child_traceparent(incoming: str | None) -> str:
    """The ``traceparent`` of a request made on behalf of an event that came with ``incoming``,
    when tracing is off.

    Same trace id and flags, a fresh span id; a new sampled trace when ``incoming`` is absent or
    invalid. Ids are random but not secret (W3C asks for uniqueness, not unpredictability), so
    they come from ``random``, not from a system call per id.
    """
    parsed = parse(incoming)
    trace_id, flags = parsed if parsed is not None else (_hex(128), SAMPLED)
    return f"00-{trace_id}-{_hex(64)}-{flags}"


def _hex(bits: int) -> str:
    """``bits`` random bits as lower-case hex, never all zeros (an invalid id)."""
    return f"{random.getrandbits(bits) or 1:0{bits // 4}x}"


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def ids(context: SpanContext) -> dict[str, str]:
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def current_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the span active here, or nothing (for log lines)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return ids(context) if context.is_valid else {}


# -- configuration ---------------------------------------------------------------------------------


def configured(environ: Mapping[str, str]) -> bool:
    """Whether ``OTEL_*`` asks for traces: an OTLP endpoint or a traces exporter is named (and
    the SDK is not disabled). Nothing set means off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def from_env(service_name: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Tracing as ``OTEL_*`` configures it, or None when it does not (the default).

    The SDK reads the standard variables itself: the endpoint, headers, timeout, compression and
    certificates of the OTLP/HTTP exporter, ``OTEL_TRACES_SAMPLER``/``_ARG`` (default
    ``parentbased_always_on``), ``OTEL_BSP_*``, ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` (``service_name`` when neither names the service). Exporters:
    ``otlp`` (the default) and ``console``; the OTLP protocol is ``http/protobuf`` (gRPC is not
    shipped). Anything else raises :class:`TracingConfigError`.
    """
    env = os.environ if environ is None else environ
    if not configured(env):
        return None
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    names = [n for n in names if n] or ["otlp"]
    unknown = sorted(set(names) - {"otlp", "console"})
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={','.join(unknown)}: not supported (otlp, console or none)"
        )
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if "otlp" in names and protocol != "http/protobuf":
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: only http/protobuf is supported"
        )

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    try:
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    except (ValueError, TypeError) as exc:  # a sampler name or argument the SDK does not know
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER: {exc}") from None
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)


# -- spans -----------------------------------------------------------------------------------------


class Tracing:
    """One process's tracer and W3C propagator (``traceparent`` and ``tracestate`` only: a
    provider's ``baggage`` is not passed on to the forward target)."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION)
        self.propagator = TraceContextTextMapPropagator()
        self._kind = SpanKind
        self._error = Status(StatusCode.ERROR)
        self._status = Status

    def shutdown(self) -> None:
        """Export what is buffered (bounded by ``OTEL_BSP_EXPORT_TIMEOUT``) and stop."""
        self.provider.shutdown()

    # -- contexts --------------------------------------------------------------------------------

    def extract(self, carrier: Mapping[str, str]) -> Context:
        return self.propagator.extract(carrier)

    def parent(self, traceparent: str | None) -> Context | None:
        """The context a stored ``traceparent`` names (None for none or an invalid one)."""
        if not traceparent:
            return None
        from opentelemetry import trace

        context = self.extract({TRACEPARENT: traceparent})
        return context if trace.get_current_span(context).get_span_context().is_valid else None

    def inject(self, headers: dict[str, str], span: Span) -> None:
        """Set ``traceparent`` (and ``tracestate``) of ``span`` in ``headers``."""
        from opentelemetry import trace

        headers.pop(TRACESTATE, None)
        self.propagator.inject(headers, context=trace.set_span_in_context(span))

    # -- generic spans ---------------------------------------------------------------------------

    @contextmanager
    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        kind: str = "INTERNAL",
        context: Context | None = None,
        links: Sequence[Link] = (),
    ) -> Iterator[Span]:
        """A span current for the block; an exception marks it ERROR with its type only (an
        exception's text can quote what it choked on).

        Inside a span that is not sampled (and without an explicit ``context``), no span is
        made: every sampler the SDK takes from ``OTEL_TRACES_SAMPLER`` would drop the child too
        (the parent-based ones follow the parent, the ratio one decides by the same trace id),
        and a dropped span still costs tens of microseconds. The block gets the current span.
        """
        if context is None:
            current = self._current()
            if not current.is_recording() and current.get_span_context().is_valid:
                yield current
                return
        with self.tracer.start_as_current_span(
            name,
            context=context,
            kind=self._kind[kind],
            attributes=_clean(attributes),
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                self.failed(span, exc)
                raise

    def _current(self) -> Span:
        from opentelemetry import trace

        return trace.get_current_span()

    def failed(self, span: Span, exc: BaseException) -> None:
        outcome = getattr(exc, "outcome", None)
        if isinstance(outcome, str):
            span.set_attribute("dfm.outcome", outcome)
        status = getattr(exc, "status", None)
        if isinstance(status, int) and status < 500:
            return  # the client's error (a bad signature, a 429): not a failure of this service
        self.error(span, type(exc).__qualname__)

    def error(self, span: Span, error_type: str) -> None:
        """Mark ``span`` failed, with ``error_type`` a closed-set word (never a message)."""
        span.set_attribute("error.type", error_type)
        span.set_status(self._error)

    async def traced(self, name: str, attributes: Mapping[str, Any], work: Awaitable[_T]) -> _T:
        """Await ``work`` inside a span."""
        with self.span(name, attributes):
            return await work

    # -- the receiver ----------------------------------------------------------------------------

    @contextmanager
    def server_span(
        self,
        method: str,
        route: str,
        headers: Mapping[str, str],
        *,
        scheme: str,
        remote: str | None,
        source: str,
    ) -> Iterator[Span]:
        """The server span of one webhook request, continuing its ``traceparent``."""
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "http.route": route,
            "url.path": route,
            "url.scheme": scheme,
            "client.address": remote,
            "user_agent.original": headers.get("User-Agent"),
            "dfm.source": source,
        }
        with self.span(
            f"{method} {route}", attributes, kind="SERVER", context=self.extract(headers)
        ) as span:
            yield span

    def answered(self, span: Span, status: int, *, outcome: str | None, request_id: str) -> None:
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("dfm.request_id", request_id)
        if outcome is not None:
            span.set_attribute("dfm.outcome", outcome)
        if status >= 500:
            self.error(span, str(status))

    async def submit(self, submit: Callable[[Any], Awaitable[bool]], event: Any) -> bool:
        """``dfm.store``: from submitting ``event`` until its batch committed (or failed). The
        event carries this span's context to its batch (a link) and its delivery (the parent)."""
        from dataclasses import replace

        attributes = {"dfm.source": event.source, "dfm.event_id": event.event_id}
        with self.span("dfm.store", attributes) as span:
            is_new = await submit(replace(event, trace=span.get_span_context()))
            span.set_attribute("dfm.store.result", "stored" if is_new else "duplicate")
            return is_new

    @asynccontextmanager
    async def batch(self, contexts: Sequence[SpanContext | None]) -> AsyncIterator[Span]:
        """``INSERT webhook_events``: one batch's commit, linked to each event's ``dfm.store``."""
        from opentelemetry.context import Context
        from opentelemetry.trace import Link

        links = [Link(c) for c in contexts if c is not None]
        attributes: dict[str, Any] = {
            "db.system.name": "postgresql",
            "db.operation.name": "INSERT",
            "db.collection.name": "webhook_events",
            "db.query.summary": "INSERT webhook_events",
        }
        if len(contexts) > 1:
            attributes["db.operation.batch.size"] = len(contexts)
        with self.span(
            "INSERT webhook_events",
            attributes,
            kind="CLIENT",
            context=Context(),  # a root: it belongs to many requests, linked below
            links=links,
        ) as span:
            yield span

    async def sync_page(
        self,
        attributes: Mapping[str, Any],
        events: Sequence[Any],
        commit: Callable[[list[Any]], Awaitable[int]],
    ) -> int:
        """``dfm.sync.page``: one page's commit; its events carry the span to their deliveries."""
        from dataclasses import replace

        with self.span("dfm.sync.page", attributes) as span:
            context = span.get_span_context()
            stored = await commit([replace(e, trace=context) for e in events])
            span.set_attribute("dfm.sync.items", len(events))
            span.set_attribute("dfm.sync.stored", stored)
            return stored

    @contextmanager
    def forward_span(
        self, url: str, parent: str | None, attributes: Mapping[str, Any]
    ) -> Iterator[Span]:
        """``POST`` (client): one forward attempt, the child of the delivery's ``dfm.store``
        span (or of the provider's ``traceparent`` when the event was stored untraced)."""
        target = urlsplit(url)
        port = target.port or (443 if target.scheme == "https" else 80)
        base = {
            "http.request.method": "POST",
            "server.address": target.hostname,
            "server.port": port,
            "url.scheme": target.scheme,
            **attributes,
        }
        with self.span("POST", base, kind="CLIENT", context=self.parent(parent)) as span:
            yield span

    def forwarded(self, span: Span, status: int | None, outcome: str) -> None:
        span.set_attribute("dfm.forward.outcome", outcome)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if status is None or status >= 400:
            self.error(span, str(status) if status is not None else outcome)


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Attributes without the None values (which OpenTelemetry refuses)."""
    if attributes is None:
        return None
    return {k: v for k, v in attributes.items() if v is not None}
