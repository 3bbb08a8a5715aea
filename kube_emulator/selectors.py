"""Label and field selectors, as list and watch requests filter with them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def _split_selector(selector: str) -> list[str]:
    terms: list[str] = []
    depth, current = 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term.strip() for term in terms if term.strip()]


def label_selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality- and set-based label selectors: ``a=b,c!=d,e,!f,g in (h,i),j notin (k)``."""
    for term in _split_selector(selector):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term):
            key, op, raw = m.groups()
            values = {value.strip() for value in raw.split(",") if value.strip()}
            inside = key in labels and labels[key] in values
            if inside != (op == "in"):
                return False
        elif "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_selector_matches(selector: str, obj: Mapping[str, Any]) -> bool:
    """Field selectors: ``metadata.name=x``, ``metadata.namespace!=y``, ``spec.foo==z``."""
    for term in _split_selector(selector):
        negate = "!=" in term
        path, value = (part.strip() for part in re.split(r"!=|==|=", term, maxsplit=1))
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        actual = (
            ""
            if current is None
            else str(current).lower()
            if isinstance(current, bool)
            else str(current)
        )
        if (actual == value) == negate:
            return False
    return True
