"""`dfm events list|show|replay`: the stored events, read and replayed from the database.

The same queries as the receiver's Events API (``webhook_server.store.events``), run with the
database's own credentials instead of a token: against ``--database-url`` (or
``$DFM_DATABASE_URL``), else `dfm local`'s embedded PostgreSQL. A table for people, ``-o json``
for scripts (the API's JSON, item for item), ``-o wide`` for more columns, as kubectl does.

A replay only writes the outbox: a running receiver of the source delivers it (within its
``pollIntervalSeconds``), with the same ``webhook-id`` as the first time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from webhook_server.store import events as store_events

DATABASE_URL_ENV = "DFM_DATABASE_URL"
OUTPUTS = ("table", "wide", "json")


class UsageError(Exception):
    """Arguments that do not fit together, or a database this command cannot use: exit 2."""


class Failed(Exception):
    """The command ran and some of what it was asked failed: exit 1."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "events",
        help="list, show and replay stored events (the Events API's queries, from the database)",
        description=(
            "Reads the event store directly: --database-url ($DFM_DATABASE_URL), else the "
            "embedded PostgreSQL `dfm local` uses ($DFM_DATA_DIR, default ~/.local/share/dfm). "
            "A replay re-queues deliveries in the forward outbox; the source's receivers send "
            "them."
        ),
    )
    commands = p.add_subparsers(dest="events_command", required=True)

    ls = commands.add_parser("list", help="events, newest first")
    _database_option(ls)
    _selection(ls)
    ls.add_argument(
        "--state",
        choices=store_events.DELIVERY_STATES,
        help="only events whose delivery is in this state (none: no delivery)",
    )
    ls.add_argument(
        "--limit",
        type=int,
        default=store_events.DEFAULT_PAGE_SIZE,
        help=f"at most this many (default {store_events.DEFAULT_PAGE_SIZE}, at most "
        f"{store_events.MAX_PAGE_SIZE}); the next page's --cursor is printed on stderr",
    )
    ls.add_argument("--cursor", help="continue after the page that printed this cursor")
    ls.add_argument("--event-id", metavar="ID", help="only events with this provider id")
    ls.add_argument("-o", "--output", choices=OUTPUTS, default="table")

    show = commands.add_parser(
        "show",
        help="one event and its delivery",
        description="ID is an event's id (as -o json and the API give it), or its provider "
        "event id (with --source when several sources have it).",
    )
    _database_option(show)
    show.add_argument("id", metavar="ID")
    show.add_argument("--source", metavar="NAMESPACE/NAME")
    show.add_argument(
        "--payload",
        action="store_true",
        help="print the payload and the stored headers too (they may hold personal data)",
    )
    show.add_argument("-o", "--output", choices=("text", "json"), default="text")

    replay = commands.add_parser(
        "replay",
        help="deliver events to their forward target once more (same webhook-id)",
        description="Either event ids (as for show), or --source with --dead and/or "
        "--since/--until for every event so selected. Deliveries pending already are left "
        "alone.",
    )
    _database_option(replay)
    replay.add_argument("ids", metavar="ID", nargs="*")
    _selection(replay)
    replay.add_argument("--dead", action="store_true", help="the dead-lettered events")
    replay.add_argument("--dry-run", action="store_true", help="say how many, re-queue nothing")
    replay.add_argument(
        "--max",
        type=int,
        default=10_000,
        help="refuse a selection of more events than this (default 10000)",
    )
    replay.add_argument("-o", "--output", choices=("text", "json"), default="text")


def _database_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_URL_ENV),
        metavar="URL",
        help=f"postgresql:// URL (default: ${DATABASE_URL_ENV}, else dfm local's database)",
    )


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", metavar="NAMESPACE/NAME", help="only this source's events")
    p.add_argument("--type", help="only events of this type")
    p.add_argument(
        "--since",
        metavar="DURATION|TIME",
        help="received at or after: a duration ago (90s, 15m, 48h) or an RFC 3339 time",
    )
    p.add_argument("--until", metavar="DURATION|TIME", help="received before (as --since)")


def _when(text: str | None, flag: str, now: datetime) -> datetime | None:
    if text is None:
        return None
    from dfm_operator.api.common import parse_duration

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{flag} {text}: expected a duration (15m, 48h) or an RFC 3339 time"
        ) from None
    if at.tzinfo is None:
        raise UsageError(f"{flag} {text}: give a time zone (Z or an offset)")
    return at.astimezone(UTC)


# -- the database --------------------------------------------------------------------------------


