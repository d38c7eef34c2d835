"""The Kubernetes API stand-in through the real `kubernetes` Python client, over loopback.

Each test talks HTTP to the server exactly as the product does; the only shortcut is
filling the kubelet's log buffers directly (that is the pod simulator's job).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from aifixer_sandbox.kube.podlogs import PodLogs
from aifixer_sandbox.kube.resources import core
from aifixer_sandbox.kube.server import make_app
from aifixer_sandbox.kube.store import Store
from aifixer_sandbox.serve import LoopThread, Site, start_site, stop_site
from aifixer_sandbox.world import kubeconfig_text

pytestmark = pytest.mark.timeout(60)


@dataclass
class Cluster:
    url: str
    kubeconfig: Path
    api: client.ApiClient
    loop: LoopThread
    store: Store
    logs: PodLogs

    def on_loop(self, fn, *args):
        """Run `fn` on the server's loop thread (the only thread that may touch its state)."""
        return self.loop.call_soon(fn, *args)


def start_cluster(tmp: Path, store: Store | None = None) -> tuple[Cluster, callable]:
    store = store or Store()
    logs = PodLogs()
    for ns in ("default", "other"):
        store.create(core("namespaces"), {"metadata": {"name": ns}})
    loop = LoopThread().start()
    site = loop.call(start_site, Site("kube", make_app(store, logs)))
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(site.url))
    api = config.new_client_from_config(config_file=str(kubeconfig))

    def stop() -> None:
        api.close()
        loop.call(stop_site, site)
        loop.stop()

    return Cluster(site.url, kubeconfig, api, loop, store, logs), stop


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    c, stop = start_cluster(tmp_path_factory.mktemp("kube"))
    yield c
    stop()


def deployment(
    name: str, image: str = "nginx:1.25", replicas: int = 1, labels: dict | None = None
) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "ports": [{"containerPort": 80}],
                            "readinessProbe": {"httpGet": {"port": 80}},
                        }
                    ]
                },
            },
        },
    }


def pod(name: str, containers: tuple[str, ...] = ("app",), node: str = "node-1") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": c, "image": "busybox"} for c in containers],
        },
    }


IMAGE_ID = "docker.io/library/busybox@sha256:" + "0" * 64


def apps(c: Cluster) -> client.AppsV1Api:
    return client.AppsV1Api(c.api)


def v1(c: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(c.api)


# -- create / read / list ------------------------------------------------------------------------


def test_create_applies_defaults_and_get_returns_them(cluster):
    created = apps(cluster).create_namespaced_deployment("default", deployment("web"))
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.generation == 1
    spec = created.spec
    assert spec.strategy.type == "RollingUpdate"
    assert spec.strategy.rolling_update.max_surge == "25%"
    assert spec.revision_history_limit == 10 and spec.progress_deadline_seconds == 600
    pod_spec = spec.template.spec
    assert (pod_spec.restart_policy, pod_spec.dns_policy, pod_spec.scheduler_name) == (
        "Always",
        "ClusterFirst",
        "default-scheduler",
    )
    assert pod_spec.termination_grace_period_seconds == 30
    container = pod_spec.containers[0]
    assert container.image_pull_policy == "IfNotPresent"
    assert container.termination_message_path == "/dev/termination-log"
    assert container.ports[0].protocol == "TCP"
    probe = container.readiness_probe
    assert (
        probe.timeout_seconds,
        probe.period_seconds,
        probe.success_threshold,
        probe.failure_threshold,
    ) == (1, 10, 1, 3)
    assert probe.http_get.scheme == "HTTP"
    assert created.metadata.managed_fields[0].operation == "Update"

    got = apps(cluster).read_namespaced_deployment("web", "default")
    assert got.metadata.resource_version == created.metadata.resource_version
    assert got.spec.template.spec.containers[0].image == "nginx:1.25"


def test_create_conflicts_and_namespace_mismatch(cluster):
    apps(cluster).create_namespaced_deployment("default", deployment("dup"))
    with pytest.raises(ApiException) as exc:
        apps(cluster).create_namespaced_deployment("default", deployment("dup"))
    assert exc.value.status == 409
    assert json.loads(exc.value.body)["reason"] == "AlreadyExists"

    body = deployment("elsewhere")
    body["metadata"]["namespace"] = "other"
    with pytest.raises(ApiException) as exc:
        apps(cluster).create_namespaced_deployment("default", body)
    assert exc.value.status == 400
    assert "does not match the namespace" in json.loads(exc.value.body)["message"]


def test_list_with_selectors_and_pages(cluster):
    for i in range(5):
        v1(cluster).create_namespaced_config_map(
            "default",
            {
                "metadata": {"name": f"cm-{i}", "labels": {"tier": "a" if i % 2 else "b"}},
                "data": {"k": str(i)},
            },
        )
    listed = v1(cluster).list_namespaced_config_map("default", label_selector="tier=a")
    assert sorted(i.metadata.name for i in listed.items) == ["cm-1", "cm-3"]
    listed = v1(cluster).list_namespaced_config_map("default", field_selector="metadata.name=cm-4")
    assert [i.metadata.name for i in listed.items] == ["cm-4"]
    assert int(listed.metadata.resource_version) >= 5

    names, token, pages = [], None, 0
    while True:
        page = v1(cluster).list_namespaced_config_map(
            "default", label_selector="tier in (a,b)", limit=2, _continue=token
        )
        names += [i.metadata.name for i in page.items]
        pages += 1
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"cm-{i}" for i in range(5)] and pages == 3

    with pytest.raises(ApiException) as exc:
        v1(cluster).list_namespaced_config_map("default", field_selector="data.k=1")
    assert exc.value.status == 400
    with pytest.raises(ApiException) as exc:
        v1(cluster).list_namespaced_config_map("default", limit=1, _continue="not-a-token!")
    assert exc.value.status == 400


