"""A StatefulSet's fix undone for real, through the real client and the sandbox's controller.

The sandbox's StatefulSet controller does what Kubernetes does: a member stuck on a
broken revision is not replaced when the template is reverted. These tests hold the
pipeline to it: a rollback is recorded only once no pod runs the fix; an OnDelete or a
partitioned set is never unblocked (nor changed by a fix), and a partitioned rollout
kubectl calls done proves nothing.
"""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kube_cluster import polled

from aifixer import guardrails, manifests, pipeline
from aifixer.adapters.errors import TransientError
from aifixer.adapters.kube import Kube, rollout_status
from aifixer.models import (
    Diagnosis,
    Evidence,
    FieldChange,
    FixProposal,
    Incident,
    IncidentState,
    Workload,
)
from aifixer.settings import Settings
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.scenario import bundled_dir
from tests.unit.fakeports import FakeForge, FakeLoki, FakeModel, FakePhone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SCENARIOS = bundled_dir()
SPEED = 40
NS, NAME = "web", "session-store"
IMAGE = "spec.template.spec.containers[0].image"
ORIGINAL, SERVING, BROKEN_FIX = (
    "cache/session-store:7.2.l",  # the release: a tag never pushed
    "cache/session-store:7.2.0",  # what session-store-0 still runs
    "cache/session-store:7.2.9",  # a fix that is no better: never pushed either
)


def _image(obj: dict) -> str:
    spec = obj["spec"]
    return (spec.get("template", {}).get("spec") or spec)["containers"][0]["image"]


def _images(kube: Kube, live: dict) -> dict[str, str]:
    return {p["metadata"]["name"]: _image(p) for p in kube.pods_of(live)}


def _settings(world, tmp_path: Path, redis_url: str) -> Settings:
    return Settings(
        kubeconfig=world.endpoints.kubeconfig,
        state_dir=tmp_path,
        request_timeout_s=10,
        redis_url=redis_url,
        memory_enabled=False,
        call_file=tmp_path / "calls.jsonl",
        incidents_file=tmp_path / "incidents.jsonl",
        verify_stability_s=0.0,
        verify_deadline_s=300.0,
    )


def _stuck_world(make_world):
    """session-store: member 1 stuck on the release (ImagePullBackOff), 0 serving 7.2.0."""
    world = make_world(
        scenario_mod.load(SCENARIOS / "sts-image-typo-session-store.yaml"), speed=SPEED
    )
    return world


def _wait_stuck(kube: Kube) -> dict:
    def stuck():
        live = kube.get_workload(NS, "StatefulSet", NAME)
        pod = kube.get_pod(NS, f"{NAME}-1")
        return (
            live is not None
            and pod is not None
            and _image(pod) == ORIGINAL
            and {"ErrImagePull", "ImagePullBackOff"} & set(kube.pod_states(live)[-1].reasons)
            and live
        )

    live = polled(stuck)
    assert live, "session-store-1 never got stuck on the release"
    return live


def _observed(kube: Kube) -> dict:
    def seen():
        w = kube.get_workload(NS, "StatefulSet", NAME)
        return w["status"].get("observedGeneration") == w["metadata"]["generation"] and w

    live = polled(seen)
    assert live
    return live


def _incident(ctx: pipeline.Context, live: dict, fixed_image: str) -> IncidentState:
    kube = ctx.kube
    opened = datetime.now(UTC)
    fp = "fp-session-store-imagepull"
    fixed = manifests.clean(copy.deepcopy(live))
    fixed["spec"]["template"]["spec"]["containers"][0]["image"] = fixed_image
    generation = live["metadata"]["generation"]
    state = IncidentState(
        incident=Incident(
            id=f"{fp}-{int(opened.timestamp() * 1000)}", fingerprint=fp,
            workload=Workload(cluster=ctx.settings.cluster_name, namespace=NS,
                              kind="StatefulSet", name=NAME),
            failure_class="ImagePull", opened_at=opened, signals=[], generation=generation,
        ),
        evidence=Evidence(
            deployment=manifests.clean(live), pods=kube.pod_states(live), events=[], logs=[],
            pod_logs={}, revisions=[], last_healthy_template=None, template_diff=[],
            healthy=False, generation=generation,
        ),
        diagnosis=Diagnosis(summary="The release names a tag that was never pushed.",
                            root_cause="bad tag", failure_class="ImagePull", source="playbook"),
        proposal=FixProposal(
            source="playbook", strategy="fix-image-tag", rationale="a tag of the repository",
            manifest=fixed,
            changes=[FieldChange(path=IMAGE, before=ORIGINAL, after=fixed_image)],
        ),
    )  # fmt: skip
    assert ctx.store.create(state, ctx.store.lock_key(state))
    return state


