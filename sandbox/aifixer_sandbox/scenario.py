"""Scenario files: one small world for the sandbox, in YAML.

This format is a contract that other tools write files for, so the keys and their
meanings are fixed (new optional keys may be added). A scenario names the images the
sandbox registry holds and how each behaves, the healthy starting manifests (applied to
the cluster and committed to the GitOps repository, or synced from it by a GitOps
controller: see `GitOps`), an optional bad `change`, the on-call people and how each
answers, and the outcome the farm should reach.

Loading validates strictly: an unknown key is an error naming the key and the file,
never silently ignored, because a typo in a scenario would otherwise test nothing.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aifixer.cliparams import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrashSpec(_Strict):
    """An image that starts, then exits on its own whatever its configuration (a bad release)."""

    after_seconds: float = 5  # simulated seconds after start
    exit_code: int = 1
    logs: list[str] = Field(default_factory=list)  # written just before it exits


class Cycle(_Strict):
    """A sine wave on the load: a day (86400 s) or an hour (3600 s), say."""

    period_seconds: float = Field(gt=0)
    amplitude: float  # units of load, peak above (and trough below) the base
    peak_at_seconds: float = 0  # where in the period the peak falls


class Spike(_Strict):
    """Extra load for a while, `at_seconds` after the scenario starts."""

    at_seconds: float
    duration_seconds: float = Field(gt=0)
    extra: float  # units of load on top of the rest, ramped up and down over 10 % of it


class LoadProfile(_Strict):
    """The load a Deployment running this image serves, as a function of simulated time.

    load(t) = base + trend·t + Σ cycles + spikes, times (1 + noise·ε) with ε a seeded
    normal draw per simulated `noise_seconds`, never below zero. The Deployment's ready
    pods share it evenly; each uses `cpu_millicores_per_unit` per unit, up to its CPU
    limit. What the ready pods cannot serve is unserved load. `history_seconds` of
    past load (t < 0) are written into Prometheus before the scenario starts.
    """

    base: float = Field(ge=0)
    cycles: list[Cycle] = Field(default_factory=list)
    trend_per_hour: float = 0
    noise: float = Field(default=0, ge=0, le=1)
    noise_seconds: float = Field(default=15, gt=0)
    spikes: list[Spike] = Field(default_factory=list)
    cpu_millicores_per_unit: float = Field(default=1, gt=0)
    history_seconds: float = Field(default=0, ge=0)
    seed: int = 0

    def at(self, t: float) -> float:
        """Units of load at simulated second `t` (negative: before the scenario started)."""
        value = self.base + self.trend_per_hour * t / 3600
        for c in self.cycles:
            value += c.amplitude * math.cos(
                2 * math.pi * (t - c.peak_at_seconds) / c.period_seconds
            )
        for s in self.spikes:
            value += s.extra * _ramp(t - s.at_seconds, s.duration_seconds)
        if self.noise:
            step = math.floor(t / self.noise_seconds)
            value *= 1 + self.noise * random.Random(self.seed * 1_000_003 + step).gauss(0, 1)
        return max(0.0, value)

    def millicores(self, t: float) -> float:
        return self.at(t) * self.cpu_millicores_per_unit


def _ramp(into: float, duration: float) -> float:
    """0 → 1 over the first 10 % of a spike, 1, then back to 0 over its last 10 %."""
    if into < 0 or into > duration:
        return 0.0
    edge = duration * 0.1
    return min(1.0, into / edge, (duration - into) / edge) if edge else 1.0


class Image(_Strict):
    """How a container running this image behaves in the pod simulator."""

    memory_mib: int = 32  # working set; OOMKilled (exit 137) when the memory limit is below it
    cpu_millicores: int = 10
    port: int | None = None  # HTTP port; probes to another port fail (connection refused)
    health_path: str = "/healthz"  # HTTP probes to another path fail with 404
    binaries: list[str] | None = None  # command/args[0] naming another executable exit 127
    # The image's own ENTRYPOINT and CMD, as its config holds them (None: the image has
    # none). A container without `command` runs the entrypoint, with its `args` or else
    # the CMD; with `command`, the CMD is ignored (as Kubernetes and containerd do).
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    requires_env: dict[str, str | None] = Field(default_factory=dict)  # None: must be set
    requires_files: list[str] = Field(default_factory=list)  # must be mounted, else exit 1
    start_seconds: float = 1  # simulated seconds from start to listening/ready
    size_bytes: int = 50_000_000  # reported in the kubelet's Pulled event
    logs: list[str] = Field(default_factory=list)  # printed once started
    crash: CrashSpec | None = None
    load: LoadProfile | None = None  # CPU follows this load instead of cpu_millicores

    @model_validator(mode="after")
    def _runs_what_it_has(self) -> Image:
        if self.entrypoint == [] or self.cmd == []:
            raise ValueError("entrypoint and cmd, when given, are non-empty lists")
        own = self.entrypoint or self.cmd
        if own and self.binaries is not None and own[0].rsplit("/", 1)[-1] not in self.binaries:
            raise ValueError(f"the image's own process {own[0]!r} is not among its binaries")
        return self


class Taint(_Strict):
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class Node(_Strict):
    name: str
    cpu_millicores: int = 4000
    memory_mib: int = 8192
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)


class ManifestFile(_Strict):
    path: str  # path in the GitOps repository
    yaml: str  # one or more YAML documents
    # A file of the repository that holds no Kubernetes objects of its own (a chart's
    # Chart.yaml, values or templates): committed as it is, never applied; only a GitOps
    # controller rendering it deploys what it makes.
    raw: bool = False

    def documents(self) -> list[dict[str, Any]]:
        if self.raw:
            return []
        return [d for d in yaml.safe_load_all(self.yaml) if d]

    @model_validator(mode="after")
    def _parses(self) -> ManifestFile:
        if self.raw:
            return self
        try:
            docs = [d for d in yaml.safe_load_all(self.yaml) if d]
        except yaml.YAMLError as exc:
            raise ValueError(f"not valid YAML: {exc}") from exc
        for d in docs:
            if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
                raise ValueError("every document needs apiVersion and kind")
        return self


class OnCall(_Strict):
    numbers: list[str] = Field(default_factory=list)  # called in order
    # What each person does when asked: "yes", "no", "silence", any phrase ("oui",
    # "non, désolé"), "press 1" for a keypad digit; or "no-answer", "busy", "failed"
    # for a call that never connects.
    answers: dict[str, str] = Field(default_factory=dict)


class Symptoms(_Strict):
    """The broken state the scenario must reach, as a person would observe it."""

    pod_reasons: list[str] = Field(
        default_factory=list
    )  # waiting/terminated reasons, Unschedulable, NotReady
    events: list[str] = Field(default_factory=list)  # Warning event reasons on the pods
    logs: list[str] = Field(default_factory=list)  # substrings of lines that reach Loki


class LevelsExpect(_Strict):
    """Every pod of a Deployment passes through these CPU-level label values, in order."""

    namespace: str = "default"
    deployment: str
    sequence: list[str] = Field(min_length=1)  # e.g. [low, high, low]


class ScalingExpect(_Strict):
    """Forecast scaling changes a Deployment's replicas: out ahead of the load, then in."""

    namespace: str = "default"
    deployment: str
    scale_out: bool = True
    scale_in: bool = False


