"""A small HTTP/1.1 client for deliveries: POST, keep-alive, the status and Retry-After.

Forwarding sends one request per event, so the client's cost per request is the cost of
forwarding: aiohttp's ``ClientSession`` spends about 200 µs of CPU per request (tracing hooks,
cookie jar, response objects), as much as receiving and storing the event. A delivery needs far
less: write the request, read the answer's status line and headers, and frame (and drop) its
body so the connection can be used again. This module does that on a bare asyncio protocol with
httptools' parser (llhttp) and TLS from the standard library, in a few tens of microseconds.

What it does not do, on purpose: follow redirects (a 3xx is an answer like any other), decompress
(no ``Accept-Encoding`` is sent), read an answer's body beyond ``MAX_BODY_BYTES`` (the connection
is closed instead), use a proxy, or keep cookies.

A connection a target closed while it sat idle is only found out when it is used: a request that
fails on a reused connection before any byte of the answer arrived is sent once more on a new
connection (the target may then see it twice: deliveries are at least once, and a consumer
deduplicates on ``webhook-id``). Idle connections are not kept longer than
``IDLE_SECONDS``, below the keep-alive timeout of common servers (5 s for Node.js), so that this
is rare.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024
IDLE_SECONDS = 2.0
_INTERIM = range(100, 200)


class AnswerError(Exception):
    """The target's answer is not HTTP/1.x we can read (treated as a connection error)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None


@dataclass(frozen=True)
class Endpoint:
    """Where requests go, parsed once from the target URL."""

    host: str
    port: int
    tls: bool
    target: str  # path and query, as sent on the request line
    host_header: str
    authorization: str | None  # from user:password@ in the URL, as Basic

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL with a host")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        default = port == (443 if tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(host, port, tls, target, shown if default else f"{shown}:{port}", authorization)


class _Connection(asyncio.Protocol):
    """One connection; reads exactly one answer per request. The answer is parsed by httptools
    (llhttp, the parser Node.js uses); this class only keeps the limits and the reuse rules."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.answer: Answer | None = None
        self.reusable = True
        self.closed = False
        self.received_any = False
        self.idle_since = 0.0
        self._status = 0
        self._retry_after: str | None = None
        self._head_bytes = 0
        self._body_bytes = 0

    # -- asyncio ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.waiter is None or self.waiter.done():
            self._fail(AnswerError("bytes nobody asked for"))  # do not trust the framing
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(AnswerError("the target switched protocols"))
        except httptools.HttpParserError as exc:
            # Our own callbacks' AnswerError comes back wrapped as the error's cause.
            cause = exc.__cause__ or exc.__context__
            self._fail(cause if isinstance(cause, AnswerError) else AnswerError("not HTTP/1.x"))

    def eof_received(self) -> bool:
        self.reusable = False
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            if self.answer is not None:
                self.waiter.set_result(self.answer)
            else:
                self.waiter.set_exception(exc or ConnectionResetError("connection closed"))

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.answer is not None:
            raise AnswerError("bytes after the answer")  # do not trust the framing
        self._retry_after = None
        self._head_bytes = 0
        self._body_bytes = 0

    def on_status(self, status: bytes) -> None:
        self._count_head(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(name, value)
        if name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status in _INTERIM:
            return  # 100 Continue and friends: the real answer follows
        self.answer = Answer(status, self._retry_after)
        if not self.parser.should_keep_alive():
            # Connection: close, HTTP/1.0, or a body that ends with the connection: the answer
            # is known already and the connection cannot be used again.
            self.reusable = False
            self._finish()
            self.close()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES and self.answer is not None:
            # Not worth reading: the answer is known, the connection goes.
            self.reusable = False
            self._finish()
            self.close()

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() in _INTERIM:
            return
        self._finish()

    # -- one exchange ----------------------------------------------------------------------------

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.answer = None
        self.received_any = False
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _count_head(self, *parts: bytes) -> None:
        self._head_bytes += sum(len(part) + 4 for part in parts)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise AnswerError("answer head too large")

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def _finish(self) -> None:
        assert self.answer is not None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.answer)


class Pool:
    """Keep-alive connections to one endpoint. ``post`` is safe to call concurrently: each call
    takes a connection of its own (idle, or new)."""

    def __init__(
        self,
        url: str,
        *,
        max_idle: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = Endpoint.parse(url)
        self.max_idle = max_idle
        self._ssl = (ssl_context or ssl.create_default_context()) if self.endpoint.tls else None
        self._idle: deque[_Connection] = deque()
        self._request_head = (
            f"POST {self.endpoint.target} HTTP/1.1\r\nHost: {self.endpoint.host_header}\r\n"
            + (
                f"Authorization: {self.endpoint.authorization}\r\n"
                if self.endpoint.authorization
                else ""
            )
        )

    def _request(self, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [self._request_head]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError("a header with a line break")
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "".join(lines).encode("latin-1") + body

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            _Connection,
            self.endpoint.host,
            self.endpoint.port,
            ssl=self._ssl,
            server_hostname=self.endpoint.host if self._ssl else None,
        )
        return protocol

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely closed
            if connection.closed or now - connection.idle_since > IDLE_SECONDS:
                connection.close()
                continue
            return connection
        return None

    async def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        """One request; raises OSError (connect, reset, TLS) or AnswerError. The caller bounds
        the time (a cancelled call closes its connection)."""
        request = self._request(body, headers)
        connection = self._take_idle()
        if connection is not None:
            try:
                return await self._exchange(connection, request)
            except (OSError, AnswerError):
                if connection.received_any:
                    raise
                # Closed by the target while idle: once more on a new connection.
        return await self._exchange(await self._connect(), request)

    async def _exchange(self, connection: _Connection, request: bytes) -> Answer:
        try:
            answer = await connection.send(request)
        except BaseException:
            connection.close()
            raise
        if connection.reusable and not connection.closed and len(self._idle) < self.max_idle:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
