"""The bundled CPU-level and forecast-scaling scenarios, played as the demo plays them:
the real farm (worker, beat, web), a real Prometheus with the scenario's past load
backfilled and deploy/'s CPU-level rules, a real Alertmanager posting to the farm.

- cpu-levels: the pod's level label passes through low, high, low as the load rises and
  falls, and no other pod field changes;
- forecast scaling: the pass reads the backfilled history (hours of it from the first
  decision), scales out before the load needs it, scales in after the window, and the
  Deployment's replicas are what the last applied decision set; the plot is drawn from
  the records.
"""

from __future__ import annotations

import shutil
import struct
import time

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from aifixer.scaling.plot import plot
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

BY_NAME = {scenario_mod.load(p).name: p for p in scenario_mod.bundled_monitoring()}


@pytest.fixture(autouse=True)
def _servers():
    if shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None:
        pytest.skip(
            "prometheus and prometheus-alertmanager are not installed (./dev installs them)"
        )


def test_both_kinds_are_bundled():
    kinds = {n: scenario_mod.load(p).expect for n, p in BY_NAME.items()}
    assert any(e.levels for e in kinds.values()) and any(e.scaling for e in kinds.values())
    assert all(e.outcome is None for e in kinds.values())


@pytest.mark.timeout(300)
def test_cpu_levels_follow_the_load(tmp_path):
    sc = scenario_mod.load(BY_NAME["cpu-levels-checkout"])
    with FarmRun(sc, tmp_path / "farm") as run:
        api = k8s.CoreV1Api(
            k8s_config.new_client_from_config(config_file=run.env["AIFIXER_KUBECONFIG"])
        )
        (before,) = api.list_namespaced_pod("shop", label_selector="app=checkout").items
        report = run.report(run.wait(180))
        assert report["complete"], report["missing"]
        assert report["incidents"] == []
        (seen,) = report["levels"]
        assert seen["pod"] == before.metadata.name
        (after,) = api.list_namespaced_pod("shop", label_selector="app=checkout").items
        labels = dict(after.metadata.labels)
        assert labels.pop("aifixer.io/cpu-level") == "low"
        assert labels == before.metadata.labels
        assert after.spec == before.spec


@pytest.mark.timeout(450)
def test_forecast_scaling_acts_ahead_of_the_load(tmp_path):
    sc = scenario_mod.load(BY_NAME["forecast-scaling-search"])
    with FarmRun(sc, tmp_path / "farm") as run:
        report = run.report(run.wait(180))
        assert report["complete"], report["missing"]

        def proactive(made: list[dict]) -> list[dict]:
            """Scale-outs beyond what the load of the moment needed (ceil(now / target))."""
            return [
                d
                for d in made
                if d["replicas_after"] > d["replicas_before"]
                and d["replicas_after"] > -(-d["current_cores"] // d["target_cores"])
            ]

        # Proactive: at least one scale-out went beyond the load of the moment, on the
        # forecast alone. The rise that shows it comes once a load cycle (3600 simulated
        # seconds, 120 s of wall time): the passes of a busy machine may miss the first.
        cycle = time.monotonic() + 3600 / sc.speed + 10
        while True:
            decisions = run.decisions("shop", "search")
            made = [d for d in decisions if d["current_cores"] is not None]
            if proactive(made) or time.monotonic() > cycle:
                break
            time.sleep(1)
        # Hours of backfilled history from the first decision (3 h simulated at speed 30,
        # one sample a wall second): not only the minutes since the world started.
        assert made and made[0]["history_samples"] >= 300, made[:1]
        outs = [d for d in made if d["replicas_after"] > d["replicas_before"]]
        ins = [d for d in made if d["replicas_after"] < d["replicas_before"]]
        assert outs and ins
        assert proactive(made), outs
        assert all(d["target_cores"] == 0.3 and d["mode"] == "apply" for d in made)
        apps = k8s.AppsV1Api(
            k8s_config.new_client_from_config(config_file=run.env["AIFIXER_KUBECONFIG"])
        )
        live = apps.read_namespaced_deployment("search", "shop").spec.replicas
        assert live == decisions[-1]["replicas_after"]
        png = plot(decisions, tmp_path / "search.png", "shop/search")
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])
        assert (width, height) == (900, 450)
