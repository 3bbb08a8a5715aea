"""webhook_server.workers: the merged /metrics of several workers, and the supervisor's rules
(run in a process of its own: it forks)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from webhook_server.metrics import LoopCounter, LoopHistogram
from webhook_server.workers import (
    PEER_CHECK_SECONDS,
    Peers,
    Worker,
    decode,
    decode_checks,
    encode,
    merge,
)

ROOT = Path(__file__).resolve().parents[2]


def worker_registry(stored: int, backlog: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    requests = LoopCounter("dfm_receiver_requests", "Requests.", ["source", "outcome"], registry)
    requests.labels("ci/gh", "stored").inc(stored)
    latency = LoopHistogram(
        "dfm_receiver_request_duration_seconds", "Latency.", ["source"], (0.01, 0.1), registry
    )
    latency.labels("ci/gh").observe(0.05)
    Counter("dfm_receiver_duplicates", "Duplicates.", ["source"], registry=registry).labels(
        "ci/gh"
    ).inc(2)
    Histogram("dfm_receiver_batch_size", "Batches.", buckets=(1, 10), registry=registry).observe(3)
    Gauge("dfm_forward_backlog", "Backlog.", ["source"], registry=registry).labels("ci/gh").set(
        backlog
    )
    return registry


def parsed(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def test_every_workers_series_is_labelled_with_its_worker_and_nothing_is_summed() -> None:
    parts = {
        0: decode(encode(worker_registry(stored=5, backlog=7))),
        1: decode(encode(worker_registry(stored=3, backlog=7))),
    }
    text = merge(parts, 2).decode()
    families = parsed(text)
    # One family per metric, whatever the number of workers (a scraper refuses a repeated one).
    assert text.count("# TYPE dfm_receiver_requests_total counter") == 1
    assert text.count("# TYPE dfm_receiver_batch_size histogram") == 1
    requests = {
        s[1]["worker"]: s[2] for s in families["dfm_receiver_requests"] if s[0].endswith("_total")
    }
    assert requests == {"0": 5.0, "1": 3.0}
    # A gauge the database gives both workers stays what it is, once per worker.
    backlog = {s[1]["worker"]: s[2] for s in families["dfm_forward_backlog"]}
    assert backlog == {"0": 7.0, "1": 7.0}
    buckets = [
        s for s in families["dfm_receiver_request_duration_seconds"] if s[0].endswith("_bucket")
    ]
    assert {(s[1]["worker"], s[1]["le"], s[2]) for s in buckets} >= {("0", "0.1", 1.0)}
    assert {s[1]["worker"] for s in families["dfm_receiver_batch_size"]} == {"0", "1"}
    assert families["dfm_receiver_workers"] == [("dfm_receiver_workers", {}, 2.0)]
    up = {s[1]["worker"]: s[2] for s in families["dfm_receiver_worker_up"]}
    assert up == {"0": 1.0, "1": 1.0}


def test_a_worker_that_did_not_answer_is_down_and_its_series_are_missing() -> None:
    text = merge({1: decode(encode(worker_registry(stored=3, backlog=0)))}, 3).decode()
    families = parsed(text)
    up = {s[1]["worker"]: s[2] for s in families["dfm_receiver_worker_up"]}
    assert up == {"0": 0.0, "1": 1.0, "2": 0.0}
    assert {s[1]["worker"] for s in families["dfm_receiver_requests"]} == {"1"}


# -- the supervisor, with workers that stand in for receivers ---------------------------------

SUPERVISOR = """
import os, signal, sys, time
from webhook_server import logs
from webhook_server.workers import supervise

logs.configure("INFO")
mode = sys.argv[1]
if len(sys.argv) > 3 and sys.argv[3] == "sigchld-ignored":
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # as a launcher may leave it, through exec

def serve(worker):
    if mode == "fail" and worker.index == 1:
        raise RuntimeError("a start that failed")
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif mode != "starting":
        # "starting": no handler yet, as in a worker still importing and connecting.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.write(2, f"ready {worker.index} {os.getpid()}\\n".encode())  # one write: no interleaving
    while True:
        time.sleep(0.05)

