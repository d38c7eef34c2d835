"""Celery tasks: thin wrappers around `aifixer.pipeline`.

A task deserialises the IncidentState it is given, runs one pipeline step, and
returns the next state as JSON. Retries are decided here, once, from the adapters'
two error types: a TransientError is retried with exponential backoff and jitter up
to a bound; a PermanentError (or a TransientError that outlived its retries) does
not stop the chain — it is recorded on the state, the later stages pass it through,
and the incident still reaches the phone and `finalize`, so nothing is lost.

Every log line carries the task id (see app.py) and the `[namespace/name]` of the
incident.
"""

from __future__ import annotations

import logging
import random
from functools import lru_cache

from celery import chain, chord

from . import pipeline
from .adapters.errors import PermanentError, TransientError
from .app import app
from .models import IncidentState

log = logging.getLogger("aifixer.tasks")

MAX_RETRIES = 5


@lru_cache(maxsize=1)
def context() -> pipeline.Context:
    """One Context per worker process: adapters and connections are reused."""
    return pipeline.Context()


def _backoff(retries: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return retry_after
    return min(60.0, 2.0**retries) * (0.5 + random.random() / 2)  # noqa: S311 - jitter


def _stage(task, name: str, step, payload: dict) -> dict:
    state = IncidentState.model_validate(payload)
    if state.error is not None:
        return payload  # an earlier stage failed for good: pass it on to the call and finalize
    try:
        state = step(context(), state)
    except TransientError as exc:
        if task.request.retries < MAX_RETRIES:
            log.warning(
                "%s %s: %s (retry %d)", pipeline.tag(state), name, exc, task.request.retries + 1
            )
            raise task.retry(
                exc=exc, countdown=_backoff(task.request.retries, exc.retry_after)
            ) from None
        state.error = f"{name}: {exc} (gave up after {MAX_RETRIES} retries)"
    except PermanentError as exc:
        state.error = f"{name}: {exc}"
    except pipeline.NotYet:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug must not lose the incident: record it, go on
        log.exception("%s %s crashed", pipeline.tag(state), name)
        state.error = f"{name}: internal error: {type(exc).__name__}: {exc}"
    if state.error is not None:
        log.error("%s %s failed: %s", pipeline.tag(state), name, state.error)
        pipeline.save(context(), state)
    return state.model_dump(mode="json")


@app.task(bind=True, name="aifixer.tasks.diagnose", acks_late=True)
def diagnose(self, payload: dict) -> dict:
    return _stage(self, "diagnose", pipeline.diagnose, payload)


@app.task(bind=True, name="aifixer.tasks.recall", acks_late=True)
def recall(self, payload: dict) -> dict:
    return _stage(self, "recall", pipeline.recall_stage, payload)


@app.task(bind=True, name="aifixer.tasks.remember", acks_late=True, ignore_result=True)
def remember(self, fingerprint: str) -> None:
    ctx = context()
    state = pipeline.load(ctx, fingerprint)
    if state is not None:
        pipeline.remember(ctx, state)


@app.task(bind=True, name="aifixer.tasks.patch", acks_late=True)
def patch(self, payload: dict) -> dict:
    return _stage(self, "patch", pipeline.patch, payload)


@app.task(bind=True, name="aifixer.tasks.apply", acks_late=True)
def apply(self, payload: dict) -> dict:
    # Idempotent: apply skips when the state already holds an ApplyResult, and a
    # server-side apply of the same manifest by the same field manager converges.
    return _stage(self, "apply", pipeline.apply, payload)


@app.task(bind=True, name="aifixer.tasks.verify", acks_late=True, max_retries=None)
def verify(self, payload: dict) -> dict:
    """Re-schedules itself (short countdowns, below the broker's visibility timeout)."""
    try:
        return _stage(self, "verify", pipeline.verify, payload)
    except pipeline.NotYet as wait:
        raise self.retry(countdown=wait.countdown, max_retries=None) from None


@app.task(bind=True, name="aifixer.tasks.open_pr", acks_late=True)
def open_pr(self, payload: dict) -> dict:
    return _stage(self, "open_pr", pipeline.open_pr, payload)


@app.task(bind=True, name="aifixer.tasks.call_oncall", acks_late=False)
def call_oncall(self, payload: dict, attempt: int = 1) -> dict:
    # Not acks_late: a phone call is never placed twice by a redelivery; the
    # `dialed` key guards against the rest.
    state = IncidentState.model_validate(payload)
    if not pipeline.needs_call(state):
        return payload
    try:
        state = pipeline.call_oncall(context(), state, attempt)
    except Exception as exc:  # noqa: BLE001 - never retried: a failed call is recorded, not re-dialled
        state.error = state.error or f"call_oncall: {exc}"
        log.exception("%s call failed", pipeline.tag(state))
    return state.model_dump(mode="json")


@app.task(bind=True, name="aifixer.tasks.call_next", acks_late=False)
def call_next(self, fingerprint: str, attempt: int) -> None:
    """The previous person could not intervene: call the next number."""
    ctx = context()
    state = pipeline.load(ctx, fingerprint)
    if state is None:
        return
    try:
        if pipeline.place_next_call(ctx, state, attempt) is None:
            pipeline.mark_escalation_done(ctx, state)
    except (TransientError, PermanentError) as exc:
        log.error("%s call to the next on-call failed: %s", pipeline.tag(state), exc)
        pipeline.mark_escalation_done(ctx, state)


@app.task(bind=True, name="aifixer.tasks.finalize", acks_late=True)
def finalize(self, results: list[dict]) -> dict:
    states = [IncidentState.model_validate(r) for r in results]
    state = pipeline.finalize(context(), states)
    if context().settings.memory_enabled:
        remember.delay(state.incident.fingerprint)
    return state.model_dump(mode="json")


def remediation(state: IncidentState):
    """The canvas for one incident.

    diagnose → (recall) → patch → apply → verify → chord(open_pr | call_oncall) → finalize,
    recall only when incident memory is on.
    """
    memory = [recall.s()] if context().settings.memory_enabled else []
    return chain(
        diagnose.s(state.model_dump(mode="json")),
        *memory,
        patch.s(),
        apply.s(),
        verify.s(),
        chord([open_pr.s(), call_oncall.s()], finalize.s()),
    )


def start_remediations(incidents) -> list[str]:
    ids = []
    for incident in incidents:
        res = remediation(
            IncidentState(incident=incident, model_used=context().settings.model_name)
        ).apply_async()
        ids.append(res.id)
    return ids


@app.task(bind=True, name="aifixer.tasks.poll_loki", acks_late=False, ignore_result=True)
def poll_loki(self) -> int:
    return _poll(pipeline.poll_loki)


@app.task(bind=True, name="aifixer.tasks.poll_events", acks_late=False, ignore_result=True)
def poll_events(self) -> int:
    return _poll(pipeline.poll_events)


def _poll(fn) -> int:
    """Polls are cheap and periodic: a failure is logged and the next beat tries again."""
    try:
        incidents = fn(context())
    except (TransientError, PermanentError) as exc:
        log.warning("poll failed: %s", exc)
        return 0
    start_remediations(incidents)
    return len(incidents)


@app.task(bind=True, name="aifixer.tasks.ingest_signals", acks_late=False, ignore_result=True)
def ingest_signals(self, signals: list[dict]) -> int:
    """Signals from a push source (Alertmanager), deduplicated like the polls'."""
    from .models import Signal

    return _poll(
        lambda ctx: pipeline.open_incidents(ctx, [Signal.model_validate(s) for s in signals])
    )
