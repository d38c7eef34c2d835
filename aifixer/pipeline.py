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

from . import detect, fixer, guardrails, imageref, manifests, metrics
from .adapters.errors import (
    AdapterError,
    Conflict,
    PermanentError,
    TransientError,
    Unproven,
    bounded,
)
from .adapters.kube import GitOpsOwner, pod_state, rollout_status
from .memory import example_lines
from .models import (
    ApplyResult,
    CallRecord,
    Evidence,
    ExistingTag,
    FixProposal,
    GitOpsPause,
    Incident,
    IncidentState,
    ModelUsage,
    Rejection,
    Signal,
    Verification,
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
    """Settings, Redis and the adapters, built lazily once per process."""

    settings: Settings = field(default_factory=get_settings)

    @cached_property
    def redis(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(
            self.settings.redis_dsn,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=5,
        )

    @cached_property
    def store(self) -> Store:
        return Store(self.redis, lock_ttl_s=self.settings.lock_ttl_s)

    @cached_property
    def kube(self):
        from .adapters.kube import Kube

        return Kube(self.settings)

    @cached_property
    def prometheus(self):
        from .adapters.prometheus import Prometheus

        return Prometheus(self.settings)

    @cached_property
    def registry(self):
        """The container registries of AIFIXER_REGISTRIES, or None when none is."""
        if not self.settings.registries:
            return None
        from .adapters.registry import Registry

        return Registry(self.settings)

    @cached_property
    def loki(self):
        from .adapters.loki import Loki

        return Loki(self.settings)

    @cached_property
    def model(self):
        from .adapters.llm import Model

        return Model(self.settings)

    @cached_property
    def forge(self):
        from .adapters.forge import Forge

        return Forge(self.settings)

    @cached_property
    def phone(self):
        from .adapters.phone import Phone

        return Phone(self.settings)

    @cached_property
    def memory(self):
        """Incident memory, or None when `memory_enabled` is off."""
        if not self.settings.memory_enabled:
            return None
        from .adapters.embed import Embedder
        from .memory import Memory

        return Memory(self.redis, Embedder(self.settings), self.settings)


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
    """Error lines since the Loki cursor -> new incidents."""
    until = time.time_ns()
    cursor = ctx.store.get("cursor", "loki")
    since = int(cursor) if cursor else until - int(ctx.settings.loki_lookback_s * 1e9)
    signals, new_cursor = ctx.loki.error_signals(since, until)
    incidents = open_incidents(ctx, signals)
    ctx.store.set(str(max(new_cursor, since)), "cursor", "loki")
    return incidents


def poll_events(ctx: Context) -> list[Incident]:
    """Warning events since the last resourceVersion, plus failing pods -> new incidents."""
    signals, rv = ctx.kube.warning_signals(ctx.store.get("cursor", "events"))
    signals += ctx.kube.pod_signals()
    incidents = open_incidents(ctx, signals)
    ctx.store.set(rv, "cursor", "events")
    return incidents


def open_incidents(ctx: Context, signals: Iterable[Signal]) -> list[Incident]:
    """Group signals by workload and open at most one incident per workload.

    Signals from namespaces aifixer may not change (`guardrails.namespace_refusal`)
    are dropped first.

    A workload's failure class is read off its pods' current state, so a log line, an
    event and an alert about the same breakage give the same fingerprint. Log lines
    alone on a workload whose pods are healthy open nothing: an application that logs
    an error but runs is not a manifest to fix at 3 a.m.
    """
    by_workload: dict[tuple[str, str], list[Signal]] = {}
    owners: dict[tuple[str, str], str | None] = {}
    for sig in signals:
        refusal = guardrails.namespace_refusal(sig.namespace, ctx.settings)
        if refusal:
            # Alerts are pushed, logs and events are cluster-wide: whatever their source,
            # a namespace aifixer may not change opens nothing.
            log.debug("signal %s ignored: %s", sig.reason, refusal)
            continue
        name = sig.workload
        if name is None and sig.pod:
            pk = (sig.namespace, sig.pod)
            if pk not in owners:
                owners[pk] = ctx.kube.owner_deployment(sig.namespace, sig.pod)
            name = owners[pk]
        if name is None:
            continue
        by_workload.setdefault((sig.namespace, name), []).append(
            sig.model_copy(update={"workload": name})
        )
    opened = []
    # A workload with an incident under way opens nothing more: skipped before any API
    # call, so a poll during a storm costs what the new failures cost, not all of them.
    busy = ctx.store.held(ctx.settings.cluster_name, list(by_workload))
    for (namespace, name), sigs in by_workload.items():
        if (namespace, name) in busy:
            continue
        inc = _open_one(ctx, namespace, name, sigs)
        if inc is not None:
            opened.append(inc)
    return opened


def _open_one(ctx: Context, namespace: str, name: str, sigs: list[Signal]) -> Incident | None:
    s = ctx.settings
    dep = ctx.kube.get_deployment(namespace, name)
    if dep is None:
        return None
    pods = ctx.kube.pod_states(dep)
    classes = [c for p in pods for r in p.reasons if (c := detect.classify(r)) is not None]
    if not classes:
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
    workload = Workload(cluster=s.cluster_name, namespace=namespace, name=name)
    fp = detect.fingerprint(s.cluster_name, namespace, "Deployment", name, failure)
    generation = (dep.get("metadata") or {}).get("generation")
    done = ctx.store.get("done", fp)
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
    healthy = rollout.done and not any(p.reasons for p in pods)
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
    )


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
    started = time.monotonic()
    inc = state.incident
    dep = ctx.kube.get_deployment(inc.workload.namespace, inc.workload.name)
    if dep is None:
        raise PermanentError("kubernetes", f"deployment {inc.workload.key} no longer exists")
    state.evidence = gather_evidence(ctx, inc, dep)
    if state.evidence.healthy:
        state.outcome = "recovered"
        log.info("%s healthy again before any fix: nothing to do", tag(state))
        return _timed(state, "diagnose", started)
    with _metered(ctx, state, "diagnose"):
        state.diagnosis = fixer.diagnose(ctx.model, inc, state.evidence)
    log.info("%s diagnosis (%s): %s", tag(state), state.diagnosis.source, state.diagnosis.summary)
    return _timed(state, "diagnose", started)


def patch(ctx: Context, state: IncidentState) -> IncidentState:
    if state.outcome or state.evidence is None or state.diagnosis is None:
        return state
    started = time.monotonic()
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
    started = time.monotonic()
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
        pause_gitops(ctx, state, live)
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


def pause_gitops(ctx: Context, state: IncidentState, live: dict[str, Any]) -> None:
    """Pause self-heal of the controller that keeps the workload equal to Git, once.

    Argo CD (automated sync with self-heal) or Flux would put the live Deployment back
    to what Git says within seconds, reverting the fix while it is verified. So, before
    the first write: the Application's `selfHeal` is set to false (or the Kustomization
    suspended), for that object only, and the pause is recorded first (the store's
    `gitops:<id>`, SET NX, with the value before): a redelivered apply does not pause
    twice nor take aifixer's own value for the one to restore. `resume_gitops` puts it
    back once the fix is in Git or undone.

    With `gitops_pause_self_heal` off, a managed workload is not changed at all: the
    incident stops here (PermanentError, nothing written) and the on-call engineer is
    called with the reason. Verifying the fix on a temporary copy of the workload
    instead, leaving the controller alone, is not implemented.

    Raises:
        PermanentError: pausing is not allowed, or the controller refused it.
        TransientError: as every call.
    """
    inc = state.incident
    owner = ctx.kube.gitops_owner(live)
    if owner is None:
        return
    recorded = ctx.store.gitops_pause(inc.id)
    if recorded is None:
        current = ctx.kube.self_heal_switch(owner)
        if not owner.heals(current):
            return  # the controller does not revert live changes: nothing to pause
        if not ctx.settings.gitops_pause_self_heal:
            raise PermanentError(
                "gitops",
                f"{inc.workload.key} is managed by the GitOps controller's {owner}, which "
                "reverts live changes, and aifixer may not pause it "
                "(AIFIXER_GITOPS_PAUSE_SELF_HEAL=false); aifixer changed nothing, the fix "
                "must go through Git",
            )
        recorded = ctx.store.pause_once(
            inc.id,
            GitOpsPause(
                controller=owner.controller,
                namespace=owner.namespace,
                name=owner.name,
                field=owner.field,
                previous=current,
                paused_at=time.time(),
            ),
        )
    if recorded.restored_at is not None:
        return  # paused and restored before (a redelivery after a rollback)
    ctx.kube.pause_self_heal(_owner_of(recorded))
    state.gitops_pause = recorded
    log.info("%s self-heal of the %s paused for the fix", tag(state), _owner_of(recorded))


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
    result = ctx.kube.resume_self_heal(_owner_of(pause), pause.previous)
    pause = pause.model_copy(update={"restored_at": time.time(), "restore": result})
    ctx.store.resumed(incident_id, pause)
    log.info("%s self-heal of the %s %s (%s)", label, _owner_of(pause),
             "restored" if result == "restored" else f"not restored: {result}", why)  # fmt: skip
    return pause


def _resume_quietly(ctx: Context, state: IncidentState, why: str) -> IncidentState:
    """`resume_gitops`, a failure logged and left pending for the watchdog."""
    try:
        return resume_gitops(ctx, state, why)
    except (AdapterError, redis_lib.RedisError) as exc:
        log.warning("%s self-heal not restored yet (%s): the watchdog tries again",
                    tag(state), exc)  # fmt: skip
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
    if not verified or pr is None or pr.state != "open":
        return False
    if state.closed_at is None:
        return True
    return state.closed_at >= now() - timedelta(days=ctx.settings.pr_check_days)


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


def recheck(ctx: Context, state: IncidentState, live: dict[str, Any]) -> list[str]:
    """Why the stored proposal may not be written now; empty when it may.

    The incident record comes from Redis, which anyone who reaches it could write: so
    nothing in it is taken on trust at the point of action. The namespace must be one
    aifixer may change, the proposal must be the incident's own Deployment, the
    guardrails run again against the live object and a past re-read from the cluster
    (not the stored evidence), and the API server dry-runs it again.
    """
    w, proposal = state.incident.workload, state.proposal
    refusal = guardrails.namespace_refusal(w.namespace, ctx.settings)
    if refusal:
        return [refusal]
    manifest = proposal.manifest if proposal is not None else None
    meta = (manifest or {}).get("metadata") if isinstance(manifest, dict) else None
    if not isinstance(meta, dict) or (meta.get("namespace"), meta.get("name")) != (
        w.namespace,
        w.name,
    ):
        return [f"the proposal is not the Deployment {w.key}"]
    revisions = ctx.kube.revisions(live)
    past = guardrails.Past(
        revisions=[rev for rev, _ in revisions],
        last_healthy_template=ctx.kube.last_healthy_template(live, revisions),
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
    live = ctx.kube.get_deployment(w.namespace, w.name)
    if live is None:
        raise PermanentError("kubernetes", f"deployment {w.key} no longer exists")
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
    """
    if state.apply is None or state.verification is not None:
        return state
    s, inc, store = ctx.settings, state.incident, ctx.store
    t = now()
    ns = inc.workload.namespace
    dep = _live(ctx, state)
    foreign = (
        _foreign_changes(state.apply.original, manifests.clean(dep), state.proposal)
        if state.proposal is not None
        else []
    )
    if foreign:
        # Someone changed the Deployment after the fix: what runs is no longer what
        # aifixer applied, so there is nothing of ours to verify, and nothing to undo.
        return rollback(
            ctx, state, f"someone else changed the Deployment during verification ({foreign[0]})"
        )
    rollout = rollout_status(dep)
    pods = ctx.kube.pod_states(dep)
    restarts = sum(p.restart_count for p in pods)
    since_ns = int(state.apply.applied_at.timestamp() * 1e9)
    errors = ctx.loki.error_count(ns, [p.name for p in pods], since_ns) if pods else 0
    healthy = (
        rollout.done
        and not rollout.failed
        and bool(pods)
        and all(p.ready and not p.reasons for p in pods)
        and errors == 0
    )
    progress = store.hgetall("verify", inc.id)
    details = {
        "rollout": rollout.message,
        "pods": len(pods),
        "restarts": restarts,
        "new_error_lines": errors,
    }
    if healthy:
        if not progress or int(progress.get("restarts", -1)) != restarts:
            progress = {"since": t.timestamp(), "restarts": restarts}
            store.hset(progress, "verify", inc.id, ttl_s=s.verify_deadline_s * 2 + 600)
        healthy_since = datetime.fromtimestamp(float(progress["since"]), UTC)
        if (t - healthy_since).total_seconds() >= s.verify_stability_s:
            state.verification = Verification(
                ok=True,
                checked_at=t,
                healthy_since=healthy_since,
                details=details,
                reason=(
                    f"rolled out and healthy for {(t - healthy_since).total_seconds():.0f}s: "
                    f"{len(pods)} pod(s) Ready, no restarts, no new error lines"
                ),
            )
            store.delete("verify", inc.id)
            log.info("%s verified: %s", tag(state), state.verification.reason)
            return state
    elif progress:
        store.delete("verify", inc.id)
    elapsed = (t - state.apply.applied_at).total_seconds()
    # The deadline is for becoming healthy: a fix healthy at the deadline (or found
    # healthy by a check that came late, after a lost message) gets its stability window.
    # A workload that keeps flapping between checks is still cut off, at a hard bound.
    late = elapsed >= s.verify_deadline_s and (
        not healthy or elapsed >= 2 * (s.verify_deadline_s + s.watchdog_stall_s)
    )
    if rollout.failed or late:
        why = (
            rollout.message
            if rollout.failed
            else (
                f"not healthy within {s.verify_deadline_s:.0f}s: {_unhealthy_reason(pods, errors, rollout.message)}"
            )
        )
        return rollback(ctx, state, why, details)
    ctx.store.touch(state)  # progress, for the watchdog, without rewriting the record
    raise NotYet(
        s.verify_poll_s,
        "healthy, within the stability window"
        if healthy
        else _unhealthy_reason(pods, errors, rollout.message),
    )


def rollback(
    ctx: Context, state: IncidentState, why: str, details: dict[str, Any] | None = None
) -> IncidentState:
    """Restore the snapshot taken before the fix, unless someone changed the Deployment since.

    Then the GitOps controller's self-heal, if this incident paused it, is restored
    too (`resume_gitops`; a failure there is left to finalize and the watchdog).
    """
    done = _rollback(ctx, state, why, details)
    if done.verification is None or not done.verification.ok:
        done = _resume_quietly(ctx, done, why)
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
    inc = state.incident
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
        if state.apply is None:
            return state  # the failed apply wrote nothing
        return _rolled(ctx, state, True, why, details)  # restored before a crash: done
    foreign = _foreign_changes(original, cleaned, state.proposal)
    if foreign:
        return _rolled(
            ctx,
            state,
            False,
            f"{why}; not rolled back: someone else changed the Deployment after the fix "
            f"({', '.join(foreign[:3])}), left as it is",
            details,
        )
    generation = (live.get("metadata") or {}).get("generation")
    try:
        ctx.kube.restore(original, expected_generation=generation)
    except Conflict:
        raise TransientError(
            "kubernetes", f"{inc.workload.key} changed during the restore"
        ) from None
    if state.apply is None:
        why = f"{why}; the partly applied fix was undone"
    return _rolled(ctx, state, True, why, details)


def _rolled(
    ctx: Context, state: IncidentState, done: bool, reason: str, details: dict[str, Any] | None
) -> IncidentState:
    state.verification = Verification(
        ok=False, checked_at=now(), reason=reason, rolled_back=done, details=details or {}
    )
    ctx.store.delete("verify", state.incident.id)
    if done:
        log.warning("%s fix did not work, original restored: %s", tag(state), reason)
    else:
        log.error("%s fix did not work and was NOT rolled back: %s", tag(state), reason)
    return state


IGNORED_PATHS = ("spec.replicas",)  # autoscalers own it: not a person's change


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


def _unhealthy_reason(pods, errors: int, rollout_message: str) -> str:
    reasons = sorted({r for p in pods for r in p.reasons})
    parts = [rollout_message] if rollout_message else []
    if reasons:
        parts.append("pods show " + ", ".join(reasons))
    if errors:
        parts.append(f"{errors} new error line(s)")
    return "; ".join(parts) or "waiting for pods"


def open_pr(ctx: Context, state: IncidentState) -> IncidentState:
    """The verified fix as a pull request; a change rendering cannot prove, as a draft.

    A draft (the forge raised `Unproven`, or a redelivery found the incident's draft)
    also records `pr_error`: the fix is live but not in Git until a person makes the
    edits the draft names, so the incident is not `fixed` and a person is called.
    """
    if not (state.verification and state.verification.ok) or state.pull_request is not None:
        return state
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
    started = time.monotonic()
    if state.speech is None:
        with _metered(ctx, state, "call_oncall"):
            state.speech = fixer.speech(ctx.model, state, ctx.settings)
    placed = place_next_call(ctx, state, 1)
    if placed is None:
        log.error(
            "%s nobody left to call (numbers: %d)", tag(state), len(ctx.settings.oncall_numbers)
        )
        ctx.store.mark_escalation_done(state.incident.id)
    return _timed(state, "call_oncall", started)


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
        return _place_next_call(ctx, state, attempt)


def _place_next_call(ctx: Context, state: IncidentState, attempt: int) -> str | None:
    from .callfile import CallContext, load_call_context, store_call_context

    inc = state.incident
    ended = {c.attempt for c in state.calls}
    speech = spoken(state, ctx.settings.call_language)
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


def spoken(state: IncidentState, language: str = "en") -> str:
    """The speech to dial with, checked again at the point of action.

    The record comes from Redis: a speech that is not what aifixer would say in the
    call's language (`fixer.speech_problems`: too long, raw status text, anything
    `redact` would change or `untrusted.findings` names...) is replaced by the
    template, written from the record's facts.
    """
    speech = state.speech or ""
    checked = fixer.clean_speech(speech, state, language)
    if checked is None:
        if speech:
            log.warning("%s the stored speech is not fit to be read out: the template instead",
                        tag(state))  # fmt: skip
        return fixer.template_speech(state, language)
    return checked


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

    numbers = ctx.settings.oncall_numbers
    due: list[tuple[str, int]] = []
    for iid in ctx.store.escalations_due():
        try:
            state = load(ctx, iid)
            if state is None or ctx.store.escalation_done(iid):
                ctx.store.mark_escalation_done(iid)
                continue
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
    if not record.can_intervene and record.attempt < len(ctx.settings.oncall_numbers):
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
        dep = ctx.kube.get_deployment(w.namespace, w.name)
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
            if state is None or ref is None or ref.state != "open":
                ctx.store.forget_pull(iid)
                continue
            if state.closed_at is None:  # finalize has not run yet
                ctx.store.checked_pull(iid)
                continue
            if state.closed_at < horizon:
                ctx.store.forget_pull(iid)
                continue
            fresh = ctx.forge.pull_state(ref)
            if fresh.state == "open":
                ctx.store.checked_pull(iid)
                continue
            state.pull_request = fresh
            # The fix is in Git's hands now (merged), or a person decided against it
            # (closed): the controller may keep the workload equal to Git again.
            state = _resume_quietly(ctx, state, f"pull request #{fresh.number} {fresh.state}")
            save(ctx, state)
            ctx.store.forget_pull(iid)
            changed += 1
            log.info("%s pull request #%d %s", tag(state), fresh.number,
                     f"merged at {fresh.merged_at}" if fresh.merged_at else "closed unmerged")  # fmt: skip
            try:
                append_incident_line(ctx, state)
            except OSError as exc:
                log.error("%s incidents file not written: %s", tag(state), exc)
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
