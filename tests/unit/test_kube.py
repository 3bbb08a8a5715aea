"""kube.py's errors: what a Ready=False condition and its Event will say."""

from __future__ import annotations

import json

from kubernetes_asyncio.client.exceptions import ApiException

from dfm_operator.kube import Invalid, NotFound, _error


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
