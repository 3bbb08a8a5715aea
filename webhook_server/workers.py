"""Worker processes: several receivers serving one port, under a supervisor.

With ``workers: N`` above 1, ``dfm receiver`` forks N processes. Each binds the port with
``SO_REUSEPORT`` (the kernel spreads new connections over their listening sockets) and is a whole
receiver: its own event loop, database pool, writers and per-process limits. A redelivery is
stored once whichever process receives it, as between replicas: the dedup key is the database's.

The supervisor does nothing else than start, watch and stop them:

- SIGTERM or SIGINT: passed on as SIGTERM to every worker, which drains as a single receiver
  does (after its shutdown delay); the supervisor exits 0 once all have exited 0. A second one
  is passed on as HURRY_SIGNAL (SIGUSR1), which ends the workers' shutdown delay. Those still
  running after the drain's deadline are killed, and the exit is then 1.
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
import ctypes
import json
import os
import secrets
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from webhook_server.logs import get_logger

log = get_logger("dfm.receiver.workers")

# How long a scrape waits for each other worker's series.
PEER_TIMEOUT_SECONDS = 2.0
# How long a worker's own database check may take when another asks for its readiness: within
# the asker's wait, with room for the question and the answer.
PEER_CHECK_SECONDS = 1.5
# A worker's series are a few hundred KiB at most (one source, closed label sets).
MAX_PEER_BYTES = 64 * 1024 * 1024
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
# What the supervisor sends its workers on a second stop: end the shutdown delay and stop now. A
# signal of its own, because a second SIGTERM sent while the first is still pending merges with
# it, and the delay would then run in full.
HURRY_SIGNAL = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


def encode(registry: CollectorRegistry, refresh: Callable[[], None] = lambda: None) -> bytes:
    """This worker's series, as JSON (not pickle: the socket is reachable from the whole pod);
    ``refresh`` first sets the gauges read at scrape time."""
    refresh()
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


def decode(data: bytes) -> list[Metric]:
    """A worker's answer as metric families; ValueError when it is not one (a worker of another
    build, or something else on its socket)."""
    try:
        families = []
        for family in json.loads(data):
            metric = Metric(
                str(family["name"]), str(family["help"]), str(family["type"]), str(family["unit"])
            )
            for name, labels, value in family["samples"]:
                if not isinstance(labels, dict):
                    raise TypeError("labels")
                metric.add_sample(
                    str(name), {str(k): str(v) for k, v in labels.items()}, float(value)
                )
            families.append(metric)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a worker's series ({type(exc).__name__})") from None
    return families


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


def merge(parts: dict[int, list[Metric]], count: int) -> bytes:
    """One exposition of every worker's series (``parts``: by worker index), each labelled with
    its worker, then the two gauges about the workers themselves."""
    families: dict[str, Metric] = {}
    for index in sorted(parts):
        worker = str(index)
        for family in parts[index]:
            metric = families.get(family.name)
            if metric is None:
                metric = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                metric.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value)
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


async def _read_all(reader: asyncio.StreamReader, limit: int = MAX_PEER_BYTES) -> bytes:
    """Everything up to EOF (``read(n)`` returns what has arrived so far), at most ``limit``
    bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(1024 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"a worker's answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# What one worker asks another, in one byte: its series, whether its event loop turns, or its
# readiness checks.
_SERIES = b"m"
_PING = b"p"
_PONG = b"ok"
_READY = b"r"
# A readiness answer is a few named booleans.
MAX_CHECKS_BYTES = 4096
_Answer = TypeVar("_Answer")


def _pong(data: bytes) -> bool:
    if data != _PONG:
        raise ValueError("not an answer to a ping")
    return True


def decode_checks(data: bytes) -> dict[str, bool]:
    """A worker's readiness checks; ValueError when the answer is not a flat object of named
    booleans of a sensible size."""
    if len(data) > MAX_CHECKS_BYTES:
        raise ValueError("a readiness answer larger than MAX_CHECKS_BYTES")
    try:
        checks = json.loads(data)
    except ValueError:
        raise ValueError("not a readiness answer") from None
    if not isinstance(checks, dict) or not all(
        isinstance(k, str) and isinstance(v, bool) for k, v in checks.items()
    ):
        raise ValueError("not a readiness answer")
    return checks


class Peers:
    """One worker's part in the pod's metrics, liveness and readiness: answers the others, asks
    them."""

    def __init__(
        self,
        worker: Worker,
        registry: CollectorRegistry,
        refresh: Callable[[], None],
        unanswered: Callable[[int], None] = lambda index: None,
        ready: Callable[[], Awaitable[dict[str, bool]]] | None = None,
    ) -> None:
        """``unanswered(index)`` is called each time worker ``index`` does not answer in time
        (the counter the chart's alert reads: a scrape that reaches the slow worker itself says
        nothing about it, but every other worker asks it at each liveness check). ``ready``:
        this worker's readiness checks, for a peer answering ``/readyz``."""
        self.worker = worker
        self._registry = registry
        self._refresh = refresh
        self._unanswered = unanswered
        self._ready = ready
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

    def own(self) -> list[Metric]:
        self._refresh()
        return list(self._registry.collect())

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The asker closes at its timeout: whatever is left to write then goes nowhere.
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            async with asyncio.timeout(PEER_TIMEOUT_SECONDS):
                request = await reader.readexactly(1)
            if request == _PING:
                writer.write(_PONG)
            elif request == _READY:
                if self._ready is not None:
                    writer.write(json.dumps(await self._ready()).encode())
            else:
                writer.write(encode(self._registry, self._refresh))
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _request(self, index: int, request: bytes, limit: int = MAX_PEER_BYTES) -> bytes:
        async with asyncio.timeout(PEER_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_unix_connection(self.worker.address(index))
            try:
                writer.write(request)
                await writer.drain()
                return await _read_all(reader, limit)
            finally:
                writer.close()

    async def _ask(
        self,
        index: int,
        request: bytes,
        parse: Callable[[bytes], _Answer],
        limit: int = MAX_PEER_BYTES,
        missed: str | None = None,
    ) -> _Answer | None:
        """Worker ``index``'s answer to ``request`` as ``parse`` reads it, or None when it did
        not give one in time (counted; logged as ``missed`` if given)."""
        try:
            return parse(await self._request(index, request, limit))
        except (OSError, TimeoutError, ValueError) as exc:
            if missed is not None:
                log.warning(missed, worker=index, error=type(exc).__name__)
            self._unanswered(index)
            return None

    async def _series(self, index: int) -> list[Metric] | None:
        return await self._ask(index, _SERIES, decode, missed="a worker did not answer the scrape")

    async def _alive(self, index: int) -> bool:
        return await self._ask(index, _PING, _pong) is not None

    async def _checks(self, index: int) -> dict[str, bool] | None:
        return await self._ask(index, _READY, decode_checks, MAX_CHECKS_BYTES)

    async def readiness(self) -> dict[int, dict[str, bool] | None]:
        """Every other worker's readiness checks, None for one that did not answer in time.
        Each worker has its own pool and secrets: the pod is ready when all of them are."""
        others = self.worker.others()
        answers = await asyncio.gather(*(self._checks(i) for i in others))
        return dict(zip(others, answers, strict=True))

    async def exposition(self) -> bytes:
        others = self.worker.others()
        answers = await asyncio.gather(*(self._series(i) for i in others))
        parts = {self.worker.index: self.own()}
        parts.update({i: a for i, a in zip(others, answers, strict=True) if a is not None})
        return merge(parts, self.worker.count)

    async def stuck(self) -> list[int]:
        """The other workers whose event loop did not answer within PEER_TIMEOUT_SECONDS."""
        others = self.worker.others()
        alive = await asyncio.gather(*(self._alive(i) for i in others))
        return [i for i, ok in zip(others, alive, strict=True) if not ok]


# -- the supervisor ------------------------------------------------------------------------------


def supervise(count: int, serve: Callable[[Worker], int], *, stop_seconds: float) -> int:
    """Fork ``count`` workers running ``serve`` and watch them; returns the exit code.

    ``stop_seconds``: from the stop to when workers still running are killed."""
    # Unique even where every container's supervisor is PID 1 and two share a network namespace.
    group = f"dfm-receiver.{os.getpid()}.{secrets.token_hex(4)}"
    # An ignored SIGCHLD (inherited through exec) would let the kernel reap the workers unseen.
    previous_sigchld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Signals wait for sigtimedwait below; a child unblocks them once it is its own.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[int, int] = {}
    supervisor = os.getpid()
    try:
        for index in range(count):
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                log.error("a worker could not be started", worker=index, errno=exc.errno)
                return _stop_started(children, stop_seconds)
            if pid == 0:  # pragma: no cover - the child; its coverage is the tests' processes
                _child(serve, Worker(index, count, group), previous, supervisor)
            children[pid] = index
            log.info("worker started", worker=index, pid=pid)
        return _watch(children, stop_seconds)
    finally:
        _signal_all(children, signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        signal.signal(signal.SIGCHLD, previous_sigchld)


def _stop_started(children: dict[int, int], stop_seconds: float) -> int:
    """After a failed fork: the workers already started drain and stop; the exit is 1."""
    _signal_all(children, signal.SIGTERM)
    _watch(children, stop_seconds, stopping=True)
    return 1


def _die_with(supervisor: int) -> None:
    """SIGTERM this worker when its supervisor dies (outside a container nothing else would)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _child(
    serve: Callable[[Worker], int], worker: Worker, mask: Iterable[int], supervisor: int
) -> None:
    code = 1
    try:
        # The supervisor turns a Ctrl-C (which reaches the whole process group) into SIGTERM.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _die_with(supervisor)
        code = serve(worker)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # whatever ends the worker, the process exits
        with contextlib.suppress(Exception):
            # The type, errno and where it was raised; never the message, which could quote a
            # request or a URL.
            log.error(
                "worker failed",
                worker=worker.index,
                error=type(exc).__name__,
                errno=getattr(exc, "errno", None),
                at=[
                    f"{f.filename}:{f.lineno}:{f.name}"
                    for f in traceback.extract_tb(exc.__traceback__)
                ][-5:],
            )
    finally:
        # Nothing may interrupt the way out: the parent's code must never run in a worker.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _watch(children: dict[int, int], stop_seconds: float, *, stopping: bool = False) -> int:
    code = 0
    deadline: float | None = time.monotonic() + stop_seconds if stopping else None

    def stop(reason: str) -> float:
        log.info("stopping workers", reason=reason, running=len(children))
        _signal_all(children, signal.SIGTERM)
        return time.monotonic() + stop_seconds

    while children:
        wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        info = signal.sigtimedwait(_SIGNALS, wait)
        if info is not None and info.si_signo != signal.SIGCHLD:
            if deadline is None:
                deadline = stop(signal.Signals(info.si_signo).name)
            else:
                # A second stop: the workers end their shutdown delay, if they are in it.
                _signal_all(children, HURRY_SIGNAL)
        for pid, status in _reaped():
            index = children.pop(pid, None)
            if index is None:
                continue
            exit_code = os.waitstatus_to_exitcode(status)
            # After a stop, SIGTERM's own end is expected too (and HURRY_SIGNAL's): a worker still
            # starting up has no handler for it yet, and nothing to drain.
            if deadline is None or exit_code not in (0, -signal.SIGTERM, -HURRY_SIGNAL):
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
            _signal_all(children, signal.SIGKILL)
            for pid in list(children):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                children.pop(pid)
            code = 1
    log.info("workers stopped", exit_code=code)
    return code


def _signal_all(children: dict[int, int], signum: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


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
