"""SyncSchedule: a scheduled pull from an external API into a WebhookSource's event store."""

from __future__ import annotations

import enum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from dfm_operator.api.common import (
    ApiModel,
    CelRule,
    CronSchedule,
    CustomResource,
    HttpUrlString,
    KindNames,
    LocalObjectRef,
    Status,
    StatusModel,
    Timestamp,
    TimeZone,
    cel_rules,
)
from dfm_operator.api.names import SYNC_SCHEDULE_NAME, NameRule
from dfm_operator.constants import SYNC_SCHEDULE
from webhook_server.sync.config import (
    RESERVED_HEADERS,
    Cursor,
    CursorParam,
    DottedPath,
    Incremental,
    LinkPagination,
    OffsetPagination,
    PagePagination,
)

__all__ = [
    "ConcurrencyPolicy",
    "Connector",
    "Cursor",
    "CursorParam",
    "HttpAuth",
    "HttpConnector",
    "Incremental",
    "LinkPagination",
    "OffsetPagination",
    "PagePagination",
    "RateLimit",
    "Retry",
    "Sink",
    "SyncRun",
    "SyncSchedule",
    "SyncScheduleSpec",
    "SyncScheduleStatus",
]


class ConcurrencyPolicy(enum.StrEnum):
    """What happens when a run is due while the previous one still runs (as in a CronJob).

    Runs of one schedule never overlap in the store whatever this says: a second run waits for
    the first's lock (within its run timeout)."""

    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class HttpAuth(ApiModel):
    """Credentials for the API: a bearer token from a ManagedSecret."""

    managed_secret_ref: LocalObjectRef = Field(
        description="A ManagedSecret of type oauth2: its Secret's access_token is mounted into "
        "the job and sent as a bearer token (re-read once after a 401)."
    )


class RateLimit(ApiModel):
    """How fast one run may call the API (a token bucket)."""

    requests_per_second: Annotated[
        float, Field(gt=0, le=1000, description="Requests per second, on average.")
    ] = 5
    burst: Annotated[int, Field(ge=1, le=1000, description="Requests allowed at once.")] = 5


_ONE_STYLE = CelRule(
    "(has(self.cursor) ? 1 : 0) + (has(self.link) ? 1 : 0) + (has(self.offset) ? 1 : 0)"
    " + (has(self.page) ? 1 : 0) <= 1",
    "set at most one of cursor, link, offset or page",
)


class HttpConnector(ApiModel):
    """The built-in connector: GET a JSON API, page by page, one stored event per item."""

    model_config = ConfigDict(json_schema_extra=cel_rules(_ONE_STYLE))

    url: HttpUrlString = Field(description="The first page's URL.")
    query: dict[str, str] = Field(
        default_factory=dict, description="Query parameters added to every request."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Headers added to every request, e.g. an API version. Not Authorization: "
        "credentials come from auth.",
    )
    items_path: str = Field(
        default="",
        description="Dotted path of the list of items in the response body (default: the body "
        "is the list).",
    )
    id_field: DottedPath = Field(
        default="id",
        description="Dotted path of each item's unique id (a string or an integer); items "
        "are deduplicated by it.",
    )
    version_field: DottedPath | None = Field(
        default=None,
        description="Dotted path of a value that changes whenever the item does (e.g. "
        "dateUpdated): a changed item is stored again as a new event. Without it an item is "
        "stored once.",
    )
    event_type: Annotated[str, Field(min_length=1, max_length=253)] | None = Field(
        default=None,
        description="The stored events' type, and the prefix of their ids "
        "(<eventType>/<id>); default: the SyncSchedule's name.",
    )
    cursor: Cursor | None = Field(
        default=None, description="Cursor pagination from the response body."
    )
    link: LinkPagination | None = Field(
        default=None, description='RFC 8288 pagination: follow the Link header\'s rel="next".'
    )
    offset: OffsetPagination | None = Field(default=None, description="Offset/limit pagination.")
    page: PagePagination | None = Field(default=None, description="Page-number pagination.")
    incremental: Incremental | None = Field(
        default=None,
        description="Ask only for what changed since the last complete run (a watermark kept "
        "in PostgreSQL).",
    )
    auth: HttpAuth | None = None
    max_pages: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description="The most pages one run fetches; the next run continues after them.",
        ),
    ] = 1000
    timeout_seconds: Annotated[
        float, Field(gt=0, le=300, description="Timeout of one request.")
    ] = 30
    rate_limit: RateLimit = Field(default_factory=RateLimit)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        styles = [s for s in (self.cursor, self.link, self.offset, self.page) if s is not None]
        if len(styles) > 1:
            raise ValueError(_ONE_STYLE.message)
        reserved = sorted(h for h in self.headers if h.lower() in RESERVED_HEADERS)
        if reserved:
            raise ValueError(
                f"headers: {', '.join(reserved)} cannot be set here (credentials come from auth)"
            )
        return self


