"""The `default-scheduler`: binds pending pods to nodes, or says why it cannot.

It runs the filters whose verdicts a manifest fixer has to read and act on, in the
real framework's order (NodeUnschedulable, TaintToleration, NodeAffinity,
NodeResourcesFit), and reports a failure with the framework's exact FitError text,
preemption postfix included, because that string is what `kubectl describe` and the
events show and what a fix is derived from. Scoring is a simple "least allocated".

Unschedulable pods are retried when something that could make them fit changes (a
node is added or updated, a bound pod goes away) and otherwise on the real queue's
flush interval, so a stuck pod does not burn CPU.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..clock import Clock, rfc3339
from . import errors
from .events import EventRecorder
from .quantity import QuantityError, cpu_millicores, memory_bytes
from .resources import core
from .storage import unbound_claims
from .store import Obj, Store

log = logging.getLogger("aifixer_sandbox.scheduler")

PODS = core("pods")
NODES = core("nodes")
PVCS = core("persistentvolumeclaims")

COMPONENT = "default-scheduler"
# A cluster change is followed by a short settle time (the queue's initial pod back-off)
# so that a burst of changes causes one retry, not many.
RETRY_BACKOFF_SECONDS = 1.0
# podMaxInUnschedulablePodsDuration: unschedulable pods are retried at least this often.
UNSCHEDULABLE_FLUSH_SECONDS = 300.0

# Filter reasons, as the plugins word them.
REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_TOO_MANY_PODS = "Too many pods"
NO_VICTIMS = "No preemption victims found for incoming pod"
NOT_HELPFUL = "Preemption is not helpful for scheduling"
NO_NODES = "no nodes available to schedule pods"


# -- pod resource accounting (shared with the kubelet) ------------------------------


def _quantity(value: Any, convert) -> int:
    try:
        return convert(value)
    except (QuantityError, TypeError):
        return 0  # the API server refuses malformed quantities; be lenient with direct writes


def container_requests(container: dict) -> tuple[int, int]:
    """(millicores, bytes) a container requests; limits stand in for missing requests."""
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    cpu = requests.get("cpu", limits.get("cpu"))
    mem = requests.get("memory", limits.get("memory"))
    return (
        _quantity(cpu, cpu_millicores) if cpu is not None else 0,
        _quantity(mem, memory_bytes) if mem is not None else 0,
    )


def memory_limit_bytes(container: dict) -> int | None:
    limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None if limit is None else _quantity(limit, memory_bytes)


def pod_requests(pod: Obj) -> tuple[int, int]:
    """The pod's effective request: sum over containers, at least the largest init container."""
    spec = pod.get("spec") or {}
    cpu = mem = 0
    for c in spec.get("containers") or []:
        c_cpu, c_mem = container_requests(c)
        cpu, mem = cpu + c_cpu, mem + c_mem
    for c in spec.get("initContainers") or []:
        c_cpu, c_mem = container_requests(c)
        cpu, mem = max(cpu, c_cpu), max(mem, c_mem)
    return cpu, mem


def is_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


# -- filters ------------------------------------------------------------------------


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator", "Equal") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (
            taint.get("value") or ""
        ):
            return True
    return False


def _match_expression(expr: dict, value: str | None) -> bool:
    op, values = expr.get("operator"), expr.get("values") or []
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and values:
        try:
            node_value, bound = int(value), int(values[0])
        except ValueError:
            return False
        return node_value > bound if op == "Gt" else node_value < bound
    return False


def _match_term(term: dict, node: Obj) -> bool:
    labels = node["metadata"].get("labels") or {}
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        return False  # an empty term matches no node
    return all(_match_expression(e, labels.get(e.get("key"))) for e in exprs) and all(
        _match_expression(f, node["metadata"]["name"] if f.get("key") == "metadata.name" else None)
        for f in fields
    )


def matches_node_affinity(pod: Obj, node: Obj) -> bool:
    spec = pod.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if required is None:
        return True
    return any(_match_term(t, node) for t in required.get("nodeSelectorTerms") or [])


@dataclass
class NodeUsage:
    cpu: int = 0
    memory: int = 0
    pods: int = 0


def _allocatable(node: Obj) -> tuple[int, int, int]:
    alloc = (node.get("status") or {}).get("allocatable") or {}
    return (
        _quantity(alloc.get("cpu", "0"), cpu_millicores),
        _quantity(alloc.get("memory", "0"), memory_bytes),
        int(alloc.get("pods", "110")),
    )


