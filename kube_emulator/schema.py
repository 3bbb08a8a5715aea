"""Structural-schema pruning of custom resources, as the API server does it on every write.

A CustomResourceDefinition in ``apiextensions.k8s.io/v1`` always prunes: "if you specify a field
that the API server does not recognize, the unknown field is pruned (removed) before being
persisted" (Kubernetes docs, *Extend the Kubernetes API with CustomResourceDefinitions*, "Field
pruning"). The rules implemented here, each from that page:

* a field not in ``properties`` of its object is dropped, in ``spec``, ``status`` and anywhere
  else, on the main endpoint and on the ``/status`` subresource alike;
* ``x-kubernetes-preserve-unknown-fields: true`` keeps the unknown fields of that object (and
  below), while fields that *are* specified under it are still pruned by their own schema;
* ``additionalProperties`` (a map) keeps every key and prunes each value by its schema;
* ``items`` prunes every element of a list;
* ``apiVersion``, ``kind`` and ``metadata`` are kept at the root, and in an object marked
  ``x-kubernetes-embedded-resource: true``; unknown fields inside ``metadata`` are dropped;
* value validations (``allOf``, ``anyOf``, ``oneOf``, ``not``) never keep a field: a structural
  schema must specify every property outside them too.

How a dropped field is reported is the request's ``fieldValidation``
(*API concepts*, "Field validation"): ``Ignore`` drops it silently, ``Warn`` (the default) drops it
and says so in a ``Warning`` response header, ``Strict`` refuses the request with 400.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from kube_emulator.resources import JsonDict

# metav1.ObjectMeta's fields: everything else under metadata is unknown.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
_TYPE_META = ("apiVersion", "kind")


class FieldValidation(enum.StrEnum):
    IGNORE = "Ignore"
    WARN = "Warn"
    STRICT = "Strict"


def prune_object(obj: JsonDict, schema: Mapping[str, Any]) -> list[str]:
    """Prune a whole custom resource in place by its version's ``openAPIV3Schema``.

    Returns the dotted paths of the fields dropped (``spec.someRandomField``).
    """
    dropped: list[str] = []
    _prune_resource(obj, schema, "", dropped)
    return dropped


def _prune_resource(
    obj: dict[str, Any], schema: Mapping[str, Any], path: str, dropped: list[str]
) -> None:
    """An object with apiVersion, kind and metadata (the root, or an embedded resource)."""
    _prune_fields(obj, schema, path, dropped, keep=(*_TYPE_META, "metadata"))
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        for key in list(metadata):
            if key not in OBJECT_META_FIELDS:
                del metadata[key]
                dropped.append(f"{path}metadata.{key}")


def _prune(value: Any, schema: Mapping[str, Any], path: str, dropped: list[str]) -> None:
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(value):
                _prune(item, items, f"{path.removesuffix('.')}[{index}].", dropped)
    elif isinstance(value, dict):
        if schema.get("x-kubernetes-embedded-resource"):
            _prune_resource(value, schema, path, dropped)
        else:
            _prune_fields(value, schema, path, dropped)


def _prune_fields(
    value: dict[str, Any],
    schema: Mapping[str, Any],
    path: str,
    dropped: list[str],
    keep: tuple[str, ...] = (),
) -> None:
    properties: Mapping[str, Any] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    for key in list(value):
        if key in keep:
            continue
        if key in properties:
            _prune(value[key], properties[key], f"{path}{key}.", dropped)
        elif isinstance(additional, Mapping):
            _prune(value[key], additional, f"{path}{key}.", dropped)
        elif not (additional is True or preserve):
            del value[key]
            dropped.append(f"{path}{key}")


def unknown_field_warnings(dropped: list[str]) -> list[str]:
    """The API server's words for each dropped field (``Warning`` header, strict error)."""
    return [f'unknown field "{path}"' for path in dropped]
