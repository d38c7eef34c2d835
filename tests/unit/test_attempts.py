# ruff: noqa: F811 - `ctx`, the fixture of test_tasks.py, is the parameter of most tests
"""A second try before the phone, and the model's explanation beside verify: the tasks
over fake ports, with the incident records in a real Redis (as in test_tasks.py).

The incident comes patched with a first fix (the image set to web:3, a "hybrid" choice)
and two alternatives: one of the same kind (never tried after it) and one of another
kind (the last healthy revision, web:1). What the promise says is asserted: every
attempt is verified and undone to the ORIGINAL if it fails, a person's change is never
worked around, the total stays within the incident's budget, the watchdog still
restores the original, and the pull request or the call tells every attempt.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from aifixer import fixer, manifests, pipeline, prbody, tasks
from aifixer.models import Diagnosis, FieldChange, FixProposal, Verification
from aifixer.settings import Settings
from tests.unit.fakeports import FakeModel, open_incident
from tests.unit.test_tasks import BAD, GOOD, HOTFIX, ctx, run  # noqa: F401 - fixture

OTHER = "registry.local/web:3"
SAME_KIND = "registry.local/web:4"
IMAGE = "spec.template.spec.containers[0].image"


def _proposal(ctx, image: str, strategy: str) -> FixProposal:
    live = manifests.clean(ctx.kube.live)
    fixed = copy.deepcopy(live)
    fixed["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return FixProposal(
        source="playbook" if ":" not in strategy else "model",
        strategy=strategy,
        rationale=f"the image set to {image}",
        manifest=fixed,
        changes=[FieldChange(path=IMAGE, before=BAD, after=image)],
    )


def open_with_alternatives(ctx) -> str:
    """First fix: web:3 (a hybrid choice of restore-known-good-image); then web:4, the same
    kind, and web:1, the last healthy revision."""
    iid = open_incident(ctx)
    state = ctx.store.load(iid)
    state.proposal = _proposal(ctx, OTHER, "hybrid:restore-known-good-image")
    state.alternatives = [
        _proposal(ctx, SAME_KIND, "restore-known-good-image"),
        _proposal(ctx, GOOD, "revert-to-last-healthy"),
    ]
    ctx.store.save(state, "patched")
    return iid


def images(ctx) -> list[tuple[str, str]]:
    return [
        (w["op"], w["spec"]["template"]["spec"]["containers"][0]["image"])
        for w in ctx.kube.writes
        if "spec" in w
    ]


@pytest.fixture
def attempts(ctx):
    """Each fix fails at its first check (deadline 0) unless it makes the pods healthy."""
    ctx.settings.verify_deadline_s = 0.0
    ctx.settings.fix_deadline_s = 300.0
    return ctx


def test_the_next_kind_is_tried_after_the_first_is_undone_and_verifies(attempts):
    ctx = attempts
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy_when = lambda live: (
        live["spec"]["template"]["spec"]["containers"][0]["image"] == GOOD
    )
    state = run(ctx, iid)
    # web:3 applied, the original restored, web:4 (same kind) skipped, web:1 applied.
    assert images(ctx) == [("apply", OTHER), ("restore", BAD), ("apply", GOOD)]
    assert state.outcome == "fixed"
    assert [a.proposal.strategy for a in state.attempts] == ["hybrid:restore-known-good-image"]
    first = state.attempts[0]
    assert first.number == 1 and first.verification.rolled_back and not first.verification.ok
    assert state.proposal.strategy == "revert-to-last-healthy"
    assert state.verification.ok and state.apply.changes[0].after == GOOD
    # The snapshot is the original, taken once before the first write.
    snap = ctx.store.snapshot(iid)
    assert manifests.get_path(snap.manifest, IMAGE) == BAD
    assert state.apply.original == snap.manifest
    assert len(ctx.forge.prs) == 1 and ctx.phone.dialled == []


def test_when_every_fix_fails_each_is_undone_and_the_call_tells_them_all(attempts):
    ctx = attempts
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy = False
    state = run(ctx, iid)
    assert images(ctx) == [("apply", OTHER), ("restore", BAD), ("apply", GOOD), ("restore", BAD)]
    assert ctx.kube.image == BAD  # the original, not the first attempt
    assert state.outcome == "called"
    assert len(state.attempts) == 1 and state.verification.rolled_back
    assert ctx.forge.prs == {}
    assert len(ctx.phone.dialled) == 1
    speech = ctx.phone.spoken[0]
    assert "A first fix did not help and was undone" in speech
    assert "Then a second fix was tried" in speech
    assert "so it was undone" in speech
    assert not fixer.speech_problems(speech, state)


def test_one_attempt_when_the_setting_says_one(attempts):
    ctx = attempts
    ctx.settings.fix_attempts = 1
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy = False
    state = run(ctx, iid)
    assert images(ctx) == [("apply", OTHER), ("restore", BAD)]
    assert state.attempts == [] and state.outcome == "called"


def test_no_next_fix_when_its_verification_would_pass_the_incidents_deadline(attempts):
    ctx = attempts
    ctx.settings.verify_deadline_s = 0.0
    ctx.settings.fix_deadline_s = 0.001  # the budget is spent by the first attempt
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy = False
    state = run(ctx, iid)
    assert images(ctx) == [("apply", OTHER), ("restore", BAD)]
    assert state.attempts == []


def test_the_default_budget_leaves_room_for_a_second_full_verification():
    s = Settings(_env_file=None)
    assert s.fix_deadline_s is None and s.fix_attempts == 2
    assert s.fix_budget_s == 2 * (s.verify_deadline_s + s.verify_stability_s)
    # A first fix that fails at its deadline (checked a poll late) leaves the second one
    # its whole deadline.
    assert s.verify_deadline_s + s.verify_poll_s + s.verify_deadline_s <= s.fix_budget_s


def test_a_persons_change_during_the_first_verify_ends_the_attempts(attempts):
    ctx = attempts
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy = False
    real_apply = ctx.kube.apply

    def apply_then_person(manifest, resource_version=None):
        out = real_apply(manifest, resource_version)
        ctx.kube.person_sets_image(HOTFIX)
        return out

    ctx.kube.apply = apply_then_person
    state = run(ctx, iid)
    assert ctx.kube.image == HOTFIX  # left as the person set it, nothing more applied
    assert images(ctx) == [("apply", OTHER)]
    assert state.attempts == [] and not state.verification.rolled_back


def test_a_persons_change_between_the_rollback_and_the_next_fix_is_never_overwritten(attempts):
    ctx = attempts
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy = False
    real_restore = ctx.kube.restore

    def restore_then_person(original, expected_generation=None):
        out = real_restore(original, expected_generation)
        ctx.kube.person_sets_image(HOTFIX)
        return out

    ctx.kube.restore = restore_then_person
    state = run(ctx, iid)
    assert ctx.kube.image == HOTFIX
    assert images(ctx) == [("apply", OTHER), ("restore", BAD)]  # the next fix never written
    assert "someone else" in state.error
    assert len(state.attempts) == 1
    assert state.outcome == "error" and len(ctx.phone.dialled) == 1
    speech = ctx.phone.spoken[0]
    assert "A first fix did not help and was undone" in speech
    assert "Someone changed the deployment" in speech


def test_a_next_fix_chosen_before_a_lost_worker_is_applied_once_on_resume(attempts, monkeypatch):
    """The worker dies right after recording the next fix, before writing it: the resumed
    chain applies that fix (not a new choice) and verifies it; one pull request."""
    ctx = attempts
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy_when = lambda live: (
        live["spec"]["template"]["spec"]["containers"][0]["image"] == GOOD
    )
    real = tasks._apply_next

    def lost(task, state):
        monkeypatch.setattr(tasks, "_apply_next", real)
        raise SystemExit("worker lost")  # the message is gone with its worker

    monkeypatch.setattr(tasks, "_apply_next", lost)
    with pytest.raises(SystemExit):
        run(ctx, iid)
    state = ctx.store.load(iid)
    assert state.stage == "retrying" and state.apply is None
    assert ctx.kube.image == BAD  # rolled back; the next fix not yet written
    state = run(ctx, iid)  # what the watchdog's resume sends
    assert images(ctx) == [("apply", OTHER), ("restore", BAD), ("apply", GOOD)]
    assert state.outcome == "fixed" and len(ctx.forge.prs) == 1


def test_the_watchdog_restores_the_original_not_the_first_attempt(attempts, monkeypatch):
    """The second fix is live and its verify message is lost: the watchdog takes over and
    restores the original."""
    ctx = attempts
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy = False
    real = tasks._apply_next

    def applied_then_lost(task, state):
        try:
            return real(task, state)
        except tasks.Retry:
            raise SystemExit("worker lost") from None  # applied and saved, verify lost

    monkeypatch.setattr(tasks, "_apply_next", applied_then_lost)
    with pytest.raises(SystemExit):
        run(ctx, iid)
    assert ctx.kube.image == GOOD  # the second fix is live, unverified
    lost = type("Lost", (), {"apply_async": lambda self: None})()
    monkeypatch.setattr(tasks, "remediation", lambda i: lost)
    ctx.settings.watchdog_stall_s = 0.0
    assert tasks.watchdog.apply().get() == 1  # resumed, and lost again
    assert tasks.watchdog.apply().get() == 1  # taken over
    state = ctx.store.load(iid)
    assert ctx.kube.image == BAD
    assert images(ctx)[-1] == ("restore", BAD)
    assert state.verification.rolled_back and state.closed_at is not None
    assert len(ctx.phone.dialled) == 1


def test_verify_progress_is_kept_per_attempt(attempts):
    ctx = attempts
    iid = open_with_alternatives(ctx)
    state = ctx.store.load(iid)
    assert pipeline._progress_key(state) == ("verify", iid)
    state.attempts = [
        pipeline.FixAttempt(
            number=1, proposal=state.proposal, applied_at=datetime.now(UTC), generation=3,
            verification=Verification(ok=False, reason="x", checked_at=datetime.now(UTC),
                                      rolled_back=True),
        )
    ]  # fmt: skip
    assert pipeline._progress_key(state) == ("verify", iid, "2")


def test_a_replicaset_an_earlier_attempt_created_is_not_the_healthy_past(attempts):
    ctx = attempts
    iid = open_with_alternatives(ctx)
    state = ctx.store.load(iid)
    seen = {}
    real = ctx.kube.last_healthy_template

    def last_healthy(dep, revisions=None):
        seen["revisions"] = [r.replicaset for r, _ in revisions]
        return real(dep, revisions)

    ctx.kube.last_healthy_template = last_healthy
    state.attempts = [
        pipeline.FixAttempt(
            number=1, proposal=state.proposal, applied_at=datetime.now(UTC), generation=3,
            verification=Verification(ok=False, reason="x", checked_at=datetime.now(UTC),
                                      rolled_back=True),
            replicaset="web-2",
        )
    ]  # fmt: skip
    assert pipeline.recheck(ctx, state, ctx.kube.get_deployment("shop", "web")) == []
    assert seen["revisions"] == ["web-1"]


def test_fixes_of_one_kind_are_one_kind():
    def p(strategy):
        return FixProposal(source="model", strategy=strategy, rationale="", manifest={},
                           changes=[])  # fmt: skip

    assert pipeline.fix_kind(p("hybrid:raise-memory-limit")) == "raise-memory-limit"
    assert pipeline.fix_kind(p("remembered:hybrid:raise-memory-limit")) == "raise-memory-limit"
    assert pipeline.fix_kind(p("revert-to-last-healthy")) == "revert-to-last-healthy"


# -- the pull request and the speech tell every attempt -------------------------------------


def _two_attempts_state(ctx):
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy_when = lambda live: (
        live["spec"]["template"]["spec"]["containers"][0]["image"] == GOOD
    )
    return run(ctx, iid)


def test_the_pull_request_tells_the_attempt_before_it(attempts):
    state = _two_attempts_state(attempts)
    body = prbody.body(state, "--- a\n+++ b\n", "apps/web.yaml")
    assert "## Earlier attempts" in body and "attempt 2 of 2" in body
    assert "hybrid:restore-known-good-image" in body and OTHER in body
    assert "rolled back" in body
    assert body.index("## Verification") < body.index("## Earlier attempts")


@pytest.mark.parametrize("language", ["en", "fr"])
def test_the_template_speech_tells_every_attempt_in_both_languages(attempts, language):
    ctx = attempts
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy = False
    state = run(ctx, iid)
    text = fixer.template_speech(state, language)
    assert not fixer.speech_problems(text, state, language), text
    assert len(text.split()) <= fixer.MAX_SPEECH_WORDS
    if language == "en":
        assert "first fix" in text and "second fix" in text
    else:
        assert "premier correctif" in text and "deuxième correctif" in text


# -- the model's explanation and speech, off the critical path ------------------------------


class AnsweringModel(FakeModel):
    """Answers the diagnosis; counts what it was asked and in which order."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def chat_json(self, system, user, schema, name, **kwargs):
        self.hit("chat_json")
        self.log.append(f"model:{name}")
        return {
            "summary": "The new image crashes at start.",
            "root_cause": "The image registry.local/web:2 fails on start.",
            "failure_class": "CrashLoop",
        }, None


