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
    Timestamp,
    TimeZone,
    cel_rules,
)
from dfm_operator.constants import SYNC_SCHEDULE


class ConcurrencyPolicy(enum.StrEnum):
    """What happens when a run is due while the previous one still runs (as in a CronJob)."""

    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class Cursor(ApiModel):
    """Cursor pagination: each response names where the next page starts."""

    param: Annotated[
        str, Field(min_length=1, description="The query parameter that carries the cursor.")
    ]
    from_: Annotated[
        str,
        Field(
            alias="from",
            min_length=1,
            description="Dotted path of the next cursor in the response body, e.g. "
            "meta.startAfterId; the sync stops when it is missing or empty.",
        ),
    ]


class HttpAuth(ApiModel):
    """Credentials for the API: a bearer token from a ManagedSecret."""

    managed_secret_ref: LocalObjectRef = Field(
        description="A ManagedSecret of type oauth2 whose access token is sent as a bearer token."
    )


class HttpConnector(ApiModel):
    """The built-in connector: GET a JSON API, page by page, one stored event per item."""

    url: HttpUrlString = Field(description="The first page's URL.")
    query: dict[str, str] = Field(
        default_factory=dict, description="Query parameters added to every request."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers added to every request, e.g. an API version."
    )
    items_path: str = Field(
        default="",
        description="Dotted path of the list of items in the response body (default: the body "
        "is the list).",
    )
    id_field: Annotated[
        str,
        Field(
            min_length=1,
            description="Dotted path of each item's unique id; items are deduplicated by it.",
        ),
    ] = "id"
    cursor: Cursor | None = Field(default=None, description="Pagination (default: one page).")
    auth: HttpAuth | None = None
    max_pages: Annotated[
        int, Field(ge=1, le=100_000, description="The most pages one run fetches.")
    ] = 1000
    timeout_seconds: Annotated[
        float, Field(gt=0, le=300, description="Timeout of one request.")
    ] = 30


class EnvVar(ApiModel):
    """An environment variable of the sync container, as in a Pod."""

    name: Annotated[str, Field(min_length=1, description="The variable's name.")]
    value: str | None = Field(default=None, description="A literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None, description="A source such as secretKeyRef, as in a Pod's env."
    )


class ContainerConnector(ApiModel):
    """Custom code: a container that fetches the items itself."""

    image: Annotated[str, Field(min_length=1, description="The container image.")]
    command: list[str] = Field(default_factory=list, description="The entrypoint.")
    args: list[str] = Field(default_factory=list, description="Arguments to the entrypoint.")
    env: list[EnvVar] = Field(default_factory=list, description="Environment variables.")


class Connector(ApiModel):
    """Where the items come from: exactly one of http or container."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule("has(self.http) != has(self.container)", "set exactly one of http or container")
        )
    )

    http: HttpConnector | None = None
    container: ContainerConnector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.http is None) == (self.container is None):
            raise ValueError("set exactly one of http or container")
        return self


class Sink(ApiModel):
    """Where the items are stored: the event store of a WebhookSource, deduplicated by id."""

    webhook_source_ref: LocalObjectRef = Field(description="The WebhookSource the items join.")


class Retry(ApiModel):
    """How a failed request within one run is retried."""

    max_attempts: Annotated[int, Field(ge=1, le=100, description="Attempts per request.")] = 5
    backoff_seconds: Annotated[
        int, Field(ge=0, le=3600, description="Wait before the first retry; doubles each time.")
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
    connector: Connector
    sink: Sink
    retry: Retry = Field(default_factory=Retry)


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


class SyncSchedule(CustomResource):
    """A scheduled pull from an external API: a CronJob running `dfm sync run` that stores the
    items in a WebhookSource's event store."""

    names: ClassVar[KindNames] = KindNames(SYNC_SCHEDULE, "syncschedules", ("sync",))

    api_version: Literal["dfm.dev/v1alpha1"] = "dfm.dev/v1alpha1"
    kind: Literal["SyncSchedule"] = "SyncSchedule"
    spec: SyncScheduleSpec
    status: SyncScheduleStatus | None = None
