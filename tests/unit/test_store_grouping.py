"""How the store's writer groups events into commits beside a commit in flight.

The database is replaced by a fake ``_insert`` whose commits end when the test says so: what is
checked is which events go into which commit, and when a commit starts, not the storage (that is
tested against PostgreSQL in tests/integration).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from webhook_server import store as store_module
from webhook_server.config import DatabaseConfig
from webhook_server.metrics import ReceiverMetrics
from webhook_server.store import Event, Store


class FakeDatabase:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.more = asyncio.Event()

    async def insert(self, events: list[Event]) -> tuple[set[tuple[str, str, str]], set[object]]:
        self.batches.append([e.event_id for e in events])
        self.more.set()
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return {(e.source, e.subject, e.event_id) for e in events}, set()

    async def started(self, count: int) -> None:
        while len(self.batches) < count:
            self.more.clear()
            await self.more.wait()


def _event(event_id: str) -> Event:
    return Event(
        source="ns/a",
        event_id=event_id,
        event_type=None,
        received_at=datetime.now(UTC),
        request_id="r",
        payload=b"{}",
        headers={},
    )


@pytest.fixture
async def writer() -> AsyncIterator[tuple[Store, FakeDatabase]]:
    store = Store(DatabaseConfig(url="postgresql://unused/db"), [], ReceiverMetrics())
    database = FakeDatabase()
    store._insert = database.insert  # type: ignore[method-assign]
    store._ready.set()
    task = asyncio.create_task(store._writer_loop())
    yield store, database
    task.cancel()
    for gate in database.gates:
        gate.set()


async def _submit(store: Store, *ids: str) -> list[asyncio.Task[bool]]:
    tasks = [asyncio.create_task(store.submit(_event(i))) for i in ids]
    await asyncio.sleep(0)
    return tasks


async def test_beside_a_commit_in_flight_the_next_waits_for_as_many_events(
    writer: tuple[Store, FakeDatabase], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stall bound (5 ms of wall time from the first commit's start) out of the way: a loaded
    # machine can pass it between e4 and e5, and what is tested here is the wait for the events.
    monkeypatch.setattr(store_module, "STALL_SECONDS", 3600.0)
    store, database = writer
    first = await _submit(store, "e1", "e2", "e3")
    await database.started(1)
    second = await _submit(store, "e4")
    await asyncio.sleep(0)
    second += await _submit(store, "e5", "e6")
    await database.started(2)
    # The second commit started while the first was still in flight, with three events, not one.
    assert database.batches == [["e1", "e2", "e3"], ["e4", "e5", "e6"]]
    assert not any(t.done() for t in first + second)
    for gate in database.gates:
        gate.set()
    assert await asyncio.gather(*first, *second) == [True] * 6


async def test_a_slow_commit_does_not_hold_the_next_batch_back(
    writer: tuple[Store, FakeDatabase],
) -> None:
    store, database = writer
    first = await _submit(store, "e1", "e2", "e3")
    await database.started(1)
    # One event only, the first commit never ends: the second starts anyway (after the stall
    # bound), and is acknowledged on its own commit.
    (lone,) = await _submit(store, "e4")
    await asyncio.wait_for(database.started(2), timeout=10)
    assert database.batches[1] == ["e4"]
    database.gates[1].set()
    assert await lone is True
    assert not any(t.done() for t in first)


async def test_with_nothing_in_flight_a_batch_starts_at_once(
    writer: tuple[Store, FakeDatabase],
) -> None:
    store, database = writer
    (only,) = await _submit(store, "e1")
    await asyncio.wait_for(database.started(1), timeout=10)
    assert database.batches == [["e1"]]
    database.gates[0].set()
    assert await only is True


async def test_an_answer_is_given_in_the_turn_of_the_loop_that_sees_its_commit(
    writer: tuple[Store, FakeDatabase],
) -> None:
    # Before: the one-pass route answered from the future's done callback, which asyncio runs
    # on a later turn of the loop, behind everything already due (under load, a loop's worth of
    # other requests). Now the writer calls it as soon as the commit returns.
    store, database = writer
    loop = asyncio.get_running_loop()
    order: list[str] = []
    later = asyncio.Event()
    insert = store._insert

    def a_later_turn() -> None:
        order.append("a later turn")
        later.set()

    async def insert_then_something_else_is_due(
        events: list[Event],
    ) -> tuple[set[tuple[str, str, str]], set[object]]:
        result = await insert(events)
        loop.call_soon(a_later_turn)
        return result

    store._insert = insert_then_something_else_is_due  # type: ignore[method-assign]
    future = store.enqueue(_event("e1"), lambda done: order.append(f"answered {done.result()}"))
    await database.started(1)
    database.gates[0].set()
    async with asyncio.timeout(10):
        await later.wait()
    assert order == ["answered True", "a later turn"]
    assert future.result() is True


async def test_a_deadline_answers_once_and_the_commit_after_it_does_not_answer_again() -> None:
    config = DatabaseConfig(url="postgresql://unused/db", commit_timeout_seconds=0.05)
    store = Store(config, [], ReceiverMetrics(), sweep_interval_seconds=0.01)
    database = FakeDatabase()
    store._insert = database.insert  # type: ignore[method-assign]
    store._ready.set()
    tasks = [asyncio.create_task(store._writer_loop()), asyncio.create_task(store._sweep_loop())]
    answers: list[str] = []
    answered = asyncio.Event()

    def answer(done: asyncio.Future[bool]) -> None:
        answers.append(type(done.exception()).__name__)
        answered.set()

    try:
        future = store.enqueue(_event("e1"), answer)
        await database.started(1)
        async with asyncio.timeout(10):
            await answered.wait()
        assert answers == ["CommitTimeout"]
        # The commit ends after the deadline: stored, but the request was already answered.
        database.gates[0].set()
        async with asyncio.timeout(10):
            await store._queue.join()
        assert answers == ["CommitTimeout"]
        assert isinstance(future.exception(), store_module.CommitTimeout)
    finally:
        for task in tasks:
            task.cancel()
        for gate in database.gates:
            gate.set()


async def _writers(concurrency: int) -> tuple[Store, FakeDatabase, asyncio.Task[None]]:
    config = DatabaseConfig(url="postgresql://unused/db", writer_concurrency=concurrency)
    store = Store(config, [], ReceiverMetrics())
    database = FakeDatabase()
    store._insert = database.insert  # type: ignore[method-assign]
    store._ready.set()
    return store, database, asyncio.create_task(store._writer_loop())


@pytest.mark.parametrize("concurrency", [2, 3, 4])
async def test_events_queued_beside_a_commit_form_one_batch_however_many_writers_are_free(
    concurrency: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found in review: every free writer took an event off the queue before waiting beside the
    # commit in flight, so the events queued meanwhile were split into batches of one.
    monkeypatch.setattr(store_module, "STALL_SECONDS", 3600.0)
    store, database, task = await _writers(concurrency)
    try:
        tasks = await _submit(store, "e1", "e2", "e3", "e4")
        await database.started(1)
        for number in range(5, 8):  # one at a time, fewer than the commit in flight holds
            tasks += await _submit(store, f"e{number}")
            for _ in range(3):
                await asyncio.sleep(0)
        database.gates[0].set()  # the first commit ends: the events waiting go together
        await database.started(2)
        for gate in database.gates:
            gate.set()
        assert await asyncio.gather(*tasks) == [True] * 7
        assert database.batches == [["e1", "e2", "e3", "e4"], ["e5", "e6", "e7"]]
    finally:
        task.cancel()
        for gate in database.gates:
            gate.set()


async def test_a_failure_on_a_commits_error_path_costs_its_batch_and_not_the_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found in review: a writer is one long-lived task, so anything escaping a batch (here the
    # log line of a failed commit, refused by stdout) ended it, and every later request waited
    # out its deadline.
    store, database, task = await _writers(1)
    failing = [True]
    insert = database.insert

    async def insert_failing_once(
        events: list[Event],
    ) -> tuple[set[tuple[str, str, str]], set[object]]:
        if failing.pop() if failing else False:
            raise ConnectionResetError("database restarted")
        return await insert(events)

    def refused(*args: object, **kwargs: object) -> None:
        raise BlockingIOError("stdout is full")

    store._insert = insert_failing_once  # type: ignore[method-assign]
    monkeypatch.setattr(store_module.log, "error", refused)
    try:
        with pytest.raises(store_module.StoreUnavailable):
            async with asyncio.timeout(10):
                await store.submit(_event("lost-to-the-restart"))
        (after,) = await _submit(store, "after")
        await asyncio.wait_for(database.started(1), timeout=10)
        database.gates[0].set()
        async with asyncio.timeout(10):
            assert await after is True
        assert not task.done()
    finally:
        task.cancel()
        for gate in database.gates:
            gate.set()


async def test_beside_a_commit_the_next_batch_waits_for_no_more_events_than_may_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found in review: with maxQueuedEvents 10 and six events in a commit, the writer waited for
    # six more beside it, which the cap never lets in: the four queued sat uncommitted (up to
    # the stall bound) while new requests were refused as overloaded.
    monkeypatch.setattr(store_module, "STALL_SECONDS", 3600.0)
    config = DatabaseConfig(url="postgresql://unused/db", max_queued_events=10)
    store = Store(config, [], ReceiverMetrics())
    database = FakeDatabase()
    store._insert = database.insert  # type: ignore[method-assign]
    store._ready.set()
    task = asyncio.create_task(store._writer_loop())
    try:
        for number in range(6):
            store.enqueue(_event(f"a{number}"))
        await asyncio.wait_for(database.started(1), timeout=10)
        for number in range(4):
            store.enqueue(_event(f"b{number}"))
        await asyncio.wait_for(database.started(2), timeout=10)
        assert database.batches[1] == ["b0", "b1", "b2", "b3"]
    finally:
        task.cancel()
        for gate in database.gates:
            gate.set()
