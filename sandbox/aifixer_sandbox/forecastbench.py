"""Forecasters compared on the same series: accuracy at the horizon and fit time.

Series come from load profiles (the sandbox's, so every forecaster sees the load the
demo and the tests play), sampled every `step_s` like the scaler samples Prometheus.
Rolling origins: at each origin a forecaster gets the `history` samples before it and
predicts `horizon` samples; errors are measured against what the profile then did.
Origins are `every` samples apart, 67 minutes by default: prime to the profiles'
hourly and two-hourly rhythms, so they land at every phase of them rather than always
at the same one. Every forecaster is made as the farm makes it, for a season of
`season_s` (a day, `AIFIXER_SCALING_SEASON_S`'s default).

- MASE: mean absolute error over the horizon, divided by the in-sample mean absolute
  error of the one-step naive forecast (below 1: better than "the same as the last
  sample"); averaged over origins;
- sMAPE: symmetric mean absolute percentage error, in percent;
- fit: median seconds for one fit-and-predict after the first, on this machine;
- first: seconds of the first one, which pays what the forecaster loads lazily
  (Prophet, statsforecast: their imports) when it is the first profile it sees.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aifixer.scaling.forecast import FORECASTERS, Forecaster, ForecastError, make_forecaster

from .scenario import Cycle, LoadProfile, Spike

DAY, HOUR = 86_400.0, 3_600.0

# Shapes a Deployment's load takes: a day with a morning ramp and an evening peak, an
# hourly batch rhythm on a rising trend, a flat load with bursts.
PROFILES: dict[str, LoadProfile] = {
    "daily": LoadProfile(
        base=400, cycles=[Cycle(period_seconds=DAY, amplitude=300, peak_at_seconds=20 * HOUR)],
        noise=0.05, seed=1,
    ),
    "hourly-trend": LoadProfile(
        base=300, cycles=[Cycle(period_seconds=HOUR, amplitude=150)], trend_per_hour=10,
        noise=0.05, seed=2,
    ),
    "bursts": LoadProfile(
        base=200,
        spikes=[Spike(at_seconds=t, duration_seconds=600, extra=400) for t in range(0, 12 * int(DAY), 7_200)],
        noise=0.08, seed=3,
    ),
}  # fmt: skip


def series(profile: LoadProfile, start: float, count: int, step_s: float) -> list[float]:
    return [profile.millicores(start + i * step_s) / 1000 for i in range(count)]


def mase(actual: Sequence[float], predicted: Sequence[float], history: Sequence[float]) -> float:
    scale = statistics.fmean(abs(b - a) for a, b in zip(history, history[1:], strict=False))
    error = statistics.fmean(abs(a - p) for a, p in zip(actual, predicted, strict=True))
    return error / scale if scale > 0 else math.inf


def smape(actual: Sequence[float], predicted: Sequence[float]) -> float:
    terms = [
        2 * abs(a - p) / (abs(a) + abs(p)) if abs(a) + abs(p) > 0 else 0.0
        for a, p in zip(actual, predicted, strict=True)
    ]
    return 100 * statistics.fmean(terms)


@dataclass
class Score:
    forecaster: str
    profile: str
    mase: float | None
    smape: float | None
    fit_s: float | None
    failures: int = 0
    first_s: float | None = None


def evaluate(
    make: Callable[[], Forecaster],
    profile_name: str,
    profile: LoadProfile,
    *,
    step_s: float = 60.0,
    history: int = 2 * 1440,
    horizon: int = 5,
    origins: int = 24,
    every: int = 67,
) -> Score:
    """One forecaster on one profile, over `origins` origins `every` samples apart."""
    total = history + origins * every + horizon
    values = series(profile, 0.0, total, step_s)
    forecaster = make()
    mases, smapes, fits, failures, first = [], [], [], 0, None
    for k in range(origins):
        origin = history + k * every
        past, future = values[origin - history : origin], values[origin : origin + horizon]
        started = time.perf_counter()
        try:
            predicted = forecaster.predict(past, step_s, horizon)
        except ForecastError:
            failures += 1
            continue
        finally:
            if k == 0:
                first = time.perf_counter() - started
        if k > 0 or origins == 1:
            fits.append(time.perf_counter() - started)
        mases.append(mase(future, predicted, past))
        smapes.append(smape(future, predicted))
    return Score(
        forecaster.name,
        profile_name,
        statistics.fmean(mases) if mases else None,
        statistics.fmean(smapes) if smapes else None,
        statistics.median(fits) if fits else None,
        failures,
        first,
    )


def compare(names: Sequence[str] | None = None, season_s: float = DAY, **options) -> list[Score]:
    """Every forecaster (by name, default all known) on every profile."""
    chosen = names or list(FORECASTERS)
    unknown = [n for n in chosen if n not in FORECASTERS]
    if unknown:
        raise ValueError(f"unknown forecaster(s) {unknown}; known: {sorted(FORECASTERS)}")
    return [
        evaluate(lambda n=n: make_forecaster(n, season_s), pname, profile, **options)
        for n in chosen
        for pname, profile in PROFILES.items()
    ]