class Expect(_Strict):
    """What the farm should reach: an incident's outcome, CPU-level labels, scaling, or several."""

    outcome: Literal["fixed", "called"] | None = None
    changed: list[str] = Field(default_factory=list)  # manifest field paths a fix changes
    # How many fixes the farm applies (with the stub model, which takes the playbooks'
    # first candidate): more than 1 when the first fix tried is expected not to verify
    # and to be undone; the last is the one `changed` names (`fixed`), or undone too.
    attempts: int = Field(default=1, ge=1, le=3)
    symptoms: Symptoms = Field(default_factory=Symptoms)
    levels: list[LevelsExpect] = Field(default_factory=list)
    scaling: list[ScalingExpect] = Field(default_factory=list)
    # The Deployments ("namespace/name") expected to fail, each ending in one incident.
    # Default: those the `change` changes; without a change, every Deployment of the
    # manifests, so a scenario born broken beside healthy neighbours must name them.
    workloads: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> Expect:
        if self.outcome is None and not self.levels and not self.scaling:
            raise ValueError("expect needs an outcome, levels or scaling")
        return self

    def describe(self) -> str:
        parts = [self.outcome] if self.outcome else []
        parts += [f"levels {'→'.join(x.sequence)}" for x in self.levels]
        parts += ["scaling" for _ in self.scaling[:1]]
        return ", ".join(parts)


