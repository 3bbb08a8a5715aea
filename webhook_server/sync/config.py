"""The sync job's configuration: the contract between the operator and `dfm sync run`.

The operator renders a :class:`SyncConfig` into a ConfigMap (the token and the database URL never
in it, only the paths of their mounted files); `dfm sync run -f` builds one in memory. The
pagination models are also the SyncSchedule API's (``dfm_operator.api.syncschedule``): one
definition of what a cursor, a Link header, an offset or a page number means.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import Field, model_validator

from webhook_server.config import DatabaseConfig, Model

# Headers a connector may not set from its (non-secret) configuration: credentials come from
# the token file only, and the client sets the framing headers itself.
RESERVED_HEADERS = frozenset(
    {"authorization", "cookie", "host", "content-length", "transfer-encoding", "connection"}
)
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
DottedPath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^[^.\s]+(\.[^.\s]+)*$",
        description="A dotted path into a JSON document, e.g. meta.startAfterId.",
    ),
]
QueryParam = Annotated[str, Field(min_length=1, max_length=128)]


class CursorParam(Model):
    """One more value that travels with the cursor from one response to the next request."""

    param: QueryParam = Field(description="The query parameter that carries the value.")
    from_: DottedPath = Field(
        alias="from", description="Dotted path of the value in the response body."
    )


class Cursor(Model):
    """Cursor pagination: each response body names where the next page starts."""

    param: QueryParam = Field(description="The query parameter that carries the cursor.")
    from_: DottedPath = Field(
        alias="from",
        description="Dotted path of the next cursor in the response body, e.g. "
        "meta.startAfterId; the run ends when it is missing, empty or repeated, or when a page "
        "has no items.",
    )
    also: list[CursorParam] = Field(
        default_factory=list,
        max_length=8,
        description="More values sent with the cursor, e.g. HighLevel's startAfter "
        "(from meta.startAfter) beside startAfterId.",
    )


class LinkPagination(Model):
    """RFC 8288 pagination: the response's Link header names the next page's URL."""

    rel: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        default="next",
        description="The link relation to follow. The URL must be on the same scheme, host and "
        "port as url (the token is sent to it); the run ends when there is none.",
    )


class OffsetPagination(Model):
    """Offset/limit pagination: the next page starts after the items received so far."""

    param: QueryParam = Field(default="offset", description="The offset's query parameter.")
    limit_param: QueryParam = Field(default="limit", description="The page size's parameter.")
    limit: Annotated[int, Field(ge=1, le=10_000, description="Items asked per page.")] = 100
    start: Annotated[int, Field(ge=0, description="The first page's offset.")] = 0


class PagePagination(Model):
    """Page-number pagination: page 1, 2, 3, … until a page has no items (or fewer than size)."""

    param: QueryParam = Field(default="page", description="The page number's query parameter.")
    first: Annotated[int, Field(ge=0, description="The first page's number.")] = 1
    size_param: QueryParam | None = Field(
        default=None, description="The page size's query parameter, if the API takes one."
    )
    size: Annotated[
        int | None,
        Field(ge=1, le=10_000, description="Items asked per page (with sizeParam)."),
    ] = None

    @model_validator(mode="after")
    def _size_pair(self) -> Self:
        if (self.size_param is None) != (self.size is None):
            raise ValueError("set both sizeParam and size, or neither")
        return self


class Incremental(Model):
    """Fetch only what changed since the last complete run."""

    field: DottedPath = Field(
        description="Dotted path of a value in each item that grows as items change, e.g. "
        "dateUpdated; the greatest one of a complete run is the next run's watermark."
    )
    param: QueryParam = Field(
        description="The query parameter the watermark is sent in, e.g. updatedSince."
    )


class PaginationStyle:
    """The four styles, by the field that selects them."""

    CURSOR = "cursor"
    LINK = "link"
    OFFSET = "offset"
    PAGE = "page"
    NONE = "none"


class HttpConfig(Model):
    """What to GET and how to read it."""

    url: str
    query: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    items_path: str = ""
    id_field: DottedPath = "id"
    version_field: DottedPath | None = None
    event_type: Annotated[str, Field(min_length=1, max_length=253)]
    cursor: Cursor | None = None
    link: LinkPagination | None = None
    offset: OffsetPagination | None = None
    page: PagePagination | None = None
    incremental: Incremental | None = None
    max_pages: Annotated[int, Field(ge=1)] = 1000
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    max_response_bytes: Annotated[int, Field(ge=1024)] = DEFAULT_MAX_RESPONSE_BYTES
    requests_per_second: Annotated[float, Field(gt=0)] = 5.0
    burst: Annotated[int, Field(ge=1)] = 5

    @model_validator(mode="after")
    def _one_style(self) -> Self:
        styles = [s for s in (self.cursor, self.link, self.offset, self.page) if s is not None]
        if len(styles) > 1:
            raise ValueError("set at most one of cursor, link, offset or page")
        reserved = sorted(h for h in self.headers if h.lower() in RESERVED_HEADERS)
        if reserved:
            raise ValueError(
                f"headers: {', '.join(reserved)} cannot be set here (credentials come from auth)"
            )
        return self

    @property
    def style(self) -> str:
        for name in (PaginationStyle.CURSOR, PaginationStyle.LINK, PaginationStyle.OFFSET):
            if getattr(self, name) is not None:
                return name
        return PaginationStyle.PAGE if self.page is not None else PaginationStyle.NONE

    def fingerprint(self) -> str:
        """Changes when anything that shapes the requests or the walk does: a resume point or
        a watermark recorded under other settings is not used."""
        shaping = self.model_dump(
            mode="json",
            by_alias=True,
            include={"url", "query", "items_path", "id_field", "cursor", "link", "offset", "page"}
            | {"incremental"},
        )
        encoded = json.dumps(shaping, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:32]


class TokenConfig(Model):
    """The bearer token: a mounted file (re-read after a 401), or a literal (local runs only)."""

    file: str | None = None
    value: str | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.file is None) == (self.value is None):
            raise ValueError("exactly one of file or value must be set")
        return self


class SinkConfig(Model):
    """The WebhookSource whose events the items become."""

    source: Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+$")]  # <namespace>/<name>
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 30


class RetryConfig(Model):
    """How one request is retried within a run."""

    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    backoff_seconds: Annotated[float, Field(ge=0)] = 30.0
    max_backoff_seconds: Annotated[float, Field(gt=0)] = 600.0


class SyncConfig(Model):
    """Everything one `dfm sync run` needs."""

    schedule: Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+$")]  # <namespace>/<name>
    sink: SinkConfig
    http: HttpConfig
    token: TokenConfig | None = None
    retry: RetryConfig = Field(default_factory=RetryConfig)
    run_timeout_seconds: Annotated[float, Field(gt=0)] = 900.0
    database: DatabaseConfig

    @classmethod
    def load(cls, path: str | Path) -> SyncConfig:
        data: Any = yaml.safe_load(Path(path).read_text())
        return cls.model_validate(data)

    def dump_yaml(self) -> str:
        return yaml.safe_dump(
            self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False
        )
