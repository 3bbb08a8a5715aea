"""Pagination and response reading of the sync engine: pure functions, asserted on plain data."""

from __future__ import annotations

from typing import Any

import pytest

from webhook_server.sync.config import (
    Cursor,
    HttpConfig,
    Incremental,
    LinkPagination,
    OffsetPagination,
    PagePagination,
)
from webhook_server.sync.documents import (
    MISSING,
    BadResponse,
    get_path,
    greatest,
    item_id,
    items_at,
    scalar_text,
)
from webhook_server.sync.pagination import (
    PageRequest,
    describe,
    first_request,
    full_url,
    link_target,
    next_request,
    same_origin,
)
from webhook_server.sync.summary import RunSummary, parse_summary

URL = "https://api.example.com/v1/items"


def http(**settings: Any) -> HttpConfig:
    return HttpConfig(url=URL, event_type="item", **settings)


# --- Link headers (RFC 8288) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "target"),
    [
        (
            '<https://api.github.com/repos?page=2>; rel="next"',
            "https://api.github.com/repos?page=2",
        ),
        # GitHub: several links, next not first
        (
            '<https://a.example/x?page=1>; rel="prev", <https://a.example/x?page=3>; rel="next", '
            '<https://a.example/x?page=9>; rel="last"',
            "https://a.example/x?page=3",
        ),
        # Shopify: page_info cursors, commas inside the URL's query are not separators
        (
            "<https://shop.example/admin/api/2024-01/products.json?limit=50&page_info=abc%2Cd>; "
            'rel="next"',
            "https://shop.example/admin/api/2024-01/products.json?limit=50&page_info=abc%2Cd",
        ),
        # several relations in one rel, unquoted rel, other parameters first
        ('</p?n=2>; title="Next"; rel="next last"', "/p?n=2"),
        ("</p?n=2>; rel=next", "/p?n=2"),
        ("</p?n=2>; REL=NEXT", "/p?n=2"),
        ('</p?n=2>; rel="nextish"', None),
        ('<https://a.example/x?page=1>; rel="prev"', None),
        ("", None),
    ],
)
def test_link_target_reads_rfc_8288_headers(header: str, target: str | None) -> None:
    assert link_target(header, "next") == target


def test_same_origin_compares_scheme_host_and_effective_port() -> None:
    assert same_origin("https://API.example.com:443/a?b", URL)
    assert not same_origin("http://api.example.com/v1/items", URL)
    assert not same_origin("https://api.example.com:8443/v1/items", URL)
    assert not same_origin("https://api.example.com.evil.example/v1/items", URL)


def test_link_style_follows_relative_links_and_refuses_other_origins() -> None:
    cfg = http(link=LinkPagination())
    first = first_request(cfg, None)
    following = next_request(cfg, first, {"link": '</v1/items?page=2>; rel="next"'}, [1], 1)
    assert following == PageRequest(
        "https://api.example.com/v1/items?page=2", {}, 1, "https://api.example.com/v1/items?page=2"
    )
    assert next_request(cfg, first, {}, [1], 1) is None
    with pytest.raises(BadResponse, match=r"leaves https://api\.example\.com"):
        next_request(cfg, first, {"link": '<https://evil.example/x>; rel="next"'}, [1], 1)
    # A next link to the page just fetched would loop: the walk ends.
    assert next_request(cfg, following, {"link": f"<{following.url}>; rel=next"}, [1], 1) is None


# --- cursor, offset, page ---------------------------------------------------------------------


def test_cursor_style_carries_the_cursor_and_its_companions() -> None:
    cursor = Cursor.model_validate(
        {
            "param": "startAfterId",
            "from": "meta.startAfterId",
            "also": [{"param": "startAfter", "from": "meta.startAfter"}],
        }
    )
    cfg = http(cursor=cursor, query={"locationId": "L", "limit": "100"})
    first = first_request(cfg, None)
    assert first.params == {"locationId": "L", "limit": "100"}
    body = {"contacts": [{}], "meta": {"startAfterId": "c9", "startAfter": 1700000000123}}
    second = next_request(cfg, first, {}, body, 1)
    assert second is not None
    assert second.params == {
        "locationId": "L",
        "limit": "100",
        "startAfterId": "c9",
        "startAfter": "1700000000123",
    }
    assert second.number == 1
    # The same cursor again, a null one, or an empty page: the walk ends.
    assert next_request(cfg, second, {}, body, 1) is None
    assert next_request(cfg, second, {}, {"meta": {"startAfterId": None}}, 1) is None
    assert next_request(cfg, first, {}, body, 0) is None


def test_offset_style_moves_by_the_items_received_not_by_the_limit_asked() -> None:
    cfg = http(offset=OffsetPagination(limit=100, start=0))
    first = first_request(cfg, None)
    assert first.params == {"offset": "0", "limit": "100"}
    # The server capped the page at 25: the next page starts at 25, and the walk goes on.
    second = next_request(cfg, first, {}, {}, 25)
    assert second is not None
    assert second.params == {"offset": "25", "limit": "100"}
    assert next_request(cfg, second, {}, {}, 0) is None


