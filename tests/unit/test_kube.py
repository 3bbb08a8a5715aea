"""What a condition and its Event say: kube.py's errors, and Ready announced once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from dfm_operator.api import WebhookSourceStatus
from dfm_operator.conditions import ConditionUpdate
from dfm_operator.kernel import Context, OperatorMetrics, write_status
from dfm_operator.kube import Invalid, NotFound, _error
from dfm_operator.settings import OperatorSettings


def api_exception(status: int, reason: str, message: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


def test_the_api_servers_explanation_is_kept() -> None:
    exc = api_exception(422, "Unprocessable Entity", 'Service "x" is invalid: metadata.name: ...')
    error = _error(exc, "apply Service payments/x-receiver")
    assert isinstance(error, Invalid)
    assert str(error) == (
        "apply Service payments/x-receiver: 422 Unprocessable Entity: "
        'Service "x" is invalid: metadata.name: ...'
    )


def test_a_long_explanation_is_cut_and_a_missing_one_is_fine() -> None:
    long = _error(api_exception(422, "Unprocessable Entity", "v" * 5000), "apply Ingress a/b")
    assert len(str(long)) < 400
    bare = ApiException(status=404, reason="Not Found")
    assert str(_error(bare, "get Deployment a/b")) == "get Deployment a/b: 404 Not Found"
    assert isinstance(_error(bare, "get Deployment a/b"), NotFound)


def test_nothing_the_server_says_about_a_secret_is_repeated() -> None:
    exc = api_exception(422, "Unprocessable Entity", 'data[token]: Invalid value: "s3cr3t"')
    assert "s3cr3t" not in str(_error(exc, "apply Secret payments/signing"))


async def test_ready_is_announced_once_even_when_handed_a_stale_body() -> None:
    # kopf may run a handler again with a body older than our own status write: its status still
    # says not Ready, but the transition was announced already.
    class StatusSink:
        async def patch_status(self, *_: Any) -> None:
            return None

    ctx = Context(
        kube=StatusSink(),  # type: ignore[arg-type]
        settings=OperatorSettings(),
        metrics=OperatorMetrics(),
        clock=lambda: datetime(2026, 11, 27, tzinfo=UTC),
    )
    stale = {"metadata": {"namespace": "ns", "name": "s", "uid": "u-1", "generation": 1}}
    ready = [ConditionUpdate("Ready", True, "Available", "all replicas available")]
    events: list[tuple[str, str, str]] = []

    def emit(*event: str) -> None:
        events.append(event)

    for _ in range(2):
        assert await write_status(ctx, "WebhookSource", stale, ready, WebhookSourceStatus(), emit)
    assert [e[:2] for e in events] == [("Normal", "Ready")]

    # A new generation that becomes Ready again is news.
    newer = {"metadata": {**stale["metadata"], "generation": 2}}
    await write_status(ctx, "WebhookSource", newer, ready, WebhookSourceStatus(), emit)
    assert len(events) == 2


_SHED = r"""
import asyncio, json, sys

import dfm_operator.main  # kopf, the handlers' imports: what `dfm operator` has loaded
import dfm_operator.handlers
from aiohttp import web
from kubernetes_asyncio import client

from dfm_operator import kube

GENERATED = ("kubernetes_asyncio.client.models", "kubernetes_asyncio.client.api.")
loaded = sum(1 for name in sys.modules if name.startswith(GENERATED))
dropped = kube.shed_generated_modules()
left = [name for name in sys.modules if name.startswith(GENERATED)]


async def calls():
    seen = []

    async def get(request):
        if request.match_info["name"] == "gone":
            return web.json_response({"kind": "Status", "message": "not found"}, status=404)
        return web.json_response({"kind": "Secret", "data": {"k": "v"}})

    async def apply(request):
        seen.append((request.content_type, json.loads(await request.text())))
        return web.json_response({"kind": "Secret", "metadata": {"resourceVersion": "7"}})

    app = web.Application()
    path = "/api/v1/namespaces/{ns}/secrets/{name}"
    app.router.add_get(path, get)
    app.router.add_patch(path, apply)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
    try:
        got = await kube.Kube(api).get("v1", "Secret", "ns", "x")
        gone = await kube.Kube(api).get("v1", "Secret", "ns", "gone")
        meta = {"name": "x", "namespace": "ns"}
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": meta}
        applied = await kube.Kube(api).apply(body)
    finally:
        await api.close()
        await runner.cleanup()
    return got, gone, applied, seen


got, gone, applied, seen = asyncio.run(calls())
print(json.dumps({"loaded": loaded, "dropped": dropped, "left": left, "got": got, "gone": gone,
                  "applied": applied, "seen": seen}))
"""


def test_the_client_libraries_generated_modules_go_and_the_operators_calls_still_work() -> None:
    """`dfm operator` drops kubernetes_asyncio's generated models and APIs once it has imported
    everything (their memory then serves a big start-up); its own calls, plain dicts in and
    out, go on working: a GET, a 404 as NotFound, a server-side apply. In a process of its own,
    as the dropping changes the interpreter's imports."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _SHED], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["loaded"] > 500  # what the import brings: a module per model and API group
    assert result["dropped"] >= result["loaded"]
    assert result["left"] == []
    assert result["got"] == {"kind": "Secret", "data": {"k": "v"}}
    assert result["gone"] is None
    assert result["applied"] == {"kind": "Secret", "metadata": {"resourceVersion": "7"}}
    assert result["seen"] == [
        [
            "application/apply-patch+yaml",
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "ns"}},
        ]
    ]
