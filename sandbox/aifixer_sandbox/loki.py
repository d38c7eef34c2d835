"""Grafana Loki stand-in: an in-memory log store behind Loki's HTTP API.

The simulated cluster ships container logs by calling `LogStore.push` directly (no HTTP
round trip on the hot path); product code reads them back through the real Loki HTTP
API served by `make_app`, so it cannot tell this server from a single-binary Loki with
`auth_enabled: false`. Request parsing, defaults, response shapes and error texts follow
Loki v3 (`pkg/loghttp`, `pkg/loghttp/push`, `pkg/util/server/error.go`): errors are plain
text with Loki's wording and status, JSON answers carry the `stats` object clients
decode.

Memory is bounded: each stream keeps at most `max_entries_per_stream` entries (oldest
dropped), and the number of streams is capped like Loki's per-tenant stream limit, so a
crash-looping pod cannot exhaust the sandbox.
"""

from __future__ import annotations

import calendar
import json
import math
import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from aifixer_sandbox import faults, logql
from aifixer_sandbox.logql import LogQuery, Matcher, MetricQuery, RangeAggregation

NS = 1_000_000_000
DEFAULT_MAX_ENTRIES_PER_STREAM = 10_000
DEFAULT_MAX_STREAMS = 5_000  # Loki's default max_global_streams_per_user
DEFAULT_QUERY_LIMIT = 100
MAX_ENTRIES_LIMIT_PER_QUERY = 5_000
DEFAULT_SINCE_NS = 3600 * NS
MAX_LINE_SIZE = 256 * 1024
MAX_POINTS_PER_SERIES = 11_000
TENANT = "fake"  # the tenant Loki uses when auth is disabled

_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)
_JSON_CONTENT_TYPE = "application/json; charset=UTF-8"

Labels = dict[str, str]
StreamResult = list[tuple[Labels, list[tuple[int, str]]]]
SeriesResult = list[tuple[Labels, list[float | None]]]
Form = MultiDictProxy[str] | MultiDict[str]


class PushError(ValueError):
    """A push Loki's distributor would refuse with 400."""


class StreamLimitError(Exception):
    """Too many streams: Loki answers 429 and the client is expected to back off."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            "Maximum active stream limit exceeded, reduce the number of active streams "
            "(reduce labels or reduce label values), or contact your Loki administrator "
            f"to see if the limit can be increased, user: '{TENANT}' (limit: {limit})"
        )


# ---------------------------------------------------------------- store


def label_string(labels: Labels) -> str:
    """Loki's canonical stream string: `{a="1", b="2"}`, names sorted."""
    return "{" + ", ".join(f"{k}={json.dumps(labels[k])}" for k in sorted(labels)) + "}"


class _Stream:
    """One label set's entries, kept sorted by timestamp in two parallel lists."""

    __slots__ = ("labels", "ts", "lines")

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.ts: list[int] = []
        self.lines: list[str] = []

    def add(self, ts: int, line: str) -> None:
        tss = self.ts
        if not tss or ts > tss[-1]:
            tss.append(ts)
            self.lines.append(line)
            return
        # Out of order (or same instant): Loki accepts it, and silently drops an
        # exact duplicate of an entry it already has.
        i = bisect_right(tss, ts)
        j = i - 1
        while j >= 0 and tss[j] == ts:
            if self.lines[j] == line:
                return
            j -= 1
        tss.insert(i, ts)
        self.lines.insert(i, line)

    def trim(self, max_entries: int) -> None:
        excess = len(self.ts) - max_entries
        if excess > 0:
            del self.ts[:excess]
            del self.lines[:excess]

    def window(self, start_ns: int, end_ns: int) -> tuple[int, int]:
        """Index range of entries with start <= ts < end."""
        return bisect_left(self.ts, start_ns), bisect_left(self.ts, end_ns)

    def overlaps(self, start_ns: int, end_ns: int) -> bool:
        lo, hi = self.window(start_ns, end_ns + 1)
        return hi > lo


