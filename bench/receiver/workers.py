"""Worker processes: ``python -m bench.receiver.workers [--workers 2]``.

Issue 17 lists several worker processes per pod, sharing the port through SO_REUSEPORT, as a
lever to weigh and to report apart from the per-core ratio. The receiver has it as an option,
``workers`` (webhook_server.workers). This tool starts, against one embedded PostgreSQL, four
groups of ``bench.receiver.servers`` processes, each group on a port of its own:

- the no-op baseline, one process and ``--workers`` processes (``--reuse-port``: each binds the
  port with SO_REUSEPORT);
- the receiver (durable store, one source per group), with ``workers`` 1 and ``--workers``: the
  second is the receiver's own supervisor and its workers, as ``dfm receiver`` runs them.

The kernel spreads a group's connections over its processes. Each receiver worker has its own
pool and writers. In interleaved rounds each group gets the closed loop (wrk, or the Python
generator when wrk is not installed) and each receiver group then gets an open loop at 80 % of
the events/s it just did. The table gives events/s, CPU per event (the group's processes and
their children, plus PostgreSQL's for the receiver groups) and the p99 at 80 %; the durability
check counts each receiver group's acknowledged ids in the store, and the receiver's merged
/metrics says how many requests each worker served.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.receiver import wrk
from bench.receiver.loadgen import LoadResult
from bench.receiver.run import (
    PACED_CONNECTIONS,
    PACED_FRACTION,
    REPO,
    WARM_WAL_MIB,
    Load,
    Options,
    Server,
    _terminate,
    children_of,
    count_stored,
    cpu_seconds,
    loadavg,
    median,
    postmaster_pid,
    signed_request,
    warm_wal,
)
from dfm.embedded_pg import EmbeddedPostgres, free_port


@dataclass
class Group:
    label: str
    processes: list[subprocess.Popen[bytes]]
    port: int
    name: str = ""  # the receiver's source name; "" for the no-op
    closed: list[tuple[LoadResult, float]] = field(default_factory=list)  # (result, CPU µs/event)
    paced: list[LoadResult] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    sockets: int = 1  # the processes listening on the port

    @property
    def server(self) -> Server:
        return Server(self.label, self.processes[0], self.port)

    def cpu(self) -> float:
        """CPU seconds of the group's processes and their children (a supervisor's workers)."""
        pids = [p.pid for p in self.processes]
        return sum(cpu_seconds(pid) for pid in [*pids, *(c for p in pids for c in children_of(p))])


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` (each SO_REUSEPORT process has its own)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def start_group(
    label: str, kind: str, workers: int, workdir: Path, extra: Sequence[str] = (), name: str = ""
) -> Group:
    port = free_port()
    processes = []
    command = [sys.executable, "-m", "bench.receiver.servers", kind, "--port", str(port)]
    if kind == "receiver":
        # One command: the receiver's supervisor forks its workers.
        log = workdir / f"{label.replace(' ', '-')}.log"
        commands = [[*command, *extra, "--log", str(log), "--workers", str(workers)]]
    else:
        commands = [[*command, "--reuse-port", *extra] for _ in range(workers)]
    for number, argv in enumerate(commands):
        with (workdir / f"{label.replace(' ', '-')}-{number}.out").open("wb") as out:
            processes.append(subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
    group = Group(label, processes, port, name, sockets=workers)
    try:
        _wait_serving(group, workdir)
    except BaseException:
        stop_group(group)
        raise
    return group


def _wait_serving(group: Group, workdir: Path) -> None:
    """Until /readyz answers and every process listens on the port. A receiver opens its socket
    only once its app (the store included) is set up, so that count means all are serving."""
    group.server.wait_ready()
    deadline = time.monotonic() + 60
    while listening_sockets(group.port) < group.sockets:
        if any(p.poll() is not None for p in group.processes):
            raise RuntimeError(f"{group.label}: a process exited; see {workdir}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{group.label}: not every process listening after 60 s")
        time.sleep(0.2)


def served_by_worker(port: int, name: str) -> list[float]:
    """Requests each worker of a receiver group counted, from one scrape of its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    served: dict[int, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "dfm_receiver_requests_total" and labels["source"].endswith(name):
                worker = int(labels["worker"])
                served[worker] = served.get(worker, 0.0) + sample.value
    return [served[w] for w in sorted(served)]


# What drives the closed loop: wrk when it is installed, else the bench's Python generator.
GENERATORS = {
    True: "wrk",
    False: (
        "the Python generator, one process (wrk is not installed: apt-get install wrk). It "
        "shares the two CPUs with the servers and cannot load them as wrk does, so the figures "
        "of the groups with several processes, the no-op's most, are held back by it"
    ),
}


def stop_group(group: Group) -> None:
    """SIGTERM to every process (each drains and flushes), then SIGKILL after 20 s."""
    for process in group.processes:
        Server(group.label, process, group.port).stop()


def run(opts: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)  # unwinds through the cleanup below
    use_wrk = wrk.available() is not None
    workdir = Path(tempfile.mkdtemp(prefix="dfm-workers-"))
    postgres = EmbeddedPostgres(workdir / "pg" / "data")
    body, headers, secret = signed_request(1024)
    options = Options(
        duration=opts.duration, rounds=opts.rounds, warmup=3.0, connections=opts.connections,
        threads=1, paced_duration=opts.paced_duration, paced_fraction=PACED_FRACTION,
        loadgen="wrk" if use_wrk else "python", body_bytes=1024, receiver_log_level="INFO",
        receiver_log=None,
        gc_freeze=False, profile=False, py_spy=None, keep=False,
        paced_connections=PACED_CONNECTIONS,
    )  # fmt: skip
    load = Load(body, headers, workdir, options, use_wrk=use_wrk)
    groups: list[Group] = []
    try:
        postgres.start()
        postgres_pid = postmaster_pid(postgres)
        print(f"PostgreSQL: {asyncio.run(warm_wal(postgres.url, WARM_WAL_MIB))}", flush=True)
        print(f"closed loop: {GENERATORS[use_wrk]}", flush=True)
        print(f"load average before: {loadavg()}", flush=True)
        n = opts.workers
        for label, kind, workers, name in (
            ("no-op x1", "baseline", 1, ""),
            (f"no-op x{n}", "baseline", n, ""),
            ("receiver x1", "receiver", 1, "bench-workers-1"),
            (f"receiver x{n}", "receiver", n, f"bench-workers-{n}"),
        ):
            extra = (
                ["--database-url", postgres.url, "--secret", secret, "--name", name]
                if kind == "receiver"
                else []
            )
            groups.append(start_group(label, kind, workers, workdir, extra, name))

        def postgres_cpu() -> float:
            return sum(cpu_seconds(pid) for pid in [postgres_pid, *children_of(postgres_pid)])

        for group in groups:
            load.closed(group.server, 3.0, collect=False, label=f"warm-{group.port}")
        for round_number in range(1, opts.rounds + 1):
            for group in groups:
                before = group.cpu() + (postgres_cpu() if group.name else 0.0)
                result, acked = load.closed(
                    group.server,
                    opts.duration,
                    collect=bool(group.name),
                    label=group.label.replace(" ", "-"),
                )
                used = group.cpu() + (postgres_cpu() if group.name else 0.0) - before
                group.closed.append((result, used / max(result.ok, 1) * 1e6))
                group.acked += acked
                line = (
                    f"  round {round_number}, {group.label}: {result.rate:,.0f}/s, "
                    f"{result.other} non-200"
                )
                if group.name:
                    rate = result.rate * PACED_FRACTION
                    paced, acked = load.paced(group.server, rate, opts.paced_duration)
                    group.paced.append(paced)
                    group.acked += acked
                    line += (
                        f"; open loop at {rate:,.0f}/s: p99 {paced.p99_ms:.1f} ms, "
                        f"{paced.other} non-200, generator late <= {paced.max_send_lag_ms:.0f} ms"
                    )
                print(f"{line}; load average {loadavg()}", flush=True)
        _report(groups, n)
        for group in groups:
            if group.name and group.sockets > 1:
                served = served_by_worker(group.port, group.name)
                print(
                    f"{group.label}: requests by worker (its /metrics) "
                    f"{' / '.join(f'{n:,.0f}' for n in served)}: how the kernel spread them"
                )
        for group in groups:
            stop_group(group)
        for group in groups:
            if group.name:
                rows, found = asyncio.run(count_stored(postgres.url, group.acked, group.name))
                lost = len(set(group.acked)) - found
                print(
                    f"durability, {group.label}: {len(group.acked):,} acknowledged, {rows:,} "
                    f"rows (the warm-up's included), acknowledged but not stored: {lost}  "
                    f"{'FAIL' if lost else 'PASS'}"
                )
        return 0  # a benchmark reports; only a crash fails it
    finally:
        for group in groups:
            stop_group(group)
        postgres.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


def _report(groups: list[Group], workers: int) -> None:
    print()
    print(
        f"{'group':<14}{'events/s':>10}{'CPU µs/event':>14}{'p99 at 80 %':>13}"
        f"   rounds (events/s; p99 ms)"
    )
    for group in groups:
        rates = [result.rate for result, _ in group.closed]
        cpu = median([us for _, us in group.closed])
        p99 = median([p.p99_ms for p in group.paced]) if group.paced else None
        rounds = " ".join(f"{rate:,.0f}" for rate in rates)
        if group.paced:
            rounds += "; " + " ".join(f"{p.p99_ms:.1f}" for p in group.paced)
        print(
            f"{group.label:<14}{median(rates):>10,.0f}{cpu:>14.0f}"
            f"{'' if p99 is None else f'{p99:.1f} ms':>13}   {rounds}"
        )
    by_label = {group.label: group for group in groups}

    def ratio(a: str, b: str) -> str:
        pairs = zip(by_label[a].closed, by_label[b].closed, strict=True)
        return f"{median([x.rate / y.rate if y.rate else 0.0 for (x, _), (y, _) in pairs]):.2f}"

    print(
        f"receiver/no-op, one process each: {ratio('receiver x1', 'no-op x1')}; with {workers} "
        f"each: {ratio(f'receiver x{workers}', f'no-op x{workers}')}; receiver x{workers} / x1: "
        f"{ratio(f'receiver x{workers}', 'receiver x1')}; no-op x{workers} / x1: "
        f"{ratio(f'no-op x{workers}', 'no-op x1')} (medians of the per-round ratios)"
    )
    print(
        "CPU per event counts the group's processes, and PostgreSQL's for the receivers. Every "
        "process shares the machine's CPUs with PostgreSQL and the generator."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver.workers")
    parser.add_argument("--workers", type=int, default=2, help="processes of the second groups")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of a closed loop")
    parser.add_argument("--paced-duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    opts = parser.parse_args(argv)
    if opts.workers < 2:
        parser.error("--workers: at least 2")
    return run(opts)


if __name__ == "__main__":
    raise SystemExit(main())
