"""What controllers of a real cluster would do: roll out Deployments, collect garbage."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kmock

from kube_emulator.patches import merge_patch
from kube_emulator.resources import DEPLOYMENTS, JsonDict, as_resource, now


class Controllers:
    """The deployment controller (``deployment_rollout_delay``) and the garbage collector."""

    def _collect_garbage(self, owner_uid: str | None) -> None:
        if not owner_uid:
            return
        dependents = [
            (res, namespace, name)
            for (res, namespace, name), obj in list(self.objects.items())
            if not obj.deleted
            if any(
                ref.get("uid") == owner_uid
                for ref in obj.raw.get("metadata", {}).get("ownerReferences") or []
            )
        ]
        for res, namespace, name in dependents:
            if res in self.resources and self._current(res, namespace, name) is not None:
                self._delete(res, namespace, name)

    def _after_write(self, res: kmock.resource, old: JsonDict | None, new: JsonDict) -> None:
        if self.deployment_rollout_delay is None or res != as_resource(DEPLOYMENTS):
            return
        generation = new["metadata"]["generation"]
        if old is not None and old["metadata"].get("generation") == generation:
            return
        namespace, name = new["metadata"].get("namespace"), new["metadata"]["name"]
        task = asyncio.get_running_loop().create_task(self._roll_out(namespace, name, generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _roll_out(self, namespace: str | None, name: str, generation: int) -> None:
        await asyncio.sleep(self.deployment_rollout_delay or 0)
        res = as_resource(DEPLOYMENTS)
        current = self._current(res, namespace, name)
        if current is None or current["metadata"].get("generation") != generation:
            return
        status = deployment_status(current, available=True)
        self._update(
            res, namespace, name, lambda obj: merge_patch(obj, {"status": status}),
            subresource="status", manager="kube-controller-manager", operation="Update",
        )  # fmt: skip


def deployment_status(
    deployment: Mapping[str, Any], *, available: bool = True, replicas: int | None = None
) -> JsonDict:
    """The ``.status`` the deployment controller reports for a (non-)available Deployment."""
    stamp = now()
    wanted = (
        replicas if replicas is not None else int(deployment.get("spec", {}).get("replicas", 1))
    )
    ready = wanted if available else 0
    name = deployment["metadata"]["name"]
    return {
        "observedGeneration": deployment["metadata"].get("generation", 1),
        "replicas": wanted,
        "updatedReplicas": wanted,
        "readyReplicas": ready,
        "availableReplicas": ready,
        **({} if available else {"unavailableReplicas": wanted}),
        "conditions": [
            {
                "type": "Available",
                "status": "True" if available else "False",
                "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "message": "Deployment has minimum availability."
                if available
                else "Deployment does not have minimum availability.",
                "lastUpdateTime": stamp,
                "lastTransitionTime": stamp,
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                "message": f'ReplicaSet "{name}" has successfully progressed.'
                if available
                else f'ReplicaSet "{name}" is progressing.',
                "lastUpdateTime": stamp,
                "lastTransitionTime": stamp,
            },
        ],
    }
