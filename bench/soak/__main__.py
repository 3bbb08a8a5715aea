"""Soak: what an outsider and a hung database do to signed deliveries. See bench/README.md.

One real receiver (`dfm receiver --config FILE`, its own process), one embedded PostgreSQL, and
this process as both the provider (signed GitHub deliveries at a steady pace, each on a new
connection) and the attacker. Four phases, each a row of the table:

1. quiet: the deliveries alone (the same-run baseline);
2. under attack: the same deliveries while the attacker tries to hold twice the connection cap
   (idle sockets, heads sent a byte a second, bodies sent a byte a second), opening a socket
   again 15 s after it was closed (as slowloris does), and floods unsigned requests;
3. the same, but each socket is opened again 1 s after it was closed: a connection flood;
4. database stalled: PostgreSQL frozen with SIGSTOP, deliveries at a higher pace;
5. recovered: SIGCONT, and every refused delivery retried until it is acknowledged.

All traffic goes to 127.0.0.1; every loop is bounded in count and time. Exits 0 whatever the
figures; only a crash fails it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import yaml

from dfm.embedded_pg import EmbeddedPostgres, free_port
from webhook_server.config import Provider, VerificationConfig
from webhook_server.verify import SIGNERS

SECRET = "soak-secret"
PATH = "/hooks/soak/gh"
HOST = "127.0.0.1"


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    rss_peak: float = 0.0
    connections_peak: int = 0
    queued_peak: int = 0

    def record(self, status: int, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(seconds * 1000)

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def server_pids(pg: EmbeddedPostgres) -> list[int]:
    postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(entry.name))
    return pids


def signal_postgres(pg: EmbeddedPostgres, signum: int) -> None:
    for pid in server_pids(pg):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def signed(body: bytes, delivery: str) -> dict[str, str]:
    headers = SIGNERS[Provider.GITHUB](
        body, SECRET.encode(), VerificationConfig(), time.time(), delivery
    )
    return headers | {"Content-Type": "application/json", "Connection": "close"}


class Soak:
    def __init__(self, args: argparse.Namespace, port: int, pid: int) -> None:
        self.args = args
        self.base = f"http://{HOST}:{port}"
        self.port = port
        self.pid = pid
        self.acknowledged: set[str] = set()
        self.refused: list[str] = []
        self.sequence = 0

    async def deliver(self, session: aiohttp.ClientSession, phase: Phase, delivery: str) -> int:
        body = json.dumps({"delivery": delivery, "pad": "p" * self.args.body_bytes}).encode()
        started = time.monotonic()
        try:
            async with session.post(
                self.base + PATH, data=body, headers=signed(body, delivery)
            ) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        phase.record(status, time.monotonic() - started)
        if status == 200:
            self.acknowledged.add(delivery)
        else:
            self.refused.append(delivery)
        return status

    async def paced(self, session: aiohttp.ClientSession, phase: Phase, rate: float) -> None:
        """Deliveries due at ``rate``/s for the phase's duration (open loop), each on a new
        connection; latency from the due time."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        count = int(self.args.duration * rate)
        tasks = []
        for n in range(count):
            await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
            self.sequence += 1
            tasks.append(
                asyncio.create_task(self.deliver(session, phase, f"{phase.name}-{self.sequence}"))
            )
        await asyncio.gather(*tasks)

    async def sample(self, phase: Phase, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                phase.rss_peak = max(phase.rss_peak, rss_mib(self.pid))
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        self.base + "/metrics", timeout=aiohttp.ClientTimeout(total=1)
                    ) as resp:
                        text = await resp.text()
                    for line in text.splitlines():
                        if line.startswith("dfm_receiver_connections_open "):
                            phase.connections_peak = max(
                                phase.connections_peak, int(float(line.split()[1]))
                            )
                        if line.startswith("dfm_receiver_store_queued_events "):
                            phase.queued_peak = max(phase.queued_peak, int(float(line.split()[1])))
                await asyncio.sleep(0.25)

    async def run_phase(self, phase: Phase, rate: float, reopen: float | None = None) -> Phase:
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample(phase, stop))
        attackers: list[asyncio.Task[None]] = []
        if reopen is not None:
            attackers = [asyncio.create_task(self.attack(stop, reopen))]
            await asyncio.sleep(2)  # let the attacker fill the cap first
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await self.paced(session, phase, rate)
        stop.set()
        await asyncio.gather(sampler, *attackers)
        return phase

    async def attack(self, stop: asyncio.Event, reopen: float) -> None:
        """Hold twice the cap: idle sockets, heads and bodies a byte a second, each opened again
        ``reopen`` seconds after it was closed; flood unsigned requests."""
        held: list[asyncio.StreamWriter] = []

        async def hold(kind: int) -> None:
            while not stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection(HOST, self.port)
                except OSError:
                    await sleep_unless(stop, reopen)
                    continue
                held.append(writer)
                try:
                    if kind == 1:
                        writer.write(b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n")
                    elif kind == 2:
                        writer.write(
                            b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: 100000\r\n\r\n"
                        )
                    while not stop.is_set() and not reader.at_eof():
                        if kind:
                            writer.write(b"a")
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(1):
                                await reader.read(65536)
                except (ConnectionError, OSError):
                    pass
                finally:
                    writer.close()
                await sleep_unless(stop, reopen)

        async def flood() -> None:
            connector = aiohttp.TCPConnector(limit=8)
            async with aiohttp.ClientSession(connector=connector) as session:
                while not stop.is_set():
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.post(self.base + PATH, data=b'{"forged":1}') as resp:
                            await resp.read()
                    await asyncio.sleep(1 / self.args.flood_rate)

        holders = [hold(n % 3) for n in range(2 * self.args.max_connections)]
        await asyncio.gather(*holders, flood())


async def soak(args: argparse.Namespace, workdir: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pg = EmbeddedPostgres(workdir / "pg")
    pg.start()
    port = free_port()
    config = {
        "host": HOST,
        "port": port,
        "database": {
            "url": pg.url,
            "commitTimeoutSeconds": args.commit_timeout,
            "maxQueuedEvents": args.max_queued_events,
        },
        "server": {"maxConnections": args.max_connections},
        "sources": [
            {
                "namespace": "soak",
                "name": "gh",
                "provider": "github",
                "verification": {"secrets": [{"value": SECRET}]},
                "limits": {"requestsPerSecond": 10_000, "burst": 10_000},
            }
        ],
    }
    config_file = workdir / "receiver.yaml"
    config_file.write_text(yaml.safe_dump(config))
    log = (workdir / "receiver.log").open("w")
    receiver = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
        [sys.executable, "-m", "dfm.cli", "receiver", "--config", str(config_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, DFM_LOG_LEVEL=args.receiver_log_level),
    )
    phases: list[Phase] = []
    try:
        await wait_ready(f"http://{HOST}:{port}/readyz")
        soak = Soak(args, port, receiver.pid)
        phases.append(await soak.run_phase(Phase("quiet"), args.rate))
        phases.append(await soak.run_phase(Phase("attack, reopen 15 s"), args.rate, reopen=15))
        phases.append(await soak.run_phase(Phase("attack, reopen 1 s"), args.rate, reopen=1))
        await asyncio.to_thread(signal_postgres, pg, signal.SIGSTOP)
        try:
            phases.append(await soak.run_phase(Phase("database stalled"), args.stall_rate))
        finally:
            await asyncio.to_thread(signal_postgres, pg, signal.SIGCONT)
        recovered = Phase("recovered (retries)")
        connector = aiohttp.TCPConnector(limit=64, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.monotonic() + 120
            while soak.refused and time.monotonic() < deadline:
                retry, soak.refused = soak.refused, []
                await asyncio.gather(*(soak.deliver(session, recovered, d) for d in retry))
                if soak.refused:
                    await asyncio.sleep(1)
        recovered.rss_peak = rss_mib(receiver.pid)
        phases.append(recovered)
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(60)
        log.close()
    conn = await asyncpg.connect(pg.url)
    try:
        stored = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM webhook_events")}
    finally:
        await conn.close()
    pg.destroy()
    report(args, phases, soak.acknowledged, stored, soak.refused, workdir)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("the receiver did not become ready")


def report(
    args: argparse.Namespace,
    phases: list[Phase],
    acknowledged: set[str],
    stored: set[str],
    unanswered: list[str],
    workdir: Path,
) -> None:
    print(
        f"soak: GitHub deliveries of {args.body_bytes} bytes, each on a new connection, paced "
        f"(open loop) at {args.rate}/s ({args.stall_rate}/s while stalled) for {args.duration} s "
        f"a phase; maxConnections {args.max_connections}, attacker holds "
        f"{2 * args.max_connections} (idle / head 1 B/s / body 1 B/s) and floods "
        f"{args.flood_rate} unsigned/s; commitTimeoutSeconds {args.commit_timeout}, "
        f"maxQueuedEvents {args.max_queued_events}"
    )
    header = (
        f"{'phase':<22}{'sent':>7}{'200':>7}{'503':>7}{'other':>7}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'max ms':>10}{'RSS MiB peak':>14}{'conns peak':>12}{'queued peak':>13}"
    )
    print(header)
    print("-" * len(header))
    for p in phases:
        sent = sum(p.statuses.values())
        ok = p.statuses.get(200, 0)
        busy = p.statuses.get(503, 0)
        print(
            f"{p.name:<22}{sent:>7}{ok:>7}{busy:>7}{sent - ok - busy:>7}{p.pct(0.5):>10.1f}"
            f"{p.pct(0.99):>10.1f}{max(p.latencies, default=0):>10.1f}{p.rss_peak:>14.1f}"
            f"{p.connections_peak:>12}{p.queued_peak:>13}"
        )
    quiet = phases[0]
    print()
    for attacked in phases[1:3]:
        refused = sum(attacked.statuses.values()) - attacked.statuses.get(200, 0)
        print(
            f"{attacked.name}: p99 / quiet p99 = {attacked.pct(0.99) / quiet.pct(0.99):.2f}; "
            f"signed deliveries not acknowledged: {refused} of {sum(attacked.statuses.values())}"
        )
    if len(phases) > 3:
        stalled = phases[3]
        print(
            f"database stalled: slowest answer {max(stalled.latencies, default=0) / 1000:.2f} s "
            f"(commit deadline {args.commit_timeout} s), queue peak {stalled.queued_peak} "
            f"(cap {args.max_queued_events})"
        )
    lost = acknowledged - stored
    print(
        f"durability: {len(acknowledged):,} acknowledged, {len(stored):,} rows, acknowledged but "
        f"not stored: {len(lost)}  {'PASS' if not lost else 'FAIL'}; never acknowledged after "
        f"the retries: {len(unanswered)}"
    )
    if args.keep:
        print(f"work dir kept: {workdir}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=20.0, help="signed deliveries per second")
    parser.add_argument("--stall-rate", type=float, default=100.0)
    parser.add_argument("--flood-rate", type=float, default=50.0)
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--commit-timeout", type=float, default=5.0)
    parser.add_argument("--max-queued-events", type=int, default=500)
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--receiver-log-level", default="WARNING", help="INFO logs every request")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (receiver log)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dfm-soak-"))
    try:
        asyncio.run(soak(args, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