def node_filter(pod: Obj, node: Obj, usage: NodeUsage) -> tuple[list[str], bool]:
    """Why `pod` cannot run on `node` (empty when it can), and whether preemption could help.

    Like the framework, the first plugin that rejects the node decides; only the
    resource plugin reports several reasons at once.
    """
    spec = pod.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    node_spec = node.get("spec") or {}
    if node_spec.get("unschedulable") and not tolerates(
        tolerations, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    ):
        return [REASON_UNSCHEDULABLE], False
    for taint in node_spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return [
                f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
            ], False
    if not matches_node_affinity(pod, node):
        return [REASON_AFFINITY], False
    cpu, mem = pod_requests(pod)
    alloc_cpu, alloc_mem, alloc_pods = _allocatable(node)
    reasons = []
    if usage.pods + 1 > alloc_pods:
        reasons.append(REASON_TOO_MANY_PODS)
    if cpu > 0 and cpu > alloc_cpu - usage.cpu:
        reasons.append("Insufficient cpu")
    if mem > 0 and mem > alloc_mem - usage.memory:
        reasons.append("Insufficient memory")
    return reasons, True


def fit_error(
    num_nodes: int, node_reasons: dict[str, list[str]], preemptable: dict[str, bool]
) -> str:
    """The framework's FitError text, with the default preemption plugin's postfix."""
    histogram = Counter(r for reasons in node_reasons.values() for r in reasons)
    msg = (
        f"0/{num_nodes} nodes are available: "
        + ", ".join(sorted(f"{n} {r}" for r, n in histogram.items()))
        + "."
    )
    post = Counter(NO_VICTIMS if preemptable[name] else NOT_HELPFUL for name in node_reasons)
    msg += (
        f" preemption: 0/{num_nodes} nodes are available: "
        + ", ".join(sorted(f"{n} {r}" for r, n in post.items()))
        + ".."
    )
    return msg


def _score(pod: Obj, node: Obj, usage: NodeUsage) -> float:
    """LeastAllocated: the share of cpu and memory left free after placing the pod."""
    cpu, mem = pod_requests(pod)
    alloc_cpu, alloc_mem, _ = _allocatable(node)
    free_cpu = (alloc_cpu - usage.cpu - cpu) / alloc_cpu if alloc_cpu else 0
    free_mem = (alloc_mem - usage.memory - mem) / alloc_mem if alloc_mem else 0
    return free_cpu + free_mem


# -- the scheduler --------------------------------------------------------------------


def _key(pod: Obj) -> tuple[str, str]:
    return pod["metadata"].get("namespace", ""), pod["metadata"]["name"]


def _wants_scheduling(pod: Obj) -> bool:
    spec = pod.get("spec") or {}
    return (
        not spec.get("nodeName")
        and not is_terminal(pod)
        and spec.get("schedulerName", COMPONENT) == COMPONENT
    )


