"""The simulated scheduler and kubelet, driven directly on a Store (no sockets).

Each test runs a Cluster on its own event loop with a fast clock and asserts what a
real cluster would show for one failure class: status, events, logs.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable

import pytest

from aifixer_sandbox.clock import Clock
from aifixer_sandbox.kube.cluster import Cluster
from aifixer_sandbox.kube.defaults import apply_defaults
from aifixer_sandbox.kube.kubelet import Backoff, go_duration, image_id, normalize_image
from aifixer_sandbox.kube.resources import core
from aifixer_sandbox.kube.scheduler import fit_error
from aifixer_sandbox.scenario import CrashSpec, Image, Node, Taint

PODS, EVENTS, CONFIGMAPS, SECRETS = (
    core("pods"),
    core("events"),
    core("configmaps"),
    core("secrets"),
)
SPEED = 60

IMAGES = {
    "shop/web:1.0": Image(
        port=8080,
        health_path="/healthz",
        logs=["web 1.0 starting", "listening on :8080"],
        memory_mib=64,
        binaries=["web", "sh"],
    ),
    "shop/api:2.0": Image(requires_env={"DATABASE_URL": None}, logs=["api 2.0"]),
    "shop/hog:1.0": Image(memory_mib=300, logs=["loading model"]),
    "shop/cfg:1.0": Image(requires_files=["/etc/app/config.yaml"], logs=["config loaded"]),
    "shop/bad:1.0": Image(crash=CrashSpec(after_seconds=3, exit_code=2, logs=["panic: nil map"])),
    "shop/slow:1.0": Image(port=9000, start_seconds=60),
    # A static binary with its own entrypoint and default arguments, and nothing else.
    "shop/static:1.0": Image(
        entrypoint=["/usr/local/bin/static-api"],
        cmd=["--listen=:8080"],
        binaries=["static-api"],
        logs=["static-api listening"],
    ),
}


def pod(name: str, image: str, **container) -> dict:
    spec = container.pop("pod_spec", {})
    return apply_defaults(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": image, **container}], **spec},
        }
    )


class Harness:
    def __init__(self, cluster: Cluster, sink: list) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.sink = sink

    def create(self, obj: dict) -> dict:
        res = {"Pod": PODS, "ConfigMap": CONFIGMAPS, "Secret": SECRETS}[obj["kind"]]
        return self.store.create(res, obj)

    def pod(self, name: str) -> dict:
        return self.store.get(PODS, "default", name)

    def container(self, name: str) -> dict:
        return (self.pod(name).get("status") or {}).get("containerStatuses", [{}])[0]

    def events(self, name: str, reason: str | None = None) -> list[dict]:
        return [
            e
            for e in self.store.list(EVENTS, "default")
            if e["involvedObject"]["name"] == name and (reason is None or e["reason"] == reason)
        ]

    async def until(self, what: str, pred: Callable[[], bool], timeout: float = 25) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


def run(test: Callable, nodes: tuple[Node, ...] = (Node(name="node-1"),)) -> None:
    async def main() -> None:
        sink: list = []
        cluster = Cluster(
            Clock(SPEED), IMAGES.get, lambda labels, entries: sink.append((labels, entries))
        )
        cluster.start()
        cluster.register_nodes(nodes)
        try:
            await test(Harness(cluster, sink))
        finally:
            await cluster.stop()

    asyncio.run(main())


def waiting(c: dict) -> dict:
    return (c.get("state") or {}).get("waiting") or {}


# -- pure helpers ------------------------------------------------------------------------


def test_go_duration_matches_time_duration_string():
    assert go_duration(0.7969) == "796ms"
    assert go_duration(1.5949) == "1.594s"
    assert go_duration(10) == "10s"
    assert go_duration(80) == "1m20s"
    assert go_duration(300) == "5m0s"


def test_image_references_are_qualified_like_containerd():
    assert normalize_image("nginx") == "docker.io/library/nginx:latest"
    assert normalize_image("acme/web:1") == "docker.io/acme/web:1"
    assert normalize_image("ghcr.io/acme/web:1") == "ghcr.io/acme/web:1"
    assert image_id("localhost:5000/web:1").startswith("localhost:5000/web@sha256:")


def test_backoff_doubles_to_the_cap_and_resets_after_idle():
    b = Backoff(10, 300)
    seen = []
    for i in range(7):
        b.next("c", i)
        seen.append(b.get("c"))
    assert seen == [10, 20, 40, 80, 160, 300, 300]
    assert b.in_backoff_since("c", 100, 105)
    b.next("c", 2000)  # idle for more than 2 x max: starts over
    assert b.get("c") == 10


def test_fit_error_text_has_the_preemption_postfix():
    msg = fit_error(
        2,
        {"a": ["Insufficient memory"], "b": ["node(s) had untolerated taint {gpu: true}"]},
        {"a": True, "b": False},
    )
    assert msg == (
        "0/2 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint {gpu: true}. "
        "preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, "
        "1 Preemption is not helpful for scheduling.."
    )


# -- healthy --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_healthy_pod_becomes_ready_with_logs():
    async def t(h: Harness) -> None:
        h.create(
            pod(
                "web",
                "shop/web:1.0",
                ports=[{"name": "http", "containerPort": 8080}],
                readinessProbe={
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "periodSeconds": 5,
                },
            )
        )
        await h.until("Ready", lambda: h.container("web").get("ready") is True)
        st = h.pod("web")["status"]
        assert st["phase"] == "Running"
        assert st["podIP"].startswith("10.244.0.")
        conds = {c["type"]: c["status"] for c in st["conditions"]}
        assert conds == {
            "PodReadyToStartContainers": "True",
            "Initialized": "True",
            "Ready": "True",
            "ContainersReady": "True",
            "PodScheduled": "True",
        }
        c = h.container("web")
        assert c["containerID"].startswith("containerd://") and c["restartCount"] == 0
        assert "running" in c["state"] and c["started"] is True
        reasons = [e["reason"] for e in h.events("web")]
        assert {"Scheduled", "Pulling", "Pulled", "Created", "Started"} <= set(reasons)
        assert not h.events("web", "Unhealthy")
        assert (
            h.cluster.logs.read("default", "web", "app") == "web 1.0 starting\nlistening on :8080\n"
        )
        labels, entries = h.sink[0]
        assert labels == {
            "namespace": "default",
            "pod": "web",
            "container": "app",
            "app": "web",
            "job": "default/app",
            "node_name": "node-1",
            "stream": "stdout",
        }
        assert [line for _, line in entries] == ["web 1.0 starting", "listening on :8080"]
        rv = h.pod("web")["metadata"]["resourceVersion"]
        await asyncio.sleep(30 / SPEED)
        assert h.pod("web")["metadata"]["resourceVersion"] == rv, (
            "no status writes when nothing changes"
        )

    run(t)


# -- image ------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_missing_image_goes_to_image_pull_backoff():
    async def t(h: Harness) -> None:
        h.create(pod("ghost", "shop/web:9.9"))
        await h.until(
            "ImagePullBackOff",
            lambda: waiting(h.container("ghost")).get("reason") == "ImagePullBackOff",
        )
        st = h.pod("ghost")["status"]
        assert st["phase"] == "Pending"
        assert waiting(h.container("ghost"))["message"].startswith(
            'Back-off pulling image "shop/web:9.9"'
        )
        failed = [e["message"] for e in h.events("ghost", "Failed")]
        assert any(
            m.startswith('Failed to pull image "shop/web:9.9": rpc error: code = NotFound')
            for m in failed
        )
        assert "Error: ErrImagePull" in failed and "Error: ImagePullBackOff" in failed
        backoff = h.events("ghost", "BackOff")[0]
        assert backoff["type"] == "Normal" and backoff["source"]["component"] == "kubelet"
        assert backoff["involvedObject"]["fieldPath"] == "spec.containers{app}"

    run(t)


# -- crash loops -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_missing_env_crash_loops_with_growing_restart_count():
    async def t(h: Harness) -> None:
        h.create(pod("api", "shop/api:2.0"))
        await h.until(
            "two restarts",
            lambda: (
                h.container("api").get("restartCount", 0) >= 2
                and waiting(h.container("api")).get("reason") == "CrashLoopBackOff"
            ),
        )
        c = h.container("api")
        last = c["lastState"]["terminated"]
        assert last["exitCode"] == 1 and last["reason"] == "Error"
        assert last["containerID"] and last["finishedAt"]
        assert h.pod("api")["status"]["phase"] == "Running"
        assert (
            waiting(c)["message"].startswith("back-off ")
            and "restarting failed container=app pod=api_default(" in waiting(c)["message"]
        )
        uid = h.pod("api")["metadata"]["uid"]
        assert (
            h.events("api", "BackOff")[0]["message"]
            == f"Back-off restarting failed container app in pod api_default({uid})"
        )
        assert (
            h.cluster.logs.read("default", "api", "app", previous=True)
            == "FATAL: environment variable DATABASE_URL is not set\n"
        )
        ready = next(x for x in h.pod("api")["status"]["conditions"] if x["type"] == "Ready")
        assert ready["message"] == "containers with unready status: [app]"

    run(t)


@pytest.mark.timeout(30)
def test_env_from_secret_satisfies_the_image():
    async def t(h: Harness) -> None:
        h.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "db", "namespace": "default"},
                "data": {"url": base64.b64encode(b"postgres://db").decode()},
            }
        )
        h.create(
            pod(
                "api",
                "shop/api:2.0",
                env=[
                    {
                        "name": "DATABASE_URL",
                        "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}},
                    }
                ],
            )
        )
        await h.until("Ready", lambda: h.container("api").get("ready") is True)
        # Without a readiness probe the container is Ready as it starts; its first line
        # is written by the process after that, as with a real runtime.
        await h.until("the first line", lambda: h.cluster.logs.read("default", "api", "app"))
        assert h.cluster.logs.read("default", "api", "app") == "api 2.0\n"
        assert h.container("api").get("restartCount") == 0

    run(t)


@pytest.mark.timeout(30)
def test_command_not_found_through_a_shell_exits_127():
    async def t(h: Harness) -> None:
        h.create(pod("typo", "shop/web:1.0", command=["sh", "-c", "wbe --port 8080"]))
        await h.until(
            "restart",
            lambda: (
                h.container("typo").get("restartCount", 0) >= 1
                and "terminated" in h.container("typo").get("lastState", {})
            ),
        )
        assert h.container("typo")["lastState"]["terminated"]["exitCode"] == 127
        assert "sh: 1: wbe: not found" in h.cluster.logs.read(
            "default", "typo", "app", previous=True
        )

    run(t)


@pytest.mark.timeout(30)
def test_missing_executable_is_a_start_error():
    async def t(h: Harness) -> None:
        h.create(pod("exec", "shop/web:1.0", command=["wbe"]))
        await h.until(
            "CrashLoopBackOff",
            lambda: waiting(h.container("exec")).get("reason") == "CrashLoopBackOff",
        )
        last = h.container("exec")["lastState"]["terminated"]
        assert last["exitCode"] == 128 and last["reason"] == "StartError"
        assert 'exec: "wbe": executable file not found in $PATH' in last["message"]
        assert any(
            e["message"].startswith("Error: failed to create containerd task")
            for e in h.events("exec", "Failed")
        )
        assert not h.events("exec", "Started")

    run(t)


@pytest.mark.timeout(30)
def test_an_image_entrypoint_runs_without_an_override_and_with_args_only():
    async def t(h: Harness) -> None:
        h.create(pod("own", "shop/static:1.0"))
        # Arguments alone go to the image's entrypoint: no executable is looked up in them.
        h.create(pod("flags", "shop/static:1.0", args=["serve", "--debug"]))
        # An override naming an executable the image has still runs.
        h.create(pod("named", "shop/static:1.0", command=["/usr/local/bin/static-api"]))
        for name in ("own", "flags", "named"):
            await h.until(f"{name} ready", lambda name=name: h.container(name).get("ready"))
            assert h.events(name, "Started") and not h.events(name, "Failed")
        assert any("static-api listening" in str(entries) for _, entries in h.sink)

    run(t)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "command,detail",
    [
        (["python3", "app.py"], 'exec: "python3": executable file not found in $PATH'),
        (["/bin/bash", "-c", "exec static-api"], 'exec: "/bin/bash": stat /bin/bash: no such'),
    ],
)
def test_an_override_the_image_cannot_exec_never_starts(command, detail):
    async def t(h: Harness) -> None:
        h.create(pod("py", "shop/static:1.0", command=command))
        await h.until(
            "StartError",
            lambda: (h.container("py").get("lastState") or {}).get("terminated"),
        )
        last = h.container("py")["lastState"]["terminated"]
        assert (last["reason"], last["exitCode"]) == ("StartError", 128)
        assert detail in last["message"]
        assert waiting(h.container("py"))["reason"] in ("RunContainerError", "CrashLoopBackOff")
        assert not h.events("py", "Started")

    run(t)


def test_an_image_catalog_entry_runs_only_what_it_has():
    with pytest.raises(ValueError, match="not among its binaries"):
        Image(entrypoint=["/usr/bin/python3"], binaries=["app"])
    with pytest.raises(ValueError, match="non-empty"):
        Image(entrypoint=[])


@pytest.mark.timeout(30)
def test_memory_limit_below_working_set_is_oom_killed():
    async def t(h: Harness) -> None:
        h.create(pod("hog", "shop/hog:1.0", resources={"limits": {"memory": "128Mi"}}))
        await h.until(
            "OOMKilled",
            lambda: (
                h.container("hog").get("lastState", {}).get("terminated", {}).get("reason")
                == "OOMKilled"
            ),
        )
        assert h.container("hog")["lastState"]["terminated"]["exitCode"] == 137

    run(t)


@pytest.mark.timeout(30)
def test_a_server_over_its_memory_limit_is_never_ready():
    """Killed while its working set grows: it never answers its readiness probe, at any
    restart (were it Ready a moment, a Deployment would count it available)."""

    async def t(h: Harness) -> None:
        probe = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}
        h.create(
            pod("web", "shop/web:1.0", readinessProbe=probe,
                resources={"limits": {"memory": "32Mi"}})
        )  # fmt: skip
        ready_seen: list[bool] = []

        def restarted_twice() -> bool:
            c = h.container("web")
            ready_seen.append(bool(c.get("ready")))
            return (c.get("restartCount") or 0) >= 2

        await h.until("two restarts", restarted_twice)
        assert h.container("web")["lastState"]["terminated"]["reason"] == "OOMKilled"
        assert not any(ready_seen)
        assert any(e["message"].startswith("Readiness probe failed") for e in h.events("web"))

    run(t)


@pytest.mark.timeout(30)
def test_crashing_release_exits_with_its_code_and_logs():
    async def t(h: Harness) -> None:
        h.create(pod("bad", "shop/bad:1.0"))
        await h.until("crash", lambda: h.container("bad").get("lastState", {}).get("terminated"))
        assert h.container("bad")["lastState"]["terminated"]["exitCode"] == 2
        assert h.cluster.logs.read("default", "bad", "app", previous=True) == "panic: nil map\n"

    run(t)


# -- probes ------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_readiness_on_the_wrong_port_is_never_ready():
    async def t(h: Harness) -> None:
        h.create(
            pod(
                "rp",
                "shop/web:1.0",
                readinessProbe={"httpGet": {"path": "/healthz", "port": 8081}, "periodSeconds": 5},
            )
        )
        await h.until(
            "Unhealthy x3", lambda: sum(e["count"] for e in h.events("rp", "Unhealthy")) >= 3
        )
        c = h.container("rp")
        assert "running" in c["state"] and c["ready"] is False and c["restartCount"] == 0
        ip = h.pod("rp")["status"]["podIP"]
        assert h.events("rp", "Unhealthy")[0]["message"] == (
            f'Readiness probe failed: Get "http://{ip}:8081/healthz": dial tcp {ip}:8081: connect: connection refused'
        )

    run(t)


@pytest.mark.timeout(30)
def test_liveness_on_the_wrong_path_restarts_the_container():
    async def t(h: Harness) -> None:
        h.create(
            pod(
                "lp",
                "shop/web:1.0",
                livenessProbe={
                    "httpGet": {"path": "/health", "port": 8080},
                    "periodSeconds": 5,
                    "failureThreshold": 3,
                },
            )
        )
        await h.until("restart", lambda: h.container("lp").get("restartCount", 0) >= 1)
        assert (
            h.events("lp", "Unhealthy")[0]["message"]
            == "Liveness probe failed: HTTP probe failed with statuscode: 404"
        )
        assert (
            h.events("lp", "Killing")[0]["message"]
            == "Container app failed liveness probe, will be restarted"
        )
        last = h.container("lp")["lastState"]["terminated"]
        assert last["exitCode"] == 137 and last["reason"] == "Error"

    run(t)


@pytest.mark.timeout(30)
def test_initial_delay_postpones_probes():
    async def t(h: Harness) -> None:
        h.create(
            pod(
                "slow",
                "shop/slow:1.0",
                readinessProbe={
                    "tcpSocket": {"port": 9000},
                    "initialDelaySeconds": 61,
                    "periodSeconds": 5,
                },
            )
        )
        await h.until("Ready", lambda: h.container("slow").get("ready") is True)
        assert not h.events("slow", "Unhealthy")

    run(t)


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_missing_configmap_key_is_a_config_error_until_it_appears():
    async def t(h: Harness) -> None:
        h.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "api", "namespace": "default"},
                "data": {"other": "x"},
            }
        )
        h.create(
            pod(
                "api",
                "shop/api:2.0",
                env=[
                    {
                        "name": "DATABASE_URL",
                        "valueFrom": {"configMapKeyRef": {"name": "api", "key": "database_url"}},
                    }
                ],
            )
        )
        await h.until(
            "config error",
            lambda: waiting(h.container("api")).get("reason") == "CreateContainerConfigError",
        )
        msg = "couldn't find key database_url in ConfigMap default/api"
        assert waiting(h.container("api"))["message"] == msg
        assert h.events("api", "Failed")[0]["message"] == f"Error: {msg}"
        assert h.pod("api")["status"]["phase"] == "Pending"
        cm = h.store.copy(h.store.get(CONFIGMAPS, "default", "api"))
        cm["data"]["database_url"] = "postgres://db"
        h.store.update(CONFIGMAPS, cm)
        await h.until("Ready", lambda: h.container("api").get("ready") is True, timeout=5)

    run(t)


@pytest.mark.timeout(30)
def test_missing_configmap_volume_blocks_mounting():
    async def t(h: Harness) -> None:
        h.create(
            pod(
                "cfg",
                "shop/cfg:1.0",
                volumeMounts=[{"name": "conf", "mountPath": "/etc/app"}],
                pod_spec={"volumes": [{"name": "conf", "configMap": {"name": "cfg"}}]},
            )
        )
        await h.until("FailedMount", lambda: h.events("cfg", "FailedMount"))
        assert (
            h.events("cfg", "FailedMount")[0]["message"]
            == 'MountVolume.SetUp failed for volume "conf" : configmap "cfg" not found'
        )
        assert waiting(h.container("cfg"))["reason"] == "ContainerCreating"
        h.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cfg", "namespace": "default"},
                "data": {"config.yaml": "a: 1"},
            }
        )
        await h.until("Ready", lambda: h.container("cfg").get("ready") is True)

    run(t)


@pytest.mark.timeout(30)
def test_required_file_not_mounted_exits_1():
    async def t(h: Harness) -> None:
        h.create(pod("nofile", "shop/cfg:1.0"))
        await h.until("crash", lambda: h.container("nofile").get("lastState", {}).get("terminated"))
        assert h.container("nofile")["lastState"]["terminated"]["exitCode"] == 1
        assert "open /etc/app/config.yaml: no such file or directory" in h.cluster.logs.read(
            "default", "nofile", "app", previous=True
        )

    run(t)


# -- scheduling -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_unschedulable_pods_explain_why_and_retry_on_new_nodes():
    async def t(h: Harness) -> None:
        h.create(pod("big", "shop/web:1.0", resources={"requests": {"memory": "64Gi"}}))
        h.create(pod("gpu", "shop/web:1.0", pod_spec={"nodeSelector": {"gpu": "true"}}))
        await h.until(
            "FailedScheduling",
            lambda: h.events("big", "FailedScheduling") and h.events("gpu", "FailedScheduling"),
        )
        assert h.events("big", "FailedScheduling")[0]["message"] == (
            "0/2 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint {dedicated: batch}. "
            "preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, "
            "1 Preemption is not helpful for scheduling.."
        )
        assert h.events("gpu", "FailedScheduling")[0]["message"] == (
            "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
            "1 node(s) had untolerated taint {dedicated: batch}. "
            "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.."
        )
        cond = next(c for c in h.pod("gpu")["status"]["conditions"] if c["type"] == "PodScheduled")
        assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
        h.cluster.register_nodes([Node(name="gpu-1", labels={"gpu": "true"})])
        await h.until("bound", lambda: h.pod("gpu")["spec"].get("nodeName") == "gpu-1")
        assert (
            h.events("gpu", "Scheduled")[0]["message"]
            == "Successfully assigned default/gpu to gpu-1"
        )
        assert h.pod("big")["spec"].get("nodeName") is None

    run(
        t,
        (Node(name="node-1"), Node(name="batch-1", taints=[Taint(key="dedicated", value="batch")])),
    )
