"""Pure parts of the receiver's server: the loop's error handler and the connection cap."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from webhook_server import logs
from webhook_server.server import RESERVED_FILES, LoopErrors, connection_cap


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
