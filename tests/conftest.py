"""Shared fixtures: a real PostgreSQL for the whole run, a fresh database per test."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from dfm.embedded_pg import EmbeddedPostgres
from webhook_server.app import CONFIG

TEST_DATABASE_URL_ENV = "DFM_TEST_DATABASE_URL"


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI job's timeout, `kill`) stops the run as Ctrl-C does: pytest then tears the
    fixtures down, so the embedded PostgreSQL and the real control plane stop with it instead
    of outliving the run."""
    signal.signal(signal.SIGTERM, _interrupted)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server URL (its maintenance database): $DFM_TEST_DATABASE_URL or embedded."""
    if os.environ.get(TEST_DATABASE_URL_ENV):
        yield os.environ[TEST_DATABASE_URL_ENV]
        return
    root = Path(tempfile.mkdtemp(prefix="dfm-test-pg-"))
    server = EmbeddedPostgres(root / "data", database="postgres")
    server.start()
    try:
        yield server.url
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def database_url(postgres_server: str) -> AsyncIterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = postgres_server.rpartition("/")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's database, for reading what the code under test stored."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def aiohttp_client(aiohttp_client: Any) -> Any:
    """pytest-aiohttp's ``aiohttp_client``, refusing a receiver app given as is: it would be served
    by aiohttp's default request handler, not the receiver's protocol. A receiver app is served as
    production serves it: ``aiohttp_client(tests.receivers.ReceiverServer(app))``."""

    async def client(param: Any, **kwargs: Any) -> Any:
        if isinstance(param, web.Application) and CONFIG in param:
            raise TypeError(
                "a receiver app is served through tests.receivers.ReceiverServer "
                "(webhook_server.server.start), not aiohttp's default TestServer"
            )
        return await aiohttp_client(param, **kwargs)

    return client