def test_diagnose_asks_no_model_and_the_explanation_comes_after_the_apply(ctx, monkeypatch):
    order: list[str] = []
    ctx.model = AnsweringModel(order)
    monkeypatch.undo()  # the real diagnose and patch, not the fixture's stand-ins
    monkeypatch.setattr(tasks, "context", lambda: ctx)
    iid = open_incident(ctx)
    state = ctx.store.load(iid)
    state.diagnosis = None
    ctx.store.save(state, "opened")
    ctx.settings.fix_strategy = "playbooks"  # the choice is not under test here
    monkeypatch.setattr(pipeline, "patch", lambda c, s: s)
    real_apply = ctx.kube.apply

    def apply(manifest, resource_version=None):
        order.append("apply")
        return real_apply(manifest, resource_version)

    ctx.kube.apply = apply
    monkeypatch.setattr(pipeline, "gather_evidence", lambda c, inc, dep: state.evidence)
    state = run(ctx, iid)
    assert order == ["apply", "model:diagnosis"]  # no model call before the fix
    assert state.explained and state.diagnosis.source == "model"
    assert state.outcome == "fixed"
    assert "explain" in state.model_usage or state.timings.get("explain") is not None


def _fixed_before_the_explanation(ctx, monkeypatch, closed=True, open_pr=None):
    """An incident fixed, its pull request opened, its explanation not written yet (the
    model slower than verify): `explain` is sent by the apply but runs after."""
    order: list[str] = []
    ctx.model = AnsweringModel(order)
    monkeypatch.undo()
    monkeypatch.setattr(tasks, "context", lambda: ctx)
    iid = open_incident(ctx)
    state = ctx.store.load(iid)
    state.diagnosis = None
    ctx.store.save(state, "opened")
    ctx.settings.fix_strategy = "playbooks"
    monkeypatch.setattr(pipeline, "patch", lambda c, s: s)
    monkeypatch.setattr(pipeline, "gather_evidence", lambda c, inc, dep: state.evidence)
    later: list[str] = []
    monkeypatch.setattr(tasks, "_explain_later", lambda s: later.append(s.incident.id))
    if open_pr is not None:
        monkeypatch.setattr(pipeline, "open_pr", open_pr)
    state = run(ctx, iid)
    assert later == [iid]
    assert state.outcome == "fixed" and state.closed_at is not None
    if closed:
        assert state.diagnosis.source == "playbook" and not state.explained
    return iid, state


