"""Kubernetes Events, posted through kopf: the one emitter every handler gives its service."""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import Mapping
from typing import Any, cast

import kopf

from dfm_operator.kernel import EmitFn

# kopf's own: the cause of the handler being invoked (it holds the whole event). With another
# kopf that lacks it, background work keeps the cause alive; nothing else changes.
_cause_var: contextvars.ContextVar[Any] | None = getattr(
    importlib.import_module("kopf._core.actions.execution"), "cause_var", None
)


def emitter(body: Mapping[str, Any]) -> EmitFn:
    """Post Events about the object ``body`` (a kopf.Body or a dict read from the API)."""
    target = body if isinstance(body, kopf.Body) else kopf.Body(cast(kopf.RawBody, body))

    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(target, type=type_, reason=reason, message=message)

    return emit


def detached_context() -> contextvars.Context:
    """The handler's context for work it hands off (``Context.spawn``): kopf's Event posting
    still works from there, but the invoked handler's cause, and with it the event's body, is
    not kept alive by work that waits its turn."""
    context = contextvars.copy_context()
    if _cause_var is not None:
        context.run(_cause_var.set, None)
    return context