def test_page_style_counts_pages_from_first() -> None:
    cfg = http(page=PagePagination(param="p", first=0, size_param="per_page", size=50))
    first = first_request(cfg, None)
    assert first.params == {"p": "0", "per_page": "50"}
    second = next_request(cfg, first, {}, {}, 50)
    assert second is not None
    assert second.params["p"] == "1"


def test_without_pagination_one_page_is_fetched() -> None:
    cfg = http()
    assert next_request(cfg, first_request(cfg, None), {}, {}, 10) is None


def test_the_watermark_goes_into_the_first_request_only_when_there_is_one() -> None:
    cfg = http(incremental=Incremental(field="updated", param="since"), query={"a": "1"})
    assert first_request(cfg, None).params == {"a": "1"}
    assert first_request(cfg, "2026-12-01T00:00:00Z").params == {
        "a": "1",
        "since": "2026-12-01T00:00:00Z",
    }


def test_a_page_request_survives_its_json_round_trip() -> None:
    request = PageRequest(URL, {"cursor": "c 1/2"}, 3, "c 1/2")
    assert PageRequest.from_json(request.to_json()) == request
    assert full_url(request) == URL + "?cursor=c+1%2F2"
    assert full_url(PageRequest(URL + "?a=1", {"b": "2"})) == URL + "?a=1&b=2"


def test_urls_in_messages_never_carry_the_query() -> None:
    assert describe(URL + "?api_key=s3cret&cursor=x") == URL


def test_the_fingerprint_changes_with_what_shapes_the_walk_only() -> None:
    base = http(cursor=Cursor.model_validate({"param": "c", "from": "next"}))
    assert (
        base.fingerprint()
        == http(
            cursor=Cursor.model_validate({"param": "c", "from": "next"}),
            headers={"Version": "2"},
            requests_per_second=1,
        ).fingerprint()
    )
    assert (
        base.fingerprint()
        != http(cursor=Cursor.model_validate({"param": "c", "from": "meta.next"})).fingerprint()
    )
    assert (
        base.fingerprint()
        != http(
            cursor=Cursor.model_validate({"param": "c", "from": "next"}), query={"x": "1"}
        ).fingerprint()
    )


# --- reading documents ------------------------------------------------------------------------


def test_dotted_paths() -> None:
    body = {"meta": {"next": "c2", "n": 0}, "data": [{"id": 1}, {"id": 2}]}
    assert get_path(body, "meta.next") == "c2"
    assert get_path(body, "meta.n") == 0
    assert get_path(body, "data.1.id") == 2
    assert get_path(body, "data.9.id") is MISSING
    assert get_path(body, "meta.next.deeper") is MISSING


def test_items_at_a_path_or_the_body_itself() -> None:
    assert items_at([1, 2], "") == [1, 2]
    assert items_at({"data": {"items": [1]}}, "data.items") == [1]
    assert items_at({"data": None}, "data") == []
    with pytest.raises(BadResponse, match="the response has no 'contacts'"):
        items_at({"data": []}, "contacts")
    with pytest.raises(BadResponse, match="'data' is an object, not a list"):
        items_at({"data": {}}, "data")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"name": "x"}, "has no id at 'id'"),
        ({"id": None}, "has no id at 'id'"),
        ({"id": ""}, "has a string as id"),
        ({"id": True}, "has a boolean as id"),
        ({"id": 1.5}, "has a number as id"),
        ({"id": {"a": 1}}, "has an object as id"),
        ("just text", "is a string, not an object"),
    ],
)
def test_an_item_without_a_usable_id_is_a_bad_response(item: Any, message: str) -> None:
    with pytest.raises(BadResponse, match=message):
        item_id(item, "id", "item 0 of page 1")


def test_ids_are_strings_or_integers() -> None:
    assert item_id({"id": 42}, "id", "x") == "42"
    assert item_id({"ref": {"id": "a"}}, "ref.id", "x") == "a"


def test_scalars_and_the_greatest_value() -> None:
    assert [scalar_text(v) for v in ("a", 7, 1.5, None, "", True, [1], MISSING)] == [
        "a", "7", "1.5", None, None, None, None, None,
    ]  # fmt: skip
    assert greatest([None, "2026-01-02", "2026-01-10", MISSING]) == "2026-01-10"
    assert greatest([3, 20, 100]) == 100  # numbers as numbers, not as text
    assert greatest([None, MISSING]) is None


# --- the summary ------------------------------------------------------------------------------


def test_the_summary_reads_back_and_refuses_what_is_not_one() -> None:
    from datetime import UTC, datetime, timedelta

    started = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    run = RunSummary("crm/x", "r", started, started + timedelta(seconds=3.5))
    run.result, run.reason, run.message = "Succeeded", "Synced", "m" * 5000
    run.items, run.stored = 10, 4
    text = run.dumps()
    assert len(text.encode()) < 4096
    read = parse_summary(text)
    assert read is not None
    assert (read.result, read.reason, read.items, read.stored) == ("Succeeded", "Synced", 10, 4)
    assert read.duration_seconds == 3.5
    for other in (None, "", "not json", "[]", '{"v": 2}', '{"v":1,"result":"Maybe","reason":"x"}'):
        assert parse_summary(other) is None
    tampered = parse_summary('{"v":1,"result":"Failed","reason":"X","items":-3,"stored":"7"}')
    assert tampered is not None
    assert (tampered.items, tampered.stored) == (None, None)
