"""List and watch: selectors, resourceVersion resumption, the bounded event log, bookmarks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import kmock

from kube_emulator.errors import api_error
from kube_emulator.resources import JsonDict, api_version_of
from kube_emulator.selectors import field_selector_matches, label_selector_matches

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclasses.dataclass(eq=False)
class Watch:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    label_selector: str
    field_selector: str
    queue: asyncio.Queue[JsonDict | None] = dataclasses.field(default_factory=asyncio.Queue)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        if self.label_selector and not label_selector_matches(
            self.label_selector, meta.get("labels") or {}
        ):
            return False
        return not self.field_selector or field_selector_matches(self.field_selector, obj)


class Watches:
    """Serves LIST and WATCH from the store, and fans every change out to the open watches."""

    def _list(
        self, res: kmock.resource, namespace: str | None, params: Mapping[str, str]
    ) -> JsonDict:
        watch = Watch(
            res, namespace, None, params.get("labelSelector", ""), params.get("fieldSelector", "")
        )
        items = [obj for obj in self._iter_current(res, namespace) if watch.matches(obj)]
        return {
            "apiVersion": api_version_of(res),
            "kind": f"{self._info(res).kind}List",
            "metadata": {"resourceVersion": str(self._rv), "continue": ""},
            "items": items,
        }

    async def _stream_watch(
        self,
        raw_request: aiohttp.web.BaseRequest,
        res: kmock.resource,
        namespace: str | None,
        name: str | None,
        params: Mapping[str, str],
    ) -> aiohttp.web.StreamResponse:
        watch = Watch(
            res, namespace, name, params.get("labelSelector", ""), params.get("fieldSelector", "")
        )
        since = params.get("resourceVersion", "")
        initial = params.get("sendInitialEvents") == "true"
        backlog: list[JsonDict] = []
        gone = False
        if since in {"", "0"} or initial:
            objs = [obj for obj in self._iter_current(res, namespace) if watch.matches(obj)]
            backlog = [{"type": "ADDED", "object": obj} for obj in objs]
            if initial:
                bookmark = {
                    "kind": self._info(res).kind,
                    "apiVersion": api_version_of(res),
                    "metadata": {
                        "resourceVersion": str(self._rv),
                        "annotations": {INITIAL_EVENTS_END: "true"},
                    },
                }
                backlog.append({"type": "BOOKMARK", "object": bookmark})
        else:
            try:
                start = int(since)
            except ValueError:
                raise api_error(400, "BadRequest", f"invalid resource version: {since!r}") from None
            if start < self._log_floor:
                gone = True
                backlog = [{"type": "ERROR", "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                    "code": 410, "reason": "Expired",
                    "message": f"too old resource version: {start} ({self._log_floor})",
                }}]  # fmt: skip
            else:
                backlog = [
                    event for rv, eres, event in self._log
                    if rv > start and eres == res and watch.matches(event["object"])
                ]  # fmt: skip
        # Subscribe in the same synchronous step as the backlog is taken: no events are lost.
        if not gone:
            self._watches.add(watch)
        response = aiohttp.web.StreamResponse(
            status=200, headers={"Content-Type": "application/json"}
        )
        try:
            await response.prepare(raw_request)
            for event in backlog:
                await response.write(json.dumps(event).encode() + b"\n")
            loop = asyncio.get_running_loop()
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
            deadline = loop.time() + timeout if timeout is not None else None
            while not gone and not self._closing:
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - loop.time()))
                try:
                    item = await asyncio.wait_for(watch.queue.get(), timeout=wait)
                except TimeoutError:
                    transport = raw_request.transport
                    if transport is None or transport.is_closing():
                        break  # the client has gone
                    if deadline is not None and loop.time() >= deadline:
                        break  # ?timeoutSeconds=N is over
                    continue
                if item is None:
                    break  # the emulator is closing
                await response.write(json.dumps(item).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client disconnected while we were writing
        finally:
            self._watches.discard(watch)
        return response

    def _emit(self, res: kmock.resource, event_type: str, obj: JsonDict) -> None:
        event = {"type": event_type, "object": obj}
        if self._log.maxlen is not None and len(self._log) == self._log.maxlen:
            self._log_floor = self._log[0][0]
        self._log.append((int(obj["metadata"]["resourceVersion"]), res, event))
        for watch in list(self._watches):
            if watch.resource == res and watch.matches(obj):
                watch.queue.put_nowait(event)
        self._changed.set()
        self._changed = asyncio.Event()
