"""Prometheus, read over its HTTP API with `requests` (`/api/v1/query_range`).

Forecast scaling reads a Deployment's CPU history from it: the cAdvisor series of the
Deployment's pods, found through kube-state-metrics' owner series (pod → ReplicaSet →
Deployment, as kube-prometheus' `namespace_workload_pod:kube_pod_owner:relabel` does),
so a StatefulSet or a Deployment whose name starts the same is never counted in.

Errors are decided here once: unreachable, timeouts, 5xx and 429 are `TransientError`
(429 and 503 with their Retry-After); a query Prometheus refuses (400, 422 with its
own words) is `PermanentError`.
"""

from __future__ import annotations

import math

import requests

from aifixer.settings import Settings

from .errors import PermanentError, get_json

SYSTEM = "prometheus"
MAX_POINTS = 11_000  # Prometheus refuses a range query of more than 11,000 points per series

Series = tuple[dict[str, str], list[tuple[float, float]]]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


CADVISOR = 'job="kubelet", metrics_path="/metrics/cadvisor"'
KUBE_STATE = 'job="kube-state-metrics"'


def deployment_cpu_query(
    namespace: str,
    name: str,
    window: str = "1m",
    cadvisor: str = CADVISOR,
    kube_state: str = KUBE_STATE,
) -> str:
    """The cores a Deployment's pods use, summed: one series.

    Only series from cAdvisor and kube-state-metrics count (`cadvisor` and
    `kube_state` select them by their scrape job, as kube-prometheus' own rules do): an
    application that exports a metric of the same name cannot move the replicas.
    """
    ns = _quote(namespace)
    return (
        f"sum(rate(container_cpu_usage_seconds_total{{{cadvisor}, namespace={ns},"
        f' container!=""}}[{window}])'
        " * on (namespace, pod) group_left() max by (namespace, pod) ("
        f'kube_pod_owner{{{kube_state}, namespace={ns}, owner_kind="ReplicaSet"}}'
        " * on (namespace, owner_name) group_left() max by (namespace, owner_name) ("
        f"label_replace(kube_replicaset_owner{{{kube_state}, namespace={ns},"
        f' owner_kind="Deployment", owner_name={_quote(name)}}},'
        ' "owner_name", "$1", "replicaset", "(.*)"))))'
    )


class Prometheus:
    """A Prometheus (or Prometheus-compatible: Thanos, Mimir, VictoriaMetrics) query API."""

    def __init__(self, settings: Settings) -> None:
        if not settings.prometheus_url:
            raise PermanentError(SYSTEM, "AIFIXER_PROMETHEUS_URL is not set")
        self.base = settings.prometheus_url.rstrip("/")
        self.timeout = settings.request_timeout_s
        self.cadvisor = settings.prometheus_cadvisor_selector
        self.kube_state = settings.prometheus_kube_state_selector
        self.http = requests.Session()
        if settings.prometheus_org_id:
            self.http.headers["X-Scope-OrgID"] = settings.prometheus_org_id

    def close(self) -> None:
        self.http.close()

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[Series]:
        """A range query: [(labels, [(t, value)])], values as floats (NaN kept).

        Raises:
            ValueError: more points than Prometheus answers for (raise the step).
            TransientError, PermanentError.
        """
        if step < 0.001 or end < start:
            raise ValueError(f"need start <= end and step >= 1 ms, got {start}, {end}, {step}")
        if (end - start) / step + 1 > MAX_POINTS:
            raise ValueError(f"{(end - start) / step:.0f} points per series, at most {MAX_POINTS}")
        body = get_json(
            self.http,
            SYSTEM,
            f"{self.base}/api/v1/query_range",
            # The step in whole milliseconds: Prometheus truncates a float step to the
            # millisecond below (4.286 s steps by 4.285 s), and its points would drift.
            {
                "query": promql,
                "start": f"{start:.3f}",
                "end": f"{end:.3f}",
                "step": f"{round(step * 1000)}ms",
            },
            self.timeout,
        )
        if body.get("status") != "success" or body.get("data", {}).get("resultType") != "matrix":
            raise PermanentError(SYSTEM, f"unexpected answer: {str(body)[:300]}")
        return [
            (dict(r.get("metric") or {}), [(float(t), float(v)) for t, v in r.get("values") or []])
            for r in body["data"]["result"]
        ]

    def deployment_cpu(
        self, namespace: str, name: str, start: float, end: float, step: float, window: str = "1m"
    ) -> list[float]:
        """The Deployment's total CPU (cores) at every step from start to end; NaN where
        Prometheus has no value (no pods, or no scrape)."""
        step = round(step * 1000) / 1000  # the step Prometheus steps by (see query_range)
        query = deployment_cpu_query(namespace, name, window, self.cadvisor, self.kube_state)
        series = self.query_range(query, start, end, step)
        points = {round(t, 3): v for t, v in series[0][1]} if series else {}
        count = int(math.floor((end - start) / step + 1e-9)) + 1
        return [points.get(round(start + i * step, 3), math.nan) for i in range(count)]
