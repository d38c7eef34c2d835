"""The farm on workloads a GitOps controller keeps equal to Git, with self-heal.

Argo CD-like: the image typo was pushed to Git and synced by an Application with
automated sync and self-heal (sandbox/aifixer_sandbox/scenarios/gitops/argocd-image-typo-storefront.yaml).
The real farm, through its real clients, pauses self-heal of that Application before
writing the fix, so the controller does not revert it while it is verified; the
incident ends `fixed` with one pull request; self-heal stays paused while the pull
request is open (Git still holds the typo), and once it is merged (PyGithub) the
controller syncs the fix from Git, self-heal is back on, and the workload stays healthy.

Flux-like: a Kustomization applies the prod overlay of a kustomize repository (base,
staging, prod) at every interval; a release lowered the memory limit set by prod's
inline patch (sandbox/aifixer_sandbox/scenarios/gitops/flux-oom-overlay-report-api.yaml). The farm
suspends that Kustomization only (not its GitRepository, not another Kustomization),
the pull request edits prod's kustomization only, the branch rendered with the real
`kubectl kustomize` carries exactly the verified fix (staging's render unchanged), and
once merged the suspension is lifted, the controller applies the merge and the
workload stays healthy.

Argo CD-like again, with AIFIXER_GITOPS_PAUSE_SELF_HEAL=false: the farm may not pause the
Application, so it verifies the fix on a temporary copy of the Deployment (aifixer's own
labels, one replica, no Service selecting it) and removes the copy. Watches on the
cluster record every version of the Deployments and of the Application meanwhile: the
Application's self-heal never changed, aifixer never wrote the original Deployment, the
copy existed while the fix was verified and is gone at the end; once the pull request is
merged, the controller syncs the fix and the workload stays healthy.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch

from aifixer import copies, manifests
from aifixer.models import IncidentState
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun
from aifixer_sandbox.scenario import bundled_dir
from tests.integration.test_forge import github_client

pytestmark = [pytest.mark.integration, pytest.mark.scenario]

GITOPS = bundled_dir() / "gitops"
SCENARIO = GITOPS / "argocd-image-typo-storefront.yaml"
FLUX = GITOPS / "flux-oom-overlay-report-api.yaml"
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


def merged_and_synced(run: FarmRun, state: IncidentState, application) -> None:
    """Merge the incident's pull request as a reviewer would (PyGithub), then wait for the
    Argo CD-like controller to sync the merge commit, the workload to roll out, and the
    self-heal delay to pass a few times over."""
    world, sc = run.world, run.scenario
    gh = github_client(
        world.endpoints.github_api.removesuffix("/api/v3"), world.endpoints.github_token
    )
    merged = gh.get_repo(sc.gitops.repo).get_pull(state.pull_request.number).merge()
    assert merged.merged
    wait_for(
        "the merge synced",
        lambda: (application().get("status") or {}).get("sync", {}).get("revision") == merged.sha,
    )
    wait_for("Synced", lambda: application()["status"]["sync"]["status"] == "Synced")
    w = state.incident.workload
    wait_for("rolled out", lambda: world.rolled_out(w.namespace, w.name))
    time.sleep(4 * sc.gitops.self_heal_seconds / run.speed + 1)


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

            # Merged: Git now holds the fix, the controller syncs it, self-heal is restored.
            merged_and_synced(run, state, application)
            wait_for(
                "self-heal restored",
                lambda: application()["spec"]["syncPolicy"]["automated"]["selfHeal"] is True,
            )
            assert image() == fixed

            final = run.incidents()
            # Nothing reopened, nothing done twice.
            assert len(final) == 1, json.dumps(run.report(final), indent=2)
            assert final[0].gitops_pause.restore == "restored"
            assert final[0].pull_request.state == "merged"
            assert len(world.call(world.forge.prs)) == 1
        finally:
            api.close()


def kustomize(checkout: Path, overlay: str) -> dict:
    """The Deployment `kubectl kustomize` renders from `overlay` of the checkout."""
    out = subprocess.run(
        ["kubectl", "kustomize", "--", str(checkout / overlay)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    (dep,) = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"]
    return dep


def clone(url: str, where: Path, branch: str) -> Path:
    subprocess.run(["git", "clone", "-q", "-b", branch, url, str(where)], check=True, timeout=60)
    return where


@pytest.mark.timeout(600)
def test_flux_kustomization_is_suspended_for_the_fix_and_resumed_after_the_merge(tmp_path):
    sc = scenario_mod.load(FLUX)
    memory = "spec.template.spec.containers[0].resources.limits.memory"
    with FarmRun(
        sc, tmp_path / "run", speed=30, extra_env={"AIFIXER_PR_CHECK_INTERVAL_S": "2"}
    ) as run:
        world = run.world
        states = run.wait(timeout=240)
        report = run.report(states)
        assert report["complete"], json.dumps(report, indent=2)
        (state,) = states
        assert state.outcome == "fixed", json.dumps(report, indent=2)
        assert [c.path for c in state.apply.changes] == [memory]
        fixed = manifests.get_path(state.apply.applied, memory)
        assert fixed != "64Mi"
        pause = state.gitops_pause
        assert (pause.controller, pause.namespace, pause.name) == ("flux", "flux-system", sc.name)
        assert not pause.previous and pause.restored_at is None

        api = config.new_client_from_config(config_file=world.endpoints.kubeconfig)
        try:
            objects, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)

            def kustomization() -> dict:
                return objects.get_namespaced_custom_object(
                    "kustomize.toolkit.fluxcd.io", "v1", "flux-system", "kustomizations", sc.name
                )

            def source() -> dict:
                return objects.get_namespaced_custom_object(
                    "source.toolkit.fluxcd.io", "v1", "flux-system", "gitrepositories", sc.name
                )

            def live() -> dict:
                dep = apps.read_namespaced_deployment("report-api", "shop")
                return api.sanitize_for_serialization(dep)

            # The pull request is open and Git still says 64Mi: the Kustomization (only
            # it: its source keeps being fetched) stays suspended, and the verified fix
            # stays live over several of its intervals.
            assert kustomization()["spec"]["suspend"] is True
            assert not source()["spec"].get("suspend")
            time.sleep(3 * sc.gitops.interval_seconds / run.speed + 1)
            assert manifests.get_path(live(), memory) == fixed

            # The pull request edits prod's kustomization only, and its branch renders,
            # with the real kustomize, the Deployment now running: the verified value on
            # the changed field, nothing else moved; staging renders as on main.
            (view,) = world.call(world.forge.prs)
            files = [ln[6:] for ln in view["diff"].splitlines() if ln.startswith("+++ b/")]
            assert files == ["overlays/prod/kustomization.yaml"]
            url = world.endpoints.gitops_clone_url
            main = clone(url, tmp_path / "main", "main")
            branch = clone(url, tmp_path / "branch", state.pull_request.branch)
            before, after = kustomize(main, "overlays/prod"), kustomize(branch, "overlays/prod")
            assert manifests.get_path(before, memory) == "64Mi"
            assert manifests.get_path(after, memory) == fixed
            assert {c.path for c in manifests.diff(before, after)} == {memory}
            assert kustomize(branch, "overlays/staging") == kustomize(main, "overlays/staging")
            assert "kubectl kustomize overlays/prod" in view["body"]

            gh = github_client(
                world.endpoints.github_api.removesuffix("/api/v3"), world.endpoints.github_token
            )
            # Every version of the Deployment from the merge on: the suspension is lifted
            # only once the source has fetched the merge commit, so the Kustomization
            # never applies the revision it fetched before (Git's 64Mi) over the fix.
            after_merge = Recorded(str(world.endpoints.kubeconfig), "deployments", "shop")
            merged = gh.get_repo(sc.gitops.repo).get_pull(state.pull_request.number).merge()
            assert merged.merged

            wait_for("suspension lifted", lambda: not kustomization()["spec"].get("suspend"))
            artifact = source()["status"]["artifact"]["revision"]
            assert merged.sha in artifact, artifact
            wait_for(
                "the merge applied",
                lambda: (
                    (kustomization().get("status") or {}).get("lastAppliedRevision")
                    == f"main@sha1:{merged.sha}"
                ),
            )
            assert manifests.get_path(live(), memory) == fixed
            wait_for("rolled out", lambda: world.rolled_out("shop", "report-api"))
            time.sleep(3 * sc.gitops.interval_seconds / run.speed + 1)
            assert manifests.get_path(live(), memory) == fixed
            assert world.rolled_out("shop", "report-api")

            after_merge.stop()
            seen = [manifests.get_path(o, memory) for _, _, o in after_merge.of("report-api")]
            assert set(seen) <= {fixed}, seen

            final = run.incidents()
            # Nothing reopened, nothing done twice.
            assert len(final) == 1, json.dumps(run.report(final), indent=2)
            assert final[0].gitops_pause.restore == "restored"
            assert final[0].pull_request.state == "merged"
            assert final[0].pull_request.merge_commit == merged.sha
        finally:
            api.close()


def helm_template(checkout: Path, release: str, chart: str, namespace: str) -> dict:
    """The Deployment `helm template` renders from `chart` of the checkout."""
    out = subprocess.run(
        ["helm", "template", release, str(checkout / chart), "--namespace", namespace],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    (dep,) = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"]
    return dep


@pytest.mark.timeout(600)
def test_argocd_helm_chart_gets_its_values_edited_and_the_merge_synced(tmp_path):
    """The Application renders a chart (sandbox/aifixer_sandbox/scenarios/gitops/argocd-helm-image-typo-storefront.yaml):
    the pull request edits the chart's values only, `helm template` of the branch gives
    the Deployment running fixed, and the merge is synced with self-heal back on."""
    sc = scenario_mod.load(GITOPS / "argocd-helm-image-typo-storefront.yaml")
    image = "spec.template.spec.containers[0].image"
    with FarmRun(
        sc, tmp_path / "run", speed=30, extra_env={"AIFIXER_PR_CHECK_INTERVAL_S": "2"}
    ) as run:
        world = run.world
        states = run.wait(timeout=240)
        report = run.report(states)
        assert report["complete"], json.dumps(report, indent=2)
        (state,) = states
        assert state.outcome == "fixed", json.dumps(report, indent=2)
        assert [c.path for c in state.apply.changes] == [image]
        fixed = manifests.get_path(state.apply.applied, image)
        assert fixed != TYPO
        pause = state.gitops_pause
        assert (pause.controller, pause.name, pause.previous) == ("argocd", sc.name, True)

        api = config.new_client_from_config(config_file=world.endpoints.kubeconfig)
        try:
            objects, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)

            def application() -> dict:
                return objects.get_namespaced_custom_object(
                    "argoproj.io", "v1alpha1", "argocd", "applications", sc.name
                )

            def live() -> dict:
                dep = apps.read_namespaced_deployment("storefront", "web")
                return api.sanitize_for_serialization(dep)

            assert application()["spec"]["syncPolicy"]["automated"]["selfHeal"] is False
            time.sleep(4 * sc.gitops.self_heal_seconds / run.speed + 1)
            assert manifests.get_path(live(), image) == fixed

            (view,) = world.call(world.forge.prs)
            files = [ln[6:] for ln in view["diff"].splitlines() if ln.startswith("+++ b/")]
            assert files == ["charts/storefront/values.yaml"]
            assert "# bumped by the release job" in view["diff"]
            url = world.endpoints.gitops_clone_url
            main = clone(url, tmp_path / "main", "main")
            branch = clone(url, tmp_path / "branch", state.pull_request.branch)
            args = (sc.name, "charts/storefront", "web")
            before, after = helm_template(main, *args), helm_template(branch, *args)
            assert manifests.get_path(before, image) == TYPO
            assert after == manifests.apply_changes(before, state.apply.changes)
            running = live()
            assert manifests.get_path(running, image) == manifests.get_path(after, image)
            assert f"helm template {sc.name} charts/storefront --namespace web" in view["body"]

            merged_and_synced(run, state, application)
            wait_for(
                "self-heal restored",
                lambda: application()["spec"]["syncPolicy"]["automated"]["selfHeal"] is True,
            )
            assert manifests.get_path(live(), image) == fixed
            final = run.incidents()
            assert len(final) == 1, json.dumps(run.report(final), indent=2)
            assert final[0].gitops_pause.restore == "restored"
            assert final[0].pull_request.state == "merged"
        finally:
            api.close()


class Recorded:
    """Every version of the objects one list returns, watched from a thread from the
    moment it starts: (time received, event type, the object as the API server sent it).
    """

    def __init__(self, kubeconfig: str, what: str, namespace: str) -> None:
        self.api = config.new_client_from_config(config_file=kubeconfig)
        if what == "deployments":
            self.args: tuple[Any, ...] = (client.AppsV1Api(self.api).list_namespaced_deployment,
                                          namespace)  # fmt: skip
        else:
            self.args = (client.CustomObjectsApi(self.api).list_namespaced_custom_object,
                         "argoproj.io", "v1alpha1", namespace, "applications")  # fmt: skip
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._stop = threading.Event()
        listed = self.args[0](*self.args[1:], _preload_content=False)
        self._rv = json.loads(listed.data)["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            for ev in watch.Watch().stream(
                *self.args, resource_version=self._rv, timeout_seconds=1
            ):
                obj = ev["raw_object"]
                self.events.append((time.time(), ev["type"], obj))
                self._rv = obj["metadata"]["resourceVersion"]

    def of(self, name: str) -> list[tuple[float, str, dict[str, Any]]]:
        return [e for e in self.events if e[2]["metadata"]["name"] == name]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.api.close()


def _image(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def _managers(obj: dict[str, Any]) -> set[str]:
    return {m.get("manager") for m in obj["metadata"].get("managedFields") or []}


@pytest.mark.timeout(600)
def test_argocd_not_to_be_paused_has_the_fix_verified_on_a_temporary_copy(tmp_path):
    sc = scenario_mod.load(SCENARIO)
    watched: list[Recorded] = []

    def watch_the_cluster(run: FarmRun) -> None:
        kubeconfig = str(run.world.endpoints.kubeconfig)
        watched.append(Recorded(kubeconfig, "deployments", "web"))
        watched.append(Recorded(kubeconfig, "applications", "argocd"))

    env = {"AIFIXER_GITOPS_PAUSE_SELF_HEAL": "false", "AIFIXER_PR_CHECK_INTERVAL_S": "2"}
    with FarmRun(
        sc, tmp_path / "run", speed=30, extra_env=env, before_farm=watch_the_cluster
    ) as run:
        world = run.world
        api = config.new_client_from_config(config_file=world.endpoints.kubeconfig)
        try:
            states = run.wait(timeout=240)
            report = run.report(states)
            assert report["complete"], json.dumps(report, indent=2)
            (state,) = states
            assert state.outcome == "fixed", json.dumps(report, indent=2)
            assert [c.path for c in state.apply.changes] == sc.expect.changed
            fixed = _image(state.apply.applied)
            assert fixed != TYPO
            assert state.gitops_pause is None
            name = copies.name("storefront", state.incident.id)
            assert (state.verify_copy.name, state.verify_copy.removal) == (name, "deleted")
            assert "temporary copy" in state.verification.reason
            deployments, applications = watched
            objects, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
            core = client.CoreV1Api(api)

            def application() -> dict:
                return objects.get_namespaced_custom_object(
                    "argoproj.io", "v1alpha1", "argocd", "applications", sc.name
                )

            def image() -> str:
                return _image(api.sanitize_for_serialization(
                    apps.read_namespaced_deployment("storefront", "web")
                ))  # fmt: skip

            # The copy: created once, with the fix and aifixer's labels only, available
            # while the fix was verified, then deleted; no Service selected its pods.
            seen = deployments.of(name)
            assert [kind for _, kind, _ in seen].count("ADDED") == 1
            (created_at, kind, created), deleted = seen[0], seen[-1]
            assert (kind, deleted[1]) == ("ADDED", "DELETED")
            assert _image(created) == fixed
            assert "aifixer" in _managers(created)  # so a write of aifixer's would show
            ours = copies.labels(state.incident.id)
            assert created["metadata"]["labels"] == ours
            assert created["spec"]["template"]["metadata"]["labels"] == ours
            assert created["spec"]["selector"] == {"matchLabels": ours}
            assert created["spec"]["replicas"] == 1
            assert "argocd.argoproj.io/tracking-id" not in created["metadata"].get(
                "annotations", {}
            )
            assert any((o.get("status") or {}).get("availableReplicas") == 1 for _, _, o in seen)
            verdict = state.verification.checked_at.timestamp()
            assert created_at <= verdict <= deleted[0] + 1.0
            for svc in core.list_namespaced_service("web").items:
                selector = svc.spec.selector or {}
                assert not selector or any(ours.get(k) != v for k, v in selector.items())
            assert not apps.list_namespaced_deployment(
                "web", label_selector=copies.COPY_LABEL
            ).items

            # The original: never written by aifixer, still Git's broken version while the
            # pull request is open; the Application's self-heal never changed.
            original = deployments.of("storefront")
            assert original, "the watch saw the Deployment"
            assert all("aifixer" not in _managers(o) for _, _, o in original)
            images = [_image(o) for _, _, o in original]
            assert TYPO in images  # Git's broken version, synced by the controller...
            assert set(images[images.index(TYPO) :]) == {TYPO}  # ...and nothing else since
            assert image() == TYPO
            healing = [o["spec"]["syncPolicy"]["automated"].get("selfHeal")
                       for _, _, o in applications.of(sc.name)]  # fmt: skip
            assert all(h is True for h in healing)
            assert all("aifixer" not in _managers(o) for _, _, o in applications.of(sc.name))
            assert application()["spec"]["syncPolicy"]["automated"]["selfHeal"] is True
            assert "aifixer" not in _managers(application())

            # The pull request says the fix was verified on a copy, not live.
            (view,) = world.call(world.forge.prs)
            assert view["head"] == state.pull_request.branch
            assert "verified this fix on a temporary copy" in view["body"]
            assert "The fix is **not live**" in view["body"]

            merged_and_synced(run, state, application)
            assert image() == fixed
            assert world.rolled_out("web", "storefront")
            wait_for("the merge recorded",
                     lambda: run.incidents()[0].pull_request.state == "merged")  # fmt: skip
            final = run.incidents()
            # Nothing reopened, nothing done twice.
            assert len(final) == 1, json.dumps(run.report(final), indent=2)
            assert len(world.call(world.forge.prs)) == 1
            assert all("aifixer" not in _managers(o) for _, _, o in deployments.of("storefront"))
        finally:
            for recorded in watched:
                recorded.stop()
            api.close()
