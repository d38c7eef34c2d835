"""The farm on a workload an Argo CD-like controller keeps equal to Git, with self-heal.

The image typo was pushed to Git and synced by an Application with automated sync and
self-heal (tests/scenarios/gitops/argocd-image-typo-storefront.yaml). The real farm,
through its real clients, pauses self-heal of that Application before writing the fix,
so the controller does not revert it while it is verified; the incident ends `fixed`
with one pull request; self-heal stays paused while the pull request is open (Git still
holds the typo), and once it is merged (PyGithub) the controller syncs the fix from Git,
self-heal is back on, and the workload stays healthy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kubernetes import client, config

from aifixer.sandbox import scenario as scenario_mod
from aifixer.sandbox.harness import FarmRun
from tests.integration.test_forge import github_client

pytestmark = [pytest.mark.integration, pytest.mark.scenario]

SCENARIO = Path(__file__).parents[1] / "scenarios" / "gitops" / "argocd-image-typo-storefront.yaml"
TYPO = "web/storefront:3.1.O"


def wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.mark.timeout(600)
def test_argocd_self_heal_is_paused_for_the_fix_and_restored_after_the_merge(tmp_path):
    sc = scenario_mod.load(SCENARIO)
    with FarmRun(
        sc, tmp_path / "run", speed=30, extra_env={"AIFIXER_PR_CHECK_INTERVAL_S": "2"}
    ) as run:
        states = run.wait(timeout=240)
        report = run.report(states)
        assert report["complete"], json.dumps(report, indent=2)
        (state,) = states
        assert state.outcome == "fixed", json.dumps(report, indent=2)
        assert [c.path for c in state.apply.changes] == sc.expect.changed
        fixed = state.apply.applied["spec"]["template"]["spec"]["containers"][0]["image"]
        assert fixed != TYPO
        pause = state.gitops_pause
        assert (pause.controller, pause.namespace, pause.name) == ("argocd", "argocd", sc.name)
        assert pause.previous is True and pause.restored_at is None

        world = run.world
        api = config.new_client_from_config(config_file=world.endpoints.kubeconfig)
        try:
            objects, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)

            def application() -> dict:
                return objects.get_namespaced_custom_object(
                    "argoproj.io", "v1alpha1", "argocd", "applications", sc.name
                )

            def image() -> str:
                dep = apps.read_namespaced_deployment("storefront", "web")
                return dep.spec.template.spec.containers[0].image

            # The pull request is open, Git still says 3.1.O: self-heal stays paused and
            # the verified fix stays live, well past the self-heal delay.
            assert application()["spec"]["syncPolicy"]["automated"]["selfHeal"] is False
            time.sleep(4 * sc.gitops.self_heal_seconds / run.speed + 1)
            assert image() == fixed
            assert application()["status"]["sync"]["status"] == "OutOfSync"

            prs = world.call(world.forge.prs)
            assert [p["head"] for p in prs] == [state.pull_request.branch]
            gh = github_client(
                world.endpoints.github_api.removesuffix("/api/v3"), world.endpoints.github_token
            )
            pr = gh.get_repo(sc.gitops.repo).get_pull(state.pull_request.number)
            merged = pr.merge()
            assert merged.merged

            # The merge is recorded, self-heal restored, and Git now holds the fix.
            wait_for(
                "self-heal restored",
                lambda: application()["spec"]["syncPolicy"]["automated"]["selfHeal"] is True,
            )
            wait_for(
                "the merge synced",
                lambda: (
                    (application().get("status") or {}).get("sync", {}).get("revision")
                    == merged.sha
                ),
            )
            wait_for("Synced", lambda: application()["status"]["sync"]["status"] == "Synced")
            assert image() == fixed
            wait_for("rolled out", lambda: world.rolled_out("web", "storefront"))
            time.sleep(4 * sc.gitops.self_heal_seconds / run.speed + 1)
            assert image() == fixed

            final = run.incidents()
            assert len(final) == 1  # nothing reopened, nothing done twice
            assert final[0].gitops_pause.restore == "restored"
            assert final[0].pull_request.state == "merged"
            assert len(world.call(world.forge.prs)) == 1
        finally:
            api.close()
