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
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from yarl import URL

from webhook_server import server

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


class ReceiverServer(BaseTestServer):
    """An app built by ``webhook_server.app.create_app``, served as production serves it: through
    ``webhook_server.server.start`` and its ``ReceiverProtocol`` (head limits, connection cap, one
    request at a time), not aiohttp's default request handler. For ``TestClient`` and
    pytest-aiohttp's ``aiohttp_client``; ``close`` stops the listener (once)."""

    def __init__(
        self,
        app: web.Application,
        *,
        shutdown_timeout: float = 2.0,
        file_limit: int | None = None,
        host: str = "127.0.0.1",
        one_pass: bool = True,
    ) -> None:
        super().__init__(host=host)
        self.app = app
        self.one_pass = one_pass
        self.shutdown_timeout = shutdown_timeout
        self.file_limit = file_limit
        self.listener: server.Listener | None = None

    async def start_server(
        self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> None:
        if self.runner is not None:
            return
        if kwargs:
            raise TypeError(f"ReceiverServer takes no server arguments, got {sorted(kwargs)}")
        self.listener = await server.start(
            self.app,
            self.host,
            0,
            shutdown_timeout=self.shutdown_timeout,
            file_limit=self.file_limit,
            one_pass=self.one_pass,
        )
        self.runner = self.listener.runner
        self.port = self.listener.port
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        raise NotImplementedError("the runner is webhook_server.server.start's")

    async def close(self) -> None:
        if self.listener is None or self._closed:
            return
        self._closed = True
        await self.listener.stop()
        self._root = None
        self.port = None


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
