"""Failures beside the workload: a claim that never binds, a Service without endpoints.

Detection names them from what Kubernetes shows (the scheduler's VolumeBinding
message, the volume controller's ProvisioningFailed, a Service that selects none of a
running workload's pods); the playbooks fix the object that is wrong, with a value a
fact gives; the guardrails refuse anything else, whoever proposes it.
"""

from __future__ import annotations

import copy
import json

import pytest

from aifixer import detect, fixer, guardrails, manifests, playbooks
from aifixer.adapters.kube import last_applied_selector, pod_reasons, service_names
from aifixer.models import (
    NO_ENDPOINTS,
    UNBOUND_CLAIMS,
    ClaimState,
    Evidence,
    FixProposal,
    ObjectRef,
    ServiceState,
)
from aifixer.settings import Settings

SETTINGS = Settings()
UNBOUND = (
    "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
    "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.."
)


def deployment(claims: tuple[str, ...] = ("data",), labels: dict | None = None) -> dict:
    labels = labels or {"app": "db", "tier": "storage"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "db", "namespace": "obs"},
        "spec": {
            "selector": {"matchLabels": {"app": labels.get("app", "db")}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "db", "image": "obs/db:1"}],
                    "volumes": [
                        {"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims
                    ],
                },
            },
        },
    }


def claim(name: str, cls: str, volume: str | None = None) -> dict:
    spec = {
        "storageClassName": cls,
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "5Gi"}},
        "volumeMode": "Filesystem",
    }
    if volume:
        spec["volumeName"] = volume
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "obs"},
        "spec": spec,
    }


def claim_state(name: str, cls: str, phase: str = "Pending", exists: bool | None = False):
    volume = f"pvc-{name}" if phase == "Bound" else None
    return ClaimState(
        name=name,
        phase=phase,
        storage_class=cls,
        class_exists=exists,
        volume_name=volume,
        manifest=claim(name, cls, volume),
    )


def service(selector: dict, name: str = "db", last: dict | None = None) -> dict:
    meta: dict = {"name": name, "namespace": "obs"}
    if last is not None:
        applied = {"apiVersion": "v1", "kind": "Service", "spec": {"selector": last}}
        meta["annotations"] = {
            "kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied)
        }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def evidence(dep: dict, **beside) -> Evidence:
    return Evidence(
        deployment=dep,
        pods=[],
        events=[],
        logs=[],
        pod_logs={},
        revisions=[],
        last_healthy_template=None,
        template_diff=[],
        healthy=False,
        **beside,
    )


# -- detection ------------------------------------------------------------------------


def test_the_scheduler_waiting_for_claims_is_a_volume_failure_not_a_node_one():
    assert detect.classify("FailedScheduling", UNBOUND) == "VolumePending"
    assert detect.classify("FailedScheduling", "0/3 nodes are available: 3 Insufficient cpu.") == (
        "Unschedulable"
    )
    assert detect.classify("ProvisioningFailed", 'storageclass.storage.k8s.io "x" not found') == (
        "VolumePending"
    )
    assert detect.classify(UNBOUND_CLAIMS) == "VolumePending"
    assert detect.classify(NO_ENDPOINTS) == "NoEndpoints"
    # A pod that waits for its volume never ran: that is the cause to fix first.
    assert detect.dominant(["ProbeFailure", "VolumePending", "Unschedulable"]) == "VolumePending"
    assert detect.dominant(["NoEndpoints", "CrashLoop"]) == "CrashLoop"
    assert detect.dominant(["NoEndpoints", "AppError"]) == "NoEndpoints"


def test_a_pod_pending_for_its_claims_shows_the_volume_reason():
    pod = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": UNBOUND},
            ],
        }
    }  # fmt: skip
    assert pod_reasons(pod) == [UNBOUND_CLAIMS]
    pod["status"]["conditions"][0]["message"] = "0/1 nodes are available: 1 Insufficient cpu."
    assert pod_reasons(pod) == ["Unschedulable"]


def test_a_service_is_the_workload_s_by_its_name_or_its_last_applied_selector():
    dep = deployment()
    assert service_names(service({"app": "dbb"}), dep) == "it carries the workload's name"
    other = service({"app": "db", "version": "v2"}, name="db-svc", last={"app": "db"})
    assert service_names(other, dep) == "its last applied selector matched them"
    # Neither its name nor its last applied selector: not the workload's.
    assert service_names(service({"app": "x"}, name="cache"), dep) is None
    assert service_names(service({"app": "x"}, name="cache", last={"app": "y"}), dep) is None
    # A Service that selects the pods has nothing to fix.
    assert service_names(service({"app": "db"}), dep) is None


