"""Fixtures and helpers to run kopf operators against the emulated Kubernetes API.

Import the fixtures into a conftest.py or a test module to use them::

    from tests.kube.conftest_helpers import k8s, kubeconfig  # noqa: F401

The emulator serves HTTP on the test's event loop, while ``kopf.testing.KopfRunner`` runs the
operator in a thread with its own loop. So tests must be ``async`` and must never block the loop
(no ``time.sleep``, no bare ``with KopfRunner(...)``): use :func:`kopf_running`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner

from kube_emulator import DfmKubernetesEmulator, emulated_cluster

# In-cluster detection (the official client tries it first) must never find a real cluster.
_IN_CLUSTER_ENV = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


@pytest.fixture
async def k8s() -> AsyncIterator[DfmKubernetesEmulator]:
    """A fresh emulated cluster on 127.0.0.1:<random port>, with the ServiceMonitor CRD."""
    async with emulated_cluster() as emulator:
        yield emulator


@pytest.fixture
def kubeconfig(k8s: DfmKubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig for the emulator, made the default for kopf's and the client's logins."""
    path = k8s.write_kubeconfig(tmp_path / "kubeconfig")
    use_kubeconfig(path, monkeypatch)
    return path


def use_kubeconfig(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` the kubeconfig of every login: $KUBECONFIG and the official client's default.

    ``kubernetes.config`` reads $KUBECONFIG once, at import time (and ``import kopf`` already
    imports it to detect the client), so setting the variable in a test is not enough for kopf's
    default ``login_via_client``: its module-level default is patched too. In-cluster variables
    are removed so that the client never finds a real cluster first.
    """
    monkeypatch.setenv("KUBECONFIG", str(path))
    for name in _IN_CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    with contextlib.suppress(ImportError):
        import kubernetes.config
        import kubernetes.config.kube_config

        monkeypatch.setattr(
            kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path)
        )
        monkeypatch.setattr(kubernetes.config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    with contextlib.suppress(ImportError):
        # The async client (the operator's, and kopf's login when it is the one installed).
        import kubernetes_asyncio.config.kube_config

        monkeypatch.setattr(
            kubernetes_asyncio.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path)
        )


@contextlib.asynccontextmanager
async def kopf_running(
    args: Sequence[str],
    *,
    registry: kopf.OperatorRegistry | None = None,
    settings: kopf.OperatorSettings | None = None,
    stop_timeout: float = 10.0,
) -> AsyncIterator[KopfRunner]:
    """Run ``kopf <args>`` in a background thread (KopfRunner) without blocking this loop.

    E.g. ``kopf_running(["run", "-A", "--standalone", "-m", "dfm_operator.main"])``.
    On exit, the operator is stopped and its exceptions are re-raised (KopfRunner's semantics).
    Passing ``registry`` makes it kopf's default registry for the run (kopf does that itself);
    the previous default registry is restored afterwards, and so is the logging setup that
    ``kopf run`` changes process-wide (a root handler bound to the runner's captured stderr).
    """
    previous_registry = kopf.get_default_registry()
    root, aio = logging.getLogger(), logging.getLogger("asyncio")
    previous_logging = (root.handlers[:], root.level, aio.handlers[:], aio.propagate)
    runner = KopfRunner(list(args), registry=registry, settings=settings, timeout=stop_timeout)
    await asyncio.to_thread(runner.__enter__)
    try:
        yield runner
    except BaseException as e:
        await asyncio.to_thread(runner.__exit__, type(e), e, e.__traceback__)
        raise
    else:
        await asyncio.to_thread(runner.__exit__, None, None, None)
    finally:
        kopf.set_default_registry(previous_registry)
        root.handlers[:], root.level, aio.handlers[:], aio.propagate = previous_logging


def login_to(emulator: DfmKubernetesEmulator) -> Callable[..., kopf.ConnectionInfo]:
    """A kopf login handler for the emulator, an alternative to $KUBECONFIG::

    kopf.on.login(registry=registry)(login_to(k8s))
    """

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=emulator.base_url, insecure=True, token=emulator.require_token
        )

    return login
