"""What the CronJob and Job controllers and a kubelet would write for one run of a CronJob.

The emulator runs no pods; a test plays a run instead (``DfmKubernetesEmulator.play_cronjob_run``):
a Job made from the CronJob's jobTemplate (named, labelled, annotated and owned as the CronJob
controller does it), its Pod (labelled as the Job controller does it), the Pod's terminated
container with an optional termination message, and the Job's final conditions.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from typing import Any

from kube_emulator.resources import JsonDict

SCHEDULED_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
CONTROLLER_UID_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")


def stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_name(cronjob: str, scheduled: datetime.datetime) -> str:
    """The CronJob controller's name: ``<cronjob>-<scheduled time in minutes since the epoch>``."""
    return f"{cronjob}-{int(scheduled.timestamp() // 60)}"


def _owner(kind: str, api_version: str, obj: Mapping[str, Any]) -> JsonDict:
    meta = obj["metadata"]
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_for(cronjob: Mapping[str, Any], scheduled: datetime.datetime) -> JsonDict:
    template = cronjob["spec"]["jobTemplate"]
    meta = template.get("metadata") or {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(cronjob["metadata"]["name"], scheduled),
            "namespace": cronjob["metadata"]["namespace"],
            "labels": dict(meta.get("labels") or {}),
            "annotations": {
                **(meta.get("annotations") or {}),
                SCHEDULED_ANNOTATION: stamp(scheduled),
            },
            "ownerReferences": [_owner("CronJob", "batch/v1", cronjob)],
        },
        "spec": dict(template["spec"]),
    }


def pod_for(job: Mapping[str, Any]) -> JsonDict:
    name, uid = job["metadata"]["name"], job["metadata"]["uid"]
    template = job["spec"]["template"]
    suffix = hashlib.sha256(uid.encode()).hexdigest()[:5]
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels.update({key: name for key in JOB_NAME_LABELS})
    labels.update({key: uid for key in CONTROLLER_UID_LABELS})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-{suffix}",
            "namespace": job["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [_owner("Job", "batch/v1", job)],
        },
        "spec": dict(template["spec"]),
    }


def terminated_pod_status(
    pod: Mapping[str, Any],
    *,
    exit_code: int,
    message: str | None,
    reason: str,
    finished: datetime.datetime,
) -> JsonDict:
    container = pod["spec"]["containers"][0]["name"]
    terminated: JsonDict = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": stamp(finished),
        "finishedAt": stamp(finished),
    }
    if message is not None:
        terminated["message"] = message
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [
            {
                "name": container,
                "ready": False,
                "restartCount": 0,
                "image": pod["spec"]["containers"][0].get("image", ""),
                "state": {"terminated": terminated},
            }
        ],
    }


def finished_job_status(
    *, succeeded: bool, started: datetime.datetime, finished: datetime.datetime, reason: str
) -> JsonDict:
    """The Job controller's final status (Kubernetes 1.31+: SuccessCriteriaMet/FailureTarget
    come first, then Complete/Failed)."""
    when = stamp(finished)
    if succeeded:
        conditions = [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached"},
        ]
    else:
        conditions = [
            {"type": "FailureTarget", "status": "True", "reason": reason},
            {"type": "Failed", "status": "True", "reason": reason, "message": f"Job {reason}"},
        ]
    status: JsonDict = {
        "startTime": stamp(started),
        "conditions": [
            {**condition, "lastProbeTime": when, "lastTransitionTime": when}
            for condition in conditions
        ],
        "succeeded" if succeeded else "failed": 1,
        "active": 0,
    }
    if succeeded:
        status["completionTime"] = when
    return status
