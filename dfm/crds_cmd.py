"""`dfm crds`: the CRDs generated from the API models, as a YAML stream, files, the Helm chart's
CRD template, or the Markdown reference.

Run ``dfm crds --output-dir crds --chart charts/df-middleware --docs docs/crd-reference.md``
after changing the models; the tests fail until every generated file matches.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

import yaml

from dfm_operator import crd_docs
from dfm_operator.crds import all_crds, crd_filename, dump_crd
from dfm_operator.peering import CRDS_FILENAME as PEERING_CRDS_FILENAME
from dfm_operator.peering import peering_crd_files, peering_crds_yaml

CHART_TEMPLATE = Path("templates") / "crds.yaml"
"""Where, inside the chart, the CRD template is written."""

_CHART_HEADER = """\
{{- /*
Generated from the models in operator/dfm_operator/api by
`dfm crds --chart charts/df-middleware`; do not edit.
The cert-manager pattern: CRDs are templates, so `helm upgrade` upgrades them (Helm never touches
a chart's crds/ directory after the first install). crds.enabled=false leaves them to you;
crds.keep (the default) keeps them, and every custom resource, when the release is uninstalled.
*/ -}}
{{- if .Values.crds.enabled }}
"""

_CHART_METADATA = """\
metadata:
  name: {name}
  labels:
    {{{{- include "df-middleware.labels" (dict "ctx" $ "component" "crds") | nindent 4 }}}}
  {{{{- if .Values.crds.keep }}}}
  annotations:
    helm.sh/resource-policy: keep
  {{{{- end }}}}
"""


def _escape_template(text: str) -> str:
    """``text`` with Go template delimiters made literal, so Helm prints it as it is."""
    return text.replace("{{", '{{ "{{" }}')


def chart_template(crds: list[dict[str, Any]]) -> str:
    """The chart's ``templates/crds.yaml``: every CRD, gated and annotated per the values."""
    docs = []
    for crd in crds:
        spec = yaml.safe_dump(crd["spec"], sort_keys=True, width=100, allow_unicode=True)
        docs.append(
            f"apiVersion: {crd['apiVersion']}\n"
            f"kind: {crd['kind']}\n"
            + _CHART_METADATA.format(name=crd["metadata"]["name"])
            + "spec:\n"
            + _escape_template(textwrap.indent(spec, "  "))
        )
    return _CHART_HEADER + "---\n".join(docs) + "{{- end }}\n"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "crds",
        help="print the CRDs generated from the API models",
        description=(
            "Prints every CustomResourceDefinition as one YAML stream. With --output-dir, "
            "--chart or --docs, writes the generated files instead (any combination): run "
            "`dfm crds --output-dir crds --chart charts/df-middleware --docs "
            "docs/crd-reference.md` after changing the models."
        ),
    )
    p.add_argument(
        "--output-dir",
        metavar="DIR",
        type=Path,
        help=(
            "write one <plural>.dfm.dev.yaml file per CRD, and kopf's peering CRDs "
            "(<plural>.kopf.dev.yaml), into DIR (created if missing)"
        ),
    )
    p.add_argument(
        "--chart",
        metavar="CHART_DIR",
        type=Path,
        help=(
            f"write the Helm chart's CRD template, CHART_DIR/{CHART_TEMPLATE}, and its "
            f"CHART_DIR/crds/{PEERING_CRDS_FILENAME}"
        ),
    )
    p.add_argument(
        "--docs",
        metavar="FILE",
        type=Path,
        help="write the Markdown CRD reference to FILE",
    )


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(path)


def run(args: argparse.Namespace) -> int:
    crds = all_crds()
    output_dir: Path | None = args.output_dir
    chart: Path | None = getattr(args, "chart", None)
    docs: Path | None = getattr(args, "docs", None)
    if output_dir is None and chart is None and docs is None:
        print("".join(f"---\n{dump_crd(crd)}" for crd in crds), end="")
        return 0
    if output_dir is not None:
        for crd in crds:
            _write(output_dir / crd_filename(crd), dump_crd(crd))
        # kopf's peering CRDs, so that `kubectl apply -f crds/` is all `dfm operator` needs.
        for name, text in peering_crd_files().items():
            _write(output_dir / name, text)
    if chart is not None:
        if not (chart / "Chart.yaml").is_file():
            raise OSError(f"{chart}: not a Helm chart (no Chart.yaml)")
        _write(chart / CHART_TEMPLATE, chart_template(crds))
        _write(chart / "crds" / PEERING_CRDS_FILENAME, peering_crds_yaml())
    if docs is not None:
        _write(docs, crd_docs.render(crds))
    return 0
