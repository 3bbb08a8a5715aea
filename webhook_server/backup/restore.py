"""Restoring one backup into a database: checksum first, an empty target unless forced, one
transaction, and the restored contents compared with the manifest afterwards."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from webhook_server.backup import BackupError
from webhook_server.backup.dump import connect, file_sha256, quote_ident, read_contents
from webhook_server.backup.manifest import Manifest
from webhook_server.backup.tools import PgTool, database_of, split_password, with_database
from webhook_server.backup.verify import differences, drop_database, pg_restore_for, run_tool

# What makes a database "not empty": any table, view, sequence outside the system schemas.
_USER_RELATIONS = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""


@dataclass(frozen=True)
class Restored:
    name: str
    database: str
    tables: int
    rows: int
    # --force: where the database's previous contents are now.
    previous: str | None = None


async def check_dump(path: Path, manifest: Manifest) -> None:
    """The dump is exactly the one the manifest describes (size, then SHA-256)."""
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
    except OSError as exc:
        raise BackupError("checksum", f"cannot read {path}: {exc.strerror}") from None
    if size != manifest.size_bytes:
        raise BackupError(
            "checksum",
            f"{path.name} has {size} bytes, its manifest says {manifest.size_bytes}: "
            "the file is truncated or damaged; refusing to restore it",
        )
    sha256, _ = await asyncio.to_thread(file_sha256, path)
    if sha256 != manifest.sha256:
        raise BackupError(
            "checksum",
            f"{path.name}'s SHA-256 does not match its manifest: the file is damaged; "
            "refusing to restore it",
        )


async def restore(
    path: Path, manifest: Manifest, url: str, *, force: bool = False, bin_dir: str | None = None
) -> Restored:
    """Restore ``path`` into the database at ``url`` (which must exist).

    An empty target is restored into directly, in one transaction. A non-empty one only with
    ``force``: the backup is restored into a new database beside it and checked, then the two
    swap names, so the old contents are kept (as ``<name>_before_restore_<time>``), never
    dropped, and a failed restore changes nothing.
    """
    await check_dump(path, manifest)
    tool = pg_restore_for(manifest, bin_dir)
    database = database_of(url)
    conn = await connect(url)
    try:
        existing = int(await conn.fetchval(_USER_RELATIONS))
    finally:
        await conn.close()
    if existing and not force:
        raise BackupError(
            "restore",
            f"database {database} is not empty ({existing} tables, views or sequences); "
            "restore into an empty database, or pass --force to restore beside it and swap "
            "(the current contents are kept under another name)",
        )
    if not existing:
        await _restore_into(tool, path, manifest, url)
        return Restored(manifest.name, database, len(manifest.tables), manifest.rows)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    fresh, kept = f"{database}_restoring_{stamp}", f"{database}_before_restore_{stamp}"
    admin = await connect(url)
    try:
        await _create(admin, fresh)
        try:
            await _restore_into(tool, path, manifest, with_database(url, fresh))
        except BaseException:
            await asyncio.shield(drop_database(admin, fresh))
            raise
    finally:
        await admin.close()
    # Renaming needs a connection to neither database: the server's maintenance database.
    other = await _maintenance_connection(url)
    try:
        try:
            async with other.transaction():
                await other.execute(
                    f"ALTER DATABASE {quote_ident(database)} RENAME TO {quote_ident(kept)}"
                )
                await other.execute(
                    f"ALTER DATABASE {quote_ident(fresh)} RENAME TO {quote_ident(database)}"
                )
        except asyncpg.PostgresError as exc:
            await drop_database(other, fresh)
            raise BackupError(
                "restore",
                f"the backup was restored and checked, but {database} could not be replaced: "
                f"{exc} (stop what is connected to it, e.g. scale the receivers to 0, and retry)",
            ) from None
    finally:
        await other.close()
    return Restored(manifest.name, database, len(manifest.tables), manifest.rows, kept)


async def _create(admin: Any, name: str) -> None:
    try:
        await admin.execute(f"CREATE DATABASE {quote_ident(name)}")
    except asyncpg.PostgresError as exc:
        raise BackupError("restore", f"cannot create database {name}: {exc}") from None


async def _maintenance_connection(url: str) -> Any:
    last: BackupError | None = None
    for name in ("postgres", "template1"):
        try:
            return await connect(with_database(url, name))
        except BackupError as exc:
            last = exc
    assert last is not None
    raise last


async def _restore_into(tool: PgTool, path: Path, manifest: Manifest, url: str) -> None:
    """pg_restore in one transaction, then the restored tables compared with the manifest."""
    target = split_password(url)
    args = ["--no-owner", "--no-acl", "--exit-on-error", "--single-transaction"]
    try:
        await run_tool(tool, [*args, f"--dbname={target.url}", str(path)], url=url, env=target.env)
    except BackupError as exc:
        raise BackupError("restore", f"{exc} (nothing was changed: one transaction)") from None
    conn = await connect(url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            contents = await read_contents(conn)
    finally:
        await conn.close()
    diff = differences(manifest, contents.tables, contents.checksums)
    if diff:
        raise BackupError(
            "restore",
            "restored, but the database differs from the backup (was something writing to it?): "
            + "; ".join(diff[:5]),
        )