class GitOps(_Strict):
    """The team's GitOps repository and, optionally, the controller that keeps the cluster
    equal to it (aifixer_sandbox.gitops).

    Without `controller`, the manifests (and later the `change`) are applied directly and
    committed: the repository only records them. With `controller: argocd`, an Argo
    CD-like Application (namespace argocd, named after the scenario) syncs `path` of the
    default branch automatically, reverting drift of live objects after
    `self_heal_seconds` (simulated) when `self_heal`, deleting objects gone from Git when
    `prune`; with `controller: flux`, a GitRepository and a Kustomization (namespace
    flux-system, named after the scenario) apply it every `interval_seconds`. Either
    way the `change` is then only committed, and the controller rolls it out.
    """

    repo: str = "acme/gitops"  # owner/name in the forge
    controller: Literal["argocd", "flux"] | None = None
    # The directory the controller syncs; default: that of the first manifest.
    path: str = ""
    self_heal: bool = True
    prune: bool = False
    self_heal_seconds: float = Field(default=3.0, ge=0)
    interval_seconds: float = Field(default=60.0, gt=0)

    def sync_path(self, manifests: list[ManifestFile]) -> str:
        if self.path or not manifests:
            return self.path.strip("/") or "."
        return str(Path(manifests[0].path).parent)


class RegistrySpec(_Strict):
    """The farm is told of the sandbox registry (AIFIXER_REGISTRIES and the rest), which
    serves the catalog's images of `host` (aifixer_sandbox.registry) with this `auth`.
    Without this key the registry still serves the catalog, but the farm asks it nothing."""

    host: str = "docker.io"
    auth: Literal["none", "basic", "bearer"] = "bearer"


class ClusterSpec(_Strict):
    """One cluster of a scenario watched as several clusters from one farm
    (aifixer_sandbox.fleet): its own API server and Loki (which requires the tenant
    X-Scope-OrgID: the cluster's name), sharing the forge and the phone. The team's
    pipeline renders `path` of the GitOps repository (`kubectl kustomize`) and applies
    it to this cluster, at the start and after the `change` is committed."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
    path: str  # a kustomize overlay of the repository, deployed to this cluster


DEFAULT_NODES = (Node(name="node-1"),)


class Scenario(_Strict):
    name: str
    description: str = ""
    images: dict[str, Image]
    nodes: list[Node] = Field(default_factory=lambda: list(DEFAULT_NODES))
    manifests: list[ManifestFile]
    change: list[ManifestFile] = Field(default_factory=list)
    oncall: OnCall = Field(default_factory=OnCall)
    expect: Expect
    gitops: GitOps = Field(default_factory=GitOps)
    registry: RegistrySpec | None = None
    # The simulated-time speed-up the scenario's wall-time settings were written for (the
    # forecast annotations' horizon and windows are read by the farm in wall seconds):
    # when set, the harness plays the scenario at this speed whatever it is asked.
    speed: float | None = Field(default=None, gt=0)
    # Several clusters from one farm (see ClusterSpec); empty: the one cluster of a world.
    clusters: list[ClusterSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _clusters(self) -> Scenario:
        names = [c.name for c in self.clusters]
        if len(set(names)) != len(names):
            raise ValueError("clusters: every cluster needs a name of its own")
        if self.clusters and self.gitops.controller:
            raise ValueError("clusters: a GitOps controller is not played on several clusters")
        return self

    @model_validator(mode="after")
    def _failing_workloads_named(self) -> Scenario:
        every = _deployments(self.manifests) + _deployments(self.change)
        unknown = [w for w in self.expect.workloads if w not in every]
        rendered = self.gitops.controller and any(m.raw for m in self.manifests)
        if unknown and not rendered:  # a chart's workloads exist once the controller renders
            raise ValueError(
                f"expect.workloads: {', '.join(unknown)} is not a Deployment of the scenario "
                "(namespace/name)"
            )
        if (
            self.expect.outcome is not None
            and not self.change
            and not self.expect.workloads
            and len(set(_deployments(self.manifests))) > 1
        ):
            raise ValueError(
                "expect.workloads: a scenario without a change and with several Deployments "
                "must name the ones expected to fail (namespace/name)"
            )
        return self

    def failing_workloads(self) -> list[tuple[str, str]]:
        """The workloads (Deployments, StatefulSets, DaemonSets) that should each end in
        an incident, in file order; none when no outcome is expected. `expect.workloads`
        when given; else those the `change` changes (a workload of the change identical
        to its manifest is a neighbour); else, for a scenario born broken, every workload
        of the manifests."""
        if self.expect.outcome is None:
            return []
        if self.expect.workloads:
            keys = self.expect.workloads
        elif not self.change:
            keys = _deployments(self.manifests)
        else:
            before = dict(_deployment_docs(self.manifests))
            keys = [
                f"{ns}/{name}"
                for (ns, name), doc in _deployment_docs(self.change)
                if before.get((ns, name)) != doc
            ]
        return [(ns, name) for ns, _, name in (k.partition("/") for k in dict.fromkeys(keys))]

    @property
    def monitored(self) -> bool:
        """Needs Prometheus and Alertmanager: a load profile, or levels or scaling expected."""
        return bool(
            self.expect.levels
            or self.expect.scaling
            or any(i.load is not None for i in self.images.values())
        )

    def season_seconds(self) -> float:
        """The longest cycle of the scenario's load (simulated seconds); a day without one."""
        periods = [c.period_seconds for i in self.images.values() if i.load for c in i.load.cycles]
        return max(periods, default=86_400.0)

    def image(self, ref: str) -> Image | None:
        """The catalog entry for an image reference, with or without a registry host."""
        if ref in self.images:
            return self.images[ref]
        for prefix in ("docker.io/", "docker.io/library/"):
            if ref.startswith(prefix) and ref[len(prefix) :] in self.images:
                return self.images[ref[len(prefix) :]]
        return None


