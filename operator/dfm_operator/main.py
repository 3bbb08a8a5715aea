"""`dfm operator`: run the kopf controller."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence

import kopf

PEERING_NAME = "df-middleware"


def run(
    *,
    namespaces: Sequence[str],
    metrics_port: int | None,
    liveness: str | None,
    standalone: bool,
    log_format: str = "json",
    verbose: bool = False,
) -> None:
    import dfm_operator.handlers  # noqa: F401 - registers the handlers

    # JSON lines in production (one object per line, with the object's reference under "object").
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object",
    )
    memo = kopf.Memo(metrics_port=metrics_port)
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
