"""The sandbox's HPA controller, driven through the real client: a Deployment whose load
rises is scaled out by the documented algorithm (at most max(100 %, 4 pods) per sync), and scaled
back in only after the 300 s stabilization window; its status and events are what
`kubectl describe hpa` reads."""

from __future__ import annotations

import math
import re
import subprocess
import time

import pytest
import requests
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from aifixer_sandbox import scenario as scenario_mod

pytestmark = [pytest.mark.integration]

SPEED = 30.0  # a 15 s sync in 0.5 s, the 300 s window in 10 s

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
        - name: api
          image: shop/api:1
          resources:
            requests: {cpu: 200m}
            limits: {cpu: "1"}
"""


def until(check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    return check()


@pytest.mark.timeout(120)
def test_the_hpa_scales_out_and_in_as_documented(make_world):
    sc = scenario_mod.Scenario.model_validate(
        {
            "name": "hpa",
            "images": {"shop/api:1": {"start_seconds": 20, "load": {"base": 200}}},
            "manifests": [{"path": "api.yaml", "yaml": DEPLOYMENT}],
            "expect": {"outcome": "fixed"},
        }
    )
    world = make_world(sc, speed=SPEED)
    world.call(lambda: world.wait_healthy([("shop", "api")], 30))
    api_client = k8s_config.new_client_from_config(config_file=world.endpoints.kubeconfig)
    apps, hpas = k8s.AppsV1Api(api_client), k8s.AutoscalingV2Api(api_client)
    hpas.create_namespaced_horizontal_pod_autoscaler(
        "shop",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "api"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"},
                "minReplicas": 1,
                "maxReplicas": 10,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                    "type": "Utilization", "averageUtilization": 50}}}],
            },
        },
    )  # fmt: skip

    def replicas() -> int:
        return apps.read_namespaced_deployment("api", "shop").spec.replicas

    # 200m of load on 2 pods requesting 200m each: 50 %, the target: nothing moves.
    time.sleep(2)
    assert replicas() == 2
    status = hpas.read_namespaced_horizontal_pod_autoscaler("api", "shop").status
    assert status.current_metrics[0].resource.current.average_utilization == 50
    # 1,000m: 250 % of the request per pod -> ceil(2 × 5) = 10, but a sync adds at most
    # max(100 %, 4 pods): 2 -> 6 first; the new pods (20 s to start) count as 0 % then.
    # (The next sync comes 0.5 s later: a busy machine's poll may see 10 already; the
    # events below say which sizes were set, in order.)
    set_load(world, 1000)
    seen = []
    until(lambda: seen.append(replicas()) or seen[-1] > 2, 10)
    assert seen[-1] in (6, 10), seen
    final = until(lambda: replicas() if replicas() == math.ceil(1000 / 100) else None, 30)
    assert final == 10
    # Load back to 200m: 10 % per pod, a recommendation of 2, held for the 300 s window.
    set_load(world, 200)
    time.sleep(5)  # 150 s of simulated time: still inside the window
    assert replicas() == 10
    assert until(lambda: replicas() == 2, 20)
    # The status (and kubectl's REPLICAS column) reports what the HPA saw at its last
    # sync, as the real controller does: the scale-in shows there one sync later.
    assert until(lambda: hpas.read_namespaced_horizontal_pod_autoscaler("api", "shop")
                 .status.current_replicas == 2, 10)  # fmt: skip
    events = k8s.CoreV1Api(api_client).list_namespaced_event("shop").items
    listed = subprocess.run(
        ["kubectl", "--kubeconfig", world.endpoints.kubeconfig, "get", "hpa", "-n", "shop"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    header, row = listed.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "REFERENCE",
        "TARGETS",
        "MINPODS",
        "MAXPODS",
        "REPLICAS",
        "AGE",
    ]
    assert re.fullmatch(r"api +Deployment/api +cpu: \d+%/50% +1 +10 +2 +\S+", row), row
    events.sort(key=lambda e: int(e.metadata.resource_version))
    rescales = [e.message for e in events if e.reason == "SuccessfulRescale"]
    sizes = [int(m.split(";")[0].removeprefix("New size: ")) for m in rescales]
    assert sizes[0] == 6 and max(sizes) == 10 and sizes[-1] == 2, rescales
    assert (
        "New size: 6; reason: cpu resource utilization (percentage of request) above target"
        in rescales
    )
    assert any(m.startswith("New size: 2;") and "below target" in m for m in rescales)


def set_load(world, units: float) -> None:
    requests.post(f"{world.endpoints.metrics}/sandbox/load",
                  json={"namespace": "shop", "deployment": "api", "units": units},
                  timeout=5).raise_for_status()  # fmt: skip
