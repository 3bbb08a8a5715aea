"""The kubelet player with Jobs, on the real Job and PersistentVolume controllers: what any
scheduled job of the project (a backup, a sync) relies on, shown with plain Python commands.

A Job's Pod (made by the real Job controller) runs to completion in the sandbox; its status says
`terminated` with the real exit code and the termination message the command wrote (or, with
FallbackToLogsOnError, the tail of its output); the Job controller turns that into Complete or
Failed. A claim is provisioned by the player and bound by the real PersistentVolume controller;
what one Job writes on it, the next one reads. Env comes from Secrets and ConfigMaps; the root
filesystem is read-only where the Pod asks for it.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.realkube.cluster import Api, JsonDict, wait_for
from tests.realkube.kubelet import PROVISIONER, STORAGE_CLASS, KubeletPlayer
from tests.realkube.running import path_of

pytestmark = pytest.mark.timeout(300)

# Counts its runs on the claim, reports what it saw in its termination message.
COUNTER = textwrap.dedent(
    """
    import errno, json, os, pathlib
    count = pathlib.Path("/data/count")
    n = int(count.read_text()) + 1 if count.exists() else 1
    count.write_text(str(n))
    def keys(path):  # a Secret or ConfigMap volume's files (not kubelet's ..data)
        return sorted(p.name for p in pathlib.Path(path).iterdir() if not p.name.startswith(".."))
    def writable(path):
        try:
            open(path, "w").close()
            return "writable"
        except OSError as exc:
            return errno.errorcode[exc.errno]
    seen = {
        "run": n,
        "token": os.environ["TOKEN"],
        "greeting": os.environ["CFG_greeting"],
        "optional": os.environ.get("OPTIONAL", "unset"),
        "pod": os.environ["POD"],
        "root": writable("/written-to-root"),
        "tmp": writable("/tmp/scratch"),
        "config": keys("/etc/job"),
        "config-file": pathlib.Path("/etc/job/settings.yaml").read_text(),
        "config-mount": writable("/etc/job/new"),
        "token-dir": keys("/var/run/token"),
    }
    pathlib.Path("/dev/termination-log").write_text(json.dumps(seen))
    """
)


def job(name: str, script: str, **container: Any) -> JsonDict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "example.invalid/python:3",
                            "command": [sys.executable, "-c", script],
                            "env": [
                                {
                                    "name": "TOKEN",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": "creds", "key": "token"}
                                    },
                                },
                                {
                                    "name": "OPTIONAL",
                                    "valueFrom": {
                                        "secretKeyRef": {
                                            "name": "absent",
                                            "key": "x",
                                            "optional": True,
                                        }
                                    },
                                },
                                {
                                    "name": "POD",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                            ],
                            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                            "securityContext": {"readOnlyRootFilesystem": True},
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/data"},
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "config", "mountPath": "/etc/job", "readOnly": True},
                                {"name": "token", "mountPath": "/var/run/token", "readOnly": True},
                            ],
                            **container,
                        }
                    ],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}},
                        {"name": "tmp", "emptyDir": {"medium": "Memory"}},
                        {
                            "name": "config",
                            "configMap": {
                                "name": "settings",
                                "items": [{"key": "greeting", "path": "settings.yaml"}],
                            },
                        },
                        {
                            # Optional and missing (a token not issued yet): an empty directory.
                            "name": "token",
                            "secret": {
                                "secretName": "oauth-token",
                                "items": [{"key": "access_token", "path": "access_token"}],
                                "optional": True,
                            },
                        },
                    ],
                }
            },
        },
    }


def job_pods(admin: Api, ns: str, name: str) -> list[JsonDict]:
    selector = f"batch.kubernetes.io/job-name={name}"
    return list(admin.get(f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}")["items"])


def finished(
    admin: Api, ns: str, name: str, player: KubeletPlayer, timeout: float = 120
) -> tuple[str, JsonDict]:
    """(Complete|Failed, the Job's Pod) once the real Job controller says the Job finished."""

    def check() -> tuple[str, JsonDict] | None:
        obj = admin.get(path_of("jobs", ns, name, group="batch/v1"))
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
                return str(cond["type"]), job_pods(admin, ns, name)[0]
        return None

    try:
        return wait_for(f"Job {name} finished", check, timeout=timeout)
    except TimeoutError as exc:
        pods = job_pods(admin, ns, name)
        said = {p["metadata"]["name"]: p.get("status") for p in pods}
        logs = {p["metadata"]["name"]: player.log_of(p["metadata"]["name"])[-1500:] for p in pods}
        raise AssertionError(
            f"{exc}\nJob: {admin.get(path_of('jobs', ns, name, group='batch/v1')).get('status')}"
            f"\npods: {said}\nlogs: {logs}\nplayer errors: {player.errors}"
        ) from None


def terminated(pod: JsonDict) -> JsonDict:
    [status] = pod["status"]["containerStatuses"]
    return dict(status["state"]["terminated"])


def test_jobs_run_to_completion_on_a_bound_claim_with_their_termination_message(
    admin: Api, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    admin.create(
        path_of("secrets", ns, group="v1"),
        {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}},
    )
    admin.create(
        path_of("configmaps", ns, group="v1"),
        {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}},
    )
    player = KubeletPlayer(admin, ns, tmp_path / "kubelet", services=[]).start()
    try:
        # No storageClassName: the default class (the player's) is given by the API server.
        admin.create(
            path_of("persistentvolumeclaims", ns, group="v1"),
            {
                "metadata": {"name": "shared"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        claim_path = path_of("persistentvolumeclaims", ns, "shared", group="v1")
        claim = wait_for(
            "the claim Bound",
            lambda: (c := admin.get(claim_path)).get("status", {}).get("phase") == "Bound" and c,
        )
        assert claim["spec"]["storageClassName"] == STORAGE_CLASS
        volume = admin.get(f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
        assert volume["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == PROVISIONER
        assert volume["status"]["phase"] == "Bound", "bound by the PersistentVolume controller"

        jobs = path_of("jobs", ns, group="batch/v1")
        reports = []
        for name in ("count-1", "count-2"):
            admin.create(jobs, job(name, COUNTER))
            outcome, pod = finished(admin, ns, name, player)
            assert outcome == "Complete", player.log_of(pod["metadata"]["name"])
            assert pod["status"]["phase"] == "Succeeded"
            end = terminated(pod)
            assert (end["exitCode"], end["reason"]) == (0, "Completed")
            reports.append(json.loads(end["message"]))
        assert [r["run"] for r in reports] == [1, 2], "the second Job saw the first one's file"
        assert reports[0] | {"run": 0, "pod": ""} == {
            "run": 0,
            "token": "s3cret",
            "greeting": "hello",
            "optional": "unset",
            "pod": "",
            "root": "EROFS",
            "tmp": "writable",
            "config": ["settings.yaml"],
            "config-file": "hello",
            "config-mount": "EROFS",
            "token-dir": [],
        }
        assert reports[1]["pod"].startswith("count-2-")
        assert (player.volume_of("shared") / "count").read_text() == "2"

        # A failure: the exit code, and the message at a path of the container's choosing...
        admin.create(
            jobs,
            job(
                "fails",
                "import pathlib, sys; pathlib.Path('/tmp/why').write_text('no luck'); sys.exit(3)",
                terminationMessagePath="/tmp/why",
            ),
        )
        # ...or the output's tail when it wrote none and asked for FallbackToLogsOnError.
        admin.create(
            jobs,
            job(
                "fails-quietly",
                "import sys; print('first'); print('last words', flush=True); sys.exit(4)",
                terminationMessagePolicy="FallbackToLogsOnError",
            ),
        )
        for name, code, message in (
            ("fails", 3, "no luck"),
            ("fails-quietly", 4, "first\nlast words"),
        ):
            outcome, pod = finished(admin, ns, name, player)
            assert outcome == "Failed"
            assert pod["status"]["phase"] == "Failed"
            end = terminated(pod)
            assert (end["exitCode"], end["reason"], end["message"]) == (code, "Error", message)

        # The claim deleted (the real protection controller lets it go: no pod runs): its
        # volume and the data go with it, as with any provisioner's reclaim policy Delete.
        data = player.volume_of("shared")
        admin.delete(claim_path)
        volume_path = f"/api/v1/persistentvolumes/{volume['metadata']['name']}"
        wait_for("the volume deleted", lambda: admin.find(volume_path) is None, timeout=60)
        assert not data.exists()
        assert player.errors == []
    finally:
        player.stop()


# Ignores SIGTERM, as a command that takes its whole grace period to stop would (it sleeps an
# hour otherwise).
STUBBORN = textwrap.dedent(
    """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("up", flush=True)
    time.sleep(3600)
    """
)


def pod(name: str, grace: int) -> JsonDict:
    return {
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [
                {
                    "name": "main",
                    "image": "example.invalid/python:3",
                    "command": [sys.executable, "-c", STUBBORN],
                }
            ],
        },
    }


def test_a_deleted_pod_is_killed_after_its_grace_while_other_pods_go_on(
    admin: Api, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    player = KubeletPlayer(admin, ns, tmp_path / "kubelet", services=[]).start()
    try:
        admin.create(path_of("pods", ns, group="v1"), pod("first", grace=8))
        wait_for("the first pod running", lambda: player.running() == ["first"], timeout=60)
        admin.delete(path_of("pods", ns, "first", group="v1"))
        # It ignores SIGTERM: the player keeps it until its 8 s are up, and meanwhile starts
        # the next pod (before, it held its loop until the stopped pod was gone).
        admin.create(path_of("pods", ns, group="v1"), pod("second", grace=1))
        wait_for("the second pod running", lambda: player.running() == ["second"], timeout=60)
        assert player.stopping() == ["first"], "the second started while the first was stopping"
        wait_for("the first pod killed", lambda: player.stopping() == [], timeout=60)
        # The second ignores SIGTERM too, and its grace is 1 s: killed then, not an hour later.
        admin.delete(path_of("pods", ns, "second", group="v1"))
        wait_for(
            "the second pod killed after its 1 s",
            lambda: player.running() == [] and player.stopping() == [],
            timeout=30,
        )
    finally:
        player.stop()
