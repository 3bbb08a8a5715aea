"""The object store: create, update, delete with the API server's rules for metadata,
resourceVersions, generations, finalizers, conflicts, pruning and the status subresource.

Objects live in kmock's ``emulator.objects`` (every version kept, deletions soft), keyed by
``(resource, namespace, name)``.
"""

from __future__ import annotations

import copy
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import kmock

from kube_emulator.errors import api_error
from kube_emulator.resources import SYSTEM_METADATA, JsonDict, api_version_of, now
from kube_emulator.schema import FieldValidation, prune_object, unknown_field_warnings
from kube_emulator.status import generation_changed, split_status

_GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as in k8s.io/apimachinery


class ObjectStore:
    """State transitions of stored objects (mixed into the emulator)."""

    _schemas: dict[kmock.resource, Mapping[str, Any]]
    _warnings: list[str]
    _field_validation: str

    def _create(
        self,
        res: kmock.resource,
        namespace: str | None,
        body: JsonDict,
        *,
        manager: str,
        dry_run: bool = False,
        operation: str = "Update",
        applied: Mapping[str, Any] | None = None,
    ) -> JsonDict:
        info = self._info(res)
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise api_error(400, "BadRequest", "metadata must be an object")
        self._prune(res, body)  # when the body is decoded: before it is looked at
        if info.namespaced:
            body_namespace = meta.get("namespace")
            if namespace and body_namespace and body_namespace != namespace:
                raise api_error(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request",
                )
            namespace = namespace or body_namespace or "default"
        else:
            namespace = None
        name = meta.get("name")
        if not name and meta.get("generateName"):
            suffix = "".join(secrets.choice(_GENERATE_NAME_ALPHABET) for _ in range(5))
            name = f"{meta['generateName']}{suffix}"
        if not name:
            raise self._invalid(res, "", "metadata.name", "name or generateName is required")
        if self._current(res, namespace, name) is not None:
            raise api_error(
                409,
                "AlreadyExists",
                f'{self._kind_ref(res)} "{name}" already exists',
                name=name,
                kind=res.plural,
            )
        body["apiVersion"] = api_version_of(res)
        body["kind"] = info.kind
        if "status" in info.subresources:
            body.pop("status", None)
        for key in SYSTEM_METADATA:
            meta.pop(key, None)
        meta["name"] = name
        if namespace is not None:
            meta["namespace"] = namespace
        self._normalize(res, body)
        self._validate(res, body)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        meta["generation"] = 1
        meta["managedFields"] = self._managed_fields([], manager, operation, res, None, applied)
        if dry_run:
            meta["resourceVersion"] = str(self._rv)
            return body
        meta["resourceVersion"] = self._bump()
        self._store(res, namespace, name, body)
        self._emit(res, "ADDED", body)
        self._after_write(res, None, body)
        return copy.deepcopy(body)

    def _update(
        self,
        res: kmock.resource,
        namespace: str | None,
        name: str,
        compute: Callable[[JsonDict], Any],
        *,
        subresource: str | None,
        manager: str,
        operation: str,
        precondition: str | None = None,
        dry_run: bool = False,
        applied: Mapping[str, Any] | None = None,
    ) -> JsonDict:
        info = self._info(res)
        old = self._current(res, namespace, name)
        if old is None:
            raise self._not_found(res, name)
        old_meta = old["metadata"]
        if precondition is not None and str(precondition) != old_meta["resourceVersion"]:
            raise api_error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {self._kind_ref(res)} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                name=name,
                kind=res.plural,
            )
        candidate = compute(copy.deepcopy(old))
        if not isinstance(candidate, dict) or not isinstance(candidate.get("metadata", {}), dict):
            raise self._invalid(res, name, "", "the result is not a valid object")

        has_status = "status" in info.subresources
        new = split_status(old, candidate, subresource=subresource, has_status=has_status)
        new_meta = new.setdefault("metadata", {})
        for key in ("name", "namespace"):
            if new_meta.get(key, old_meta.get(key)) != old_meta.get(key):
                raise api_error(
                    400,
                    "BadRequest",
                    f"metadata.{key} cannot be changed "
                    f"({old_meta.get(key)!r} -> {new_meta.get(key)!r})",
                )
        for key in SYSTEM_METADATA:
            if key in old_meta:
                new_meta[key] = copy.deepcopy(old_meta[key])
            else:
                new_meta.pop(key, None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        self._normalize(res, new)
        self._prune(res, new)
        self._validate(res, new)
        if old_meta.get("deletionTimestamp"):
            added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise self._invalid(
                    res,
                    name,
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted, "
                    f"found new finalizers {sorted(added)!r}",
                )
        if new == old:
            return copy.deepcopy(old)  # a no-op write: no new resourceVersion, no watch event

        if generation_changed(old, new, has_status=has_status):
            new_meta["generation"] = int(old_meta.get("generation", 0)) + 1
        new_meta["managedFields"] = self._managed_fields(
            old_meta.get("managedFields") or [], manager, operation, res, subresource, applied
        )
        if dry_run:
            return new
        new_meta["resourceVersion"] = self._bump()
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            # The last finalizer is gone: the object disappears (watchers see DELETED only).
            self._store(res, namespace, name, new)
            self._finally_delete(res, namespace, name, new, bump=False)
            return copy.deepcopy(new)
        self._store(res, namespace, name, new)
        self._emit(res, "MODIFIED", new)
        self._after_write(res, old, new)
        return copy.deepcopy(new)

    def _delete(
        self, res: kmock.resource, namespace: str | None, name: str, *, dry_run: bool = False
    ) -> JsonDict:
        old = self._current(res, namespace, name)
        if old is None:
            raise self._not_found(res, name)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp") or dry_run:
                return copy.deepcopy(old)
            new = copy.deepcopy(old)
            meta = new["metadata"]
            meta["deletionTimestamp"] = now()
            meta["deletionGracePeriodSeconds"] = 0
            meta["generation"] = int(meta.get("generation", 0)) + 1
            meta["resourceVersion"] = self._bump()
            self._store(res, namespace, name, new)
            self._emit(res, "MODIFIED", new)
            return copy.deepcopy(new)
        if dry_run:
            return copy.deepcopy(old)
        return self._finally_delete(res, namespace, name, old)

    def _finally_delete(
        self,
        res: kmock.resource,
        namespace: str | None,
        name: str,
        last: JsonDict,
        *,
        bump: bool = True,
    ) -> JsonDict:
        final = copy.deepcopy(last)
        if bump:
            final["metadata"]["resourceVersion"] = self._bump()
        self.objects[res, namespace, name].delete()
        self._emit(res, "DELETED", final)
        if self.garbage_collection:
            self._collect_garbage(final["metadata"].get("uid"))
        return copy.deepcopy(final)

    def _upsert(self, res: kmock.resource, namespace: str | None, body: JsonDict) -> JsonDict:
        """Write a whole object (incl. status) bypassing the API rules: for seeding the state."""
        name = body["metadata"]["name"]
        if self._current(res, namespace, name) is None:
            result = self._create(res, namespace, body, manager="emulator")
        else:
            result = self._update(
                res, namespace, name,
                lambda current: {
                    **copy.deepcopy(body),
                    "metadata": {**current["metadata"], **body["metadata"]},
                },
                subresource=None, manager="emulator", operation="Update",
            )  # fmt: skip
        if "status" in body:
            result = self._update(
                res, namespace, name,
                lambda current: {**current, "status": copy.deepcopy(body["status"])},
                subresource="status", manager="emulator", operation="Update",
            )  # fmt: skip
        return result

    def _prune(self, res: kmock.resource, body: JsonDict) -> None:
        """Drop what the CRD's structural schema does not declare (custom resources only), and
        say so as the request's ``fieldValidation`` asks."""
        field_validation = self._field_validation
        schema = self._schemas.get(res)
        if schema is None:
            return
        dropped = prune_object(body, schema)
        if not dropped or field_validation == FieldValidation.IGNORE:
            return
        words = unknown_field_warnings(dropped)
        if field_validation == FieldValidation.STRICT:
            kind = self._info(res).kind
            raise api_error(
                400,
                "BadRequest",
                f"{kind} in version {res.version!r} cannot be handled as a {kind}: "
                f"strict decoding error: {', '.join(words)}",
            )
        self._warnings.extend(words)

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _store(self, res: kmock.resource, namespace: str | None, name: str, body: JsonDict) -> None:
        key = (res, namespace, name)
        if key in self.objects:
            self.objects[key].create(body)  # appends a new version to the object's history
        else:
            self.objects[key] = body

    def _current(self, res: kmock.resource, namespace: str | None, name: str) -> JsonDict | None:
        key = (res, namespace, name)
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else obj.raw

    def _iter_current(self, res: kmock.resource, namespace: str | None) -> Iterator[JsonDict]:
        for (ores, onamespace, _), obj in list(self.objects.items()):
            if ores == res and not obj.deleted and (namespace is None or onamespace == namespace):
                yield obj.raw

    def _info(self, res: kmock.resource) -> kmock.ResourceInfo:
        if res not in self.resources:
            raise api_error(
                404, "NotFound", f"the server could not find the requested resource ({res.plural})"
            )
        return self.resources[res]

    def _kind_ref(self, res: kmock.resource) -> str:
        return f"{res.plural}.{res.group}" if res.group else str(res.plural)

    def _not_found(self, res: kmock.resource, name: str) -> kmock.KubernetesError:
        return api_error(
            404, "NotFound", f'{self._kind_ref(res)} "{name}" not found', name=name, kind=res.plural
        )

    def _invalid(
        self, res: kmock.resource, name: str, field: str, detail: str
    ) -> kmock.KubernetesError:
        kind = self._info(res).kind
        group = f".{res.group}" if res.group else ""
        message = f'{kind}{group} "{name}" is invalid: {field}: {detail}'
        return api_error(
            422,
            "Invalid",
            message,
            name=name,
            kind=kind,
            causes=[{"field": field, "message": detail}],
        )