class ScenarioError(UserError, ValueError):
    pass


def _deployment_docs(files: list[ManifestFile]) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    out = []
    for mf in files:
        for doc in mf.documents():
            if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
                meta = doc.get("metadata") or {}
                out.append(((str(meta.get("namespace", "default")), str(meta.get("name"))), doc))
    return out


def _deployments(files: list[ManifestFile]) -> list[str]:
    return [f"{ns}/{name}" for (ns, name), _ in _deployment_docs(files)]


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ScenarioError(f"{path}: not valid YAML{where}: {problem}") from exc
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{path}: a scenario is a YAML mapping (see the bundled ones: `aifixer scenario check`)"
        )
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ScenarioError(
            f"{path}: invalid scenario: {fields} (see the bundled scenarios for examples)"
        ) from exc


def bundled_dir() -> Path:
    """The scenarios shipped with the sandbox, as package data."""
    return Path(__file__).resolve().parent / "scenarios"


def bundled() -> list[Path]:
    """The fixer's scenarios: each ends in incidents with an outcome."""
    return sorted(bundled_dir().glob("*.yaml"))


def bundled_monitoring() -> list[Path]:
    """The CPU-level and forecast-scaling scenarios (sandbox/aifixer_sandbox/scenarios/monitoring)."""
    return sorted((bundled_dir() / "monitoring").glob("*.yaml"))


def bundled_gitops() -> list[Path]:
    """Scenarios whose workloads a GitOps controller manages (sandbox/aifixer_sandbox/scenarios/gitops); not
    yet among those the farm must bring to their outcome."""
    return sorted((bundled_dir() / "gitops").glob("*.yaml"))


def bundled_registry() -> list[Path]:
    """Scenarios whose repair asks the sandbox registry for tags (sandbox/aifixer_sandbox/scenarios/registry);
    played by their own test, not yet among those the farm must bring to their outcome."""
    return sorted((bundled_dir() / "registry").glob("*.yaml"))


def bundled_clusters() -> list[Path]:
    """Scenarios of several clusters watched from one farm (sandbox/aifixer_sandbox/scenarios/clusters),
    played by their own test (aifixer_sandbox.fleet)."""
    return sorted((bundled_dir() / "clusters").glob("*.yaml"))


def bundled_injection() -> list[Path]:
    """Scenarios whose logs try prompt injection and HTML (sandbox/aifixer_sandbox/scenarios/injection)."""
    return sorted((bundled_dir() / "injection").glob("*.yaml"))


# `aifixer demo` without arguments: a fix, a call that escalates to the second number,
# an injection attempt, and the quicker of the monitoring scenarios.
SHORT_SET = (
    "image-typo-storefront.yaml",
    "unfixable-ghost-image.yaml",
    "injection/injection-review-api.yaml",
    "monitoring/cpu-levels-checkout.yaml",
)


def short_set() -> list[Path]:
    """A few scenarios that show every kind of ending, in minutes."""
    return [bundled_dir() / name for name in SHORT_SET]


def every_bundled() -> list[Path]:
    """Every bundled scenario: the fixer's, the injection ones, then monitoring."""
    return [*bundled(), *bundled_injection(), *bundled_monitoring()]
