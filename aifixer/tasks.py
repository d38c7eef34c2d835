"""Celery tasks: thin wrappers around `aifixer.pipeline`, passing incident ids.

A task loads the incident's record from the store, runs one pipeline step, saves the
record with the stage it reached and hands the id on. Messages never carry manifests
or logs: whatever a message says, the record in Redis is what a stage acts on.

Retries are decided here, once, the same way for every stage:
- a TransientError is retried with exponential backoff and jitter (a service's
  Retry-After is honoured up to `retry_after_max_s`, never beyond), `MAX_RETRIES`
  times per stage, counted in the record so a redelivery does not reset the count;
- a PermanentError, a TransientError that outlived its retries, or a bug is recorded
  on the record; the chain goes on, and the incident still reaches the phone and
  `finalize`. Nothing stops the chain but a lost worker, and the watchdog finishes
  what a lost worker left;
- verify's "not yet" re-checks are scheduled without spending that budget, and any
  verify failure restores the original manifest before the call.

The chord `open_pr | call_oncall` always concludes: its tasks record their failures
instead of raising, they are safe to redeliver (a number is never dialled twice for
an incident, the pull request branch is the incident's), and should the chord fail
all the same, its error callback `conclude` finishes the incident.

Every log line carries the task id (see app.py) and the `[namespace/name]` of the
incident.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable
from functools import lru_cache
from typing import overload

import redis as redis_lib
from celery import chain, chord
from celery.exceptions import Retry
from kombu.transport.redis import PRIORITY_STEPS as REDIS_PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel

from . import metrics, pipeline
from .adapters.errors import Conflict, PermanentError, TransientError
from .app import app
from .models import IncidentState
from .scaling import levels, scaler
from .store import Busy, StaleRecord

log = logging.getLogger("aifixer.tasks")

MAX_RETRIES = 6  # per stage: with the backoff below, at least ~45 s of outage is ridden out
BACKOFF_CAP_S = 60.0
MAX_CONCLUDES = 3  # chord re-runs before the incident is concluded inline

Step = Callable[[pipeline.Context, IncidentState], IncidentState]


@lru_cache(maxsize=1)
def context() -> pipeline.Context:
    """One Context per worker process: adapters and connections are reused."""
    return pipeline.Context()


def countdown(retry: int, retry_after: float | None, cap: float) -> float:
    """Seconds before retry number `retry` (1, 2, ...): backoff, or the service's wish.

    A Retry-After is honoured up to `cap` (an infinite or absurd one included), so no
    countdown outlives the broker's visibility timeout or the workload's lock.
    """
    if retry_after is not None:
        return cap if not math.isfinite(retry_after) else max(0.5, min(retry_after, cap))
    base = min(BACKOFF_CAP_S, 2.0 ** (retry - 1))
    return base * (0.75 + random.random() / 4)  # noqa: S311 - jitter


def _decided(task) -> int:
    """Celery's bound for a retry the record's budget already allowed (or a verify re-check).

    The budget lives in the record, not in the message: Celery's own count restarts at
    zero on a redelivery and grows with verify's re-checks, so it does not decide.
    """
    return task.request.retries + 1


# A Redis failure as a TransientError, retried like any outage; anything else unchanged.
@overload
def _transient(exc: TransientError | redis_lib.RedisError) -> TransientError: ...
@overload
def _transient(exc: BaseException) -> BaseException: ...
def _transient(exc: BaseException) -> BaseException:
    if isinstance(exc, redis_lib.RedisError):
        return TransientError("redis", str(exc))
    return exc


def _load(task, incident_id: str) -> IncidentState | None:
    """The record, or None; Redis being down is retried on the message's own count.

    A message names an incident and nothing else: anything but a well-formed id (a
    manifest, a mapping, a path) is refused here and acts on nothing.
    """
    if not isinstance(incident_id, str) or not INCIDENT_ID.fullmatch(incident_id):
        log.warning("%s: refused a message that names no incident: %.80r", task.name, incident_id)
        return None
    try:
        return pipeline.load(context(), incident_id)
    except (TransientError, redis_lib.RedisError) as exc:
        _retry_unrecorded(task, _transient(exc))
        raise  # unreachable: _retry_unrecorded raises


INCIDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
UNRECORDED_COUNTDOWN_S = 3.0
UNRECORDED_LIMIT = 40  # retries in the message's own count (verify's re-checks included)


def _retry_unrecorded(task, exc: BaseException) -> None:
    """Redis itself failed (or the record moved): nothing can be recorded, so retry soon.

    The message's own count bounds it; that count also holds verify's re-checks and the
    recorded retries, so the bound is generous: about two minutes of Redis being gone
    for a stage that just started. Past it the exception ends the task; the record,
    untouched, stops moving, and the watchdog concludes the incident once Redis answers.
    """
    n = task.request.retries + 1
    if n > UNRECORDED_LIMIT:
        raise exc
    log.warning("%s: %s (retry %d, unrecorded)", task.name, exc, n)
    metrics.retried(context().redis, task.name)
    raise task.retry(
        exc=exc, countdown=UNRECORDED_COUNTDOWN_S, max_retries=_decided(task)
    ) from None


def _save(task, state: IncidentState, stage: str) -> None:
    try:
        pipeline.save(context(), state, stage)
    except (TransientError, redis_lib.RedisError) as exc:
        # Someone saved meanwhile (StaleRecord) or Redis is down: redo the step on a
        # fresh record; every step is safe to redo.
        _retry_unrecorded(task, _transient(exc))


def _attempt(
    task, name: str, step: Step, state: IncidentState, *, failed: list[str] | None = None
) -> IncidentState:
    """`step(state)`, with its failure retried under the stage's budget or recorded.

    Returns the new record, or on a failure for good a freshly loaded one with the
    error recorded (what the failed step half-did is not kept).

    Raises:
        Retry: the task was re-scheduled.
        NotYet: verification re-checks later (the caller schedules it).

    `failed`, if given, receives the error when the step failed for good.
    """
    ctx = context()
    started, before = time.monotonic(), state.timings.get(name)
    try:
        done = step(ctx, state)
        # The stage's own timing, the first time it did its work for this incident (a
        # redelivery or the chord's second branch finds it already in the record);
        # verify's latency is from the apply to its verdict (see `verify`).
        if name == "rollback":
            metrics.stage_done(ctx.redis, name, time.monotonic() - started)
        elif before is None and (took := done.timings.get(name)) is not None:
            metrics.stage_done(ctx.redis, name, took)
        return done
    except (pipeline.NotYet, Retry):
        raise
    except Busy as busy:  # another worker holds the lease: wait for it, free of charge
        raise task.retry(countdown=busy.retry_after or 5.0, max_retries=_decided(task)) from None
    except Exception as raw:  # noqa: BLE001 - a bug must not lose the incident: record it
        exc = _transient(raw)
        fresh = _load(task, state.incident.id) or state
        if isinstance(exc, TransientError):
            n = fresh.retries.get(name, 0) + 1
            if n <= MAX_RETRIES:
                fresh.retries[name] = n
                _save(task, fresh, fresh.stage)  # the count survives a redelivery
                log.warning("%s %s: %s (retry %d)", pipeline.tag(fresh), name, exc, n)
                metrics.retried(ctx.redis, name)
                raise task.retry(
                    countdown=countdown(n, exc.retry_after, ctx.settings.retry_after_max_s),
                    max_retries=_decided(task),
                ) from None
            error = f"{name}: {exc} (gave up after {MAX_RETRIES} retries)"
        elif isinstance(exc, PermanentError):
            error = f"{name}: {exc}"
        else:
            log.exception("%s %s crashed", pipeline.tag(fresh), name)
            error = f"{name}: internal error: {type(exc).__name__}: {exc}"
        log.error("%s %s failed: %s", pipeline.tag(fresh), name, error)
        if isinstance(exc, Conflict) and fresh.person_changed is None:
            fresh.person_changed = "before" if fresh.apply is None else "after"
        fresh.error = fresh.error or error
        if failed is not None:
            failed.append(error)
        return fresh


# The stages before verify, in order: a stage whose result the record already holds is
# not run again (a redelivery, or a chain the watchdog resumed beside a slow one).
ORDER = {
    "opened": 0, "diagnosed": 1, "recalled": 2, "patched": 3, "applied": 4,
    "applied to a copy": 4,  # the fix is verified on a temporary copy of the Deployment
}  # fmt: skip


def _stage(
    task,
    name: str,
    step: Step,
    incident_id: str,
    reached: str,
    then: Callable[[IncidentState], None] | None = None,
) -> str:
    state = _load(task, incident_id)
    if state is None:
        log.error("incident %s has no record: %s skipped", incident_id, name)
        return incident_id
    if state.closed_at is not None or state.error is not None:
        return incident_id  # closed, or failed for good: the call and finalize handle it
    if ORDER.get(state.stage, len(ORDER)) >= ORDER[reached]:
        return incident_id  # done already
    state = _attempt(task, name, step, state)
    if state.error is not None:
        reached = f"{name} failed"
    elif reached == "applied" and state.verify_copy is not None:
        reached = "applied to a copy"
    _save(task, state, reached)
    if then is not None and state.error is None:
        then(state)
    return incident_id


@app.task(bind=True, name="aifixer.tasks.diagnose", acks_late=True, max_retries=MAX_RETRIES)
def diagnose(self, incident_id: str) -> str:
    return _stage(self, "diagnose", pipeline.diagnose, incident_id, "diagnosed")


@app.task(bind=True, name="aifixer.tasks.recall", acks_late=True, max_retries=MAX_RETRIES)
def recall(self, incident_id: str) -> str:
    return _stage(self, "recall", pipeline.recall_stage, incident_id, "recalled")


@app.task(bind=True, name="aifixer.tasks.patch", acks_late=True, max_retries=MAX_RETRIES)
def patch(self, incident_id: str) -> str:
    return _stage(self, "patch", pipeline.patch, incident_id, "patched")


@app.task(bind=True, name="aifixer.tasks.apply", acks_late=True, max_retries=MAX_RETRIES)
def apply(self, incident_id: str) -> str:
    # Safe to redeliver: the snapshot is taken once, and the live object must still be
    # the snapshot (or the snapshot plus this fix) for anything to be written.
    return _stage(self, "apply", pipeline.apply, incident_id, "applied", then=_explain_later)


def _explain_later(state: IncidentState) -> None:
    """The fix is live: the model writes its explanation while verify waits for it."""
    if state.apply is not None and not state.explained:
        explain.apply_async(args=[state.incident.id])


@app.task(bind=True, name="aifixer.tasks.explain", acks_late=True, ignore_result=True)
def explain(self, incident_id: str) -> None:
    """The model's explanation, then the speech of the call if every planned fix fails.

    Sent by apply, on the model queue (ahead of new incidents, behind the steps of those
    under way), so the model works while verify waits for the rollout instead of before
    the fix. Never in the way of an outcome: nothing here raises into the incident, a
    model that fails leaves the deterministic text. The pull request is opened without
    waiting for it (with the diagnosis written from the facts); when the explanation
    comes after, it goes into the pull request's Diagnosis section, unless a person
    edited it (`pipeline.explain_pull_request`). `call_oncall` waits for the speech at
    most `explain_wait_s`. Safe to redeliver: a record already explained is left alone.
    """
    ctx = context()
    state = _load(self, incident_id)
    if state is None or state.explained:
        return
    if state.closed_at is not None and not pipeline.may_explain_pr(state):
        return
    if state.explanation is None:  # a redelivery after it was written does not ask again
        try:
            written = pipeline.explain(ctx, state.model_copy(deep=True))
        except Exception:  # noqa: BLE001 - the explanation is optional: the incident goes on
            log.exception("%s explanation failed: the deterministic diagnosis stays",
                          pipeline.tag(state))  # fmt: skip
            written = None

        def keep(latest: IncidentState) -> bool:
            if written is None or written.diagnosis is None:
                return False
            latest.explanation = written.diagnosis
            # Published at once only while nothing was published with the other text
            # (the pull request, the call); a pull request gets it below.
            if latest.pull_request is None and latest.speech is None:
                latest.diagnosis = written.diagnosis
            latest.model_usage.update(written.model_usage)
            latest.timings.update(written.timings)
            return True

        _merge(self, incident_id, keep)
    _show_explanation(self, incident_id)

    def explained(latest: IncidentState) -> bool:
        latest.explained = True
        return True

    latest = _merge(self, incident_id, explained)
    verified = latest is not None and latest.verification is not None and latest.verification.ok
    if latest is None or latest.closed_at is not None or verified or latest.speech is not None:
        return  # no call to prepare for
    try:
        prepared = pipeline.prepare_speech(ctx, latest.model_copy(deep=True))
    except Exception:  # noqa: BLE001 - the call then says the template
        log.exception("%s speech not prepared: the call says the template", pipeline.tag(latest))
        prepared = None

    def speech(record: IncidentState) -> bool:
        record.prepared_for = "" if prepared is None else prepared.prepared_for
        if prepared is not None:
            record.prepared_speech = prepared.prepared_speech
            record.model_usage.update(prepared.model_usage)
            record.timings.update(prepared.timings)
        return True

    _merge(self, incident_id, speech)


def _show_explanation(task, incident_id: str) -> None:
    """The model's explanation into the open pull request, and the record to match."""
    state = _load(task, incident_id)
    if state is None:
        return
    sha = pipeline.show_explanation(context(), state)
    if sha is None:
        return

    def shown(record: IncidentState) -> bool:
        if record.pull_request is None or record.explanation is None:
            return False
        record.pull_request.diagnosis_sha = sha
        record.diagnosis = record.explanation
        return True

    _merge(task, incident_id, shown)


