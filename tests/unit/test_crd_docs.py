"""docs/crd-reference.md: generated from the CRDs (hence the models), complete, and committed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from dfm import cli, crds_cmd
from dfm_operator import crd_docs
from dfm_operator.crds import CEL_KEY, all_crds

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "crd-reference.md"
CHART = ROOT / "charts" / "df-middleware"

JsonDict = dict[str, Any]


def property_paths(node: JsonDict, path: str) -> list[str]:
    paths = [path]
    for name, sub in node.get("properties", {}).items():
        paths += property_paths(sub, f"{path}.{name}")
    items = node.get("items")
    if isinstance(items, dict):
        for name, sub in items.get("properties", {}).items():
            paths += property_paths(sub, f"{path}[].{name}")
    return paths


def test_committed_reference_matches_the_models() -> None:
    assert REFERENCE.read_text() == crd_docs.render(all_crds()), (
        "docs/crd-reference.md is out of date: run `dfm crds --docs docs/crd-reference.md`"
    )


@pytest.mark.parametrize("crd", all_crds(), ids=lambda crd: crd["spec"]["names"]["kind"])
def test_every_field_and_rule_is_documented(crd: JsonDict) -> None:
    section = "\n".join(crd_docs.render_kind(crd))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in ("spec", "status"):
        for path in property_paths(schema["properties"][part], part):
            assert f"| `{path}` |" in section, path
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert all(line.endswith(" |") and line.count(" | ") >= 2 for line in rows)
    for part in ("spec", "status"):
        for _, message, rule in crd_docs.rules(schema["properties"][part], part):
            assert f"| {message} |" in section
            assert rule.replace("|", "\\|") in section


def test_rows_say_type_default_requirement_and_constraints() -> None:
    webhook = next(c for c in all_crds() if c["spec"]["names"]["kind"] == "WebhookSource")
    spec = webhook["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rows = {row.path: row for row in crd_docs.fields(spec, "spec")}
    provider = rows["spec.provider"]
    assert (provider.type, provider.required) == ("string", True)
    assert "One of: `github`, `stripe`" in provider.description
    replicas = rows["spec.replicas"]
    assert (replicas.type, replicas.default, replicas.required) == ("integer", "1", False)
    assert "≥ 0, ≤ 100." in replicas.description
    assert rows["spec.cors.allowedOrigins"].type == "[]string"
    assert rows["spec.resources"].type == "object (free-form)"
    assert rows["spec.verification.secretRef.name"].required
    assert not rows["spec.verification.secretRef"].required


def test_types_of_maps_lists_and_times() -> None:
    node = {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "when": {"type": "string", "format": "date-time"},
            "ids": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "rate": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        },
    }
    rows = {row.path: row for row in crd_docs.fields(node, "x")}
    assert rows["x.labels"].type == "map[string]string"
    assert rows["x.when"].type == "string (date-time)"
    assert rows["x.ids"].type == "[]integer"
    assert "Each item: ≥ 1." in rows["x.ids"].description
    assert rows["x.rate"].description == "> 0."


def test_table_cells_cannot_break_the_table() -> None:
    row = crd_docs.Field("spec.a", "string", False, "a|b", "x | y <namespace>\n\nz")
    [_, _, line] = crd_docs._table([row])
    assert line.count(" | ") == 4
    assert "&lt;namespace&gt;" in line
    assert "<br><br>" in line
    assert "`a\\|b`" in line


def test_reference_links_every_kind() -> None:
    text = REFERENCE.read_text()
    for crd in all_crds():
        kind = crd["spec"]["names"]["kind"]
        assert f"- [{kind}](#{kind.lower()})" in text
        assert f"\n## {kind}\n" in text
        assert CEL_KEY not in text


# --- `dfm crds --docs/--chart` ----------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    return cli.parser().parse_args(["crds", *argv])


def test_dfm_crds_writes_docs_and_chart_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: x\nversion: 0.1.0\n")
    docs = tmp_path / "docs" / "crd-reference.md"
    assert crds_cmd.run(_args("--docs", str(docs), "--chart", str(chart))) == 0
    assert docs.read_text() == REFERENCE.read_text()
    written = chart / crds_cmd.CHART_TEMPLATE
    assert written.read_text() == (CHART / crds_cmd.CHART_TEMPLATE).read_text()
    peering = chart / "crds" / "kopf-peerings.yaml"
    assert peering.read_text() == (CHART / "crds" / "kopf-peerings.yaml").read_text()
    assert capsys.readouterr().out.split() == [str(written), str(peering), str(docs)]


def test_dfm_crds_refuses_a_directory_that_is_not_a_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["crds", "--chart", str(tmp_path)]) == 2
    assert "not a Helm chart" in capsys.readouterr().err


def test_chart_template_escapes_go_template_delimiters() -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {"description": "use {{ .Values }} literally"},
    }
    text = crds_cmd.chart_template([crd])
    assert '{{ "{{" }} .Values }}' in text
    assert text.startswith("{{- /*")
    assert text.rstrip().endswith("{{- end }}")