sys.exit(supervise(2, serve, stop_seconds=float(sys.argv[2])))
"""


Launch = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def run_supervisor(tmp_path: Path) -> Iterator[Launch]:
    """``run_supervisor(mode, stop_seconds, *extra)``: the stub supervisor in a process group of
    its own, as a terminal's foreground job; whatever a failed test leaves of it is killed."""
    started: list[subprocess.Popen[str]] = []

    def launch(mode: str, stop_seconds: float, *extra: str) -> subprocess.Popen[str]:
        script = tmp_path / "supervisor.py"
        script.write_text(textwrap.dedent(SUPERVISOR))
        process = subprocess.Popen(
            [sys.executable, str(script), mode, str(stop_seconds), *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield launch
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def wait_ready(process: subprocess.Popen[str], count: int) -> list[int]:
    assert process.stderr is not None
    pids: list[int] = []
    while len(pids) < count:
        line = process.stderr.readline()
        assert line, "the supervisor ended before its workers were ready"
        pids.append(int(line.split()[2]))
    return pids


def events(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_sigterm_stops_every_worker_and_the_supervisor_exits_0(run_supervisor: Launch) -> None:
    process = run_supervisor("normal", 30)
    wait_ready(process, 2)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    names = [e["event"] for e in events(stdout)]
    assert names.count("worker started") == 2
    assert "stopping workers" in names
    assert "worker exited" not in names


def test_a_stop_while_workers_are_still_starting_is_not_a_failure(run_supervisor: Launch) -> None:
    process = run_supervisor("starting", 30)
    wait_ready(process, 2)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "worker exited" not in [e["event"] for e in events(stdout)]


def test_a_worker_that_fails_to_start_stops_the_other_and_exit_is_1(run_supervisor: Launch) -> None:
    process = run_supervisor("fail", 30)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    logged = events(stdout)
    failed = [e for e in logged if e["event"] == "worker failed"]
    assert failed == [failed[0]]
    assert failed[0]["worker"] == 1
    assert failed[0]["error"] == "RuntimeError"
    # Never the message: it could quote a request or a URL.
    assert "a start that failed" not in stdout
    exited = [e for e in logged if e["event"] == "worker exited"]
    assert [(e["worker"], e["exit_code"]) for e in exited] == [(1, 1)]


def test_a_worker_death_is_seen_even_when_sigchld_was_ignored_by_the_launcher(
    run_supervisor: Launch,
) -> None:
    # Ignored, SIGCHLD lets the kernel reap the workers itself: a crash would go unnoticed and
    # the pod would run at part capacity. The supervisor sets it back to the default.
    process = run_supervisor("fail", 30, "sigchld-ignored")
    stdout, _ = process.communicate(timeout=20)
    assert process.returncode == 1
    exited = [e for e in events(stdout) if e["event"] == "worker exited"]
    assert [(e["worker"], e["exit_code"]) for e in exited] == [(1, 1)]
    # The other worker drained on its SIGTERM: no kill at the deadline.
    assert "workers did not stop in time; killed" not in [e["event"] for e in events(stdout)]


def test_ctrl_c_to_the_process_group_stops_everything_once_and_cleanly(
    run_supervisor: Launch,
) -> None:
    process = run_supervisor("normal", 30)
    wait_ready(process, 2)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    names = [e["event"] for e in events(stdout)]
    assert "worker exited" not in names
    assert "worker failed" not in names
    assert names.count("stopping workers") == 1


def test_a_worker_that_ignores_sigterm_is_killed_at_the_deadline_and_exit_is_1(
    run_supervisor: Launch,
) -> None:
    process = run_supervisor("stubborn", 1)
    pids = wait_ready(process, 2)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert time.monotonic() - started >= 1
    killed = [e for e in events(stdout) if e["event"] == "workers did not stop in time; killed"]
    assert killed
    assert killed[0]["workers"] == [0, 1]
    # Killed and reaped by the supervisor: nothing is left behind.
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


async def test_a_scrape_gathers_every_workers_series_over_their_sockets(tmp_path: Path) -> None:
    # Enough series that one worker's answer takes many reads (a few MiB of JSON).
    group = f"dfm-test.{os.getpid()}.{tmp_path.name}"
    registries = [CollectorRegistry(), CollectorRegistry()]
    for number, registry in enumerate(registries):
        requests = LoopCounter(
            "dfm_receiver_requests", "Requests.", ["source", "outcome"], registry
        )
        for n in range(20_000):
            requests.labels(f"ns/source-{n}", "stored").inc(number + 1)
    refreshed: list[int] = []
    peers = [
        Peers(Worker(i, 3, group), registries[i], functools.partial(refreshed.append, i))
        for i in range(2)
    ]
    for p in peers:
        await p.start()
    try:
        text = (await peers[0].exposition()).decode()
    finally:
        for p in peers:
            await p.stop()
    families = parsed(text)
    by_worker: dict[str, float] = {}
    for name, labels, value in families["dfm_receiver_requests"]:
        if name.endswith("_total"):
            by_worker[labels["worker"]] = by_worker.get(labels["worker"], 0.0) + value
    assert by_worker == {"0": 20_000.0, "1": 40_000.0}
    # Worker 2 was never started: down, and the scrape still answered with the others.
    up = {s[1]["worker"]: s[2] for s in families["dfm_receiver_worker_up"]}
    assert up == {"0": 1.0, "1": 1.0, "2": 0.0}
    # Each worker set its store and forwarder gauges before its series were read.
    assert sorted(refreshed) == [0, 1]


def test_label_values_that_need_escaping_survive_the_merge() -> None:
    registry = CollectorRegistry()
    odd = 'ns/a "quoted" \\ back\nslash'
    Counter("dfm_receiver_duplicates", "Duplicates.", ["source"], registry=registry).labels(
        odd
    ).inc()
    families = parsed(merge({0: decode(encode(registry))}, 1).decode())
    sources = {s[1]["source"] for s in families["dfm_receiver_duplicates"]}
    assert sources == {odd}


async def test_a_worker_whose_loop_does_not_answer_is_down_and_stuck(tmp_path: Path) -> None:
    group = f"dfm-test.{os.getpid()}.{tmp_path.name}"
    asked: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.read(1))
        await asyncio.sleep(30)  # a worker whose event loop is stuck elsewhere never answers

    missed: list[int] = []
    me = Peers(
        Worker(0, 2, group), worker_registry(stored=1, backlog=0), lambda: None, missed.append
    )
    other = await asyncio.start_unix_server(silent, path=Worker(1, 2, group).address(1))
    await me.start()
    try:
        families = parsed((await me.exposition()).decode())
        assert await me.stuck() == [1]
    finally:
        other.close()
        await me.stop()
    up = {s[1]["worker"]: s[2] for s in families["dfm_receiver_worker_up"]}
    assert up == {"0": 1.0, "1": 0.0}
    assert asked == [b"m", b"p"]
    # Each miss is counted, for the chart's alert: the scrape's and the liveness check's.
    assert missed == [1, 1]
    assert await Peers(Worker(0, 1, group), CollectorRegistry(), lambda: None).stuck() == []


async def test_an_answer_that_is_not_a_workers_series_counts_the_worker_down(
    tmp_path: Path,
) -> None:
    group = f"dfm-test.{os.getpid()}.{tmp_path.name}"

    async def wrong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b'[{"name": "x"}]')
        writer.close()

    me = Peers(Worker(0, 2, group), worker_registry(stored=1, backlog=0), lambda: None)
    other = await asyncio.start_unix_server(wrong, path=Worker(1, 2, group).address(1))
    try:
        families = parsed((await me.exposition()).decode())
    finally:
        other.close()
    up = {s[1]["worker"]: s[2] for s in families["dfm_receiver_worker_up"]}
    assert up == {"0": 1.0, "1": 0.0}
    assert {s[1]["worker"] for s in families["dfm_receiver_requests"]} == {"0"}


async def test_readiness_gathers_each_other_workers_own_checks(tmp_path: Path) -> None:
    group = f"dfm-test.{os.getpid()}.{tmp_path.name}"

    async def cannot_store() -> dict[str, bool]:
        return {"database": False, "secrets": True}

    async def not_checks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b'{"database": "yes"}')  # not a boolean: not a worker of this build
        writer.close()

    missed: list[int] = []
    me = Peers(Worker(0, 4, group), CollectorRegistry(), lambda: None, missed.append)
    broken = Peers(Worker(1, 4, group), CollectorRegistry(), lambda: None, ready=cannot_store)
    wrong = await asyncio.start_unix_server(not_checks, path=Worker(2, 4, group).address(2))
    await broken.start()
    try:
        # Worker 3 was never started.
        answers = await me.readiness()
    finally:
        await broken.stop()
        wrong.close()
    assert answers == {1: {"database": False, "secrets": True}, 2: None, 3: None}
    # The workers that did not answer are counted, as for a scrape or a liveness check.
    assert sorted(missed) == [2, 3]


