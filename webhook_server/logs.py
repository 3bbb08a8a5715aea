"""JSON-lines logging. Callers pass ids and outcomes; never bodies, secrets or tokens."""

from __future__ import annotations

import json as jsonlib
import logging
import sys
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

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

    Lines go to the stream ``configure`` chose (stdout by default) through its buffer; a caller
    flushes periodically and at shutdown (``flush``). Off when the level is above INFO.
    """

    def __init__(self) -> None:
        self.enabled = _state["level"] <= logging.INFO
        self.trace_ids: Callable[[], dict[str, str]] | None = _state["trace_ids"]

    def write(self, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": "request", "level": "info", "ts": _now(), **fields}
        if self.trace_ids is not None:
            record.update(self.trace_ids())
        line = jsonlib.dumps(record, separators=(",", ":"), default=str)
        (_state["stream"] or sys.stdout).write(line + "\n")

    def flush(self) -> None:
        (_state["stream"] or sys.stdout).flush()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
