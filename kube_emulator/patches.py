"""The PATCH flavours: RFC 7386 merge patch and RFC 6902 JSON patch."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from kube_emulator.errors import api_error
from kube_emulator.resources import JsonDict

# Content types of PATCH bodies.
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``None`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_json_patch(document: JsonDict, ops: list[Any]) -> JsonDict:
    """RFC 6902 JSON patch; a failed ``test`` or a bad path is HTTP 422, as in Kubernetes."""
    try:
        return dict(jsonpatch.apply_patch(document, ops, in_place=False))
    except jsonpatch.JsonPatchTestFailed as e:
        raise api_error(
            422,
            "Invalid",
            f"the server rejected our request due to an error in our request: test failed: {e}",
        ) from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
        raise api_error(
            422, "Invalid", f"the server rejected our request due to an error in our request: {e}"
        ) from None
