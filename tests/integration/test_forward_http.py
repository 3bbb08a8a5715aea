"""The delivery client against real servers on 127.0.0.1: aiohttp's, and raw sockets for the
answers aiohttp would never give (interim 100, garbage, a body that ends with the connection)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from webhook_server.forward.http import MAX_BODY_BYTES, AnswerError, Endpoint, Pool

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Target:
    def __init__(self) -> None:
        self.peers: list[int] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername")[1])
        kind = request.query.get("answer", "plain")
        if kind == "chunked":
            response = web.StreamResponse(status=202, headers={"Retry-After": "7"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"accepted", b" later", b"!"):
                await response.write(part)
            await response.write_eof()
            return response
        if kind == "large":
            return web.Response(status=200, body=b"x" * (MAX_BODY_BYTES + 1))
        if kind == "gone":
            return web.Response(status=410, text="gone")
        return web.Response(status=200, text="ok")


async def serve(
    target: Target, keepalive: float = 75.0, ssl_context: ssl.SSLContext | None = None
) -> TestServer:
    app = web.Application()
    app.router.add_post("/events", target.handle)
    server = TestServer(app, host="127.0.0.1", keepalive_timeout=keepalive)
    await server.start_server(ssl=ssl_context)
    return server


@pytest.fixture
async def target() -> AsyncIterator[tuple[Target, TestServer]]:
    found = Target()
    server = await serve(found)
    yield found, server
    await server.close()


async def post(pool: Pool, body: bytes = b'{"a":1}') -> tuple[int, str | None]:
    async with asyncio.timeout(5):
        answer = await pool.post(body, {"content-type": "application/json", "webhook-id": "m1"})
    return answer.status, answer.retry_after


async def test_requests_reuse_one_keep_alive_connection(target: tuple[Target, TestServer]) -> None:
    found, server = target
    pool = Pool(str(server.make_url("/events")), max_idle=2)
    for _ in range(3):
        assert await post(pool) == (200, None)
    assert len(set(found.peers)) == 1
    headers, body = found.requests[0]
    assert body == b'{"a":1}'
    assert headers["webhook-id"] == "m1"
    assert headers["Content-Length"] == "7"
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    assert "Accept-Encoding" not in headers
    pool.close()


async def test_chunked_and_oversized_answers(target: tuple[Target, TestServer]) -> None:
    found, server = target
    pool = Pool(str(server.make_url("/events")), max_idle=2)
    assert await post(Pool(str(server.make_url("/events?answer=chunked")), max_idle=1)) == (
        202,
        "7",
    )
    chunked = Pool(str(server.make_url("/events?answer=chunked")), max_idle=1)
    assert (await post(chunked))[0] == 202
    assert (await post(chunked))[0] == 202  # the chunked body was framed: reused
    assert len(set(found.peers[-2:])) == 1
    large = Pool(str(server.make_url("/events?answer=large")), max_idle=1)
    assert (await post(large))[0] == 200
    assert (await post(large))[0] == 200  # not read: a new connection each time
    assert len(set(found.peers[-2:])) == 2
    assert (await post(pool))[0] == 200


async def test_a_request_the_target_drops_on_a_reused_connection_goes_once_more() -> None:
    # A server that answers the first request of a connection and drops the connection on the
    # second without a word: what a keep-alive timeout racing with our next request looks like.
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(7)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = Pool(f"http://127.0.0.1:{port}/", max_idle=1)
        assert (await post(pool))[0] == 200
        assert (await post(pool))[0] == 200  # dropped, then sent on a new connection
        assert len(connections) == 2
    finally:
        server.close()


async def test_basic_credentials_from_the_url(target: tuple[Target, TestServer]) -> None:
    found, server = target
    pool = Pool(f"http://hook%40user:p%3Ass@127.0.0.1:{server.port}/events?answer=gone", max_idle=1)
    assert (await post(pool))[0] == 410
    expected = "Basic " + base64.b64encode(b"hook@user:p:ss").decode()
    assert found.requests[0][0]["Authorization"] == expected
    endpoint = Endpoint.parse("https://[::1]:8443/in?x=1")
    assert (endpoint.host, endpoint.port, endpoint.tls) == ("::1", 8443, True)
    assert (endpoint.host_header, endpoint.target) == ("[::1]:8443", "/in?x=1")
    assert Endpoint.parse("https://example.com/").host_header == "example.com"


async def raw_server(answer: bytes, *, close: bool) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if close:
            writer.close()
        else:
            await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("answer", "close", "status"),
    [
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            False,
            201,
        ),
        (b"HTTP/1.1 503 Busy\r\nRetry-After: 30\r\n\r\nbody until the end", True, 503),
        (b"HTTP/1.0 204 No Content\r\n\r\n", False, 204),
    ],
)
async def test_answers_aiohttp_would_not_give(answer: bytes, close: bool, status: int) -> None:
    server, port = await raw_server(answer, close=close)
    try:
        assert (await post(Pool(f"http://127.0.0.1:{port}/", max_idle=1)))[0] == status
    finally:
        server.close()


async def test_garbage_and_silence_are_errors_not_hangs() -> None:
    server, port = await raw_server(b"SSH-2.0-OpenSSH\r\n\r\n", close=False)
    try:
        with pytest.raises(AnswerError):
            await post(Pool(f"http://127.0.0.1:{port}/", max_idle=1))
    finally:
        server.close()
    server, port = await raw_server(b"", close=True)
    try:
        with pytest.raises(ConnectionError):
            await post(Pool(f"http://127.0.0.1:{port}/", max_idle=1))
    finally:
        server.close()
    with pytest.raises(ConnectionRefusedError):  # nothing listens there
        await post(Pool("http://127.0.0.1:9/", max_idle=1))


async def test_a_huge_head_is_an_error_and_stray_bytes_end_the_connection() -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    server, port = await raw_server(huge, close=False)
    try:
        with pytest.raises(AnswerError):
            await post(Pool(f"http://127.0.0.1:{port}/", max_idle=1))
    finally:
        server.close()
    # An answer followed by a second one nobody asked for: the first is the answer, and the
    # connection is not trusted again (the next request opens a new one).
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            await reader.readexactly(7)  # the body post() sends
            writer.write(
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
                b"HTTP/1.1 500 Surprise\r\nContent-Length: 0\r\n\r\n"
            )
            await writer.drain()

    stray = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = Pool(f"http://127.0.0.1:{stray.sockets[0].getsockname()[1]}/", max_idle=1)
    try:
        assert (await post(pool))[0] == 202
        assert (await post(pool))[0] == 202
        assert connections == 2
    finally:
        pool.close()
        stray.close()


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_https_targets_are_verified(tmp_path: Path) -> None:
    server_context, client_context = self_signed(tmp_path)
    found = Target()
    server = await serve(found, ssl_context=server_context)
    try:
        url = f"https://127.0.0.1:{server.port}/events"
        trusting = Pool(url, max_idle=1, ssl_context=client_context)
        assert (await post(trusting))[0] == 200
        assert (await post(trusting))[0] == 200
        with pytest.raises(ssl.SSLError):  # the system's CAs do not know this certificate
            await post(Pool(url, max_idle=1))
    finally:
        await server.close()
