"""A claim's fix undone for real, and a forged record never written back.

The fix to a claim of a class the cluster does not have re-creates it with one it has.
When that fix does not verify, the claim it deleted comes back — as the cluster held it,
never as a record in Redis says it was: a snapshot rewritten to pre-bind a volume or to
name another claim is refused, at the rollback and at a redelivered apply alike.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
from kube_cluster import polled

from aifixer import pipeline
from aifixer.adapters.errors import PermanentError
from aifixer.adapters.kube import Kube
from aifixer.models import Incident, IncidentState, Workload
from aifixer.settings import Settings
from aifixer_sandbox.scenario import bundled_dir
from tests.unit.fakeports import FakeForge, FakeModel, FakePhone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NS, NAME, CLAIM = "obs", "metrics-db", "metrics-data"


@pytest.fixture
def fixed(make_world, tmp_path, redis_url):
    """metrics-db's claim re-created with the cluster's class by a real apply."""
    world = make_world(bundled_dir() / "pvc-missing-class-metrics-db.yaml", speed=40)
    s = Settings(
        kubeconfig=world.endpoints.kubeconfig, loki_url=world.endpoints.loki,
        state_dir=tmp_path, request_timeout_s=10,
        redis_url=redis_url, memory_enabled=False, call_file=tmp_path / "calls.jsonl",
        incidents_file=tmp_path / "incidents.jsonl", verify_stability_s=0.0,
        verify_deadline_s=300.0,
    )  # fmt: skip
    ctx = pipeline.Context(s)
    kube = Kube(s)
    ctx.__dict__.update(kube=kube, forge=FakeForge(), phone=FakePhone(), model=FakeModel())
    live = polled(lambda: kube.get_workload(NS, "Deployment", NAME))
    assert live and polled(lambda: kube.get_claim(NS, CLAIM))
    opened = datetime.now(UTC)
    fp = "fp-metrics-db-volume"
    state = IncidentState(
        incident=Incident(
            id=f"{fp}-{int(opened.timestamp() * 1000)}", fingerprint=fp,
            workload=Workload(cluster=s.cluster_name, namespace=NS, kind="Deployment",
                              name=NAME),
            failure_class="VolumePending", opened_at=opened, signals=[],
            generation=live["metadata"]["generation"],
        ),
    )  # fmt: skip
    ctx.redis.delete(ctx.store.lock_key(state))  # another test's incident on metrics-db
    assert ctx.store.create(state, ctx.store.lock_key(state))
    state = pipeline.patch(ctx, pipeline.diagnose(ctx, state))
    assert state.proposal is not None and state.proposal.target is not None, state.rejections
    assert state.proposal.target.name == CLAIM
    state = pipeline.apply(ctx, state)
    claim = kube.get_claim(NS, CLAIM)
    assert claim["spec"]["storageClassName"] == "standard"
    yield ctx, state
    ctx.redis.delete(ctx.store.lock_key(state))
    kube.close()


def _forge_snapshot(ctx, state, edit) -> None:
    snap = ctx.store.snapshot(state.incident.id)
    edit(snap.manifest)
    ctx.redis.set(ctx.store.key("snapshot", state.incident.id), snap.model_dump_json())


def test_a_claim_fix_that_does_not_verify_brings_the_original_claim_back(fixed):
    """Between the re-creation's delete and its create (the claim is gone): the rollback
    creates the claim the cluster held, its class and all."""
    ctx, state = fixed
    ctx.kube.delete_claim(ctx.kube.get_claim(NS, CLAIM))
    assert polled(lambda: ctx.kube.get_claim(NS, CLAIM) is None)
    state = pipeline.rollback(ctx, state, "not healthy within 0s")
    assert state.verification.rolled_back is True, state.verification.reason
    assert ctx.kube.get_claim(NS, CLAIM)["spec"]["storageClassName"] == "fast-ssd"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m["spec"].update(volumeName="pv-of-another-tenant"), "with a volume"),
        (lambda m: m["metadata"].update(namespace="kube-system"), "is not the Persistent"),
        (lambda m: m["metadata"].update(name="payments-data"), "is not the Persistent"),
        (lambda m: m["spec"]["resources"]["requests"].update(storage="5Ti"), "may not change"),
    ],
    ids=["a-volume", "another-namespace", "another-claim", "another-size"],
)
def test_a_forged_claim_snapshot_is_never_created(fixed, edit, expected):
    ctx, state = fixed
    _forge_snapshot(ctx, state, edit)
    state = pipeline.rollback(ctx, state, "not healthy within 0s")
    assert state.verification.rolled_back is False
    assert "not rolled back" in state.verification.reason
    assert expected in state.verification.reason, state.verification.reason
    claim = ctx.kube.get_claim(NS, CLAIM)  # the fix's claim is left as it is
    assert claim["spec"]["storageClassName"] == "standard"
    assert ctx.kube.get_claim(NS, "payments-data") is None


def test_a_redelivered_apply_after_the_delete_recreates_nothing_a_record_forged(fixed):
    """The re-creation's delete landed, then the worker was lost; the snapshot was
    rewritten meanwhile: the redelivered apply re-checks it before creating anything."""
    ctx, state = fixed
    ctx.kube.delete_claim(ctx.kube.get_claim(NS, CLAIM))
    assert polled(lambda: ctx.kube.get_claim(NS, CLAIM) is None)
    _forge_snapshot(ctx, state, lambda m: m["spec"].update(volumeName="pv-of-another-tenant"))
    with pytest.raises(PermanentError, match="refused immediately before writing"):
        pipeline.apply_object(ctx, state)
    assert ctx.kube.get_claim(NS, CLAIM) is None


@pytest.mark.parametrize(
    ("scenario", "kind", "namespace", "name"),
    [
        ("ds-image-typo-log-shipper.yaml", "DaemonSet", "observability", "log-shipper"),
        ("sts-image-typo-session-store.yaml", "StatefulSet", "web", "session-store"),
        ("pvc-missing-class-metrics-db.yaml", "Deployment", NS, NAME),
    ],
)
def test_a_workload_had_the_templates_it_ran_and_no_other(
    make_world, tmp_path, scenario, kind, namespace, name
):
    """What a rollback may write back: the release before the change and the change
    itself, as their ReplicaSets or ControllerRevisions hold them; not an edited copy."""
    world = make_world(bundled_dir() / scenario, speed=40)
    kube = Kube(Settings(kubeconfig=world.endpoints.kubeconfig, state_dir=tmp_path))
    live = polled(lambda: kube.get_workload(namespace, kind, name))
    assert live
    revisions = polled(lambda: kube.revisions(live) and kube.revisions(live))
    templates = [t for _, t in revisions]
    assert templates and all(kube.had_template(live, t) for t in templates)
    assert kube.had_template(live, live["spec"]["template"])
    edited = copy.deepcopy(live["spec"]["template"])
    edited["spec"]["containers"][0]["command"] = ["sh", "-c", "id"]
    assert not kube.had_template(live, edited)
    assert not kube.had_template(live, None)
    kube.close()
