"""A second try before the phone, with the real farm (worker, beat, web), the sandbox and
the stub model, which picks the first candidate: the memory limit raised.

- oom-second-try-aggregator: a release that needs more memory and lowered the limit.
  Raising the limit back to 256Mi is not enough: that fix is rolled back to the
  original, and the whole last healthy revision (image and limit) is tried next and
  verifies. One pull request, telling the attempt before it; nobody called.
- oom-no-way-back-ledger: the same, but the old image refuses the migrated schema:
  both fixes are tried, each undone; the Deployment is the original again and a
  person is called, told of both.

In both, the rollback snapshot is the Deployment before aifixer's first write, never an
earlier attempt's.
"""

from __future__ import annotations

import json

import pytest

from aifixer import manifests
from aifixer.adapters.kube import Kube
from aifixer.settings import Settings
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun

pytestmark = [pytest.mark.integration, pytest.mark.scenario]

LIMIT = "spec.template.spec.containers[0].resources.limits.memory"
IMAGE = "spec.template.spec.containers[0].image"


def _deployment(run: FarmRun, namespace: str, name: str) -> dict:
    kube = Kube(Settings(_env_file=None, kubeconfig=run.world.endpoints.kubeconfig))
    return manifests.clean(kube.get_deployment(namespace, name))


def _changed(sc) -> dict:
    doc = next(d for mf in sc.change for d in mf.documents() if d["kind"] == "Deployment")
    return doc


def _first_attempt_checks(state) -> None:
    """The first fix was the limit raised to the last healthy 256Mi, rolled back; the
    second was the whole last healthy revision."""
    assert len(state.attempts) == 1, state.attempts
    first = state.attempts[0]
    assert first.proposal.strategy.endswith("raise-memory-limit")
    assert [(c.path, c.before, c.after) for c in first.proposal.changes] == [
        (LIMIT, "128Mi", "256Mi")
    ]
    assert first.verification.ok is False and first.verification.rolled_back is True
    assert state.proposal.strategy == "revert-to-last-healthy"


@pytest.mark.timeout(600)
def test_a_second_fix_of_another_kind_verifies_after_the_first_is_undone(tmp_path) -> None:
    sc = scenario_mod.load(scenario_mod.bundled_dir() / "oom-second-try-aggregator.yaml")
    with FarmRun(sc, tmp_path / "run", speed=30) as run:
        states = run.wait(timeout=300)
        report = run.report(states)
        assert report["complete"], json.dumps(report, indent=2)
        assert len(states) == 1, report
        state = states[0]
        assert state.outcome == "fixed", json.dumps(report, indent=2)
        _first_attempt_checks(state)
        assert sorted(c.path for c in state.apply.changes) == [IMAGE, LIMIT]
        assert state.verification.ok
        assert state.calls == []

        snap = run.ctx.store.snapshot(state.incident.id)
        release = _changed(sc)
        assert manifests.get_path(snap.manifest, IMAGE) == "data/aggregator:3.1.0"
        assert manifests.get_path(snap.manifest, LIMIT) == "128Mi"
        assert not manifests.diff(
            release["spec"]["template"]["spec"]["containers"][0]["resources"],
            snap.manifest["spec"]["template"]["spec"]["containers"][0]["resources"],
        )

        live = _deployment(run, "data", "aggregator")
        assert manifests.get_path(live, IMAGE) == "data/aggregator:3.0.2"
        assert manifests.get_path(live, LIMIT) == "256Mi"
        assert run.world.rolled_out("data", "aggregator")

        prs = run.world.call(run.world.forge.prs)
        assert [p["head"] for p in prs] == [state.pull_request.branch]
        body = prs[0]["body"]
        assert "## Earlier attempts" in body and "attempt 2 of 2" in body
        assert "raise-memory-limit" in body and "rolled back" in body


@pytest.mark.timeout(600)
def test_when_both_fixes_fail_each_is_undone_and_the_call_tells_both(tmp_path) -> None:
    sc = scenario_mod.load(scenario_mod.bundled_dir() / "oom-no-way-back-ledger.yaml")
    with FarmRun(sc, tmp_path / "run", speed=30) as run:
        states = run.wait(timeout=300)
        report = run.report(states)
        assert report["complete"], json.dumps(report, indent=2)
        assert len(states) == 1, report
        state = states[0]
        assert state.outcome == "called", json.dumps(report, indent=2)
        _first_attempt_checks(state)
        assert state.verification.ok is False and state.verification.rolled_back is True
        assert state.pull_request is None
        assert run.world.call(run.world.forge.prs) == []

        # The original is back: the release as it was, not the first attempt's limit.
        release = _changed(sc)
        live = _deployment(run, "finance", "ledger")
        assert manifests.get_path(live, IMAGE) == "finance/ledger:5.0.0"
        assert manifests.get_path(live, LIMIT) == "128Mi"
        snap = run.ctx.store.snapshot(state.incident.id)
        assert not manifests.diff(
            manifests.get_path(release, "spec.template.spec.containers[0].resources"),
            manifests.get_path(snap.manifest, "spec.template.spec.containers[0].resources"),
        )
        assert manifests.get_path(snap.manifest, IMAGE) == "finance/ledger:5.0.0"

        # The call tells both attempts, and a person said yes.
        lines = [
            json.loads(line) for line in (tmp_path / "run" / "calls.jsonl").read_text().splitlines()
        ]
        assert [c["number"] for c in lines] == ["+33600000081", "+33600000082"]
        assert lines[-1]["can_intervene"] is True
        speech = lines[0]["speech"].lower()
        assert "a first fix" in speech and "then a second fix" in speech, speech
        assert "undone" in speech and "ledger" in speech
