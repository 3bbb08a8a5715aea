"""The status subresource split: each endpoint changes only its own part of an object.

With ``subresources.status`` a write to the main endpoint ignores ``status`` and a write to
``/status`` ignores everything but ``status``; ``metadata.generation`` moves only when something
other than metadata and status changed.
"""

from __future__ import annotations

import copy

from kube_emulator.resources import JsonDict


def split_status(
    old: JsonDict, candidate: JsonDict, *, subresource: str | None, has_status: bool
) -> JsonDict:
    """The object to store after a write that produced ``candidate`` from ``old``."""
    if subresource == "status":
        new = copy.deepcopy(old)
        if "status" in candidate:
            new["status"] = candidate["status"]
        else:
            new.pop("status", None)
        return new
    new = candidate
    if has_status:
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
    return new


def generation_changed(old: JsonDict, new: JsonDict, *, has_status: bool) -> bool:
    """Does the write bump ``metadata.generation``?"""
    excluded = {"metadata", "apiVersion", "kind"} | ({"status"} if has_status else set())
    return {k: v for k, v in new.items() if k not in excluded} != {
        k: v for k, v in old.items() if k not in excluded
    }
