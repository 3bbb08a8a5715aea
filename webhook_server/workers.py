"""Worker processes: several receivers serving one port, under a supervisor.

With ``workers: N`` above 1, ``dfm receiver`` forks N processes. Each binds the port with
``SO_REUSEPORT`` (the kernel spreads new connections over their listening sockets) and is a whole
receiver: its own event loop, database pool, writers and per-process limits. A redelivery is
stored once whichever process receives it, as between replicas: the dedup key is the database's.

The supervisor does nothing else than start, watch and stop them:

- SIGTERM or SIGINT: passed on as SIGTERM to every worker, which drains as a single receiver
  does; the supervisor exits 0 once all have exited 0. Those still running after the drain's
  deadline are killed, and the exit is then 1.
- A worker that exits on its own (a crash, a failed start): the others are stopped the same
  way and the supervisor exits 1, so the container restarts and the pod's restart count shows it.
  Restarting a worker inside the container would hide the failure from Kubernetes.

**Metrics.** A scrape of ``/metrics`` reaches one worker, chosen by the kernel. That worker asks
every other over a Unix socket in the abstract namespace (private to the pod's network namespace,
nothing on the read-only file system) and answers with every worker's series, each with a
``worker`` label, plus ``dfm_receiver_workers`` and ``dfm_receiver_worker_up``. Nothing is summed
here: a gauge such as the forward backlog is the database's and would double. A worker that does
not answer in time is ``dfm_receiver_worker_up 0`` and its series are missing from that scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from webhook_server.logs import get_logger

log = get_logger("dfm.receiver.workers")

# How long a scrape waits for each other worker's series.
PEER_TIMEOUT_SECONDS = 2.0
# A worker's series are a few hundred KiB at most (one source, closed label sets).
MAX_PEER_BYTES = 64 * 1024 * 1024
# Beyond the workers' own drain (shutdown timeout and forwarding grace), before they are killed.
STOP_MARGIN_SECONDS = 5.0
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


@dataclass(frozen=True)
class Worker:
    """Which of the ``count`` workers of one supervisor (``group``) this process is."""

    index: int
    count: int
    group: str

    def address(self, index: int) -> str:
        """The abstract Unix socket worker ``index`` answers metrics on."""
        return f"\0{self.group}.{index}"

    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]


# -- metrics across workers ----------------------------------------------------------------------


def encode(registry: CollectorRegistry) -> bytes:
    """This worker's series, as JSON (not pickle: the socket is reachable from the whole pod)."""
    return json.dumps(
        [
            {
                "name": m.name,
                "help": m.documentation,
                "type": m.type,
                "unit": m.unit,
                "samples": [[s.name, s.labels, s.value] for s in m.samples],
            }
            for m in registry.collect()
        ]
    ).encode()


def decode(data: bytes) -> list[dict[str, Any]]:
    families = json.loads(data)
    if not isinstance(families, list):
        raise ValueError("a worker's series are a list of families")
    return families


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


def merge(parts: dict[int, list[dict[str, Any]]], count: int) -> bytes:
    """One exposition of every worker's series (``parts``: by worker index), each labelled with
    its worker, then the two gauges about the workers themselves."""
    families: dict[str, Metric] = {}
    for index in sorted(parts):
        worker = str(index)
        for family in parts[index]:
            metric = families.get(family["name"])
            if metric is None:
                metric = families[family["name"]] = Metric(
                    family["name"], family["help"], family["type"], family.get("unit", "")
                )
            for name, labels, value in family["samples"]:
                metric.add_sample(name, {**labels, "worker": worker}, value)
    configured = GaugeMetricFamily(
        "dfm_receiver_workers", "Receiver processes configured in this pod (workers).", count
    )
    up = GaugeMetricFamily(
        "dfm_receiver_worker_up",
        "1 when the worker answered this scrape with its series, 0 when it did not in time.",
        labels=["worker"],
    )
    for index in range(count):
        up.add_metric([str(index)], 1.0 if index in parts else 0.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), configured, up]))
    return generate_latest(registry)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything up to EOF (``read(n)`` returns what has arrived so far), at most
    ``MAX_PEER_BYTES``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(1024 * 1024):
        size += len(chunk)
        if size > MAX_PEER_BYTES:
            raise ValueError("a worker's series are larger than MAX_PEER_BYTES")
        chunks.append(chunk)
    return b"".join(chunks)


