"""The command-line tools some tests run, found the way a dev install puts them; ports for the
processes tests start; and scratch databases for tests that run outside an event loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
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


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server at ``server_url`` (its URL), dropped after.

    For synchronous tests (tests/conftest.py's ``database_url`` is the async fixture)."""
    name = f"t_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base, _, _ = server_url.rpartition("/")
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def wait_ready(
    session: aiohttp.ClientSession,
    base: str,
    process: subprocess.Popen[bytes],
    said: Callable[[], str] = lambda: "the receiver exited",
) -> None:
    """Until the receiver ``process`` serving ``base`` answers /readyz 200 (with several worker
    processes: every one of them, since each worker answers for the pod). Fails when it exits
    first (with ``said()``: its log, say) or after 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, said()
        try:
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the receiver did not become ready")