def _merge(task, incident_id: str, change: Callable[[IncidentState], bool]) -> IncidentState | None:
    """`change` made on the latest record and saved (other stages save beside it)."""
    for _ in range(5):
        state = _load(task, incident_id)
        if state is None or not change(state):
            return state
        try:
            pipeline.save(context(), state)
            return state
        except StaleRecord:
            continue  # another stage saved meanwhile: change its record
        except (TransientError, redis_lib.RedisError) as exc:
            _retry_unrecorded(task, _transient(exc))
    _retry_unrecorded(task, TransientError("redis", f"incident {incident_id} kept changing"))
    return None


@app.task(bind=True, name="aifixer.tasks.verify", acks_late=True, max_retries=MAX_RETRIES)
def verify(self, incident_id: str) -> str:
    """Re-schedules itself (short countdowns, below the broker's visibility timeout).

    Any failure of verification — its deadline, an error that outlived its retries, a
    bug, a stage before it that failed after the apply — restores the original first.
    A temporary copy the fix was verified on is removed once the verdict is recorded
    (a redelivery after the verdict removes it too).
    """
    state = _load(self, incident_id)
    if state is None or state.closed_at is not None:
        return incident_id
    if state.verification is not None:
        return _copy_removed(self, state)
    pending = pipeline.next_fix_pending(state)
    if pending:
        state = _apply_next(self, state)  # a redelivery after the choice of the next fix
    elif state.apply is None and state.error is None:
        return incident_id  # nothing applied: on to the call
    if state.error is None:
        try:
            state = _attempt(self, "verify", pipeline.verify, state)
        except pipeline.NotYet as wait:
            # The reason in the worker log: "Retry in 1s: 1/2 pod(s) Ready..."
            raise self.retry(
                exc=wait, countdown=wait.countdown, max_retries=_decided(self)
            ) from None
        if state.verification is not None and state.apply is not None:
            seconds = (state.verification.checked_at - state.apply.applied_at).total_seconds()
            metrics.stage_done(context().redis, "verify", seconds)
        if pipeline.next_fix_pending(state):
            # Rolled back, and another kind of fix may be tried: the choice is recorded
            # before the next write, so a redelivery applies that one, not a new one.
            _save(self, state, "retrying")
            pending = True
            state = _apply_next(self, state)
    if state.error is not None and state.verification is None:
        # Failed after the apply (or during it, after a write landed): restore first.
        state = _rollback(self, state)
    if state.verification is None and state.apply is None:
        if pending:
            _save(self, state, "apply failed")
        return incident_id  # the failed apply had written nothing
    ok = state.verification is not None and state.verification.ok
    stage = (
        "verified" if ok else "restore pending" if state.verification is None else "not verified"
    )
    if state.verify_copy is not None:
        stage += " on a copy"
    _save(self, state, stage)
    return _copy_removed(self, state)


