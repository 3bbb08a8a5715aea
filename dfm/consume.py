"""`dfm consume`: a stand-in for a source's forward target, to try forwarding on a laptop.

It listens where ``spec.forward.url`` points (host and port of the URL unless given), checks
every request's Standard Webhooks signature with the signing secret from the same manifests
(``current``, and ``previous`` until ``previous-expires-at``, as a consumer should during a
rotation) and prints one line per request (webhook-id, type, attempt, trace id). It answers
2xx for a valid signature (or the status asked for with ``--status``, to watch retries and the
circuit breaker), 401 otherwise.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO
from urllib.parse import urlsplit

from aiohttp import web

from dfm.local import source_configs
from dfm.manifests import ManifestError, load_documents, secrets, webhook_sources
from dfm.send import pick_source
from webhook_server import tracing
from webhook_server.config import VerificationConfig
from webhook_server.verify import Rejected, standard

BODY_PREVIEW_BYTES = 2048


def signing_values(paths: Sequence[str], key: str) -> list[bytes]:
    """The signing secrets a consumer of source ``key`` holds: the Secret's ``current`` and,
    until ``previous-expires-at`` (when set), ``previous``."""
    docs = load_documents(paths)
    found = secrets(docs)
    for _, source in webhook_sources(docs):
        if source.key != key or source.spec.forward is None:
            continue
        values = found.get((source.metadata.namespace, source.spec.forward.signing_secret_ref.name))
        if not values or not values.get("current"):
            raise ManifestError(f"{key}: no signing Secret with a current value in the files")
        held = [values["current"].encode()]
        previous = values.get("previous")
        expires = values.get("previous-expires-at")
        if previous and (not expires or _before(expires)):
            held.append(previous.encode())
        return held
    raise ManifestError(f"{key}: no spec.forward")


def _before(moment: str) -> bool:
    try:
        return time.time() < datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False


def where(url: str, host: str | None, port: int | None) -> tuple[str, int, str]:
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    return (
        host or parts.hostname or "127.0.0.1",
        port or parts.port or default_port,
        parts.path or "/",
    )


def describe(request_headers: dict[str, str], body: bytes, verdict: str, status: int) -> str:
    stamp = datetime.now().strftime("%H:%M:%S")  # a terminal: local time
    fields = [
        stamp,
        f"webhook-id={request_headers.get('webhook-id', '-')}",
        f"type={request_headers.get('dfm-event-type', '-')}",
        f"attempt={request_headers.get('dfm-attempt', '-')}",
        f"trace={_trace_id(request_headers.get(tracing.TRACEPARENT))}",
        f"bytes={len(body)}",
        f"signature={verdict}",
        f"-> {status}",
    ]
    return " ".join(fields)


def _trace_id(traceparent: str | None) -> str:
    """The trace id a delivery's ``traceparent`` names: the one to look the event up by in the
    receiver's traces and logs."""
    parsed = tracing.parse(traceparent)
    return parsed[0] if parsed is not None else "-"


def build_app(
    path: str, held: list[bytes], status: int, show_body: bool, out: TextIO
) -> web.Application:
    settings = VerificationConfig()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        result = standard.verify(request.headers, body, held, settings, time.time())
        if isinstance(result, Rejected):
            verdict, answer = f"INVALID ({result.reason.value})", 401
        else:
            verdict, answer = "valid", status
        print(describe(headers, body, verdict, answer), file=out, flush=True)
        if show_body:
            preview = body[:BODY_PREVIEW_BYTES].decode("utf-8", "replace")
            extra = len(body) - BODY_PREVIEW_BYTES
            more = f" … (+{extra} bytes)" if extra > 0 else ""
            print(f"    {preview}{more}", file=out, flush=True)
        return web.json_response({"received": answer < 300}, status=answer)

    app = web.Application()
    app.router.add_post(path, receive)
    return app


async def serve(
    paths: Sequence[str],
    *,
    name: str | None,
    host: str | None,
    port: int | None,
    status: int,
    show_body: bool,
    out: TextIO = sys.stdout,
) -> None:
    sources, _ = source_configs(paths)
    forwarding = [s for s in sources if s.forward is not None]
    if not forwarding:
        raise ManifestError("no WebhookSource with spec.forward in the files")
    source = pick_source(forwarding, name)
    assert source.forward is not None
    held = signing_values(paths, source.key)
    bind, listen_port, path = where(source.forward.url, host, port)
    runner = web.AppRunner(build_app(path, held, status, show_body, out), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, bind, listen_port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ManifestError(f"cannot listen on {bind}:{listen_port}: {exc.strerror}") from exc
    print(
        f"dfm consume: {source.key} forwards here: POST http://{bind}:{listen_port}{path} "
        f"(checking Standard Webhooks signatures with {len(held)} secret(s), answering "
        f"{status})",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def summary(line: str) -> dict[str, str]:
    """The fields of one printed line (for tests and scripts)."""
    return dict(part.split("=", 1) for part in line.split() if "=" in part)
