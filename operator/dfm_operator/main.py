"""`dfm operator`: run the kopf controller."""

from __future__ import annotations

import asyncio
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
            liveness_endpoint=liveness,
            memo=memo,
        )
    )
