"""Backup and restore throughput for N events (default 1 000 000), beside a plain pg_dump and
pg_restore of the same database, with the same binaries, in the same run.

    .venv/bin/python -m bench.backup [--events N] [--payload-bytes 512]

What it does: starts an embedded PostgreSQL in a temporary directory, creates the event store
(migrations) and fills it with N events over 10 daily partitions (and their dedup keys) by
INSERT … SELECT on the server, then times, each on the same database:

1. plain ``pg_dump --format=custom`` to a file (the baseline);
2. ``run_backup`` with ``verify: list`` (snapshot, row counts, content checksums, pg_dump,
   SHA-256, pg_restore --list and a full read, publish to a directory);
3. ``run_backup`` with ``verify: restore`` (plus a restore into a scratch database, compared);
4. plain ``pg_restore --single-transaction`` into an empty database (the baseline);
5. ``restore`` (SHA-256 check, pg_restore in one transaction, contents compared).

It prints MB/s (dump size / seconds) and rows/s for each, and each step's ratio to its
baseline. It asserts nothing; only a crash fails it.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

from dfm.embedded_pg import EmbeddedPostgres
from webhook_server.backup.destinations import DirectoryDestination
from webhook_server.backup.manifest import VerifyMethod
from webhook_server.backup.restore import restore
from webhook_server.backup.run import BackupRun, run_backup
from webhook_server.backup.tools import find_tool, split_password, with_database
from webhook_server.store import partitions
from webhook_server.store.migrations import apply_migrations

DAYS = 10


async def fill(url: str, events: int, payload_bytes: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
        start = "2026-11-20"
        for day in range(DAYS):
            low = f"('{start}'::date + {day})"
            name = partitions.PREFIX + f"202611{20 + day:02d}"
            await conn.execute(
                f"CREATE TABLE {name} PARTITION OF webhook_events "
                f"FOR VALUES FROM ({low}::timestamptz) TO (({low} + 1)::timestamptz)"
            )
        per_day = events // DAYS
        for day in range(DAYS):
            await conn.execute(
                f"""
                WITH rows AS (
                  SELECT 'bench/source-' || (n % 4) AS source, 'evt-{day}-' || n AS event_id,
                         ('2026-11-20'::date + {day})::timestamptz + n * interval '80 ms' AS at,
                         n
                  FROM generate_series(1, {per_day}) AS n
                ), ids AS (
                  INSERT INTO webhook_event_ids (source, event_id, received_at)
                  SELECT source, event_id, at FROM rows
                )
                INSERT INTO webhook_events
                  (source, event_id, event_type, received_at, request_id, payload, headers)
                SELECT source, event_id, 'charge.succeeded', at, md5(event_id),
                       convert_to(
                         '{{"id":"' || event_id || '","amount":' || n || ',"pad":"'
                         || repeat(md5(event_id), {payload_bytes // 32}) || '"}}', 'UTF8'),
                       '{{"content-type":"application/json"}}'::jsonb
                FROM rows
                """  # noqa: S608 - numbers from the command line
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def timed(label: str, fn: object) -> float:
    started = time.perf_counter()
    assert callable(fn)
    fn()
    seconds = time.perf_counter() - started
    print(f"  {label}: {seconds:.1f} s", flush=True)
    return seconds


async def create_db(server_url: str, name: str) -> str:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(server_url, name)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backup")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--payload-bytes", type=int, default=512)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dfm-bench-backup-"))
    server = EmbeddedPostgres(root / "pg", database="postgres")
    server.start()
    try:
        return asyncio.run(_bench(server.url, root, args.events, args.payload_bytes))
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)


async def _bench(server_url: str, root: Path, events: int, payload_bytes: int) -> int:
    source = await create_db(server_url, "events")
    print(f"filling {events} events ({payload_bytes} B payloads, {DAYS} daily partitions)…")
    started = time.perf_counter()
    await fill(source, events, payload_bytes)
    print(f"  filled in {time.perf_counter() - started:.1f} s")
    conn = await asyncpg.connect(source)
    try:
        rows = int(await conn.fetchval("SELECT count(*) FROM webhook_events"))
        rows += int(await conn.fetchval("SELECT count(*) FROM webhook_event_ids"))
        db_bytes = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
        server_major = int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()
    pg_dump = find_tool("pg_dump", at_least=server_major)
    pg_restore = find_tool("pg_restore", at_least=pg_dump.major)
    target = split_password(source)
    plain = root / "plain.dump"

    results: dict[str, tuple[float, int]] = {}
    print("timing…")
    results["pg_dump (baseline)"] = (
        timed(
            "pg_dump",
            lambda: subprocess.run(
                [str(pg_dump.path), "--format=custom", f"--file={plain}", target.url],
                check=True,
                env=target.env,
            ),
        ),
        plain.stat().st_size,
    )
    for method in (VerifyMethod.LIST, VerifyMethod.RESTORE):
        dest = DirectoryDestination(root / f"backups-{method.value}")
        began = time.perf_counter()
        summary = await run_backup(BackupRun(source, dest, "bench", verify=method))
        seconds = time.perf_counter() - began
        assert summary.ok, summary.error
        print(f"  dfm backup run --verify {method.value}: {seconds:.1f} s")
        results[f"dfm backup run, verify {method.value}"] = (seconds, summary.size_bytes or 0)

    empty = await create_db(server_url, "plain_restore")
    empty_target = split_password(empty)
    results["pg_restore (baseline)"] = (
        timed(
            "pg_restore",
            lambda: subprocess.run(
                [str(pg_restore.path), "--single-transaction", "--no-owner",
                 f"--dbname={empty_target.url}", str(plain)],
                check=True,
                env=empty_target.env,
            ),
        ),
        plain.stat().st_size,
    )  # fmt: skip
    restore_into = await create_db(server_url, "dfm_restore")
    dest = DirectoryDestination(root / "backups-list")
    [manifest] = dest.backups()
    path, manifest = dest.fetch(manifest.name, root)
    began = time.perf_counter()
    await restore(path, manifest, restore_into)
    seconds = time.perf_counter() - began
    print(f"  dfm backup restore: {seconds:.1f} s")
    results["dfm backup restore"] = (seconds, manifest.size_bytes)

    print()
    print(f"{events} events, {rows} rows (events + dedup keys), database {db_bytes / 1e6:.0f} MB")
    print(
        f"{'step':<34} {'seconds':>8} {'dump MB':>8} {'MB/s':>7} {'rows/s':>9} {'x baseline':>10}"
    )
    for label, (seconds, size) in results.items():
        base = results["pg_restore (baseline)" if "restore" in label and "run" not in label
                       else "pg_dump (baseline)"][0]  # fmt: skip
        print(
            f"{label:<34} {seconds:>8.1f} {size / 1e6:>8.1f} {size / 1e6 / seconds:>7.1f} "
            f"{rows / seconds:>9.0f} {seconds / base:>10.2f}"
        )
    return 0
