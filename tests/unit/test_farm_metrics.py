"""The farm's own metrics: recorded in Redis by the process that acts, rendered by the web.

Recording and rendering against a real Redis; the eager canvas of test_tasks.py for what
the tasks record; the text parsed back with prometheus_client's own parser.
"""

from __future__ import annotations

import importlib

import pytest
import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families

from aifixer import metrics, pipeline, tasks
from aifixer.adapters.errors import PermanentError, TransientError
from tests.unit.fakeports import eager_context, open_incident


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of the rendered page."""
    samples = {}
    for family in text_string_to_metric_families(metrics.render(client)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(page, name: str, **labels: str) -> float:
    return page[(name, tuple(sorted(labels.items())))]


def test_counters_start_at_zero_for_every_known_label_value(clean_redis):
    page = scrape(clean_redis)
    for outcome in metrics.OUTCOMES:
        for failure in metrics.FAILURE_CLASSES:
            key = ("aifixer_incidents_ended_total",
                   (("failure_class", failure), ("outcome", outcome)))  # fmt: skip
            assert page[key] == 0
    assert value(page, "aifixer_calls_total", answer="yes") == 0
    assert value(page, "aifixer_stage_duration_seconds_count", stage="diagnose") == 0
    assert value(page, "aifixer_farm_metrics_up") == 1


def test_a_counter_counts_and_unknown_values_are_other(clean_redis):
    metrics.incident_opened(clean_redis, "OOMKilled")
    metrics.incident_opened(clean_redis, "OOMKilled")
    metrics.incident_opened(clean_redis, "a namespace/pod-7f9c")  # never a free-text label
    page = scrape(clean_redis)
    assert value(page, "aifixer_incidents_opened_total", failure_class="OOMKilled") == 2
    assert value(page, "aifixer_incidents_opened_total", failure_class="other") == 1
    assert not any("pod-7f9c" in str(labels) for _, labels in page)


def test_a_histogram_is_cumulative_with_sum_and_count(clean_redis):
    for seconds in (0.03, 0.7, 0.7, 4000):
        metrics.stage_done(clean_redis, "apply", seconds)
    page = scrape(clean_redis)
    bucket = "aifixer_stage_duration_seconds_bucket"
    assert value(page, bucket, stage="apply", le="0.05") == 1
    assert value(page, bucket, stage="apply", le="0.5") == 1
    assert value(page, bucket, stage="apply", le="1.0") == 3
    assert value(page, bucket, stage="apply", le="600.0") == 3
    assert value(page, bucket, stage="apply", le="+Inf") == 4
    assert value(page, "aifixer_stage_duration_seconds_count", stage="apply") == 4
    assert value(page, "aifixer_stage_duration_seconds_sum", stage="apply") == pytest.approx(
        4001.43
    )


def test_incident_ended_counts_the_outcome_and_its_time(clean_redis):
    metrics.incident_ended(clean_redis, "fixed", "OOMKilled", 95.0)
    page = scrape(clean_redis)
    assert value(page, "aifixer_incidents_ended_total", outcome="fixed",
                 failure_class="OOMKilled") == 1  # fmt: skip
    assert value(page, "aifixer_incident_duration_seconds_bucket", outcome="fixed",
                 le="60.0") == 0  # fmt: skip
    assert value(page, "aifixer_incident_duration_seconds_bucket", outcome="fixed",
                 le="120.0") == 1  # fmt: skip


def test_model_use_calls_and_decisions(clean_redis):
    metrics.model_used(clean_redis, "diagnose", 2.5, prompt=900, completion=120, requests=2)
    metrics.call_ended(clean_redis, True, "yes")
    metrics.call_ended(clean_redis, False, "no thanks")
    metrics.call_ended(clean_redis, False, None)
    metrics.inc(clean_redis, metrics.SCALING, mode="apply", changed="true")
    metrics.inc(clean_redis, metrics.LEVEL_LABELS, result="set")
    page = scrape(clean_redis)
    assert value(page, "aifixer_model_requests_total", stage="diagnose") == 2
    assert value(page, "aifixer_model_tokens_total", stage="diagnose", kind="prompt") == 900
    assert value(page, "aifixer_model_tokens_total", stage="diagnose", kind="completion") == 120
    assert value(page, "aifixer_model_request_duration_seconds_sum", stage="diagnose") == 2.5
    for answer in ("yes", "no", "none"):
        assert value(page, "aifixer_calls_total", answer=answer) == 1
    assert value(page, "aifixer_scaling_decisions_total", mode="apply", changed="true") == 1
    assert value(page, "aifixer_cpu_level_labels_total", result="set") == 1


def test_queue_depth_is_the_brokers_lists_with_their_priority_lists(clean_redis):
    clean_redis.delete(*[f"{q}{s}" for q in metrics.QUEUES for s in ("", "\x06\x163")])
    clean_redis.rpush("model", "m1", "m2")
    clean_redis.rpush("model\x06\x163", "m3")
    clean_redis.rpush("notify", "n1")
    try:
        page = scrape(clean_redis)
        assert value(page, "aifixer_queue_depth", queue="model") == 3
        assert value(page, "aifixer_queue_depth", queue="notify") == 1
        assert value(page, "aifixer_queue_depth", queue="polls") == 0
        assert {labels for name, labels in page if name == "aifixer_queue_depth"} == {
            (("queue", q),) for q in metrics.QUEUES
        }
    finally:
        clean_redis.delete("model", "model\x06\x163", "notify")


def test_the_queues_are_celerys():
    celeryconfig = importlib.import_module("celeryconfig")
    assert {q.name for q in celeryconfig.task_queues} == set(metrics.QUEUES)


def test_redis_down_loses_the_count_and_the_scrape_says_so():
    gone = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    metrics.incident_opened(gone, "CrashLoop")  # no exception: the task goes on
    page = scrape(gone)
    assert value(page, "aifixer_farm_metrics_up") == 0
    assert not any(name.startswith("aifixer_incidents") for name, _ in page)


def test_every_label_is_a_closed_set():
    for spec in metrics.SPECS:
        for label, allowed in spec.labels:
            assert allowed and all(v.replace("_", "").isalnum() for v in allowed), (spec, label)
            assert label not in {"incident", "incident_id", "pod", "namespace", "workload"}


# -- what the tasks record, over the eager canvas --------------------------------------


def timed(stage: str):
    """A stage that does nothing and says how long it took, as the pipeline's do."""

    def step(c, s):
        s.timings[stage] = 0.02
        return s

    return step


