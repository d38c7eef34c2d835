"""LogQL parsing and matching, and the store's selection logic, without sockets."""

from __future__ import annotations

import pytest

from aifixer_sandbox import logql
from aifixer_sandbox.logql import LogQuery, ParseError, RangeAggregation, UnsupportedQuery
from aifixer_sandbox.loki import LogStore, PushError, StreamLimitError, parse_timestamp

NS = 1_000_000_000


def parse_error(query: str) -> str:
    with pytest.raises(ParseError) as info:
        logql.parse(query)
    return str(info.value)


# Expected texts are Loki's own parser test cases (pkg/logql/syntax/parser_test.go).
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ('{foo="bar}', "parse error at line 1, col 6: literal not terminated"),
        (
            '{foo="bar"',
            "parse error at line 1, col 11: syntax error: unexpected $end, expecting } or ,",
        ),
        (
            '{foo="bar"} |~',
            "parse error at line 1, col 15: syntax error: unexpected $end, expecting STRING or ip",
        ),
        ('{foo="bar"} "foo"', "parse error at line 1, col 13: syntax error: unexpected STRING"),
        ('{foo="bar"} foo', "parse error at line 1, col 13: syntax error: unexpected IDENTIFIER"),
        ("{foo=", "parse error at line 1, col 6: syntax error: unexpected $end, expecting STRING"),
    ],
)
def test_syntax_errors_match_loki(query: str, message: str) -> None:
    assert parse_error(query) == message


def test_error_position_counts_lines() -> None:
    assert parse_error('{app="a"}\n  |= ').startswith("parse error at line 2, col 6: ")


@pytest.mark.parametrize(
    "query", ["{}", '{app=~".*"}', '{app!="x"}', '{app=""}', '{a!~"b", c=~"d*"}']
)
def test_selector_without_a_non_empty_matcher_is_refused(query: str) -> None:
    assert parse_error(query) == "parse error : " + logql.EMPTY_COMPATIBLE_ERROR


def test_bad_label_regex_is_a_parse_error() -> None:
    assert parse_error('{app=~"("}').startswith("parse error : error parsing regexp: ")


def test_input_size_limit() -> None:
    assert "input size too long" in parse_error('{app="' + "x" * 6000 + '"}')


def test_log_query_structure() -> None:
    q = logql.parse(
        '{app="api", ns!="kube-system", pod=~"api-.*", c!~"side.*"} '
        '|= "error" != "debug" |~ `(?i)timeout` !~ "retry [0-9]+"'
    )
    assert isinstance(q, LogQuery)
    assert [(m.name, m.op, m.value) for m in q.matchers] == [
        ("app", "=", "api"),
        ("ns", "!=", "kube-system"),
        ("pod", "=~", "api-.*"),
        ("c", "!~", "side.*"),
    ]
    assert [f.op for f in q.filters] == ["|=", "!=", "|~", "!~"]


def test_string_escapes_and_raw_strings() -> None:
    q = logql.parse('{app="a\\"b\\\\c\\n"} |~ `\\d+`')
    assert isinstance(q, LogQuery)
    assert q.matchers[0].value == 'a"b\\c\n'
    assert q.filters[0].values == ("\\d+",)


def test_label_regex_is_fully_anchored() -> None:
    q = logql.parse('{pod=~"api"}')
    assert isinstance(q, LogQuery)
    assert q.matches_labels({"pod": "api"})
    assert not q.matches_labels({"pod": "api-7d9f"})
    assert not q.matches_labels({"pod": "my-api"})
    assert logql.parse('{pod=~"api.*"}').matches_labels({"pod": "api-7d9f"})  # type: ignore[union-attr]


def test_missing_label_matches_as_empty_string() -> None:
    q = logql.parse('{app="a", team!="x", zone=~"|eu"}')
    assert isinstance(q, LogQuery)
    assert q.matches_labels({"app": "a"})
    assert not q.matches_labels({"app": "a", "team": "x"})
    assert not q.matches_labels({"app": "a", "zone": "us"})


def test_line_filters_chain_with_and_and_or_within_one_filter() -> None:
    q = logql.parse('{app="a"} |= "error" or "fatal" != "probe" |~ "code=5[0-9]{2}"')
    assert isinstance(q, LogQuery)
    keep = q.line_predicate()
    assert keep is not None
    assert keep("fatal: code=503")
    assert keep("error code=500 upstream")
    assert not keep("error code=404")
    assert not keep("error probe code=500")
    assert not keep("warning code=500")


def test_negative_regex_line_filter_is_unanchored() -> None:
    q = logql.parse('{app="a"} !~ "heal?th"')
    assert isinstance(q, LogQuery)
    keep = q.line_predicate()
    assert keep is not None
    assert not keep("GET /healthz 200")
    assert keep("GET /orders 200")


