"""The Kubernetes adapter against the sandbox cluster, over HTTP, through the real client.

Each test starts a world from a bundled scenario (broken by its change, unless said
otherwise) and drives the adapter the way detection, diagnosis, apply and verify do.
"""

from __future__ import annotations

import copy
import socket
import time
from pathlib import Path

import pytest
from kube_cluster import polled

from aifixer import detect
from aifixer.adapters.errors import PermanentError, TransientError
from aifixer.adapters.kube import Kube
from aifixer.settings import Settings
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.scenario import bundled_dir

pytestmark = pytest.mark.integration

SCENARIOS = bundled_dir()
SPEED = 40


def _kube(world, tmp_path: Path, **overrides) -> Kube:
    settings = Settings(
        kubeconfig=world.endpoints.kubeconfig,
        state_dir=tmp_path,
        request_timeout_s=10,
        **overrides,
    )
    return Kube(settings)


def _manifest(sc, which: str = "manifests") -> dict:
    files = getattr(sc, which)
    return next(d for mf in files for d in mf.documents() if d["kind"] == "Deployment")


def _limits(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.fixture
def oom(make_world, tmp_path):
    sc = scenario_mod.load(SCENARIOS / "oom-report-api.yaml")
    world = make_world(sc, speed=SPEED)
    return sc, world, _kube(world, tmp_path)


@pytest.mark.timeout(120)
def test_warning_signals_are_mapped_to_the_deployment_and_never_repeat(oom):
    _, _, kube = oom
    seen: set[tuple[str, str]] = set()
    cursor = None
    signals = []

    def poll():
        nonlocal cursor
        batch, cursor = kube.warning_signals(cursor)
        for s in batch:
            key = (s.raw["metadata"]["uid"], s.raw["metadata"]["resourceVersion"])
            assert key not in seen, f"event {key} reported twice"
            seen.add(key)
        signals.extend(batch)
        return any(s.reason == "BackOff" for s in signals)

    assert polled(poll), f"no BackOff among {[s.reason for s in signals]}"
    assert cursor
    mine = [s for s in signals if s.namespace == "shop"]
    assert mine and all(s.source == "events" for s in mine)
    unmapped = [(s.reason, s.pod) for s in mine if s.workload != "report-api"]
    assert not unmapped, f"events not mapped to the Deployment: {unmapped}"
    assert all(s.pod.startswith("report-api-") for s in mine if s.pod)
    groups = detect.group_signals(signals)
    classes = {detect.signal_class(s) for s in groups[("shop", "report-api")]}
    assert "CrashLoop" in classes


@pytest.mark.timeout(120)
def test_an_expired_cursor_lists_again(oom):
    _, _, kube = oom
    assert polled(lambda: kube.warning_signals(None)[0])
    # resourceVersion 1 is long compacted away in the sandbox's store: 410 Gone.
    signals, cursor = kube.warning_signals("1")
    assert signals and int(cursor) > 1


@pytest.mark.timeout(120)
def test_pod_signals_and_pod_states_show_the_oom(oom):
    _, _, kube = oom
    signals = polled(lambda: [s for s in kube.pod_signals() if s.reason == "OOMKilled"])
    assert signals and signals[0].workload == "report-api"
    assert signals[0].raw["exitCode"] == 137
    assert kube.owner_deployment("shop", signals[0].pod) == "report-api"
    assert kube.owner_deployment("shop", "no-such-pod") is None

    dep = kube.get_deployment("shop", "report-api")
    # A pod's first OOM shows in its state; its last termination, once it has restarted.
    broken = polled(
        lambda: [p for p in kube.pod_states(dep) if "OOMKilled" in p.reasons and p.last_termination]
    )
    assert broken and broken[0].last_termination["reason"] == "OOMKilled"
    states = kube.pod_states(dep)
    assert any(p.ready for p in states), "the old ReplicaSet keeps serving"
    # The kubelet's BackOff event follows the restart it delays.
    backoff = polled(
        lambda: [
            e
            for e in kube.events_of(dep, kube.pods_of(dep))
            if e.reason == "BackOff" and e.object.startswith("Pod/report-api-")
        ]
    )
    assert backoff
    logs = kube.pod_logs("shop", broken[0].name, "report-api", previous=True)
    assert logs is None or isinstance(logs, str)
    assert kube.pod_logs("shop", "no-such-pod", "report-api") is None


@pytest.mark.timeout(120)
def test_rollout_and_revisions_of_a_broken_deployment(oom):
    sc, _, kube = oom
    status = kube.rollout("report-api", "shop")
    assert not status.done and not status.failed
    assert "Waiting for deployment" in status.message

    dep = kube.get_deployment("shop", "report-api")
    assert dep["kind"] == "Deployment" and "managedFields" in dep["metadata"]  # camelCase JSON
    revisions = kube.revisions(dep)
    assert [r.revision for r, _ in revisions] == [2, 1]
    assert revisions[0][0].current and not revisions[1][0].current
    healthy = kube.last_healthy_template(dep, revisions)
    assert healthy["spec"]["containers"][0]["resources"]["limits"] == _limits(_manifest(sc))
    assert "pod-template-hash" not in healthy["metadata"]["labels"]
    assert kube.last_healthy_template(dep) == healthy
    assert kube.get_deployment("shop", "nope") is None
    with pytest.raises(PermanentError) as err:
        kube.rollout("nope", "shop")
    assert err.value.status == 404


@pytest.mark.timeout(120)
def test_rollout_of_a_healthy_deployment_is_done(make_world, tmp_path):
    sc = scenario_mod.load(SCENARIOS / "oom-report-api.yaml")
    kube = _kube(make_world(sc, speed=SPEED, apply_change=False), tmp_path)
    status = kube.rollout("report-api", "shop")
    assert status.done and status.message == 'deployment "report-api" successfully rolled out'
    dep = kube.get_deployment("shop", "report-api")
    assert kube.last_healthy_template(dep) is None  # one revision: nothing earlier


@pytest.mark.timeout(120)
def test_dry_run_of_an_invalid_manifest_is_refused_and_changes_nothing(oom):
    sc, _, kube = oom
    before = kube.get_deployment("shop", "report-api")
    bad = copy.deepcopy(_manifest(sc))
    bad["spec"]["replicas"] = -1
    with pytest.raises(PermanentError) as err:
        kube.dry_run_apply(bad)
    assert err.value.status == 422
    assert "spec.replicas" in err.value.message
    good = _manifest(sc)
    preview = kube.dry_run_apply(good)
    assert _limits(preview) == _limits(good)
    after = kube.get_deployment("shop", "report-api")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert _limits(after) == {"memory": "64Mi"}


@pytest.mark.timeout(150)
def test_apply_heals_and_restore_breaks_again(oom):
    sc, _, kube = oom
    original = kube.get_deployment("shop", "report-api")
    applied = kube.apply(_manifest(sc))
    assert _limits(applied) == {"memory": "256Mi"}
    assert any(m["manager"] == "aifixer" for m in applied["metadata"]["managedFields"])
    assert polled(lambda: kube.rollout("report-api", "shop").done, 60)

    restored = kube.restore(original)
    assert _limits(restored) == {"memory": "64Mi"}
    assert restored["metadata"]["generation"] > applied["metadata"]["generation"]
    time.sleep(1)
    assert not kube.rollout("report-api", "shop").done


@pytest.mark.timeout(150)
def test_apply_removes_a_field_the_fix_dropped(make_world, tmp_path):
    """The team's kubectl owns the bad nodeSelector: apply alone would keep it."""
    sc = scenario_mod.load(SCENARIOS / "node-selector-gpu-inference.yaml")
    kube = _kube(make_world(sc, speed=SPEED), tmp_path)
    live = kube.get_deployment("ml", "inference")
    assert live["spec"]["template"]["spec"]["nodeSelector"] == {"accelerator": "gpu"}
    applied = kube.apply(_manifest(sc))
    assert "nodeSelector" not in applied["spec"]["template"]["spec"]
    assert polled(lambda: kube.rollout("inference", "ml").done, 60)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_a_stopped_server_is_transient(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        f"clusters: [{{name: gone, cluster: {{server: 'http://127.0.0.1:{_closed_port()}'}}}}]\n"
        "users: [{name: gone, user: {}}]\n"
        "contexts: [{name: gone, context: {cluster: gone, user: gone}}]\n"
    )
    kube = Kube(Settings(kubeconfig=kubeconfig, state_dir=tmp_path, request_timeout_s=2))
    with pytest.raises(TransientError):
        kube.get_deployment("shop", "report-api")
    with pytest.raises(TransientError):
        kube.warning_signals(None)


def test_a_missing_kubeconfig_is_permanent(tmp_path):
    with pytest.raises(PermanentError):
        Kube(Settings(kubeconfig=tmp_path / "missing", state_dir=tmp_path))


def test_forecast_scaling_reads_deployments_and_hpas_and_sets_replicas_guarded(oom):
    _, world, kube = oom
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    from aifixer.adapters.errors import Conflict

    (dep,) = [d for d in kube.deployments("shop") if d["metadata"]["name"] == "report-api"]
    assert [d["metadata"]["name"] for d in kube.deployments(None)] == ["report-api"]
    assert kube.autoscaler_of("shop", "report-api") is None
    api = k8s.AutoscalingV2Api(
        k8s_config.new_client_from_config(config_file=world.endpoints.kubeconfig)
    )
    api.create_namespaced_horizontal_pod_autoscaler(
        "shop",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "report"},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": "report-api",
                },
                "minReplicas": 1,
                "maxReplicas": 4,
            },
        },
    )
    assert kube.autoscaler_of("shop", "report-api") == "report"
    replicas = dep["spec"]["replicas"]
    scaled = kube.set_replicas("shop", "report-api", replicas + 1, expected=replicas)
    assert scaled["spec"]["replicas"] == replicas + 1
    with pytest.raises(Conflict, match="replicas changed"):
        kube.set_replicas("shop", "report-api", 9, expected=replicas)  # it is replicas + 1 now
    assert kube.get_deployment("shop", "report-api")["spec"]["replicas"] == replicas + 1
