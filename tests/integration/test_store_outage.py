"""While PostgreSQL is down nothing is acknowledged; when it returns the receiver recovers alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from dfm.embedded_pg import EmbeddedPostgres
from tests.receivers import ReceiverServer
from webhook_server.app import STORE, create_app
from webhook_server.config import (
    DatabaseConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.verify import SIGNERS

SECRET = "outage-secret"


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A server of this test's own, since the test stops and starts it."""
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    yield server
    server.destroy()


def github_receiver(database_url: str) -> tuple[SourceConfig, web.Application]:
    source = SourceConfig(
        name="gh",
        provider=Provider.GITHUB,
        verification=VerificationConfig(secrets=[SecretSource(value=SECRET)]),
    )
    config = ReceiverConfig(sources=[source], database=DatabaseConfig(url=database_url))
    return source, create_app(config)


def signed(body: bytes, delivery: str) -> dict[str, str]:
    return SIGNERS[Provider.GITHUB](
        body, SECRET.encode(), VerificationConfig(), time.time(), delivery
    )


async def test_database_down_means_503_then_recovery(
    aiohttp_client: Any, own_postgres: EmbeddedPostgres, one_pass: bool
) -> None:
    source, app = github_receiver(own_postgres.url)
    client = await aiohttp_client(ReceiverServer(app, one_pass=one_pass))
    assert await app[STORE].wait_ready(60)
    assert (
        await client.post(source.route, data=b"{}", headers=signed(b"{}", "before"))
    ).status == 200

    # stop() returns only once the server is gone (it raises otherwise): the 503 below is certain.
    await asyncio.to_thread(own_postgres.stop, "immediate")
    assert not await asyncio.to_thread(own_postgres.running)
    down = await client.post(source.route, data=b'{"n":1}', headers=signed(b'{"n":1}', "during"))
    assert down.status == 503
    assert down.content_type == "application/problem+json"
    assert down.headers["Retry-After"]
    assert (await client.get("/readyz")).status == 503

    await asyncio.to_thread(own_postgres.start)
    # The provider retries the same delivery; it must now be committed (once the store has
    # reconnected: the deadline only bounds that wait).
    deadline = time.monotonic() + 60
    status = 0
    while time.monotonic() < deadline:
        resp = await client.post(
            source.route, data=b'{"n":1}', headers=signed(b'{"n":1}', "during")
        )
        status = resp.status
        if status == 200:
            break
        await asyncio.sleep(0.2)
    assert status == 200
    assert (await client.get("/readyz")).status == 200

    conn = await asyncpg.connect(own_postgres.url)
    try:
        ids = sorted(r["event_id"] for r in await conn.fetch("SELECT event_id FROM webhook_events"))
    finally:
        await conn.close()
    assert ids == ["before", "during"]


async def test_receiver_starting_without_database_serves_503_until_it_appears(
    aiohttp_client: Any, tmp_path: Path, one_pass: bool
) -> None:
    server = EmbeddedPostgres(tmp_path / "late")
    source, app = github_receiver(server.url)
    client = await aiohttp_client(ReceiverServer(app, one_pass=one_pass))
    try:
        assert (await client.get("/livez")).status == 200
        assert (await client.get("/readyz")).status == 503
        resp = await client.post(source.route, data=b"{}", headers=signed(b"{}", "early"))
        assert resp.status == 503
        await asyncio.to_thread(server.start)
        assert await app[STORE].wait_ready(30)
        ok = await client.post(source.route, data=b"{}", headers=signed(b"{}", "early"))
        assert ok.status == 200
    finally:
        await asyncio.to_thread(server.destroy)
