"""The HorizontalPodAutoscaler controller (autoscaling/v2), for CPU utilization targets.

It plays kube-controller-manager's HPA loop in simulated time, by the documented
algorithm (kubernetes.io, "Horizontal Pod Autoscaling", Algorithm details):

- every `SYNC_SECONDS` (15 s), for each HPA whose target is a Deployment: the pods the
  Deployment selects, each pod's CPU use (as metrics-server reports it: the sandbox's
  `Metrics.pod_cores`) over its CPU request;
- desired = ceil(currentReplicas × currentUtilization / targetUtilization), nothing
  done while the ratio is within the 10 % tolerance;
- pods not Ready are set aside; when the ready pods ask to scale up, they count as 0 %
  of the target, and if that reverses the direction or falls within the tolerance,
  nothing is done;
- scale-up at most max(100 %, 4 pods) per 15 s (the default behavior), scale-down
  stabilized over 300 s (the highest recommendation of that window wins);
- within minReplicas and maxReplicas; a Deployment at 0 replicas is left alone.

It writes the HPA's status (current and desired replicas, current metrics, lastScaleTime,
conditions) and the Deployment's `spec.replicas`, with the controller's events
(`SuccessfulRescale`, `FailedGetResourceMetric`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .clock import Clock, rfc3339
from .kube.controllers import pod_ready
from .kube.events import EventRecorder
from .kube.quantity import parse_quantity
from .kube.resources import by_kind, core
from .kube.selectors import match_label_selector
from .kube.store import Obj, Store
from .metrics import Metrics
from .serve import BackgroundLoop

log = logging.getLogger("aifixer_sandbox.hpa")

HPAS = by_kind("autoscaling/v2", "HorizontalPodAutoscaler")
DEPLOYMENTS, PODS = core("deployments"), core("pods")
COMPONENT = "horizontal-pod-autoscaler"
SYNC_SECONDS = 15.0
TOLERANCE = 0.1
DOWNSCALE_STABILIZATION_SECONDS = 300.0
SCALE_UP_PERCENT, SCALE_UP_PODS = 100, 4  # per SYNC_SECONDS, the default behavior


class HpaController(BackgroundLoop):
    def __init__(self, store: Store, clock: Clock, recorder: EventRecorder, metrics: Metrics):
        self.store, self.clock, self.recorder, self.metrics = store, clock, recorder, metrics
        self.recommendations: dict[str, list[tuple[float, int]]] = {}  # hpa uid -> (sim t, n)

    def start(self) -> None:
        self.start_loop(COMPONENT)

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(SYNC_SECONDS)
            for hpa in self.store.list(HPAS):
                try:
                    self.sync(hpa)
                except Exception:  # one bad object must not stop the loop
                    log.exception(
                        "hpa %s/%s", hpa["metadata"].get("namespace"), hpa["metadata"].get("name")
                    )

    # -- one HPA ------------------------------------------------------------------------

    def sync(self, hpa: Obj) -> None:
        spec = hpa.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        namespace = hpa["metadata"]["namespace"]
        if ref.get("kind") != "Deployment":
            return self._status(hpa, None, None, None, "ScalingActive", False, "FailedGetScale",
                                f"the HPA controller was unable to get the target's current scale: "
                                f"kind {ref.get('kind')!r} is not served here")  # fmt: skip
        dep = self.store.try_get(DEPLOYMENTS, namespace, ref.get("name", ""))
        if dep is None:
            return self._status(hpa, None, None, None, "ScalingActive", False, "FailedGetScale",
                                f'deployments.apps "{ref.get("name")}" not found')  # fmt: skip
        current = int(dep["spec"].get("replicas", 1))
        target = _cpu_target(spec)
        if target is None:
            return self._status(hpa, current, current, None, "ScalingActive", False,
                                "InvalidMetricSourceType", "only a cpu Utilization target is simulated")  # fmt: skip
        if current == 0:
            return self._status(hpa, 0, 0, None, "ScalingActive", False, "ScalingDisabled",
                                "scaling is disabled since the replica count of the target is zero")  # fmt: skip
        pods = [p for p in self._pods(dep) if (p.get("status") or {}).get("phase") != "Failed"]
        ready, unready, requests = [], [], {}
        for p in pods:
            request = sum(
                float(
                    parse_quantity(((c.get("resources") or {}).get("requests") or {}).get("cpu", 0))
                )
                for c in p["spec"]["containers"]
            )
            if request <= 0:
                self._event(hpa, "Warning", "FailedGetResourceMetric",
                            f"failed to get cpu utilization: missing request for cpu in container of pod {p['metadata']['name']}")  # fmt: skip
                return self._status(hpa, current, current, None, "ScalingActive", False,
                                    "FailedGetResourceMetric", "missing request for cpu")  # fmt: skip
            requests[p["metadata"]["uid"]] = request
            (ready if pod_ready(p) else unready).append(p)
        if not ready:
            return self._status(hpa, current, current, None, "ScalingActive", False,
                                "FailedGetResourceMetric", "no ready pods to read cpu from")  # fmt: skip
        used = sum(self.metrics.pod_cores.get(p["metadata"]["uid"], 0.0) for p in ready)
        requested = sum(requests[p["metadata"]["uid"]] for p in ready)
        utilization = used / requested
        ratio = utilization / (target / 100)
        desired = current
        if abs(ratio - 1) > TOLERANCE:
            if ratio > 1 and unready:  # unready pods count as 0 % on the way up
                requested_all = requested + sum(requests[p["metadata"]["uid"]] for p in unready)
                ratio = (used / requested_all) / (target / 100)
            if abs(ratio - 1) > TOLERANCE and (ratio > 1) == (utilization * 100 > target):
                desired = (
                    math.ceil(len(ready + unready) * ratio - 1e-9)
                    if ratio > 1
                    else math.ceil(len(ready) * ratio - 1e-9)
                )
        desired = self._behave(hpa, current, desired)
        low, high = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
        desired = min(high, max(low, desired))
        if desired != current:
            dep = Store.copy(dep)
            dep["spec"]["replicas"] = desired
            self.store.update(DEPLOYMENTS, dep)
            direction = "above" if desired > current else "below"
            self._event(hpa, "Normal", "SuccessfulRescale",
                        f"New size: {desired}; reason: cpu resource utilization (percentage of request) {direction} target")  # fmt: skip
        self._status(hpa, current, desired, round(utilization * 100), "ScalingActive", True,
                     "ValidMetricFound", "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)",
                     scaled=desired != current, used=used / len(ready))  # fmt: skip
        return None

    def _behave(self, hpa: Obj, current: int, desired: int) -> int:
        """The default behavior: scale-up rate limit, scale-down stabilization window."""
        now = self.clock.sim()
        uid = hpa["metadata"]["uid"]
        window = [
            (t, n)
            for t, n in self.recommendations.get(uid, [])
            if now - t <= DOWNSCALE_STABILIZATION_SECONDS
        ]
        window.append((now, desired))
        self.recommendations[uid] = window
        if desired > current:
            return min(
                desired, max(current * (100 + SCALE_UP_PERCENT) // 100, current + SCALE_UP_PODS)
            )
        if desired < current:
            return min(current, max(n for _, n in window))
        return desired

    def _pods(self, dep: Obj) -> list[Obj]:
        selector = dep["spec"].get("selector") or {}
        return [
            p for p in self.store.list(PODS, dep["metadata"]["namespace"])
            if match_label_selector(selector, p["metadata"].get("labels") or {})
            and not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip

    def _event(self, hpa: Obj, type_: str, reason: str, message: str) -> None:
        self.recorder.record(hpa, type_, reason, message, COMPONENT)

    def _status(self, hpa: Obj, current: int | None, desired: int | None, utilization: int | None,
                cond: str, ok: bool, reason: str, message: str, *, scaled: bool = False,
                used: float | None = None) -> None:  # fmt: skip
        now = rfc3339(self.clock.now())
        fresh = Store.copy(
            self.store.get(HPAS, hpa["metadata"]["namespace"], hpa["metadata"]["name"])
        )
        status: dict[str, Any] = dict(fresh.get("status") or {})
        if current is not None:
            status["currentReplicas"] = current
        if desired is not None:
            status["desiredReplicas"] = desired
        if utilization is not None:
            status["currentMetrics"] = [{"type": "Resource", "resource": {"name": "cpu", "current": {
                "averageUtilization": utilization, "averageValue": f"{round((used or 0) * 1000)}m"}}}]  # fmt: skip
        if scaled:
            status["lastScaleTime"] = now
        status["conditions"] = [
            {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale",
             "message": "recommended size matches current size", "lastTransitionTime": now},
            {"type": cond, "status": "True" if ok else "False", "reason": reason,
             "message": message, "lastTransitionTime": now},
        ]  # fmt: skip
        fresh["status"] = status
        self.store.update(HPAS, fresh, subresource="status")


def _cpu_target(spec: dict[str, Any]) -> int | None:
    for metric in spec.get("metrics") or [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}
    ]:  # fmt: skip
        resource = metric.get("resource") or {}
        target = resource.get("target") or {}
        if (
            metric.get("type") == "Resource"
            and resource.get("name") == "cpu"
            and target.get("type") == "Utilization"
        ):
            return int(target.get("averageUtilization", 80))
    return None
