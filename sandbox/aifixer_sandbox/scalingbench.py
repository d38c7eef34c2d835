"""Proactive versus reactive scaling, measured: forecast scaling against the HPA.

One sandbox world, one real Prometheus scraping it (with several cycles of past load
backfilled), two Deployments of the same image, each given its own copy of the same
load (a cycle, a steep surge once per cycle jittered in time and height, and noise):

- `api-hpa` is scaled by the sandbox's HPA controller (autoscaling/v2, the default
  behavior: 15 s sync, 10 % tolerance, 300 s scale-down stabilization) on a CPU
  utilization target;
- `api-forecast` by forecast scaling in `apply` mode, the very `scale_once` pass the
  Celery task runs, through the farm's adapters (`pipeline.Context`), called by the
  bench every `scaling_interval_s`, with the same target per pod expressed in cores
  and the same bounds.

A new pod needs about `start_seconds` (plus one readiness-probe period) before it is
Ready and serves. Simulated time runs `speed` times faster than wall time; Prometheus
sees wall time, so every setting of the scaler (rate window, step, history, season,
horizon and scale-in window annotations, interval) is the farm's default duration, or
the one the load calls for, divided by the speed.

The measured window starts after a warm-up (the Deployments start at a size that
serves the peak, as a statically sized service would, which is also what the
backfilled history shows) and covers whole cycles. From `/sandbox/load` at its start
and its end, per Deployment, in core-minutes of simulated time: demand, unserved
(what the ready pods could not serve), capacity (the ready pods' CPU limits), served
and idle (capacity − served).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_lib
import requests
import yaml

from aifixer.adapters.errors import PermanentError, TransientError
from aifixer.pipeline import Context
from aifixer.scaling import scaler
from aifixer.scaling.forecast import POLICY_ANNOTATIONS
from aifixer.settings import Settings

from . import promstack
from .harness import scaled_scaling, start_redis, world_history
from .scenario import Cycle, Image, LoadProfile, ManifestFile, Node, Scenario, Spike
from .world import World

log = logging.getLogger("aifixer_sandbox.scalingbench")

NAMESPACE = "shop"
HPA_NAME, FORECAST_NAME = "api-hpa", "api-forecast"
IMAGE = "shop/api:1"
PORT = 8080
PROBE_PERIOD_S = 5  # simulated seconds between readiness probes
SCRAPE_SIM_S = 30.0  # kube-prometheus scrapes cAdvisor every 30 s
INTERVAL_SIM_S = 60.0  # the farm's default scaling interval
SCALE_IN_WINDOW_SIM_S = 300.0  # the HPA's scale-down stabilization, for both
SAMPLE_WALL_S = 0.5  # the bench's own timeline
SETTINGS_SHOWN = ("scaling_forecaster", "scaling_interval_s", "scaling_history_s",
                  "scaling_step_s", "scaling_season_s", "scaling_rate_window")  # fmt: skip


@dataclass(frozen=True)
class BenchConfig:
    """One run. Durations are simulated seconds unless they say wall."""

    forecaster: str | None = None  # None: the farm's default (Settings.scaling_forecaster)
    speed: float = 30.0
    cycle_s: float = 3600.0
    cycles: int = 3  # measured, after the warm-up
    warmup_cycles: float = 1.0
    history_cycles: float = 3.0  # backfilled before the run
    start_seconds: float = 75.0  # a new container's time to listen (then one probe)
    target_percent: int = 70  # HPA averageUtilization; the forecast target is this of the request
    request_millicores: int = 500  # = the limit (Guaranteed QoS)
    min_replicas: int = 2
    max_replicas: int = 20
    initial_replicas: int = 14  # serves the peak: the past, before autoscaling
    # The load, in millicores: base + a cycle + one surge per cycle, times noise.
    base_m: float = 2000.0
    amplitude_m: float = 1000.0
    surge_m: float = 1500.0  # ±20 % per cycle
    surge_at: float = 0.65  # of the cycle (the cycle peaks at 0), ±jitter
    surge_jitter_s: float = 180.0
    surge_duration_s: float = 900.0  # ramps up and down over 10 % of it
    noise: float = 0.08  # per 15 s
    seed: int = 7

    def wall(self, sim_s: float) -> float:
        return sim_s / self.speed


def load_profile(cfg: BenchConfig, until_s: float) -> LoadProfile:
    """The load from `history_cycles` before the start to `until_s` after it."""
    rng = random.Random(cfg.seed)
    first = -math.ceil(cfg.history_cycles) - 1
    last = math.ceil(until_s / cfg.cycle_s) + 1
    spikes = [
        Spike(
            at_seconds=k * cfg.cycle_s
            + cfg.surge_at * cfg.cycle_s
            + rng.uniform(-cfg.surge_jitter_s, cfg.surge_jitter_s),
            duration_seconds=cfg.surge_duration_s,
            extra=cfg.surge_m * rng.uniform(0.8, 1.2),
        )
        for k in range(first, last + 1)
    ]
    return LoadProfile(
        base=cfg.base_m,
        cycles=[Cycle(period_seconds=cfg.cycle_s, amplitude=cfg.amplitude_m)],
        spikes=spikes,
        noise=cfg.noise,
        noise_seconds=15,
        history_seconds=cfg.history_cycles * cfg.cycle_s,
        seed=cfg.seed,
    )


def _duration(wall_s: float) -> str:
    """An annotation duration in wall seconds ("5s", "2.5s")."""
    return f"{round(wall_s, 3):g}s"


def _deployment(cfg: BenchConfig, name: str, annotations: dict[str, str]) -> ManifestFile:
    cpu = f"{cfg.request_millicores}m"
    resources = {"cpu": cpu, "memory": "128Mi"}
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {
            "replicas": cfg.initial_replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "api",
                            "image": IMAGE,
                            "ports": [{"containerPort": PORT}],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": PORT},
                                "initialDelaySeconds": max(0, int(cfg.start_seconds) - 15),
                                "periodSeconds": PROBE_PERIOD_S,
                            },
                            "resources": {"requests": dict(resources), "limits": dict(resources)},
                        }
                    ]
                },
            },
        },
    }
    return ManifestFile(path=f"{name}.yaml", yaml=yaml.safe_dump(doc, sort_keys=False))


def forecast_annotations(cfg: BenchConfig) -> dict[str, str]:
    target_m = cfg.request_millicores * cfg.target_percent / 100
    # Until the next pass, plus the time a new pod needs to be Ready.
    horizon = cfg.start_seconds + PROBE_PERIOD_S + INTERVAL_SIM_S
    return {
        POLICY_ANNOTATIONS["mode"]: "apply",
        POLICY_ANNOTATIONS["target"]: f"{target_m:g}m",
        POLICY_ANNOTATIONS["min"]: str(cfg.min_replicas),
        POLICY_ANNOTATIONS["max"]: str(cfg.max_replicas),
        POLICY_ANNOTATIONS["horizon"]: _duration(math.ceil(cfg.wall(horizon))),
        POLICY_ANNOTATIONS["window"]: _duration(cfg.wall(SCALE_IN_WINDOW_SIM_S)),
    }


def hpa_manifest(cfg: BenchConfig) -> ManifestFile:
    target = {"type": "Utilization", "averageUtilization": cfg.target_percent}
    doc = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": HPA_NAME, "namespace": NAMESPACE},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": HPA_NAME},
            "minReplicas": cfg.min_replicas,
            "maxReplicas": cfg.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}],
        },
    }
    return ManifestFile(path="hpa.yaml", yaml=yaml.safe_dump(doc, sort_keys=False))


def scenario(cfg: BenchConfig, until_s: float) -> Scenario:
    pods = 2 * cfg.max_replicas * cfg.request_millicores
    nodes = [Node(name=f"node-{i + 1}", cpu_millicores=8000) for i in range(math.ceil(pods / 7000))]
    return Scenario(
        name="scaling-bench",
        description="The same load on two Deployments: one scaled by the HPA, one by forecast.",
        images={
            IMAGE: Image(
                memory_mib=64,
                port=PORT,
                start_seconds=cfg.start_seconds,
                load=load_profile(cfg, until_s),
            )
        },
        nodes=nodes,
        manifests=[
            _deployment(cfg, HPA_NAME, {}),
            _deployment(cfg, FORECAST_NAME, forecast_annotations(cfg)),
        ],
        # Nothing here is expected to fail: the outcome is never waited for, and naming
        # one workload keeps a scenario of several Deployments without a change valid.
        expect={"outcome": "fixed", "workloads": [f"{NAMESPACE}/{HPA_NAME}"]},
    )


def scaler_settings(
    cfg: BenchConfig, *, kubeconfig: str, prometheus_url: str, redis_url: str
) -> Settings:
    """The farm's scaling settings at this run's time scale, in wall seconds.

    The defaults of a real deployment — a pass a minute, 15 s steps, a 2 m rate window,
    30 minutes of history (three seasons for a season shorter than a day), gaps up to
    5 minutes bridged — divided by the speed, kept above what one-second scrapes resolve.
    """
    chosen = {"scaling_forecaster": cfg.forecaster} if cfg.forecaster else {}
    return Settings(
        _env_file=None,
        kubeconfig=Path(kubeconfig),
        prometheus_url=prometheus_url,
        redis_url=redis_url,
        namespaces=[NAMESPACE],
        **scaled_scaling(cfg.cycle_s, cfg.speed, cfg.wall(SCRAPE_SIM_S)),
        **chosen,
    )


# -- the figures -----------------------------------------------------------------------


@dataclass
class Figures:
    """One Deployment over the measured window, in core-minutes of simulated time."""

    deployment: str
    scaler: str
    demand: float
    unserved: float
    capacity: float
    served: float  # demand − unserved
    idle: float  # capacity − served
    unserved_percent: float  # of demand
    utilization_percent: float  # served / capacity
    # Served as Prometheus counted it (the pods' cAdvisor counters, as the scaler reads
    # them): a check of the exporter's books, within the extrapolation of rate().
    served_prometheus: float | None
    mean_replicas: float  # spec.replicas, sampled
    max_replicas: int
    rescales: int  # changes of spec.replicas seen in the window
    rescales_run: int  # the same, warm-up included


def figures(
    name: str,
    scaler_name: str,
    start: dict[str, Any],
    end: dict[str, Any],
    timeline: list[dict[str, Any]],
    served_prometheus: float | None = None,
) -> Figures:
    key = f"{NAMESPACE}/{name}"

    def delta(field_: str) -> float:
        return (end[key][field_] - start[key][field_]) / 60

    demand, unserved, capacity = (
        delta("demand_core_seconds"),
        delta("unserved_core_seconds"),
        delta("capacity_core_seconds"),
    )
    served = demand - unserved
    measured = [s["replicas"][name] for s in timeline if s["measured"]]
    every = [s["replicas"][name] for s in timeline]
    return Figures(
        deployment=name,
        scaler=scaler_name,
        demand=round(demand, 3),
        unserved=round(unserved, 3),
        capacity=round(capacity, 3),
        served=round(served, 3),
        idle=round(capacity - served, 3),
        unserved_percent=round(100 * unserved / demand, 3) if demand else 0.0,
        utilization_percent=round(100 * served / capacity, 2) if capacity else 0.0,
        served_prometheus=None if served_prometheus is None else round(served_prometheus, 3),
        mean_replicas=round(sum(measured) / len(measured), 2) if measured else 0.0,
        max_replicas=max(measured, default=0),
        rescales=_changes(measured),
        rescales_run=_changes(every),
    )


def _changes(values: list[int]) -> int:
    return sum(1 for a, b in zip(values, values[1:], strict=False) if a != b)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


@dataclass
class Result:
    config: dict[str, Any]
    settings: dict[str, Any]
    annotations: dict[str, str]
    hpa: Figures
    forecast: Figures
    unserved_ratio: float | None  # forecast / HPA
    capacity_ratio: float | None
    idle_ratio: float | None
    goal_met: bool  # unserved at most half the HPA's, capacity at most 10 % more
    measured_from_sim_s: float  # on the world's clock (the load profile's t)
    measured_sim_s: float
    wall_s: float
    forecast_decisions: int
    forecast_changes: int
    forecast_errors: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, with_timeline: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not with_timeline:
            out.pop("timeline")
        return out


# -- the run ---------------------------------------------------------------------------


def _snapshot(metrics_url: str) -> dict[str, Any]:
    r = requests.get(f"{metrics_url}/sandbox/load", timeout=10)
    r.raise_for_status()
    return r.json()


def run(cfg: BenchConfig, workdir: Path, progress: Callable[[str], None] | None = None) -> Result:
    """Play the run; returns the figures of the measured window."""
    say = progress or (lambda _: None)
    started = time.monotonic()
    # Simulated seconds the run may last: setup, warm-up, the cycles, and a margin.
    until_s = (cfg.warmup_cycles + cfg.cycles + 2) * cfg.cycle_s + cfg.speed * 120
    workdir.mkdir(parents=True, exist_ok=True)
    redis_url, redis_proc = start_redis(workdir / "redis")
    world = World(scenario(cfg, until_s), workdir / "world", speed=cfg.speed)
    prom_proc = None
    try:
        world.start()
        world.call(
            lambda: world.wait_healthy([(NAMESPACE, HPA_NAME), (NAMESPACE, FORECAST_NAME)], 60)
        )
        ep = world.endpoints
        if ep is None:
            raise RuntimeError("the world has no endpoints")
        say(f"world up; backfilling {cfg.history_cycles:g} cycles of history")
        history = world_history(world)
        prom_url, prom_proc = promstack.start_prometheus(
            workdir / "prometheus",
            ep.metrics,
            scrape_interval=f"{max(1, round(cfg.wall(SCRAPE_SIM_S)))}s",
            history=history,
        )
        world.call(lambda: world.apply([hpa_manifest(cfg)]))
        settings = scaler_settings(
            cfg, kubeconfig=ep.kubeconfig, prometheus_url=prom_url, redis_url=redis_url
        )
        ctx = Context(settings=settings)
        say(
            f"prometheus {prom_url}; forecaster {settings.scaling_forecaster}, "
            f"interval {settings.scaling_interval_s:g} s, step {settings.scaling_step_s:g} s, "
            f"history {settings.scaling_history_s:g} s, season {settings.scaling_season_s:g} s, "
            f"rate window {settings.scaling_rate_window} (wall)"
        )
        t0 = time.monotonic()
        warmup_end = t0 + cfg.wall(cfg.warmup_cycles * cfg.cycle_s)
        end = warmup_end + cfg.wall(cfg.cycles * cfg.cycle_s)
        next_pass = next_sample = t0
        start_load: dict[str, Any] | None = None
        start_sim = start_epoch = 0.0
        timeline: list[dict[str, Any]] = []
        decisions = changes = 0
        errors: list[str] = []
        last_said = -1
        while True:
            now = time.monotonic()
            if start_load is None and now >= warmup_end:
                start_epoch = time.time()
                start_load, start_sim = _snapshot(ep.metrics), world.clock.sim()
                say("warm-up over: measuring")
            if now >= end:
                break
            if now >= next_pass:
                next_pass += settings.scaling_interval_s
                try:
                    made = scaler.scale_once(ctx.kube, ctx.prometheus, ctx.redis, settings)
                    decisions += len(made)
                    changes += sum(1 for d in made if d.changes)
                except (TransientError, PermanentError, redis_lib.RedisError) as exc:
                    errors.append(str(exc))  # as the task: the next pass tries again
                    log.warning("forecast scaling: %s", exc)
            if now >= next_sample:
                next_sample += SAMPLE_WALL_S
                sample = _sample(ctx, ep.metrics, world.clock.sim())
                sample["measured"] = start_load is not None
                timeline.append(sample)
                cycle = int((now - t0) / cfg.wall(cfg.cycle_s))
                if cycle != last_said:
                    last_said = cycle
                    say(f"cycle {cycle}: replicas {sample['replicas']}, ready {sample['ready']}")
            time.sleep(max(0.0, min(next_pass, next_sample, end) - time.monotonic()))
        end_epoch = time.time()
        end_load, end_sim = _snapshot(ep.metrics), world.clock.sim()
        if start_load is None:
            raise RuntimeError("the run ended before its warm-up did")
        time.sleep(2 * cfg.wall(SCRAPE_SIM_S) + 1)  # the last scrapes stored
        served = {}
        for n in (HPA_NAME, FORECAST_NAME):
            used = _served_prometheus(ctx, n, start_epoch, end_epoch)
            served[n] = None if used is None else used * cfg.speed / 60
        hpa = figures(HPA_NAME, "hpa", start_load, end_load, timeline, served[HPA_NAME])
        fc = figures(FORECAST_NAME, f"forecast ({settings.scaling_forecaster})", start_load,
                     end_load, timeline, served[FORECAST_NAME])  # fmt: skip
        goal = (
            hpa.unserved > 0
            and fc.unserved <= 0.5 * hpa.unserved
            and fc.capacity <= 1.10 * hpa.capacity
        )
        return Result(
            config=asdict(cfg),
            settings={k: getattr(settings, k) for k in SETTINGS_SHOWN},
            annotations=forecast_annotations(cfg),
            hpa=hpa,
            forecast=fc,
            unserved_ratio=_ratio(fc.unserved, hpa.unserved),
            capacity_ratio=_ratio(fc.capacity, hpa.capacity),
            idle_ratio=_ratio(fc.idle, hpa.idle),
            goal_met=goal,
            measured_from_sim_s=round(start_sim, 1),
            measured_sim_s=round(end_sim - start_sim, 1),
            wall_s=round(time.monotonic() - started, 1),
            forecast_decisions=decisions,
            forecast_changes=changes,
            forecast_errors=errors[:20],
            timeline=timeline,
        )
    finally:
        if prom_proc is not None:
            prom_proc.stop()
        world.stop()
        redis_proc.stop()


def _served_prometheus(ctx: Context, name: str, start: float, end: float) -> float | None:
    """Core-seconds (wall) the Deployment's pods used from `start` to `end`, as their
    cAdvisor counters in Prometheus tell it: the increase of every pod's counter over
    the span, pods deleted on the way included (the bench names the pods, so a name
    pattern finds them; the scaler's owner join only sees the pods alive at its instant).
    """
    promql = (
        f'sum(increase(container_cpu_usage_seconds_total{{namespace="{NAMESPACE}", '
        f'container!="", pod=~"{name}-.+"}}[{round((end - start) * 1000)}ms]))'
    )
    series = ctx.prometheus.query_range(promql, end, end, 1)
    values = [v for _, points in series for _, v in points if math.isfinite(v)]
    return values[0] if values else None


def _sample(ctx: Context, metrics_url: str, sim: float) -> dict[str, Any]:
    """Replicas (spec and ready) of both Deployments and the load counters, now."""
    deps = {d["metadata"]["name"]: d for d in ctx.kube.deployments(NAMESPACE)}
    load = _snapshot(metrics_url)
    return {
        "sim_s": round(sim, 1),
        "replicas": {n: int(deps[n]["spec"].get("replicas", 0)) for n in (HPA_NAME, FORECAST_NAME)},
        "ready": {
            n: int((deps[n].get("status") or {}).get("readyReplicas") or 0)
            for n in (HPA_NAME, FORECAST_NAME)
        },
        "load": {n: load.get(f"{NAMESPACE}/{n}") for n in (HPA_NAME, FORECAST_NAME)},
    }


# -- the report ------------------------------------------------------------------------


def markdown(result: Result) -> str:
    cols = ("scaler", "demand", "unserved", "unserved %", "capacity", "served", "idle",
            "utilization %", "mean replicas", "max replicas", "rescales")  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for f in (result.hpa, result.forecast):
        lines.append(
            f"| {f.scaler} | {f.demand:.1f} | {f.unserved:.2f} | {f.unserved_percent:.2f} | "
            f"{f.capacity:.1f} | {f.served:.1f} | {f.idle:.1f} | {f.utilization_percent:.1f} | "
            f"{f.mean_replicas:.1f} | {f.max_replicas} | {f.rescales} |"
        )

    def r(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines += [
        "",
        f"forecast / HPA: unserved {r(result.unserved_ratio)}, capacity "
        f"{r(result.capacity_ratio)}, idle {r(result.idle_ratio)} "
        f"(goal: unserved <= 0.50 for capacity <= 1.10: "
        f"{'met' if result.goal_met else 'not met'})",
        f"served by the pods' CPU counters in Prometheus: hpa {r(result.hpa.served_prometheus)}, "
        f"forecast {r(result.forecast.served_prometheus)}",
        f"core-minutes of simulated time over {result.measured_sim_s / 60:.0f} simulated minutes "
        f"({result.config['cycles']} cycles); run took {result.wall_s:.0f} s wall",
    ]
    return "\n".join(lines)
