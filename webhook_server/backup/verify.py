"""Proving a dump restorable before it counts as a backup.

``list`` (always): ``pg_restore --list`` reads the archive's table of contents, which must hold
the data of every table the manifest counted; then ``pg_restore --file=/dev/null`` reads and
decompresses every data block (``--list`` alone reads only the table of contents, so a damaged
data block would pass it).

``restore`` (``verify: restore``): the dump is restored into a scratch database on the same
server, named ``dfm_verify_<UTC time>_<random>`` so nobody mistakes it for a real one, and its row
counts and content checksums must equal the manifest's. The scratch database is dropped
afterwards, whether the comparison passed, failed or was interrupted; one left behind by a job
that was killed outright is dropped by a later run once it is a day old.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from webhook_server.backup import BackupError
from webhook_server.backup.dump import connect, quote_ident, read_contents
from webhook_server.backup.manifest import Manifest, Verification, VerifyMethod
from webhook_server.backup.tools import (
    PgTool,
    find_tool,
    last_lines,
    parse_version,
    split_password,
    with_database,
)
from webhook_server.logs import get_logger

log = get_logger("dfm.backup")

SCRATCH_PREFIX = "dfm_verify_"
_SCRATCH = re.compile(rf"^{SCRATCH_PREFIX}(\d{{8}}T\d{{6}}Z)_[0-9a-f]+$")
SCRATCH_MAX_AGE = timedelta(days=1)
_TABLE_DATA = re.compile(r"^\d+;\s+\d+\s+\d+\s+TABLE DATA\s+(\S+)\s+(\S+)\s")


def archive_major(manifest: Manifest) -> int:
    parsed = parse_version(f"(PostgreSQL) {manifest.pg_dump_version}")
    return parsed[1] if parsed else 0


def pg_restore_for(manifest: Manifest, bin_dir: str | None) -> PgTool:
    """A pg_restore that can read what this manifest's pg_dump wrote."""
    return find_tool("pg_restore", at_least=archive_major(manifest), bin_dir=bin_dir)


async def run_tool(
    tool: PgTool, args: list[str], *, url: str | None = None, env: dict[str, str] | None = None
) -> str:
    """Run a PostgreSQL tool; its stdout, or BackupError naming its last stderr lines."""
    proc = await asyncio.create_subprocess_exec(
        str(tool.path),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise BackupError(
            "verify",
            f"{tool.path.name} {tool.version} failed (exit {proc.returncode}): "
            f"{last_lines(stderr.decode(errors='replace'), url)}",
        )
    return stdout.decode(errors="replace")


def data_entries(listing: str) -> set[str]:
    """``schema.table`` of every TABLE DATA entry in ``pg_restore --list`` output."""
    found = set()
    for line in listing.splitlines():
        match = _TABLE_DATA.match(line.strip())
        if match:
            found.add(f"{match.group(1)}.{match.group(2)}")
    return found


def toc_entries(listing: str) -> int:
    return sum(1 for line in listing.splitlines() if line.strip() and not line.startswith(";"))


async def verify_list(path: Path, manifest: Manifest, bin_dir: str | None) -> int:
    """``list`` verification; returns the number of entries in the archive's table of contents."""
    tool = pg_restore_for(manifest, bin_dir)
    listing = await run_tool(tool, ["--list", str(path)])
    missing = sorted(set(manifest.tables) - data_entries(listing))
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise BackupError(
            "verify", f"the archive holds no data for {len(missing)} table(s): {shown}"
        )
    await run_tool(tool, ["--file=/dev/null", str(path)])
    return toc_entries(listing)


def scratch_name(now: datetime) -> str:
    return f"{SCRATCH_PREFIX}{now.astimezone(UTC):%Y%m%dT%H%M%SZ}_{secrets.token_hex(4)}"


def stale_scratch(names: list[str], now: datetime) -> list[str]:
    """Scratch databases older than SCRATCH_MAX_AGE (left by a job killed outright)."""
    stale = []
    for name in names:
        match = _SCRATCH.match(name)
        if match is None:
            continue
        made = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if now - made > SCRATCH_MAX_AGE:
            stale.append(name)
    return sorted(stale)


def differences(expected: Manifest, tables: dict[str, int], checksums: dict[str, str]) -> list[str]:
    """How restored contents differ from what the manifest recorded; empty when they match."""
    found = []
    for table in sorted(set(expected.tables) | set(tables)):
        want, got = expected.tables.get(table), tables.get(table)
        if want != got:
            found.append(f"{table}: {got if got is not None else 'missing'} rows, expected {want}")
        elif expected.checksums.get(table) != checksums.get(table):
            found.append(f"{table}: content checksum differs")
    return found


async def drop_database(admin: Any, name: str) -> None:
    await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


async def verify_restore(
    path: Path,
    manifest: Manifest,
    url: str,
    clock: Callable[[], datetime],
    bin_dir: str | None,
) -> tuple[int, str]:
    """``restore`` verification; returns the TOC size and the scratch database's name."""
    entries = await verify_list(path, manifest, bin_dir)
    tool = pg_restore_for(manifest, bin_dir)
    scratch = scratch_name(clock())
    admin = await connect(url)
    try:
        await _drop_stale(admin, clock())
        try:
            await admin.execute(f"CREATE DATABASE {quote_ident(scratch)}")
        except asyncpg.PostgresError as exc:
            hint = (
                " (the database user needs CREATEDB for verify: restore)"
                if isinstance(exc, asyncpg.InsufficientPrivilegeError)
                else ""
            )
            raise BackupError(
                "verify", f"cannot create the scratch database {scratch}: {exc}{hint}"
            ) from None
        try:
            scratch_url = with_database(url, scratch)
            target = split_password(scratch_url)
            await run_tool(
                tool,
                [
                    "--no-owner",
                    "--no-acl",
                    "--exit-on-error",
                    "--single-transaction",
                    f"--dbname={target.url}",
                    str(path),
                ],
                url=scratch_url,
                env=target.env,
            )
            conn = await connect(scratch_url)
            try:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    contents = await read_contents(conn)
            finally:
                await conn.close()
        finally:
            # Shielded: a cancelled job still drops what it made.
            await asyncio.shield(drop_database(admin, scratch))
    finally:
        await admin.close()
    diff = differences(manifest, contents.tables, contents.checksums)
    if diff:
        shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise BackupError("verify", f"the restored copy differs from the database: {shown}")
    return entries, scratch


async def _drop_stale(admin: Any, now: datetime) -> None:
    names = [
        r["datname"]
        for r in await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", SCRATCH_PREFIX + "%"
        )
    ]
    for name in stale_scratch(names, now):
        try:
            await drop_database(admin, name)
            log.info("stale scratch database dropped", database=name)
        except asyncpg.PostgresError as exc:
            log.warning("stale scratch database not dropped", database=name, error=str(exc))


async def verify(
    path: Path,
    manifest: Manifest,
    method: VerifyMethod,
    url: str,
    clock: Callable[[], datetime],
    bin_dir: str | None = None,
) -> Verification:
    """Verify ``path`` by ``method``; raises BackupError(stage="verify") when it fails."""
    scratch = None
    if method is VerifyMethod.RESTORE:
        entries, scratch = await verify_restore(path, manifest, url, clock, bin_dir)
    else:
        entries = await verify_list(path, manifest, bin_dir)
    return Verification(
        method=method, verified_at=clock(), toc_entries=entries, scratch_database=scratch
    )
