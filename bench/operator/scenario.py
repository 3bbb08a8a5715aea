"""One benchmark scenario: an operator subprocess, N WebhookSources, until all are Ready.

1. a fresh :func:`kube_emulator.emulated_cluster` on 127.0.0.1 in this process (on this
   event loop), with the committed CRDs from ``crds/`` and the ``dfm-events-db`` Secret;
2. the operator in a subprocess (``KUBECONFIG`` points at the emulator), output to a log file;
3. once it watches what it needs (kopf has run the startup handlers by then), N signing Secrets
   and N WebhookSources are created through the emulator's HTTP API, ``concurrency`` pairs at a
   time (``create_before_start``: all of them before the operator is launched instead);
4. the emulator plays the deployment controller and the kubelets: a Deployment with a new
   generation is reported available ``rollout_delay`` seconds later (its built-in
   ``deployment_rollout_delay``: a ``/status`` write as "kube-controller-manager");
5. every 0.1 s the bench counts the sources with ``Ready=True`` and
   ``status.observedGeneration == metadata.generation`` (in memory, no API requests), until all
   are or the deadline passes;
6. then it waits until the operator is quiet (no request for ``QUIET_SECONDS``, at most
   ``SETTLE_SECONDS``): work still queued when the last source turned Ready is part of the cost;
7. the operator is stopped (SIGTERM, SIGKILL after 10 s) and the request log is counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import resource
import signal
import sys
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import kmock
import yaml

import kube_emulator.apply
from kube_emulator import (
    APPLY_PATCH,
    DEPLOYMENTS,
    WEBHOOKSOURCES,
    DfmKubernetesEmulator,
    as_resource,
    emulated_cluster,
    parse_k8s_path,
)

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"

NS = "bench"
SECRETS = "v1/secrets"
BENCH_AGENT = "dfm-bench-operator"  # the User-Agent of the bench's own requests

POLL_SECONDS = 0.1
SAMPLE_SECONDS = 0.25
PROGRESS_SECONDS = 5.0
QUIET_SECONDS = 3.0
SETTLE_SECONDS = 20.0
STOP_GRACE_SECONDS = 10.0
MILESTONES = (0.5, 0.9, 0.99)


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class Result:
    """What one scenario reached (seconds; MiB as /proc reports them)."""

    label: str
    sources: int
    log_path: Path
    created: int = 0
    ready: int = 0
    startup_s: float | None = None  # operator launch -> it watches what it needs
    create_s: float | None = None  # first create -> last create answered
    ready_s: float | None = None  # first create -> all sources Ready (None: not reached)
    milestones: dict[float, float] = dataclasses.field(default_factory=dict)
    quiet_s: float | None = None  # first create -> no operator request for QUIET_SECONDS
    requests_at_ready: int = 0  # operator requests until all were Ready
    requests: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    by_request: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    by_client: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    events: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    idle_rss_mb: float | None = None  # started and watching, before the first source
    rss_mb: float | None = None  # when all were Ready (or at the deadline)
    quiet_rss_mb: float | None = None  # when the operator was quiet again
    peak_rss_mb: float | None = None  # VmHWM: the kernel's high-water mark, whole run
    cpu_s: float | None = None  # operator user+system CPU, first create -> all Ready
    bench_cpu_s: float | None = None  # this process (emulator, bench) over the same span
    other_cpu_s: float | None = None  # everything else on the machine over the same span
    exit_code: int | None = None
    crashed: str | None = None  # the operator died, or the bench could not go on

    @property
    def total_requests(self) -> int:
        """Operator requests until it was quiet (or stopped)."""
        return sum(self.requests.values())


@dataclasses.dataclass(frozen=True)
class Scenario:
    label: str
    command: Sequence[str]
    sources: int
    timeout: float
    workdir: Path
    watches: Sequence[str] = ("webhooksources",)  # watched before the operator can react
    rollout_delay: float = 0.0
    create_before_start: bool = False
    concurrency: int = 16
    fast_apply: bool = True
    dump_requests: bool = False
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)  # extra, for the operator

    @property
    def slug(self) -> str:
        slug = self.label.replace(" ", "-").replace("+", "").replace("--", "-")
        return slug + ("-at-start" if self.create_before_start else "")


# --------------------------------------------------------------------------- the operator process


def _proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in fields}


def _kib_to_mib(value: str | None) -> float | None:
    return int(value.split()[0]) / 1024 if value else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 in proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all processes of the machine spent (every core), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass
class Memory:
    """The operator's RSS (sampled) and its peak (VmHWM, kept by the kernel)."""

    pid: int
    rss_mb: float | None = None
    peak_mb: float | None = None

    def sample(self) -> None:
        status = _proc_status(self.pid)
        if status:
            self.rss_mb = _kib_to_mib(status.get("VmRSS"))
            self.peak_mb = _kib_to_mib(status.get("VmHWM"))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_SECONDS)


