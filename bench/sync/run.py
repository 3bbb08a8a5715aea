"""Orchestration: one PostgreSQL, one fast fake API, the same items written three ways.

Per round, each into a fresh database of the same server (migrations applied beforehand):

- ``COPY``: the event rows with ``COPY … FROM STDIN`` into ``webhook_events`` (no dedup keys):
  the most this PostgreSQL takes;
- ``INSERT``: ``webhook_server.store.insert_events`` (the statement every event goes through,
  dedup included), one transaction per page, no HTTP: the store's own rate;
- ``sync``: ``webhook_server.sync.runner.run_sync`` against the fake API (its own process),
  end to end: connect, lock, pages over HTTP, JSON, events, one transaction per page with the
  resume point;
- ``re-sync``: the same run again, every item already stored (all duplicates).

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.sync.api import item
from dfm.embedded_pg import EmbeddedPostgres, free_port
from webhook_server import logs
from webhook_server.config import DatabaseConfig
from webhook_server.store import Event, create_partitions, insert_events
from webhook_server.store import partitions as store_partitions
from webhook_server.store.migrations import apply_migrations
from webhook_server.sync.config import Cursor, HttpConfig, RetryConfig, SinkConfig, SyncConfig
from webhook_server.sync.runner import item_events, run_sync

SOURCE = "bench/sink"
SCHEDULE = "bench/contacts"
TARGETS = ("COPY", "INSERT", "sync", "re-sync")


@dataclass
class Options:
    items: int
    page_size: int
    rounds: int
    keep: bool


@dataclass
class Sample:
    seconds: float
    cpu_seconds: float  # this process (client side: HTTP, JSON, asyncpg)


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    ratios_insert: list[float] = field(default_factory=list)
    ratios_copy: list[float] = field(default_factory=list)
    stored_ok: bool = True


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def _timed(into: list[Sample]) -> Iterator[None]:
    wall, cpu = time.perf_counter(), _cpu()
    yield
    into.append(Sample(time.perf_counter() - wall, _cpu() - cpu))


async def _fresh_database(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"{server.rpartition('/')[0]}/{name}"
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
        now = datetime.now(UTC)
        await create_partitions(conn, set(store_partitions.days_to_create(now, 3)))
    finally:
        await conn.close()
    return url


def _http(api: str, opts: Options) -> HttpConfig:
    return HttpConfig(
        url=f"{api}/contacts/",
        query={"limit": str(opts.page_size)},
        items_path="contacts",
        event_type="contact",
        cursor=Cursor.model_validate({"param": "startAfterId", "from": "meta.startAfterId"}),
        max_pages=1_000_000,
        requests_per_second=1_000_000.0,
        burst=1_000_000,
    )


def _events(opts: Options, http: HttpConfig) -> list[list[Event]]:
    now = datetime.now(UTC)
    pages = []
    for start in range(0, opts.items, opts.page_size):
        chunk = [item(n) for n in range(start, min(start + opts.page_size, opts.items))]
        pages.append(
            item_events(
                chunk,
                http,
                source=SOURCE,
                schedule=SCHEDULE,
                run_id="bench",
                received_at=now,
                page=start // opts.page_size,
            )
        )
    return pages


async def _copy(url: str, pages: list[list[Event]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        records = [
            (
                e.source,
                e.event_id,
                e.event_type,
                e.received_at,
                e.request_id,
                e.payload,
                json.dumps(e.headers),
            )
            for page in pages
            for e in page
        ]
        await conn.copy_records_to_table(
            "webhook_events",
            records=records,
            columns=[
                "source", "event_id", "event_type", "received_at", "request_id", "payload",
                "headers",
            ],
        )  # fmt: skip
    finally:
        await conn.close()


async def _insert(url: str, pages: list[list[Event]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for page in pages:
            async with conn.transaction():
                await insert_events(conn, page)
    finally:
        await conn.close()


async def _count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM webhook_events"))
    finally:
        await conn.close()


async def _measure(opts: Options, server: str, api: str) -> Results:
    results = Results()
    http = _http(api, opts)
    pages = _events(opts, http)
    for round_ in range(1, opts.rounds + 1):
        copy_url, insert_url, sync_url = [await _fresh_database(server) for _ in range(3)]
        with _timed(results.samples["COPY"]):
            await _copy(copy_url, pages)
        with _timed(results.samples["INSERT"]):
            await _insert(insert_url, pages)
        config = SyncConfig(
            schedule=SCHEDULE,
            sink=SinkConfig(source=SOURCE),
            http=http,
            retry=RetryConfig(max_attempts=3, backoff_seconds=0.1),
            run_timeout_seconds=3600,
            database=DatabaseConfig(url=sync_url),
        )
        with _timed(results.samples["sync"]):
            first = await run_sync(config)
        with _timed(results.samples["re-sync"]):
            second = await run_sync(config)
        stored = await _count(sync_url)
        ok = first.succeeded and second.succeeded and stored == opts.items
        ok = ok and (first.stored, second.stored) == (opts.items, 0)
        results.stored_ok = results.stored_ok and ok
        sync_s = results.samples["sync"][-1].seconds
        results.ratios_insert.append(results.samples["INSERT"][-1].seconds / sync_s)
        results.ratios_copy.append(results.samples["COPY"][-1].seconds / sync_s)
        print(
            f"round {round_}: " + ", ".join(
                f"{t} {opts.items / results.samples[t][-1].seconds:,.0f}/s" for t in TARGETS
            ) + ("" if ok else f"  (stored {stored}: WRONG)"),
            file=sys.stderr,
            flush=True,
        )  # fmt: skip
    return results


def _wait_for_api(url: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the fake API exited")
        try:
            with urllib.request.urlopen(f"{url}/contacts/?limit=1", timeout=1):  # noqa: S310
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the fake API did not answer")


def report(opts: Options, results: Results) -> str:
    lines = [
        f"{opts.items:,} items of about 1 KiB, {opts.page_size} per page, "
        f"{opts.rounds} round(s); medians",
        "",
        f"{'target':<10} {'items/s':>10} {'seconds':>9} {'client CPU s':>13}",
        "-" * 45,
    ]
    for target in TARGETS:
        samples = results.samples[target]
        seconds = statistics.median(s.seconds for s in samples)
        cpu = statistics.median(s.cpu_seconds for s in samples)
        lines.append(f"{target:<10} {opts.items / seconds:>10,.0f} {seconds:>9.2f} {cpu:>13.2f}")
    lines += [
        "",
        f"sync / INSERT: {statistics.median(results.ratios_insert):.2f}   "
        f"sync / COPY: {statistics.median(results.ratios_copy):.2f}   "
        "(items/s ratios, median of the per-round ratios)",
        f"every item stored once, re-sync stored none: {'PASS' if results.stored_ok else 'FAIL'}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sync", description=__doc__)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--page-size", type=int, default=100, help="HighLevel's largest: 100")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    logs.configure("WARNING")  # one log line per page would be measured too
    opts = Options(args.items, args.page_size, args.rounds, args.keep)
    work = Path(tempfile.mkdtemp(prefix="dfm-bench-sync-"))
    postgres = EmbeddedPostgres(work / "pg" / "data", database="postgres")
    print(f"bench/sync: work dir {work}", file=sys.stderr)
    postgres.start()
    port = free_port()
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.sync.api",
            "--port",
            str(port),
            "--items",
            str(opts.items),
            "--page-size",
            str(opts.page_size),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_api(url, api)
        results = asyncio.run(_measure(opts, postgres.url, url))
    finally:
        api.terminate()
        api.wait(10)
        postgres.destroy()
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(report(opts, results))
    return 0
