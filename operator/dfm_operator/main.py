"""`dfm operator`: run the kopf controller."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence

import kopf

from dfm_operator.peering import PEERING_NAME
from webhook_server.tracing import Tracing

__all__ = ["PEERING_NAME", "configure_logging", "run"]
# At DEBUG, the Kubernetes client logs every response body, Secrets' data included: it never gets
# DEBUG, whatever --verbose says (kopf's and our own debug lines stay).
SILENCED_AT_DEBUG = ("kubernetes_asyncio.client.rest", "kubernetes.client.rest")


def configure_logging(*, log_format: str = "json", verbose: bool = False) -> None:
    """kopf's logging (JSON lines in production, the object's reference under "object")."""
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object",
    )
    for name in SILENCED_AT_DEBUG:
        logging.getLogger(name).setLevel(logging.INFO)


def run(
    *,
    namespaces: Sequence[str],
    metrics_port: int | None,
    liveness: str | None,
    standalone: bool,
    log_format: str = "json",
    verbose: bool = False,
    tracing: Tracing | None = None,
) -> None:
    """Run the controller; ``tracing`` (webhook_server.tracing.from_env) traces reconciles."""
    import dfm_operator.handlers  # noqa: F401 - registers the handlers
    from dfm_operator import kube

    kube.shed_generated_modules()  # everything is imported by now
    configure_logging(log_format=log_format, verbose=verbose)
    memo = kopf.Memo(metrics_port=metrics_port, tracing=tracing)
    try:
        _operate(namespaces, liveness, standalone, memo)
    finally:
        if tracing is not None:
            tracing.shutdown()


def _operate(
    namespaces: Sequence[str], liveness: str | None, standalone: bool, memo: kopf.Memo
) -> None:
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            standalone=standalone,
            peering_name=None if standalone else PEERING_NAME,
            # kopf pauses every peer on a priority tie: each replica draws its own, so the
            # highest live one works and the others stand by.
            priority=0 if standalone else secrets.randbelow(2**31 - 1) + 1,
            liveness_endpoint=liveness,
            memo=memo,
        )
    )
