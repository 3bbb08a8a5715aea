"""Pieces every kind shares."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from dfm_operator.constants import DEFAULT_NAMESPACE, DEFAULT_SECRET_KEY

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ApiModel(BaseModel):
    """camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SecretKeyRef(ApiModel):
    """A key of a Secret in the resource's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    key: Annotated[str, Field(min_length=1)] = DEFAULT_SECRET_KEY


class LocalObjectRef(ApiModel):
    """Another object in the resource's namespace, by name."""

    name: Annotated[str, Field(min_length=1, max_length=253)]


class ObjectMeta(BaseModel):
    """The metadata fields the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: str = DEFAULT_NAMESPACE
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
