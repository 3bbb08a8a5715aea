"""The custom resources as pydantic models: the single source of truth for the CRDs."""

from dfm_operator.api.common import ObjectMeta, SecretKeyRef
from dfm_operator.api.webhooksource import WebhookSource, WebhookSourceSpec

__all__ = ["ObjectMeta", "SecretKeyRef", "WebhookSource", "WebhookSourceSpec"]