def test_all_namespaces_list_and_table(cluster):
    v1(cluster).create_namespaced_config_map("other", {"metadata": {"name": "in-other"}})
    everywhere = v1(cluster).list_config_map_for_all_namespaces()
    assert {"default", "other"} <= {i.metadata.namespace for i in everywhere.items}
    resp = requests.get(
        f"{cluster.url}/api/v1/namespaces/other/configmaps",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
        timeout=5,
    )
    table = resp.json()
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Data", "Age"]
    assert table["rows"][0]["cells"][0] == "in-other"
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_expired_continue_token_is_410(tmp_path):
    c, stop = start_cluster(tmp_path, Store(history=5))
    try:
        for i in range(3):
            v1(c).create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        token = v1(c).list_namespaced_config_map("default", limit=1).metadata._continue
        for i in range(10):
            v1(c).create_namespaced_config_map("default", {"metadata": {"name": f"later{i}"}})
        with pytest.raises(ApiException) as exc:
            v1(c).list_namespaced_config_map("default", limit=1, _continue=token)
        assert exc.value.status == 410
        assert "too old to display a consistent list" in json.loads(exc.value.body)["message"]
    finally:
        stop()


# -- update / patch / apply ---------------------------------------------------------------------


def test_replace_with_stale_resource_version_conflicts(cluster):
    first = apps(cluster).create_namespaced_deployment("default", deployment("stale"))
    fresh = apps(cluster).read_namespaced_deployment("stale", "default")
    fresh.spec.replicas = 3
    updated = apps(cluster).replace_namespaced_deployment("stale", "default", fresh)
    assert updated.metadata.generation == 2
    first.spec.replicas = 5
    with pytest.raises(ApiException) as exc:
        apps(cluster).replace_namespaced_deployment("stale", "default", first)
    assert exc.value.status == 409
    assert "the object has been modified" in json.loads(exc.value.body)["message"]


def test_each_patch_type(cluster):
    apps(cluster).create_namespaced_deployment("default", deployment("patchy"))
    d = apps(cluster).patch_namespaced_deployment(
        "patchy", "default", [{"op": "replace", "path": "/spec/replicas", "value": 2}]
    )
    assert d.spec.replicas == 2
    d = apps(cluster).patch_namespaced_deployment(
        "patchy",
        "default",
        {"metadata": {"labels": {"team": "x"}}},
        _content_type="application/merge-patch+json",
    )
    assert d.metadata.labels == {"app": "patchy", "team": "x"}
    # Strategic merge: the container list merges by name instead of being replaced.
    d = apps(cluster).patch_namespaced_deployment(
        "patchy",
        "default",
        {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "envoy:1"}]}}}},
    )
    assert [c.name for c in d.spec.template.spec.containers] == ["sidecar", "app"] or sorted(
        c.name for c in d.spec.template.spec.containers
    ) == ["app", "sidecar"]
    assert d.spec.template.spec.containers[0].termination_message_policy == "File"
    with pytest.raises(ApiException) as exc:
        apps(cluster).patch_namespaced_deployment(
            "patchy", "default", [{"op": "test", "path": "/spec/replicas", "value": 99}]
        )
    assert exc.value.status == 422
    with pytest.raises(ApiException) as exc:
        apps(cluster).patch_namespaced_deployment("missing", "default", {"spec": {"replicas": 1}})
    assert exc.value.status == 404


