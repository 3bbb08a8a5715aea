"""Where each SyncSchedule stands, in PostgreSQL (table ``dfm_sync_state``, its migration
``0004_sync_state.sql``).

A run reads its row once, then writes it in the same transaction as each page's events
(:func:`save_page`), so the row always names the first page whose events are not committed.
A complete walk clears the resume point and moves the incremental watermark (:func:`finish_run`).
Rows are keyed by the SyncSchedule (``<namespace>/<name>``) and carry a fingerprint of the
request settings: a resume point or watermark recorded under other settings is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from webhook_server.outbound import CircuitSnapshot
from webhook_server.sync.pagination import PageRequest

# pg_advisory_lock(class, key): one class for syncs, the key a hash of the schedule's name.
# Runs of one schedule never overlap, whatever the CronJob's concurrency policy lets start.
SYNC_LOCK_CLASS = 0x64666D04


@dataclass(frozen=True)
class SyncState:
    fingerprint: str
    resume: PageRequest | None = None
    run_id: str | None = None
    run_started_at: datetime | None = None
    run_items: int = 0
    run_watermark: Any = None
    watermark: Any = None
    circuit: CircuitSnapshot | None = None


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _loaded(value: str | None) -> Any:
    return None if value is None else json.loads(value)


async def lock(conn: Any, schedule: str) -> bool:
    """Take the schedule's lock for this session if it is free; False when another run holds it."""
    return bool(
        await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", SYNC_LOCK_CLASS, schedule
        )
    )


async def wait_for_lock(conn: Any, schedule: str) -> None:
    """Wait for the schedule's lock (the caller bounds the wait with its run timeout)."""
    await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", SYNC_LOCK_CLASS, schedule)


async def load(conn: Any, schedule: str, fingerprint: str) -> SyncState:
    """The schedule's state; a fresh one when there is none or its settings changed since."""
    row = await conn.fetchrow("SELECT * FROM dfm_sync_state WHERE schedule = $1", schedule)
    if row is None:
        return SyncState(fingerprint)
    circuit_json = _loaded(row["circuit"])
    circuit = CircuitSnapshot.from_json(circuit_json) if circuit_json else None
    if row["fingerprint"] != fingerprint:
        # Other URL, query or pagination: the resume point and the watermark mean nothing now.
        # The circuit is about the upstream and is kept.
        return SyncState(fingerprint, circuit=circuit)
    resume_json = _loaded(row["resume"])
    return SyncState(
        fingerprint=fingerprint,
        resume=PageRequest.from_json(resume_json) if resume_json else None,
        run_id=row["run_id"],
        run_started_at=row["run_started_at"],
        run_items=int(row["run_items"] or 0),
        run_watermark=_loaded(row["run_watermark"]),
        watermark=_loaded(row["watermark"]),
        circuit=circuit,
    )


async def start_run(conn: Any, schedule: str, state: SyncState, now: datetime) -> None:
    """Write ``state`` as the row (a new run, or a resumed one with its accounting)."""
    await conn.execute(
        """INSERT INTO dfm_sync_state (schedule, fingerprint, resume, run_id, run_started_at,
                                       run_items, run_watermark, watermark, circuit, updated_at)
           VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7::jsonb, $8::jsonb, $9::jsonb, $10)
           ON CONFLICT (schedule) DO UPDATE SET
               fingerprint = EXCLUDED.fingerprint, resume = EXCLUDED.resume,
               run_id = EXCLUDED.run_id, run_started_at = EXCLUDED.run_started_at,
               run_items = EXCLUDED.run_items, run_watermark = EXCLUDED.run_watermark,
               watermark = EXCLUDED.watermark, circuit = EXCLUDED.circuit,
               updated_at = EXCLUDED.updated_at""",
        schedule,
        state.fingerprint,
        _json(state.resume.to_json() if state.resume else None),
        state.run_id,
        state.run_started_at,
        state.run_items,
        _json(state.run_watermark),
        _json(state.watermark),
        _json(state.circuit.to_json() if state.circuit else None),
        now,
    )


async def save_page(
    conn: Any,
    schedule: str,
    following: PageRequest | None,
    items: int,
    run_watermark: Any,
    now: datetime,
) -> None:
    """After a page's events, in their transaction: where the run continues, what it counted."""
    await conn.execute(
        """UPDATE dfm_sync_state
           SET resume = $2::jsonb, run_items = run_items + $3, run_watermark = $4::jsonb,
               updated_at = $5
           WHERE schedule = $1""",
        schedule,
        _json(following.to_json() if following else None),
        items,
        _json(run_watermark),
        now,
    )


async def finish_run(conn: Any, schedule: str, watermark: Any, now: datetime) -> None:
    """The walk reached its end: the next run starts from the first page, after ``watermark``."""
    await conn.execute(
        """UPDATE dfm_sync_state
           SET resume = NULL, run_id = NULL, run_started_at = NULL, run_items = 0,
               run_watermark = NULL, watermark = $2::jsonb, updated_at = $3
           WHERE schedule = $1""",
        schedule,
        _json(watermark),
        now,
    )


async def forget_resume(conn: Any, schedule: str, now: datetime) -> None:
    """Drop an unfinished run's resume point (the API refused it): start over from page one."""
    await conn.execute(
        """UPDATE dfm_sync_state
           SET resume = NULL, run_items = 0, run_watermark = NULL, updated_at = $2
           WHERE schedule = $1""",
        schedule,
        now,
    )


async def save_circuit(conn: Any, schedule: str, circuit: CircuitSnapshot, now: datetime) -> None:
    await conn.execute(
        "UPDATE dfm_sync_state SET circuit = $2::jsonb, updated_at = $3 WHERE schedule = $1",
        schedule,
        json.dumps(circuit.to_json()),
        now,
    )
