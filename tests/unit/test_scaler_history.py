"""The history a forecaster gets: short gaps filled, long gaps cut, stale history refused."""

from __future__ import annotations

import math

import pytest

from aifixer.scaling.scaler import trailing_finite, usable_history

nan = math.nan


@pytest.mark.parametrize(
    ("values", "max_gap", "want"),
    [
        ([1.0, 2.0, 3.0], 2, [1.0, 2.0, 3.0]),
        ([1.0, nan, 3.0], 1, [1.0, 2.0, 3.0]),  # a missed scrape: a straight line over it
        ([0.0, nan, nan, 3.0, 4.0], 2, [0.0, 1.0, 2.0, 3.0, 4.0]),
        ([0.0, nan, nan, nan, 3.0, 4.0], 2, [3.0, 4.0]),  # too long: cut there
        ([nan, nan, 1.0, 2.0], 5, [1.0, 2.0]),  # nothing before the first sample
        ([1.0, 2.0, nan], 1, [1.0, 2.0]),  # the last scrape missing: the last known
        ([1.0, 2.0, nan, nan], 1, []),  # stale
        ([nan, nan], 3, []),
        ([], 3, []),
        (
            [5.0, nan, nan, nan, 1.0, nan, 3.0, nan],
            1,
            [1.0, 2.0, 3.0],
        ),  # the last long gap counts, short ones after it are filled
    ],
)
def test_usable_history(values, max_gap, want):
    assert usable_history(values, max_gap) == want


def test_trailing_finite_allows_no_gap():
    assert trailing_finite([1.0, nan, 2.0, 3.0]) == [2.0, 3.0]
    assert trailing_finite([1.0, 2.0, nan]) == []


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_prometheus_that_is_down_is_transient_and_the_pass_goes_on(clean_redis):
    from aifixer.adapters.errors import TransientError
    from aifixer.adapters.prometheus import Prometheus
    from aifixer.scaling import scaler
    from aifixer.settings import Settings

    settings = Settings(_env_file=None, prometheus_url=f"http://127.0.0.1:{_closed_port()}",
                        request_timeout_s=2)  # fmt: skip
    prom = Prometheus(settings)
    with pytest.raises(TransientError):
        prom.deployment_cpu("shop", "api", 0, 600, 15)

    class OneDeployment:
        def deployments(self, namespace):
            ann = {"aifixer.io/forecast-scaling": "apply", "aifixer.io/forecast-target-cpu": "500m"}
            return [{"metadata": {"namespace": "shop", "name": "api", "annotations": ann},
                     "spec": {"replicas": 3}}]  # fmt: skip

        def autoscaler_of(self, namespace, name):
            return None

        def set_replicas(self, *args, **kwargs):
            raise AssertionError("nothing may be scaled without a forecast")

    (d,) = scaler.scale_once(OneDeployment(), prom, clean_redis, settings, now=1e6)
    assert d.replicas_after == d.replicas_before == 3
    assert d.reason.startswith("replicas left at 3:") and "prometheus" in d.reason.lower()
    assert scaler.decisions(clean_redis, "shop", "api")[0]["reason"] == d.reason
