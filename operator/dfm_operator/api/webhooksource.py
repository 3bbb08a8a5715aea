"""WebhookSource: one inbound webhook endpoint."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from dfm_operator.api.common import ApiModel, LocalObjectRef, ObjectMeta, SecretKeyRef
from webhook_server.config import (
    AuthConfig,
    CorsConfig,
    HmacAlgorithm,
    LimitsConfig,
    Provider,
    SignatureEncoding,
)


class Verification(ApiModel):
    """How deliveries are authenticated: the signing secret and scheme details."""

    secret_ref: SecretKeyRef | None = None
    managed_secret_ref: LocalObjectRef | None = None
    tolerance_seconds: Annotated[int, Field(ge=1, le=86_400)] = 300
    header: str | None = Field(default=None, description="hmac: the signature header.")
    algorithm: HmacAlgorithm = HmacAlgorithm.SHA256
    encoding: SignatureEncoding = SignatureEncoding.HEX
    prefix: str = Field(default="", description="hmac: text before the signature, e.g. sha256=")
    timestamp_header: str | None = None
    signed_content: str = Field(
        default="{body}",
        description="hmac: what is signed; placeholders {timestamp}, {id} and {body}.",
    )
    id_header: str | None = None
    type_header: str | None = None
    public_key: str | None = Field(
        default=None, description="highlevel: PEM key(s) overriding HighLevel's published keys."
    )

    @model_validator(mode="after")
    def _one_secret_source(self) -> Self:
        if self.secret_ref is not None and self.managed_secret_ref is not None:
            raise ValueError("set only one of secretRef and managedSecretRef")
        return self


class Store(ApiModel):
    database_secret_ref: SecretKeyRef | None = None
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 30


class Forward(ApiModel):
    url: str
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    signing_secret_ref: LocalObjectRef | None = None


class ServiceExposure(ApiModel):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: Annotated[int, Field(ge=1, le=65535)] = 80


class IngressExposure(ApiModel):
    host: str
    class_name: str | None = None
    tls_secret_name: str | None = None


class Exposure(ApiModel):
    service: ServiceExposure = Field(default_factory=ServiceExposure)
    ingress: IngressExposure | None = None


class WebhookSourceSpec(ApiModel):
    provider: Provider
    path: str | None = Field(default=None, pattern=r"^/[A-Za-z0-9._~/-]*$")
    verification: Verification = Field(default_factory=Verification)
    auth: AuthConfig | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    store: Store = Field(default_factory=Store)
    forward: Forward | None = None
    replicas: Annotated[int, Field(ge=0, le=100)] = 1
    resources: dict[str, Any] | None = None
    exposure: Exposure = Field(default_factory=Exposure)

    @model_validator(mode="after")
    def _provider_rules(self) -> Self:
        secret = self.verification.secret_ref or self.verification.managed_secret_ref
        if self.provider is Provider.JWT and self.auth is None:
            raise ValueError("provider jwt requires auth")
        if self.provider is Provider.HMAC and not self.verification.header:
            raise ValueError("provider hmac requires verification.header")
        if self.provider not in (Provider.JWT, Provider.HIGHLEVEL) and secret is None:
            raise ValueError(
                f"provider {self.provider.value} requires verification.secretRef or "
                "verification.managedSecretRef"
            )
        return self


class WebhookSource(ApiModel):
    api_version: Literal["dfm.dev/v1alpha1"] = "dfm.dev/v1alpha1"
    kind: Literal["WebhookSource"] = "WebhookSource"
    metadata: ObjectMeta
    spec: WebhookSourceSpec
    status: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def route(self) -> str:
        return self.spec.path or f"/hooks/{self.metadata.namespace}/{self.metadata.name}"
