"""The sync engine against a loopback API and a real PostgreSQL.

Each pagination style walks the same items to the end and stores each once; 429s wait their
Retry-After, 5xx bursts are retried, a token refused mid-run is re-read, a failed or stopped run
resumes at its first uncommitted page, and the circuit stops calling an API that keeps failing.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from tests.fake_api import HIGHLEVEL_VERSION, LOCATION_ID, FakeApi, contacts, serve
from webhook_server.config import DatabaseConfig
from webhook_server.sync.config import (
    Cursor,
    HttpConfig,
    Incremental,
    LinkPagination,
    OffsetPagination,
    PagePagination,
    RetryConfig,
    SinkConfig,
    SyncConfig,
    TokenConfig,
)
from webhook_server.sync.runner import Clock, run_sync
from webhook_server.sync.summary import RunSummary

SCHEDULE = "crm/ghl-contacts"
SINK = "crm/ghl"
TOKEN_A, TOKEN_B = "token-A-8c1f", "token-B-77d2"

STYLES: dict[str, dict[str, Any]] = {
    "highlevel": {
        "path": "/contacts/",
        "query": {"locationId": LOCATION_ID, "limit": "5"},
        "headers": {"Version": HIGHLEVEL_VERSION},
        "items_path": "contacts",
        "cursor": Cursor.model_validate(
            {
                "param": "startAfterId",
                "from": "meta.startAfterId",
                "also": [{"param": "startAfter", "from": "meta.startAfter"}],
            }
        ),
    },
    "cursor": {
        "items_path": "data",
        "cursor": Cursor.model_validate({"param": "cursor", "from": "next"}),
    },
    "link": {"link": LinkPagination()},
    "offset": {
        "items_path": "results",
        # Asks for 10, the server gives at most 5: the walk must not take 5 < 10 as the end.
        "offset": OffsetPagination(limit=10),
    },
    "page": {
        "items_path": "items",
        "page": PagePagination(size_param="per_page", size=5),
    },
}


@dataclass
class FakeTime:
    """Wall and monotonic clocks that only the fake sleep moves; every wait is recorded."""

    wall: datetime = field(default_factory=lambda: datetime.now(UTC))
    mono: float = 1000.0
    waits: list[float] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)
        await asyncio.sleep(0)

    def clock(self) -> Clock:
        return Clock(
            now=lambda: self.wall,
            monotonic=lambda: self.mono,
            epoch=lambda: self.wall.timestamp(),
        )


def config(
    base: str,
    database_url: str,
    style: str,
    *,
    token: TokenConfig | None = None,
    retry: RetryConfig | None = None,
    **http: Any,
) -> SyncConfig:
    settings = dict(STYLES[style])
    path = settings.pop("path", "/items")
    return SyncConfig(
        schedule=SCHEDULE,
        sink=SinkConfig(source=SINK, retention_days=30),
        http=HttpConfig(
            url=base + path,
            event_type="contact",
            requests_per_second=1000,
            burst=100,
            **{**settings, **http},
        ),
        token=token,
        retry=retry or RetryConfig(max_attempts=5, backoff_seconds=2),
        run_timeout_seconds=60,
        database=DatabaseConfig(url=database_url),
    )


async def stored(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT source, event_id, event_type, request_id, payload, headers"
                " FROM webhook_events ORDER BY event_id"
            )
        )
    finally:
        await conn.close()


async def state_row(database_url: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(database_url)
    try:
        row: asyncpg.Record | None = await conn.fetchrow(
            "SELECT * FROM dfm_sync_state WHERE schedule = $1", SCHEDULE
        )
        return row
    finally:
        await conn.close()


def ids(rows: list[asyncpg.Record]) -> list[str]:
    return [r["event_id"] for r in rows]


def expected_ids(count: int) -> list[str]:
    return [f"contact/c{n:05d}" for n in range(count)]


async def run(cfg: SyncConfig, time: FakeTime | None = None, **kwargs: Any) -> RunSummary:
    time = time or FakeTime()
    return await run_sync(cfg, sleep=time.sleep, clock=time.clock(), **kwargs)


# --- every pagination style -------------------------------------------------------------------


@pytest.mark.parametrize("style", sorted(STYLES))
async def test_each_style_walks_every_page_and_stores_each_item_once(
    style: str, database_url: str, served: list[TestServer]
) -> None:
    items = contacts(23)
    api = FakeApi(items, style, page_size=5)
    base = await serve(api, served)

    summary = await run(config(base, database_url, style))

    assert (summary.result, summary.reason, summary.complete) == ("Succeeded", "Synced", True)
    assert (summary.items, summary.stored) == (23, 23)
    rows = await stored(database_url)
    assert ids(rows) == expected_ids(23)
    first = rows[0]
    assert (first["source"], first["event_type"]) == (SINK, "contact")
    assert json.loads(first["payload"]) == items[0]
    assert first["request_id"] == summary.run_id
    assert json.loads(first["headers"]) == {"x-dfm-sync-schedule": SCHEDULE}
    # Five full pages of 5 and one of 3; cursor-like styles also end on an empty page.
    assert len(api.pages_served()) in (5, 6)
    row = await state_row(database_url)
    assert row is not None
    assert row["resume"] is None

    again = await run(config(base, database_url, style))
    assert (again.items, again.stored, again.result) == (23, 0, "Succeeded")
    assert ids(await stored(database_url)) == expected_ids(23)


async def test_highlevel_requests_carry_version_location_and_both_cursor_values(
    database_url: str, served: list[TestServer]
) -> None:
    api = FakeApi(contacts(12), "highlevel")
    base = await serve(api, served)
    await run(config(base, database_url, "highlevel"))
    seen = api.pages_served()
    assert seen[0] == {"locationId": LOCATION_ID, "limit": "5"}
    assert seen[1]["startAfterId"] == "c00004"
    assert seen[1]["startAfter"] == str(1_700_000_000_000 + 4 * 1000)
    assert all(r.version == HIGHLEVEL_VERSION for r in api.requests)


async def test_a_link_to_another_origin_is_not_followed(
    database_url: str, served: list[TestServer]
) -> None:
    other = FakeApi(contacts(12), "link")
    other_base = await serve(other, served)
    api = FakeApi(contacts(12), "link", link_base=other_base.replace("127.0.0.1", "localhost"))
    base = await serve(api, served)
    summary = await run(config(base, database_url, "link"))
    assert (summary.result, summary.reason) == ("Failed", "BadResponse")
    assert "not followed (the token would go with it)" in summary.message
    assert summary.items == 5  # the first page was stored; nothing went to the other origin
    assert other.requests == []


# --- outbound manners ---------------------------------------------------------------------------


async def test_a_429_waits_its_retry_after(database_url: str, served: list[TestServer]) -> None:
    api = FakeApi(contacts(12), "cursor", faults={2: (429, {"Retry-After": "7"})})
    base = await serve(api, served)
    time = FakeTime()
    summary = await run(config(base, database_url, "cursor"), time)
    assert summary.result == "Succeeded"
    assert 7 in time.waits
    assert ids(await stored(database_url)) == expected_ids(12)


async def test_a_burst_of_500s_is_retried_with_backoff(
    database_url: str, served: list[TestServer]
) -> None:
    faults = {n: (500, {}) for n in (2, 3, 4)}
    api = FakeApi(contacts(12), "offset", faults=faults)
    base = await serve(api, served)
    time = FakeTime()
    summary = await run(config(base, database_url, "offset"), time)
    assert summary.result == "Succeeded"
    assert len(time.waits) == 3
    # Full jitter: each wait at most the doubling ceiling (2, 4, 8 s), never nothing.
    for wait, ceiling in zip(time.waits, (2, 4, 8), strict=True):
        assert 0.2 <= wait <= ceiling
    assert ids(await stored(database_url)) == expected_ids(12)


async def test_a_failed_run_keeps_its_pages_and_the_next_resumes_after_them(
    database_url: str, served: list[TestServer]
) -> None:
    # Page 3 fails on every attempt: pages 1 and 2 are committed, the run fails.
    faults = {n: (503, {}) for n in range(3, 8)}
    api = FakeApi(contacts(23), "highlevel", faults=faults)
    base = await serve(api, served)
    summary = await run(config(base, database_url, "highlevel"))
    assert (summary.result, summary.reason) == ("Failed", "UpstreamFailing")
    assert "503" in summary.message
    assert "5 attempt" in summary.message
    assert (summary.items, summary.pages) == (10, 2)
    assert ids(await stored(database_url)) == expected_ids(10)

    api.faults.clear()
    before = len(api.requests)
    second = await run(config(base, database_url, "highlevel"))
    assert (second.result, second.resumed, second.complete) == ("Succeeded", True, True)
    assert api.requests[before].params["startAfterId"] == "c00009"  # not page 1 again
    assert (second.items, second.stored) == (13, 13)
    assert ids(await stored(database_url)) == expected_ids(23)


async def test_a_token_refreshed_mid_run_is_read_again_after_a_401(
    database_url: str, served: list[TestServer], tmp_path: Path
) -> None:
    token_file = tmp_path / "access_token"
    token_file.write_text(TOKEN_A + "\n")
    api = FakeApi(contacts(23), "cursor", token=TOKEN_A)

    def expire(number: int) -> None:
        if number == 3:  # the provider retires A; the ManagedSecret has written B already
            api.token = TOKEN_B
            token_file.write_text(TOKEN_B)

    api.on_request = expire
    base = await serve(api, served)
    summary = await run(
        config(base, database_url, "cursor", token=TokenConfig(file=str(token_file)))
    )

    assert summary.result == "Succeeded"
    assert ids(await stored(database_url)) == expected_ids(23)
    sent = [(r.authorization, r.status) for r in api.requests]
    assert sent[:4] == [
        (f"Bearer {TOKEN_A}", 200),
        (f"Bearer {TOKEN_A}", 200),
        (f"Bearer {TOKEN_A}", 401),
        (f"Bearer {TOKEN_B}", 200),
    ]
    assert all(auth == f"Bearer {TOKEN_B}" for auth, _ in sent[3:])


async def test_a_refused_token_without_a_newer_one_fails_without_saying_it(
    database_url: str, served: list[TestServer], tmp_path: Path
) -> None:
    token_file = tmp_path / "access_token"
    token_file.write_text(TOKEN_A)
    api = FakeApi(contacts(5), "cursor", token="something-else")
    base = await serve(api, served)
    summary = await run(
        config(base, database_url, "cursor", token=TokenConfig(file=str(token_file)))
    )
    assert (summary.result, summary.reason) == ("Failed", "TokenUnavailable")
    assert "401" in summary.message
    assert len(api.requests) == 1  # re-read once: the same token is not sent again
    assert TOKEN_A not in summary.dumps()


async def test_a_missing_token_file_fails_at_once(
    database_url: str, served: list[TestServer], tmp_path: Path
) -> None:
    api = FakeApi(contacts(5), "cursor", token=TOKEN_A)
    base = await serve(api, served)
    token = TokenConfig(file=str(tmp_path / "absent"))
    summary = await run(config(base, database_url, "cursor", token=token))
    assert (summary.result, summary.reason) == ("Failed", "TokenUnavailable")
    assert api.requests == []


async def test_the_rate_limit_spaces_requests(database_url: str, served: list[TestServer]) -> None:
    api = FakeApi(contacts(20), "page", page_size=5)
    base = await serve(api, served)
    time = FakeTime()
    cfg = config(base, database_url, "page")
    cfg = cfg.model_copy(
        update={"http": cfg.http.model_copy(update={"requests_per_second": 2.0, "burst": 1})}
    )
    await run(cfg, time)
    # 5 requests (4 pages and the empty one): the first at once, then one every 0.5 s.
    assert time.waits == pytest.approx([0.5, 0.5, 0.5, 0.5])


async def test_the_circuit_skips_runs_after_repeated_upstream_failures(
    database_url: str, served: list[TestServer]
) -> None:
    api = FakeApi(contacts(5), "cursor", faults={n: (502, {}) for n in range(1, 100)})
    base = await serve(api, served)
    cfg = config(base, database_url, "cursor", retry=RetryConfig(max_attempts=2, backoff_seconds=0))
    time = FakeTime()
    for _ in range(3):
        assert (await run(cfg, time)).reason == "UpstreamFailing"
    calls = len(api.requests)
    assert calls == 6

    skipped = await run(cfg, time)
    assert (skipped.result, skipped.reason) == ("Failed", "UpstreamFailing")
    assert "not calling the API" in skipped.message
    assert len(api.requests) == calls

    # After the cool-down one run probes; the API is back, the circuit closes.
    api.faults.clear()
    time.wall += timedelta(minutes=6)
    probe = await run(cfg, time)
    assert probe.result == "Succeeded"
    assert (await run(cfg, time)).result == "Succeeded"


async def test_a_run_over_its_timeout_keeps_what_it_committed(
    database_url: str, served: list[TestServer]
) -> None:
    api = FakeApi(contacts(23), "cursor", hold_at=3)  # page 3 never comes back
    base = await serve(api, served)
    cfg = config(base, database_url, "cursor").model_copy(update={"run_timeout_seconds": 3.0})
    summary = await run_sync(cfg)  # a real clock: the run's timeout is real time
    assert (summary.result, summary.reason) == ("Failed", "DeadlineExceeded")
    # Whatever was committed before the deadline (pages 1 and 2 unless the machine is very
    # slow) is kept, and the next run takes over from there.
    committed = summary.items
    assert committed in (0, 5, 10)
    assert ids(await stored(database_url)) == expected_ids(committed)
    api.release.set()
    api.hold_at = None
    second = await run(config(base, database_url, "cursor"))
    assert second.resumed is (committed > 0)
    assert second.items == 23 - committed
    assert ids(await stored(database_url)) == expected_ids(23)


async def test_stop_interrupts_a_run(database_url: str, served: list[TestServer]) -> None:
    api = FakeApi(contacts(23), "cursor", hold_at=2)
    base = await serve(api, served)
    stop = asyncio.Event()
    task = asyncio.ensure_future(run(config(base, database_url, "cursor"), stop=stop))
    await asyncio.wait_for(api.held.wait(), 10)
    stop.set()
    summary = await task
    assert (summary.result, summary.reason) == ("Failed", "Interrupted")
    assert ids(await stored(database_url)) == expected_ids(5)
    api.release.set()


# --- what becomes an event --------------------------------------------------------------------


async def test_a_version_field_stores_a_changed_item_again(
    database_url: str, served: list[TestServer]
) -> None:
    items = contacts(3)
    api = FakeApi(items, "cursor")
    base = await serve(api, served)
    cfg = config(base, database_url, "cursor", version_field="dateUpdated")
    assert (await run(cfg)).stored == 3
    items[1]["dateUpdated"] = "2026-12-24T10:00:00Z"
    items[1]["firstName"] = "Changed"
    second = await run(cfg)
    assert (second.items, second.stored) == (3, 1)
    rows = await stored(database_url)
    assert len(rows) == 4
    assert "contact/c00001@2026-12-24T10:00:00Z" in ids(rows)


async def test_incremental_runs_send_the_last_complete_walks_watermark(
    database_url: str, served: list[TestServer]
) -> None:
    items = contacts(12)
    api = FakeApi(items, "page", since_param="updatedSince")
    base = await serve(api, served)
    cfg = config(
        base,
        database_url,
        "page",
        incremental=Incremental(field="dateUpdated", param="updatedSince"),
    )
    await run(cfg)
    newest = max(i["dateUpdated"] for i in items)
    assert "updatedSince" not in api.pages_served()[0]
    row = await state_row(database_url)
    assert row is not None
    assert json.loads(row["watermark"]) == newest

    before = len(api.requests)
    items.append({**contacts(1, start=99)[0], "dateUpdated": "2026-12-31T00:00:00Z"})
    summary = await run(cfg)
    assert api.requests[before].params["updatedSince"] == newest
    assert summary.stored == 1


async def test_an_item_without_an_id_fails_the_run_and_names_it(
    database_url: str, served: list[TestServer]
) -> None:
    items = contacts(7)
    del items[6]["id"]
    api = FakeApi(items, "cursor")
    base = await serve(api, served)
    summary = await run(config(base, database_url, "cursor"))
    assert (summary.result, summary.reason) == ("Failed", "BadResponse")
    assert summary.message == "item 1 of page 2 has no id at 'id' (a string or integer)"
    assert ids(await stored(database_url)) == expected_ids(5)


async def test_max_pages_ends_a_run_that_the_next_one_continues(
    database_url: str, served: list[TestServer]
) -> None:
    api = FakeApi(contacts(23), "cursor")
    base = await serve(api, served)
    cfg = config(base, database_url, "cursor", max_pages=2)
    first = await run(cfg)
    assert (first.result, first.complete, first.items) == ("Succeeded", False, 10)
    assert "the next run continues from page 3" in first.message
    second = await run(cfg)
    assert (second.resumed, second.items) == (True, 10)
    third = await run(cfg)
    assert (third.complete, third.items) == (True, 3)
    assert ids(await stored(database_url)) == expected_ids(23)


async def test_a_changed_url_starts_over_instead_of_resuming(
    database_url: str, served: list[TestServer]
) -> None:
    api = FakeApi(contacts(23), "cursor")
    base = await serve(api, served)
    await run(config(base, database_url, "cursor", max_pages=1))
    before = len(api.requests)
    summary = await run(config(base, database_url, "cursor", query={"status": "active"}))
    assert summary.resumed is False
    assert "cursor" not in api.requests[before].params
