"""Rollouts through the real kubectl against the sandbox cluster, over loopback.

The whole stand-in runs: API server, scheduler, kubelet and the Deployment and
ReplicaSet controllers, on a fast clock. Only kubectl talks to it, so what is
asserted here is what an operator (or aifixer) would see on a real cluster.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kube_cluster import served_cluster

from aifixer_sandbox.scenario import Image, Node
from aifixer_sandbox.world import kubeconfig_text

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SPEED = 40.0

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  progressDeadlineSeconds: {deadline}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 8080}}]
"""


def _image(ref: str) -> Image | None:
    """Every nginx tag exists in the registry; anything else does not (ErrImagePull)."""
    return Image(port=8080) if ref.startswith("nginx:") else None


@dataclass
class Sandbox:
    kubeconfig: Path
    workdir: Path
    run: Callable[..., subprocess.CompletedProcess]

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run(self.kubeconfig, *args, timeout=timeout)

    def apply(self, name: str, image: str, replicas: int = 2, deadline: int = 600) -> None:
        path = self.workdir / f"{name}.yaml"
        path.write_text(
            MANIFEST.format(name=name, image=image, replicas=replicas, deadline=deadline)
        )
        proc = self.kubectl("apply", "-f", str(path))
        assert proc.returncode == 0, proc.stderr

    def get(self, *args: str) -> dict:
        proc = self.kubectl("get", *args, "-o", "json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def rollout_status(self, name: str, timeout: str = "60s") -> subprocess.CompletedProcess:
        return self.kubectl(
            "rollout", "status", f"deployment/{name}", f"--timeout={timeout}", timeout=90
        )


@pytest.fixture
def sandbox(tmp_path: Path, kubectl) -> Iterator[Sandbox]:
    with served_cluster(_image, [Node(name="node-1")], speed=SPEED) as (_, url):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(url))
        yield Sandbox(kubeconfig, tmp_path, kubectl)


def _revision(obj: dict) -> str:
    return obj["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision", "")


def _history_revisions(sandbox: Sandbox, name: str) -> list[str]:
    proc = sandbox.kubectl("rollout", "history", f"deployment/{name}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"deployment.apps/{name} ", lines
    assert lines[1].split() == ["REVISION", "CHANGE-CAUSE"]
    return [line.split()[0] for line in lines[2:] if line.strip()]


def test_apply_update_history_and_undo(sandbox: Sandbox):
    sandbox.apply("web", "nginx:1.25")
    proc = sandbox.rollout_status("web")
    assert proc.returncode == 0, proc.stderr
    assert 'deployment "web" successfully rolled out' in proc.stdout

    sandbox.apply("web", "nginx:1.26")
    proc = sandbox.rollout_status("web")
    assert proc.returncode == 0, proc.stderr
    deploy = sandbox.get("deployment/web")
    assert _revision(deploy) == "2"
    assert deploy["status"]["updatedReplicas"] == deploy["status"]["availableReplicas"] == 2
    rses = sandbox.get("replicasets", "-l", "app=web")["items"]
    assert sorted(_revision(rs) for rs in rses) == ["1", "2"]
    assert _history_revisions(sandbox, "web") == ["1", "2"]

    proc = sandbox.kubectl("rollout", "undo", "deployment/web")
    assert proc.returncode == 0, proc.stderr
    assert "rolled back" in proc.stdout
    proc = sandbox.rollout_status("web")
    assert proc.returncode == 0, proc.stderr
    deploy = sandbox.get("deployment/web")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert _revision(deploy) == "3"
    assert _history_revisions(sandbox, "web") == ["2", "3"]
    pods = sandbox.get("pods", "-l", "app=web")["items"]
    assert sorted(p["spec"]["containers"][0]["image"] for p in pods) == ["nginx:1.25", "nginx:1.25"]

    detail = sandbox.kubectl("rollout", "history", "deployment/web", "--revision=3")
    assert detail.returncode == 0, detail.stderr
    assert "nginx:1.25" in detail.stdout


def test_broken_image_times_out_and_then_exceeds_the_progress_deadline(sandbox: Sandbox):
    sandbox.apply("api", "nginx:1.25", replicas=2, deadline=600)
    assert sandbox.rollout_status("api").returncode == 0

    sandbox.apply("api", "broken/api:2", replicas=2, deadline=600)
    proc = sandbox.rollout_status("api", timeout="3s")
    assert proc.returncode != 0
    assert 'Waiting for deployment "api" rollout to finish' in proc.stdout

    # Old pods keep serving (maxUnavailable rounds 25% of 2 down to 0).
    pods = sandbox.get("pods", "-l", "app=api")["items"]
    serving = [p for p in pods if p["spec"]["containers"][0]["image"] == "nginx:1.25"]
    assert len(serving) == 2
    assert all(
        c["status"] == "True"
        for p in serving
        for c in p["status"]["conditions"]
        if c["type"] == "Ready"
    )
    stuck = [p for p in pods if p["spec"]["containers"][0]["image"] == "broken/api:2"]
    assert len(stuck) == 1

    # 20 simulated seconds without progress are half a wall second at this speed.
    sandbox.apply("api", "broken/api:2", replicas=2, deadline=20)
    proc = sandbox.rollout_status("api", timeout="60s")
    assert proc.returncode == 1
    assert 'error: deployment "api" exceeded its progress deadline' in proc.stderr
    conditions = {c["type"]: c for c in sandbox.get("deployment/api")["status"]["conditions"]}
    assert conditions["Progressing"]["status"] == "False"
    assert conditions["Progressing"]["reason"] == "ProgressDeadlineExceeded"
    assert conditions["Progressing"]["message"].endswith("has timed out progressing.")
    assert conditions["Available"]["status"] == "True"
