"""Forecast-driven replicas: the policy a Deployment's annotations ask for, and the decision."""

from __future__ import annotations

import math

import pytest

from aifixer.scaling.forecast import (
    POLICY_ANNOTATIONS as A,
)
from aifixer.scaling.forecast import (
    ForecastError,
    Policy,
    PolicyError,
    SeasonalNaive,
    decide,
)


def policy(**over) -> Policy:
    base = {A["mode"]: "apply", A["target"]: "500m", A["min"]: "2", A["max"]: "8",
            A["horizon"]: "2m", A["window"]: "5m"}  # fmt: skip
    return Policy.from_annotations({**base, **over})


def test_annotations_make_the_policy():
    p = policy()
    assert (p.mode, p.target_cores, p.min_replicas, p.max_replicas, p.horizon_s,
            p.scale_in_window_s) == ("apply", 0.5, 2, 8, 120.0, 300.0)  # fmt: skip
    assert Policy.from_annotations({"other": "x"}) is None
    assert Policy.from_annotations({A["mode"]: "preview", A["target"]: "1"}).target_cores == 1.0


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({A["mode"]: "yes"}, "preview or apply"),
        ({A["target"]: "lots"}, "CPU quantity"),
        ({A["target"]: "0m"}, "above zero"),
        ({A["min"]: "0"}, "whole number"),
        ({A["min"]: "9"}, "above max"),
        ({A["horizon"]: "5 minutes"}, "duration"),
        ({A["horizon"]: "99999999h"}, "at most 3600"),
        ({A["window"]: "2000h"}, "at most 86400"),
        ({A["max"]: "²"}, "whole number"),
        ({A["max"]: "10000000"}, "whole number"),
    ],
)
def test_bad_annotations_say_which_and_why(over, words):
    with pytest.raises(PolicyError, match=words):
        policy(**over)


def test_the_target_is_required():
    with pytest.raises(PolicyError, match="target-cpu is required"):
        Policy.from_annotations({A["mode"]: "apply"})


DAY = [1.0 + math.sin(2 * math.pi * i / 24) for i in range(48)]  # two "days" of 24 steps


def test_seasonal_naive_repeats_the_last_season():
    f = SeasonalNaive(season_s=24 * 60)
    assert f.predict(DAY, 60, 3) == DAY[24:27]
    with pytest.raises(ForecastError, match="less than one season"):
        f.predict(DAY[:20], 60, 3)


def run(values, replicas=3, recent=(), pol=None, now=10_000.0):
    return decide("shop", "api", pol or policy(), values, 60.0, replicas, list(recent),
                  SeasonalNaive(season_s=24 * 60), now)  # fmt: skip


def test_scale_out_ahead_of_the_peak():
    # Now at the trough (index 48 ≡ 0: 1.0 core); within two minutes the series rises.
    d = run(DAY)
    assert d.peak_cores == pytest.approx(max(DAY[24:26]))
    assert d.replicas_after == max(2, math.ceil(d.peak_cores / 0.5))
    assert d.history_samples == 48 and len(d.forecast) == 2


def test_bounds_and_the_load_of_now():
    d = run([v * 10 for v in DAY])  # 20 cores at the peak: capped at 8
    assert d.replicas_after == 8
    low = run([0.05] * 47 + [0.06], recent=[(9_990.0, 2)])  # almost nothing: the minimum
    assert low.replicas_after == 2


def test_scale_in_waits_for_the_window():
    values = [0.2] * 40 + [2.0] * 7 + [0.2]  # a burst just ended
    d = run(values, replicas=6, recent=[(9_900.0, 6), (9_000.0, 8)])
    assert d.recommended == 2 and d.replicas_after == 6
    assert "held" in d.reason
    later = run(values, replicas=6, recent=[(9_000.0, 6), (9_800.0, 2)])  # 6 is outside
    assert later.replicas_after == 2
    first = run(values, replicas=6)  # no recommendation in the window yet: wait for one
    assert first.replicas_after == 6 and "held at 6" in first.reason


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ([1.0] * 5, "too little history"),
        ([1.0] * 48, "flat"),
        ([1.0, float("nan")] * 24, "not numbers"),
        ([1.0, 2.0] * 6, "less than one season"),
    ],
)
def test_no_forecast_leaves_the_replicas_alone_and_says_why(values, words):
    d = run(values, replicas=4)
    assert d.replicas_after == 4 and not d.changes
    assert words in d.reason and d.reason.startswith("replicas left at 4")