@dataclass
class ScanStats:
    """What a query touched, reported back in Loki's `stats` object."""

    lines: int = 0
    bytes: int = 0
    post_filter_lines: int = 0
    streams: int = 0
    returned: int = 0


class LogStore:
    """In-memory log streams keyed by their label set."""

    def __init__(
        self,
        max_entries_per_stream: int = DEFAULT_MAX_ENTRIES_PER_STREAM,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        if max_entries_per_stream < 1 or max_streams < 1:
            raise ValueError("max_entries_per_stream and max_streams must be >= 1")
        self.max_entries_per_stream = max_entries_per_stream
        self.max_streams = max_streams
        self._streams: dict[tuple[tuple[str, str], ...], _Stream] = {}

    def push(self, labels: Labels, entries: Iterable[tuple[int, str]]) -> None:
        """Append entries (ns timestamp, line) to the stream for `labels`.

        Labels with empty values are dropped, as Loki does. Raises PushError for an
        invalid label set and StreamLimitError when a new stream would exceed the cap.
        """
        key = tuple(sorted((k, v) for k, v in labels.items() if v != ""))
        stream = self._streams.get(key)
        if stream is None:
            stream = self._new_stream(key)
        add = stream.add
        for ts, line in entries:
            add(ts, line)
        stream.trim(self.max_entries_per_stream)

    def _new_stream(self, key: tuple[tuple[str, str], ...]) -> _Stream:
        labels = dict(key)
        validate_labels(labels)
        if len(self._streams) >= self.max_streams:
            raise StreamLimitError(self.max_streams)
        stream = self._streams[key] = _Stream(labels)
        return stream

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def entry_count(self) -> int:
        return sum(len(s.ts) for s in self._streams.values())

    def _matching(self, matchers: Iterable[Matcher]) -> list[_Stream]:
        ms = tuple(matchers)
        return [
            s
            for s in self._streams.values()
            if all(m.matches(s.labels.get(m.name, "")) for m in ms)
        ]

    def select(
        self, query: LogQuery, start_ns: int, end_ns: int, limit: int, backward: bool = True
    ) -> tuple[StreamResult, ScanStats]:
        """Entries with start <= ts < end passing the filters, at most `limit` in total.

        Returns [(labels, [(ts, line), ...])], each stream's entries newest first when
        `backward`, streams ordered by their first returned entry.
        """
        stats = ScanStats()
        keep = query.line_predicate()
        picked: list[tuple[int, int, int, str]] = []
        streams = self._matching(query.matchers)
        for sidx, stream in enumerate(streams):
            lo, hi = stream.window(start_ns, end_ns)
            indices = range(hi - 1, lo - 1, -1) if backward else range(lo, hi)
            taken = 0
            for i in indices:
                line = stream.lines[i]
                stats.lines += 1
                stats.bytes += len(line)
                if keep is None or keep(line):
                    picked.append((stream.ts[i], sidx, i, line))
                    taken += 1
                    if taken >= limit:
                        break
            stats.streams += hi > lo
        picked.sort(key=lambda p: (p[0], p[1], p[2]), reverse=backward)
        del picked[limit:]
        stats.post_filter_lines = stats.returned = len(picked)
        grouped: dict[int, list[tuple[int, str]]] = {}
        for ts, sidx, _, line in picked:
            grouped.setdefault(sidx, []).append((ts, line))
        return [(streams[sidx].labels, values) for sidx, values in grouped.items()], stats

    def range_samples(
        self, agg: RangeAggregation, steps: list[int]
    ) -> tuple[SeriesResult, ScanStats]:
        """Evaluate a range aggregation at each step over the window (t - range, t]."""
        stats = ScanStats()
        keep = agg.query.line_predicate()
        rng = agg.range_ns
        per_bytes = agg.op in ("bytes_over_time", "bytes_rate")
        per_second = agg.op in ("rate", "bytes_rate")
        series = []
        for stream in self._matching(agg.query.matchers):
            lo = bisect_right(stream.ts, steps[0] - rng)
            hi = bisect_right(stream.ts, steps[-1])
            kept_ts: list[int] = []
            cumulative = [0]  # running weight (1 per line, or its bytes)
            for i in range(lo, hi):
                line = stream.lines[i]
                stats.lines += 1
                stats.bytes += len(line)
                if keep is None or keep(line):
                    kept_ts.append(stream.ts[i])
                    cumulative.append(cumulative[-1] + (len(line.encode()) if per_bytes else 1))
            stats.post_filter_lines += len(kept_ts)
            if not kept_ts:
                continue
            stats.streams += 1
            values: list[float | None] = []
            for t in steps:
                a, b = bisect_right(kept_ts, t - rng), bisect_right(kept_ts, t)
                if a == b:
                    values.append(None)
                    continue
                weight = cumulative[b] - cumulative[a]
                values.append(weight / (rng / NS) if per_second else float(weight))
            series.append((stream.labels, values))
        return series, stats

    def label_names(
        self, start_ns: int, end_ns: int, matchers: Iterable[Matcher] = ()
    ) -> list[str]:
        return sorted({name for s in self._active(start_ns, end_ns, matchers) for name in s.labels})

    def label_values(
        self, name: str, start_ns: int, end_ns: int, matchers: Iterable[Matcher] = ()
    ) -> list[str]:
        active = self._active(start_ns, end_ns, matchers)
        return sorted({s.labels[name] for s in active if name in s.labels})

    def series(self, groups: list[tuple[Matcher, ...]], start_ns: int, end_ns: int) -> list[Labels]:
        found: dict[int, dict[str, str]] = {}
        for group in groups:
            for stream in self._active(start_ns, end_ns, group):
                found[id(stream)] = stream.labels
        return sorted(found.values(), key=label_string)

    def _active(self, start_ns: int, end_ns: int, matchers: Iterable[Matcher]) -> list[_Stream]:
        return [s for s in self._matching(matchers) if s.overlaps(start_ns, end_ns)]


def validate_labels(labels: Labels) -> None:
    if not labels:
        raise PushError("error at least one label pair is required per stream")
    for name in labels:
        if not _LABEL_NAME_RE.fullmatch(name):
            raise PushError(
                f"error parsing labels {label_string(labels)} with error: "
                f"invalid label name {json.dumps(name)}"
            )


# ---------------------------------------------------------------- metric evaluation


def evaluate_metric(
    store: LogStore, expr: MetricQuery, steps: list[int]
) -> tuple[SeriesResult, ScanStats]:
    """Values of `expr` at each step (None where a series has no sample)."""
    if isinstance(expr, RangeAggregation):
        return store.range_samples(expr, steps)
    inner, stats = evaluate_metric(store, expr.inner, steps)
    groups: dict[tuple[tuple[str, str], ...], list[list[float | None]]] = {}
    for labels, values in inner:
        if expr.without is not None:
            key = tuple(sorted((k, v) for k, v in labels.items() if k not in expr.without))
        else:
            key = tuple(sorted((k, labels[k]) for k in expr.by if k in labels))
        groups.setdefault(key, []).append(values)
    reduce = _REDUCERS[expr.op]
    out = []
    for key, members in groups.items():
        values = []
        for column in zip(*members, strict=True):
            present = [v for v in column if v is not None]
            values.append(reduce(present) if present else None)
        out.append((dict(key), values))
    return out, stats


_REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "sum": lambda vs: float(sum(vs)),
    "count": lambda vs: float(len(vs)),
    "min": min,
    "max": max,
    "avg": lambda vs: sum(vs) / len(vs),
}


