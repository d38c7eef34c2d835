"""The farm's own metrics: counted in Redis by whichever process acts, rendered by `aifixer web`.

The farm's processes (prefork workers, beat, web) run on several machines: Compose
replicas, Kubernetes pods. prometheus_client's multiprocess mode shares one directory
between the processes of one host, so the web could only ever export what its own host
did. Here every update is one pipelined round trip to the Redis the farm already
shares (`HINCRBYFLOAT` on a hash per metric), and `aifixer web`'s `/metrics` reads
those hashes at scrape time and renders them with prometheus_client. Counters keep
counting across worker restarts, and one scrape target sees the whole farm. Every web
replica renders the same farm-wide totals: aggregate them with `max without (instance,
pod)`, never `sum`.

Queue depth is read at scrape time too: the length of the broker's list for each
Celery queue (and its priority lists), and the open incidents from the store.

Label values are bounded: each label has a closed set of values, anything else is
counted as "other". No incident id, workload, pod or number is ever a label, and no
free text: a metric carries no secret.

Recording never fails the caller: a Redis error is logged and the count is lost.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, get_args

import redis as redis_lib
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .models import FailureClass, Outcome
from .store import PREFIX

log = logging.getLogger("aifixer.metrics")

KEY = PREFIX + "metrics:"
OTHER = "other"

# Celery's queues (celeryconfig.task_queues) and kombu's Redis priority lists: a message
# with priority p > 0 waits in "<queue>\x06\x16<p>" (priority_steps 0, 3, 6, 9).
QUEUES = ("polls", "model", "cluster", "notify", "memory", "scaling")
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)

STAGES = (
    "diagnose", "recall", "patch", "apply", "verify", "rollback", "open_pr", "call_oncall",
    "finalize",
)  # fmt: skip
TASKS = (
    *STAGES, "explain", "call_next", "conclude", "remember", "watchdog", "poll_loki", "poll_events",
    "ingest_signals", "label_cpu_level", "forecast_scaling",
)  # fmt: skip
OUTCOMES = get_args(Outcome)
FAILURE_CLASSES = get_args(FailureClass)
ANSWERS = ("yes", "no", "none")
PR_RESULTS = ("opened", "existing", "draft", "failed")
LEVEL_RESULTS = ("set", "removed", "unchanged", "gone", "refused", "failed")
SCALING_MODES = ("preview", "apply")
BOOL = ("true", "false")
TOKEN_KINDS = ("prompt", "completion")
# The stages that ask the model: patch's choice before the apply; explain (the
# diagnosis) and speech beside verify; call_oncall only when nothing was applied.
MODEL_STAGES = ("diagnose", "patch", "explain", "speech", "call_oncall")


@dataclass(frozen=True)
class Spec:
    name: str  # without the _total suffix for counters, as prometheus_client wants it
    kind: str  # counter | histogram
    help: str
    labels: tuple[tuple[str, tuple[str, ...]], ...]  # (label, allowed values)
    buckets: tuple[float, ...] = ()


def _spec(name, kind, text, buckets=(), /, **labels: tuple[str, ...]) -> Spec:
    return Spec(name, kind, text, tuple(labels.items()), tuple(buckets))


TIME_TO_OUTCOME_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
MODEL_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

INCIDENTS_OPENED = _spec(
    "aifixer_incidents_opened", "counter", "Incidents opened, by failure class.",
    failure_class=FAILURE_CLASSES,
)  # fmt: skip
INCIDENTS_ENDED = _spec(
    "aifixer_incidents_ended", "counter",
    "Incidents closed, by outcome and failure class.",
    outcome=OUTCOMES, failure_class=FAILURE_CLASSES,
)  # fmt: skip
TIME_TO_OUTCOME = _spec(
    "aifixer_incident_duration_seconds", "histogram",
    "Seconds from an incident's opening to its outcome, by outcome.",
    TIME_TO_OUTCOME_BUCKETS, outcome=OUTCOMES,
)  # fmt: skip
STAGE_SECONDS = _spec(
    "aifixer_stage_duration_seconds", "histogram",
    "Seconds a pipeline stage took when it succeeded (verify: from the apply to the verdict).",
    STAGE_BUCKETS, stage=STAGES,
)  # fmt: skip
MODEL_SECONDS = _spec(
    "aifixer_model_request_duration_seconds", "histogram",
    "Seconds waiting for the model's answers in one stage of one incident, by stage.",
    MODEL_BUCKETS, stage=MODEL_STAGES,
)  # fmt: skip
MODEL_REQUESTS = _spec(
    "aifixer_model_requests", "counter", "Answers received from the model, by stage.",
    stage=MODEL_STAGES,
)  # fmt: skip
MODEL_TOKENS = _spec(
    "aifixer_model_tokens", "counter",
    "Tokens the model endpoint counted, by stage and kind (prompt, completion).",
    stage=MODEL_STAGES, kind=TOKEN_KINDS,
)  # fmt: skip
RETRIES = _spec(
    "aifixer_task_retries", "counter",
    "Retries scheduled after a transient error (the outage the farm rode out), by task.",
    task=TASKS,
)  # fmt: skip
CALLS = _spec(
    "aifixer_calls", "counter",
    "Ended on-call phone calls, by answer (yes: can intervene; no; none: no answer heard).",
    answer=ANSWERS,
)  # fmt: skip
PULL_REQUESTS = _spec(
    "aifixer_pull_requests", "counter",
    "Pull requests of verified fixes: opened, found already open, opened as a draft "
    "(the change needs a hand edit), or failed for good.",
    result=PR_RESULTS,
)  # fmt: skip
LEVEL_LABELS = _spec(
    "aifixer_cpu_level_labels", "counter",
    "CPU level label tasks by result (set, removed: the label changed; unchanged, gone, "
    "refused, failed).",
    result=LEVEL_RESULTS,
)  # fmt: skip
SCALING = _spec(
    "aifixer_scaling_decisions", "counter",
    "Forecast scaling decisions, by mode and whether the replica count changes.",
    mode=SCALING_MODES, changed=BOOL,
)  # fmt: skip

SPECS = (
    INCIDENTS_OPENED, INCIDENTS_ENDED, TIME_TO_OUTCOME, STAGE_SECONDS, MODEL_SECONDS,
    MODEL_REQUESTS, MODEL_TOKENS, RETRIES, CALLS, PULL_REQUESTS, LEVEL_LABELS, SCALING,
)  # fmt: skip

QUEUE_DEPTH = "aifixer_queue_depth"
OPEN_INCIDENTS = "aifixer_incidents_open"
SCRAPE_OK = "aifixer_farm_metrics_up"


def _values(spec: Spec, labels: dict[str, str]) -> list[str]:
    if set(labels) != {name for name, _ in spec.labels}:
        raise ValueError(f"{spec.name} takes labels {[n for n, _ in spec.labels]}, got {labels}")
    return [v if (v := str(labels[n])) in allowed else OTHER for n, allowed in spec.labels]


def _field(values: list[str], part: str = "") -> str:
    return json.dumps([*values, part] if part else values, separators=(",", ":"))


def _write(redis: Any, updates: list[tuple[Spec, list[str], float | None, float]]) -> None:
    """Apply (spec, label values, observed value or None, increment) in one round trip."""
    try:
        pipe = redis.pipeline(transaction=False)
        for spec, values, observed, by in updates:
            key = KEY + spec.name
            if spec.kind == "counter":
                pipe.hincrbyfloat(key, _field(values), by)
                continue
            assert observed is not None  # noqa: S101 - a histogram update always observes
            bucket = next((floatToGoString(b) for b in spec.buckets if observed <= b), "+Inf")
            pipe.hincrbyfloat(key, _field(values, bucket), 1)
            pipe.hincrbyfloat(key, _field(values, "sum"), observed)
        pipe.execute()
    except (redis_lib.RedisError, OSError) as exc:
        log.warning("metrics not recorded (%s): %s", ", ".join(u[0].name for u in updates), exc)


def inc(redis: Any, spec: Spec, by: float = 1, **labels: str) -> None:
    _write(redis, [(spec, _values(spec, labels), None, by)])


def observe(redis: Any, spec: Spec, value: float, **labels: str) -> None:
    _write(redis, [(spec, _values(spec, labels), max(0.0, float(value)), 1)])


# -- what the farm records ------------------------------------------------------------


def incident_opened(redis: Any, failure_class: str) -> None:
    inc(redis, INCIDENTS_OPENED, failure_class=failure_class)


def incident_ended(redis: Any, outcome: str, failure_class: str, seconds: float) -> None:
    _write(
        redis,
        [
            (INCIDENTS_ENDED, _values(INCIDENTS_ENDED, {"outcome": outcome,
                                                        "failure_class": failure_class}), None, 1),
            (TIME_TO_OUTCOME, _values(TIME_TO_OUTCOME, {"outcome": outcome}),
             max(0.0, seconds), 1),
        ],
    )  # fmt: skip


def stage_done(redis: Any, stage: str, seconds: float) -> None:
    observe(redis, STAGE_SECONDS, seconds, stage=stage)


def model_used(
    redis: Any, stage: str, seconds: float, prompt: int, completion: int, requests: int
) -> None:
    values = _values(MODEL_SECONDS, {"stage": stage})
    _write(
        redis,
        [
            (MODEL_SECONDS, values, max(0.0, seconds), 1),
            (MODEL_REQUESTS, values, None, requests),
            (MODEL_TOKENS, [*values, "prompt"], None, prompt),
            (MODEL_TOKENS, [*values, "completion"], None, completion),
        ],
    )


def retried(redis: Any, task: str) -> None:
    inc(redis, RETRIES, task=task.rsplit(".", 1)[-1])


def call_ended(redis: Any, can_intervene: bool, answer_text: str | None) -> None:
    answer = "yes" if can_intervene else "no" if (answer_text or "").strip() else "none"
    inc(redis, CALLS, answer=answer)


# -- rendering, in the web process ------------------------------------------------------


def _hash(raw: dict[Any, Any]) -> Iterator[tuple[list[str], float]]:
    for field, value in raw.items():
        try:
            parts = json.loads(field)
            yield [str(p) for p in parts], float(value)
        except (ValueError, TypeError):
            continue  # not ours: skipped rather than failing the scrape


def _known(spec: Spec) -> list[tuple[str, ...]]:
    """Every combination of the allowed label values: each series exists from the start at
    0, so a first increment is a rate and not the birth of a series."""
    return list(itertools.product(*(allowed for _, allowed in spec.labels)))


def _family(spec: Spec, raw: dict[Any, Any]) -> Metric:
    names = [n for n, _ in spec.labels]
    if spec.kind == "counter":
        counts = dict.fromkeys(_known(spec), 0.0)
        for values, value in _hash(raw):
            if len(values) == len(names):
                counts[tuple(values)] = value
        counter = CounterMetricFamily(spec.name, spec.help, labels=names)
        for labels, count in sorted(counts.items()):
            counter.add_metric(list(labels), count)
        return counter
    series: dict[tuple[str, ...], dict[str, float]] = {v: {} for v in _known(spec)}
    for parts, value in _hash(raw):
        if len(parts) == len(names) + 1:
            series.setdefault(tuple(parts[:-1]), {})[parts[-1]] = value
    histogram = HistogramMetricFamily(spec.name, spec.help, labels=names)
    for labels, per_bucket in sorted(series.items()):
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for le in [*(floatToGoString(b) for b in spec.buckets), "+Inf"]:
            running += per_bucket.get(le, 0.0)
            buckets.append((le, running))
        histogram.add_metric(list(labels), buckets, per_bucket.get("sum", 0.0))
    return histogram


def queue_depths(redis: Any, queues: Iterable[str] = QUEUES) -> dict[str, int]:
    """The broker's backlog per queue: its list and its priority lists."""
    queues = list(queues)
    pipe = redis.pipeline(transaction=False)
    for q in queues:
        for p in PRIORITY_STEPS:
            pipe.llen(q if p == 0 else f"{q}{PRIORITY_SEP}{p}")
    lengths = pipe.execute()
    n = len(PRIORITY_STEPS)
    return {q: sum(lengths[i * n : (i + 1) * n]) for i, q in enumerate(queues)}


