"""The farm's metrics end to end: one bundled scenario played by the real farm (worker,
beat and web processes, Redis, the sandbox), then `aifixer web`'s /metrics scraped.

The incident counters say one fixed incident, the stage histograms count each stage a
fixed incident passes through, every queue has its depth, and every metric a dashboard
panel reads is in the scrape.
"""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from aifixer import metrics
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun
from aifixer_sandbox.scenario import bundled_dir
from tests.dashboard_queries import dashboard, metric_names, panel_queries

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SCENARIO = bundled_dir() / "oom-report-api.yaml"
FIXED_STAGES = ("diagnose", "patch", "apply", "verify", "open_pr", "finalize")


def scrape(port: str) -> tuple[dict[tuple[str, frozenset], float], float]:
    started = time.monotonic()
    resp = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    took = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }
    return samples, took


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.mark.timeout(150)
def test_a_fixed_incident_shows_on_the_farms_metrics(tmp_path):
    sc = scenario_mod.load(SCENARIO)
    assert sc.expect.outcome == "fixed"
    with FarmRun(sc, tmp_path / "run") as run:
        states = run.wait(timeout=90)
        assert [s.outcome for s in states] == ["fixed"], run.report(states)
        samples, took = scrape(run.env["AIFIXER_WEB_PORT"])

    failure = states[0].incident.failure_class
    assert value(samples, "aifixer_incidents_opened_total", failure_class=failure) == 1
    ended = {
        labels: v for (name, labels), v in samples.items()
        if name == "aifixer_incidents_ended_total" and v
    }  # fmt: skip
    assert ended == {frozenset({"outcome": "fixed", "failure_class": failure}.items()): 1}
    assert value(samples, "aifixer_incident_duration_seconds_count", outcome="fixed") == 1
    for stage in FIXED_STAGES:
        assert value(samples, "aifixer_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert value(samples, "aifixer_stage_duration_seconds_count", stage="call_oncall") == 0
    assert value(samples, "aifixer_pull_requests_total", result="opened") == 1
    assert value(samples, "aifixer_model_requests_total", stage="explain") >= 1
    for queue in metrics.QUEUES:
        assert ("aifixer_queue_depth", frozenset({"queue": queue}.items())) in samples
    assert value(samples, "aifixer_incidents_open") == 0
    assert value(samples, "aifixer_farm_metrics_up") == 1
    assert took < 1.0, f"/metrics took {took:.3f}s"

    exported = {name for name, _ in samples}
    for title, expr in panel_queries(dashboard()):
        missing = metric_names(expr) - exported
        assert not missing, f"panel {title!r} reads {sorted(missing)}, not in /metrics"
