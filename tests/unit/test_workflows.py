"""The GitHub Actions workflows: valid against GitHub's schema (offline: check-jsonschema ships it)
and doing what the project promises: CI runs the README's test command, e2e runs the kind suite
with the image it built, release publishes the image and the chart on tags.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import dev_tool

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))

JsonDict = dict[str, Any]


def _check_jsonschema() -> str:
    return dev_tool("check-jsonschema", "a dev dependency")


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load(name: str) -> JsonDict:
    workflow: JsonDict = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return workflow


def steps(workflow: JsonDict) -> list[JsonDict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def runs(workflow: JsonDict) -> str:
    return "\n".join(step.get("run", "") for step in steps(workflow))


def test_the_three_workflows_exist() -> None:
    assert {f.name for f in FILES} == {"ci.yml", "e2e.yml", "release.yml"}


def test_workflows_match_githubs_schema() -> None:
    result = validate(*FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    # The control for the test above.
    broken = load("ci.yml")
    del broken["jobs"]["test"]["runs-on"]
    broken["jobs"]["test"]["timeout-minutes"] = "soon"
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    assert validate(path).returncode != 0


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_privilege_timeouts_and_pinned_actions(path: Path) -> None:
    workflow = load(path.name)
    assert workflow["permissions"] == {"contents": "read"}, "write access only per job"
    for name, job in workflow["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 60, name


# `uses: owner/repo@<commit> # vX.Y.Z`: a tag can be moved, a commit cannot. The comment is what
# Dependabot (.github/dependabot.yml) reads and rewrites when it bumps a pin.
PINNED = re.compile(r"uses: ([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # (v\d+\.\d+\.\d+)")


def pins(text: str) -> list[tuple[str, str, str]]:
    """(action, commit, version) of every `uses:` line; an unpinned one fails the test."""
    found = []
    for line in text.splitlines():
        if re.match(r"\s*(- )?uses:", line):
            match = PINNED.search(line)
            assert match, f"not pinned to a commit with its version: {line.strip()}"
            found.append((match.group(1), match.group(2), match.group(3)))
    return found


def test_actions_are_pinned_to_commits_consistently() -> None:
    seen: dict[str, tuple[str, str]] = {}
    for path in FILES:
        for action, commit, version in pins(path.read_text()):
            assert seen.setdefault(action, (commit, version)) == (commit, version), (
                f"{path.name}: {action} pinned to two different commits"
            )
    assert "actions/checkout" in seen


@pytest.mark.parametrize(
    "line",
    [
        "      - uses: actions/checkout@v4",
        "      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683",
        "        uses: docker/build-push-action@main # v6.19.2",
    ],
)
def test_pin_check_refuses_tags_and_bare_commits(line: str) -> None:
    with pytest.raises(AssertionError, match="not pinned"):
        pins(line)


def test_dependabot_keeps_the_pins_fresh() -> None:
    path = ROOT / ".github" / "dependabot.yml"
    result = subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.dependabot", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ecosystems = {u["package-ecosystem"] for u in yaml.safe_load(path.read_text())["updates"]}
    assert "github-actions" in ecosystems


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    workflow = load("ci.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    assert "./.ci/run" in runs(workflow)
    assert "hadolint Dockerfile" in runs(workflow)
    assert "helm lint --strict charts/df-middleware" in runs(workflow)
    assert "--builtin-schema vendor.github-workflows" in runs(workflow)


def test_e2e_builds_loads_and_tests_the_same_image() -> None:
    workflow = load("e2e.yml")
    image = workflow["env"]["DFM_E2E_IMAGE"]
    cluster = workflow["env"]["KIND_CLUSTER"]
    assert workflow["env"]["DFM_E2E_KIND_CLUSTER"] == cluster
    all_steps = steps(workflow)
    kind = [s for s in all_steps if s.get("uses", "").startswith("helm/kind-action@")]
    assert kind
    assert kind[0]["with"]["cluster_name"] == "${{ env.KIND_CLUSTER }}"
    build = [s for s in all_steps if s.get("uses", "").startswith("docker/build-push-action@")]
    assert build
    assert build[0]["with"]["tags"] == "${{ env.DFM_E2E_IMAGE }}"
    assert build[0]["with"]["load"] is True
    assert 'kind load docker-image "$DFM_E2E_IMAGE" --name "$KIND_CLUSTER"' in runs(workflow)
    assert "pytest tests/e2e -m e2e" in runs(workflow)
    assert image.endswith(":e2e"), "a fixed tag: IfNotPresent then uses the loaded image"
    # The suite's clean-up would otherwise remove what the Diagnostics step looks at.
    assert workflow["env"]["DFM_E2E_KEEP"] == "1"
    diagnostics = [s for s in all_steps if s.get("name") == "Diagnostics"]
    assert diagnostics
    assert diagnostics[0]["if"] == "failure()"
    order = [s.get("name", s.get("uses", "")) for s in all_steps]
    assert order.index("Load the image into kind") < order.index("End-to-end tests")
    # Our pinned kubectl must come before kind-action's on PATH: added to $GITHUB_PATH after it.
    tools = next(i for i, s in enumerate(all_steps) if "fetch-tools.sh" in s.get("run", ""))
    assert all_steps.index(kind[0]) < tools


def test_release_publishes_image_and_chart_on_tags() -> None:
    workflow = load("release.yml")
    assert set(workflow["on"]) == {"push"}
    assert workflow["on"]["push"]["tags"]
    jobs = workflow["jobs"]
    assert set(jobs["chart"]["needs"]) == {"check", "image"}
    for publisher in ("image", "chart"):
        assert jobs[publisher]["permissions"]["packages"] == "write"
    pushed = [s for s in steps(workflow) if s.get("uses", "").startswith("docker/build-push-")]
    assert pushed[0]["with"]["push"] is True
    assert "PYTHON_IMAGE=" in pushed[0]["with"]["build-args"]  # the base image's digest
    script = runs(workflow)
    assert "helm package charts/df-middleware" in script
    assert re.search(r"helm push \S+ \"oci://ghcr\.io/", script)
    for checked in ("pyproject.toml", "Chart.yaml", "values.yaml"):
        assert checked in script
