"""The emulator: kmock's Kubernetes emulator serving every resource request itself.

See the package docstring for what it adds to kmock; each concern lives in its own module and is
mixed in here: the object store (``objects``), server-side apply (``apply``), list and watch
(``watches``), built-in validation (``validation``), controllers (``controllers``). Schema pruning
(``schema``), the status split (``status``) and printing (``printing``) are plain functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import kmock
import yaml
from multidict import CIMultiDict

from kube_emulator import jobs
from kube_emulator.apply import ServerSideApply
from kube_emulator.controllers import Controllers, deployment_status
from kube_emulator.errors import ApiError, api_error
from kube_emulator.objects import ObjectStore
from kube_emulator.patches import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    apply_json_patch,
    merge_patch,
)
from kube_emulator.printing import table
from kube_emulator.resources import (
    ALL_VERBS,
    BUILTIN_RESOURCES,
    CRD_RESOURCES,
    CRDS,
    CRONJOBS,
    DEPLOYMENTS,
    EVENTS,
    EVENTS_K8S,
    JOBS,
    PODS,
    SERVICEMONITOR_RESOURCE,
    SERVICEMONITORS,
    JsonDict,
    K8sPath,
    ResourceSpec,
    api_version_of,
    as_resource,
    crd_manifest,
    parse_k8s_path,
)
from kube_emulator.schema import FieldValidation
from kube_emulator.validation import Validation
from kube_emulator.watches import Watch, Watches

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass
class Fault:
    verb: str
    resource: kmock.resource | None
    name: str | None
    status: int
    message: str
    times: int | None


@attrs.define(kw_only=True)
class DfmKubernetesEmulator(
    ObjectStore, ServerSideApply, Watches, Validation, Controllers, kmock.KubernetesEmulator
):
    """kmock's Kubernetes emulator with the API-server semantics that kopf relies on.

    Options:

    * ``servicemonitors`` — whether the monitoring.coreos.com ServiceMonitor CRD is installed
      (toggle later with :meth:`set_servicemonitors`).
    * ``require_token`` — if set, requests without ``Authorization: Bearer <token>`` get 401.
    * ``garbage_collection`` — delete dependents (by ``ownerReferences[].uid``) of deleted owners.
    * ``validate`` — reject invalid names, labels and ConfigMap/Secret keys with 422 as K8s does.
    * ``deployment_rollout_delay`` — if set, a Deployment becomes available this many seconds
      after each spec change, as if the deployment controller and the kubelets were there.
    """

    servicemonitors: bool = True
    require_token: str | None = None
    garbage_collection: bool = True
    validate: bool = True
    deployment_rollout_delay: float | None = None
    watch_log_size: int = 100_000

    _rv: int = attrs.field(default=0, init=False)
    _crd_resources: set[kmock.resource] = attrs.field(factory=set, init=False)
    # Each CRD version's openAPIV3Schema: what a write of its objects is pruned by.
    _schemas: dict[kmock.resource, Mapping[str, Any]] = attrs.field(factory=dict, init=False)
    # The current request's fieldValidation and the Warning headers its answer carries.
    _field_validation: str = attrs.field(default=FieldValidation.WARN, init=False)
    _warnings: list[str] = attrs.field(factory=list, init=False)
    _log: deque[tuple[int, kmock.resource, JsonDict]] = attrs.field(
        default=attrs.Factory(lambda self: deque(maxlen=self.watch_log_size), takes_self=True),
        init=False,
    )
    _log_floor: int = attrs.field(default=0, init=False)
    _watches: set[Watch] = attrs.field(factory=set, init=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _faults: list[Fault] = attrs.field(factory=list, init=False)
    _tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    failures: list[Exception] = attrs.field(factory=list, init=False)  # emulator bugs (HTTP 500)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for spec in BUILTIN_RESOURCES:
            self.declare_resource(spec)
        for spec in CRD_RESOURCES:
            self.install_crd(crd_manifest(spec))
        if self.servicemonitors:
            self.install_crd(crd_manifest(SERVICEMONITOR_RESOURCE))
        for namespace in ("default", "kube-system"):
            self._upsert(
                kmock.resource("", "v1", "namespaces"), None, {"metadata": {"name": namespace}}
            )

    # ----------------------------------------------------------------- resources & CRDs

    def declare_resource(self, spec: ResourceSpec) -> kmock.resource:
        """Serve a resource (discovery + CRUD/watch) without a CRD object for it."""
        res = as_resource(spec.gvp)
        self.resources[res] = kmock.ResourceInfo(
            kind=spec.kind,
            singular=spec.singular or spec.kind.lower(),
            namespaced=spec.namespaced,
            verbs=ALL_VERBS,
            shortnames=set(spec.shortnames),
            categories=set(spec.categories),
            subresources={"status"} if spec.status else set(),
        )
        return res

    def install_crd(self, manifest: Mapping[str, Any]) -> JsonDict:
        """Install a CustomResourceDefinition (e.g. one from ``dfm_operator.crds``).

        Its served versions appear in discovery, and the CRD object itself is stored, so that
        watchers of CRDs (kopf does watch them) see it ADDED/MODIFIED and rescan the group.
        """
        spec = manifest["spec"]
        names = spec["names"]
        top_subresources = spec.get("subresources") or {}
        for version in spec.get("versions") or [{"name": spec.get("version")}]:
            if not version.get("served", True):
                continue
            subresources = version.get("subresources") or top_subresources
            res = self.declare_resource(
                ResourceSpec(
                    f"{spec['group']}/{version['name']}/{names['plural']}",
                    names["kind"],
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    status="status" in subresources,
                    singular=names.get("singular"),
                    shortnames=tuple(names.get("shortNames") or ()),
                    categories=tuple(names.get("categories") or ()),
                )
            )
            self._crd_resources.add(res)
            schema = (version.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema")
            if schema is not None:
                self._schemas[res] = copy.deepcopy(schema)
            else:
                self._schemas.pop(res, None)
        body = copy.deepcopy(dict(manifest))
        body["status"] = {
            "acceptedNames": copy.deepcopy(names),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
            ],
            "storedVersions": [v["name"] for v in spec.get("versions") or []],
        }
        return self._upsert(as_resource(CRDS), None, body)

    def uninstall_crd(self, name: str) -> None:
        """Remove a CRD by its name (``<plural>.<group>``) with all its objects, as K8s does."""
        crds = as_resource(CRDS)
        current = self._current(crds, None, name)
        if current is None:
            return
        spec = current["spec"]
        for version in spec.get("versions") or []:
            res = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
            for obj in list(self._iter_current(res, None)):
                meta = obj["metadata"]
                self._finally_delete(res, meta.get("namespace"), meta["name"], obj)
            self.resources.pop(res, None)
            self._crd_resources.discard(res)
            self._schemas.pop(res, None)
        self._finally_delete(crds, None, name, current)

    def set_servicemonitors(self, installed: bool) -> None:
        """Install or uninstall the ServiceMonitor CRD (kopf notices it via the CRD watch)."""
        self.servicemonitors = installed
        if installed:
            self.install_crd(crd_manifest(SERVICEMONITOR_RESOURCE))
        else:
            self.uninstall_crd(f"servicemonitors.{as_resource(SERVICEMONITORS).group}")

    # ----------------------------------------------------------------- test-side accessors

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return str(self.url).rstrip("/")

    def path_for(
        self,
        gvp: str | kmock.resource,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        res = as_resource(gvp)
        parts = ["/api" if not res.group else "/apis", api_version_of(res)]
        namespaced = self.resources[res].namespaced if res in self.resources else True
        if namespace is not None and namespaced is not False:
            parts += ["namespaces", namespace]
        parts.append(str(res.plural))
        parts += [part for part in (name, subresource) if part]
        return "/".join(parts)

    def get_object(
        self, gvp: str | kmock.resource, namespace: str | None, name: str
    ) -> JsonDict | None:
        """The current stored state of an object (a deep copy), or None if absent."""
        obj = self._current(as_resource(gvp), namespace, name)
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(
        self, gvp: str | kmock.resource, namespace: str | None = None
    ) -> list[JsonDict]:
        """All current objects of a resource (deep copies), optionally of one namespace."""
        res = as_resource(gvp)
        return [copy.deepcopy(obj) for obj in self._iter_current(res, namespace)]

    def events(
        self,
        namespace: str | None = None,
        *,
        name: str | None = None,
        kind: str | None = None,
        reason: str | None = None,
    ) -> list[JsonDict]:
        """Posted Events (core v1 and events.k8s.io/v1), filtered by the object they are about."""
        result: list[JsonDict] = []
        for gvp in (EVENTS, EVENTS_K8S):
            for event in self.list_objects(gvp, namespace):
                about = event.get("involvedObject") or event.get("regarding") or {}
                if name is not None and about.get("name") != name:
                    continue
                if kind is not None and about.get("kind") != kind:
                    continue
                if reason is not None and event.get("reason") != reason:
                    continue
                result.append(event)
        return result

    async def wait_for(
        self, predicate: Callable[[], T | None], *, seconds: float = 10.0, what: str = "a condition"
    ) -> T:
        """Wait until ``predicate()`` is truthy and return its value.

        Re-checked on every write to the state, and at least every 0.5 s (for predicates about
        something else, e.g. the recorded requests: ``any(r.resource == ... for r in k8s)``).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            changed = self._changed
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"Timed out after {seconds}s waiting for {what}.")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(remaining, 0.5))

    def write_kubeconfig(
        self, path: str | Path, *, token: str | None = None, namespace: str = "default"
    ) -> Path:
        """Write a kubeconfig pointing at this emulator (plain http, a bearer token)."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "dfm-emulator", "cluster": {"server": self.base_url}}],
            "users": [
                {
                    "name": "dfm-emulator",
                    "user": {"token": token or self.require_token or "dummy-token"},
                }
            ],
            "contexts": [
                {
                    "name": "dfm-emulator",
                    "context": {
                        "cluster": "dfm-emulator",
                        "user": "dfm-emulator",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "dfm-emulator",
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    def inject_fault(
        self,
        verb: str,
        gvp: str | kmock.resource | None = None,
        *,
        name: str | None = None,
        status: int = 500,
        message: str = "Injected fault",
        times: int | None = 1,
    ) -> None:
        """Fail the next ``times`` matching requests (verb: get/list/watch/create/update/patch/
        delete/apply) with ``status`` before they touch the state. ``times=None``: forever."""
        res = as_resource(gvp) if gvp is not None else None
        self._faults.append(Fault(verb, res, name, status, message, times))

    def clear_faults(self) -> None:
        self._faults.clear()

    # ----------------------------------------------------------------- HTTP helpers (via the API)

    async def api_request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send one request through the real HTTP server; return (status, decoded JSON body)."""
        data = None
        if body is not None:
            data = body if isinstance(body, str | bytes) else json.dumps(body)
        headers = {"Content-Type": content_type}
        if self.require_token:
            headers["Authorization"] = f"Bearer {self.require_token}"
        async with self.request(method, path, data=data, headers=headers, params=params) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text

    async def _checked(self, method: str, path: str, **kwargs: Any) -> JsonDict:
        status, payload = await self.api_request(method, path, **kwargs)
        if not 200 <= status < 300:
            raise ApiError(status, payload)
        return dict(payload)

    async def create(
        self, gvp: str | kmock.resource, body: Mapping[str, Any], namespace: str | None = None
    ) -> JsonDict:
        namespace = namespace or body.get("metadata", {}).get("namespace")
        return await self._checked("POST", self.path_for(gvp, namespace), body=dict(body))

    async def patch_object(
        self,
        gvp: str | kmock.resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> JsonDict:
        path = self.path_for(gvp, namespace, name, subresource)
        return await self._checked("PATCH", path, body=patch, content_type=content_type)

    async def apply(
        self,
        gvp: str | kmock.resource,
        body: Mapping[str, Any],
        namespace: str | None = None,
        *,
        field_manager: str = "test",
        subresource: str | None = None,
    ) -> JsonDict:
        """Server-side apply (``force=true``), like ``kubectl apply --server-side``."""
        meta = body.get("metadata", {})
        namespace = namespace or meta.get("namespace")
        path = self.path_for(gvp, namespace, meta["name"], subresource)
        params = {"fieldManager": field_manager, "force": "true"}
        return await self._checked(
            "PATCH", path, body=dict(body), content_type=APPLY_PATCH, params=params
        )

    async def delete_object(
        self, gvp: str | kmock.resource, namespace: str | None, name: str
    ) -> JsonDict:
        return await self._checked("DELETE", self.path_for(gvp, namespace, name))

    async def put_status(
        self, gvp: str | kmock.resource, namespace: str | None, name: str, status: JsonDict
    ) -> JsonDict:
        """Merge-patch ``.status`` through the /status subresource (watchers see MODIFIED)."""
        return await self.patch_object(
            gvp, namespace, name, {"status": status}, subresource="status"
        )

    async def mark_deployment_available(
        self, namespace: str, name: str, *, available: bool = True, replicas: int | None = None
    ) -> JsonDict:
        """Report a Deployment rolled out (or not), as the deployment controller would."""
        current = self.get_object(DEPLOYMENTS, namespace, name)
        if current is None:
            raise ApiError(404, f"deployments.apps {name!r} not found in {namespace!r}")
        status = deployment_status(current, available=available, replicas=replicas)
        return await self.put_status(DEPLOYMENTS, namespace, name, status)

    async def play_cronjob_run(
        self,
        namespace: str,
        cronjob: str,
        *,
        succeeded: bool = True,
        termination_message: str | None = None,
        failure_reason: str = "BackoffLimitExceeded",
        scheduled: datetime.datetime | None = None,
        pod: bool = True,
    ) -> str:
        """One run of a CronJob, as its controllers and a kubelet would report it: the Job
        (running first, then finished), its Pod with the container's termination message, the
        CronJob's lastScheduleTime. Returns the Job's name. ``pod=False``: the Job fails before a
        Pod ran (e.g. past its activeDeadlineSeconds while the image could not be pulled)."""
        source = self.get_object(CRONJOBS, namespace, cronjob)
        if source is None:
            raise ApiError(404, f"cronjobs.batch {cronjob!r} not found in {namespace!r}")
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        scheduled = scheduled or now
        job = await self.create(JOBS, jobs.job_for(source, scheduled), namespace)
        name = job["metadata"]["name"]
        await self.put_status(
            CRONJOBS, namespace, cronjob, {"lastScheduleTime": jobs.stamp(scheduled)}
        )
        await self.put_status(JOBS, namespace, name, {"startTime": jobs.stamp(now), "active": 1})
        if pod:
            created = await self.create(PODS, jobs.pod_for(job), namespace)
            status = jobs.terminated_pod_status(
                created,
                exit_code=0 if succeeded else 1,
                message=termination_message,
                reason="Completed" if succeeded else "Error",
                finished=now,
            )
            await self.put_status(PODS, namespace, created["metadata"]["name"], status)
        final = jobs.finished_job_status(
            succeeded=succeeded, started=now, finished=now, reason=failure_reason
        )
        await self.put_status(JOBS, namespace, name, final)
        if succeeded:
            await self.put_status(
                CRONJOBS, namespace, cronjob, {"lastSuccessfulTime": jobs.stamp(now)}
            )
        return str(name)

    # ----------------------------------------------------------------- lifecycle

    async def close_watches(self) -> None:
        """End all watch-streams (before the HTTP server stops) and background rollouts."""
        self._closing = True
        for watch in list(self._watches):
            watch.queue.put_nowait(None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ----------------------------------------------------------------- HTTP entry point

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        await raw_request.read()
        parsed = parse_k8s_path(raw_request.path)
        try:
            self._check_auth(raw_request)
            if parsed is None or parsed.plural is None:
                # Discovery & arbitrary endpoints: kmock's own handling (incl. user reactions).
                return await super().__call__(raw_request)
            request = await self._record(raw_request, parsed)
            return await self._serve(raw_request, request, parsed)
        except kmock.KubernetesError as e:
            return await self._render_error(e)
        except Exception as e:  # an emulator bug: report it to the client and to the test
            logger.exception("The emulated Kubernetes API failed on %s", raw_request.path)
            self.failures.append(e)
            return await self._render_error(e)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Skip kmock's state-changing interceptor: objects are only changed by _serve() here.
        return await kmock.RawHandler._handle(self, request)

    async def _serve_version(self, request: kmock.Request) -> Any:
        result = await super()._serve_version(request)
        if isinstance(result, dict) and str(result.get("groupVersion", "")).startswith("/"):
            result["groupVersion"] = result["groupVersion"][1:]  # "v1", not "/v1" for the core
        return result

    def _get_resources(self) -> list[kmock.resource]:
        # Only what is declared (kmock would also list resources of stored, orphaned objects).
        return kmock.KubernetesScaffold._get_resources(self)

    def _check_auth(self, raw_request: aiohttp.web.BaseRequest) -> None:
        if self.require_token is None:
            return
        if raw_request.headers.get("Authorization") != f"Bearer {self.require_token}":
            raise api_error(401, "Unauthorized", "Unauthorized")

    async def _record(self, raw_request: aiohttp.web.BaseRequest, parsed: K8sPath) -> kmock.Request:
        body = await raw_request.read()
        text = body.decode("utf-8", errors="replace")
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        method = raw_request.method.upper()
        params = dict(raw_request.query)
        action: kmock.action | None
        if method == "GET" and params.get("watch") in {"true", "1"}:
            action = kmock.action.WATCH
        elif method == "GET":
            action = kmock.action.FETCH if parsed.name else kmock.action.LIST
        elif method == "POST":
            action = kmock.action.CREATE
        elif method in {"PATCH", "PUT"}:
            action = kmock.action.UPDATE
        elif method == "DELETE":
            action = kmock.action.DELETE
        else:
            action = None
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=method,
            params=params,
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            body=body,
            text=text,
            data=data,
            action=action,
            resource=parsed.resource,
            namespace=parsed.namespace,
            name=parsed.name,
            subresource=parsed.subresource,
        )
        self._requests.append(request)
        return request

    # ----------------------------------------------------------------- request dispatching

    async def _serve(
        self, raw_request: aiohttp.web.BaseRequest, request: kmock.Request, parsed: K8sPath
    ) -> aiohttp.web.StreamResponse:
        res = parsed.resource
        if res not in self.resources:
            raise api_error(
                404, "NotFound", f"the server could not find the requested resource ({res.plural})"
            )
        info = self._info(res)
        namespace = parsed.namespace if info.namespaced else None
        if parsed.subresource is not None and parsed.subresource not in info.subresources:
            raise api_error(
                404,
                "NotFound",
                f"the server could not find the requested resource "
                f"({res.plural}/{parsed.subresource})",
            )
        method, params, name = request.method.value, dict(request.params), parsed.name
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        watching = params.get("watch") in {"true", "1"}
        verb = (
            "watch" if method == "GET" and watching else
            "get" if method == "GET" and name else
            "list" if method == "GET" else
            "create" if method == "POST" and not name else
            "update" if method == "PUT" and name else
            "apply" if method == "PATCH" and name and content_type == APPLY_PATCH else
            "patch" if method == "PATCH" and name else
            "delete" if method == "DELETE" and name else
            "deletecollection" if method == "DELETE" else
            ""
        )  # fmt: skip
        if not verb:
            raise api_error(
                405, "MethodNotAllowed", f"{method} is not supported on {raw_request.path}"
            )
        self._check_faults(verb, res, name)
        dry_run = bool(params.get("dryRun"))
        field_validation = params.get("fieldValidation") or FieldValidation.WARN
        if field_validation not in set(FieldValidation):
            raise api_error(
                400,
                "BadRequest",
                f'fieldValidation instance value "{field_validation}" is invalid, '
                'must be one of "Ignore", "Warn", or "Strict"',
            )
        # Read by the store's pruning; nothing awaits between here and the answer.
        self._field_validation, self._warnings = field_validation, []
        manager = params.get("fieldManager") or self._manager_from(request)

        if verb == "watch":
            return await self._stream_watch(raw_request, res, namespace, name, params)
        wants_table = "as=Table" in request.headers.get("Accept", "")
        if verb == "list":
            listing = self._list(res, namespace, params)
            if wants_table and res in self._crd_resources:
                return self._json(200, self._table(res, listing["items"]))
            return self._json(200, listing)
        if verb == "deletecollection":
            listing = self._list(res, namespace, params)
            for item in listing["items"]:
                meta = item["metadata"]
                self._delete(res, meta.get("namespace"), meta["name"], dry_run=dry_run)
            return self._json(200, listing)
        if verb == "create":
            body = self._json_body(request, dict)
            return self._json(
                201, self._create(res, namespace, body, manager=manager, dry_run=dry_run)
            )
        assert name is not None
        if verb == "get":
            obj = self._current(res, namespace, name)
            if obj is None:
                raise self._not_found(res, name)
            if wants_table and res in self._crd_resources:
                return self._json(200, self._table(res, [obj]))
            return self._json(200, obj)
        if verb == "delete":
            return self._json(200, self._delete(res, namespace, name, dry_run=dry_run))

        # Writes to an existing object: PUT, PATCH (json/merge/strategic), and apply.
        sub = parsed.subresource
        if verb == "update":
            body = self._json_body(request, dict)
            precondition = body.get("metadata", {}).get("resourceVersion")
            result = self._update(
                res, namespace, name, lambda _: copy.deepcopy(body),
                subresource=sub, manager=manager, operation="Update",
                precondition=precondition, dry_run=dry_run,
            )  # fmt: skip
            return self._json(200, result)
        if verb == "apply":
            return self._serve_apply(request, res, namespace, name, sub, params, dry_run)
        if content_type == JSON_PATCH:
            ops = self._json_body(request, list)
            result = self._update(
                res, namespace, name, lambda current: apply_json_patch(current, ops),
                subresource=sub, manager=manager, operation="Update", dry_run=dry_run,
            )  # fmt: skip
            return self._json(200, result)
        if content_type in {MERGE_PATCH, STRATEGIC_MERGE_PATCH}:
            if content_type == STRATEGIC_MERGE_PATCH and res in self._crd_resources:
                raise api_error(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom resources; "
                    f"accepted media types: {JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}",
                )
            patch = self._json_body(request, dict)
            precondition = (patch.get("metadata") or {}).get("resourceVersion")
            result = self._update(
                res, namespace, name, lambda current: merge_patch(current, patch),
                subresource=sub, manager=manager, operation="Update",
                precondition=precondition, dry_run=dry_run,
            )  # fmt: skip
            return self._json(200, result)
        raise api_error(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format: {content_type!r}",
        )

    def _table(self, res: kmock.resource, items: list[JsonDict]) -> JsonDict:
        """Server-side printing (what kubectl asks for): the CRD's additionalPrinterColumns."""
        crd = self._current(as_resource(CRDS), None, f"{res.plural}.{res.group}") or {}
        versions = (crd.get("spec") or {}).get("versions") or []
        version = next((v for v in versions if v.get("name") == res.version), {})
        return table(version.get("additionalPrinterColumns") or [], items)

    # ----------------------------------------------------------------- internals

    def _check_faults(self, verb: str, res: kmock.resource, name: str | None) -> None:
        for fault in list(self._faults):
            if fault.verb != verb or (fault.resource is not None and fault.resource != res):
                continue
            if fault.name is not None and fault.name != name:
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            raise api_error(fault.status, "InjectedFault", fault.message)

    def _json(self, status: int, payload: Any) -> aiohttp.web.Response:
        """A JSON answer, with a ``Warning`` header per field the request had pruned."""
        headers = CIMultiDict(
            ("Warning", '299 - "{}"'.format(w.replace('"', '\\"'))) for w in self._warnings
        )
        self._field_validation, self._warnings = FieldValidation.WARN, []
        return aiohttp.web.json_response(payload, status=status, headers=headers)

    @staticmethod
    def _json_body(request: kmock.Request, expected: type[Any]) -> Any:
        try:
            data = json.loads(request.text)
        except ValueError:
            raise api_error(400, "BadRequest", "the request body is not valid JSON") from None
        if not isinstance(data, expected):
            raise api_error(
                400, "BadRequest", f"the request body must be a JSON {expected.__name__}"
            )
        return data

    @staticmethod
    def _manager_from(request: kmock.Request) -> str:
        agent = request.headers.get("User-Agent", "")
        return agent.split("/", 1)[0].split(" ", 1)[0] or "unknown"


@contextlib.asynccontextmanager
async def emulated_cluster(**options: Any) -> AsyncIterator[DfmKubernetesEmulator]:
    """Run a :class:`DfmKubernetesEmulator` on ``127.0.0.1:<random port>`` for the block.

    Unexpected emulator failures (HTTP 500s, i.e. bugs here) are re-raised on a clean exit;
    K8s-level errors such as 404/409/422 are normal answers and are not.
    """
    emulator = DfmKubernetesEmulator(**options)
    async with emulator:
        server = kmock.Server(emulator, host="127.0.0.1", port=0)
        async with server:
            try:
                yield emulator
            finally:
                await emulator.close_watches()
    if emulator.failures:
        raise ExceptionGroup("The Kubernetes emulator failed", emulator.failures)
