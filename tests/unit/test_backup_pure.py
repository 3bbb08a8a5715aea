"""The backup engine's decisions, without a database: retention, names, the job's summary,
credentials kept out of command lines, leftovers and scratch databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dfm.backup_cmd import UsageError, split_backup
from webhook_server.backup.destinations import _leftover_name
from webhook_server.backup.manifest import (
    TERMINATION_MESSAGE_LIMIT,
    JobSummary,
    Manifest,
    backup_name,
    human_size,
    name_time,
)
from webhook_server.backup.retention import to_delete
from webhook_server.backup.tools import parse_version, redact, split_password, with_database
from webhook_server.backup.verify import data_entries, differences, stale_scratch

NOW = datetime(2026, 12, 10, 3, 0, tzinfo=UTC)


def daily(count: int) -> list[tuple[str, datetime]]:
    """``count`` nightly backups, the newest taken 30 minutes before NOW."""
    return [(f"b{n}", NOW - timedelta(days=count - 1 - n, minutes=30)) for n in range(count)]


@pytest.mark.parametrize(
    ("keep_last", "max_age", "deleted"),
    [
        (None, None, []),  # no rule: nothing goes
        (3, None, ["b0", "b1", "b2"]),
        (7, None, []),
        (1, None, ["b0", "b1", "b2", "b3", "b4"]),
        # within 48 h: b5 (0.5 h old), b4 (24.5 h); b3 is 48.5 h old
        (None, timedelta(hours=48), ["b0", "b1", "b2", "b3"]),
        # any rule keeps: the 4 newest, or younger than 48 h
        (4, timedelta(hours=48), ["b0", "b1"]),
        (2, timedelta(days=30), []),
    ],
)
def test_retention_keeps_what_any_rule_keeps(
    keep_last: int | None, max_age: timedelta | None, deleted: list[str]
) -> None:
    assert to_delete(daily(6), keep_last=keep_last, max_age=max_age, now=NOW) == deleted


def test_retention_never_deletes_the_newest_backup() -> None:
    old = [("a", NOW - timedelta(days=400)), ("b", NOW - timedelta(days=300))]
    assert to_delete(old, keep_last=None, max_age=timedelta(days=1), now=NOW) == ["a"]
    assert to_delete(old[:1], keep_last=None, max_age=timedelta(hours=1), now=NOW) == []


def test_names_carry_their_time_and_refuse_odd_prefixes() -> None:
    name = backup_name("events-nightly", datetime(2026, 11, 27, 2, 30, 5, tzinfo=UTC))
    assert name == "events-nightly-20261127T023005Z"
    assert name_time(name) == datetime(2026, 11, 27, 2, 30, 5, tzinfo=UTC)
    assert name_time("events-nightly") is None
    with pytest.raises(ValueError, match="invalid backup name prefix"):
        backup_name("../etc", NOW)


def test_the_summary_fits_a_termination_message() -> None:
    summary = JobSummary(ok=False, name="n", stage="dump", error="x" * 10_000)
    message = summary.to_message()
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = JobSummary.from_message(message)
    assert parsed is not None
    assert parsed.stage == "dump"
    assert JobSummary.from_message("OOMKilled") is None
    assert JobSummary.from_message("") is None
    # A newer job's extra field does not make an older operator blind.
    assert JobSummary.from_message('{"ok": true, "name": "n", "shinyNewField": 1}') is not None


def test_the_password_leaves_the_url_for_the_environment() -> None:
    target = split_password("postgresql://dfm:p%40ss%2Fw0rd@db.example:5432/events?sslmode=require")
    assert target.url == "postgresql://dfm@db.example:5432/events?sslmode=require"
    assert target.env["PGPASSWORD"] == "p@ss/w0rd"
    assert "p%40ss" not in target.url
    no_password = split_password("postgresql://dfm@db/events")
    assert no_password.url == "postgresql://dfm@db/events"
    url = "postgresql://dfm:p%40ss@db/events"
    assert redact("auth failed for p@ss and p%40ss", url) == "auth failed for *** and ***"
    assert with_database(url, "dfm_verify_x") == "postgresql://dfm:p%40ss@db/dfm_verify_x"


def test_versions_of_the_tools() -> None:
    assert parse_version("pg_dump (PostgreSQL) 17.6 (Debian 17.6-0+deb13u1)") == ("17.6", 17)
    assert parse_version("pg_restore (PostgreSQL) 18.6") == ("18.6", 18)
    assert parse_version("nonsense") is None


def test_backup_references() -> None:
    assert split_backup("/backups/nightly/events-20261127T023000Z") == (
        "/backups/nightly",
        "events-20261127T023000Z",
    )
    assert split_backup("/b/events-20261127T023000Z.dump") == ("/b", "events-20261127T023000Z")
    assert split_backup("/b/events-20261127T023000Z.manifest.json")[1] == (
        "events-20261127T023000Z"
    )
    assert split_backup("s3://bucket/p/q/events-1") == ("s3://bucket/p/q", "events-1")
    with pytest.raises(UsageError):
        split_backup("s3://bucket")


def test_what_interrupted_runs_leave() -> None:
    complete = {"e-20261127T023000Z"}
    assert _leftover_name(".e-20261128T023000Z.dump.partial", complete) == "e-20261128T023000Z"
    assert _leftover_name(".e-20261128T023000Z.manifest.json.partial", complete) == (
        "e-20261128T023000Z"
    )
    assert _leftover_name("e-20261128T023000Z.dump", complete) == "e-20261128T023000Z"
    assert _leftover_name("e-20261127T023000Z.dump", complete) is None  # has its manifest
    assert _leftover_name("notes.txt", complete) is None
    assert _leftover_name("someone-elses.dump", complete) is None


def test_only_day_old_scratch_databases_are_stale() -> None:
    names = [
        "dfm_verify_20261208T020000Z_0a1b2c3d",
        "dfm_verify_20261210T020000Z_0a1b2c3d",  # an hour old: maybe running now
        "dfm_production",
    ]
    assert stale_scratch(names, NOW) == ["dfm_verify_20261208T020000Z_0a1b2c3d"]


def _manifest(tables: dict[str, int], checksums: dict[str, str]) -> Manifest:
    return Manifest(
        name="e-20261127T023000Z",
        started_at=NOW,
        finished_at=NOW,
        database="events",
        server_version="17.2",
        pg_dump_version="17.2",
        dump_file="e-20261127T023000Z.dump",
        size_bytes=1,
        sha256="0" * 64,
        tables=tables,
        checksums=checksums,
    )


def test_differences_name_every_table_that_differs() -> None:
    expected = _manifest({"public.a": 3, "public.b": 1}, {"public.a": "x", "public.b": "y"})
    assert (
        differences(expected, {"public.a": 3, "public.b": 1}, {"public.a": "x", "public.b": "y"})
        == []
    )
    assert differences(expected, {"public.a": 2, "public.b": 1}, {"public.b": "y"}) == [
        "public.a: 2 rows, expected 3"
    ]
    assert differences(expected, {"public.a": 3}, {"public.a": "z"}) == [
        "public.a: content checksum differs",
        "public.b: missing rows, expected 1",
    ]


def test_table_data_entries_of_a_listing() -> None:
    listing = (
        ";\n; Archive created at 2026-12-04 22:11:01 UTC\n;\n"
        "3350; 0 16402 TABLE DATA public webhook_events_p20261204 postgres\n"
        "3351; 0 16390 TABLE DATA public webhook_event_ids postgres\n"
        "215; 1259 16390 TABLE public webhook_event_ids postgres\n"
    )
    assert data_entries(listing) == {
        "public.webhook_events_p20261204",
        "public.webhook_event_ids",
    }


def test_sizes_read_as_people_read_them() -> None:
    # One formatter for `dfm backup list` and the operator's BackupSucceeded Event.
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30, 2**45)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
        "32768.0 GiB",
    ]