def test_a_readiness_answer_must_be_named_booleans_of_a_sensible_size() -> None:
    assert decode_checks(b'{"database": true, "secrets": false}') == {
        "database": True,
        "secrets": False,
    }
    for answer in (b"", b"[true]", b'{"database": 1}', b"{" + b" " * 5000 + b"}"):
        with pytest.raises(ValueError, match="readiness answer"):
            decode_checks(answer)


async def test_a_peer_whose_database_check_takes_its_whole_allowance_still_answers(
    tmp_path: Path,
) -> None:
    # A database that hangs: the peer's own check gives up after PEER_CHECK_SECONDS and answers
    # "database: false", which must reach the asker as such, not as a worker that did not
    # answer (that would count it down and point the alert at the wrong cause).
    group = f"dfm-test.{os.getpid()}.{tmp_path.name}"

    async def hanging_database() -> dict[str, bool]:
        await asyncio.sleep(PEER_CHECK_SECONDS)
        return {"database": False, "secrets": True}

    missed: list[int] = []
    me = Peers(Worker(0, 2, group), CollectorRegistry(), lambda: None, missed.append)
    slow = Peers(Worker(1, 2, group), CollectorRegistry(), lambda: None, ready=hanging_database)
    await slow.start()
    try:
        answers = await me.readiness()
    finally:
        await slow.stop()
    assert answers == {1: {"database": False, "secrets": True}}
    assert missed == []
