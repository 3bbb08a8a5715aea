"""bench/forward: provider -> receiver -> consumer, and what forwarding costs ingest.

Processes: PostgreSQL; two receivers (the same GitHub source, one without ``forward``, one
forwarding every event to the consumer); the consumer (``bench.forward.consumer``); the load
generator. Interleaved rounds, each: the receiver without forwarding (closed loop), the receiver
with forwarding (closed loop), then the forwarding receiver paced (open loop) at a fraction of
that round's rate. Receive -> deliver latencies are exact, per event, from the outbox rows
(``delivered_at - received_at``, both written by the receiver's clock). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.receiver import profile, wrk
from bench.receiver.run import (
    OTHER_CPU_WARNING,
    REPO,
    CpuMeter,
    CpuShare,
    Load,
    Measured,
    Options,
    Server,
    Target,
    cpu_seconds,
    loadavg,
    log_postgres_maintenance,
    memory_mib,
    postgres_events,
    postmaster_pid,
    say,
    signed_request,
    table,
    verdict,
)
from bench.receiver.servers import SOURCE_NAMESPACE, SOURCE_PATH
from dfm.embedded_pg import EmbeddedPostgres, free_port

RATIO_TARGET = 0.75  # forwarding may cost ingest at most 25 %
P99_TARGET_MS = 100.0  # receive -> deliver, at half the max ingest rate
PACED_FRACTION = 0.5
OFF, ON = "bench-off", "bench-on"
FORWARD_SECRET = "whsec_" + "QmVuY2ggZm9yd2FyZCBzaWduaW5nIGtleQ=="
DRAIN_SECONDS = 120.0


@dataclass
class Delivery:
    """Receive -> deliver of the events received in one window, from the outbox rows."""

    received: int
    delivered: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    drained_s: float  # from the end of the window until every one of them was delivered


@dataclass
class Round:
    off: Measured
    on: Measured
    paced: Measured
    closed_delivery: Delivery
    paced_delivery: Delivery
    backlog_at_end: int
    consumer_cpu: float  # % of a core during the forwarding round
    window: tuple[datetime, datetime]


@dataclass
class Bench:
    opts: Options
    workdir: Path
    postgres: EmbeddedPostgres
    load: Load
    off: Target
    on: Target
    consumer: subprocess.Popen[bytes]
    count_file: Path
    rounds: list[Round] = field(default_factory=list)
    py_spy: str | None = None
    profiles: list[tuple[str, profile.Summary | None]] = field(default_factory=list)


def start_receiver(
    name: str, workdir: Path, database_url: str, secret: str, extra: Sequence[str] = ()
) -> Server:
    port = free_port()
    out = (workdir / f"{name}.out").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "bench.receiver.servers", "receiver", "--port", str(port),
            "--path", SOURCE_PATH, "--name", name, "--database-url", database_url,
            "--secret", secret, "--log", str(workdir / f"{name}.log"), *extra,
        ],
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    out.close()
    return Server(name, process, port)


def start_consumer(workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    count_file = workdir / "consumer.count"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "bench.forward.consumer", "--port", str(port),
            "--count", str(count_file),
        ],
        cwd=REPO,
    )  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with opener.open(f"http://127.0.0.1:{port}/ready", timeout=1):
                return process, port, count_file
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError("the consumer did not start")


async def delivery(url: str, start: datetime, end: datetime) -> Delivery:
    """Wait until every event of ``ON`` received in [start, end) is delivered (at most
    DRAIN_SECONDS), then their receive -> deliver percentiles."""
    conn = await asyncpg.connect(url)
    source = f"{SOURCE_NAMESPACE}/{ON}"
    try:
        waited_from = time.monotonic()
        while True:
            pending = await conn.fetchval(
                """SELECT count(*) FROM webhook_deliveries WHERE source = $1
                   AND received_at >= $2 AND received_at < $3 AND state <> 'delivered'""",
                source, start, end,
            )  # fmt: skip
            if not pending or time.monotonic() - waited_from > DRAIN_SECONDS:
                break
            await asyncio.sleep(0.05)
        drained = max(0.0, (datetime.now(UTC) - end).total_seconds())
        row = await conn.fetchrow(
            """SELECT count(*) AS received,
                      count(delivered_at) AS delivered,
                      percentile_disc(0.5) WITHIN GROUP (ORDER BY delivered_at - received_at)
                          AS p50,
                      percentile_disc(0.99) WITHIN GROUP (ORDER BY delivered_at - received_at)
                          AS p99,
                      max(delivered_at - received_at) AS worst
               FROM webhook_deliveries
               WHERE source = $1 AND received_at >= $2 AND received_at < $3""",
            source, start, end,
        )  # fmt: skip
    finally:
        await conn.close()

    def ms(value: timedelta | None) -> float:
        return value.total_seconds() * 1000 if value is not None else float("nan")

    return Delivery(
        int(row["received"]), int(row["delivered"]), ms(row["p50"]), ms(row["p99"]),
        ms(row["worst"]), drained,
    )  # fmt: skip


async def backlog(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE source = $1 AND state = 'pending'",
                f"{SOURCE_NAMESPACE}/{ON}",
            )
        )
    finally:
        await conn.close()


async def delivered_ids(url: str, acked: list[str]) -> tuple[int, int]:
    """(deliveries of ``ON`` delivered, how many of the ``acked`` event ids are among them)."""
    conn = await asyncpg.connect(url)
    source = f"{SOURCE_NAMESPACE}/{ON}"
    try:
        delivered = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE source = $1 AND state = 'delivered'",
            source,
        )
        found = await conn.fetchval(
            """SELECT count(*) FROM webhook_deliveries WHERE source = $1 AND state = 'delivered'
               AND event_id = ANY($2::text[])""",
            source, acked,
        )  # fmt: skip
        return int(delivered), int(found)
    finally:
        await conn.close()


def one_round(bench: Bench, number: int) -> None:
    opts, load, url = bench.opts, bench.load, bench.postgres.url
    sampler = bench.py_spy if number == 1 else None  # py-spy slows what it samples: once
    bench.profiles.append((bench.off.name, bench.off.measure(load, sampler)))
    started = datetime.now(UTC)
    consumer_before, wall = cpu_seconds(bench.consumer.pid), time.perf_counter()
    bench.profiles.append((bench.on.name, bench.on.measure(load, sampler)))
    ended = datetime.now(UTC)
    consumer_cpu = (
        100 * (cpu_seconds(bench.consumer.pid) - consumer_before) / (time.perf_counter() - wall)
    )
    left = asyncio.run(backlog(url))
    say(f"  forwarding: {left:,} deliveries pending at the end of the round; draining")
    closed = asyncio.run(delivery(url, started, ended))
    rate = bench.on.rounds[-1].result.rate * opts.paced_fraction
    say(f"  {ON}: round {number}, open loop at {rate:,.0f}/s")
    shares: list[CpuShare] = []
    paced_start = datetime.now(UTC)
    postgres_pid = bench.on.postgres_pid
    with CpuMeter(bench.on.server.pid, postgres_pid).measure(shares):
        result, acked = load.paced(bench.on.server, rate, opts.paced_duration)
    paced_end = datetime.now(UTC)
    bench.on.acked += acked
    paced = asyncio.run(delivery(url, paced_start, paced_end))
    bench.rounds.append(
        Round(
            off=bench.off.rounds[-1],
            on=bench.on.rounds[-1],
            paced=Measured(
                name=f"forwarding @{opts.paced_fraction:.0%} max",
                result=result,
                cpu=shares[0],
                rss_idle=bench.on.rss_idle,
                rss_peak=memory_mib(bench.on.server.pid, "VmHWM"),
            ),
            closed_delivery=closed,
            paced_delivery=paced,
            backlog_at_end=left,
            consumer_cpu=consumer_cpu,
            window=(paced_start, paced_end),
        )
    )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def report(bench: Bench, generator: str, load_before: str, delivered: int, found: int) -> None:
    opts, rounds = bench.opts, bench.rounds
    by_rate = sorted(range(len(rounds)), key=lambda i: rounds[i].on.result.rate)
    mid = by_rate[(len(by_rate) - 1) // 2]
    by_p99 = sorted(range(len(rounds)), key=lambda i: rounds[i].paced_delivery.p99_ms)
    paced_mid = rounds[by_p99[(len(by_p99) - 1) // 2]]
    ratios = [r.on.result.rate / r.off.result.rate if r.off.result.rate else 0.0 for r in rounds]
    ratio = median(ratios)
    off_m = sorted((r.off for r in rounds), key=lambda m: m.result.rate)[(len(rounds) - 1) // 2]
    off_m.name, rounds[mid].on.name = "receiver, forwarding off", "receiver, forwarding on"
    print()
    print(
        f"load: {generator}, closed loop, {opts.connections} connections; {opts.rounds} "
        f"interleaved rounds of {opts.duration:g} s per target after {opts.warmup:g} s warm-up, "
        f"median round shown; {opts.body_bytes}-byte GitHub body, unique X-GitHub-Delivery each"
    )
    print(
        f"host: {os.cpu_count()} CPUs shared by the receivers, PostgreSQL (fsync=on), the "
        f"consumer and the load generator; loopback TCP; Python {sys.version.split()[0]}; "
        f"load average before {load_before}, after {loadavg()}"
    )
    print()
    print(table([off_m, rounds[mid].on, paced_mid.paced]))
    print()
    print(
        f"ingest with forwarding on / off: {ratio:.2f}   (target >= {RATIO_TARGET})  "
        f"{verdict(ratio >= RATIO_TARGET)}   (median of the per-round ratios)"
    )
    d = paced_mid.paced_delivery
    print(
        f"receive -> deliver at {opts.paced_fraction:.0%} of max ingest "
        f"({paced_mid.paced.result.offered_rate:,.0f} events/s): p50 {d.p50_ms:.1f} ms, "
        f"p99 {d.p99_ms:.1f} ms, max {d.max_ms:.0f} ms   (target p99 <= {P99_TARGET_MS:g} ms)  "
        f"{verdict(d.p99_ms <= P99_TARGET_MS and d.delivered == d.received)}"
    )
    c = rounds[mid].closed_delivery
    window = opts.duration
    print(
        f"end to end at max ingest (closed loop, median round): {rounds[mid].on.result.rate:,.0f} "
        f"events/s in, {c.received:,} received, {rounds[mid].backlog_at_end:,} pending at the "
        f"end of the {window:g} s round, all delivered {c.drained_s:.1f} s later "
        f"(~{c.received / (window + c.drained_s):,.0f} events/s delivered); receive -> deliver "
        f"p50 {c.p50_ms:.0f} ms, p99 {c.p99_ms:.0f} ms"
    )
    print("per round:")
    for number, r in enumerate(rounds, start=1):
        pg = postgres_events(bench.postgres.logfile, *r.window)
        print(
            f"  {number}: ingest {r.on.result.rate:,.0f} on / {r.off.result.rate:,.0f} off "
            f"events/s = {ratios[number - 1]:.2f}; backlog at the end {r.backlog_at_end:,}, "
            f"drained in {r.closed_delivery.drained_s:.1f} s; consumer CPU "
            f"{r.consumer_cpu:.0f}%; paced {r.paced.result.offered_rate:,.0f}/s: receive -> "
            f"deliver p50 {r.paced_delivery.p50_ms:.1f} ms, p99 {r.paced_delivery.p99_ms:.1f} "
            f"ms, {r.paced_delivery.delivered:,}/{r.paced_delivery.received:,} delivered; "
            f"ingest p99 {r.paced.result.p99_ms:.1f} ms, {r.paced.result.other} non-200"
            + ("; PostgreSQL: " + "; ".join(pg) if pg else "")
        )
    busiest = max(m.cpu.other for r in rounds for m in (r.off, r.on, r.paced))
    if busiest > OTHER_CPU_WARNING:
        print(
            f"warning: other processes used up to {busiest:.0f}% of a CPU during the "
            "measurements: the machine was shared, the figures understate the receivers"
        )
    acked = len(set(bench.on.acked))
    missing = acked - found
    duplicates = int(bench.count_file.read_text()) - delivered if bench.count_file.exists() else 0
    print(
        f"durability: {acked:,} events acknowledged by the forwarding receiver, {delivered:,} "
        f"delivered, acknowledged but not delivered: {missing}  {verdict(missing == 0)}; the "
        f"consumer answered {delivered + duplicates:,} POSTs ({duplicates} more than deliveries)"
    )
    for name, summary in bench.profiles:
        if summary is not None:
            print(f"\n{name}, round 1 (sampled, so slower than the other rounds):")
            print(summary.render(top=16))


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the cleanup in run()


def run(opts: Options, paced_fraction: float) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    py_spy = profile.find(opts.py_spy) if opts.profile else None
    if opts.profile and py_spy is None:
        raise SystemExit("--profile: py-spy not found (pip install --target /tmp/pyspy py-spy)")
    use_wrk = opts.loadgen == "wrk" or (opts.loadgen == "auto" and wrk.available() is not None)
    workdir = Path(tempfile.mkdtemp(prefix="dfm-bench-forward-"))
    postgres = EmbeddedPostgres(workdir / "pg" / "data")
    processes: list[Server] = []
    consumer: subprocess.Popen[bytes] | None = None
    body, headers, secret = signed_request(opts.body_bytes)
    load = Load(body, headers, workdir, opts, use_wrk)
    generator = f"wrk {wrk.version()}" if use_wrk else "python (own process)"
    load_before = loadavg()
    try:
        say(f"bench: work dir {workdir}; starting PostgreSQL")
        postgres.start()
        postgres_pid = postmaster_pid(postgres)
        asyncio.run(log_postgres_maintenance(postgres.url))
        consumer, consumer_port, count_file = start_consumer(workdir)
        say("bench: starting the receivers (forwarding off, forwarding on) and the consumer")
        off = start_receiver(OFF, workdir, postgres.url, secret)
        on = start_receiver(
            ON, workdir, postgres.url, secret,
            ["--forward-url", f"http://127.0.0.1:{consumer_port}/events",
             "--forward-secret", FORWARD_SECRET],
        )  # fmt: skip
        processes += [off, on]
        off.wait_ready()
        on.wait_ready()
        bench = Bench(
            opts, workdir, postgres, load,
            Target("receiver, forwarding off", "off", off, postgres_pid, collect=False),
            Target("receiver, forwarding on", "on", on, postgres_pid, collect=True),
            consumer, count_file, py_spy=py_spy,
        )  # fmt: skip
        bench.off.warm(load)
        bench.on.warm(load)
        asyncio.run(delivery(postgres.url, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC)))
        for number in range(1, opts.rounds + 1):
            one_round(bench, number)
        delivered, found = asyncio.run(delivered_ids(postgres.url, bench.on.acked))
        for server in processes:
            server.stop()
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(10)
        report(bench, generator, load_before, delivered, found)
        if opts.keep:
            print(f"kept: {workdir}")
        return 0
    finally:
        for server in processes:
            server.stop()
        if consumer is not None and consumer.poll() is None:
            consumer.kill()
            consumer.wait()
        postgres.destroy()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.forward",
        description="provider -> receiver -> consumer: events/s and receive -> deliver latency; "
        "ingest with forwarding on vs off.",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of one round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per receiver")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--paced-duration", type=float, default=8.0)
    parser.add_argument("--paced-fraction", type=float, default=PACED_FRACTION)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--profile", action="store_true", help="py-spy both receivers in round 1")
    parser.add_argument("--py-spy", default=None, help="path of py-spy (default: from PATH)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args(argv)
    opts = Options(
        duration=args.duration, rounds=args.rounds, warmup=args.warmup,
        connections=args.connections, threads=1, paced_duration=args.paced_duration,
        paced_fraction=args.paced_fraction, loadgen=args.loadgen, body_bytes=args.body_bytes,
        receiver_log_level="INFO", receiver_log=None, gc_freeze=False, profile=args.profile,
        py_spy=args.py_spy, keep=args.keep,
    )  # fmt: skip
    return run(opts, args.paced_fraction)


if __name__ == "__main__":
    raise SystemExit(main())
