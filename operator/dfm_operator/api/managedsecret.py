"""ManagedSecret: a Secret whose value the operator generates, rotates or refreshes."""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Annotated, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from dfm_operator.api.common import (
    DNS_SUBDOMAIN,
    ApiModel,
    CelRule,
    CronSchedule,
    CustomResource,
    Duration,
    HttpUrlString,
    KindNames,
    LocalObjectRef,
    SecretKeyRef,
    Status,
    Timestamp,
    TimeZone,
    cel_rules,
    parse_duration,
)
from dfm_operator.api.names import MANAGED_SECRET_NAME, NameRule
from dfm_operator.constants import MANAGED_SECRET


class SecretType(enum.StrEnum):
    RANDOM = "random"
    OAUTH2 = "oauth2"


class RandomEncoding(enum.StrEnum):
    BASE64 = "base64"
    BASE64URL = "base64url"
    HEX = "hex"


class ClientAuth(enum.StrEnum):
    """How the client credentials reach the token endpoint (RFC 6749 §2.3.1)."""

    CLIENT_SECRET_POST = "client_secret_post"
    CLIENT_SECRET_BASIC = "client_secret_basic"


class RandomSecret(ApiModel):
    """A random value: length random bytes, encoded, after a prefix."""

    length: Annotated[
        int,
        Field(
            ge=16,
            le=512,
            description="Random bytes before encoding; at least 16 (128 bits).",
        ),
    ] = 32
    encoding: RandomEncoding = Field(
        default=RandomEncoding.BASE64, description="How the random bytes are written."
    )
    prefix: Annotated[
        str,
        Field(max_length=64, description="Text before the encoded bytes, e.g. whsec_."),
    ] = ""


class OAuth2Secret(ApiModel):
    """An OAuth 2.0 access token, refreshed before it expires.

    With refreshTokenSecretRef the refresh_token grant is used (and a rotated refresh token the
    provider returns is kept in the written Secret); without it, client_credentials.
    """

    token_url: HttpUrlString = Field(description="The provider's token endpoint.")
    client_secret_ref: LocalObjectRef = Field(
        description="A Secret with the keys client_id and client_secret."
    )
    client_auth: ClientAuth = Field(
        default=ClientAuth.CLIENT_SECRET_POST,
        description="How the client credentials are sent to the token endpoint.",
    )
    refresh_token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="The initial refresh token; used until the provider returns a newer one.",
    )
    scopes: list[str] = Field(default_factory=list, description="Scopes to request.")
    refresh_before_seconds: Annotated[
        int,
        Field(ge=0, le=86_400, description="Refresh this long before the token expires."),
    ] = 300


class Rotation(ApiModel):
    """When a new value replaces the current one: every interval, or on a cron schedule."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                "has(self.every) != has(self.schedule)", "set exactly one of every or schedule"
            ),
            CelRule(
                "!has(self.timeZone) || has(self.schedule)", "timeZone applies only to schedule"
            ),
            CelRule(
                "!has(self.every) || duration(self.every) > duration('0s')",
                "every must be longer than 0s",
            ),
        )
    )

    every: Duration | None = Field(
        default=None, description="Rotate this long after the last rotation, e.g. 720h."
    )
    schedule: CronSchedule | None = Field(
        default=None, description='Rotate on this cron schedule, e.g. "0 3 * * 0".'
    )
    time_zone: TimeZone | None = Field(
        default=None, description="The schedule's time zone (default: UTC)."
    )
    grace_period: Duration = Field(
        default="24h",
        description="How long the previous value stays valid after a rotation.",
    )

    @model_validator(mode="after")
    def _one_trigger(self) -> Self:
        if (self.every is None) == (self.schedule is None):
            raise ValueError("set exactly one of every or schedule")
        if self.time_zone is not None and self.schedule is None:
            raise ValueError("timeZone applies only to schedule")
        if self.every is not None and parse_duration(self.every) <= timedelta(0):
            raise ValueError("every must be longer than 0s")
        return self

    @property
    def interval(self) -> timedelta | None:
        """``every`` as a timedelta; None for a cron schedule."""
        return None if self.every is None else parse_duration(self.every)

    @property
    def grace(self) -> timedelta:
        return parse_duration(self.grace_period)


class ManagedSecretSpec(ApiModel):
    """The value's kind, how it rotates, and the Secret it is written to."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                "self.type == 'random' ? has(self.random) : !has(self.random)",
                "random is required when type is random, and allowed only then",
            ),
            CelRule(
                "self.type == 'oauth2' ? has(self.oauth2) : !has(self.oauth2)",
                "oauth2 is required when type is oauth2, and allowed only then",
            ),
        )
    )

    type: SecretType = Field(
        description="random: a generated value; oauth2: an access token kept fresh."
    )
    random: RandomSecret | None = None
    oauth2: OAuth2Secret | None = None
    rotation: Rotation | None = Field(
        default=None,
        description="When to replace the value (default: never; an oauth2 token is refreshed "
        "before it expires regardless).",
    )
    secret_name: Annotated[
        str | None,
        Field(
            max_length=253,
            pattern=DNS_SUBDOMAIN,
            description="The Secret written and owned (default: the ManagedSecret's name).",
        ),
    ] = None

    @model_validator(mode="after")
    def _settings_match_type(self) -> Self:
        for kind, settings in ((SecretType.RANDOM, self.random), (SecretType.OAUTH2, self.oauth2)):
            if self.type is kind and settings is None:
                raise ValueError(f"type {kind.value} requires {kind.value}")
            if self.type is not kind and settings is not None:
                raise ValueError(f"{kind.value} is allowed only with type {kind.value}")
        return self


class ManagedSecretStatus(Status):
    """The value's version and the times that matter for rotation and token refresh."""

    current_version: Annotated[
        int | None, Field(ge=0, description="Increases by one with every new value.")
    ] = None
    last_rotation_time: Timestamp | None = Field(
        default=None, description="When the current value was written."
    )
    next_rotation_time: Timestamp | None = Field(
        default=None, description="When the value will next be replaced or refreshed."
    )
    previous_expires_at: Timestamp | None = Field(
        default=None, description="When the previous value stops being accepted."
    )
    token_expires_at: Timestamp | None = Field(
        default=None, description="oauth2: when the current access token expires."
    )
    consecutive_failures: Annotated[
        int, Field(ge=0, description="Rotation or refresh failures since the last success.")
    ] = 0


class ManagedSecret(CustomResource):
    """A Secret whose value the operator owns: generated and rotated (random), or an OAuth 2.0
    access token refreshed before it expires (oauth2)."""

    names: ClassVar[KindNames] = KindNames(MANAGED_SECRET, "managedsecrets", ("msec",))
    name_rule: ClassVar[NameRule] = MANAGED_SECRET_NAME

    api_version: Literal["dfm.dev/v1alpha1"] = "dfm.dev/v1alpha1"
    kind: Literal["ManagedSecret"] = "ManagedSecret"
    spec: ManagedSecretSpec
    status: ManagedSecretStatus | None = None

    @property
    def secret_name(self) -> str:
        """The name of the Secret this resource writes."""
        return self.spec.secret_name or self.metadata.name
