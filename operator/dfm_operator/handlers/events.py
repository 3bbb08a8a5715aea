"""Kubernetes Events, posted through kopf: the one emitter every handler gives its service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from dfm_operator.kernel import EmitFn


def emitter(body: Mapping[str, Any]) -> EmitFn:
    """Post Events about the object ``body`` (a kopf.Body or a dict read from the API)."""
    target = body if isinstance(body, kopf.Body) else kopf.Body(cast(kopf.RawBody, body))

    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(target, type=type_, reason=reason, message=message)

    return emit