# ---------------------------------------------------------------- request parameters


class BadRequest(ValueError):
    """A request Loki answers with 400 and this text."""


def parse_timestamp(value: str, default_ns: int) -> int:
    """Loki's `parseTimestamp`: RFC3339Nano, float seconds, or integer s/ns."""
    if value == "":
        return default_ns
    m = _RFC3339_RE.fullmatch(value)
    if m:
        return _rfc3339_ns(m)
    if "." in value:
        if not _FLOAT_RE.fullmatch(value):
            raise BadRequest(f'strconv.ParseFloat: parsing "{value}": invalid syntax')
        number = Decimal(value)
        seconds = int(number)
        if seconds > 1e10:  # too big for seconds: nanoseconds, fraction discarded
            return seconds
        fraction = round(float(number - seconds), 3)
        return seconds * NS + int(fraction * NS)
    if not _INT_RE.fullmatch(value):
        raise BadRequest(f'strconv.ParseInt: parsing "{value}": invalid syntax')
    number = int(value)
    if not -(2**63) <= number < 2**63:
        raise BadRequest(f'strconv.ParseInt: parsing "{value}": value out of range')
    return number * NS if number <= 1e10 else number


def _rfc3339_ns(m: re.Match[str]) -> int:
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    seconds = calendar.timegm((year, month, day, hour, minute, second))
    fraction = int((m.group(7) or "").ljust(9, "0"))
    zone = m.group(8)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * NS + fraction


