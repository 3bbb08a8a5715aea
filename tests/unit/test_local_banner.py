"""`dfm local`'s banner says when a manifest asks for what only a cluster does."""

from __future__ import annotations

from pathlib import Path

import yaml

from dfm.local import banner, build_config, several_workers

ROOT = Path(__file__).resolve().parents[2]


def test_a_source_with_several_workers_is_told_it_runs_in_one_process_here(
    tmp_path: Path,
) -> None:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "github.yaml").read_text()))
    for doc in docs:
        if doc and doc.get("kind") == "WebhookSource":
            doc["spec"]["workers"] = 4
            key = f"{doc['metadata'].get('namespace', 'default')}/{doc['metadata']['name']}"
    manifest = tmp_path / "github.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    paths = [str(manifest), str(ROOT / "examples" / "stripe.yaml")]
    config, files = build_config(
        paths, host="127.0.0.1", port=8080, database_url="postgresql://db/x"
    )
    assert several_workers(paths) == {key: 4}
    text = banner(config, files, several_workers(paths))
    notes = [line.strip() for line in text.splitlines() if "spec.workers" in line]
    assert notes == ["spec.workers: 4 applies in a cluster; here one process serves every source"]
    # Its note sits under its own source's lines, not the other's.
    lines = text.splitlines()
    index = lines.index(next(line for line in lines if "spec.workers" in line))
    above = [line for line in lines[:index] if "POST http" in line]
    assert above[-1].split()[0] == key
