"""A workload kept equal to Git by a GitOps controller: self-heal paused around the fix.

Over fake ports (tests/unit/fakeports.py), records in a real Redis, the canvas run
eagerly: self-heal is paused once, before the first write, and restored on every
path — the pull request merged or closed, a rollback, a failed stage, the watchdog —
never over a person's change to the controller's object.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis as redis_lib

from aifixer import pipeline, tasks
from aifixer.adapters.errors import PermanentError
from aifixer.adapters.kube import GitOpsOwner, claims, gitops_owner
from aifixer.app import app
from tests.unit.fakeports import context, deployment, open_incident

GOOD, BAD = "registry.local/web:1", "registry.local/web:2"


@pytest.fixture
def ctx(redis_url, tmp_path, monkeypatch):
    client = redis_lib.Redis.from_url(redis_url)
    stale = list(client.scan_iter(match="aifixer:*", count=1000))
    if stale:
        client.delete(*stale)
    c = context(redis_url, tmp_path)
    c.kube.managed_by_argo(self_heal=True)
    monkeypatch.setattr(tasks, "context", lambda: c)
    monkeypatch.setattr(pipeline, "PHONE_BACKOFF_S", 0.0)
    monkeypatch.setattr(pipeline, "diagnose", lambda c, s: s)
    monkeypatch.setattr(pipeline, "patch", lambda c, s: s)
    app.conf.task_always_eager = True
    yield c
    app.conf.task_always_eager = False


def run(ctx, incident_id: str):
    tasks.remediation(incident_id).apply()
    return ctx.store.load(incident_id)


def ops(ctx) -> list[str]:
    return [w["op"] for w in ctx.kube.writes]


def test_paused_once_before_the_apply_and_restored_when_the_pr_is_merged(ctx):
    iid = open_incident(ctx)
    state = run(ctx, iid)
    assert state.outcome == "fixed"
    assert ops(ctx) == ["pause", "apply"]  # paused before the first write
    assert state.gitops_pause.controller == "argocd"
    assert (state.gitops_pause.namespace, state.gitops_pause.name) == ("argocd", "web")
    assert state.gitops_pause.previous is True
    # The pull request is open: Git still holds the broken version, so self-heal stays
    # paused (restoring it would revert the verified fix).
    assert ctx.kube.self_heal is False
    assert state.gitops_pause.restored_at is None
    tasks.watchdog.apply()
    assert ctx.kube.self_heal is False

    # A redelivered pause changes nothing more.
    pipeline.pause_gitops(ctx, state, ctx.kube.get_deployment("shop", "web"))
    assert ops(ctx) == ["pause", "apply"]

    ctx.forge.merge(state.pull_request.number, datetime.now(UTC))
    assert pipeline.check_pull_requests(ctx) == 1
    state = ctx.store.load(iid)
    assert ctx.kube.self_heal is True
    assert ops(ctx) == ["pause", "apply", "resume"]
    assert state.gitops_pause.restore == "restored"
    assert state.pull_request.state == "merged"
    # Restoring again is a no-op.
    pipeline.resume_gitops(ctx, state, "again")
    tasks.watchdog.apply()
    assert ops(ctx) == ["pause", "apply", "resume"]


def test_after_the_merge_restored_only_once_the_controller_has_fetched_it(ctx):
    """Restored earlier, the controller would apply the revision it fetched before —
    Git's broken version — over the verified fix."""
    iid = open_incident(ctx)
    state = run(ctx, iid)
    sha = "ab" * 20
    ctx.forge.merge(state.pull_request.number, datetime.now(UTC), sha)
    for _ in range(2):  # rounds of the check, and the watchdog, wait
        pipeline.check_pull_requests(ctx)
        tasks.watchdog.apply()
        assert ctx.kube.self_heal is False
    state = ctx.store.load(iid)
    assert (state.pull_request.state, state.pull_request.merge_commit) == ("merged", sha)
    assert state.gitops_pause.restored_at is None
    assert ctx.kube.refreshes == [sha, sha]  # asked to look, each round
    assert ops(ctx) == ["pause", "apply"]

    ctx.kube.fetched.add(sha)
    pipeline.check_pull_requests(ctx)
    assert ctx.kube.self_heal is True
    assert ctx.store.load(iid).gitops_pause.restore == "restored"
    assert ops(ctx) == ["pause", "apply", "resume"]
    pipeline.check_pull_requests(ctx)  # nothing more to look at
    assert ctx.kube.refreshes == [sha, sha]


