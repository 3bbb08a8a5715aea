"""The two servers under test, each run in its own process by the benchmark.

``python -m bench.receiver.servers baseline --port P --path /hooks/...``
    a no-op aiohttp app: reads the body, answers 200 JSON. Same aiohttp, same ``web.run_app``,
    same single process and event loop as the receiver.

``python -m bench.receiver.servers floor-hmac --port P --secret S``
    the no-op app plus the GitHub signature check (HMAC-SHA256 of the body, compared in constant
    time): the floor of a verifying receiver.

``python -m bench.receiver.servers floor-commit --port P --secret S --database-url U``
    that plus a durable store reduced to its minimum: each verified body is queued, one writer
    inserts whatever is queued in one statement (one commit per batch of N events, N the queue's
    depth, up to two batches in flight) into a bare table keyed by the delivery id, and the 200
    goes out after the commit. No dedup keys, headers, partitions, metrics or log: the floor of a
    receiver that keeps the "2xx after commit" contract on this database.

``python -m bench.receiver.servers receiver --port P --database-url U --secret S --log F``
    the real receiver (``create_app`` via ``webhook_server.server.run``) with one GitHub source:
    real signature verification, real durable batched store, JSON logs (one access log line a
    request) written to a file. With ``--forward-url URL --forward-secret WHSEC`` the source
    forwards every stored event there (bench/forward), and ``--name`` tells the sources apart.
    With ``--trace-endpoint URL`` it traces every request (``OTEL_TRACES_SAMPLER=always_on``;
    ``--trace-ratio R`` samples that share instead) and exports the spans over OTLP/HTTP there,
    as ``dfm receiver`` does when ``OTEL_*`` say so.

``python -m bench.receiver.servers collector --port P``
    a no-op OTLP/HTTP endpoint: answers every ``POST /v1/traces`` with an empty
    ExportTraceServiceResponse without decoding it (as cheap as a collector can be), and counts
    requests and bytes at ``GET /stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

HOST = "127.0.0.1"
SOURCE_NAMESPACE = "default"
SOURCE_NAME = "bench"
SOURCE_PATH = f"/hooks/{SOURCE_NAMESPACE}/{SOURCE_NAME}"


@contextmanager
def gc_pauses(out: str) -> Iterator[None]:
    """Record the garbage collector's pauses per generation; written to ``out`` at exit."""
    if not out:
        yield
        return
    count = [0, 0, 0]
    total = [0.0, 0.0, 0.0]
    longest = [0.0, 0.0, 0.0]
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - started[0]
        generation = info["generation"]
        count[generation] += 1
        total[generation] += pause
        longest[generation] = max(longest[generation], pause)

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)
        Path(out).write_text(json.dumps({"count": count, "total_s": total, "max_s": longest}))


def baseline_app(path: str) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post(path, receive)
    app.router.add_get("/readyz", ready)
    return app


def run_baseline(port: int, path: str) -> None:
    web.run_app(baseline_app(path), host=HOST, port=port, access_log=None, print=None)


def collector_app() -> web.Application:
    seen = {"requests": 0, "bytes": 0}

    async def export(request: web.Request) -> web.Response:
        seen["bytes"] += len(await request.read())
        seen["requests"] += 1
        # An empty ExportTraceServiceResponse is zero bytes of protobuf.
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(seen)

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/stats", stats)
    app.router.add_get("/readyz", stats)
    return app


def run_collector(port: int) -> None:
    web.run_app(collector_app(), host=HOST, port=port, access_log=None, print=None)


def _github_verifier(secret: str) -> Callable[[web.Request, bytes], bool]:
    key = secret.encode()

    def verified(request: web.Request, body: bytes) -> bool:
        sent = request.headers.get("X-Hub-Signature-256", "")
        expected = "sha256=" + hmac.digest(key, body, "sha256").hex()
        return hmac.compare_digest(sent, expected)

    return verified


def floor_hmac_app(path: str, secret: str) -> web.Application:
    verified = _github_verifier(secret)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not verified(request, body):
            return web.json_response({"status": "unauthorized"}, status=401)
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post(path, receive)
    app.router.add_get("/readyz", ready)
    return app


