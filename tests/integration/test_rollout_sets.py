"""StatefulSet and DaemonSet rollouts through the real kubectl against the sandbox.

The whole stand-in runs (API server, scheduler, kubelet, the workload controllers) on a
fast clock, and only kubectl talks to it: `rollout status` must reach its verdicts
from the status fields the controllers write, `rollout history` must read their
ControllerRevisions, and the pods must come and go in the order a real cluster uses.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kube_cluster import served_cluster

from aifixer.adapters.kube import rollout_status
from aifixer_sandbox.scenario import Image, Node, Taint
from aifixer_sandbox.world import kubeconfig_text

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SPEED = 40.0

STATEFULSET = """\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {name}
spec:
  serviceName: {name}
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  updateStrategy: {strategy}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: db
        image: {image}
"""

DAEMONSET = """\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {name}
spec:
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      nodeSelector: {node_selector}
      tolerations: {tolerations}
      containers:
      - name: agent
        image: {image}
"""


def _image(ref: str) -> Image | None:
    """Every nginx tag exists; anything else does not (ErrImagePull)."""
    return Image(port=8080) if ref.startswith("nginx:") else None


@dataclass
class Sandbox:
    kubeconfig: Path
    workdir: Path
    run: Callable[..., subprocess.CompletedProcess]

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run(self.kubeconfig, *args, timeout=timeout)

    def apply_text(self, name: str, text: str) -> None:
        path = self.workdir / f"{name}.yaml"
        path.write_text(text)
        proc = self.kubectl("apply", "-f", str(path))
        assert proc.returncode == 0, proc.stderr

    def statefulset(self, name: str, image: str, replicas: int = 3, strategy: str = "{}") -> None:
        self.apply_text(
            name,
            STATEFULSET.format(name=name, image=image, replicas=replicas, strategy=strategy),
        )

    def daemonset(
        self, name: str, image: str, node_selector: str = "{}", tolerations: str = "[]"
    ) -> None:
        self.apply_text(
            name,
            DAEMONSET.format(
                name=name, image=image, node_selector=node_selector, tolerations=tolerations
            ),
        )

    def get(self, *args: str) -> dict:
        proc = self.kubectl("get", *args, "-o", "json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def pods(self, app: str) -> dict[str, dict]:
        return {p["metadata"]["name"]: p for p in self.get("pods", "-l", f"app={app}")["items"]}

    def rollout_status(self, what: str, timeout: str = "60s") -> subprocess.CompletedProcess:
        proc = self.kubectl("rollout", "status", what, f"--timeout={timeout}", timeout=90)
        # aifixer's verify reads the same object by the same rule: the same verdict and
        # the same words as kubectl's last line (checked in settled states only).
        verdict = rollout_status(self.get(what))
        lines = proc.stdout.strip().splitlines()
        if proc.returncode == 0:
            assert verdict.done and not verdict.failed, verdict
            assert lines[-1] == verdict.message
        elif "strategy type" in proc.stderr:
            assert verdict.failed and verdict.message in proc.stderr
        else:
            assert not verdict.done and lines[-1] == verdict.message, (lines, verdict)
        return proc


@pytest.fixture
def sandbox(tmp_path: Path, kubectl) -> Iterator[Sandbox]:
    nodes = [
        Node(name="node-1"),
        Node(name="node-2", labels={"disk": "ssd"}),
        Node(
            name="node-3",
            labels={"disk": "ssd"},
            taints=[Taint(key="dedicated", value="gpu", effect="NoSchedule")],
        ),
    ]
    with served_cluster(_image, nodes, speed=SPEED) as (_, url):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(url))
        yield Sandbox(kubeconfig, tmp_path, kubectl)


def _events(sandbox: Sandbox, kind: str) -> list[dict]:
    """The events about objects of `kind`, in the order they were recorded."""
    items = sandbox.get("events", "--field-selector", f"involvedObject.kind={kind}")["items"]
    return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))


def _image_of(pod: dict) -> str:
    return pod["spec"]["containers"][0]["image"]


def test_statefulset_ordered_pods_status_and_history(sandbox: Sandbox):
    sandbox.statefulset("db", "nginx:1.25")
    proc = sandbox.rollout_status("statefulset/db")
    assert proc.returncode == 0, proc.stderr
    assert "partitioned roll out complete: 3 new pods have been updated..." in proc.stdout

    sts = sandbox.get("statefulset/db")
    status = sts["status"]
    assert status["observedGeneration"] == sts["metadata"]["generation"] == 1
    assert status["replicas"] == status["readyReplicas"] == status["updatedReplicas"] == 3
    assert status["currentReplicas"] == status["availableReplicas"] == 3
    assert status["currentRevision"] == status["updateRevision"]
    assert status["updateRevision"].startswith("db-")
    pods = sandbox.pods("db")
    assert sorted(pods) == ["db-0", "db-1", "db-2"]
    for name, pod in pods.items():
        labels = pod["metadata"]["labels"]
        assert labels["controller-revision-hash"] == status["updateRevision"]
        assert labels["statefulset.kubernetes.io/pod-name"] == name
        assert labels["apps.kubernetes.io/pod-index"] == name[-1]
        assert pod["spec"]["hostname"] == name and pod["spec"]["subdomain"] == "db"
        assert pod["metadata"]["ownerReferences"][0]["uid"] == sts["metadata"]["uid"]
    # Created in ordinal order, each once the previous one was ready.
    events = _events(sandbox, "StatefulSet")
    messages = [e["message"] for e in events if e["reason"] == "SuccessfulCreate"]
    assert messages[:3] == [f"create Pod db-{i} in StatefulSet db successful" for i in range(3)]

    sandbox.statefulset("db", "nginx:1.26")
    proc = sandbox.rollout_status("statefulset/db")
    assert proc.returncode == 0, proc.stderr
    status = sandbox.get("statefulset/db")["status"]
    assert status["currentRevision"] == status["updateRevision"] != sts["status"]["updateRevision"]
    assert {_image_of(p) for p in sandbox.pods("db").values()} == {"nginx:1.26"}
    # Replaced from the highest ordinal down.
    events = _events(sandbox, "StatefulSet")
    deleted = [e["message"].split()[2] for e in events if e["reason"] == "SuccessfulDelete"]
    assert deleted == ["db-2", "db-1", "db-0"]

    revisions = sandbox.get("controllerrevisions", "-l", "app=db")["items"]
    assert sorted(r["revision"] for r in revisions) == [1, 2]
    proc = sandbox.kubectl("rollout", "history", "statefulset/db")
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip()] == ["1", "2"]


def test_statefulset_partition_and_ondelete(sandbox: Sandbox):
    sandbox.statefulset("kv", "nginx:1.25")
    assert sandbox.rollout_status("statefulset/kv").returncode == 0
    sandbox.statefulset(
        "kv", "nginx:1.26", strategy="{type: RollingUpdate, rollingUpdate: {partition: 2}}"
    )
    proc = sandbox.rollout_status("statefulset/kv")
    assert proc.returncode == 0, proc.stderr
    assert "partitioned roll out complete: 1 new pods have been updated..." in proc.stdout
    images = {n: _image_of(p) for n, p in sandbox.pods("kv").items()}
    assert images == {"kv-0": "nginx:1.25", "kv-1": "nginx:1.25", "kv-2": "nginx:1.26"}
    status = sandbox.get("statefulset/kv")["status"]
    assert status["updatedReplicas"] == 1 and status["currentReplicas"] == 2
    assert status["currentRevision"] != status["updateRevision"]
    # A pod below the partition that is deleted comes back at the current revision.
    assert sandbox.kubectl("delete", "pod", "kv-0").returncode == 0
    assert sandbox.rollout_status("statefulset/kv").returncode == 0
    assert _image_of(sandbox.pods("kv")["kv-0"]) == "nginx:1.25"

    sandbox.statefulset("kv", "nginx:1.27", strategy="{type: OnDelete}")
    proc = sandbox.rollout_status("statefulset/kv", timeout="5s")
    assert proc.returncode != 0
    assert "only available for RollingUpdate strategy type" in proc.stderr
    assert {_image_of(p) for p in sandbox.pods("kv").values()} == {"nginx:1.25", "nginx:1.26"}
    assert sandbox.kubectl("delete", "pod", "kv-1").returncode == 0
    sandbox.kubectl("wait", "--for=condition=Ready", "pod/kv-1", "--timeout=30s")
    assert _image_of(sandbox.pods("kv")["kv-1"]) == "nginx:1.27"


def test_statefulset_broken_release_stalls_and_needs_a_forced_rollback(sandbox: Sandbox):
    sandbox.statefulset("ledger", "nginx:1.25")
    assert sandbox.rollout_status("statefulset/ledger").returncode == 0
    sandbox.statefulset("ledger", "broken/ledger:2")
    proc = sandbox.rollout_status("statefulset/ledger", timeout="3s")
    assert proc.returncode != 0
    assert "Waiting for 1 pods to be ready..." in proc.stdout
    images = {n: _image_of(p) for n, p in sandbox.pods("ledger").items()}
    assert images == {
        "ledger-0": "nginx:1.25",
        "ledger-1": "nginx:1.25",
        "ledger-2": "broken/ledger:2",
    }
    # Reverting the template alone does not replace the broken pod (OrderedReady)...
    sandbox.statefulset("ledger", "nginx:1.25")
    proc = sandbox.rollout_status("statefulset/ledger", timeout="3s")
    assert proc.returncode != 0
    assert _image_of(sandbox.pods("ledger")["ledger-2"]) == "broken/ledger:2"
    # ...deleting it does, and the old revision comes back under the next number.
    assert sandbox.kubectl("delete", "pod", "ledger-2").returncode == 0
    assert sandbox.rollout_status("statefulset/ledger").returncode == 0
    assert _image_of(sandbox.pods("ledger")["ledger-2"]) == "nginx:1.25"
    revisions = sandbox.get("controllerrevisions", "-l", "app=ledger")["items"]
    by_image = {
        r["data"]["spec"]["template"]["spec"]["containers"][0]["image"]: r["revision"]
        for r in revisions
    }
    assert by_image == {"broken/ledger:2": 2, "nginx:1.25": 3}


def test_daemonset_one_pod_per_allowed_node_and_rolling_update(sandbox: Sandbox):
    sandbox.daemonset("agent", "nginx:1.25")
    proc = sandbox.rollout_status("daemonset/agent")
    assert proc.returncode == 0, proc.stderr
    assert 'daemon set "agent" successfully rolled out' in proc.stdout
    # node-3's taint is not tolerated: two nodes.
    pods = sandbox.pods("agent")
    assert sorted(p["spec"]["nodeName"] for p in pods.values()) == ["node-1", "node-2"]
    ds = sandbox.get("daemonset/agent")
    status = ds["status"]
    assert status["desiredNumberScheduled"] == status["currentNumberScheduled"] == 2
    assert status["numberReady"] == status["numberAvailable"] == 2
    assert status["updatedNumberScheduled"] == 2
    assert status["observedGeneration"] == ds["metadata"]["generation"]
    for pod in pods.values():
        assert pod["metadata"]["name"].startswith("agent-")
        assert pod["metadata"]["labels"]["controller-revision-hash"]
        terms = pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert terms == [
            {
                "matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [pod["spec"]["nodeName"]]}
                ]
            }
        ]

    # A node selector and a toleration move it to the ssd nodes, the tainted one included.
    sandbox.daemonset(
        "agent",
        "nginx:1.25",
        node_selector="{disk: ssd}",
        tolerations="[{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]",
    )
    assert sandbox.rollout_status("daemonset/agent").returncode == 0
    nodes = sorted(p["spec"]["nodeName"] for p in sandbox.pods("agent").values())
    assert nodes == ["node-2", "node-3"]

    # A broken release: maxUnavailable 1 replaces one pod, then waits.
    sandbox.daemonset("agent", "broken/agent:2", node_selector="{disk: ssd}",
                      tolerations="[{key: dedicated, operator: Exists}]")  # fmt: skip
    proc = sandbox.rollout_status("daemonset/agent", timeout="3s")
    assert proc.returncode != 0
    assert 'Waiting for daemon set "agent" rollout to finish' in proc.stdout
    images = sorted(_image_of(p) for p in sandbox.pods("agent").values())
    assert images == ["broken/agent:2", "nginx:1.25"]
    # Reverting the template replaces the unavailable pod by itself.
    sandbox.daemonset("agent", "nginx:1.25", node_selector="{disk: ssd}",
                      tolerations="[{key: dedicated, operator: Exists}]")  # fmt: skip
    assert sandbox.rollout_status("daemonset/agent").returncode == 0
    assert {_image_of(p) for p in sandbox.pods("agent").values()} == {"nginx:1.25"}
    proc = sandbox.kubectl("get", "ds", "agent")
    assert proc.returncode == 0 and proc.stdout.split()[:8] == [
        "NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE", "SELECTOR",
    ]  # fmt: skip
