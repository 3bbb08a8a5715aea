"""A small HTTP/1.1 client for deliveries: POST, keep-alive, the status and Retry-After.

Forwarding sends one request per event, so the client's cost per request is the cost of
forwarding: aiohttp's ``ClientSession`` spends about 200 µs of CPU per request (tracing hooks,
cookie jar, response objects), as much as receiving and storing the event. A delivery needs far
less: write the request, read the answer's status line and headers, and frame (and drop) its
body so the connection can be used again. This module does that on bare asyncio protocols, with
TLS from the standard library, in a few tens of microseconds.

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

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024
IDLE_SECONDS = 2.0
_INTERIM = range(100, 200)
_NO_BODY = (204, 304)


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
    """One connection; reads exactly one answer per request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.answer: Answer | None = None
        self.reusable = True
        self.closed = False
        self.received_any = False
        self.idle_since = 0.0
        # Body framing once the head is read: bytes left (LENGTH), or a chunked body.
        self._left = 0
        self._chunked = False
        self._in_body = False
        self._body_seen = 0

    # -- asyncio ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.buffer += data
        try:
            self._parse()
        except AnswerError as exc:
            self._fail(exc)

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

    # -- one exchange ----------------------------------------------------------------------------

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.answer = None
        self.received_any = False
        self._in_body = False
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def _finish(self) -> None:
        assert self.answer is not None
        if self.buffer:
            self.reusable = False  # bytes nobody asked for: do not trust the framing
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.answer)

    def _parse(self) -> None:
        while True:
            if self._in_body:
                self._read_body()
                return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise AnswerError("answer head too large")
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            status, headers = _parse_head(head)
            if status in _INTERIM:
                continue  # 100 Continue and friends: the real answer follows
            self.answer = Answer(status, headers.get("retry-after"))
            if "close" in headers.get("connection", "").lower():
                self.reusable = False
            if status in _NO_BODY:
                self._finish()
                return
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked, self._body_seen = True, 0
            elif "content-length" in headers:
                try:
                    self._left = int(headers["content-length"])
                except ValueError:
                    raise AnswerError("bad Content-Length") from None
                self._chunked = False
                if self._left > MAX_BODY_BYTES or self._left < 0:
                    # Not worth reading: the answer is known, the connection goes.
                    self.reusable = False
                    self._finish()
                    self.close()
                    return
            else:
                # A body that ends when the connection does: the answer is known already.
                self.reusable = False
                self._finish()
                self.close()
                return
            self._in_body = True

    def _read_body(self) -> None:
        if not self._chunked:
            take = min(self._left, len(self.buffer))
            del self.buffer[:take]
            self._left -= take
            if self._left == 0:
                self._in_body = False
                self._finish()
            return
        while True:
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                if len(self.buffer) > 1024:
                    raise AnswerError("bad chunk size line")
                return
            size_text = bytes(self.buffer[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise AnswerError("bad chunk size") from None
            if size == 0:
                # Trailers (usually none) end with an empty line.
                trailers_end = self.buffer.find(b"\r\n\r\n", line_end)
                if trailers_end < 0:
                    if len(self.buffer) > MAX_HEAD_BYTES:
                        raise AnswerError("trailers too large")
                    return
                del self.buffer[: trailers_end + 4]
                self._in_body = False
                self._finish()
                return
            self._body_seen += size
            if self._body_seen > MAX_BODY_BYTES:
                self.reusable = False
                self._in_body = False
                self.buffer.clear()
                self._finish()
                self.close()
                return
            if len(self.buffer) < line_end + 2 + size + 2:
                return
            del self.buffer[: line_end + 2 + size + 2]


def _parse_head(head: str) -> tuple[int, dict[str, str]]:
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise AnswerError("not an HTTP/1.x status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise AnswerError("bad header line")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


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
