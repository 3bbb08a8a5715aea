"""The four ways real APIs page, as pure functions: the first request, and the next one given a
response. A :class:`PageRequest` is also what a run records after each committed page, so a
killed run resumes exactly there.

- ``cursor``: a value of the body (HighLevel ``meta.startAfterId``, with ``meta.startAfter``
  beside it) goes into the next request's query.
- ``link``: RFC 8288 ``Link: <…>; rel="next"`` (GitHub, Shopify); only followed on the same
  origin, since the bearer token goes with it.
- ``offset``: ``offset=0&limit=100``, then the offset moves by the items received.
- ``page``: ``page=1``, ``page=2``, …

Every style ends at a page without items; cursor and link also end when there is no next one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from webhook_server.sync.config import HttpConfig, PaginationStyle
from webhook_server.sync.documents import BadResponse, get_path, scalar_text


@dataclass(frozen=True)
class PageRequest:
    """One GET: ``url`` plus ``params`` (which the URL does not already carry)."""

    url: str
    params: dict[str, str] = field(default_factory=dict)
    number: int = 0  # pages fetched before this one in the run (0: the first)
    cursor: str | None = None  # the cursor value this request sends (a repeat ends the walk)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "params": dict(self.params),
            "number": self.number,
            "cursor": self.cursor,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PageRequest:
        return cls(
            url=str(data["url"]),
            params={str(k): str(v) for k, v in (data.get("params") or {}).items()},
            number=int(data.get("number") or 0),
            cursor=data.get("cursor"),
        )


def first_request(http: HttpConfig, watermark: str | None) -> PageRequest:
    """The run's first page: the configured query, the watermark, the style's start."""
    params = dict(http.query)
    if http.incremental is not None and watermark is not None:
        params[http.incremental.param] = watermark
    if http.offset is not None:
        params[http.offset.param] = str(http.offset.start)
        params[http.offset.limit_param] = str(http.offset.limit)
    if http.page is not None:
        params[http.page.param] = str(http.page.first)
        if http.page.size_param is not None and http.page.size is not None:
            params[http.page.size_param] = str(http.page.size)
    return PageRequest(url=http.url, params=params)


def next_request(
    http: HttpConfig,
    request: PageRequest,
    headers: dict[str, str],
    body: Any,
    item_count: int,
) -> PageRequest | None:
    """The request after ``request``'s response (its headers with lower-case names, its parsed
    body, its number of items), or None when the walk is over."""
    if item_count == 0:
        return None
    style = http.style
    following = request.number + 1
    if style == PaginationStyle.CURSOR:
        assert http.cursor is not None
        cursor = scalar_text(get_path(body, http.cursor.from_))
        if cursor is None or cursor == request.cursor:
            return None
        params = {**request.params, http.cursor.param: cursor}
        for extra in http.cursor.also:
            value = scalar_text(get_path(body, extra.from_))
            if value is None:
                params.pop(extra.param, None)
            else:
                params[extra.param] = value
        return PageRequest(request.url, params, following, cursor)
    if style == PaginationStyle.LINK:
        assert http.link is not None
        target = link_target(headers.get("link", ""), http.link.rel)
        if target is None:
            return None
        absolute = urljoin(full_url(request), target)
        if not same_origin(absolute, http.url):
            raise BadResponse(
                f"the Link header's rel={http.link.rel!r} URL leaves {origin(http.url)}: "
                "not followed (the token would go with it)"
            )
        if absolute == full_url(request):
            return None
        return PageRequest(absolute, {}, following, absolute)
    if style == PaginationStyle.OFFSET:
        assert http.offset is not None
        offset = int(request.params.get(http.offset.param, http.offset.start)) + item_count
        params = {**request.params, http.offset.param: str(offset)}
        return PageRequest(request.url, params, following)
    if style == PaginationStyle.PAGE:
        assert http.page is not None
        page = int(request.params.get(http.page.param, http.page.first)) + 1
        return PageRequest(request.url, {**request.params, http.page.param: str(page)}, following)
    return None


def full_url(request: PageRequest) -> str:
    """The URL with ``params`` appended (as the client sends it)."""
    if not request.params:
        return request.url
    separator = "&" if urlsplit(request.url).query else "?"
    return f"{request.url}{separator}{urlencode(request.params)}"


_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]+(?:=(?:\"[^\"]*\"|[^;,]*))?)*)")
_PARAM = re.compile(r";\s*([^=;,\s]+)\s*(?:=\s*(?:\"([^\"]*)\"|([^;,]*)))?")


def link_target(header: str, rel: str) -> str | None:
    """The target of the first link with relation ``rel`` in an RFC 8288 Link header."""
    for match in _LINK.finditer(header):
        target, raw_params = match.groups()
        for param in _PARAM.finditer(raw_params):
            name, quoted, bare = param.groups()
            if name.lower() != "rel":
                continue
            relations = (quoted if quoted is not None else bare or "").lower().split()
            if rel.lower() in relations:
                return target.strip()
    return None


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def same_origin(url: str, reference: str) -> bool:
    a, b = urlsplit(url), urlsplit(reference)
    defaults = {"http": 80, "https": 443}
    return (
        a.scheme == b.scheme
        and (a.hostname or "").lower() == (b.hostname or "").lower()
        and (a.port or defaults.get(a.scheme)) == (b.port or defaults.get(b.scheme))
    )


def describe(url: str) -> str:
    """A URL for messages and logs: scheme, host and path, never the query (it may carry a key
    some API wants there, and always carries the cursor)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
