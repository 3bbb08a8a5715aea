"""The access log's lines: one JSON object each, RFC 3339 UTC timestamps, any event id escaped."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

from webhook_server import logs
from webhook_server.logs import AccessLog, utc_timestamp


def test_timestamps_are_rfc3339_utc_with_microseconds_and_match_the_clock() -> None:
    moments = [0.0, 1764892800.000001, 1764892800.5, 1764892859.999999, 1764892860.25]
    for now in moments:
        text = utc_timestamp(now)
        assert text.endswith("Z")
        parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs(parsed.timestamp() - now) < 2e-6, (now, text)
    # The per-second cache follows the clock back and forth.
    assert utc_timestamp(1764892859.5).startswith("2025-12-05T00:00:59.")
    assert utc_timestamp(1764892860.5).startswith("2025-12-05T00:01:00.")
    assert utc_timestamp(1764892859.5).startswith("2025-12-05T00:00:59.")


def test_a_request_line_is_one_json_object_whatever_the_event_id_holds() -> None:
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        access = AccessLog()
        access.request("r1", "ns/gh", "POST", 200, "stored", 'a"b\\c\u00e9\U0001f600', 1.25)
        access.request("r2", "unrouted", "OTHER", 404, "not_found", None, 0.5)
        access.write(event="forward", source="ns/gh", attempt=2, state=None)
    finally:
        logs.configure()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["request", "request", "forward"]
    assert lines[0]["event_id"] == 'a"b\\c\u00e9\U0001f600'
    assert lines[0]["latency_ms"] == 1.25
    assert lines[1]["event_id"] is None
    assert lines[2]["attempt"] == 2


def test_above_info_nothing_is_written() -> None:
    stream = io.StringIO()
    logs.configure("WARNING", stream=stream)
    try:
        AccessLog().request("r1", "ns/gh", "POST", 200, "stored", "e", 1.0)
    finally:
        logs.configure()
    assert stream.getvalue() == ""
