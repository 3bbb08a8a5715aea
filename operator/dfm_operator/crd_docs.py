"""The CRD reference (docs/crd-reference.md), rendered from the generated CRDs.

The CRDs come from the API models, so the reference says exactly what the API server enforces:
every field with its type, default, constraints and description, and every cross-field rule.
Regenerate with `dfm crds --docs docs/crd-reference.md`; a test fails when the file drifts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dfm_operator.crds import CEL_KEY, PRESERVE_UNKNOWN

JsonDict = dict[str, Any]

HEADER = (
    "<!-- Generated from the models in operator/dfm_operator/api; do not edit.\n"
    "     Regenerate with `dfm crds --docs docs/crd-reference.md`. -->\n"
)


@dataclass(frozen=True)
class Field:
    """One row of a kind's field table."""

    path: str
    type: str
    required: bool
    default: str
    description: str


def _type(node: JsonDict) -> str:
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if kind == "object":
        if isinstance(node.get("additionalProperties"), dict):
            return f"map[string]{_type(node['additionalProperties'])}"
        if node.get(PRESERVE_UNKNOWN) and "properties" not in node:
            return "object (free-form)"
        return "object"
    if node.get("format") == "date-time":
        return "string (date-time)"
    if kind == "string" and node.get("format"):
        return f"string ({node['format']})"
    return kind


def _literal(value: Any) -> str:
    """A value as it would be written in a manifest (JSON is valid YAML flow style)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _constraints(node: JsonDict) -> list[str]:
    """What the schema enforces on the value, in words."""
    notes: list[str] = []
    if "enum" in node:
        notes.append("One of: " + ", ".join(f"`{_literal(v)}`" for v in node["enum"]) + ".")
    for low, high, unit in (
        ("minimum", "maximum", ""),
        ("minLength", "maxLength", " characters"),
        ("minItems", "maxItems", " items"),
        ("minProperties", "maxProperties", " entries"),
    ):
        lo, hi = node.get(low), node.get(high)
        exclusive_lo = node.get("exclusiveMinimum") is True and low == "minimum"
        exclusive_hi = node.get("exclusiveMaximum") is True and high == "maximum"
        bounds = []
        if lo is not None:
            bounds.append(f"{'>' if exclusive_lo else '≥'} {lo}")
        if hi is not None:
            bounds.append(f"{'<' if exclusive_hi else '≤'} {hi}")
        if bounds:
            notes.append(f"{', '.join(bounds)}{unit}.".capitalize())
    if node.get("uniqueItems"):
        notes.append("Items are unique.")
    if "pattern" in node:
        notes.append(f"Matches `{node['pattern']}`.")
    return notes


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n\n", "<br><br>").replace("\n", " ")


def _code(text: str) -> str:
    """``text`` as inline code in a table cell (backticks widened if the text has some)."""
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def fields(node: JsonDict, path: str, required: bool = False) -> Iterator[Field]:
    """``node`` and everything below it, depth-first, properties in schema order (sorted)."""
    notes = _constraints(node)
    for sub, label in (
        (node.get("items"), "Each item"),
        (node.get("additionalProperties"), "Each value"),
    ):
        if isinstance(sub, dict) and "properties" not in sub:
            notes += [f"{label}: {n[0].lower()}{n[1:]}" for n in _constraints(sub)]
    description = " ".join([node.get("description", ""), *notes]).strip()
    default = _literal(node["default"]) if "default" in node else ""
    yield Field(path, _type(node), required, default, description)
    own_required = set(node.get("required", []))
    for name in sorted(node.get("properties", {})):
        yield from fields(node["properties"][name], f"{path}.{name}", name in own_required)
    items = node.get("items")
    if isinstance(items, dict) and "properties" in items:
        for name in sorted(items["properties"]):
            yield from fields(
                items["properties"][name],
                f"{path}[].{name}",
                name in set(items.get("required", [])),
            )
    values = node.get("additionalProperties")
    if isinstance(values, dict) and "properties" in values:
        yield from fields(values, f"{path}.<key>")


def rules(node: JsonDict, path: str) -> Iterator[tuple[str, str, str]]:
    """(path, message, CEL rule) of every cross-field rule at or below ``node``."""
    for rule in node.get(CEL_KEY, []):
        yield path, str(rule["message"]), str(rule["rule"])
    for name in sorted(node.get("properties", {})):
        yield from rules(node["properties"][name], f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from rules(node["items"], f"{path}[]")


def _table(rows: Sequence[Field]) -> list[str]:
    lines = [
        "| field | type | required | default | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in rows:
        default = _code(f.default) if f.default else ""
        lines.append(
            f"| {_code(f.path)} | {_cell(f.type)} | {'yes' if f.required else ''} | "
            f"{default} | {_cell(f.description)} |"
        )
    return lines


def _anchor(kind: str) -> str:
    return kind.lower()


def render_kind(crd: JsonDict) -> list[str]:
    """The section of one CRD: what it is, its columns, its spec and status fields, its rules."""
    names = crd["spec"]["names"]
    [version] = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    group = crd["spec"]["group"]
    kind = names["kind"]
    lines = [
        f"## {kind}",
        "",
        schema.get("description", ""),
        "",
        f"- `apiVersion: {group}/{version['name']}`, `kind: {kind}`, "
        f"{crd['spec']['scope'].lower()}",
        f"- `kubectl get {names['plural']}` (short name: "
        + ", ".join(f"`{s}`" for s in names.get("shortNames", []))
        + "; also `kubectl get "
        + ", ".join(names.get("categories", []))
        + "`)",
        "- columns: "
        + ", ".join(
            c["name"] + (" (wide)" if c.get("priority") else "")
            for c in version.get("additionalPrinterColumns", [])
        ),
        "",
    ]
    for part in ("spec", "status"):
        node = schema["properties"][part]
        lines += [f"### {kind} `.{part}`", ""]
        lines += _table(list(fields(node, part, part in schema.get("required", []))))
        lines.append("")
    found = [r for part in ("spec", "status") for r in rules(schema["properties"][part], part)]
    if found:
        lines += [
            f"### {kind} validation rules",
            "",
            "Checked by the API server (CEL) when the object is created or changed:",
            "",
            "| where | rule | message |",
            "| --- | --- | --- |",
        ]
        for where, message, rule in found:
            lines.append(f"| {_code(where)} | {_code(rule)} | {_cell(message)} |")
        lines.append("")
    return lines


def render(crds: Sequence[JsonDict]) -> str:
    """The whole reference: an index, then one section per kind."""
    lines = [
        HEADER.rstrip("\n"),
        "",
        "# CRD reference",
        "",
        "Every field of the `dfm.dev` custom resources, generated from the API models "
        "(`operator/dfm_operator/api/`) through the CRDs in `crds/`. Paths are relative to the "
        "object; `[]` marks a list item, `<key>` a map entry. Defaults are filled in by the API "
        "server when the field is left out. `status` is written by the operator only.",
        "",
    ]
    for crd in crds:
        kind = crd["spec"]["names"]["kind"]
        lines.append(f"- [{kind}](#{_anchor(kind)})")
    lines.append("")
    for crd in crds:
        lines += render_kind(crd)
    return "\n".join(lines).rstrip("\n") + "\n"