class Peers:
    """One worker's part in the pod's metrics: answers the others, and gathers theirs."""

    def __init__(
        self, worker: Worker, registry: CollectorRegistry, refresh: Callable[[], None]
    ) -> None:
        self.worker = worker
        self._registry = registry
        self._refresh = refresh
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._answer, path=self.worker.address(self.worker.index)
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def own(self) -> bytes:
        self._refresh()
        return encode(self._registry)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.own())
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _ask(self, index: int) -> list[dict[str, Any]] | None:
        try:
            async with asyncio.timeout(PEER_TIMEOUT_SECONDS):
                reader, writer = await asyncio.open_unix_connection(self.worker.address(index))
                try:
                    data = await _read_all(reader)
                finally:
                    writer.close()
            return decode(data)
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning(
                "a worker did not answer the scrape", worker=index, error=type(exc).__name__
            )
            return None

    async def exposition(self) -> bytes:
        others = self.worker.others()
        answers = await asyncio.gather(*(self._ask(i) for i in others))
        parts = {self.worker.index: decode(self.own())}
        parts.update({i: a for i, a in zip(others, answers, strict=True) if a is not None})
        return merge(parts, self.worker.count)


# -- the supervisor ------------------------------------------------------------------------------


def supervise(count: int, serve: Callable[[Worker], int], *, stop_seconds: float) -> int:
    """Fork ``count`` workers running ``serve`` and watch them; returns the exit code.

    ``stop_seconds``: from the stop to when workers still running are killed."""
    group = f"dfm-receiver.{os.getpid()}"
    # Signals wait for sigwait below; a child unblocks them once it is its own.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[int, int] = {}
    try:
        for index in range(count):
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child; its coverage is the tests' processes
                _child(serve, Worker(index, count, group), previous)
            children[pid] = index
            log.info("worker started", worker=index, pid=pid)
        return _watch(children, stop_seconds)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _child(serve: Callable[[Worker], int], worker: Worker, mask: Iterable[int]) -> None:
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        code = serve(worker)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # whatever ends the worker, the process exits
        with contextlib.suppress(Exception):
            # The type and errno only: a message could quote a request or a URL.
            log.error(
                "worker failed",
                worker=worker.index,
                error=type(exc).__name__,
                errno=getattr(exc, "errno", None),
            )
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _watch(children: dict[int, int], stop_seconds: float) -> int:
    code = 0
    deadline: float | None = None

    def stop(reason: str) -> float:
        log.info("stopping workers", reason=reason, running=len(children))
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        return time.monotonic() + stop_seconds

    while children:
        wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        info = signal.sigtimedwait(_SIGNALS, wait)
        if info is not None and info.si_signo != signal.SIGCHLD and deadline is None:
            deadline = stop(signal.Signals(info.si_signo).name)
        for pid, status in _reaped():
            index = children.pop(pid, None)
            if index is None:
                continue
            exit_code = os.waitstatus_to_exitcode(status)
            # After a stop, SIGTERM's own end is expected too: a worker still starting up has no
            # handler for it yet, and nothing to drain.
            if deadline is None or exit_code not in (0, -signal.SIGTERM):
                log.error(
                    "worker exited",
                    worker=index,
                    pid=pid,
                    exit_code=exit_code,
                    expected=deadline is not None,
                )
                code = 1
            if deadline is None:
                deadline = stop("a worker exited")
        if deadline is not None and children and time.monotonic() >= deadline:
            log.error("workers did not stop in time; killed", workers=sorted(children.values()))
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in list(children):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                children.pop(pid)
            code = 1
    log.info("workers stopped", exit_code=code)
    return code


def _reaped() -> list[tuple[int, int]]:
    done: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))