def test_the_pull_request_does_not_wait_and_gets_the_explanation_after(ctx, monkeypatch):
    iid, state = _fixed_before_the_explanation(ctx, monkeypatch)
    assert ctx.forge.explained == {}  # opened with the facts' diagnosis
    tasks.explain.apply(args=[iid])
    state = ctx.store.load(iid)
    assert ctx.forge.explained[state.pull_request.number].source == "model"
    assert state.explained and state.diagnosis.source == "model"  # as the PR shows it
    tasks.explain.apply(args=[iid])  # a redelivery: nothing more
    assert ctx.forge.calls["explain_pr"] == 1


def test_an_explanation_written_while_the_pull_request_opens_still_reaches_it(ctx, monkeypatch):
    """`open_pr` read the record before the explanation came, and opens the pull request
    with the facts' diagnosis: it then brings the explanation in itself."""
    real_open = pipeline.open_pr

    def open_while_explained(c, s):
        tasks.explain.apply(args=[s.incident.id])  # written now: no pull request yet
        assert ctx.forge.explained == {}
        return real_open(c, s)  # with the record it read before

    iid, state = _fixed_before_the_explanation(
        ctx, monkeypatch, closed=False, open_pr=open_while_explained
    )
    state = ctx.store.load(iid)
    assert ctx.forge.explained[state.pull_request.number].source == "model"
    assert state.diagnosis.source == "model" and state.explained


