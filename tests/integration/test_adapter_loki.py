"""The Loki adapter against the Loki stand-in, over HTTP.

The pod simulator ships a scenario's container logs into the world's Loki; storms are
pushed through Loki's own push API, as a log shipper would.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import requests

from aifixer.adapters.errors import PermanentError, TransientError
from aifixer.adapters.loki import Loki
from aifixer.settings import Settings
from aifixer_sandbox import loki as loki_stand_in
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.scenario import bundled_dir
from aifixer_sandbox.serve import serve_in_thread

pytestmark = pytest.mark.integration

SCENARIOS = bundled_dir()
NS = 1_000_000_000
PANIC = "panic: assignment to entry in nil map"


@pytest.fixture
def loki_url():
    url, stop = serve_in_thread(loki_stand_in.make_app(loki_stand_in.LogStore()), "loki")
    yield url
    stop()


def _loki(url: str, tmp_path: Path, **overrides) -> Loki:
    options = {"request_timeout_s": 10, **overrides}
    return Loki(Settings(loki_url=url, state_dir=tmp_path, **options))


def _push(url: str, labels: dict[str, str], entries: list[tuple[int, str]]) -> None:
    body = {"streams": [{"stream": labels, "values": [[str(ts), line] for ts, line in entries]}]}
    resp = requests.post(
        f"{url}/loki/api/v1/push",
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 204, resp.text


@pytest.mark.timeout(150)
def test_error_signals_from_a_crashing_release(make_world, tmp_path):
    sc = scenario_mod.load(SCENARIOS / "bad-release-notifier.yaml")
    world = make_world(sc, speed=40)
    loki = _loki(world.endpoints.loki, tmp_path)
    assert loki.ready()
    start = time.time_ns() - 600 * NS
    cursor = start
    seen: set[tuple[str, str, str]] = set()
    signals = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(PANIC in s.message for s in signals):
        batch, new_cursor = loki.error_signals(cursor, time.time_ns())
        assert new_cursor >= cursor
        for s in batch:
            key = (s.pod, s.raw["ts"], s.message)
            assert key not in seen, f"line read twice: {key}"
            seen.add(key)
            assert int(s.raw["ts"]) >= cursor
        signals.extend(batch)
        cursor = new_cursor
        time.sleep(0.3)
    panics = [s for s in signals if PANIC in s.message]
    assert panics, f"no panic among {[s.message for s in signals][:10]}"
    assert all(s.namespace == "comms" and s.reason == "LogError" for s in panics)
    assert all(s.pod and s.pod.startswith("notifier-") for s in panics)
    assert cursor == max(int(s.raw["ts"]) for s in signals) + 1
    assert "ready" not in " ".join(s.message for s in signals)  # only error lines

    pods = sorted({s.pod for s in panics})
    lines = loki.workload_lines("comms", pods, start, limit=50)
    assert lines and {ln.pod for ln in lines} <= set(pods)
    assert [ln.time for ln in lines] == sorted(ln.time for ln in lines)  # newest last
    assert any(PANIC in ln.line for ln in lines)
    assert any("ready" in ln.line for ln in lines)  # every line, not only errors
    assert loki.error_count("comms", pods, start) >= len([s for s in panics if s.pod in pods])
    assert loki.error_count("comms", pods, start, error_filter='|= "no such text"') == 0
    assert loki.error_count("comms", [], start) == 0


@pytest.mark.timeout(120)
def test_a_storm_of_ten_thousand_lines_is_read_completely(loki_url, tmp_path):
    now = time.time_ns()
    base = now - 120 * NS
    labels = {"namespace": "shop", "pod": "api-7d9c-x1x2x", "container": "api"}
    # Two lines share each timestamp, so page boundaries fall inside an instant.
    lines = [(base + i // 2, f"ERROR db timeout #{i}") for i in range(10_000)]
    _push(loki_url, labels, lines)
    _push(loki_url, {**labels, "pod": "api-7d9c-y1y2y"}, [(base + 5, "INFO all good")])
    loki = _loki(loki_url, tmp_path)
    signals, cursor = loki.error_signals(base, now)
    assert len(signals) == 10_000
    assert len({s.message for s in signals}) == 10_000
    assert cursor == lines[-1][0] + 1
    again, same = loki.error_signals(cursor, time.time_ns())
    assert again == [] and same == cursor
    assert loki.error_count("shop", ["api-7d9c-x1x2x", "api-7d9c-y1y2y"], base) == 10_000
    # a bounded read stops at its bound
    assert len(loki.query_range('{namespace="shop"}', base, now, limit=7_000)) == 7_000


@pytest.mark.timeout(60)
def test_namespaces_setting_filters_signals(loki_url, tmp_path):
    ts = time.time_ns() - 10 * NS
    _push(loki_url, {"namespace": "a", "pod": "p-1"}, [(ts, "error one")])
    _push(loki_url, {"namespace": "b", "pod": "p-2"}, [(ts, "error two")])
    signals, _ = _loki(loki_url, tmp_path, namespaces=["b"]).error_signals(ts - NS, ts + NS)
    assert [(s.namespace, s.pod) for s in signals] == [("b", "p-2")]


def test_bad_logql_is_permanent_with_lokis_message(loki_url, tmp_path):
    loki = _loki(loki_url, tmp_path)
    with pytest.raises(PermanentError) as err:
        loki.query_range('{namespace="x"', 0, time.time_ns())
    assert err.value.status == 400
    assert "parse error" in err.value.message
    with pytest.raises(PermanentError):
        _loki(loki_url, tmp_path, loki_query='{namespace="x"} |~ "("').error_signals(
            time.time_ns() - NS, time.time_ns()
        )


def test_a_stopped_server_is_transient(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loki = _loki(f"http://127.0.0.1:{port}", tmp_path, request_timeout_s=2)
    assert not loki.ready()
    with pytest.raises(TransientError):
        loki.error_signals(time.time_ns() - NS, time.time_ns())


def test_server_errors_and_rate_limits_are_transient(tmp_path):
    from aiohttp import web

    async def busy(request):
        if request.query.get("query", "").startswith("{a"):
            return web.Response(status=429, text="too many requests", headers={"Retry-After": "7"})
        return web.Response(status=503, text="Some services are not Running")

    app = web.Application()
    app.router.add_get("/loki/api/v1/query_range", busy)
    url, stop = serve_in_thread(app, "busy")
    try:
        loki = _loki(url, tmp_path)
        with pytest.raises(TransientError) as err:
            loki.query_range('{a="1"}', 0, 10)
        assert err.value.status == 429 and err.value.retry_after == 7.0
        with pytest.raises(TransientError) as err:
            loki.query_range('{b="1"}', 0, 10)
        assert err.value.status == 503 and "not Running" in err.value.message
    finally:
        stop()


def test_org_id_header_is_sent(tmp_path):
    from aiohttp import web

    seen = []

    async def record(request):
        seen.append(request.headers.get("X-Scope-OrgID"))
        return web.json_response({"status": "success"})  # empty: no data at all

    app = web.Application()
    app.router.add_get("/loki/api/v1/query_range", record)
    url, stop = serve_in_thread(app, "tenant")
    try:
        assert _loki(url, tmp_path, loki_org_id="team-a").query_range('{a="1"}', 0, 10) == []
        assert _loki(url, tmp_path).query_range('{a="1"}', 0, 10) == []
    finally:
        stop()
    assert seen == ["team-a", None]