def test_a_failed_fix_is_rolled_back_only_once_no_member_runs_it(make_world, tmp_path, redis_url):
    world = _stuck_world(make_world)
    s = _settings(world, tmp_path, redis_url)
    ctx = pipeline.Context(s)
    kube = Kube(s)
    ctx.__dict__.update(
        kube=kube, loki=FakeLoki(), forge=FakeForge(), phone=FakePhone(), model=FakeModel()
    )
    live = _wait_stuck(kube)
    before = _images(kube, live)
    assert before == {f"{NAME}-0": SERVING, f"{NAME}-1": ORIGINAL}
    state = _incident(ctx, live, BROKEN_FIX)

    state = pipeline.apply(ctx, state)
    assert state.apply is not None

    # Verify unblocks the stalled member: it comes back on the fix, and is stuck again.
    def fix_running():
        try:
            pipeline.verify(ctx, state)
        except pipeline.NotYet:
            pass
        return _images(kube, live).get(f"{NAME}-1") == BROKEN_FIX

    assert polled(fix_running, every=0.5)
    assert polled(
        lambda: (
            {"ErrImagePull", "ImagePullBackOff"}
            & set(next(p for p in kube.pod_states(live) if p.name == f"{NAME}-1").reasons)
        )
    )

    # Not healthy in time: the original comes back, and the rollback is done only once
    # the member running the fix was replaced.
    ctx.settings.verify_deadline_s = 0.0
    seen_pending = []

    def rolled_back():
        nonlocal state
        try:
            state = pipeline.verify(ctx, state)
        except TransientError as exc:
            seen_pending.append(str(exc))
            return False
        return state.verification is not None

    assert polled(rolled_back, every=0.5)
    assert state.verification.rolled_back is True and state.verification.ok is False
    assert state.verification.reason.startswith("not healthy within 0s")
    assert _images(kube, live) == before  # nobody runs the fix any more
    assert _image(kube.get_workload(NS, "StatefulSet", NAME)) == ORIGINAL
    assert seen_pending and all("not converged yet" in p for p in seen_pending)
    assert not ctx.store.hgetall("rollback", state.incident.id)
    kube.close()


def test_an_ondelete_statefulset_is_never_unblocked_nor_fixed(make_world, tmp_path):
    world = _stuck_world(make_world)
    kube = Kube(Settings(kubeconfig=world.endpoints.kubeconfig, state_dir=tmp_path,
                         request_timeout_s=10))  # fmt: skip
    _wait_stuck(kube)
    kube.apps.patch_namespaced_stateful_set(
        NAME, NS, [{"op": "replace", "path": "/spec/updateStrategy", "value": {"type": "OnDelete"}}]
    )
    live = _observed(kube)
    fix = manifests.clean(copy.deepcopy(live))
    fix["spec"]["template"]["spec"]["containers"][0]["image"] = SERVING
    reasons = guardrails.check(live, fix, guardrails.Past([], None), Settings())
    assert len(reasons) == 1 and "OnDelete" in reasons[0]

    # A fix applied anyway (by a record from before the refusal): nothing is deleted, so
    # OnDelete does not recreate the stuck member from whatever template is current.
    uid = kube.get_pod(NS, f"{NAME}-1")["metadata"]["uid"]
    kube.apply(fix, resource_version=live["metadata"]["resourceVersion"])
    observed = _observed(kube)
    assert rollout_status(observed).failed  # kubectl cannot follow OnDelete
    assert kube.unblock_rollout(observed) == []
    time.sleep(1.0)
    assert kube.get_pod(NS, f"{NAME}-1")["metadata"]["uid"] == uid
    kube.close()


def test_a_partitioned_statefulset_is_never_unblocked_below_the_partition_nor_proven(
    make_world, tmp_path
):
    world = _stuck_world(make_world)
    kube = Kube(Settings(kubeconfig=world.endpoints.kubeconfig, state_dir=tmp_path,
                         request_timeout_s=10))  # fmt: skip
    _wait_stuck(kube)
    kube.apps.patch_namespaced_stateful_set(
        NAME, NS,
        [{"op": "replace", "path": "/spec/updateStrategy/rollingUpdate/partition", "value": 2}],
    )  # fmt: skip
    live = _observed(kube)
    fix = manifests.clean(copy.deepcopy(live))
    # A new revision (7.2.1, pushed): with partition 2 neither member is updated to it.
    fix["spec"]["template"]["spec"]["containers"][0]["image"] = "cache/session-store:7.2.1"
    reasons = guardrails.check(live, fix, guardrails.Past([], None), Settings())
    assert len(reasons) == 1 and "partition" in reasons[0]

    uid = kube.get_pod(NS, f"{NAME}-1")["metadata"]["uid"]
    kube.apply(fix, resource_version=live["metadata"]["resourceVersion"])
    observed = _observed(kube)
    # Below the partition the controller would recreate the old revision: not deleted.
    assert kube.unblock_rollout(observed) == []
    time.sleep(1.0)
    assert kube.get_pod(NS, f"{NAME}-1")["metadata"]["uid"] == uid
    # No pod runs the fix's revision: whatever kubectl says, verify finds nothing proven.
    off = pipeline._off_update_revision(observed, kube.pod_states(observed))
    assert sorted(off) == [f"{NAME}-0", f"{NAME}-1"]
    kube.close()
