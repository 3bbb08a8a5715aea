"""`dfm receiver` with ``workers: 2``: two processes on one port (SO_REUSEPORT) under a
supervisor, against the real PostgreSQL.

What a user would notice: both processes take deliveries; a redelivery raced to both is stored
once; one scrape of /metrics shows both; SIGTERM stops everything with exit 0; a worker that
dies takes the pod down with a non-zero exit instead of leaving it at half capacity."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.receivers import ReceiverServer
from tests.tools import free_port, wait_ready
from webhook_server.app import STORE, create_app
from webhook_server.config import (
    DatabaseConfig,
    LimitsConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.verify import SIGNERS
from webhook_server.workers import PEER_TIMEOUT_SECONDS, Peers, Worker

SECRET = "workers-test-secret"
ROOT = Path(__file__).resolve().parents[2]
EVENTS = 150


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): it has exited, its parent has not reaped it yet.
    status = Path(f"/proc/{pid}/status").read_text()
    return "\nState:\tZ" not in status


@pytest.fixture
def source() -> SourceConfig:
    return SourceConfig(
        namespace="ci",
        name="gh",
        provider=Provider.GITHUB,
        verification=VerificationConfig(secrets=[SecretSource(value=SECRET)]),
        limits=LimitsConfig(requests_per_second=5_000, burst=5_000),
    )


def launch(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dfm.cli", "receiver", "--config", str(config_file)],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def run_once(config_file: Path) -> subprocess.CompletedProcess[str]:
    """`dfm receiver` for a config it should refuse: it exits, with its stderr."""
    return subprocess.run(
        [sys.executable, "-m", "dfm.cli", "receiver", "--config", str(config_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def start(
    tmp_path: Path,
    database_url: str,
    source: SourceConfig,
    *,
    workers: int = 2,
    shutdown_delay_seconds: float = 0.0,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    config = ReceiverConfig(
        host="127.0.0.1",
        port=port,
        workers=workers,
        sources=[source],
        database=DatabaseConfig(url=database_url),
        shutdown_timeout_seconds=5,
        shutdown_delay_seconds=shutdown_delay_seconds,
    )
    config_file = tmp_path / "receiver.yaml"
    config_file.write_text(config.dump_yaml())
    log = tmp_path / "receiver.log"
    process = launch(config_file, log)
    base = f"http://127.0.0.1:{port}"
    try:
        # Ready when every worker is: /readyz asks them all.
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, process, log.read_text)
    except BaseException:
        stop(process)  # its workers get SIGTERM too, and drain
        raise
    return process, base, log


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(signum)
    return process.wait(timeout=60)


async def post(base: str, source: SourceConfig, delivery: str) -> tuple[int, str]:
    body = f'{{"delivery": "{delivery}"}}'.encode()
    headers = SIGNERS[Provider.GITHUB](
        body, SECRET.encode(), VerificationConfig(), time.time(), delivery
    )
    # A connection of its own: the kernel picks a worker per connection.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.post(base + source.route, data=body, headers=headers) as response,
    ):
        answer = await response.json(content_type=None)
        return response.status, str(answer.get("status"))


async def connection_headers(base: str, source: SourceConfig, delivery: str) -> list[str]:
    """The Connection header of a delivery's answer (the one-pass route) and of /readyz's
    (aiohttp's path), on a keep-alive connection ("" when absent)."""
    body = f'{{"delivery": "{delivery}"}}'.encode()
    headers = SIGNERS[Provider.GITHUB](
        body, SECRET.encode(), VerificationConfig(), time.time(), delivery
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(base + source.route, data=body, headers=headers) as posted:
            assert posted.status == 200
        async with session.get(f"{base}/readyz") as ready:
            assert ready.status == 200
        return [r.headers.get("Connection", "").lower() for r in (posted, ready)]


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


async def test_two_workers_share_the_port_store_each_event_once_and_stop_on_sigterm(
    database_url: str, source: SourceConfig, tmp_path: Path
) -> None:
    process, base, log = await start(tmp_path, database_url, source)
    try:
        workers = children(process.pid)
        assert len(workers) == 2, workers

        # Every event sent twice at once, each on its own connection: the two copies often
        # reach different workers, and the database's dedup key decides between them.
        ids = [f"w-{n}" for n in range(EVENTS)]
        answers = await asyncio.gather(*(post(base, source, i) for i in ids for _ in range(2)))
        assert {status for status, _ in answers} == {200}
        outcomes = Counter(outcome for _, outcome in answers)
        assert outcomes == {"stored": EVENTS, "duplicate": EVENTS}

        conn = await asyncpg.connect(database_url)
        try:
            stored, request_ids = await conn.fetchrow(
                "SELECT count(*), count(DISTINCT request_id) FROM webhook_events WHERE source = $1",
                source.key,
            )
        finally:
            await conn.close()
        assert stored == EVENTS
        # Each worker numbers its requests under a prefix of its own, not its parent's.
        assert request_ids == EVENTS

        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as r:
            text = await r.text()
        # One family each, both workers' series in it.
        assert text.count("# TYPE dfm_receiver_requests_total counter") == 1
        up = {labels["worker"]: value for labels, value in samples(text, "dfm_receiver_worker_up")}
        assert up == {"0": 1.0, "1": 1.0}
        assert samples(text, "dfm_receiver_workers") == [({}, 2.0)]
        requests = {
            (labels["worker"], labels["outcome"]): value
            for labels, value in samples(text, "dfm_receiver_requests_total")
            if labels["source"] == source.key
        }
        # The kernel spread the connections: each worker stored some of the events.
        assert requests.get(("0", "stored"), 0) > 0
        assert requests.get(("1", "stored"), 0) > 0
        assert requests[("0", "stored")] + requests[("1", "stored")] == EVENTS
        assert requests.get(("0", "duplicate"), 0) + requests.get(("1", "duplicate"), 0) == EVENTS
    finally:
        code = stop(process)
    assert code == 0, log.read_text()
    assert not [pid for pid in workers if alive(pid)]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert "worker exited" not in [line["event"] for line in lines]
    assert "workers stopped" in [line["event"] for line in lines]
    # Each worker's lines say which worker wrote them, the access log's included: one line per
    # request, and the per-worker counts agree with the merged metrics'.
    assert sorted(line.get("worker") for line in lines if line["event"] == "listening") == [0, 1]
    access = Counter(
        (str(line["worker"]), line["outcome"])
        for line in lines
        if line["event"] == "request" and line.get("source") == source.key
    )
    assert access == {key: value for key, value in requests.items() if value}


async def test_a_worker_that_dies_stops_the_others_and_exits_non_zero(
    database_url: str, source: SourceConfig, tmp_path: Path
) -> None:
    process, _, log = await start(tmp_path, database_url, source)
    try:
        first, second = children(process.pid)
        os.kill(first, signal.SIGKILL)
        code = process.wait(timeout=60)
    finally:
        stop(process, signal.SIGKILL)
    assert code == 1
    assert not alive(second)
    lines = [line for line in log.read_text().splitlines() if '"worker exited"' in line]
    assert len(lines) == 1
    assert f'"pid": {first}' in lines[0]
    assert '"exit_code": -9' in lines[0]


@pytest.mark.parametrize(
    ("workers", "port", "expected"),
    [
        (17, 8080, "workers: Input should be less than or equal to 16"),
        (0, 8080, "workers: Input should be greater than or equal to 1"),
        (2, 0, "workers above 1 need a fixed port"),
    ],
)
def test_a_workers_value_the_receiver_cannot_serve_is_one_line(
    tmp_path: Path, source: SourceConfig, workers: int, port: int, expected: str
) -> None:
    config = ReceiverConfig(
        port=8080, sources=[source], database=DatabaseConfig(url="postgresql://db/x")
    ).model_dump(mode="json", by_alias=True, exclude_none=True)
    config.update(workers=workers, port=port)
    config_file = tmp_path / "receiver.yaml"
    config_file.write_text(json.dumps(config))
    result = run_once(config_file)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


async def test_a_stuck_worker_fails_the_pods_liveness_whichever_worker_answers(
    database_url: str, source: SourceConfig, tmp_path: Path
) -> None:
    process, base, log = await start(tmp_path, database_url, source)
    try:
        started = {
            line["pid"]: line["worker"]
            for line in map(json.loads, log.read_text().splitlines())
            if line["event"] == "worker started"
        }
        stuck = children(process.pid)[0]
        os.kill(stuck, signal.SIGSTOP)  # its event loop stops turning; its socket stays open
        try:
            answers: dict[str, list[tuple[int, dict[str, str]]]] = {"livez": [], "readyz": []}
            # The kernel picks a worker per connection: ask until the running worker has
            # answered each probe (a probe that reaches the stopped one times out).
            for _ in range(20):
                if all(503 in [status for status, _ in a] for a in answers.values()):
                    break
                for probe, probe_answers in answers.items():
                    # A probe the kernel hands to the stopped worker waits in its accept queue:
                    # the kubelet's timeout would fail it, as this one does.
                    timeout = aiohttp.ClientTimeout(total=2 * PEER_TIMEOUT_SECONDS + 2)
                    try:
                        async with (
                            aiohttp.ClientSession(
                                connector=aiohttp.TCPConnector(force_close=True), timeout=timeout
                            ) as session,
                            session.get(f"{base}/{probe}") as response,
                        ):
                            body = await response.json(content_type=None)
                            probe_answers.append((response.status, body))
                    except TimeoutError:
                        probe_answers.append((0, {}))
            for probe_answers in answers.values():
                assert 200 not in [status for status, _ in probe_answers], answers
            details = {body["detail"] for status, body in answers["livez"] if status == 503}
            assert details == {f"workers not answering: {started[stuck]}"}
            # Readiness too answers for the pod: it leaves the endpoints rather than let the
            # kernel hand the stopped worker its share of requests.
            details = {body["detail"] for status, body in answers["readyz"] if status == 503}
            assert details == {f"not ready: worker {started[stuck]} not answering"}
        finally:
            os.kill(stuck, signal.SIGCONT)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/livez") as response:
                assert response.status == 200
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 200
                workers = (await response.json())["workers"]
                assert sorted(workers) == ["0", "1"]
                assert all(checks["database"] for checks in workers.values())
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
        # The other worker counted each time the stuck one did not answer it: what the chart's
        # DfmReceiverWorkerDown alert reads.
        missed = {
            (labels["worker"], labels["peer"]): value
            for labels, value in samples(text, "dfm_receiver_worker_peer_unanswered_total")
        }
        other = str(1 - started[stuck])
        assert missed[(other, str(started[stuck]))] >= 1
    finally:
        assert stop(process) == 0, log.read_text()


def test_a_port_already_in_use_is_refused_in_one_line(tmp_path: Path, source: SourceConfig) -> None:
    # With SO_REUSEPORT alone, the workers would share the port with whatever holds it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = ReceiverConfig(
            host="127.0.0.1",
            port=port,
            workers=2,
            sources=[source],
            database=DatabaseConfig(url="postgresql://127.0.0.1:1/x"),
        )
        config_file = tmp_path / "receiver.yaml"
        config_file.write_text(config.dump_yaml())
        result = run_once(config_file)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dfm receiver: error: 127.0.0.1:{port}: Address already in use"
    ]