def test_server_side_apply_upserts_and_reports_conflicts(cluster):
    body = deployment("ssa", replicas=2)
    created = apps(cluster).patch_namespaced_deployment(
        "ssa",
        "default",
        body,
        field_manager="aifixer",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    assert created.spec.replicas == 2
    assert any(
        m.manager == "aifixer" and m.operation == "Apply" for m in created.metadata.managed_fields
    )
    body["spec"]["replicas"] = 4
    updated = apps(cluster).patch_namespaced_deployment(
        "ssa",
        "default",
        body,
        field_manager="aifixer",
        _content_type="application/apply-patch+yaml",
    )
    assert updated.spec.replicas == 4 and updated.metadata.generation == 2
    body["spec"]["replicas"] = 1
    with pytest.raises(ApiException) as exc:
        apps(cluster).patch_namespaced_deployment(
            "ssa",
            "default",
            body,
            field_manager="someone-else",
            _content_type="application/apply-patch+yaml",
        )
    assert exc.value.status == 409
    assert "conflict" in json.loads(exc.value.body)["message"].lower()
    resp = requests.patch(
        f"{cluster.url}/apis/apps/v1/namespaces/default/deployments/ssa",
        data=json.dumps(body),
        headers={"Content-Type": "application/apply-patch+yaml"},
        timeout=5,
    )
    assert resp.status_code == 422 and "fieldManager: Required value" in resp.json()["message"]
    raw = requests.patch(
        f"{cluster.url}/apis/apps/v1/namespaces/default/deployments/ssa-new?fieldManager=m",
        data=json.dumps(deployment("ssa-new")),
        headers={"Content-Type": "application/apply-patch+yaml"},
        timeout=5,
    )
    assert raw.status_code == 201


def test_dry_run_leaves_nothing_behind(cluster):
    created = apps(cluster).create_namespaced_deployment(
        "default", deployment("dry"), dry_run="All"
    )
    assert created.spec.revision_history_limit == 10
    with pytest.raises(ApiException) as exc:
        apps(cluster).read_namespaced_deployment("dry", "default")
    assert exc.value.status == 404
    apps(cluster).create_namespaced_deployment("default", deployment("dry"))
    before = apps(cluster).read_namespaced_deployment("dry", "default")
    patched = apps(cluster).patch_namespaced_deployment(
        "dry", "default", {"spec": {"replicas": 7}}, dry_run="All"
    )
    assert patched.spec.replicas == 7
    applied = apps(cluster).patch_namespaced_deployment(
        "dry",
        "default",
        deployment("dry", replicas=9),
        field_manager="aifixer",
        force=True,
        dry_run="All",
        _content_type="application/apply-patch+yaml",
    )
    assert applied.spec.replicas == 9
    after = apps(cluster).read_namespaced_deployment("dry", "default")
    assert (
        after.spec.replicas == 1
        and after.metadata.resource_version == before.metadata.resource_version
    )
    resp = requests.post(
        f"{cluster.url}/apis/apps/v1/namespaces/default/deployments?dryRun=Maybe",
        json=deployment("dry2"),
        timeout=5,
    )
    assert resp.status_code == 422 and "dryRun: Unsupported value" in resp.json()["message"]


def test_invalid_deployment_is_422_with_causes(cluster):
    bad = deployment("bad")
    bad["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    bad["spec"]["template"]["spec"]["containers"][0]["image"] = ""
    with pytest.raises(ApiException) as exc:
        apps(cluster).create_namespaced_deployment("default", bad)
    status = json.loads(exc.value.body)
    assert exc.value.status == 422 and status["reason"] == "Invalid"
    assert status["message"].startswith('Deployment.apps "bad" is invalid')
    fields = {c["field"] for c in status["details"]["causes"]}
    assert "spec.template.spec.containers[0].image" in fields


def test_field_validation_strict_and_warn(cluster):
    body = deployment("fv")
    body["spec"]["foo"] = 1
    resp = requests.post(
        f"{cluster.url}/apis/apps/v1/namespaces/default/deployments?fieldValidation=Strict",
        json=body,
        timeout=5,
    )
    assert resp.status_code == 400
    assert 'strict decoding error: unknown field "spec.foo"' in resp.json()["message"]
    resp = requests.post(
        f"{cluster.url}/apis/apps/v1/namespaces/default/deployments?fieldValidation=Warn",
        json=body,
        timeout=5,
    )
    assert resp.status_code == 201
    assert resp.headers["Warning"] == '299 - "unknown field \\"spec.foo\\""'
    assert "foo" not in resp.json()["spec"]


def test_status_and_scale_subresources(cluster):
    apps(cluster).create_namespaced_deployment("default", deployment("sub"))
    d = apps(cluster).read_namespaced_deployment("sub", "default")
    d.status = client.V1DeploymentStatus(replicas=1, ready_replicas=1, observed_generation=1)
    d.spec.replicas = 40  # ignored by the status subresource
    out = apps(cluster).replace_namespaced_deployment_status("sub", "default", d)
    assert out.status.ready_replicas == 1 and out.spec.replicas == 1
    out = apps(cluster).patch_namespaced_deployment_status(
        "sub", "default", {"status": {"availableReplicas": 1}}
    )
    assert out.status.available_replicas == 1
    # Times are re-encoded as Go's metav1.Time: whole seconds in UTC with "Z".
    condition = {
        "type": "Available",
        "status": "True",
        "lastUpdateTime": "2024-01-01T01:00:00.5+01:00",
    }
    apps(cluster).patch_namespaced_deployment_status(
        "sub", "default", {"status": {"conditions": [condition]}}
    )
    raw = requests.get(
        f"{cluster.url}/apis/apps/v1/namespaces/default/deployments/sub", timeout=5
    ).json()
    assert raw["status"]["conditions"][0]["lastUpdateTime"] == "2024-01-01T00:00:00Z"
    # The main resource ignores status.
    out = apps(cluster).patch_namespaced_deployment(
        "sub", "default", {"status": {"readyReplicas": 9}}
    )
    assert out.status.ready_replicas == 1
    scale = apps(cluster).read_namespaced_deployment_scale("sub", "default")
    assert scale.spec.replicas == 1 and scale.status.selector == "app=sub"
    scale = apps(cluster).patch_namespaced_deployment_scale(
        "sub", "default", {"spec": {"replicas": 3}}
    )
    assert scale.spec.replicas == 3
    assert apps(cluster).read_namespaced_deployment("sub", "default").spec.replicas == 3


def test_delete_item_and_collection(cluster):
    v1(cluster).create_namespaced_config_map(
        "default", {"metadata": {"name": "gone", "labels": {"x": "1"}}}
    )
    status = v1(cluster).delete_namespaced_config_map("gone", "default")
    assert status["status"] == "Success" and status["details"]["name"] == "gone"
    p = v1(cluster).create_namespaced_pod("default", pod("doomed"))
    with pytest.raises(ApiException) as exc:
        v1(cluster).delete_namespaced_pod(
            "doomed", "default", body=client.V1DeleteOptions(preconditions={"uid": "nope"})
        )
    assert exc.value.status == 409
    deleted = v1(cluster).delete_namespaced_pod(
        "doomed", "default", propagation_policy="Background"
    )
    assert deleted.metadata.uid == p.metadata.uid  # pods answer with the object
    for i in range(3):
        v1(cluster).create_namespaced_config_map(
            "default", {"metadata": {"name": f"bulk{i}", "labels": {"bulk": "y"}}}
        )
    v1(cluster).delete_collection_namespaced_config_map("default", label_selector="bulk=y")
    assert v1(cluster).list_namespaced_config_map("default", label_selector="bulk=y").items == []
    with pytest.raises(ApiException) as exc:
        v1(cluster).delete_namespaced_config_map("gone", "default")
    assert exc.value.status == 404


def test_unknown_paths_and_bad_bodies(cluster):
    resp = requests.get(f"{cluster.url}/apis/apps/v1/namespaces/default/widgets", timeout=5)
    assert (
        resp.status_code == 404
        and resp.json()["message"] == "the server could not find the requested resource"
    )
    resp = requests.post(
        f"{cluster.url}/api/v1/namespaces/default/configmaps",
        data="{nope",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert resp.status_code == 400 and resp.json()["kind"] == "Status"
    resp = requests.patch(
        f"{cluster.url}/api/v1/namespaces/default/configmaps/x",
        data="{}",
        headers={"Content-Type": "text/plain"},
        timeout=5,
    )
    assert resp.status_code == 415
    resp = requests.put(f"{cluster.url}/api/v1/namespaces/default/configmaps", json={}, timeout=5)
    assert resp.status_code == 405
    with pytest.raises(ApiException) as exc:
        apps(cluster).read_namespaced_deployment("nope", "default")
    assert exc.value.status == 404
    assert json.loads(exc.value.body)["message"] == 'deployments.apps "nope" not found'


# -- watch ----------------------------------------------------------------------------------------


def test_watch_from_resource_version(cluster):
    start = v1(cluster).list_namespaced_config_map("default").metadata.resource_version
    seen: list[tuple[str, str]] = []

    def consume() -> None:
        for ev in watch.Watch().stream(
            v1(cluster).list_namespaced_config_map,
            "default",
            resource_version=start,
            timeout_seconds=3,
            label_selector="w=1",
        ):
            seen.append((ev["type"], ev["object"].metadata.name))

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.3)
    v1(cluster).create_namespaced_config_map(
        "default", {"metadata": {"name": "w1", "labels": {"w": "1"}}}
    )
    v1(cluster).create_namespaced_config_map("default", {"metadata": {"name": "w-other"}})
    v1(cluster).patch_namespaced_config_map("w1", "default", {"data": {"a": "b"}})
    v1(cluster).delete_namespaced_config_map("w1", "default")
    t.join(10)
    assert not t.is_alive()
    assert seen == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]


def test_watch_expired_resource_version_raises_410(tmp_path):
    c, stop = start_cluster(tmp_path, Store(history=3))
    try:
        for i in range(6):
            v1(c).create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        with pytest.raises(ApiException) as exc:
            for _ in watch.Watch().stream(
                v1(c).list_namespaced_config_map, "default", resource_version="1", timeout_seconds=2
            ):
                pass
        assert exc.value.status == 410
    finally:
        stop()


def test_watch_bookmarks_and_disconnect(cluster):
    url = f"{cluster.url}/api/v1/namespaces/default/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=30"
    api = cluster.api.configuration  # same server
    assert api.host == cluster.url
    with requests.get(url, stream=True, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("application/json")
        types = []
        for line in resp.iter_lines():
            ev = json.loads(line)
            types.append(ev["type"])
            if ev["type"] == "BOOKMARK":
                assert set(ev["object"]["metadata"]) == {"resourceVersion"}
                break
    deadline = time.time() + 5
    while time.time() < deadline and cluster.on_loop(lambda: len(cluster.store._watches)):
        time.sleep(0.2)
    assert cluster.on_loop(lambda: len(cluster.store._watches)) == 0


# -- logs -----------------------------------------------------------------------------------------


def test_pod_logs(cluster):
    v1(cluster).create_namespaced_pod("default", pod("logger"))
    v1(cluster).create_namespaced_pod("default", pod("two", ("a", "b")))
    now = datetime.now(UTC)

    def fill() -> None:
        cluster.logs.start_instance("default", "logger", "app")
        cluster.logs.append("default", "logger", "app", now - timedelta(minutes=5), "old run")
        cluster.logs.start_instance("default", "logger", "app")
        for i in range(5):
            cluster.logs.append(
                "default", "logger", "app", now - timedelta(seconds=50 - i), f"line {i}"
            )

    cluster.on_loop(fill)
    text = v1(cluster).read_namespaced_pod_log("logger", "default")
    assert text == "".join(f"line {i}\n" for i in range(5))
    assert (
        v1(cluster).read_namespaced_pod_log("logger", "default", tail_lines=2) == "line 3\nline 4\n"
    )
    assert v1(cluster).read_namespaced_pod_log("logger", "default", previous=True) == "old run\n"
    stamped = v1(cluster).read_namespaced_pod_log(
        "logger", "default", timestamps=True, tail_lines=1
    )
    assert stamped.endswith(" line 4\n") and stamped.startswith(str(now.year))
    assert v1(cluster).read_namespaced_pod_log("logger", "default", limit_bytes=4) == "line"
    with pytest.raises(ApiException) as exc:
        v1(cluster).read_namespaced_pod_log("two", "default")
    assert exc.value.status == 400
    assert (
        json.loads(exc.value.body)["message"]
        == "a container name must be specified for pod two, choose one of: [a b]"
    )
    with pytest.raises(ApiException) as exc:
        v1(cluster).read_namespaced_pod_log("two", "default", container="a")
    assert "is waiting to start" in json.loads(exc.value.body)["message"]


def test_pod_log_follow_streams_until_container_stops(cluster):
    running = pod("follower")
    v1(cluster).create_namespaced_pod("default", running)
    v1(cluster).patch_namespaced_pod_status(
        "follower",
        "default",
        {
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "app",
                        "image": "busybox",
                        "imageID": IMAGE_ID,
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}},
                    }
                ],
            }
        },
    )
    cluster.on_loop(
        lambda: cluster.logs.append("default", "follower", "app", datetime.now(UTC), "first")
    )
    got: list[str] = []
    resp = v1(cluster).read_namespaced_pod_log(
        "follower", "default", follow=True, _preload_content=False
    )

    def stop_later() -> None:
        time.sleep(0.5)
        cluster.on_loop(
            lambda: cluster.logs.append("default", "follower", "app", datetime.now(UTC), "second")
        )
        time.sleep(0.3)
        v1(cluster).patch_namespaced_pod_status(
            "follower",
            "default",
            {
                "status": {
                    "containerStatuses": [
                        {
                            "name": "app",
                            "image": "busybox",
                            "imageID": IMAGE_ID,
                            "ready": False,
                            "restartCount": 0,
                            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                        }
                    ]
                }
            },
        )

    threading.Thread(target=stop_later).start()
    for chunk in resp.stream(64):
        got.append(chunk.decode())
    assert "".join(got) == "first\nsecond\n"


