"""Server-side apply: field sets per manager, and pruning what a manager stopped applying.

A simplified ``metadata.managedFields``: one entry per manager, operation and subresource; for
Apply, ``fieldsV1`` holds the applied field set, so fields a manager applied before and no longer
applies are removed. Lists are atomic (owned as a whole), which is what our objects need.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp.web
import kmock
import yaml

from kube_emulator.errors import api_error
from kube_emulator.patches import merge_patch
from kube_emulator.resources import SYSTEM_METADATA, JsonDict, api_version_of, now


def fieldset(applied: Mapping[str, Any]) -> JsonDict:
    """The ``fieldsV1`` set of an applied configuration; lists are atomic (owned as a whole)."""
    result: JsonDict = {}
    for key, value in applied.items():
        result[f"f:{key}"] = fieldset(value) if isinstance(value, dict) else {}
    return result


def prune_fields(obj: JsonDict, previous: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Remove from ``obj`` the fields a manager applied before but no longer applies."""
    for fkey, sub in previous.items():
        key = fkey.removeprefix("f:")
        if fkey not in current:
            obj.pop(key, None)
        elif sub and current[fkey] and isinstance(obj.get(key), dict):
            prune_fields(obj[key], sub, current[fkey])


class ServerSideApply:
    """The PATCH ``application/apply-patch+yaml`` verb and the bookkeeping it needs."""

    def _serve_apply(
        self,
        request: kmock.Request,
        res: kmock.resource,
        namespace: str | None,
        name: str,
        subresource: str | None,
        params: Mapping[str, str],
        dry_run: bool,
    ) -> aiohttp.web.StreamResponse:
        manager = params.get("fieldManager")
        if not manager:
            raise api_error(
                400, "BadRequest", "PATCH /apply requests require fieldManager to be set"
            )
        try:
            applied = yaml.safe_load(request.text or "{}")
        except yaml.YAMLError as e:
            raise api_error(400, "BadRequest", f"error decoding YAML: {e}") from None
        if not isinstance(applied, dict):
            raise api_error(400, "BadRequest", "the apply body must be an object")
        info = self._info(res)
        if applied.get("apiVersion") != api_version_of(res) or applied.get("kind") != info.kind:
            raise api_error(
                400,
                "BadRequest",
                f"apiVersion/kind must be {api_version_of(res)}/{info.kind} in an apply body",
            )
        meta = applied.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise api_error(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                f"({name})",
            )
        if self._current(res, namespace, name) is None:
            if subresource is not None:
                raise self._not_found(res, name)
            body = copy.deepcopy(applied)
            body.setdefault("metadata", {})["name"] = name
            created = self._create(
                res,
                namespace,
                body,
                manager=manager,
                dry_run=dry_run,
                operation="Apply",
                applied=applied,
            )
            return self._json(201, created)
        precondition = meta.get("resourceVersion")

        def compute(current: JsonDict) -> JsonDict:
            previous = self._applied_fields(current, manager, subresource)
            pruned = copy.deepcopy(current)
            prune_fields(pruned, previous, self._fieldset_of(applied))
            return dict(merge_patch(pruned, applied))

        result = self._update(
            res, namespace, name, compute,
            subresource=subresource, manager=manager, operation="Apply",
            precondition=precondition, dry_run=dry_run, applied=applied,
        )  # fmt: skip
        return self._json(200, result)

    @staticmethod
    def _fieldset_of(applied: Mapping[str, Any]) -> JsonDict:
        trimmed = {k: v for k, v in applied.items() if k not in {"apiVersion", "kind"}}
        meta = {
            k: v for k, v in (applied.get("metadata") or {}).items() if k not in SYSTEM_METADATA
        }
        if meta:
            trimmed["metadata"] = meta
        else:
            trimmed.pop("metadata", None)
        return fieldset(trimmed)

    @staticmethod
    def _applied_fields(current: JsonDict, manager: str, subresource: str | None) -> JsonDict:
        for entry in current.get("metadata", {}).get("managedFields") or []:
            if (entry.get("manager"), entry.get("operation"), entry.get("subresource")) == (
                manager,
                "Apply",
                subresource,
            ):
                return dict(entry.get("fieldsV1") or {})
        return {}

    def _managed_fields(
        self,
        entries: Iterable[JsonDict],
        manager: str,
        operation: str,
        res: kmock.resource,
        subresource: str | None,
        applied: Mapping[str, Any] | None,
    ) -> list[JsonDict]:
        """A simplified ``metadata.managedFields``: one entry per manager/operation/subresource;
        for Apply, ``fieldsV1`` holds the applied field set (used to prune dropped fields)."""
        entry: JsonDict = {
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version_of(res),
            "time": now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": self._fieldset_of(applied) if applied is not None else {},
        }
        if subresource:
            entry["subresource"] = subresource
        ident = (manager, operation, subresource)
        kept = [
            e
            for e in entries
            if (e.get("manager"), e.get("operation"), e.get("subresource")) != ident
        ]
        return [*copy.deepcopy(kept), entry]
