"""The baseline: kopf's own floor for N WebhookSources, with none of our work.

A trivial operator, run by the benchmark as
``kopf run --standalone -A bench/operator/baseline_operator.py`` against a fresh emulated
cluster: on create it only marks the source ``Ready=True`` (through kopf's patch, i.e. one
``PATCH .../status``). It uses the same kopf settings as ``dfm_operator.handlers.lifecycle``
(annotation-based progress and diff-base storage, watch and request timeouts) so that the
ratio "our operator / baseline" measures what our handlers add on top of kopf itself.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf

GROUP, VERSION, PLURAL = "dfm.dev", "v1alpha1", "webhooksources"


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30


@kopf.on.create(GROUP, VERSION, PLURAL)
async def mark_ready(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    generation = body.metadata.get("generation")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch.status["observedGeneration"] = generation
    patch.status["conditions"] = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Available",
            "message": "",
            "lastTransitionTime": now,
            "observedGeneration": generation,
        }
    ]