def operator_env(kubeconfig: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment, minus in-cluster detection, plus the emulator's kubeconfig."""
    env = {**os.environ, **(extra or {})}
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        env.pop(name, None)
    env["KUBECONFIG"] = str(kubeconfig)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def launch(
    command: Sequence[str], kubeconfig: Path, log: IO[bytes], env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command,
        cwd=REPO,
        env=operator_env(kubeconfig, env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )


async def stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM (kopf shuts down gracefully), SIGKILL if it is still there after 10 s."""
    if proc.returncode is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), STOP_GRACE_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return await proc.wait()


# --------------------------------------------------------------------------- the emulator


def _fast_safe_load(text: str) -> Any:
    """JSON first (what clients send as apply bodies), else YAML with libyaml if present."""
    try:
        return json.loads(text)
    except ValueError:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader


@contextlib.contextmanager
def fast_apply_parsing() -> Iterator[None]:
    """Make the emulator parse server-side-apply bodies with ``json``, not pure-Python YAML.

    The emulator reads every apply body with ``yaml.safe_load`` (pure Python): half of its CPU
    at 1,000 sources, on the same two cores as the operator. A real API server does that in Go
    in microseconds, so the bench swaps the parser (in this process only, restored after).
    """
    module: Any = kube_emulator.apply
    original = module.yaml
    module.yaml = types.SimpleNamespace(
        safe_load=_fast_safe_load, safe_dump=yaml.safe_dump, YAMLError=yaml.YAMLError
    )
    try:
        yield
    finally:
        module.yaml = original


def count_current(k8s: DfmKubernetesEmulator, gvp: str) -> int:
    """How many objects of a resource exist (without copying them, unlike list_objects)."""
    res = as_resource(gvp)
    return sum(1 for (r, _, _), obj in list(k8s.objects.items()) if r == res and not obj.deleted)


# --------------------------------------------------------------------------- the objects


def source_name(index: int) -> str:
    return f"src-{index:05d}"


def signing_secret(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{source_name(index)}-signing", "namespace": NS},
        "stringData": {"secret": f"whsec_bench_{index:05d}"},
    }


def webhook_source(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"name": source_name(index), "namespace": NS},
        "spec": {
            "provider": "stripe",
            "verification": {
                "secretRef": {"name": f"{source_name(index)}-signing", "key": "secret"}
            },
        },
    }


DATABASE_SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "dfm-events-db", "namespace": NS},
    "stringData": {"url": "postgresql://db/events"},
}


async def create(k8s: DfmKubernetesEmulator, gvp: str, body: Mapping[str, Any]) -> None:
    """POST through the emulator's HTTP API, with the bench's User-Agent (not counted)."""
    path = k8s.path_for(gvp, NS)
    headers = {"Content-Type": "application/json", "User-Agent": BENCH_AGENT}
    async with k8s.request("POST", path, data=json.dumps(body), headers=headers) as resp:
        if resp.status != 201:
            raise RuntimeError(f"creating in {path}: HTTP {resp.status}: {await resp.text()}")


async def create_all(k8s: DfmKubernetesEmulator, count: int, concurrency: int) -> int:
    """For each index its signing Secret, then its WebhookSource; ``concurrency`` in flight."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with semaphore:
            await create(k8s, SECRETS, signing_secret(index))
            await create(k8s, WEBHOOKSOURCES, webhook_source(index))

    await asyncio.gather(*(one(i) for i in range(count)))
    return count


def is_ready(obj: Mapping[str, Any] | None) -> bool:
    """``Ready=True`` for the current generation."""
    if not obj:
        return False
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


class ReadyTracker:
    """Counts Ready sources, reading the emulator's store without copies or requests."""

    def __init__(self, k8s: DfmKubernetesEmulator, count: int) -> None:
        self.k8s = k8s
        self.res = as_resource(WEBHOOKSOURCES)
        self.count = count
        self.pending = {source_name(i) for i in range(count)}

    def poll(self) -> int:
        # _current() is the emulator's no-copy read; get_object() deep-copies (too slow here).
        current = self.k8s._current
        self.pending = {name for name in self.pending if not is_ready(current(self.res, NS, name))}
        return self.count - len(self.pending)


# --------------------------------------------------------------------------- the request log


def classify(request: kmock.Request) -> tuple[str, str]:
    """(verb, resource[/subresource]) as the API server's audit log would name them."""
    parsed = parse_k8s_path(request.url.path)
    if parsed is None or parsed.plural is None:
        return "discovery", request.url.path
    method = request.method.value if request.method is not None else ""
    watching = request.params.get("watch") in {"true", "1"}
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    verb = (
        "watch" if method == "GET" and watching else
        "get" if method == "GET" and parsed.name else
        "list" if method == "GET" else
        "create" if method == "POST" else
        "update" if method == "PUT" else
        "apply" if method == "PATCH" and content_type == APPLY_PATCH else
        "patch" if method == "PATCH" else
        "delete" if method == "DELETE" else
        method.lower()
    )  # fmt: skip
    what = str(parsed.plural) + (f"/{parsed.subresource}" if parsed.subresource else "")
    return verb, what


def client_of(request: kmock.Request) -> str:
    """Who sent it, by User-Agent: kopf itself, our kubernetes_asyncio client, or the bench."""
    agent = request.headers.get("User-Agent", "")
    if agent.startswith((BENCH_AGENT, "kmock/")):
        return "bench"
    if agent.startswith("kopf/"):
        return "kopf"
    if agent.startswith("OpenAPI-Generator/"):
        return "kubernetes_asyncio"
    return agent.split("/", 1)[0] or "unknown"


def operator_requests(k8s: DfmKubernetesEmulator) -> int:
    return sum(1 for request in k8s if client_of(request) != "bench")


def count_requests(k8s: DfmKubernetesEmulator, result: Result, dump: IO[str] | None) -> None:
    for request in k8s:
        client = client_of(request)
        verb, what = classify(request)
        if dump is not None:
            line = {"id": request.id, "client": client, "verb": verb, "path": request.url.path}
            dump.write(json.dumps({**line, "body": request.text[:2000]}) + "\n")
        if client == "bench":
            continue
        result.requests[verb] += 1
        result.by_request[f"{verb} {what} ({client})"] += 1
        result.by_client[client] += 1
    for event in k8s.events(NS):
        result.events[f"{event.get('type')} {event.get('reason')}"] += 1


def watching(k8s: DfmKubernetesEmulator, plural: str) -> bool:
    return any(client_of(r) != "bench" and classify(r) == ("watch", plural) for r in k8s)


# --------------------------------------------------------------------------- the scenario


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_scenario(scenario: Scenario) -> Result:
    """Run one scenario; failures of the bench itself or the emulator end up in ``crashed``."""
    parsing = fast_apply_parsing() if scenario.fast_apply else contextlib.nullcontext()
    run = _Run(scenario)
    with parsing:
        try:
            return await run.run()
        except Exception as exc:  # e.g. the emulator's own failures (HTTP 500s) on exit
            run.result.crashed = f"{type(exc).__name__}: {exc}"
            return run.result


class _Run:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.result = Result(
            label=scenario.label,
            sources=scenario.sources,
            log_path=scenario.workdir / f"{scenario.slug}.log",
        )
        self.deadline = time.monotonic() + scenario.timeout
        self.first_create: float | None = None

    async def run(self) -> Result:
        s, result = self.s, self.result
        async with emulated_cluster(deployment_rollout_delay=s.rollout_delay) as k8s:
            for file in sorted(CRD_DIR.glob("*.yaml")):
                k8s.install_crd(yaml.safe_load(file.read_text()))
            kubeconfig = k8s.write_kubeconfig(s.workdir / f"{s.slug}.kubeconfig")
            await create(k8s, SECRETS, DATABASE_SECRET)
            if s.create_before_start:
                self.first_create = time.monotonic()
                result.created = await create_all(k8s, s.sources, s.concurrency)
                result.create_s = time.monotonic() - self.first_create
            with open(result.log_path, "wb") as log:  # noqa: ASYNC230 - once, before the run
                await self._with_operator(k8s, kubeconfig, log)
            if s.dump_requests:
                dump_path = s.workdir / f"{s.slug}.requests.jsonl"
                with open(dump_path, "w") as dump:  # noqa: ASYNC230 - after the run
                    count_requests(k8s, result, dump)
            else:
                count_requests(k8s, result, None)
        return result

    async def _with_operator(
        self, k8s: DfmKubernetesEmulator, kubeconfig: Path, log: IO[bytes]
    ) -> None:
        s, result = self.s, self.result
        launched, bench_start, busy_start = (
            time.monotonic(),
            self_cpu_seconds(),
            machine_busy_seconds(),
        )
        proc = await launch(s.command, kubeconfig, log, s.env)
        memory = Memory(proc.pid)
        sampler = asyncio.create_task(memory.run())
        creating: asyncio.Task[int] | None = None
        try:
            if not await self._started(k8s, proc, launched):
                return
            # CPU from the first create on; sources created before the launch: from the launch.
            cpu_start: float | None = 0.0
            if not s.create_before_start:
                memory.sample()
                result.idle_rss_mb = memory.rss_mb
                cpu_start, bench_start = cpu_seconds(proc.pid), self_cpu_seconds()
                busy_start = machine_busy_seconds()
                self.first_create = time.monotonic()
                creating = asyncio.create_task(create_all(k8s, s.sources, s.concurrency))
                creating.add_done_callback(self._created)
            await self._ready(k8s, proc, ReadyTracker(k8s, s.sources))
            memory.sample()
            result.rss_mb = memory.rss_mb
            cpu_end = cpu_seconds(proc.pid)
            if cpu_end is not None and cpu_start is not None:
                result.cpu_s = cpu_end - cpu_start
            result.bench_cpu_s = self_cpu_seconds() - bench_start
            if result.cpu_s is not None:
                busy = machine_busy_seconds() - busy_start
                result.other_cpu_s = max(0.0, busy - result.cpu_s - result.bench_cpu_s)
            result.requests_at_ready = operator_requests(k8s)
            if result.ready_s is not None:
                await self._quiet(k8s, proc)
                memory.sample()
                result.quiet_rss_mb = memory.rss_mb
        finally:
            if creating is not None:
                creating.cancel()
                await asyncio.gather(creating, return_exceptions=True)
            memory.sample()
            result.peak_rss_mb = memory.peak_mb
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            result.exit_code = await stop(proc)

    def _created(self, task: asyncio.Task[int]) -> None:
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            self.result.crashed = f"creating the sources failed: {exc!r}"
            return
        self.result.created = task.result()
        self.result.create_s = time.monotonic() - (self.first_create or 0.0)

    async def _started(
        self, k8s: DfmKubernetesEmulator, proc: asyncio.subprocess.Process, launched: float
    ) -> bool:
        """Until the operator watches what it needs (kopf runs startup handlers before that)."""
        while time.monotonic() < self.deadline:
            if proc.returncode is not None:
                self.result.crashed = f"the operator exited with {proc.returncode} in start-up"
                return False
            if all(watching(k8s, plural) for plural in self.s.watches):
                self.result.startup_s = time.monotonic() - launched
                return True
            await asyncio.sleep(POLL_SECONDS)
        self.result.crashed = "the operator did not start watching before the timeout"
        return False

    async def _ready(
        self, k8s: DfmKubernetesEmulator, proc: asyncio.subprocess.Process, tracker: ReadyTracker
    ) -> None:
        result, first = self.result, self.first_create or time.monotonic()
        goals = {m: max(1, round(m * tracker.count)) for m in MILESTONES}
        next_report = time.monotonic() + PROGRESS_SECONDS
        while True:
            result.ready = tracker.poll()
            now = time.monotonic()
            for milestone, goal in goals.items():
                if result.ready >= goal and milestone not in result.milestones:
                    result.milestones[milestone] = now - first
            if result.ready == tracker.count:
                result.ready_s = now - first
                return
            if proc.returncode is not None:
                result.crashed = f"the operator exited with {proc.returncode}"
                return
            if result.crashed is not None or now >= self.deadline:
                return
            if now >= next_report:
                next_report = now + PROGRESS_SECONDS
                say(
                    f"  [{result.label}] t={now - first:5.1f}s created={result.created or '…'} "
                    f"deployments={count_current(k8s, DEPLOYMENTS)} "
                    f"ready={result.ready}/{tracker.count}"
                )
            await asyncio.sleep(POLL_SECONDS)

    async def _quiet(self, k8s: DfmKubernetesEmulator, proc: asyncio.subprocess.Process) -> None:
        """Until no operator request for QUIET_SECONDS (at most SETTLE_SECONDS)."""
        first = self.first_create or time.monotonic()
        until = time.monotonic() + SETTLE_SECONDS
        seen, last_change = operator_requests(k8s), time.monotonic()
        while proc.returncode is None and time.monotonic() < until:
            await asyncio.sleep(0.5)
            count = operator_requests(k8s)
            if count != seen:
                seen, last_change = count, time.monotonic()
            elif time.monotonic() - last_change >= QUIET_SECONDS:
                self.result.quiet_s = last_change - first
                return
