"""The receiver's HTTP server: aiohttp's protocol, with what an internet-facing server needs.

aiohttp bounds neither the time to send a request's head, nor its total size, nor the number of
connections, and it answers requests its parser refuses with a ``text/plain`` 400 that echoes raw
bytes, logging a traceback that quotes the request (credentials included).
:class:`ReceiverProtocol` adds:

* a **head deadline** (``headerTimeoutSeconds``): from the connection's start, or from the first
  byte of a later request, to the end of its head; past it the connection is closed;
* a **head size limit** (``maxHeadBytes``, request line and headers together; past it 431) and a
  process-wide **head budget** (``headBudgetBytes``): bytes of heads still arriving, counted as
  they are received; when it is spent, the connections whose heads have been arriving the longest
  are closed to make room (:class:`webhook_server.admission.ByteBudget`);
* an **idle deadline** (``idleTimeoutSeconds``): aiohttp's keep-alive timeout;
* a **connection cap** (``maxConnections``): a new connection past it closes the connection idle
  the longest (waiting for a request, as nginx reuses its keep-alive connections, for at least a
  quarter of a second), and when there is none it is answered 503 and closed;
* **one request at a time**: the bytes of a next request that arrive before the current one is
  answered (HTTP pipelining, which no webhook sender uses) are not parsed; the connection is
  closed once the current request is answered;
* **problem+json** for parser refusals, logged as one JSON line with the error type only;
* the **one-pass route**: a request the parser returns whole (head and body in one read, a
  ``POST`` to a source's path, HTTP/1.1) is not handed to aiohttp's task but to
  ``webhook_server.app.OnePass``, which answers it through ``_reply`` once its batch commits; the
  connection is busy meanwhile, keeps its keep-alive deadline after, and a shutdown waits for it.

The body's deadline and budget are the application's (``webhook_server.app``), as is everything
about a request once its head has arrived. Loop errors (an ``accept()`` that runs out of file
descriptors) become one JSON line per kind per 10 s instead of a traceback each.

This relies on aiohttp's ``RequestHandler`` internals (``_INTERNALS`` below; checked at import,
and their meaning by the "contract" tests of ``tests/integration/test_receiver_hardening.py`` and
by ``tests/integration/test_one_pass.py``), hence the bounded aiohttp range in ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import resource
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from webhook_server import wire
from webhook_server.admission import ByteBudget
from webhook_server.app import (
    CONFIG,
    DRAINING,
    METRICS,
    REQUEST_ID_HEADER,
    UNROUTED,
    OnePass,
    create_app,
    handler_args,
    new_request_id,
    problem_response,
)
from webhook_server.config import STOP_MARGIN_SECONDS, ReceiverConfig, ServerConfig
from webhook_server.logs import get_logger
from webhook_server.metrics import ReceiverMetrics
from webhook_server.tracing import Tracing
from webhook_server.workers import HURRY_SIGNAL, Worker, supervise

log = get_logger("dfm.server")

# What this module uses of aiohttp's RequestHandler beyond its public API. Checked at import so
# that an aiohttp that renamed one fails loudly instead of serving with a protocol that misjudges
# its connections; what each means is tested against the real protocol.
_INTERNALS = (
    "_waiter",
    "_messages",
    "_request_count",
    "_force_close",
    "_close",
    "_keepalive_handle",
    "_process_keepalive",
    "_handle_request",
    "_loop",
    "_parser",
    "_keepalive_timeout",
    "_next_keepalive_close_time",
)
_missing = [name for name in _INTERNALS if not hasattr(RequestHandler, name)]
if _missing:  # pragma: no cover - only with an aiohttp outside the supported range
    raise ImportError(
        f"aiohttp {aiohttp.__version__} lacks RequestHandler.{', .'.join(_missing)}: "
        "webhook_server.server supports the aiohttp range in pyproject.toml"
    )

# File descriptors kept for everything but client connections: the database pool, secret files,
# the JWKS client, the listening socket, logs.
RESERVED_FILES = 128
# A hard file limit of "unlimited" is raised to this, not further.
FILE_LIMIT_CEILING = 1_048_576
LOOP_ERROR_INTERVAL_SECONDS = 10.0
_HEAD_END = b"\r\n\r\n"

# The worst case of one receiver process's memory, from its limits (docs/receiver.md, "Memory"):
# figures measured on CPython 3.11 with aiohttp 3.14, rounded up. What a head or a queued event
# holds costs about twice its bytes (the parsed copy beside the received one; the statement's copy
# of a batch being inserted); a body being read about four times (the chunks, their join, the
# stream's buffer, the allocator's slack).
# `dfm receiver` idles at about 106 MiB (its command line imports more than the receiver needs).
BASE_MEMORY_BYTES = 110 * 1024 * 1024
CONNECTION_MEMORY_BYTES = 5 * 1024
HEAD_MEMORY_FACTOR = 2
BODY_MEMORY_FACTOR = 4
QUEUE_MEMORY_FACTOR = 2
_CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_bound(config: ReceiverConfig, max_connections: int) -> int:
    """What the limits of ``config`` let one process hold at worst, in bytes."""
    server = config.server
    largest_body = max((s.limits.max_body_bytes for s in config.sources), default=0)
    return (
        BASE_MEMORY_BYTES
        + max_connections * CONNECTION_MEMORY_BYTES
        + HEAD_MEMORY_FACTOR * server.head_budget_bytes
        + BODY_MEMORY_FACTOR * max(server.body_budget_bytes, largest_body)
        + QUEUE_MEMORY_FACTOR * config.database.max_queued_bytes
    )


def memory_limit(paths: tuple[str, ...] = _CGROUP_MEMORY_LIMITS) -> int | None:
    """The container's memory limit (cgroup v2, else v1), or None when there is none."""
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            text = Path(path).read_text().strip()
            if text == "max":
                return None
            limit = int(text)
            return limit if limit < 2**60 else None
    return None


