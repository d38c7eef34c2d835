"""The remediation pipeline: plain functions the Celery tasks call.

Each stage takes the incident's record (`IncidentState`, loaded from the store by the
task), acts, and returns it; the task saves it with the stage reached. The tasks only
load, save, retry and log. Keeping the logic here means every step can be tested
without a broker, and a stage never calls `.get()` on another.

Shared state lives in Redis, owned by `aifixer.store` (see its docstring for the keys).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import redis as redis_lib

from . import copies, detect, fixer, guardrails, imageref, manifests, metrics, playbooks, prbody
from .adapters.errors import (
    AdapterError,
    Conflict,
    PermanentError,
    TransientError,
    Unproven,
    bounded,
)
from .adapters.kube import (
    DEFAULT_CLASS_ANNOTATION,
    GitOpsOwner,
    last_applied_selector,
    pod_state,
    rollout_status,
)
from .memory import example_lines
from .models import (
    ApplyResult,
    CallRecord,
    ClaimState,
    Evidence,
    ExistingTag,
    FixAttempt,
    FixProposal,
    GitOpsPause,
    Incident,
    IncidentState,
    ModelUsage,
    ObjectRef,
    PeerProbe,
    PodState,
    Rejection,
    ServiceState,
    Signal,
    Snapshot,
    Verification,
    VerifyCopy,
    Workload,
)
from .settings import Settings, get_settings
from .store import Store, snapshot_of

log = logging.getLogger("aifixer.pipeline")

MAX_SIGNALS_PER_INCIDENT = 5
LOG_EVIDENCE_LINES = 40


def now() -> datetime:
    return datetime.now(UTC)


class NotYet(Exception):
    """Verification has not decided yet: check again after `countdown` seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.reason = reason


@dataclass
class Context:
    """Settings, Redis and the adapters, built lazily once per process.

    One farm may watch several clusters (`aifixer.clusters`): the Context a process
    builds is the farm's, and `cluster(name)` (or `of(incident)`) is that cluster's —
    its own settings, so its own Kubernetes, Loki and forge clients and on-call list,
    sharing Redis, the model, the phone and incident memory. The farm's Context is the
    default cluster's. Every stage acts through the incident's cluster's Context, so a
    poll, an apply or a pull request never reaches another cluster's endpoints.
    """

    settings: Settings = field(default_factory=get_settings)
    # The farm's Context this one is a cluster of (None: this is the farm's).
    farm: Context | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.farm is None and self.settings.clusters_file is not None:
            # The farm's own clients are the default cluster's.
            self.settings = self.clusters.settings[self.clusters.default]

    @cached_property
    def clusters(self):
        """The clusters this farm watches (`aifixer.clusters.Clusters`).

        Raises:
            ClustersError: the clusters file cannot be used.
        """
        from . import clusters

        if self.farm is not None:
            return self.farm.clusters
        return clusters.load(self.settings)

    @cached_property
    def _members(self) -> dict[str, Context]:
        return {}

    def cluster(self, name: str) -> Context:
        """Cluster `name`'s Context.

        Raises:
            PermanentError: the farm watches no cluster of that name (a record from a
                farm configured otherwise, or one rewritten in Redis).
        """
        farm = self.farm or self
        if name == farm.settings.cluster_name:
            return farm
        if name == self.settings.cluster_name:
            return self
        known = farm.clusters.settings.get(name)
        if known is None and name == farm.clusters.previous:
            # A record of the farm of one cluster, open when the clusters file came: that
            # cluster is the default one now, and its applied fix is verified there.
            return farm
        if known is None:
            raise PermanentError(
                "config", f"the farm watches no cluster named {bounded(name, 60)!r}"
            )
        members = farm._members
        if name not in members:
            members[name] = Context(settings=known, farm=farm)
        return members[name]

    def of(self, subject: IncidentState | Incident | Workload) -> Context:
        """The Context of the cluster `subject` is about (see `cluster`)."""
        if isinstance(subject, IncidentState):
            subject = subject.incident
        if isinstance(subject, Incident):
            subject = subject.workload
        return self.cluster(subject.cluster)

    def phone_of(self, state: IncidentState) -> Context:
        """The Context whose on-call list hears of `state`: its cluster's, or the farm's
        (the default cluster's) when its cluster is no longer configured, so a person is
        still called."""
        try:
            return self.of(state)
        except PermanentError:
            return self.farm or self

    @property
    def several(self) -> bool:
        """The clusters come from a clusters file: speeches and bodies name the cluster."""
        return bool(self.clusters.from_file)

    # -- shared by every cluster of the farm

    @cached_property
    def redis(self) -> redis_lib.Redis:
        if self.farm is not None:
            return self.farm.redis
        return redis_lib.Redis.from_url(
            self.settings.redis_dsn,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=5,
        )

    @cached_property
    def store(self) -> Store:
        if self.farm is not None:
            return self.farm.store
        return Store(
            self.redis,
            lock_ttl_s=self.settings.lock_ttl_s,
            default_cluster=self.clusters.default,
            previous_cluster=self.clusters.previous,
        )

    @cached_property
    def prometheus(self):
        if self.farm is not None:
            return self.farm.prometheus
        from .adapters.prometheus import Prometheus

        return Prometheus(self.settings)

    @cached_property
    def registry(self):
        """The container registries of AIFIXER_REGISTRIES, or None when none is."""
        if self.farm is not None:
            return self.farm.registry
        if not self.settings.registries:
            return None
        from .adapters.registry import Registry

        return Registry(self.settings)

    @cached_property
    def model(self):
        if self.farm is not None:
            return self.farm.model
        from .adapters.llm import Model

        return Model(self.settings)

    @cached_property
    def phone(self):
        if self.farm is not None:
            return self.farm.phone
        from .adapters.phone import Phone

        return Phone(self.settings)

    @cached_property
    def memory(self):
        """Incident memory, or None when `memory_enabled` is off."""
        if self.farm is not None:
            return self.farm.memory
        if not self.settings.memory_enabled:
            return None
        from .adapters.embed import Embedder
        from .memory import Memory

        return Memory(self.redis, Embedder(self.settings), self.settings)

    # -- the cluster's own

    @cached_property
    def kube(self):
        from .adapters.kube import Kube

        return Kube(self.settings)

    @cached_property
    def loki(self):
        from .adapters.loki import Loki

        return Loki(self.settings)

    @cached_property
    def forge(self):
        from .adapters.forge import Forge

        return Forge(self.settings)


def tag(state_or_incident: IncidentState | Incident) -> str:
    """The `[namespace/name]` prefix of every log line about an incident."""
    inc = (
        state_or_incident.incident
        if isinstance(state_or_incident, IncidentState)
        else state_or_incident
    )
    return f"[{inc.workload.key}]"


# -- detection -------------------------------------------------------------------------


def poll_loki(ctx: Context) -> list[Incident]:
    """Error lines since the cluster's Loki cursor -> new incidents (`ctx`: a cluster's)."""
    until = time.time_ns()
    cursor = _cursor(ctx, "loki")
    since = int(cursor) if cursor else until - int(ctx.settings.loki_lookback_s * 1e9)
    signals, new_cursor = ctx.loki.error_signals(since, until)
    incidents = open_incidents(ctx, signals)
    ctx.store.set(str(max(new_cursor, since)), "cursor", "loki", ctx.settings.cluster_name)
    return incidents


def poll_events(ctx: Context) -> list[Incident]:
    """Warning events since the cluster's last resourceVersion, plus failing pods -> new
    incidents (`ctx`: a cluster's)."""
    signals, rv = ctx.kube.warning_signals(_cursor(ctx, "events"))
    signals += ctx.kube.pod_signals()
    every = ctx.settings.service_poll_interval_s
    if ctx.store.take_turn(every, "services", ctx.settings.cluster_name):
        signals += ctx.kube.service_signals()
    incidents = open_incidents(ctx, signals)
    ctx.store.set(rv, "cursor", "events", ctx.settings.cluster_name)
    return incidents


def _cursor(ctx: Context, source: str) -> str | None:
    """Where the cluster's poll of `source` resumes. The cursor a farm of one cluster
    kept before clusters had their own (`cursor:<source>`) is the default cluster's."""
    cursor = ctx.store.get("cursor", source, ctx.settings.cluster_name)
    if cursor is None and ctx.settings.cluster_name == ctx.clusters.default:
        cursor = ctx.store.get("cursor", source)
    return cursor


def open_incidents(ctx: Context, signals: Iterable[Signal]) -> list[Incident]:
    """Group signals by workload and open at most one incident per workload.

    `ctx` is the cluster's the signals were seen on; one naming another cluster is
    dropped. Signals from namespaces aifixer may not change (`guardrails.namespace_refusal`)
    are dropped first.

    A workload's failure class is read off its pods' current state, so a log line, an
    event and an alert about the same breakage give the same fingerprint. Log lines
    alone on a workload whose pods are healthy open nothing: an application that logs
    an error but runs is not a manifest to fix at 3 a.m.
    """
    # Grouped by kind too: a Deployment and a StatefulSet may share a name.
    by_workload: dict[tuple[str, str, str], list[Signal]] = {}
    owners: dict[tuple[str, str], tuple[str, str] | None] = {}
    for sig in signals:
        if sig.cluster is not None and sig.cluster != ctx.settings.cluster_name:
            log.debug("signal %s ignored: about cluster %s", sig.reason, sig.cluster)
            continue
        refusal = guardrails.namespace_refusal(sig.namespace, ctx.settings)
        if refusal:
            # Alerts are pushed, logs and events are cluster-wide: whatever their source,
            # a namespace aifixer may not change opens nothing.
            log.debug("signal %s ignored: %s", sig.reason, refusal)
            continue
        name, kind = sig.workload, str(sig.workload_kind)
        if name is None and sig.pod:
            pk = (sig.namespace, sig.pod)
            if pk not in owners:
                owners[pk] = ctx.kube.owner_of_pod(sig.namespace, sig.pod)
            kind, name = owners[pk] or (kind, None)
        if name is None:
            continue
        by_workload.setdefault((sig.namespace, kind, name), []).append(
            sig.model_copy(update={"workload": name, "workload_kind": kind})
        )
    opened = []
    # A workload with an incident under way opens nothing more: skipped before any API
    # call, so a poll during a storm costs what the new failures cost, not all of them.
    busy = ctx.store.held(ctx.settings.cluster_name, list(by_workload))
    for (namespace, kind, name), sigs in by_workload.items():
        if (namespace, kind, name) in busy:
            continue
        inc = _open_one(ctx, namespace, name, sigs, kind)
        if inc is not None:
            opened.append(inc)
    return opened


def _open_one(
    ctx: Context, namespace: str, name: str, sigs: list[Signal], kind: str = "Deployment"
) -> Incident | None:
    s = ctx.settings
    dep = ctx.kube.get_workload(namespace, kind, name)
    if dep is None or copies.is_copy(dep):
        return None  # gone, or a copy an incident is verifying a fix on
    every = ctx.kube.pod_states(dep)
    leaving = _superseded(ctx, dep, every)
    pods = [p for p in every if p.name not in leaving]
    classes = [c for p in pods for r in p.reasons if (c := detect.classify(r)) is not None]
    if not classes and any(detect.signal_class(sig) == "NoEndpoints" for sig in sigs):
        # No pod shows a failure: the fault is a Service beside them, checked again on
        # the live objects (a Service fixed since the poll opens nothing).
        classes = ["NoEndpoints"] if ctx.kube.services_missing(dep) else []
    if not classes:
        if leaving:
            # Only pods a rollout is replacing fail (a fix merged and synced while the
            # broken revision's pods still pull or crash): the rollout removes them.
            log.debug("[%s/%s] only superseded pods fail: no incident", namespace, name)
            return None
        if rollout_status(dep).done:
            # Rolled out, and no pod shows a failure: the signals are history (a probe
            # that failed while a pod was starting) or an application that logs an
            # error and runs. Neither is a manifest to fix at 3 a.m.
            log.debug("[%s/%s] signals but a healthy workload: no incident", namespace, name)
            return None
        classes = [c for sig in sigs if (c := detect.classify(sig.reason, sig.message)) is not None]
    if not classes:
        return None
    failure = detect.dominant(classes)
    workload = Workload(cluster=s.cluster_name, namespace=namespace, kind=dep["kind"], name=name)
    fp = detect.fingerprint(s.cluster_name, namespace, workload.kind, name, failure)
    generation = (dep.get("metadata") or {}).get("generation")
    done = ctx.store.get("done", fp)
    previous = ctx.clusters.previous
    if done is None and previous is not None and s.cluster_name == ctx.clusters.default:
        # The same failure ended under the name the farm of one cluster gave it.
        done = ctx.store.get(
            "done", detect.fingerprint(previous, namespace, workload.kind, name, failure)
        )
    if done is not None and str(generation) == done:
        return None  # this failure on this revision already ended; a person knows
    incident = Incident(
        fingerprint=fp,
        workload=workload,
        failure_class=failure,
        opened_at=now(),
        signals=sigs[:MAX_SIGNALS_PER_INCIDENT],
        generation=generation,
    )
    state = IncidentState(incident=incident, model_used=s.model_name)
    # One remediation per workload, however many workers and beats poll.
    if not ctx.store.create(state, ctx.store.lock_key(state)):
        return None
    metrics.incident_opened(ctx.redis, failure)
    log.info(
        "%s opened incident %s (%s) from %d signal(s)",
        tag(incident),
        incident.id,
        failure,
        len(sigs),
    )
    return incident