# -- one pass over the cluster (scaling.scaler), with a real Redis --------------------


class Cluster:
    def __init__(self, deployments, hpas=None):
        self.deps = deployments
        self.hpas = hpas or {}
        self.scaled = []

    def deployments(self, namespace):
        return [d for d in self.deps if namespace in (None, d["metadata"]["namespace"])]

    def autoscaler_of(self, namespace, name):
        return self.hpas.get(f"{namespace}/{name}")

    def set_replicas(self, namespace, name, replicas, expected):
        from aifixer.adapters.errors import Conflict

        dep = next(d for d in self.deps if d["metadata"]["name"] == name)
        if dep["spec"]["replicas"] != expected:
            raise Conflict("kubernetes", "replicas changed since read")
        dep["spec"]["replicas"] = replicas
        self.scaled.append((namespace, name, replicas))


class History:
    def __init__(self, values):
        self.values = values

    def deployment_cpu(self, namespace, name, start, end, step, window):
        assert window == "2m"
        return list(self.values)


def deployment(name, replicas=2, mode="apply", ns="shop"):
    ann = {A["mode"]: mode, A["target"]: "500m", A["min"]: "1", A["max"]: "10", A["horizon"]: "1m"}
    return {"metadata": {"namespace": ns, "name": name, "annotations": ann},
            "spec": {"replicas": replicas}}  # fmt: skip


@pytest.fixture
def r(clean_redis):
    return clean_redis


def test_a_pass_scales_out_records_and_stands_aside(r):
    from aifixer.scaling import scaler
    from aifixer.settings import Settings

    ramp = [0.2 + 0.1 * i for i in range(30)]  # rising towards 3.1 cores
    cluster = Cluster(
        [
            deployment("api"),
            deployment("web", mode="preview"),
            deployment("hpa-managed"),
            {"metadata": {"namespace": "shop", "name": "plain"}, "spec": {"replicas": 1}},
            deployment("system", ns="kube-system"),
        ],
        hpas={"shop/hpa-managed": "hpa-managed"},
    )
    settings = Settings(_env_file=None, scaling_step_s=15)
    made = {d.name: d for d in scaler.scale_once(cluster, History(ramp), r, settings, now=1e6)}
    assert set(made) == {"api", "web", "hpa-managed"}
    api = made["api"]
    assert api.replicas_after == math.ceil(round(api.peak_cores / 0.5, 6)) > 2
    assert cluster.scaled == [("shop", "api", api.replicas_after)]
    assert made["web"].changes and "preview" in made["web"].reason
    assert "HPA hpa-managed" in made["hpa-managed"].reason and not made["hpa-managed"].changes
    (saved,) = scaler.decisions(r, "shop", "api")
    assert saved["replicas_after"] == api.replicas_after and saved["history_samples"] == 30


def test_a_person_changing_replicas_meanwhile_wins(r):
    from aifixer.scaling import scaler
    from aifixer.settings import Settings

    class Racing(Cluster):
        def set_replicas(self, namespace, name, replicas, expected):
            self.deps[0]["spec"]["replicas"] = 7  # someone scaled it by hand just now
            return super().set_replicas(namespace, name, replicas, expected)

    cluster = Racing([deployment("api")])
    (d,) = scaler.scale_once(cluster, History([0.2 + 0.1 * i for i in range(30)]), r,
                             Settings(_env_file=None), now=1e6)  # fmt: skip
    assert cluster.scaled == [] and cluster.deps[0]["spec"]["replicas"] == 7
    assert "not applied" in d.reason and not d.changes


def test_gaps_keep_only_the_trailing_run():
    from aifixer.scaling.scaler import trailing_finite

    nan = float("nan")
    assert trailing_finite([1.0, nan, 2.0, 3.0]) == [2.0, 3.0]
    assert trailing_finite([1.0, 2.0, nan]) == []