async def test_workers_drain_when_their_supervisor_is_killed(
    database_url: str, source: SourceConfig, tmp_path: Path
) -> None:
    # Outside a container nothing else would end them: they would keep serving the port.
    process, _, log = await start(tmp_path, database_url, source)
    workers = children(process.pid)
    process.kill()
    process.wait(timeout=30)
    for _ in range(300):  # up to 30 s: each drains first
        if not any(alive(pid) for pid in workers):
            break
        await asyncio.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    # Each drained (its SIGTERM), rather than being killed.
    assert sorted(line["worker"] for line in lines if line["event"] == "stopping") == [0, 1]


async def test_readiness_fails_when_any_worker_cannot_store(
    aiohttp_client: Any, database_url: str, source: SourceConfig, tmp_path: Path
) -> None:
    # Worker 0 is a whole receiver in this process; worker 1 answers its peers only, with the
    # checks a worker whose own pool cannot reach the database would give.
    group = f"dfm-test.{os.getpid()}.{tmp_path.name}"
    config = ReceiverConfig(sources=[source], database=DatabaseConfig(url=database_url))
    app = create_app(config, worker=Worker(0, 2, group))
    client = await aiohttp_client(ReceiverServer(app))
    assert await app[STORE].wait_ready(60)
    other_checks = {"database": False, "secrets": True, "auth": True}

    async def other_ready() -> dict[str, bool]:
        return dict(other_checks)

    other = Peers(Worker(1, 2, group), CollectorRegistry(), lambda: None, ready=other_ready)
    await other.start()
    try:
        response = await client.get("/readyz")
        assert response.status == 503
        assert response.content_type == "application/problem+json"
        body = await response.json(content_type=None)
        assert body["detail"] == "not ready: database (worker 1)"
        assert body["checks"]["database"] is True  # the worker asked can store
        assert body["workers"]["1"] == other_checks

        other_checks["database"] = True
        response = await client.get("/readyz")
        assert response.status == 200
        body = await response.json()
        assert sorted(body["workers"]) == ["0", "1"]
    finally:
        await other.stop()
    # Without its peer, the worker asked says so rather than answer for it.
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json(content_type=None))["detail"] == (
        "not ready: worker 1 not answering"
    )


