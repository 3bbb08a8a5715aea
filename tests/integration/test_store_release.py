"""The writer gives its connection back without asyncpg's reset round trip; nobody else does.

asyncpg resets every connection given back to a pool (``pg_advisory_unlock_all()``, ``CLOSE
ALL``, ``UNLISTEN *``, ``RESET ALL``): a second round trip, and a second transaction on the
server, for every batch the writer commits. The writer's insert leaves nothing to undo, so it
skips it; every other user of the pool (maintenance holds an advisory lock, the forwarder its
transactions) still gets it. It gives it back in a task of its own, once the batch's requests
have their answers. Against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.stores import SOURCE, event
from webhook_server.config import DatabaseConfig
from webhook_server.metrics import ReceiverMetrics
from webhook_server.store import Store


async def test_the_writer_skips_the_reset_and_every_other_release_still_runs_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resets: list[str] = []
    real = asyncpg.Connection.get_reset_query

    def counted(conn: Any) -> str:
        query: str = real(conn)
        resets.append(query)
        return query

    monkeypatch.setattr(asyncpg.Connection, "get_reset_query", counted)
    store = Store(DatabaseConfig(url=database_url, pool_max_size=2), [SOURCE], ReceiverMetrics())
    await store.start()
    try:
        assert await store.wait_ready(30)
        resets.clear()  # start-up's own releases (migrations, partitions)
        for number in range(5):  # one at a time: five batches, five releases by the writer
            assert await store.submit(event(f"d{number}")) is True
        assert (
            await asyncio.gather(*(store.submit(event(f"e{n}")) for n in range(20))) == [True] * 20
        )
        assert resets == []

        pool = store.pool
        assert pool is not None
        # Someone else's session lock (maintenance takes one) is released when the connection
        # is given back, as asyncpg does: the next holder of the connection cannot see it.
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_try_advisory_lock(4242)") is True
        assert len(resets) == 1
        assert "pg_advisory_unlock_all" in resets[0]
        other = await asyncpg.connect(database_url)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock(4242)") is True
        finally:
            await other.close()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM webhook_events") == 25
    finally:
        await store.close()


async def test_a_batch_is_answered_before_its_connection_is_given_back(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the writer gave the connection back (``pool.release``, three turns of the event
    # loop) before it resolved the batch's futures, so every answer waited for it.
    store = Store(DatabaseConfig(url=database_url), [SOURCE], ReceiverMetrics())
    await store.start()
    try:
        assert await store.wait_ready(30)
        pool = store.pool
        assert pool is not None
        gate = asyncio.Event()
        given_back = asyncio.Event()
        releasing: list[Any] = []
        release = asyncpg.Pool.release

        async def held_release(
            self: Any,
            conn: Any,
            *,
            timeout: float | None = None,  # noqa: ASYNC109 - asyncpg's own signature
        ) -> None:
            releasing.append(conn)
            await gate.wait()
            await release(self, conn, timeout=timeout)
            given_back.set()

        monkeypatch.setattr(asyncpg.Pool, "release", held_release)
        async with asyncio.timeout(10):
            assert await store.submit(event("answered-first")) is True
        assert len(releasing) == 1  # its release has begun, and waits
        in_use = pool.get_size() - pool.get_idle_size()
        assert in_use == 1
        gate.set()
        async with asyncio.timeout(10):
            await given_back.wait()
        assert pool.get_size() == pool.get_idle_size()
    finally:
        gate.set()
        await store.close()
