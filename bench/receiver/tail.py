"""Where the receiver's tail latency comes from: ``python -m bench.receiver.tail [--rate R]``.

The receiver runs in this process (``webhook_server.server.start``, one GitHub source, a
temporary embedded PostgreSQL), beside three probes: the event loop's lag (a task that asks to
sleep 1 ms and records how late it wakes), the garbage collector's pauses (``gc.callbacks``) and
the duration of each store commit (a timer around ``Store._insert``). The bench's Python
generator sends an open loop at ``--rate`` for ``--duration`` seconds. It prints the requests'
latency beside the three, and when the slow ones happened, so that a p99 can be pinned on the
loop (blocked by our code), on GC, or on commits (the database).

With ``--fsync-probe`` a fourth probe (``bench.receiver.fsprobe``, a process of its own) syncs a
small file on the database's disk every 5 ms: commits that stall when it stalls are waiting on
the disk. It also shows when the kernel wrote dirty page cache back in bursts.

PostgreSQL's WAL is warmed first, as ``python -m bench.receiver`` does (``--cold-wal`` skips it),
and the WAL written during the load is reported, with what PostgreSQL wrote and extended by
backend type (``pg_stat_io``): what it put in the kernel's page cache. ``--pin`` runs the
receiver alone on one CPU and everything else on the others; ``--postgres-setting`` applies a
PostgreSQL setting first (restarting it when the setting needs that).

The probes cost a little CPU (the lag monitor wakes 1,000 times a second): use it to explain a
tail, and the socket bench (``python -m bench.receiver``) for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SLOW_MS = 15.0


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct))] if ordered else 0.0


async def _run(
    opts: argparse.Namespace,
    database_url: str,
    work: Path,
    split: tuple[set[int], set[int]] | None,
    postgres_log: Path,
) -> None:
    from bench.receiver.run import (
        io_counts,
        io_line,
        pin,
        postgres_events,
        signed_request,
        wal_position,
        wal_records,
    )
    from bench.receiver.servers import SOURCE_PATH, bench_source
    from webhook_server import logs, server
    from webhook_server.app import STORE, create_app
    from webhook_server.config import DatabaseConfig, ReceiverConfig
    from webhook_server.verify.github import DELIVERY_HEADER

    logs.configure("INFO", stream=(work / "access.log").open("a"))
    pauses: list[tuple[float, int, float]] = []
    began = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append((time.monotonic(), info["generation"], time.perf_counter() - began[0]))

    gc.callbacks.append(on_gc)
    body, headers, secret = signed_request(opts.body_bytes)
    source = bench_source(secret)
    config = ReceiverConfig(
        port=0,
        sources=[source],
        database=DatabaseConfig(
            url=database_url,
            writer_concurrency=opts.writer_concurrency,
            max_batch=opts.max_batch,
        ),
    )
    if split is not None:  # the receiver (this process) alone on its CPU
        pin(os.getpid(), split[0])
    app = create_app(config)
    gc.freeze()  # as `dfm receiver` does once it has built the app
    listener = await server.start(app, "127.0.0.1", 0)
    store = app[STORE]
    assert await store.wait_ready(60), "the store did not become ready"
    commits: list[tuple[float, int, float]] = []
    insert = store._insert

    async def timed(events: list[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await insert(events)
        finally:
            commits.append((time.monotonic(), len(events), time.perf_counter() - started))

    store._insert = timed  # type: ignore[method-assign]
    lags: list[tuple[float, float]] = []
    running = True

    async def monitor() -> None:
        loop = asyncio.get_running_loop()
        while running:
            asked = loop.time()
            await asyncio.sleep(0.001)
            lags.append((time.monotonic(), loop.time() - asked - 0.001))

    if opts.prefill:
        await _prefill(database_url, source.key, opts.prefill)
    records_before = await wal_records(database_url, settle=0.0)
    io_before = await io_counts(database_url, settle=0.0)
    wal_before = await wal_position(database_url)
    watcher = asyncio.create_task(monitor())
    (work / "body").write_bytes(body)
    (work / "headers.json").write_text(json.dumps(headers))
    start = time.monotonic()
    wall_start = time.time()
    load_start = datetime.now(UTC)
    fsprobe = None
    if opts.fsync_probe:
        fsprobe = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.receiver.fsprobe", str(work), str(opts.duration),
            cwd=REPO, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        if split is not None:
            pin(fsprobe.pid, split[1])
    generator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.receiver.loadgen",
        "--url", f"http://127.0.0.1:{listener.port}{SOURCE_PATH}",
        "--body", str(work / "body"), "--headers", str(work / "headers.json"),
        "--id-header", DELIVERY_HEADER, "--id-prefix", f"tail-{time.time_ns()}",
        "--mode", "open", "--rate", str(opts.rate), "--duration", str(opts.duration),
        "--connections", str(opts.connections), "--result", str(work / "result.json"),
        *(["--random-ids"] if opts.random_ids else []),
        cwd=REPO,
    )  # fmt: skip
    if split is not None:
        pin(generator.pid, split[1])
    await generator.wait()
    wal_size = await wal_position(database_url) - wal_before
    load_end = datetime.now(UTC)
    disk = json.loads((await fsprobe.communicate())[0]) if fsprobe is not None else None
    running = False
    await watcher
    await listener.stop()  # closes the pool: its backends send their WAL counts as they exit
    gc.callbacks.remove(on_gc)
    records, fpi = (
        a - b for a, b in zip(await wal_records(database_url), records_before, strict=True)
    )
    io_after = await io_counts(database_url)
    result = json.loads((work / "result.json").read_text())
    _report(opts, result, start, lags, commits, pauses)
    print(
        f"WAL written by the whole cluster during the load: {wal_size / 2**20:,.0f} MiB, "
        f"{wal_size / max(result['ok'], 1) / 1024:.1f} KiB per event; {records:,} records, "
        f"{fpi:,} of them full-page images (autovacuum's included)"
    )
    print(
        "PostgreSQL's writes during the load (pg_stat_io: into the page cache, unless direct "
        f"I/O): {io_line(io_before, io_after) or ('none over 1 MiB' if io_after else 'needs 18')}"
    )
    maintenance = postgres_events(postgres_log, load_start, load_end)
    print(f"PostgreSQL during the load: {'; '.join(maintenance) or 'no autovacuum or checkpoint'}")
    if disk is not None:
        stalls = " ".join(f"{at - wall_start:.2f}s:{ms:.0f}ms" for at, ms in disk["slow"])
        print(
            f"disk (fdatasync of 8 KiB every 5 ms beside it, {disk['syncs']:,} syncs): over "
            f"30 ms {len(disk['slow'])}x: {stalls}"
        )
        if disk["dirty_peak"] is not None:
            bursts = " ".join(
                f"{at - wall_start:.2f}s:{size / 2**20:.0f}MiB"
                for at, size in disk["writeback_bursts"]
            )
            print(
                f"page cache: dirty peaked at {disk['dirty_peak'] / 2**20:.0f} MiB; "
                f"written back in bursts over 32 MiB {len(disk['writeback_bursts'])}x: {bursts}"
            )


async def _prefill(url: str, source: str, rows: int) -> None:
    """``rows`` events already stored for ``source`` (its key, as the store writes it) under
    random GUID ids, with empty payloads (what matters is the size of the dedup and primary-key
    indexes), then a checkpoint, as in a database that has been receiving for a while."""
    import asyncpg

    started = time.monotonic()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            WITH ids AS (
                INSERT INTO webhook_event_ids (source, event_id, received_at)
                SELECT $1, gen_random_uuid()::text, now() FROM generate_series(1, $2)
                RETURNING event_id
            )
            INSERT INTO webhook_events (source, event_id, received_at, request_id, payload)
            SELECT $1, event_id, now(), 'prefill', ''::bytea FROM ids
            """,
            source,
            rows,
        )
        # Frozen and analyzed, as old rows are: otherwise the load's first autovacuum sets their
        # hint and visibility bits and logs every page it touches whole (data checksums are on).
        await conn.execute("VACUUM (FREEZE, ANALYZE) webhook_event_ids, webhook_events")
        await conn.execute("CHECKPOINT")
        size = await conn.fetchval(
            "SELECT pg_size_pretty(pg_indexes_size('webhook_event_ids')"
            " + sum(pg_indexes_size(inhrelid))) FROM pg_inherits"
            " WHERE inhparent = 'webhook_events'::regclass"
        )
    finally:
        await conn.close()
    print(
        f"prefilled {rows:,} events in {time.monotonic() - started:.0f} s (indexes {size}), "
        "then checkpointed"
    )


