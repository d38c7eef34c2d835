"""`aifixer bench scaling`, reduced: one world, the real Prometheus, the sandbox's HPA on one
Deployment and forecast scaling (`scale_once`, apply mode) on the other, half a cycle of
warm-up and one measured cycle. The books must balance; who wins is not asserted here."""

from __future__ import annotations

import shutil

import pytest

from aifixer_sandbox import scalingbench

pytestmark = [pytest.mark.integration]

CONFIG = scalingbench.BenchConfig(
    speed=60.0,
    cycle_s=1800.0,  # 30 s of wall time
    cycles=1,
    warmup_cycles=0.5,
    surge_duration_s=450.0,
    surge_jitter_s=90.0,
)


@pytest.mark.timeout(170)
def test_the_scaling_bench_balances_its_books(tmp_path):
    if shutil.which("prometheus") is None or shutil.which("redis-server") is None:
        pytest.skip("prometheus and redis-server are not installed (./dev installs them)")
    result = scalingbench.run(CONFIG, tmp_path)
    print(scalingbench.markdown(result))
    hpa, fc = result.hpa, result.forecast

    # Both scalers acted: the Deployments start sized for the peak, the load is lower.
    assert hpa.rescales_run >= 1, result.timeline[-1]
    assert fc.rescales_run >= 1 and result.forecast_changes >= 1
    assert result.forecast_decisions >= 10 and not result.forecast_errors
    assert abs(result.measured_sim_s - CONFIG.cycle_s) < 0.05 * CONFIG.cycle_s

    # Each Deployment got its own copy of the same load: the profile's integral.
    profile = scalingbench.load_profile(CONFIG, result.measured_from_sim_s + 2 * CONFIG.cycle_s)
    t0, span = result.measured_from_sim_s, result.measured_sim_s
    expected = sum(profile.millicores(t0 + i + 0.5) for i in range(int(span))) / 1000 / 60
    for f in (hpa, fc):
        assert f.demand == pytest.approx(expected, rel=0.03), (f, expected)
        assert min(f.unserved, f.served, f.idle) >= -1e-6, f
        assert f.capacity > 0 and f.unserved <= f.demand
        assert f.served + f.unserved == pytest.approx(f.demand, abs=1e-2)
        # Served, as the pods' CPU counters in Prometheus tell it, agrees with the
        # exporter's books: served + unserved == demand, measured two ways.
        assert f.served_prometheus is not None
        assert f.served_prometheus + f.unserved == pytest.approx(f.demand, rel=0.03), f
        assert f.utilization_percent <= 100 + 1e-6
    assert hpa.demand == pytest.approx(fc.demand, rel=1e-3)
    for ratio in (result.unserved_ratio, result.capacity_ratio, result.idle_ratio):
        assert ratio is None or ratio >= 0
