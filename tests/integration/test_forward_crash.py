"""kill -9 a receiver while it forwards under load: after a restart every acknowledged event is
delivered (0 lost), and the duplicates are few and carry their event's webhook-id."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.receivers import serving
from tests.tools import free_port, wait_ready
from webhook_server.config import (
    BackoffConfig,
    DatabaseConfig,
    ForwardConfig,
    ForwardingConfig,
    LimitsConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.verify import SIGNERS

GITHUB_SECRET = "crash-test-secret"
FORWARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ROOT = Path(__file__).resolve().parents[2]
SENDERS = 16
CONSUMER_DELAY_SECONDS = 0.01
MAX_CONCURRENCY = 4


class Consumer:
    """Slower than ingest (4 requests at a time, 10 ms each on average), so a backlog builds up."""

    def __init__(self) -> None:
        self.bodies: dict[str, set[bytes]] = {}
        self.count: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(CONSUMER_DELAY_SECONDS * random.random() * 2)
        webhook_id = request.headers["webhook-id"]
        self.bodies.setdefault(webhook_id, set()).add(body)
        self.count[webhook_id] += 1
        return web.Response(text="ok")


@pytest.fixture
async def consumer() -> AsyncIterator[tuple[Consumer, str]]:
    target = Consumer()
    async with serving(target.handle) as url:
        yield target, url


def start_receiver(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dfm.cli", "receiver", "--config", str(config_file)],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "DFM_LOG_LEVEL": "WARNING"},
    )


async def until(done: Callable[[], bool], seconds: float) -> None:
    """Wait until ``done()`` (or ``seconds`` passed: the assertions after it then say what)."""
    deadline = time.monotonic() + seconds
    while True:
        if done() or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


async def until_delivered(database_url: str, count: int, seconds: float) -> None:
    """Wait until ``count`` deliveries are recorded delivered (or ``seconds`` passed)."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + seconds
        query = "SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'"
        while True:
            if await conn.fetchval(query) >= count or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def test_a_receiver_killed_mid_delivery_loses_nothing(
    database_url: str, consumer: tuple[Consumer, str], tmp_path: Path
) -> None:
    target, url = consumer
    port = free_port()
    source = SourceConfig(
        namespace="ci",
        name="gh",
        provider=Provider.GITHUB,
        verification=VerificationConfig(secrets=[SecretSource(value=GITHUB_SECRET)]),
        # Above the default 100 per second, so ingest outruns the consumer (at most 400 a
        # second) and a backlog builds; at the default the consumer kept up with the limiter.
        limits=LimitsConfig(requests_per_second=5_000, burst=5_000),
        forward=ForwardConfig(
            url=url,
            signing_secrets=[SecretSource(value=FORWARD_SECRET)],
            # Far above the consumer's 0-20 ms: an attempt that times out is sent again, a
            # duplicate the crash did not cause, and a loaded machine reached 0.5 s.
            timeout_seconds=2,
            max_concurrency=MAX_CONCURRENCY,
            backoff=BackoffConfig(min_seconds=0.1, max_seconds=0.5),
        ),
    )
    config = ReceiverConfig(
        host="127.0.0.1",
        port=port,
        sources=[source],
        database=DatabaseConfig(url=database_url),
        # Short leases (the shortest the 2 s timeout allows: four times it), so the restarted
        # process takes over the dead one's deliveries quickly.
        forwarding=ForwardingConfig(lease_seconds=8, poll_interval_seconds=0.05),
    )
    config_file = tmp_path / "receiver.yaml"
    config_file.write_text(config.dump_yaml())
    log = tmp_path / "receiver.log"
    base = f"http://127.0.0.1:{port}"
    acked: set[str] = set()
    stop = asyncio.Event()

    async def sender(session: aiohttp.ClientSession, number: int) -> None:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            delivery = f"d-{number}-{sequence}"
            body = f'{{"sender": {number}, "n": {sequence}}}'.encode()
            headers = SIGNERS[Provider.GITHUB](
                body, GITHUB_SECRET.encode(), VerificationConfig(), time.time(), delivery
            )
            try:
                async with session.post(
                    base + source.route, data=body, headers=headers
                ) as response:
                    if response.status == 200:
                        acked.add(delivery)
            except (aiohttp.ClientError, ConnectionError):
                await asyncio.sleep(0.05)  # the receiver is down: this one was never acked

    first = start_receiver(config_file, log)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, first)
            senders = [asyncio.create_task(sender(session, n)) for n in range(SENDERS)]
            # Under load, with deliveries in flight and a backlog in memory and in the table.
            # The kill waits for a backlog too: a kill while the consumer is level with ingest
            # would prove nothing about one.
            await until(
                lambda: (
                    len(acked) >= 600
                    and sum(target.count.values()) >= 100
                    and len(acked - set(target.count)) >= 50
                ),
                60,
            )
            first.send_signal(signal.SIGKILL)
            first.wait()
            stop.set()
            await asyncio.gather(*senders)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    delivered_before_restart = set(target.count)
    conn = await asyncpg.connect(database_url)
    try:
        leased = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE leased_by IS NOT NULL"
        )
        stored = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM webhook_events")}
    finally:
        await conn.close()
    assert acked <= stored  # acknowledged means committed
    assert leased > 0, "the kill should have caught deliveries in the dead process's hands"
    assert len(acked - delivered_before_restart) > 0, "there should be a backlog at the kill"

    second = start_receiver(config_file, log)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, second)
            # Every stored event, acknowledged or not (one stored as the process died, its
            # answer lost), is delivered.
            await until(lambda: stored <= set(target.count), 90)
            # And recorded as such: what the dead process sent but never recorded is claimed
            # again once its lease runs out (8 s), sent again and recorded by this one. The
            # consumer may have it all before then, so stopping now would leave those pending.
            await until_delivered(database_url, len(stored), 90)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)

    lost = acked - set(target.count)
    assert lost == set(), f"{len(lost)} acknowledged events never delivered"
    duplicates = {webhook_id: n for webhook_id, n in target.count.items() if n > 1}
    # At least once: what the dead process had sent but not yet recorded goes again, nothing
    # else. Its attempts in flight and its unrecorded outcomes are bounded by its concurrency
    # and one recorder batch; a generous bound, far below the events it handled.
    assert len(duplicates) <= 50, f"{len(duplicates)} events delivered more than once"
    # A duplicate is the same event: same webhook-id, same body.
    assert all(len(bodies) == 1 for bodies in target.bodies.values())
    conn = await asyncpg.connect(database_url)
    try:
        states = dict(
            await conn.fetch("SELECT state, count(*) FROM webhook_deliveries GROUP BY state")
        )
    finally:
        await conn.close()
    assert states.get("delivered") == len(stored)