def test_metric_queries() -> None:
    q = logql.parse('sum by (app, pod) (count_over_time({ns="x"} |= "OOMKilled" [5m]))')
    assert isinstance(q, logql.VectorAggregation)
    assert q.op == "sum" and q.by == ("app", "pod") and q.without is None
    assert isinstance(q.inner, RangeAggregation)
    assert q.inner.op == "count_over_time" and q.inner.range_ns == 300 * NS

    q2 = logql.parse('sum(rate({ns="x"}[1m])) without (pod)')
    assert isinstance(q2, logql.VectorAggregation)
    assert q2.without == ("pod",)
    assert logql.selector_of(q2).matchers[0].value == "x"


@pytest.mark.parametrize(
    "query",
    [
        '{app="a"} | json',
        '{app="a"} | logfmt | level="error"',
        'topk(3, count_over_time({app="a"}[1m]))',
        'count_over_time({app="a"}[1m]) > 5',
        'quantile_over_time(0.9, {app="a"} | unwrap x [1m])',
    ],
)
def test_supported_by_loki_but_not_here_is_reported_as_such(query: str) -> None:
    with pytest.raises(UnsupportedQuery):
        logql.parse(query)


def test_metric_query_needs_a_range() -> None:
    assert parse_error('count_over_time({app="a"})') == (
        "parse error at line 1, col 26: syntax error: unexpected )"
    )


@pytest.mark.parametrize(
    ("text", "ns"),
    [("5m", 300 * NS), ("1h30m", 5400 * NS), ("250ms", 250_000_000), ("0", 0), ("1d", 86400 * NS)],
)
def test_durations(text: str, ns: int) -> None:
    assert logql.parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "5", "m5", "1m1h", "1.5m"])
def test_invalid_durations(text: str) -> None:
    assert logql.parse_duration_ns(text) is None


# ---------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        ("1700000000", 1_700_000_000 * NS),  # <= 1e10: seconds
        ("1700000000123456789", 1_700_000_000_123_456_789),  # otherwise nanoseconds
        ("1700000000.25", 1_700_000_000_250_000_000),  # float seconds, ms precision
        ("2023-11-14T22:13:20Z", 1_700_000_000 * NS),
        ("2023-11-14T22:13:20.5+01:00", (1_700_000_000 - 3600) * NS + 500_000_000),
    ],
)
def test_timestamp_formats(value: str, ns: int) -> None:
    assert parse_timestamp(value, 0) == ns


def test_empty_timestamp_takes_the_default() -> None:
    assert parse_timestamp("", 42) == 42


# ---------------------------------------------------------------- store


def test_store_sorts_out_of_order_entries_and_drops_exact_duplicates() -> None:
    store = LogStore()
    store.push({"app": "a"}, [(3, "c"), (1, "a"), (2, "b"), (2, "b"), (2, "b2")])
    streams, _ = store.select(logql.parse('{app="a"}'), 0, 10, 100, backward=False)  # type: ignore[arg-type]
    assert [line for _, line in streams[0][1]] == ["a", "b", "b2", "c"]


def test_store_bounds_entries_per_stream_dropping_oldest() -> None:
    store = LogStore(max_entries_per_stream=50)
    for i in range(0, 1000, 10):
        store.push({"app": "a"}, [(i + j, f"line {i + j}") for j in range(10)])
    assert store.entry_count == 50
    streams, _ = store.select(logql.parse('{app="a"}'), 0, 10_000, 5000, backward=False)  # type: ignore[arg-type]
    assert [ts for ts, _ in streams[0][1]] == list(range(950, 1000))


def test_store_caps_the_number_of_streams() -> None:
    store = LogStore(max_streams=2)
    store.push({"pod": "a"}, [(1, "x")])
    store.push({"pod": "b"}, [(1, "x")])
    store.push({"pod": "a"}, [(2, "y")])  # existing stream: fine
    with pytest.raises(StreamLimitError):
        store.push({"pod": "c"}, [(1, "x")])


def test_store_drops_empty_label_values_and_refuses_bad_label_sets() -> None:
    store = LogStore()
    store.push({"app": "a", "team": ""}, [(1, "x")])
    assert store.label_names(0, 10) == ["app"]
    with pytest.raises(PushError, match="at least one label pair"):
        store.push({"team": ""}, [(1, "x")])
    with pytest.raises(PushError, match="error parsing labels"):
        store.push({"bad-name": "v"}, [(1, "x")])


def test_select_limit_spans_streams_and_window_is_half_open() -> None:
    store = LogStore()
    store.push({"pod": "a"}, [(t, f"a{t}") for t in (10, 30, 50)])
    store.push({"pod": "b"}, [(t, f"b{t}") for t in (20, 40, 60)])
    query = logql.parse('{pod=~"a|b"}')
    streams, stats = store.select(query, 10, 60, 3, backward=True)  # type: ignore[arg-type]
    got = {labels["pod"]: [ts for ts, _ in values] for labels, values in streams}
    assert got == {"b": [40], "a": [50, 30]}
    assert stats.returned == 3
    streams, _ = store.select(query, 10, 60, 3, backward=False)  # type: ignore[arg-type]
    got = {labels["pod"]: [ts for ts, _ in values] for labels, values in streams}
    assert got == {"a": [10, 30], "b": [20]}
