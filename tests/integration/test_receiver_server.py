"""The receiver the integration tests talk to is served as production serves it: through
``webhook_server.server.start`` and its protocol, never aiohttp's default request handler."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.receivers import ClientFactory, ReceiverServer
from webhook_server.app import create_app
from webhook_server.config import (
    DatabaseConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.server import LoopErrors


def github() -> SourceConfig:
    return SourceConfig(
        name="gh",
        provider=Provider.GITHUB,
        verification=VerificationConfig(secrets=[SecretSource(value="s")]),
    )


def receiver_app(database_url: str) -> Any:
    return create_app(ReceiverConfig(sources=[github()], database=DatabaseConfig(url=database_url)))


async def test_the_test_client_reaches_the_receivers_protocol(
    make_receiver: ClientFactory,
) -> None:
    client = await make_receiver(github())
    # Two headers each within aiohttp's per-field limit (20,480 bytes) but a head over the
    # receiver's 32 KiB: aiohttp's own handler answers 200, the receiver's protocol 431.
    padded = {"X-Pad-A": "a" * 17_000, "X-Pad-B": "b" * 17_000}
    refused = await client.get("/livez", headers=padded)
    assert refused.status == 431
    assert refused.content_type == "application/problem+json"
    assert (await client.get("/livez")).status == 200

    # A request sent before the previous one is answered is not parsed; the connection closes
    # after the first answer (aiohttp's own handler would answer both).
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        await writer.drain()
        async with asyncio.timeout(10):
            answered = await reader.read()
    finally:
        writer.close()
    assert answered.count(b"HTTP/1.1 200") == 1


async def test_closing_stops_the_listener_once_and_gives_the_loop_its_handler_back(
    database_url: str,
) -> None:
    loop = asyncio.get_running_loop()
    server = ReceiverServer(receiver_app(database_url))
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    port = client.port
    assert isinstance(loop.get_exception_handler(), LoopErrors)
    assert (await client.get("/livez")).status == 200

    await client.close()
    await server.close()  # a second close does nothing
    assert server.closed
    assert not isinstance(loop.get_exception_handler(), LoopErrors)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_receiver_app_handed_to_aiohttp_client_as_is_is_refused(
    aiohttp_client: ClientFactory, database_url: str
) -> None:
    with pytest.raises(TypeError, match="ReceiverServer"):
        await aiohttp_client(receiver_app(database_url))
