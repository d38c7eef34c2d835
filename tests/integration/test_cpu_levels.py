"""CPU levels end to end: the real Prometheus scrapes the sandbox and evaluates the rules
of deploy/monitoring/, the real Alertmanager posts to the real `aifixer web`, a Celery
worker labels the pod.

One pod (CPU limit 500m) serves 100m of load (20 %: low). Driven to 400m (80 %), it is
labelled `high` within the rule's `for:` plus Alertmanager's group wait; back at 100m,
`low` again. Nothing else on the pod changes. A pod in a namespace aifixer does not
watch keeps no label whatever its load.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import requests
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from aifixer_sandbox import promstack
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

RULES = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "cpu-levels-rules.yaml"
LABEL = "aifixer.io/cpu-level"
HOLD_S = 3  # the rules' `for:` at this run's time scale
GROUP_WAIT_S = 1

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: %(ns)s, labels: {app: api}}
spec:
  replicas: 1
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api, tier: backend}, annotations: {team: payments}}
    spec:
      containers:
        - name: api
          image: shop/api:1
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits: {cpu: 500m, memory: 128Mi}
"""


def scenario() -> scenario_mod.Scenario:
    return scenario_mod.Scenario.model_validate(
        {
            "name": "cpu-levels",
            "images": {"shop/api:1": {"memory_mib": 40, "load": {"base": 100}}},
            "manifests": [
                {"path": f"apps/{ns}/api.yaml", "yaml": DEPLOYMENT % {"ns": ns}}
                for ns in ("shop", "kube-system")
            ],
            # What this test checks itself: shop's pod goes low, high, low; kube-system's
            # twin is never labelled.
            "expect": {
                "levels": [
                    {"namespace": "shop", "deployment": "api", "sequence": ["low", "high", "low"]}
                ]
            },
        }
    )


def pods(api: k8s.CoreV1Api, namespace: str) -> list[k8s.V1Pod]:
    return api.list_namespaced_pod(namespace, label_selector="app=api").items


def wait_label(api: k8s.CoreV1Api, want: str | None, timeout: float) -> float:
    started = time.monotonic()
    seen = None
    while time.monotonic() - started < timeout:
        (pod,) = pods(api, "shop")
        seen = (pod.metadata.labels or {}).get(LABEL)
        if seen == want:
            return time.monotonic() - started
        time.sleep(0.25)
    pytest.fail(f"{LABEL} is {seen!r} after {timeout:.0f} s, want {want!r}")


def set_load(metrics_url: str, units: float) -> None:
    r = requests.post(
        f"{metrics_url}/sandbox/load",
        json={"namespace": "shop", "deployment": "api", "units": units},
        timeout=5,
    )
    r.raise_for_status()


@pytest.mark.timeout(240)
def test_pods_are_labelled_by_cpu_level(tmp_path):
    if shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None:
        pytest.skip(
            "prometheus and prometheus-alertmanager are not installed (./dev installs them)"
        )
    with FarmRun(
        scenario(), tmp_path / "farm", speed=1.0, extra_env={"AIFIXER_NAMESPACES": "shop"}
    ) as farm:
        env = farm.env
        web = f"http://127.0.0.1:{env['AIFIXER_WEB_PORT']}/alertmanager"
        am_url, am = promstack.start_alertmanager(
            tmp_path / "alertmanager",
            web,
            token=env["AIFIXER_WEB_TOKEN"],
            group_wait=f"{GROUP_WAIT_S}s",
        )
        rules = promstack.rule_file_from(
            RULES, tmp_path / "rules.yml", window="5s", hold=f"{HOLD_S}s"
        )
        prom_url, prom = promstack.start_prometheus(
            tmp_path / "prometheus",
            farm.world.endpoints.metrics,
            rule_files=[rules],
            alertmanager_url=am_url,
        )
        try:
            api = k8s.CoreV1Api(
                k8s_config.new_client_from_config(config_file=env["AIFIXER_KUBECONFIG"])
            )
            (before,) = pods(api, "shop")
            took = wait_label(api, "low", timeout=60)
            print(f"low after {took:.1f} s")

            set_load(farm.world.endpoints.metrics, 400)  # 400m of a 500m limit: 80 %
            took = wait_label(api, "high", timeout=60)
            print(
                f"high {took:.1f} s after the load rose (for: {HOLD_S} s, group wait {GROUP_WAIT_S} s)"
            )
            # The rate window (5 s), the hold, Alertmanager's wait and one scrape and
            # evaluation interval each: the label follows within about that, not minutes.
            assert took < 5 + HOLD_S + GROUP_WAIT_S + 15

            set_load(farm.world.endpoints.metrics, 100)
            wait_label(api, "low", timeout=60)

            (after,) = pods(api, "shop")
            assert after.metadata.uid == before.metadata.uid
            labels = dict(after.metadata.labels)
            assert labels.pop(LABEL) == "low"
            assert labels == before.metadata.labels
            assert after.metadata.annotations == before.metadata.annotations
            assert api.api_client.sanitize_for_serialization(
                after.spec
            ) == api.api_client.sanitize_for_serialization(before.spec)

            (system,) = pods(api, "kube-system")
            assert LABEL not in (system.metadata.labels or {})
            page = requests.get(
                f"http://127.0.0.1:{env['AIFIXER_WEB_PORT']}/metrics", timeout=5
            ).text
            assert (
                'aifixer_alerts_ignored_total{reason="namespace aifixer does not change"}' in page
            )
        finally:
            prom.stop()
            am.stop()
