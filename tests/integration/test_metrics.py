"""The sandbox's exporters, scraped by the real Prometheus and linted by the real promtool.

A Deployment whose image has a load profile: its ready pods share the load, each capped
by its CPU limit; the excess is unserved. Prometheus reads it with the queries a team
writes against cAdvisor and kube-state-metrics.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.promstack import query, start_prometheus

pytestmark = [pytest.mark.integration]

RULES = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "cpu-levels-rules.yaml"

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: %(name)s, namespace: shop, labels: {app: %(name)s}}
spec:
  replicas: 2
  selector: {matchLabels: {app: %(name)s}}
  template:
    metadata: {labels: {app: %(name)s, app.kubernetes.io/part-of: shop}}
    spec:
      containers:
        - name: web
          image: %(image)s
          resources:
            requests: {cpu: 250m, memory: 64Mi}
            limits: {cpu: 500m, memory: 128Mi}
"""


def world_scenario(speed_units: float) -> scenario_mod.Scenario:
    """`steady`: 300m of load on two pods; `flooded`: 1500m on two pods capped at 500m."""
    return scenario_mod.Scenario.model_validate(
        {
            "name": "metrics",
            "images": {
                "shop/steady:1": {"memory_mib": 40, "load": {"base": 300}},
                "shop/flooded:1": {
                    "memory_mib": 40,
                    "load": {"base": speed_units, "cpu_millicores_per_unit": 1},
                },
            },
            "manifests": [
                {
                    "path": f"apps/{name}.yaml",
                    "yaml": DEPLOYMENT % {"name": name, "image": f"shop/{name}:1"},
                }
                for name in ("steady", "flooded")
            ],
            # Never waited for: no incident is expected (see scalingbench.scenario).
            "expect": {"outcome": "fixed", "workloads": ["shop/steady"]},
        }
    )


