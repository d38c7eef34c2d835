"""The Prometheus adapter's steps land where Prometheus puts its points.

Prometheus reads a float `step` as seconds in a float64 and truncates it to the
millisecond below (seen on 2.42: step=4.286 answers every 4.285 s); a duration such
as `4286ms` is exact. A step that is not a whole number of milliseconds as a float
(15 s / 7 = 2.142857… s, a sandbox at speed 7) then put every point but the first off
the times the adapter looked them up at: a history of NaN.
"""

from __future__ import annotations

import math
import re

from aifixer.adapters.prometheus import Prometheus
from aifixer.settings import Settings


class _Response:
    status_code = 200

    def __init__(self, body):
        self.body = body

    def json(self):
        return self.body


class FakePrometheus:
    """`/api/v1/query_range` as Prometheus answers it: points at start + i·step, in
    milliseconds, the step parsed the way Prometheus parses it."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def get(self, url, params, timeout):
        self.steps.append(params["step"])
        start_ms = round(float(params["start"]) * 1000)
        end_ms = round(float(params["end"]) * 1000)
        step_ms = _prometheus_step_ms(params["step"])
        values = [
            [t / 1000, "1.5"] for t in range(start_ms, end_ms + 1, step_ms)
        ]  # one series, every point known
        return _Response(
            {"status": "success",
             "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}}
        )  # fmt: skip

    def close(self) -> None:
        pass


def _prometheus_step_ms(text: str) -> int:
    """Prometheus' parseDuration: a float is seconds, made nanoseconds by truncation;
    otherwise a duration ("4286ms", "15s")."""
    try:
        seconds = float(text)
    except ValueError:
        m = re.fullmatch(r"(\d+)(ms|s)", text)
        assert m, text
        return int(m.group(1)) * (1 if m.group(2) == "ms" else 1000)
    return int(seconds * 1e9) // 1_000_000


def _adapter() -> tuple[Prometheus, FakePrometheus]:
    prom = Prometheus(Settings(_env_file=None, prometheus_url="http://prometheus.invalid"))
    fake = FakePrometheus()
    prom.http = fake  # type: ignore[assignment]
    return prom, fake


def test_the_emulation_truncates_as_prometheus_does():
    assert _prometheus_step_ms("4.286") == 4285
    assert _prometheus_step_ms("4286ms") == 4286
    assert _prometheus_step_ms("15") == 15_000


def test_a_step_that_is_not_whole_milliseconds_finds_every_point():
    prom, fake = _adapter()
    start = 1_796_272_696.4216
    for step in (15 / 7, 4.286, 0.3, 15.0, 1.0):
        values = prom.deployment_cpu("shop", "api", start, start + 200 * step, step)
        assert 200 <= len(values) <= 201, step  # the step as Prometheus reads it
        assert all(not math.isnan(v) for v in values), (step, values[:5])
    assert all(s.endswith("ms") for s in fake.steps), fake.steps
