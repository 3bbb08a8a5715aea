"""The command-line tools some tests run, found the way a dev install puts them; and ports for
the processes tests start."""

from __future__ import annotations

import random
import shutil
import socket
import sys
from pathlib import Path

import pytest


def dev_tool(name: str, why: str) -> str:
    """``name`` beside this Python (the venv's bin), else on PATH; skips the test saying ``why``
    when neither has it."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed ({why})")
    return found


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nothing is bound to, for processes a test starts to bind later.

    Below the kernel's ephemeral range: a port from ``bind(0)`` is one the kernel also gives out
    as the source port of outgoing connections, so between the pick and the child's bind any
    connection made on the machine (a loaded CI machine makes many) could take it. Below that
    range only an explicit bind can. Each is checked on every address, as a child may bind
    0.0.0.0; all are held until all are picked, so none is picked twice.
    """
    low, _ = _ephemeral_range()
    candidates = range(max(1024, low - 12_000), low)
    rng = random.SystemRandom()
    held: list[socket.socket] = []
    try:
        for port in rng.sample(candidates, min(len(candidates), 1000)):
            if len(held) == count:
                break
            sock = socket.socket()
            try:
                sock.bind(("", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        while len(held) < count:  # a crowded range: what the kernel gives, then
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def free_port() -> int:
    """One port for a process a test starts to bind later (see :func:`free_ports`)."""
    return free_ports(1)[0]