@pytest.fixture
def ctx(redis_url, tmp_path, monkeypatch):
    """The tasks' eager context, whose diagnose and patch say how long they took."""
    for c in eager_context(redis_url, tmp_path, monkeypatch):
        monkeypatch.setattr(pipeline, "diagnose", timed("diagnose"))
        monkeypatch.setattr(pipeline, "patch", timed("patch"))
        yield c


def test_a_fixed_incident_records_its_stages_pr_and_outcome(ctx, monkeypatch):
    iid = open_incident(ctx)
    calls = {"n": 0}

    def flaky_diagnose(c, s):
        calls["n"] += 1
        if calls["n"] == 1:
            raise TransientError("model", "503", status=503)
        return timed("diagnose")(c, s)

    monkeypatch.setattr(pipeline, "diagnose", flaky_diagnose)
    tasks.remediation(iid).apply()
    assert ctx.store.load(iid).outcome == "fixed"
    page = scrape(ctx.redis)
    assert value(page, "aifixer_incidents_ended_total", outcome="fixed",
                 failure_class="CrashLoop") == 1  # fmt: skip
    assert value(page, "aifixer_incident_duration_seconds_count", outcome="fixed") == 1
    for stage in ("diagnose", "patch", "apply", "verify", "open_pr", "finalize"):
        assert value(page, "aifixer_stage_duration_seconds_count", stage=stage) == 1, stage
    assert value(page, "aifixer_stage_duration_seconds_count", stage="call_oncall") == 0
    assert value(page, "aifixer_pull_requests_total", result="opened") == 1
    assert value(page, "aifixer_task_retries_total", task="diagnose") == 1
    # A redelivered finalize closes nothing twice.
    tasks.finalize.apply(args=(iid,))
    page = scrape(ctx.redis)
    assert value(page, "aifixer_incidents_ended_total", outcome="fixed",
                 failure_class="CrashLoop") == 1  # fmt: skip


def test_a_failed_pull_request_and_the_call_are_counted(ctx):
    iid = open_incident(ctx)
    ctx.forge.fail("open_fix_pr", PermanentError("github", "403 token refused"), times=99)
    tasks.remediation(iid).apply()
    page = scrape(ctx.redis)
    assert value(page, "aifixer_pull_requests_total", result="failed") == 1
    assert value(page, "aifixer_incidents_ended_total", outcome="called",
                 failure_class="CrashLoop") == 1  # fmt: skip
    assert value(page, "aifixer_stage_duration_seconds_count", stage="call_oncall") == 1


def test_no_secret_reaches_the_page(ctx):
    iid = open_incident(ctx)
    tasks.remediation(iid).apply()
    text = metrics.render(ctx.redis)
    settings = ctx.settings
    for secret in (settings.github_token, settings.twilio_auth_token, settings.model_api_key):
        raw = secret.get_secret_value()
        assert len(raw) < 8 or raw not in text  # "none": the keyless default
    assert iid not in text and "shop" not in text