async def _connect(url: str) -> Any:
    import asyncpg

    from webhook_server.store.migrations import load_migrations

    try:
        conn = await asyncpg.connect(
            url, timeout=10, server_settings={"application_name": "dfm-events", "timezone": "UTC"}
        )
    except (OSError, asyncpg.PostgresError, ValueError) as exc:
        # Never the URL: it may hold a password.
        raise UsageError(f"cannot connect to the database: {type(exc).__name__}") from None
    latest = load_migrations()[-1].version
    applied = None
    if await conn.fetchval("SELECT to_regclass('dfm_schema_migrations')") is not None:
        applied = await conn.fetchval("SELECT max(version) FROM dfm_schema_migrations")
    if applied is None or applied < latest:
        await conn.close()
        if applied is None:
            raise UsageError("no event store in this database: no receiver has run against it")
        raise UsageError(
            f"the event store's schema is older than this dfm (migration {applied} of "
            f"{latest}): start a receiver of this version against it first"
        )
    return conn


def _run(url_arg: str | None, work: Any) -> Any:
    from dfm.cli import _database

    with _database(url_arg, "events") as url:

        async def main() -> Any:
            conn = await _connect(url)
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(main())


# -- list ----------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    try:
        limit = store_events.page_size(args.limit, with_payload=False)
        selection = store_events.EventFilter(
            sources=[args.source] if args.source else None,
            event_type=args.type,
            event_id=args.event_id,
            since=_when(args.since, "--since", now),
            until=_when(args.until, "--until", now),
            state=args.state,
        )
    except ValueError as exc:
        raise UsageError(f"--limit: {exc}") from None

    async def work(conn: Any) -> store_events.Page:
        try:
            return await store_events.list_events(conn, selection, limit=limit, cursor=args.cursor)
        except store_events.BadEventId:
            raise UsageError("--cursor: not a cursor this command printed") from None

    page: store_events.Page = _run(args.database_url, work)
    if args.output == "json":
        print(json.dumps(page.to_json(), indent=2))
    else:
        _print_table(page.items, wide=args.output == "wide", now=now)
        if not page.items:
            print("No events found.", file=sys.stderr)
    if page.next_cursor is not None and args.output != "json":
        print(f"(more: --cursor {page.next_cursor})", file=sys.stderr)
    return 0


