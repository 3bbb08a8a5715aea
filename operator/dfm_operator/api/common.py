"""Pieces every kind shares: the base model, references, conditions, durations, schedules."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, model_validator
from pydantic.alias_generators import to_camel

from dfm_operator.constants import DEFAULT_NAMESPACE, DEFAULT_SECRET_KEY

if TYPE_CHECKING:  # names.py builds on CelRule, defined here
    from dfm_operator.api.names import NameRule

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HTTP_URL = r"^https?://[^\s]+$"

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}

# Five cron fields, or one of the macros Kubernetes CronJobs accept (not `@every`, which has no
# fixed calendar meaning, and no `CRON_TZ=` prefix: time zones have their own field).
CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+(\s+\S+){4})$"

# Kubernetes resource quantities such as 500m, 64Mi, 20Gi.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

JsonDict = dict[str, Any]


class ApiModel(BaseModel):
    """camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class CelRule(NamedTuple):
    """A rule the API server checks itself (`x-kubernetes-validations` in the CRD).

    Each rule mirrors a model validator, so a bad manifest is refused by `kubectl apply`, not
    only later by the operator. Rules use `has()` on optional fields only: a missing field would
    otherwise be an evaluation error with a less helpful message.
    """

    rule: str
    message: str


def cel_rules(*rules: CelRule) -> JsonDict:
    """``json_schema_extra`` that puts ``rules`` on a model's or field's schema."""
    return {
        "x-kubernetes-validations": [{"rule": r.rule, "message": r.message} for r in rules],
    }


def parse_duration(text: str) -> timedelta:
    """A Go-style duration such as ``720h``, ``1h30m`` or ``1.5s`` as a timedelta."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 720h, 1h30m or 90s")
    seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


def _check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name such as UTC") from exc
    return name


# Where an impossible schedule is looked for: croniter searches forward from here and gives up
# on a date that never comes (30 February), which the pattern alone cannot tell.
_CRON_CHECK_FROM = datetime(2000, 1, 1)


def _check_cron(schedule: str) -> str:
    """A schedule croniter can evaluate, not only one shaped like five fields: `61 * * * *`
    would pass the pattern and crash the scheduler that uses it."""
    try:
        croniter(schedule, _CRON_CHECK_FROM).get_next(datetime)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"invalid cron schedule {schedule!r}: {exc}") from None
    return schedule


Duration = Annotated[
    str,
    Field(
        pattern=DURATION_PATTERN,
        max_length=32,
        description="A duration such as 720h, 1h30m or 90s.",
    ),
]
CronSchedule = Annotated[
    str,
    Field(
        pattern=CRON_PATTERN,
        description='A cron schedule with five fields, e.g. "0 3 * * 0", or a macro like @daily.',
    ),
    AfterValidator(_check_cron),
]
TimeZone = Annotated[
    str,
    AfterValidator(_check_time_zone),
    Field(
        min_length=1,
        max_length=64,
        description="An IANA time zone name such as UTC or Europe/Berlin.",
    ),
]
Quantity = Annotated[
    str, Field(pattern=QUANTITY_PATTERN, description="A resource quantity such as 20Gi.")
]
HttpUrlString = Annotated[str, Field(pattern=HTTP_URL, max_length=2048)]
"""An http(s) URL kept as text, exactly as written."""


class SecretKeyRef(ApiModel):
    """A key of a Secret in the resource's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, description="The Secret's name.")]
    key: Annotated[str, Field(min_length=1, description="The key in the Secret's data.")] = (
        DEFAULT_SECRET_KEY
    )


class LocalObjectRef(ApiModel):
    """Another object in the resource's namespace, by name."""

    name: Annotated[str, Field(min_length=1, max_length=253, description="The object's name.")]


class ObjectMeta(BaseModel):
    """The metadata fields the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: str = DEFAULT_NAMESPACE
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


def rfc3339(moment: datetime) -> str:
    """The API's form of a time: UTC, whole seconds, ``Z`` (``2024-05-01T12:00:00Z``)."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_rfc3339(text: str | None) -> datetime | None:
    """A time written by :func:`rfc3339` (or any ISO 8601 time; naive means UTC), else None."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]
"""A time in status, written as :func:`rfc3339`."""


class StatusModel(ApiModel):
    """Base of what the operator writes under ``status``: every status is built through these
    models, and a field they do not declare is refused (the CRD's structural schema would
    silently prune it on a real API server)."""


class Condition(StatusModel):
    """One aspect of the resource's state, shaped like Kubernetes' own metav1.Condition."""

    type: Annotated[
        str,
        Field(
            min_length=1,
            max_length=316,
            pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
            description="The aspect, in CamelCase, e.g. Ready.",
        ),
    ]
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[
        str,
        Field(
            min_length=1,
            max_length=1024,
            pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
            description="Why the condition has this status, in CamelCase, e.g. Available.",
        ),
    ]
    message: Annotated[
        str, Field(max_length=32768, description="Details for a person; may be empty.")
    ] = ""
    last_transition_time: Timestamp = Field(
        description="When the status last changed (not when the condition was last written)."
    )
    observed_generation: Annotated[
        int | None,
        Field(ge=0, description="The metadata.generation the condition was computed from."),
    ] = None


class Status(StatusModel):
    """What every kind reports: the generation it acted on and its conditions."""

    observed_generation: Annotated[
        int | None,
        Field(ge=0, description="The metadata.generation the operator last reconciled."),
    ] = None
    conditions: list[Condition] = Field(
        default_factory=list,
        description="The resource's conditions; Ready summarises them.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of type ``type_``, if reported."""
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass(frozen=True)
class KindNames:
    """How a kind is named in the API: what `kubectl get` and kopf handlers address it by."""

    kind: str
    plural: str
    short_names: tuple[str, ...]

    @property
    def singular(self) -> str:
        return self.kind.lower()


class CustomResource(ApiModel):
    """Base of the four kinds: their metadata and identity in the event store and logs."""

    names: ClassVar[KindNames]
    name_rule: ClassVar[NameRule]
    """What the kind's children make of its name (``api/names.py``)."""

    api_version: str
    kind: str
    metadata: ObjectMeta

    @model_validator(mode="after")
    def _name_fits_its_children(self) -> Self:
        self.name_rule.check(self.metadata.name)
        return self

    @property
    def key(self) -> str:
        """``<namespace>/<name>``."""
        return f"{self.metadata.namespace}/{self.metadata.name}"