# -- events ---------------------------------------------------------------------------------------


def test_events_in_both_api_groups(cluster):
    target = v1(cluster).read_namespace("default")
    v1(cluster).create_namespaced_event(
        "default",
        {
            "metadata": {"name": "ev1"},
            "involvedObject": {"kind": "Namespace", "name": "default", "uid": target.metadata.uid},
            "reason": "Testing",
            "message": "hello",
            "type": "Normal",
            "count": 2,
            "eventTime": "2024-01-01T00:00:00.000000Z",
            "reportingInstance": "tester-1",
            "firstTimestamp": "2024-01-01T00:00:00Z",
            "lastTimestamp": "2024-01-01T00:01:00Z",
            "source": {"component": "tester"},
            "reportingComponent": "tester",
        },
    )
    events_api = client.EventsV1Api(cluster.api)
    ev = events_api.read_namespaced_event("ev1", "default")
    assert ev.note == "hello" and ev.regarding.name == "default" and ev.deprecated_count == 2
    assert ev.reporting_controller == "tester"
    events_api.create_namespaced_event(
        "default",
        {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "ev2"},
            "eventTime": "2024-01-01T00:00:00.000000Z",
            "reportingController": "ctl",
            "reportingInstance": "ctl-1",
            "action": "Act",
            "reason": "Other",
            "note": "from the new API",
            "type": "Warning",
            "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
        },
    )
    core_ev = v1(cluster).read_namespaced_event("ev2", "default")
    assert core_ev.message == "from the new API" and core_ev.involved_object.name == "p"
    listed = events_api.list_namespaced_event("default", field_selector="regarding.name=p")
    assert [e.metadata.name for e in listed.items] == ["ev2"]
    listed = v1(cluster).list_namespaced_event("default", field_selector="involvedObject.name=p")
    assert [e.metadata.name for e in listed.items] == ["ev2"]


