"""What a condition and its Event say: kube.py's errors, and Ready announced once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from dfm_operator.api import WebhookSourceStatus
from dfm_operator.conditions import ConditionUpdate
from dfm_operator.kernel import Context, OperatorMetrics, write_status
from dfm_operator.kube import Invalid, NotFound, _error
from dfm_operator.settings import OperatorSettings


def api_exception(status: int, reason: str, message: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


def test_the_api_servers_explanation_is_kept() -> None:
    exc = api_exception(422, "Unprocessable Entity", 'Service "x" is invalid: metadata.name: ...')
    error = _error(exc, "apply Service payments/x-receiver")
    assert isinstance(error, Invalid)
    assert str(error) == (
        "apply Service payments/x-receiver: 422 Unprocessable Entity: "
        'Service "x" is invalid: metadata.name: ...'
    )


def test_a_long_explanation_is_cut_and_a_missing_one_is_fine() -> None:
    long = _error(api_exception(422, "Unprocessable Entity", "v" * 5000), "apply Ingress a/b")
    assert len(str(long)) < 400
    bare = ApiException(status=404, reason="Not Found")
    assert str(_error(bare, "get Deployment a/b")) == "get Deployment a/b: 404 Not Found"
    assert isinstance(_error(bare, "get Deployment a/b"), NotFound)


def test_nothing_the_server_says_about_a_secret_is_repeated() -> None:
    exc = api_exception(422, "Unprocessable Entity", 'data[token]: Invalid value: "s3cr3t"')
    assert "s3cr3t" not in str(_error(exc, "apply Secret payments/signing"))


async def test_ready_is_announced_once_even_when_handed_a_stale_body() -> None:
    # kopf may run a handler again with a body older than our own status write: its status still
    # says not Ready, but the transition was announced already.
    class StatusSink:
        async def patch_status(self, *_: Any) -> None:
            return None

    ctx = Context(
        kube=StatusSink(),  # type: ignore[arg-type]
        settings=OperatorSettings(),
        metrics=OperatorMetrics(),
        clock=lambda: datetime(2026, 11, 27, tzinfo=UTC),
    )
    stale = {"metadata": {"namespace": "ns", "name": "s", "uid": "u-1", "generation": 1}}
    ready = [ConditionUpdate("Ready", True, "Available", "all replicas available")]
    events: list[tuple[str, str, str]] = []

    def emit(*event: str) -> None:
        events.append(event)

    for _ in range(2):
        assert await write_status(ctx, "WebhookSource", stale, ready, WebhookSourceStatus(), emit)
    assert [e[:2] for e in events] == [("Normal", "Ready")]

    # A new generation that becomes Ready again is news.
    newer = {"metadata": {**stale["metadata"], "generation": 2}}
    await write_status(ctx, "WebhookSource", newer, ready, WebhookSourceStatus(), emit)
    assert len(events) == 2
