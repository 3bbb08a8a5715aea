"""A source's header filter decides once per name and stays bounded, with the same answers."""

from __future__ import annotations

from webhook_server.app import HeaderFilter, stored_headers


def test_a_reused_filter_stores_what_a_fresh_one_does_in_any_spelling() -> None:
    keep = HeaderFilter({"x-custom-signature-ts"})
    requests = [
        {"X-GitHub-Event": "push", "Authorization": "Bearer t", "X-Hub-Signature-256": "s"},
        {"x-github-event": "ping", "AUTHORIZATION": "Bearer u", "X-Custom-Signature-TS": "1"},
        {"X_Api_Key": "k", "Idempotency-Key": "i-1", "Content-Type": "application/json"},
    ]
    for _ in range(2):  # the second pass answers from the remembered decisions
        for headers in requests:
            assert keep(headers) == stored_headers(headers, {"x-custom-signature-ts"})
    assert keep(requests[0]) == {"x-github-event": "push"}
    assert keep(requests[1]) == {"x-github-event": "ping"}
    assert keep(requests[2]) == {"idempotency-key": "i-1", "content-type": "application/json"}


def test_names_a_client_makes_up_are_not_remembered_past_the_bound() -> None:
    keep = HeaderFilter(set())
    for number in range(HeaderFilter.MAX_NAMES + 500):
        assert keep({f"X-Made-Up-{number}": "v"}) == {f"x-made-up-{number}": "v"}
    long_name = "X-" + "a" * 5000
    assert keep({long_name: "v", "X-Token": "t"}) == {long_name.lower(): "v"}
    assert len(keep._decided) == HeaderFilter.MAX_NAMES
