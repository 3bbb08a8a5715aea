"""Operator start-up and shutdown: settings, the API client, metrics."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from dfm_operator import constants as c
from dfm_operator.kube import Kube, load_client
from dfm_operator.reconcile import Context, OperatorMetrics
from dfm_operator.settings import OperatorSettings

METRICS_PORT_ENV = "DFM_OPERATOR_METRICS_PORT"


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's own bookkeeping goes to annotations: a structural schema would prune undeclared
    # status fields (kopf issue #574) and our status is a declared contract.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    metrics = OperatorMetrics()
    port = memo.get("metrics_port")
    if port:
        start_http_server(int(port), registry=metrics.registry)
    memo.ctx = Context(kube=Kube(await load_client()), settings=OperatorSettings(), metrics=metrics)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    ctx = memo.get("ctx")
    if isinstance(ctx, Context):
        await ctx.kube.api.close()