def raw_problem(
    status: int, title: str, detail: str, *, retry_after: int | None = None, request_id: str = ""
) -> bytes:
    """A complete problem+json response with ``Connection: close``, as bytes for the socket: for
    refusals made before aiohttp has a request to answer."""
    problem: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if request_id:
        problem["requestId"] = request_id
    problem["detail"] = detail
    body = json.dumps(problem).encode()
    head = f"HTTP/1.1 {status} {title}\r\nContent-Type: application/problem+json\r\n"
    if retry_after is not None:
        head += f"Retry-After: {retry_after}\r\n"
    if request_id:
        head += f"{REQUEST_ID_HEADER}: {request_id}\r\n"
    head += f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


# Written straight to the socket (no request was read), so built once.
_OVER_CAPACITY = raw_problem(
    503, "Service Unavailable", "too many connections, retry later", retry_after=1
)
_HEADS_BUSY = raw_problem(
    503, "Service Unavailable", "too many request heads in progress, retry later", retry_after=1
)


# A connection idle for less than this is never closed to make room: time for a client that was
# just admitted to send its request's head (a provider sends it within a round trip), so that
# clients reconnecting as fast as they are closed cannot churn every new connection away.
EVICTION_GRACE_SECONDS = 0.25
CLOSE_REASONS = (
    "header_timeout",
    "evicted",
    "over_capacity",
    "head_too_large",
    "head_budget",
    "pipelined",
)