FLOOR_TABLE = "bench_floor_events"


class FloorWriter:
    """Group commit at its simplest: whatever is queued when a slot is free goes in one INSERT
    (its own transaction); each request's future is resolved once that commit returned."""

    def __init__(self, pool: asyncpg.Pool, in_flight: int = 2) -> None:
        self.pool = pool
        self.queue: asyncio.Queue[tuple[str, bytes, asyncio.Future[None]]] = asyncio.Queue()
        self.slots = asyncio.Semaphore(in_flight)
        self.batches = 0
        self.events = 0

    async def submit(self, event_id: str, body: bytes) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((event_id, body, future))
        await future

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        while True:
            batch = [await self.queue.get()]
            await self.slots.acquire()
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            task = asyncio.create_task(self._commit(batch))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _commit(self, batch: list[tuple[str, bytes, asyncio.Future[None]]]) -> None:
        try:
            await self.pool.execute(
                f"INSERT INTO {FLOOR_TABLE} (event_id, payload) "  # noqa: S608 - a constant
                "SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT DO NOTHING",
                [e for e, _, _ in batch],
                [b for _, b, _ in batch],
            )
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self.batches += 1
            self.events += len(batch)
            for _, _, future in batch:
                if not future.done():
                    future.set_result(None)
        finally:
            self.slots.release()


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


def floor_commit_app(path: str, secret: str, database_url: str) -> web.Application:
    verified = _github_verifier(secret)
    writer_key = web.AppKey("writer", FloorWriter)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not verified(request, body):
            return web.json_response({"status": "unauthorized"}, status=401)
        event_id = request.headers.get("X-GitHub-Delivery", "")
        try:
            await request.app[writer_key].submit(event_id, body)
        except Exception:
            return web.json_response({"status": "unavailable"}, status=503)
        return web.json_response({"status": "stored", "eventId": event_id})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stats(request: web.Request) -> web.Response:
        writer = request.app[writer_key]
        return web.json_response({"batches": writer.batches, "events": writer.events})

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # No reset round trip when a connection is given back (as the receiver's writer).
        pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4, reset=_no_reset)
        assert pool is not None
        await pool.execute(
            f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} "
            "(event_id text PRIMARY KEY, payload bytea NOT NULL)"
        )
        writer = app[writer_key] = FloorWriter(pool)
        task = asyncio.create_task(writer.run())
        yield
        task.cancel()
        await pool.close()

    app = web.Application()
    app.router.add_post(path, receive)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/stats", stats)
    app.cleanup_ctx.append(lifecycle)
    return app


def bench_source(
    secret: str, *, name: str = SOURCE_NAME, path: str = SOURCE_PATH, forward: Any = None
) -> Any:
    """The bench's GitHub source (a ``SourceConfig``), with the rate limiter out of the way: it
    is not what is measured, so every request goes through."""
    from webhook_server.config import (
        LimitsConfig,
        Provider,
        SecretSource,
        SourceConfig,
        VerificationConfig,
    )

    return SourceConfig(
        namespace=SOURCE_NAMESPACE,
        name=name,
        provider=Provider.GITHUB,
        path=path,
        verification=VerificationConfig(secrets=[SecretSource(value=secret)]),
        limits=LimitsConfig(requests_per_second=1e9, burst=1_000_000_000),
        forward=forward,
    )


