"""Reading API responses: dotted paths, the list of items, an item's id and version.

Pure functions over parsed JSON. A response that does not have the shape the configuration
describes is a :class:`BadResponse`, said in words that name the path, never the data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final


class BadResponse(Exception):
    """The API answered, but not with what the configuration describes."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


def get_path(document: Any, path: str) -> Any:
    """The value at dotted ``path`` (``meta.startAfterId``, ``data.0.id``), or MISSING."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict):
            if part not in current:
                return MISSING
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


def items_at(body: Any, items_path: str) -> list[Any]:
    """The page's items: the body itself (no path) or the list at ``items_path``."""
    found = body if not items_path else get_path(body, items_path)
    if found is MISSING:
        raise BadResponse(f"the response has no {items_path!r}")
    if found is None:
        return []
    if not isinstance(found, list):
        where = repr(items_path) if items_path else "the response body"
        raise BadResponse(f"{where} is {_kind(found)}, not a list of items")
    return found


def scalar_text(value: Any) -> str | None:
    """A cursor, id, version or watermark as text: strings as they are, integers in decimal,
    other numbers as JSON writes them. None for null, empty strings, and what is not a scalar."""
    if value is None or value is MISSING or isinstance(value, bool | dict | list):
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


def item_id(item: Any, id_field: str, position: str) -> str:
    """The item's id at ``id_field`` (a string or an integer)."""
    if not isinstance(item, dict):
        raise BadResponse(f"{position} is {_kind(item)}, not an object")
    value = get_path(item, id_field)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        found = "no" if value is MISSING or value is None else f"{_kind(value)} as"
        raise BadResponse(f"{position} has {found} id at {id_field!r} (a string or integer)")
    return str(value)


def item_version(item: dict[str, Any], version_field: str, position: str) -> str:
    version = scalar_text(get_path(item, version_field))
    if version is None:
        raise BadResponse(f"{position} has no version at {version_field!r}")
    return version


def _order_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def greatest(values: Sequence[Any]) -> Any:
    """The greatest of ``values`` (numbers compared as numbers, the rest as text; numbers rank
    below text), skipping nulls and what is not a scalar; None when none is left."""
    usable = [v for v in values if scalar_text(v) is not None]
    if not usable:
        return None
    return max(usable, key=_order_key)


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), "null")
