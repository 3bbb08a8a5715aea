"""The Jobs that the operator's CronJobs run, read for their outcome. Generic over the kind that
owns the CronJob: a BackupSchedule today, a SyncSchedule next.

A scheduled job reports through its container's termination message (a small JSON summary;
Kubernetes keeps it in the Pod's status after the container exits), so the operator learns how a
run went without reading logs. When there is no message (the container was OOM-killed, the Pod
was deleted, the Job hit its deadline) the Job's own conditions and the container's exit state
say what is known.

:func:`job_outcome` is pure; :func:`read_outcome` adds the Pod lookup; :func:`is_newer` keeps a
recorded outcome from being recorded twice (a restarted operator's watch replays every Job).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dfm_operator.api.common import parse_rfc3339
from dfm_operator.kernel import Context

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


@dataclass(frozen=True)
class JobOutcome:
    """How one finished Job went."""

    namespace: str
    job: str
    labels: Mapping[str, str]
    started_at: datetime | None
    finished_at: datetime | None
    succeeded: bool
    # The Job condition's reason (BackoffLimitExceeded, DeadlineExceeded, …) or the
    # container's (OOMKilled, Error, Completed), and the condition's message.
    reason: str
    message: str
    termination_message: str | None
    exit_code: int | None


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None


def finished(job: Mapping[str, Any]) -> bool | None:
    """True: completed; False: failed; None: still running (or not started)."""
    if _condition(job, "Complete") is not None:
        return True
    if _condition(job, "Failed") is not None:
        return False
    return None


def _terminated(pod: Mapping[str, Any], container: str) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated:
                return dict(terminated)
            last = (status.get("lastState") or {}).get("terminated")
            return dict(last) if last else None
    return None


def _owners(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((obj.get("metadata") or {}).get("ownerReferences") or [])


def job_outcome(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], container: str
) -> JobOutcome | None:
    """The outcome of a finished ``job`` from it and its Pods; None while it runs."""
    done = finished(job)
    if done is None:
        return None
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    condition = _condition(job, "Complete" if done else "Failed") or {}
    uid = meta.get("uid")
    ends = [
        end
        for pod in pods
        if not uid or any(r.get("uid") == uid for r in _owners(pod))
        if (end := _terminated(pod, container)) is not None
    ]
    # The last attempt's, when a Job ran more than one Pod.
    terminated = max(ends, key=lambda t: str(t.get("finishedAt") or ""), default=None)
    reason = str(condition.get("reason") or "")
    if not done and terminated is not None and terminated.get("reason") == "OOMKilled":
        reason = "OOMKilled"
    exit_code = terminated.get("exitCode") if terminated is not None else None
    return JobOutcome(
        namespace=str(meta.get("namespace") or ""),
        job=str(meta.get("name") or ""),
        labels=dict(meta.get("labels") or {}),
        started_at=parse_rfc3339(status.get("startTime") or meta.get("creationTimestamp")),
        finished_at=parse_rfc3339(
            status.get("completionTime") or condition.get("lastTransitionTime")
        ),
        succeeded=done,
        reason=reason or ("Completed" if done else "Failed"),
        message=str(condition.get("message") or ""),
        termination_message=(terminated.get("message") if terminated is not None else None),
        exit_code=int(exit_code) if exit_code is not None else None,
    )


async def read_outcome(ctx: Context, job: Mapping[str, Any], container: str) -> JobOutcome | None:
    """:func:`job_outcome`, with the Job's Pods listed from the API when it has finished."""
    if finished(job) is None:
        return None
    meta = job.get("metadata") or {}
    pods = await ctx.kube.list(
        "v1", "Pod", str(meta.get("namespace")), f"{JOB_NAME_LABEL}={meta.get('name')}"
    )
    return job_outcome(job, pods, container)


async def finished_jobs(
    ctx: Context, namespace: str, label_selector: str, container: str
) -> list[JobOutcome]:
    """Every finished Job matching ``label_selector``, oldest first (a catch-up after missed
    watch events)."""
    jobs = await ctx.kube.list("batch/v1", "Job", namespace, label_selector)
    outcomes = []
    for job in jobs:
        outcome = await read_outcome(ctx, job, container)
        if outcome is not None:
            outcomes.append(outcome)
    return sorted(outcomes, key=lambda o: (o.started_at is None, o.started_at, o.job))


def is_newer(outcome: JobOutcome, recorded_time: datetime | None, recorded_job: str | None) -> bool:
    """Whether ``outcome`` comes after the one a status last recorded (by start time, then
    Job name): older or equal ones were recorded already, or were overtaken."""
    if recorded_job is None:
        return True
    if outcome.job == recorded_job:
        return False
    if outcome.started_at is None or recorded_time is None:
        return outcome.started_at is not None
    return (outcome.started_at, outcome.job) > (recorded_time, recorded_job)
