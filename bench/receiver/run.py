"""Orchestration: PostgreSQL, the two servers, the load, the table. See bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import asyncpg

from bench.receiver import profile, wrk
from bench.receiver.loadgen import LoadResult
from bench.receiver.servers import SOURCE_NAME, SOURCE_NAMESPACE, SOURCE_PATH
from dfm.embedded_pg import EmbeddedPostgres, free_port
from dfm.samples import sample_event
from webhook_server.config import Provider, VerificationConfig
from webhook_server.verify import SIGNERS
from webhook_server.verify.github import DELIVERY_HEADER

REPO = Path(__file__).resolve().parents[2]
RATIO_TARGET = 0.5
TRACED_SOURCE_NAME = "bench-traced"
P99_TARGET_MS = 25.0
T = TypeVar("T")
PACED_FRACTION = 0.8  # the fraction of the max rate the p99 target is set at
# With 64, a latency above 64 / rate (17 ms at 3,800/s) left every connection busy and made the
# next requests wait in the generator: its own queue, not the receiver, then set the p99.
PACED_CONNECTIONS = 256
# WAL written (and recycled by a checkpoint) before the load, in MiB: a running database reuses
# its old WAL segments; a fresh cluster creates and zero-fills each one, stalling commits.
WARM_WAL_MIB = 1024
OTHER_CPU_WARNING = 15.0  # percent of one CPU used by processes outside the benchmark
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Options:
    duration: float
    rounds: int
    warmup: float
    connections: int
    threads: int
    paced_duration: float
    paced_fraction: float
    loadgen: str
    body_bytes: int
    receiver_log_level: str
    receiver_log: str | None
    gc_freeze: bool
    profile: bool
    py_spy: str | None
    keep: bool
    tracing: bool = True
    trace_ratio: float = 1.0
    floor: bool = True
    # Another checkout of the repository whose receiver is measured in the same rounds (A/B).
    compare: str | None = None
    # The paced (open-loop) generator's connections: enough that a request never waits for a
    # free one at the receiver's latency, so its arrivals do not depend on the answers.
    paced_connections: int = PACED_CONNECTIONS
    # PostgreSQL settings (NAME=VALUE) applied with ALTER SYSTEM before the load: what a deployer
    # would tune, to see what it does to the tail (none by default: the bench's figures are on
    # PostgreSQL's defaults).
    postgres_settings: list[str] = field(default_factory=list)
    # Where PostgreSQL keeps its cluster (default: the work dir). An experiment: on a tmpfs
    # (/dev/shm) fsync costs nothing and the disk never stalls, which is not durable.
    postgres_dir: str | None = None
    # MiB of WAL written and recycled before the load (0: a fresh cluster's cold WAL).
    warm_wal_mib: int = WARM_WAL_MIB
    # An experiment: the servers under test (measured one at a time) on a CPU of their own,
    # everything else on the others (with two CPUs or more). Off: every process on every CPU.
    pin: bool = False


# -- CPUs ----------------------------------------------------------------------------------------


def split_cpus() -> tuple[set[int], set[int]] | None:
    """The CPU for the server under test, and the others for PostgreSQL, the generators and the
    bench itself; None with fewer than two to split."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus``; threads it starts later inherit the affinity. The
    threads are listed again until no new one turns up (one may start while they are moved)."""
    done: set[int] = set()
    while todo := {int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()} - done:
        for tid in todo:
            with suppress(ProcessLookupError):  # a thread that has just ended
                os.sched_setaffinity(tid, cpus)
        done |= todo


def cpus_line(
    split: tuple[set[int], set[int]] | None,
    server: str = "the servers under test (measured one at a time)",
    rest: str = "PostgreSQL (fsync=on), the load generators, the collector and the bench",
) -> str:
    """How the host's CPUs were shared, for the report."""
    if split is None:
        return f"{os.cpu_count()} CPUs shared by server, PostgreSQL (fsync=on) and load generator"
    return f"{server} on CPU {_cpu_list(split[0])}; {rest} on CPU {_cpu_list(split[1])}"