class Scheduler:
    def __init__(self, store: Store, clock: Clock, recorder: EventRecorder) -> None:
        self.store = store
        self.clock = clock
        self.recorder = recorder
        self._active: dict[tuple[str, str], None] = {}  # ordered set of pods to try
        self._unschedulable: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._flush_task: asyncio.Task | None = None
        store.on_change(self._on_change)

    def start(self) -> None:
        for pod in self.store.list(PODS, predicate=_wants_scheduling):
            self._active[_key(pod)] = None
        self._task = asyncio.create_task(self._run(), name="scheduler")
        self._flush_task = asyncio.create_task(self._flush_periodically(), name="scheduler-flush")
        self._wake.set()

    async def stop(self) -> None:
        for task in (self._task, self._flush_task):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._task, self._flush_task) if t), return_exceptions=True
        )
        self._task = self._flush_task = None

    # -- change feed ------------------------------------------------------------

    def _on_change(self, ev_type: str, res, new: Obj, old: Obj | None) -> None:
        if res.key == PODS.key:
            key = _key(new)
            if ev_type == "DELETED":
                self._active.pop(key, None)
                self._unschedulable.discard(key)
                if (new.get("spec") or {}).get("nodeName"):
                    self._retry_unschedulable()
            elif _wants_scheduling(new):
                if ev_type == "ADDED" or key not in self._unschedulable:
                    self._active[key] = None
                    self._wake.set()
            elif old is not None and not is_terminal(old) and is_terminal(new):
                self._retry_unschedulable()  # a finished pod frees its requests
        elif res.key in (NODES.key, PVCS.key):
            self._retry_unschedulable()  # a node, or a claim bound or re-created

    def _retry_unschedulable(self) -> None:
        if self._unschedulable:
            asyncio.get_running_loop().call_later(
                self.clock.wall_seconds(RETRY_BACKOFF_SECONDS), self._move_unschedulable
            )

    def _move_unschedulable(self) -> None:
        for key in sorted(self._unschedulable):
            self._active[key] = None
        self._unschedulable.clear()
        self._wake.set()

    async def _flush_periodically(self) -> None:
        while True:
            await self.clock.sleep(UNSCHEDULABLE_FLUSH_SECONDS)
            self._move_unschedulable()

    # -- scheduling cycle ---------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._active:
                key = next(iter(self._active))
                del self._active[key]
                pod = self.store.try_get(PODS, *key)
                if pod is not None and _wants_scheduling(pod):
                    try:
                        self.schedule_one(pod)
                    except (
                        errors.ApiError
                    ) as exc:  # deleted or changed under us: next event retries
                        log.debug("scheduling %s/%s: %s", *key, exc.message)
                await asyncio.sleep(0)  # let the API server serve requests between pods

    def _usage(self) -> dict[str, NodeUsage]:
        usage: dict[str, NodeUsage] = {}
        for pod in self.store.list(PODS):
            node = (pod.get("spec") or {}).get("nodeName")
            if node and not is_terminal(pod):
                u = usage.setdefault(node, NodeUsage())
                cpu, mem = pod_requests(pod)
                u.cpu, u.memory, u.pods = u.cpu + cpu, u.memory + mem, u.pods + 1
        return usage

    def schedule_one(self, pod: Obj) -> str | None:
        """Bind `pod` to the best node and return its name, or record why none fits."""
        nodes = self.store.list(NODES)
        if not nodes:
            self._unschedulable_pod(pod, NO_NODES)
            return None
        volumes = unbound_claims(self.store, pod)
        if volumes:
            # A PreFilter rejection (VolumeBinding): its message replaces the histogram,
            # and preemption cannot help any node.
            n = len(nodes)
            self._unschedulable_pod(
                pod,
                f"0/{n} nodes are available: {volumes}. preemption: 0/{n} nodes are "
                f"available: {n} {NOT_HELPFUL}..",
            )
            return None
        usage = self._usage()
        feasible: list[tuple[float, str, Obj]] = []
        reasons: dict[str, list[str]] = {}
        preemptable: dict[str, bool] = {}
        for node in nodes:
            name = node["metadata"]["name"]
            node_usage = usage.get(name, NodeUsage())
            why, can_preempt = node_filter(pod, node, node_usage)
            if why:
                reasons[name], preemptable[name] = why, can_preempt
            else:
                feasible.append((-_score(pod, node, node_usage), name, node))
        if not feasible:
            self._unschedulable_pod(pod, fit_error(len(nodes), reasons, preemptable))
            return None
        _, node_name, _ = min(feasible)
        self._bind(pod, node_name)
        return node_name

    def _bind(self, pod: Obj, node_name: str) -> None:
        """What POST pods/NAME/binding does: set spec.nodeName and PodScheduled=True."""
        bound = self.store.copy(pod)
        bound["spec"]["nodeName"] = node_name
        bound["metadata"].pop("resourceVersion", None)
        bound = self.store.update(PODS, bound)
        self._set_scheduled_condition(bound, "True", None, None)
        ns, name = _key(pod)
        self.recorder.record(
            bound,
            "Normal",
            "Scheduled",
            f"Successfully assigned {ns}/{name} to {node_name}",
            COMPONENT,
        )

    def _unschedulable_pod(self, pod: Obj, message: str) -> None:
        self._unschedulable.add(_key(pod))
        pod = self._set_scheduled_condition(pod, "False", "Unschedulable", message)
        self.recorder.record(pod, "Warning", "FailedScheduling", message, COMPONENT)

    def _set_scheduled_condition(
        self, pod: Obj, status: str, reason: str | None, message: str | None
    ) -> Obj:
        st = self.store.copy(pod.get("status") or {})
        st.setdefault("phase", "Pending")
        conditions = st.setdefault("conditions", [])
        cond = next((c for c in conditions if c.get("type") == "PodScheduled"), None)
        if cond is None:
            cond = {"type": "PodScheduled"}
            conditions.append(cond)
        if cond.get("status") != status:
            cond["lastTransitionTime"] = rfc3339(self.clock.now())
        cond.update({"status": status, "lastProbeTime": None})
        for k, v in (("reason", reason), ("message", message)):
            if v is None:
                cond.pop(k, None)
            else:
                cond[k] = v
        meta = pod["metadata"]
        return self.store.update(
            PODS,
            {
                "metadata": {
                    "namespace": meta.get("namespace"),
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "status": st,
            },
            subresource="status",
        )
