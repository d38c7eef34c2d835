"""Several clusters from one scenario, watched by one farm.

A scenario with `clusters:` (see `scenario.ClusterSpec`) is played on one `World` per
cluster — each its own API server, kubelet and Loki, the Loki requiring the cluster's
tenant — sharing one forge and one phone (the first cluster's world holds them). The
team's pipeline is played as such teams run it: the GitOps repository holds a
kustomize base and one overlay per cluster; each cluster's overlay is rendered with
the real `kubectl kustomize` and applied to that cluster, at the start and again after
the scenario's `change` is committed — to the clusters whose rendering it changed.

`FleetRun` starts the fleet, a private Redis and the real farm (worker, beat and web
processes) configured through a clusters file (AIFIXER_CLUSTERS_FILE) naming each
cluster's kubeconfig, Loki, tenant and overlay; the single-cluster endpoints are not
given to it at all.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from aifixer.adapters.render import Renderer
from aifixer.models import IncidentState
from aifixer.settings import Settings
from aifixer.sources import Layout

from .harness import (
    _finished,
    farm_env,
    free_port,
    start_farm,
    start_model_stub,
    start_redis,
)
from .scenario import ManifestFile, Scenario
from .world import World, WorldError

Workload = tuple[str, str, str]  # (cluster, namespace, name)


class Fleet:
    """One world per cluster of the scenario; the first holds the forge and the phone."""

    def __init__(self, scenario: Scenario, state_dir: Path, *, speed: float = 30.0) -> None:
        if not scenario.clusters:
            raise WorldError(f"scenario {scenario.name} names no clusters")
        self.scenario = scenario
        first, *rest = scenario.clusters
        primary = World(scenario, state_dir / first.name, speed=speed, loki_tenant=first.name)
        self.worlds: dict[str, World] = {first.name: primary}
        for c in rest:
            self.worlds[c.name] = World(
                scenario, state_dir / c.name, speed=speed, shared=primary, loki_tenant=c.name
            )
        self.paths = {c.name: c.path for c in scenario.clusters}
        self.renders: dict[str, str] = {}  # cluster -> the rendering applied last
        self.broken: list[Workload] = []  # the Deployments the change touched, per cluster

    @property
    def primary(self) -> World:
        return next(iter(self.worlds.values()))

    def start(self) -> None:
        started: list[World] = []
        try:
            for world in self.worlds.values():  # the primary first: the others use its sites
                world.start(load=False)
                started.append(world)
            self.load()
        except BaseException:
            for world in reversed(started):
                world.stop()
            raise

    def stop(self) -> None:
        for world in reversed(list(self.worlds.values())):  # the primary last
            world.stop()

    def load(self, healthy_timeout: float = 60.0) -> None:
        """The repository committed, each overlay rendered and applied, then the change."""
        sc, primary = self.scenario, self.primary
        for number in sc.oncall.numbers:
            primary.phone.set_person(number, sc.oncall.answers.get(number, "no-answer"))
        owner, name = sc.gitops.repo.split("/", 1)
        files = {m.path: m.yaml for m in sc.manifests}
        primary.call(
            lambda: primary.forge.create_repo(owner, name, files, f"Add {sc.name} manifests")
        )
        self.deploy(files, healthy_timeout)
        if sc.change:
            changed = {m.path: m.yaml for m in sc.change}
            primary.call(
                lambda: primary.forge.commit(owner, name, changed, f"Update {', '.join(changed)}")
            )
            before = {c: _deployments(text) for c, text in self.renders.items()}
            touched = self.deploy({**files, **changed}, healthy_timeout=None)
            for cluster in touched:
                after = _deployments(self.renders[cluster])
                self.broken += [
                    (cluster, ns, n) for (ns, n), doc in after.items()
                    if before[cluster].get((ns, n)) != doc
                ]  # fmt: skip

    def deploy(self, files: dict[str, str], healthy_timeout: float | None) -> list[str]:
        """Render each cluster's overlay over `files` and apply it where it changed;
        returns the clusters it was applied to."""
        applied = []
        for cluster, world in self.worlds.items():
            text = render(files, self.paths[cluster])
            if self.renders.get(cluster) == text:
                continue
            self.renders[cluster] = text
            manifest = ManifestFile(path=self.paths[cluster], yaml=text)
            world.call(lambda w=world, m=manifest: w.apply([m]))
            applied.append(cluster)
            if healthy_timeout is not None:
                deployments = list(_deployments(text))
                world.call(
                    lambda w=world, d=deployments: w.wait_healthy(d, healthy_timeout),
                    timeout=healthy_timeout + 10,
                )
        return applied

    def clusters_file(self, path: Path) -> Path:
        """The farm's AIFIXER_CLUSTERS_FILE for this fleet: each cluster's kubeconfig, Loki
        and tenant, overlay and on-call numbers (the secrets are the farm's settings)."""
        doc = {
            "default": self.scenario.clusters[0].name,
            "clusters": [
                {
                    "name": name,
                    "kubeconfig": world.endpoints.kubeconfig,
                    "loki": {"url": world.endpoints.loki, "tenant": world.endpoints.loki_tenant},
                    "gitops": {"path": self.paths[name]},
                    "oncall": list(self.scenario.oncall.numbers),
                }
                for name, world in self.worlds.items()
            ],
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


def render(files: dict[str, str], path: str) -> str:
    """`kubectl kustomize` of `path` over the repository `files`, as the team's pipeline
    would (the product's renderer: the same tool and bounds)."""
    with tempfile.TemporaryDirectory(prefix="aifixer-fleet-") as tmp:
        root = Path(tmp)
        for rel, text in files.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return Renderer(Settings(_env_file=None)).render(root, Layout("kustomize", path))


def _deployments(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") == "Deployment":
            meta = doc.get("metadata") or {}
            out[(meta.get("namespace", "default"), meta["name"])] = doc
    return out


class FleetRun:
    """A fleet and the real farm watching every cluster of it, as a context manager.

    `wait()` blocks until every Deployment the change touched has an incident on its
    cluster and every incident is finished (or the timeout passes).
    """

    def __init__(
        self,
        sc: Scenario,
        workdir: Path,
        *,
        speed: float = 30.0,
        model: Callable[[World], tuple[str, str]] = start_model_stub,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.scenario, self.workdir, self.speed = sc, Path(workdir), speed
        self.model, self.extra_env = model, extra_env or {}
        self.fleet: Fleet | None = None
        self.env: dict[str, str] = {}
        self._stack = ExitStack()

    def __enter__(self) -> FleetRun:
        from aifixer.pipeline import Context

        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            redis_url, redis_proc = start_redis(self.workdir)
            self._stack.callback(redis_proc.stop)
            self.fleet = Fleet(self.scenario, self.workdir / "fleet", speed=self.speed)
            self.fleet.start()
            self._stack.callback(self.fleet.stop)
            primary = self.fleet.primary
            model_url, _ = self.model(primary)
            env = farm_env(primary, redis_url, model_url, "stub", free_port(), self.workdir)
            # The farm is told of the clusters by the file only.
            for key in ("AIFIXER_KUBECONFIG", "AIFIXER_LOKI_URL", "AIFIXER_ONCALL_NUMBERS"):
                env.pop(key, None)
            env["AIFIXER_CLUSTERS_FILE"] = str(
                self.fleet.clusters_file(self.workdir / "clusters.yaml")
            )
            env.update(self.extra_env)
            self.env = env
            for p in start_farm(env, self.workdir):
                self._stack.callback(p.stop)
                self.procs = [*getattr(self, "procs", []), p]
            self.ctx = Context(settings=Settings(_env_file=None, redis_url=redis_url))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def incidents(self) -> list[IncidentState]:
        from aifixer.pipeline import all_incidents

        return all_incidents(self.ctx)

    def finished(self, states: list[IncidentState]) -> bool:
        broken = self.fleet.broken if self.fleet is not None else []
        seen = {
            (s.incident.workload.cluster, s.incident.workload.namespace, s.incident.workload.name)
            for s in states
        }
        return set(broken) <= seen and all(_finished(self.ctx, s) for s in states)

    def wait(self, timeout: float) -> list[IncidentState]:
        deadline = time.monotonic() + timeout
        while True:
            states = self.incidents()
            if self.finished(states) or time.monotonic() >= deadline:
                return self.incidents()
            for p in self.procs:
                if p.popen.poll() is not None:
                    raise RuntimeError(
                        f"{p.name} exited with {p.popen.returncode}; see {p.log_path}"
                    )
            time.sleep(0.5)

    def describe(self, states: list[IncidentState]) -> str:
        """What the farm reached, for an assertion's message."""
        return json.dumps(
            {
                "broken": self.fleet.broken if self.fleet else [],
                "incidents": [
                    {
                        "cluster": s.incident.workload.cluster,
                        "workload": s.incident.workload.key,
                        "stage": s.stage,
                        "outcome": s.outcome,
                        "error": s.error,
                        "pr_error": s.pr_error,
                    }
                    for s in states
                ],
                "logs": str(self.workdir / "logs"),
            },
            indent=2,
        )
