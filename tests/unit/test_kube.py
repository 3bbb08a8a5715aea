"""What a condition and its Event say: kube.py's errors, and Ready announced once."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from dfm_operator import kube
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
import asyncio, gc, json, os, sys, weakref

import dfm_operator.main
from aiohttp import web
from kubernetes_asyncio import client

from dfm_operator import kube

GENERATED = ("kubernetes_asyncio.client.models", "kubernetes_asyncio.client.api.")
loaded = sum(1 for name in sys.modules if name.startswith(GENERATED))
api_class = weakref.ref(client.CoreV1Api)
model_module = weakref.ref(sys.modules["kubernetes_asyncio.client.models.v1_pod"])
dfm_operator.main._operate = lambda *args: None  # everything `dfm operator` does but operate
dfm_operator.main.run(namespaces=[], metrics_port=None, liveness=None, standalone=True)
gc.collect()
left = [name for name in sys.modules if name.startswith(GENERATED)]
try:
    client.V1Pod
    missing = ""
except AttributeError as exc:
    missing = str(exc)


async def calls():
    seen = []

    async def get(request):
        seen.append(request.headers.get("Authorization"))
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
    with open(os.environ["KUBECONFIG"], "w") as config:
        json.dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "here",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": "t0k3n"}}],
            "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u"}}],
        }, config)
    try:
        async with kube.connect() as api:  # the operator's own way in: its kubeconfig
            got = await api.get("v1", "Secret", "ns", "x")
            gone = await api.get("v1", "Secret", "ns", "gone")
            meta = {"name": "x", "namespace": "ns"}
            applied = await api.apply({"apiVersion": "v1", "kind": "Secret", "metadata": meta})
    finally:
        await runner.cleanup()
    return got, gone, applied, seen


got, gone, applied, seen = asyncio.run(calls())
from kopf._cogs.helpers import thirdparty

print(json.dumps({
    "loaded": loaded, "left": left, "api_class_alive": api_class() is not None,
    "model_module_alive": model_module() is not None, "missing": missing,
    "kopf_model": thirdparty.V1ObjectMetaAsync.__name__,
    "got": got, "gone": gone, "applied": applied, "seen": seen,
}))
"""


def test_the_client_libraries_generated_code_goes_and_the_operators_calls_still_work(
    tmp_path: Path,
) -> None:
    """`dfm operator` lets go of kubernetes_asyncio's generated models and APIs once it has
    imported everything (their memory then serves a big start-up): they are collected, not only
    unlisted, and a name asked for later says why it is gone. The operator's own way to the API
    goes on working: its kubeconfig read, a GET with the token, a 404 read as absent, a
    server-side apply. In a process of its own, as this changes the interpreter's imports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env["KUBECONFIG"] = str(tmp_path / "kubeconfig")
    done = subprocess.run(
        [sys.executable, "-c", _SHED], capture_output=True, text=True, timeout=60, env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["loaded"] > 500  # what the import brings: a module per model and API group
    assert result["left"] == []
    assert not result["api_class_alive"]
    assert not result["model_module_alive"]
    assert "shed_generated_modules" in result["missing"]
    assert result["kopf_model"] == "V1ObjectMeta"  # what kopf holds stays
    assert result["got"] == {"kind": "Secret", "data": {"k": "v"}}
    assert result["gone"] is None
    assert result["applied"] == {"kind": "Secret", "metadata": {"resourceVersion": "7"}}
    assert result["seen"] == [
        "Bearer t0k3n",
        "Bearer t0k3n",
        [
            "application/apply-patch+yaml",
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "ns"}},
        ],
    ]


def test_kube_py_asks_the_client_library_for_nothing_it_lets_go_of() -> None:
    """kube.py keeps to what ``shed_generated_modules`` leaves: ``client.ApiClient``, and
    answers read as ``object`` (a model named there would be looked up among the dropped
    models, in the operator only: no other test would see it)."""
    source = Path(kube.__file__).read_text()
    used = {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "client"
    }
    assert used == {"ApiClient"}  # (Configuration is the config module's business)
    maps = re.findall(r"response_types_map=\{([^}]*)\}", source)
    assert maps, "kube.py no longer names its answers' types here: check what it reads"
    assert {kind for m in maps for kind in re.findall(r':\s*"([^"]+)"', m)} == {"object"}
