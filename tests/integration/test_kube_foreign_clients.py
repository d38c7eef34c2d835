"""The written kubeconfig and the API stand-in through Kubernetes clients the product
does not use: lightkube and kr8s (Python), and @kubernetes/client-node (Node.js, run by
`node` from tests/node, whose node_modules `./dev test` installs with `npm ci`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import kr8s
import pytest
from kubernetes import client
from lightkube import Client, KubeConfig
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod

from tests.integration.test_kube_api import Cluster, deployment, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    c, stop = start_cluster(tmp_path_factory.mktemp("foreign-clients"))
    client.CoreV1Api(c.api).create_namespaced_pod(
        "other",
        {"metadata": {"name": "lonely"}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}},
    )
    client.AppsV1Api(c.api).create_namespaced_deployment("other", deployment("web", replicas=2))
    yield c
    stop()


def test_lightkube(cluster):
    lk = Client(config=KubeConfig.from_file(str(cluster.kubeconfig)))
    assert [p.metadata.name for p in lk.list(Pod, namespace="other")] == ["lonely"]
    [web] = lk.list(Deployment, namespace="other")
    assert web.metadata.name == "web" and web.spec.replicas == 2
    assert lk.get(Pod, "lonely", namespace="other").spec.containers[0].image == "i:1"


def test_kr8s(cluster):
    api = kr8s.api(kubeconfig=str(cluster.kubeconfig))
    assert [p.name for p in api.get("pods", namespace="other")] == ["lonely"]
    [web] = api.get("deployments", namespace="other")
    assert web.name == "web" and web.replicas == 2


@pytest.mark.skipif(
    NODE is None or shutil.which("npm") is None,
    reason="node/npm are not installed: the @kubernetes/client-node test needs them",
)
def test_kubernetes_client_node(cluster):
    assert (NODE_DIR / "node_modules" / "@kubernetes" / "client-node").is_dir(), (
        "tests/node/node_modules is missing: `./dev test` installs it (npm ci in tests/node)"
    )
    proc = subprocess.run(
        [NODE, str(NODE_DIR / "list-pods.mjs"), str(cluster.kubeconfig), "other"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "pods": [{"name": "lonely", "phase": "Pending"}],
        "deployments": [{"name": "web", "replicas": 2}],
    }
