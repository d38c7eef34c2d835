"""The Loki stand-in answering what Grafana's Loki data source sends beyond the product's
own queries: its health check is the instant query `vector(1)+vector(1)`, which must
come back as a one-sample vector of value 2 for "Save & test" to pass."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from aifixer_sandbox.loki import LogStore, make_app
from aifixer_sandbox.serve import serve_in_thread

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loki_url() -> Iterator[str]:
    url, stop = serve_in_thread(make_app(LogStore()), "loki")
    try:
        yield url
    finally:
        stop()


def test_grafana_health_check(loki_url):
    now_ns = time.time_ns()
    # As Grafana's backend builds it: the expression percent-encoded, time in nanoseconds.
    resp = requests.get(
        f"{loki_url}/loki/api/v1/query?direction=backward"
        f"&query=vector%281%29%2Bvector%281%29&time={now_ns}",
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "success"
    assert body["data"]["resultType"] == "vector"
    [sample] = body["data"]["result"]
    assert sample["metric"] == {}
    stamp, value = sample["value"]
    assert value == "2"
    assert abs(stamp - now_ns / 1e9) < 0.002
    assert "summary" in body["data"]["stats"]


def _instant(loki_url: str, query: str) -> requests.Response:
    return requests.get(
        f"{loki_url}/loki/api/v1/query", params={"query": query, "time": "100"}, timeout=10
    )


@pytest.mark.parametrize(
    ("query", "result_type", "value"),
    [
        ("vector(1)", "vector", "1"),
        ("vector(2) * 3 + 1", "vector", "7"),
        ("1 + 2 * 3", "scalar", "7"),
        ("(1 + 2) * 3", "scalar", "9"),
        ("2 ^ 3 ^ 2", "scalar", "512"),  # right-associative, as in PromQL
        ("-1 - vector(1)", "vector", "-2"),
        ("vector(1) / 0", "vector", "+Inf"),
        ("7 % 4", "scalar", "3"),
    ],
)
def test_constant_expressions(loki_url, query, result_type, value):
    resp = _instant(loki_url, query)
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert data["resultType"] == result_type
    if result_type == "vector":
        assert data["result"] == [{"metric": {}, "value": [100, value]}]
    else:
        assert data["result"] == [100, value]


def test_constant_over_a_range(loki_url):
    resp = requests.get(
        f"{loki_url}/loki/api/v1/query_range",
        params={"query": "vector(1)+vector(1)", "start": "100", "end": "160", "step": "30"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert data["resultType"] == "matrix"
    assert data["result"] == [{"metric": {}, "values": [[100, "2"], [130, "2"], [160, "2"]]}]


@pytest.mark.parametrize(
    "query",
    ['rate({app="web"}[1m]) + 1', 'vector(1) + count_over_time({app="web"}[1m])', "sum(vector(1))"],
)
def test_operations_on_log_metrics_stay_unsupported(loki_url, query):
    resp = _instant(loki_url, query)
    assert resp.status_code == 400
    assert "not supported" in resp.text
