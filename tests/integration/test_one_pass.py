"""The receiver's one-pass route (``webhook_server.app.OnePass``, taken by the protocol in
``webhook_server.server``) against the real server, raw sockets and a real PostgreSQL.

The route answers the usual delivery without aiohttp's request, middleware and response. What a
client, an operator's dashboard or a reader of the logs sees must not change: the same requests
sent through the route and through aiohttp's web layer (``start(one_pass=False)``) get the same
answers, counts and access-log lines; and the protocol's guarantees (one request at a time,
keep-alive and its deadline, shutdown, the connection cap's idea of idle) hold on the route.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry.sdk.trace import TracerProvider

from tests.integration.conftest import Serve
from webhook_server import logs
from webhook_server.app import SOURCES_BY_PATH, STORE, OnePass, create_app
from webhook_server.config import (
    AuthConfig,
    CorsConfig,
    DatabaseConfig,
    LimitsConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    ServerConfig,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.server import Listener, start
from webhook_server.tracing import Tracing
from webhook_server.verify import SIGNERS

SECRET = "one-pass-secret"
ORIGIN = "https://dashboard.example"


def github(namespace: str, **limits: Any) -> SourceConfig:
    return SourceConfig(
        namespace=namespace,
        name="gh",
        provider=Provider.GITHUB,
        path=f"/hooks/{namespace}/gh",
        verification=VerificationConfig(secrets=[SecretSource(value=SECRET)]),
        limits=LimitsConfig(max_body_bytes=4096, **limits),
        cors=CorsConfig(allowed_origins=[ORIGIN]),
    )


def signed(body: bytes, delivery: str) -> dict[str, str]:
    headers = SIGNERS[Provider.GITHUB](
        body, SECRET.encode(), VerificationConfig(), time.time(), delivery
    )
    return headers | {"Content-Type": "application/json"}


def request_bytes(
    path: str, body: bytes, headers: dict[str, str], *, close: bool = False, version: str = "1.1"
) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST {path} HTTP/{version}\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n"
        f"{connection}\r\n"
    ).encode() + body


class Answer:
    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader, seconds: float = 30) -> Answer:
    """One answer off a connection (which may stay open)."""
    async with asyncio.timeout(seconds):
        head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
        while head.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue) has no body
            head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        return Answer(head, await reader.readexactly(length))


async def until(done: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests the one-pass route took."""
    paths: list[str] = []
    handle = OnePass.handle

    def counted(self: OnePass, runtime: Any, *args: Any) -> None:
        paths.append(runtime.config.route)
        handle(self, runtime, *args)

    monkeypatch.setattr(OnePass, "handle", counted)
    return paths


@pytest.fixture
def log_lines() -> Any:
    stream = io.StringIO()
    logs.configure(stream=stream)
    yield stream
    logs.configure()


