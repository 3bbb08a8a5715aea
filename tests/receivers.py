"""A real receiver on the test's database and the loopback consumers it forwards to, shared by
the integration tests (the fixtures themselves are in tests/integration/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Clock:
    """Unix time the test moves; starts at the real time (partitions are made for today)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def serving(handle: Handler) -> AsyncIterator[str]:
    """An app on 127.0.0.1 answering ``POST /events`` with ``handle``; yields that URL."""
    app = web.Application()
    app.router.add_post("/events", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/events"))
    await server.close()


@dataclass
class Seen:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Consumer:
    """The forward target: answers from ``script`` (then ``default``), records every request.

    A script entry is a status, ``(status, headers)``, or ``"hang"`` (never answers).
    """

    script: deque[Any] = field(default_factory=deque)
    default: Any = 200
    seen: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(dict(request.headers), body, time.time()))
        self.arrived.set()
        action = self.script.popleft() if self.script else self.default
        if action == "hang":
            await asyncio.Event().wait()
        status, headers = action if isinstance(action, tuple) else (action, {})
        return web.Response(status=status, text="ok", headers=headers)

    def ids(self) -> list[str]:
        return [s.headers["webhook-id"] for s in self.seen]


async def eventually(check: Callable[[], Awaitable[Any]], what: str, seconds: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy, which it returns (the tests' wall-clock
    wait: its deadline bounds the wait, a loaded machine only makes it longer)."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def until_true(db: asyncpg.Connection, query: str, what: str) -> None:
    """Wait (as :func:`eventually`) until ``query``, which selects one boolean, is true."""
    await eventually(lambda: db.fetchval(query), what)