def _superseded(ctx: Context, dep: dict[str, Any], pods: list[PodState]) -> set[str]:
    """The failing pods a rollout is replacing, by name: being deleted, or, for a
    Deployment, of a ReplicaSet other than its current one (the Deployment controller
    scales those down by itself). Their failures belong to the revision being left,
    not to the spec to fix. A StatefulSet's pod of an older revision is not one: the
    controller waits for a broken member before replacing it. Nothing is looked up
    while no pod shows a failure.
    """
    failing = [p for p in pods if p.reasons]
    if not failing:
        return set()
    current: str | None = None
    if (dep.get("kind") or "Deployment") == "Deployment":
        name = dep["metadata"]["name"]
        newest = [r for r, _ in ctx.kube.revisions(dep) if r.current]
        if newest and newest[0].replicaset.startswith(name + "-"):
            current = newest[0].replicaset[len(name) + 1 :]
    return {
        p.name
        for p in failing
        if p.deleting or (current and p.revision_hash and p.revision_hash != current)
    }


def save(ctx: Context, state: IncidentState, stage: str | None = None) -> None:
    ctx.store.save(state, stage)


def load(ctx: Context, incident_id: str) -> IncidentState | None:
    return ctx.store.load(incident_id)


def all_incidents(ctx: Context) -> list[IncidentState]:
    return [s for i in ctx.store.all_ids() if (s := load(ctx, i)) is not None]


# -- stages ----------------------------------------------------------------------------


def _timed(state: IncidentState, stage: str, started: float) -> IncidentState:
    state.timings[stage] = round(time.monotonic() - started, 3)
    return state


@contextmanager
def _metered(ctx: Context, state: IncidentState, stage: str) -> Iterator[None]:
    """Record what the model cost `stage` of this incident in `state.model_usage`.

    The model adapter keeps a running total per process; a prefork worker process
    runs one task at a time, so the difference across the stage is this incident's.
    """
    before = ctx.model.total
    try:
        yield
    finally:
        after = ctx.model.total
        if after.seconds > before.seconds:
            usage = state.model_usage[stage] = ModelUsage(
                prompt_tokens=after.prompt_tokens - before.prompt_tokens,
                completion_tokens=after.completion_tokens - before.completion_tokens,
                seconds=round(after.seconds - before.seconds, 3),
            )
            metrics.model_used(
                ctx.redis, stage, usage.seconds, usage.prompt_tokens, usage.completion_tokens,
                after.requests - before.requests,
            )  # fmt: skip


def gather_evidence(ctx: Context, incident: Incident, dep: dict[str, Any]) -> Evidence:
    ctx = ctx.of(incident)
    kube, loki = ctx.kube, ctx.loki
    ns = incident.workload.namespace
    raw_pods = kube.pods_of(dep)
    pods = [pod_state(p) for p in raw_pods]
    events = kube.events_of(dep, raw_pods)
    since = int((incident.opened_at.timestamp() - ctx.settings.loki_lookback_s) * 1e9)
    logs = loki.workload_lines(ns, [p.name for p in pods], since, LOG_EVIDENCE_LINES)
    pod_logs: dict[str, str] = {}
    for p in raw_pods:
        if not pod_state(p).reasons:
            continue
        for c in (p.get("spec") or {}).get("containers") or []:
            for previous in (False, True):
                text = kube.pod_logs(
                    ns, p["metadata"]["name"], c["name"], previous=previous, tail=20
                )
                if text:
                    key = f"{p['metadata']['name']}/{c['name']}" + ("/previous" if previous else "")
                    pod_logs[key] = text
        if len(pod_logs) >= 4:
            break
    revisions = kube.revisions(dep)
    last_healthy = kube.last_healthy_template(dep, revisions)
    current_template = (dep.get("spec") or {}).get("template") or {}
    template_diff = (
        manifests.diff(
            _comparable_template(last_healthy),
            _comparable_template(current_template),
            "spec.template",
        )
        if last_healthy is not None
        else []
    )
    rollout = rollout_status(dep)  # the Deployment just read: no second GET
    beside = object_evidence(ctx, incident, dep)
    healthy = rollout.done and not any(p.reasons for p in pods) and not beside.get("services")
    return Evidence(
        deployment=manifests.clean(dep),
        pods=pods,
        events=events,
        logs=logs,
        pod_logs=pod_logs,
        revisions=[rev for rev, _ in revisions],
        last_healthy_template=last_healthy,
        template_diff=template_diff,
        healthy=healthy,
        generation=(dep.get("metadata") or {}).get("generation"),
        existing_tags=existing_tags(ctx, incident, dep) if last_healthy is None else [],
        peer_probes=peer_probes(ctx, incident, dep) if last_healthy is None else [],
        **beside,
    )


def object_evidence(ctx: Context, incident: Incident, workload: dict[str, Any]) -> dict[str, Any]:
    """For a failure beside the workload, the objects it is about (Evidence fields).

    VolumePending: the claims the pod template mounts (phase, class, volume, their
    events) and the cluster's StorageClasses. NoEndpoints: the workload's Services that
    select none of its pods. Nothing is read for other classes.
    """
    ctx = ctx.of(incident)
    ns = incident.workload.namespace
    if incident.failure_class == "VolumePending":
        try:
            classes = ctx.kube.storage_classes()
        except PermanentError as exc:  # not granted (deploy/app-cluster-rbac-storage.yaml)
            log.warning("%s storage classes unread: %s", tag(incident), exc.message)
            classes = None
        names = sorted(c["metadata"]["name"] for c in classes or [])
        defaults = sorted(
            (c["metadata"].get("creationTimestamp") or "", c["metadata"]["name"])
            for c in classes or []
            if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"
        )
        claims = []
        for claim in ctx.kube.claims_of(workload):
            spec, name = claim.get("spec") or {}, claim["metadata"]["name"]
            cls = spec.get("storageClassName")
            claims.append(
                ClaimState(
                    name=name,
                    phase=(claim.get("status") or {}).get("phase") or "Pending",
                    storage_class=cls,
                    class_exists=(cls in names) if classes is not None else None,
                    volume_name=spec.get("volumeName"),
                    events=ctx.kube.events_about(ns, "PersistentVolumeClaim", name),
                    manifest=manifests.clean(claim),
                )
            )
        return {
            "claims": claims,
            "storage_classes": names,
            "default_storage_class": defaults[-1][1] if defaults else None,
        }
    if incident.failure_class == "NoEndpoints":
        return {
            "services": [
                ServiceState(
                    name=svc["metadata"]["name"],
                    selector=(svc.get("spec") or {}).get("selector") or {},
                    last_applied_selector=last_applied_selector(svc),
                    endpoints=0,
                    manifest=manifests.clean(svc),
                )
                for svc in ctx.kube.services_missing(workload)
            ]
        }
    return {}


def peer_probes(ctx: Context, incident: Incident, dep: dict[str, Any]) -> list[PeerProbe]:
    """For a workload that never ran healthy and has probes: how healthy Deployments of
    its own namespace that run the same image repository probe it
    (`playbooks.peer_probes`). A failed read leaves the evidence without it (logged).

    Its own namespace only, and only one aifixer may change (`namespace_refusal`):
    a peer's probe picks the path or port the kubelet will ask of this workload, so it
    must come from people who could change this workload anyway. Another namespace,
    watched or not, is another team or tenant (the same public image runs in many),
    and kube-system or the farm's own namespace are no application's.
    """
    if incident.failure_class not in ("ProbeFailure", "CrashLoop") or not any(
        probe in container
        for container in guardrails.pod_spec(dep).get("containers") or []
        for probe in guardrails.PROBES
    ):
        return []
    namespace = incident.workload.namespace
    if guardrails.namespace_refusal(namespace, ctx.settings) is not None:
        return []
    try:
        others = ctx.kube.deployments(namespace)
    except AdapterError as exc:
        log.warning("%s other Deployments not read: %s", tag(incident), exc)
        return []
    healthy = [
        other
        for other in others
        if (other.get("metadata") or {}).get("namespace") == namespace
        and rollout_status(other).done
        and ((other.get("status") or {}).get("availableReplicas") or 0)
    ]
    return playbooks.peer_probes(dep, healthy)


def existing_tags(ctx: Context, incident: Incident, dep: dict[str, Any]) -> list[ExistingTag]:
    """For an image that does not pull and a workload without a healthy revision: the
    existing tag of the same repository it was clearly meant to name, with its digest.

    Only registries of AIFIXER_REGISTRIES are asked, never when none is; a registry
    that fails leaves the evidence without this part (logged), never fails the stage.
    """
    registry = ctx.registry
    if registry is None or incident.failure_class != "ImagePull":
        return []
    found = []
    for container in guardrails.pod_spec(dep).get("containers") or []:
        image, name = container.get("image"), container.get("name")
        try:
            ref = imageref.parse(image)
        except imageref.ImageRefError:
            continue
        if ref.digest is not None or not isinstance(name, str) or not registry.allows(ref):
            continue
        try:
            tags = registry.tags(ref)
            choice = imageref.closest_tag(ref.tag or "latest", tags)
            if choice is None:
                log.info("%s %s: no existing tag is clearly meant", tag(incident), ref.repository)
                continue
            digest = registry.digest(ref, choice.tag)
        except AdapterError as exc:
            log.warning("%s tags of %s not read: %s", tag(incident), ref.repository, exc)
            continue
        found.append(
            ExistingTag(
                container=name,
                image=image,
                tag=choice.tag,
                digest=digest,
                rule=choice.rule,
                why=choice.why,
            )
        )
    return found


def _comparable_template(template: dict[str, Any]) -> dict[str, Any]:
    """A pod template without the label the Deployment controller adds to each revision."""
    out = manifests.clean({"metadata": {}, **template}) if template else {}
    labels = (out.get("metadata") or {}).get("labels")
    if labels:
        labels.pop("pod-template-hash", None)
    return out


def diagnose(ctx: Context, state: IncidentState) -> IncidentState:
    ctx = ctx.of(state)
    started = time.monotonic()
    inc = state.incident
    dep = ctx.kube.get_workload(inc.workload.namespace, inc.workload.kind, inc.workload.name)
    if dep is None:
        raise PermanentError(
            "kubernetes", f"{inc.workload.kind} {inc.workload.key} no longer exists"
        )
    state.evidence = gather_evidence(ctx, inc, dep)
    if state.evidence.healthy:
        state.outcome = "recovered"
        log.info("%s healthy again before any fix: nothing to do", tag(state))
        return _timed(state, "diagnose", started)
    # Written from the evidence alone: the model's explanation is asked for after the
    # apply (`explain`), while verify waits for the rollout, not before the fix.
    state.diagnosis = fixer.playbook_diagnosis(inc, state.evidence)
    log.info("%s diagnosis (%s): %s", tag(state), state.diagnosis.source, state.diagnosis.summary)
    return _timed(state, "diagnose", started)


def explain(ctx: Context, state: IncidentState) -> IncidentState:
    """The model's explanation, then the speech of the call that follows if every planned
    fix fails: written after the apply, while verify waits for the rollout.

    Off the critical path and never in the way of an outcome: a model that fails leaves
    the deterministic text (`fixer.diagnose` and `fixer.speech` fall back to it); the
    pull request does not wait for it (`show_explanation` puts it in later), and
    `call_oncall` waits for the speech at most `explain_wait_s`. The speech is
    skipped once the fix verified (no call will follow). Returns a copy holding what
    was written; the caller saves it onto the latest record (`explained_onto`).
    """
    if state.evidence is None:
        return state
    ctx = ctx.of(state)
    started = time.monotonic()
    with _metered(ctx, state, "explain"):
        # Written from the facts and the change just applied (the pull request checks
        # it again against the change once verified: `grounding.shown`).
        applied = state.apply.changes if state.apply is not None else []
        state.diagnosis = fixer.diagnose(ctx.model, state.incident, state.evidence, applied)
    state.explained = True
    log.info("%s explanation (%s): %s", tag(state), state.diagnosis.source,
             state.diagnosis.summary)  # fmt: skip
    return _timed(state, "explain", started)


def prepare_speech(ctx: Context, state: IncidentState) -> IncidentState:
    """The speech for the call that follows if every fix planned now fails and is undone.

    Kept with the template it rewords (`prepared_for`): `call_oncall` uses it only if
    the record's facts, when the call is due, give that same template. When more than
    one fix is planned, the call says the template, which tells each of them in order:
    the model is not asked.
    """
    if state.proposal is None:
        return state
    ctx = ctx.phone_of(state)  # the call's language is the on-call list's
    started = time.monotonic()
    failed = all_failed(ctx.settings, state)
    language = fixer.call_language(ctx.settings.call_language)
    template = fixer.template_speech(failed, language)
    state.prepared_for, state.prepared_speech = template, None
    if failed.attempts:
        return state  # several fixes: the call says the template, which tells each one
    with _metered(ctx, state, "speech"):
        written = fixer.speech(ctx.model, failed, ctx.settings)
    state.prepared_speech = written if written != template else None
    return _timed(state, "speech", started)


def all_failed(settings: Settings, state: IncidentState) -> IncidentState:
    """The record as it would be if the current fix and every next one planned failed
    verification and were rolled back (what the call would then tell). A fix verified
    on a temporary copy has no next one and nothing to roll back."""
    failed = state.model_copy(deep=True)
    applied_at = now()
    on_copy = failed.verify_copy is not None
    gone = Verification(
        ok=False, reason="not verified", checked_at=applied_at, rolled_back=not on_copy
    )
    while True:
        failed.apply = failed.apply or ApplyResult(
            original=failed.evidence.deployment if failed.evidence else {},
            applied=failed.proposal.manifest if failed.proposal else {},
            changes=failed.proposal.changes if failed.proposal else [],
            generation=0,
            applied_at=applied_at,
        )
        failed.verification = gone
        nxt = next_fix(failed, settings)
        if nxt is None or on_copy or len(failed.attempts) + 1 >= settings.fix_attempts:
            return failed
        _archive(failed, nxt, replicaset=None)