def _copy_removed(task, state: IncidentState) -> str:
    """The verification copy removed once the verdict is saved, and the record saved
    again; a failure is logged and left to finalize and the watchdog."""
    copy = state.verify_copy
    if copy is None or copy.removed_at is not None:
        return state.incident.id
    done = pipeline.remove_copy_quietly(context(), state, "the verification is over")
    if done.verify_copy is not None and done.verify_copy.removed_at is not None:
        _save(task, done, done.stage)
    return state.incident.id


def _apply_next(task, state: IncidentState) -> IncidentState:
    """Apply the next fix (`pipeline.apply`: the same checks as the first, against the
    original restored) and verify it from the next check on; or return the record with
    the failure recorded, for the restore and the call.

    Raises:
        Retry: applied; verify checks it after `verify_poll_s`.
    """
    state = _attempt(task, "apply", pipeline.apply, state)
    if state.error is not None or state.apply is None:
        return state
    _save(task, state, "applied")
    raise task.retry(countdown=context().settings.verify_poll_s, max_retries=_decided(task))


def _rollback(task, state: IncidentState) -> IncidentState:
    """Restore the snapshot; if even that fails for good, say so and leave it to the watchdog.

    The incident then waits as "restore pending" (finalize does not close it); the
    person is called all the same, and the watchdog retries the restore.
    """
    why = f"not verified: {state.error}"
    failed: list[str] = []
    rolled = _attempt(
        task, "rollback", lambda ctx, s: pipeline.rollback(ctx, s, why), state, failed=failed
    )
    if failed:
        rolled.error = f"{rolled.error}; the restore failed ({failed[0]}): the unverified fix may still be live"
    return rolled