class FarmCollector:
    """A prometheus_client collector reading the farm's metrics from Redis."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        try:
            pipe = self.redis.pipeline(transaction=False)
            for spec in SPECS:
                pipe.hgetall(KEY + spec.name)
            pipe.zcard(PREFIX + "open")
            *hashes, open_count = pipe.execute()
            depths = queue_depths(self.redis)
        except (redis_lib.RedisError, OSError) as exc:
            log.warning("/metrics: the farm's metrics are unreadable: %s", exc)
            yield _gauge(SCRAPE_OK, "1 if the farm's metrics were read from Redis.", 0)
            return
        for spec, raw in zip(SPECS, hashes, strict=True):
            yield _family(spec, raw)
        depth = GaugeMetricFamily(
            QUEUE_DEPTH, "Messages waiting in the broker, by Celery queue.", labels=["queue"]
        )
        for q, n in depths.items():
            depth.add_metric([q], n)
        yield depth
        yield _gauge(OPEN_INCIDENTS, "Incidents opened and not closed yet.", open_count)
        yield _gauge(SCRAPE_OK, "1 if the farm's metrics were read from Redis.", 1)
        yield _gauge(
            "aifixer_farm_metrics_read_seconds",
            "Seconds this scrape spent reading the farm's metrics from Redis.",
            time.monotonic() - started,
        )


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def render(redis: Any) -> str:
    """The farm's metrics in Prometheus' text format (blocking: run it in a thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(redis))
    return generate_latest(registry).decode()
