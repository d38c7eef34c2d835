"""Incident memory without a network: a bag-of-words embedder and an in-memory Redis.

The fake embedder hashes words into a small vector, so texts that share words are
near each other, deterministically; the fake Redis keeps the few commands memory uses
with Redis's own semantics (sorted set order, hash replace, pipelines).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aifixer import fixer, manifests, memory
from aifixer.adapters.errors import PermanentError
from aifixer.memory import Memory
from aifixer.models import (
    ApplyResult,
    Diagnosis,
    EventRecord,
    Evidence,
    FieldChange,
    FixProposal,
    Incident,
    IncidentState,
    LogLine,
    PodState,
    Verification,
    Workload,
)
from aifixer.settings import Settings
from tests.unit.test_fixer import FakeModel

CONTAINER = "spec.template.spec.containers[0]"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

# -- fakes -----------------------------------------------------------------------------------


class WordEmbedder:
    """Each word adds 1 to one of 64 dimensions; unit length, like the real model's."""

    name = "words-64"

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        out = []
        for text in texts:
            vec = [0.0] * 64
            for word in re.findall(r"[a-z][a-z0-9]+", text.lower()):
                vec[int(hashlib.sha256(word.encode()).hexdigest(), 16) % 64] += 1.0
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec])
        return out


class BrokenEmbedder:
    name = "broken"

    def embed(self, texts):
        raise PermanentError("embedding", "the embedding model package is not installed")