@app.task(bind=True, name="aifixer.tasks.open_pr", acks_late=True, max_retries=MAX_RETRIES)
def open_pr(self, incident_id: str) -> str:
    """The pull request of a verified fix; if it fails for good, a person is called.

    A verified fix that is not in Git is undone by the next GitOps sync: the incident
    is not `fixed`, and the on-call engineer hears that the fix is live but not in Git.
    So too when the change could not be proven by rendering: a draft pull request says
    what to edit by hand, and the engineer hears that it needs a hand edit. A
    redelivery finds the recorded failure (or the draft) and goes to the call, which
    dials nobody twice.
    """
    state = _load(self, incident_id)
    if state is None or state.closed_at is not None:
        return incident_id
    if state.pr_error is not None:
        return _call(self, incident_id)  # a redelivery after the pull request failed: call
    if not (state.verification and state.verification.ok) or state.pull_request:
        return incident_id
    # Not waiting for the model's explanation: the pull request shows the diagnosis
    # written from the facts, and `explain` puts the model's words in when they come.
    done = _attempt(self, "open_pr", pipeline.open_pr, state)
    if done.pull_request is None:
        done.pr_error, done.error = done.error or "no pull request", None
        _update(self, incident_id, pr_error=done.pr_error)
        metrics.inc(context().redis, metrics.PULL_REQUESTS, result="failed")
        return _call(self, incident_id)
    context().store.watch_pull(incident_id)  # for check_pull_requests: merged, or closed
    if done.pull_request.draft:
        # Live but not in Git until a person edits the draft: recorded, then the call.
        _update(self, incident_id, pull_request=done.pull_request, pr_error=done.pr_error,
                timings=done.timings)  # fmt: skip
        metrics.inc(context().redis, metrics.PULL_REQUESTS, result="draft")
        return _call(self, incident_id)
    _update(self, incident_id, pull_request=done.pull_request, timings=done.timings)
    _show_explanation(self, incident_id)  # an explanation written while it was opened
    result = "opened" if done.pull_request.created else "existing"
    metrics.inc(context().redis, metrics.PULL_REQUESTS, result=result)
    return incident_id


