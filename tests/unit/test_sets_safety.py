"""StatefulSets and DaemonSets: what a fix may never do to them, over fake ports.

A rollback is done only once the workload runs the original again; a workload whose
pods would never run a fix (OnDelete, a partition) is not changed at all; a
StatefulSet's member count is never a fix; a Deployment and a StatefulSet of one name
are two workloads, with a lock each.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from aifixer import fixer, guardrails, manifests, pipeline, tasks
from aifixer.models import PodState, Signal
from aifixer.settings import Settings
from tests.unit.fakeports import deployment, eager_context, open_incident, run_canvas

GOOD, BAD = "registry.local/web:1", "registry.local/web:2"
PATCH = pipeline.patch  # the stage itself (the fixture stubs it for the task tests)
SETTINGS = Settings()


@pytest.fixture
def ctx(redis_url, tmp_path, monkeypatch):
    yield from eager_context(redis_url, tmp_path, monkeypatch)


def run(ctx, incident_id: str):
    return run_canvas(ctx, incident_id)


def statefulset(replicas: int = 3, strategy: dict | None = None) -> dict:
    sts = deployment(GOOD)
    sts["kind"] = "StatefulSet"
    sts["spec"]["replicas"] = replicas
    sts["spec"]["serviceName"] = "web"
    if strategy is not None:
        sts["spec"]["updateStrategy"] = strategy
    return sts


# -- the rollback converges before it is recorded ------------------------------------------


def test_a_rollback_whose_workload_has_not_converged_is_not_recorded_as_restored(ctx):
    """The original template is back but a member still runs the fix: the incident waits
    as "restore pending" (a person is called), and the watchdog finishes the rollback
    once the set converged, keeping the first reason."""
    iid = open_incident(ctx)
    ctx.settings.verify_deadline_s = 0.0
    ctx.kube.healthy = False
    ctx.kube.converging = ["pod web-2 still runs revision fix-rev, not the original"] * 99
    state = run(ctx, iid)
    assert ctx.kube.image == BAD  # the template is the original again...
    assert state.verification is None  # ...but the rollback is not done
    assert state.stage == "restore pending" and state.closed_at is None
    assert "not converged yet" in state.error and "may still be live" in state.error
    assert len(ctx.phone.dialled) == 1
    assert ctx.forge.prs == {}

    ctx.kube.converging.clear()  # the member was replaced
    ctx.settings.watchdog_stall_s = 0.0
    tasks.watchdog.apply()
    state = ctx.store.load(iid)
    assert state.verification.rolled_back is True and state.verification.ok is False
    assert state.verification.reason.startswith("not healthy within 0s")
    assert state.closed_at is not None
    assert [w["op"] for w in ctx.kube.writes] == ["apply", "restore"]  # restored once
    assert len(ctx.phone.dialled) == 1


def test_a_converging_rollback_is_never_verified_as_the_fix(ctx):
    """While the set converges the original's pods may look healthy: verify, retried,
    must not take them for the fix."""
    iid = open_incident(ctx)
    ctx.settings.verify_deadline_s = 0.0
    ctx.kube.healthy = False
    real_restore = ctx.kube.restore

    def restore(original, expected_generation=None):
        out = real_restore(original, expected_generation)
        ctx.kube.healthy = True  # the original's pods are ready
        return out

    ctx.kube.restore = restore
    ctx.kube.converging = ["the controller has not observed the restored spec yet"] * 2
    state = run(ctx, iid)
    assert state.verification.ok is False and state.verification.rolled_back is True
    assert state.outcome == "called"
    assert ctx.forge.prs == {}
    assert ctx.kube.converging == []


# -- workloads no fix can be proven on -------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "strategy", "words"),
    [
        ("StatefulSet", {"type": "OnDelete"}, "OnDelete"),
        ("DaemonSet", {"type": "OnDelete"}, "OnDelete"),
        ("StatefulSet", {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}, "partition"),
    ],
)
def test_a_workload_whose_pods_never_run_a_fix_is_refused(kind, strategy, words):
    live = statefulset(strategy=strategy)
    live["kind"] = kind
    if kind == "DaemonSet":
        del live["spec"]["replicas"], live["spec"]["serviceName"]
    fixed = manifests.clean(copy.deepcopy(live))
    fixed["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"memory": "256Mi"}
    }
    reasons = guardrails.check(live, fixed, guardrails.Past([], None), SETTINGS)
    assert len(reasons) == 1 and words in reasons[0], reasons
    assert guardrails.rollout_refusal(live) == reasons[0]


def test_rolling_updates_without_a_partition_may_be_fixed():
    for strategy in (None, {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}):
        assert guardrails.rollout_refusal(statefulset(strategy=strategy)) is None
    assert guardrails.rollout_refusal(deployment()) is None


def test_patch_asks_no_model_for_an_ondelete_statefulset_and_rejects(ctx, monkeypatch):
    iid = open_incident(ctx)
    state = ctx.store.load(iid)
    state.evidence.deployment = statefulset(strategy={"type": "OnDelete"})
    state.proposal = None

    def never(*args, **kwargs):
        raise AssertionError("the model was asked for a fix that could never be verified")

    monkeypatch.setattr(fixer, "propose", never)
    done = PATCH(ctx, state)
    assert done.proposal is None
    assert [r.source for r in done.rejections] == ["guardrails"]
    assert "OnDelete" in done.rejections[0].reasons[0]
    assert pipeline.needs_call(done)


# -- a StatefulSet's member count ----------------------------------------------------------


@pytest.mark.parametrize("after", [1, 2, 5])
def test_a_statefulsets_replicas_never_change(after):
    live = statefulset(replicas=3)
    fixed = manifests.clean(copy.deepcopy(live))
    fixed["spec"]["replicas"] = after
    reasons = guardrails.check(live, fixed, guardrails.Past([], None), SETTINGS)
    assert any(r.startswith("spec.replicas: a StatefulSet's member count") for r in reasons)


def test_a_deployments_replicas_stay_tunable_within_bounds():
    live = deployment()
    fixed = manifests.clean(copy.deepcopy(live))
    fixed["spec"]["replicas"] = 2
    assert guardrails.check(live, fixed, guardrails.Past([], None), SETTINGS) == []


# -- verify: pods that run the fix -----------------------------------------------------


def test_a_partitioned_rollout_kubectl_calls_done_proves_nothing():
    sts = statefulset(replicas=3, strategy={"rollingUpdate": {"partition": 3}})
    sts["status"] = {
        "observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 0,
        "currentRevision": "web-old", "updateRevision": "web-fix",
    }  # fmt: skip
    assert pipeline.rollout_status(sts).done  # kubectl's rule
    pods = [
        PodState(name=f"web-{i}", phase="Running", ready=True, reasons=[], restart_count=0,
                 revision_hash="web-old")
        for i in range(3)
    ]  # fmt: skip
    assert pipeline._off_update_revision(sts, pods) == ["web-0", "web-1", "web-2"]
    pods[2] = pods[2].model_copy(update={"revision_hash": "web-fix"})
    assert pipeline._off_update_revision(sts, pods) == ["web-0", "web-1"]
    assert pipeline._off_update_revision(deployment(), pods) == []


# -- one workload, one kind ----------------------------------------------------------------


def test_a_deployment_and_a_statefulset_of_one_name_are_two_incidents(ctx, monkeypatch):
    ctx.kube.healthy = False
    workloads = {"Deployment": ctx.kube.get_deployment("shop", "web"), "StatefulSet": None}
    sts = statefulset()
    sts["status"] = {"observedGeneration": 2, "replicas": 3, "readyReplicas": 0}
    workloads["StatefulSet"] = sts
    monkeypatch.setattr(ctx.kube, "get_workload", lambda ns, kind, name: workloads.get(kind))
    at = datetime.now(UTC)
    signals = [
        Signal(source="events", namespace="shop", workload="web", workload_kind=kind,
               reason="BackOff", message="Back-off restarting failed container",
               observed_at=at)
        for kind in ("StatefulSet", "Deployment")
    ]  # fmt: skip
    opened = pipeline.open_incidents(ctx, signals)
    assert sorted(i.workload.kind for i in opened) == ["Deployment", "StatefulSet"]
    assert ctx.store.lock_holder("app", "shop", "web") == next(
        i.id for i in opened if i.workload.kind == "Deployment"
    )
    assert ctx.store.lock_holder("app", "shop", "web", "StatefulSet") == next(
        i.id for i in opened if i.workload.kind == "StatefulSet"
    )
    # A Deployment's lock key is the one records from before kinds were watched hold.
    assert ctx.store.redis.get("aifixer:lock:app:shop:web") is not None
    assert pipeline.open_incidents(ctx, signals) == []  # both busy now