class ConnectionGuard:
    """The open connections of one server and the cap on their number.

    Idle connections (waiting for a request: none being received, parsed or answered) are kept
    apart from busy ones, in the order they became idle, so that the one idle the longest is found
    in O(1). A connection is busy from the moment its request's head has been parsed (the protocol
    says so from ``data_received``, before aiohttp hands the request to a task) until that
    request has been answered. A connection still sending a head is idle: closing it loses no
    request, and a slow head is what an attacker holding sockets sends.
    """

    def __init__(
        self,
        max_connections: int,
        metrics: ReceiverMetrics,
        grace_seconds: float = EVICTION_GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        head_budget_bytes: int = ServerConfig().head_budget_bytes,
    ) -> None:
        self.max_connections = max_connections
        self.metrics = metrics
        self.grace_seconds = grace_seconds
        self._clock = clock
        # Insertion-ordered: the first one has been idle the longest (the value: since when).
        self._idle: dict[ReceiverProtocol, float] = {}
        self._busy: dict[ReceiverProtocol, None] = {}
        self._closed = {
            reason: metrics.connections_closed.labels(reason) for reason in CLOSE_REASONS
        }
        self.heads = ByteBudget(
            head_budget_bytes, clock=clock, on_evict=lambda: self.closed("head_budget")
        )

    @property
    def open(self) -> int:
        return len(self._idle) + len(self._busy)

    def admit(self, protocol: ReceiverProtocol) -> bool:
        """Room for ``protocol``: below the cap, or by closing the connection idle the longest if
        it has been idle past the grace period; False (the caller refuses it) when there is none."""
        now = self._clock()
        if self.open >= self.max_connections:
            victim = self._evictable(now)
            if victim is None:
                self.closed("over_capacity")
                return False
            self.closed("evicted")
            self.forget(victim)
            victim.force_close()
        self._idle[protocol] = now
        self.metrics.connections_open.set(self.open)
        return True

    def _evictable(self, now: float) -> ReceiverProtocol | None:
        for candidate, since in self._idle.items():
            return candidate if since <= now - self.grace_seconds else None
        return None

    def is_idle(self, protocol: ReceiverProtocol) -> bool:
        return protocol in self._idle

    def connections(self) -> list[ReceiverProtocol]:
        return [*self._idle, *self._busy]

    def busy(self, protocol: ReceiverProtocol) -> None:
        if self._idle.pop(protocol, None) is not None:
            self._busy[protocol] = None

    def idle(self, protocol: ReceiverProtocol) -> None:
        if protocol in self._busy:
            del self._busy[protocol]
            self._idle[protocol] = self._clock()

    def forget(self, protocol: ReceiverProtocol) -> None:
        self.heads.release(protocol)
        if protocol in self._idle:
            del self._idle[protocol]
        elif protocol in self._busy:
            del self._busy[protocol]
        else:
            return
        self.metrics.connections_open.set(self.open)

    def closed(self, reason: str) -> None:
        self._closed[reason].inc()


