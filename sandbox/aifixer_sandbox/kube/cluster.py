"""The simulated cluster: one object store plus the components that act on it.

A real cluster is an API server with controllers, a scheduler and kubelets reacting
to what is stored. `Cluster` wires the same parts around one `Store` — event
recorder, container logs, default-scheduler, the nodes' kubelet, the Deployment,
ReplicaSet, StatefulSet and DaemonSet controllers — so the HTTP server in front of
it only ever reads and writes objects, exactly like the real API server.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ..clock import Clock, rfc3339
from ..scenario import Image, Node
from . import errors
from .defaults import apply_defaults
from .events import EventRecorder
from .kubelet import Kubelet, LogSink
from .podlogs import PodLogs
from .quantity import format_millicores
from .resources import core
from .scheduler import Scheduler
from .store import Obj, Store

log = logging.getLogger("aifixer_sandbox.cluster")

NAMESPACES = core("namespaces")
NODES = core("nodes")

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
KUBELET_VERSION = "v1.32.0"
MAX_PODS = "110"


class Cluster:
    def __init__(
        self, clock: Clock, images: Callable[[str], Image | None], log_sink: LogSink | None = None
    ) -> None:
        self.clock = clock
        self.store = Store(clock)
        self.recorder = EventRecorder(self.store, clock)
        self.logs = PodLogs()
        self.scheduler = Scheduler(self.store, clock, self.recorder)
        self.kubelet = Kubelet(self.store, clock, self.recorder, self.logs, images, log_sink)
        self.controllers: list[Any] = self._controllers()
        self._started = False

    def _controllers(self) -> list[Any]:
        try:
            from .controllers import DeploymentController, ReplicaSetController
            from .workloads import DaemonSetController, StatefulSetController
        except ImportError as exc:
            log.warning(
                "Deployment and ReplicaSet controllers unavailable (%s): "
                "pods are only created directly",
                exc,
            )
            return []
        from .endpoints import EndpointsController
        from .storage import VolumeBinder

        return [
            DeploymentController(self.store, self.clock, self.recorder),
            ReplicaSetController(self.store, self.clock, self.recorder),
            StatefulSetController(self.store, self.clock, self.recorder),
            DaemonSetController(self.store, self.clock, self.recorder),
            VolumeBinder(self.store, self.clock, self.recorder),
            EndpointsController(self.store, self.clock, self.recorder),
        ]

    # -- lifecycle (on the sandbox loop) ------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for name in SYSTEM_NAMESPACES:
            self.ensure_namespace(name)
        self.kubelet.start()
        self.scheduler.start()
        for controller in self.controllers:
            controller.start()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for controller in self.controllers:
            await controller.stop()
        await self.scheduler.stop()
        await self.kubelet.stop()
        await asyncio.sleep(0)

    # -- objects the cluster itself owns ------------------------------------------------

    def ensure_namespace(self, name: str) -> Obj:
        existing = self.store.try_get(NAMESPACES, None, name)
        if existing is not None:
            return existing
        return self.store.create(
            NAMESPACES,
            apply_defaults({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )

    def register_nodes(self, nodes: Iterable[Node]) -> list[Obj]:
        """Create Node objects as each node's kubelet does when it registers."""
        out = []
        for node in nodes:
            index = self.store.count(NODES)
            try:
                out.append(
                    self.store.create(NODES, node_object(node, index, rfc3339(self.clock.now())))
                )
            except errors.ApiError as exc:
                if exc.code != 409:
                    raise
                out.append(self.store.get(NODES, None, node.name))
        return out


def node_object(node: Node, index: int, now: str) -> Obj:
    """A Node as a v1.32 kubelet with containerd registers it (kind-like addresses)."""
    capacity = {
        "cpu": format_millicores(node.cpu_millicores),
        "ephemeral-storage": "102625208Ki",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": f"{node.memory_mib * 1024}Ki",
        "pods": MAX_PODS,
    }
    labels = {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        **node.labels,
    }
    spec: dict[str, Any] = {"podCIDR": f"10.244.{index}.0/24", "podCIDRs": [f"10.244.{index}.0/24"]}
    if node.taints:
        spec["taints"] = [t.model_dump() for t in node.taints]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": labels,
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": _node_conditions(now),
            "addresses": [
                {"type": "InternalIP", "address": f"172.18.0.{index + 2}"},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": str(uuid.uuid4()),
                "containerRuntimeVersion": "containerd://1.7.24",
                "kernelVersion": "6.1.0-28-amd64",
                "kubeProxyVersion": KUBELET_VERSION,
                "kubeletVersion": KUBELET_VERSION,
                "machineID": uuid.uuid4().hex,
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": str(uuid.uuid4()),
            },
            "images": [],
        },
    }


def _node_conditions(now: str) -> list[dict]:
    rows = (
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    )
    return [
        {
            "type": t,
            "status": s,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
            "reason": r,
            "message": m,
        }
        for t, s, r, m in rows
    ]