def test_a_last_applied_selector_that_is_not_a_map_of_strings_is_ignored():
    svc = service({"app": "x"}, last={"app": "db"})
    assert last_applied_selector(svc) == {"app": "db"}
    for text in ("not json", json.dumps({"spec": {"selector": {"app": 1}}}), json.dumps([1])):
        svc["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = text
        assert last_applied_selector(svc) is None


# -- the claim ----------------------------------------------------------------------------


def claim_evidence(*claims: ClaimState, classes=("standard", "standard-rwo"), default="standard"):
    return evidence(
        deployment(tuple(c.name for c in claims)),
        claims=list(claims),
        storage_classes=list(classes),
        default_storage_class=default,
    )


def test_a_claim_of_a_missing_class_is_recreated_with_the_default_class():
    ev = claim_evidence(claim_state("data", "fast-ssd"))
    [fix] = playbooks.candidates(ev, "VolumePending", SETTINGS)
    assert fix.target == ObjectRef(kind="PersistentVolumeClaim", namespace="obs", name="data")
    assert [(c.path, c.before, c.after) for c in fix.changes] == [
        ("spec.storageClassName", "fast-ssd", "standard")
    ]
    assert "default" in fix.rationale
    assert fixer.object_reasons(ev, fix, SETTINGS) == []


def test_the_class_the_workload_s_other_claims_bound_with_wins_over_the_default():
    ev = claim_evidence(
        claim_state("uploads", "standard-rwo", phase="Bound", exists=True),
        claim_state("cache", "ssd-premium"),
    )
    [fix] = playbooks.candidates(ev, "VolumePending", SETTINGS)
    assert fix.target.name == "cache"
    assert fix.manifest["spec"]["storageClassName"] == "standard-rwo"


@pytest.mark.parametrize(
    "state, classes, default",
    [
        (claim_state("data", "fast-ssd", phase="Bound"), ("standard",), "standard"),
        (claim_state("data", "standard", exists=True), ("standard",), "standard"),
        (claim_state("data", "fast-ssd", exists=None), (), None),  # classes unread
        (claim_state("data", "fast-ssd"), ("gold",), None),  # no default, no sibling
    ],
    ids=["bound", "class-exists", "classes-unread", "nothing-to-choose"],
)
def test_no_claim_fix_without_a_fact_to_take_the_class_from(state, classes, default):
    ev = claim_evidence(state, classes=classes, default=default)
    assert playbooks.candidates(ev, "VolumePending", SETTINGS) == []


def _claim_fix(edit=None, live_edit=None) -> list[str]:
    live = claim("data", "fast-ssd")
    if live_edit:
        live_edit(live)
    proposed = copy.deepcopy(claim("data", "fast-ssd"))
    proposed["spec"]["storageClassName"] = "standard"
    if edit:
        edit(proposed)
    return guardrails.check_object(live, proposed, deployment(), ["standard"], SETTINGS)


def test_the_guardrails_let_only_the_class_of_an_unbound_claim_change():
    assert _claim_fix() == []
    assert _claim_fix(live_edit=lambda c: c.update(status={"phase": "Pending"})) == []

    def bigger(c):
        c["spec"]["resources"]["requests"]["storage"] = "50Gi"

    def labelled(c):
        c["metadata"]["labels"] = {"team": "x"}

    def renamed(c):
        c["metadata"]["name"] = "other"

    def unknown(c):
        c["spec"]["storageClassName"] = "gold"

    cases = [
        (bigger, "spec.resources.requests.storage may not change"),
        (labelled, "metadata.labels"),
        (renamed, "metadata.name may not change"),
        (unknown, "is not a class the cluster has"),
    ]
    for edit, why in cases:
        reasons = _claim_fix(edit)
        assert any(why in r for r in reasons), reasons


def test_a_bound_claim_or_one_with_a_volume_is_never_recreated():
    for live_edit in (
        lambda c: c.update(status={"phase": "Bound"}),
        lambda c: c["spec"].update(volumeName="pvc-123"),
        lambda c: c.update(status={"phase": "Lost"}),
    ):
        reasons = _claim_fix(live_edit=live_edit)
        assert reasons and "never re-created" in reasons[0], reasons


def test_a_claim_the_workload_does_not_mount_or_whose_class_exists_is_not_fixed():
    live, proposed = claim("cache", "fast-ssd"), claim("cache", "standard")
    assert (
        "not mounted"
        in guardrails.check_object(live, proposed, deployment(("data",)), ["standard"], SETTINGS)[0]
    )
    live, proposed = claim("data", "gold"), claim("data", "standard")
    assert (
        "exists"
        in guardrails.check_object(live, proposed, deployment(), ["standard", "gold"], SETTINGS)[0]
    )


def test_a_claim_in_a_namespace_aifixer_may_not_change_is_refused():
    live, proposed = claim("data", "fast-ssd"), claim("data", "standard")
    for obj in (live, proposed):
        obj["metadata"]["namespace"] = "kube-system"
    dep = deployment()
    dep["metadata"]["namespace"] = "kube-system"
    assert guardrails.check_object(live, proposed, dep, ["standard"], SETTINGS)


# -- the Service ----------------------------------------------------------------------------


def service_evidence(svc: dict, labels: dict | None = None) -> Evidence:
    state = ServiceState(
        name=svc["metadata"]["name"],
        selector=svc["spec"]["selector"],
        last_applied_selector=last_applied_selector(svc),
        manifest=manifests.clean(svc),
    )
    return evidence(deployment((), labels), services=[state])


def test_a_typo_in_a_service_selector_takes_the_pods_value_for_its_key():
    ev = service_evidence(service({"app": "dbb"}))
    [fix] = playbooks.candidates(ev, "NoEndpoints", SETTINGS)
    assert fix.target == ObjectRef(kind="Service", namespace="obs", name="db")
    assert [(c.path, c.before, c.after) for c in fix.changes] == [
        ("spec.selector.app", "dbb", "db")
    ]
    assert fixer.object_reasons(ev, fix, SETTINGS) == []


def test_the_last_applied_selector_comes_first_and_an_extra_key_is_dropped():
    ev = service_evidence(service({"app": "db", "version": "v2"}, name="gw", last={"app": "db"}))
    [fix] = playbooks.candidates(ev, "NoEndpoints", SETTINGS)
    assert fix.manifest["spec"]["selector"] == {"app": "db"}
    assert [(c.path, c.after) for c in fix.changes] == [("spec.selector.version", None)]
    assert "last applied" in fix.rationale


def test_a_key_the_pods_do_not_carry_falls_back_to_the_workload_s_selector():
    ev = service_evidence(service({"component": "db"}))
    [fix] = playbooks.candidates(ev, "NoEndpoints", SETTINGS)
    assert fix.manifest["spec"]["selector"] == {"app": "db"}


def _service_fix(edit) -> list[str]:
    live = service({"app": "dbb"})
    proposed = copy.deepcopy(live)
    proposed["spec"]["selector"] = {"app": "db"}
    edit(proposed)
    return guardrails.check_object(live, proposed, deployment(), [], SETTINGS)


def test_the_guardrails_let_only_a_selector_matching_the_pods_through():
    assert _service_fix(lambda s: None) == []

    def port(s):
        s["spec"]["ports"][0]["targetPort"] = 22

    def external(s):
        s["spec"]["type"] = "LoadBalancer"

    def elsewhere(s):
        s["spec"]["selector"] = {"app": "payments"}

    def widened(s):
        s["spec"]["selector"] = {}

    def injected(s):
        s["spec"]["selector"] = {"app": "db", "x": "$(rm -rf /)"}

    cases = [
        (port, "spec.ports[0].targetPort may not change"),
        (external, "spec.type may not change"),
        (elsewhere, "does not match the workload's pod template labels"),
        (widened, "empty"),
        (injected, "is not a label value"),
    ]
    for edit, why in cases:
        reasons = _service_fix(edit)
        assert any(why in r for r in reasons), (why, reasons)


def test_a_proposal_may_not_name_one_object_and_carry_another():
    ev = service_evidence(service({"app": "dbb"}))
    [fix] = playbooks.candidates(ev, "NoEndpoints", SETTINGS)
    forged = FixProposal(**{**fix.model_dump(), "manifest": {**fix.manifest, "kind": "Secret"}})
    assert fixer.object_reasons(ev, forged, SETTINGS) == ["the proposal is not the object it names"]
    other = fix.model_copy(update={"target": ObjectRef(kind="Service", namespace="obs", name="x")})
    assert fixer.object_reasons(ev, other, SETTINGS) == [
        "the proposal names no object the evidence read"
    ]


def test_the_facts_name_the_claim_and_the_service_without_quoting_anyone():
    ev = claim_evidence(claim_state("data", "fast-ssd"))
    assert fixer.object_facts(ev) == [
        "PersistentVolumeClaim data is Pending: its storage class fast-ssd does not exist in "
        "the cluster",
        "storage classes of the cluster: standard (default), standard-rwo",
    ]
    ev = service_evidence(service({"app": "dbb"}))
    assert fixer.object_facts(ev) == [
        "Service db selects app=dbb, which matches none of the workload's pods: it has 0 endpoints"
    ]


def test_every_new_class_speaks_in_both_languages():
    for fc in detect.OBJECT_CLASSES:
        assert fc in playbooks.PLAYBOOKS and fc in fixer.CLASS_PHRASES
        for language in ("en", "fr"):
            assert fixer.SPOKEN_CLASS[language][fc]
