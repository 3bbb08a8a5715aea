"""`dfm sync run` as a process: killed with SIGKILL mid-run and run again, the example HighLevel
sync against the fake HighLevel API, the config the operator renders, and bad input."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiohttp.test_utils import TestServer

from dfm.render import render
from tests.fake_api import FakeApi, contacts, serve
from webhook_server.sync.summary import parse_summary

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DFM = [sys.executable, "-m", "dfm.cli"]
TOKEN = "pit-5f0c2a"


def manifests(url: str, **http: Any) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "WebhookSource",
            "metadata": {"name": "crm", "namespace": "sales"},
            "spec": {"provider": "highlevel", "store": {"retentionDays": 90}},
        },
        {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "SyncSchedule",
            "metadata": {"name": "contacts", "namespace": "sales"},
            "spec": {
                "schedule": "*/15 * * * *",
                "connector": {
                    "http": {
                        "url": url,
                        "itemsPath": "data",
                        "cursor": {"param": "cursor", "from": "next"},
                        "rateLimit": {"requestsPerSecond": 1000, "burst": 100},
                        **http,
                    }
                },
                "sink": {"webhookSourceRef": {"name": "crm"}},
                "retry": {"maxAttempts": 2, "backoffSeconds": 0},
            },
        },
    ]


def write(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


async def dfm(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *DFM,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def event_ids(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT event_id FROM webhook_events ORDER BY event_id")
        return [r["event_id"] for r in rows]
    finally:
        await conn.close()


async def test_a_killed_run_is_resumed_by_the_next_nothing_twice_nothing_skipped(
    database_url: str, served: list[TestServer], tmp_path: Path
) -> None:
    api = FakeApi(contacts(50), "cursor", page_size=5, hold_at=4)
    base = await serve(api, served)
    manifest = write(tmp_path / "sync.yaml", manifests(base + "/items"))
    args = ["sync", "run", "-f", str(manifest), "--database-url", database_url]

    proc = await asyncio.create_subprocess_exec(
        *DFM, *args, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    # Page 4 is being served: pages 1-3 were answered and the run is waiting for the 4th.
    await asyncio.wait_for(api.held.wait(), 60)
    os.kill(proc.pid, signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL
    assert await event_ids(database_url) == [f"contacts/c{n:05d}" for n in range(15)]

    api.hold_at = None
    api.release.set()
    before = len(api.requests)
    code, _, err = await dfm(*args)
    assert code == 0, err
    assert api.requests[before].params == {"cursor": "c00014"}  # page 4, not page 1
    stored = await event_ids(database_url)
    assert stored == [f"contacts/c{n:05d}" for n in range(50)]  # each once, none missing
    assert "sales/contacts: ok: 35 item(s), 35 new" in err


async def test_the_highlevel_example_syncs_from_the_fake_highlevel_api(
    database_url: str, served: list[TestServer], tmp_path: Path
) -> None:
    docs = [
        d
        for file in ("highlevel.yaml", "highlevel-sync.yaml", "managed-secrets.yaml")
        for d in yaml.safe_load_all((EXAMPLES / file).read_text())
        if d
    ]
    sync = next(d for d in docs if d["kind"] == "SyncSchedule")
    http = sync["spec"]["connector"]["http"]
    api = FakeApi(contacts(230), "highlevel", token=TOKEN, location_id=http["query"]["locationId"])
    base = await serve(api, served)
    # Only the host changes: query, headers, cursor and auth are the example's own.
    assert http["url"].startswith("https://services.leadconnectorhq.com/")
    http["url"] = http["url"].replace("https://services.leadconnectorhq.com", base)
    http["rateLimit"] = {"requestsPerSecond": 1000, "burst": 100}
    manifest = write(tmp_path / "examples.yaml", docs)
    token = tmp_path / "token"
    token.write_text(TOKEN)

    args = ["--name", "ghl-contacts", "--database-url", database_url, "--token-file", str(token)]
    code, _, err = await dfm("sync", "run", "-f", str(manifest), *args)
    assert code == 0, err
    assert "default/ghl-contacts: ok: 230 item(s), 230 new, 4 page(s)" in err
    assert all(r.version == "2021-07-28" for r in api.requests)
    assert all(r.authorization == f"Bearer {TOKEN}" for r in api.requests)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT source, event_id, event_type FROM webhook_events")
    finally:
        await conn.close()
    assert len(rows) == 230
    assert {(r["source"], r["event_type"]) for r in rows} == {("default/highlevel", "contact")}
    assert "contact/c00000@2026-11-01T00:00:00Z" in {r["event_id"] for r in rows}

    code, _, err = await dfm("sync", "run", "-f", str(manifest), *args)
    assert code == 0, err
    assert "230 item(s), 0 new" in err


async def test_the_rendered_job_config_runs_and_writes_its_summary(
    database_url: str, served: list[TestServer], tmp_path: Path
) -> None:
    """What the CronJob's container runs: the ConfigMap's config, the mounted token and
    database files, the summary in the termination-message file."""
    api = FakeApi(contacts(12), "cursor", token=TOKEN)
    base = await serve(api, served)
    docs = manifests(
        base + "/items", auth={"managedSecretRef": {"name": "crm-oauth"}}, eventType="contact"
    )
    manifest = write(tmp_path / "sync.yaml", docs)
    config_map = next(
        o for o in render([str(manifest)]) if o["metadata"]["name"] == "contacts-sync"
    )
    config = yaml.safe_load(config_map["data"]["sync.yaml"])
    # Where kubelet would mount the Secrets.
    (tmp_path / "db").write_text(database_url + "\n")
    (tmp_path / "access_token").write_text(TOKEN)
    assert config["database"]["urlFile"] == "/etc/dfm/database/url"
    assert config["token"] == {"file": "/etc/dfm/token/access_token"}
    config["database"]["urlFile"] = str(tmp_path / "db")
    config["token"]["file"] = str(tmp_path / "access_token")
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump(config))
    summary_file = tmp_path / "termination-log"

    code, out, err = await dfm(
        "sync", "run", "--config", str(rendered), "--summary-file", str(summary_file)
    )
    assert code == 0, err
    summary = parse_summary(summary_file.read_text())
    assert summary is not None
    assert (summary.result, summary.reason, summary.items, summary.stored) == (
        "Succeeded",
        "Synced",
        12,
        12,
    )
    assert len(summary_file.read_bytes()) < 4096
    for text in (out, err, summary_file.read_text()):
        assert TOKEN not in text
    finished = [json.loads(line) for line in out.splitlines() if "sync run finished" in line]
    assert finished[0]["stored"] == 12

    api.token = "rotated-elsewhere"
    code, _, _ = await dfm(
        "sync", "run", "--config", str(rendered), "--summary-file", str(summary_file)
    )
    assert code == 1
    failed = parse_summary(summary_file.read_text())
    assert failed is not None
    assert (failed.result, failed.reason) == ("Failed", "TokenUnavailable")


async def test_an_unreadable_config_is_a_summary_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "sync.yaml"
    bad.write_text("schedule: a/b\nhttp: {}\n")
    summary_file = tmp_path / "termination-log"
    code, _, err = await dfm(
        "sync", "run", "--config", str(bad), "--summary-file", str(summary_file)
    )
    assert code == 2
    assert err.startswith("dfm sync: error: ")
    assert "invalid sync config" in err
    assert len(err.strip().splitlines()) == 1
    summary = parse_summary(summary_file.read_text())
    assert summary is not None
    assert summary.reason == "InvalidConfig"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sink": {"webhookSourceRef": {"name": "elsewhere"}}}, "WebhookSource sales/elsewhere"),
        ({"schedule": "every day"}, "spec.schedule"),
    ],
)
async def test_a_bad_manifest_is_one_line_and_exit_2(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    docs = manifests("https://api.example.com/items")
    docs[1]["spec"].update(change)
    manifest = write(tmp_path / "sync.yaml", docs)
    code, _, err = await dfm("sync", "run", "-f", str(manifest), "--database-url", "postgresql://x")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert message in err


async def test_auth_without_a_token_says_how_to_give_one(tmp_path: Path) -> None:
    docs = manifests("https://api.example.com/items", auth={"managedSecretRef": {"name": "o"}})
    manifest = write(tmp_path / "sync.yaml", docs)
    code, _, err = await dfm("sync", "run", "-f", str(manifest), "--database-url", "postgresql://x")
    assert code == 2
    assert "pass --token-file, or add the Secret o (key access_token)" in err