def _cpu_list(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


# -- /proc accounting ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of one process, 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postmaster_pid(postgres: EmbeddedPostgres) -> int:
    """The pid of a started cluster's postmaster (its children are the backends)."""
    return int((postgres.pgdata / "postmaster.pid").read_text().split()[0])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def memory_mib(pid: int, key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def generator_cpu_seconds() -> float:
    """CPU time of every waited-for child: the load generator runs are the only ones."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all CPUs, every process), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class CpuShare:
    """Percent of one core used during a run: by the server, PostgreSQL, the load generator,
    and by everything else on the machine (other work competing for the same CPUs)."""

    server: float
    postgres: float
    generator: float
    other: float


@dataclass
class CpuMeter:
    server_pid: int
    postgres_pid: int | None

    def _postgres(self) -> float:
        if self.postgres_pid is None:
            return 0.0
        pids = [self.postgres_pid, *children_of(self.postgres_pid)]
        return sum(cpu_seconds(p) for p in pids)

    def _sample(self) -> tuple[float, float, float, float]:
        return (
            cpu_seconds(self.server_pid),
            self._postgres(),
            generator_cpu_seconds(),
            machine_busy_seconds(),
        )

    @contextmanager
    def measure(self, out: list[CpuShare]) -> Iterator[None]:
        start = time.perf_counter()
        before = self._sample()
        yield
        after = self._sample()
        wall = time.perf_counter() - start
        server, postgres, generator, busy = (
            100 * (a - b) / wall for a, b in zip(after, before, strict=True)
        )
        other = max(0.0, busy - server - postgres - generator)
        out.append(CpuShare(server, postgres, generator, other))


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SOURCE_PATH}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                with opener.open(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the receiver then finishes in-flight requests and flushes), then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    kind: str, workdir: Path, extra: Sequence[str] = (), checkout: Path = REPO, log: str = ""
) -> Server:
    """``kind`` from ``bench.receiver.servers`` of ``checkout`` (its code is imported first: the
    working directory leads ``sys.path``)."""
    port = free_port()
    out = (workdir / f"{log or kind}.out").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.receiver.servers", kind, "--port", str(port), *extra],
        cwd=checkout,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    return Server(kind, process, port)


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Load:
    """The signed request every generator sends (a unique delivery id is added per request)."""

    body: bytes
    headers: dict[str, str]
    workdir: Path
    options: Options
    use_wrk: bool
    runs: int = 0

    def _prefix(self, label: str) -> str:
        self.runs += 1
        return f"{label}-{self.runs}-{secrets.token_hex(3)}"

    def closed(
        self, server: Server, seconds: float, *, collect: bool, label: str
    ) -> tuple[LoadResult, list[str]]:
        if self.use_wrk:
            return wrk.run(
                url=server.url,
                path=SOURCE_PATH,
                body=self.body,
                headers=self.headers,
                id_header=DELIVERY_HEADER,
                id_prefix=self._prefix(label),
                connections=self.options.connections,
                threads=self.options.threads,
                duration=seconds,
                workdir=self.workdir,
                collect=collect,
            )
        return self._python(server, ["--mode", "closed", "--duration", str(seconds)], label)

    def paced(self, server: Server, rate: float, seconds: float) -> tuple[LoadResult, list[str]]:
        args = ["--mode", "open", "--rate", f"{rate:.3f}", "--duration", str(seconds)]
        return self._python(server, args, "paced", self.options.paced_connections)

    def _python(
        self, server: Server, args: list[str], label: str, connections: int = 0
    ) -> tuple[LoadResult, list[str]]:
        prefix = self._prefix(label)
        body_file = self.workdir / "body.json"
        headers_file = self.workdir / "headers.json"
        body_file.write_bytes(self.body)
        headers_file.write_text(json.dumps(self.headers))
        result_file = self.workdir / f"{prefix}.json"
        acked_file = self.workdir / f"{prefix}.acked"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.receiver.loadgen",
                "--url",
                server.url,
                "--body",
                str(body_file),
                "--headers",
                str(headers_file),
                "--id-header",
                DELIVERY_HEADER,
                "--id-prefix",
                prefix,
                "--connections",
                str(connections or self.options.connections),
                "--result",
                str(result_file),
                "--acked",
                str(acked_file),
                *args,
            ],
            cwd=REPO,
            check=True,
            timeout=600,
        )
        result = LoadResult.from_json(result_file.read_text())
        return result, acked_file.read_text().split()


def signed_request(body_bytes: int) -> tuple[bytes, dict[str, str], str]:
    """(body, signed headers without the delivery id, secret) of a GitHub delivery."""
    sample, _ = sample_event(Provider.GITHUB)
    payload = json.loads(sample)
    base = len(json.dumps({**payload, "padding": ""}, separators=(",", ":")))
    if body_bytes > base:
        payload["padding"] = "x" * (body_bytes - base)
    body = json.dumps(payload, separators=(",", ":")).encode()
    secret = secrets.token_hex(20)
    headers = SIGNERS[Provider.GITHUB](
        body, secret.encode(), VerificationConfig(), time.time(), "-"
    )
    headers.pop(DELIVERY_HEADER)
    return body, headers, secret


# -- results -------------------------------------------------------------------------------------


@dataclass
class Measured:
    name: str
    result: LoadResult
    cpu: CpuShare
    rss_idle: float
    rss_peak: float


async def count_stored(url: str, acked: list[str], name: str = SOURCE_NAME) -> tuple[int, int]:
    """(rows of the bench source in webhook_events, how many of ``acked`` are among them)."""
    conn = await asyncpg.connect(url)
    try:
        source = f"{SOURCE_NAMESPACE}/{name}"
        rows = await conn.fetchval("SELECT count(*) FROM webhook_events WHERE source = $1", source)
        found = await conn.fetchval(
            "SELECT count(*) FROM webhook_events WHERE source = $1 AND event_id = ANY($2::text[])",
            source,
            acked,
        )
        return int(rows), int(found)
    finally:
        await conn.close()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(rows: Sequence[Measured]) -> str:
    head = (
        f"{'target':<22}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'non-200':>9}"
        f"{'RSS MiB idle/peak':>19}{'server CPU us/req':>18}   CPU % server/pg/loadgen/other"
    )
    lines = [head, "-" * len(head)]
    for m in rows:
        r = m.result
        per_request = m.cpu.server * 1e4 / r.rate if r.rate else 0.0
        lines.append(
            f"{m.name:<22}{r.rate:>10,.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.max_ms:>9.1f}"
            f"{r.other:>9}{f'{m.rss_idle:.0f} / {m.rss_peak:.0f}':>19}{per_request:>18.0f}   "
            f"{m.cpu.server:.0f} / {m.cpu.postgres:.0f} / {m.cpu.generator:.0f} / {m.cpu.other:.0f}"
        )
    return "\n".join(lines)


# -- the benchmark -------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Target:
    """One server under test and everything measured on it."""

    name: str
    label: str
    server: Server
    postgres_pid: int | None
    collect: bool
    rss_idle: float = 0.0
    rounds: list[Measured] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    warmup_other: int = 0

    def warm(self, load: Load) -> None:
        self.rss_idle = memory_mib(self.server.pid, "VmRSS")
        say(f"  {self.name}: warm-up {load.options.warmup:g} s")
        result, acked = load.closed(
            self.server, load.options.warmup, collect=self.collect, label=f"{self.label}-warm"
        )
        self.acked += acked
        self.warmup_other += result.other

    def measure(self, load: Load, py_spy: str | None = None) -> profile.Summary | None:
        seconds = load.options.duration
        number = len(self.rounds) + 1
        say(
            f"  {self.name}: round {number}, measuring {seconds:g} s"
            + (" (py-spy attached)" if py_spy else "")
        )
        raw = load.workdir / f"{self.label}-{number}.pyspy.txt"
        sampler = profile.start(py_spy, self.server.pid, seconds, raw) if py_spy else None
        shares: list[CpuShare] = []
        with CpuMeter(self.server.pid, self.postgres_pid).measure(shares):
            result, acked = load.closed(
                self.server, seconds, collect=self.collect, label=f"{self.label}-{number}"
            )
        self.acked += acked
        self.rounds.append(
            Measured(
                name=self.name,
                result=result,
                cpu=shares[0],
                rss_idle=self.rss_idle,
                rss_peak=memory_mib(self.server.pid, "VmHWM"),
            )
        )
        if sampler is None:
            return None
        sampler.wait(60)
        return profile.summarize(raw) if raw.exists() else None

    def median(self) -> Measured:
        """The round with the median events/s (the lower middle one for an even count)."""
        ordered = sorted(self.rounds, key=lambda m: m.result.rate)
        return ordered[(len(ordered) - 1) // 2]


FLOOR_HMAC = "+ HMAC verify"
COMPARE = "receiver of --compare"
COMPARE_SOURCE_NAME = "bench-compare"
FLOOR_COMMIT = "+ batched commit"
AIOHTTP_PATH = "receiver via aiohttp's web layer (one-pass route off)"
AIOHTTP_PATH_SOURCE_NAME = "bench-aiohttp-path"


def floor_batch_mean(floors: Sequence[Target]) -> float:
    """Mean events per commit of the commit floor (its /stats), 0 when it was not measured."""
    for floor in floors:
        if floor.name == FLOOR_COMMIT:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            url = f"http://127.0.0.1:{floor.server.port}/stats"
            with opener.open(url, timeout=5) as resp:
                stats = json.loads(resp.read())
            return float(stats["events"]) / stats["batches"] if stats["batches"] else 0.0
    return 0.0


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else 0.0


def _per_request_us(m: Measured) -> float:
    return m.cpu.server * 1e4 / m.result.rate if m.result.rate else 0.0


def floor_table(base: Target, floors: Sequence[Target], recv: Target, measured: _Measured) -> str:
    """Each layer of the floor beside the no-op baseline and the receiver: events/s and server
    CPU per request of its median round, and its ratio to the baseline (median of the per-round
    ratios, as for the receiver's verdict)."""
    head = (
        f"{'floor breakdown':<56}{'events/s':>10}{'x no-op':>9}{'server CPU us/req':>19}"
        f"{'x floor':>9}"
    )
    lines = [head, "-" * len(head)]
    commit_floor = next((f for f in floors if f.name == FLOOR_COMMIT), None)
    floor_rate = commit_floor.median().result.rate if commit_floor else 0.0
    rows: list[tuple[str, Target]] = [("bare aiohttp (the no-op baseline)", base)]
    for floor in floors:
        label = floor.name
        if floor.name == FLOOR_COMMIT:
            label += f" (mean {measured.floor_mean_batch:.1f} events per commit)"
        rows.append((label, floor))
    rows.append((f"receiver: everything (mean {measured.mean_batch:.1f} events per commit)", recv))
    for label, target in rows:
        m = target.median()
        ratio = median(
            [
                r.result.rate / b.result.rate if b.result.rate else 0.0
                for b, r in zip(base.rounds, target.rounds, strict=True)
            ]
        )
        to_floor = m.result.rate / floor_rate if floor_rate else 0.0
        lines.append(
            f"{label:<56}{m.result.rate:>10,.0f}{ratio:>9.2f}{_per_request_us(m):>19.0f}"
            f"{to_floor:>9.2f}"
        )
    return "\n".join(lines)


def cpu_per_event_line(base: Measured, recv: Measured) -> str:
    """CPU per event of the median rounds: the server's, and PostgreSQL's for the receiver."""

    def per_event(percent: float, m: Measured) -> float:
        return percent * 1e4 / m.result.rate if m.result.rate else 0.0

    server, postgres = per_event(recv.cpu.server, recv), per_event(recv.cpu.postgres, recv)
    return (
        f"CPU per event: receiver {server:.0f} us + PostgreSQL {postgres:.0f} us = "
        f"{server + postgres:.0f} us; no-op baseline {per_event(base.cpu.server, base):.0f} us "
        f"(median rounds; inflated when the machine is shared, see the other CPU column)"
    )


def compare_line(recv: Target, compare: Target) -> str:
    """A/B against the receiver of --compare, paired by round like the verdict's ratio."""
    rates = [
        r.result.rate / c.result.rate if c.result.rate else 0.0
        for r, c in zip(recv.rounds, compare.rounds, strict=True)
    ]
    cpu = [
        _per_request_us(r) / _per_request_us(c) if _per_request_us(c) else 0.0
        for r, c in zip(recv.rounds, compare.rounds, strict=True)
    ]
    return (
        f"A/B this receiver / the --compare one: events/s {median(rates):.2f} "
        f"(rounds {' '.join(f'{x:.2f}' for x in rates)}), server CPU per request "
        f"{median(cpu):.2f} (rounds {' '.join(f'{x:.2f}' for x in cpu)})"
    )


def batch_stats(server: Server) -> tuple[int, float]:
    """(batches written, mean batch size) from the receiver's /metrics."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("dfm_receiver_store_batch_size_"):
            key, _, value = line.partition(" ")
            values[key] = float(value)
    count = values.get("dfm_receiver_store_batch_size_count", 0.0)
    total = values.get("dfm_receiver_store_batch_size_sum", 0.0)
    return int(count), (total / count if count else 0.0)


def gc_summary(path: Path) -> str:
    if not path.exists():
        return "n/a"
    data = json.loads(path.read_text())
    return ", ".join(
        f"gen{g} {data['count'][g]} x, max {data['max_s'][g] * 1000:.1f} ms"
        for g in range(3)
        if data["count"][g]
    )


async def log_postgres_maintenance(url: str, settings: Sequence[str] = ()) -> list[str]:
    """Have PostgreSQL log every autovacuum/autoanalyze and checkpoint: latency suspects. Apply
    ``settings`` (NAME=VALUE) as well, with ``ALTER SYSTEM`` and a reload; return the names of
    those a reload cannot apply (see ``apply_postgres_settings``)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER SYSTEM SET log_autovacuum_min_duration = 0")
        await conn.execute("ALTER SYSTEM SET log_checkpoints = on")
        for setting in settings:
            name, _, value = setting.partition("=")
            if not re.fullmatch(r"[a-z_]+", name) or not value:
                raise SystemExit(f"--postgres-setting: expected NAME=VALUE, got {setting!r}")
            value = value.replace("'", "''")
            await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        await conn.execute("SELECT pg_reload_conf()")
        restart = []
        for setting in settings:
            name = setting.partition("=")[0]
            context = await conn.fetchval("SELECT context FROM pg_settings WHERE name = $1", name)
            if context == "postmaster":
                restart.append(name)
        return restart
    finally:
        await conn.close()


def apply_postgres_settings(postgres: EmbeddedPostgres, settings: Sequence[str] = ()) -> None:
    """``log_postgres_maintenance``, then a restart when a setting needs one. A setting that
    ``dfm.embedded_pg`` passes on the server's command line (``fsync``, ``shared_buffers``,
    ...) overrides ``ALTER SYSTEM``, so it is refused rather than silently not applied."""
    restart = asyncio.run(log_postgres_maintenance(postgres.url, settings))
    if restart:
        postgres.stop()
        postgres.start()
    names = [setting.partition("=")[0] for setting in settings]

    async def sources() -> dict[str, str]:
        conn = await asyncpg.connect(postgres.url)
        try:
            rows = await conn.fetch(
                "SELECT name, source FROM pg_settings WHERE name = any($1::text[])", names
            )
            return {row["name"]: row["source"] for row in rows}
        finally:
            await conn.close()

    if not names:
        return
    for name, source in asyncio.run(sources()).items():
        if source == "command line":
            raise SystemExit(
                f"--postgres-setting: {name} is set on the embedded server's command line "
                "(dfm.embedded_pg), which overrides it"
            )


async def warm_wal(url: str, mib: int) -> str:
    """Put PostgreSQL's WAL in a running database's state: write ``mib`` MiB of WAL (logical
    messages, which touch no table) and checkpoint, so that the load writes into recycled,
    already-allocated segments (``mib`` 0 leaves a fresh cluster's WAL as it is). Returns what
    the report says of it.

    A fresh cluster instead creates and zero-fills a 16 MiB segment every couple of seconds at
    the bench's rates, and each creation stalls commits for tens of milliseconds: a cost of the
    bench's fresh database that a long-running one does not pay."""
    if not mib:
        return "cold WAL (a fresh cluster: each segment created during the load)"
    conn = await asyncpg.connect(url)
    try:
        for _ in range(mib):
            await conn.execute(
                "SELECT pg_logical_emit_message(false, 'dfm-bench-warm', repeat('x', 1048576))"
            )
        await conn.execute("CHECKPOINT")
        segments = await conn.fetchval("SELECT count(*) FROM pg_ls_waldir()")
    finally:
        await conn.close()
    return f"WAL warmed ({mib:,} MiB written and checkpointed: {segments} segments to recycle)"


async def wal_position(url: str) -> int:
    """Where PostgreSQL's WAL insert position is, in bytes: the difference of two is the WAL
    the whole cluster wrote in between, exactly and at once."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')")
        )
    finally:
        await conn.close()


async def _settled(conn: asyncpg.Connection, read: Callable[[], Awaitable[T]], settle: float) -> T:
    """``read()`` of cumulative statistics, repeated until it stops changing for a moment (a
    backend sends its counts at most once a second, and at exit) or ``settle`` seconds pass."""
    last = None
    deadline = time.monotonic() + settle
    while True:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        counts = await read()
        if counts == last or time.monotonic() > deadline:
            return counts
        last = counts
        await asyncio.sleep(0.3)


async def wal_records(url: str, settle: float = 3.0) -> tuple[int, int]:
    """The cluster's cumulative WAL records and full-page images (``pg_stat_wal``), settled."""
    conn = await asyncpg.connect(url)

    async def read() -> tuple[int, int]:
        row = await conn.fetchrow("SELECT wal_records, wal_fpi FROM pg_stat_wal")
        return (int(row["wal_records"]), int(row["wal_fpi"]))

    try:
        return await _settled(conn, read, settle)
    finally:
        await conn.close()


async def io_counts(url: str, settle: float = 3.0) -> dict[tuple[str, str], tuple[int, int]]:
    """PostgreSQL's cumulative bytes written and extended (``pg_stat_io``) by backend type and
    object, settled; none before PostgreSQL 18, whose ``pg_stat_io`` has no byte counts."""
    conn = await asyncpg.connect(url)

    async def read() -> dict[tuple[str, str], tuple[int, int]]:
        rows = await conn.fetch(
            "SELECT backend_type, object, sum(coalesce(write_bytes, 0))::bigint AS written,"
            " sum(coalesce(extend_bytes, 0))::bigint AS extended"
            " FROM pg_stat_io GROUP BY 1, 2"
        )
        return {
            (r["backend_type"], r["object"]): (int(r["written"]), int(r["extended"])) for r in rows
        }

    try:
        if int(await conn.fetchval("SHOW server_version_num")) < 180000:
            return {}
        return await _settled(conn, read, settle)
    finally:
        await conn.close()


def io_line(
    before: dict[tuple[str, str], tuple[int, int]], after: dict[tuple[str, str], tuple[int, int]]
) -> str:
    """Who in PostgreSQL wrote how much between two ``io_counts``: ``client backend relation
    written 3 MiB, extended 180 MiB; ...``, largest first, those under 1 MiB left out."""
    moved = []
    for key, (written, extended) in after.items():
        was_written, was_extended = before.get(key, (0, 0))
        moved.append((key, written - was_written, extended - was_extended))
    moved.sort(key=lambda item: -(item[1] + item[2]))
    return "; ".join(
        f"{backend} {what} written {written / 2**20:,.0f} MiB, extended {extended / 2**20:,.0f} MiB"
        for (backend, what), written, extended in moved
        if written + extended >= 2**20
    )


_PG_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] LOG:\s+(.*)$")


def postgres_events(logfile: Path, start: datetime, end: datetime) -> list[str]:
    """Autovacuum, autoanalyze and checkpoint log lines between ``start`` and ``end`` (UTC)."""
    found: list[str] = []
    if not logfile.exists():
        return found
    for line in logfile.read_text(errors="replace").splitlines():
        match = _PG_LOG_LINE.match(line)
        if not match:
            continue
        when = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        text = match[2]
        if start <= when <= end and text.startswith(
            ("automatic vacuum", "automatic analyze", "checkpoint")
        ):
            offset = (when - start).total_seconds()
            found.append(f"+{offset:.1f} s {text.split(':')[0]}")
    return found


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _terminate(signum: int, frame: object) -> None:
    # A second SIGTERM (`timeout` passing one on beside a direct kill) would interrupt the
    # cleanup itself and leave PostgreSQL running: the first one is enough.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt  # unwinds through the cleanup below


def run(opts: Options) -> int:
    """Start PostgreSQL, the baseline and the receiver; measure; report; clean up."""
    signal.signal(signal.SIGTERM, _terminate)
    use_wrk = opts.loadgen == "wrk" or (opts.loadgen == "auto" and wrk.available() is not None)
    if opts.loadgen == "wrk" and wrk.available() is None:
        raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install wrk)")
    py_spy = profile.find(opts.py_spy) if opts.profile else None
    if opts.profile and py_spy is None:
        raise SystemExit("--profile: py-spy not found (pip install --target /tmp/pyspy py-spy)")
    workdir = Path(tempfile.mkdtemp(prefix="dfm-bench-"))
    pg_base: Path | None = None
    if opts.postgres_dir:
        # As root the cluster lives under root_base (dfm.embedded_pg), not in the data dir.
        pg_base = Path(tempfile.mkdtemp(prefix="dfm-bench-pg-", dir=opts.postgres_dir))
        pg_base.chmod(0o755)
        postgres = EmbeddedPostgres(pg_base / "pg" / "data", root_base=pg_base)
    else:
        postgres = EmbeddedPostgres(workdir / "pg" / "data")
    servers: list[Server] = []
    body, headers, secret = signed_request(opts.body_bytes)
    load = Load(body, headers, workdir, opts, use_wrk)
    generator = (
        f"wrk {wrk.version()} ({opts.threads} thread)" if use_wrk else "python (own process)"
    )
    load_before = loadavg()
    split = split_cpus() if opts.pin else None
    if split is not None:
        os.sched_setaffinity(0, split[1])  # inherited by PostgreSQL and the generators
    try:
        say(f"bench: work dir {workdir}; starting PostgreSQL")
        postgres.start()
        apply_postgres_settings(postgres, opts.postgres_settings)
        postgres_pid = postmaster_pid(postgres)
        if opts.warm_wal_mib:
            say(f"bench: warming PostgreSQL's WAL ({opts.warm_wal_mib:,} MiB)")
        wal = asyncio.run(warm_wal(postgres.url, opts.warm_wal_mib))
        started = _start_servers(opts, workdir, postgres, secret, postgres_pid, servers)
        if split is not None:
            for server in servers:
                if server is not started.collector:  # the collector stands for the network
                    pin(server.pid, split[0])
        measured = _measure(opts, load, py_spy, started, postgres)
        _report(opts, measured, generator, load_before, len(body), use_wrk, postgres, wal, split)
        if opts.keep:
            print(f"kept: {workdir}")
        return 0
    finally:
        for server in servers:
            server.stop()
        postgres.destroy()
        if pg_base is not None:
            shutil.rmtree(pg_base, ignore_errors=True)
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class _Started:
    baseline: Server
    receiver: Server
    base: Target
    recv: Target
    postgres_pid: int
    log_file: Path
    gc_file: Path
    # With tracing (the default): the same receiver tracing every request, and its collector.
    traced: Target | None = None
    collector: Server | None = None
    # The floor's layers between the two (bare aiohttp + HMAC, + a batched commit), when measured.
    floors: list[Target] = field(default_factory=list)


def _start_servers(
    opts: Options,
    workdir: Path,
    postgres: EmbeddedPostgres,
    secret: str,
    postgres_pid: int,
    servers: list[Server],
) -> _Started:
    """The baseline and the receiver, ready; ``servers`` lists them for the caller's cleanup."""
    say("bench: starting the baseline (no-op aiohttp) and the receiver (durable store)")
    log_file = Path(opts.receiver_log) if opts.receiver_log else workdir / "receiver.log"
    gc_file = workdir / "receiver.gc.json"
    baseline = start_server("baseline", workdir)
    servers.append(baseline)
    receiver = start_server(
        "receiver",
        workdir,
        [
            "--database-url",
            postgres.url,
            "--secret",
            secret,
            "--log",
            str(log_file),
            "--log-level",
            opts.receiver_log_level,
            "--gc-stats",
            str(gc_file),
            *(["--gc-freeze"] if opts.gc_freeze else []),
        ],
    )
    servers.append(receiver)
    floors: list[Target] = []
    if opts.floor:
        hmac_floor = start_server("floor-hmac", workdir, ["--secret", secret])
        servers.append(hmac_floor)
        commit_floor = start_server(
            "floor-commit", workdir, ["--secret", secret, "--database-url", postgres.url]
        )
        servers.append(commit_floor)
        # The same receiver with every request through aiohttp's request, middleware and
        # response (its route before issue 17's one-pass route), under its own source.
        aiohttp_path = start_server(
            "receiver",
            workdir,
            ["--database-url", postgres.url, "--secret", secret, "--no-one-pass",
             "--name", AIOHTTP_PATH_SOURCE_NAME, "--log", str(workdir / "aiohttp-path.log"),
             "--log-level", opts.receiver_log_level],
            log="aiohttp-path",
        )  # fmt: skip
        servers.append(aiohttp_path)
        floors = [
            Target(FLOOR_HMAC, "floor-hmac", hmac_floor, None, collect=False),
            Target(FLOOR_COMMIT, "floor-commit", commit_floor, postgres_pid, collect=False),
            Target(AIOHTTP_PATH, "aiohttp-path", aiohttp_path, postgres_pid, collect=False),
        ]
    if opts.compare:
        # The same receiver setup from another checkout, under its own source (its own rows).
        other = start_server(
            "receiver",
            workdir,
            ["--database-url", postgres.url, "--secret", secret, "--name", COMPARE_SOURCE_NAME,
             "--log", str(workdir / "compare.log"), "--log-level", opts.receiver_log_level],
            checkout=Path(opts.compare),
            log="compare",
        )  # fmt: skip
        servers.append(other)
        floors.append(Target(COMPARE, "compare", other, postgres_pid, collect=False))
    for server in servers:
        server.wait_ready()
    base = Target("baseline (no-op)", "baseline", baseline, None, collect=False)
    recv = Target("receiver (durable)", "receiver", receiver, postgres_pid, collect=True)
    started = _Started(
        baseline, receiver, base, recv, postgres_pid, log_file, gc_file, floors=floors
    )
    if opts.tracing:
        ratio = f"{opts.trace_ratio:.0%}"
        say(f"bench: starting a no-op OTLP collector and the receiver traced at {ratio}")
        collector = start_server("collector", workdir)
        servers.append(collector)
        collector.wait_ready()
        traced = start_server(
            "receiver",
            workdir,
            [
                "--database-url", postgres.url, "--secret", secret,
                "--name", TRACED_SOURCE_NAME, "--path", SOURCE_PATH,
                "--log", str(workdir / "traced.log"), "--log-level", opts.receiver_log_level,
                "--trace-endpoint", f"http://127.0.0.1:{collector.port}",
                "--trace-ratio", str(opts.trace_ratio),
                *(["--gc-freeze"] if opts.gc_freeze else []),
            ],
        )  # fmt: skip
        servers.append(traced)
        traced.wait_ready()
        started.traced = Target(
            f"receiver (traced {ratio})", "traced", traced, postgres_pid, collect=True
        )
        started.collector = collector
    return started


@dataclass
class _Measured:
    started: _Started
    bench_start: datetime
    profiles: list[tuple[str, profile.Summary | None]]
    paced_rounds: list[Measured]
    paced_windows: list[tuple[datetime, datetime]]
    batches: int
    mean_batch: float
    floor_mean_batch: float
    rows: int
    found: int
    log_lines: int
    # The traced receiver's stored rows and acknowledged ids found, and what its collector got.
    traced_rows: int = 0
    traced_found: int = 0
    exported: dict[str, int] = field(default_factory=dict)
    # The no-op baseline under the same open loop as each paced receiver run, right after it:
    # the latency the machine and the generator add by themselves at that rate.
    paced_floor: list[LoadResult] = field(default_factory=list)


def _measure(
    opts: Options,
    load: Load,
    py_spy: str | None,
    started: _Started,
    postgres: EmbeddedPostgres,
) -> _Measured:
    """Interleaved rounds (closed loop for each target, then the receiver paced), then stop the
    servers and count what the receiver stored."""
    base, recv, receiver, baseline = started.base, started.recv, started.receiver, started.baseline
    postgres_pid, log_file = started.postgres_pid, started.log_file
    # Interleaved rounds: a slow spell of a shared machine hits both targets alike.
    bench_start = datetime.now(UTC)
    traced = started.traced
    base.warm(load)
    for floor in started.floors:
        floor.warm(load)
    recv.warm(load)
    if traced is not None:
        traced.warm(load)
    profiles: list[tuple[str, profile.Summary | None]] = []
    paced_rounds: list[Measured] = []
    paced_windows: list[tuple[datetime, datetime]] = []
    paced_floor: list[LoadResult] = []
    for number in range(opts.rounds):
        sampler = py_spy if number == 0 else None  # py-spy slows what it samples: once
        profiles.append((base.name, base.measure(load, sampler)))
        for floor in started.floors:
            floor.measure(load)
        profiles.append((recv.name, recv.measure(load, sampler)))
        # The paced run follows the closed-loop one it is a fraction of, so both see the
        # machine in the same state.
        rate = recv.rounds[-1].result.rate * opts.paced_fraction
        say(f"  receiver: round {number + 1}, open loop at {rate:,.0f}/s")
        shares: list[CpuShare] = []
        paced_start = datetime.now(UTC)
        with CpuMeter(receiver.pid, postgres_pid).measure(shares):
            paced_result, paced_acked = load.paced(receiver, rate, opts.paced_duration)
        paced_windows.append((paced_start, datetime.now(UTC)))
        recv.acked += paced_acked
        paced_rounds.append(
            Measured(
                name=f"receiver @{opts.paced_fraction:.0%} max",
                result=paced_result,
                cpu=shares[0],
                rss_idle=recv.rss_idle,
                rss_peak=memory_mib(receiver.pid, "VmHWM"),
            )
        )
        say(f"  baseline (no-op): round {number + 1}, open loop at the same {rate:,.0f}/s")
        paced_floor.append(load.paced(baseline, rate, opts.paced_duration)[0])
        if traced is not None:
            traced.measure(load)
    batches, mean_batch = batch_stats(receiver)
    floor_mean_batch = floor_batch_mean(started.floors)
    baseline.stop()
    for floor in started.floors:
        floor.server.stop()
    code = receiver.stop()
    say(f"  receiver stopped (exit {code}); counting stored events")
    rows, found = asyncio.run(count_stored(postgres.url, recv.acked))
    log_lines = sum(1 for _ in log_file.open("rb")) if log_file.is_file() else 0
    measured = _Measured(
        started, bench_start, profiles, paced_rounds, paced_windows, batches, mean_batch,
        floor_mean_batch, rows, found, log_lines, paced_floor=paced_floor,
    )  # fmt: skip
    if traced is not None and started.collector is not None:
        traced.server.stop()  # exports what it still holds before it exits
        measured.traced_rows, measured.traced_found = asyncio.run(
            count_stored(postgres.url, traced.acked, TRACED_SOURCE_NAME)
        )
        measured.exported = collector_stats(started.collector)
    return measured


def collector_stats(collector: Server) -> dict[str, int]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{collector.port}/stats", timeout=5) as resp:
        stats: dict[str, int] = json.loads(resp.read())
    return stats


def _report(
    opts: Options,
    measured: _Measured,
    generator: str,
    load_before: str,
    body_bytes: int,
    use_wrk: bool,
    postgres: EmbeddedPostgres,
    wal: str,
    split: tuple[set[int], set[int]] | None,
) -> None:
    """The table, the ratio and p99 verdicts, per-round detail, durability and warnings."""
    base, recv = measured.started.base, measured.started.recv
    paced_rounds, paced_windows = measured.paced_rounds, measured.paced_windows
    base_m, recv_m = base.median(), recv.median()
    paced_m = sorted(paced_rounds, key=lambda m: m.result.p99_ms)[(opts.rounds - 1) // 2]
    # Paired by round (the two ran back to back), so a slow spell of the machine cancels out.
    ratios = sorted(
        r.result.rate / b.result.rate if b.result.rate else 0.0
        for b, r in zip(base.rounds, recv.rounds, strict=True)
    )
    ratio = ratios[(len(ratios) - 1) // 2]
    print()
    print(
        f"load: {generator}, closed loop, {opts.connections} connections; "
        f"{opts.rounds} interleaved round{'s' if opts.rounds > 1 else ''} of "
        f"{opts.duration:g} s per target after "
        f"{opts.warmup:g} s warm-up, median round shown; {body_bytes}-byte GitHub body, "
        f"HMAC-SHA256 signed, unique {DELIVERY_HEADER} each"
    )
    print(
        f"host: {cpus_line(split)}; loopback TCP; Python {sys.version.split()[0]}; "
        f"load average before {load_before}, after {loadavg()}; {wal}"
        + (
            f"; PostgreSQL set: {', '.join(opts.postgres_settings)}"
            if opts.postgres_settings
            else ""
        )
        + (f"; PostgreSQL's cluster in {opts.postgres_dir}" if opts.postgres_dir else "")
    )
    print()
    traced = measured.started.traced
    rows = [base_m, recv_m] + ([traced.median()] if traced is not None else []) + [paced_m]
    print(table(rows))
    print()
    print(cpu_per_event_line(base_m, recv_m))
    print(
        # Three digits: 0.4996 is a miss, and "0.50 MISS" read as a contradiction.
        f"events/s ratio receiver/baseline: {ratio:.3f}   (target >= {RATIO_TARGET})  "
        f"{verdict(ratio >= RATIO_TARGET)}   (median of the per-round ratios)"
    )
    if traced is not None:
        _print_traced(base, recv, traced, measured, opts.trace_ratio)
    p99_ok = paced_m.result.p99_ms <= P99_TARGET_MS and paced_m.result.other == 0
    print(
        f"p99 at {opts.paced_fraction:.0%} of max: {paced_m.result.p99_ms:.2f} ms   "
        f"(target <= {P99_TARGET_MS:g} ms)  {verdict(p99_ok)}"
        + ("" if opts.paced_fraction == PACED_FRACTION else "   (the target is set at 80%)")
    )
    print(
        f"  (open loop, python generator over {opts.paced_connections} connections, latency "
        f"counted from each request's due time; {opts.paced_duration:g} s right after each "
        f"receiver round, at "
        f"{opts.paced_fraction:.0%} of that round's events/s)"
    )
    floor_p99 = median([r.p99_ms for r in measured.paced_floor])
    print(
        f"  the no-op baseline under the same open loop, right after each: p99 {floor_p99:.2f} ms "
        "(median round): what the machine and the generator add by themselves"
    )
    _print_rounds(base, recv, paced_rounds, paced_windows, postgres, measured.paced_floor)
    if measured.started.floors:
        print()
        print(floor_table(base, measured.started.floors, recv, measured))
    compare = next((f for f in measured.started.floors if f.name == COMPARE), None)
    if compare is not None:
        print(compare_line(recv, compare))
    _print_durability(opts, measured, use_wrk, postgres)


def _print_traced(
    base: Target, recv: Target, traced: Target, measured: _Measured, ratio: float
) -> None:
    """Tracing on (requests sampled at ``ratio``, spans exported) beside off, paired by round."""
    on = median(
        [t.result.rate / b.result.rate if b.result.rate else 0.0
         for b, t in zip(base.rounds, traced.rounds, strict=True)]
    )  # fmt: skip
    cost = median(
        [t.result.rate / r.result.rate if r.result.rate else 0.0
         for r, t in zip(recv.rounds, traced.rounds, strict=True)]
    )  # fmt: skip
    print(
        f"events/s ratio traced receiver/baseline: {on:.2f}   (tracing on, sampled {ratio:.0%}, "
        f"OTLP/HTTP to a no-op collector); traced/untraced receiver: {cost:.2f}"
    )
    missing = len(set(traced.acked)) - measured.traced_found
    exported = measured.exported
    print(
        f"  traced receiver: {len(traced.acked):,} answers 200, acknowledged but not stored: "
        f"{missing}  {verdict(missing == 0)}; the collector got {exported.get('requests', 0):,} "
        f"export requests, {exported.get('bytes', 0) / 2**20:,.1f} MiB of spans"
    )


def _print_rounds(
    base: Target,
    recv: Target,
    paced_rounds: list[Measured],
    paced_windows: list[tuple[datetime, datetime]],
    postgres: EmbeddedPostgres,
    paced_floor: list[LoadResult],
) -> None:
    print("per round:")
    for number, (b, r, p, f) in enumerate(
        zip(base.rounds, recv.rounds, paced_rounds, paced_floor, strict=True), start=1
    ):
        x = r.result.rate / b.result.rate if b.result.rate else 0.0
        pg = postgres_events(postgres.logfile, *paced_windows[number - 1])
        print(
            f"  {number}: {r.result.rate:,.0f} / {b.result.rate:,.0f} events/s = {x:.2f}; "
            f"paced {p.result.offered_rate:,.0f}/s: p99 {p.result.p99_ms:.1f} ms, "
            f"{p.result.other} non-200, generator late <= {p.result.max_send_lag_ms:.0f} ms; "
            f"other CPU % {b.cpu.other:.0f}/{r.cpu.other:.0f}/{p.cpu.other:.0f}; no-op at the "
            f"same rate: p99 {f.p99_ms:.1f} ms, {f.other} non-200"
        )
        print(
            "     p99 ms by second: "
            + " ".join(f"{v:.0f}" for v in p.result.p99_by_second_ms)
            + ("; PostgreSQL: " + "; ".join(pg) if pg else "")
        )
    busiest = max(m.cpu.other for m in [*base.rounds, *recv.rounds, *paced_rounds])
    if busiest > OTHER_CPU_WARNING:
        print(
            f"warning: other processes used up to {busiest:.0f}% of a CPU during the "
            "measurements: the machine was shared, the figures understate both servers"
        )


def _print_durability(
    opts: Options, measured: _Measured, use_wrk: bool, postgres: EmbeddedPostgres
) -> None:
    started = measured.started
    base, recv, gc_file = started.base, started.recv, started.gc_file
    rows, found, log_lines = measured.rows, measured.found, measured.log_lines
    batches, mean_batch = measured.batches, measured.mean_batch
    bench_start, profiles = measured.bench_start, measured.profiles
    missing = len(set(recv.acked)) - found
    extra = rows - found
    print(
        f"durability: {len(recv.acked):,} answers 200 counted, {rows:,} rows in "
        f"webhook_events, acknowledged but not stored: {missing}  {verdict(missing == 0)}"
    )
    if extra and use_wrk:
        print(
            f"  +{extra} stored rows without a counted 200: requests in flight when wrk "
            f"stopped (wrk drops them unanswered; at most {opts.connections} per wrk run)"
        )
    elif extra:
        print(f"  +{extra} stored rows without a counted 200 (timeouts or errors)")
    warm_other = base.warmup_other + recv.warmup_other
    if warm_other:
        print(f"warning: {warm_other} non-200 answers during the warm-ups")
    closed_maintenance = postgres_events(postgres.logfile, bench_start, datetime.now(UTC))
    print(
        f"receiver: {log_lines:,} JSON log lines to {opts.receiver_log or 'a file'} "
        f"(level {opts.receiver_log_level}); "
        + ("gc.freeze() EXPERIMENT on; " if opts.gc_freeze else "")
        + f"{batches:,} store batches, mean {mean_batch:.1f} events; "
        f"GC {gc_summary(gc_file)}; PostgreSQL autovacuum/analyze/checkpoints during the "
        f"bench: {len(closed_maintenance)}"
    )
    for name, summary in profiles:
        if summary is not None:
            print(f"\n{name}, round 1 (sampled, so slower than the other rounds):")
            print(summary.render())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.receiver",
        description="Receiver vs no-op aiohttp baseline: events/s, p50/p99, RSS; p99 at 80%% max.",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of one measured round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per target")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per target")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--paced-duration", type=float, default=8.0)
    parser.add_argument("--paced-fraction", type=float, default=PACED_FRACTION)
    parser.add_argument(
        "--paced-connections",
        type=int,
        default=PACED_CONNECTIONS,
        help="connections of the open-loop generator (at most one request in flight on each)",
    )
    parser.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="closed-loop generator; auto = wrk when installed (the paced phase is always python)",
    )
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument(
        "--receiver-log",
        default=None,
        help="where the receiver writes its JSON log (default: a file in the work dir); "
        "/dev/null keeps the logging CPU but drops the disk writes",
    )
    parser.add_argument(
        "--receiver-log-level",
        default="INFO",
        help="INFO logs one JSON access line a request (the default, as deployed)",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="experiment, not what ships: gc.freeze() in the receiver process before it starts",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy both servers in round 1")
    parser.add_argument("--py-spy", default=None, help="path of py-spy (default: from PATH)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, scripts)")
    parser.add_argument(
        "--no-tracing",
        action="store_true",
        help="skip the third target: the receiver tracing every request (OTLP to a no-op sink)",
    )
    parser.add_argument(
        "--trace-ratio",
        type=float,
        default=1.0,
        help="the share of requests the traced receiver samples (default 1: every one)",
    )
    parser.add_argument(
        "--compare",
        default=None,
        metavar="DIR",
        help="A/B: also measure the receiver of another checkout (e.g. `git archive` of an "
        "earlier commit) in the same interleaved rounds; shown in the floor table",
    )
    parser.add_argument(
        "--postgres-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="experiment: a PostgreSQL setting applied by ALTER SYSTEM and a reload (a restart "
        "when it needs one) before the load, e.g. max_wal_size=16GB (repeatable; default: "
        "PostgreSQL's own settings)",
    )
    parser.add_argument(
        "--postgres-dir",
        default=None,
        metavar="DIR",
        help="experiment: where PostgreSQL keeps its cluster, e.g. /dev/shm (a tmpfs: fsync "
        "costs nothing, so the figures are not durable ones)",
    )
    parser.add_argument(
        "--cold-wal",
        action="store_true",
        help="skip warming PostgreSQL's WAL: a fresh cluster creates a segment every couple of "
        "seconds under load, each creation stalling commits (default: write and checkpoint "
        f"{WARM_WAL_MIB} MiB first, as a running database's recycled WAL)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="experiment: the servers under test on one CPU of their own (measured one at a "
        "time), PostgreSQL, the generators and the collector on the others (default: every "
        "process on every CPU)",
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the floor breakdown (bare aiohttp + HMAC, + a batched commit)",
    )
    args = parser.parse_args(argv)
    return run(
        Options(
            duration=args.duration,
            rounds=args.rounds,
            warmup=args.warmup,
            connections=args.connections,
            threads=args.threads,
            paced_duration=args.paced_duration,
            paced_fraction=args.paced_fraction,
            paced_connections=args.paced_connections,
            loadgen=args.loadgen,
            body_bytes=args.body_bytes,
            receiver_log_level=args.receiver_log_level,
            receiver_log=args.receiver_log,
            gc_freeze=args.gc_freeze,
            profile=args.profile,
            py_spy=args.py_spy,
            keep=args.keep,
            tracing=not args.no_tracing,
            trace_ratio=args.trace_ratio,
            floor=args.floor,
            compare=args.compare,
            postgres_settings=args.postgres_setting,
            postgres_dir=args.postgres_dir,
            warm_wal_mib=0 if args.cold_wal else WARM_WAL_MIB,
            pin=args.pin,
        )
    )
