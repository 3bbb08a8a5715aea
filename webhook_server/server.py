"""The receiver's HTTP server: aiohttp's protocol, with what an internet-facing server needs.

aiohttp bounds neither the time to send a request's head nor the number of connections, and it
answers requests its parser refuses with a ``text/plain`` 400 that echoes raw bytes, logging a
traceback that quotes the request (credentials included). :class:`ReceiverProtocol` adds:

* a **head deadline** (``headerTimeoutSeconds``): from the connection's start, or from the first
  byte of a later request, to the end of its head; past it the connection is closed;
* an **idle deadline** (``idleTimeoutSeconds``): aiohttp's keep-alive timeout;
* a **connection cap** (``maxConnections``): a new connection past it closes the oldest idle one
  (one with no request in progress, as nginx reuses its keep-alive connections, and at least a
  a quarter of a second old), and when there is none it is answered 503 and closed;
* **problem+json** for parser refusals, logged as one JSON line with the error type only.

The body's deadline is the application's (``webhook_server.app``), as is everything about a
request once its head has arrived. Loop errors (an ``accept()`` that runs out of file
descriptors) become one JSON line per kind per 10 s instead of a traceback each.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from webhook_server.app import (
    CONFIG,
    METRICS,
    REQUEST_ID_HEADER,
    UNROUTED,
    create_app,
    handler_args,
    new_request_id,
    problem_response,
)
from webhook_server.config import ReceiverConfig, ServerConfig
from webhook_server.logs import get_logger
from webhook_server.metrics import ReceiverMetrics

log = get_logger("dfm.server")

# File descriptors kept for everything but client connections: the database pool, secret files,
# the JWKS client, the listening socket, logs.
RESERVED_FILES = 128
# A hard file limit of "unlimited" is raised to this, not further.
FILE_LIMIT_CEILING = 1_048_576
LOOP_ERROR_INTERVAL_SECONDS = 10.0


def _over_capacity() -> bytes:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "too many connections, retry later",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/problem+json\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# Sent to a connection past the cap when no idle one can make room: written straight to the
# socket (no request was read), so it is built once.
_OVER_CAPACITY = _over_capacity()


# A connection this young is never closed to make room: time for a client that was just admitted
# to send its request's head (a provider sends it within a round trip), so that clients
# reconnecting as fast as they are closed cannot churn every new connection away.
EVICTION_GRACE_SECONDS = 0.25


class ConnectionGuard:
    """The open connections of one server, oldest first, and the cap on their number."""

    def __init__(
        self,
        max_connections: int,
        metrics: ReceiverMetrics,
        grace_seconds: float = EVICTION_GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.metrics = metrics
        self.grace_seconds = grace_seconds
        self._clock = clock
        # Insertion-ordered (oldest first), with when each was admitted.
        self.open: dict[ReceiverProtocol, float] = {}
        self._closed = {
            reason: metrics.connections_closed.labels(reason)
            for reason in ("header_timeout", "evicted", "over_capacity")
        }

    def admit(self, protocol: ReceiverProtocol) -> bool:
        """Room for ``protocol``: below the cap, or by closing the oldest idle connection that is
        past its grace period; False (the caller refuses it) when there is none."""
        now = self._clock()
        if len(self.open) >= self.max_connections:
            victim = self._evictable(now)
            if victim is None:
                self.closed("over_capacity")
                return False
            self.closed("evicted")
            self.forget(victim)
            victim.force_close()
        self.open[protocol] = now
        self.metrics.connections_open.set(len(self.open))
        return True

    def _evictable(self, now: float) -> ReceiverProtocol | None:
        young = now - self.grace_seconds
        for candidate, admitted in self.open.items():
            if admitted > young:
                return None  # the rest are younger still
            if candidate.idle:
                return candidate
        return None

    def forget(self, protocol: ReceiverProtocol) -> None:
        if self.open.pop(protocol, None) is not None:
            self.metrics.connections_open.set(len(self.open))

    def closed(self, reason: str) -> None:
        self._closed[reason].inc()


class ReceiverProtocol(RequestHandler):
    """aiohttp's request handler with a head deadline, the connection cap and quiet refusals."""

    __slots__ = ("_guard", "_head_timer", "_header_timeout", "_metrics", "_refused")

    def __init__(
        self,
        manager: web.Server,
        *,
        guard: ConnectionGuard,
        header_timeout: float,
        metrics: ReceiverMetrics,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timeout = header_timeout
        self._metrics = metrics
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -- state --------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No request in progress nor parsed and waiting: closing it loses nothing."""
        return not self._request_in_progress and not self._messages

    # -- connection lifecycle -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            self._refused = True
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
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is None:
            # A later request's head began and is not complete yet: it gets the head deadline
            # too (the first request's is armed at connection_made).
            if data and self._request_count and self.idle and not self._force_close:
                self._head_timer = self._loop.call_at(
                    self._loop.time() + self._header_timeout, self._later_head_deadline
                )
        elif not self.idle:
            self._head_timer.cancel()
            self._head_timer = None

    def _first_head_deadline(self) -> None:
        self._keepalive_handle = None
        if self._request_count == 0 and self.idle:
            self._head_timed_out()
        else:
            # The first request arrived in time: from here on, aiohttp's keep-alive deadline.
            self._process_keepalive()

    def _later_head_deadline(self) -> None:
        self._head_timer = None
        if self.idle:
            self._head_timed_out()

    def _head_timed_out(self) -> None:
        if not self._force_close:
            self._guard.closed("header_timeout")
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
        log line with the error's type (its text would quote the request, credentials too)."""
        request_id = new_request_id()
        log.warning(
            "request refused by the HTTP parser",
            request_id=request_id,
            status=status,
            error=type(exc).__name__ if exc is not None else None,
        )
        self._metrics.requests.labels(UNROUTED, "malformed_http").inc()
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
) -> Listener:
    """Serve ``app`` (built by ``create_app``) on ``host:port`` with the receiver's protocol."""
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
    )
    loop = asyncio.get_running_loop()
    kwargs = handler_args(server_config) | {"access_log": None, "loop": loop}
    header_timeout = server_config.header_timeout_seconds

    def protocol() -> ReceiverProtocol:
        return ReceiverProtocol(
            manager, guard=guard, header_timeout=header_timeout, metrics=metrics, **kwargs
        )

    try:
        server = await loop.create_server(protocol, host, port, backlog=1024, reuse_address=True)
    except BaseException:
        await runner.cleanup()
        raise
    previous = loop.get_exception_handler()
    loop.set_exception_handler(LoopErrors())

    def restore() -> None:
        loop.set_exception_handler(previous)

    return Listener(runner, server, guard, restore)


