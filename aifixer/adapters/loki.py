"""Grafana Loki, read over its HTTP API with `requests`.

Detection polls error lines since a cursor; diagnosis reads a workload's recent lines;
verification counts the error lines a fixed workload still prints. Each is a
`query_range` call; a page that comes back full is followed by the next one (forward
in time), so a 10,000-line storm is read completely, up to a bound that keeps one poll
finite.

Streams are expected to carry the labels Kubernetes log shippers (Promtail, Alloy,
the k8s-monitoring chart) attach: `namespace`, `pod`, `container`.

Errors are decided here once: connection failures, timeouts, 5xx and 429 are
`TransientError` (429 with its Retry-After); anything else Loki refuses — a 400 for a
LogQL it cannot parse, with Loki's own text — is `PermanentError`.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

import requests

from aifixer.models import LogLine, Signal
from aifixer.settings import Settings

from .errors import PermanentError, bounded, get_json

log = logging.getLogger(__name__)

SYSTEM = "loki"
NS = 1_000_000_000
PAGE_SIZE = 5_000  # Loki's default max_entries_limit_per_query
MAX_LINES = 50_000  # one poll reads at most this many lines; the rest waits for the next
MAX_MESSAGE = 1_000  # a Signal's message is one log line, cut to this many characters
NAMESPACE_LABEL, POD_LABEL, CONTAINER_LABEL = "namespace", "pod", "container"

Entry = tuple[dict[str, str], int, str]  # (stream labels, timestamp in ns, line)


class Loki:
    """A Loki (or Loki-compatible) query endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.loki_url.rstrip("/")
        self.timeout = settings.request_timeout_s
        self.http = requests.Session()
        if settings.loki_org_id:
            self.http.headers["X-Scope-OrgID"] = settings.loki_org_id
        if settings.loki_username and settings.loki_password is not None:
            self.http.auth = (settings.loki_username, settings.loki_password.get_secret_value())
        self.selector, self.error_filter = split_query(settings.loki_query)

    def close(self) -> None:
        self.http.close()

    # -- reads -----------------------------------------------------------------------

    def query_range(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        limit: int = MAX_LINES,
        direction: str = "forward",
    ) -> list[Entry]:
        """Log lines matching a LogQL log query, start <= ts < end.

        Args:
            query: a LogQL log (stream) query.
            start_ns, end_ns: the time range, nanoseconds since the epoch.
            limit: the most entries to return in total.
            direction: "forward" (oldest first; pages are followed until `limit`) or
                "backward" (newest first; one page, the newest `limit` up to PAGE_SIZE).

        Returns:
            [(labels, ts_ns, line)] in the requested time order.

        Raises:
            TransientError: Loki unreachable, timed out, 5xx or 429.
            PermanentError: the query or parameters were refused (400...).
        """
        if direction not in ("forward", "backward"):
            raise ValueError(f"direction must be forward or backward, not {direction!r}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        if direction == "backward":
            return self._page(query, start_ns, end_ns, min(limit, PAGE_SIZE), "backward")
        out: list[Entry] = []
        cursor = start_ns
        # Entries already returned at the page boundary's timestamp: the next page starts
        # at that same nanosecond (more lines may share it), so they are skipped once.
        boundary: set[tuple[tuple[tuple[str, str], ...], str]] = set()
        while len(out) < limit and cursor < end_ns:
            size = min(PAGE_SIZE, limit - len(out) + len(boundary))
            page = self._page(query, cursor, end_ns, size, "forward")
            fresh = [e for e in page if e[1] != cursor or _key(e) not in boundary]
            out.extend(fresh[: limit - len(out)])
            if len(page) < size:
                break
            last_ts = page[-1][1]
            if last_ts == cursor and not fresh:
                cursor += 1  # a whole page at one instant: nothing else to read there
                boundary = set()
                continue
            boundary = {_key(e) for e in page if e[1] == last_ts} | (
                boundary if last_ts == cursor else set()
            )
            cursor = last_ts
        if len(out) >= limit:
            log.warning("loki: query stopped at %d lines: %s", limit, bounded(query, 200))
        return out

    def error_signals(self, since_ns: int, until_ns: int) -> tuple[list[Signal], int]:
        """Error lines (settings.loki_query) since the cursor, one Signal each.

        Args:
            since_ns: the cursor: the first nanosecond not read yet.
            until_ns: the end of the window (exclusive), normally now.

        Returns:
            (signals, new cursor): the cursor is the last timestamp seen + 1, or
            `since_ns` unchanged when nothing was found, so no line is reported twice
            and a line that arrives late but stamped after the cursor is still read.

        Raises:
            TransientError, PermanentError: as `query_range`.
        """
        entries = self.query_range(self.settings.loki_query, since_ns, until_ns)
        watched = set(self.settings.namespaces)
        signals = [
            Signal(
                source="loki",
                namespace=labels[NAMESPACE_LABEL],
                pod=labels.get(POD_LABEL),
                reason="LogError",
                message=bounded(line, MAX_MESSAGE),
                observed_at=_time(ts),
                raw={"labels": labels, "ts": str(ts)},
            )
            for labels, ts, line in entries
            if labels.get(NAMESPACE_LABEL) and (not watched or labels[NAMESPACE_LABEL] in watched)
        ]
        cursor = max((ts for _, ts, _ in entries), default=since_ns - 1) + 1
        return signals, cursor

    def workload_lines(
        self, namespace: str, pods: list[str], since_ns: int, limit: int = 200
    ) -> list[LogLine]:
        """The newest `limit` lines of these pods since `since_ns`, newest last.

        Raises:
            TransientError, PermanentError: as `query_range`.
        """
        if not pods:
            return []
        query = pods_selector(namespace, pods)
        entries = self.query_range(query, since_ns, _now_ns(), limit, "backward")
        return [
            LogLine(
                time=_time(ts).isoformat().replace("+00:00", "Z"),
                pod=labels.get(POD_LABEL, ""),
                container=labels.get(CONTAINER_LABEL, ""),
                line=bounded(line, MAX_MESSAGE),
            )
            for labels, ts, line in reversed(entries)
        ]

    def error_count(
        self, namespace: str, pods: list[str], since_ns: int, error_filter: str | None = None
    ) -> int:
        """How many error lines these pods printed since `since_ns` (for verification).

        Args:
            error_filter: LogQL line filters, e.g. `|~ "(?i)error"`; default: the
                filters of settings.loki_query.

        Raises:
            TransientError, PermanentError: as `query_range`.
        """
        if not pods:
            return 0
        query = f"{pods_selector(namespace, pods)} {error_filter or self.error_filter}".strip()
        return len(self.query_range(query, since_ns, _now_ns()))

    def ready(self) -> bool:
        """Whether Loki answers its readiness endpoint (never raises)."""
        try:
            return self.http.get(f"{self.base}/ready", timeout=self.timeout).status_code == 200
        except requests.RequestException:
            return False

    # -- HTTP --------------------------------------------------------------------------

    def _page(self, query: str, start_ns: int, end_ns: int, limit: int, direction: str):
        params = {
            "query": query,
            "start": str(start_ns),
            "end": str(end_ns),
            "limit": str(limit),
            "direction": direction,
        }
        body = self._get("/loki/api/v1/query_range", params)
        # Loki omits `data` (or `result`) when there is nothing to say.
        data = body.get("data") or {}
        if data.get("resultType", "streams") != "streams":
            raise PermanentError(SYSTEM, f"not a log query (got {data['resultType']}): {query}")
        entries = [
            (stream.get("stream") or {}, int(value[0]), value[1])
            for stream in data.get("result") or []
            for value in stream.get("values") or []
        ]
        entries.sort(key=lambda e: e[1], reverse=direction == "backward")
        return entries

    def _get(self, path: str, params: dict[str, str]) -> dict:
        return get_json(self.http, SYSTEM, self.base + path, params, self.timeout)


def pods_selector(namespace: str, pods: list[str]) -> str:
    """`{namespace="ns", pod=~"a|b"}` with every name escaped for RE2 and the string."""
    alternatives = "|".join(re.escape(p) for p in pods)
    return f"{{{NAMESPACE_LABEL}={_quote(namespace)}, {POD_LABEL}=~{_quote(alternatives)}}}"


def split_query(query: str) -> tuple[str, str]:
    """A LogQL log query's stream selector and the pipeline after it.

    Raises:
        ValueError: when the query does not start with a `{...}` selector.
    """
    text = query.strip()
    if not text.startswith("{"):
        raise ValueError(f"a log query starts with a stream selector {{...}}: {query!r}")
    quote = None
    escaped = False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in '"`':
            quote = ch
        elif ch == "}":
            return text[: i + 1], text[i + 1 :].strip()
    raise ValueError(f"unterminated stream selector: {query!r}")


def _quote(value: str) -> str:
    """A LogQL double-quoted string (Go escaping)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(entry: Entry) -> tuple[tuple[tuple[str, str], ...], str]:
    return tuple(sorted(entry[0].items())), entry[2]


def _time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / NS, tz=UTC)


def _now_ns() -> int:
    return int(datetime.now(tz=UTC).timestamp() * NS)