def test_after_the_merge_restored_all_the_same_once_the_wait_is_over(ctx, caplog):
    iid = open_incident(ctx)
    state = run(ctx, iid)
    ctx.forge.merge(state.pull_request.number, datetime.now(UTC), "cd" * 20)
    pipeline.check_pull_requests(ctx)
    assert ctx.kube.self_heal is False
    ctx.settings.gitops_merge_wait_s = 0.001
    tasks.watchdog.apply()  # the watchdog's sweep no longer waits either
    pipeline.check_pull_requests(ctx)
    assert ctx.kube.self_heal is True
    assert ctx.store.load(iid).gitops_pause.restore == "restored"


def test_the_write_waits_for_a_sync_the_controller_decided_before_the_pause(ctx, monkeypatch):
    """A pass already under way writes Git's version at its end: a fix written before
    that end would be put back, and verify would judge the broken revision."""
    monkeypatch.setattr(pipeline, "GITOPS_IN_FLIGHT_POLL_S", 0.0)
    ctx.kube.in_flight = ["Argo CD Application argocd/web: a sync is running"] * 3
    iid = open_incident(ctx)
    state = run(ctx, iid)
    assert state.outcome == "fixed"
    assert ops(ctx) == ["pause", "apply"]
    assert ctx.kube.calls["gitops_in_flight"] == 4  # three answers "running", then none


def test_a_pass_that_outlasts_the_wait_does_not_hold_the_fix(ctx, monkeypatch, caplog):
    """A pass still running long after the pause most likely waits on the health of the
    very workload (Flux's `wait`, Argo CD's hooks), after its write: the fix goes ahead,
    and verify catches a revert if it comes all the same."""
    monkeypatch.setattr(pipeline, "GITOPS_IN_FLIGHT_WAIT_S", 0.0)
    iid = open_incident(ctx)
    ctx.kube.in_flight = ["Flux Kustomization flux-system/web: Running health checks"] * 9
    state = pipeline.apply(ctx, ctx.store.load(iid))
    assert ops(ctx) == ["pause", "apply"]
    assert state.apply is not None
    assert "writing the fix while" in caplog.text and "health checks" in caplog.text


def test_a_fix_the_controller_put_back_is_never_verified(ctx, monkeypatch):
    """The earlier values are live again: what runs is not the fix, whatever its health."""
    iid = open_incident(ctx)
    real = pipeline.verify

    def verify_after_a_revert(c, s):
        ctx.kube.person_sets_image(BAD)  # Git's version, put back by a pass of the controller
        return real(c, s)

    monkeypatch.setattr(pipeline, "verify", verify_after_a_revert)
    state = run(ctx, iid)
    assert state.outcome != "fixed"
    assert "the fix is no longer live" in state.verification.reason
    assert ctx.forge.prs == {}
    assert len(ctx.phone.dialled) == 1
    assert ctx.kube.self_heal is True


def test_restored_when_the_pr_is_closed_unmerged(ctx):
    iid = open_incident(ctx)
    state = run(ctx, iid)
    ctx.forge.close(state.pull_request.number, datetime.now(UTC))
    pipeline.check_pull_requests(ctx)
    assert ctx.kube.self_heal is True
    assert ctx.store.load(iid).gitops_pause.restore == "restored"


def test_restored_on_rollback_after_a_failed_verification(ctx):
    iid = open_incident(ctx)
    ctx.settings.verify_deadline_s = 0.0
    ctx.kube.healthy = False
    state = run(ctx, iid)
    assert ctx.kube.image == BAD
    assert ops(ctx) == ["pause", "apply", "restore", "resume"]  # the original first
    assert state.verification.rolled_back
    assert ctx.kube.self_heal is True
    assert state.gitops_pause.restore == "restored"
    assert len(ctx.phone.dialled) == 1
    assert ctx.forge.prs == {}


def test_restored_when_the_apply_fails_after_the_pause(ctx):
    iid = open_incident(ctx)
    ctx.kube.fail("apply", PermanentError("kubernetes", "admission denied", status=403))
    state = run(ctx, iid)
    assert ops(ctx) == ["pause", "resume"]
    assert ctx.kube.self_heal is True
    assert state.outcome == "error"
    assert state.closed_at is not None


