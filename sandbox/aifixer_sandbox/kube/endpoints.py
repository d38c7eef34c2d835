"""EndpointSlices and Endpoints: which pods a Service reaches.

kube-controller-manager's endpointslice-controller (pkg/controller/endpointslice) and
endpoints-controller (pkg/controller/endpoint) keep, for every Service with a
selector, the addresses of the pods it selects. A Service whose selector matches no
pod therefore has an EndpointSlice without endpoints (the controller's placeholder:
no endpoints, no ports) and an Endpoints object without subsets, which is all
`kubectl describe service` shows as `Endpoints: <none>` — there is no event.

Slices carry the labels the real controller sets (`kubernetes.io/service-name`,
`endpointslice.kubernetes.io/managed-by`), the Service's own labels, and a controller
owner reference to it; each endpoint its pod's IP, node, target reference and the
ready/serving/terminating conditions. A Service without a selector is left alone: its
endpoints are someone else's.
"""

from __future__ import annotations

import random
from typing import Any

from .controllers import _Controller, _key, _new_controller_ref, _split, pod_ready
from .resources import Resource, by_path, core
from .scheduler import is_terminal
from .selectors import match_label_selector
from .store import Obj

SERVICES = core("services")
PODS = core("pods")
ENDPOINTS = core("endpoints")
ENDPOINTSLICES: Resource = by_path("discovery.k8s.io", "v1", "endpointslices")  # type: ignore[assignment]

COMPONENT = "endpointslice-controller"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def _selected(pods: list[Obj], selector: dict[str, str]) -> list[Obj]:
    out = []
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if (
            match_label_selector({"matchLabels": selector}, labels)
            and not is_terminal(pod)
            and not pod["metadata"].get("deletionTimestamp")
            and (pod.get("status") or {}).get("podIP")
        ):
            out.append(pod)
    return out


def _target_port(port: dict[str, Any], pod: Obj) -> int | None:
    """The port number a Service port reaches on `pod` (a named targetPort resolved
    through the pod's container ports, as FindPort does)."""
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for cp in container.get("ports") or []:
            if cp.get("name") == target and cp.get("protocol", "TCP") == port.get(
                "protocol", "TCP"
            ):
                return cp.get("containerPort")
    return None


def _ports(service: Obj, pod: Obj) -> list[dict[str, Any]]:
    out = []
    for port in (service.get("spec") or {}).get("ports") or []:
        number = _target_port(port, pod)
        if number is not None:
            out.append(
                {
                    "name": port.get("name", ""),
                    "port": number,
                    "protocol": port.get("protocol", "TCP"),
                }
            )
    return out


def _target_ref(pod: Obj) -> dict[str, Any]:
    meta = pod["metadata"]
    return {
        "kind": "Pod",
        "namespace": meta.get("namespace"),
        "name": meta["name"],
        "uid": meta["uid"],
    }


class EndpointsController(_Controller):
    """The EndpointSlice and (legacy) Endpoints of every Service with a selector."""

    component = COMPONENT
    primary = SERVICES

    def _on_change(self, ev_type: str, res: Resource, new: Obj, old: Obj | None) -> None:
        if res.key == SERVICES.key:
            self.queue.add(_key(new))
        elif res.key == PODS.key:
            namespace = new["metadata"].get("namespace", "")
            for svc in self.store.list(SERVICES, namespace):
                if (svc.get("spec") or {}).get("selector"):
                    self.queue.add(_key(svc))

    def sync(self, key: str) -> None:
        namespace, name = _split(key)
        svc = self.store.try_get(SERVICES, namespace, name)
        if svc is None:
            for res in (ENDPOINTSLICES, ENDPOINTS):
                for obj in self._managed(res, namespace, name):
                    self.store.delete(res, namespace, obj["metadata"]["name"])
            return
        selector = (svc.get("spec") or {}).get("selector")
        if not selector:
            return
        pods = _selected(self.store.list(PODS, namespace), selector)
        self._sync_slice(svc, pods)
        self._sync_endpoints(svc, pods)

    def _managed(self, res: Resource, namespace: str, name: str) -> list[Obj]:
        if res.key == ENDPOINTS.key:
            obj = self.store.try_get(ENDPOINTS, namespace, name)
            return [obj] if obj is not None else []
        return [
            s
            for s in self.store.list(ENDPOINTSLICES, namespace)
            if (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == name
            and (s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY
        ]

    def _sync_slice(self, svc: Obj, pods: list[Obj]) -> None:
        meta = svc["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        endpoints = []
        for pod in pods:
            ready = pod_ready(pod)
            ep: dict[str, Any] = {
                "addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                "targetRef": _target_ref(pod),
            }
            node = (pod.get("spec") or {}).get("nodeName")
            if node:
                ep["nodeName"] = node
            endpoints.append(ep)
        # No endpoints: the controller's placeholder slice, without ports.
        ports = _ports(svc, pods[0]) if pods else None
        labels = {
            **(meta.get("labels") or {}),
            SERVICE_NAME_LABEL: name,
            MANAGED_BY_LABEL: MANAGED_BY,
        }
        existing = self._managed(ENDPOINTSLICES, namespace, name)
        if existing:
            current = existing[0]
            if (
                current.get("endpoints") == (endpoints or None)
                and current.get("ports") == ports
                and (current["metadata"].get("labels") or {}) == labels
            ):
                return
            updated = self.store.copy(current)
            updated["metadata"]["labels"] = labels
            updated["metadata"].pop("resourceVersion", None)
            updated["endpoints"], updated["ports"] = endpoints or None, ports
            self.store.update(ENDPOINTSLICES, updated)
            for extra in existing[1:]:
                self.store.delete(ENDPOINTSLICES, namespace, extra["metadata"]["name"])
            return
        suffix = "".join(random.choices(_SUFFIX_CHARS, k=5))
        self.store.create(
            ENDPOINTSLICES,
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-{suffix}",
                    "generateName": f"{name}-",
                    "namespace": namespace,
                    "labels": labels,
                    "ownerReferences": [_new_controller_ref(svc)],
                },
                "addressType": "IPv4",
                "endpoints": endpoints or None,
                "ports": ports,
            },
        )

    def _sync_endpoints(self, svc: Obj, pods: list[Obj]) -> None:
        meta = svc["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        ready, not_ready = [], []
        for pod in pods:
            address = {"ip": pod["status"]["podIP"], "targetRef": _target_ref(pod)}
            node = (pod.get("spec") or {}).get("nodeName")
            if node:
                address["nodeName"] = node
            (ready if pod_ready(pod) else not_ready).append(address)
        subsets = []
        if pods:
            subset: dict[str, Any] = {"ports": _ports(svc, pods[0])}
            if ready:
                subset["addresses"] = ready
            if not_ready:
                subset["notReadyAddresses"] = not_ready
            subsets.append(subset)
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(meta.get("labels") or {}),
            },
        }
        if subsets:
            body["subsets"] = subsets
        current = self.store.try_get(ENDPOINTS, namespace, name)
        if current is None:
            self.store.create(ENDPOINTS, body)
            return
        if (
            current.get("subsets") == body.get("subsets")
            and (current["metadata"].get("labels") or {}) == body["metadata"]["labels"]
        ):
            return
        updated = self.store.copy(current)
        updated["metadata"]["labels"] = body["metadata"]["labels"]
        updated["metadata"].pop("resourceVersion", None)
        updated.pop("subsets", None)
        if subsets:
            updated["subsets"] = subsets
        self.store.update(ENDPOINTS, updated)
