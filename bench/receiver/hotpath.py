"""The receiver's per-request Python path, without sockets: ``python -m bench.receiver.hotpath``.

Runs N signed GitHub deliveries through the receiver's one-pass route as its protocol calls it
(``OnePass.handle``, and the answer's bytes), or with ``--route aiohttp`` through the app as
aiohttp would call it (router, the ``request_context`` middleware, ``receive``; the only route of
checkouts before issue 17's one-pass route), with the real ``Store`` whose database round trip
is replaced by building the statement's arguments (``_insert_args``, the writer's share of the
CPU) and answering at once. No socket, no HTTP parsing or response writing (aiohttp's, the same
in the no-op baseline), no PostgreSQL. It prints CPU microseconds per request.

Because everything runs in one process and one loop, the figure is far steadier on a shared
machine than the socket bench, which makes it the tool for A/B-ing a hot-path change:
``--compare DIR`` runs the same loop against another checkout (``git archive`` of an earlier
commit) in alternating child processes, and prints both medians.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class _Protocol:
    """What a body's StreamReader asks of its connection (a Mock would cost more than the path)."""

    _reading_paused = False
    ssl_context = None
    peername = ("127.0.0.1", 40000)
    sockname = ("127.0.0.1", 8080)
    transport = None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self, resume_parser: bool = True) -> None:
        return None


async def _measure(requests: int, body_bytes: int, route: str) -> float:
    from aiohttp import streams, web
    from aiohttp.http import HttpVersion11, RawRequestMessage
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    from bench.receiver.servers import SOURCE_NAME, SOURCE_NAMESPACE, SOURCE_PATH
    from webhook_server import logs, store
    from webhook_server.app import STORE, create_app, receive, request_context
    from webhook_server.config import (
        DatabaseConfig,
        LimitsConfig,
        Provider,
        ReceiverConfig,
        SecretSource,
        SourceConfig,
        VerificationConfig,
    )

    # Spelled out rather than servers.bench_source: with --compare this runs against another
    # checkout's bench package, which may not have it.
    secret = "hotpath-secret"
    logs.configure("INFO", stream=open(os.devnull, "w"))  # noqa: SIM115, ASYNC230 - once
    source = SourceConfig(
        namespace=SOURCE_NAMESPACE,
        name=SOURCE_NAME,
        provider=Provider.GITHUB,
        path=SOURCE_PATH,
        verification=VerificationConfig(secrets=[SecretSource(value=secret)]),
        limits=LimitsConfig(requests_per_second=1e9, burst=1_000_000_000),
    )
    config = ReceiverConfig(sources=[source], database=DatabaseConfig(url="postgresql://x/y"))
    app = create_app(config)
    app.freeze()
    writer: Any = app[STORE]

    # The writer's CPU for a batch, without the round trip. Checkouts before the webhook ids
    # were derived for forwarded sources only take the events alone.
    forwarded: tuple[Any, ...] = (
        (frozenset(),) if len(inspect.signature(store._insert_args).parameters) > 1 else ()
    )

    async def insert(events: list[Any]) -> tuple[set[Any], set[Any]]:
        store._insert_args(events, *forwarded)
        return {(e.source, e.subject, e.event_id) for e in events}, set()

    writer._insert = insert
    writer._ready.set()
    writer_task = asyncio.create_task(writer._writer_loop())
    body = json.dumps({"zen": "x", "padding": "x" * body_bytes}).encode()[:body_bytes]
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    protocol = _Protocol()
    url = URL(SOURCE_PATH)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def request(number: int) -> Any:
        """A parsed request as aiohttp's protocol hands it to the app (no Mock: costlier than
        the path being measured)."""
        payload = streams.StreamReader(protocol, 2**16, loop=loop)  # type: ignore[arg-type]
        payload.feed_data(body)
        payload.feed_eof()
        headers = CIMultiDictProxy(
            CIMultiDict(
                {
                    "Host": "127.0.0.1:8080",
                    "User-Agent": "GitHub-Hookshot/044aadd",
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    "Accept": "*/*",
                    "X-GitHub-Event": "push",
                    "X-GitHub-Delivery": f"hotpath-{number}",
                    "X-GitHub-Hook-ID": "1",
                    "X-Hub-Signature-256": signature,
                }
            )
        )
        raw = tuple((k.encode(), v.encode()) for k, v in headers.items())
        message = RawRequestMessage(
            "POST", SOURCE_PATH, HttpVersion11, headers, raw, False, None, False, False, url
        )
        return web.Request(message, payload, protocol, None, task, loop)  # type: ignore[arg-type]

    async def one(req: Any) -> None:
        match = await app.router.resolve(req)
        match.add_app(app)
        req._match_info = match
        response = await request_context(req, receive)
        assert response.status == 200, response.status

    if route == "one-pass":
        return await _measure_one_pass(app, request, requests)

    # As under load: 64 requests in flight at once, so commits are batched. Making the mocked
    # requests (far costlier than the path itself) is not counted.
    spent = 0.0
    for first in range(0, requests, 64):
        batch = [request(n) for n in range(first, min(first + 64, requests))]
        started = time.process_time()
        await asyncio.gather(*(one(r) for r in batch))
        spent += time.process_time() - started
    writer_task.cancel()
    return spent / requests * 1e6