def test_restored_when_the_pull_request_fails_for_good(ctx):
    iid = open_incident(ctx)
    ctx.forge.fail("open_fix_pr", PermanentError("github", "422 branch protection"), times=99)
    state = run(ctx, iid)
    assert state.pr_error and state.outcome != "fixed"
    assert ctx.kube.self_heal is True  # finalize: nothing will bring the fix into Git
    assert len(ctx.phone.dialled) == 1


def test_restored_by_the_watchdog_after_a_takeover(ctx, monkeypatch):
    iid = open_incident(ctx)
    tasks.apply.apply(args=[iid])
    assert ctx.kube.self_heal is False
    lost = type("Lost", (), {"apply_async": lambda self: None})()
    monkeypatch.setattr(tasks, "remediation", lambda i: lost)
    ctx.settings.watchdog_stall_s = 0.0
    tasks.watchdog.apply()  # resumed, and lost again
    assert ctx.kube.self_heal is False
    tasks.watchdog.apply()  # taken over: rolled back, self-heal back on
    state = ctx.store.load(iid)
    assert ctx.kube.image == BAD
    assert ctx.kube.self_heal is True
    assert state.gitops_pause.restore == "restored"
    assert state.closed_at is not None


def test_a_pause_a_crash_left_pending_is_restored_by_the_watchdog(ctx):
    """A worker lost after pausing, the incident closed without restoring: the sweep."""
    iid = open_incident(ctx)
    state = ctx.store.load(iid)
    pipeline.pause_gitops(ctx, state, ctx.kube.get_deployment("shop", "web"))
    assert ctx.kube.self_heal is False
    state.closed_at, state.outcome, state.error = datetime.now(UTC), "error", "lost"
    pipeline.save(ctx, state, "closed")
    tasks.watchdog.apply()
    assert ctx.kube.self_heal is True
    assert ctx.store.load(iid).gitops_pause.restore == "restored"
    assert ctx.store.paused() == []


def test_a_persons_change_to_the_application_meanwhile_is_not_overwritten(ctx, monkeypatch):
    iid = open_incident(ctx)
    ctx.settings.verify_deadline_s = 0.0
    ctx.kube.healthy = False
    real = pipeline.verify

    def verify_after_a_person(c, s):
        ctx.kube.person_sets_self_heal(None)  # the person drops selfHeal altogether
        return real(c, s)

    monkeypatch.setattr(pipeline, "verify", verify_after_a_person)
    state = run(ctx, iid)
    assert ctx.kube.image == BAD  # rolled back all the same
    assert ctx.kube.self_heal is None  # the person's value stays
    assert "resume" not in ops(ctx)
    assert state.gitops_pause.restore == "changed"


def test_not_allowed_to_pause_leaves_the_controller_and_the_workload_alone(ctx):
    """The fix is verified on a temporary copy instead (tests/unit/test_verify_copy.py)."""
    iid = open_incident(ctx)
    ctx.settings.gitops_pause_self_heal = False
    state = run(ctx, iid)
    assert ops(ctx) == ["create", "delete"]  # the copy's, nothing of the Application's
    assert ctx.kube.self_heal is True
    assert ctx.kube.image == BAD
    assert state.outcome == "fixed"
    assert state.gitops_pause is None
    assert ctx.store.paused() == []


def test_self_heal_already_off_is_left_alone(ctx):
    ctx.kube.managed_by_argo(self_heal=False)
    iid = open_incident(ctx)
    state = run(ctx, iid)
    assert state.outcome == "fixed"
    assert ops(ctx) == ["apply"]
    assert state.gitops_pause is None
    assert ctx.kube.self_heal is False


def test_an_unmanaged_workload_touches_no_controller(ctx):
    ctx.kube.application = None
    iid = open_incident(ctx)
    state = run(ctx, iid)
    assert state.outcome == "fixed"
    assert ops(ctx) == ["apply"]
    assert ctx.kube.calls["self_heal_switch"] == 0


# -- the marks on the workload: set by whoever deploys, validated --------------------------


