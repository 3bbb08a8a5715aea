"""A WebhookSource with `workers: 2`, from the chart's operator to a receiver pod that really runs
(the kubelet player): the pod becomes Ready, deliveries signed as GitHub signs them, each on a
connection of its own, are all stored, and the pod's /metrics answers for both workers.

The kernel spreads connections over the processes that share the port (SO_REUSEPORT hashes each
connection's addresses); every delivery here comes through a connection of its own, from a new
source port, so with 24 of them the chance that one worker gets none is 2 in 2^24.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.realkube.cluster import Api, JsonDict, wait_for
from tests.realkube.kubelet import KubeletPlayer
from tests.realkube.running import DFM, OperatorProcess, path_of, wait_ready
from tests.realkube.test_helm_operator import secret, stored_events

pytestmark = pytest.mark.timeout(600)

DELIVERIES = 24
SIGNING_SECRET = "it's a secret to everybody"  # GitHub's documented example secret


def deliver(port: int, path: str, delivery: str) -> int:
    """One GitHub delivery on a new connection (closed after it): its status."""
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": delivery}).encode()
    digest = hmac.new(SIGNING_SECRET.encode(), body, hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "ping",
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": f"sha256={digest}",
                "Connection": "close",
            },
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The pod's /metrics: each sample name -> its (labels, value)s."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode()
        assert response.status == 200, text[:500]
    finally:
        conn.close()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def test_a_pod_of_two_workers_stores_every_delivery_and_reports_both(
    admin: Api,
    operator: OperatorProcess,
    namespace: str,
    database: str,
    tmp_path: Path,
) -> None:
    ns = namespace
    admin.create(path_of("secrets", ns, group="v1"), secret(ns, "dfm-events-db", url=database))
    admin.create(path_of("secrets", ns, group="v1"), secret(ns, "gh", secret=SIGNING_SECRET))
    source: JsonDict = {
        "apiVersion": DFM,
        "kind": "WebhookSource",
        "metadata": {"name": "github", "namespace": ns},
        "spec": {
            "provider": "github",
            "verification": {"secretRef": {"name": "gh", "key": "secret"}},
            "workers": 2,
        },
    }
    admin.create(path_of("webhooksources", ns), source)
    player = KubeletPlayer(
        admin, ns, tmp_path / "kubelet", services=[urlsplit(database).port or 5432]
    ).start()
    try:
        obj = wait_ready(admin, "webhooksources", ns, "github", "True", "Available", timeout=240)
        assert obj["status"]["readyReplicas"] == 1
        [pod] = player.running()
        deployment = admin.get(path_of("deployments", ns, "github-receiver", group="apps/v1"))
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"] == {"memory": "640Mi"}, "sized for two workers"
        port = player.port(pod, 8080)

        deliveries = [f"d-{i:02d}" for i in range(DELIVERIES)]
        statuses = {d: deliver(port, f"/hooks/{ns}/github", d) for d in deliveries}
        log = player.log_of(pod)[-3000:]
        assert set(statuses.values()) == {200}, f"{statuses}\nreceiver log:\n{log}"
        assert stored_events(database) == [(f"{ns}/github", d) for d in deliveries]

        metrics = scrape(port)
        assert [value for _, value in metrics["dfm_receiver_workers"]] == [2.0]
        up = {labels["worker"]: value for labels, value in metrics["dfm_receiver_worker_up"]}
        assert up == {"0": 1.0, "1": 1.0}
        stored = {
            labels["worker"]: value
            for labels, value in metrics["dfm_receiver_requests_total"]
            if labels.get("outcome") == "stored"
        }
        assert set(stored) == {"0", "1"}, f"each worker stored some: {stored}"
        assert sum(stored.values()) == DELIVERIES
        assert min(stored.values()) >= 1
        assert player.running() == [pod], "both workers still serving, the pod not restarted"

        # Scaled to zero: the pod is deleted, SIGTERM reaches the supervisor, both workers drain
        # and it exits 0; nothing of the pod keeps running.
        uid = admin.get(path_of("pods", ns, pod, group="v1"))["metadata"]["uid"]
        admin.merge_patch(path_of("webhooksources", ns, "github"), {"spec": {"replicas": 0}})
        wait_for(
            "the pod stopped",
            lambda: player.running() == [] and player.stopping() == [],
            timeout=120,
        )
        said = [
            json.loads(line)
            for line in (tmp_path / "kubelet" / uid / "receiver.log").read_text().splitlines()
            if line.startswith("{")
        ]
        stopped = [line for line in said if line.get("event") == "workers stopped"]
        assert [line["exit_code"] for line in stopped] == [0], said[-5:]
        # Each worker served on for the operator's shutdown delay before it stopped accepting.
        lingered = [
            (line["worker"], line["seconds"])
            for line in said
            if str(line.get("event")).startswith("stop signal: serving on")
        ]
        assert sorted(lingered) == [(0, 5), (1, 5)], said[-8:]
        assert player.errors == []
    finally:
        player.stop()
