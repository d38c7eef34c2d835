"""kubectl commands beyond the farm's own: watching Tables, error Statuses, `create`.

Each runs the installed kubectl (v1.32) against a private API stand-in, with a private
HOME and discovery cache, and checks what an operator would see printed.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from kubernetes import client

from tests.integration.test_kube_api import IMAGE_ID, Cluster, start_cluster

KUBECTL = shutil.which("kubectl")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    c, stop = start_cluster(tmp_path_factory.mktemp("kubectl-fidelity"))
    yield c
    stop()


@pytest.fixture
def env(cluster, tmp_path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {
        **os.environ,
        "HOME": str(home),
        "KUBECACHEDIR": str(home / "cache"),
        "KUBECONFIG": str(cluster.kubeconfig),
    }


@pytest.fixture
def kubectl(env):
    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    return run


class _Lines:
    """A running process's stdout, line by line, readable with a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, predicate, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; printed so far: {self.seen}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the process ended; printed: {self.seen}")
            self.seen.append(line)
        return self.seen


def _running(name: str, restarts: int = 0) -> dict:
    return {
        "status": {
            "phase": "Running",
            "podIP": "10.244.0.9",
            "containerStatuses": [
                {
                    "name": "app",
                    "image": "img:1",
                    "imageID": IMAGE_ID,
                    "ready": True,
                    "restartCount": restarts,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                }
            ],
        }
    }


def test_get_pods_watch_prints_the_columns_on_every_update(cluster, env):
    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": "watched"}})
    core.create_namespaced_pod(
        "watched",
        {
            "metadata": {"name": "w1"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "img:1"}]},
        },
    )
    proc = subprocess.Popen(
        [KUBECTL, "get", "pods", "-w", "-n", "watched", "--kubeconfig", str(cluster.kubeconfig)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _Lines(proc)
        lines.wait_for(lambda seen: len(seen) >= 2)
        core.patch_namespaced_pod_status("w1", "watched", _running("w1"))
        core.patch_namespaced_pod_status("w1", "watched", _running("w1", restarts=2))
        seen = lines.wait_for(lambda seen: len(seen) >= 4)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    rows = [line.split() for line in seen]
    # One header, from the list; the watch's Tables reuse its columns without printing it again.
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows[1][:4] == ["w1", "0/1", "Pending", "0"]
    assert rows[2][:4] == ["w1", "1/1", "Running", "0"]
    assert rows[3][:4] == ["w1", "1/1", "Running", "2"]
    assert all(len(r) == 5 for r in rows[1:4])
    assert "NAME" not in " ".join(seen[1:])


def test_watch_tables_carry_columns_once(cluster):
    """On the wire: a Table per event, column definitions only in the first one."""
    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": "wire"}})
    listed = requests.get(f"{cluster.url}/api/v1/namespaces/wire/pods", timeout=5).json()
    rv = listed["metadata"]["resourceVersion"]

    def create() -> None:
        time.sleep(0.3)
        for name in ("a", "b"):
            core.create_namespaced_pod(
                "wire",
                {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
            )

    threading.Thread(target=create, daemon=True).start()
    with requests.get(
        f"{cluster.url}/api/v1/namespaces/wire/pods",
        params={"watch": "true", "resourceVersion": rv, "timeoutSeconds": "3"},
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
        stream=True,
        timeout=10,
    ) as resp:
        events = [json.loads(line) for line in resp.iter_lines() if line][:2]
    first, second = (e["object"] for e in events)
    assert [e["type"] for e in events] == ["ADDED", "ADDED"]
    assert first["kind"] == second["kind"] == "Table"
    assert [c["name"] for c in first["columnDefinitions"]][:5] == [
        "Name",
        "Ready",
        "Status",
        "Restarts",
        "Age",
    ]
    assert second["columnDefinitions"] is None
    assert first["rows"][0]["cells"][0] == "a" and second["rows"][0]["cells"][0] == "b"
    assert second["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert (
        second["metadata"]["resourceVersion"]
        == second["rows"][0]["object"]["metadata"]["resourceVersion"]
    )


def test_not_found_statuses_carry_details(cluster, kubectl):
    missing = kubectl("get", "pod", "nosuch")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "nosuch" not found'
    missing = kubectl("get", "deployment", "nosuch")
    assert missing.stderr.strip() == (
        'Error from server (NotFound): deployments.apps "nosuch" not found'
    )

    def status(path: str) -> dict:
        resp = requests.get(cluster.url + path, timeout=5)
        assert resp.status_code == 404
        return resp.json()

    # A named object: name and resource, and no group for the core group (Go's omitempty).
    assert status("/api/v1/namespaces/default/pods/nosuch")["details"] == {
        "name": "nosuch",
        "kind": "pods",
    }
    assert status("/apis/apps/v1/namespaces/default/deployments/nosuch")["details"] == {
        "name": "nosuch",
        "group": "apps",
        "kind": "deployments",
    }
    # No such route: the generic Status, whose details name nothing but are there.
    for path in (
        "/api/v1/nosuchresource",
        "/api/v1/namespaces/default/pods/p/nosuchsubresource",
        "/apis/nosuch.example.com/v1",
    ):
        body = status(path)
        assert body["reason"] == "NotFound"
        assert body["message"] == "the server could not find the requested resource"
        assert body["details"] == {}


def test_debug_answers_with_an_error_not_a_panic(cluster, kubectl):
    missing = kubectl("debug", "nosuch", "--image=busybox", "--profile=general")
    assert missing.returncode == 1
    assert 'Error from server (NotFound): pods "nosuch" not found' in missing.stderr
    client.CoreV1Api(cluster.api).create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "debugged"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "img:1"}]},
        },
    )
    # The stand-in has no ephemeralcontainers subresource: kubectl recognises the generic
    # 404 (details without a name) as a cluster with ephemeral containers disabled.
    out = kubectl("debug", "debugged", "--image=busybox", "--profile=general")
    assert "panic" not in out.stderr
    assert out.returncode == 1
    assert "error: ephemeral containers are disabled for this cluster" in out.stderr


