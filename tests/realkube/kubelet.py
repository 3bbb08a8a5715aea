"""The kubelet player: runs the receiver pods the operator creates, on this machine.

There is no kubelet (and no scheduler) in the real-API suite, so pods would stay Pending. For the
pods of one namespace, the player does what a kubelet does with them, as far as this project's
pods need:

- reads the Pod (its template came from the operator's Deployment, through the real
  Deployment -> ReplicaSet -> Pod controllers), and writes its ConfigMap and Secret volumes the
  way kubelet does (a timestamped directory, ``..data`` switched in one rename, one symlink per
  key), and keeps them up to date when the objects change; emptyDir volumes are empty directories;
- runs the container's command (the image's ENTRYPOINT from the Dockerfile, ``dfm``, resolved to
  this checkout's, plus the container's ``args``) with its ``env`` (values, Secret and ConfigMap
  keys, the pod's name and namespace) in a sandbox (``sandbox.py``): private mount namespace with
  the volumes at their real ``mountPath``s, read-only root filesystem, own network namespace, as
  ``runAsUser`` when the suite runs as root;
- probes the ``readinessProbe`` (httpGet) and writes the Pod's status (Running, Ready, container
  statuses); the real ReplicaSet and Deployment controllers turn that into the Deployment's status;
- stops the process when the Pod is deleted (a rollout, a scale-down, garbage collection).

What it does not do: image pulls (the image is this checkout), liveness probes, resource limits,
securityContext capabilities (the command never gets more than the test process has), service
account token volumes, DNS. A pod's ports are reached with :meth:`KubeletPlayer.port` (what
``kubectl port-forward`` does); inside a pod, ``127.0.0.1:<port>`` of each ``services`` port is
relayed to the host's (PostgreSQL).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.realkube.cluster import Api, ApiError, JsonDict

ROOT = Path(__file__).resolve().parents[2]


def image_entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT, with ``dfm`` resolved to this checkout's."""
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert match, "the Dockerfile has no exec-form ENTRYPOINT"
    entry = list(json.loads(match.group(1)))
    beside = Path(sys.executable).parent / entry[0]
    return [str(beside) if beside.exists() else entry[0], *entry[1:]]


def _reachable_by_others(path: Path) -> bool:
    """Whether any user may reach ``path`` (every directory above it searchable by others):
    the pod's runAsUser must be able to run this checkout's Python and read its code."""
    for folder in [path, *path.parents]:
        if folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_atomically(directory: Path, files: dict[str, bytes], mode: int) -> bool:
    """kubelet's AtomicWriter: files in a new timestamped directory, ``..data`` renamed onto it,
    a ``key -> ..data/key`` symlink per key. Returns whether anything changed."""
    directory.mkdir(parents=True, exist_ok=True)
    data_link = directory / "..data"
    if data_link.exists():
        current = {p.name: p.read_bytes() for p in (directory / os.readlink(data_link)).iterdir()}
        if current == files:
            return False
    stamp = dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    new = directory / stamp
    new.mkdir(mode=0o755)
    for name, content in files.items():
        path = new / name
        path.write_bytes(content)
        path.chmod(mode)
    old = os.readlink(data_link) if data_link.is_symlink() else None
    tmp_link = directory / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(stamp)
    tmp_link.rename(data_link)  # the one atomic switch
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for link in directory.iterdir():
        if link.is_symlink() and not link.name.startswith("..") and link.name not in files:
            link.unlink()
    if old:
        shutil.rmtree(directory / old, ignore_errors=True)
    return True


@dataclass
class PodRun:
    name: str
    uid: str
    sandbox: subprocess.Popen[str]
    ports: dict[int, int]
    log: Path
    restarts: int = 0
    ready: bool = False
    started_at: str = field(default_factory=_now)
    reported: str = ""