def test_a_persons_edit_of_the_pull_request_is_not_overwritten(ctx, monkeypatch):
    iid, state = _fixed_before_the_explanation(ctx, monkeypatch)
    ctx.forge.edited.add(state.pull_request.number)
    tasks.explain.apply(args=[iid])
    state = ctx.store.load(iid)
    assert ctx.forge.explained == {}
    # The record holds what the pull request shows: the facts' diagnosis.
    assert state.explained and state.diagnosis.source == "playbook"
    assert state.explanation.source == "model"  # kept, not published


def test_the_call_waits_for_the_speech_only_a_bounded_moment(ctx):
    iid = open_incident(ctx)
    state = ctx.store.load(iid)
    t = datetime.now(UTC)
    state.apply = pipeline.ApplyResult(
        original={}, applied={}, changes=[], generation=3, applied_at=t
    )
    state.verification = Verification(ok=False, reason="not healthy", checked_at=t)
    ctx.settings.explain_wait_s = 30.0
    assert pipeline.awaits_speech(ctx, state)
    state.verification.checked_at = t - timedelta(seconds=31)
    assert not pipeline.awaits_speech(ctx, state)  # past the bound: the template
    state.verification.checked_at = t
    state.prepared_for = "the template"
    assert not pipeline.awaits_speech(ctx, state)
    # A call after a verified fix (its pull request failed) has no prepared speech.
    state.prepared_for = None
    state.verification = Verification(ok=True, reason="ok", checked_at=t)
    assert not pipeline.awaits_speech(ctx, state)
    # Nothing applied: nothing was sent to explain, nothing to wait for.
    state.apply = None
    state.verification = Verification(ok=False, reason="not healthy", checked_at=t)
    assert not pipeline.awaits_speech(ctx, state)