def parse_bounds(form: Form, now_ns: int) -> tuple[int, int]:
    """Loki's `determineBounds`: end defaults to now, start to min(end, now) - since."""
    since_ns = DEFAULT_SINCE_NS
    since = form.get("since", "")
    if since:
        parsed = logql.parse_duration_ns(since)
        if parsed is None:
            raise BadRequest(
                f"could not parse 'since' parameter: not a valid duration string: \"{since}\""
            )
        since_ns = parsed
    end = _wrap("end", lambda: parse_timestamp(form.get("end", ""), now_ns))
    default_start = min(end, now_ns) - since_ns
    start = _wrap("start", lambda: parse_timestamp(form.get("start", ""), default_start))
    return start, end


def _wrap(name: str, parse: Callable[[], int]) -> int:
    try:
        return parse()
    except BadRequest as exc:
        raise BadRequest(f"could not parse '{name}' parameter: {exc}") from None


def parse_limit(form: Form) -> int:
    value = form.get("limit", "")
    if value == "":
        return DEFAULT_QUERY_LIMIT
    if not _INT_RE.fullmatch(value):
        raise BadRequest(f'strconv.Atoi: parsing "{value}": invalid syntax')
    limit = int(value)
    if limit <= 0:
        raise BadRequest("limit must be a positive value")
    if limit > MAX_ENTRIES_LIMIT_PER_QUERY:
        raise BadRequest(
            "max entries limit per query exceeded, limit > "
            f"max_entries_limit_per_query ({limit} > {MAX_ENTRIES_LIMIT_PER_QUERY})"
        )
    return limit


def parse_backward(form: Form) -> bool:
    value = form.get("direction", "")
    if value == "":
        return True
    if value.upper() not in ("FORWARD", "BACKWARD"):
        raise BadRequest(f"invalid direction '{value}'")
    return value.upper() == "BACKWARD"


def parse_step_ns(form: Form, start_ns: int, end_ns: int) -> int:
    value = form.get("step", "")
    if value == "":
        return max(math.floor((end_ns - start_ns) / NS / 250), 1) * NS
    if _FLOAT_RE.fullmatch(value):
        return int(float(value) * NS)
    parsed = logql.parse_duration_ns(value)
    if parsed is None:
        raise BadRequest(f'cannot parse "{value}" to a valid duration')
    return parsed


# ---------------------------------------------------------------- responses


