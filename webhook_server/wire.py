"""HTTP/1.1 responses as bytes, for answers written straight to a connection's transport.

The receiver's protocol answers some requests without aiohttp's response objects: refusals made
before a request exists (webhook_server.server) and the one-pass route's answers
(webhook_server.app.OnePass). They carry the headers aiohttp's own responses carry (Date, Server,
Content-Type with its charset, Content-Length), so a client sees no difference between the two.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

from aiohttp.http import SERVER_SOFTWARE

JSON = b"application/json; charset=utf-8"
PROBLEM_JSON = b"application/problem+json; charset=utf-8"

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n".encode()
_date: list[object] = [0, b""]


def http_date() -> bytes:
    """The Date header's value, formatted once per second."""
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, formatdate(now, usegmt=True).encode()
    value = _date[1]
    assert isinstance(value, bytes)
    return value


def response(
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Iterable[tuple[str, str]] = (),
    *,
    close: bool = False,
) -> bytes:
    """A complete response; ``close`` adds ``Connection: close`` (the caller closes)."""
    parts = [
        _STATUS_LINES[status],
        b"Content-Type: ",
        content_type,
        b"\r\nContent-Length: ",
        str(len(body)).encode(),
        b"\r\nDate: ",
        http_date(),
        b"\r\n",
        _SERVER,
    ]
    for name, value in headers:
        if "\r" in value or "\n" in value:
            raise ValueError(f"the {name} header's value has a line break")
        parts.append(f"{name}: {value}\r\n".encode())
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)
