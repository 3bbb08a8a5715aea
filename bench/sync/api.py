"""A fast fake API for the bench: cursor-paged JSON, every page serialized before the first
request, so the API costs the sync as little as possible (it runs in its own process).

``python -m bench.sync.api --port P --items N --page-size S``
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from aiohttp import web

ITEM_PADDING = 700  # bytes of notes per item: about 1 KiB of JSON each, like a HighLevel contact


def item(n: int) -> dict[str, Any]:
    return {
        "id": f"c{n:08d}",
        "locationId": "ve9EPM428h8vShlRW1KT",
        "firstName": f"First{n}",
        "lastName": f"Last{n}",
        "email": f"contact{n}@example.com",
        "phone": f"+1555{n:07d}",
        "tags": ["bench", f"t{n % 7}"],
        "dateAdded": 1_700_000_000_000 + n,
        "dateUpdated": "2026-11-27T12:00:00Z",
        "notes": "x" * ITEM_PADDING,
    }


def pages(count: int, size: int) -> dict[str, bytes]:
    """cursor ("" for the first page) -> the page's body."""
    bodies: dict[str, bytes] = {}
    cursor = ""
    for start in range(0, count, size):
        chunk = [item(n) for n in range(start, min(start + size, count))]
        following = chunk[-1]["id"] if start + size < count else None
        bodies[cursor] = json.dumps(
            {"contacts": chunk, "meta": {"startAfterId": following}}
        ).encode()
        cursor = following or ""
    return bodies


def app(count: int, size: int) -> web.Application:
    bodies = pages(count, size)

    async def handle(request: web.Request) -> web.Response:
        body = bodies.get(request.query.get("startAfterId", ""))
        if body is None:
            return web.json_response({"contacts": [], "meta": {"startAfterId": None}})
        return web.Response(body=body, content_type="application/json")

    application = web.Application()
    application.router.add_get("/contacts/", handle)
    return application


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--page-size", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        app(args.items, args.page_size),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