def _text_error(status: int, message: str) -> web.Response:
    # Loki's server.WriteError: plain text, no trailing newline, nosniff.
    return web.Response(
        status=status,
        text=message,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def _json(payload: object) -> web.Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return web.Response(body=body, headers={"Content-Type": _JSON_CONTENT_TYPE})


def _go_float(value: float) -> str:
    """Go's strconv.FormatFloat(v, 'f', -1, 64), as Prometheus renders sample values."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    if "e" in text:
        text = format(Decimal(text), "f")
    return text[:-2] if text.endswith(".0") else text


def _seconds(ns: int) -> int | float:
    """Prometheus model.Time in JSON: seconds with millisecond precision."""
    ms = ns // 1_000_000
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def _stats(scan: ScanStats, exec_seconds: float) -> dict[str, object]:
    per_second = (lambda n: int(n / exec_seconds)) if exec_seconds > 0 else (lambda n: 0)
    chunk = {
        "headChunkBytes": scan.bytes,
        "headChunkLines": scan.lines,
        "decompressedBytes": 0,
        "decompressedLines": 0,
        "compressedBytes": 0,
        "totalDuplicates": 0,
        "postFilterLines": scan.post_filter_lines,
        "headChunkStructuredMetadataBytes": 0,
        "decompressedStructuredMetadataBytes": 0,
    }
    empty_store = {
        "totalChunksRef": 0,
        "totalChunksDownloaded": 0,
        "chunksDownloadTime": 0,
        "queryReferencedStructuredMetadata": False,
        "chunk": {k: 0 for k in chunk},
        "chunkRefsFetchTime": 0,
        "congestionControlLatency": 0,
        "pipelineWrapperFilteredLines": 0,
    }
    cache = {
        "entriesFound": 0,
        "entriesRequested": 0,
        "entriesStored": 0,
        "bytesReceived": 0,
        "bytesSent": 0,
        "requests": 0,
        "downloadTime": 0,
        "queryLengthServed": 0,
    }
    return {
        "summary": {
            "bytesProcessedPerSecond": per_second(scan.bytes),
            "linesProcessedPerSecond": per_second(scan.lines),
            "totalBytesProcessed": scan.bytes,
            "totalLinesProcessed": scan.lines,
            "execTime": exec_seconds,
            "queueTime": 0,
            "subqueries": 0,
            "totalEntriesReturned": scan.returned,
            "splits": 0,
            "shards": 0,
            "totalPostFilterLines": scan.post_filter_lines,
            "totalStructuredMetadataBytesProcessed": 0,
        },
        "querier": {"store": empty_store},
        "ingester": {
            "totalReached": 1,
            "totalChunksMatched": scan.streams,
            "totalBatches": 1 if scan.lines else 0,
            "totalLinesSent": scan.returned,
            "store": {**empty_store, "chunk": chunk},
        },
        "cache": {
            name: dict(cache)
            for name in (
                "chunk",
                "index",
                "result",
                "statsResult",
                "volumeResult",
                "seriesResult",
                "labelResult",
                "instantMetricResult",
            )
        },
    }


def _envelope(
    result_type: str, result: list[object], scan: ScanStats, started: float
) -> web.Response:
    stats = _stats(scan, time.perf_counter() - started)
    return _json(
        {"status": "success", "data": {"resultType": result_type, "result": result, "stats": stats}}
    )


# ---------------------------------------------------------------- push decoding


def decode_push(body: bytes) -> list[tuple[dict[str, str], list[tuple[int, str]]]]:
    """Decode a JSON push body with the checks Loki's decoder and distributor make."""
    try:
        payload = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise PushError(f"loghttp.PushRequest: invalid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PushError("loghttp.PushRequest: expect { or n")
    streams = payload.get("streams") or []
    if not isinstance(streams, list):
        raise PushError("loghttp.PushRequest.Streams: expect [ or n")
    return [_decode_stream(s) for s in streams if s is not None]


def _decode_stream(raw: object) -> tuple[dict[str, str], list[tuple[int, str]]]:
    if not isinstance(raw, dict):
        raise PushError("Value is not an object")
    labels = raw.get("stream") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise PushError("Value is not a string")
    labels = {k: v for k, v in labels.items() if v != ""}
    validate_labels(labels)
    entries = []
    for value in raw.get("values") or []:
        if value is None:
            continue
        if not isinstance(value, list) or len(value) < 2:
            raise PushError("Value is not an array of [timestamp, line]")
        ts, line = value[0], value[1]
        if not isinstance(ts, str) or not isinstance(line, str):
            raise PushError("Value is not a string")
        if len(value) > 2 and not isinstance(value[2], dict):
            raise PushError("Value is not an object")
        if not _INT_RE.fullmatch(ts):
            raise PushError(
                "Value looks like Number/Boolean/None, but can't find its end: ',' or '}' symbol"
            )
        entries.append((int(ts), line))
    return labels, entries


def _check_entry(labels: Labels, ts: int, line: str, now_ns: int) -> str | None:
    """The distributor's per-entry validation; returns Loki's error text or None."""
    size = len(line.encode())
    if size > MAX_LINE_SIZE:
        return (
            f"Max entry size '{MAX_LINE_SIZE}' bytes exceeded for stream "
            f"'{label_string(labels)}' while adding an entry with length '{size}' bytes"
        )
    if ts > now_ns + 10 * 60 * NS:  # creation_grace_period
        return f"entry for stream '{label_string(labels)}' has timestamp too new: {_rfc3339(ts)}"
    oldest = now_ns - 7 * 86400 * NS  # reject_old_samples_max_age
    if ts < oldest:
        return (
            f"entry for stream '{label_string(labels)}' has timestamp too old: {_rfc3339(ts)}, "
            f"oldest acceptable timestamp is: {_rfc3339(oldest)}"
        )
    return None


def _rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // NS))


# ---------------------------------------------------------------- HTTP application


async def _form(request: web.Request) -> MultiDict[str]:
    """Go's r.Form: urlencoded POST body values first, then the query string."""
    merged: MultiDict[str] = MultiDict()
    if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
        for k, v in (await request.post()).items():
            if isinstance(v, str):
                merged.add(k, v)
    merged.extend(request.query)
    return merged


def make_app(store: LogStore, tenant: str | None = None) -> web.Application:
    """Loki's HTTP API over `store`: single tenant with auth disabled, or with `tenant`,
    multi-tenant as `auth_enabled: true` makes it — every API request must name its
    tenant in X-Scope-OrgID (401 "no org id" otherwise), and only `tenant` holds lines
    (another tenant reads nothing, and its pushes are dropped)."""
    middlewares = [_loki_errors] if tenant is None else [_loki_errors, _tenancy(tenant)]
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024 * 1024)
    app[TENANT_KEY] = tenant
    faults.install(app, "loki", _fault_error)
    handlers = _Handlers(store)
    app.router.add_post("/loki/api/v1/push", handlers.push)
    for path, handler in (
        ("/loki/api/v1/query_range", handlers.query_range),
        ("/loki/api/v1/query", handlers.query),
        ("/loki/api/v1/labels", handlers.labels),
        ("/loki/api/v1/label", handlers.labels),
        ("/loki/api/v1/label/{name}/values", handlers.label_values),
        ("/loki/api/v1/series", handlers.series),
        ("/loki/api/v1/index/stats", handlers.index_stats),
    ):
        app.router.add_get(path, handler)
        app.router.add_post(path, handler)
    app.router.add_get("/ready", handlers.ready)
    app.router.add_get("/loki/api/v1/status/buildinfo", handlers.buildinfo)
    return app


TENANT_KEY = web.AppKey("tenant", object)
ORG_HEADER = "X-Scope-OrgID"


def _tenancy(tenant: str) -> Callable:
    @web.middleware
    async def tenancy(request: web.Request, handler: Callable) -> web.StreamResponse:
        if not request.path.startswith("/loki/api/") or request.path.endswith("/buildinfo"):
            return await handler(request)
        org = request.headers.get(ORG_HEADER, "")
        if not org:
            return _text_error(401, "no org id")
        if org != tenant:
            if request.path.endswith("/push"):
                return web.Response(status=204)
            return web.json_response(_EMPTY_STREAMS)
        return await handler(request)

    return tenancy


_EMPTY_STREAMS = {
    "status": "success",
    "data": {"resultType": "streams", "result": [], "stats": {}},
}


def _fault_error(request: web.Request, fault: faults.Fault) -> web.Response:
    """An injected status fault as Loki writes errors: plain text (see `faults`)."""
    status = fault.status or 500
    message = "too many outstanding requests" if status == 429 else fault.phrase().lower()
    return _text_error(status, message)


@web.middleware
async def _loki_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        return await handler(request)
    except (BadRequest, logql.ParseError, PushError) as exc:
        return _text_error(400, str(exc))
    except logql.UnsupportedQuery as exc:
        return _text_error(400, f"{exc} by this Loki stand-in")
    except StreamLimitError as exc:
        return _text_error(429, str(exc))
    except web.HTTPNotFound:
        return _text_error(404, "404 page not found\n")


class _Handlers:
    def __init__(self, store: LogStore) -> None:
        self.store = store

    async def push(self, request: web.Request) -> web.Response:
        _check_encoding(request.headers.get("Content-Encoding", ""))
        body = await request.read()
        content_type = request.headers.get("Content-Type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if not media_type:
            raise PushError("mime: no media type")
        if media_type != "application/json":
            raise PushError(
                f"unsupported push Content-Type {media_type!r}: this Loki stand-in "
                "accepts only application/json (it does not decode snappy protobuf)"
            )
        now_ns = time.time_ns()
        first_error = None
        for labels, entries in decode_push(body):
            valid = []
            for ts, line in entries:
                problem = _check_entry(labels, ts, line, now_ns)
                if problem is None:
                    valid.append((ts, line))
                else:
                    first_error = first_error or problem
            self.store.push(labels, valid)
        if first_error:
            raise PushError(first_error)
        return web.Response(status=204)

    async def query_range(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        form = await _form(request)
        start, end = parse_bounds(form, time.time_ns())
        if end < start:
            raise BadRequest("end timestamp must not be before or equal to start time")
        limit = parse_limit(form)
        backward = parse_backward(form)
        step = parse_step_ns(form, start, end)
        if step <= 0:
            raise BadRequest(
                "zero or negative query resolution step widths are not accepted. "
                "Try a positive integer"
            )
        if (end - start) // step > MAX_POINTS_PER_SERIES:
            raise BadRequest(
                "exceeded maximum resolution of 11,000 points per time series. "
                "Try increasing the value of the step parameter"
            )
        expr = logql.parse(form.get("query", ""))
        if isinstance(expr, LogQuery):
            streams, scan = self.store.select(expr, start, end, limit, backward)
            result = [
                {"stream": labels, "values": [[str(ts), line] for ts, line in values]}
                for labels, values in streams
            ]
            return _envelope("streams", result, scan, started)
        steps = list(range(start, end + 1, step))
        if logql.is_constant(expr):
            # A constant is the same at every step: one series with no labels.
            value, _ = logql.evaluate_constant(expr)
            points = [[_seconds(t), _go_float(value)] for t in steps]
            return _envelope("matrix", [{"metric": {}, "values": points}], ScanStats(), started)
        series, scan = evaluate_metric(self.store, expr, steps)
        matrix = [
            {
                "metric": labels,
                "values": [
                    [_seconds(t), _go_float(v)]
                    for t, v in zip(steps, values, strict=True)
                    if v is not None
                ],
            }
            for labels, values in sorted(series, key=lambda s: label_string(s[0]))
        ]
        scan.returned = sum(len(m["values"]) for m in matrix)
        return _envelope("matrix", [m for m in matrix if m["values"]], scan, started)

    async def query(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        form = await _form(request)
        parse_limit(form)
        at = _wrap("time", lambda: parse_timestamp(form.get("time", ""), time.time_ns()))
        parse_backward(form)
        expr = logql.parse(form.get("query", ""))
        if isinstance(expr, LogQuery):
            raise BadRequest(
                "log queries are not supported as an instant query type, "
                "please change your query to a range query type"
            )
        if logql.is_constant(expr):
            # `vector(1)+vector(1)` is a one-sample vector without labels; `1+1` a scalar.
            value, is_vector = logql.evaluate_constant(expr)
            sample = [_seconds(at), _go_float(value)]
            if is_vector:
                return _envelope("vector", [{"metric": {}, "value": sample}], ScanStats(), started)
            return _envelope("scalar", sample, ScanStats(), started)
        series, scan = evaluate_metric(self.store, expr, [at])
        vector = [
            {"metric": labels, "value": [_seconds(at), _go_float(values[0])]}
            for labels, values in sorted(series, key=lambda s: label_string(s[0]))
            if values[0] is not None
        ]
        scan.returned = len(vector)
        return _envelope("vector", vector, scan, started)

    async def labels(self, request: web.Request) -> web.Response:
        start, end, matchers = await self._metadata_params(request)
        return _label_response(self.store.label_names(start, end, matchers))

    async def label_values(self, request: web.Request) -> web.Response:
        start, end, matchers = await self._metadata_params(request)
        name = request.match_info["name"]
        return _label_response(self.store.label_values(name, start, end, matchers))

    async def series(self, request: web.Request) -> web.Response:
        form = await _form(request)
        start, end = parse_bounds(form, time.time_ns())
        selectors = form.getall("match[]", []) or form.getall("match", [])
        if not selectors:
            raise BadRequest("0 matcher groups supplied")
        groups = [logql.parse_matchers(s) for s in selectors]
        return _json({"status": "success", "data": self.store.series(groups, start, end)})

    async def index_stats(self, request: web.Request) -> web.Response:
        form = await _form(request)
        start, end = parse_bounds(form, time.time_ns())
        matchers = logql.parse_matchers(form.get("query", ""))
        streams, scan = self.store.select(LogQuery(matchers), start, end, 2**62, backward=False)
        return _json(
            {
                "streams": len(streams),
                "chunks": len(streams),
                "entries": scan.lines,
                "bytes": scan.bytes,
            }
        )

    async def ready(self, request: web.Request) -> web.Response:
        # Loki writes this with http.Error, hence the newline and nosniff header.
        return web.Response(
            text="ready\n",
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def buildinfo(self, request: web.Request) -> web.Response:
        return _json(
            {
                "version": "3.4.2",
                "revision": "sandbox",
                "branch": "HEAD",
                "buildUser": "",
                "buildDate": "",
                "goVersion": "go1.23.7",
            }
        )

    async def _metadata_params(self, request: web.Request) -> tuple[int, int, tuple[Matcher, ...]]:
        form = await _form(request)
        start, end = parse_bounds(form, time.time_ns())
        query = form.get("query", "")
        return start, end, logql.parse_matchers(query) if query else ()


def _label_response(values: list[str]) -> web.Response:
    # Loki's LabelResponse has `data,omitempty`: an empty answer carries no data key.
    return _json({"status": "success", "data": values} if values else {"status": "success"})


def _check_encoding(encoding: str) -> None:
    """aiohttp has already inflated gzip/deflate bodies; refuse what Loki refuses."""
    if encoding.lower() not in ("", "snappy", "gzip", "deflate"):
        raise PushError(f'Content-Encoding "{encoding}" not supported')
