"""The resource types the stand-in serves, as discovery describes them.

One table drives discovery, routing and storage, so a type cannot be routable but
undiscoverable (kubectl resolves `deploy`, `rs`, `po`, `ev` through shortNames) or
discoverable but unstored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

READ = ("get", "list", "watch")
RW = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = RW
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # Resources that are two views of one stored object (core/v1 and events.k8s.io/v1
    # Events) share a storage key; the HTTP layer converts the representation.
    storage: str = ""
    # Custom resources (served for a CustomResourceDefinition, see crds.py) and their
    # printer columns as the CRD declares them (each column's items, sorted).
    custom: bool = False
    printer_columns: tuple[tuple[tuple[str, Any], ...], ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """Storage key: which collection in the store holds these objects."""
        return self.storage or (f"{self.group}/{self.plural}" if self.group else self.plural)

    @property
    def has_generation(self) -> bool:
        """Objects with a spec whose changes bump metadata.generation."""
        return self.custom or self.kind in (
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Pod",
            "CustomResourceDefinition",
        )

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


RESOURCES: tuple[Resource, ...] = (
    Resource(
        "", "v1", "namespaces", "Namespace", "namespace", False, ("ns",), subresources=("status",)
    ),
    Resource("", "v1", "nodes", "Node", "node", False, ("no",), subresources=("status",)),
    Resource(
        "",
        "v1",
        "pods",
        "Pod",
        "pod",
        True,
        ("po",),
        subresources=("status", "log"),
        categories=("all",),
    ),
    Resource("", "v1", "events", "Event", "event", True, ("ev",)),
    Resource("", "v1", "configmaps", "ConfigMap", "configmap", True, ("cm",)),
    Resource("", "v1", "secrets", "Secret", "secret", True),
    Resource(
        "",
        "v1",
        "services",
        "Service",
        "service",
        True,
        ("svc",),
        subresources=("status",),
        categories=("all",),
    ),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", "serviceaccount", True, ("sa",)),
    Resource("", "v1", "endpoints", "Endpoints", "endpoints", True, ("ep",)),
    Resource(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        "persistentvolumeclaim",
        True,
        ("pvc",),
        subresources=("status",),
    ),
    Resource(
        "",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        "persistentvolume",
        False,
        ("pv",),
        subresources=("status",),
    ),
    Resource(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        "deployment",
        True,
        ("deploy",),
        subresources=("status", "scale"),
        categories=("all",),
    ),
    Resource(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        "replicaset",
        True,
        ("rs",),
        subresources=("status", "scale"),
        categories=("all",),
    ),
    Resource(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        "statefulset",
        True,
        ("sts",),
        subresources=("status", "scale"),
        categories=("all",),
    ),
    Resource(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        "daemonset",
        True,
        ("ds",),
        subresources=("status",),
        categories=("all",),
    ),
    # The workload controllers' history: one object per pod template a StatefulSet or
    # DaemonSet ran (what `kubectl rollout history|undo` reads for those kinds).
    Resource("apps", "v1", "controllerrevisions", "ControllerRevision", "controllerrevision", True),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", "endpointslice", True),
    Resource(
        "storage.k8s.io", "v1", "storageclasses", "StorageClass", "storageclass", False, ("sc",)
    ),
    Resource("events.k8s.io", "v1", "events", "Event", "event", True, ("ev",), storage="events"),
    Resource(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscaler",
        True,
        ("hpa",),
        subresources=("status",),
        categories=("all",),
    ),
    Resource(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        "customresourcedefinition",
        False,
        ("crd", "crds"),
        subresources=("status",),
        categories=("api-extensions",),
    ),
)

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}


def by_path(group: str, version: str, plural: str) -> Resource | None:
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> Resource | None:
    return _BY_KIND.get((api_version, kind))


def core(plural: str) -> Resource:
    """The core/v1 or apps/v1 resource with this plural (for in-process callers)."""
    for r in RESOURCES:
        if r.plural == plural and r.group in ("", "apps"):
            return r
    raise KeyError(plural)


def groups() -> dict[str, list[Resource]]:
    """Resources by API group, core group first, in discovery order."""
    out: dict[str, list[Resource]] = {}
    for r in RESOURCES:
        out.setdefault(r.group, []).append(r)
    return out