class ReceiverProtocol(RequestHandler):
    """aiohttp's request handler with head limits, the connection cap and quiet refusals."""

    __slots__ = (
        "_answered",
        "_body_length",
        "_close_after",
        "_guard",
        "_head_bytes",
        "_head_tail",
        "_head_timer",
        "_header_timeout",
        "_in_flight",
        "_max_head_bytes",
        "_metrics",
        "_one_pass",
        "_payload",
        "_refused",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        guard: ConnectionGuard,
        header_timeout: float,
        max_head_bytes: int,
        metrics: ReceiverMetrics,
        one_pass: OnePass | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._one_pass = one_pass
        # A request the one-pass route took, until it is answered; whether its client asked for
        # the connection to close; what a shutdown waits on meanwhile.
        self._in_flight = False
        self._close_after = False
        self._answered: asyncio.Future[None] | None = None
        self._guard = guard
        self._header_timeout = header_timeout
        self._max_head_bytes = max_head_bytes
        self._metrics = metrics
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        # The head being received: its bytes so far, and its last three (a CRLFCRLF that
        # straddles two reads is still found).
        self._head_bytes = 0
        self._head_tail = b""
        # The request whose head was parsed, until it is answered: its body, and the body's
        # Content-Length (None when chunked).
        self._payload: Any = None
        self._body_length: int | None = 0

    # -- state --------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """aiohttp's own notion (the one its keep-alive timeout acts on): waiting for a request,
        none parsed and waiting to be handled. Not idle from the moment a head is parsed, through
        the moment its request is taken from the queue, until it is answered."""
        waiter = self._waiter
        return (
            waiter is not None and not waiter.done() and not self._messages and not self._in_flight
        )

    # -- connection lifecycle -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            self._refused = True
            self._force_close = True
            assert isinstance(transport, asyncio.Transport)
            transport.write(_OVER_CAPACITY)
            transport.close()
            return
        super().connection_made(transport)
        # aiohttp's first keep-alive deadline is the idle timeout; the first request's head gets
        # the (shorter) head deadline instead, on the same handle (so aiohttp cancels it).
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        self._keepalive_handle = self._loop.call_at(
            self._loop.time() + self._header_timeout, self._first_head_deadline
        )

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._guard.forget(self)
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and not (self._force_close or self._close):
            payload = self._payload
            if self._in_flight:
                # A next request before the one-pass route answered this one: as below.
                self._guard.closed("pipelined")
                self.close()
                return
            if payload is None:
                data = self._head_received(data)
            elif not payload.is_eof():
                data = self._body_received(data)
            else:
                # A next request before this one was answered: not parsed (it would be held in
                # memory meanwhile); the connection closes once this request is answered.
                self._guard.closed("pipelined")
                self.close()
                return

    def _head_received(self, data: bytes) -> bytes:
        """Feed a head (and the body that came with it); returns what is left to feed."""
        end = self._head_end(data)
        size = self._head_bytes + (len(data) if end < 0 else end)
        if size > self._max_head_bytes:
            self._refuse_head()
            return b""
        if end < 0 and not self._guard.heads.take(self, len(data)):
            # The head goes on past this read: its bytes are held until it ends.
            self._guard.closed("head_budget")
            self._refuse(_HEADS_BUSY)
            return b""
        count = self._request_count
        # One feed for the usual webhook, head and body in one read; aiohttp's task is woken
        # below, unless the one-pass route takes the request.
        waiter, self._waiter = self._waiter, None
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        parsed = self._request_count - count
        if not parsed:
            if self._request_count and self._head_timer is None:
                # A later request's head goes on past its first read: it gets the head deadline
                # too, from now (the first request's is armed at connection_made).
                self._head_timer = self._loop.call_at(
                    self._loop.time() + self._header_timeout, self._later_head_deadline
                )
            self._head_bytes = size
            self._head_tail = (self._head_tail + data)[-3:] if len(data) < 3 else data[-3:]
            return b""
        self._head_done()
        self._guard.busy(self)
        if parsed == 1 and self._took(data, end):
            return b""
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        message, payload = self._messages[-1]
        if not isinstance(message, RawRequestMessage):
            # Refused by the parser: answered 400, then closed; nothing more is parsed.
            self.close()
            return b""
        self._payload = payload
        if message.chunked:
            self._body_length = None  # its end is the parser's to find
            return b""
        self._body_length = int(message.headers.get(hdrs.CONTENT_LENGTH) or 0)
        if parsed > 1 or (end >= 0 and len(data) - end > self._body_length):
            # A next request came in the same read: parsed already (this read at most), it is
            # not served, and the connection closes once this request is answered.
            self._guard.closed("pipelined")
            self.close()
        return b""

    def _took(self, data: bytes, end: int) -> bool:
        """Whether the one-pass route took the request just parsed (the last of ``_messages``,
        whose head ended at ``end`` in ``data``): a POST to a source's path, HTTP/1.1, its whole
        body in this read and nothing after it. It is then answered without aiohttp's task."""
        one_pass = self._one_pass
        if one_pass is None or end < 0 or self.writing_paused:
            # While the client does not read its answers, aiohttp's path (whose response waits
            # for the buffer to drain, and closes on the next request meanwhile) takes over.
            return False
        message, payload = self._messages[-1]
        if (
            not isinstance(message, RawRequestMessage)
            or message.method != hdrs.METH_POST
            or message.version != HttpVersion11
            or message.chunked
            or message.upgrade
            or not payload.is_eof()
            or hdrs.EXPECT in message.headers
        ):
            return False
        length = int(message.headers.get(hdrs.CONTENT_LENGTH) or 0)
        if len(data) - end != length:
            return False
        route = one_pass.route(message.path)
        if route is None:
            return False
        self._messages.pop()
        if self._parser is not None:  # None only after connection_lost
            self._parser.message_consumed()
        self._in_flight = True
        self._close_after = message.should_close
        runtime, query = route
        one_pass.handle(runtime, message.headers, payload.read_nowait(-1), query, self._reply)
        return True

    def _reply(
        self, status: int, body: bytes, content_type: bytes, headers: list[tuple[str, str]]
    ) -> None:
        """Answer the one-pass route's request; keep the connection for the next one, unless it
        or the server is closing. Only the first call for a request answers it."""
        if not self._in_flight:
            return
        self._in_flight = False
        close = self._close_after or self._close or self._force_close
        if not close and self._one_pass is not None and self._one_pass.draining.active:
            close = True  # stopping: the sender's next request goes to another pod
        transport = self.transport
        if transport is not None:
            transport.write(wire.response(status, body, content_type, headers, close=close))
        if close:
            self.force_close()
        else:
            self._guard.idle(self)
            loop = self._loop
            self._next_keepalive_close_time = loop.time() + self._keepalive_timeout
            if self._keepalive_handle is None:
                self._keepalive_handle = loop.call_at(
                    self._next_keepalive_close_time, self._process_keepalive
                )
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(None)

    def _process_keepalive(self) -> None:
        if self._in_flight:
            # Being answered by the one-pass route, which arms the deadline again after.
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 - aiohttp's
        """aiohttp's, after the one-pass route's request in flight (if any) is answered."""
        if self._in_flight:
            self._close = True
            self._answered = self._loop.create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._answered
        await super().shutdown(timeout)

    def _head_end(self, data: bytes) -> int:
        """Where the head ends in ``data`` (just past its CRLFCRLF), or -1."""
        tail = self._head_tail
        if tail:
            at = (tail + data[:3]).find(_HEAD_END)
            if at >= 0:
                return at + 4 - len(tail)
        at = data.find(_HEAD_END)
        return at + 4 if at >= 0 else -1

    def _body_received(self, data: bytes) -> bytes:
        """Feed the body (and nothing past its end); returns what follows it."""
        if self._body_length is None:  # chunked: its end is the parser's to find
            super().data_received(data)
            return b""
        left = self._body_length - self._payload.total_bytes
        part = data if len(data) <= left else data[:left]
        super().data_received(part)
        return data[len(part) :]

    def _head_done(self) -> None:
        self._head_bytes = 0
        self._head_tail = b""
        self._guard.heads.release(self)
        self._cancel_head_timer()

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[StreamResponse]],
    ) -> tuple[StreamResponse, bool]:
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            payload, self._payload = self._payload, None
            if payload is not None and not payload.is_eof():
                # Answered before its body was read: what follows is that body, never a request.
                self.close()
            elif not (self._force_close or self._close or self._messages):
                self._guard.idle(self)

    def evict(self) -> None:
        """Closed to make room in the head budget (see ConnectionGuard.heads)."""
        self.force_close()

    def _first_head_deadline(self) -> None:
        self._keepalive_handle = None
        if self._request_count == 0:
            self._head_timed_out()
        else:
            # The first request arrived in time: from here on, aiohttp's keep-alive deadline.
            self._process_keepalive()

    def _later_head_deadline(self) -> None:
        self._head_timer = None
        if self._payload is None:
            self._head_timed_out()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        if not self._force_close:
            self._guard.closed("header_timeout")
            self.force_close()

    def _refuse_head(self) -> None:
        request_id = new_request_id()
        log.warning(
            "request refused: head too large",
            request_id=request_id,
            status=431,
            limit=self._max_head_bytes,
        )
        self._metrics.requests.labels(UNROUTED, "head_too_large").inc()
        self._guard.closed("head_too_large")
        self._refuse(
            raw_problem(
                431,
                "Request Header Fields Too Large",
                f"the request line and headers must fit in {self._max_head_bytes} bytes",
                request_id=request_id,
            )
        )

    def _refuse(self, response: bytes) -> None:
        if self.transport is not None:
            self.transport.write(response)
        self.force_close()

    # -- what aiohttp would write to stderr or echo to the client -----------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        """A problem+json answer instead of aiohttp's text, which quotes the refused bytes; one
        log line with the error's type (its text would quote the request, credentials too).

        aiohttp calls this for what its parser refuses, and for a 500 or 504 raised outside the
        application (whose middleware answers everything else): the two are logged and counted
        apart."""
        request_id = new_request_id()
        error = type(exc).__name__ if exc is not None else None
        if isinstance(exc, HttpProcessingError):
            log.warning(
                "request refused by the HTTP parser",
                request_id=request_id,
                status=status,
                error=error,
            )
            self._metrics.requests.labels(UNROUTED, "malformed_http").inc()
            # aiohttp answers a request it could not parse as HTTP/1.0; the receiver speaks 1.1.
            with contextlib.suppress(AttributeError):
                request._version = HttpVersion11
                request._cache.pop("version", None)
        else:
            log.error(
                "request failed outside the application",
                request_id=request_id,
                status=status,
                error=error,
            )
            self._metrics.requests.labels(UNROUTED, "error").inc()
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        detail = "the request is not valid HTTP/1.1" if status == 400 else ""
        response = problem_response(status, request_id, detail)
        response.headers[REQUEST_ID_HEADER] = request_id
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        error = type(exc).__name__ if isinstance(exc, BaseException) else None
        log.error("http connection error", error=error)

    def log_debug(self, *args: Any, **kwargs: Any) -> None:
        return None


# -- serving -------------------------------------------------------------------------------------


@dataclass
class Listener:
    """A running server: its runner (the app's startup and cleanup), socket server and guard."""

    runner: web.AppRunner
    server: asyncio.Server
    guard: ConnectionGuard
    _restore: Callable[[], None] = field(default=lambda: None)

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the shutdown timeout), close."""
        self.server.close()
        await self.runner.cleanup()
        self._restore()


def connection_cap(configured: int, file_limit: int) -> int:
    """The connections one process may hold: the configured cap, within the file limit."""
    return max(1, min(configured, file_limit - RESERVED_FILES))


def raise_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the soft limit now.

    Kubernetes has no field for it: the container runtime's hard limit (typically 1,048,576 with
    containerd) is the ceiling, and a soft limit of 1,024 would otherwise cap the connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FILE_LIMIT_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return FILE_LIMIT_CEILING if soft == resource.RLIM_INFINITY else soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


async def start(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = 20.0,
    file_limit: int | None = None,
    one_pass: bool = True,
    reuse_port: bool = False,
) -> Listener:
    """Serve ``app`` (built by ``create_app``) on ``host:port`` with the receiver's protocol.

    ``one_pass=False`` sends every request through aiohttp's web layer (the tests compare the
    two paths; the bench measures what the one-pass route saves). ``reuse_port``: bind with
    ``SO_REUSEPORT``, beside the other workers of the pod (webhook_server.workers)."""
    config = app[CONFIG]
    metrics = app[METRICS]
    server_config: ServerConfig = config.server
    if file_limit is None:
        file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if file_limit == resource.RLIM_INFINITY:
            file_limit = FILE_LIMIT_CEILING
    cap = connection_cap(server_config.max_connections, file_limit)
    if cap < server_config.max_connections:
        log.warning(
            "connection cap lowered to fit the file limit",
            configured=server_config.max_connections,
            cap=cap,
            file_limit=file_limit,
        )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    manager = runner.server
    assert manager is not None
    guard = ConnectionGuard(
        cap,
        metrics,
        grace_seconds=min(EVICTION_GRACE_SECONDS, server_config.header_timeout_seconds),
        head_budget_bytes=server_config.head_budget_bytes,
    )
    loop = asyncio.get_running_loop()
    kwargs = handler_args(server_config) | {"access_log": None, "loop": loop}
    header_timeout = server_config.header_timeout_seconds

    route = OnePass(app) if one_pass else None

    def protocol() -> ReceiverProtocol:
        return ReceiverProtocol(
            manager,
            guard=guard,
            one_pass=route,
            header_timeout=header_timeout,
            max_head_bytes=server_config.max_head_bytes,
            metrics=metrics,
            **kwargs,
        )

    try:
        server = await loop.create_server(
            protocol, host, port, backlog=1024, reuse_address=True, reuse_port=reuse_port or None
        )
    except BaseException:
        await runner.cleanup()
        raise
    previous = loop.get_exception_handler()
    loop.set_exception_handler(LoopErrors())

    def after_stop(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # An accept() retry asyncio scheduled before the stop can still fire on the closed
        # socket after it (a second later): dropped here too, everything else as before.
        if closed_listener_retry(context):
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    def restore() -> None:
        loop.set_exception_handler(after_stop)

    return Listener(runner, server, guard, restore)


# asyncio's messages name the callback or task they are about (its repr, with addresses and
# arguments): only the words before the first such part are a kind, and are logged.
_MESSAGE_DETAIL = re.compile(r"[<(\[{'\"=:]|0x|\d")
MAX_LOOP_ERROR_KINDS = 64


def loop_error_kind(message: str) -> str:
    """The fixed words of an asyncio message: "Exception in callback TimerHandle(when=…)" is
    "Exception in callback TimerHandle", "socket.accept() out of system resource" is
    "socket.accept out of system resource"."""
    message = message.replace("()", "")
    cut = _MESSAGE_DETAIL.search(message)
    return " ".join((message[: cut.start()] if cut else message).split())[:80]


def closed_listener_retry(context: dict[str, Any]) -> bool:
    """Whether ``context`` is asyncio retrying ``accept()`` on a listening socket closed since.

    After an ``accept()`` that ran out of file descriptors asyncio tries again a second later
    (``_start_serving``); when the receiver stops in between, that retry meets the closed socket
    and raises ValueError. Nothing failed: the listener was meant to be closed.
    """
    handle = context.get("handle")
    callback = getattr(handle, "_callback", None)
    return (
        isinstance(context.get("exception"), ValueError)
        and getattr(callback, "__name__", "") == "_start_serving"
        and any(
            isinstance(arg, socket.socket) and arg.fileno() == -1
            for arg in getattr(handle, "_args", None) or ()
        )
    )


class LoopErrors:
    """The event loop's exception handler: one JSON line per kind of error per 10 s, with the
    error's type and the fixed words of asyncio's message, never a traceback nor a repr (either
    could quote a request).

    An ``accept()`` that fails for want of file descriptors is what this is mostly for: asyncio
    would log it with a traceback every time, which under a connection flood is thousands a second.
    Kinds are bounded (``MAX_LOOP_ERROR_KINDS``; past it they are counted as one, "other").
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if closed_listener_retry(context):
            return
        exc = context.get("exception")
        kind = (
            loop_error_kind(str(context.get("message") or "")),
            type(exc).__name__ if exc is not None else "",
        )
        if kind not in self._last and len(self._last) >= MAX_LOOP_ERROR_KINDS:
            kind = ("other", "")
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < LOOP_ERROR_INTERVAL_SECONDS:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        with contextlib.suppress(Exception):
            log.error(
                "event loop error",
                message=kind[0],
                error=kind[1] or None,
                errno=getattr(exc, "errno", None),
                suppressed=self._suppressed.pop(kind, 0),
            )


