"""Metadata every child object carries: names, standard labels, owner references."""

from __future__ import annotations

from typing import Any

from dfm_operator import constants as c
from dfm_operator.api.common import CustomResource

# `dfm render` works offline, before the owner exists: its ownerReferences carry this uid.
UNKNOWN_UID = "00000000-0000-0000-0000-000000000000"


def owner_reference(owner: CustomResource) -> dict[str, Any]:
    """The reference that makes ``owner`` a child's controller."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": owner.names.kind,
        "name": owner.metadata.name,
        "uid": owner.metadata.uid or UNKNOWN_UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controlled_by(obj: dict[str, Any], uid: str | None) -> bool:
    """Whether ``obj``'s controller (the owner_reference above) is the object with ``uid``."""
    return any(
        ref.get("uid") == uid and ref.get("controller")
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


def selector_labels(owner_name: str, app_name: str, component: str) -> dict[str, str]:
    """The labels a selector matches on: stable for the owner's life (selectors are immutable)."""
    return {
        c.LABEL_NAME: app_name,
        c.LABEL_INSTANCE: owner_name,
        c.LABEL_COMPONENT: component,
    }


def standard_labels(
    owner_name: str, app_name: str, component: str, version: str, extra: dict[str, str]
) -> dict[str, str]:
    return {
        **selector_labels(owner_name, app_name, component),
        c.LABEL_PART_OF: c.PART_OF,
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_VERSION: version,
        **extra,
    }


def object_meta(owner: CustomResource, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A child's metadata: in ``owner``'s namespace, controlled by it."""
    return {
        "name": name,
        "namespace": owner.metadata.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(owner)],
    }
