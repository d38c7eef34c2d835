"""Forecast scaling, one pass: every opted-in Deployment gets a decision, recorded.

For each Deployment of the watched namespaces that carries the policy annotations
(`forecast.POLICY_ANNOTATIONS`): stand aside if an HPA scales it, else read its CPU
history from Prometheus (`scaling_history_s`, every `scaling_step_s`), decide, and in
`apply` mode set the replicas — only if they are still what was read (a person's or a
controller's change in between wins). Every decision, changes or not, is recorded in
Redis (`RECORD_KEEP` per Deployment) with what it was made from.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, replace
from typing import Any

from ..adapters.errors import AdapterError, Conflict
from ..guardrails import namespace_refusal
from ..settings import Settings
from .forecast import Decision, Policy, PolicyError, decide, make_forecaster

log = logging.getLogger("aifixer.scaling")

RECORD_KEEP = 1_000


def _key(namespace: str, name: str) -> str:
    return f"aifixer:scaling:{namespace}/{name}"


def record(redis: Any, d: Decision) -> None:
    pipe = redis.pipeline()
    pipe.rpush(_key(d.namespace, d.name), json.dumps(asdict(d)))
    pipe.ltrim(_key(d.namespace, d.name), -RECORD_KEEP, -1)
    pipe.execute()


def decisions(redis: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in redis.lrange(_key(namespace, name), 0, -1)]


def all_decisions(redis: Any, last: int = 20) -> dict[str, list[dict[str, Any]]]:
    """The last `last` decisions of every Deployment, by "namespace/name"."""
    prefix = _key("", "")[:-1]
    out = {}
    for raw in sorted(redis.scan_iter(match=prefix + "*", count=1000)):
        key = raw.decode() if isinstance(raw, bytes) else raw
        out[key[len(prefix) :]] = [json.loads(x) for x in redis.lrange(key, -last, -1)]
    return out


def recent(redis: Any, namespace: str, name: str, since: float) -> list[tuple[float, int]]:
    """(time, recommended replicas) of the decisions since `since`."""
    out = []
    for raw in redis.lrange(_key(namespace, name), -200, -1):
        d = json.loads(raw)
        if d["at"] >= since and d.get("recommended") is not None:
            out.append((d["at"], d["recommended"]))
    return out


def usable_history(values: list[float], max_gap: int) -> list[float]:
    """A regular series for a forecaster: the samples after the last gap of more than
    `max_gap` missing (NaN) samples, shorter gaps filled by a straight line between
    their neighbours (a missed scrape, a Prometheus restart). Missing samples at the
    end are dropped when there are at most `max_gap` of them; more, and the history is
    stale: nothing is returned.
    """
    end = len(values)
    while end > 0 and not math.isfinite(values[end - 1]):
        end -= 1
    if len(values) - end > max_gap:
        return []
    start, missing = end, 0
    while start > 0:
        if math.isfinite(values[start - 1]):
            missing = 0
        else:
            missing += 1
            if missing > max_gap:
                start += missing - 1
                break
        start -= 1
    while start < end and not math.isfinite(values[start]):
        start += 1
    out = list(values[start:end])
    known = [i for i, v in enumerate(out) if math.isfinite(v)]
    for a, b in zip(known, known[1:], strict=False):
        for i in range(a + 1, b):
            out[i] = out[a] + (out[b] - out[a]) * (i - a) / (b - a)
    return out


def trailing_finite(values: list[float]) -> list[float]:
    """The samples after the last gap, however short."""
    return usable_history(values, 0)


def scale_once(kube: Any, prom: Any, redis: Any, settings: Settings, now: float | None = None):
    """One decision per opted-in Deployment; returns them."""
    now = time.time() if now is None else now
    forecaster = make_forecaster(settings.scaling_forecaster, settings.scaling_season_s)
    namespaces: list[str | None] = [*settings.namespaces] or [None]  # None: every namespace
    made = []
    for ns in namespaces:
        for dep in kube.deployments(ns):
            meta = dep.get("metadata") or {}
            namespace, name = meta.get("namespace", ""), meta.get("name", "")
            try:
                policy = Policy.from_annotations(meta.get("annotations"))
            except PolicyError as exc:
                log.warning("[%s/%s] forecast scaling: %s", namespace, name, exc)
                continue
            if policy is None or namespace_refusal(namespace, settings):
                continue
            policy = replace(
                policy,
                min_replicas=min(policy.min_replicas, settings.max_replicas),
                max_replicas=min(policy.max_replicas, settings.max_replicas),
            )
            try:
                made.append(_one(kube, prom, redis, settings, forecaster, policy, dep, now))
            except (AdapterError, ValueError) as exc:  # this one waits; the others go on
                replicas = int((dep.get("spec") or {}).get("replicas", 1))
                d = Decision(namespace, name, now, policy.mode, replicas, replicas, forecaster.name,
                             reason=f"replicas left at {replicas}: {exc}")  # fmt: skip
                record(redis, d)
                log.warning("[%s/%s] forecast scaling: %s", namespace, name, exc)
                made.append(d)
    return made


def _one(kube, prom, redis, settings, forecaster, policy: Policy, dep, now: float) -> Decision:
    namespace, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
    replicas = int((dep.get("spec") or {}).get("replicas", 1))
    hpa = kube.autoscaler_of(namespace, name)
    if hpa is not None:
        d = Decision(namespace, name, now, policy.mode, replicas, replicas, forecaster.name,
                     reason=f"replicas left at {replicas}: the HPA {hpa} scales this Deployment")  # fmt: skip
    else:
        step = settings.scaling_step_s
        history = prom.deployment_cpu(namespace, name, now - settings.scaling_history_s, now, step,
                                      window=settings.scaling_rate_window)  # fmt: skip
        values = usable_history(history, math.floor(settings.scaling_max_gap_s / step))
        d = decide(namespace, name, policy, values, step, replicas,
                   recent(redis, namespace, name, now - policy.scale_in_window_s), forecaster, now)  # fmt: skip
        if d.changes and policy.mode == "apply":
            try:
                kube.set_replicas(namespace, name, d.replicas_after, expected=replicas)
            except Conflict as exc:
                d.reason += f"; not applied: {exc.message}"
                d.replicas_after = replicas
        elif d.changes:
            d.reason += " (preview: not applied)"
    record(redis, d)
    log.info("[%s/%s] %s -> %s: %s", namespace, name, d.replicas_before, d.replicas_after, d.reason)
    return d