class KubeletPlayer:
    """Plays kubelet for every pod of ``namespace`` (call :meth:`stop` to end them all)."""

    def __init__(
        self, api: Api, namespace: str, workdir: Path, services: list[int], every: float = 0.3
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.workdir = workdir
        self.services = services
        self.every = every
        self.runs: dict[str, PodRun] = {}
        self.errors: list[str] = []
        self.failed: set[str] = set()  # pods whose sandbox could not start: not retried
        self.as_user = _reachable_by_others(
            Path(sys.executable).resolve()
        ) and _reachable_by_others(ROOT)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="kubelet-player", daemon=True)

    # -- public --------------------------------------------------------------------------------

    def start(self) -> KubeletPlayer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        with self._lock:
            for run in list(self.runs.values()):
                self._kill(run)
            self.runs.clear()

    def port(self, pod: str, container_port: int) -> int:
        """The host loopback port that reaches ``pod``'s ``container_port``."""
        with self._lock:
            for run in self.runs.values():
                if run.name == pod:
                    return run.ports[container_port]
        raise KeyError(f"the player runs no pod {pod}")

    def running(self) -> list[str]:
        with self._lock:
            return sorted(run.name for run in self.runs.values())

    def log_of(self, pod: str) -> str:
        with self._lock:
            for run in self.runs.values():
                if run.name == pod:
                    return run.log.read_text(errors="replace")
        return ""

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.every)

    def _pods(self) -> list[JsonDict]:
        return list(self.api.get(f"/api/v1/namespaces/{self.namespace}/pods")["items"])

    def _sync(self) -> None:
        pods = {p["metadata"]["uid"]: p for p in self._pods()}
        with self._lock:
            for uid, run in list(self.runs.items()):
                pod = pods.get(uid)
                if pod is None or pod["metadata"].get("deletionTimestamp"):
                    self._kill(run)
                    del self.runs[uid]
                    if pod is not None:  # graceful deletion: kubelet confirms once stopped
                        self.api.delete(
                            f"/api/v1/namespaces/{self.namespace}/pods/{run.name}",
                            {"gracePeriodSeconds": 0},
                        )
        for uid, pod in pods.items():
            if pod["metadata"].get("deletionTimestamp") or uid in self.failed:
                continue
            with self._lock:
                run = self.runs.get(uid)
            volumes = self._write_volumes(pod)
            if volumes is None:
                continue  # a Secret or ConfigMap is missing: kubelet waits (ContainerCreating)
            if run is None:
                try:
                    run = self._start(pod, volumes)
                except RuntimeError:
                    self.failed.add(uid)
                    raise
                with self._lock:
                    self.runs[uid] = run
            self._observe(pod, run)

    # -- volumes -------------------------------------------------------------------------------

    def _pod_dir(self, pod: JsonDict) -> Path:
        return self.workdir / pod["metadata"]["uid"]

    def _write_volumes(self, pod: JsonDict) -> dict[str, Path] | None:
        paths: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes", []):
            target = self._pod_dir(pod) / "volumes" / volume["name"]
            if "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)
            elif "secret" in volume or "configMap" in volume:
                files = self._volume_files(volume)
                if files is None:
                    return None
                source = volume.get("secret") or volume["configMap"]
                write_atomically(target, files, int(source.get("defaultMode", 0o644)))
            else:
                continue  # projected service-account tokens and the like: not played
            paths[volume["name"]] = target
        return paths

    def _volume_files(self, volume: JsonDict) -> dict[str, bytes] | None:
        if "secret" in volume:
            source = volume["secret"]
            path = f"/api/v1/namespaces/{self.namespace}/secrets/{source['secretName']}"
        else:
            source = volume["configMap"]
            path = f"/api/v1/namespaces/{self.namespace}/configmaps/{source['name']}"
        obj = self.api.find(path)
        if obj is None:
            return {} if source.get("optional") else None
        if "secret" in volume:
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        else:
            data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        if source.get("items"):
            return {
                item["path"]: data[item["key"]] for item in source["items"] if item["key"] in data
            }
        return data

    # -- the container -------------------------------------------------------------------------

    def _env(self, pod: JsonDict, container: JsonDict) -> dict[str, str]:
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOSTNAME": pod["metadata"]["name"],
            "HOME": "/",
        }
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            ref = var.get("valueFrom", {})
            if "fieldRef" in ref:
                field_path = ref["fieldRef"]["fieldPath"]
                values = {
                    "metadata.name": pod["metadata"]["name"],
                    "metadata.namespace": self.namespace,
                    "status.podIP": "127.0.0.1",
                }
                env[var["name"]] = values[field_path]
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                key_ref = ref.get("secretKeyRef") or ref["configMapKeyRef"]
                kind = "secrets" if "secretKeyRef" in ref else "configmaps"
                obj = self.api.get(f"/api/v1/namespaces/{self.namespace}/{kind}/{key_ref['name']}")
                raw = (obj.get("data") or {})[key_ref["key"]]
                env[var["name"]] = base64.b64decode(raw).decode() if kind == "secrets" else raw
        return env

    def _start(self, pod: JsonDict, volumes: dict[str, Path], restarts: int = 0) -> PodRun:
        [container] = pod["spec"]["containers"]
        security = {
            **pod["spec"].get("securityContext", {}),
            **container.get("securityContext", {}),
        }
        command = container.get("command") or image_entrypoint()
        mounts = [
            {
                "source": str(volumes[m["name"]]),
                "target": m["mountPath"],
                "readOnly": bool(m.get("readOnly")),
            }
            for m in container.get("volumeMounts", [])
            if m["name"] in volumes
        ]
        pod_dir = self._pod_dir(pod)
        scratch = pod_dir / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        log = pod_dir / f"{container['name']}.log"
        spec = {
            "command": [*command, *container.get("args", [])],
            "env": self._env(pod, container),
            "workingDir": container.get("workingDir"),
            "mounts": mounts,
            "ports": [p["containerPort"] for p in container.get("ports", [])],
            "services": self.services,
            "uid": security.get("runAsUser") if self.as_user else None,
            "gid": security.get("runAsGroup") if self.as_user else None,
            "readOnlyRootFilesystem": bool(security.get("readOnlyRootFilesystem")),
            "log": str(log),
            "scratch": str(scratch),
        }
        sandbox = subprocess.Popen(
            [sys.executable, "-m", "tests.realkube.sandbox", json.dumps(spec)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=(pod_dir / "sandbox.log").open("a"),
            text=True,
        )
        assert sandbox.stdout is not None
        line = sandbox.stdout.readline()
        if not line:
            sandbox.wait(10)
            said = (pod_dir / "sandbox.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"the sandbox of pod {pod['metadata']['name']} failed: {said}")
        ports = {int(k): int(v) for k, v in json.loads(line)["ports"].items()}
        return PodRun(
            name=pod["metadata"]["name"],
            uid=pod["metadata"]["uid"],
            sandbox=sandbox,
            ports=ports,
            log=log,
            restarts=restarts,
        )

    def _kill(self, run: PodRun) -> None:
        if run.sandbox.poll() is None:
            run.sandbox.terminate()
            try:
                run.sandbox.wait(25)
            except subprocess.TimeoutExpired:
                run.sandbox.kill()
                run.sandbox.wait(5)
        if run.sandbox.stdout is not None:
            run.sandbox.stdout.close()

    # -- status --------------------------------------------------------------------------------

    def _probe(self, pod: JsonDict, run: PodRun) -> bool:
        [container] = pod["spec"]["containers"]
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        if probe is None:
            return True
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
        url = f"http://127.0.0.1:{run.ports[int(port)]}{probe.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return 200 <= resp.status < 400
        except (urllib.error.URLError, OSError):
            return False

    def _observe(self, pod: JsonDict, run: PodRun) -> None:
        exited = run.sandbox.poll() is not None
        run.ready = not exited and self._probe(pod, run)
        [container] = pod["spec"]["containers"]
        state: JsonDict = {"running": {"startedAt": run.started_at}}
        if exited:
            state = {"terminated": {"exitCode": run.sandbox.returncode, "reason": "Error"}}
        ready = "True" if run.ready else "False"
        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": run.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "containerID": f"sandbox://{run.sandbox.pid}",
                    "ready": run.ready,
                    "started": not exited,
                    "restartCount": run.restarts,
                    "state": state,
                }
            ],
        }
        key = json.dumps(status, sort_keys=True)
        if key == run.reported:
            return
        try:
            self.api.merge_patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{run.name}/status", {"status": status}
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
        run.reported = key
