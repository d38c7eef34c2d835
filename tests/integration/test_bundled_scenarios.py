"""Every bundled scenario reaches its described broken state, and a correct fix heals it.

Driven the way a person would check: pod reasons and Warning events read through the
API server, error lines queried from Loki over HTTP, the fix applied with `kubectl
apply --server-side` and judged by `kubectl rollout status`.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
import yaml
from kubernetes import client, config, watch

from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.world import pod_symptoms

SCENARIOS = [*scenario_mod.bundled(), *scenario_mod.bundled_injection()]
pytestmark = [pytest.mark.integration, pytest.mark.scenario]


KINDS = {"Deployment": "deployment", "StatefulSet": "stateful_set", "DaemonSet": "daemon_set"}


def _workloads(sc) -> list[tuple[str, str, str]]:
    """The failing workloads (`Scenario.failing_workloads`), each with its kind."""
    kinds = {
        (doc["metadata"].get("namespace", "default"), doc["metadata"]["name"]): doc["kind"]
        for mf in [*sc.manifests, *sc.change]
        for doc in mf.documents()
        if doc["kind"] in KINDS
    }
    return [(ns, name, kinds[(ns, name)]) for ns, name in sc.failing_workloads()]


def _observe(api: client.CoreV1Api, apps: client.AppsV1Api, namespace: str, name: str, kind: str):
    dep = getattr(apps, f"read_namespaced_{KINDS[kind]}")(name, namespace)
    selector = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
    pods = api.list_namespaced_pod(namespace, label_selector=selector)
    reasons = set()
    names = set()
    for pod in pods.items:
        names.add(pod.metadata.name)
        reasons.update(pod_symptoms(client.ApiClient().sanitize_for_serialization(pod)))
    events = {
        e.reason
        for e in api.list_namespaced_event(namespace, field_selector="type=Warning").items
        if e.involved_object.name in names
    }
    return reasons, events


class _PodWatch:
    """A watch on the workload's pods, in a thread, adding each version's reasons to `into`."""

    def __init__(self, api, apps, namespace: str, name: str, kind: str, into: set[str]):
        dep = getattr(apps, f"read_namespaced_{KINDS[kind]}")(name, namespace)
        selector = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
        self._watch = watch.Watch()
        serialize = client.ApiClient().sanitize_for_serialization

        def run() -> None:
            try:
                for ev in self._watch.stream(
                    api.list_namespaced_pod, namespace, label_selector=selector,
                    timeout_seconds=70,
                ):  # fmt: skip
                    into.update(pod_symptoms(serialize(ev["object"])))
            except Exception:  # noqa: BLE001 - stopped, or the world went down: the polls go on
                return

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop at the next event (a pod changes often; the stream's timeout bounds it)."""
        self._watch.stop()
        self._thread.join(timeout=75)


def _loki_has(loki: str, namespace: str, text: str) -> bool:
    resp = requests.get(
        f"{loki}/loki/api/v1/query_range",
        params={"query": f'{{namespace="{namespace}"}} |= `{text}`', "limit": 10, "since": "1h"},
        timeout=10,
    )
    resp.raise_for_status()
    return any(s["values"] for s in resp.json()["data"]["result"])


def test_there_are_enough_bundled_scenarios():
    loaded = [scenario_mod.load(p) for p in SCENARIOS]
    assert len(loaded) >= 10
    assert sum(1 for s in loaded if s.expect.outcome == "called") >= 2
    assert len({s.name for s in loaded}) == len(loaded)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_breaks_then_heals(path, make_world, kubectl, tmp_path):
    sc = scenario_mod.load(path)
    world = make_world(sc, speed=40)
    kube = config.new_client_from_config(config_file=world.endpoints.kubeconfig)
    api, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    want = sc.expect.symptoms

    for namespace, name, kind in _workloads(sc):
        seen_reasons: set[str] = set()
        seen_events: set[str] = set()
        found_logs: set[str] = set()
        deadline = time.monotonic() + 60
        # Every version of the pods, as `kubectl get pods -w` shows them: a reason held
        # for a moment only (RunContainerError until the next sync) is seen too.
        watcher = _PodWatch(api, apps, namespace, name, kind, seen_reasons)
        while time.monotonic() < deadline:
            reasons, events = _observe(api, apps, namespace, name, kind)
            seen_reasons |= reasons
            seen_events |= events
            found_logs |= {
                t
                for t in want.logs
                if t not in found_logs and _loki_has(world.endpoints.loki, namespace, t)
            }
            if (
                set(want.pod_reasons) <= seen_reasons
                and set(want.events) <= seen_events
                and set(want.logs) <= found_logs
            ):
                break
            time.sleep(0.25)
        watcher.stop()
        assert set(want.pod_reasons) <= seen_reasons, f"pod reasons seen: {sorted(seen_reasons)}"
        assert set(want.events) <= seen_events, f"warning events seen: {sorted(seen_events)}"
        assert set(want.logs) <= found_logs, f"log lines found in Loki: {sorted(found_logs)}"
        if want.pod_reasons:
            # Pods that fail this way are never Ready, so the rollout cannot look complete.
            # (A liveness failure alone keeps the pods Ready between restarts: it may.)
            # Sampled: a crashing pod may be Ready for an instant between restarts.
            samples = []
            for _ in range(20):
                samples.append(world.rolled_out(namespace, name))
                time.sleep(0.05)
            assert not all(samples), "a broken workload must not look rolled out"

    if not sc.change:
        return  # broken from its first deployment: there is no manifest to go back to
    # The correct fix for every scenario with a change: the last known-good manifests.
    fix = tmp_path / "fix.yaml"
    fix.write_text("---\n".join(yaml.safe_dump(d) for mf in sc.manifests for d in mf.documents()))
    kubectl(
        world.endpoints.kubeconfig,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(fix),
        check=True,
    )
    for namespace, name, kind in _workloads(sc):
        if kind == "StatefulSet":
            # The documented forced rollback: a StatefulSet stalled on a broken pod waits
            # for it to become ready, so the person deletes it once the template is good.
            _delete_stuck_members(api, apps, namespace, name)
        done = kubectl(
            world.endpoints.kubeconfig,
            "rollout",
            "status",
            f"{kind.lower()}/{name}",
            "-n",
            namespace,
            "--timeout=90s",
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "successfully rolled out" in done.stdout or "roll out complete" in done.stdout


def _delete_stuck_members(api, apps, namespace: str, name: str) -> None:
    """Delete the StatefulSet's pods that are not ready on another revision than its
    update revision, once the controller has seen the good template."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sts = apps.read_namespaced_stateful_set(name, namespace)
        if (sts.status.observed_generation or 0) >= sts.metadata.generation:
            break
        time.sleep(0.1)
    selector = ",".join(f"{k}={v}" for k, v in sts.spec.selector.match_labels.items())
    for pod in api.list_namespaced_pod(namespace, label_selector=selector).items:
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        revision = (pod.metadata.labels or {}).get("controller-revision-hash")
        if not ready and revision != sts.status.update_revision:
            api.delete_namespaced_pod(pod.metadata.name, namespace)
