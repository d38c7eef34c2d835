"""Born-broken image pulls repaired from the registry, with the real farm and the stub model.

Each scenario of sandbox/aifixer_sandbox/scenarios/registry deploys a workload whose tag was never
published and that never ran healthy; the farm, told of the sandbox registry (the
scenario's `registry` key), asks it for the repository's tags and must end `fixed`:
the verified image is the expected existing tag of the same repository, in exactly one
pull request, no call placed. The same scenario without the registry settings ends
with a call: the repair is not offered when no registry is configured.
"""

from __future__ import annotations

import pytest

from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun

pytestmark = [pytest.mark.integration, pytest.mark.scenario]

SCENARIOS = scenario_mod.bundled_registry()
EXPECTED = {
    "born-broken-tag-typo-price-feed": "market/price-feed:1.8.0",
    "born-broken-missing-patch-search-sync": "search/search-sync:2.4.2",
}


def test_every_registry_scenario_has_its_expected_tag() -> None:
    assert sorted(p.stem for p in SCENARIOS) == sorted(EXPECTED)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_the_closest_existing_tag_is_proposed(path, tmp_path) -> None:
    sc = scenario_mod.load(path)
    assert sc.registry is not None and not sc.change
    with FarmRun(sc, tmp_path / "run", speed=30) as run:
        states = run.wait(timeout=240)
        report = run.report(states)
        assert report["complete"], report
        assert len(states) == 1, report
        state = states[0]
        assert state.outcome == "fixed", report
        assert state.proposal is not None and state.proposal.strategy.endswith(
            "closest-existing-tag"
        )
        assert [c.path for c in state.apply.changes] == ["spec.template.spec.containers[0].image"]
        assert state.apply.changes[0].after == EXPECTED[sc.name]
        assert "sha256:" in state.proposal.rationale
        assert state.calls == []
        world = run.world
        prs = world.call(world.forge.prs)
        assert [p["head"] for p in prs] == [state.pull_request.branch]
        ns, name = state.incident.workload.namespace, state.incident.workload.name
        assert world.rolled_out(ns, name)
        # The registry was asked with credentials, which no record or log line carries.
        assert any(kind in ("basic", "bearer") for _, _, kind in world.registry.requests)
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "run").rglob("*.log"))
        assert world.registry.password not in logs + state.model_dump_json()


@pytest.mark.timeout(600)
def test_without_a_registry_configured_the_repair_is_not_offered(tmp_path) -> None:
    sc = scenario_mod.load(SCENARIOS[0]).model_copy(update={"registry": None})
    with FarmRun(sc, tmp_path / "run", speed=30) as run:
        states = run.wait(timeout=240)
        assert len(states) == 1
        assert states[0].outcome in ("called", "rejected"), run.report(states)
        assert states[0].evidence is not None and states[0].evidence.existing_tags == []
        assert run.world.registry.requests == []
