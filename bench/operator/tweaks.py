"""``dfm operator`` with experimental tweaks applied in-process: to size a suggestion first.

Not part of the product: each tweak monkeypatches the operator (or its libraries) the way a
real change would behave, so that the benchmark can measure it before anyone edits the code::

    python -m bench.operator --tweak cyaml --tweak no-trust-env

runs the operator as ``python -m bench.operator.tweaks cyaml,no-trust-env -- operator ...``.

Tweaks:

``cyaml``
    ``yaml.safe_dump`` with libyaml's ``CSafeDumper`` (the receiver config in every ConfigMap
    is dumped on every reconciliation, with the pure-Python emitter).
``no-trust-env``
    aiohttp sessions without ``trust_env``: kubernetes_asyncio's session reads ``~/.netrc`` and
    the proxy variables in a worker thread on every request.
``secret-index``
    Secret existence answered from the watch the operator already runs on Secrets (a
    ``kopf.on.event`` handler keeps a set of names) instead of one GET per referenced Secret.
``quiet-logs``
    ``dfm operator`` calls ``kopf.configure()``: INFO, one JSON line per handler call; this
    forces ``quiet=True`` (warnings only) to measure what the logging costs.
``tracemalloc=N``
    Trace Python allocations (slow: about twice the CPU) and every 20 s log the N biggest
    allocation sites alive, with the traced total and peak: where the RSS goes.
``workers=N``
    kopf's ``settings.queueing.worker_limit`` (default: unlimited): at most N objects of a kind
    processed at once, so that 1,000 sources found at start-up are not all in flight together.
``reconcile-limit=N``
    At most N WebhookSource reconciliations at once (a semaphore around
    ``reconcile_webhook_source``): bounds in-flight requests and bodies.
``consistency=SECONDS``
    kopf's ``settings.persistence.consistency_timeout`` (default 5 s): how long kopf waits for
    the watch event of its own patch before it handles an older event of that object.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

TWEAKS = (
    "tracemalloc=N",
    "cyaml",
    "no-trust-env",
    "secret-index",
    "quiet-logs",
    "workers=N",
    "reconcile-limit=N",
    "consistency=SECONDS",
)


def _cyaml() -> None:
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    def safe_dump(data: Any, stream: Any = None, **kwargs: Any) -> Any:
        return yaml.dump_all([data], stream, Dumper=dumper, **kwargs)

    yaml.safe_dump = safe_dump


def _no_trust_env() -> None:
    import aiohttp

    original = aiohttp.ClientSession.__init__

    def init(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        kwargs["trust_env"] = False
        original(self, *args, **kwargs)

    aiohttp.ClientSession.__init__ = init  # type: ignore[method-assign]


def _secret_index() -> None:
    import kopf

    from dfm_operator.kube import Kube

    known: set[tuple[str | None, str]] = set()
    synced = False

    @kopf.on.event("", "v1", "secrets")
    async def track(event: kopf.RawEvent, namespace: str | None, name: str, **_: Any) -> None:
        nonlocal synced
        synced = True
        if event.get("type") == "DELETED":
            known.discard((namespace, name))
        else:
            known.add((namespace, name))

    original_get = Kube.get

    async def get(
        self: Kube, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        if (api_version, kind) == ("v1", "Secret") and synced and (namespace, name) in known:
            return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}
        return await original_get(self, api_version, kind, namespace, name)

    Kube.get = get  # type: ignore[method-assign]


def _quiet_logs() -> None:
    import kopf

    original = kopf.configure

    def configure(*args: Any, **kwargs: Any) -> None:
        kwargs.update(quiet=True, verbose=False, debug=False)
        original(*args, **kwargs)

    kopf.configure = configure


def _reconcile_limit(limit: int) -> None:
    import asyncio
    import importlib

    handlers: Any = importlib.import_module("dfm_operator.services.webhooksource")
    original = handlers.reconcile_webhook_source
    semaphores: dict[int, asyncio.Semaphore] = {}  # per event loop (created lazily in it)

    async def reconcile(*args: Any, **kwargs: Any) -> bool:
        loop_id = id(asyncio.get_running_loop())
        semaphore = semaphores.setdefault(loop_id, asyncio.Semaphore(limit))
        async with semaphore:
            return bool(await original(*args, **kwargs))

    handlers.reconcile_webhook_source = reconcile


def _consistency(seconds: float) -> None:
    import kopf

    @kopf.on.startup()
    async def consistency(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.consistency_timeout = seconds


def _workers(limit: int) -> None:
    import kopf

    @kopf.on.startup()
    async def workers(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.queueing.worker_limit = limit


def _tracemalloc(top: int, every: float = 20.0) -> None:
    import threading
    import time
    import tracemalloc

    tracemalloc.start(1)

    def report() -> None:
        while True:
            time.sleep(every)
            current, peak = tracemalloc.get_traced_memory()
            stats = tracemalloc.take_snapshot().statistics("lineno")
            lines = [f"tracemalloc: {current / 2**20:.1f} MiB traced now, {peak / 2**20:.1f} peak"]
            lines += [
                f"  {st.size / 2**20:7.2f} MiB {st.count:8d} {st.traceback}" for st in stats[:top]
            ]
            print("\n".join(lines), file=sys.stderr, flush=True)

    threading.Thread(target=report, name="bench-tracemalloc", daemon=True).start()


def apply(tweaks: Sequence[str]) -> None:
    for tweak in tweaks:
        name, _, value = tweak.partition("=")
        if name == "cyaml":
            _cyaml()
        elif name == "no-trust-env":
            _no_trust_env()
        elif name == "secret-index":
            _secret_index()
        elif name == "quiet-logs":
            _quiet_logs()
        elif name == "tracemalloc":
            _tracemalloc(int(value or 25))
        elif name == "workers":
            _workers(int(value))
        elif name == "reconcile-limit":
            _reconcile_limit(int(value))
        elif name == "consistency":
            _consistency(float(value))
        else:
            raise SystemExit(f"unknown tweak {tweak!r}; known: {', '.join(TWEAKS)}")
        logging.getLogger(__name__).warning("bench tweak applied: %s", tweak)


def main(argv: Sequence[str]) -> int:
    """``tweaks.py TWEAK[,TWEAK...] -- DFM_ARGS...``"""
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit("usage: python -m bench.operator.tweaks TWEAK[,TWEAK...] -- DFM_ARGS...")
    apply([t for t in argv[0].split(",") if t])
    from dfm.cli import main as dfm_main

    return dfm_main(list(argv[2:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
