"""Pure parts of the receiver's server: the loop's error handler and the connection cap."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from webhook_server import logs
from webhook_server.metrics import ReceiverMetrics
from webhook_server.server import RESERVED_FILES, ConnectionGuard, LoopErrors, connection_cap


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log_stream() -> Any:
    stream = io.StringIO()
    logs.configure(stream=stream)
    yield stream
    logs.configure()


def test_loop_errors_are_one_line_per_kind_per_interval_without_a_traceback(
    log_stream: io.StringIO,
) -> None:
    clock = Clock()
    handler = LoopErrors(clock)
    emfile = OSError(24, "Too many open files")
    accept = {"message": "socket.accept() out of system resource", "exception": emfile}
    for _ in range(1000):
        handler(None, accept)  # type: ignore[arg-type]
    handler(None, {"message": "Task exception was never retrieved", "exception": KeyError("k")})
    clock.now = 11.0
    handler(None, accept)  # type: ignore[arg-type]
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [(line["message"], line["error"], line["suppressed"]) for line in lines] == [
        ("socket.accept() out of system resource", "OSError", 0),
        ("Task exception was never retrieved", "KeyError", 0),
        ("socket.accept() out of system resource", "OSError", 999),
    ]
    assert lines[0]["errno"] == 24
    assert "Traceback" not in log_stream.getvalue()
    assert "'k'" not in log_stream.getvalue()


@pytest.mark.parametrize(
    ("configured", "file_limit", "cap"),
    [(4096, 1_048_576, 4096), (4096, 1024, 1024 - RESERVED_FILES), (10, 1024, 10), (4096, 100, 1)],
)
def test_the_connection_cap_fits_the_file_limit(configured: int, file_limit: int, cap: int) -> None:
    assert connection_cap(configured, file_limit) == cap


class FakeConnection:
    def __init__(self, idle: bool = True) -> None:
        self.idle = idle
        self.closed = False

    def force_close(self) -> None:
        self.closed = True


def test_at_the_cap_the_oldest_idle_connection_past_its_grace_makes_room() -> None:
    clock = Clock()
    guard = ConnectionGuard(3, ReceiverMetrics(), grace_seconds=0.25, clock=clock)
    busy, idle_old, idle_young = FakeConnection(idle=False), FakeConnection(), FakeConnection()
    assert guard.admit(busy)  # type: ignore[arg-type]
    assert guard.admit(idle_old)  # type: ignore[arg-type]
    clock.now = 0.2
    assert guard.admit(idle_young)  # type: ignore[arg-type]

    clock.now = 0.3  # idle_old is past its grace, idle_young is not
    newcomer = FakeConnection()
    assert guard.admit(newcomer)  # type: ignore[arg-type]
    assert (idle_old.closed, busy.closed, idle_young.closed) == (True, False, False)

    # Nothing idle past its grace: the next one is refused, nobody is closed.
    assert not guard.admit(FakeConnection())  # type: ignore[arg-type]
    assert not idle_young.closed
    clock.now = 1.0
    assert guard.admit(FakeConnection())  # type: ignore[arg-type]
    assert idle_young.closed  # the oldest idle one, the busy one is kept
    assert not busy.closed
    assert len(guard.open) == 3
