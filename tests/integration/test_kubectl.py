"""The Kubernetes API stand-in driven by the installed kubectl (v1.32), as an operator would.

kubectl is the strictest client we have: it resolves types through discovery, downloads
OpenAPI for `apply` and `explain`, asks for server-side Tables and watches for
`rollout status`. Every test runs it with a private HOME and cache directory, so no
discovery cache leaks between runs or servers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client

from tests.integration.test_kube_api import IMAGE_ID, Cluster, start_cluster

KUBECTL = shutil.which("kubectl")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed"),
]

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: c
        image: {image}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    c, stop = start_cluster(tmp_path_factory.mktemp("kubectl"))
    yield c
    stop()


@pytest.fixture
def kubectl(cluster, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "KUBECACHEDIR": str(home / "cache"),
        "KUBECONFIG": str(cluster.kubeconfig),
    }

    def run(*args: str, ok: bool = True, timeout: float = 60, stdin: str | None = None):
        proc = subprocess.run(
            [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=timeout, input=stdin
        )
        if ok:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc

    run.env = env
    return run


def _rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


def _status(
    name: str, state: dict, last: dict | None = None, restarts: int = 0, ready: bool = False
) -> dict:
    cs = {
        "name": name,
        "image": "img:1",
        "imageID": IMAGE_ID,
        "ready": ready,
        "restartCount": restarts,
        "state": state,
    }
    if last:
        cs["lastState"] = last
    return cs


def _pod(
    cluster: Cluster, name: str, phase: str, statuses: list[dict], labels: dict | None = None
) -> None:
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": name, "labels": labels or {"app": name}},
            "spec": {
                "nodeName": "node-1",
                "containers": [{"name": s["name"], "image": "img:1"} for s in statuses],
            },
        },
    )
    core.patch_namespaced_pod_status(
        name,
        "default",
        {"status": {"phase": phase, "podIP": "10.244.0.7", "containerStatuses": statuses}},
    )


def test_apply_create_change_unchanged(kubectl, tmp_path):
    manifest = tmp_path / "dep.yaml"
    manifest.write_text(MANIFEST.format(replicas=1, image="nginx:1"))
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "deployment.apps/web created"
    manifest.write_text(MANIFEST.format(replicas=2, image="nginx:2"))
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "deployment.apps/web configured"
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "deployment.apps/web unchanged"
    live = json.loads(kubectl("get", "deploy", "web", "-o", "json").stdout)
    assert live["spec"]["replicas"] == 2
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:2"
    assert live["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in live["metadata"]["annotations"]


def test_server_side_apply_and_conflict(kubectl, tmp_path):
    manifest = tmp_path / "ssa.yaml"
    manifest.write_text(
        MANIFEST.format(replicas=1, image="nginx:1").replace("name: web\n", "name: ssa\n", 1)
    )
    out = kubectl("apply", "--server-side", "-f", str(manifest))
    assert out.stdout.strip() == "deployment.apps/ssa serverside-applied"
    manifest.write_text(manifest.read_text().replace("replicas: 1", "replicas: 5"))
    clash = kubectl(
        "apply", "--server-side", "--field-manager", "other", "-f", str(manifest), ok=False
    )
    assert clash.returncode == 1
    assert 'Apply failed with 1 conflict: conflict with "kubectl"' in clash.stderr
    assert ".spec.replicas" in clash.stderr
    kubectl(
        "apply",
        "--server-side",
        "--field-manager",
        "other",
        "--force-conflicts",
        "-f",
        str(manifest),
    )
    assert kubectl("get", "deploy", "ssa", "-o", "jsonpath={.spec.replicas}").stdout == "5"


def test_get_tables_across_namespaces(cluster, kubectl):
    # Made through the Python client; kubectl create is in test_kubectl_fidelity.py.
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "settings"}, "data": {"a": "1", "b": "2"}}
    )
    core.create_namespaced_secret(
        "default", {"metadata": {"name": "token"}, "stringData": {"t": "x"}}
    )
    _pod(
        cluster,
        "crashy",
        "Running",
        [
            _status(
                "app",
                {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "finishedAt": (datetime.now(UTC) - timedelta(minutes=3)).strftime(
                            "%Y-%m-%dT%H:%M:%SZ"
                        ),
                    }
                },
                restarts=4,
            )
        ],
    )
    _pod(cluster, "pully", "Pending", [_status("app", {"waiting": {"reason": "ImagePullBackOff"}})])
    _pod(
        cluster,
        "oom",
        "Running",
        [_status("app", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})],
    )
    _pod(
        cluster,
        "fine",
        "Running",
        [_status("app", {"running": {"startedAt": "2024-01-01T00:00:00Z"}}, ready=True)],
    )
    _pod(
        cluster,
        "done",
        "Succeeded",
        [_status("app", {"terminated": {"exitCode": 0, "reason": "Completed"}})],
    )
    core.create_namespaced_pod(
        "default",
        {"metadata": {"name": "waiting"}, "spec": {"containers": [{"name": "a", "image": "x"}]}},
    )
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "crashy.1"},
            "involvedObject": {"kind": "Pod", "name": "crashy", "namespace": "default"},
            "reason": "BackOff",
            "message": "Back-off restarting failed container app",
            "type": "Warning",
            "firstTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        },
    )

    out = kubectl("get", "deploy,rs,pods,events,cm,secrets", "-A").stdout
    assert "NAMESPACE   NAME" in out and "READY   UP-TO-DATE   AVAILABLE   AGE" in out
    rows = {r[1]: r for r in _rows(out) if len(r) > 2}
    # RESTARTS shows the last restart's age as kubectl's human duration: "(3m ago)", or
    # "(3m2s ago)" when the test ran a little late.
    assert rows["pod/crashy"][2:5] == ["0/1", "CrashLoopBackOff", "4"]
    assert re.fullmatch(r"\(3m(\d+s)?", rows["pod/crashy"][5]) and rows["pod/crashy"][6] == "ago)"
    assert rows["pod/pully"][3] == "ImagePullBackOff"
    assert rows["pod/oom"][3] == "OOMKilled"
    assert rows["pod/fine"][2:4] == ["1/1", "Running"]
    assert rows["pod/done"][3] == "Completed"
    assert rows["pod/waiting"][3] == "Pending"
    assert rows["configmap/settings"][2] == "2"
    assert rows["secret/token"][2:4] == ["Opaque", "1"]
    assert "LAST SEEN   TYPE      REASON    OBJECT" in out
    assert "pod/crashy   Back-off restarting failed container app" in out

    wide = kubectl("get", "pods", "-o", "wide").stdout
    header = wide.splitlines()[0].split()
    assert header[:9] == [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED",
        "NODE",
    ]
    fine = next(r for r in _rows(wide) if r[0] == "fine")
    assert "10.244.0.7" in fine and "node-1" in fine


def test_logs_of_pod_and_deployment(cluster, kubectl, tmp_path):
    _pod(
        cluster,
        "web-abc12",
        "Running",
        [_status("c", {"running": {"startedAt": "2024-01-01T00:00:00Z"}}, ready=True)],
        labels={"app": "logged"},
    )
    now = datetime.now(UTC)
    cluster.on_loop(
        lambda: [
            cluster.logs.append("default", "web-abc12", "c", now, f"hello {i}") for i in range(3)
        ]
    )
    assert kubectl("logs", "pod/web-abc12").stdout == "hello 0\nhello 1\nhello 2\n"
    assert kubectl("logs", "web-abc12", "--tail=1").stdout == "hello 2\n"
    manifest = tmp_path / "logged.yaml"
    manifest.write_text(MANIFEST.format(replicas=1, image="nginx:1").replace("web", "logged"))
    kubectl("apply", "-f", str(manifest))
    assert kubectl("logs", "deploy/logged").stdout == "hello 0\nhello 1\nhello 2\n"
    missing = kubectl("logs", "pod/nope", ok=False)
    assert missing.returncode == 1 and 'pods "nope" not found' in missing.stderr


def test_delete(kubectl, tmp_path):
    manifest = tmp_path / "gone.yaml"
    manifest.write_text(MANIFEST.format(replicas=1, image="nginx:1").replace("web", "gone"))
    kubectl("apply", "-f", str(manifest))
    assert kubectl("delete", "deploy", "gone").stdout.strip() == 'deployment.apps "gone" deleted'
    again = kubectl("get", "deploy", "gone", ok=False)
    assert again.returncode == 1
    assert 'Error from server (NotFound): deployments.apps "gone" not found' in again.stderr


def test_explain(kubectl):
    out = kubectl("explain", "deployment.spec.strategy").stdout
    assert "FIELD: strategy <DeploymentStrategy>" in out
    assert "rollingUpdate" in out and "type\t<string>" in out


def _complete_status(generation: int, replicas: int) -> dict:
    return {
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
    }


def test_rollout_status_waits_for_status_written_later(cluster, kubectl, tmp_path):
    manifest = tmp_path / "roll.yaml"
    manifest.write_text(MANIFEST.format(replicas=2, image="nginx:1").replace("web", "roll"))
    kubectl("apply", "-f", str(manifest))
    apps = client.AppsV1Api(cluster.api)
    proc = subprocess.Popen(
        [KUBECTL, "rollout", "status", "deployment/roll", "--timeout=30s"],
        env=kubectl.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    assert proc.poll() is None  # still waiting: nothing has observed the spec yet
    apps.patch_namespaced_deployment_status(
        "roll",
        "default",
        {
            "status": {
                "observedGeneration": 1,
                "replicas": 2,
                "updatedReplicas": 1,
                "availableReplicas": 0,
            }
        },
    )
    time.sleep(0.5)
    apps.patch_namespaced_deployment_status("roll", "default", _complete_status(1, 2))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Waiting for deployment spec update to be observed..." in out
    assert (
        'Waiting for deployment "roll" rollout to finish: 1 out of 2 new replicas have been updated...'
        in out
    )
    assert out.strip().endswith('deployment "roll" successfully rolled out')

    done = kubectl("rollout", "status", "deployment/roll", "--timeout=10s")
    assert done.stdout.strip() == 'deployment "roll" successfully rolled out'