class Connector(ApiModel):
    """Where the items come from."""

    http: HttpConnector


class Sink(ApiModel):
    """Where the items are stored: the event store of a WebhookSource, deduplicated by id."""

    webhook_source_ref: LocalObjectRef = Field(
        description="The WebhookSource the items join (its database, its <namespace>/<name> "
        "as the events' source)."
    )


class Retry(ApiModel):
    """How a failed request within one run is retried."""

    max_attempts: Annotated[int, Field(ge=1, le=100, description="Attempts per request.")] = 5
    backoff_seconds: Annotated[
        int,
        Field(
            ge=0,
            le=3600,
            description="The first retry waits up to this long (full jitter); the ceiling "
            "doubles with each failure, to at most 10 minutes. A Retry-After wins.",
        ),
    ] = 30


class SyncScheduleSpec(ApiModel):
    """When to run, what to fetch, and where the items go."""

    schedule: CronSchedule
    time_zone: TimeZone = "UTC"
    suspend: bool = Field(default=False, description="Skip runs until set back to false.")
    concurrency_policy: ConcurrencyPolicy = Field(
        default=ConcurrencyPolicy.FORBID,
        description="What happens when a run is due while the previous one still runs.",
    )
    starting_deadline_seconds: Annotated[
        int | None,
        Field(
            ge=1,
            description="A run that could not start within this many seconds of its time is "
            "skipped (as in a CronJob).",
        ),
    ] = None
    successful_jobs_history_limit: Annotated[
        int, Field(ge=0, le=100, description="Finished successful Jobs kept.")
    ] = 3
    failed_jobs_history_limit: Annotated[
        int, Field(ge=0, le=100, description="Finished failed Jobs kept.")
    ] = 3
    run_timeout_seconds: Annotated[
        int,
        Field(
            ge=10,
            le=86_400,
            description="A run stops after this long (committed pages are kept; the next run "
            "continues); its Job is ended a minute later at the latest.",
        ),
    ] = 900
    connector: Connector
    sink: Sink
    retry: Retry = Field(default_factory=Retry)
    resources: dict[str, Any] | None = Field(
        default=None,
        description="The job container's resources (requests and limits), as in a Pod.",
    )


class SyncRun(StatusModel):
    """The last finished run, as its Job and its summary tell it."""

    job: str = Field(description="The Job that ran it.")
    start_time: Timestamp = Field(description="When its Job started.")
    completion_time: Timestamp | None = Field(default=None, description="When it finished.")
    succeeded: bool = Field(description="Whether it succeeded.")
    reason: Annotated[str, Field(max_length=64, description="Why it ended so, in CamelCase.")]
    message: Annotated[str, Field(max_length=1024, description="Details for a person.")] = ""
    items: Annotated[int | None, Field(ge=0, description="Items it fetched.")] = None
    stored: Annotated[int | None, Field(ge=0, description="Of which were new events.")] = None
    duration_seconds: Annotated[float | None, Field(ge=0, description="How long it ran.")] = None


class SyncScheduleStatus(Status):
    """How the runs went."""

    last_schedule_time: Timestamp | None = Field(
        default=None, description="When a run was last started."
    )
    last_successful_time: Timestamp | None = Field(
        default=None, description="When a run last finished successfully."
    )
    items_synced: Annotated[
        int | None, Field(ge=0, description="Items fetched by the last successful run.")
    ] = None
    consecutive_failures: Annotated[
        int, Field(ge=0, description="Failed runs since the last success.")
    ] = 0
    last_run: SyncRun | None = Field(default=None, description="The last finished run.")


class SyncSchedule(CustomResource):
    """A scheduled pull from an external API: a CronJob running `dfm sync run` that stores the
    items in a WebhookSource's event store."""

    names: ClassVar[KindNames] = KindNames(SYNC_SCHEDULE, "syncschedules", ("sync",))
    name_rule: ClassVar[NameRule] = SYNC_SCHEDULE_NAME

    api_version: Literal["dfm.dev/v1alpha1"] = "dfm.dev/v1alpha1"
    kind: Literal["SyncSchedule"] = "SyncSchedule"
    spec: SyncScheduleSpec
    status: SyncScheduleStatus | None = None

    @property
    def event_type(self) -> str:
        return self.spec.connector.http.event_type or self.metadata.name
