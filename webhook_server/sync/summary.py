"""A run's summary: what `dfm sync run` writes to its container's termination message and the
operator reads back from the Pod (no log scraping), and what `dfm sync run` prints locally.

The message is small JSON (Kubernetes keeps at most 4096 bytes of it); it carries counts,
times, a reason and a short message made by this package: never a token, a URL's query, a
response body or an item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SUMMARY_VERSION = 1
# Kubernetes truncates a termination message to 4096 bytes; ours stays well inside.
MAX_MESSAGE_CHARS = 1000

SUCCEEDED = "Succeeded"
FAILED = "Failed"

# Reasons. A run that ends well says SYNCED; the others are failures, each with its own cause.
SYNCED = "Synced"
UPSTREAM_FAILING = "UpstreamFailing"  # 5xx, timeouts, connection errors, 429 after all attempts
UPSTREAM_REFUSED = "UpstreamRefused"  # another 4xx (or a redirect): the request itself is wrong
TOKEN_UNAVAILABLE = "TokenUnavailable"  # no token mounted, or the API refused it (401)
BAD_RESPONSE = "BadResponse"  # not JSON, no items where configured, an item without an id
STORE_UNAVAILABLE = "StoreUnavailable"  # PostgreSQL unreachable or refusing the writes
DEADLINE_EXCEEDED = "DeadlineExceeded"  # the run took longer than its run timeout
INTERRUPTED = "Interrupted"  # stopped by a signal (the Job was deleted or replaced)
INVALID_CONFIG = "InvalidConfig"  # the rendered config could not be read

FAILURE_REASONS = frozenset(
    {
        UPSTREAM_FAILING,
        UPSTREAM_REFUSED,
        TOKEN_UNAVAILABLE,
        BAD_RESPONSE,
        STORE_UNAVAILABLE,
        DEADLINE_EXCEEDED,
        INTERRUPTED,
        INVALID_CONFIG,
    }
)


class SyncFailure(Exception):
    """A run that cannot go on; ``reason`` is one of the reasons above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class RunSummary:
    schedule: str
    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    result: str = FAILED
    reason: str = INTERRUPTED
    message: str = ""
    items: int = 0  # fetched by this run (this process)
    stored: int = 0  # of which were new events (the others were already stored)
    pages: int = 0
    resumed: bool = False  # continued an earlier run's walk after its last committed page
    complete: bool = False  # the walk reached its end (else the next run continues it)

    @property
    def succeeded(self) -> bool:
        return self.result == SUCCEEDED

    @property
    def duplicates(self) -> int:
        return self.items - self.stored

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return max((self.finished_at - self.started_at).total_seconds(), 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": SUMMARY_VERSION,
            "schedule": self.schedule,
            "runId": self.run_id,
            "result": self.result,
            "reason": self.reason,
            "message": self.message[:MAX_MESSAGE_CHARS],
            "items": self.items,
            "stored": self.stored,
            "pages": self.pages,
            "resumed": self.resumed,
            "complete": self.complete,
            "startedAt": _time(self.started_at),
            "finishedAt": _time(self.finished_at) if self.finished_at else None,
            "durationSeconds": (
                round(self.duration_seconds, 3) if self.duration_seconds is not None else None
            ),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))


@dataclass(frozen=True)
class ReadSummary:
    """A summary as the operator reads it back: only what it uses, every field checked."""

    result: str
    reason: str
    message: str
    items: int | None
    stored: int | None
    complete: bool
    duration_seconds: float | None


def parse_summary(text: str | None) -> ReadSummary | None:
    """A termination message written by :meth:`RunSummary.dumps`, or None when it is not one
    (empty, truncated, or written by something else)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("v") != SUMMARY_VERSION:
        return None
    result, reason = data.get("result"), data.get("reason")
    if result not in (SUCCEEDED, FAILED) or not isinstance(reason, str) or not reason:
        return None

    def count(key: str) -> int | None:
        value = data.get(key)
        return (
            value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
        )

    duration = data.get("durationSeconds")
    return ReadSummary(
        result=result,
        reason=reason[:64],
        message=str(data.get("message") or "")[:MAX_MESSAGE_CHARS],
        items=count("items"),
        stored=count("stored"),
        complete=data.get("complete") is True,
        duration_seconds=float(duration) if isinstance(duration, int | float) else None,
    )


def _time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