def test_the_scaling_command_shows_the_decisions(r, redis_url, monkeypatch):
    from click.testing import CliRunner

    from aifixer import cli
    from aifixer.scaling import scaler
    from aifixer.settings import Settings, get_settings

    cluster = Cluster([deployment("api")])
    scaler.scale_once(cluster, History([0.2 + 0.1 * i for i in range(30)]), r,
                      Settings(_env_file=None), now=1e6)  # fmt: skip
    monkeypatch.setenv("AIFIXER_REDIS_URL", redis_url)
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(cli.main, ["scaling", "--json"])
        assert out.exit_code == 0, out.output
        (d,) = __import__("json").loads(out.output)["shop/api"]
        assert d["replicas_before"] == 2 and d["replicas_after"] > 2
        table = CliRunner().invoke(cli.main, ["scaling"], env={"COLUMNS": "200"})
        assert table.exit_code == 0 and "shop/api" in table.output and "2 -> " in table.output
    finally:
        get_settings.cache_clear()


def test_one_bad_deployment_does_not_stop_the_pass(r):
    from aifixer.adapters.errors import TransientError
    from aifixer.scaling import scaler
    from aifixer.settings import Settings

    class Flaky(History):
        def deployment_cpu(self, namespace, name, start, end, step, window):
            if name == "broken":
                raise TransientError("prometheus", "503 Service Unavailable")
            return super().deployment_cpu(namespace, name, start, end, step, window)

    cluster = Cluster([deployment("broken"), deployment("api")])
    settings = Settings(_env_file=None, max_replicas=5)
    made = {d.name: d for d in scaler.scale_once(
        cluster, Flaky([0.2 + 0.1 * i for i in range(30)]), r, settings, now=1e6)}  # fmt: skip
    assert "503" in made["broken"].reason and not made["broken"].changes
    assert made["api"].replicas_after == 5  # the farm's own ceiling, under the annotation's 10
    assert cluster.scaled == [("shop", "api", 5)]


def test_the_forecaster_bench_scores_what_it_should():
    from aifixer.scaling.forecast import Holt
    from aifixer_sandbox import forecastbench as fb
    from aifixer_sandbox.scenario import Cycle, LoadProfile

    periodic = LoadProfile(base=400, cycles=[Cycle(period_seconds=3600, amplitude=200)])
    options = {"step_s": 60.0, "history": 120, "horizon": 5, "origins": 6, "every": 7}
    naive = fb.evaluate(lambda: SeasonalNaive(season_s=3600), "periodic", periodic, **options)
    assert naive.mase == pytest.approx(0, abs=1e-9) and naive.failures == 0
    holt = fb.evaluate(Holt, "periodic", periodic, **options)
    assert 0 < holt.mase < math.inf and holt.smape > 0 and holt.fit_s > 0
    short = fb.evaluate(SeasonalNaive, "periodic", periodic, **options)  # a day: too little
    assert short.failures == 6 and short.mase is None
    assert holt.first_s > 0
    rows = fb.compare(["holt", "seasonal-naive"], origins=2, every=30, history=1500)
    assert {(r.forecaster, r.profile) for r in rows} == {
        (f, p) for f in ("holt", "seasonal-naive") for p in fb.PROFILES
    }
    # Made as the farm makes them, for a season of a day unless told otherwise.
    day = fb.compare(["seasonal-naive"], origins=1, history=1000)  # less than a day
    hour = fb.compare(["seasonal-naive"], season_s=3600, origins=1, history=1000)
    assert [r.failures for r in day] == [1, 1, 1] and [r.failures for r in hour] == [0, 0, 0]
    with pytest.raises(ValueError, match="unknown forecaster"):
        fb.compare(["prophet-ish"])


# -- the library forecasters: Prophet, statsforecast's AutoETS and MSTL ---------------

LIBRARY_FORECASTERS = ["prophet", "autoets", "mstl"]
SEASON = 24  # samples of 60 s: a 24-minute "day", short enough to fit in well under a second


def periodic(count: int) -> list[float]:
    """A clean season on a slow rise: what the seasonal forecasters are for."""
    return [2.0 + math.sin(2 * math.pi * i / SEASON) + 0.002 * i for i in range(count)]


