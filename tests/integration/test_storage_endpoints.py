"""Claims, volumes, StorageClasses and EndpointSlices, as the real clients read them.

A whole sandbox cluster (scheduler, kubelet, controllers, volume binder, endpoint
controllers) behind its API server, driven by the `kubernetes` client and the installed
kubectl: a claim of an existing class is provisioned and bound and its pod runs; a
claim of a class the cluster does not have stays Pending with the binder's
ProvisioningFailed events and its pod with FailedScheduling; a Service's EndpointSlice
and Endpoints follow its selector and the ready pods.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_cluster import served_cluster, until
from kubernetes import client

from aifixer_sandbox.loki import LogStore
from aifixer_sandbox.scenario import Image, Node
from aifixer_sandbox.world import kubeconfig_text

KUBECTL = shutil.which("kubectl")
NS = "shop"
IMAGES = {"shop/db:1.0": Image(port=5432, logs=["db ready"], binaries=["db"])}
pytestmark = pytest.mark.timeout(90)


class Env:
    def __init__(self, api: client.ApiClient, kubeconfig: Path) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.storage = client.StorageV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.kubeconfig = kubeconfig

    until = staticmethod(until)

    def events(self, name: str, reason: str) -> list[client.CoreV1Event]:
        selector = f"involvedObject.name={name},reason={reason}"
        return self.core.list_namespaced_event(NS, field_selector=selector).items

    def kubectl(self, *args: str, home: Path) -> str:
        env = {**os.environ, "HOME": str(home), "KUBECACHEDIR": str(home / "cache"),
               "KUBECONFIG": str(self.kubeconfig)}  # fmt: skip
        proc = subprocess.run(
            [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def claim(self, name: str, storage_class: str | None) -> None:
        spec: dict = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        }
        if storage_class is not None:
            spec["storageClassName"] = storage_class
        self.core.create_namespaced_persistent_volume_claim(
            NS, {"metadata": {"name": name}, "spec": spec}
        )

    def pod(self, name: str, claim: str | None = None, labels: dict | None = None) -> None:
        spec: dict = {"containers": [{"name": "db", "image": "shop/db:1.0"}]}
        if claim:
            spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
            spec["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        self.core.create_namespaced_pod(
            NS, {"metadata": {"name": name, "labels": labels or {"app": name}}, "spec": spec}
        )

    def phase(self, kind: str, name: str) -> str | None:
        if kind == "pvc":
            return self.core.read_namespaced_persistent_volume_claim(name, NS).status.phase
        return self.core.read_namespaced_pod(name, NS).status.phase


@pytest.fixture
def env(tmp_path) -> Iterator[Env]:
    logstore = LogStore()
    nodes = [Node(name="node-1", memory_mib=4096)]
    with served_cluster(IMAGES.get, nodes, logs=logstore.push, namespaces=[NS]) as (_, url):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(url))
        cfg = client.Configuration()
        cfg.host = url
        api_client = client.ApiClient(cfg)
        try:
            e = Env(api_client, kubeconfig)
            e.storage.create_storage_class(
                {
                    "metadata": {
                        "name": "standard",
                        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                    },
                    "provisioner": "rancher.io/local-path",
                    "reclaimPolicy": "Delete",
                }
            )
            yield e
        finally:
            api_client.close()


def test_a_claim_of_an_existing_class_is_provisioned_bound_and_its_pod_runs(env: Env):
    env.claim("data", "standard")
    env.pod("db", claim="data")
    env.until("claim bound", lambda: env.phase("pvc", "data") == "Bound")
    claim = env.core.read_namespaced_persistent_volume_claim("data", NS)
    assert claim.spec.volume_name == f"pvc-{claim.metadata.uid}"
    assert claim.status.capacity == {"storage": "1Gi"}
    assert claim.metadata.annotations["pv.kubernetes.io/bind-completed"] == "yes"
    volume = env.core.read_persistent_volume(claim.spec.volume_name)
    assert volume.status.phase == "Bound"
    assert volume.spec.claim_ref.name == "data" and volume.spec.claim_ref.uid == claim.metadata.uid
    assert volume.spec.persistent_volume_reclaim_policy == "Delete"
    assert [e.message for e in env.events("data", "ProvisioningSucceeded")] == [
        f"Successfully provisioned volume {claim.spec.volume_name}"
    ]
    env.until("pod running", lambda: env.phase("pod", "db") == "Running")
    # Deleting the claim deletes its volume (reclaim policy Delete).
    env.core.delete_namespaced_pod("db", NS)
    env.core.delete_namespaced_persistent_volume_claim("data", NS)
    env.until(
        "volume reclaimed",
        lambda: not [v for v in env.core.list_persistent_volume().items if v.spec.claim_ref],
    )


def test_a_claim_without_a_class_gets_the_default_one(env: Env):
    env.claim("logs", None)
    claim = env.core.read_namespaced_persistent_volume_claim("logs", NS)
    assert claim.spec.storage_class_name == "standard"
    env.until("claim bound", lambda: env.phase("pvc", "logs") == "Bound")


def test_a_claim_of_a_missing_class_stays_pending_and_its_pod_unscheduled(env: Env, tmp_path):
    env.claim("data", "fast-ssd")
    env.pod("db", claim="data")
    env.until("ProvisioningFailed", lambda: env.events("data", "ProvisioningFailed"))
    failed = env.events("data", "ProvisioningFailed")[0]
    assert failed.type == "Warning"
    assert failed.message == 'storageclass.storage.k8s.io "fast-ssd" not found'
    assert failed.source.component == "persistentvolume-controller"
    env.until("FailedScheduling", lambda: env.events("db", "FailedScheduling"))
    message = env.events("db", "FailedScheduling")[0].message
    assert message == (
        "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
        "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.."
    )
    time.sleep(0.5)
    assert env.phase("pvc", "data") == "Pending"
    pod = env.core.read_namespaced_pod("db", NS)
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    # The claim's spec is immutable: its class cannot be changed in place.
    with pytest.raises(client.ApiException) as refused:
        env.core.patch_namespaced_persistent_volume_claim(
            "data", NS, {"spec": {"storageClassName": "standard"}}
        )
    assert refused.value.status == 422
    assert "spec is immutable after creation" in refused.value.body
    # Re-created with a class that exists, it binds and the waiting pod is scheduled.
    env.core.delete_namespaced_persistent_volume_claim("data", NS)
    env.claim("data", "standard")
    env.until("claim bound", lambda: env.phase("pvc", "data") == "Bound")
    env.until("pod running", lambda: env.phase("pod", "db") == "Running", timeout=30)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_reads_claims_volumes_and_classes(env: Env, tmp_path):
    env.claim("data", "standard")
    env.claim("broken", "fast-ssd")
    env.until("claim bound", lambda: env.phase("pvc", "data") == "Bound")
    home = tmp_path / "home"
    home.mkdir()
    rows = {
        r.split()[0]: r.split()
        for r in env.kubectl("get", "pvc", "-n", NS, home=home).splitlines()[1:]
    }
    assert rows["data"][1:6] == ["Bound", rows["data"][2], "1Gi", "RWO", "standard"]
    assert rows["data"][2].startswith("pvc-")
    assert rows["broken"][1:3] == ["Pending", "fast-ssd"]
    out = env.kubectl("get", "sc", home=home)
    assert out.splitlines()[1].split()[:5] == [
        "standard", "(default)", "rancher.io/local-path", "Delete", "Immediate",
    ]  # fmt: skip
    out = env.kubectl("get", "pv", home=home)
    assert f"{NS}/data" in out and "Bound" in out
    described = env.kubectl("describe", "pvc", "broken", "-n", NS, home=home)
    assert "ProvisioningFailed" in described
    assert 'storageclass.storage.k8s.io "fast-ssd" not found' in described


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_endpoint_slices_follow_the_selector_and_the_ready_pods(env: Env, tmp_path):
    env.pod("web-1", labels={"app": "web"})
    env.core.create_namespaced_service(
        NS,
        {
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 5432}]},
        },
    )
    env.until("pod ready", lambda: (env.core.read_namespaced_pod("web-1", NS).status.conditions or [])
              and all(c.status == "True" for c in env.core.read_namespaced_pod("web-1", NS).status.conditions
                      if c.type == "Ready"))  # fmt: skip

    def slice_():
        items = env.discovery.list_namespaced_endpoint_slice(
            NS, label_selector="kubernetes.io/service-name=web"
        ).items
        return items[0] if items else None

    def ready_addresses() -> list[str]:
        s = slice_()
        return (
            [a for e in (s.endpoints or []) if e.conditions.ready for a in e.addresses] if s else []
        )

    env.until("a ready endpoint", ready_addresses)
    ip = env.core.read_namespaced_pod("web-1", NS).status.pod_ip
    assert ready_addresses() == [ip]
    s = slice_()
    assert s.address_type == "IPv4" and [p.port for p in s.ports] == [5432]
    assert s.metadata.labels["endpointslice.kubernetes.io/managed-by"] == (
        "endpointslice-controller.k8s.io"
    )
    assert s.metadata.owner_references[0].kind == "Service"
    endpoints = env.core.read_namespaced_endpoints("web", NS)
    assert [a.ip for a in endpoints.subsets[0].addresses] == [ip]
    home = tmp_path / "home"
    home.mkdir()
    assert f"{ip}:5432" in env.kubectl("get", "endpoints", "web", "-n", NS, home=home)
    row = env.kubectl("get", "endpointslices", "-n", NS, home=home).splitlines()[1].split()
    assert row[0].startswith("web-") and row[1:4] == ["IPv4", "5432", ip]
    # kubectl describe reads the Service's EndpointSlices.
    described = env.kubectl("describe", "service", "web", "-n", NS, home=home)
    assert _endpoints_line(described) == f"{ip}:5432"
    # A selector that matches no pod: the slice has no endpoints, Endpoints no subsets.
    env.core.patch_namespaced_service("web", NS, {"spec": {"selector": {"app": "web-v2"}}})
    env.until("no endpoints", lambda: not (slice_().endpoints or []))
    assert slice_().ports is None
    env.until("no subsets", lambda: not env.core.read_namespaced_endpoints("web", NS).subsets)
    assert _endpoints_line(env.kubectl("describe", "service", "web", "-n", NS, home=home)) == ""
    row = env.kubectl("get", "endpointslices", "-n", NS, home=home).splitlines()[1].split()
    assert row[1:4] == ["IPv4", "<unset>", "<unset>"]


def _endpoints_line(described: str) -> str:
    line = next(ln for ln in described.splitlines() if ln.startswith("Endpoints:"))
    return line.removeprefix("Endpoints:").strip()


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_applies_a_deployment_mounting_claims_and_its_pod_runs(env: Env, tmp_path):
    """Server-side apply of a claim and a Deployment that mounts it, then without the
    second volume: the pod volumes are defaulted as pod volumes, and the pod runs."""
    home = tmp_path / "home"
    home.mkdir()
    volumes = [("data", "data"), ("cache", "cache")]
    for count in (2, 1):
        docs = [
            f"apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {c}, namespace: {NS}}}\n"
            "spec: {storageClassName: standard, accessModes: [ReadWriteOnce], "
            "resources: {requests: {storage: 1Gi}}}\n"
            for _, c in volumes[:count]
        ]
        mounts = "\n".join(
            f"      - {{name: {v}, persistentVolumeClaim: {{claimName: {c}}}}}"
            for v, c in volumes[:count]
        )
        docs.append(
            f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: db, namespace: {NS}}}\n"
            "spec:\n  replicas: 1\n  selector: {matchLabels: {app: db}}\n  template:\n"
            "    metadata: {labels: {app: db}}\n    spec:\n"
            "      containers: [{name: db, image: 'shop/db:1.0'}]\n"
            f"      volumes:\n{mounts}\n"
        )
        manifest = tmp_path / f"db-{count}.yaml"
        manifest.write_text("---\n".join(docs))
        env.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifest), home=home)
    dep = client.AppsV1Api(env.api).read_namespaced_deployment("db", NS)
    assert [v.name for v in dep.spec.template.spec.volumes] == ["data"]
    env.until(
        "the pod runs",
        lambda: any(
            p.status.phase == "Running"
            for p in env.core.list_namespaced_pod(NS, label_selector="app=db").items
        ),
        timeout=30,
    )
