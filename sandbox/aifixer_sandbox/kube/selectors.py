"""Label and field selectors, parsed as the API server parses them.

A selector is compiled once into a predicate over an object. Unknown field labels are
refused with the real server's 400 message rather than silently matching everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request

Predicate = Callable[[dict[str, Any]], bool]

_LABEL_REQ = re.compile(
    r"""\s*(?:
        (?P<notexists>!)\s*(?P<nkey>[^\s,=!()]+) |
        (?P<key>[^\s,=!()]+)\s*(?:
            (?P<op>==|=|!=)\s*(?P<value>[^\s,=!()]*) |
            \s(?P<setop>in|notin)\s*\((?P<values>[^)]*)\) |
        )
    )\s*(?:,|$)""",
    re.VERBOSE,
)


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def parse_label_selector(text: str | None) -> Predicate | None:
    """Parse `a=b,c!=d,e in (x,y),!f,g` into a predicate; None when empty."""
    if not text or not text.strip():
        return None
    reqs: list[Predicate] = []
    pos = 0
    while pos < len(text):
        m = _LABEL_REQ.match(text, pos)
        if not m or m.end() == pos:
            raise bad_request(
                f"unable to parse requirement: found '{text[pos:]}', expected: valid selector"
            )
        pos = m.end()
        if m.group("notexists"):
            k = m.group("nkey")
            reqs.append(lambda o, k=k: k not in _labels(o))
        elif m.group("op"):
            k, v, op = m.group("key"), m.group("value"), m.group("op")
            if op == "!=":
                reqs.append(lambda o, k=k, v=v: _labels(o).get(k) != v)
            else:
                reqs.append(lambda o, k=k, v=v: _labels(o).get(k) == v)
        elif m.group("setop"):
            k = m.group("key")
            values = frozenset(x.strip() for x in m.group("values").split(",") if x.strip())
            if m.group("setop") == "in":
                reqs.append(lambda o, k=k, vs=values: _labels(o).get(k) in vs)
            else:
                reqs.append(lambda o, k=k, vs=values: _labels(o).get(k) not in vs)
        else:
            k = m.group("key")
            reqs.append(lambda o, k=k: k in _labels(o))
    return lambda o: all(r(o) for r in reqs)


def match_label_selector(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Match a metav1.LabelSelector (matchLabels + matchExpressions) against labels.

    An empty selector matches everything, as for a Deployment's selector semantics; a
    None selector matches nothing (a ReplicaSet without selector owns no pods).
    """
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        k, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(k) not in values:
            return False
        if op == "NotIn" and k in labels and labels[k] in values:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def selector_to_string(selector: dict[str, Any]) -> str:
    """metav1.FormatLabelSelector for matchLabels-only selectors (kubectl's form)."""
    return ",".join(f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items()))


# Field labels each kind supports, as the real server registers them.
_COMMON_FIELDS = ("metadata.name", "metadata.namespace")
FIELD_LABELS: dict[str, tuple[str, ...]] = {
    "Pod": _COMMON_FIELDS
    + (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "Event": _COMMON_FIELDS
    + (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    "Secret": _COMMON_FIELDS + ("type",),
    "Namespace": ("metadata.name", "status.phase"),
    "Node": ("metadata.name", "spec.unschedulable"),
    "ReplicaSet": _COMMON_FIELDS + ("status.replicas",),
}


def _field_value(obj: dict[str, Any], path: str) -> str:
    if path == "source":  # core/v1 Event: source.component
        return str(((obj.get("source") or {}).get("component")) or "")
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text: str | None, kind: str, api_version: str) -> Predicate | None:
    if not text or not text.strip():
        return None
    supported = FIELD_LABELS.get(kind, _COMMON_FIELDS)
    reqs: list[Predicate] = []
    for term in text.split(","):
        term = term.strip()
        if not term:
            continue
        m = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        field, op, value = m.group(1), m.group(2), m.group(3)
        if field not in supported:
            raise bad_request(
                f"field label not supported: {field}"
                if kind
                else f"field label not supported: {field}"
            )
        if op == "!=":
            reqs.append(lambda o, f=field, v=value: _field_value(o, f) != v)
        else:
            reqs.append(lambda o, f=field, v=value: _field_value(o, f) == v)
    return (lambda o: all(r(o) for r in reqs)) if reqs else None
