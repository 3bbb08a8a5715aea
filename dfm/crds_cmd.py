"""`dfm crds`: the CRDs generated from the API models, as a YAML stream or as files."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfm_operator.crds import all_crds, crd_filename, dump_crd


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "crds",
        help="print the CRDs generated from the API models",
        description=(
            "Prints every CustomResourceDefinition as one YAML stream, or with --output-dir "
            "writes one <plural>.dfm.dev.yaml file per CRD (run `dfm crds --output-dir crds` "
            "after changing the models)."
        ),
    )
    p.add_argument(
        "--output-dir",
        metavar="DIR",
        type=Path,
        help="write the CRDs as files into DIR (created if missing) instead of printing them",
    )


def run(args: argparse.Namespace) -> int:
    crds = all_crds()
    output_dir: Path | None = args.output_dir
    if output_dir is None:
        print("".join(f"---\n{dump_crd(crd)}" for crd in crds), end="")
        return 0
    output_dir.mkdir(parents=True, exist_ok=True)
    for crd in crds:
        path = output_dir / crd_filename(crd)
        path.write_text(dump_crd(crd))
        print(path)
    return 0