@pytest.mark.parametrize("workers", [1, 2])
async def test_after_sigterm_the_receiver_serves_on_for_its_shutdown_delay(
    database_url: str, source: SourceConfig, tmp_path: Path, workers: int
) -> None:
    # What the operator sets (5 s): a terminating pod stays in the endpoints for a moment, and
    # a delivery routed to it then must be stored, not refused. With one worker the delay runs
    # out by itself; with two, a second SIGTERM (to the supervisor) ends it long before.
    delay = 20.0 if workers == 1 else 120.0
    process, base, log = await start(
        tmp_path, database_url, source, workers=workers, shutdown_delay_seconds=delay
    )

    def lingering() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line["event"].startswith("stop signal: serving on")]

    try:
        # Keep-alive connections stay open while the receiver runs...
        assert "close" not in await connection_headers(base, source, "kept-alive")
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        while len(lingering()) < workers:
            assert time.monotonic() - signalled < 10, "no worker said it serves on"
            await asyncio.sleep(0.05)
        # New connections, after the signal: served and stored.
        answers = await asyncio.gather(*(post(base, source, f"late-{n}") for n in range(20)))
        assert answers == [(200, "stored")] * 20
        # Readiness stays truthful while the receiver can serve: Kubernetes already counts a
        # terminating pod out of the ready endpoints, and may still use it when no other is.
        # ...and during the delay every answer closes its connection, so a sender holding one
        # opens a new one, which Kubernetes routes to a pod that is not stopping. /readyz stays
        # 200 (truthful while the pod can serve).
        assert await connection_headers(base, source, "moved-on") == ["close", "close"]
        assert process.poll() is None
        if workers > 1:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)  # well before the delay would end
        else:
            code = process.wait(timeout=delay + 30)
    finally:
        if process.poll() is None:
            stop(process, signal.SIGKILL)
    assert code == 0, log.read_text()
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM webhook_events WHERE source = $1 AND event_id LIKE 'late-%'",
            source.key,
        )
    finally:
        await conn.close()
    assert stored == 20
    lingered = lingering()
    assert len(lingered) == workers
    assert {line["seconds"] for line in lingered} == {delay}
