"""What a SyncSchedule's Jobs mean for its status: small pure decisions, no I/O, ``now`` given.

The operator learns each run's outcome from its Job (``services.jobs``: finished? when?) and the
summary the run wrote as its container's termination message (how many items, which reason); a
Job that died without one (OOM-killed, evicted, past its deadline) is reported from the Job's
own condition.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import croniter

from dfm_operator import constants as c
from dfm_operator.api.common import rfc3339
from dfm_operator.api.syncschedule import SyncRun, SyncScheduleStatus
from dfm_operator.conditions import ConditionUpdate
from webhook_server.sync.summary import DEADLINE_EXCEEDED, SUCCEEDED, ReadSummary

# The schedule's interval is the longest gap between its runs over this span (a weekday
# schedule's is the weekend's), so an alert on "N intervals without success" does not fire
# every Monday.
INTERVAL_HORIZON = timedelta(days=8)
MAX_RUNS_LOOKED_AT = 1000


class FinishedJob(Protocol):
    """What a run's record needs of a finished Job (``services.jobs.JobOutcome`` is one)."""

    @property
    def job(self) -> str: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def succeeded(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def exit_code(self) -> int | None: ...


def run_record(
    job: FinishedJob, summary: ReadSummary | None, namespace: str, now: datetime
) -> SyncRun:
    """The finished run: as its summary tells it, else as its Job does."""
    started = job.started_at or now
    completion = job.finished_at or now
    elapsed = max((completion - started).total_seconds(), 0.0) if job.started_at else None
    if summary is not None:
        return SyncRun(
            job=job.job,
            start_time=started,
            completion_time=completion,
            succeeded=summary.result == SUCCEEDED,
            reason=summary.reason,
            message=summary.message,
            items=summary.items,
            stored=summary.stored,
            duration_seconds=summary.duration_seconds or elapsed,
        )
    if job.succeeded:
        reason, message = c.REASON_SYNCED, f"job {job.job} succeeded without a summary"
    else:
        reason = DEADLINE_EXCEEDED if job.reason == "DeadlineExceeded" else c.REASON_JOB_FAILED
        cause = f"{job.reason}: {job.message}" if job.message else job.reason
        if job.exit_code is not None:
            cause += f", exit code {job.exit_code}"
        message = (
            f"job {job.job} failed without a summary ({cause}); "
            f"kubectl -n {namespace} describe job {job.job}"
        )
    return SyncRun(
        job=job.job,
        start_time=started,
        completion_time=completion,
        succeeded=job.succeeded,
        reason=reason,
        message=message[:1024],
        duration_seconds=elapsed,
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