class LoopErrors:
    """The event loop's exception handler: one JSON line per kind of error per 10 s, with the
    error's type and asyncio's fixed message, never a traceback (which could quote a request).

    An ``accept()`` that fails for want of file descriptors is what this is mostly for: asyncio
    would log it with a traceback every time, which under a connection flood is thousands a second.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "")[:120]
        kind = (message, type(exc).__name__ if exc is not None else "")
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < LOOP_ERROR_INTERVAL_SECONDS:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        with contextlib.suppress(Exception):
            log.error(
                "event loop error",
                message=message,
                error=kind[1] or None,
                errno=getattr(exc, "errno", None),
                suppressed=self._suppressed.pop(kind, 0),
            )


# -- the process ---------------------------------------------------------------------------------


def run(config: ReceiverConfig) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting, finish in-flight requests, flush, close."""
    file_limit = raise_file_limit()
    asyncio.run(_serve(config, file_limit))


async def _serve(config: ReceiverConfig, file_limit: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(config)
    # Everything built so far lives as long as the process: keep it out of the collector's
    # generations, which shortens the full collections that stall the loop under load.
    gc.freeze()
    listener = await start(
        app,
        config.host,
        config.port,
        shutdown_timeout=config.shutdown_timeout_seconds,
        file_limit=file_limit,
    )
    log.info(
        "listening",
        port=listener.port,
        file_limit=file_limit,
        max_connections=listener.guard.max_connections,
    )
    for source in config.sources:
        log.info(
            "serving source", source=source.key, provider=source.provider.value, path=source.route
        )
    await stop.wait()
    log.info("stopping")
    await listener.stop()