@app.task(bind=True, name="aifixer.tasks.call_oncall", acks_late=True, max_retries=MAX_RETRIES)
def call_oncall(self, incident_id: str) -> str:
    """Start the phone escalation if a person must know; a redelivery never re-dials."""
    return _call(self, incident_id)


EXPLAIN_POLL_S = 1.0


def _call(task, incident_id: str, *, wait: bool = True) -> str:
    state = _load(task, incident_id)
    if state is None or state.closed_at is not None or not pipeline.needs_call(state):
        return incident_id
    if wait and state.speech is None and pipeline.awaits_speech(context(), state):
        raise task.retry(countdown=EXPLAIN_POLL_S, max_retries=_decided(task))
    called = _attempt(task, "call_oncall", pipeline.call_oncall, state)
    fields = {"speech": called.speech, "timings": called.timings,
              "model_usage": called.model_usage}  # fmt: skip
    if called.error and not state.error:
        fields["error"] = called.error
    _update(task, incident_id, **fields)
    return incident_id


def _update(task, incident_id: str, **fields) -> None:
    """Set `fields` on the latest record (open_pr and call_oncall run side by side)."""
    for _ in range(5):
        state = _load(task, incident_id)
        if state is None:
            return
        for name, value in fields.items():
            current = getattr(state, name)
            if isinstance(current, dict):
                current.update(value)
            elif value is not None:
                setattr(state, name, value)
        try:
            pipeline.save(context(), state)
            return
        except StaleRecord:
            continue  # the other branch saved meanwhile: merge into its record
        except TransientError as exc:
            _retry_unrecorded(task, exc)
        except redis_lib.RedisError as exc:
            _retry_unrecorded(task, _transient(exc))
    _retry_unrecorded(task, TransientError("redis", f"incident {incident_id} kept changing"))