def wait_value(prom: str, promql: str, want: float, rel: float, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        result = query(prom, promql)
        if result:
            got = float(result[0]["value"][1])
            if abs(got - want) <= rel * want:
                return got
        time.sleep(0.5)
    pytest.fail(f"{promql} = {got}, want {want} ± {rel:.0%}")


@pytest.fixture
def stack(make_world, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (./dev installs it)")
    world = make_world(world_scenario(1500), speed=1.0)
    prom, proc = start_prometheus(tmp_path / "prometheus", world.endpoints.metrics)
    try:
        yield world, prom
    finally:
        proc.stop()


def test_the_exposition_passes_promtool(stack):
    world, _ = stack
    time.sleep(1)
    for path in ("/metrics/cadvisor", "/metrics"):
        page = requests.get(world.endpoints.metrics + path, timeout=5)
        assert page.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        lint = subprocess.run(
            ["promtool", "check", "metrics"], input=page.text, capture_output=True, text=True
        )
        assert lint.returncode == 0, f"{path}: {lint.stdout}{lint.stderr}"


def test_prometheus_reads_cpu_shared_and_capped(stack):
    world, prom = stack
    usage = 'sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="shop",container!="",pod=~"%s-.*"}[5s]))'
    # steady: 300m shared by 2 ready pods -> 150m each; the pod cgroup series not counted.
    wait_value(prom, f"sum({usage % 'steady'})", 0.3, 0.1)
    per_pod = query(prom, usage % "steady")
    assert len(per_pod) == 2
    assert all(abs(float(r["value"][1]) - 0.15) < 0.03 for r in per_pod), per_pod
    # flooded: 1500m asked of 2 pods limited to 500m: 1 core served, 0.5 unserved.
    wait_value(prom, f"sum({usage % 'flooded'})", 1.0, 0.1)
    wait_value(
        prom,
        'rate(sandbox_unserved_cpu_seconds_total{namespace="shop",deployment="flooded"}[5s])',
        0.5,
        0.1,
    )
    # As a share of what the pods may use, the way the CPU-level rules divide it.
    ratio = (
        'sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{container!="",namespace="shop"}[5s]))'
        ' / sum by (namespace, pod) (kube_pod_container_resource_limits{resource="cpu",namespace="shop"})'
    )
    shares = {r["metric"]["pod"].split("-")[0]: float(r["value"][1]) for r in query(prom, ratio)}
    assert abs(shares["steady"] - 0.3) < 0.06 and abs(shares["flooded"] - 1.0) < 0.05, shares

    # In simulated core-seconds, over four seconds with both pods ready: a third unserved.
    def flooded() -> dict[str, float]:
        return requests.get(world.endpoints.metrics + "/sandbox/load", timeout=5).json()[
            "shop/flooded"
        ]

    before = flooded()
    time.sleep(4)
    after = flooded()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["unserved_core_seconds"] == pytest.approx(
        delta["demand_core_seconds"] / 3, rel=0.1
    )
    assert delta["capacity_core_seconds"] == pytest.approx(
        delta["demand_core_seconds"] * 2 / 3, rel=0.1
    )


def test_kube_state_metrics_names(stack):
    world, prom = stack
    wait_value(prom, 'kube_deployment_spec_replicas{deployment="steady"}', 2, 0)
    wait_value(prom, 'kube_deployment_status_replicas_available{deployment="steady"}', 2, 0)
    limits = query(prom, 'kube_pod_container_resource_limits{resource="cpu",unit="core"}')
    assert len(limits) == 4 and {float(r["value"][1]) for r in limits} == {0.5}
    memory = query(prom, 'kube_pod_container_resource_requests{resource="memory",unit="byte"}')
    assert {float(r["value"][1]) for r in memory} == {64 * 1024 * 1024}
    labels = query(prom, 'kube_pod_labels{label_app="steady"}')
    assert len(labels) == 2
    assert {r["metric"]["label_app_kubernetes_io_part_of"] for r in labels} == {"shop"}
    replicasets = {
        r["metric"]["replicaset"]
        for r in query(prom, 'kube_replicaset_owner{owner_kind="Deployment",owner_name="steady"}')
    }
    owned = query(prom, 'kube_pod_owner{namespace="shop",owner_kind="ReplicaSet"}')
    assert len([r for r in owned if r["metric"]["owner_name"] in replicasets]) == 2
    working = query(prom, 'container_memory_working_set_bytes{container="web",namespace="shop"}')
    assert {float(r["value"][1]) for r in working} == {40 * 1024 * 1024}


def test_history_is_backfilled_and_continues_live(make_world, tmp_path):
    """An hour of past load (at speed 30: two minutes of wall time) is in Prometheus
    from its first query, in the same series the live scrape then continues."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (./dev installs it)")
    speed = 30.0
    sc = world_scenario(100).model_copy(deep=True)
    profile = scenario_mod.LoadProfile(
        base=300,
        cycles=[scenario_mod.Cycle(period_seconds=1800, amplitude=200)],
        history_seconds=3600,
    )
    sc = sc.model_copy(
        update={
            "images": {
                **sc.images,
                "shop/steady:1": sc.images["shop/steady:1"].model_copy(update={"load": profile}),
            }
        }
    )
    world = make_world(sc, speed=speed)
    world.call(lambda: world.wait_healthy([("shop", "steady")], 30))
    target = world.endpoints.metrics.removeprefix("http://")
    history = world.call(lambda: _history(world, target))
    prom, proc = start_prometheus(tmp_path / "prometheus", world.endpoints.metrics, history=history)
    try:
        usage = 'sum(rate(container_cpu_usage_seconds_total{namespace="shop",container!="",pod=~"steady-.*"}[4s]))'
        now = time.time()
        r = requests.get(
            f"{prom}/api/v1/query_range",
            params={"query": usage, "start": now - 110, "end": now - 10, "step": 10},
            timeout=10,
        ).json()
        (series,) = r["data"]["result"]
        points = [(float(t), float(v)) for t, v in series["values"]]
        assert len(points) >= 9, points
        for t, v in points:
            sim = world.clock.sim() - (now - t) * speed
            want = profile.millicores(sim) / 1000
            assert abs(v - want) < 0.06 + 0.1 * want, (t, v, want)
        # The live scrape continues the very series: one per pod, no duplicates.
        time.sleep(3)
        live = query(
            prom,
            'container_cpu_usage_seconds_total{namespace="shop",container="web",pod=~"steady-.*"}',
        )
        assert len(live) == 2 and {r["metric"]["job"] for r in live} == {"kubelet"}
    finally:
        proc.stop()


async def _history(world, instance: str) -> str:
    return world.metrics.history(instance)


def test_the_prometheus_adapter_reads_a_deployments_cpu_history(make_world, tmp_path):
    """Through the owner series, the history of `steady` alone (not `flooded`), backfilled
    and live; a query Prometheus refuses is permanent, an unreachable one transient."""
    from aifixer.adapters.errors import PermanentError, TransientError
    from aifixer.adapters.prometheus import Prometheus
    from aifixer.settings import Settings

    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (./dev installs it)")
    speed = 30.0
    sc = world_scenario(100)
    profile = scenario_mod.LoadProfile(base=300, history_seconds=1800)
    image = sc.images["shop/steady:1"].model_copy(update={"load": profile})
    sc = sc.model_copy(update={"images": {**sc.images, "shop/steady:1": image}})
    world = make_world(sc, speed=speed)
    world.call(lambda: world.wait_healthy([("shop", "steady"), ("shop", "flooded")], 30))
    target = world.endpoints.metrics.removeprefix("http://")
    history = world.call(lambda: _history(world, target))
    starting = time.time()
    url, proc = start_prometheus(tmp_path / "prometheus", world.endpoints.metrics, history=history)
    try:
        prom = Prometheus(Settings(_env_file=None, prometheus_url=url))
        live = time.time() + 2  # the first live scrapes: 1 s apart, late on a loaded machine
        time.sleep(max(0.0, live + 15 - time.time()))  # so the range ends on live points
        end = time.time() - 1
        start = end - 50
        values = prom.deployment_cpu("shop", "steady", start, end, 5, window="3s")
        assert len(values) == 11
        # The backfill ends when Prometheus starts, its first scrapes come seconds later:
        # a 3 s window that reaches into that span reads a gap, or a rate across both
        # sources. Every other point reads the profile's 0.3 cores.
        at = [start + 5 * i for i in range(len(values))]
        clear = {
            t: v
            for t, v in zip(at, values, strict=True)
            if v == v and (t < starting or t - 3 > live)
        }
        assert len(clear) >= 7 and sum(t - 3 > live for t in clear) >= 2, str(values)
        assert all(abs(v - 0.3) < 0.05 for v in clear.values()), str([round(v, 3) for v in values])
        assert all(v != v for v in prom.deployment_cpu("shop", "nothing", end - 10, end, 5))
        with pytest.raises(PermanentError) as refused:
            prom.query_range("sum(rate(", end - 10, end, 5)
        assert refused.value.status == 400
        with pytest.raises(ValueError, match="points per series"):
            prom.query_range("up", 0, end, 1)
    finally:
        proc.stop()
    with pytest.raises(TransientError):
        prom.query_range("up", end - 10, end, 5)


def test_an_application_exporting_cadvisor_names_moves_nothing(make_world, tmp_path):
    """An application's own /metrics claims 10 cores for `steady`'s pods under cAdvisor's
    metric name: the adapter's query (and the level rules) count only the kubelet's
    cAdvisor series and kube-state-metrics', so they still read 0.3 cores."""
    import http.server
    import threading

    from aifixer.adapters.prometheus import Prometheus
    from aifixer.settings import Settings
    from aifixer_sandbox.harness import free_port
    from aifixer_sandbox.promstack import rule_file_from

    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (./dev installs it)")
    world = make_world(world_scenario(100), speed=1.0)
    world.call(lambda: world.wait_healthy([("shop", "steady")], 30))
    pods = [p["metadata"]["name"] for p in world.cluster.store.list(world_pods(), "shop")
            if p["metadata"]["name"].startswith("steady-")]  # fmt: skip
    started = time.time()

    class Spoof(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            total = 5.0 * (time.time() - started)  # 5 cores per pod
            body = "".join(
                f'container_cpu_usage_seconds_total{{namespace="shop",pod="{p}",container="web",'
                f'image="shop/steady:1"}} {total}\n'
                for p in pods
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Spoof)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rules = rule_file_from(RULES, tmp_path / "rules.yml", window="5s", hold="1s")
    url, proc = start_prometheus(
        tmp_path / "prometheus",
        world.endpoints.metrics,
        rule_files=[rules],
        apps={"shop-app": f"http://127.0.0.1:{server.server_address[1]}/metrics"},
    )
    try:
        # The spoofed series is in Prometheus, under the application's job...
        spoofed = (
            'sum(rate(container_cpu_usage_seconds_total{namespace="shop",pod=~"steady-.*"}[5s]))'
        )
        wait_value(url, spoofed, 10.3, 0.1)
        # ...and moves neither the level ratio nor the history forecast scaling reads.
        ratio = "max(namespace_pod:aifixer_cpu_usage_over_limit:ratio{namespace='shop',pod=~'steady-.*'})"
        wait_value(url, ratio, 0.3, 0.15)  # 150m of a 500m limit, not 5 cores
        time.sleep(6)  # a full rate window of both
        prom = Prometheus(Settings(_env_file=None, prometheus_url=url))
        end = time.time() - 1
        values = prom.deployment_cpu("shop", "steady", end - 3, end, 1, window="5s")
        assert all(abs(v - 0.3) < 0.05 for v in values), values
    finally:
        proc.stop()
        server.shutdown()


def world_pods():
    from aifixer_sandbox.kube.resources import core

    return core("pods")
