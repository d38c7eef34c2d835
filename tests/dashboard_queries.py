"""The Grafana dashboard in deploy/ and the metric names its panels' PromQL reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = (
    Path(__file__).resolve().parents[1] / "deploy" / "monitoring" / "grafana-dashboard"
    / "aifixer.json"
)  # fmt: skip

# A metric name in PromQL: an identifier not followed by "(" (a function), not a label
# name inside {...} or by (...), not a keyword. The farm's all start with aifixer_.
_METRIC = re.compile(r"\b(aifixer_[a-z0-9_]+)\b(?!\s*\()")
# Grafana's variables, as promtool would see a query after Grafana expanded them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "1m"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows' panels included."""
    out = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            out += [(inner["title"], t["expr"]) for t in inner.get("targets", [])]
    return out


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def expanded(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr
