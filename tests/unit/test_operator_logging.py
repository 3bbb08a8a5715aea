"""`dfm operator -v`: debug logs, but never a Secret's data."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from dfm_operator.kube import Kube
from dfm_operator.main import configure_logging

VALUE = "SUPER-SECRET-VALUE"
SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "s", "namespace": "ns"},
    "data": {"client_secret": base64.b64encode(VALUE.encode()).decode()},
}


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """kopf.configure changes logging process-wide: put it back afterwards."""
    root = logging.getLogger()
    loggers = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], root.level = saved
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)


async def test_verbose_logs_never_carry_secret_data(
    aiohttp_server: Any, restored_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    async def api(_: web.Request) -> web.Response:
        return web.json_response(SECRET)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api)
    server = await aiohttp_server(app)
    configure_logging(log_format="json", verbose=True)
    logging.getLogger("dfm.test").debug("debug lines are on")
    api_client = client.ApiClient(client.Configuration(host=str(server.make_url(""))))
    try:
        kube = Kube(api_client)
        assert await kube.get("v1", "Secret", "ns", "s") == SECRET
        await kube.apply(dict(SECRET))
    finally:
        await api_client.close()
    logged = capfd.readouterr().err
    assert "debug lines are on" in logged, "the control: -v does turn debug logs on"
    assert SECRET["data"]["client_secret"] not in logged
    assert VALUE not in logged
