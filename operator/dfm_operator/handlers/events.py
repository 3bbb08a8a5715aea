"""Kubernetes Events, posted through kopf: the one emitter every handler gives its service."""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import Mapping
from typing import Any, cast

import kopf

from dfm_operator.kernel import EmitFn


def _kopf_cause_var() -> contextvars.ContextVar[Any] | None:
    """kopf's own (private): the cause of the handler being invoked, which holds the whole event.
    With a kopf that lacks it, background work keeps the cause alive; nothing else changes."""
    try:
        module = importlib.import_module("kopf._core.actions.execution")
    except ImportError:
        return None
    found = getattr(module, "cause_var", None)
    return found if isinstance(found, contextvars.ContextVar) else None


_cause_var = _kopf_cause_var()


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
