"""Server-side printing: the Table that `kubectl get` asks for, from additionalPrinterColumns."""

from __future__ import annotations

import datetime
import re
from typing import Any

from kube_emulator.resources import JsonDict


def table(columns: list[JsonDict], items: list[JsonDict]) -> JsonDict:
    """A ``meta.k8s.io/v1`` Table of ``items`` with a CRD version's printer ``columns``."""
    definitions = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "priority": 0,
            "description": "Name must be unique within a namespace.",
        }
    ]
    definitions += [
        {
            "name": c["name"],
            "type": c["type"],
            "format": c.get("format", ""),
            "priority": c.get("priority", 0),
            "description": c.get("description", ""),
        }
        for c in columns
    ]
    rows = []
    for obj in items:
        cells: list[Any] = [obj["metadata"]["name"]]
        for column in columns:
            value = printer_value(obj, column["jsonPath"])
            if column["type"] == "date" and isinstance(value, str):
                value = age(value)
            cells.append(value)
        rows.append(
            {
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
        )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": definitions,
        "rows": rows,
    }


_FILTER = re.compile(r'^(\w+)\[\?\(@\.(\w+)=="([^"]*)"\)\]$')


def printer_value(obj: Any, json_path: str) -> Any:
    """The few JSONPath forms printer columns use: ``.a.b`` and ``.a[?(@.k=="v")].b``."""
    node: Any = obj
    for part in re.split(r"\.(?![^\[]*\])", json_path.removeprefix(".")):
        match = _FILTER.match(part)
        if match:
            field, key, wanted = match.groups()
            items = node.get(field) if isinstance(node, dict) else None
            node = next((i for i in items or [] if i.get(key) == wanted), None)
        else:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def age(timestamp: str) -> str:
    """kubectl's short duration of how long ago ``timestamp`` was."""
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    if seconds < 0:
        return "<invalid>"  # what the API server prints for a time in the future
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"
