"""Operator-wide settings: what the Helm chart configures, read from the environment."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dfm_operator.api.common import SecretKeyRef
from webhook_server.config import MAX_SHUTDOWN_DELAY_SECONDS


class WorkloadTracing(BaseModel):
    """OpenTelemetry for the receivers and sync jobs the operator builds (the chart's
    ``tracing.*``, as ``DFM_TRACING__*``): rendered as their ``OTEL_*`` environment. No endpoint:
    off. The operator's own tracing is its ``OTEL_*`` environment (the chart sets both)."""

    model_config = ConfigDict(frozen=True)

    # An OTLP/HTTP base URL (/v1/traces is appended), e.g. http://otel-collector.monitoring:4318.
    endpoint: str = ""
    sampler: str = "parentbased_always_on"
    sampler_arg: str = ""
    # Extra resource attributes, "key=value,key=value" (OTEL_RESOURCE_ATTRIBUTES' format).
    resource_attributes: str = ""


class OperatorSettings(BaseSettings):
    """``DFM_*`` environment variables (set by the chart)."""

    model_config = SettingsConfigDict(env_prefix="DFM_", env_nested_delimiter="__", frozen=True)

    receiver_image: str = "ghcr.io/df-middleware/df-middleware:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    version: str = "0.1.0"
    # The event store used when a WebhookSource names none.
    default_database_secret: SecretKeyRef = Field(
        default_factory=lambda: SecretKeyRef(name="dfm-events-db", key="url")
    )
    service_monitor: bool = False
    # Read each WebhookSource's figures (forward backlog, last event) from its event store for
    # status; false when the operator cannot reach the databases (then those fields stay unset).
    store_status: bool = True
    cluster_domain: str = "cluster.local"
    # WebhookSource reconciliations that build and apply children at once; the others wait
    # (queued by kopf, holding no children nor requests). Bounds the operator's memory when many
    # sources need work together, e.g. 1,000 found at start-up.
    max_concurrent_reconciles: int = Field(default=32, ge=1)
    # How long every receiver serves on after SIGTERM while its pod leaves the Service's
    # endpoints (the chart's receivers.shutdownDelaySeconds): rendered into each ConfigMap.
    receiver_shutdown_delay_seconds: float = Field(default=5, ge=0, le=MAX_SHUTDOWN_DELAY_SECONDS)
    tracing: WorkloadTracing = Field(default_factory=WorkloadTracing)
