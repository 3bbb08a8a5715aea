"""Operator start-up and shutdown: settings, the API client, metrics."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import kopf
from prometheus_client import start_http_server

from dfm_operator import constants as c
from dfm_operator.kernel import Context, OperatorMetrics
from dfm_operator.kube import Kube, load_client
from dfm_operator.settings import OperatorSettings

KOPF_PREFIX = f"kopf.{c.GROUP}"


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's own bookkeeping goes to annotations: a structural schema would prune undeclared
    # status fields (kopf issue #574) and our status is a declared contract.
    # Their own prefix: kopf ignores every annotation under its storage prefix when diffing, and
    # users' dfm.dev/ annotations (dfm.dev/rotate-now) must count as changes.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    metrics = OperatorMetrics()
    port = memo.get("metrics_port")
    if port:
        start_http_server(int(port), registry=metrics.registry)
    memo.ctx = Context(
        kube=Kube(await load_client()),
        settings=OperatorSettings(),
        metrics=metrics,
        tracing=memo.get("tracing"),
    )
    # For OAuth token endpoints; never the Kubernetes API (that is kube.py's).
    # The context (with the schedulers' wake-up events, shared by the schedulers and the Secret
    # handlers that wake them) is made here, before any object is seen: kopf gives every object
    # a shallow copy of this memo, so only what is created here is the same in all of them.
    memo.http = aiohttp.ClientSession()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    ctx = memo.get("ctx")
    if isinstance(ctx, Context):
        await ctx.stop_background()
        await ctx.kube.api.close()
        await ctx.eventstores.close()
    http = memo.get("http")
    if isinstance(http, aiohttp.ClientSession):
        await http.close()
