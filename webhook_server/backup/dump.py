"""``pg_dump`` in custom format, and what the dump holds, from one consistent snapshot.

Receivers keep writing while a backup runs. Row counts taken in another transaction than the
dump's would not match it, and verification could not compare anything. So a read-only
REPEATABLE READ transaction exports its snapshot, ``pg_dump --snapshot`` dumps exactly that
snapshot, and the same transaction counts the rows and computes the content checksums meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from webhook_server.backup import BackupError
from webhook_server.backup.manifest import DUMP_SUFFIX, Manifest
from webhook_server.backup.tools import (
    PgTool,
    database_of,
    find_tool,
    last_lines,
    split_password,
)

CHUNK = 1 << 20
SERVER_SETTINGS = {"application_name": "dfm-backup", "TimeZone": "UTC"}

_TABLES = """
SELECT n.nspname AS schema, c.relname AS name, c.oid
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1, 2
"""
_COLUMNS = """
SELECT a.attname AS name, t.typname AS type
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_PRIMARY_KEY = """
SELECT a.attname AS name
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1 AND i.indisprimary
ORDER BY k.position
"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Contents:
    """Rows per table, and a checksum of every table that has a primary key."""

    tables: dict[str, int]
    checksums: dict[str, str]


async def _table_checksum(conn: Any, table: str, oid: int) -> str | None:
    """SHA-256 over the table's rows in primary-key order; None without a primary key.

    bytea columns (the raw payloads) are hashed by the server (``sha256(col)``) so only 32 bytes
    a row cross the wire; every other column is compared as its text form (``TimeZone`` is UTC
    in this session, and jsonb's text form is canonical). Each field is length-prefixed, so no
    two different rows can feed the same bytes.
    """
    key = [r["name"] for r in await conn.fetch(_PRIMARY_KEY, oid)]
    if not key:
        return None
    columns = await conn.fetch(_COLUMNS, oid)
    select = ", ".join(
        f"sha256({quote_ident(c['name'])})"
        if c["type"] == "bytea"
        else f"{quote_ident(c['name'])}::text"
        for c in columns
    )
    order = ", ".join(quote_ident(k) for k in key)
    digest = hashlib.sha256()
    async for row in conn.cursor(f"SELECT {select} FROM {table} ORDER BY {order}", prefetch=2000):  # noqa: S608 - identifiers from the catalog, quoted
        for value in row:
            if value is None:
                digest.update(b"\xff\xff\xff\xff")
                continue
            data = value if isinstance(value, bytes) else str(value).encode()
            digest.update(len(data).to_bytes(4, "big"))
            digest.update(data)
    return digest.hexdigest()


async def read_contents(conn: Any) -> Contents:
    """Row counts of every table and checksums of those with a primary key, as ``conn`` sees
    them (call it inside the transaction whose snapshot is being dumped)."""
    tables: dict[str, int] = {}
    checksums: dict[str, str] = {}
    for row in await conn.fetch(_TABLES):
        name = f"{row['schema']}.{row['name']}"
        qualified = f"{quote_ident(row['schema'])}.{quote_ident(row['name'])}"
        tables[name] = int(await conn.fetchval(f"SELECT count(*) FROM {qualified}"))  # noqa: S608
        checksum = await _table_checksum(conn, qualified, row["oid"])
        if checksum is not None:
            checksums[name] = checksum
    return Contents(tables, checksums)


def file_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def connect(url: str) -> Any:
    try:
        return await asyncpg.connect(url, server_settings=SERVER_SETTINGS, timeout=15)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise BackupError("connect", f"cannot connect to the database: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """A one-line reason that cannot carry the URL (asyncpg messages do not; OS errors might)."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


async def create_dump(
    url: str,
    path: Path,
    name: str,
    clock: Callable[[], datetime],
    *,
    bin_dir: str | None = None,
) -> Manifest:
    """Dump the database at ``url`` into ``path``; returns its manifest (not yet verified)."""
    started = clock()
    conn = await connect(url)
    try:
        server_version = str(await conn.fetchval("SHOW server_version")).split()[0]
        server_major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        pg_dump = find_tool("pg_dump", at_least=server_major, bin_dir=bin_dir)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            dumping = asyncio.create_task(_run_pg_dump(pg_dump, url, path, snapshot))
            try:
                contents = await read_contents(conn)
            except BaseException:
                dumping.cancel()
                await asyncio.wait([dumping])
                raise
            await dumping
    except asyncpg.PostgresError as exc:
        raise BackupError("dump", f"reading the database failed: {_reason(exc)}") from None
    finally:
        await conn.close()
    sha256, size = await asyncio.to_thread(file_sha256, path)
    return Manifest(
        name=name,
        started_at=started,
        finished_at=clock(),
        database=database_of(url),
        server_version=server_version,
        pg_dump_version=pg_dump.version,
        dump_file=name + DUMP_SUFFIX,
        size_bytes=size,
        sha256=sha256,
        tables=contents.tables,
        checksums=contents.checksums,
    )


async def _run_pg_dump(tool: PgTool, url: str, path: Path, snapshot: str) -> None:
    target = split_password(url)
    proc = await asyncio.create_subprocess_exec(
        str(tool.path),
        "--format=custom",
        "--no-password",
        f"--snapshot={snapshot}",
        f"--file={path}",
        f"--dbname={target.url}",
        env=target.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise BackupError(
            "dump",
            f"pg_dump {tool.version} failed (exit {proc.returncode}): "
            f"{last_lines(stderr.decode(errors='replace'), url)}",
        )
