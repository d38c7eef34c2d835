"""Scenario files for CPU levels and forecast scaling: the `expect` keys, the harness's
time scaling, and the scaling plot's refusals."""

from __future__ import annotations

import pytest

from aifixer.scaling.plot import PlotError, plot
from aifixer.settings import Settings
from aifixer_sandbox import harness
from aifixer_sandbox import scenario as scenario_mod

BASE = {
    "name": "x",
    "images": {"a:1": {}},
    "manifests": [
        {"path": "a.yaml", "yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"}
    ],
}


def make(**extra) -> scenario_mod.Scenario:
    return scenario_mod.Scenario.model_validate({**BASE, **extra})


def test_expect_needs_something_to_reach():
    with pytest.raises(ValueError, match="expect needs an outcome, levels or scaling"):
        make(expect={})
    with pytest.raises(ValueError, match="sequence"):
        make(expect={"levels": [{"deployment": "a", "sequence": []}]})
    with pytest.raises(ValueError, match="extra"):
        make(expect={"scaling": [{"deployment": "a", "replicas": 3}]})


def test_monitored_scenarios_and_their_season():
    fixer = make(expect={"outcome": "fixed"})
    assert not fixer.monitored and harness.changed_workloads(fixer) == []
    levels = make(
        expect={"levels": [{"namespace": "shop", "deployment": "a", "sequence": ["low"]}]}
    )
    assert levels.monitored and levels.expect.describe() == "levels low"
    assert harness.changed_workloads(levels) == []  # no incident is waited for
    loaded = make(
        images={"a:1": {"load": {"base": 1, "cycles": [{"period_seconds": 3600, "amplitude": 1},
                                                       {"period_seconds": 600, "amplitude": 1}]}}},
        expect={"scaling": [{"deployment": "a"}]},
    )  # fmt: skip
    assert loaded.monitored and loaded.season_seconds() == 3600
    assert make(expect={"outcome": "called"}).season_seconds() == 86_400


def test_monitoring_settings_scale_with_the_world_and_are_valid():
    sc = make(
        images={"a:1": {"load": {"base": 1, "cycles": [{"period_seconds": 3600, "amplitude": 1}]}}},
        expect={"scaling": [{"deployment": "a"}]},
    )
    env = harness.monitoring_env(sc, 30, "http://127.0.0.1:9")
    assert env["AIFIXER_SCALING_SEASON_S"] == "120"
    assert env["AIFIXER_SCALING_HISTORY_S"] == "360"  # three seasons
    assert env["AIFIXER_SCALING_RATE_WINDOW"] == "4s"
    settings = Settings(
        _env_file=None, **{k.removeprefix("AIFIXER_").lower(): v for k, v in env.items()}
    )
    assert settings.scaling_interval_s == 2 and settings.scaling_step_s == 1
    # At real speed, the production defaults.
    real = harness.monitoring_env(make(expect={"levels": [{"deployment": "a", "sequence": ["low"]}]}),
                                  1, "http://127.0.0.1:9")  # fmt: skip
    defaults = Settings(_env_file=None)
    assert float(real["AIFIXER_SCALING_INTERVAL_S"]) == defaults.scaling_interval_s
    assert float(real["AIFIXER_SCALING_STEP_S"]) == defaults.scaling_step_s
    assert real["AIFIXER_SCALING_RATE_WINDOW"] == "120s" and defaults.scaling_rate_window == "2m"
    assert float(real["AIFIXER_SCALING_MAX_GAP_S"]) == defaults.scaling_max_gap_s


@pytest.mark.parametrize(
    ("wanted", "seen", "ok"),
    [
        (["low", "high", "low"], ["low", "moderate", "high", "moderate", "low"], True),
        (["low", "high", "low"], ["low", "high"], False),
        (["high", "low"], ["low", "high"], False),
        (["low"], [], False),
    ],
)
def test_levels_are_reached_in_order(wanted, seen, ok):
    assert harness._in_order(wanted, seen) is ok


def test_the_plot_refuses_records_without_a_measured_load(tmp_path):
    refused = [{"at": 1.0, "current_cores": None, "replicas_before": 2, "replicas_after": 2}]
    with pytest.raises(PlotError, match="no decision with a measured load"):
        plot(refused, tmp_path / "p.png", "shop/api")
    assert not (tmp_path / "p.png").exists()


def test_the_plot_draws_load_forecast_and_capacity(tmp_path):
    records = [
        {"at": 1000.0 + 60 * i, "current_cores": 0.2 + 0.1 * i, "peak_cores": 0.3 + 0.1 * i,
         "replicas_before": 1 + i // 2, "replicas_after": 1 + (i + 1) // 2, "target_cores": 0.25,
         "forecast": [0.3 + 0.1 * i] * 5, "step_s": 15.0}
        for i in range(12)
    ]  # fmt: skip
    out = plot(records, tmp_path / "deep" / "p.png", "shop/api")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
