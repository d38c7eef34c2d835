"""A fix verified on a temporary copy of the Deployment, where self-heal may not be paused.

The copy's manifest (`aifixer.copies`): its name, its labels, what it refuses. Then the
pipeline over fake ports (tests/unit/fakeports.py), records in a real Redis, the canvas
run eagerly, with AIFIXER_GITOPS_PAUSE_SELF_HEAL=false on a workload an Argo CD
Application keeps equal to Git: the Application and the workload are never written; the
copy is created once and removed on every path — verified, not verified, refused, a
stage failing after its creation, a worker lost, an incident that ended or outlived the
copy's deadline (the watchdog).
"""

from __future__ import annotations

import copy
import re
import time

import pytest

from aifixer import copies, pipeline, tasks
from aifixer.adapters.errors import PermanentError, TransientError
from aifixer.models import FixProposal
from tests.unit.fakeports import (
    deployment,
    eager_context,
    open_incident,
    run_canvas,
)

GOOD, BAD = "registry.local/web:1", "registry.local/web:2"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
IID = "0123456789abcdef-1790000000000"


# -- the copy's manifest ---------------------------------------------------------------


def gitops_deployment() -> dict:
    """shop/web as Argo CD and Flux leave it, with a probe, a config volume and a
    scrape annotation on its pods."""
    dep = deployment(GOOD)
    dep["metadata"]["labels"] = {
        "app": "web", "app.kubernetes.io/instance": "web",
        "kustomize.toolkit.fluxcd.io/name": "apps",
    }  # fmt: skip
    dep["metadata"]["annotations"] = {
        "argocd.argoproj.io/tracking-id": "web:apps/Deployment:shop/web"
    }
    dep["spec"].update(replicas=3, minReadySeconds=5, progressDeadlineSeconds=120)
    dep["spec"]["strategy"] = {"type": "Recreate"}
    template = dep["spec"]["template"]
    template["metadata"]["labels"]["app.kubernetes.io/instance"] = "web"
    template["metadata"]["annotations"] = {
        "prometheus.io/scrape": "true", "argocd.argoproj.io/sync-wave": "1",
    }  # fmt: skip
    template["spec"]["volumes"] = [{"name": "conf", "configMap": {"name": "web"}}]
    return dep


def test_the_copy_carries_the_fixed_template_under_aifixers_labels_only():
    fixed = gitops_deployment()
    made = copies.manifest(fixed, IID)
    ours = {
        "aifixer.io/verify-copy": copies.short_id(IID),
        "app.kubernetes.io/managed-by": "aifixer",
    }
    assert made["kind"] == "Deployment" and made["metadata"]["namespace"] == "shop"
    assert made["metadata"]["labels"] == ours
    assert made["metadata"]["annotations"] == {
        "aifixer.io/incident": IID, "aifixer.io/verify-copy-of": "web",
    }  # fmt: skip
    spec = made["spec"]
    assert spec["replicas"] == 1
    assert spec["selector"] == {"matchLabels": ours}
    assert spec["template"]["metadata"] == {
        "labels": ours, "annotations": {"prometheus.io/scrape": "true"},
    }  # fmt: skip
    assert spec["template"]["spec"] == fixed["spec"]["template"]["spec"]  # the fix, whole
    assert (spec["minReadySeconds"], spec["progressDeadlineSeconds"]) == (5, 120)
    assert "strategy" not in spec
    assert fixed["spec"]["template"]["metadata"]["labels"]["app"] == "web"  # not changed
    # No controller mark anywhere: Argo CD and Flux neither prune it nor count it theirs.
    text = repr(made)
    for mark in ("app.kubernetes.io/instance", "argocd.argoproj.io", "kustomize.toolkit.fluxcd.io"):
        assert mark not in text


