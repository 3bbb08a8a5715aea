"""The operator's one door to the event store (PostgreSQL), for status the receivers cannot write.

Receivers have no API-server access, and several replicas share one source; the database is
where all their work meets. So the operator reads a source's figures from it (the query is the
data plane's, ``webhook_server.store.stats``), with the database URL from the same Secret the
source's receivers mount. One small pool per database URL, created on first use; the URL (which
holds a password) is never logged nor put in an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict
from datetime import datetime

import asyncpg

from webhook_server.store.stats import SourceStats, source_stats

CONNECT_TIMEOUT_SECONDS = 5.0
STATEMENT_TIMEOUT_SECONDS = 10.0
MAX_POOLS = 16
APPLICATION_NAME = "dfm-operator"


class StoreUnreachable(Exception):
    """The event store could not be read; the message is a short reason, never the URL."""


class EventStores:
    """Pools per database URL (at most ``MAX_POOLS``; the least recently used is closed)."""

    def __init__(self, max_pools: int = MAX_POOLS) -> None:
        self._max_pools = max_pools
        self._pools: OrderedDict[str, asyncpg.Pool] = OrderedDict()
        self._lock = asyncio.Lock()

    async def source_stats(self, url: str, source: str, now: datetime) -> SourceStats | None:
        """The figures of ``source``; None when no receiver has created the tables yet."""
        try:
            pool = await self._pool(url)
            async with pool.acquire(timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                return await source_stats(conn, source, now)
        except asyncpg.UndefinedTableError:
            return None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnreachable(type(exc).__name__) from None
        except ValueError:  # asyncpg: not a URL it can parse (never quoted: it may hold a password)
            raise StoreUnreachable("the database URL is not a postgresql:// URL") from None

    async def _pool(self, url: str) -> asyncpg.Pool:
        key = hashlib.sha256(url.encode()).hexdigest()
        async with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            pool = await asyncpg.create_pool(
                url,
                min_size=0,
                max_size=2,
                timeout=CONNECT_TIMEOUT_SECONDS,
                command_timeout=STATEMENT_TIMEOUT_SECONDS,
                server_settings={"application_name": APPLICATION_NAME, "timezone": "UTC"},
                # Works behind PgBouncer in transaction mode too (no named prepared statements).
                statement_cache_size=0,
            )
            assert pool is not None
            self._pools[key] = pool
            while len(self._pools) > self._max_pools:
                _, oldest = self._pools.popitem(last=False)
                await _close(oldest)
            return pool

    async def close(self) -> None:
        async with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            await _close(pool)


async def _close(pool: asyncpg.Pool) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            await pool.close()
            return
    pool.terminate()
