"""The Kubernetes adapter on StatefulSets and DaemonSets, through the real client.

Each test starts a world from a bundled scenario broken by its change and drives the
adapter as detection, diagnosis, apply, verify and rollback do: owners found by owner
references, history read from ControllerRevisions, the guarded apply, kubectl's rollout
rule for the kind, and the StatefulSet's forced rollback touching only its stuck pods.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
from kube_cluster import polled

from aifixer import manifests
from aifixer.adapters.kube import Kube, rollout_status
from aifixer.settings import Settings
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.scenario import bundled_dir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SCENARIOS = bundled_dir()
SPEED = 40


def _kube(world, tmp_path: Path) -> Kube:
    return Kube(
        Settings(kubeconfig=world.endpoints.kubeconfig, state_dir=tmp_path, request_timeout_s=10)
    )


def _image(obj: dict) -> str:
    return (
        obj["spec"]["containers"][0]["image"]
        if "containers" in obj["spec"]
        else (obj["spec"]["template"]["spec"]["containers"][0]["image"])
    )


def _fixed(live: dict, image: str) -> dict:
    fix = manifests.clean(copy.deepcopy(live))
    fix["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return fix


def test_statefulset_owner_history_apply_forced_rollback_and_restore(make_world, tmp_path):
    sc = scenario_mod.load(SCENARIOS / "sts-image-typo-session-store.yaml")
    world = make_world(sc, speed=SPEED)
    kube = _kube(world, tmp_path)

    # Detection: the stuck member's signals name the StatefulSet.
    signals = polled(lambda: [s for s in kube.pod_signals() if s.reason == "ImagePullBackOff"])
    assert signals and {(s.workload_kind, s.workload) for s in signals} == {
        ("StatefulSet", "session-store")
    }
    assert kube.owner_of_pod("web", "session-store-1") == ("StatefulSet", "session-store")
    assert kube.owner_deployment("web", "session-store-1") is None
    events = polled(lambda: kube.warning_signals(None)[0])
    assert any(s.workload_kind == "StatefulSet" for s in events if s.workload == "session-store")

    live = kube.get_workload("web", "StatefulSet", "session-store")
    verdict = rollout_status(live)
    assert not verdict.done and verdict.message == "Waiting for 1 pods to be ready..."

    # History: two ControllerRevisions; the serving one is the last healthy template.
    revisions = kube.revisions(live)
    assert [(r.revision, r.current) for r, _ in revisions] == [(2, True), (1, False)]
    assert revisions[0][0].images == ["cache/session-store:7.2.l"]
    assert revisions[1][0].ready_replicas == 1  # session-store-0 still serves 7.2.0
    healthy = kube.last_healthy_template(live, revisions)
    assert healthy is not None and _image(healthy) == "cache/session-store:7.2.0"
    events_of = kube.events_of(live, kube.pods_of(live))
    assert any(e.object == "StatefulSet/session-store" for e in events_of)

    # Apply the fix: the template alone does not unstick the member (OrderedReady)...
    rv = live["metadata"]["resourceVersion"]
    fix = _fixed(live, "cache/session-store:7.2.0")
    kube.dry_run_apply(fix)
    applied = kube.apply(fix, resource_version=rv)
    assert _image(applied) == "cache/session-store:7.2.0"
    observed = polled(
        lambda: (
            (w := kube.get_workload("web", "StatefulSet", "session-store"))["status"].get(
                "observedGeneration"
            )
            == w["metadata"]["generation"]
            and w
        )
    )
    time.sleep(0.5)
    stuck = kube.get_pod("web", "session-store-1")
    assert _image(stuck) == "cache/session-store:7.2.l"
    # ...the forced rollback deletes exactly that pod, never the ready member.
    assert kube.unblock_rollout(observed) == ["session-store-1"]
    done = polled(
        lambda: rollout_status(kube.get_workload("web", "StatefulSet", "session-store")).done
    )
    assert done
    assert {_image(p) for p in kube.pods_of(observed)} == {"cache/session-store:7.2.0"}
    assert kube.revisions(observed)[0][0].images == ["cache/session-store:7.2.0"]

    # Rollback puts the original spec back, by update.
    restored = kube.restore(live, expected_generation=applied["metadata"]["generation"])
    assert _image(restored) == "cache/session-store:7.2.l"


def test_daemonset_owner_history_and_rollout(make_world, tmp_path):
    sc = scenario_mod.load(SCENARIOS / "ds-image-typo-log-shipper.yaml")
    world = make_world(sc, speed=SPEED)
    kube = _kube(world, tmp_path)

    signals = polled(lambda: [s for s in kube.pod_signals() if s.reason == "ImagePullBackOff"])
    assert {(s.workload_kind, s.workload) for s in signals} == {("DaemonSet", "log-shipper")}
    live = kube.get_workload("observability", "DaemonSet", "log-shipper")
    verdict = rollout_status(live)
    assert not verdict.done and verdict.message.startswith(
        'Waiting for daemon set "log-shipper" rollout to finish'
    )
    revisions = kube.revisions(live)
    assert [r.current for r, _ in revisions] == [True, False]
    assert revisions[1][0].ready_replicas == 1  # the node not yet replaced
    healthy = kube.last_healthy_template(live, revisions)
    assert healthy is not None and _image(healthy) == "obs/log-shipper:3.0.2"
    assert kube.unblock_rollout(live) == []  # a DaemonSet replaces its pods by itself

    fix = _fixed(live, "obs/log-shipper:3.0.2")
    kube.apply(fix, resource_version=live["metadata"]["resourceVersion"])
    assert polled(
        lambda: rollout_status(kube.get_workload("observability", "DaemonSet", "log-shipper")).done
    )
    pods = kube.pods_of(live)
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["node-1", "node-2"]
    assert {_image(p) for p in pods} == {"obs/log-shipper:3.0.2"}