@app.task(bind=True, name="aifixer.tasks.call_next", acks_late=True, max_retries=MAX_RETRIES)
def call_next(self, incident_id: str, attempt: int) -> None:
    """The previous person could not intervene: call the next number (once each)."""
    ctx = context()
    state = _load(self, incident_id)
    if state is None:
        return
    try:
        if pipeline.place_next_call(ctx, state, attempt) is None:
            ctx.store.mark_escalation_done(incident_id)
    except (TransientError, redis_lib.RedisError) as exc:
        _retry_unrecorded(self, _transient(exc))
    except PermanentError as exc:
        log.error("%s call to the next on-call failed: %s", pipeline.tag(state), exc)
        ctx.store.mark_escalation_done(incident_id)


@app.task(bind=True, name="aifixer.tasks.finalize", acks_late=True, max_retries=MAX_RETRIES)
def finalize(self, incident_id: str) -> str:
    """Decide the outcome, close the incident, free the workload. Safe to redeliver."""
    ctx = context()
    state = _load(self, incident_id)
    if state is None:
        return incident_id
    was_open = state.closed_at is None
    started = time.monotonic()
    try:
        state = pipeline.finalize(ctx, state)
    except (TransientError, redis_lib.RedisError) as exc:
        exc = _transient(exc)
        n = state.retries.get("finalize", 0) + 1
        if n > MAX_RETRIES:
            raise  # the watchdog finishes it once Redis answers
        log.warning("%s finalize: %s (retry %d)", pipeline.tag(state), exc, n)
        metrics.retried(ctx.redis, "finalize")
        raise self.retry(
            countdown=countdown(n, getattr(exc, "retry_after", None),
                                ctx.settings.retry_after_max_s),
            max_retries=_decided(self),
        ) from None  # fmt: skip
    if was_open and state.closed_at is not None:
        metrics.stage_done(ctx.redis, "finalize", time.monotonic() - started)
        if ctx.settings.memory_enabled:
            remember.delay(incident_id)
    return incident_id


@app.task(bind=True, name="aifixer.tasks.conclude", acks_late=True, max_retries=MAX_RETRIES)
def conclude(self, *_ignored, incident_id: str) -> None:
    """Finish an incident whose chain broke: the chord again, or inline after a few tries.

    The chord's error callback and the watchdog send it. The record says what is left:
    the pull request of a verified fix, the call, finalize.
    """
    state = _load(self, incident_id)
    if state is None or state.closed_at is not None:
        return
    n = state.retries.get("conclude", 0) + 1
    state.retries["conclude"] = n
    _save(self, state, f"concluding ({n})")
    if n <= MAX_CONCLUDES:
        tail(incident_id).apply_async()
        return
    log.error("%s concluded inline after %d broken chords", pipeline.tag(state), n - 1)
    _call(self, incident_id, wait=False)
    finalize(incident_id)


@app.task(bind=True, name="aifixer.tasks.remember", acks_late=True, ignore_result=True)
def remember(self, incident_id: str) -> None:
    ctx = context()
    state = pipeline.load(ctx, incident_id)
    if state is not None:
        pipeline.remember(ctx, state)