def awaits_speech(ctx: Context, state: IncidentState) -> bool:
    """The call should wait a moment for the speech `explain` prepares.

    Only after a fix was applied (`explain` is sent by the apply) and did not verify,
    and at most `explain_wait_s` past the verdict: after that, the call says the
    template. (The pull request never waits: it shows the diagnosis written from the
    facts, and `explain` puts the model's words in when they come.)
    """
    if state.apply is None and not state.attempts:
        return False
    ctx = ctx.of(state)
    if state.verification is not None and state.verification.ok:
        return False  # a call after a verified fix (its pull request failed): not prepared
    if state.prepared_for is not None:
        return False
    verdict = state.verification.checked_at if state.verification is not None else None
    if verdict is None:
        return False
    return (now() - verdict).total_seconds() < ctx.settings.explain_wait_s


def patch(ctx: Context, state: IncidentState) -> IncidentState:
    if state.outcome or state.evidence is None or state.diagnosis is None:
        return state
    ctx = ctx.of(state)
    started = time.monotonic()
    refusal = guardrails.rollout_refusal(state.evidence.deployment)
    if refusal:
        # No fix could be verified (nor undone) on this workload: none is asked for.
        state.rejections.append(Rejection(source="guardrails", strategy="any", reasons=[refusal]))
        state.proposal = None
        log.warning("%s no fix attempted: %s", tag(state), refusal)
        return _timed(state, "patch", started)
    with _metered(ctx, state, "patch"):
        proposal, rejections = fixer.propose(
            ctx.model,
            state.incident,
            state.evidence,
            state.diagnosis,
            ctx.settings,
            examples=state.memory_examples,
            remembered=state.remembered,
        )
    state.rejections.extend(rejections)
    if proposal is not None:
        try:
            if proposal.target is not None:
                ctx.kube.dry_run_object(proposal.manifest)
            else:
                ctx.kube.dry_run_apply(proposal.manifest)
        except PermanentError as exc:
            state.rejections.append(
                Rejection(
                    source=proposal.source,
                    strategy=proposal.strategy,
                    reasons=[f"server-side dry-run refused it: {exc.message}"],
                )
            )
            proposal = None
    state.proposal = proposal
    if proposal is not None and ctx.settings.fix_attempts > 1:
        state.alternatives = [
            p
            for p in fixer.fallbacks(
                state.incident, state.evidence, state.diagnosis, ctx.settings,
                remembered=state.remembered,
            )
            if fix_kind(p) != fix_kind(proposal)
        ]  # fmt: skip
    if proposal is None:
        log.warning("%s no acceptable fix (%d rejected)", tag(state), len(state.rejections))
    else:
        log.info(
            "%s fix chosen: %s changing %s",
            tag(state),
            proposal.strategy,
            ", ".join(c.path for c in proposal.changes),
        )
    return _timed(state, "patch", started)


def recall_stage(ctx: Context, state: IncidentState) -> IncidentState:
    """The `recall` stage: what incident memory knows, kept on the state for `patch`.

    A stage of its own, on its own queue, so that only the workers serving the
    `memory` queue load the embedding model (PyTorch, a few hundred MB); the other
    workers stay small.
    """
    if state.outcome or state.evidence is None:
        return state
    started = time.monotonic()
    examples, remembered = recall(ctx, state)
    state.memory_examples, state.remembered = examples, remembered
    return _timed(state, "recall", started)


def recall(ctx: Context, state: IncidentState) -> tuple[list[str], FixProposal | None]:
    """Similar past incidents as prompt examples, and a fix that verified on one of them.

    Memory only helps: when it fails, the fixer works without it.
    """
    memory = ctx.memory
    if memory is None or state.evidence is None:
        return [], None
    try:
        past = memory.similar(state.evidence, state.incident, k=3)
        known = memory.known_good(state.incident, state.evidence)
    except (redis_lib.RedisError, AdapterError, ValueError) as exc:
        log.warning("%s incident memory unavailable, fixing without it: %s", tag(state), exc)
        return [], None
    if known is not None:
        log.info(
            "%s a fix that verified before (%s, similarity %.2f) is tried first",
            tag(state),
            known.past.record.workload,
            known.past.similarity,
        )
    return example_lines(past), known.proposal if known else None


def remember(ctx: Context, state: IncidentState) -> None:
    """Keep the finished incident for next time; a failure here never fails the incident.

    Run by the `remember` task on the `memory` queue once `finalize` has closed the
    incident.
    """
    memory = ctx.memory
    if memory is None:
        return
    try:
        memory.remember(state)
    except (redis_lib.RedisError, AdapterError, ValueError) as exc:
        log.warning("%s incident not remembered: %s", tag(state), exc)


def apply(ctx: Context, state: IncidentState) -> IncidentState:
    """Apply the fix, over exactly what the evidence was read from, never over a person's change.

    The rollback snapshot is taken once, before the first write, and kept in the store:
    a redelivered apply reuses it instead of snapshotting its own fix. The live
    Deployment may differ from the snapshot only by values this fix writes (a
    redelivery after a partial write); anything else is someone else's change, and
    aifixer touches nothing (`Conflict`). The write itself carries the resourceVersion
    just read, so a change landing in between is refused by the API server too.
    """
    if state.outcome or state.proposal is None or state.apply is not None:
        return state
    ctx = ctx.of(state)
    refusal = guardrails.namespace_refusal(state.incident.workload.namespace, ctx.settings)
    if refusal:  # before anything is read there: the record may have been written by anyone
        raise PermanentError("guardrails", f"the fix was refused before any read: {refusal}")
    started = time.monotonic()
    if state.proposal.target is not None:
        return _timed(apply_object(ctx, state), "apply", started)
    inc, proposal = state.incident, state.proposal
    for _ in range(APPLY_ATTEMPTS):
        live = _live(ctx, state)
        snap = ctx.store.snapshot_once(inc.id, snapshot_of(live))
        changed = (
            _spec_changes(state.evidence.deployment, snap.manifest, metadata=True)
            if state.evidence
            else []
        )
        if changed:
            raise Conflict(
                "kubernetes",
                f"{inc.workload.key} was changed by someone else after the diagnosis "
                f"({', '.join(changed[:3])}); aifixer changed nothing",
            )
        foreign = _foreign_changes(snap.manifest, manifests.clean(live), proposal)
        if foreign:
            raise Conflict(
                "kubernetes",
                f"{inc.workload.key} was changed by someone else while the fix was being "
                f"applied ({', '.join(foreign[:3])}); aifixer changed nothing more",
            )
        refused = recheck(ctx, state, live)
        if refused:
            raise PermanentError(
                "guardrails",
                f"the fix was refused immediately before writing: {'; '.join(refused[:5])}",
            )
        unpausable = pause_gitops(ctx, state, live)
        if unpausable is not None:
            return _timed(apply_to_copy(ctx, state, snap, unpausable), "apply", started)
        rv = (live.get("metadata") or {}).get("resourceVersion")
        try:
            applied = ctx.kube.apply(proposal.manifest, resource_version=rv)
        except Conflict:
            continue  # the object moved (often only its status): read it again and re-check
        break
    else:
        raise TransientError("kubernetes", f"{inc.workload.key} kept changing during the apply")
    state.apply = ApplyResult(
        original=snap.manifest,
        applied=proposal.manifest,
        changes=proposal.changes,
        generation=(applied.get("metadata") or {}).get("generation", 0),
        applied_at=now(),
    )
    log.info("%s applied (generation %s)", tag(state), state.apply.generation)
    return _timed(state, "apply", started)


APPLY_ATTEMPTS = 5


# -- GitOps controllers: self-heal paused around the live fix ------------------------------


def pause_gitops(ctx: Context, state: IncidentState, live: dict[str, Any]) -> GitOpsOwner | None:
    """Pause self-heal of the controller that keeps the workload equal to Git, once.

    Argo CD (automated sync with self-heal) or Flux would put the live Deployment back
    to what Git says within seconds, reverting the fix while it is verified. So, before
    the first write: the Application's `selfHeal` is set to false (or the Kustomization
    suspended), for that object only, and the pause is recorded first (the store's
    `gitops:<id>`, SET NX, with the value before): a redelivered apply does not pause
    twice nor take aifixer's own value for the one to restore. `resume_gitops` puts it
    back once the fix is in Git or undone.

    With `gitops_pause_self_heal` off, the controller is left alone and the workload is
    not written: a Deployment's fix is verified on a temporary copy instead
    (`apply_to_copy`); a StatefulSet or a DaemonSet is not copied, and the incident stops
    here (nothing written) and the on-call engineer is called with the reason.

    Returns:
        None when the fix may be written to the workload (no controller reverts it, or
        its self-heal is paused now); the controller's object when it may not be
        paused and the fix is to be verified on a copy instead.

    Raises:
        PermanentError: pausing is not allowed and the workload is no Deployment, or
            the controller refused the pause.
        TransientError: as every call.
    """
    inc = state.incident
    ctx = ctx.of(state)
    owner = ctx.kube.gitops_owner(live)
    if owner is None:
        return None
    recorded = ctx.store.gitops_pause(inc.id)
    if recorded is None:
        current = ctx.kube.self_heal_switch(owner)
        if not owner.heals(current):
            return None  # the controller does not revert live changes: nothing to pause
        if not ctx.settings.gitops_pause_self_heal:
            if (live.get("kind") or inc.workload.kind) == "Deployment":
                return owner
            raise PermanentError("gitops", _not_pausable(inc, owner, copies.refusal(live)))
        recorded = ctx.store.pause_once(
            inc.id,
            GitOpsPause(
                controller=owner.controller,
                namespace=owner.namespace,
                name=owner.name,
                field=owner.field,
                previous=current,
                paused_at=time.time(),
                cluster=inc.workload.cluster,
            ),
        )
    if recorded.restored_at is not None:
        return None  # paused and restored before (a redelivery after a rollback)
    ctx.kube.pause_self_heal(_owner_of(recorded))
    state.gitops_pause = recorded
    log.info("%s self-heal of the %s paused for the fix", tag(state), _owner_of(recorded))
    _await_pass_in_flight(ctx, state, _owner_of(recorded), live, recorded.paused_at)
    return None


GITOPS_IN_FLIGHT_WAIT_S = 20.0  # from the pause: how long the write waits for a pass to end
GITOPS_IN_FLIGHT_POLL_S = 0.5


def _await_pass_in_flight(
    ctx: Context, state: IncidentState, owner: GitOpsOwner, live: dict[str, Any], paused_at: float
) -> None:
    """Wait a moment for a pass the controller decided before the pause, before writing.

    A sync or reconciliation already under way when self-heal was turned off still
    writes Git's version: a fix written before that write would be put back, and
    verify would judge the broken revision. So the write waits while the controller
    says a pass is in flight and has not written the workload yet
    (`Kube.gitops_in_flight`), at most `GITOPS_IN_FLIGHT_WAIT_S` from the pause (across
    retries and redeliveries). Past that it goes ahead: such a pass is most likely
    waiting on the health of the very workload being fixed (Flux's `wait`, Argo CD's
    sync waves and hooks), after its write; if it writes Git's version over the fix
    all the same, verify sees the fix put back (`_reverted`) and rolls back.
    """
    deadline = paused_at + GITOPS_IN_FLIGHT_WAIT_S
    while True:
        busy = ctx.kube.gitops_in_flight(owner, live)
        if busy is None:
            return
        if time.time() >= deadline:
            log.warning("%s writing the fix while %s (waited %.0fs since the pause)",
                        tag(state), busy, GITOPS_IN_FLIGHT_WAIT_S)  # fmt: skip
            return
        log.info("%s waiting before the write: %s", tag(state), busy)
        time.sleep(GITOPS_IN_FLIGHT_POLL_S)


def _not_pausable(inc: Incident, owner: GitOpsOwner, why: str | None) -> str:
    """Why a workload whose controller may not be paused is left as it is."""
    return (
        f"{inc.workload.key} is managed by the GitOps controller's {owner}, which reverts "
        "live changes, and aifixer may not pause it (AIFIXER_GITOPS_PAUSE_SELF_HEAL=false)"
        + (f"; {why}" if why else "")
        + "; aifixer changed nothing, the fix must go through Git"
    )


def _owner_of(pause: GitOpsPause) -> GitOpsOwner:
    return GitOpsOwner(pause.controller, pause.namespace, pause.name)


def resume_gitops(ctx: Context, state: IncidentState, why: str) -> IncidentState:
    """Restore the controller's self-heal this incident paused; idempotent.

    Only while the switch is still what aifixer set: a person's change to it meanwhile
    is left as it is (recorded as "changed"). A record whose pause was already
    restored, or that never paused anything, is left alone.

    Raises:
        TransientError, PermanentError: the controller's object could not be written;
            the pause stays pending, and the watchdog tries again.
    """
    pause = _resume(ctx, state.incident.id, tag(state), why)
    if pause is not None:
        state.gitops_pause = pause
    return state


def _resume(ctx: Context, incident_id: str, label: str, why: str) -> GitOpsPause | None:
    pause = ctx.store.gitops_pause(incident_id)
    if pause is None or pause.restored_at is not None:
        return pause
    # The controller is on the incident's cluster (a pause recorded before clusters
    # were named is on the default one).
    ctx = ctx.cluster(pause.cluster or ctx.clusters.default)
    result = ctx.kube.resume_self_heal(_owner_of(pause), pause.previous)
    pause = pause.model_copy(update={"restored_at": time.time(), "restore": result})
    ctx.store.resumed(incident_id, pause)
    log.info("%s self-heal of the %s %s (%s)", label, _owner_of(pause),
             "restored" if result == "restored" else f"not restored: {result}", why)  # fmt: skip
    return pause


def _resume_quietly(ctx: Context, state: IncidentState, why: str) -> IncidentState:
    """`resume_gitops`, a failure logged and left pending for the watchdog."""
    return _quietly(resume_gitops, ctx, state, why, "self-heal not restored yet")


def _quietly(
    undo: Callable[[Context, IncidentState, str], IncidentState],
    ctx: Context,
    state: IncidentState,
    why: str,
    what: str,
) -> IncidentState:
    """`undo(ctx, state, why)`, a failure logged as `what` and left to the watchdog,
    which finds what is pending in the store."""
    try:
        return undo(ctx, state, why)
    except (AdapterError, redis_lib.RedisError) as exc:
        log.warning("%s %s (%s): the watchdog tries again", tag(state), what, exc)
        return state


