"""The Python load generator, run in its own process by the benchmark.

A small HTTP/1.1 keep-alive client on bare asyncio protocols: the request bytes are prebuilt
(only the delivery id changes), a response is parsed just far enough to get its status and
length. An aiohttp ``ClientSession`` costs several times more CPU per request, and on a 2-core
machine every cycle the generator burns is taken from the server under test.

Two shapes of load over ``--connections`` connections, one request in flight on each:

closed loop (``--mode closed``)
    a connection sends its next request as soon as the previous answer arrived: the maximum
    rate the server sustains at that concurrency. Used when wrk is not installed.

open loop (``--mode open --rate R``)
    request *i* is due at ``start + i / R`` whether or not earlier ones were answered; it waits
    for a free connection when all are busy, and its latency counts from its due time (no
    coordinated omission: a stalled server shows up as latency, not as a lower request rate).

Every request carries the same signed body and a unique delivery id header, so each one is a
new event for the receiver. The ids answered 200 are written to ``--acked`` (one a line) for the
durability check; the summary is written as JSON to ``--result``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    """One measured run, whichever generator produced it."""

    generator: str
    mode: str
    connections: int
    duration_s: float
    ok: int  # 200 answers completed inside the measured window
    other: int  # non-200 answers and transport errors inside the window
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    acked_total: int  # every 200 answer of the run, the drained ones included
    offered_rate: float = 0.0  # open loop only
    max_send_lag_ms: float = 0.0  # open loop only: how far the generator fell behind schedule
    statuses: dict[str, int] = field(default_factory=dict)
    p99_by_second_ms: list[float] = field(default_factory=list)  # by send (or due) second

    @property
    def rate(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        return cls(**json.loads(text))


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(pct / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class Spec:
    url: str
    body: bytes
    headers: dict[str, str]
    id_header: str
    id_prefix: str
    # Delivery ids as random GUIDs (GitHub's own form) instead of ``<prefix>-<n>``: new keys land
    # all over the store's indexes, as a provider's do, instead of next to each other.
    random_ids: bool = False


class Request:
    """The prebuilt bytes of the signed request; ``render(id)`` adds the delivery id."""

    def __init__(self, spec: Spec) -> None:
        parts = urlsplit(spec.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in spec.headers.items()]
        lines += [f"Content-Length: {len(spec.body)}", f"{spec.id_header}: "]
        self._head = "\r\n".join(lines).encode("latin-1")
        self._tail = b"\r\n\r\n" + spec.body

    def render(self, event_id: str) -> bytes:
        return self._head + event_id.encode("ascii") + self._tail


Done = Callable[["Connection", int], None]


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, on_done: Done) -> None:
        self.on_done = on_done
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.event_id = ""
        self.started = 0.0  # perf_counter when sent (closed loop) or due (open loop)
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, payload: bytes, event_id: str, started: float) -> None:
        assert self.transport is not None
        assert not self.busy
        self.busy = True
        self.event_id = event_id
        self.started = started
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._fail()
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        self.busy = False
        self.on_done(self, status)

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self.on_done(self, -1)
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)  # send (or due) time of each latency
    statuses: Counter[str] = field(default_factory=Counter)
    acked: list[str] = field(default_factory=list)


def summarize(
    mode: str, connections: int, duration: float, window: Tally, acked: int
) -> LoadResult:
    lat = sorted(window.latencies)
    ok = window.statuses.get("200", 0)
    return LoadResult(
        generator="python",
        mode=mode,
        connections=connections,
        duration_s=duration,
        ok=ok,
        other=sum(window.statuses.values()) - ok,
        p50_ms=percentile(lat, 50) * 1000,
        p90_ms=percentile(lat, 90) * 1000,
        p99_ms=percentile(lat, 99) * 1000,
        max_ms=(lat[-1] * 1000) if lat else 0.0,
        acked_total=acked,
        statuses=dict(window.statuses),
        p99_by_second_ms=by_second(window),
    )


def by_second(window: Tally) -> list[float]:
    """p99 of the requests sent (or due) in each second of the run: when latency went up."""
    seconds: dict[int, list[float]] = {}
    for started, latency in zip(window.started, window.latencies, strict=True):
        seconds.setdefault(max(0, int(started)), []).append(latency)
    return [
        percentile(sorted(seconds.get(s, [])), 99) * 1000
        for s in range(max(seconds, default=-1) + 1)
    ]


class Generator:
    def __init__(self, spec: Spec, connections: int) -> None:
        self.spec = spec
        self.request = Request(spec)
        self.count = connections
        self.connections: list[Connection] = []
        self.tally = Tally()  # everything: the acked ids
        self.window = Tally()  # what is reported
        self.sent = 0
        self.all_done = asyncio.Event()
        self.in_flight = 0
        self.on_free: Callable[[Connection], None] = lambda conn: None
        self.measure_from = 0.0
        self.stop_at = float("inf")
        self.max_lag = 0.0

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.count):
            _, conn = await loop.create_connection(
                lambda: Connection(self._done), self.request.host, self.request.port
            )
            self.connections.append(conn)

    async def close(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.gather(*(conn.closed for conn in self.connections))

    def send(self, conn: Connection, started: float) -> None:
        if conn.transport is None:  # closed by the server: counted as an error, not reused
            self.window.statuses["-1"] += 1
            return
        self.sent += 1
        event_id = (
            str(uuid.uuid4()) if self.spec.random_ids else f"{self.spec.id_prefix}-{self.sent}"
        )
        self.in_flight += 1
        conn.send(self.request.render(event_id), event_id, started)

    def _done(self, conn: Connection, status: int) -> None:
        now = time.perf_counter()
        self.in_flight -= 1
        if status == 200:
            self.tally.acked.append(conn.event_id)
        # A request counts when it completes inside the window; the ones still in flight at
        # the end are drained (acknowledged, stored) but not counted.
        if self.measure_from <= now <= self.stop_at:
            self.window.latencies.append(now - conn.started)
            self.window.started.append(conn.started - self.measure_from)
            self.window.statuses[str(status)] += 1
        if conn.transport is not None:
            self.on_free(conn)
        if self.in_flight == 0:
            self.all_done.set()

    async def drain(self) -> None:
        if self.in_flight:
            self.all_done.clear()
            await self.all_done.wait()


async def closed_loop(spec: Spec, connections: int, warmup: float, duration: float) -> Generator:
    """Every connection sends back to back; only the measured window counts."""
    gen = Generator(spec, connections)
    await gen.connect()
    begin = time.perf_counter()
    gen.measure_from = begin + warmup
    gen.stop_at = gen.measure_from + duration

    def next_request(conn: Connection) -> None:
        now = time.perf_counter()
        if now < gen.stop_at:
            gen.send(conn, now)

    gen.on_free = next_request
    for conn in gen.connections:
        gen.send(conn, begin)
    await asyncio.sleep(warmup + duration)
    await gen.drain()
    await gen.close()
    return gen


async def open_loop(spec: Spec, connections: int, rate: float, duration: float) -> Generator:
    """Requests due at a fixed rate; latency from the due time to the answer."""
    gen = Generator(spec, connections)
    await gen.connect()
    idle: deque[Connection] = deque(gen.connections)
    backlog: deque[float] = deque()  # due times of requests waiting for a free connection

    def free(conn: Connection) -> None:
        if backlog:
            gen.send(conn, backlog.popleft())
        else:
            idle.append(conn)

    gen.on_free = free
    total = max(1, int(rate * duration))
    begin = time.perf_counter() + 0.01
    gen.measure_from = begin
    number = 0
    while number < total:
        now = time.perf_counter()
        due = begin + number / rate
        if due > now:
            await asyncio.sleep(due - now)
            continue
        gen.max_lag = max(gen.max_lag, now - due)
        # Everything due by now goes out (the event loop wakes up about once a millisecond).
        while number < total and begin + number / rate <= now:
            due = begin + number / rate
            if idle:
                gen.send(idle.popleft(), due)
            else:
                backlog.append(due)
            number += 1
    await gen.drain()  # a backlog is only ever waiting on requests in flight
    await gen.close()
    return gen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.receiver.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--headers", required=True, help="JSON file: the signed static headers")
    parser.add_argument("--id-header", required=True)
    parser.add_argument("--id-prefix", required=True)
    parser.add_argument("--mode", choices=["closed", "open"], default="closed")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--result", required=True)
    parser.add_argument("--acked", default="")
    parser.add_argument("--random-ids", action="store_true", help="GUID delivery ids")
    args = parser.parse_args(argv)
    spec = Spec(
        url=args.url,
        body=Path(args.body).read_bytes(),
        headers=json.loads(Path(args.headers).read_text()),
        id_header=args.id_header,
        id_prefix=args.id_prefix,
        random_ids=args.random_ids,
    )
    if args.mode == "closed":
        gen = asyncio.run(closed_loop(spec, args.connections, args.warmup, args.duration))
        result = summarize(
            "closed", args.connections, args.duration, gen.window, len(gen.tally.acked)
        )
    else:
        if args.rate <= 0:
            parser.error("--mode open needs --rate")
        gen = asyncio.run(open_loop(spec, args.connections, args.rate, args.duration))
        result = summarize(
            "open", args.connections, args.duration, gen.window, len(gen.tally.acked)
        )
        result.offered_rate = args.rate
        result.max_send_lag_ms = gen.max_lag * 1000
    Path(args.result).write_text(result.to_json())
    if args.acked:
        Path(args.acked).write_text("".join(f"{i}\n" for i in gen.tally.acked))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
