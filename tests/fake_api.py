"""A loopback API to sync from, paging in each of the styles real APIs use.

One item list, served by every style:

- ``highlevel``: HighLevel's contacts API (GET /contacts/?locationId=…&limit=…; ``Version:
  2021-07-28``; ``{"contacts": [...], "meta": {"startAfterId", "startAfter", "total",
  "nextPageUrl"}}``; both startAfterId and startAfter go into the next request, and a final
  page still names its last contact, so the walk ends on the empty page after it);
- ``cursor``: ``?cursor=<id>`` with ``{"data": [...], "next": "<id>" | null}``;
- ``link``: a JSON list with RFC 8288 ``Link: <…>; rel="next"``;
- ``offset``: ``?offset=&limit=`` with ``{"results": [...]}``;
- ``page``: ``?page=&per_page=`` with ``{"items": [...]}``.

Tests script failures by request number (``faults``), change the accepted token (``token``),
hold a page until released (``hold_at``) and read every request back (``requests``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

HIGHLEVEL_VERSION = "2021-07-28"
LOCATION_ID = "ve9EPM428h8vShlRW1KT"


def contacts(count: int, *, start: int = 0) -> list[dict[str, Any]]:
    """HighLevel-shaped contacts, oldest first (dateAdded in ms, as startAfter wants it)."""
    return [
        {
            "id": f"c{n:05d}",
            "locationId": LOCATION_ID,
            "firstName": f"First{n}",
            "email": f"contact{n}@example.com",
            "dateAdded": 1_700_000_000_000 + n * 1000,
            "dateUpdated": f"2026-11-{1 + n % 28:02d}T00:00:{n % 60:02d}Z",
        }
        for n in range(start, start + count)
    ]


@dataclass
class Seen:
    path: str
    params: dict[str, str]
    authorization: str | None
    version: str | None
    status: int


@dataclass
class FakeApi:
    items: list[dict[str, Any]]
    style: str
    page_size: int = 5
    token: str | None = None  # the bearer token accepted (None: no auth asked)
    faults: dict[int, tuple[int, dict[str, str]]] = field(default_factory=dict)  # by request #
    hold_at: int | None = None  # the page number (1-based) held until ``release`` is set
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    on_request: Callable[[int], None] | None = None  # called with each request's number
    since_param: str | None = None  # incremental: only items with dateUpdated >= this param
    link_base: str | None = None  # link: the origin the next links name (default: this one)
    location_id: str = LOCATION_ID  # highlevel: the locationId a request must name
    requests: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/contacts/", self._handle)
        app.router.add_get("/items", self._handle)
        return app

    # -- what the tests read ----------------------------------------------------------------

    def pages_served(self) -> list[dict[str, str]]:
        return [r.params for r in self.requests if r.status == 200]

    # -- serving -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        number = len(self.requests) + 1
        params = dict(request.query)
        seen = Seen(
            request.path,
            params,
            request.headers.get("Authorization"),
            request.headers.get("Version"),
            200,
        )
        self.requests.append(seen)
        if self.on_request is not None:
            self.on_request(number)
        if number in self.faults:
            status, headers = self.faults[number]
            seen.status = status
            return web.json_response(
                {"message": "scripted failure"}, status=status, headers=headers
            )
        if self.token is not None and seen.authorization != f"Bearer {self.token}":
            seen.status = 401
            return web.json_response({"message": "Invalid JWT"}, status=401)
        items = self._filtered(params)
        handler = getattr(self, f"_{self.style}")
        response: web.StreamResponse = handler(request, params, items)
        seen.status = response.status
        page = self._page_number(seen)
        if self.hold_at is not None and page == self.hold_at:
            self.held.set()
            await self.release.wait()
        return response

    def _page_number(self, seen: Seen) -> int:
        return sum(1 for r in self.requests if r.status == 200)

    def _filtered(self, params: dict[str, str]) -> list[dict[str, Any]]:
        if self.since_param and params.get(self.since_param):
            since = params[self.since_param]
            return [i for i in self.items if str(i["dateUpdated"]) >= since]
        return self.items

    def _after(self, items: list[dict[str, Any]], item_id: str | None) -> list[dict[str, Any]]:
        if not item_id:
            return items
        index = next((n for n, i in enumerate(items) if i["id"] == item_id), None)
        return [] if index is None else items[index + 1 :]

    def _highlevel(
        self, request: web.Request, params: dict[str, str], items: list[dict[str, Any]]
    ) -> web.StreamResponse:
        if request.headers.get("Version") != HIGHLEVEL_VERSION:
            return web.json_response({"message": "Version header missing"}, status=400)
        if params.get("locationId") != self.location_id:
            return web.json_response({"message": "locationId missing"}, status=422)
        limit = min(int(params.get("limit", "20")), 100)
        after_id, after = params.get("startAfterId"), params.get("startAfter")
        if bool(after_id) != bool(after):
            return web.json_response(
                {"message": "startAfter and startAfterId go together"}, status=422
            )
        rest = self._after(items, after_id)
        if after and rest and rest[0]["dateAdded"] <= int(after):
            return web.json_response({"message": "startAfter does not match"}, status=422)
        page = rest[:limit]
        last = page[-1] if page else None
        next_url = None
        if last is not None:
            next_url = (
                f"{request.scheme}://{request.host}/contacts/?locationId={self.location_id}"
                f"&limit={limit}&startAfterId={last['id']}&startAfter={last['dateAdded']}"
            )
        meta = {
            "total": len(items),
            "nextPageUrl": next_url,
            "startAfterId": last["id"] if last else None,
            "startAfter": last["dateAdded"] if last else None,
            "currentPage": None,
            "nextPage": None,
            "prevPage": None,
        }
        return web.json_response({"contacts": page, "meta": meta})

    def _cursor(
        self, request: web.Request, params: dict[str, str], items: list[dict[str, Any]]
    ) -> web.StreamResponse:
        rest = self._after(items, params.get("cursor"))
        page = rest[: self.page_size]
        more = len(rest) > self.page_size
        return web.json_response({"data": page, "next": page[-1]["id"] if more else None})

    def _link(
        self, request: web.Request, params: dict[str, str], items: list[dict[str, Any]]
    ) -> web.StreamResponse:
        number = int(params.get("page", "1"))
        start = (number - 1) * self.page_size
        page = items[start : start + self.page_size]
        headers = {}
        if start + self.page_size < len(items):
            origin = self.link_base or f"{request.scheme}://{request.host}"
            base = f"{origin}{request.path}"
            headers["Link"] = (
                f'<{base}?page=1>; rel="first", <{base}?page={number + 1}>; rel="next"'
            )
        return web.Response(body=json.dumps(page), content_type="application/json", headers=headers)

    def _offset(
        self, request: web.Request, params: dict[str, str], items: list[dict[str, Any]]
    ) -> web.StreamResponse:
        offset = int(params.get("offset", "0"))
        limit = min(int(params.get("limit", "10")), self.page_size)  # the server caps the limit
        return web.json_response({"results": items[offset : offset + limit]})

    def _page(
        self, request: web.Request, params: dict[str, str], items: list[dict[str, Any]]
    ) -> web.StreamResponse:
        number = int(params.get("page", "1"))
        size = int(params.get("per_page", str(self.page_size)))
        return web.json_response({"items": items[(number - 1) * size : number * size]})


async def serve(api: FakeApi, servers: list[TestServer]) -> str:
    """Start ``api`` on loopback, closed with ``servers`` (the ``served`` fixture); its base URL."""
    server = TestServer(api.app())
    await server.start_server()
    servers.append(server)
    return str(server.make_url("")).rstrip("/")
