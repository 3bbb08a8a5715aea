"""A Kubernetes API server emulated in memory, served over real HTTP on the loopback interface.

It builds on ``kmock.KubernetesEmulator`` (kopf's sister project) and keeps kmock's pieces that
already fit: the aiohttp test server, request recording (``emu[kmock.action.CREATE]`` & co.),
the API discovery endpoints, the error rendering and the ``emu.objects`` store with full history.

kmock stores objects as plain dicts: no uid, no resourceVersion, no generation, no status
subresource, ``test`` ops fail with HTTP 500, no server-side apply, no PUT, and the watch always
replays every object instead of resuming from a resourceVersion. Kopf depends on all of that, so
the emulator serves every resource request itself (see ``DfmKubernetesEmulator.__call__``) with
the API server semantics kopf and our operator rely on. Only discovery goes through kmock.

The package, by concern:

* ``resources`` — the kinds served, their URLs, minimal CRDs; ``errors`` — the API's errors;
* ``objects`` — the store: create/update/delete, resourceVersion, generation, finalizers;
* ``status`` — the status subresource split; ``schema`` — structural-schema pruning;
* ``apply`` — server-side apply and managedFields; ``patches`` — JSON and merge patches;
* ``watches`` and ``selectors`` — list, watch, resumption, bookmarks;
* ``validation`` — names, labels, Secret data; ``controllers`` — rollouts, garbage collection;
* ``printing`` — Tables for ``kubectl get``; ``emulator`` — the HTTP entry point that ties them;
* ``jobs`` — what a CronJob's run writes (Job, Pod, termination message), for tests to play.

kmock (0.8, pinned in constraints.txt) is used through its public pieces (``kmock.Server``,
``kmock.resource``, ``kmock.action``, ``kmock.Request``, ``kmock.ResourceInfo``,
``kmock.KubernetesError``, the ``objects`` store and request log) and three private methods the
emulator overrides or calls (``RawHandler._handle``, ``KubernetesScaffold._get_resources``,
``_serve_version``/``_render_error``): tests/integration/test_emulator.py checks a kmock upgrade.

It has no knowledge of df-middleware beyond a few resource names for convenience; the project's
tests and ``bench/operator`` both use it, and neither imports the other.

Typical use::

    async with emulated_cluster() as k8s:
        kubeconfig = k8s.write_kubeconfig(tmp_path / "kubeconfig")
        await k8s.create(WEBHOOKSOURCES, {"metadata": {"name": "gh"}, "spec": {...}}, "default")
        await k8s.wait_for(lambda: k8s.get_object(WEBHOOKSOURCES, "default", "gh")...)
"""

from kube_emulator.emulator import DfmKubernetesEmulator, emulated_cluster
from kube_emulator.errors import ApiError
from kube_emulator.patches import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    apply_json_patch,
    merge_patch,
)
from kube_emulator.resources import (
    BACKUPSCHEDULES,
    CRDS,
    CRONJOBS,
    DEPLOYMENTS,
    EVENTS,
    EVENTS_K8S,
    JOBS,
    MANAGEDSECRETS,
    PODS,
    SERVICEMONITORS,
    SYNCSCHEDULES,
    WEBHOOKSOURCES,
    ResourceSpec,
    api_version_of,
    as_resource,
    crd_manifest,
    parse_k8s_path,
)
from kube_emulator.schema import FieldValidation, prune_object

__all__ = [
    "APPLY_PATCH",
    "BACKUPSCHEDULES",
    "CRDS",
    "CRONJOBS",
    "DEPLOYMENTS",
    "EVENTS",
    "EVENTS_K8S",
    "JOBS",
    "JSON_PATCH",
    "MANAGEDSECRETS",
    "MERGE_PATCH",
    "PODS",
    "SERVICEMONITORS",
    "STRATEGIC_MERGE_PATCH",
    "SYNCSCHEDULES",
    "WEBHOOKSOURCES",
    "ApiError",
    "DfmKubernetesEmulator",
    "FieldValidation",
    "ResourceSpec",
    "api_version_of",
    "apply_json_patch",
    "as_resource",
    "crd_manifest",
    "emulated_cluster",
    "merge_patch",
    "parse_k8s_path",
    "prune_object",
]
