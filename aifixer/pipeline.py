"""The remediation pipeline: plain functions the Celery tasks call, and the canvas.

Each stage takes the incident's `IncidentState` and returns the next one; the tasks
only (de)serialise, retry and log. Keeping the logic here means every step can be
tested without a broker, and a stage never calls `.get()` on another.

Shared state lives in Redis under `aifixer:*`:
- `cursor:loki`, `cursor:events` — where the polls resume;
- `lock:<cluster>/<ns>/<name>` — the one open remediation of a workload (SET NX);
- `done:<fingerprint>` — the Deployment generation an incident ended on; the same
  failure on the same generation is not reopened before the cooldown;
- `incident:<fingerprint>` — the latest IncidentState (JSON), `incidents` — the index;
- `verify:<fingerprint>` — verification progress between non-blocking checks;
- `dialed:<fingerprint>:<number>` — a number already called for this incident (never re-dialled).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import redis as redis_lib

from . import detect, fixer, manifests
from .adapters.errors import AdapterError, PermanentError
from .adapters.kube import pod_state, rollout_status
from .memory import example_lines
from .models import (
    ApplyResult,
    CallRecord,
    Evidence,
    FixProposal,
    Incident,
    IncidentState,
    ModelUsage,
    Rejection,
    Signal,
    Verification,
    Workload,
)
from .settings import Settings, get_settings

log = logging.getLogger("aifixer.pipeline")

PREFIX = "aifixer:"
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
            self.settings.redis_url,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=5,
        )

    @cached_property
    def kube(self):
        from .adapters.kube import Kube

        return Kube(self.settings)

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

    def key(self, *parts: str) -> str:
        return PREFIX + ":".join(parts)


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
    r = ctx.redis
    key = ctx.key("cursor", "loki")
    until = time.time_ns()
    cursor = r.get(key)
    since = int(cursor) if cursor else until - int(ctx.settings.loki_lookback_s * 1e9)
    signals, new_cursor = ctx.loki.error_signals(since, until)
    incidents = open_incidents(ctx, signals)
    r.set(key, str(max(new_cursor, since)))
    return incidents


def poll_events(ctx: Context) -> list[Incident]:
    """Warning events since the last resourceVersion, plus failing pods -> new incidents."""
    r = ctx.redis
    key = ctx.key("cursor", "events")
    signals, rv = ctx.kube.warning_signals(r.get(key))
    signals += ctx.kube.pod_signals()
    incidents = open_incidents(ctx, signals)
    r.set(key, rv)
    return incidents


def open_incidents(ctx: Context, signals: Iterable[Signal]) -> list[Incident]:
    """Group signals by workload and open at most one incident per workload.

    A workload's failure class is read off its pods' current state, so a log line, an
    event and an alert about the same breakage give the same fingerprint. Log lines
    alone on a workload whose pods are healthy open nothing: an application that logs
    an error but runs is not a manifest to fix at 3 a.m.
    """
    by_workload: dict[tuple[str, str], list[Signal]] = {}
    owners: dict[tuple[str, str], str | None] = {}
    for sig in signals:
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
    for (namespace, name), sigs in by_workload.items():
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
    r = ctx.redis
    done = r.get(ctx.key("done", fp))
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
    # One remediation per workload, however many workers and beats poll.
    lock_ttl = int(s.verify_deadline_s + 3600)
    if not r.set(ctx.key("lock", s.cluster_name, namespace, name), fp, nx=True, ex=lock_ttl):
        return None
    state = IncidentState(incident=incident, model_used=s.model_name)
    save(ctx, state)
    log.info("%s opened incident %s (%s) from %d signal(s)", tag(incident), fp, failure, len(sigs))
    return incident


def save(ctx: Context, state: IncidentState) -> None:
    fp = state.incident.fingerprint
    pipe = ctx.redis.pipeline()
    pipe.set(ctx.key("incident", fp), state.model_dump_json())
    pipe.zadd(ctx.key("incidents"), {fp: state.incident.opened_at.timestamp()})
    pipe.execute()


def load(ctx: Context, fingerprint: str) -> IncidentState | None:
    """The incident's latest state, with every call recorded on it so far.

    Calls live in their own Redis list, appended by whoever saw a call end, so a
    stage saving the state at the same moment can never drop one.
    """
    raw = ctx.redis.get(ctx.key("incident", fingerprint))
    if not raw:
        return None
    state = IncidentState.model_validate_json(raw)
    calls = {}
    for item in ctx.redis.lrange(ctx.key("calls", fingerprint), 0, -1):
        call = CallRecord.model_validate_json(item)
        calls[call.call_sid or f"attempt-{call.attempt}"] = call
    state.calls = sorted(calls.values(), key=lambda c: c.attempt)
    return state


def all_incidents(ctx: Context) -> list[IncidentState]:
    fps = ctx.redis.zrange(ctx.key("incidents"), 0, -1)
    return [s for fp in fps if (s := load(ctx, fp)) is not None]


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
            state.model_usage[stage] = ModelUsage(
                prompt_tokens=after.prompt_tokens - before.prompt_tokens,
                completion_tokens=after.completion_tokens - before.completion_tokens,
                seconds=round(after.seconds - before.seconds, 3),
            )


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
    )


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
    if state.outcome or state.proposal is None or state.apply is not None:
        return state
    started = time.monotonic()
    inc = state.incident
    live = ctx.kube.get_deployment(inc.workload.namespace, inc.workload.name)
    if live is None:
        raise PermanentError("kubernetes", f"deployment {inc.workload.key} no longer exists")
    original = manifests.clean(live)
    applied = ctx.kube.apply(state.proposal.manifest)
    state.apply = ApplyResult(
        original=original,
        applied=state.proposal.manifest,
        changes=state.proposal.changes,
        generation=(applied.get("metadata") or {}).get("generation", 0),
        applied_at=now(),
    )
    log.info("%s applied (generation %s)", tag(state), state.apply.generation)
    return _timed(state, "apply", started)


def verify(ctx: Context, state: IncidentState) -> IncidentState:
    """One non-blocking check; raises NotYet until the fix is proven or the deadline passes.

    Healthy means: `kubectl rollout status` would succeed, every pod is Ready with no
    failure reason, no restart since the first healthy check, and no new error line
    from the workload's pods in Loki since the apply. It must hold for the stability
    window; at the deadline the original manifest is restored.
    """
    if state.apply is None or state.verification is not None:
        return state
    s, inc, r = ctx.settings, state.incident, ctx.redis
    key = ctx.key("verify", inc.fingerprint)
    t = now()
    ns, name = inc.workload.namespace, inc.workload.name
    dep = ctx.kube.get_deployment(ns, name)
    if dep is None:
        raise PermanentError("kubernetes", f"deployment {inc.workload.key} no longer exists")
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
    progress = r.hgetall(key)
    details = {
        "rollout": rollout.message,
        "pods": len(pods),
        "restarts": restarts,
        "new_error_lines": errors,
    }
    if healthy:
        if not progress or int(progress.get("restarts", -1)) != restarts:
            r.hset(key, mapping={"since": t.timestamp(), "restarts": restarts})
            r.expire(key, int(s.verify_deadline_s * 2 + 600))
            progress = {"since": t.timestamp(), "restarts": restarts}
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
            r.delete(key)
            log.info("%s verified: %s", tag(state), state.verification.reason)
            return state
    elif progress:
        r.delete(key)
    elapsed = (t - state.apply.applied_at).total_seconds()
    if rollout.failed or elapsed >= s.verify_deadline_s:
        why = (
            rollout.message
            if rollout.failed
            else (
                f"not healthy within {s.verify_deadline_s:.0f}s: {_unhealthy_reason(pods, errors, rollout.message)}"
            )
        )
        ctx.kube.restore(state.apply.original)
        state.verification = Verification(
            ok=False, checked_at=t, reason=why, rolled_back=True, details=details
        )
        r.delete(key)
        log.warning("%s fix did not work, original restored: %s", tag(state), why)
        return state
    raise NotYet(
        s.verify_poll_s,
        "healthy, within the stability window"
        if healthy
        else _unhealthy_reason(pods, errors, rollout.message),
    )


def _unhealthy_reason(pods, errors: int, rollout_message: str) -> str:
    reasons = sorted({r for p in pods for r in p.reasons})
    parts = [rollout_message] if rollout_message else []
    if reasons:
        parts.append("pods show " + ", ".join(reasons))
    if errors:
        parts.append(f"{errors} new error line(s)")
    return "; ".join(parts) or "waiting for pods"


def open_pr(ctx: Context, state: IncidentState) -> IncidentState:
    if not (state.verification and state.verification.ok) or state.pull_request is not None:
        return state
    started = time.monotonic()
    state.pull_request = ctx.forge.open_fix_pr(state)
    log.info(
        "%s pull request #%d %s", tag(state), state.pull_request.number, state.pull_request.url
    )
    return _timed(state, "open_pr", started)


def needs_call(state: IncidentState) -> bool:
    return state.outcome != "recovered" and not (state.verification and state.verification.ok)


def call_oncall(ctx: Context, state: IncidentState, attempt: int = 1) -> IncidentState:
    """Phone the next on-call number that has not been called for this incident."""
    if not needs_call(state):
        return state
    started = time.monotonic()
    if state.speech is None:
        with _metered(ctx, state, "call_oncall"):
            state.speech = fixer.speech(ctx.model, state, ctx.settings)
    placed = place_next_call(ctx, state, attempt)
    if placed is None:
        log.error(
            "%s nobody left to call (numbers: %d)", tag(state), len(ctx.settings.oncall_numbers)
        )
    return _timed(state, "call_oncall", started)


def place_next_call(ctx: Context, state: IncidentState, attempt: int) -> str | None:
    """Dial the first on-call number from `attempt` on that this incident has not dialled."""
    from .callfile import CallContext, store_call_context

    fp = state.incident.fingerprint
    for index, number in enumerate(ctx.settings.oncall_numbers, start=1):
        if index < attempt:
            continue
        # Never re-dial a number for the same incident, whatever retries happen.
        if not ctx.redis.set(ctx.key("dialed", fp, number), "1", nx=True, ex=7 * 86400):
            continue
        call = CallContext(
            fingerprint=fp, attempt=index, number=number, speech=state.speech or "", time=now()
        )
        store_call_context(ctx.redis, call)  # before dialling: the callbacks may come first
        try:
            sid = ctx.phone.place_call(number, call.speech, fingerprint=fp, attempt=index)
        except PermanentError as exc:
            log.error("%s call to %s failed: %s", tag(state), _mask(number), exc)
            call_finished(
                ctx,
                CallRecord(
                    time=call.time,
                    number=number,
                    speech=call.speech,
                    can_intervene=False,
                    fingerprint=fp,
                    status="failed",
                    attempt=index,
                ),
            )
            continue
        store_call_context(ctx.redis, call.model_copy(update={"call_sid": sid}))
        log.info("%s calling on-call #%d %s (%s)", tag(state), index, _mask(number), sid)
        return sid
    return None


def call_finished(
    ctx: Context, record: CallRecord, place_next: Callable[[str, int], None] | None = None
) -> None:
    """A call ended (web callbacks, or a failed dial): record it; on 'no', call the next person.

    Without `place_next` (a dial that failed inside `place_next_call`) the caller's
    loop goes on to the next number itself.
    """
    ctx.redis.rpush(ctx.key("calls", record.fingerprint), record.model_dump_json())
    state = load(ctx, record.fingerprint)
    if state is None:
        log.error("call %s for unknown incident %s", record.call_sid, record.fingerprint)
        return
    if not record.can_intervene and record.attempt < len(ctx.settings.oncall_numbers):
        if place_next is not None:
            place_next(record.fingerprint, record.attempt + 1)
    else:
        mark_escalation_done(ctx, state)
    append_incident_line(ctx, state)


def mark_escalation_done(ctx: Context, state: IncidentState) -> None:
    ctx.redis.set(ctx.key("escalated", state.incident.fingerprint), "1", ex=7 * 86400)


def _mask(number: str) -> str:
    return number[:-4] + "****" if len(number) > 6 else "****"


def finalize(ctx: Context, results: list[IncidentState]) -> IncidentState:
    """Merge the chord's branches, decide the outcome, close the incident."""
    state = results[0]
    for other in results[1:]:
        if other.pull_request is not None:
            state.pull_request = other.pull_request
        if other.speech is not None:
            state.speech = other.speech
        state.timings.update(other.timings)
        state.model_usage.update(other.model_usage)
        state.error = state.error or other.error
    if state.outcome is None:
        if state.verification and state.verification.ok:
            state.outcome = "fixed"
        elif state.error is not None:
            state.outcome = "error"
        elif state.proposal is None and state.rejections:
            state.outcome = "rejected"
        else:
            state.outcome = "called"
    state.closed_at = state.closed_at or now()
    save(ctx, state)
    close(ctx, state)
    state = load(ctx, state.incident.fingerprint) or state
    append_incident_line(ctx, state)
    log.info("%s outcome: %s", tag(state), state.outcome)
    return state


def append_incident_line(ctx: Context, state: IncidentState) -> None:
    """The incidents file: one JSON line each time an incident ends or a call on it ends."""
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
            "model_used",
            "timings",
            "model_usage",
            "closed_at",
        }
    )
    append_line(ctx.settings.incidents_file, line.encode() + b"\n")


def close(ctx: Context, state: IncidentState) -> None:
    """Release the workload and remember which revision this failure ended on."""
    s, inc = ctx.settings, state.incident
    dep = ctx.kube.get_deployment(inc.workload.namespace, inc.workload.name)
    generation = (dep or {}).get("metadata", {}).get("generation")
    pipe = ctx.redis.pipeline()
    if generation is not None:
        pipe.set(ctx.key("done", inc.fingerprint), str(generation), ex=int(s.incident_cooldown_s))
    pipe.delete(ctx.key("lock", s.cluster_name, inc.workload.namespace, inc.workload.name))
    pipe.execute()
