"""WebhookSource -> the receiver's SourceConfig (the data-plane contract)."""

from __future__ import annotations

from collections.abc import Sequence

from dfm_operator.api import WebhookSource
from webhook_server.config import (
    BackoffConfig,
    CircuitBreakerConfig,
    ForwardConfig,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.verify.registry import PROVIDERS


def ingress_url(source: WebhookSource) -> str | None:
    """The source's public URL through its Ingress (https when the Ingress has TLS), if any."""
    ingress = source.spec.exposure.ingress
    if ingress is None:
        return None
    scheme = "https" if ingress.tls_secret_name else "http"
    return f"{scheme}://{ingress.host}{source.route}"


def public_url(source: WebhookSource) -> str | None:
    """The URL a provider that signs it (twilio, mandrill) calls: ``verification.publicUrl``,
    else the Ingress's. Never the Host a request arrives with, nor X-Forwarded-* headers."""
    if "publicUrl" not in PROVIDERS[source.spec.provider].fields:
        return None
    return source.spec.verification.public_url or ingress_url(source)


def build_forward_config(
    source: WebhookSource, signing: Sequence[SecretSource]
) -> ForwardConfig | None:
    """The receiver's forward settings; ``signing`` says where the signing secret comes from."""
    forward = source.spec.forward
    if forward is None:
        return None
    return ForwardConfig(
        url=forward.url,
        signing_secrets=list(signing),
        timeout_seconds=forward.timeout_seconds,
        max_attempts=forward.max_attempts,
        max_age_seconds=forward.max_age_seconds,
        backoff=BackoffConfig(
            min_seconds=forward.backoff.min_seconds, max_seconds=forward.backoff.max_seconds
        ),
        max_concurrency=forward.max_concurrency,
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=forward.circuit_breaker.failure_threshold,
            cool_down_seconds=forward.circuit_breaker.cool_down_seconds,
            max_cool_down_seconds=max(600.0, forward.circuit_breaker.cool_down_seconds),
        ),
    )


def build_source_config(
    source: WebhookSource,
    secrets: Sequence[SecretSource],
    forward_signing: Sequence[SecretSource] = (),
) -> SourceConfig:
    """The receiver settings of ``source``; ``secrets`` (verification) and ``forward_signing``
    say where its secret values come from (mounted files in a pod, literals in local mode)."""
    spec = source.spec
    v = spec.verification
    return SourceConfig(
        namespace=source.metadata.namespace,
        name=source.metadata.name,
        provider=spec.provider,
        path=spec.path,
        verification=VerificationConfig(
            secrets=list(secrets),
            tolerance_seconds=v.tolerance_seconds,
            header=v.header,
            algorithm=v.algorithm,
            encoding=v.encoding,
            prefix=v.prefix,
            timestamp_header=v.timestamp_header,
            signed_content=v.signed_content,
            id_header=v.id_header,
            type_header=v.type_header,
            public_key=v.public_key,
            public_url=public_url(source),
            token_scheme=v.token_scheme,
        ),
        auth=spec.auth,
        limits=spec.limits,
        cors=spec.cors,
        retention_days=spec.store.retention_days,
        forward=build_forward_config(source, forward_signing),
        events_api=spec.events_api,
    )
