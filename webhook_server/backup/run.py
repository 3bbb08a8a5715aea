"""One backup run, start to end: what ``dfm backup run`` (and so every backup job) does.

Clean what interrupted runs left, dump, verify, publish (dump first, manifest last), then apply
retention. The outcome is a :class:`~webhook_server.backup.manifest.JobSummary`, never an
exception: the job writes it to its termination message for the operator, and exits non-zero
when ``ok`` is false.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from webhook_server.backup import BackupError
from webhook_server.backup.destinations import Destination
from webhook_server.backup.dump import create_dump
from webhook_server.backup.manifest import JobSummary, Manifest, VerifyMethod, backup_name
from webhook_server.backup.retention import to_delete
from webhook_server.backup.tools import redact
from webhook_server.backup.verify import verify
from webhook_server.logs import get_logger

log = get_logger("dfm.backup")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class BackupRun:
    database_url: str
    destination: Destination
    prefix: str
    verify: VerifyMethod = VerifyMethod.LIST
    keep_last: int | None = None
    max_age: timedelta | None = None
    bin_dir: str | None = None
    clock: Callable[[], datetime] = field(default=utc_now)


async def run_backup(run: BackupRun) -> JobSummary:
    started, began = run.clock(), time.monotonic()
    name = backup_name(run.prefix, started)
    stage = "prepare"
    manifest: Manifest | None = None
    log.info("backup started", backup=name, destination=run.destination.description)
    try:
        removed = await asyncio.to_thread(run.destination.clean_leftovers, started)
        if removed:
            log.info("leftovers of interrupted runs removed", files=removed)
        stage = "dump"
        staged = await asyncio.to_thread(run.destination.staging_path, name)
        try:
            manifest = await create_dump(
                run.database_url, staged, name, run.clock, bin_dir=run.bin_dir
            )
            log.info(
                "dump written",
                backup=name,
                size_bytes=manifest.size_bytes,
                sha256=manifest.sha256,
                tables=len(manifest.tables),
                rows=manifest.rows,
            )
            stage = "verify"
            verification = await verify(
                staged, manifest, run.verify, run.database_url, run.clock, run.bin_dir
            )
            manifest = manifest.model_copy(update={"verification": verification})
            log.info("backup verified", backup=name, method=run.verify.value)
            stage = "upload"
            await asyncio.to_thread(run.destination.publish, staged, manifest)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(run.destination.discard, staged))
            raise
    except BackupError as exc:
        return _failed(run, name, started, began, exc.stage, str(exc), manifest)
    except OSError as exc:
        return _failed(run, name, started, began, stage, exc.strerror or str(exc), manifest)
    summary = JobSummary(
        ok=True,
        name=name,
        size_bytes=manifest.size_bytes,
        sha256=manifest.sha256,
        verification=run.verify,
        verified_at=manifest.verification.verified_at if manifest.verification else None,
        started_at=started,
        tables=len(manifest.tables),
        rows=manifest.rows,
    )
    try:
        kept, pruned = await _apply_retention(run)
        summary = summary.model_copy(update={"kept": kept, "pruned": len(pruned)})
    except BackupError as exc:
        # The backup itself is good and published; the job still says what went wrong.
        summary = summary.model_copy(update={"stage": exc.stage, "error": str(exc)})
        log.warning("retention failed", backup=name, error=str(exc))
    summary = summary.model_copy(
        update={"finished_at": run.clock(), "duration_seconds": round(time.monotonic() - began, 3)}
    )
    log.info("backup succeeded", **summary.model_dump(mode="json", exclude_none=True))
    return summary


async def _apply_retention(run: BackupRun) -> tuple[int, list[str]]:
    """Delete what the rules no longer keep among this prefix's backups; (kept, deleted)."""
    backups = [
        m
        for m in await asyncio.to_thread(run.destination.backups)
        if m.name.rpartition("-")[0] == run.prefix
    ]
    doomed = to_delete(
        [(m.name, m.started_at) for m in backups],
        keep_last=run.keep_last,
        max_age=run.max_age,
        now=run.clock(),
    )
    for name in doomed:
        await asyncio.to_thread(run.destination.delete, name)
        log.info("backup deleted by retention", backup=name)
    return len(backups) - len(doomed), doomed


def _failed(
    run: BackupRun,
    name: str,
    started: datetime,
    began: float,
    stage: str,
    error: str,
    manifest: Manifest | None,
) -> JobSummary:
    error = redact(error, run.database_url)
    log.error("backup failed", backup=name, stage=stage, error=error)
    return JobSummary(
        ok=False,
        name=name,
        size_bytes=manifest.size_bytes if manifest else None,
        sha256=manifest.sha256 if manifest else None,
        verification=run.verify,
        started_at=started,
        finished_at=run.clock(),
        duration_seconds=round(time.monotonic() - began, 3),
        stage=stage,
        error=error,
    )