# -- the process ---------------------------------------------------------------------------------


def run(
    config: ReceiverConfig,
    *,
    tracing: Tracing | None = None,
    one_pass: bool = True,
    worker: Worker | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting, finish in-flight requests, flush, close.
    ``one_pass`` as for :func:`start`; ``worker``: which of the pod's processes this is (set by
    :func:`run_workers`)."""
    file_limit = raise_file_limit()
    asyncio.run(_serve(config, file_limit, tracing, one_pass, worker))


def run_workers(
    config: ReceiverConfig,
    *,
    tracing: Callable[[], Tracing | None] = lambda: None,
    one_pass: bool = True,
) -> int:
    """Serve with ``config.workers`` processes on one port, under a supervisor; returns its exit
    code (webhook_server.workers). ``tracing`` is called in each worker: the exporter's thread
    is the process's own."""
    raise_file_limit()  # inherited by the workers
    check_port_free(config.host, config.port)

    def serve(worker: Worker) -> int:
        structlog.contextvars.bind_contextvars(worker=worker.index)
        worker_tracing = tracing()
        try:
            run(config, tracing=worker_tracing, one_pass=one_pass, worker=worker)
        finally:
            if worker_tracing is not None:
                worker_tracing.shutdown()
        return 0

    stop_seconds = config.stop_seconds() + STOP_MARGIN_SECONDS
    log.info("starting workers", workers=config.workers, port=config.port)
    return supervise(config.workers, serve, stop_seconds=stop_seconds)


