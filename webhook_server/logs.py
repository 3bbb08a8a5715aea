"""JSON-lines logging. Callers pass ids and outcomes; never bodies, secrets or tokens."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_state: dict[str, Any] = {"stream": None, "level": logging.INFO, "json": True, "trace_ids": None}


def with_trace_ids(current_ids: Callable[[], dict[str, str]] | None) -> None:
    """Add ``trace_id`` and ``span_id`` (from ``current_ids``: the active span's, or nothing)
    to every log line from now on, access log lines included; None stops it. Set by whoever
    turns tracing on, before the loggers (and the app's AccessLog) are made."""
    _state["trace_ids"] = current_ids


def _trace_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    current = _state["trace_ids"]
    if current is not None:
        event_dict.update(current())
    return event_dict


def configure(level: str = "INFO", *, json: bool = True, stream: TextIO | None = None) -> None:
    _state.update(stream=stream, level=logging.getLevelName(level.upper()), json=json)
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class AccessLog:
    """One JSON line per request, on the hot path: no processor chain, no lock, no flush per line.

    A line is one ``orjson.dumps`` of a flat dict with a timestamp from a per-second cache (about
    half the cost of ``json.dumps`` and ``datetime.isoformat``; bench/README.md). Lines go to the
    stream ``configure`` chose (stdout by default) through its buffer; a caller flushes
    periodically and at shutdown (``flush``). Off when the level is above INFO. ``worker``: which
    of the pod's receiver processes writes (webhook_server.workers), on every line when set, as
    on the structured log's.
    """

    def __init__(self, worker: int | None = None) -> None:
        self.enabled = _state["level"] <= logging.INFO
        self.trace_ids: Callable[[], dict[str, str]] | None = _state["trace_ids"]
        self.worker = worker

    def request(
        self,
        request_id: str,
        source: str,
        method: str,
        status: int,
        outcome: str,
        event_id: str | None,
        latency_ms: float,
    ) -> None:
        """The receiver's line for one request (the hot path: no keyword dict to merge)."""
        if not self.enabled:
            return
        record = {
            "event": "request",
            "level": "info",
            "ts": utc_timestamp(),
            "request_id": request_id,
            "source": source,
            "method": method,
            "status": status,
            "outcome": outcome,
            "event_id": event_id,
            "latency_ms": latency_ms,
        }
        if self.worker is not None:
            record["worker"] = self.worker
        if self.trace_ids is not None:
            record.update(self.trace_ids())
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        (_state["stream"] or sys.stdout).write(line.decode())

    def write(self, event: str = "request", **fields: Any) -> None:
        """Any other line on the same stream (the forwarder's failed attempts)."""
        if not self.enabled:
            return
        record = {"event": event, "level": "info", "ts": utc_timestamp(), **fields}
        if self.worker is not None:
            record["worker"] = self.worker
        if self.trace_ids is not None:
            record.update(self.trace_ids())
        line = orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
        (_state["stream"] or sys.stdout).write(line.decode())

    def flush(self) -> None:
        (_state["stream"] or sys.stdout).flush()


_second: list[Any] = [-1, ""]


def utc_timestamp(now: float | None = None) -> str:
    """``now`` (default: the clock) as RFC 3339 UTC with microseconds, ``...T12:34:56.789012Z``.
    The date and time of day are formatted once per second."""
    if now is None:
        now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((now - whole) * 1_000_000):06d}Z"