@pytest.mark.parametrize("name", LIBRARY_FORECASTERS)
def test_a_library_forecaster_follows_the_season(name):
    from aifixer.scaling.forecast import make_forecaster

    f = make_forecaster(name, season_s=SEASON * 60)
    assert (f.name, f.season_s) == (name, SEASON * 60)
    horizon = 12
    values = periodic(4 * SEASON + horizon)
    past, future = values[: 4 * SEASON], values[4 * SEASON : 4 * SEASON + horizon]
    predicted = f.predict(past, 60.0, horizon)
    assert len(predicted) == horizon and all(isinstance(v, float) for v in predicted)
    error = sum(abs(a - p) for a, p in zip(future, predicted, strict=True)) / horizon
    naive = sum(abs(a - past[-1]) for a in future) / horizon  # "as now": 0.90 here
    assert naive > 0.5
    # The sine's amplitude is 1; repeating the last season misses the rise by 0.048.
    assert error < 0.01, (name, error, naive)


@pytest.mark.parametrize("name", LIBRARY_FORECASTERS)
def test_a_library_forecaster_refuses_too_short_a_history(name):
    from aifixer.scaling.forecast import make_forecaster

    f = make_forecaster(name, season_s=SEASON * 60)
    with pytest.raises(ForecastError, match="at least 10 samples"):
        f.predict(periodic(6), 60.0, 3)


def test_mstl_needs_two_seasons_the_others_forecast_without_one():
    from aifixer.scaling.forecast import make_forecaster

    short = periodic(SEASON + 6)  # one season and a bit
    with pytest.raises(ForecastError, match="less than two seasons"):
        make_forecaster("mstl", season_s=SEASON * 60).predict(short, 60.0, 3)
    with pytest.raises(ForecastError, match="season of at least two samples"):
        make_forecaster("mstl", season_s=60).predict(periodic(4 * SEASON), 60.0, 3)
    for name in ("prophet", "autoets"):  # trend only, as Holt would
        assert len(make_forecaster(name, season_s=SEASON * 60).predict(short, 60.0, 3)) == 3


def test_autoets_fits_a_season_too_long_for_ets_without_it():
    from aifixer.scaling.forecast import MAX_ETS_SEASON, make_forecaster

    # A daily season at one sample a minute is 1440 states: more than ETS can hold.
    assert MAX_ETS_SEASON == 24
    values = periodic(4 * SEASON)
    assert len(make_forecaster("autoets", season_s=30 * 60).predict(values, 60.0, 3)) == 3


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("prophet", "prophet.Prophet.fit"),
        ("autoets", "statsforecast.models.AutoETS.forecast"),
        ("mstl", "statsforecast.models.MSTL.forecast"),
    ],
)
def test_a_failed_fit_is_no_forecast(name, target, monkeypatch):
    from aifixer.scaling.forecast import make_forecaster

    def fail(*args, **kwargs):
        raise RuntimeError("optimizer did not converge")

    monkeypatch.setattr(target, fail)
    with pytest.raises(ForecastError, match="could not fit: optimizer did not converge"):
        make_forecaster(name, season_s=SEASON * 60).predict(periodic(4 * SEASON), 60.0, 3)


@pytest.mark.parametrize(
    ("name", "module", "install"),
    [
        ("prophet", "prophet", "pip install 'aifixer[prophet]'"),  # an extra
        ("mstl", "statsforecast", "pip install aifixer"),  # one of aifixer's own
        ("autoets", "statsforecast", "pip install aifixer"),
    ],
)
def test_a_missing_library_is_no_forecast(name, module, install, monkeypatch):
    import sys

    from aifixer.scaling.forecast import make_forecaster

    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, module + ".models", None)
    with pytest.raises(ForecastError, match="not installed") as caught:
        make_forecaster(name, season_s=SEASON * 60).predict(periodic(4 * SEASON), 60.0, 3)
    assert install in str(caught.value)


def test_the_farm_loads_no_forecasting_library_it_was_not_configured_for():
    import subprocess
    import sys

    code = (
        "import sys, aifixer.scaling.forecast, aifixer.scaling.scaler, aifixer.settings;"
        "f = aifixer.scaling.forecast.make_forecaster('mstl');"
        "print(sorted(m for m in ('prophet', 'statsforecast', 'pandas', 'cmdstanpy')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_setting_accepts_every_forecaster():
    from aifixer.scaling.forecast import FORECASTERS
    from aifixer.settings import Settings

    for name in FORECASTERS:
        assert Settings(_env_file=None, scaling_forecaster=name).scaling_forecaster == name
