"""Fixtures for the tests that run a real receiver: the receiver itself, a consumer it forwards
to (a test module with a consumer of its own defines its own ``consumer``) and the loopback APIs
a sync reads from."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.receivers import ClientFactory, Consumer, ReceiverServer, serving
from webhook_server.app import STORE, create_app
from webhook_server.config import (
    DatabaseConfig,
    ForwardingConfig,
    ReceiverConfig,
    ServerConfig,
    SourceConfig,
)
from webhook_server.server import Listener, start
from webhook_server.tracing import Tracing

Serve = Callable[..., Awaitable[tuple[Listener, Any]]]


@pytest.fixture
async def consumer() -> AsyncIterator[Consumer]:
    target = Consumer()
    async with serving(target.handle) as url:
        target.url = url
        yield target


@pytest.fixture
async def serve(database_url: str) -> AsyncIterator[Serve]:
    """``serve(*sources, server=, database=, file_limit=, one_pass=, shutdown_timeout=)``: the
    receiver started as `dfm receiver` does (``server.start``, its own protocol) on a free port
    of 127.0.0.1, ready to take requests; ``(listener, app)``. Stopped after the test unless the
    test stopped it."""
    listeners: list[Listener] = []

    async def run(
        *sources: SourceConfig,
        server: ServerConfig | None = None,
        database: DatabaseConfig | None = None,
        file_limit: int | None = None,
        one_pass: bool = True,
        shutdown_timeout: float = 2,
    ) -> tuple[Listener, Any]:
        config = ReceiverConfig(
            port=0,
            sources=list(sources),
            database=database or DatabaseConfig(url=database_url),
            server=server or ServerConfig(),
        )
        app = create_app(config)
        listener = await start(
            app,
            "127.0.0.1",
            0,
            shutdown_timeout=shutdown_timeout,
            file_limit=file_limit,
            one_pass=one_pass,
        )
        listeners.append(listener)
        assert await app[STORE].wait_ready(60)
        return listener, app

    yield run
    for listener in listeners:
        if listener.server.is_serving():
            await listener.stop()


@pytest.fixture
def make_receiver(database_url: str, aiohttp_client: ClientFactory) -> ClientFactory:
    """``make_receiver(*sources, clock=, tracing=, replica=, **forwarding)``: a receiver on the
    test's database that forwards every 20 ms, ready to take requests."""

    async def make(
        *sources: SourceConfig,
        clock: Callable[[], float] = time.time,
        tracing: Tracing | None = None,
        replica: str = "r1",
        **forwarding: Any,
    ) -> TestClient[Any, Any]:
        settings: dict[str, Any] = {
            "replica_id": replica,
            "poll_interval_seconds": 0.02,
            "stats_interval_seconds": 0.2,
        }
        settings.update(forwarding)
        config = ReceiverConfig(
            sources=list(sources),
            database=DatabaseConfig(url=database_url, maintenance_interval_seconds=3600),
            forwarding=ForwardingConfig(**settings),
        )
        app = create_app(config, clock=clock, tracing=tracing)
        client = await aiohttp_client(ReceiverServer(app))
        assert await app[STORE].wait_ready(60), "store did not become ready"
        return client

    return make


@pytest.fixture
async def served() -> AsyncIterator[list[TestServer]]:
    """The servers a test starts with tests.fake_api.serve, closed after it."""
    servers: list[TestServer] = []
    yield servers
    for server in servers:
        await server.close()


@pytest.fixture(params=[True, False], ids=["one-pass", "aiohttp-path"])
def one_pass(request: pytest.FixtureRequest) -> bool:
    """A test using it runs twice: through the receiver's one-pass route and with every request
    through aiohttp's web layer (``server.start(one_pass=False)``), which the receiver still uses
    for what the route does not take (docs/receiver.md, "Two routes, one behaviour")."""
    return bool(request.param)
