"""W3C Trace Context (``traceparent``) for forwarded events, without a tracing SDK.

A forwarded request continues the trace its event arrived with (the provider's ``traceparent``,
stored with the event's headers) as a new child span, or starts a new trace when there was none
or it was malformed. This is the one place that makes trace ids: when OpenTelemetry comes, its
propagator replaces :func:`child_traceparent` and the spans it records take these ids.
"""

from __future__ import annotations

import random
import re

TRACEPARENT = "traceparent"
# version 00: "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = "01"


def parse(value: str | None) -> tuple[str, str] | None:
    """(trace id, flags) of a valid ``traceparent``, else None (W3C Trace Context §3.2)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00" and rest:
        return None  # version 00 has exactly four fields
    return trace_id, flags


def child_traceparent(incoming: str | None) -> str:
    """The ``traceparent`` of a request made on behalf of an event that came with ``incoming``.

    Same trace id and flags, a fresh span id; a new sampled trace when ``incoming`` is absent or
    invalid. Ids are random but not secret (W3C asks for uniqueness, not unpredictability), so
    they come from ``random``, not from a system call per id.
    """
    parsed = parse(incoming)
    trace_id, flags = parsed if parsed is not None else (_hex(128), SAMPLED)
    return f"00-{trace_id}-{_hex(64)}-{flags}"


def _hex(bits: int) -> str:
    """``bits`` random bits as lower-case hex, never all zeros (an invalid id)."""
    return f"{random.getrandbits(bits) or 1:0{bits // 4}x}"
