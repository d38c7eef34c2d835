"""The Loki stand-in over real loopback HTTP, driven with `requests` as product code does."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import requests

from aifixer_sandbox.loki import LogStore, make_app
from aifixer_sandbox.serve import serve_in_thread

NS = 1_000_000_000
pytestmark = pytest.mark.timeout(60)


@dataclass
class Loki:
    url: str
    store: LogStore

    def get(self, path: str, **params: object) -> requests.Response:
        return requests.get(self.url + path, params=params, timeout=10)

    def query_range(self, query: str, **params: object) -> requests.Response:
        return self.get("/loki/api/v1/query_range", query=query, **params)

    def push(self, streams: list[dict[str, object]], **kwargs: object) -> requests.Response:
        return requests.post(
            self.url + "/loki/api/v1/push", json={"streams": streams}, timeout=30, **kwargs
        )  # type: ignore[arg-type]


@pytest.fixture
def loki() -> Iterator[Loki]:
    store = LogStore(max_entries_per_stream=20_000)
    url, stop = serve_in_thread(make_app(store), "loki")
    try:
        yield Loki(url, store)
    finally:
        stop()


@pytest.fixture
def t0() -> int:
    """A base timestamp one minute ago, whole seconds, so default windows include it."""
    return (time.time_ns() // NS - 60) * NS


def values(resp: requests.Response) -> dict[str, list[tuple[int, str]]]:
    """query_range result as {pod label: [(ts, line), ...]} in the returned order."""
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert data["resultType"] == "streams"
    return {
        s["stream"]["pod"]: [(int(ts), line) for ts, line in s["values"]] for s in data["result"]
    }


def push_sample(loki: Loki, t0: int) -> None:
    resp = loki.push(
        [
            {
                "stream": {"app": "api", "pod": "api-1", "namespace": "shop"},
                "values": [
                    [
                        str(t0 + i * NS),
                        f"api-1 line {i} {'ERROR db timeout' if i % 3 == 0 else 'ok'}",
                    ]
                    for i in range(10)
                ],
            },
            {
                "stream": {"app": "api", "pod": "api-2", "namespace": "shop"},
                "values": [
                    [
                        str(t0 + i * NS + 500_000_000),
                        f"api-2 line {i} {'ERROR oom' if i == 9 else 'ok'}",
                    ]
                    for i in range(10)
                ],
            },
            {
                "stream": {"app": "web", "pod": "web-1", "namespace": "shop"},
                "values": [
                    [str(t0 + 2 * NS), "web-1 GET /healthz 200"],
                    [str(t0 + 3 * NS), "web-1 GET /cart 500"],
                ],
            },
        ]
    )
    assert resp.status_code == 204, resp.text
    assert resp.content == b""


# ---------------------------------------------------------------- push / query_range


def test_push_then_query_backward_is_the_default(loki: Loki, t0: int) -> None:
    push_sample(loki, t0)
    resp = loki.query_range('{app="api"}', limit=4)
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert body["status"] == "success"
    assert "summary" in body["data"]["stats"]
    got = values(resp)
    # The 4 newest entries across both streams, each stream newest first.
    assert got == {
        "api-2": [
            (t0 + 9 * NS + 500_000_000, "api-2 line 9 ERROR oom"),
            (t0 + 8 * NS + 500_000_000, "api-2 line 8 ok"),
        ],
        "api-1": [(t0 + 9 * NS, "api-1 line 9 ERROR db timeout"), (t0 + 8 * NS, "api-1 line 8 ok")],
    }
    for stream in body["data"]["result"]:
        assert all(isinstance(ts, str) for ts, _ in stream["values"])


def test_forward_direction_returns_the_oldest_first(loki: Loki, t0: int) -> None:
    push_sample(loki, t0)
    got = values(loki.query_range('{app="api"}', limit=3, direction="forward"))
    assert got == {
        "api-1": [(t0, "api-1 line 0 ERROR db timeout"), (t0 + NS, "api-1 line 1 ok")],
        "api-2": [(t0 + NS // 2, "api-2 line 0 ok")],
    }


def test_default_limit_is_100(loki: Loki, t0: int) -> None:
    loki.store.push({"pod": "busy"}, [(t0 + i, f"l{i}") for i in range(250)])
    assert len(values(loki.query_range('{pod="busy"}'))["busy"]) == 100


@pytest.mark.parametrize(
    ("selector", "pods"),
    [
        ('{app="api"}', {"api-1", "api-2"}),
        ('{namespace="shop", app!="api"}', {"web-1"}),
        ('{pod=~"api-.*"}', {"api-1", "api-2"}),
        ('{pod=~"api"}', set()),  # fully anchored
        ('{namespace="shop", pod!~"api-[0-9]"}', {"web-1"}),
        ('{namespace="shop", team=""}', {"api-1", "api-2", "web-1"}),  # absent label == ""
    ],
)
def test_selector_operators(loki: Loki, t0: int, selector: str, pods: set[str]) -> None:
    push_sample(loki, t0)
    assert set(values(loki.query_range(selector, limit=1000))) == pods


def test_chained_line_filters(loki: Loki, t0: int) -> None:
    push_sample(loki, t0)
    got = values(
        loki.query_range(
            '{namespace="shop"} |= "ERROR" != "oom" |~ "line [0-5] "', direction="forward"
        )
    )
    assert got == {
        "api-1": [
            (t0, "api-1 line 0 ERROR db timeout"),
            (t0 + 3 * NS, "api-1 line 3 ERROR db timeout"),
        ]
    }
    got = values(loki.query_range('{namespace="shop"} !~ "(?i)error|healthz"', limit=1000))
    assert set(got) == {"api-1", "api-2", "web-1"}
    assert all("ERROR" not in line and "healthz" not in line for v in got.values() for _, line in v)


@pytest.mark.parametrize("fmt", ["ns", "float", "rfc3339"])
def test_time_window_formats_start_inclusive_end_exclusive(loki: Loki, t0: int, fmt: str) -> None:
    push_sample(loki, t0)
    start, end = t0 + 2 * NS, t0 + 5 * NS

    def render(ns: int) -> str:
        if fmt == "ns":
            return str(ns)
        if fmt == "float":
            return f"{ns / NS:.3f}"
        return datetime.fromtimestamp(ns // NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    got = values(
        loki.query_range('{pod="api-1"}', start=render(start), end=render(end), direction="forward")
    )
    assert [ts for ts, _ in got["api-1"]] == [t0 + 2 * NS, t0 + 3 * NS, t0 + 4 * NS]


def test_since_and_default_window_of_one_hour(loki: Loki) -> None:
    now = time.time_ns()
    loki.store.push(
        {"pod": "p"},
        [
            (now - 2 * 3600 * NS, "two hours ago"),
            (now - 1800 * NS, "half an hour ago"),
            (now - 10 * NS, "ten seconds ago"),
        ],
    )
    assert [line for _, line in values(loki.query_range('{pod="p"}'))["p"]] == [
        "ten seconds ago",
        "half an hour ago",
    ]
    assert [line for _, line in values(loki.query_range('{pod="p"}', since="1m"))["p"]] == [
        "ten seconds ago"
    ]
    assert len(values(loki.query_range('{pod="p"}', since="3h"))["p"]) == 3


def test_post_form_query_range(loki: Loki, t0: int) -> None:
    push_sample(loki, t0)
    resp = requests.post(
        loki.url + "/loki/api/v1/query_range",
        data={"query": '{pod="web-1"}', "limit": "1"},
        timeout=10,
    )
    assert values(resp) == {"web-1": [(t0 + 3 * NS, "web-1 GET /cart 500")]}


def test_gzip_push(loki: Loki, t0: int) -> None:
    body = json.dumps({"streams": [{"stream": {"pod": "gz"}, "values": [[str(t0), "compressed"]]}]})
    resp = requests.post(
        loki.url + "/loki/api/v1/push",
        data=gzip.compress(body.encode()),
        timeout=10,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.status_code == 204, resp.text
    assert values(loki.query_range('{pod="gz"}')) == {"gz": [(t0, "compressed")]}


def test_structured_metadata_is_accepted(loki: Loki, t0: int) -> None:
    resp = loki.push(
        [{"stream": {"pod": "sm"}, "values": [[str(t0), "with meta", {"trace_id": "abc"}]]}]
    )
    assert resp.status_code == 204, resp.text
    assert values(loki.query_range('{pod="sm"}')) == {"sm": [(t0, "with meta")]}


# ---------------------------------------------------------------- metadata endpoints


def test_labels_values_and_series(loki: Loki, t0: int) -> None:
    push_sample(loki, t0)
    labels = loki.get("/loki/api/v1/labels")
    assert labels.json() == {"status": "success", "data": ["app", "namespace", "pod"]}
    vals = loki.get("/loki/api/v1/label/pod/values", query='{app="api"}')
    assert vals.json() == {"status": "success", "data": ["api-1", "api-2"]}
    series = loki.get("/loki/api/v1/series", **{"match[]": '{app="web"}'})
    assert series.json() == {
        "status": "success",
        "data": [{"app": "web", "namespace": "shop", "pod": "web-1"}],
    }
    old = loki.get("/loki/api/v1/labels", start=str(t0 - 7200 * NS), end=str(t0 - 3600 * NS))
    assert old.json() == {"status": "success"}  # Loki omits an empty data list


def test_series_requires_match(loki: Loki) -> None:
    resp = loki.get("/loki/api/v1/series")
    assert resp.status_code == 400
    assert resp.text == "0 matcher groups supplied"


def test_ready(loki: Loki) -> None:
    resp = loki.get("/ready")
    assert resp.status_code == 200
    assert resp.text == "ready\n"
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"


# ---------------------------------------------------------------- metric queries


def test_count_over_time_and_sum_by(loki: Loki, t0: int) -> None:
    push_sample(loki, t0)
    end = t0 + 20 * NS
    resp = loki.query_range(
        'sum by (app) (count_over_time({namespace="shop"} |= "ERROR" [1m]))',
        start=str(end - 10 * NS),
        end=str(end),
        step="10s",
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert data["resultType"] == "matrix"
    assert [(s["metric"], s["values"]) for s in data["result"]] == [
        ({"app": "api"}, [[(end - 10 * NS) // NS, "5"], [end // NS, "5"]])
    ]


def test_instant_rate_and_log_query_refusal(loki: Loki, t0: int) -> None:
    push_sample(loki, t0)
    at = t0 + 30 * NS
    resp = loki.get("/loki/api/v1/query", query='sum(rate({app="api"}[1m]))', time=str(at))
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"]["result"] == [{"metric": {}, "value": [at // NS, str(20 / 60)]}]
    refused = loki.get("/loki/api/v1/query", query='{app="api"}')
    assert refused.status_code == 400
    assert refused.text == (
        "log queries are not supported as an instant query type, "
        "please change your query to a range query type"
    )


# ---------------------------------------------------------------- errors


def assert_plain_400(resp: requests.Response, text: str) -> None:
    assert resp.status_code == 400
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert resp.text == text


def test_bad_logql(loki: Loki) -> None:
    assert_plain_400(
        loki.query_range('{app="api"'),
        "parse error at line 1, col 11: syntax error: unexpected $end, expecting } or ,",
    )
    assert_plain_400(
        loki.query_range('{app=~".*"}'),
        "parse error : queries require at least one regexp or equality matcher that does "
        'not have an empty-compatible value. For instance, app=~".*" does not meet this '
        'requirement, but app=~".+" will',
    )


def test_unsupported_pipeline_stage_is_a_clear_400(loki: Loki) -> None:
    resp = loki.query_range('{app="api"} | json')
    assert resp.status_code == 400
    assert "not supported" in resp.text


@pytest.mark.parametrize(
    ("params", "text"),
    [
        (
            {"start": "yesterday"},
            "could not parse 'start' parameter: "
            'strconv.ParseInt: parsing "yesterday": invalid syntax',
        ),
        (
            {"end": "1.2.3"},
            "could not parse 'end' parameter: "
            'strconv.ParseFloat: parsing "1.2.3": invalid syntax',
        ),
        (
            {"since": "an hour"},
            "could not parse 'since' parameter: not a valid duration string: \"an hour\"",
        ),
        (
            {"start": "1700000100", "end": "1700000000"},
            "end timestamp must not be before or equal to start time",
        ),
        ({"limit": "-1"}, "limit must be a positive value"),
        ({"limit": "many"}, 'strconv.Atoi: parsing "many": invalid syntax'),
        (
            {"limit": "5001"},
            "max entries limit per query exceeded, "
            "limit > max_entries_limit_per_query (5001 > 5000)",
        ),
        ({"direction": "sideways"}, "invalid direction 'sideways'"),
    ],
)
def test_bad_parameters(loki: Loki, params: dict[str, str], text: str) -> None:
    assert_plain_400(loki.query_range('{app="api"}', **params), text)


@pytest.mark.parametrize(
    ("streams", "text"),
    [
        (
            [{"stream": {"app": "a"}, "values": [[1700000000000000000, "ts is a number"]]}],
            "Value is not a string",
        ),
        (
            [{"stream": {}, "values": [["1", "x"]]}],
            "error at least one label pair is required per stream",
        ),
        (
            [{"stream": {"app": "a"}, "values": [["soon", "x"]]}],
            "Value looks like Number/Boolean/None, but can't find its end: ',' or '}' symbol",
        ),
    ],
)
def test_push_validation(loki: Loki, streams: list[dict[str, object]], text: str) -> None:
    assert_plain_400(loki.push(streams), text)


def test_push_rejects_entries_outside_the_accepted_age(loki: Loki) -> None:
    resp = loki.push([{"stream": {"app": "a"}, "values": [[str(NS), "1970"]]}])
    assert resp.status_code == 400
    assert resp.text.startswith(
        "entry for stream '{app=\"a\"}' has timestamp too old: 1970-01-01T00:00:01Z"
    )


def test_push_refuses_protobuf_and_unknown_encodings(loki: Loki) -> None:
    proto = requests.post(
        loki.url + "/loki/api/v1/push",
        data=b"\x00\x01",
        timeout=10,
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert proto.status_code == 400
    brotli = requests.post(
        loki.url + "/loki/api/v1/push",
        data=b"{}",
        timeout=10,
        headers={"Content-Type": "application/json", "Content-Encoding": "zz"},
    )
    assert_plain_400(brotli, 'Content-Encoding "zz" not supported')


# ---------------------------------------------------------------- volume


@pytest.mark.timeout(30)
def test_big_push_is_fast_and_bounded(t0: int) -> None:
    store = LogStore(max_entries_per_stream=5_000)
    url, stop = serve_in_thread(make_app(store), "loki")
    try:
        lines = [[str(t0 + i * 1000), f"crash loop line {i} " + "x" * 80] for i in range(10_000)]
        started = time.perf_counter()
        resp = requests.post(
            url + "/loki/api/v1/push",
            json={"streams": [{"stream": {"pod": "storm"}, "values": lines}]},
            timeout=30,
        )
        elapsed = time.perf_counter() - started
        assert resp.status_code == 204, resp.text
        assert elapsed < 2.0, f"10,000-line push took {elapsed:.2f}s"
        assert store.entry_count == 5_000  # oldest half dropped
        got = requests.get(
            url + "/loki/api/v1/query_range",
            timeout=10,
            params={"query": '{pod="storm"}', "limit": 5000, "direction": "forward"},
        )
        entries = got.json()["data"]["result"][0]["values"]
        assert len(entries) == 5_000
        assert entries[0] == [str(t0 + 5_000 * 1000), "crash loop line 5000 " + "x" * 80]
    finally:
        stop()
