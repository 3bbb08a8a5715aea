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
``memray=PATH``
    Record every allocation with memray (not a dependency: ``pip install --target
    /tmp/memray memray`` and ``--env PYTHONPATH=/tmp/memray``) into PATH, aggregated, for
    ``memray table``/``memray flamegraph`` of the allocations alive at the peak (RSS high-water
    mark). About 1.5x the CPU; RSS as the kernel sees it barely changes.
``census=MIB``
    Each time the RSS has grown by MIB since the last census: the gc-tracked objects by type
    (count, shallow size) and the live coroutines by function, to see what holds the memory.
``rss-log=SECONDS``
    RSS, tasks, gc-tracked objects and gc counts every SECONDS (and pymalloc's arena
    statistics every tenth line).
``gc-collect=SECONDS``
    A full ``gc.collect()`` every SECONDS.
``no-timers``
    Unregisters every kopf timer and daemon (to size what the per-source timers hold; the
    drift check and the store status then never run).
``kopf-connections=N``
    At most N connections in kopf's own aiohttp session (kopf's default: unlimited).
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
import types
from collections.abc import Sequence
from typing import Any

TWEAKS = (
    "tracemalloc=N",
    "memray=PATH",
    "rss-log=SECONDS",
    "census=MIB",
    "no-timers",
    "kopf-connections=N",
    "gc-collect=SECONDS",
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


def _memray(path: str) -> None:
    import atexit

    import memray  # type: ignore[import-not-found,unused-ignore]

    tracker = memray.Tracker(
        path, native_traces=False, file_format=memray.FileFormat.AGGREGATED_ALLOCATIONS
    )
    tracker.__enter__()
    atexit.register(tracker.__exit__, None, None, None)


def _rss_log(every: float) -> None:
    import asyncio
    import gc
    import threading
    import time
    from pathlib import Path

    import kopf

    started = time.monotonic()
    loops: list[asyncio.AbstractEventLoop] = []

    @kopf.on.startup()
    async def remember_loop(**_: Any) -> None:
        loops.append(asyncio.get_running_loop())

    def report() -> None:
        n = 0
        while True:
            time.sleep(every)
            n += 1
            status = Path("/proc/self/status").read_text()
            rss = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
            tasks = len(asyncio.all_tasks(loops[0])) if loops else 0
            print(
                f"rss-log: t={time.monotonic() - started:6.1f}s wall={time.time():.1f} "
                f"rss={int(rss) / 1024:6.1f} MiB tasks={tasks} objects={len(gc.get_objects())} "
                f"gc={gc.get_count()} gen2={gc.get_stats()[2]['collections']}",
                file=sys.stderr,
                flush=True,
            )
            if n % 10 == 0:
                sys._debugmallocstats()

    threading.Thread(target=report, name="bench-rss-log", daemon=True).start()


def _gc_collect(every: float) -> None:
    import asyncio
    import gc

    import kopf

    @kopf.on.startup()
    async def collector(**_: Any) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                gc.collect()

        asyncio.get_running_loop().create_task(loop())


def _census(step_mib: float) -> None:
    import collections
    import gc
    import threading
    import time
    import types
    from pathlib import Path

    def rss_mib() -> float:
        status = Path("/proc/self/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    def report(rss: float) -> None:
        objects = gc.get_objects()
        by_type: collections.Counter[str] = collections.Counter()
        size_by_type: collections.Counter[str] = collections.Counter()
        coroutines: collections.Counter[str] = collections.Counter()
        for obj in objects:
            kind = type(obj).__qualname__
            by_type[kind] += 1
            size_by_type[kind] += sys.getsizeof(obj)
            if isinstance(obj, types.CoroutineType) and obj.cr_frame is not None:
                code = obj.cr_code
                coroutines[f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_qualname}"] += 1
        del objects
        lines = [f"census: rss={rss:.1f} MiB, {sum(by_type.values())} gc objects"]
        lines += [
            f"  {size / 2**20:7.2f} MiB {by_type[kind]:8d} {kind}"
            for kind, size in size_by_type.most_common(25)
        ]
        lines += ["  live coroutines:"]
        lines += [f"  {n:8d} {name}" for name, n in coroutines.most_common(30)]
        print("\n".join(lines), file=sys.stderr, flush=True)

    def watch() -> None:
        last = 0.0
        while True:
            time.sleep(1.0)
            rss = rss_mib()
            if rss >= last + step_mib:
                last = rss
                report(rss)

    threading.Thread(target=watch, name="bench-census", daemon=True).start()


def _no_timers() -> None:
    from kopf._core.intents import registries

    import dfm_operator.handlers  # noqa: F401 - registers them, to remove some

    registry = registries.get_default_registry()
    spawning = registry._spawning
    for handler in list(spawning.get_all_handlers()):
        spawning._handlers.remove(handler)


def _kopf_connections(limit: int) -> None:
    import aiohttp
    from kopf._cogs.clients import auth

    original = aiohttp.TCPConnector

    class Limited(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("limit") == 0:
                kwargs["limit"] = limit
            super().__init__(*args, **kwargs)

    auth.aiohttp = types.SimpleNamespace(  # type: ignore[attr-defined]
        **{**vars(aiohttp), "TCPConnector": Limited}
    )


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
        elif name == "no-timers":
            _no_timers()
        elif name == "kopf-connections":
            _kopf_connections(int(value))
        elif name == "census":
            _census(float(value or 25))
        elif name == "rss-log":
            _rss_log(float(value or 1))
        elif name == "gc-collect":
            _gc_collect(float(value or 1))
        elif name == "memray":
            _memray(value)
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