@pytest.mark.parametrize(
    "selector",
    [{"app": "web"}, {"app": "web", "app.kubernetes.io/instance": "web"}, {"tier": "front"}],
)
def test_no_service_of_the_workload_selects_the_copys_pods(selector):
    pods = copies.manifest(gitops_deployment(), IID)["spec"]["template"]["metadata"]["labels"]
    assert not all(pods.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize(
    "workload",
    ["web", "a" * 63, "api.v2.internal", "x" * 40 + "." + "y" * 200, "-odd-", "Web"],
)
def test_the_copys_name_is_a_bounded_dns_label_named_after_the_incident(workload):
    name = copies.name(workload, IID)
    assert DNS_LABEL.fullmatch(name) and len(name) <= 63, name
    assert name.endswith(f"-verify-{copies.short_id(IID)}")
    assert name == copies.name(workload, IID)  # a redelivery finds it
    assert name != copies.name(workload, IID.replace("17", "18"))  # another incident's is another


@pytest.mark.parametrize(
    ("volume", "says"),
    [
        ({"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}},
         "PersistentVolumeClaim web-data"),
        ({"name": "logs", "hostPath": {"path": "/var/log/web"}}, "node's directory /var/log/web"),
    ],
)  # fmt: skip
def test_a_template_mounting_shared_data_is_not_copied(volume, says):
    fixed = gitops_deployment()
    fixed["spec"]["template"]["spec"]["volumes"].append(volume)
    assert says in (copies.refusal(fixed) or "")


def test_only_a_deployment_is_copied_and_its_own_volumes_are_no_reason_not_to():
    fixed = gitops_deployment()
    fixed["spec"]["template"]["spec"]["volumes"] += [
        {"name": "tmp", "emptyDir": {}},
        {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
    ]
    assert copies.refusal(fixed) is None
    fixed["kind"] = "StatefulSet"
    assert "Deployments only" in (copies.refusal(fixed) or "")


def test_only_this_incidents_copy_is_taken_for_its_own():
    made = copies.manifest(gitops_deployment(), IID)
    assert copies.is_copy(made) and copies.owned(made, IID)
    assert not copies.owned(made, IID.replace("17", "18"))
    assert not copies.is_copy(gitops_deployment())
    for forged in ("name", "label", "annotation"):
        other = copy.deepcopy(made)
        if forged == "name":
            other["metadata"]["name"] = "web"
        elif forged == "label":
            other["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "helm"
        else:
            other["metadata"]["annotations"]["aifixer.io/incident"] = "someone-else"
        assert not copies.owned(other, IID), forged


# -- the pipeline: a workload Argo CD keeps equal to Git, self-heal not to be paused -------


@pytest.fixture
def ctx(redis_url, tmp_path, monkeypatch):
    for c in eager_context(redis_url, tmp_path, monkeypatch):
        c.kube.managed_by_argo(self_heal=True)
        c.settings.gitops_pause_self_heal = False
        yield c


def ops(ctx) -> list[str]:
    return [w["op"] for w in ctx.kube.writes]


def no_copy_left(ctx, iid: str) -> None:
    assert ctx.kube.copies == {}
    assert ctx.store.copies() == []
    assert ctx.store.verify_copy(iid).removed_at is not None


def test_a_fix_verified_on_the_copy_opens_its_pr_and_the_copy_is_removed(ctx, monkeypatch):
    iid = open_incident(ctx)
    seen = []
    real = pipeline.verify

    def verify_watching_the_copy(c, s):
        seen.append(sorted(ctx.kube.copies))
        return real(c, s)

    monkeypatch.setattr(pipeline, "verify", verify_watching_the_copy)
    state = run_canvas(ctx, iid)
    name = copies.name("web", iid)
    assert seen and all(names == [name] for names in seen)  # verified while it existed
    assert state.outcome == "fixed"
    assert ops(ctx) == ["create", "delete"]  # the workload and the Application: never
    assert ctx.kube.image == BAD and ctx.kube.self_heal is True
    assert ctx.kube.calls["pause_self_heal"] == 0
    assert state.verification.ok and name in state.verification.reason
    assert (state.verify_copy.name, state.verify_copy.removal) == (name, "deleted")
    assert state.apply.changes[0].after == GOOD  # what the pull request proposes
    assert len(ctx.forge.prs) == 1 and ctx.phone.dialled == []
    no_copy_left(ctx, iid)


def test_a_fix_not_verified_on_the_copy_restores_nothing_and_calls(ctx):
    iid = open_incident(ctx)
    # Another kind of fix is planned, and attempts are left: none is tried on a copy.
    ctx.settings.fix_attempts = 2
    state = ctx.store.load(iid)
    other = copy.deepcopy(state.proposal.manifest)
    other["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.local/web:0"
    state.alternatives = [
        state.proposal.model_copy(update={"strategy": "another-kind", "manifest": other})
    ]
    pipeline.save(ctx, state)
    ctx.settings.verify_deadline_s = 0.0
    ctx.kube.healthy_when = lambda dep: dep["metadata"]["name"] == "web"  # the copy never is
    state = run_canvas(ctx, iid)
    assert ops(ctx) == ["create", "delete"]  # no restore: the workload was never written
    assert state.outcome == "called"
    v = state.verification
    assert not v.ok and not v.rolled_back
    assert "temporary copy" in v.reason and "never changed" in v.reason
    assert state.attempts == []  # a next fix would need a copy of its own
    assert len(ctx.phone.dialled) == 1 and ctx.forge.prs == {}
    assert "temporary copy" in ctx.phone.spoken[0] and "left as it was" in ctx.phone.spoken[0]
    assert "second" not in ctx.phone.spoken[0]
    assert state.prepared_for == state.speech  # prepared for this one fix, while verifying
    no_copy_left(ctx, iid)


def with_volume(ctx, iid: str, volume: dict) -> None:
    state = ctx.store.load(iid)
    fixed = copy.deepcopy(state.proposal.manifest)
    fixed["spec"]["template"]["spec"]["volumes"] = [volume]
    ctx.kube.live["spec"]["template"]["spec"]["volumes"] = [volume]
    state.evidence.deployment["spec"]["template"]["spec"]["volumes"] = [volume]
    state.proposal = FixProposal(**{**state.proposal.model_dump(), "manifest": fixed})
    pipeline.save(ctx, state)


def test_a_workload_mounting_a_claim_is_not_copied_and_a_person_is_called(ctx):
    iid = open_incident(ctx)
    with_volume(ctx, iid, {"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}})
    state = run_canvas(ctx, iid)
    assert ops(ctx) == []
    assert state.outcome == "error"
    assert "PersistentVolumeClaim web-data" in state.error
    assert "Argo CD Application argocd/web" in state.error
    assert len(ctx.phone.dialled) == 1
    assert ctx.store.verify_copy(iid) is None


def test_a_service_that_would_select_the_copy_refuses_it(ctx):
    iid = open_incident(ctx)
    ctx.kube.services["everything-aifixer"] = {"app.kubernetes.io/managed-by": "aifixer"}
    state = run_canvas(ctx, iid)
    assert ops(ctx) == []
    assert "Service everything-aifixer would select" in state.error
    assert ctx.kube.calls["services_selecting"] >= 1
    assert len(ctx.phone.dialled) == 1


def test_a_deployment_of_the_copys_name_that_is_not_ours_is_left_alone(ctx):
    iid = open_incident(ctx)
    name = copies.name("web", iid)
    theirs = deployment(GOOD)
    theirs["metadata"].update(name=name, uid="theirs", resourceVersion="7")
    ctx.kube.copies[name] = theirs
    state = run_canvas(ctx, iid)
    assert ops(ctx) == []
    assert "is not this incident's temporary copy" in state.error
    assert ctx.kube.copies == {name: theirs}  # untouched, never deleted
    assert ctx.store.verify_copy(iid).removal == "not ours"


def test_a_redelivered_apply_reuses_its_copy_or_replaces_one_that_runs_something_else(ctx):
    iid = open_incident(ctx)
    state = ctx.store.load(iid)
    first = pipeline.apply(ctx, state.model_copy(deep=True))  # its save lost: redelivered
    again = pipeline.apply(ctx, state.model_copy(deep=True))
    assert ops(ctx) == ["create"]
    assert first.verify_copy == again.verify_copy
    name = first.verify_copy.name
    ctx.kube.copies[name]["spec"]["template"]["spec"]["containers"][0]["image"] = "other:1"
    with pytest.raises(TransientError, match="being replaced"):
        pipeline.apply(ctx, state.model_copy(deep=True))
    replaced = pipeline.apply(ctx, state.model_copy(deep=True))
    assert ops(ctx) == ["create", "delete", "create"]
    assert ctx.kube.copies[name]["spec"]["template"]["spec"]["containers"][0]["image"] == GOOD
    assert replaced.verify_copy.name == name


def test_a_statefulset_that_may_not_be_paused_is_left_as_it_is(ctx):
    iid = open_incident(ctx)
    state = ctx.store.load(iid)
    live = ctx.kube.get_deployment("shop", "web")
    live["kind"] = "StatefulSet"
    with pytest.raises(PermanentError, match="Deployments only") as refused:
        pipeline.pause_gitops(ctx, state, live)
    assert "aifixer changed nothing, the fix must go through Git" in str(refused.value)
    assert ops(ctx) == []


def test_a_copys_failing_pods_open_no_incident_of_their_own(ctx):
    iid = open_incident(ctx)
    pipeline.apply(ctx, ctx.store.load(iid))
    (name,) = ctx.kube.copies
    assert pipeline._open_one(ctx, "shop", name, []) is None
    assert ctx.kube.calls["pod_states"] == 1  # the recheck's, none for the copy


# -- faults: no copy outlives its incident -------------------------------------------------


def test_a_worker_lost_after_creating_the_copy_leaves_none_once_the_watchdog_ran(ctx, monkeypatch):
    iid = open_incident(ctx)
    tasks.apply.apply(args=[iid])  # the copy is created, then the chain is lost
    assert list(ctx.kube.copies) == [copies.name("web", iid)]
    lost = type("Lost", (), {"apply_async": lambda self: None})()
    monkeypatch.setattr(tasks, "remediation", lambda i: lost)
    ctx.settings.watchdog_stall_s = 0.0
    tasks.watchdog.apply()  # resumed, and lost again
    assert ctx.kube.copies
    tasks.watchdog.apply()  # taken over: not verified, the copy removed, concluded
    state = ctx.store.load(iid)
    assert state.closed_at is not None and not state.verification.ok
    assert ops(ctx) == ["create", "delete"]
    assert ctx.kube.image == BAD
    assert len(ctx.phone.dialled) == 1
    no_copy_left(ctx, iid)


def test_a_copy_stage_failing_after_the_create_leaves_no_copy(ctx, monkeypatch):
    iid = open_incident(ctx)
    real = ctx.kube.create_copy

    def created_then_refused(manifest):
        real(manifest)  # the create landed, its answer never came
        raise PermanentError("kubernetes", "connection reset after the write")

    monkeypatch.setattr(ctx.kube, "create_copy", created_then_refused)
    state = run_canvas(ctx, iid)
    assert state.error and "connection reset" in state.error
    assert state.apply is None and state.closed_at is not None
    assert ops(ctx) == ["create", "delete"]  # removed when the incident ended
    assert ctx.kube.image == BAD
    no_copy_left(ctx, iid)


def test_a_copy_the_api_server_would_not_delete_is_removed_by_the_watchdog(ctx):
    iid = open_incident(ctx)
    ctx.kube.fail("delete_copy", TransientError("kubernetes", "503"), times=2)
    state = run_canvas(ctx, iid)
    assert state.outcome == "fixed" and state.closed_at is not None
    assert ctx.kube.copies and ctx.store.copies() == [iid]  # pending, not forgotten
    tasks.watchdog.apply()
    no_copy_left(ctx, iid)
    assert ctx.store.load(iid).verify_copy.removal == "deleted"


def test_a_copy_past_its_deadline_is_removed_by_the_watchdog_and_not_verified(ctx):
    iid = open_incident(ctx)
    tasks.apply.apply(args=[iid])
    record = ctx.store.verify_copy(iid)
    assert record.deadline - record.created_at == pipeline.copy_life_s(ctx.settings)
    ctx.store.redis.zadd(ctx.store.key("copies"), {iid: time.time() - 1})
    overdue = record.model_copy(update={"deadline": time.time() - 1})
    ctx.store.redis.set(ctx.store.key("copy", iid), overdue.model_dump_json())
    assert pipeline.remove_copies_due(ctx) == 1
    assert ctx.kube.copies == {}
    state = pipeline.verify(ctx, ctx.store.load(iid))
    assert not state.verification.ok and "is gone" in state.verification.reason
    assert ops(ctx) == ["create", "delete"]


def test_the_watchdog_leaves_the_copy_of_an_incident_still_verifying(ctx):
    iid = open_incident(ctx)
    tasks.apply.apply(args=[iid])
    assert pipeline.remove_copies_due(ctx) == 0
    assert ctx.kube.copies and ctx.store.copies() == [iid]
