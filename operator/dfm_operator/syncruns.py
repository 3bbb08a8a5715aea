"""What a SyncSchedule's Jobs mean for its status: small pure decisions, no I/O, ``now`` given.

The operator learns each run's outcome from its Job (finished? when?) and the summary the run
wrote as its container's termination message (how many items, which reason); a Job that died
without one (OOM-killed, evicted, past its deadline) is reported from the Job's own condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from dfm_operator import constants as c
from dfm_operator.api.common import parse_rfc3339, rfc3339
from dfm_operator.api.syncschedule import SyncRun, SyncScheduleStatus
from dfm_operator.conditions import ConditionUpdate
from webhook_server.sync.summary import DEADLINE_EXCEEDED, SUCCEEDED, ReadSummary

# Set by the CronJob controller on the Jobs it creates (Kubernetes 1.28+); a Job made by hand
# (`kubectl create job --from=cronjob/...`) has none and counts from its creation.
SCHEDULED_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTAINER = "sync"
# The schedule's interval is the longest gap between its runs over this span (a weekday
# schedule's is the weekend's), so an alert on "N intervals without success" does not fire
# every Monday.
INTERVAL_HORIZON = timedelta(days=8)
MAX_RUNS_LOOKED_AT = 1000


@dataclass(frozen=True)
class JobView:
    """A Job as the status needs it."""

    name: str
    scheduled: datetime | None
    started: datetime | None
    finished: bool
    succeeded: bool
    completion: datetime | None
    reason: str  # the Failed condition's reason (DeadlineExceeded, BackoffLimitExceeded, …)
    message: str


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None


def job_view(job: Mapping[str, Any]) -> JobView:
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    complete = _condition(job, "Complete")
    failed = _condition(job, "Failed")
    scheduled = parse_rfc3339((meta.get("annotations") or {}).get(SCHEDULED_ANNOTATION))
    started = parse_rfc3339(status.get("startTime"))
    done = complete or failed or {}
    return JobView(
        name=str(meta.get("name")),
        scheduled=scheduled or parse_rfc3339(meta.get("creationTimestamp")) or started,
        started=started,
        finished=bool(complete or failed),
        succeeded=complete is not None,
        completion=parse_rfc3339(status.get("completionTime"))
        or parse_rfc3339(done.get("lastTransitionTime")),
        reason=str((failed or {}).get("reason") or ""),
        message=str((failed or {}).get("message") or ""),
    )


def termination_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The sync container's termination message, from the Job's last pod that has one."""
    found: list[tuple[str, str]] = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != CONTAINER:
                continue
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                found.append((str(terminated.get("finishedAt") or ""), str(terminated["message"])))
    return max(found)[1] if found else None


def counted(last: SyncRun | None, job: JobView) -> bool:
    """Whether ``job``'s run is already in the status (or older than the one that is: a Job
    listed again after an operator restart is not counted twice)."""
    if last is None:
        return False
    if last.job == job.name:
        return True
    return job.scheduled is not None and job.scheduled < last.scheduled_time


def run_record(job: JobView, summary: ReadSummary | None, namespace: str, now: datetime) -> SyncRun:
    """The finished run: as its summary tells it, else as its Job does."""
    scheduled = job.scheduled or job.started or now
    completion = job.completion or now
    elapsed = (completion - job.started).total_seconds() if job.started else None
    if summary is not None:
        return SyncRun(
            job=job.name,
            scheduled_time=scheduled,
            completion_time=completion,
            succeeded=summary.result == SUCCEEDED,
            reason=summary.reason,
            message=summary.message,
            items=summary.items,
            stored=summary.stored,
            duration_seconds=summary.duration_seconds if summary.duration_seconds else elapsed,
        )
    if job.succeeded:
        reason, message = c.REASON_SYNCED, f"job {job.name} succeeded without a summary"
    else:
        reason = DEADLINE_EXCEEDED if job.reason == "DeadlineExceeded" else c.REASON_JOB_FAILED
        cause = f"{job.reason}: {job.message}" if job.reason else "no reason given"
        message = (
            f"job {job.name} failed without a summary ({cause}); "
            f"kubectl -n {namespace} describe job {job.name}"
        )
    return SyncRun(
        job=job.name,
        scheduled_time=scheduled,
        completion_time=completion,
        succeeded=job.succeeded,
        reason=reason,
        message=message[:1024],
        duration_seconds=max(elapsed, 0.0) if elapsed is not None else None,
    )


def after_run(previous: SyncScheduleStatus, run: SyncRun) -> SyncScheduleStatus:
    """The status fields a finished run sets."""
    fields = SyncScheduleStatus(last_run=run)
    if run.succeeded:
        fields.last_successful_time = run.completion_time
        fields.items_synced = run.items
        fields.consecutive_failures = 0
    else:
        fields.consecutive_failures = previous.consecutive_failures + 1
    return fields


def later(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return max(known) if known else None


def next_run(schedule: str, time_zone: str, now: datetime) -> datetime:
    start = now.astimezone(ZoneInfo(time_zone))
    moment: datetime = croniter(schedule, start).get_next(datetime)
    return moment


def longest_interval(schedule: str, time_zone: str, now: datetime) -> float:
    """Seconds of the longest gap between two runs over the coming INTERVAL_HORIZON."""
    runs = croniter(schedule, now.astimezone(ZoneInfo(time_zone)))
    first: datetime = runs.get_next(datetime)
    previous, longest = first, 0.0
    for _ in range(MAX_RUNS_LOOKED_AT):
        moment: datetime = runs.get_next(datetime)
        longest = max(longest, (moment - previous).total_seconds())
        if moment - first > INTERVAL_HORIZON:
            break
        previous = moment
    return longest


def sync_ready(
    problem: ConditionUpdate | None,
    suspended: bool,
    last_run: SyncRun | None,
    upcoming: datetime | None,
) -> ConditionUpdate:
    """Ready: what keeps runs from working (a missing sink or token, a bad spec), else whether
    runs are suspended, else how the last finished run went."""
    if problem is not None:
        return problem
    if suspended:
        return ConditionUpdate(
            c.READY, False, c.REASON_SUSPENDED, "runs are suspended (spec.suspend)"
        )
    if last_run is None:
        when = f"; the first is due at {rfc3339(upcoming)}" if upcoming else ""
        return ConditionUpdate(c.READY, True, c.REASON_SCHEDULED, f"no run has finished yet{when}")
    if last_run.succeeded:
        return ConditionUpdate(
            c.READY, True, c.REASON_SYNCED, f"job {last_run.job}: {last_run.message}"
        )
    return ConditionUpdate(
        c.READY, False, last_run.reason, f"job {last_run.job}: {last_run.message}"[:1024]
    )