def _report(
    opts: argparse.Namespace,
    result: dict[str, Any],
    start: float,
    lags: list[tuple[float, float]],
    commits: list[tuple[float, int, float]],
    pauses: list[tuple[float, int, float]],
) -> None:
    def when(at: float) -> str:
        return f"{at - start:.2f}"

    by_second = " ".join(f"{v:.0f}" for v in result["p99_by_second_ms"])
    print(
        f"open loop {opts.rate:,.0f}/s for {opts.duration:g} s over {opts.connections} "
        f"connections: {result['ok']:,} answered 200, {result['other']} other; latency ms p50 "
        f"{result['p50_ms']:.1f} p99 {result['p99_ms']:.1f} max {result['max_ms']:.1f}; "
        f"p99 by second {by_second}; generator late <= {result['max_send_lag_ms']:.0f} ms"
    )
    lag_ms = [lag * 1e3 for _, lag in lags]
    slow_lags = [f"{when(at)}s:{lag * 1e3:.0f}" for at, lag in lags if lag * 1e3 > SLOW_MS]
    print(
        f"event loop lag ms: p50 {_percentile(lag_ms, 0.5):.2f} p99 "
        f"{_percentile(lag_ms, 0.99):.2f} max {max(lag_ms, default=0):.1f}; over {SLOW_MS:g} ms "
        f"{len(slow_lags)}x: {' '.join(slow_lags[:20])}"
    )
    commit_ms = [seconds * 1e3 for _, _, seconds in commits]
    slow_commits = [
        f"{when(at)}s:{seconds * 1e3:.0f}ms/{size}"
        for at, size, seconds in commits
        if seconds * 1e3 > SLOW_MS
    ]
    mean_size = statistics.mean(size for _, size, _ in commits) if commits else 0.0
    print(
        f"commits: {len(commits):,}, mean {mean_size:.1f} events; ms p50 "
        f"{_percentile(commit_ms, 0.5):.1f} p99 {_percentile(commit_ms, 0.99):.1f} max "
        f"{max(commit_ms, default=0):.1f}; over {SLOW_MS:g} ms {len(slow_commits)}x: "
        f"{' '.join(slow_commits[:20])}"
    )
    for generation in (0, 1, 2):
        times = [seconds * 1e3 for _, g, seconds in pauses if g == generation]
        print(
            f"GC gen{generation}: {len(times)}x, max {max(times, default=0):.1f} ms, "
            f"total {sum(times):.0f} ms"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver.tail")
    parser.add_argument("--rate", type=float, default=3800.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--writer-concurrency", type=int, default=2, help="database.*")
    parser.add_argument("--max-batch", type=int, default=500, help="database.maxBatch")
    parser.add_argument(
        "--fsync-probe", action="store_true", help="time fdatasync on the same disk meanwhile"
    )
    parser.add_argument(
        "--cold-wal", action="store_true", help="skip warming PostgreSQL's WAL (a fresh cluster's)"
    )
    parser.add_argument(
        "--postgres-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting applied by ALTER SYSTEM and a reload, as in bench.receiver",
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="N",
        help="store N events (random ids) and checkpoint before the load: a store's indexes",
    )
    parser.add_argument(
        "--random-ids",
        action="store_true",
        help="send GUID delivery ids, as GitHub does (default: <prefix>-<n>, next to each other)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the receiver alone on one CPU, the rest on the others (default: all on every CPU)",
    )
    opts = parser.parse_args(argv)
    from bench.receiver.run import (
        WARM_WAL_MIB,
        apply_postgres_settings,
        cpus_line,
        split_cpus,
        warm_wal,
    )
    from dfm.embedded_pg import EmbeddedPostgres

    split = split_cpus() if opts.pin else None
    if split is not None:
        os.sched_setaffinity(0, split[1])  # inherited by PostgreSQL
    where = cpus_line(
        split,
        "the receiver and its in-process probes",
        "PostgreSQL (fsync=on), the load generator and the fsync probe",
    )
    print(f"CPUs: {where}")
    with tempfile.TemporaryDirectory(prefix="dfm-tail-") as directory:
        work = Path(directory)
        postgres = EmbeddedPostgres(work / "pg" / "data")
        postgres.start()
        try:
            apply_postgres_settings(postgres, opts.postgres_setting)
            wal = asyncio.run(warm_wal(postgres.url, 0 if opts.cold_wal else WARM_WAL_MIB))
            settings = f"; set: {', '.join(opts.postgres_setting)}" if opts.postgres_setting else ""
            print(f"PostgreSQL: {wal}{settings}")
            asyncio.run(_run(opts, postgres.url, work, split, postgres.logfile))
        finally:
            postgres.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