def _print_table(items: Sequence[store_events.StoredEvent], *, wide: bool, now: datetime) -> None:
    if not items:
        return
    header = ["SOURCE", "EVENT ID", "TYPE", "DELIVERY", "ATTEMPTS", "AGE"]
    if wide:
        header += ["RECEIVED", "WEBHOOK ID", "LAST STATUS", "LAST ERROR", "REPLAYS", "SIZE", "ID"]
    rows = [header]
    for e in items:
        d = e.delivery
        row = [
            e.source,
            _cell(e.event_id),
            _cell(e.event_type or "-"),
            d.state if d else "-",
            str(d.attempts) if d else "-",
            age(now - e.received_at),
        ]
        if wide:
            row += [
                e.received_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                d.webhook_id if d else "-",
                str(d.last_status) if d and d.last_status is not None else "-",
                d.last_error if d and d.last_error else "-",
                str(d.replays) if d else "-",
                str(e.size),
                e.id,
            ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _cell(text: str, width: int = 48) -> str:
    """One line, bounded: ids and types come from providers."""
    flat = "".join(c if c.isprintable() else "?" for c in text)
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def age(delta: timedelta) -> str:
    """kubectl's short age: 45s, 12m, 5h, 3d."""
    seconds = max(int(delta.total_seconds()), 0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# -- show ----------------------------------------------------------------------------------------


async def _resolve(conn: Any, text: str, source: str | None) -> store_events.StoredEvent | None:
    """The event ``text`` names: an id of ours, else a provider event id (unique once
    ``source`` narrows it). Raises Failed when a provider id is ambiguous."""
    try:
        key = store_events.decode_id(text)
    except store_events.BadEventId:
        key = None
    if key is not None and (source is None or key[0] == source):
        found = await store_events.get_event(conn, key)
        if found is not None:
            return found
    matches = await store_events.find_events(conn, text, [source] if source else None)
    if len(matches) > 1:
        where = ", ".join(sorted({f"{m.source}{' ' + m.subject if m.subject else ''}"
                                  for m in matches}))  # fmt: skip
        raise Failed(f"{text}: several events have this id ({where}): give --source or the id")
    return matches[0] if matches else None


def cmd_show(args: argparse.Namespace) -> int:
    async def work(conn: Any) -> store_events.StoredEvent | None:
        found = await _resolve(conn, args.id, args.source)
        if found is None or not args.payload:
            return found
        return await store_events.get_event(conn, found.key, with_payload=True)

    event: store_events.StoredEvent | None = _run(args.database_url, work)
    if event is None:
        raise Failed(f"{args.id}: no such event")
    if args.output == "json":
        print(json.dumps(event.to_json(), indent=2))
        return 0
    out = event.to_json()
    lines = [
        ("Id", out["id"]),
        ("Source", out["source"]),
        ("Event ID", out["eventId"]),
        ("Subject", out["subject"] or "-"),
        ("Type", out["type"] or "-"),
        ("Received", out["receivedAt"]),
        ("Request ID", out["requestId"]),
        ("Events in body", str(out["eventCount"])),
        ("Size", f"{out['size']} bytes"),
    ]
    delivery = out["delivery"]
    if delivery is None:
        lines.append(("Delivery", "none (the source did not forward when it was stored)"))
    else:
        lines.append(("Delivery", ""))
        for name, value in delivery.items():
            lines.append((f"  {name}", "-" if value is None else str(value)))
    width = max(len(name) for name, _ in lines) + 1
    for name, value in lines:
        print(f"{name + ':':<{width}} {value}".rstrip())
    if args.payload:
        print("Headers:")
        for name, value in sorted((out.get("headers") or {}).items()):
            print(f"  {name}: {value}")
        print(f"Payload ({out['payloadEncoding']}):")
        print(out["payload"])
    return 0


# -- replay --------------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    bulk = args.dead or args.since is not None or args.until is not None or args.type is not None
    if args.ids and bulk:
        raise UsageError("give event ids, or a selection (--dead, --since, --until), not both")
    if not args.ids and not bulk:
        raise UsageError("give event ids, or --source with --dead and/or --since")
    if args.max < 1:
        raise UsageError("--max: must be at least 1")
    if args.ids:
        return _replay_ids(args)
    if not args.source:
        raise UsageError("--source is required for a replay by selection")
    if not args.dead and args.since is None:
        raise UsageError("say which events: --dead, or --since (and --until if wanted)")
    now = datetime.now(UTC)
    selection = store_events.EventFilter(
        sources=[args.source],
        event_type=args.type,
        since=_when(args.since, "--since", now),
        until=_when(args.until, "--until", now),
        state="dead" if args.dead else None,
    )

    async def work(conn: Any) -> store_events.ReplayResult:
        if not await store_events.forwarding_sources(conn, [args.source]):
            raise Failed(f"{args.source}: does not forward (as its receivers registered it)")
        try:
            return await store_events.replay_bulk(
                conn, selection, datetime.now(UTC), max_events=args.max, dry_run=args.dry_run
            )
        except store_events.TooManyToReplay as exc:
            raise Failed(
                f"more than {exc.allowed} events selected: narrow the selection or raise --max"
            ) from None

    result: store_events.ReplayResult = _run(args.database_url, work)
    if args.output == "json":
        print(json.dumps({**result.to_json(), "dryRun": args.dry_run}))
        return 0
    verb = "would re-queue" if args.dry_run else "re-queued"
    print(
        f"dfm events replay: {args.source}: {verb} {result.requeued} deliveries"
        f" ({result.already_pending} pending already, left alone)"
    )
    return 0


def _replay_ids(args: argparse.Namespace) -> int:
    async def work(conn: Any) -> list[dict[str, Any]]:
        outcomes = []
        for text in args.ids:
            event = await _resolve(conn, text, args.source)
            if event is None:
                outcomes.append({"id": text, "result": "not_found"})
                continue
            entry = {"id": event.id, "source": event.source, "eventId": event.event_id}
            if not await store_events.forwarding_sources(conn, [event.source]):
                outcomes.append({**entry, "result": "not_forwarded"})
            elif args.dry_run:
                pending = event.delivery is not None and event.delivery.state == "pending"
                outcomes.append({**entry, "result": "pending" if pending else "would_requeue"})
            elif await store_events.requeue(conn, [event.key], datetime.now(UTC)):
                outcomes.append({**entry, "result": "requeued"})
            else:
                outcomes.append({**entry, "result": "pending"})
        return outcomes

    outcomes: list[dict[str, Any]] = _run(args.database_url, work)
    if args.output == "json":
        print(json.dumps(outcomes, indent=2))
    else:
        words = {
            "requeued": "re-queued",
            "would_requeue": "would be re-queued",
            "pending": "pending already, left alone",
            "not_found": "no such event",
            "not_forwarded": "its source does not forward",
        }
        for o in outcomes:
            name = f"{o['source']} {o['eventId']}" if "source" in o else o["id"]
            if o["result"] in _FAILURES:
                print(f"dfm events replay: error: {name}: {words[o['result']]}", file=sys.stderr)
            else:
                print(f"{name}: {words[o['result']]}")
    return 1 if any(o["result"] in _FAILURES for o in outcomes) else 0


_FAILURES = ("not_found", "not_forwarded")


COMMANDS = {"list": cmd_list, "show": cmd_show, "replay": cmd_replay}


def run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.events_command](args)
    except UsageError as exc:
        print(f"dfm events {args.events_command}: error: {exc}", file=sys.stderr)
        return 2
    except Failed as exc:
        print(f"dfm events {args.events_command}: error: {exc}", file=sys.stderr)
        return 1