def check_port_free(host: str, port: int) -> None:
    """Raise OSError when something already listens on ``host:port``.

    The workers bind with SO_REUSEPORT, and the kernel lets any other process of the same user
    that does too share the port: another receiver, or an old one still draining, would then
    silently take part of the traffic. A plain bind, as a single receiver's, fails instead."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"{host}:{port}: {exc.strerror or 'cannot bind'}"
                ) from None


async def _linger(app: web.Application, hurry: asyncio.Event, seconds: float) -> None:
    """After the stop signal, serve on for ``seconds``: Kubernetes takes a moment to take a
    terminating pod out of the endpoints, and connections routed here meanwhile would otherwise
    be refused (a provider that does not retry loses the delivery). Every answer meanwhile
    closes its connection, so that senders on keep-alive connections move to another pod.
    /readyz stays truthful: a terminating pod is out of the ready endpoints anyway, and while it
    can serve, kube-proxy may still use it when no other pod is ready. ``hurry``: set by a
    second signal, ending the wait."""
    if seconds <= 0:
        return
    app[DRAINING].active = True
    log.info("stop signal: serving on while the pod leaves the endpoints", seconds=seconds)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await hurry.wait()


async def _serve(
    config: ReceiverConfig,
    file_limit: int,
    tracing: Tracing | None,
    one_pass: bool,
    worker: Worker | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        # The first signal stops; any later one ends the shutdown delay (two may arrive in the
        # same turn of the loop, before the delay begins).
        (hurry if stop.is_set() else stop).set()

    def on_hurry() -> None:
        stop.set()
        hurry.set()

    # A worker stops on SIGTERM only: its supervisor turns SIGINT into SIGTERM for every worker,
    # and a second stop into HURRY_SIGNAL.
    for signum in (signal.SIGTERM,) if worker else (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    if worker:
        loop.add_signal_handler(HURRY_SIGNAL, on_hurry)
    app = create_app(config, tracing=tracing, worker=worker)
    # Everything built so far lives as long as the process: keep it out of the collector's
    # generations, which shortens the full collections that stall the loop under load.
    gc.freeze()
    listener = await start(
        app,
        config.host,
        config.port,
        shutdown_timeout=config.shutdown_timeout_seconds,
        file_limit=file_limit,
        one_pass=one_pass,
        reuse_port=worker is not None,
    )
    # The container's limit is shared by every worker: each may use its bound.
    bound = memory_bound(config, listener.guard.max_connections) * (worker.count if worker else 1)
    limit = memory_limit()
    log.info(
        "listening",
        port=listener.port,
        file_limit=file_limit,
        max_connections=listener.guard.max_connections,
        memory_bound_mib=bound // 2**20,
        memory_limit_mib=None if limit is None else limit // 2**20,
    )
    if limit is not None and bound > limit:
        log.warning(
            "the memory limit is below what the receiver's limits allow at worst",
            memory_bound_mib=bound // 2**20,
            memory_limit_mib=limit // 2**20,
            hint="lower server.* or database.maxQueuedBytes, or raise the container's limit "
            "(docs/receiver.md, Memory)",
        )
    for source in config.sources:
        log.info(
            "serving source", source=source.key, provider=source.provider.value, path=source.route
        )
    await stop.wait()
    await _linger(app, hurry, config.shutdown_delay_seconds)
    log.info("stopping")
    await listener.stop()
