"""Forecast-driven replicas: the decision, from a Deployment's annotations and its CPU history.

A Deployment opts in with annotations (`POLICY_ANNOTATIONS`): the CPU one pod should
carry, the bounds, the horizon and the mode (`preview` records the decision, `apply`
also sets the replicas). From the history of its total CPU (Prometheus'
`sum(rate(container_cpu_usage_seconds_total…))`, sampled at a regular step) a
forecaster predicts the next `horizon`; the decision is

    replicas = ceil(peak of the forecast / target per pod), within [min, max],

never below what the load of the last sample needs now, and lowered only when every
recommendation of the last `scale_in_window` allows it (the HPA's scale-down
stabilization): scale-out at once, scale-in slowly. A forecast that cannot be made —
too little history, a flat series, values that are not numbers — leaves the replicas
alone and says why; so does an HPA targeting the same Deployment.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

PREFIX = "aifixer.io/forecast-"
POLICY_ANNOTATIONS = {
    "mode": PREFIX + "scaling",  # preview | apply
    "target": PREFIX + "target-cpu",  # CPU per pod: "500m", "0.5", "1"
    "min": PREFIX + "min-replicas",
    "max": PREFIX + "max-replicas",
    "horizon": PREFIX + "horizon",  # "5m", "90s": at least the time a new pod needs
    "window": PREFIX + "scale-in-window",  # "5m"
}
MAX_HORIZON_S = 3_600.0  # an hour ahead: further is not autoscaling
MAX_WINDOW_S = 86_400.0
KEPT_POINTS = 60  # of a forecast, in its record
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(s|m|h)")
_CPU = re.compile(r"(\d+(?:\.\d+)?)(m?)")


class PolicyError(ValueError):
    """The Deployment's annotations do not make a policy; the message says which and why."""