class FakeRedis:
    """The Redis commands memory uses, on dicts; replies decoded, as the farm's client."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.zsets: dict[str, dict[str, float]] = {}

    def pipeline(self):
        return _Pipeline(self)

    def delete(self, *keys):
        return sum(self.hashes.pop(k, None) is not None for k in keys)

    def hset(self, key, mapping):
        self.hashes.setdefault(key, {}).update(mapping)

    def hgetall(self, key):
        return dict(self.hashes.get(key, {}))

    def zadd(self, key, mapping):
        self.zsets.setdefault(key, {}).update(mapping)

    def zrem(self, key, *members):
        for m in members:
            self.zsets.get(key, {}).pop(m, None)

    def zcard(self, key):
        return len(self.zsets.get(key, {}))

    def _ordered(self, key):
        return [
            m for m, _ in sorted(self.zsets.get(key, {}).items(), key=lambda kv: (kv[1], kv[0]))
        ]

    def zrange(self, key, start, end):
        items = self._ordered(key)
        return items[start : None if end == -1 else end + 1]

    def zrevrange(self, key, start, end):
        items = self._ordered(key)[::-1]
        return items[start : None if end == -1 else end + 1]


class _Pipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis, self.ops = redis, []

    def __getattr__(self, name):
        return lambda *a, **kw: self.ops.append((name, a, kw))

    def execute(self):
        results = [getattr(self.redis, name)(*a, **kw) for name, a, kw in self.ops]
        self.ops = []
        return results


# -- incidents -------------------------------------------------------------------------------


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)


def deployment(name: str, namespace: str, container: str, image: str, memory_limit: str):
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": container,
                            "image": image,
                            "resources": {
                                "requests": {"memory": "32Mi"},
                                "limits": {"memory": memory_limit},
                            },
                        }
                    ]
                },
            },
        },
    }


def incident(name: str, namespace: str, failure_class: str, at: datetime = T0) -> Incident:
    return Incident(
        fingerprint=f"fp-{namespace}-{name}-{failure_class}",
        workload=Workload(cluster="app", namespace=namespace, name=name),
        failure_class=failure_class,
        opened_at=at,
        signals=[],
    )


def oom_case(name="cart", namespace="shop", container="api", limit="128Mi", at=T0):
    pod = f"{name}-5f7c9d8b6-x2kq9"
    evidence = Evidence(
        deployment=deployment(name, namespace, container, f"shop/{name}:1.4.2", limit),
        pods=[
            PodState(
                name=pod,
                phase="Running",
                ready=False,
                reasons=["OOMKilled", "CrashLoopBackOff"],
                restart_count=5,
                last_termination={"reason": "OOMKilled", "exitCode": 137, "container": container},
            )
        ],
        events=[
            EventRecord(
                type="Warning",
                reason="BackOff",
                message=f"Back-off restarting failed container {container} in pod {pod}",
                object=f"Pod/{pod}",
                count=5,
            )
        ],
        logs=[
            LogLine(
                time="2024-03-01T11:59:00Z",
                pod=pod,
                container=container,
                line="fatal error: runtime: out of memory while loading cache",
            )
        ],
        pod_logs={},
        revisions=[],
        last_healthy_template=None,
        template_diff=[],
        healthy=False,
    )
    return incident(name, namespace, "OOMKilled", at), evidence


def imagepull_case(name="search", namespace="catalog", container="web", at=T0):
    good, bad = f"catalog/{name}:2.0.1", f"catalog/{name}:2.0.l"
    live = deployment(name, namespace, container, bad, "256Mi")
    healthy_template = copy.deepcopy(live["spec"]["template"])
    healthy_template["spec"]["containers"][0]["image"] = good
    pod = f"{name}-7d9f5c4b8-abcde"
    evidence = Evidence(
        deployment=live,
        pods=[
            PodState(
                name=pod,
                phase="Pending",
                ready=False,
                reasons=["ImagePullBackOff"],
                restart_count=0,
            )
        ],
        events=[
            EventRecord(
                type="Warning",
                reason="Failed",
                message=f'Failed to pull image "{bad}": manifest unknown',
                object=f"Pod/{pod}",
                count=3,
            )
        ],
        logs=[],
        pod_logs={},
        revisions=[],
        last_healthy_template=healthy_template,
        template_diff=[
            # Rooted at the pod template, as the pipeline's diff may be.
            FieldChange(path="spec.containers[0].image", before=good, after=bad)
        ],
        healthy=False,
    )
    return incident(name, namespace, "ImagePull", at), evidence


def finished(
    inc: Incident,
    evidence: Evidence,
    changes: dict[str, Any],
    outcome="fixed",
    strategy="playbook-fix",
) -> IncidentState:
    """An incident that ended with `changes` (path -> new value) applied."""
    live = copy.deepcopy(evidence.deployment)
    fixed = copy.deepcopy(live)
    for path, value in changes.items():
        manifests.set_path(fixed, path, value)
    proposal = FixProposal(
        source="playbook",
        strategy=strategy,
        rationale="test fix",
        manifest=fixed,
        changes=manifests.diff(live, fixed),
    )
    closed = inc.opened_at + timedelta(minutes=5)
    return IncidentState(
        incident=inc,
        evidence=evidence,
        diagnosis=Diagnosis(
            summary=f"{inc.workload.name} fails ({inc.failure_class}).",
            root_cause="see the evidence",
            failure_class=inc.failure_class,
            source="playbook",
        ),
        proposal=proposal,
        apply=ApplyResult(
            original=live, applied=fixed, changes=proposal.changes, generation=3, applied_at=closed
        ),
        verification=Verification(ok=outcome == "fixed", reason="test", checked_at=closed),
        outcome=outcome,
        closed_at=closed,
    )


def raised_oom(outcome="fixed", **kw) -> IncidentState:
    inc, ev = oom_case(**kw)
    limit = ev.deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    doubled = f"{int(limit['memory'].removesuffix('Mi')) * 2}Mi"
    return finished(
        inc,
        ev,
        {f"{CONTAINER}.resources.limits.memory": doubled},
        outcome=outcome,
        strategy="raise-memory-limit",
    )


def reverted_image(**kw) -> IncidentState:
    inc, ev = imagepull_case(**kw)
    good = ev.template_diff[0].before
    return finished(inc, ev, {f"{CONTAINER}.image": good}, strategy="revert-to-last-healthy")


@pytest.fixture
def mem() -> Memory:
    return Memory(FakeRedis(), WordEmbedder(), settings())


# -- remember ----------------------------------------------------------------------------------


def test_remember_stores_a_generalised_record_with_its_vector(mem):
    record = mem.remember(raised_oom())
    assert record is not None
    stored = mem.redis.hgetall(memory.RECORD_PREFIX + record.id)
    assert set(stored) == {"record", "vector", "embedder"} and stored["embedder"] == "words-64"
    assert len(memory._unpack(stored["vector"])) == 64
    assert mem.redis.zrange(memory.INDEX_KEY, 0, -1) == [record.id]
    [change] = record.fix
    assert change.path == "spec.template.spec.containers[*].resources.limits.memory"
    assert (change.container, change.action, change.factor) == ("api", "scale", 2.0)
    assert (change.before, change.after) == ("128Mi", "256Mi")
    assert record.failure_class == "OOMKilled" and record.outcome == "fixed"
    assert record.workload == "shop/cart" and record.fix_strategy == "raise-memory-limit"
    # The pod's generated name is not a symptom; its reasons, events and error lines are.
    assert "cart-5f7c9d8b6" not in record.symptoms and "<workload>" in record.symptoms
    for seen in ("OOMKilled", "exitCode 137", "BackOff", "out of memory"):
        assert seen in record.symptoms


def test_a_reverted_field_is_remembered_as_a_restore(mem):
    [change] = mem.remember(reverted_image()).fix
    assert (change.action, change.container) == ("restore", "web")
    assert change.path == "spec.template.spec.containers[*].image"


def test_finalize_twice_keeps_one_record(mem):
    state = raised_oom()
    mem.remember(state)
    mem.remember(state)
    assert mem.redis.zcard(memory.INDEX_KEY) == 1


@pytest.mark.parametrize("outcome", ["recovered", "error"])
def test_incidents_that_teach_nothing_are_not_remembered(mem, outcome):
    assert mem.remember(raised_oom().model_copy(update={"outcome": outcome})) is None
    assert mem.redis.zcard(memory.INDEX_KEY) == 0


def test_an_unapplied_proposal_is_not_remembered_as_the_fix(mem):
    state = raised_oom().model_copy(update={"apply": None, "outcome": "rejected"})
    record = mem.remember(state)
    assert record.fix == [] and record.fix_strategy is None


def test_the_oldest_records_are_dropped_beyond_the_limit():
    mem = Memory(FakeRedis(), WordEmbedder(), settings(memory_max_records=3))
    ids = [
        mem.remember(raised_oom(name=f"svc{i}", at=T0 + timedelta(hours=i))).id for i in range(5)
    ]
    assert set(mem.redis.zrange(memory.INDEX_KEY, 0, -1)) == set(ids[2:])
    assert {k.removeprefix(memory.RECORD_PREFIX) for k in mem.redis.hashes} == set(ids[2:])


# -- similar -----------------------------------------------------------------------------------


def test_similar_ranks_the_same_kind_of_failure_first(mem):
    mem.remember(reverted_image())
    mem.remember(raised_oom())
    inc, ev = oom_case(name="checkout", namespace="pay", container="server")
    past = mem.similar(ev, inc, k=3)
    assert [p.record.failure_class for p in past] == ["OOMKilled", "ImagePull"]
    assert past[0].similarity > past[1].similarity
    assert mem.similar(ev, inc, k=1)[0].record.workload == "shop/cart"


def test_the_query_is_embedded_once_for_similar_and_known_good(mem):
    mem.remember(raised_oom())
    inc, ev = oom_case(name="checkout", container="server")
    calls = mem._embedder.calls
    mem.similar(ev, inc)
    mem.known_good(inc, ev)
    assert mem._embedder.calls == calls + 1


def test_example_lines_are_short_and_say_fix_and_outcome(mem):
    mem.remember(raised_oom())
    inc, ev = oom_case(name="checkout")
    [line] = memory.example_lines(mem.similar(ev, inc))
    assert len(line) <= 320
    assert "containers[*].resources.limits.memory 128Mi -> 256Mi" in line
    assert "Outcome: fixed" in line


def test_pure_python_cosine_matches_numpy(mem, monkeypatch):
    mem.remember(raised_oom())
    mem.remember(reverted_image())
    inc, ev = oom_case(name="checkout")
    with_numpy = [p.similarity for p in mem.similar(ev, inc)]
    monkeypatch.setattr(memory, "numpy", None)
    assert [p.similarity for p in mem.similar(ev, inc)] == pytest.approx(with_numpy, abs=1e-3)


# -- known_good --------------------------------------------------------------------------------


def test_a_fix_that_verified_is_replayed_on_another_workload(mem):
    mem.remember(raised_oom())
    inc, ev = oom_case(name="checkout", namespace="pay", container="server", limit="200Mi")
    known = mem.known_good(inc, ev)
    assert known is not None and known.past.record.workload == "shop/cart"
    p = known.proposal
    assert p.strategy == "remembered:raise-memory-limit" and p.source == "playbook"
    # Twice 200Mi, rounded up to a 64Mi step, on this Deployment's own container.
    assert {c.path: c.after for c in p.changes} == {f"{CONTAINER}.resources.limits.memory": "448Mi"}
    assert p.manifest["metadata"]["name"] == "checkout"
    assert "shop/cart" in p.rationale


def test_a_restore_replays_this_workloads_own_healthy_value(mem):
    mem.remember(reverted_image())
    inc, ev = imagepull_case(name="ledger", namespace="finance", container="app")
    known = mem.known_good(inc, ev)
    assert known is not None
    assert {c.path: c.after for c in known.proposal.changes} == {
        f"{CONTAINER}.image": "catalog/ledger:2.0.1"
    }


@pytest.mark.parametrize("outcome", ["called", "rejected"])
def test_only_a_fix_that_verified_is_known_good(mem, outcome):
    mem.remember(raised_oom(outcome=outcome))
    inc, ev = oom_case(name="checkout")
    assert mem.known_good(inc, ev) is None
    assert mem.similar(ev, inc)[0].record.outcome == outcome  # still an example


def test_known_good_needs_the_same_failure_class(mem):
    mem.remember(reverted_image())
    inc, ev = oom_case()
    assert mem.known_good(inc, ev) is None


def test_below_the_threshold_only_the_same_fingerprint_qualifies():
    mem = Memory(FakeRedis(), WordEmbedder(), settings(memory_match_similarity=0.999))
    mem.remember(raised_oom())
    other_inc, other_ev = oom_case(name="checkout", namespace="pay", container="server")
    assert mem.known_good(other_inc, other_ev) is None
    again_inc, again_ev = oom_case(limit="256Mi", at=T0 + timedelta(days=1))
    known = mem.known_good(again_inc, again_ev)
    assert known is not None and known.past.record.fingerprint == again_inc.fingerprint


def test_a_fix_whose_container_cannot_be_resolved_is_not_replayed(mem):
    mem.remember(raised_oom())
    inc, ev = oom_case(name="checkout", container="server")
    sidecar = {"name": "proxy", "image": "envoy:1.30", "resources": {"limits": {"memory": "64Mi"}}}
    ev.deployment["spec"]["template"]["spec"]["containers"].append(sidecar)
    assert mem.known_good(inc, ev) is None


def test_a_set_is_replayed_only_where_the_live_value_is_the_one_it_replaced(mem):
    inc, ev = oom_case()
    mem.remember(finished(inc, ev, {"spec.replicas": 1}))
    assert mem.known_good(*oom_case(at=T0 + timedelta(days=1))) is not None
    other_inc, other_ev = oom_case(at=T0 + timedelta(days=1))
    other_ev.deployment["spec"]["replicas"] = 4
    assert mem.known_good(other_inc, other_ev) is None


# -- fallback without embeddings ---------------------------------------------------------------


def test_without_an_embedder_memory_ranks_by_class_and_words(caplog):
    with caplog.at_level(logging.WARNING, logger="aifixer.memory"):
        mem = Memory(FakeRedis(), None, settings())
    assert "without embeddings" in caplog.text
    mem.remember(reverted_image())
    mem.remember(raised_oom())
    assert all("vector" not in h for h in mem.redis.hashes.values())
    inc, ev = oom_case(name="checkout", namespace="pay", container="server")
    past = mem.similar(ev, inc)
    assert [p.record.failure_class for p in past] == ["OOMKilled", "ImagePull"]
    assert past[0].similarity >= 0.5 > past[1].similarity
    assert mem.known_good(inc, ev) is not None


def test_an_embedder_that_fails_switches_memory_to_the_fallback(caplog):
    mem = Memory(FakeRedis(), BrokenEmbedder(), settings())
    with caplog.at_level(logging.WARNING, logger="aifixer.memory"):
        record = mem.remember(raised_oom())
    assert record is not None and "without embeddings" in caplog.text
    inc, ev = oom_case(name="checkout")
    assert mem.similar(ev, inc)[0].record.id == record.id


def test_vectors_of_another_model_are_not_compared(mem):
    mem.remember(raised_oom())
    other = Memory(mem.redis, type("Other", (WordEmbedder,), {"name": "other"})(), settings())
    inc, ev = oom_case(name="checkout")
    [past] = other.similar(ev, inc)
    assert past.similarity == pytest.approx(
        memory.overlap(memory.symptoms(inc, ev), "OOMKilled", past.record), abs=1e-4
    )


# -- in the fixer ------------------------------------------------------------------------------


def test_the_remembered_fix_is_the_first_candidate(mem):
    mem.remember(raised_oom())
    inc, ev = oom_case(name="checkout", limit="200Mi")
    known = mem.known_good(inc, ev)
    diag = Diagnosis(
        summary="checkout is OOMKilled.",
        root_cause="limit",
        failure_class="OOMKilled",
        source="model",
    )
    proposal, rejections = fixer.propose(
        FakeModel(), inc, ev, diag, settings(fix_strategy="playbooks"), remembered=known.proposal
    )
    assert rejections == [] and proposal.strategy == "remembered:raise-memory-limit"


def test_hybrid_shows_the_examples_and_the_remembered_candidate_first(mem):
    mem.remember(raised_oom())
    inc, ev = oom_case(name="checkout", limit="200Mi")
    known = mem.known_good(inc, ev)
    examples = memory.example_lines(mem.similar(ev, inc))
    diag = Diagnosis(
        summary="checkout is OOMKilled.",
        root_cause="limit",
        failure_class="OOMKilled",
        source="model",
    )
    model = FakeModel({"choice": 0, "edits": []})
    proposal, _ = fixer.propose(
        model,
        inc,
        ev,
        diag,
        settings(fix_strategy="hybrid"),
        examples=examples,
        remembered=known.proposal,
    )
    user = model.calls[0]["user"]
    assert "Similar past incidents" in user and examples[0][:60] in user
    assert "[0] remembered:raise-memory-limit" in user
    assert proposal.strategy == "hybrid:remembered:raise-memory-limit"


def test_without_examples_the_prompt_has_no_examples_block():
    inc, ev = oom_case()
    diag = Diagnosis(
        summary="cart is OOMKilled.", root_cause="limit", failure_class="OOMKilled", source="model"
    )
    model = FakeModel({"choice": 0, "edits": []})
    fixer.propose(model, inc, ev, diag, settings(fix_strategy="hybrid"))
    assert "Similar past incidents" not in model.calls[0]["user"]