def test_create_configmap_secret_namespace(cluster, kubectl):
    # kubectl's typed clients send these as protobuf (and never retry as JSON).
    out = kubectl("create", "configmap", "made", "--from-literal=a=b", "--from-literal=c=d")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "configmap/made created"
    out = kubectl("create", "secret", "generic", "hush", "--from-literal=token=s3cret")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "secret/hush created"
    out = kubectl("create", "namespace", "fresh")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "namespace/fresh created"
    out = kubectl("create", "serviceaccount", "robot", "-n", "fresh")
    assert out.returncode == 0, out.stderr

    core = client.CoreV1Api(cluster.api)
    cm = core.read_namespaced_config_map("made", "default")
    assert cm.data == {"a": "b", "c": "d"}
    assert cm.metadata.managed_fields[0].manager == "kubectl-create"
    secret = core.read_namespaced_secret("hush", "default")
    assert secret.type == "Opaque" and secret.data == {"token": "czNjcmV0"}
    assert core.read_namespace("fresh").status.phase == "Active"
    assert core.read_namespaced_service_account("robot", "fresh").metadata.name == "robot"

    again = kubectl("create", "configmap", "made", "--from-literal=a=b")
    assert again.returncode == 1
    assert 'configmaps "made" already exists' in again.stderr


def test_media_types_a_kind_is_not_decoded_from_are_not_offered(cluster, kubectl):
    # The stand-in has no protobuf description of Deployments: its 415 says what it takes.
    out = kubectl("create", "deployment", "pb", "--image=nginx")
    assert out.returncode == 1
    assert out.stderr.strip().endswith(
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json, application/yaml"
    )
    resp = requests.post(
        f"{cluster.url}/api/v1/namespaces/default/configmaps",
        data="x",
        headers={"Content-Type": "text/plain"},
        timeout=5,
    )
    assert resp.status_code == 415
    assert resp.json()["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json, application/yaml, application/vnd.kubernetes.protobuf"
    )
    assert "details" not in resp.json()
    resp = requests.post(
        f"{cluster.url}/api/v1/namespaces/default/configmaps",
        data=b"\x00garbage",
        headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
        timeout=5,
    )
    assert resp.status_code == 400 and resp.json()["reason"] == "BadRequest"