def duration_s(text: str, what: str) -> float:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise PolicyError(f"{what}: {text!r} is not a duration like 90s, 5m or 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def cpu_cores(text: str, what: str) -> float:
    m = _CPU.fullmatch(text.strip())
    if not m:
        raise PolicyError(f"{what}: {text!r} is not a CPU quantity like 500m or 0.5")
    value = float(m.group(1)) / (1000 if m.group(2) else 1)
    if value <= 0:
        raise PolicyError(f"{what}: must be above zero")
    return value


@dataclass(frozen=True)
class Policy:
    mode: Literal["preview", "apply"]
    target_cores: float
    min_replicas: int = 1
    max_replicas: int = 10
    horizon_s: float = 300.0
    scale_in_window_s: float = 300.0

    @classmethod
    def from_annotations(cls, annotations: dict[str, str] | None) -> Policy | None:
        """The policy a Deployment asks for; None when it did not opt in.

        Raises:
            PolicyError: an annotation is present but wrong.
        """
        a = annotations or {}
        mode = a.get(POLICY_ANNOTATIONS["mode"])
        if mode is None:
            return None
        if mode not in ("preview", "apply"):
            raise PolicyError(f"{POLICY_ANNOTATIONS['mode']}: {mode!r} is not preview or apply")
        target = a.get(POLICY_ANNOTATIONS["target"])
        if target is None:
            raise PolicyError(
                f"{POLICY_ANNOTATIONS['target']} is required (CPU per pod, e.g. 500m)"
            )

        def replicas(key: str, default: int) -> int:
            text = a.get(POLICY_ANNOTATIONS[key])
            if text is None:
                return default
            if not re.fullmatch(r"[0-9]{1,6}", text.strip()) or int(text) < 1:
                raise PolicyError(f"{POLICY_ANNOTATIONS[key]}: {text!r} is not a whole number >= 1")
            return int(text)

        low, high = replicas("min", 1), replicas("max", 10)
        if low > high:
            raise PolicyError(f"min replicas {low} is above max replicas {high}")
        horizon = a.get(POLICY_ANNOTATIONS["horizon"])
        window = a.get(POLICY_ANNOTATIONS["window"])
        horizon_s = duration_s(horizon, POLICY_ANNOTATIONS["horizon"]) if horizon else 300.0
        window_s = duration_s(window, POLICY_ANNOTATIONS["window"]) if window else 300.0
        if not 0 < horizon_s <= MAX_HORIZON_S:
            raise PolicyError(f"{POLICY_ANNOTATIONS['horizon']}: at most {MAX_HORIZON_S:g} s")
        if window_s > MAX_WINDOW_S:
            raise PolicyError(f"{POLICY_ANNOTATIONS['window']}: at most {MAX_WINDOW_S:g} s")
        return cls(
            mode=mode,  # type: ignore[arg-type]
            target_cores=cpu_cores(target, POLICY_ANNOTATIONS["target"]),
            min_replicas=low,
            max_replicas=high,
            horizon_s=horizon_s,
            scale_in_window_s=window_s,
        )


class Forecaster(Protocol):
    name: str

    def predict(self, values: Sequence[float], step_s: float, horizon: int) -> list[float]:
        """The next `horizon` values of a regular series sampled every `step_s` seconds."""


@dataclass
class SeasonalNaive:
    """Tomorrow is today: the value one season ago. The baseline any forecaster must beat."""

    season_s: float = 86_400.0
    name: str = "seasonal-naive"

    def predict(self, values: Sequence[float], step_s: float, horizon: int) -> list[float]:
        season = max(1, round(self.season_s / step_s))
        if len(values) < season:
            raise ForecastError(
                f"{len(values)} samples is less than one season ({season} samples of {step_s:g} s)"
            )
        return [values[len(values) - season + (h % season)] for h in range(horizon)]


@dataclass
class Holt:
    """Holt's linear trend (double exponential smoothing): level and trend, no season.

    Works from a few minutes of history; follows ramps, not cycles.
    """

    alpha: float = 0.5
    beta: float = 0.3
    name: str = "holt"
    season_s: float = 0.0  # no season: accepted so every forecaster is made alike

    def predict(self, values: Sequence[float], step_s: float, horizon: int) -> list[float]:
        if len(values) < 2:
            raise ForecastError("Holt needs at least two samples")
        level, trend = values[0], values[1] - values[0]
        for v in values[1:]:
            previous = level
            level = self.alpha * v + (1 - self.alpha) * (level + trend)
            trend = self.beta * (level - previous) + (1 - self.beta) * trend
        return [level + (h + 1) * trend for h in range(horizon)]


# Prophet and statsforecast bring pandas, Stan, statsmodels (0.6-1.6 s to import, ~380 MB
# installed): they are imported by the first forecast that uses them, so a farm
# configured with another forecaster never loads them.


def _season_samples(season_s: float, step_s: float) -> int:
    return max(1, round(season_s / step_s)) if season_s > 0 else 1


def _enough(values: Sequence[float], what: str) -> None:
    if len(values) < MIN_SAMPLES:
        raise ForecastError(f"{what} needs at least {MIN_SAMPLES} samples, got {len(values)}")


def _library(what: str, exc: ImportError, install: str) -> ForecastError:
    return ForecastError(f"{what} is not installed ({exc.name}): {install}")


# Prophet is an extra; statsforecast is one of aifixer's own dependencies (the default
# forecaster), so only a damaged install lacks it.
PROPHET_HINT = "install the extra: pip install 'aifixer[prophet]'"
STATSFORECAST_HINT = "it comes with aifixer: reinstall it (pip install aifixer)"


def _prophet() -> type:
    """Prophet's model class, quiet: its import logs an error when plotly (interactive
    plots, unused here) is missing and sets its own logger to INFO (a line whenever it
    adjusts to a short history); cmdstanpy logs two INFO lines per fit on a handler of
    its own. Warnings and errors still show."""
    import logging

    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    from cmdstanpy.utils import get_logger
    from prophet import Prophet

    logging.getLogger("prophet").setLevel(logging.WARNING)
    get_logger().setLevel(logging.WARNING)  # installs its handler first, then the level
    return Prophet


@dataclass
class ProphetForecaster:
    """Prophet: a piecewise-linear trend plus the season as a Fourier series, fitted by the
    Stan model its wheel ships (MAP by L-BFGS, no sampling, nothing downloaded).

    The season (`season_s`, a day by default) is modelled once the history covers two of
    them; before that the trend alone. Timestamps count from the epoch in `step_s`
    steps: only the season's period matters, not the wall clock.
    """

    season_s: float = 86_400.0
    name: str = "prophet"
    fourier_order: int = 4  # Prophet's own for a daily season

    def predict(self, values: Sequence[float], step_s: float, horizon: int) -> list[float]:
        _enough(values, "Prophet")
        try:
            import pandas as pd

            prophet_model = _prophet()
        except ImportError as exc:
            raise _library("prophet", exc, PROPHET_HINT) from exc
        n = len(values)
        model = prophet_model(
            daily_seasonality=False,
            weekly_seasonality=False,
            yearly_seasonality=False,
            uncertainty_samples=0,  # the mean only: no simulated intervals
        )
        if self.season_s > 0 and n * step_s >= 2 * self.season_s:
            model.add_seasonality(
                name="season", period=self.season_s / 86_400, fourier_order=self.fourier_order
            )
        stamps = pd.to_datetime([i * step_s for i in range(n + horizon)], unit="s")
        try:
            model.fit(pd.DataFrame({"ds": stamps[:n], "y": list(values)}))
            forecast = model.predict(pd.DataFrame({"ds": stamps[n:]}))
        except Exception as exc:  # Stan's optimizer, pandas: any failure is no forecast
            raise ForecastError(f"Prophet could not fit: {exc}") from exc
        return [float(v) for v in forecast["yhat"]]


# statsforecast's ETS, like R's forecast::ets, holds at most 24 seasonal states: with a
# longer season (a day of 1-minute samples is 1,440) it would not fit at all.
MAX_ETS_SEASON = 24


@dataclass
class AutoETSForecaster:
    """statsforecast's AutoETS: the exponential-smoothing model (error, trend, season:
    none, additive or multiplicative, damped or not) with the lowest AICc.

    Seasonal when the history covers two seasons and a season is at most 24 samples;
    otherwise level and trend only (a daily season at a 1-minute step is left to mstl).
    """

    season_s: float = 86_400.0
    name: str = "autoets"

    def predict(self, values: Sequence[float], step_s: float, horizon: int) -> list[float]:
        _enough(values, "AutoETS")
        try:
            import numpy as np
            from statsforecast.models import AutoETS
        except ImportError as exc:
            raise _library("statsforecast", exc, STATSFORECAST_HINT) from exc
        season = _season_samples(self.season_s, step_s)
        if season > MAX_ETS_SEASON or len(values) < 2 * season:
            season = 1
        try:
            fitted = AutoETS(season_length=season).forecast(
                y=np.asarray(values, dtype=float), h=horizon
            )
        except Exception as exc:  # statsforecast raises bare Exceptions on a failed fit
            raise ForecastError(f"AutoETS could not fit: {exc}") from exc
        return [float(v) for v in fitted["mean"]]


@dataclass
class MSTLForecaster:
    """statsforecast's MSTL: STL takes the season out (it repeats the last one), AutoETS
    forecasts the rest (trend and remainder, no season).

    Needs two seasons of history. STL's loess windows are evaluated every tenth point
    and interpolated (R's stl default; statsmodels' is every point): 8 to 13 times faster
    on two days of minutes, the forecasts the same to three decimals.
    """

    season_s: float = 86_400.0
    name: str = "mstl"

    def predict(self, values: Sequence[float], step_s: float, horizon: int) -> list[float]:
        _enough(values, "MSTL")
        season = _season_samples(self.season_s, step_s)
        if season < 2:
            raise ForecastError(
                f"MSTL needs a season of at least two samples ({self.season_s:g} s at {step_s:g} s)"
            )
        if len(values) < 2 * season:
            raise ForecastError(
                f"{len(values)} samples is less than two seasons ({2 * season} samples of {step_s:g} s)"
            )
        try:
            import numpy as np
            from statsforecast.models import MSTL, AutoETS
        except ImportError as exc:
            raise _library("statsforecast", exc, STATSFORECAST_HINT) from exc
        seasonal_window = 11  # statsforecast's mstl default for one season
        trend_window = math.ceil(1.5 * season / (1 - 1.5 / seasonal_window))
        jumps = {
            "seasonal_jump": math.ceil(seasonal_window / 10),
            "trend_jump": math.ceil(trend_window / 10),
            "low_pass_jump": math.ceil((season + 1) / 10),
        }
        model = MSTL(season_length=season, trend_forecaster=AutoETS(model="ZZN"), stl_kwargs=jumps)
        try:
            fitted = model.forecast(y=np.asarray(values, dtype=float), h=horizon)
        except Exception as exc:  # statsforecast raises bare Exceptions on a failed fit
            raise ForecastError(f"MSTL could not fit: {exc}") from exc
        return [float(v) for v in fitted["mean"]]


FORECASTERS: dict[str, Callable[..., Forecaster]] = {
    "holt": Holt,
    "seasonal-naive": SeasonalNaive,
    "prophet": ProphetForecaster,
    "autoets": AutoETSForecaster,
    "mstl": MSTLForecaster,
}


def make_forecaster(name: str, season_s: float = 86_400.0) -> Forecaster:
    """The forecaster called `name`, for a load whose season lasts `season_s` seconds.

    Raises:
        ValueError: no forecaster has that name.
    """
    if name not in FORECASTERS:
        raise ValueError(f"unknown forecaster {name!r}; known: {sorted(FORECASTERS)}")
    return FORECASTERS[name](season_s=season_s)


class ForecastError(ValueError):
    """No forecast can be made from this history; the message says why."""


MIN_SAMPLES = 10


def check_history(values: Sequence[float]) -> None:
    """Raises ForecastError when no forecaster should be trusted with `values`."""
    if len(values) < MIN_SAMPLES:
        raise ForecastError(f"too little history: {len(values)} samples, at least {MIN_SAMPLES}")
    if any(not math.isfinite(v) for v in values):
        raise ForecastError("the history has values that are not numbers (NaN or infinite)")
    if max(values) - min(values) <= 1e-9 * max(1.0, abs(max(values))):
        raise ForecastError("the history is flat: nothing to forecast from")


@dataclass
class Decision:
    """What was decided for one Deployment at one moment, and from what."""

    namespace: str
    name: str
    at: float  # epoch seconds
    mode: str
    replicas_before: int
    replicas_after: int  # equal to before when nothing changes
    forecaster: str = ""
    history_samples: int = 0
    current_cores: float | None = None
    peak_cores: float | None = None
    forecast: list[float] = field(default_factory=list)
    recommended: int | None = None  # before scale-in stabilization
    reason: str = ""
    target_cores: float | None = None  # the policy's CPU per pod
    step_s: float | None = None  # between history samples and forecast points

    @property
    def changes(self) -> bool:
        return self.replicas_after != self.replicas_before


def decide(
    namespace: str,
    name: str,
    policy: Policy,
    values: Sequence[float],
    step_s: float,
    replicas: int,
    recent: Sequence[tuple[float, int]],
    forecaster: Forecaster,
    now: float,
) -> Decision:
    """The replicas for the next horizon.

    `values` is the Deployment's total CPU (cores) every `step_s` seconds up to now;
    `recent` the (time, recommended replicas) of earlier decisions, for scale-in
    stabilization.
    """
    base = Decision(namespace, name, now, policy.mode, replicas, replicas, forecaster.name,
                    len(values), target_cores=policy.target_cores, step_s=step_s)  # fmt: skip
    try:
        check_history(values)
        steps = max(1, math.ceil(policy.horizon_s / step_s))
        forecast = forecaster.predict(list(values), step_s, steps)
        if not forecast or any(not math.isfinite(v) for v in forecast):
            raise ForecastError(f"{forecaster.name} returned values that are not numbers")
    except ForecastError as exc:
        base.reason = f"replicas left at {replicas}: {exc}"
        return base
    current = values[-1]
    peak = max(max(forecast), 0.0)
    wanted = math.ceil(peak / policy.target_cores - 1e-9)
    floor_now = math.ceil(current / policy.target_cores - 1e-9)
    recommended = min(policy.max_replicas, max(policy.min_replicas, wanted, floor_now))
    held = [r for t, r in recent if now - t <= policy.scale_in_window_s]
    after = recommended
    why = f"forecast peak {peak:.3f} cores over {policy.horizon_s:g} s / {policy.target_cores:g} per pod"
    if recommended < replicas and (not held or max(held) > recommended):
        # Scale in only what every recommendation of the window allows; with none yet
        # (a new opt-in, records lost), wait for one.
        after = min(replicas, max(held)) if held else replicas
        why += f"; scale-in held at {after} by the last {policy.scale_in_window_s:g} s"
    if floor_now > wanted:
        why += f"; the load now ({current:.3f} cores) needs {floor_now}"
    base.replicas_after = after
    base.current_cores = current
    base.peak_cores = peak
    base.forecast = [round(v, 4) for v in forecast[:KEPT_POINTS]]
    base.recommended = recommended
    base.reason = why
    return base
