"""Several clusters from one farm: the same workload in a staging and a prod cluster.

Each scenario of sandbox/aifixer_sandbox/scenarios/clusters/ is played on two sandbox clusters (two API
servers, two Lokis each requiring its own tenant, one forge, one phone), deployed the
way such teams do: a kustomize base and one overlay per cluster, each overlay rendered
and applied to its cluster. The real farm (Celery worker, beat and web on a private
Redis) is told of the clusters by a clusters file only. Checked through the real
clients: the incident of each broken cluster, its pull request touching that cluster's
overlay only, the branch rendered with the real `kubectl kustomize` giving exactly the
Deployment that runs fixed in that cluster, and the other cluster left alone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from kubernetes import client, config

from aifixer import manifests
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.fleet import FleetRun
from aifixer_sandbox.scenario import bundled_dir

pytestmark = [pytest.mark.integration, pytest.mark.scenario]

SCENARIOS = bundled_dir() / "clusters"
IMAGE = "spec.template.spec.containers[0].image"


def kustomize(checkout: Path, overlay: str) -> dict:
    """The Deployment `kubectl kustomize` renders from `overlay` of the checkout."""
    out = subprocess.run(
        ["kubectl", "kustomize", "--", str(checkout / overlay)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    (dep,) = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"]
    return dep


def live(run: FleetRun, cluster: str) -> dict:
    world = run.fleet.worlds[cluster]
    api = config.new_client_from_config(config_file=world.endpoints.kubeconfig)
    try:
        dep = client.AppsV1Api(api).read_namespaced_deployment("storefront", "web")
        return api.sanitize_for_serialization(dep)
    finally:
        api.close()


def checkout(run: FleetRun, tmp_path: Path, branch: str) -> Path:
    where = tmp_path / branch.replace("/", "_")
    url = run.fleet.primary.endpoints.gitops_clone_url
    subprocess.run(["git", "clone", "-q", "-b", branch, url, str(where)], check=True, timeout=60)
    return where


def changed_files(diff: str) -> set[str]:
    return {line[len("+++ b/") :] for line in diff.splitlines() if line.startswith("+++ b/")}


def managers(dep: dict) -> set[str]:
    return {m["manager"] for m in dep["metadata"].get("managedFields") or []}


def play(tmp_path: Path, name: str):
    sc = scenario_mod.load(SCENARIOS / f"{name}.yaml")
    return sc, FleetRun(sc, tmp_path / "run", speed=30)


def check_proven(run, tmp_path, state, overlay: str, other: str, main: Path) -> None:
    """The branch renders, with the real kustomize, the Deployment that now runs fixed:
    every changed field at its verified value, nothing else moved; the other overlay
    renders as on main."""
    branch = checkout(run, tmp_path, state.pull_request.branch)
    before, after = kustomize(main, overlay), kustomize(branch, overlay)
    running = live(run, state.incident.workload.cluster)
    for change in state.apply.changes:
        assert manifests.get_path(after, change.path) == change.after
        assert manifests.get_path(running, change.path) == change.after
        assert manifests.get_path(before, change.path) == change.before
    moved = {c.path for c in manifests.diff(before, after)}
    assert moved == {c.path for c in state.apply.changes}
    assert kustomize(branch, other) == kustomize(main, other)


@pytest.mark.timeout(600)
def test_a_fault_in_prod_is_fixed_in_prod_s_overlay_and_staging_is_left_alone(tmp_path):
    sc, run = play(tmp_path, "staging-prod-image-typo-storefront")
    with run:
        staging_before = live(run, "staging")
        assert run.fleet.broken == [("prod", "web", "storefront")]
        states = run.wait(timeout=300)
        assert run.finished(states), run.describe(states)
        (state,) = states  # nothing opened on staging
        w = state.incident.workload
        assert (w.cluster, w.namespace, w.name) == ("prod", "web", "storefront")
        assert state.outcome == "fixed", run.describe(states)
        assert [c.path for c in state.apply.changes] == [IMAGE]
        assert state.apply.changes[0].after == "web/storefront:3.1.0"
        assert state.calls == []

        primary = run.fleet.primary
        (pr,) = primary.call(primary.forge.prs)
        assert pr["head"] == state.pull_request.branch == f"aifixer/{state.incident.id}"
        assert changed_files(pr["diff"]) == {"overlays/prod/kustomization.yaml"}
        assert "on cluster `prod`" in pr["body"]
        assert "prod/web/Deployment/storefront" in pr["body"].splitlines()[0]

        main = checkout(run, tmp_path, "main")
        check_proven(run, tmp_path, state, "overlays/prod", "overlays/staging", main)

        # Staging: never written by the farm, still running what its overlay renders.
        staging = live(run, "staging")
        assert "aifixer" not in managers(staging)
        assert staging["metadata"]["generation"] == staging_before["metadata"]["generation"]
        assert manifests.get_path(staging, IMAGE) == "web/storefront:3.1.0"
        assert run.fleet.worlds["staging"].rolled_out("web", "storefront")
        assert "aifixer" in managers(live(run, "prod"))

        # Each Loki answered only its own tenant, and the farm's polls of both went
        # through: no poll of either cluster failed.
        for cluster, world in run.fleet.worlds.items():
            url = f"{world.endpoints.loki}/loki/api/v1/query_range"
            query = {"query": '{namespace="web"}', "limit": "5"}
            assert requests.get(url, params=query, timeout=5).status_code == 401
            ok = requests.get(url, params=query, timeout=5,
                              headers={"X-Scope-OrgID": cluster})  # fmt: skip
            assert ok.status_code == 200
            assert ok.json()["data"]["result"], f"{cluster}'s Loki holds its pods' lines"
        logs = "".join(p.read_text(errors="replace") for p in (run.workdir / "logs").glob("*"))
        assert "poll of cluster" not in logs and "no org id" not in logs


@pytest.mark.timeout(600)
def test_both_clusters_failing_make_two_incidents_and_two_prs_each_in_its_overlay(tmp_path):
    sc, run = play(tmp_path, "staging-prod-both-fail-storefront")
    with run:
        assert sorted(run.fleet.broken) == [("prod", "web", "storefront"),
                                            ("staging", "web", "storefront")]  # fmt: skip
        states = run.wait(timeout=300)
        assert run.finished(states), run.describe(states)
        by_cluster = {s.incident.workload.cluster: s for s in states}
        assert sorted(by_cluster) == ["prod", "staging"] and len(states) == 2
        staging, prod = by_cluster["staging"], by_cluster["prod"]
        assert {s.outcome for s in states} == {"fixed"}, run.describe(states)
        # The same workload, two fingerprints: two incidents, two branches.
        assert staging.incident.fingerprint != prod.incident.fingerprint
        assert (staging.incident.failure_class, prod.incident.failure_class) == (
            "ImagePull", "OOMKilled",
        )  # fmt: skip
        assert [c.path for c in staging.apply.changes] == [IMAGE]
        assert [c.path for c in prod.apply.changes] == [
            "spec.template.spec.containers[0].resources.limits.memory"
        ]

        primary = run.fleet.primary
        prs = {p["head"]: p for p in primary.call(primary.forge.prs)}
        assert set(prs) == {staging.pull_request.branch, prod.pull_request.branch}
        assert changed_files(prs[staging.pull_request.branch]["diff"]) == {
            "overlays/staging/kustomization.yaml"
        }
        assert changed_files(prs[prod.pull_request.branch]["diff"]) == {"overlays/prod/memory.yaml"}
        assert "on cluster `staging`" in prs[staging.pull_request.branch]["body"]
        assert "on cluster `prod`" in prs[prod.pull_request.branch]["body"]
        assert all(p["state"] == "open" for p in prs.values())  # neither superseded the other

        main = checkout(run, tmp_path, "main")
        check_proven(run, tmp_path, staging, "overlays/staging", "overlays/prod", main)
        check_proven(run, tmp_path, prod, "overlays/prod", "overlays/staging", main)
        for cluster in ("staging", "prod"):
            assert run.fleet.worlds[cluster].rolled_out("web", "storefront")
