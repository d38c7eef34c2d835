"""Which Deployments a scenario expects to fail: the harness (`aifixer scenario run`,
the quality benchmark, the farm tests) waits for an incident on those only, never on
a healthy neighbour."""

from __future__ import annotations

import pytest

from aifixer_sandbox import harness
from aifixer_sandbox import scenario as scenario_mod


def deployment(namespace: str, name: str, image: str = "a:1") -> dict:
    return {
        "path": f"{namespace}/{name}.yaml",
        "yaml": (
            "apiVersion: apps/v1\nkind: Deployment\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\n"
            f"spec:\n  selector: {{matchLabels: {{app: {name}}}}}\n"
            f"  template:\n    metadata: {{labels: {{app: {name}}}}}\n"
            f"    spec: {{containers: [{{name: c, image: '{image}'}}]}}\n"
        ),
    }


def make(manifests: list[dict], change: list[dict] | None = None, **expect):
    return scenario_mod.Scenario.model_validate(
        {
            "name": "x",
            "images": {"a:1": {}, "a:2": {}},
            "manifests": manifests,
            "change": change or [],
            "expect": {"outcome": "fixed", **expect},
        }
    )


def test_a_born_broken_scenario_waits_for_the_workloads_it_names():
    sc = make([deployment("shop", "cache"), deployment("shop", "api")], workloads=["shop/api"])
    assert harness.changed_workloads(sc) == [("shop", "api")]


def test_a_born_broken_scenario_with_neighbours_must_name_its_failing_workloads():
    with pytest.raises(ValueError, match="must name the ones expected to fail"):
        make([deployment("shop", "cache"), deployment("shop", "api")])
    alone = make([deployment("shop", "api")])
    assert harness.changed_workloads(alone) == [("shop", "api")]


def test_a_named_workload_must_be_a_deployment_of_the_scenario():
    with pytest.raises(ValueError, match="shop/ghost is not a Deployment"):
        make([deployment("shop", "api")], workloads=["shop/ghost"])


def test_a_change_waits_for_what_it_changes_not_for_what_it_repeats():
    manifests = [deployment("shop", "cache"), deployment("shop", "api")]
    change = [deployment("shop", "cache"), deployment("shop", "api", image="a:2")]
    assert harness.changed_workloads(make(manifests, change)) == [("shop", "api")]


def test_no_outcome_no_workload_waited_for():
    sc = scenario_mod.Scenario.model_validate(
        {
            "name": "x",
            "images": {"a:1": {}},
            "manifests": [deployment("shop", "api")],
            "expect": {"levels": [{"namespace": "shop", "deployment": "api", "sequence": ["low"]}]},
        }
    )
    assert harness.changed_workloads(sc) == []


def test_every_bundled_scenario_names_workloads_it_has():
    for path in [*scenario_mod.bundled(), *scenario_mod.bundled_registry()]:
        sc = scenario_mod.load(path)
        if sc.expect.outcome is not None:
            assert sc.failing_workloads(), path


def test_a_chart_s_workload_is_named_and_rendered_by_the_controller_only():
    """Raw files (a chart) hold no objects: never applied, never parsed as manifests; the
    workload they render is named by expect.workloads, which a controller must render."""
    chart = [
        {"path": "charts/web/Chart.yaml", "raw": True, "yaml": "apiVersion: v2\nname: web\n"},
        {
            "path": "charts/web/templates/deployment.yaml",
            "raw": True,
            "yaml": "metadata:\n  name: {{ .Chart.Name }}\n",
        },
    ]
    with pytest.raises(ValueError, match="every document needs apiVersion and kind"):
        make([{**chart[0], "raw": False}], workloads=["shop/web"])
    with pytest.raises(ValueError, match="shop/web is not a Deployment"):
        make(chart, workloads=["shop/web"])  # nothing would ever render it
    sc = scenario_mod.Scenario.model_validate(
        {
            "name": "x",
            "images": {"a:1": {}},
            "manifests": chart,
            "gitops": {"controller": "argocd", "path": "charts/web"},
            "expect": {"outcome": "fixed", "workloads": ["shop/web"]},
        }
    )
    assert [m.documents() for m in sc.manifests] == [[], []]
    assert harness.changed_workloads(sc) == [("shop", "web")]
