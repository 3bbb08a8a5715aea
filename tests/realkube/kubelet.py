"""The kubelet player: runs the pods of one namespace on this machine, as a kubelet would.

There is no kubelet (and no scheduler) in the real-API suite, so pods would stay Pending. For the
pods of one namespace (a Deployment's receivers, a Job's backup or sync run: the player does not
look at who made them), the player does what a kubelet does with them, as far as this project's
pods need:

- reads the Pod and prepares its volumes: ConfigMap and Secret volumes written the way kubelet
  does (a timestamped directory, ``..data`` switched in one rename, one symlink per key) and kept
  up to date while the container runs; emptyDir volumes are empty directories;
  PersistentVolumeClaim volumes are the directory of the PersistentVolume the claim is bound to
  (the pod waits, as ContainerCreating, until it is Bound; see the provisioner below);
- resolves the container's ``env`` and ``envFrom`` (values, Secret and ConfigMap keys with their
  ``optional``, the pod's fields); a missing Secret or key keeps it waiting
  (CreateContainerConfigError), as kubelet does;
- runs the container's command (the image's ENTRYPOINT from the Dockerfile, ``dfm``, resolved to
  this checkout's, plus the container's ``args``) in a sandbox (``sandbox.py``): a private mount
  namespace and root with the volumes at their ``mountPath``s and an empty file at the
  container's ``terminationMessagePath``, a read-only root filesystem, its own network namespace,
  as ``runAsUser`` when the suite runs as root;
- reports the Pod's status: while it runs, Running with Ready from the ``readinessProbe``
  (httpGet); once the command has exited, the container ``terminated`` with its real exit code
  and, as its ``message``, what it wrote to its termination message file (at most 4096 bytes;
  with ``FallbackToLogsOnError``, the tail of its output when it wrote none and failed). A
  ``restartPolicy: Never`` (or OnFailure, on success) pod is then ``Succeeded`` or ``Failed``:
  the real Job controller counts it, and the CronJob's Job completes or fails as it would in a
  cluster. Other pods are reported terminated, and not restarted;
- stops the process when the Pod is deleted (a rollout, a scale-down, garbage collection).

**The provisioner.** A PersistentVolumeClaim needs a volume. The player installs a default
StorageClass (``dfm-test-local``, provisioner ``kubelet-player.dfm.dev/hostpath``, Immediate
binding) and acts as that external provisioner, the way rancher's local-path-provisioner does:
for each claim of its namespace that the real PersistentVolume controller marks as waiting for
it (the ``volume.kubernetes.io/storage-provisioner`` annotation), it makes a directory (mode 0777:
a hostPath volume has no fsGroup ownership) and creates a PersistentVolume with a ``hostPath``
to it, pre-bound to the claim (``claimRef``). The real controller binds them (claim ``Bound``,
``volumeName`` set). The directory outlives the pods, so successive Jobs share it; a claim
deleted while the player runs takes its volume with it (reclaim policy Delete), and
:meth:`KubeletPlayer.stop` deletes the volumes it made.

What it does not do: image pulls (the image is this checkout), init and sidecar containers
(a pod of more than one container is refused, saying so), restarts, liveness probes, resource
limits (emptyDir ``sizeLimit`` and ``medium`` included), securityContext capabilities (the
command never gets more than the test process has), service account token volumes, DNS. A pod's
ports are reached with :meth:`KubeletPlayer.port` (what ``kubectl port-forward`` does); inside a
pod, ``127.0.0.1:<port>`` of each ``services`` port is relayed to the host's (PostgreSQL).
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
import time
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


def _stopped(run: PodRun) -> bool:
    """Whether a deleted pod's command is over: exited, or killed now that its grace period has
    passed. Its output is closed then."""
    assert run.kill_at is not None
    if run.sandbox.poll() is None:
        if time.monotonic() < run.kill_at:
            return False
        run.sandbox.kill()
        run.sandbox.wait(5)
    if run.sandbox.stdout is not None:
        run.sandbox.stdout.close()
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


PROVISIONER = "kubelet-player.dfm.dev/hostpath"
STORAGE_CLASS = "dfm-test-local"
PROVISIONER_ANNOTATIONS = (
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
)
TERMINATION_MESSAGE_PATH = "/dev/termination-log"  # the API server's default
MAX_MESSAGE_BYTES = 4096  # what kubelet keeps of a termination message
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048  # FallbackToLogsOnError: the log's tail


class Waiting(Exception):
    """The pod cannot start yet (kubelet's waiting reason and message)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Volume:
    path: Path
    read_only: bool = False


@dataclass
class PodRun:
    name: str
    uid: str
    sandbox: subprocess.Popen[str]
    ports: dict[int, int]
    log: Path
    termination_log: Path
    # The pod's terminationGracePeriodSeconds: from SIGTERM to SIGKILL.
    grace: float = 30.0
    # Once the pod is deleted: when SIGKILL follows the SIGTERM it was sent (time.monotonic()).
    kill_at: float | None = None
    restarts: int = 0
    ready: bool = False
    started_at: str = field(default_factory=_now)
    exit_code: int | None = None  # set once the command has exited
    finished_at: str = ""
    message: str = ""

    @property
    def exited(self) -> bool:
        return self.exit_code is not None


def _only_container(pod: JsonDict) -> JsonDict:
    containers = pod["spec"]["containers"]
    if len(containers) != 1 or pod["spec"].get("initContainers"):
        raise RuntimeError(
            f"pod {pod['metadata']['name']}: the player runs pods of exactly one container"
        )
    return dict(containers[0])


def _tail(path: Path, lines: int, limit: int) -> str:
    text = path.read_bytes()[-limit:].decode(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


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
        self.volumes: dict[str, tuple[str, Path]] = {}  # PV name -> (claim uid, directory)
        self.as_user = _reachable_by_others(
            Path(sys.executable).resolve()
        ) and _reachable_by_others(ROOT)
        self._reported: dict[str, str] = {}  # pod uid -> the last status written
        self._seen: dict[str, str] = {}  # pod uid -> when the player first saw it
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="kubelet-player", daemon=True)

    # -- public --------------------------------------------------------------------------------

    def start(self) -> KubeletPlayer:
        self._storage_class()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        with self._lock:
            self._kill(list(self.runs.values()))
            self.runs.clear()
        for name in list(self.volumes):  # bound ones go once their claim does (pv-protection)
            self.api.delete(f"/api/v1/persistentvolumes/{name}")

    def port(self, pod: str, container_port: int) -> int:
        """The host loopback port that reaches ``pod``'s ``container_port``."""
        with self._lock:
            for run in self.runs.values():
                if run.name == pod:
                    return run.ports[container_port]
        raise KeyError(f"the player runs no pod {pod}")

    def running(self) -> list[str]:
        """The pods whose command is running and that are not being stopped."""
        with self._lock:
            return sorted(
                run.name
                for run in self.runs.values()
                if run.kill_at is None and not run.exited and run.sandbox.poll() is None
            )

    def stopping(self) -> list[str]:
        """The deleted pods whose command has not ended yet (SIGTERM sent, SIGKILL not yet)."""
        with self._lock:
            return sorted(
                run.name
                for run in self.runs.values()
                if run.kill_at is not None and run.sandbox.poll() is None
            )

    def log_of(self, pod: str) -> str:
        with self._lock:
            for run in self.runs.values():
                if run.name == pod:
                    return run.log.read_text(errors="replace")
        return ""

    def volume_of(self, claim: str) -> Path:
        """The directory of the volume the player provisioned for ``claim`` (its backups)."""
        found = self.api.get(f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims/{claim}")
        for name, (uid, directory) in self.volumes.items():
            if uid == found["metadata"]["uid"] and found["spec"].get("volumeName") == name:
                return directory
        raise KeyError(f"the player provisioned no bound volume for claim {claim}")

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._provision()
                self._sync()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.every)

    def _pods(self) -> list[JsonDict]:
        return list(self.api.get(f"/api/v1/namespaces/{self.namespace}/pods")["items"])

    def _sync(self) -> None:
        pods = {p["metadata"]["uid"]: p for p in self._pods()}
        with self._lock:
            # A deleted pod's command gets SIGTERM at once and SIGKILL after its grace period;
            # the loop goes on meanwhile (other pods are started, probed and reported).
            # The player binds no pod to a node, so the API server deletes one at once, whatever
            # the grace period asked: the command gets the pod's own.
            now = time.monotonic()
            for uid, current in self.runs.items():
                pod = pods.get(uid)
                deleted = pod is None or pod["metadata"].get("deletionTimestamp")
                if current.kill_at is None and deleted:
                    current.kill_at = now + current.grace
                    if current.sandbox.poll() is None:
                        current.sandbox.terminate()
            ended = [u for u, r in self.runs.items() if r.kill_at is not None and _stopped(r)]
            for uid in ended:
                gone = self.runs.pop(uid)
                if uid in pods:  # graceful deletion: kubelet confirms once stopped
                    self.api.delete(
                        f"/api/v1/namespaces/{self.namespace}/pods/{gone.name}",
                        {"gracePeriodSeconds": 0},
                    )
        for uid in set(self._reported) - set(pods):
            self._reported.pop(uid, None)
            self._seen.pop(uid, None)
        for uid, pod in pods.items():
            if pod["metadata"].get("deletionTimestamp") or uid in self.failed:
                continue
            self._seen.setdefault(uid, _now())
            with self._lock:
                run = self.runs.get(uid)
            if run is not None and run.exited:
                self._observe(pod, run)  # finished: reported, never started again
                continue
            try:
                container = _only_container(pod)
                volumes = self._write_volumes(pod)
                if run is None:
                    env = self._env(pod, container)
            except Waiting as waiting:
                if run is None:
                    self._report_waiting(pod, waiting)
                continue
            except RuntimeError:
                self.failed.add(uid)
                raise
            if run is None:
                try:
                    run = self._start(pod, container, volumes, env)
                except RuntimeError:
                    self.failed.add(uid)
                    raise
                with self._lock:
                    self.runs[uid] = run
            self._observe(pod, run)

    # -- the provisioner -----------------------------------------------------------------------

    def _storage_class(self) -> None:
        """The cluster's default StorageClass, provisioned by this player (made once)."""
        try:
            self.api.create(
                "/apis/storage.k8s.io/v1/storageclasses",
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "metadata": {
                        "name": STORAGE_CLASS,
                        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                    },
                    "provisioner": PROVISIONER,
                    "reclaimPolicy": "Delete",
                    "volumeBindingMode": "Immediate",  # no scheduler to pick a node first
                },
            )
        except ApiError as exc:
            if exc.status != 409:
                raise

    def _provision(self) -> None:
        claims = self.api.get(f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims")
        uids = set()
        for claim in claims["items"]:
            meta, spec = claim["metadata"], claim["spec"]
            uids.add(meta["uid"])
            annotations = meta.get("annotations") or {}
            waiting_for = {annotations.get(key) for key in PROVISIONER_ANNOTATIONS}
            name = f"pvc-{meta['uid']}"  # as external provisioners name their volumes
            if PROVISIONER not in waiting_for or spec.get("volumeName") or name in self.volumes:
                continue
            if meta.get("deletionTimestamp"):
                continue
            directory = self.workdir / "persistent-volumes" / name
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o777)
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": name,
                    "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                },
                "spec": {
                    "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "volumeMode": spec.get("volumeMode") or "Filesystem",
                    "storageClassName": spec.get("storageClassName") or STORAGE_CLASS,
                    "persistentVolumeReclaimPolicy": "Delete",
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": self.namespace,
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                    "hostPath": {"path": str(directory), "type": "Directory"},
                },
            }
            try:
                self.api.create("/api/v1/persistentvolumes", volume)
            except ApiError as exc:
                if exc.status != 409:
                    raise
            self.volumes[name] = (meta["uid"], directory)
        # A claim gone: its volume and data go too (reclaim policy Delete).
        for name, (uid, directory) in list(self.volumes.items()):
            if uid not in uids:
                self.api.delete(f"/api/v1/persistentvolumes/{name}")
                shutil.rmtree(directory, ignore_errors=True)
                del self.volumes[name]

    # -- volumes -------------------------------------------------------------------------------

    def _pod_dir(self, pod: JsonDict) -> Path:
        return self.workdir / pod["metadata"]["uid"]

    def _write_volumes(self, pod: JsonDict) -> dict[str, Volume]:
        """Each volume's directory; Waiting while an object it needs is missing or unbound."""
        volumes: dict[str, Volume] = {}
        for volume in pod["spec"].get("volumes", []):
            target = self._pod_dir(pod) / "volumes" / volume["name"]
            if "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)
            elif "secret" in volume or "configMap" in volume:
                files = self._volume_files(volume)
                source = volume.get("secret") or volume["configMap"]
                write_atomically(target, files, int(source.get("defaultMode", 0o644)))
            elif "persistentVolumeClaim" in volume:
                source = volume["persistentVolumeClaim"]
                target = self._claimed_directory(source["claimName"])
                volumes[volume["name"]] = Volume(target, bool(source.get("readOnly")))
                continue
            else:
                continue  # projected service-account tokens and the like: not played
            volumes[volume["name"]] = Volume(target)
        return volumes

    def _claimed_directory(self, claim_name: str) -> Path:
        """The directory of the volume a claim is bound to (a hostPath or local volume)."""
        path = f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims/{claim_name}"
        claim = self.api.find(path)
        if claim is None:
            raise Waiting("ContainerCreating", f'persistentvolumeclaim "{claim_name}" not found')
        bound = (claim.get("status") or {}).get("phase") == "Bound"
        if not bound or not claim["spec"].get("volumeName"):
            raise Waiting(
                "ContainerCreating", f'persistentvolumeclaim "{claim_name}" is not bound yet'
            )
        volume = self.api.get(f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
        source = volume["spec"].get("hostPath") or volume["spec"].get("local")
        if source is None:
            raise RuntimeError(f"PersistentVolume {volume['metadata']['name']}: not a local path")
        return Path(source["path"])

    def _volume_files(self, volume: JsonDict) -> dict[str, bytes]:
        if "secret" in volume:
            source = volume["secret"]
            kind, name = "secret", source["secretName"]
        else:
            source = volume["configMap"]
            kind, name = "configmap", source["name"]
        data = self._data(kind, name)
        if data is None:
            if source.get("optional"):
                return {}
            raise Waiting("ContainerCreating", f'{kind} "{name}" not found')
        if source.get("items"):
            missing = [i["key"] for i in source["items"] if i["key"] not in data]
            if missing and not source.get("optional"):
                raise Waiting("ContainerCreating", f'{kind} "{name}" has no key {missing[0]}')
            return {i["path"]: data[i["key"]] for i in source["items"] if i["key"] in data}
        return data

    def _data(self, kind: str, name: str) -> dict[str, bytes] | None:
        """A Secret's or ConfigMap's data, decoded; None if it does not exist."""
        plural = "secrets" if kind == "secret" else "configmaps"
        obj = self.api.find(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        if obj is None:
            return None
        if kind == "secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    # -- the container -------------------------------------------------------------------------

    def _env(self, pod: JsonDict, container: JsonDict) -> dict[str, str]:
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOSTNAME": pod["metadata"]["name"],
            "HOME": "/",
        }
        for source in container.get("envFrom", []):
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            kind = "secret" if "secretRef" in source else "configmap"
            data = self._data(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise Waiting("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
            env.update({source.get("prefix", "") + k: v.decode() for k, v in data.items()})
        fields = {
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": self.namespace,
            "metadata.uid": pod["metadata"]["uid"],
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        for var in container.get("env", []):
            if "value" in var or "valueFrom" not in var:
                env[var["name"]] = var.get("value", "")
                continue
            ref = var["valueFrom"]
            if "fieldRef" in ref:
                field_path = ref["fieldRef"]["fieldPath"]
                if field_path not in fields:
                    raise RuntimeError(f"env {var['name']}: fieldRef {field_path} is not played")
                env[var["name"]] = fields[field_path]
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                key_ref = ref.get("secretKeyRef") or ref["configMapKeyRef"]
                kind = "secret" if "secretKeyRef" in ref else "configmap"
                data = self._data(kind, key_ref["name"])
                if data is None or key_ref["key"] not in data:
                    if key_ref.get("optional"):
                        continue
                    said = "not found" if data is None else f"has no key {key_ref['key']}"
                    raise Waiting(
                        "CreateContainerConfigError", f'{kind} "{key_ref["name"]}" {said}'
                    )
                env[var["name"]] = data[key_ref["key"]].decode()
            else:
                raise RuntimeError(f"env {var['name']}: {sorted(ref)} is not played")
        return env

    def _start(
        self, pod: JsonDict, container: JsonDict, volumes: dict[str, Volume], env: dict[str, str]
    ) -> PodRun:
        security = {
            **pod["spec"].get("securityContext", {}),
            **container.get("securityContext", {}),
        }
        command = container.get("command") or image_entrypoint()
        pod_dir = self._pod_dir(pod)
        mounts = []
        for m in container.get("volumeMounts", []):
            if m["name"] not in volumes:
                continue
            volume = volumes[m["name"]]
            source = volume.path
            if m.get("subPath"):
                source = source / m["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)  # as kubelet makes a missing subPath
            mounts.append(
                {
                    "source": str(source),
                    "target": m["mountPath"],
                    "readOnly": bool(m.get("readOnly")) or volume.read_only,
                    "file": source.is_file(),
                }
            )
        # kubelet always mounts a file at the termination message path (for the container to
        # write what its status will say) from the pod's directory.
        termination_log = pod_dir / f"{container['name']}.termination-log"
        termination_log.parent.mkdir(parents=True, exist_ok=True)
        termination_log.touch()
        termination_log.chmod(0o666)
        mounts.append(
            {
                "source": str(termination_log),
                "target": container.get("terminationMessagePath") or TERMINATION_MESSAGE_PATH,
                "readOnly": False,
                "file": True,
            }
        )
        scratch = pod_dir / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        log = pod_dir / f"{container['name']}.log"
        spec = {
            "command": [*command, *container.get("args", [])],
            "env": env,
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
            termination_log=termination_log,
            grace=float(pod["spec"].get("terminationGracePeriodSeconds", 30)),
        )

    def _kill(self, runs: list[PodRun]) -> None:
        """The player's own end: SIGTERM to every pod still running at once, then wait for each
        until its SIGKILL is due."""
        now = time.monotonic()
        for run in runs:
            if run.kill_at is None:
                run.kill_at = now + run.grace
                if run.sandbox.poll() is None:
                    run.sandbox.terminate()
        for run in runs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.sandbox.wait(max(0.0, (run.kill_at or now) - time.monotonic()))
            _stopped(run)

    def _finish(self, container: JsonDict, run: PodRun) -> None:
        """The command has exited: its exit code (from the sandbox's last line) and its
        termination message, read as kubelet reads them."""
        assert run.sandbox.stdout is not None
        said = run.sandbox.stdout.read().strip().splitlines()
        code = json.loads(said[-1]).get("exit") if said else None
        if code is None:  # the sandbox itself died: as a container killed with it
            code = -9
        run.exit_code = 128 - code if code < 0 else code  # a signal, as the runtime reports it
        run.finished_at = _now()
        message = run.termination_log.read_bytes()[:MAX_MESSAGE_BYTES].decode(errors="replace")
        policy = container.get("terminationMessagePolicy", "File")
        if not message and run.exit_code != 0 and policy == "FallbackToLogsOnError":
            message = _tail(run.log, FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
        run.message = message

    # -- status --------------------------------------------------------------------------------

    def _probe(self, container: JsonDict, run: PodRun) -> bool:
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
        container = _only_container(pod)
        if not run.exited and run.sandbox.poll() is not None:
            self._finish(container, run)
        run.ready = not run.exited and self._probe(container, run)
        state: JsonDict = {"running": {"startedAt": run.started_at}}
        phase = "Running"
        if run.exit_code is not None:
            terminated: JsonDict = {
                "exitCode": run.exit_code,
                "reason": "Completed" if run.exit_code == 0 else "Error",
                "startedAt": run.started_at,
                "finishedAt": run.finished_at,
                "containerID": f"sandbox://{run.sandbox.pid}",
            }
            if run.message:
                terminated["message"] = run.message
            state = {"terminated": terminated}
            policy = pod["spec"].get("restartPolicy", "Always")
            if policy == "Never" or (policy == "OnFailure" and run.exit_code == 0):
                phase = "Succeeded" if run.exit_code == 0 else "Failed"
        ready = "True" if run.ready else "False"
        done = {"reason": "PodCompleted"} if phase in ("Succeeded", "Failed") else {}
        self._report(
            pod,
            {
                "phase": phase,
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": ready, **done},
                    {"type": "Ready", "status": ready, **done},
                ],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "containerID": f"sandbox://{run.sandbox.pid}",
                        "ready": run.ready,
                        "started": not run.exited,
                        "restartCount": run.restarts,
                        "state": state,
                    }
                ],
            },
        )

    def _report_waiting(self, pod: JsonDict, waiting: Waiting) -> None:
        [container, *_] = pod["spec"]["containers"]
        self._report(
            pod,
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                ],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {
                            "waiting": {"reason": waiting.reason, "message": waiting.message}
                        },
                    }
                ],
            },
        )

    def _report(self, pod: JsonDict, status: JsonDict) -> None:
        """Write the Pod's status when it changed."""
        uid = pod["metadata"]["uid"]
        status = {
            **status,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self._seen.get(uid) or _now(),
        }
        key = json.dumps(status, sort_keys=True)
        if self._reported.get(uid) == key:
            return
        try:
            self.api.merge_patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}/status",
                {"status": status},
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
        self._reported[uid] = key