def awaits_merge(ctx: Context, state: IncidentState) -> bool:
    """Self-heal stays paused: the verified fix is live and its pull request still open.

    Restoring it now would have the controller put Git's broken version back before
    the fix is merged. Bounded: once the pull request is merged or closed
    (`check_pull_requests`), or no longer watched (`pr_check_days` after the close),
    it is restored.
    """
    verified = state.verification is not None and state.verification.ok
    pr = state.pull_request
    if not verified or pr is None:
        return False
    if pr.state == "merged":
        return _awaits_fetch(ctx, state)
    if pr.state != "open":
        return False
    if state.closed_at is None:
        return True
    return state.closed_at >= now() - timedelta(days=ctx.settings.pr_check_days)


def _awaits_fetch(ctx: Context, state: IncidentState) -> bool:
    """Merged, and self-heal still paused: it waits for the controller to fetch the merge
    commit (`check_pull_requests` looks), at most `gitops_merge_wait_s` after the merge."""
    pr, pause = state.pull_request, state.gitops_pause
    if pr is None or pr.merged_at is None or pause is None or pause.restored_at is not None:
        return False
    return now() - pr.merged_at < timedelta(seconds=ctx.settings.gitops_merge_wait_s)


def _controller_has_merge(ctx: Context, state: IncidentState) -> bool:
    """Whether self-heal may be restored after the merge: the controller has fetched the
    merge commit (asked to look when not), or the wait is over (logged)."""
    pr, pause = state.pull_request, state.gitops_pause
    if pr is None or pause is None or pause.restored_at is not None or not pr.merge_commit:
        return True
    kube = ctx.cluster(pause.cluster or ctx.clusters.default).kube
    if kube.gitops_has_commit(_owner_of(pause), pr.merge_commit):
        return True
    if not _awaits_fetch(ctx, state):
        log.warning("%s the %s has not fetched merge commit %s within %.0fs: self-heal is "
                    "restored all the same", tag(state), _owner_of(pause), pr.merge_commit[:12],
                    ctx.settings.gitops_merge_wait_s)  # fmt: skip
        return True
    log.info("%s the %s has not fetched merge commit %s yet: asked to, self-heal stays "
             "paused", tag(state), _owner_of(pause), pr.merge_commit[:12])  # fmt: skip
    return False


def resume_due(ctx: Context) -> int:
    """The watchdog's sweep: restore every paused self-heal whose incident no longer needs it.

    Covers a worker lost between pausing and recording, a finalize that died before
    restoring, a restore the controller refused for a while. Open incidents are left to
    their stages (and to the watchdog's takeover, which rolls back and restores).
    Returns how many were restored.
    """
    done = 0
    for iid in ctx.store.paused():
        try:
            state = load(ctx, iid)
            if state is not None and (state.closed_at is None or awaits_merge(ctx, state)):
                continue
            label = tag(state) if state is not None else f"[incident {iid}]"
            pause = _resume(ctx, iid, label, "the watchdog: the incident no longer needs it")
            if pause is None:
                ctx.store.resumed_nothing(iid)
                continue
            if state is not None and state.gitops_pause != pause:
                state.gitops_pause = pause
                save(ctx, state)
            done += 1
        except (AdapterError, redis_lib.RedisError) as exc:
            log.warning("watchdog: self-heal of incident %s: %s (tried again next round)",
                        iid, exc)  # fmt: skip
    return done


# -- a controller that may not be paused: the fix verified on a temporary copy ------------
#
# The workload is never written. The copy (`aifixer.copies`) is recorded before it is
# created, verified by `verify` with the same health rules as a live fix, and removed
# whatever happens: after the verdict (the verify task), on a rollback, when the
# incident ends (`finalize`), and by the watchdog for an incident ended or past the
# copy's deadline (`remove_copies_due`). Verified, the pull request brings the fix to
# Git and the controller to the workload; not verified, there is nothing to restore.


def copy_life_s(settings: Settings) -> float:
    """How long a verification copy may live at most: verify's hard bound on a fix that
    keeps flapping (`verify`), and a stability window."""
    return (
        2 * (settings.verify_deadline_s + settings.watchdog_stall_s) + settings.verify_stability_s
    )


def apply_to_copy(
    ctx: Context, state: IncidentState, snap: Snapshot, owner: GitOpsOwner
) -> IncidentState:
    """Create the temporary copy of the Deployment the fix is verified on, once.

    Called by `apply` for a Deployment whose controller `owner` reverts live changes
    and may not be paused, once the fix passed there what a live fix passes
    immediately before writing (nobody else's change, the guardrails and the dry-run
    against the live workload). At the point of action, besides: the fixed template
    may be copied (`copies.refusal`), and no Service of the namespace selects the
    copy's labels. The copy is recorded (`copy:<id>`, once) before it is created, so a
    worker lost in between leaves it to the watchdog. A redelivery finds it by its name:
    this incident's copy running the fix is reused; this incident's copy running
    anything else is deleted, and the stage retried; a Deployment of that name that is
    not this incident's copy is never touched.

    Raises:
        PermanentError: the copy may not be made, or the API server refused it.
        TransientError: as every call, or an earlier copy is being replaced.
    """
    ctx = ctx.of(state)
    inc, proposal, w = state.incident, state.proposal, state.incident.workload
    if proposal is None:
        raise PermanentError("pipeline", "no fix to verify")
    refusal = copies.refusal(proposal.manifest)
    if refusal:
        raise PermanentError("gitops", _not_pausable(inc, owner, refusal))
    wanted = copies.manifest(proposal.manifest, inc.id)
    name = wanted["metadata"]["name"]
    selecting = ctx.kube.services_selecting(w.namespace, copies.labels(inc.id))
    if selecting:
        raise PermanentError("gitops", _not_pausable(inc, owner, (
            f"the Service {', '.join(selecting[:3])} would select the pods of a temporary "
            "copy (its selector matches aifixer's labels), so the fix is not verified on one"
        )))  # fmt: skip
    started = time.time()
    record = ctx.store.copy_once(
        inc.id,
        VerifyCopy(
            cluster=w.cluster, namespace=w.namespace, name=name, created_at=started,
            deadline=started + copy_life_s(ctx.settings),
        ),
    )  # fmt: skip
    if record.removed_at is not None or record.name != name:
        raise PermanentError(
            "gitops", f"the temporary copy {record.name} of {w.key} was removed already"
        )
    current = ctx.kube.get_deployment(w.namespace, name)
    if current is not None and not copies.owned(current, inc.id):
        raise PermanentError("gitops", _not_pausable(inc, owner, (
            f"a Deployment {w.namespace}/{name} that is not this incident's temporary copy "
            "exists, and is left as it is"
        )))  # fmt: skip
    if current is not None and (
        (current.get("metadata") or {}).get("deletionTimestamp") or _copy_changes(current, wanted)
    ):
        ctx.kube.delete_copy(current)
        raise TransientError("kubernetes", f"an earlier copy {name} of {w.key} is being replaced")
    if current is None:
        try:
            ctx.kube.create_copy(wanted)
        except Conflict:
            raise TransientError("kubernetes", f"the copy {name} was created meanwhile") from None
    state.verify_copy = record
    state.apply = ApplyResult(
        original=snap.manifest,
        applied=proposal.manifest,
        changes=proposal.changes,
        generation=snap.generation,
        applied_at=now(),
    )
    log.info("%s the fix is verified on the temporary copy %s (the %s is left to %s)",
             tag(state), name, w.kind, owner)  # fmt: skip
    return state


