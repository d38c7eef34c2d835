"""The stand-in's object store: etcd plus the generic registry logic of the API server.

It keeps what every client relies on: a uid per object, one global, monotonically
increasing resourceVersion, optimistic concurrency (a write carrying a stale
resourceVersion is a 409 Conflict), `metadata.generation` bumped on spec changes only,
status written only through the status subresource, namespace existence checks,
owner-reference garbage collection, and a bounded event history from which watches
resume (an older resourceVersion is 410 Gone, as when etcd has compacted it).

Objects in the store are never mutated in place: each write stores a new dict. Readers
may therefore hold references without copying; writers copy first (`Store.copy`).
All access happens on the sandbox's single event loop thread, so there are no locks.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock, rfc3339
from . import errors
from .crds import CustomResources
from .resources import Resource, by_kind

Obj = dict[str, Any]
Predicate = Callable[[Obj], bool]
ChangeListener = Callable[[str, Resource, Obj, "Obj | None"], None]

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's utilrand alphabet


def copy(obj: Any) -> Any:
    """A deep copy of JSON-shaped data (faster than copy.deepcopy for it)."""
    return json.loads(json.dumps(obj))


def _meta(obj: Obj) -> dict[str, Any]:
    return obj.setdefault("metadata", {})


@dataclass
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK | ERROR
    object: Obj


@dataclass(eq=False)
class Watch:
    """One client's watch: events for one resource, optionally one namespace and a filter."""

    store: Store
    res: Resource
    namespace: str | None
    predicate: Predicate | None
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=10_000))
    closed: bool = False

    def matches(self, obj: Obj) -> bool:
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.predicate is None or self.predicate(obj)

    def offer(self, ev_type: str, new: Obj, old: Obj | None) -> None:
        """Translate a store change into what this watcher sees.

        An object that stops matching the filter is DELETED for this watcher, one that
        starts matching is ADDED: the semantics of a filtered watch on the real server.
        """
        if self.closed:
            return
        now_in = self.matches(new)
        was_in = old is not None and self.matches(old)
        if ev_type == "DELETED":
            if now_in:
                self._put(WatchEvent("DELETED", new))
            return
        if now_in and was_in:
            self._put(WatchEvent("MODIFIED", new))
        elif now_in:
            self._put(WatchEvent("ADDED", new))
        elif was_in:
            self._put(WatchEvent("DELETED", new))

    def _put(self, ev: WatchEvent) -> None:
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            # A consumer this far behind is cut off, as the real server does; the
            # client re-lists and watches again.
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.store._watches.discard(self)
            try:
                self.queue.put_nowait(None)
            except asyncio.QueueFull:
                pass

    async def next(self, timeout: float | None) -> WatchEvent | None:
        """The next event; None when closed or after `timeout` seconds of silence."""
        if self.closed and self.queue.empty():
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class Store:
    def __init__(self, clock: Clock | None = None, history: int = 50_000) -> None:
        self.clock = clock or Clock()
        self._rv = 0
        self._data: dict[str, dict[tuple[str, str], Obj]] = {}
        self._history: deque[tuple[int, str, str, Obj, Obj | None]] = deque(maxlen=history)
        self._watches: set[Watch] = set()
        self._listeners: list[ChangeListener] = []
        # The resources CustomResourceDefinitions add (lookups cover the built-in ones too).
        self.custom = CustomResources(self)

    copy = staticmethod(copy)

    # -- reading -------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def _bucket(self, res: Resource) -> dict[tuple[str, str], Obj]:
        return self._data.setdefault(res.key, {})

    def try_get(self, res: Resource, namespace: str | None, name: str) -> Obj | None:
        return self._bucket(res).get((namespace or "", name))

    def get(self, res: Resource, namespace: str | None, name: str) -> Obj:
        obj = self.try_get(res, namespace, name)
        if obj is None:
            raise errors.not_found(res.group, res.plural, name)
        return obj

    def list(
        self,
        res: Resource,
        namespace: str | None = None,
        predicate: Predicate | None = None,
    ) -> list[Obj]:
        """Objects sorted by (namespace, name), as etcd's key order returns them."""
        bucket = self._bucket(res)
        keys = sorted(bucket)
        out = []
        for key in keys:
            if namespace is not None and key[0] != namespace:
                continue
            obj = bucket[key]
            if predicate is None or predicate(obj):
                out.append(obj)
        return out

    def count(self, res: Resource) -> int:
        return len(self._bucket(res))

    def oldest_resource_version(self) -> int:
        """The oldest resourceVersion watches and list continuations can still resume from."""
        return self._history[0][0] - 1 if self._history else self._rv

    # -- writing -------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _check_namespace(self, res: Resource, namespace: str) -> None:
        if not res.namespaced:
            return
        if not namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        ns_res = by_kind("v1", "Namespace")
        if self.try_get(ns_res, None, namespace) is None:
            raise errors.not_found("", "namespaces", namespace)

    def create(self, res: Resource, obj: Obj, *, dry_run: bool = False) -> Obj:
        obj = copy(obj)
        meta = _meta(obj)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        namespace = meta.get("namespace", "") if res.namespaced else ""
        if not res.namespaced:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                suffix = "".join(random.choices(_NAME_CHARS, k=5))
                meta["name"] = meta["generateName"] + suffix
            else:
                raise errors.invalid(
                    res.group,
                    res.kind,
                    "",
                    [
                        {
                            "reason": "FieldValueRequired",
                            "message": "name or generateName is required",
                            "field": "metadata.name",
                        }
                    ],
                )
        name = meta["name"]
        self._check_namespace(res, namespace)
        if res.kind == "PersistentVolumeClaim":
            from .storage import admit_claim  # admission: the default StorageClass

            obj = admit_claim(self, obj)
        if (namespace, name) in self._bucket(res):
            raise errors.already_exists(res.group, res.plural, name)
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339(self.clock.now())
        if res.has_generation:
            meta["generation"] = 1
        if dry_run:
            return obj
        meta["resourceVersion"] = self._next_rv()
        self._bucket(res)[(namespace, name)] = obj
        self._emit("ADDED", res, obj, None)
        return obj

    def update(
        self, res: Resource, obj: Obj, *, subresource: str = "", dry_run: bool = False
    ) -> Obj:
        """Replace an object (PUT semantics), or only its status with subresource="status".

        A `metadata.resourceVersion` in `obj` is a precondition: if it is not the
        stored one the write is refused with 409 Conflict.
        """
        meta_in = obj.get("metadata") or {}
        namespace = meta_in.get("namespace", "") if res.namespaced else ""
        name = meta_in.get("name", "")
        old = self.get(res, namespace, name)
        rv_in = meta_in.get("resourceVersion")
        if rv_in and rv_in != old["metadata"]["resourceVersion"]:
            raise errors.conflict(
                res.group,
                res.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        new = copy(obj)
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        meta = _meta(new)
        if subresource == "status":
            # Only status changes through the status subresource.
            status = new.get("status")
            managed = meta.get("managedFields")
            new = copy(old)
            if managed is not None:
                new["metadata"]["managedFields"] = managed
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
            meta = new["metadata"]
        else:
            if res.has_status and "status" in old:
                new["status"] = old["status"]
            elif res.has_status:
                new.pop("status", None)
            for k in ("uid", "creationTimestamp", "generation"):
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
                else:
                    meta.pop(k, None)
            if res.namespaced:
                meta["namespace"] = namespace
            if res.kind == "PersistentVolumeClaim":
                from .storage import claim_immutable_problem

                problem = claim_immutable_problem(old, new)
                if problem:
                    raise errors.invalid(
                        res.group,
                        res.kind,
                        name,
                        [{"reason": "FieldValueForbidden", "message": f"Forbidden: {problem}",
                          "field": "spec"}],
                    )  # fmt: skip
            if res.has_generation and new.get("spec") != old.get("spec"):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if _same(new, old):
            return old  # a no-op write does not bump resourceVersion
        if dry_run:
            return new
        meta["resourceVersion"] = self._next_rv()
        self._bucket(res)[(namespace, name)] = new
        self._emit("MODIFIED", res, new, old)
        return new

    def delete(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        *,
        dry_run: bool = False,
        uid: str | None = None,
    ) -> Obj:
        old = self.get(res, namespace, name)
        if uid and old["metadata"]["uid"] != uid:
            raise errors.conflict(
                res.group,
                res.plural,
                name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {old['metadata']['uid']}",
            )
        if dry_run:
            return old
        del self._bucket(res)[(namespace or "", name)]
        gone = copy(old)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit("DELETED", res, gone, old)
        self._collect_dependents(old)
        if res.kind == "Namespace":
            self._delete_namespace_contents(name)
        return gone

    def _collect_dependents(self, owner: Obj) -> None:
        """Background cascading deletion of objects owned by `owner`."""
        uid = owner["metadata"]["uid"]
        for bucket in list(self._data.values()):
            for obj in list(bucket.values()):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    res = self.custom.by_kind(obj["apiVersion"], obj["kind"])
                    if res is not None and self.try_get(
                        res, obj["metadata"].get("namespace"), obj["metadata"]["name"]
                    ):
                        self.delete(res, obj["metadata"].get("namespace"), obj["metadata"]["name"])

    def _delete_namespace_contents(self, namespace: str) -> None:
        for bucket in list(self._data.values()):
            for obj in [o for (ns, _), o in bucket.items() if ns == namespace]:
                res = self.custom.by_kind(obj["apiVersion"], obj["kind"])
                if res is not None and self.try_get(res, namespace, obj["metadata"]["name"]):
                    self.delete(res, namespace, obj["metadata"]["name"])

    # -- change feed -----------------------------------------------------------

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener(type, res, new, old)` after every committed write (in-process informer)."""
        self._listeners.append(listener)

    def _emit(self, ev_type: str, res: Resource, new: Obj, old: Obj | None) -> None:
        self._history.append((int(new["metadata"]["resourceVersion"]), res.key, ev_type, new, old))
        for w in list(self._watches):
            if w.res.key == res.key:
                w.offer(ev_type, new, old)
        for listener in self._listeners:
            listener(ev_type, res, new, old)

    def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        predicate: Predicate | None = None,
        resource_version: str | None = None,
    ) -> Watch:
        """Open a watch.

        resource_version None or "0": synthetic ADDED events for the current objects,
        then changes (the real server's "Any"/"Most recent" starting points). A number:
        every change after it, from history; 410 Gone if history no longer reaches it.
        """
        w = Watch(self, res, namespace, predicate)
        if resource_version in (None, "", "0"):
            for obj in self.list(res, namespace, predicate):
                w.queue.put_nowait(WatchEvent("ADDED", obj))
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise errors.bad_request(f'invalid resource version "{resource_version}"') from None
            oldest = self._history[0][0] if self._history else self._rv + 1
            if since < oldest - 1 and since < self._rv:
                raise errors.gone(f"too old resource version: {since} ({oldest - 1})")
            for rv, key, ev_type, new, old in self._history:
                if rv > since and key == res.key:
                    w.offer(ev_type, new, old)
        self._watches.add(w)
        return w


def _same(a: Obj, b: Obj) -> bool:
    if a.get("metadata", {}).get("managedFields") != b.get("metadata", {}).get("managedFields"):
        # managedFields timestamps change on every write; compare without them.
        a = {**a, "metadata": {k: v for k, v in a["metadata"].items() if k != "managedFields"}}
        b = {**b, "metadata": {k: v for k, v in b["metadata"].items() if k != "managedFields"}}
    return a == b