def marked(annotations=None, labels=None):
    dep = deployment()
    dep["metadata"]["annotations"] = annotations or {}
    dep["metadata"]["labels"] = labels or {}
    return dep


TRACK = "argocd.argoproj.io/tracking-id"
FLUX = {"kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": ""}


@pytest.mark.parametrize(
    ("annotations", "labels", "expected"),
    [
        ({TRACK: "web:apps/Deployment:shop/web"}, {}, ("argocd", "argocd", "web")),
        ({TRACK: "argocd_web:apps/Deployment:shop/web"}, {}, ("argocd", "argocd", "web")),
        ({}, {"app.kubernetes.io/instance": "storefront"}, ("argocd", "argocd", "storefront")),
        ({}, {**FLUX, "kustomize.toolkit.fluxcd.io/namespace": "flux-system"},
         ("flux", "flux-system", "apps")),
        # The tracking id of another object: not this workload's controller.
        ({TRACK: "web:apps/Deployment:shop/other"}, {}, None),
        # An Application outside the configured namespace, or a name that is no name.
        ({TRACK: "kube-system_web:apps/Deployment:shop/web"}, {}, None),
        ({TRACK: "../secrets:apps/Deployment:shop/web"}, {}, None),
        ({}, {**FLUX, "kustomize.toolkit.fluxcd.io/namespace": "kube-system"}, None),
        ({}, {"app.kubernetes.io/instance": "Web/../x"}, None),
        ({}, {}, None),
    ],
)  # fmt: skip
def test_the_controller_named_by_the_marks_is_validated(annotations, labels, expected):
    owner = gitops_owner(marked(annotations, labels), "argocd", ["flux-system"])
    assert owner == (GitOpsOwner(*expected) if expected else None)


def test_the_controller_must_list_the_workload_itself():
    dep = deployment()
    argo = GitOpsOwner("argocd", "argocd", "web")
    listed = {"status": {"resources": [
        {"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "web"}]}}  # fmt: skip
    other = {"status": {"resources": [
        {"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "api"}]}}  # fmt: skip
    assert claims(argo, listed, dep) and not claims(argo, other, dep)
    assert not claims(argo, {}, dep)
    flux = GitOpsOwner("flux", "flux-system", "apps")
    inventory = {"status": {"inventory": {"entries": [{"id": "shop_web_apps_Deployment"}]}}}
    assert claims(flux, inventory, dep) and not claims(flux, listed, dep)


ARGO, FLUX_KS = GitOpsOwner("argocd", "argocd", "web"), GitOpsOwner("flux", "flux-system", "apps")
WEB = {"kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}}


def _op(phase, resources=()):
    state = {"phase": phase, "syncResult": {"resources": list(resources)}}
    return {"status": {"operationState": state}}


def _synced(name, status="Synced"):
    return {"kind": "Deployment", "namespace": "shop", "name": name, "status": status}


def _reconciling(reason):
    cond = {"type": "Reconciling", "status": "True", "reason": reason, "message": "applying"}
    return {"status": {"conditions": [cond]}}


@pytest.mark.parametrize(
    ("owner", "obj", "busy"),
    [
        (ARGO, {"operation": {"sync": {}}}, "requested"),  # decided, not picked up yet
        (ARGO, _op("Running"), "running"),
        (ARGO, _op("Terminating"), "terminating"),
        (ARGO, _op("Running", [_synced("api")]), "running"),  # another object so far
        (ARGO, _op("Running", [_synced("web")]), None),  # this one written: hooks remain
        (ARGO, _op("Running", [_synced("web", "SyncFailed")]), "running"),
        (ARGO, _op("Succeeded"), None),
        (ARGO, {"status": {}}, None),
        (FLUX_KS, _reconciling("Progressing"), "applying"),
        (FLUX_KS, _reconciling("ProgressingWithRetry"), None),  # failed, retried later
        (FLUX_KS, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, None),
        (FLUX_KS, None, None),  # gone
    ],
)  # fmt: skip
def test_what_counts_as_a_pass_in_flight(owner, obj, busy):
    from aifixer.adapters.kube import Kube

    kube = object.__new__(Kube)  # the reading only: no API server needed
    kube._gitops_object = lambda o: obj
    found = kube.gitops_in_flight(owner, WEB)
    assert (found is None) if busy is None else (busy in found)