def _copy_changes(copy: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Where a live copy does not run what `wanted` says (someone else changed it)."""
    live = manifests.clean(copy).get("spec") or {}
    return [
        f"spec.{part}"
        for part in ("selector", "template")
        if not _covers(live.get(part), wanted["spec"][part])
    ]


def _copy_live(ctx: Context, state: IncidentState) -> dict[str, Any] | None:
    """The incident's copy as it runs now; None once it is gone, removed, or not ours."""
    record = ctx.store.verify_copy(state.incident.id)
    if record is None or record.removed_at is not None:
        return None
    live = ctx.of(state).kube.get_deployment(record.namespace, record.name)
    if live is None or not copies.owned(live, state.incident.id):
        return None
    return live


def _copy_not_verified(
    ctx: Context, state: IncidentState, why: str, details: dict[str, Any] | None
) -> IncidentState:
    """The verdict of a fix that did not verify on its copy: nothing to restore, and no
    next fix (each would need a copy of its own)."""
    copy = state.verify_copy
    where = f"on the temporary copy {copy.name}" if copy else "on a temporary copy"
    state.verification = Verification(
        ok=False, checked_at=now(), rolled_back=False, details=details or {},
        reason=f"{why} ({where}; the {state.incident.workload.kind} itself was never changed)",
    )  # fmt: skip
    ctx.store.delete(*_progress_key(state))
    log.warning("%s fix not verified %s, nothing to restore: %s", tag(state), where, why)
    return state


def remove_copy(ctx: Context, state: IncidentState, why: str) -> IncidentState:
    """Delete the incident's verification copy, if it has one left; idempotent.

    Raises:
        TransientError, PermanentError: the copy could not be deleted; it stays pending,
            and the watchdog tries again.
    """
    record = _remove_copy(ctx, state.incident.id, tag(state), why)
    if record is not None:
        state.verify_copy = record
    return state


def _remove_copy(ctx: Context, incident_id: str, label: str, why: str) -> VerifyCopy | None:
    record = ctx.store.verify_copy(incident_id)
    if record is None or record.removed_at is not None:
        return record
    ctx = ctx.cluster(record.cluster or ctx.clusters.default)
    for _ in range(APPLY_ATTEMPTS):
        live = ctx.kube.get_deployment(record.namespace, record.name)
        if live is None:
            result = "gone"
        elif not copies.owned(live, incident_id):
            result = "not ours"  # a Deployment of that name, not this incident's copy
        else:
            try:
                result = "deleted" if ctx.kube.delete_copy(live) else "gone"
            except Conflict:
                continue  # it changed since read: read it again
        break
    else:
        raise TransientError("kubernetes", f"the copy {record.name} kept changing; not deleted")
    record = record.model_copy(update={"removed_at": time.time(), "removal": result})
    ctx.store.copy_removed(incident_id, record)
    log.log(logging.ERROR if result == "not ours" else logging.INFO,
            "%s temporary copy %s: %s (%s)", label, record.name, result, why)  # fmt: skip
    return record


def remove_copy_quietly(ctx: Context, state: IncidentState, why: str) -> IncidentState:
    """`remove_copy`, a failure logged and left pending for the watchdog."""
    return _quietly(remove_copy, ctx, state, why, "temporary copy not removed yet")


def remove_copies_due(ctx: Context) -> int:
    """The watchdog's sweep: remove every verification copy whose incident ended, is
    unknown, or is past the copy's deadline. Returns how many were removed.

    Covers a worker lost between creating the copy and recording the verdict, a
    finalize that died before removing it, a delete the API server refused for a
    while, and a verification that never ended.
    """
    done = 0
    for iid in ctx.store.copies():
        try:
            record = ctx.store.verify_copy(iid)
            state = load(ctx, iid)
            live = state is not None and state.closed_at is None
            if live and record is not None and time.time() < record.deadline:
                continue
            label = tag(state) if state is not None else f"[incident {iid}]"
            why = "the watchdog: " + ("past its deadline" if live else "the incident ended")
            record = _remove_copy(ctx, iid, label, why)
            if record is None:
                ctx.store.copy_removed(iid, None)
                continue
            if state is not None and state.verify_copy != record:
                state.verify_copy = record
                save(ctx, state)
            done += 1
        except (AdapterError, redis_lib.RedisError) as exc:
            log.warning("watchdog: temporary copy of incident %s: %s (tried again next round)",
                        iid, exc)  # fmt: skip
    return done


def recheck(ctx: Context, state: IncidentState, live: dict[str, Any]) -> list[str]:
    """Why the stored proposal may not be written now; empty when it may.

    The incident record comes from Redis, which anyone who reaches it could write: so
    nothing in it is taken on trust at the point of action. The namespace must be one
    aifixer may change, the proposal must be the incident's own Deployment, the
    guardrails run again against the live object and a past re-read from the cluster
    (revisions, last healthy template and the pods' status; not the stored evidence),
    and the API server dry-runs it again.
    """
    w, proposal = state.incident.workload, state.proposal
    ctx = ctx.of(state)  # refused if the record names a cluster the farm does not watch
    refusal = guardrails.namespace_refusal(w.namespace, ctx.settings)
    if refusal:
        return [refusal]
    manifest = proposal.manifest if proposal is not None else None
    if not _names(manifest, w.namespace, w.name):
        return [f"the proposal is not the Deployment {w.key}"]
    # A ReplicaSet an earlier attempt of this incident created never ran healthy: it is
    # not the workload's past (it could pass for its last healthy revision once scaled down).
    ours = {a.replicaset for a in state.attempts if a.replicaset}
    revisions = [r for r in ctx.kube.revisions(live) if r[0].replicaset not in ours]
    past = guardrails.Past(
        revisions=[rev for rev, _ in revisions],
        last_healthy_template=ctx.kube.last_healthy_template(live, revisions),
        # The runtime's StartError a born-broken removal rests on, as the pods show it
        # now: not the stored evidence, which a queued message or a stale record carries.
        pods=ctx.kube.pod_states(live),
    )
    reasons = guardrails.check(live, manifest, past, ctx.settings)
    if reasons:
        return reasons
    try:
        ctx.kube.dry_run_apply(manifest)
    except PermanentError as exc:
        return [f"server-side dry-run refused it: {exc.message}"]
    return []


def _live(ctx: Context, state: IncidentState) -> dict[str, Any]:
    w = state.incident.workload
    live = ctx.of(state).kube.get_workload(w.namespace, w.kind, w.name)
    if live is None:
        raise PermanentError("kubernetes", f"{w.kind} {w.key} no longer exists")
    return live


def _foreign_changes(snapshot: dict[str, Any], live: dict[str, Any], proposal: FixProposal):
    """Paths where `live` differs from `snapshot` by something other than this fix's values."""
    ours = [c.path for c in proposal.changes]
    foreign = []
    for change in manifests.diff(snapshot.get("spec"), live.get("spec"), "spec"):
        if change.path in IGNORED_PATHS:
            continue
        wanted = manifests.get_path(proposal.manifest, change.path)
        if _covers(change.after, wanted):
            continue
        if (
            wanted is None
            and change.before is None
            and any(change.path.startswith(p) for p in ours)
        ):
            continue  # a default the server filled in inside a part this fix wrote
        foreign.append(change.path)
    return foreign


def _reverted(
    live: dict[str, Any], original: dict[str, Any], proposal: FixProposal | None
) -> list[str]:
    """The paths this fix changed whose live value is the original's again, not the fix's."""
    if proposal is None:
        return []
    reverted = []
    for c in proposal.changes:
        if c.path in IGNORED_PATHS:
            continue  # an autoscaler's to set back (spec.replicas), not a revert of the fix
        now_, fixed = (
            manifests.get_path(live, c.path),
            manifests.get_path(proposal.manifest, c.path),
        )
        if not _covers(now_, fixed) and _covers(now_, manifests.get_path(original, c.path)):
            reverted.append(c.path)
    return reverted


def _covers(live: Any, wanted: Any) -> bool:
    """`live` holds everything `wanted` says (the server may have added defaults)."""
    if isinstance(wanted, dict) and isinstance(live, dict):
        return all(_covers(live.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list) and isinstance(live, list):
        if len(wanted) != len(live):
            return False
        by_name = _by_name(live)
        if by_name is not None and _by_name(wanted) is not None:
            # Named items (containers, env, ports): the server merges them by name and
            # keeps its own order, so they are matched by name, not by position.
            return all(_covers(by_name.get(w["name"]), w) for w in wanted)
        return all(map(_covers, live, wanted))
    return live == wanted


def _by_name(items: list[Any]) -> dict[str, Any] | None:
    if not all(isinstance(i, dict) and "name" in i for i in items):
        return None
    named = {i["name"]: i for i in items}
    return named if len(named) == len(items) else None


def verify(ctx: Context, state: IncidentState) -> IncidentState:
    """One non-blocking check; raises NotYet until the fix is proven or the deadline passes.

    Healthy means: `kubectl rollout status` would succeed, every pod is Ready with no
    failure reason, no restart since the first healthy check, and no new error line
    from the workload's pods in Loki since the apply. It must hold for the stability
    window. A fix not healthy at the deadline is rolled back (`rollback`).

    A fix verified on a temporary copy (`apply_to_copy`) is held to the same rules, on
    the copy and its pods; the copy gone (deleted by someone, or by the watchdog past
    its deadline) or changed by someone else is a fix not verified.
    """
    if state.apply is None or state.verification is not None:
        return state
    ctx = ctx.of(state)
    s, inc, store = ctx.settings, state.incident, ctx.store
    t = now()
    ns = inc.workload.namespace
    copy = _copy_live(ctx, state) if state.verify_copy is not None else None
    if state.verify_copy is not None and copy is None:
        return rollback(ctx, state, "the copy is gone before the verdict")
    dep = copy if copy is not None else _live(ctx, state)
    target = state.proposal.target if state.proposal is not None else None
    if target is not None:
        beside, foreign = object_verified(ctx, state)
    elif copy is not None and state.proposal is not None:
        beside = None
        foreign = _copy_changes(copy, copies.manifest(state.proposal.manifest, inc.id))
    else:
        beside = None
        foreign = (
            _foreign_changes(state.apply.original, manifests.clean(dep), state.proposal)
            if state.proposal is not None
            else []
        )
    if foreign:
        # Someone changed the Deployment after the fix: what runs is no longer what
        # aifixer applied, so there is nothing of ours to verify, and nothing to undo.
        what = (
            f"the {target.kind}" if target is not None
            else "the temporary copy" if copy is not None else "the Deployment"
        )  # fmt: skip
        state.person_changed = "after"
        return rollback(
            ctx, state, f"someone else changed {what} during verification ({foreign[0]})"
        )
    pending = store.hgetall("rollback", inc.id)
    if pending:
        # The original is back and its rollout still converging (`_rollback`): what
        # runs is not the fix, so it is never verified; the rollback goes on.
        return _not_healthy(ctx, state, dep, str(pending.get("why") or "not verified"), {})
    if target is None and copy is None:
        reverted = _reverted(manifests.clean(dep), state.apply.original, state.proposal)
        if reverted:
            # The earlier values are back (a GitOps pass, or a person's undo): what runs
            # is not the fix, so it cannot be verified; the original stays, as it is.
            why = f"the fix is no longer live ({reverted[0]} was put back)"
            return rollback(ctx, state, why)
    if ctx.kube.unblock_rollout(dep):  # a StatefulSet's pods stuck on the broken revision
        dep = _live(ctx, state)
    rollout = rollout_status(dep)  # the rule of kubectl rollout status for the kind
    pods = ctx.kube.pod_states(dep)
    off_revision = _off_update_revision(dep, pods)
    restarts = sum(p.restart_count for p in pods)
    since_ns = int(state.apply.applied_at.timestamp() * 1e9)
    errors = ctx.loki.error_count(ns, [p.name for p in pods], since_ns) if pods else 0
    healthy = (
        rollout.done
        and not rollout.failed
        and bool(pods)
        and all(p.ready and not p.reasons for p in pods)
        and not off_revision
        and errors == 0
        and (beside is None or beside[0])
    )
    key = _progress_key(state)
    progress = store.hgetall(*key)
    details = {
        "rollout": rollout.message,
        "pods": len(pods),
        "restarts": restarts,
        "new_error_lines": errors,
    }
    if beside is not None:
        details[target.kind if target is not None else "object"] = beside[1]
    if healthy:
        if not progress or int(progress.get("restarts", -1)) != restarts:
            progress = {"since": t.timestamp(), "restarts": restarts}
            store.hset(progress, *key, ttl_s=s.verify_deadline_s * 2 + 600)
        healthy_since = datetime.fromtimestamp(float(progress["since"]), UTC)
        if (t - healthy_since).total_seconds() >= s.verify_stability_s:
            where = (
                f", on the temporary copy {state.verify_copy.name} (the {inc.workload.kind} "
                "itself is left as it is until the pull request is merged)"
                if state.verify_copy is not None else ""
            )  # fmt: skip
            state.verification = Verification(
                ok=True,
                checked_at=t,
                healthy_since=healthy_since,
                details=details,
                reason=(
                    f"rolled out and healthy for {(t - healthy_since).total_seconds():.0f}s: "
                    f"{len(pods)} pod(s) Ready, no restarts, no new error lines{where}"
                ),
            )
            # The progress is kept (it expires): a check redone after a save that lost
            # a race finds the window already served.
            log.info("%s verified: %s", tag(state), state.verification.reason)
            return state
    elif progress:
        store.delete(*key)
    elapsed = (t - state.apply.applied_at).total_seconds()
    # The deadline is for becoming healthy: a fix healthy at the deadline (or found
    # healthy by a check that came late, after a lost message) gets its stability window.
    # A workload that keeps flapping between checks is still cut off, at a hard bound.
    late = elapsed >= s.verify_deadline_s and (
        not healthy or elapsed >= 2 * (s.verify_deadline_s + s.watchdog_stall_s)
    )
    # A fix beside the workload leaves its spec as it was: a progress deadline it
    # exceeded before the fix is history until its pods are available again, not a
    # verdict on the fix (the deadline of the verification decides).
    failed = rollout.failed and target is None
    if failed or late:
        why = (
            rollout.message
            if failed
            else (
                f"not healthy within {s.verify_deadline_s:.0f}s: {_unhealthy_reason(pods, errors, rollout.message, beside, off_revision)}"
            )
        )
        return _not_healthy(ctx, state, dep, why, details)
    ctx.store.touch(state)  # progress, for the watchdog, without rewriting the record
    raise NotYet(
        s.verify_poll_s,
        "healthy, within the stability window"
        if healthy
        else _unhealthy_reason(pods, errors, rollout.message, beside, off_revision),
    )


def _progress_key(state: IncidentState) -> tuple[str, ...]:
    """Where verify keeps its progress between checks: one per attempt."""
    inc = state.incident.id
    return ("verify", inc) if not state.attempts else ("verify", inc, str(len(state.attempts) + 1))


def _not_healthy(
    ctx: Context, state: IncidentState, dep: dict[str, Any], why: str, details: dict[str, Any]
) -> IncidentState:
    """The fix did not become healthy: restore the original, then set up the next fix if
    one of another kind may still be tried (`try_next_fix`); otherwise the attempts are
    over and the GitOps controller's self-heal is restored too. Verify comes back here,
    with the first reason, for as long as a StatefulSet's rollback is converging
    (`_converged`): the next fix follows only once the set runs the original again.
    A fix verified on a copy has nothing to restore (`_copy_not_verified`)."""
    if state.verify_copy is not None:
        return _copy_not_verified(ctx, state, why, details)
    replicaset = _created_replicaset(ctx, state, dep) if _may_try_again(ctx, state) else None
    done = _rollback(ctx, state, why, details)
    if try_next_fix(ctx, done, replicaset):
        return done
    return _resume_quietly(ctx, done, why)


def _off_update_revision(workload: dict[str, Any], pods: list[PodState]) -> list[str]:
    """A StatefulSet's pods that do not run its update revision (the fix's template).

    kubectl's rule is satisfied by a partitioned rollout whose pods below the partition
    still run the old revision; a fix is proven only by pods that run it.
    """
    if workload.get("kind") != "StatefulSet":
        return []
    update = (workload.get("status") or {}).get("updateRevision")
    return [p.name for p in pods if not update or p.revision_hash != update]


def rollback(
    ctx: Context, state: IncidentState, why: str, details: dict[str, Any] | None = None
) -> IncidentState:
    """Restore the snapshot taken before the fix, unless someone changed the Deployment since.

    Then the GitOps controller's self-heal, if this incident paused it, is restored
    too (`resume_gitops`), and the temporary copy a fix was verified on instead is
    removed (`remove_copy`); a failure there is left to finalize and the watchdog.
    """
    done = _rollback(ctx, state, why, details)
    if done.verification is None or not done.verification.ok:
        done = _resume_quietly(ctx, done, why)
        done = remove_copy_quietly(ctx, done, why)
    return done


def _rollback(
    ctx: Context, state: IncidentState, why: str, details: dict[str, Any] | None
) -> IncidentState:
    """The Deployment's part of `rollback`.

    Restores only if the live Deployment is still what aifixer wrote: its spec is the
    snapshot plus this fix's values (the replica count aside, which autoscalers own).
    That covers an apply that failed after its first write landed, too. If a person
    changed it meanwhile, it is left as it is and the call says so. Safe to redeliver:
    a restore that already landed is recognised and reported as done.

    Raises:
        TransientError: the API server could not be reached; retry.
    """
    if state.verification is not None or state.proposal is None:
        return state
    ctx = ctx.of(state)
    if state.verify_copy is not None:
        return _copy_not_verified(ctx, state, why, details)  # the workload was never written
    if state.proposal.target is not None:
        return rollback_object(ctx, state, why, details)
    inc = state.incident
    if state.apply is None and ctx.store.verify_copy(inc.id) is not None:
        return state  # the fix was to be verified on a copy: the workload was never written
    snap = ctx.store.snapshot(inc.id)
    if snap is None:
        if state.apply is None:
            return state  # nothing was ever written
        original = state.apply.original
    else:
        original = snap.manifest
    try:
        live = _live(ctx, state)
    except PermanentError as exc:
        if exc.status != 404:
            raise
        return _rolled(
            ctx, state, False, f"{why}; not rolled back: the Deployment is gone", details
        )
    cleaned = manifests.clean(live)
    if not _spec_changes(original, cleaned):
        if ctx.store.hgetall("rollback", inc.id):
            return _converged(ctx, state, live, why, details)  # restored: converging
        if state.apply is None:
            return state  # the failed apply wrote nothing
        return _rolled(ctx, state, True, why, details)  # restored before a crash: done
    foreign = _foreign_changes(original, cleaned, state.proposal)
    if foreign:
        state.person_changed = "after"
        return _rolled(
            ctx,
            state,
            False,
            f"{why}; not rolled back: someone else changed the Deployment after the fix "
            f"({', '.join(foreign[:3])}), left as it is",
            details,
        )
    refusal = _restore_refusal(ctx, state, original, live)
    if refusal:
        return _rolled(ctx, state, False, f"{why}; not rolled back: {refusal}", details)
    generation = (live.get("metadata") or {}).get("generation")
    if state.apply is None:
        why = f"{why}; the partly applied fix was undone"
    # Kept until the workload converged on the original: a redelivery, a retry or the
    # watchdog then goes on converging, and verify never takes the original for the fix.
    ctx.store.hset({"why": why}, "rollback", inc.id, ttl_s=ROLLBACK_PENDING_TTL_S)
    try:
        restored = ctx.kube.restore(original, expected_generation=generation)
    except Conflict:
        raise TransientError(
            "kubernetes", f"{inc.workload.key} changed during the restore"
        ) from None
    return _converged(ctx, state, restored, why, details)


def _restore_refusal(
    ctx: Context, state: IncidentState, original: Any, live: dict[str, Any]
) -> str | None:
    """Why the stored original may not be written back over the workload; None when it may.

    The snapshot and the record come from Redis, which anyone who reaches it could
    write: a restore is a write like the fix's own, so its namespace must be one
    aifixer may change, the original must be the incident's workload, and its pod
    template one the cluster itself ran (a revision the workload owns), never a
    template written into the store.
    """
    w = state.incident.workload
    refusal = guardrails.namespace_refusal(w.namespace, ctx.settings)
    if refusal:
        return refusal
    if not _names(original, w.namespace, w.name):
        return f"the stored original is not the {w.kind} {w.key}"
    if not ctx.kube.had_template(live, (original.get("spec") or {}).get("template")):
        return f"the stored original's pod template is none of the {w.kind}'s revisions"
    return None


def _names(manifest: Any, namespace: str, name: str) -> bool:
    """Whether `manifest` (anything: it may come from a stored record) is metadata-named
    `namespace`/`name`."""
    meta = manifest.get("metadata") if isinstance(manifest, dict) else None
    return isinstance(meta, dict) and (meta.get("namespace"), meta.get("name")) == (
        namespace,
        name,
    )


ROLLBACK_PENDING_TTL_S = 7 * 86400.0


def _converged(
    ctx: Context,
    state: IncidentState,
    live: dict[str, Any],
    why: str,
    details: dict[str, Any] | None,
) -> IncidentState:
    """The rollback is done once the workload runs the original again, not at the write.

    A StatefulSet keeps a member stuck on the fix's revision after its template is
    reverted: `Kube.rollback_pending` unblocks it again (once the controller observed
    the restored spec) and says whether every pod is back on the original revision, or
    on the one it ran before the fix. Until then the rollback is not done: a
    TransientError, so the task retries it, then the watchdog, every round, and the
    incident is never recorded as restored while the fix's pods still run.
    """
    inc = state.incident
    before = {p.name: p.revision_hash for p in (state.evidence.pods if state.evidence else [])}
    pending = ctx.kube.rollback_pending(live, before)
    if pending is not None:
        raise TransientError(
            "kubernetes", f"{inc.workload.key} restored, not converged yet: {pending}"
        )
    why = str(ctx.store.hgetall("rollback", inc.id).get("why") or why)  # the first reason
    return _rolled(ctx, state, True, why, details)


def _rolled(
    ctx: Context, state: IncidentState, done: bool, reason: str, details: dict[str, Any] | None
) -> IncidentState:
    state.verification = Verification(
        ok=False, checked_at=now(), reason=reason, rolled_back=done, details=details or {}
    )
    ctx.store.delete(*_progress_key(state))
    ctx.store.delete("rollback", state.incident.id)
    if done:
        log.warning("%s fix did not work, original restored: %s", tag(state), reason)
    else:
        log.error("%s fix did not work and was NOT rolled back: %s", tag(state), reason)
    return state


IGNORED_PATHS = ("spec.replicas",)  # autoscalers own it: not a person's change


# -- a second try before the phone -------------------------------------------------------


def fix_kind(proposal: FixProposal) -> str:
    """What kind of fix a proposal is: its playbook, whoever chose it or tuned its amounts
    ("hybrid:raise-memory-limit" and "raise-memory-limit" are one kind)."""
    return proposal.strategy.rsplit(":", 1)[-1]


def next_fix(state: IncidentState, settings: Settings) -> FixProposal | None:
    """The best alternative of a kind no attempt tried, changing something none did."""
    tried = [a.proposal for a in state.attempts] + ([state.proposal] if state.proposal else [])
    kinds = {fix_kind(p) for p in tried}
    seen = [manifests.clean(p.manifest) for p in tried]
    for alternative in state.alternatives:
        if fix_kind(alternative) in kinds or manifests.clean(alternative.manifest) in seen:
            continue
        return alternative
    return None


def _may_try_again(ctx: Context, state: IncidentState) -> bool:
    """Another fix could follow this one: attempts are left and one of another kind exists."""
    return len(state.attempts) + 1 < ctx.settings.fix_attempts and (
        next_fix(state, ctx.settings) is not None
    )


def try_next_fix(ctx: Context, state: IncidentState, replicaset: str | None) -> bool:
    """After a fix failed verification and the original was restored: make the next fix
    the incident's proposal, to be applied (by the verify task) and verified like the first.

    Only when the failure was the fix's own (not healthy in time, a failed rollout), the
    original is back (a person's change is never worked around), attempts are left
    (`fix_attempts`), an alternative of another kind exists, and its whole verification
    still fits in the incident's budget (`fix_budget_s` from the first apply). The failed
    attempt is kept in `attempts`, with the ReplicaSet its apply created. The rollback
    snapshot stays the one taken before the first write: each attempt starts from, and
    is undone to, the original. Returns True when a next fix was set up.
    """
    s, v = ctx.settings, state.verification
    if v is None or v.ok or not v.rolled_back or state.apply is None or state.error:
        return False
    nxt = next_fix(state, s) if len(state.attempts) + 1 < s.fix_attempts else None
    if nxt is None:
        return False
    first = state.attempts[0].applied_at if state.attempts else state.apply.applied_at
    spent = (now() - first).total_seconds()
    if spent + s.verify_deadline_s > s.fix_budget_s:
        log.warning("%s no time left for another fix: %.0fs of %.0fs spent",
                    tag(state), spent, s.fix_budget_s)  # fmt: skip
        return False
    _archive(state, nxt, replicaset)
    log.warning("%s fix %d did not verify and was undone; trying %s next",
                tag(state), len(state.attempts), nxt.strategy)  # fmt: skip
    return True


def _archive(state: IncidentState, nxt: FixProposal, replicaset: str | None) -> None:
    """The current fix (applied, rolled back) kept in `attempts`; `nxt` becomes the fix."""
    if state.proposal is None or state.apply is None or state.verification is None:
        raise ValueError("only an applied and verified fix is archived")
    state.attempts.append(
        FixAttempt(
            number=len(state.attempts) + 1,
            proposal=state.proposal,
            applied_at=state.apply.applied_at,
            generation=state.apply.generation,
            verification=state.verification,
            replicaset=replicaset,
        )
    )
    state.proposal, state.apply, state.verification = nxt, None, None
    for stage in ("apply", "verify", "rollback"):
        state.retries.pop(stage, None)  # each attempt has its own retry budget


def next_fix_pending(state: IncidentState) -> bool:
    """A next fix was set up after a rollback and is not applied yet."""
    return (
        bool(state.attempts)
        and state.proposal is not None
        and state.apply is None
        and state.verification is None
        and state.error is None
        and state.outcome is None
    )


def _created_replicaset(ctx: Context, state: IncidentState, dep: dict[str, Any]) -> str | None:
    """The ReplicaSet the fix's apply created: the current one, unless it existed before
    the incident (a fix that returned to a revision the workload had)."""
    current = next((r for r, _ in ctx.kube.revisions(dep) if r.current), None)
    before = {r.replicaset for r in state.evidence.revisions} if state.evidence else set()
    if current is None or current.replicaset in before:
        return None
    return current.replicaset


def _spec_changes(
    before: dict[str, Any], after: dict[str, Any], *, metadata: bool = False
) -> list[str]:
    """The spec paths that differ, the replica count aside; with `metadata`, the labels
    and annotations too (the apply sends them, so a person's change to them since the
    evidence was read would be overwritten)."""

    def watched(manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest.get("metadata") or {}
        out = {"spec": manifest.get("spec")}
        if metadata:
            out["metadata"] = {k: meta.get(k) or {} for k in ("labels", "annotations")}
        return out

    return [
        c.path
        for c in manifests.diff(watched(before), watched(after))
        if c.path not in IGNORED_PATHS
    ]


def _unhealthy_reason(
    pods,
    errors: int,
    rollout_message: str,
    beside: tuple[bool, str] | None = None,
    off_revision: list[str] | None = None,
) -> str:
    reasons = sorted({r for p in pods for r in p.reasons})
    parts = [rollout_message] if rollout_message else []
    if beside is not None and not beside[0]:
        parts.append(beside[1])
    if reasons:
        parts.append("pods show " + ", ".join(reasons))
    if off_revision:
        parts.append("not running the fix's revision: " + ", ".join(off_revision[:5]))
    if errors:
        parts.append(f"{errors} new error line(s)")
    return "; ".join(parts) or "waiting for pods"


# -- a fix to the object beside the workload: a claim, a Service -------------------------
#
# The incident is the workload's; the object fixed is `proposal.target`. The same rules
# as for a Deployment, for that object: the snapshot is taken once before the first
# write and is what a rollback restores; nothing is written over a change someone else
# made (the evidence's object must still be the live one); the guardrails and a dry-run
# run again immediately before writing; verify holds the workload to the same health
# and, besides, the object to its purpose (the claim Bound, the Service with a ready
# endpoint).


def _targeted(state: IncidentState) -> tuple[FixProposal, ObjectRef]:
    proposal = state.proposal
    if proposal is None or proposal.target is None:
        raise PermanentError("pipeline", "the fix names no object beside the workload")
    return proposal, proposal.target


def _object(ctx: Context, state: IncidentState) -> dict[str, Any] | None:
    target = state.proposal.target if state.proposal is not None else None
    if target is None:
        return None
    ctx = ctx.of(state)
    if target.kind == "PersistentVolumeClaim":
        return ctx.kube.get_claim(target.namespace, target.name)
    return ctx.kube.get_service(target.namespace, target.name)


def _object_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Paths where two versions of a claim or Service differ, as its author wrote them."""
    return [c.path for c in manifests.diff(guardrails.authored_view(manifests.clean(before)).get("spec"),
                                           guardrails.authored_view(manifests.clean(after)).get("spec"),
                                           "spec")]  # fmt: skip


def _class_names(ctx: Context) -> list[str]:
    """The names of the cluster's StorageClasses, read now."""
    return [c["metadata"]["name"] for c in ctx.kube.storage_classes()]


def recheck_object(
    ctx: Context, state: IncidentState, live: dict[str, Any], workload: dict[str, Any]
) -> list[str]:
    """`recheck` for a claim or a Service: the guardrails on the live objects and the
    classes read now, then the API server's dry-run."""
    proposal = state.proposal
    if proposal is None or proposal.target is None:
        return ["no object to fix"]
    target, w = proposal.target, state.incident.workload
    if target.namespace != w.namespace:
        return [f"the {target.kind} is not in the workload's namespace"]
    classes = _class_names(ctx) if target.kind == "PersistentVolumeClaim" else []
    reasons = guardrails.check_object(live, proposal.manifest, workload, classes, ctx.settings)
    if reasons:
        return reasons
    try:
        ctx.kube.dry_run_object(proposal.manifest)
    except PermanentError as exc:
        return [f"server-side dry-run refused it: {exc.message}"]
    return []


def apply_object(ctx: Context, state: IncidentState) -> IncidentState:
    """Apply a fix to a claim (re-created with an existing class) or a Service (its
    selector set), once, over exactly what the evidence read.

    A redelivery after the write recognises it: the claim already re-created with the
    fix's class (or created only, after a delete that landed), the Service's selector
    already the fix's.

    Raises:
        Conflict: someone changed the object after the diagnosis; nothing written.
        PermanentError: the guardrails or the dry-run refused it now.
        TransientError: as every call.
    """
    ctx = ctx.of(state)
    inc = state.incident
    proposal, target = _targeted(state)
    workload = _live(ctx, state)
    live = _object(ctx, state)
    snap = ctx.store.snapshot(inc.id)
    if live is None:
        if snap is None or target.kind != "PersistentVolumeClaim":
            raise PermanentError("kubernetes", f"{target.kind} {target.key} no longer exists")
        # The re-creation's delete had landed: the claim it deleted is the snapshot.
        refused = recheck_object(ctx, state, snap.manifest, workload)
        if refused:
            raise PermanentError(
                "guardrails",
                f"the fix was refused immediately before writing: {'; '.join(refused[:5])}",
            )
        ctx.kube.create_claim(proposal.manifest)
    elif snap is not None and not _object_changes(proposal.manifest, live):
        pass  # the fix is already live (a redelivery after the write)
    else:
        snap = ctx.store.snapshot_once(inc.id, snapshot_of(live))
        seen = fixer.object_of(state.evidence, target) if state.evidence else None
        changed = _object_changes(seen, snap.manifest) if seen is not None else ["unread"]
        if changed:
            raise Conflict(
                "kubernetes",
                f"{target.kind} {target.key} was changed by someone else after the diagnosis "
                f"({', '.join(changed[:3])}); aifixer changed nothing",
            )
        refused = recheck_object(ctx, state, live, workload)
        if refused:
            raise PermanentError(
                "guardrails",
                f"the fix was refused immediately before writing: {'; '.join(refused[:5])}",
            )
        unpausable = pause_gitops(ctx, state, workload)
        if unpausable is not None:
            raise PermanentError("gitops", _not_pausable(
                inc, unpausable, f"the fix is to the {target.kind} {target.name}, which a "
                "temporary copy of the Deployment cannot verify",
            ))  # fmt: skip
        meta = live["metadata"]
        if target.kind == "PersistentVolumeClaim":
            ctx.kube.recreate_claim(live, proposal.manifest)
        else:
            selector = (proposal.manifest.get("spec") or {}).get("selector") or {}
            ctx.kube.set_service_selector(
                target.namespace, target.name, selector, meta["resourceVersion"]
            )
    if snap is None:  # not reached: every branch above read or took it
        raise PermanentError("store", f"no snapshot of {target.key} was kept")
    state.apply = ApplyResult(
        original=snap.manifest,
        applied=proposal.manifest,
        changes=proposal.changes,
        generation=(workload.get("metadata") or {}).get("generation", 0),
        applied_at=now(),
    )
    log.info("%s applied to %s %s", tag(state), target.kind, target.key)
    return state


def object_verified(ctx: Context, state: IncidentState) -> tuple[tuple[bool, str], list[str]]:
    """((the object serves its purpose, in words), paths someone else changed in it).

    A claim serves once Bound; a Service once it has a ready endpoint.
    """
    proposal, target = _targeted(state)
    live = _object(ctx, state)
    if live is None:
        return (False, f"{target.kind} {target.name} is gone"), [f"{target.kind} deleted"]
    foreign = _object_changes(proposal.manifest, live)
    if target.kind == "PersistentVolumeClaim":
        phase = (live.get("status") or {}).get("phase") or "Pending"
        return (phase == "Bound", f"claim {target.name} {phase}"), foreign
    _, ready = ctx.of(state).kube.endpoints_of(live)
    return (ready > 0, f"service {target.name} has {ready} ready endpoint(s)"), foreign


def rollback_object(
    ctx: Context, state: IncidentState, why: str, details: dict[str, Any] | None
) -> IncidentState:
    """Restore the claim or the Service the fix changed, unless someone changed it since.

    A re-created claim that got a volume is not deleted again: it may hold data by now,
    and the original claim held none; it is left as it is and the call says so.

    Raises:
        TransientError: the API server could not be reached; retry.
    """
    ctx = ctx.of(state)
    proposal, target = _targeted(state)
    snap = ctx.store.snapshot(state.incident.id)
    original = snap.manifest if snap is not None else None
    if original is None:
        return state if state.apply is None else _rolled(ctx, state, False, why, details)
    refusal = _object_restore_refusal(ctx, state, original)
    if refusal:
        return _rolled(ctx, state, False, f"{why}; not rolled back: {refusal}", details)
    live = _object(ctx, state)
    if live is None:
        if target.kind == "PersistentVolumeClaim":
            ctx.kube.create_claim(original)  # deleted by the fix, not created again
            return _rolled(ctx, state, True, why, details)
        return _rolled(ctx, state, False, f"{why}; not rolled back: the Service is gone", details)
    if not _object_changes(original, live):
        return _rolled(ctx, state, True, why, details)  # nothing of the fix is live
    foreign = _object_changes(proposal.manifest, live)
    if foreign:
        state.person_changed = "after"
        return _rolled(
            ctx, state, False,
            f"{why}; not rolled back: someone else changed the {target.kind} after the fix "
            f"({', '.join(foreign[:3])}), left as it is", details,
        )  # fmt: skip
    try:
        if target.kind == "PersistentVolumeClaim":
            if (live.get("spec") or {}).get("volumeName"):
                return _rolled(
                    ctx, state, False,
                    f"{why}; not rolled back: the re-created claim {target.name} is bound to a "
                    "volume and may hold data by now, left as it is", details,
                )  # fmt: skip
            ctx.kube.delete_claim(live)
            ctx.kube.create_claim(original)
        else:
            selector = (original.get("spec") or {}).get("selector") or {}
            ctx.kube.set_service_selector(
                target.namespace, target.name, selector, live["metadata"]["resourceVersion"]
            )
    except Conflict:
        raise TransientError("kubernetes", f"{target.key} changed during the restore") from None
    return _rolled(ctx, state, True, why, details)


def _object_restore_refusal(ctx: Context, state: IncidentState, original: Any) -> str | None:
    """`_restore_refusal` for a claim or a Service: the stored original must be the
    fix's target, beside the workload in a namespace aifixer may change, and a claim
    one aifixer would have re-created (the guardrails' rules for the fix, read the
    other way: a claim that never bound, changed by nothing but its class)."""
    proposal, target = _targeted(state)
    w = state.incident.workload
    refusal = guardrails.namespace_refusal(target.namespace, ctx.settings)
    if refusal:
        return refusal
    if (
        target.namespace != w.namespace
        or not _names(original, target.namespace, target.name)
        or (original.get("kind") or target.kind) != target.kind
    ):
        return f"the stored original is not the {target.kind} {target.key}"
    if target.kind == "PersistentVolumeClaim":
        reasons = guardrails.check_object(
            original, proposal.manifest, _live(ctx, state), _class_names(ctx), ctx.settings
        )
        if reasons:
            return f"the stored original claim is not one aifixer re-creates ({reasons[0]})"
    return None


def open_pr(ctx: Context, state: IncidentState) -> IncidentState:
    """The verified fix as a pull request; a change rendering cannot prove, as a draft.

    A draft (the forge raised `Unproven`, or a redelivery found the incident's draft)
    also records `pr_error`: the fix is live but not in Git until a person makes the
    edits the draft names, so the incident is not `fixed` and a person is called.
    """
    if not (state.verification and state.verification.ok) or state.pull_request is not None:
        return state
    ctx = ctx.of(state)
    started = time.monotonic()
    why = None
    try:
        ref = ctx.forge.open_fix_pr(state)
    except Unproven as exc:
        why = exc.explanation
        ref = ctx.forge.open_draft_pr(state, exc.explanation, exc.hand_edits)
    state.pull_request = ref
    if ref.draft:
        state.pr_error = (
            f"open_pr: the change could not be proven by rendering the repository; draft pull "
            f"request #{ref.number} says what to edit by hand"
            + (f": {bounded(why, 500)}" if why else "")
        )
    log.info("%s %spull request #%d %s", tag(state), "draft " if ref.draft else "",
             ref.number, ref.url)  # fmt: skip
    return _timed(state, "open_pr", started)


def may_explain_pr(state: IncidentState) -> bool:
    """The model's explanation may still go into the record's pull request: a verified
    fix's pull request (no draft) that was opened and nothing said on the phone."""
    pr = state.pull_request
    return (
        pr is not None
        and not pr.draft
        and pr.state == "open"
        and state.speech is None
        and state.verification is not None
        and state.verification.ok
    )


def show_explanation(ctx: Context, state: IncidentState) -> str | None:
    """Bring the model's explanation (`state.explanation`) into the open pull request.

    The one step that keeps the record and the pull request in agreement, run by
    `explain` once the explanation is written and by `open_pr` once the pull request is
    recorded (whichever comes last does it); idempotent. Never in the way of anything:
    a forge error is logged, and the pull request keeps the diagnosis written from the
    facts.

    Returns:
        The `diagnosis_sha` the pull request now has, when it was just brought to show
        the explanation (the caller records it, with the explanation as `diagnosis`);
        None when there is nothing to do, or it could not be done.
    """
    written = state.explanation
    if written is None or not may_explain_pr(state) or state.pull_request is None:
        return None
    after = prbody.digest(prbody.diagnosis_section(state.model_copy(update={"diagnosis": written})))
    if state.pull_request.diagnosis_sha == after:
        return None  # shown already
    try:
        shown = ctx.of(state).forge.explain_pr(state, written)
    except AdapterError as exc:
        log.warning("%s the pull request keeps the facts' diagnosis: %s", tag(state), exc)
        return None
    if not shown:
        log.info("%s the pull request's diagnosis is left as it is (edited, or closed)",
                 tag(state))  # fmt: skip
        return None
    log.info("%s the model's explanation is in pull request #%d", tag(state),
             state.pull_request.number)  # fmt: skip
    return after


def needs_call(state: IncidentState) -> bool:
    """A person must hear of it: not fixed, or fixed but not in Git."""
    if state.outcome == "recovered":
        return False
    verified = state.verification is not None and state.verification.ok
    return not verified or state.pr_error is not None


def call_oncall(ctx: Context, state: IncidentState) -> IncidentState:
    """Start the phone escalation with the first on-call number, once per incident.

    A redelivery resumes a dial a killed worker left unfinished (see `place_next_call`)
    and never dials a number twice; once the escalation ended it does nothing.
    """
    if not needs_call(state) or ctx.store.escalation_done(state.incident.id):
        return state
    ctx = ctx.phone_of(state)
    started = time.monotonic()
    if state.speech is None:
        state.speech = _speech(ctx, state)
    placed = place_next_call(ctx, state, 1)
    if placed is None:
        log.error(
            "%s nobody left to call (numbers: %d)", tag(state), len(ctx.settings.oncall_numbers)
        )
        ctx.store.mark_escalation_done(state.incident.id)
    return _timed(state, "call_oncall", started)


def _speech(ctx: Context, state: IncidentState) -> str:
    """What the call says. After a fix was applied, never a model call on the way to the
    phone: the speech `explain` prepared while verify waited, if the record's facts are
    still those it rewords, else the template written from them. Before any apply there
    was nothing to wait for, and the model writes it now."""
    if state.apply is None and not state.attempts:
        with _metered(ctx, state, "call_oncall"):
            return fixer.speech(ctx.model, state, ctx.settings)
    template = fixer.template_speech(state, fixer.call_language(ctx.settings.call_language))
    if state.attempts:
        return template  # it tells every fix tried, in order; a model's wording may not
    if state.prepared_speech and state.prepared_for == template:
        return state.prepared_speech
    return template


PHONE_TRIES = 3  # per number, for Twilio's transient errors
PHONE_BACKOFF_S = 1.0


def place_next_call(ctx: Context, state: IncidentState, attempt: int) -> str | None:
    """Make sure the first on-call number from `attempt` on that has no ended call is rung.

    Each number is dialled at most once per incident: a claim in the store is taken
    before dialling. A claim without a known CallSid is a dial a killed worker left
    unfinished: Twilio's call list says whether it went out (then it is adopted), and
    only if Twilio has no such call is the number dialled. Twilio's transient errors
    are retried on the same number a few times; a number that cannot be called is
    recorded as a failed call, and the next one is tried.

    Returns the CallSid of the call now ringing, or None when nobody is left.
    """
    with ctx.store.dialling(state.incident.id):
        return _place_next_call(ctx.phone_of(state), state, attempt)


def _place_next_call(ctx: Context, state: IncidentState, attempt: int) -> str | None:
    from .callfile import CallContext, load_call_context, store_call_context

    inc = state.incident
    ended = {c.attempt for c in state.calls}
    speech = spoken(state, ctx.settings.call_language, ctx.several)
    for index, number in enumerate(ctx.settings.oncall_numbers, start=1):
        if index < attempt or index in ended:
            continue
        call = CallContext(
            incident_id=inc.id,
            fingerprint=inc.fingerprint,
            attempt=index,
            number=number,
            speech=speech,
            time=now(),
        )
        if not ctx.store.claim_dial(inc.id, number):
            known = load_call_context(ctx.redis, inc.id, index)
            if known is not None and known.call_sid:
                return known.call_sid  # placed already: a redelivery
            if known is not None and (known.number, known.speech) == (number, speech):
                call = known  # what a stored context says is used only if it is ours
            sid = _placed_meanwhile(ctx, call)
            if sid is not None:
                ctx.store.own_call(sid, inc.id)
                store_call_context(ctx.redis, call.model_copy(update={"call_sid": sid}))
                ctx.store.watch_escalation(inc.id, _call_window(ctx))
                log.info("%s call to on-call #%d was placed before a crash", tag(state), index)
                return sid
        if not ctx.store.take_call_slot(inc.id, number, ctx.settings.max_calls_per_hour):
            _refuse_call(ctx, state, call)
            continue
        store_call_context(ctx.redis, call)  # before dialling: the callbacks may come first
        sid, failure = _dial(ctx, state, call)  # Twilio unreachable: raised, the task retries
        if sid is not None:
            ctx.store.own_call(sid, inc.id)
            store_call_context(ctx.redis, call.model_copy(update={"call_sid": sid}))
            ctx.store.watch_escalation(inc.id, _call_window(ctx))
            log.info("%s calling on-call #%d %s (%s)", tag(state), index, _mask(number), sid)
            return sid
        log.error("%s call to %s failed: %s", tag(state), _mask(number), failure)
        call_finished(
            ctx,
            CallRecord(
                time=call.time,
                number=number,
                speech=call.speech,
                can_intervene=False,
                fingerprint=inc.fingerprint,
                incident_id=inc.id,
                status="failed",
                attempt=index,
            ),
        )
    return None


def spoken(state: IncidentState, language: str = "en", name_cluster: bool = False) -> str:
    """The speech to dial with, checked again at the point of action.

    The record comes from Redis: a speech that is not what aifixer would say in the
    call's language (`fixer.speech_problems`: too long, raw status text, anything
    `redact` would change or `untrusted.findings` names...) is replaced by the
    template, written from the record's facts. A farm of several clusters opens it
    with the incident's cluster (`name_cluster`).
    """
    speech = state.speech or ""
    checked = fixer.clean_speech(speech, state, language)
    if checked is None:
        if speech:
            log.warning("%s the stored speech is not fit to be read out: the template instead",
                        tag(state))  # fmt: skip
        checked = fixer.template_speech(state, language)
    return fixer.naming_cluster(checked, state, language) if name_cluster else checked


def _refuse_call(ctx: Context, state: IncidentState, call) -> None:
    """The farm's call budget is spent: the refusal goes to the call file and the record."""
    from .callfile import CallFile

    limit = ctx.settings.max_calls_per_hour
    log.error("%s call to on-call #%d not placed: %d calls in the last hour is the limit",
              tag(state), call.attempt, limit)  # fmt: skip
    record = CallRecord(
        time=call.time,
        number=call.number,
        speech=call.speech,
        can_intervene=False,
        fingerprint=state.incident.fingerprint,
        incident_id=state.incident.id,
        status=f"refused: {limit} calls per hour reached",
        attempt=call.attempt,
    )
    CallFile(ctx.settings.call_file).append(record)
    call_finished(ctx, record)


def _call_window(ctx: Context) -> float:
    """How long a call may take, ringing to the last callback, before it is looked into."""
    s = ctx.settings
    return s.ring_timeout_s + s.gather_timeout_s * 3 + 120.0


def check_escalations(ctx: Context) -> list[tuple[str, int]]:
    """Move on the phone escalations whose calls should have ended: (incident id, attempt)
    pairs to dial next.

    Once an incident closes, its escalation lives on Twilio's callbacks. A callback that
    never came (lost, or `aifixer web` down), a next call that was never sent, a dial a
    worker never finished: each leaves the escalation still, and a person uncalled.
    Twilio is asked how the last call ended; its line is written and reported exactly
    as the callback would have; and the next number is due if nobody said yes.
    """
    from .callfile import FINAL_STATUSES, CallFile, finish_call, load_call_context

    due: list[tuple[str, int]] = []
    for iid in ctx.store.escalations_due():
        try:
            state = load(ctx, iid)
            if state is None or ctx.store.escalation_done(iid):
                ctx.store.mark_escalation_done(iid)
                continue
            numbers = ctx.phone_of(state).settings.oncall_numbers
            ctx.store.watch_escalation(iid, _call_window(ctx))  # look again later
            # Each call's context is read once: one that expires during the check cannot
            # be there for one read and gone for the next.
            contexts = {
                k: stored
                for k in range(1, len(numbers) + 1)
                if (stored := load_call_context(ctx.redis, iid, k))
            }
            attempt = max(contexts, default=0)
            ended = {c.attempt: c for c in state.calls}
            if attempt == 0:
                due.append((iid, 1))
                continue
            if attempt in ended:
                if ended[attempt].can_intervene or attempt >= len(numbers):
                    ctx.store.mark_escalation_done(iid)
                else:
                    due.append((iid, attempt + 1))
                continue
            known = contexts[attempt]
            if not known.call_sid:
                due.append((iid, attempt))  # a dial left unfinished: resume it
                continue
            status = ctx.phone.call_status(known.call_sid)
            if status in FINAL_STATUSES:
                log.warning("%s call %s ended %s without a callback: recorded from Twilio",
                            tag(state), known.call_sid, status)  # fmt: skip
                finish_call(
                    ctx.redis, CallFile(ctx.settings.call_file), iid, attempt, known.call_sid,
                    status, lambda _iid, record: call_finished(
                        ctx, record, place_next=lambda nid, nxt: due.append((nid, nxt))
                    ),
                )  # fmt: skip
        except (AdapterError, redis_lib.RedisError) as exc:
            log.warning("escalation of %s: %s (tried again later)", iid, exc)
    return due


def _placed_meanwhile(ctx: Context, call) -> str | None:
    """The CallSid Twilio gave a call to `call.number` since `call.time`, if any.

    Calls another incident placed to the same person are not ours: every placed call
    is recorded with its incident, and those are left out.
    """
    for sid in ctx.phone.calls_since(call.number, since=call.time):
        if ctx.store.call_owner(sid) in (None, call.incident_id):
            return sid
    return None


def _dial(ctx: Context, state: IncidentState, call) -> tuple[str | None, str]:
    """(CallSid, "") once Twilio took the call, or (None, why) when it refused it for good.

    Raises:
        TransientError: Twilio stayed unreachable over PHONE_TRIES tries; the task
            retries later, and the number, still claimed, is resumed then (see
            `place_next_call`), never dialled twice.
    """
    for n in range(PHONE_TRIES):
        try:
            sid = ctx.phone.place_call(
                call.number, call.speech, incident_id=call.incident_id, attempt=call.attempt
            )
            return sid, ""
        except PermanentError as exc:
            return None, str(exc)
        except TransientError as exc:
            if exc.status is None:  # no answer: Twilio may have placed it all the same
                sid = _placed_meanwhile(ctx, call)
                if sid is not None:
                    return sid, ""
            if n + 1 == PHONE_TRIES:
                raise
            delay = min(PHONE_BACKOFF_S * 2**n, 5.0)
            log.warning("%s %s; trying the same number again in %.0fs", tag(state), exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def call_finished(
    ctx: Context, record: CallRecord, place_next: Callable[[str, int], None] | None = None
) -> None:
    """A call ended (web callbacks, or a failed dial): record it; on 'no', call the next person.

    Without `place_next` (a dial that failed inside `place_next_call`) the caller's
    loop goes on to the next number itself.
    """
    incident_id = record.incident_id or record.fingerprint
    ctx.store.add_call(incident_id, record)
    metrics.call_ended(ctx.redis, record.can_intervene, record.answer_text)
    state = load(ctx, incident_id)
    if state is None:
        log.error("call %s for unknown incident %s", record.call_sid, incident_id)
        return
    numbers = ctx.phone_of(state).settings.oncall_numbers
    if not record.can_intervene and record.attempt < len(numbers):
        if place_next is not None:
            place_next(incident_id, record.attempt + 1)
    else:
        ctx.store.mark_escalation_done(incident_id)
    append_incident_line(ctx, state)


def _mask(number: str) -> str:
    return number[:-4] + "****" if len(number) > 6 else "****"


def finalize(ctx: Context, state: IncidentState) -> IncidentState:
    """Decide the outcome and close the incident; a second finalize changes nothing.

    An incident whose fix is applied and neither verified nor restored (the restore
    failed for good) is not closed: it waits as "restore pending" for the watchdog to
    restore it. A redelivered finalize re-releases the workload, in case the first one
    died between closing and releasing.
    """
    if state.closed_at is not None:
        ctx.store.release(state, _done_generation(ctx, state), ctx.settings.incident_cooldown_s)
        return state
    if not awaits_merge(ctx, state):
        state = _resume_quietly(ctx, state, "the incident ends")
    state = remove_copy_quietly(ctx, state, "the incident ends")
    if state.apply is not None and state.verification is None:
        log.error("%s the unverified fix is still live: restore pending", tag(state))
        save(ctx, state, "restore pending")
        return state
    if state.outcome is None:
        if state.verification and state.verification.ok and state.pr_error is None:
            state.outcome = "fixed"
        elif state.error is not None:
            state.outcome = "error"
        elif state.proposal is None and state.rejections:
            state.outcome = "rejected"
        else:
            state.outcome = "called"
    state.closed_at = now()
    try:
        append_incident_line(ctx, state)
    except OSError as exc:  # the record in Redis stays the reference; never block the close
        log.error("%s incidents file not written: %s", tag(state), exc)
    save(ctx, state, "closed")
    metrics.incident_ended(
        ctx.redis, state.outcome, state.incident.failure_class,
        (state.closed_at - state.incident.opened_at).total_seconds(),
    )  # fmt: skip
    ctx.store.release(state, _done_generation(ctx, state), ctx.settings.incident_cooldown_s)
    log.info("%s outcome: %s", tag(state), state.outcome)
    return state


def _done_generation(ctx: Context, state: IncidentState) -> int | None:
    """The revision this failure ended on, so the same failure on it is not reopened."""
    w = state.incident.workload
    try:
        dep = ctx.of(state).kube.get_workload(w.namespace, w.kind, w.name)
    except AdapterError as exc:
        log.warning("%s cannot read the final revision (%s): using the last known", tag(state), exc)
        dep = None
    if dep is not None:
        return (dep.get("metadata") or {}).get("generation")
    if state.apply is not None:
        return state.apply.generation + (
            1 if state.verification and state.verification.rolled_back else 0
        )
    return state.incident.generation


def append_incident_line(ctx: Context, state: IncidentState) -> None:
    """The incidents file: one JSON line each time an incident ends, a call on it ends, or
    its pull request is found merged or closed."""
    from .callfile import append_line

    line = state.model_dump_json(
        include={
            "incident",
            "outcome",
            "diagnosis",
            "verification",
            "pull_request",
            "calls",
            "rejections",
            "error",
            "pr_error",
            "model_used",
            "timings",
            "model_usage",
            "closed_at",
        }
    )
    append_line(ctx.settings.incidents_file, line.encode() + b"\n")


# -- what became of the pull requests ----------------------------------------------------


def check_pull_requests(ctx: Context) -> int:
    """Periodic: record which recent pull requests were merged (and when) or closed.

    Only incidents closed within `pr_check_days` whose pull request is still open as
    far as the record knows, at most `pr_check_max` a round (one API call each), least
    recently checked first. A merged or closed pull request is written on the record
    (`pull_request.state`, `merged_at`, `closed_at`) and in the incidents file, and is
    not looked at again; an incident still open is left for a later round. One
    incident failing here never holds up the others; a forge that is unreachable or
    rate-limited ends the round. Returns how many records changed.
    """
    s = ctx.settings
    horizon = now() - timedelta(days=s.pr_check_days)
    changed = 0
    for iid in ctx.store.pulls_to_check(s.pr_check_max):
        try:
            state = load(ctx, iid)
            ref = state.pull_request if state is not None else None
            if (
                state is None
                or ref is None
                or (ref.state != "open" and not _awaits_fetch(ctx, state))
            ):
                ctx.store.forget_pull(iid)
                continue
            if state.closed_at is None:  # finalize has not run yet
                ctx.store.checked_pull(iid)
                continue
            if state.closed_at < horizon:
                ctx.store.forget_pull(iid)
                continue
            if ref.state == "open":
                fresh = ctx.of(state).forge.pull_state(ref)
                if fresh.state == "open":
                    ctx.store.checked_pull(iid)
                    continue
                state.pull_request = fresh
                save(ctx, state)
                changed += 1
                log.info("%s pull request #%d %s", tag(state), fresh.number,
                         f"merged at {fresh.merged_at}" if fresh.merged_at else "closed unmerged")  # fmt: skip
                try:
                    append_incident_line(ctx, state)
                except OSError as exc:
                    log.error("%s incidents file not written: %s", tag(state), exc)
            pr = state.pull_request or ref
            # The fix is in Git's hands now (merged: once the controller has fetched it),
            # or a person decided against it (closed): the controller may keep the
            # workload equal to Git again.
            if pr.state == "merged" and not _controller_has_merge(ctx.of(state), state):
                ctx.store.checked_pull(iid)  # looked at again next round
                continue
            state = _resume_quietly(ctx, state, f"pull request #{pr.number} {pr.state}")
            save(ctx, state)
            ctx.store.forget_pull(iid)
        except TransientError as exc:
            log.warning("pull request check: incident %s: %s (next round)", iid, exc)
            if exc.system != "redis":  # the forge: end the round (a stale record just waits)
                break
        except PermanentError as exc:
            log.warning("pull request check: incident %s: %s", iid, exc)
            if exc.status == 404:  # the pull request or its repository is gone
                ctx.store.forget_pull(iid)
            else:
                ctx.store.checked_pull(iid)
    return changed


# -- the watchdog ------------------------------------------------------------------------


def watchdog(
    ctx: Context, waiting: Callable[[list[str]], set[str]] | None = None
) -> list[tuple[str, str]]:
    """Finish the incidents that stopped progressing: (id, "resume" | "conclude") pairs.

    A lost message (a Redis restart drops what workers held), a worker killed twice on
    the same task, a whole machine gone: the incident's record stops moving. An incident
    whose next stage is still waiting in the broker (`waiting` names them: a burst of
    incidents queues behind the model) is not lost: its lock and clock are renewed and
    it is left to its message, up to `watchdog_queued_max_s` (a queue no worker serves
    must not hold an incident forever). After
    `watchdog_stall_s` without progress, the watchdog first resumes the chain from the
    stage the record reached (every stage skips what is done, and every side effect is
    idempotent, so a resumed chain beside a merely slow one does no harm). If it stalls
    again, it is taken over — first by a versioned save, so a stage that wakes up late
    cannot undo it — the fix is rolled back if it was applied and not verified, and the
    caller concludes it (call, then finalize). Locks whose incident is gone or closed
    are released. One incident failing here never holds up the others.
    """
    s = ctx.settings
    out = []
    stalled = ctx.store.stalled(s.watchdog_stall_s)
    queued: set[str] = set()
    if waiting and stalled:
        try:
            queued = waiting(stalled)
        except (AdapterError, redis_lib.RedisError) as exc:
            log.warning("watchdog: the broker's queues could not be read (%s): "
                        "every stalled incident is treated as lost", exc)  # fmt: skip
    for iid in stalled:
        try:
            state = load(ctx, iid)
            if state is None or state.closed_at is not None:
                ctx.store.forget_open(iid)
                continue
            idle = time.time() - state.updated_at
            # Queued, not lost — within `watchdog_queued_max_s` of the incident's opening
            # (however often it was resumed), and never for a fix applied and not yet
            # verified: that one is live, and verify runs ahead of new incidents.
            age = time.time() - state.incident.opened_at.timestamp()
            unverified = state.apply is not None and state.verification is None
            if iid in queued and age < s.watchdog_queued_max_s and not unverified:
                ctx.store.touch(state)
                log.info("%s watchdog: at %s for %.0fs, next stage queued",
                         tag(state), state.stage, idle)  # fmt: skip
                continue
            takeovers = state.retries.get("watchdog", 0)
            state.retries["watchdog"] = takeovers + 1
            if takeovers == 0 and state.error is None:
                save(ctx, state)  # the claim, and the clock restarts
                out.append((iid, "resume"))
                log.warning("%s watchdog: no progress at %s for %.0fs, resuming",
                            tag(state), state.stage, idle)  # fmt: skip
                continue
            verified = state.verification is not None and state.verification.ok
            if state.error is None and not verified:
                state.error = (
                    f"stalled at stage {state.stage} for {idle:.0f}s; taken over by the watchdog"
                )
            save(ctx, state, "taken over")  # the claim: a late stage's save is now refused
            out.append((iid, "conclude"))
            if state.verification is None:
                state = rollback(ctx, state, f"not verified: {state.error}")
                save(ctx, state, "taken over")
            log.warning("%s watchdog: %s", tag(state), state.error or "concluding")
        except (AdapterError, redis_lib.RedisError) as exc:
            log.warning("watchdog: incident %s: %s (tried again next round)", iid, exc)
    for key, iid in ctx.store.locks().items():
        state = load(ctx, iid)
        opened_ms = iid.rsplit("-", 1)[-1]
        age = time.time() - int(opened_ms) / 1000 if opened_ms.isdigit() else 1e9
        if (state is None and age > LOCK_ORPHAN_S) or (state is not None and state.closed_at):
            ctx.store.drop_lock(key, iid)
            log.warning("watchdog: released %s (incident %s %s)", key, iid,
                        "closed" if state else "unknown")  # fmt: skip
    return out


LOCK_ORPHAN_S = 60.0
