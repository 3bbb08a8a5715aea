"""Restoring one backup into a database: checksum first, an empty target unless forced, one
transaction, and the restored contents compared with the manifest afterwards."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from webhook_server.backup import BackupError
from webhook_server.backup.dump import connect, file_sha256, read_contents
from webhook_server.backup.manifest import Manifest
from webhook_server.backup.tools import database_of, split_password
from webhook_server.backup.verify import differences, pg_restore_for, run_tool

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
    """Restore ``path`` into the database at ``url`` (which must exist)."""
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
            "restore into an empty database, or pass --force to replace the objects the "
            "backup holds",
        )
    target = split_password(url)
    args = ["--no-owner", "--no-acl", "--exit-on-error", "--single-transaction"]
    if existing:
        args += ["--clean", "--if-exists"]
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
    # Tables the backup does not hold (a --force target's own) are not compared.
    restored = {t: n for t, n in contents.tables.items() if t in manifest.tables}
    diff = differences(manifest, restored, contents.checksums)
    if diff:
        raise BackupError(
            "restore",
            "restored, but the database differs from the backup (was something writing to it?): "
            + "; ".join(diff[:5]),
        )
    return Restored(manifest.name, database, len(manifest.tables), manifest.rows)