def run_receiver(
    port: int,
    path: str,
    database_url: str,
    secret: str,
    log_file: str,
    log_level: str = "INFO",
    *,
    name: str = SOURCE_NAME,
    forward_url: str = "",
    forward_secret: str = "",
    trace_endpoint: str = "",
    trace_ratio: float = 1.0,
    one_pass: bool = True,
    workers: int = 1,
) -> None:
    import os

    from webhook_server import logs, server, tracing
    from webhook_server.config import DatabaseConfig, ForwardConfig, ReceiverConfig, SecretSource

    # The access log goes to this file through its buffer (flushed every second), as to stdout.
    logs.configure(log_level, stream=open(log_file, "a"))  # noqa: SIM115 - lives with the process
    forward = None
    if forward_url:
        forward = ForwardConfig(
            url=forward_url, signing_secrets=[SecretSource(value=forward_secret)]
        )
    source = bench_source(secret, name=name, path=path, forward=forward)
    config = ReceiverConfig(
        host=HOST,
        port=port,
        sources=[source],
        database=DatabaseConfig(url=database_url),
        shutdown_timeout_seconds=10.0,
        workers=workers,
    )
    if trace_endpoint:
        os.environ.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=trace_endpoint,
            OTEL_TRACES_SAMPLER="always_on" if trace_ratio >= 1 else "traceidratio",
            OTEL_TRACES_SAMPLER_ARG=str(trace_ratio),
            OTEL_SERVICE_NAME="dfm-receiver-bench",
        )
        logs.with_trace_ids(tracing.current_ids)

    def make_tracing() -> Any:
        return tracing.from_env("dfm-receiver") if trace_endpoint else None

    if workers > 1:
        # The receiver's own supervisor, as `dfm receiver` runs it (webhook_server.workers).
        code = server.run_workers(config, tracing=make_tracing, one_pass=one_pass)
        if code:
            raise SystemExit(code)
        return
    traced = make_tracing()
    try:
        server.run(config, tracing=traced, one_pass=one_pass)
    finally:
        if traced is not None:
            traced.shutdown()


def _bind_with_reuse_port() -> None:
    """Every listening socket of this process with SO_REUSEPORT, for the no-op baseline (the
    receiver has its own option, ``workers``): the kernel then spreads the connections over
    every process bound to the port."""
    create_server = asyncio.BaseEventLoop.create_server

    async def reuse_port(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["reuse_port"] = True
        return await create_server(self, *args, **kwargs)

    asyncio.BaseEventLoop.create_server = reuse_port  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.receiver.servers")
    parser.add_argument(
        "kind", choices=["baseline", "floor-hmac", "floor-commit", "receiver", "collector"]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default=SOURCE_PATH)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--secret", default="")
    parser.add_argument("--log", default="")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--name", default=SOURCE_NAME, help="the source's name")
    parser.add_argument("--forward-url", default="", help="forward every event there")
    parser.add_argument("--forward-secret", default="", help="the whsec_ signing secret")
    parser.add_argument("--trace-endpoint", default="", help="trace requests, export there")
    parser.add_argument("--trace-ratio", type=float, default=1.0, help="the share sampled")
    parser.add_argument("--gc-stats", default="", help="write GC pause statistics here at exit")
    parser.add_argument(
        "--no-one-pass",
        action="store_true",
        help="every request through aiohttp's web layer (the receiver without its one-pass route)",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="experiment: gc.freeze() once everything is imported",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT, so that several processes share the port (the no-op's "
        "processes in bench.receiver.workers; the receiver has --workers)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="receiver: processes sharing the port, under the receiver's supervisor",
    )
    args = parser.parse_args(argv)
    if args.reuse_port:
        _bind_with_reuse_port()
    if args.gc_freeze:
        import webhook_server.app  # noqa: F401 - imported for its side effect on the heap

        gc.collect()
        gc.freeze()
    with gc_pauses(args.gc_stats):
        if args.kind == "baseline":
            run_baseline(args.port, args.path)
        elif args.kind == "collector":
            run_collector(args.port)
        elif args.kind == "floor-hmac":
            web.run_app(floor_hmac_app(args.path, args.secret), host=HOST, port=args.port,
                        access_log=None, print=None)  # fmt: skip
        elif args.kind == "floor-commit":
            app = floor_commit_app(args.path, args.secret, args.database_url)
            web.run_app(app, host=HOST, port=args.port, access_log=None, print=None)
        else:
            run_receiver(
                args.port,
                args.path,
                args.database_url,
                args.secret,
                args.log,
                args.log_level,
                name=args.name,
                forward_url=args.forward_url,
                forward_secret=args.forward_secret,
                trace_endpoint=args.trace_endpoint,
                trace_ratio=args.trace_ratio,
                one_pass=not args.no_one_pass,
                workers=args.workers,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