# Each case: a name, a body and its headers (the same for both paths), chosen to reach every
# answer the route gives: stored, duplicate, each refusal before the store, the source's rate
# limit, CORS and the caller's request id.
def cases() -> list[tuple[str, bytes, dict[str, str]]]:
    body = b'{"action":"opened","n":1}'
    other = b'{"action":"opened","n":2}'
    forged = signed(other, "eq-forged") | {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    large = b'{"pad":"' + b"x" * 5000 + b'"}'
    return [
        ("stored", body, signed(body, "eq-1") | {"X-Request-Id": "req-stored"}),
        ("duplicate", body, signed(body, "eq-1") | {"X-Request-Id": "req-dup"}),
        ("cors", other, signed(other, "eq-2") | {"X-Request-Id": "req-cors", "Origin": ORIGIN}),
        ("forged", other, forged | {"X-Request-Id": "req-forged"}),
        ("unsigned", other, {"Content-Type": "application/json", "X-Request-Id": "req-unsigned"}),
        ("gzip", body, signed(body, "eq-3") | {"Content-Encoding": "gzip", "X-Request-Id": "r-gz"}),
        ("too large", large, signed(large, "eq-4") | {"X-Request-Id": "req-large"}),
        ("long id", body, signed(body, "e" * 300) | {"X-Request-Id": "req-long-id"}),
        ("rate limited", other, signed(other, "eq-5") | {"X-Request-Id": "req-limited"}),
    ]


def metric_lines(text: str, namespace: str) -> list[str]:
    """The request and failure counters, with the source's namespace taken out."""
    wanted = ("dfm_receiver_requests_total{", "dfm_receiver_signature_failures_total{")
    wanted += ("dfm_receiver_duplicates_total{", "dfm_receiver_request_duration_seconds_count{")
    return sorted(
        line.replace(f'"{namespace}/gh"', '"NS/gh"')
        for line in text.splitlines()
        if line.startswith(wanted)
    )


async def run_cases(listener: Listener, namespace: str) -> list[tuple[str, Answer]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    answers = []
    try:
        for name, body, headers in cases():
            writer.write(request_bytes(f"/hooks/{namespace}/gh", body, headers))
            answer = await read_answer(reader)
            answers.append((name, answer))
            if answer.headers.get("connection") == "close":
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    finally:
        writer.close()
    return answers


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    return raw.decode()


async def test_the_route_answers_counts_and_logs_exactly_as_aiohttp_does(
    serve: Serve, taken: list[str], log_lines: io.StringIO, db: asyncpg.Connection
) -> None:
    # The source's rate limit lets the four authentic deliveries before "rate limited" through
    # (stored, duplicate, cors, long id) and refuses it; an unauthentic one never spends it.
    limits = {"requests_per_second": 0.001, "burst": 4}
    fast, _ = await serve(github("a", **limits))
    slow, _ = await serve(github("b", **limits), one_pass=False)

    through_route = await run_cases(fast, "a")
    assert len(taken) == len(cases()), "every case should have taken the one-pass route"
    through_aiohttp = await run_cases(slow, "b")
    assert len(taken) == len(cases()), "one_pass=False must leave every request to aiohttp"

    statuses = {name: answer.status for name, answer in through_route}
    assert statuses == {
        "stored": 200,
        "duplicate": 200,
        "cors": 200,
        "forged": 401,
        "unsigned": 401,
        "gzip": 415,
        "too large": 413,
        "long id": 400,
        "rate limited": 429,
    }
    for (name, route), (_, aiohttp_answer) in zip(through_route, through_aiohttp, strict=True):
        assert route.status_line == aiohttp_answer.status_line, name
        assert route.json() == aiohttp_answer.json(), name
        assert route.body == aiohttp_answer.body, name
        same = {k: v for k, v in route.headers.items() if k != "date"}
        assert same == {k: v for k, v in aiohttp_answer.headers.items() if k != "date"}, name
    assert through_route[0][1].json() == {
        "status": "stored",
        "eventId": "eq-1",
        "requestId": "req-stored",
    }
    cors = dict(through_route)["cors"]
    assert cors.headers["access-control-allow-origin"] == ORIGIN
    assert dict(through_route)["rate limited"].headers["retry-after"].isdigit()

    assert metric_lines(await scrape(fast.port), "a") == metric_lines(await scrape(slow.port), "b")

    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    access = [line for line in lines if line.get("event") == "request"]
    per_source: dict[str, list[dict[str, Any]]] = {"a/gh": [], "b/gh": []}
    for line in access:
        if line["source"] in per_source:
            line.pop("ts"), line.pop("latency_ms")
            per_source[line.pop("source")].append(line)
    assert per_source["a/gh"] == per_source["b/gh"]
    assert len(per_source["a/gh"]) == len(cases())
    stored = await db.fetch("SELECT source, event_id FROM webhook_events ORDER BY source, event_id")
    assert [(r["source"], r["event_id"]) for r in stored] == [
        ("a/gh", "eq-1"),
        ("a/gh", "eq-2"),
        ("b/gh", "eq-1"),
        ("b/gh", "eq-2"),
    ]


# -- the protocol's guarantees on the route ------------------------------------------------------


class Held:
    """The store's commits answered only once the test says so (they commit meanwhile): a
    request the route took stays in flight for as long as a test needs."""

    def __init__(self, app: Any) -> None:
        self.gate = asyncio.Event()
        self.taken = 0
        self._tasks: list[asyncio.Task[None]] = []
        store = app[STORE]
        enqueue = store.enqueue

        def held(event: Any, then: Any = None) -> asyncio.Future[bool]:
            committed = enqueue(event)
            answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            if then is not None:
                answer.add_done_callback(then)
            self._tasks.append(asyncio.create_task(self._release(committed, answer)))
            self.taken += 1
            return answer

        store.enqueue = held

    async def _release(self, committed: asyncio.Future[bool], answer: asyncio.Future[bool]) -> None:
        await self.gate.wait()
        try:
            answer.set_result(await committed)
        except Exception as exc:
            answer.set_exception(exc)


def only_connection(listener: Listener) -> Any:
    connections = listener.guard.connections()
    assert len(connections) == 1
    return connections[0]


async def count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM webhook_events"))


PATH = "/hooks/k/gh"


def delivery(n: int, **options: Any) -> bytes:
    body = b'{"n":%d}' % n
    return request_bytes(PATH, body, signed(body, f"k-{n}"), **options)


async def delivery_in_flight(serve: Serve, **options: Any) -> tuple[Listener, Any, Held, Any, Any]:
    """A receiver (``serve``'s ``options``) whose route took one delivery on a kept-alive
    connection and holds the answer to its commit: the listener, app, hold, and the client's
    reader and writer."""
    listener, app = await serve(github("k"), **options)
    held = Held(app)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(delivery(1))
    await until(lambda: held.taken == 1, "the delivery to reach the store")
    return listener, app, held, reader, writer


async def test_a_kept_alive_connection_is_busy_while_its_delivery_commits_and_idle_after(
    serve: Serve, taken: list[str], db: asyncpg.Connection
) -> None:
    listener, _app, held, reader, writer = await delivery_in_flight(serve)
    protocol = only_connection(listener)
    # In flight: the cap must not take it for an idle connection to close.
    assert not protocol.idle
    assert not listener.guard.is_idle(protocol)
    held.gate.set()
    first = await read_answer(reader)
    assert first.status == 200
    assert "connection" not in first.headers
    await until(lambda: listener.guard.is_idle(protocol), "the connection to be idle again")
    assert protocol.idle
    writer.write(delivery(2))
    assert (await read_answer(reader)).json()["status"] == "stored"
    writer.close()
    assert taken == [PATH, PATH]
    assert await count(db) == 2


async def test_the_idle_deadline_waits_for_the_answer_then_closes_an_idle_connection(
    serve: Serve, db: asyncpg.Connection
) -> None:
    deadlines = ServerConfig(header_timeout_seconds=0.3, idle_timeout_seconds=0.3)
    listener, app = await serve(github("k"), server=deadlines)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    # A first answer arms the idle deadline of the kept-alive connection...
    writer.write(delivery(1))
    assert (await read_answer(reader)).status == 200
    held = Held(app)
    writer.write(delivery(2))
    await until(lambda: held.taken == 1, "the delivery to reach the store")
    # ...which passes three times while the next one's commit is held: it is not idle.
    await asyncio.sleep(1.0)
    assert listener.guard.open == 1
    held.gate.set()
    assert (await read_answer(reader)).status == 200
    # Then idle: closed once the deadline passes.
    async with asyncio.timeout(10):
        assert await reader.read() == b""
    writer.close()
    assert await count(db) == 2


async def test_a_request_sent_while_the_previous_commits_closes_the_connection_after_it(
    serve: Serve, db: asyncpg.Connection
) -> None:
    listener, _app, held, reader, writer = await delivery_in_flight(serve)
    writer.write(delivery(2))
    await until(lambda: only_connection(listener)._close, "the pipelined bytes to be seen")
    held.gate.set()
    async with asyncio.timeout(10):
        raw = await reader.read()
    writer.close()
    assert raw.count(b"HTTP/1.1 ") == 1
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in raw
    assert held.taken == 1
    assert await count(db) == 1
    assert 'reason="pipelined"} 1.0' in await scrape(listener.port)


async def test_a_client_asking_to_close_gets_its_answer_then_the_close(
    serve: Serve, db: asyncpg.Connection
) -> None:
    listener, _ = await serve(github("k"))
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(delivery(1, close=True))
    async with asyncio.timeout(30):
        raw = await reader.read()
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in raw
    assert await count(db) == 1


async def test_a_shutdown_answers_the_delivery_in_flight_after_its_commit(
    serve: Serve, db: asyncpg.Connection
) -> None:
    # Its stop waits up to 5 s for what is in flight: the test answers well within that.
    listener, _app, held, reader, writer = await delivery_in_flight(serve, shutdown_timeout=5)
    stopping = asyncio.create_task(listener.stop())
    await until(lambda: not listener.server.is_serving(), "the listener to stop accepting")
    await asyncio.sleep(0.2)
    assert not stopping.done(), "the stop should wait for the delivery in flight"
    held.gate.set()
    answer = await read_answer(reader)
    assert answer.status == 200
    assert answer.headers["connection"] == "close"
    async with asyncio.timeout(30):
        await stopping
    writer.close()
    assert await count(db) == 1


async def test_a_client_that_leaves_before_the_commit_loses_nothing_stored(
    serve: Serve, log_lines: io.StringIO, db: asyncpg.Connection
) -> None:
    listener, _app, held, _reader, writer = await delivery_in_flight(serve)
    writer.close()
    await until(lambda: listener.guard.open == 0, "the server to see the client go")
    held.gate.set()
    await until(lambda: '"outcome":"stored"' in log_lines.getvalue(), "the access log line")
    assert await count(db) == 1
    # Still serving, nothing held for the connection that went.
    assert listener.guard.open == 0
    assert (await scrape(listener.port)).count("dfm_receiver_requests_total{") >= 1


async def test_what_the_route_does_not_take_still_goes_through_aiohttp(
    serve: Serve, taken: list[str], db: asyncpg.Connection
) -> None:
    listener, _ = await serve(github("k"))
    body = b'{"n":9}'

    async def send(*parts: bytes) -> Answer:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        answer = await read_answer(reader)
        writer.close()
        return answer

    def head(delivery: str, extra: str = "", version: str = "1.1", chunked: bool = False) -> bytes:
        headers = "".join(f"{k}: {v}\r\n" for k, v in signed(body, delivery).items())
        length = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {len(body)}\r\n"
        return f"POST {PATH} HTTP/{version}\r\nHost: x\r\n{headers}{length}{extra}\r\n".encode()

    # The body in a later read than its head.
    assert (await send(head("split"), body)).status == 200
    # HTTP/1.0, chunked, Expect: 100-continue.
    assert (await send(head("http10", version="1.0") + body)).status == 200
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    assert (await send(head("chunked", chunked=True) + chunked)).status == 200
    assert (await send(head("expect", "Expect: 100-continue\r\n") + body)).status == 200
    assert taken == []
    # A query string is the route's (the signature schemes that sign the URL see it as sent).
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(request_bytes(PATH + "?from=ci", body, signed(body, "query")))
    assert (await read_answer(reader)).status == 200
    writer.close()
    assert taken == [PATH]
    stored = await db.fetch("SELECT event_id FROM webhook_events ORDER BY event_id")
    assert {r["event_id"] for r in stored} == {"split", "http10", "chunked", "expect", "query"}


def test_sources_with_a_bearer_token_and_traced_receivers_are_left_to_aiohttp() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    jwt = SourceConfig(name="orders", provider=Provider.JWT, auth=AuthConfig(public_key=pem))
    # aiohttp's router matches this path after decoding it (as /hooks/aA): not byte for byte.
    escaped = github("e").model_copy(update={"path": "/hooks/a%41"})
    config = ReceiverConfig(
        sources=[github("k"), jwt, escaped], database=DatabaseConfig(url="postgresql://unused/db")
    )
    # The token check may fetch a JWKS (it awaits); spans need aiohttp's request.
    assert set(OnePass(create_app(config)).routes) == {PATH}
    tracing = Tracing(TracerProvider())
    assert OnePass(create_app(config, tracing=tracing)).routes == {}


async def test_nothing_is_answered_before_the_commit(serve: Serve, db: asyncpg.Connection) -> None:
    _listener, app, held, reader, writer = await delivery_in_flight(serve)
    # The batch commits meanwhile; its answer waits for the store's future, nothing else.
    await until(lambda: count_sync(app) == 0, "the commit", 30)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await reader.read(1)
    held.gate.set()
    answer = await read_answer(reader)
    assert answer.status == 200
    assert await count(db) == 1
    writer.close()


def count_sync(app: Any) -> int:
    """Events the store still holds (queued or being committed)."""
    return int(app[STORE].held()[0])


async def test_a_client_that_does_not_read_its_answers_is_refused_not_buffered(
    serve: Serve,
) -> None:
    # Unsigned requests are answered at once (401), one per read. A client that sends them and
    # never reads would make the server buffer every answer; instead, once the socket's buffer is
    # full, the next request goes to aiohttp's path, whose answer waits for the buffer to drain,
    # and the bytes of the one after are not parsed: the connection is closed as pipelined.
    listener, _ = await serve(github("k"))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", listener.port))
    client.setblocking(False)
    await until(lambda: bool(listener.guard.connections()), "the connection")
    protocol = only_connection(listener)
    protocol.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    loop = asyncio.get_running_loop()
    unsigned = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    peak = sent = 0
    try:
        while sent < 5000 and not protocol._close and protocol.transport is not None:
            await loop.sock_sendall(client, unsigned)
            sent += 1
            # Each request in a read of its own: wait (up to a second) for the server to parse it.
            for _ in range(1000):
                if protocol._request_count >= sent or protocol._close:
                    break
                await asyncio.sleep(0.001)
            if protocol.transport is not None:
                peak = max(peak, protocol.transport.get_write_buffer_size())
    finally:
        client.close()
    assert protocol._close, "the server kept taking requests from a client that reads nothing"
    assert sent < 5000
    assert peak <= 128 * 1024, f"{peak} bytes of answers buffered for one connection"
    assert 'reason="pipelined"} 1.0' in await scrape(listener.port)


async def test_an_access_log_that_fails_does_not_leave_the_client_without_an_answer(
    serve: Serve, db: asyncpg.Connection
) -> None:
    class Refusing(io.StringIO):
        def write(self, text: str) -> int:
            if '"event":"request"' in text:
                raise OSError("stdout refuses writes")
            return super().write(text)

    stream = Refusing()
    logs.configure(stream=stream)
    try:
        listener, _ = await serve(github("k"))
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(delivery(1))
        assert (await read_answer(reader, 10)).status == 200
        unsigned = request_bytes(PATH, b"{}", {"Content-Type": "application/json"})
        writer.write(unsigned)
        assert (await read_answer(reader, 10)).status == 401
        writer.close()
        assert "request not counted or logged" in stream.getvalue()
    finally:
        logs.configure()
    assert await count(db) == 1


async def test_when_the_store_is_down_both_routes_answer_503_and_log_the_event_id(
    log_lines: io.StringIO, taken: list[str]
) -> None:
    # Nothing listens on the database's port: the store is never ready.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"postgresql://dfm@127.0.0.1:{probe.getsockname()[1]}/dfm"
    answers = {}
    for namespace, one_pass in (("a", True), ("b", False)):
        config = ReceiverConfig(
            port=0,
            sources=[github(namespace)],
            database=DatabaseConfig(url=url, connect_timeout_seconds=0.2),
        )
        listener = await start(create_app(config), "127.0.0.1", 0, one_pass=one_pass)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            body = b'{"n":1}'
            headers = signed(body, "down-1") | {"X-Request-Id": "req-down"}
            writer.write(request_bytes(f"/hooks/{namespace}/gh", body, headers))
            answers[namespace] = await read_answer(reader)
            writer.close()
        finally:
            await listener.stop()
    assert taken == ["/hooks/a/gh"]
    route, aiohttp_answer = answers["a"], answers["b"]
    assert route.status == 503
    assert route.json()["detail"] == "event store unavailable, retry later"
    assert route.body == aiohttp_answer.body
    assert route.headers["retry-after"] == aiohttp_answer.headers["retry-after"] == "5"
    access = [
        json.loads(line)
        for line in log_lines.getvalue().splitlines()
        if '"event":"request"' in line
    ]
    assert [(line["source"], line["outcome"], line["event_id"]) for line in access] == [
        ("a/gh", "store_unavailable", "down-1"),
        ("b/gh", "store_unavailable", "down-1"),
    ]


async def test_a_slack_challenge_and_a_failing_verifier_are_answered_alike(
    serve: Serve, taken: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def slack(namespace: str) -> SourceConfig:
        return SourceConfig(
            namespace=namespace,
            name="slack",
            provider=Provider.SLACK,
            verification=VerificationConfig(secrets=[SecretSource(value="s3")]),
        )

    fast, fast_app = await serve(slack("a"), github("a"))
    slow, slow_app = await serve(slack("b"), github("b"), one_pass=False)
    challenge = b'{"type":"url_verification","challenge":"c-123"}'
    results = []
    for listener, app, namespace in ((fast, fast_app, "a"), (slow, slow_app, "b")):
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        source = app[SOURCES_BY_PATH][f"/hooks/{namespace}/slack"].config
        headers = SIGNERS[Provider.SLACK](challenge, b"s3", source.verification, time.time(), None)
        writer.write(
            request_bytes(source.route, challenge, headers | {"X-Request-Id": "req-slack"})
        )
        first = await read_answer(reader)
        # An exception inside a verifier: a 500 with the request id, nothing else said.
        github_runtime = app[SOURCES_BY_PATH][f"/hooks/{namespace}/gh"]

        def broken(*args: Any) -> Any:
            raise RuntimeError("secret-material-in-message")

        monkeypatch.setattr(github_runtime, "verify", broken)
        body = b'{"n":1}'
        writer.write(
            request_bytes(
                f"/hooks/{namespace}/gh", body, signed(body, "x") | {"X-Request-Id": "req-boom"}
            )
        )
        second = await read_answer(reader)
        writer.close()
        results.append((first, second))
    (route_challenge, route_error), (aiohttp_challenge, aiohttp_error) = results
    assert route_challenge.status == 200
    assert route_challenge.json() == {"challenge": "c-123"}
    assert route_challenge.body == aiohttp_challenge.body
    assert route_error.status == aiohttp_error.status == 500
    assert route_error.body == aiohttp_error.body
    assert b"secret-material" not in route_error.body
    assert taken == ["/hooks/a/slack", "/hooks/a/gh"]