@app.task(bind=True, name="aifixer.tasks.watchdog", acks_late=False, ignore_result=True)
def watchdog(self) -> int:
    """Periodic: stalled incidents resumed or concluded; stalled phone escalations moved on."""
    ctx = context()
    try:
        stalled = pipeline.watchdog(ctx, lambda ids: ctx.store.waiting(ids, queue_keys()))
    except (TransientError, PermanentError, redis_lib.RedisError) as exc:
        log.warning("watchdog: %s", exc)
        return 0
    for incident_id, action in stalled:
        if action == "resume":
            remediation(incident_id).apply_async()
        else:
            conclude.apply_async(kwargs={"incident_id": incident_id})
    try:
        calls = pipeline.check_escalations(context())
    except (TransientError, PermanentError, redis_lib.RedisError) as exc:
        log.warning("watchdog: escalations: %s", exc)
        calls = []
    for incident_id, attempt in calls:
        call_next.delay(incident_id, attempt)
    try:
        pipeline.resume_due(ctx)  # self-heal paused by an incident that no longer needs it
    except (TransientError, PermanentError, redis_lib.RedisError) as exc:
        log.warning("watchdog: paused self-heal: %s", exc)
    try:
        pipeline.remove_copies_due(ctx)  # verification copies of ended or overdue incidents
    except (TransientError, PermanentError, redis_lib.RedisError) as exc:
        log.warning("watchdog: temporary copies: %s", exc)
    return len(stalled)


@app.task(bind=True, name="aifixer.tasks.check_pull_requests", acks_late=False,
          ignore_result=True)  # fmt: skip
def check_pull_requests(self) -> int:
    """Periodic: which recent pull requests were merged (when) or closed unmerged."""
    try:
        return pipeline.check_pull_requests(context())
    except (TransientError, PermanentError, redis_lib.RedisError) as exc:
        log.warning("pull request check: %s (the next round tries again)", exc)
        return 0


def queue_keys() -> list[str]:
    """The Redis lists the broker keeps the farm's queues in: one per priority step.

    kombu's Redis transport names the list of priority `p` "<queue><sep><p>" (just
    "<queue>" for 0), under the transport's optional global key prefix.
    """
    opts = app.conf.broker_transport_options or {}
    sep = opts.get("sep", RedisChannel.sep)
    steps = opts.get("priority_steps", REDIS_PRIORITY_STEPS)
    prefix = opts.get("global_keyprefix", "")
    return [
        f"{prefix}{q.name}{sep}{p}" if p else f"{prefix}{q.name}"
        for q in app.conf.task_queues or ()
        for p in steps
    ]


def tail(incident_id: str):
    """chord(open_pr | call_oncall) → finalize, with `conclude` if the chord itself fails."""
    return chord(
        [open_pr.si(incident_id), call_oncall.si(incident_id)],
        finalize.si(incident_id).on_error(conclude.si(incident_id=incident_id)),
    )


def remediation(incident_id: str):
    """The canvas for one incident.

    diagnose → (recall) → patch → apply → verify → chord(open_pr | call_oncall) → finalize,
    recall only when incident memory is on. Every signature carries only the id.
    """
    memory = [recall.si(incident_id)] if context().settings.memory_enabled else []
    return chain(
        diagnose.si(incident_id),
        *memory,
        patch.si(incident_id),
        apply.si(incident_id),
        verify.si(incident_id),
        tail(incident_id),
    )


def start_remediations(incidents) -> list[str]:
    ids = []
    for incident in incidents:
        res = remediation(incident.id).apply_async()
        ids.append(res.id)
    return ids


@app.task(bind=True, name="aifixer.tasks.poll_loki", acks_late=False, ignore_result=True)
def poll_loki(self, cluster: str | None = None) -> int:
    """One cluster's Loki (beat sends one per cluster); without a name, every cluster's."""
    return _poll(pipeline.poll_loki, cluster)


@app.task(bind=True, name="aifixer.tasks.poll_events", acks_late=False, ignore_result=True)
def poll_events(self, cluster: str | None = None) -> int:
    """One cluster's events and pods (beat sends one per cluster); without a name, every
    cluster's."""
    return _poll(pipeline.poll_events, cluster)