def test_the_prepared_speech_is_said_only_if_the_facts_it_rewords_still_hold(attempts):
    ctx = attempts
    ctx.settings.fix_attempts = 1
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy = False
    state = run(ctx, iid)
    template = fixer.template_speech(state, "en")
    prepared = "The deployment web, in namespace shop, keeps crashing: the fix was undone."
    state.speech, state.prepared_speech, state.prepared_for = None, prepared, template
    calls = ctx.model.calls["chat_text"]
    assert pipeline._speech(ctx, state) == prepared
    state.prepared_for = "another story"
    assert pipeline._speech(ctx, state) == template
    assert ctx.model.calls["chat_text"] == calls  # no model on the way to the phone


def test_after_several_fixes_the_call_says_the_template_that_tells_each(attempts):
    ctx = attempts
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy = False
    state = run(ctx, iid)
    assert state.attempts and state.prepared_speech is None
    template = fixer.template_speech(state, "en")
    state.speech, state.prepared_speech, state.prepared_for = None, "Reworded.", template
    assert pipeline._speech(ctx, state) == template


def test_the_speech_prepared_beside_verify_rewords_the_call_that_follows(attempts):
    """What `explain` prepares after the first apply is keyed to the template of the call
    made when both planned fixes fail: the one the farm then says."""
    ctx = attempts
    iid = open_with_alternatives(ctx)
    state = ctx.store.load(iid)
    hypothetical = pipeline.all_failed(ctx.settings, state)
    assert [a.proposal.strategy for a in hypothetical.attempts] == [
        "hybrid:restore-known-good-image"
    ]
    assert hypothetical.proposal.strategy == "revert-to-last-healthy"
    ctx.kube.healthy = False
    final = run(ctx, iid)
    assert fixer.template_speech(final, "en") == fixer.template_speech(hypothetical, "en")
    assert final.prepared_for == fixer.template_speech(final, "en")


def test_an_explanation_that_fails_changes_nothing_of_the_incident(ctx, monkeypatch):
    def broken(c, s):
        raise RuntimeError("a bug in the explanation")

    monkeypatch.setattr(pipeline, "explain", broken)
    iid = open_incident(ctx)
    state = run(ctx, iid)
    assert state.outcome == "fixed" and state.error is None
    assert state.explained and state.diagnosis == Diagnosis(
        summary="The new image crashes at start.", root_cause="bad release",
        failure_class="CrashLoop", source="playbook",
    )  # fmt: skip


def test_the_next_fix_follows_only_once_the_first_rollback_converged(attempts):
    """A StatefulSet's member still runs the first fix after its template is reverted:
    verify, retried, goes on converging that rollback; the next fix is applied only
    once the workload runs the original again, and each attempt's rollback converges."""
    ctx = attempts
    iid = open_with_alternatives(ctx)
    ctx.kube.healthy = False  # neither fix helps
    real_restore = ctx.kube.restore
    seen: list[list[str]] = []

    def restore(original, expected_generation=None):
        out = real_restore(original, expected_generation)
        ctx.kube.converging = ["pod web-2 still runs the fix's revision"] * 2
        return out

    def apply(manifest, resource_version=None, _real=ctx.kube.apply):
        seen.append(list(ctx.kube.converging))  # what was left of the previous rollback
        return _real(manifest, resource_version)

    ctx.kube.restore, ctx.kube.apply = restore, apply
    state = run(ctx, iid)
    assert images(ctx) == [("apply", OTHER), ("restore", BAD), ("apply", GOOD), ("restore", BAD)]
    assert seen == [[], []]  # the second fix only after the first rollback converged
    assert ctx.kube.converging == []  # and the second rollback converged too
    assert state.verification.rolled_back and len(state.attempts) == 1
    assert state.attempts[0].verification.rolled_back
