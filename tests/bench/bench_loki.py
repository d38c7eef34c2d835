"""Throughput of the Loki stand-in: pushes and queries per second, on loopback only.

The pod simulator ships logs through `LogStore.push` in-process, so that is measured
directly; HTTP push and `query_range` are measured through `requests` as product code
calls them. Every phase stops at a fixed count or a time budget, whichever comes first.

    .venv/bin/python tests/bench/bench_loki.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

from aifixer_sandbox.loki import LogStore, make_app
from aifixer_sandbox.serve import serve_in_thread

TIME_BUDGET_S = 5.0
NS = 1_000_000_000


def bounded(
    name: str, unit: str, per_call: int, max_calls: int, call: Callable[[int], None]
) -> None:
    """Run `call(i)` until max_calls or the time budget; print the rate of `unit`."""
    started = time.perf_counter()
    calls = 0
    while calls < max_calls and time.perf_counter() - started < TIME_BUDGET_S:
        call(calls)
        calls += 1
    elapsed = time.perf_counter() - started
    print(
        f"{name:<44} {calls * per_call / elapsed:>12,.0f} {unit}/s  ({calls} calls, {elapsed:.2f}s)"
    )


def main() -> None:
    t0 = time.time_ns() - 600 * NS
    store = LogStore()

    def direct_push(i: int) -> None:
        store.push(
            {"namespace": "shop", "pod": f"api-{i % 20}"},
            [(t0 + i * 1000 + j, f"line {j} of batch {i}") for j in range(10)],
        )

    bounded("LogStore.push, 10 lines per call", "lines", 10, 50_000, direct_push)

    url, stop = serve_in_thread(make_app(store), "loki")
    session = requests.Session()
    try:

        def http_push(i: int) -> None:
            values = [[str(t0 + 10**9 + i * 10_000 + j), f"http line {j}"] for j in range(1000)]
            resp = session.post(
                url + "/loki/api/v1/push",
                timeout=10,
                json={"streams": [{"stream": {"pod": "http"}, "values": values}]},
            )
            resp.raise_for_status()

        bounded("HTTP push, 1000 lines per request", "lines", 1000, 200, http_push)

        def query(i: int) -> None:
            resp = session.get(
                url + "/loki/api/v1/query_range",
                timeout=10,
                params={"query": '{namespace="shop"} |= "batch" != "line 3"', "limit": 100},
            )
            resp.raise_for_status()

        bounded("HTTP query_range (filtered, limit 100)", "queries", 1, 2_000, query)

        def metric(i: int) -> None:
            resp = session.get(
                url + "/loki/api/v1/query",
                timeout=10,
                params={"query": 'sum by (pod) (count_over_time({namespace="shop"}[10m]))'},
            )
            resp.raise_for_status()

        bounded("HTTP instant sum by count_over_time", "queries", 1, 2_000, metric)
    finally:
        session.close()
        stop()
    print(f"store: {store.stream_count} streams, {store.entry_count:,} entries")


if __name__ == "__main__":
    main()
