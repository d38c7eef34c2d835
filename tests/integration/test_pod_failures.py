"""Pod failures as the real `kubernetes` client sees them, over loopback.

A Cluster with the API server in front of it runs on a background loop; pods are
created and inspected only through the client (status, events, logs, `previous`),
and container logs are checked in the Loki stand-in's LogStore too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kube_cluster import served_cluster, until
from kubernetes import client

from aifixer_sandbox import logql
from aifixer_sandbox.kube.cluster import Cluster
from aifixer_sandbox.loki import LogStore
from aifixer_sandbox.scenario import Image, Node, Taint

NS = "shop"
IMAGES = {
    "shop/web:1.0": Image(
        port=8080, logs=["web 1.0 starting", "listening on :8080"], binaries=["web", "sh"]
    ),
    "shop/api:2.0": Image(requires_env={"DATABASE_URL": None}, logs=["api 2.0"]),
    "shop/hog:1.0": Image(memory_mib=300),
}


class Env:
    def __init__(self, api: client.CoreV1Api, cluster: Cluster, logstore: LogStore) -> None:
        self.api = api
        self.cluster = cluster
        self.logstore = logstore

    def create(self, name: str, image: str, pod_spec: dict | None = None, **container) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "containers": [{"name": "app", "image": image, **container}],
                **(pod_spec or {}),
            },
        }
        self.api.create_namespaced_pod(NS, body)

    def container(self, name: str) -> client.V1ContainerStatus | None:
        statuses = self.api.read_namespaced_pod_status(name, NS).status.container_statuses
        return statuses[0] if statuses else None

    def events(self, name: str, reason: str) -> list[client.CoreV1Event]:
        selector = f"involvedObject.name={name},reason={reason}"
        return self.api.list_namespaced_event(NS, field_selector=selector).items

    until = staticmethod(until)


@pytest.fixture
def env() -> Iterator[Env]:
    logstore = LogStore()
    nodes = [
        Node(name="node-1", memory_mib=4096),
        Node(name="batch-1", taints=[Taint(key="dedicated", value="batch")]),
    ]
    with served_cluster(IMAGES.get, nodes, logs=logstore.push, namespaces=[NS]) as (
        cluster,
        url,
    ):
        cfg = client.Configuration()
        cfg.host = url
        api_client = client.ApiClient(cfg)
        try:
            yield Env(client.CoreV1Api(api_client), cluster, logstore)
        finally:
            api_client.close()


def waiting_reason(c: client.V1ContainerStatus | None) -> str | None:
    return c.state.waiting.reason if c and c.state and c.state.waiting else None


def last_terminated(c: client.V1ContainerStatus | None) -> client.V1ContainerStateTerminated | None:
    return c.last_state.terminated if c and c.last_state else None


@pytest.mark.timeout(60)
def test_healthy_pod_ready_with_logs_in_the_log_store(env: Env):
    env.create(
        "web", "shop/web:1.0", readinessProbe={"httpGet": {"path": "/healthz", "port": 8080}}
    )
    env.until("Ready", lambda: env.container("web") and env.container("web").ready)
    pod = env.api.read_namespaced_pod("web", NS)
    assert pod.status.phase == "Running" and pod.spec.node_name == "node-1"
    assert pod.status.qos_class == "BestEffort"
    assert env.api.read_namespaced_pod_log("web", NS) == "web 1.0 starting\nlistening on :8080\n"
    query = logql.selector_of(logql.parse(f'{{namespace="{NS}", pod="web"}}'))
    streams, _ = env.logstore.select(query, 0, time.time_ns() + 1, 100, backward=False)
    assert len(streams) == 1
    labels, entries = streams[0]
    assert [line for _, line in entries] == ["web 1.0 starting", "listening on :8080"]
    assert (
        labels["job"] == f"{NS}/app" and labels["app"] == "web" and labels["node_name"] == "node-1"
    )


@pytest.mark.timeout(60)
def test_image_pull_backoff(env: Env):
    env.create("ghost", "shop/web:9.9")
    env.until(
        "ImagePullBackOff", lambda: waiting_reason(env.container("ghost")) == "ImagePullBackOff"
    )
    assert env.api.read_namespaced_pod("ghost", NS).status.phase == "Pending"
    messages = [e.message for e in env.events("ghost", "Failed")]
    assert "Error: ErrImagePull" in messages
    assert any("code = NotFound" in m for m in messages)


@pytest.mark.timeout(60)
def test_crash_loop_on_missing_env(env: Env):
    env.create("api", "shop/api:2.0")
    env.until(
        "restartCount >= 2",
        lambda: (
            env.container("api")
            and env.container("api").restart_count >= 2
            and waiting_reason(env.container("api")) == "CrashLoopBackOff"
        ),
    )
    last = last_terminated(env.container("api"))
    assert last.exit_code == 1 and last.reason == "Error"
    previous = env.api.read_namespaced_pod_log("api", NS, container="app", previous=True)
    assert previous == "FATAL: environment variable DATABASE_URL is not set\n"
    assert env.events("api", "BackOff")[0].type == "Warning"


@pytest.mark.timeout(60)
def test_crash_loop_on_command_not_found(env: Env):
    env.create("typo", "shop/web:1.0", command=["sh", "-c", "wbe"])
    env.until("restart", lambda: last_terminated(env.container("typo")) is not None)
    assert last_terminated(env.container("typo")).exit_code == 127
    assert "wbe: not found" in env.api.read_namespaced_pod_log("typo", NS, previous=True)


@pytest.mark.timeout(60)
def test_oom_killed(env: Env):
    env.create("hog", "shop/hog:1.0", resources={"limits": {"memory": "128Mi"}})
    env.until("OOMKilled", lambda: last_terminated(env.container("hog")) is not None)
    last = last_terminated(env.container("hog"))
    assert (last.exit_code, last.reason) == (137, "OOMKilled")


@pytest.mark.timeout(60)
def test_readiness_failing(env: Env):
    env.create(
        "rp",
        "shop/web:1.0",
        readinessProbe={"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
    )
    env.until("Unhealthy", lambda: env.events("rp", "Unhealthy"))
    c = env.container("rp")
    assert c.ready is False and c.state.running is not None
    assert (
        env.events("rp", "Unhealthy")[0].message
        == "Readiness probe failed: HTTP probe failed with statuscode: 404"
    )
    ready = next(
        x
        for x in env.api.read_namespaced_pod_status("rp", NS).status.conditions
        if x.type == "Ready"
    )
    assert (ready.status, ready.reason) == ("False", "ContainersNotReady")


@pytest.mark.timeout(60)
def test_liveness_restarts(env: Env):
    env.create(
        "lp", "shop/web:1.0", livenessProbe={"tcpSocket": {"port": 8081}, "periodSeconds": 5}
    )
    env.until(
        "two restarts", lambda: env.container("lp") and env.container("lp").restart_count >= 2
    )
    assert (
        env.events("lp", "Killing")[0].message
        == "Container app failed liveness probe, will be restarted"
    )
    assert last_terminated(env.container("lp")).exit_code == 137


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "pod_spec, container, reason",
    [
        ({}, {"resources": {"requests": {"memory": "6Gi"}}}, "1 Insufficient memory"),
        (
            {"nodeSelector": {"disk": "ssd"}},
            {},
            "1 node(s) didn't match Pod's node affinity/selector",
        ),
        (
            {
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "nodeSelector": {"none": "x"},
            },
            {},
            "2 node(s) didn't match Pod's node affinity/selector",
        ),
    ],
)
def test_failed_scheduling(env: Env, pod_spec: dict, container: dict, reason: str):
    env.create("pending", "shop/web:1.0", pod_spec=pod_spec, **container)
    env.until("FailedScheduling", lambda: env.events("pending", "FailedScheduling"))
    message = env.events("pending", "FailedScheduling")[0].message
    assert message.startswith("0/2 nodes are available: ") and reason in message
    assert message.endswith("..")
    cond = env.api.read_namespaced_pod_status("pending", NS).status.conditions[0]
    assert (cond.type, cond.status, cond.reason, cond.message) == (
        "PodScheduled",
        "False",
        "Unschedulable",
        message,
    )


@pytest.mark.timeout(60)
def test_create_container_config_error(env: Env):
    env.api.create_namespaced_config_map(
        NS, {"metadata": {"name": "api"}, "data": {"url": "postgres://db"}}
    )
    env.create(
        "api",
        "shop/api:2.0",
        env=[
            {
                "name": "DATABASE_URL",
                "valueFrom": {"configMapKeyRef": {"name": "api", "key": "database_url"}},
            }
        ],
    )
    env.until(
        "CreateContainerConfigError",
        lambda: waiting_reason(env.container("api")) == "CreateContainerConfigError",
    )
    assert (
        env.container("api").state.waiting.message
        == f"couldn't find key database_url in ConfigMap {NS}/api"
    )
    assert (
        env.events("api", "Failed")[0].message
        == f"Error: couldn't find key database_url in ConfigMap {NS}/api"
    )
