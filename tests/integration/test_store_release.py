"""The writer gives its connection back without asyncpg's reset round trip; nobody else does.

asyncpg resets every connection given back to a pool (``pg_advisory_unlock_all()``, ``CLOSE
ALL``, ``UNLISTEN *``, ``RESET ALL``): a second round trip, and a second transaction on the
server, for every batch the writer commits. The writer's insert leaves nothing to undo, so it
skips it; every other user of the pool (maintenance holds an advisory lock, the forwarder its
transactions) still gets it. Against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from webhook_server.config import (
    DatabaseConfig,
    Provider,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.metrics import ReceiverMetrics
from webhook_server.store import Event, Store


def _event(event_id: str) -> Event:
    return Event(
        source="ns/gh",
        event_id=event_id,
        event_type="push",
        received_at=datetime.now(UTC),
        request_id="r",
        payload=b"{}",
        headers={"x-github-event": "push"},
    )


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
    source = SourceConfig(
        namespace="ns",
        name="gh",
        provider=Provider.GITHUB,
        verification=VerificationConfig(secrets=[SecretSource(value="s")]),
    )
    store = Store(DatabaseConfig(url=database_url, pool_max_size=2), [source], ReceiverMetrics())
    await store.start()
    try:
        assert await store.wait_ready(30)
        resets.clear()  # start-up's own releases (migrations, partitions)
        for number in range(5):  # one at a time: five batches, five releases by the writer
            assert await store.submit(_event(f"d{number}")) is True
        assert (
            await asyncio.gather(*(store.submit(_event(f"e{n}")) for n in range(20))) == [True] * 20
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