async def _measure_one_pass(app: Any, request: Callable[[int], Any], requests: int) -> float:
    """The same requests through the one-pass route (``OnePass.handle``, as the receiver's
    protocol calls it), answered through a reply that builds the response bytes."""
    from webhook_server import wire
    from webhook_server.app import OnePass

    route = OnePass(app)
    from bench.receiver.servers import SOURCE_PATH

    found = route.route(SOURCE_PATH)
    assert found is not None
    runtime, query = found
    loop = asyncio.get_running_loop()

    class Batch:
        """64 requests in flight at once, as in the aiohttp measure; done once all answered."""

        def __init__(self, size: int) -> None:
            self.left = size
            self.answered = loop.create_future()

        def reply(self, status: int, body: bytes, content_type: bytes, headers: Any) -> None:
            assert status == 200, status
            wire.response(status, body, content_type, headers)
            self.left -= 1
            if not self.left:
                self.answered.set_result(None)

    spent = 0.0
    for first in range(0, requests, 64):
        requests_ = [request(n) for n in range(first, min(first + 64, requests))]
        batch = Batch(len(requests_))
        started = time.process_time()
        for req in requests_:
            route.handle(runtime, req.headers, req.content.read_nowait(-1), query, batch.reply)
        await batch.answered
        spent += time.process_time() - started
    return spent / requests * 1e6


def _child(checkout: Path, requests: int, body_bytes: int, route: str) -> float:
    """This file run as a script in a child whose ``sys.path`` puts ``checkout`` first (before
    the editable install), so its ``webhook_server`` is the one measured."""
    env = os.environ | {"PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--route", route,
         "--requests", str(requests), "--body-bytes", str(body_bytes)],
        cwd=checkout, env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return float(out.split()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver.hotpath")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument(
        "--compare", action="append", default=[], metavar="DIR", help="another checkout; repeatable"
    )
    parser.add_argument(
        "--route",
        choices=["one-pass", "aiohttp"],
        default="one-pass",
        help="the receiver's one-pass route (what the bench's requests take) or aiohttp's web "
        "layer (router, middleware, receive; the only route of checkouts before it)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(f"{asyncio.run(_measure(args.requests, args.body_bytes, args.route)):.3f}")
        return 0
    checkouts = [("this checkout", REPO)] + [(Path(d).name, Path(d)) for d in args.compare]
    figures: dict[str, list[float]] = {name: [] for name, _ in checkouts}
    for _ in range(args.rounds):
        for name, checkout in checkouts:  # alternating, so a busy spell hits both
            figures[name].append(_child(checkout, args.requests, args.body_bytes, args.route))
    path = (
        "one-pass route (OnePass.handle and the answer's bytes"
        if args.route == "one-pass"
        else "aiohttp's web layer (router, middleware, receive"
    )
    print(
        f"app path: {path}; the store writer's arguments; no socket, no parsing, no "
        f"database), {args.requests:,} requests x {args.rounds} rounds, CPU us per request:"
    )
    for name, values in figures.items():
        print(
            f"  {name:<16} median {statistics.median(values):6.1f}   "
            f"rounds {' '.join(f'{v:.1f}' for v in values)}"
        )
    mine = figures["this checkout"]
    for name, values in list(figures.items())[1:]:
        ratios = [a / b for a, b in zip(mine, values, strict=True)]
        print(f"  this / {name}: median {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
