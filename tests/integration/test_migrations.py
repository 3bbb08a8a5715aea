"""Schema migrations on a database that already holds events."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from webhook_server.store import partitions
from webhook_server.store.migrations import apply_migrations, load_migrations


async def test_the_subject_migration_keeps_existing_events_and_their_dedup_keys(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        first = load_migrations()[0]
        await conn.execute(first.sql)
        await conn.execute(
            """CREATE TABLE dfm_schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        await conn.execute(
            "INSERT INTO dfm_schema_migrations (version, name) VALUES (1, $1)", first.name
        )
        day = datetime(2026, 3, 1, 12, tzinfo=UTC)
        low, high = partitions.bounds(day.date())
        await conn.execute(
            f"CREATE TABLE {partitions.partition_name(day.date())} PARTITION OF webhook_events "
            f"FOR VALUES FROM ('{low}') TO ('{high}')"
        )
        await conn.execute("INSERT INTO webhook_event_ids VALUES ('ns/a', 'evt_1', $1)", day)
        await conn.execute(
            "INSERT INTO webhook_events (source, event_id, received_at, request_id, payload) "
            "VALUES ('ns/a', 'evt_1', $1, 'r1', '\\x7b7d')",
            day,
        )

        assert await apply_migrations(conn) == [m.name for m in load_migrations()[1:]]

        row = await conn.fetchrow("SELECT subject, event_id FROM webhook_events")
        assert (row["subject"], row["event_id"]) == ("", "evt_1")
        # The old key still dedupes the provider's redelivery...
        inserted = await conn.execute(
            "INSERT INTO webhook_event_ids (source, event_id, received_at) "
            "VALUES ('ns/a', 'evt_1', $1) ON CONFLICT DO NOTHING",
            day,
        )
        assert inserted == "INSERT 0 0"
        # ...and the same id under another subject is another event.
        inserted = await conn.execute(
            "INSERT INTO webhook_event_ids (source, subject, event_id, received_at) "
            "VALUES ('ns/a', 'user_b', 'evt_1', $1) ON CONFLICT DO NOTHING",
            day,
        )
        assert inserted == "INSERT 0 1"
        assert await apply_migrations(conn) == []
    finally:
        await conn.close()


async def test_the_replay_key_migration_counts_existing_events_as_one(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for migration in load_migrations()[:2]:
            await conn.execute(migration.sql)
        await conn.execute(
            """CREATE TABLE dfm_schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        await conn.executemany(
            "INSERT INTO dfm_schema_migrations (version, name) VALUES ($1, $2)",
            [(m.version, m.name) for m in load_migrations()[:2]],
        )
        day = datetime(2026, 3, 1, 12, tzinfo=UTC)
        low, high = partitions.bounds(day.date())
        await conn.execute(
            f"CREATE TABLE {partitions.partition_name(day.date())} PARTITION OF webhook_events "
            f"FOR VALUES FROM ('{low}') TO ('{high}')"
        )
        await conn.execute(
            "INSERT INTO webhook_events (source, event_id, received_at, request_id, payload) "
            "VALUES ('ns/a', 'evt_1', $1, 'r1', '\\x7b7d')",
            day,
        )

        assert "0003_replay_keys_and_event_count.sql" in await apply_migrations(conn)

        assert await conn.fetchval("SELECT event_count FROM webhook_events") == 1
        assert await conn.fetchval("SELECT count(*) FROM webhook_replay_keys") == 0
    finally:
        await conn.close()


async def test_the_outbox_migration_gives_existing_event_days_their_delivery_partitions(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        before = [m for m in load_migrations() if m.name < "0005"]
        await conn.execute(
            """CREATE TABLE dfm_schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        for migration in before:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO dfm_schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        day = datetime(2026, 3, 1, 12, tzinfo=UTC)
        low, high = partitions.bounds(day.date())
        await conn.execute(
            f"CREATE TABLE {partitions.partition_name(day.date())} PARTITION OF webhook_events "
            f"FOR VALUES FROM ('{low}') TO ('{high}')"
        )
        await conn.execute("INSERT INTO webhook_sources VALUES ('ns/a', 30, $1)", day)

        assert (await apply_migrations(conn))[0] == "0005_forward_outbox.sql"

        bounds = "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = $1"
        events_bound = await conn.fetchval(bounds, partitions.partition_name(day.date()))
        deliveries_bound = await conn.fetchval(
            bounds, partitions.deliveries_partition_name(day.date())
        )
        assert deliveries_bound == events_bound
        # Sources registered before it do not forward until their receivers say so.
        assert await conn.fetchval("SELECT forward FROM webhook_sources") is False
    finally:
        await conn.close()
