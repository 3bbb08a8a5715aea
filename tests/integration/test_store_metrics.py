"""What the store's metrics say about its commits, against a real PostgreSQL."""

from __future__ import annotations

import asyncio

from tests.stores import SOURCE, event
from webhook_server.config import DatabaseConfig
from webhook_server.metrics import ReceiverMetrics
from webhook_server.store import Store


def _sample(metrics: ReceiverMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


async def test_each_commit_is_timed_beside_its_size(database_url: str) -> None:
    metrics = ReceiverMetrics()
    store = Store(DatabaseConfig(url=database_url), [SOURCE], metrics)
    await store.start()
    try:
        assert await store.wait_ready(30)
        for number in range(3):  # one at a time: three commits
            assert await store.submit(event(f"one-{number}")) is True
        assert await asyncio.gather(*(store.submit(event(f"many-{n}")) for n in range(20)))
        commits = _sample(metrics, "dfm_receiver_store_commit_duration_seconds_count")
        assert commits == _sample(metrics, "dfm_receiver_store_batch_size_count")
        assert 4 <= commits <= 23
        # Each one a real round trip and commit: more than nothing, less than the test.
        seconds = _sample(metrics, "dfm_receiver_store_commit_duration_seconds_sum")
        assert 0 < seconds < 30
        assert _sample(metrics, "dfm_receiver_store_batch_size_sum") == 23
    finally:
        await store.close()
