"""The simulated pods' metrics, exported as a real cluster's exporters export them.

Prometheus scrapes two paths, as on a real cluster:

- `/metrics/cadvisor` — the kubelet's cAdvisor endpoint: `container_cpu_usage_seconds_total`
  and `container_memory_working_set_bytes` per container, plus the pod cgroup's own
  series (`container=""`), which real queries filter out with `container!=""`;
- `/metrics` — kube-state-metrics v2: requests and limits per container, a Deployment's
  desired and available replicas, pod labels (as with `--metric-labels-allowlist=pods=[*]`),
  pod and ReplicaSet owners, pod readiness.

CPU comes from the scenario's image catalog: an image with a `load` profile shares
that load among the Deployment's ready pods, each capped by its CPU limit; any other
running container uses its image's constant `cpu_millicores`. Counters are integrated
over wall time, with the load read at simulated time, so `rate()` in Prometheus gives
the cores a pod uses now. What the ready pods cannot serve is counted as unserved
(`sandbox_unserved_cpu_seconds_total`, and in simulated core-seconds on `/sandbox/load`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .clock import Clock
from .kube.controllers import pod_ready
from .kube.quantity import parse_quantity
from .kube.resources import core
from .kube.store import Obj, Store
from .scenario import Image, LoadProfile
from .serve import BackgroundLoop

log = logging.getLogger("aifixer_sandbox.metrics")

PODS = core("pods")
NODES = core("nodes")
DEPLOYMENTS = core("deployments")
REPLICASETS = core("replicasets")

TICK_SECONDS = 0.25  # wall seconds between integration steps
MIB = 1024 * 1024
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


# -- the exposition format ----------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sanitize_label(key: str) -> str:
    """kube-state-metrics' label name for a Kubernetes label key (`app.kubernetes.io/name`
    → `label_app_kubernetes_io_name`)."""
    return "label_" + "".join(c if c.isalnum() or c == "_" else "_" for c in key)


@dataclass
class Family:
    name: str
    kind: str  # counter | gauge
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float) -> None:
        self.samples.append((labels, value))

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{self.name}{{{body}}} {_number(value)}")
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def render(families: Iterable[Family]) -> str:
    return "".join(f.render() for f in families)


# -- reading the simulated cluster -----------------------------------------------------


def _cores(resources: dict[str, Any] | None, kind: str, name: str) -> float | None:
    value = ((resources or {}).get(kind) or {}).get(name)
    return None if value is None else float(parse_quantity(value))


def _owner(obj: Obj, kind: str) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller"):
            return ref.get("name")
    return None


def _running(pod: Obj) -> set[str]:
    return {
        s["name"]
        for s in (pod.get("status") or {}).get("containerStatuses") or []
        if "running" in (s.get("state") or {})
    }


@dataclass
class _Deployment:
    namespace: str
    name: str
    profile: LoadProfile | None
    pods: list[Obj] = field(default_factory=list)


class Metrics(BackgroundLoop):
    """Integrates the pods' CPU over time and renders both exporters' pages."""

    def __init__(self, store: Store, clock: Clock, images: Callable[[str], Image | None]) -> None:
        self.store, self.clock, self.images = store, clock, images
        self.cpu_seconds: dict[tuple[str, str], float] = {}  # (pod uid, container) -> s
        self.unserved: dict[tuple[str, str], float] = {}  # (ns, deployment) -> core·s, wall
        self.demand: dict[tuple[str, str], float] = {}
        self.sim_unserved: dict[tuple[str, str], float] = {}  # core·s of simulated time
        self.sim_demand: dict[tuple[str, str], float] = {}
        self.sim_capacity: dict[tuple[str, str], float] = {}  # ready pods' CPU limits, core·s
        self.pod_cores: dict[str, float] = {}  # pod uid -> cores used at the last step
        # Load set by hand (POST /sandbox/load), in units, instead of the profile's.
        self.overrides: dict[tuple[str, str], float] = {}
        self._last: tuple[float, float] | None = None  # (wall, sim) of the last step

    # -- the integration loop ------------------------------------------------------

    def start(self) -> None:
        self._last = (time.monotonic(), self.clock.sim())
        self.start_loop("metrics")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.step()
            except Exception:  # a malformed object must not stop the exporter
                log.exception("metrics step failed")

    def step(self) -> None:
        """Integrate every counter from the last step to now."""
        wall, sim = time.monotonic(), self.clock.sim()
        last_wall, last_sim = self._last or (wall, sim)
        self._last = (wall, sim)
        dt, dsim = wall - last_wall, sim - last_sim
        if dt <= 0:
            return
        mid = (last_sim + sim) / 2
        usage: dict[str, float] = {}  # pod uid -> cores now, what metrics-server reports
        for dep in self._deployments():
            key = (dep.namespace, dep.name)
            ready = {p["metadata"]["uid"] for p in dep.pods if pod_ready(p)}
            demand = self._demand(key, dep.profile, mid)
            share = demand / len(ready) if ready else 0.0
            served = capacity = 0.0
            for pod in dep.pods:
                uid = pod["metadata"]["uid"]
                for c, cores, limit in self._usage(
                    pod, dep.profile, share if uid in ready else None
                ):
                    self.cpu_seconds[(uid, c)] = self.cpu_seconds.get((uid, c), 0.0) + cores * dt
                    usage[uid] = usage.get(uid, 0.0) + cores
                    if uid in ready and dep.profile is not None:
                        served += cores
                        capacity += limit
            if dep.profile is not None:
                missing = max(0.0, demand - served)
                for totals, value, span in (
                    (self.unserved, missing, dt),
                    (self.demand, demand, dt),
                    (self.sim_unserved, missing, dsim),
                    (self.sim_demand, demand, dsim),
                    (self.sim_capacity, capacity, dsim),
                ):
                    totals[key] = totals.get(key, 0.0) + value * span
        for pod in self._orphans():
            for c, cores, _ in self._usage(pod, None, None):
                uid = pod["metadata"]["uid"]
                self.cpu_seconds[(uid, c)] = self.cpu_seconds.get((uid, c), 0.0) + cores * dt
                usage[uid] = usage.get(uid, 0.0) + cores
        self.pod_cores = usage

    def _demand(self, key: tuple[str, str], profile: LoadProfile | None, t: float) -> float:
        """Cores the Deployment's load asks for at simulated second `t`."""
        if profile is None:
            return 0.0
        if key in self.overrides:
            return self.overrides[key] * profile.cpu_millicores_per_unit / 1000
        return profile.millicores(t) / 1000

    def _node_cores(self, pod: Obj) -> float:
        node = self.store.try_get(NODES, None, (pod.get("spec") or {}).get("nodeName") or "")
        cpu = (((node or {}).get("status") or {}).get("capacity") or {}).get("cpu")
        return float(parse_quantity(cpu)) if cpu is not None else 4.0

    def _usage(
        self, pod: Obj, profile: LoadProfile | None, share: float | None
    ) -> list[tuple[str, float, float]]:
        """(container, cores used, CPU limit) of each running container of `pod`."""
        running = _running(pod)
        out = []
        for c in (pod.get("spec") or {}).get("containers") or []:
            if c["name"] not in running:
                continue
            image = self.images(c.get("image", ""))
            limit = _cores(c.get("resources"), "limits", "cpu") or self._node_cores(pod)
            if image is not None and image.load is not None and image.load == profile:
                cores = share if share is not None else image.cpu_millicores / 1000
            else:
                cores = (image.cpu_millicores if image else 10) / 1000
            out.append((c["name"], min(cores, limit), limit))
        return out

    def _deployments(self) -> list[_Deployment]:
        deployments = {}
        for d in self.store.list(DEPLOYMENTS):
            containers = d["spec"]["template"]["spec"].get("containers") or []
            profile = next(
                (
                    img.load
                    for c in containers
                    if (img := self.images(c.get("image", ""))) and img.load
                ),
                None,
            )
            key = (d["metadata"]["namespace"], d["metadata"]["name"])
            deployments[key] = _Deployment(*key, profile)
        for pod in self.store.list(PODS):
            key = self._deployment_of(pod)
            if key in deployments:
                deployments[key].pods.append(pod)
        return list(deployments.values())

    def _deployment_of(self, pod: Obj) -> tuple[str, str] | None:
        ns = pod["metadata"].get("namespace", "")
        rs_name = _owner(pod, "ReplicaSet")
        rs = self.store.try_get(REPLICASETS, ns, rs_name) if rs_name else None
        name = _owner(rs, "Deployment") if rs is not None else None
        return (ns, name) if name else None

    def _orphans(self) -> list[Obj]:
        return [p for p in self.store.list(PODS) if self._deployment_of(p) is None]

    # -- the two pages ---------------------------------------------------------------

    def cadvisor(self) -> str:
        cpu = Family(
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed in seconds.",
        )
        mem = Family("container_memory_working_set_bytes", "gauge", "Current working set in bytes.")
        for pod in self.store.list(PODS):
            m = pod["metadata"]
            uid, running = m["uid"], _running(pod)
            cgroup = f"/kubepods/burstable/pod{uid}"
            pod_labels = {"namespace": m["namespace"], "pod": m["name"]}
            total_cpu = total_mem = 0.0
            for c in (pod.get("spec") or {}).get("containers") or []:
                if c["name"] not in running:
                    continue
                image = self.images(c.get("image", ""))
                used = self.cpu_seconds.get((uid, c["name"]), 0.0)
                working = (image.memory_mib if image else 32) * MIB
                labels = {
                    "container": c["name"],
                    "id": f"{cgroup}/{c['name']}",
                    "image": c.get("image", ""),
                    "name": c["name"],
                    **pod_labels,
                }
                cpu.add({**labels, "cpu": "total"}, used)
                mem.add(labels, working)
                total_cpu += used
                total_mem += working
            if running:
                pod_cgroup = {"container": "", "id": cgroup, "image": "", "name": "", **pod_labels}
                cpu.add({**pod_cgroup, "cpu": "total"}, total_cpu)
                mem.add(pod_cgroup, total_mem)
        return render([cpu, mem])

    def kube_state(self) -> str:
        requests = Family(
            "kube_pod_container_resource_requests",
            "gauge",
            "The number of requested request resource by a container.",
        )
        limits = Family(
            "kube_pod_container_resource_limits",
            "gauge",
            "The number of requested limit resource by a container.",
        )
        labels = Family(
            "kube_pod_labels", "gauge", "Kubernetes labels converted to Prometheus labels."
        )
        owner = Family("kube_pod_owner", "gauge", "Information about the Pod's owner.")
        ready = Family(
            "kube_pod_status_ready",
            "gauge",
            "Describes whether the pod is ready to serve requests.",
        )
        rs_owner = Family(
            "kube_replicaset_owner", "gauge", "Information about the ReplicaSet's owner."
        )
        spec = Family(
            "kube_deployment_spec_replicas", "gauge", "Number of desired pods for a deployment."
        )
        available = Family(
            "kube_deployment_status_replicas_available",
            "gauge",
            "The number of available replicas per deployment.",
        )
        for pod in self.store.list(PODS):
            m = pod["metadata"]
            base = {"namespace": m["namespace"], "pod": m["name"], "uid": m["uid"]}
            node = (pod.get("spec") or {}).get("nodeName") or ""
            for c in (pod.get("spec") or {}).get("containers") or []:
                for family, kind in ((requests, "requests"), (limits, "limits")):
                    res = (c.get("resources") or {}).get(kind) or {}
                    for resource, unit in (("cpu", "core"), ("memory", "byte")):
                        if resource in res:
                            family.add(
                                {**base, "container": c["name"], "node": node,
                                 "resource": resource, "unit": unit},
                                float(parse_quantity(res[resource])),
                            )  # fmt: skip
            labels.add(
                {**base, **{sanitize_label(k): v for k, v in (m.get("labels") or {}).items()}}, 1
            )
            for ref in m.get("ownerReferences") or [{}]:
                owner.add(
                    {**base, "owner_kind": ref.get("kind", "<none>"),
                     "owner_name": ref.get("name", "<none>"),
                     "owner_is_controller": str(bool(ref.get("controller"))).lower()},
                    1,
                )  # fmt: skip
            is_ready = pod_ready(pod)
            for cond in ("true", "false", "unknown"):
                ready.add(
                    {**base, "condition": cond},
                    1 if (cond == "true") == is_ready and cond != "unknown" else 0,
                )
        for rs in self.store.list(REPLICASETS):
            m = rs["metadata"]
            ref = next(iter(m.get("ownerReferences") or []), {})
            rs_owner.add(
                {"namespace": m["namespace"], "replicaset": m["name"],
                 "owner_kind": ref.get("kind", "<none>"), "owner_name": ref.get("name", "<none>"),
                 "owner_is_controller": str(bool(ref.get("controller"))).lower()},
                1,
            )  # fmt: skip
        for d in self.store.list(DEPLOYMENTS):
            m = d["metadata"]
            base = {"namespace": m["namespace"], "deployment": m["name"]}
            spec.add(base, d["spec"].get("replicas", 1))
            available.add(base, (d.get("status") or {}).get("availableReplicas", 0))
        return render([requests, limits, labels, owner, ready, rs_owner, spec, available])

    def sandbox(self) -> str:
        families = [
            Family(
                "sandbox_unserved_cpu_seconds_total",
                "counter",
                "CPU the load asked for that the Deployment's ready pods could not give.",
            ),
            Family(
                "sandbox_demand_cpu_seconds_total",
                "counter",
                "CPU the load asked for, from the scenario's load profile.",
            ),
        ]
        for family, totals in zip(families, (self.unserved, self.demand), strict=True):
            for (ns, name), value in sorted(totals.items()):
                family.add({"namespace": ns, "deployment": name}, value)
        return render(families)

    def history(self, instance: str, step_s: float = 15.0) -> str:
        """The load profiles' past (`history_seconds`) as OpenMetrics, for backfilling.

        For each Deployment whose profile has history, the CPU counters of its current
        ready pods (and their owner series, so queries that join them work on the past), sharing the past load as they share the present one, sampled every
        `step_s` simulated seconds up to now, with the labels a scrape of
        `/metrics/cadvisor` at `instance` gives them (job "kubelet"), so the past and the
        live series are one series to Prometheus. `promtool tsdb
        create-blocks-from openmetrics` turns it into blocks.
        """
        now, sim_now, speed = time.time(), self.clock.sim(), self.clock.speed
        lines = ["# TYPE container_cpu_usage_seconds counter"]
        series: list[tuple[dict[str, str], list[tuple[float, float]]]] = []
        owners: list[tuple[dict[str, str], list[float]]] = []  # kube_pod_owner
        replicasets: dict[str, tuple[dict[str, str], list[float]]] = {}  # kube_replicaset_owner
        for dep in self._deployments():
            profile = dep.profile
            if profile is None or not profile.history_seconds:
                continue
            ready = [p for p in dep.pods if pod_ready(p)]
            if not ready:
                continue
            steps = int(profile.history_seconds // step_s)
            for pod in ready:
                m = pod["metadata"]
                rs = _owner(pod, "ReplicaSet") or ""
                ksm = {
                    "instance": instance,
                    "job": "kube-state-metrics",
                    "namespace": m["namespace"],
                }
                times = [now + i * step_s / speed for i in range(-steps, 0)]
                owners.append(
                    (
                        {
                            **ksm,
                            "owner_is_controller": "true",
                            "owner_kind": "ReplicaSet",
                            "owner_name": rs,
                            "pod": m["name"],
                            "uid": m["uid"],
                        },
                        times,
                    )
                )
                replicasets[rs] = (
                    {
                        **ksm,
                        "owner_is_controller": "true",
                        "owner_kind": "Deployment",
                        "owner_name": dep.name,
                        "replicaset": rs,
                    },
                    times,
                )
                for c in pod["spec"]["containers"]:
                    image = self.images(c.get("image", ""))
                    if image is None or image.load != profile:
                        continue
                    limit = _cores(c.get("resources"), "limits", "cpu") or self._node_cores(pod)
                    labels = {
                        "container": c["name"],
                        "cpu": "total",
                        "id": f"/kubepods/burstable/pod{m['uid']}/{c['name']}",
                        "image": c.get("image", ""),
                        "instance": instance,
                        "job": "kubelet",
                        "metrics_path": "/metrics/cadvisor",
                        "name": c["name"],
                        "namespace": m["namespace"],
                        "pod": m["name"],
                    }
                    total, samples = 0.0, []
                    for i in range(-steps, 0):
                        t = sim_now + i * step_s
                        cores = min(profile.millicores(t) / 1000 / len(ready), limit)
                        total += cores * step_s / speed
                        samples.append((now + i * step_s / speed, total))
                    series.append((labels, samples))
        for labels, samples in series:
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines += [
                f"container_cpu_usage_seconds_total{{{body}}} {v!r} {t:.3f}" for t, v in samples
            ]
        for name, pairs in (
            ("kube_pod_owner", owners),
            ("kube_replicaset_owner", list(replicasets.values())),
        ):
            lines.append(f"# TYPE {name} gauge")
            for labels, times in pairs:
                body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines += [f"{name}{{{body}}} 1 {t:.3f}" for t in times]
        lines.append("# EOF")
        return "\n".join(lines) + "\n"

    def load_report(self) -> dict[str, Any]:
        """Per Deployment, in simulated core-seconds: demand, unserved, ready capacity."""
        return {
            f"{ns}/{name}": {
                "demand_core_seconds": round(self.sim_demand.get((ns, name), 0.0), 3),
                "unserved_core_seconds": round(self.sim_unserved.get((ns, name), 0.0), 3),
                "capacity_core_seconds": round(self.sim_capacity.get((ns, name), 0.0), 3),
            }
            for ns, name in sorted(self.sim_demand)
        }


def make_app(metrics: Metrics) -> web.Application:
    async def cadvisor(request: web.Request) -> web.Response:
        return web.Response(body=metrics.cadvisor().encode(), headers={"Content-Type": TEXT_FORMAT})

    async def kube_state(request: web.Request) -> web.Response:
        page = metrics.kube_state() + metrics.sandbox()
        return web.Response(body=page.encode(), headers={"Content-Type": TEXT_FORMAT})

    async def load(request: web.Request) -> web.Response:
        return web.json_response(metrics.load_report())

    async def set_load(request: web.Request) -> web.Response:
        """{"namespace", "deployment", "units"}: the load from now on (units null: the profile's)."""
        try:
            body = await request.json()
            key = (str(body["namespace"]), str(body["deployment"]))
            units = body.get("units")
            units = None if units is None else float(units)
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPBadRequest(
                text=f"expected namespace, deployment, units: {exc}\n"
            ) from None
        if units is not None and not 0 <= units < float("inf"):
            raise web.HTTPBadRequest(text="units must be a finite number >= 0\n")
        if units is None:
            metrics.overrides.pop(key, None)
        else:
            metrics.overrides[key] = units
        return web.json_response({"namespace": key[0], "deployment": key[1], "units": units})

    app = web.Application()
    app.router.add_get("/metrics/cadvisor", cadvisor)
    app.router.add_get("/metrics", kube_state)
    app.router.add_get("/sandbox/load", load)
    app.router.add_post("/sandbox/load", set_load)
    return app