def _poll(fn, cluster: str | None = None) -> int:
    """Polls are cheap and periodic: a failure is logged and the next beat tries again.

    Each runs in its cluster's Context, so it reaches that cluster's endpoints only. The
    message's cluster name is checked against the configuration: an unknown one polls
    nothing.
    """
    ctx = context()
    try:
        names = [cluster] if cluster is not None else ctx.clusters.names
    except ValueError as exc:  # the clusters file cannot be used
        log.error("poll: %s", exc)
        return 0
    opened = 0
    for name in names:
        try:
            if not isinstance(name, str):
                raise PermanentError("config", "a poll names no cluster")
            incidents = fn(ctx.cluster(name))
        except (TransientError, PermanentError, redis_lib.RedisError) as exc:
            log.warning("poll of cluster %.60s failed: %s", name, exc)
            continue
        start_remediations(incidents)
        opened += len(incidents)
    return opened


@app.task(bind=True, name="aifixer.tasks.ingest_signals", acks_late=False, ignore_result=True)
def ingest_signals(self, signals: list[dict]) -> int:
    """Signals from a push source (Alertmanager), deduplicated like the polls'.

    Each goes to the cluster it names (an alert's `cluster` label), else the default one;
    a cluster the farm does not watch opens nothing.
    """
    from .models import Signal

    ctx = context()
    by_cluster: dict[str, list[Signal]] = {}
    for raw in signals:
        sig = Signal.model_validate(raw)
        if not ctx.clusters.from_file:  # one implicit cluster: whatever the alert's label says
            sig = sig.model_copy(update={"cluster": None})
        by_cluster.setdefault(sig.cluster or ctx.clusters.default, []).append(sig)
    return sum(
        _poll(lambda c, sigs=sigs: pipeline.open_incidents(c, sigs), name)
        for name, sigs in by_cluster.items()
    )


# -- CPU levels -------------------------------------------------------------------------


@app.task(bind=True, name="aifixer.tasks.label_cpu_level", acks_late=True, ignore_result=True)
def label_cpu_level(self, pod_id: str) -> str:
    """The pod's CPU level label made to say what its firing alerts say (see scaling.levels).

    The message names a pod ("namespace/name") and nothing else; what the label says
    comes from the record in Redis. Safe to redeliver: the label is patched only when
    it differs. A cluster or Redis outage is retried with the stages' backoff,
    `MAX_RETRIES` times; a refusal or a permanent error is logged, never raised.
    """
    ctx = context()
    outcome = _label_cpu_level(self, ctx, pod_id)
    metrics.inc(ctx.redis, metrics.LEVEL_LABELS, result=outcome)
    return outcome


def _label_cpu_level(task, ctx: pipeline.Context, pod_id: str) -> str:
    try:
        outcome = levels.label_pod(ctx.kube, ctx.redis, ctx.settings, pod_id)
    except ValueError as refusal:
        log.warning("label_cpu_level: refused: %s", refusal)
        return "refused"
    except (TransientError, redis_lib.RedisError) as raw:
        exc = _transient(raw)
        n = task.request.retries + 1
        if n > MAX_RETRIES:
            log.error("[%s] CPU level: %s (gave up after %d retries)", pod_id, exc, MAX_RETRIES)
            return "failed"
        log.warning("[%s] CPU level: %s (retry %d)", pod_id, exc, n)
        metrics.retried(ctx.redis, "label_cpu_level")
        raise task.retry(
            countdown=countdown(n, exc.retry_after, ctx.settings.retry_after_max_s),
            max_retries=MAX_RETRIES,
        ) from None
    except PermanentError as exc:
        log.error("[%s] CPU level: %s", pod_id, exc)
        return "failed"
    return outcome


# -- forecast scaling ---------------------------------------------------------------------


@app.task(bind=True, name="aifixer.tasks.forecast_scaling", acks_late=False, ignore_result=True)
def forecast_scaling(self) -> int:
    """Periodic: one decision per opted-in Deployment (see scaling.scaler); a pass that
    fails (Prometheus or the cluster unreachable) is logged and the next one tries again."""
    ctx = context()
    try:
        made = scaler.scale_once(ctx.kube, ctx.prometheus, ctx.redis, ctx.settings)
    except (TransientError, PermanentError, redis_lib.RedisError) as exc:
        log.warning("forecast scaling: %s (the next pass tries again)", exc)
        return 0
    for d in made:
        changed = "true" if d.changes else "false"
        metrics.inc(ctx.redis, metrics.SCALING, mode=d.mode, changed=changed)
    return len(made)