# -- discovery -----------------------------------------------------------------------------------


def test_discovery_documents(cluster):
    assert requests.get(f"{cluster.url}/version", timeout=5).json()["minor"] == "32"
    agg = requests.get(
        f"{cluster.url}/apis",
        timeout=5,
        headers={
            "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        },
    )
    assert (
        agg.headers["Content-Type"]
        == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
    apps_group = next(g for g in agg.json()["items"] if g["metadata"]["name"] == "apps")
    deploy = next(
        r for r in apps_group["versions"][0]["resources"] if r["resource"] == "deployments"
    )
    assert deploy["shortNames"] == ["deploy"] and deploy["scope"] == "Namespaced"
    legacy = requests.get(f"{cluster.url}/api/v1", timeout=5).json()
    names = {r["name"] for r in legacy["resources"]}
    assert {"pods", "pods/log", "events", "configmaps"} <= names
    assert requests.get(f"{cluster.url}/openapi/v2", timeout=5).status_code == 404
    root = requests.get(f"{cluster.url}/openapi/v3", timeout=5).json()
    url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
    doc = requests.get(f"{cluster.url}{url}", timeout=10).json()
    assert "io.k8s.api.apps.v1.Deployment" in doc["components"]["schemas"]
    # The typed client's own discovery helpers work too.
    assert "apps" in [g.name for g in client.ApisApi(cluster.api).get_api_versions().groups]
