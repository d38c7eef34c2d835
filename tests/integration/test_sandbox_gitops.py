"""The sandbox's GitOps controllers, driven as a team would drive the real ones.

Applications and Kustomizations are created and patched through the `kubernetes`
client and kubectl; workloads are changed live through the API server as the product
does; Git is changed through the forge (commits, and PyGithub merging a pull request).
The controllers read Git over the forge's smart HTTP and apply through the API server.
Timings are in simulated seconds: the world runs at SPEED times wall time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from aifixer.adapters.kube import GitOpsOwner, Kube
from aifixer.settings import Settings
from aifixer_sandbox import gitops, scenario
from aifixer_sandbox.scenario import Node
from aifixer_sandbox.world import World
from tests.integration.test_forge import github_client

KUBECTL = shutil.which("kubectl")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed"),
]

SPEED = 5.0
SELF_HEAL = 3.0  # simulated seconds
OWNER, REPO = "acme", "gitops"

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: web
        image: {image}
"""
CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
data:
  greeting: hello
"""


@dataclass
class Env:
    world: World
    api: client.ApiClient
    kubeconfig: Path
    tmp: Path

    @property
    def objects(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    def commit(self, files: dict[str, str | None], message: str, branch: str = "main") -> str:
        return self.world.call(
            lambda: self.world.forge.commit(OWNER, REPO, files, message, branch=branch)
        )

    def branch_sha(self, branch: str = "main") -> str:
        return self.world.call(lambda: self.world.forge.repo(OWNER, REPO).git.branches())[branch]

    def clone_url(self) -> str:
        return f"{self.world.endpoints.git_base}/{OWNER}/{REPO}.git"

    def kubectl(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        home = self.tmp / "kubectl-home"
        home.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "HOME": str(home),
            "KUBECACHEDIR": str(home / "cache"),
            "KUBECONFIG": str(self.kubeconfig),
        }
        proc = subprocess.run(
            [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        if ok:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc


def _start(tmp: Path, controller: str, files: dict[str, str], **options: Any) -> Env:
    world = World(None, tmp / "state", speed=SPEED)
    world.start(load=False)
    world.call(lambda: _setup(world, files))
    world.call(lambda: world.start_gitops(controller, **options))
    ep = world.endpoints
    api = config.new_client_from_config(config_file=ep.kubeconfig)
    return Env(world, api, Path(ep.kubeconfig), tmp)


async def _setup(world: World, files: dict[str, str]) -> None:
    world.cluster.register_nodes([Node(name="node-1")])
    await world.forge.create_repo(OWNER, REPO, files, "Add the manifests")


@pytest.fixture
def env_factory(tmp_path) -> Iterator[Callable[..., Env]]:
    started: list[Env] = []

    def make(controller: str, files: dict[str, str], **options: Any) -> Env:
        e = _start(tmp_path, controller, files, **options)
        started.append(e)
        return e

    yield make
    for e in started:
        e.api.close()
        e.world.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def application(
    env: Env, name: str, path: str, *, self_heal: bool | None = True, prune: bool = True
) -> dict:
    spec: dict[str, Any] = {
        "project": "default",
        "source": {"repoURL": env.clone_url(), "path": path, "targetRevision": "main"},
        "destination": {"server": "https://kubernetes.default.svc", "namespace": "shop"},
        "syncPolicy": {"syncOptions": ["CreateNamespace=true"]},
    }
    if self_heal is not None:
        spec["syncPolicy"]["automated"] = {"selfHeal": self_heal, "prune": prune}
    return env.objects.create_namespaced_custom_object(
        "argoproj.io",
        "v1alpha1",
        "argocd",
        "applications",
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Application",
            "metadata": {"name": name},
            "spec": spec,
        },
    )


def app_status(env: Env, name: str) -> dict:
    obj = env.objects.get_namespaced_custom_object(
        "argoproj.io", "v1alpha1", "argocd", "applications", name
    )
    return obj.get("status") or {}


def image_of(env: Env, name: str, namespace: str = "shop") -> str | None:
    try:
        dep = env.apps.read_namespaced_deployment(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dep.spec.template.spec.containers[0].image


def set_image(env: Env, name: str, image: str, namespace: str = "shop") -> None:
    env.apps.patch_namespaced_deployment(
        name,
        namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}},
    )


PLAIN = {
    "apps/web/deployment.yaml": DEPLOYMENT.format(name="web", replicas=1, image="shop/web:1.0"),
    "apps/web/configmap.yaml": CONFIGMAP.format(name="web-config"),
    "README.md": "# gitops\n",
}


def test_argo_syncs_git_marks_objects_and_reports(env_factory):
    env = env_factory("argocd", PLAIN, self_heal_seconds=SELF_HEAL)
    application(env, "web", "apps/web")
    sha = env.branch_sha()
    wait_for("the Deployment", lambda: image_of(env, "web") == "shop/web:1.0")
    dep = env.apps.read_namespaced_deployment("web", "shop")
    assert dep.metadata.annotations[gitops.TRACKING_ANNOTATION] == "web:apps/Deployment:shop/web"
    assert gitops.ARGO_MANAGER in [m.manager for m in dep.metadata.managed_fields]
    cm = client.CoreV1Api(env.api).read_namespaced_config_map("web-config", "shop")
    assert cm.metadata.annotations[gitops.TRACKING_ANNOTATION] == "web:/ConfigMap:shop/web-config"

    status = wait_for(
        "Synced",
        lambda: (s := app_status(env, "web")).get("sync", {}).get("status") == "Synced" and s,
    )
    assert status["sync"]["revision"] == sha
    assert status["sourceType"] == "Directory"
    op = status["operationState"]
    assert op["phase"] == "Succeeded" and op["syncResult"]["revision"] == sha
    assert op["operation"]["initiatedBy"] == {"automated": True}
    assert {(r["kind"], r["name"]) for r in status["resources"]} == {
        ("Deployment", "web"),
        ("ConfigMap", "web-config"),
    }
    assert status["health"]["status"] in ("Healthy", "Progressing", "Degraded")

    rows = [
        line.split()
        for line in env.kubectl("get", "applications.argoproj.io", "-A").stdout.splitlines()
    ]
    assert rows[0] == ["NAMESPACE", "NAME", "SYNC", "STATUS", "HEALTH", "STATUS"]
    assert rows[1][:3] == ["argocd", "web", "Synced"]
    wide = env.kubectl("get", "app", "web", "-n", "argocd", "-o", "wide").stdout.splitlines()
    assert sha in wide[1].split()


def test_self_heal_reverts_drift_after_the_delay(env_factory):
    env = env_factory("argocd", PLAIN, self_heal_seconds=SELF_HEAL)
    application(env, "web", "apps/web")
    wait_for("the first sync", lambda: image_of(env, "web") == "shop/web:1.0")
    wait_for("Synced", lambda: app_status(env, "web").get("sync", {}).get("status") == "Synced")

    set_image(env, "web", "shop/web:live-fix")
    changed = time.monotonic()
    wait_for(
        "OutOfSync", lambda: app_status(env, "web").get("sync", {}).get("status") == "OutOfSync"
    )
    assert image_of(env, "web") == "shop/web:live-fix"  # still drifted: the delay runs
    wait_for("the revert", lambda: image_of(env, "web") == "shop/web:1.0", timeout=20)
    simulated = (time.monotonic() - changed) * SPEED
    assert simulated >= SELF_HEAL * 0.9
    assert simulated < SELF_HEAL + 10
    wait_for("Synced again", lambda: app_status(env, "web")["sync"]["status"] == "Synced")
    op = app_status(env, "web")["operationState"]
    assert op["phase"] == "Succeeded" and op["operation"]["initiatedBy"] == {"automated": True}


def test_without_self_heal_drift_stays(env_factory):
    env = env_factory("argocd", PLAIN, self_heal_seconds=SELF_HEAL)
    application(env, "web", "apps/web")
    wait_for("the first sync", lambda: image_of(env, "web") == "shop/web:1.0")
    # Switched off as an operator would.
    env.kubectl(
        "patch", "application", "web", "-n", "argocd", "--type", "merge",
        "-p", '{"spec":{"syncPolicy":{"automated":{"selfHeal":false}}}}',
    )  # fmt: skip
    set_image(env, "web", "shop/web:live-fix")
    wait_for("OutOfSync", lambda: app_status(env, "web")["sync"]["status"] == "OutOfSync")
    time.sleep(3 * SELF_HEAL / SPEED + 0.5)
    assert image_of(env, "web") == "shop/web:live-fix"
    assert app_status(env, "web")["sync"]["status"] == "OutOfSync"

    # No automated policy at all: a new commit is not synced either, until asked to.
    env.kubectl(
        "patch", "application", "web", "-n", "argocd", "--type", "json",
        "-p", '[{"op":"remove","path":"/spec/syncPolicy/automated"}]',
    )  # fmt: skip
    env.commit({"apps/web/configmap.yaml": CONFIGMAP.format(name="web-config2")}, "Rename")
    new = env.branch_sha()
    wait_for("the new revision seen", lambda: app_status(env, "web")["sync"]["revision"] == new)
    time.sleep(2 * SELF_HEAL / SPEED)
    core = client.CoreV1Api(env.api)
    assert "web-config2" not in [
        c.metadata.name for c in core.list_namespaced_config_map("shop").items
    ]
    env.kubectl(
        "patch", "application", "web", "-n", "argocd", "--type", "merge",
        "-p", '{"operation":{"sync":{"prune":true}}}',
    )  # fmt: skip
    wait_for("the manual sync", lambda: image_of(env, "web") == "shop/web:1.0")
    names = wait_for(
        "the prune",
        lambda: (
            "web-config"
            not in (n := [c.metadata.name for c in core.list_namespaced_config_map("shop").items])
            and n
        ),
    )
    assert "web-config2" in names
    op = app_status(env, "web")["operationState"]
    assert op["operation"]["initiatedBy"] == {"username": "admin"}


def test_new_commit_is_synced(env_factory):
    env = env_factory("argocd", PLAIN, self_heal_seconds=SELF_HEAL, poll_seconds=2.0)
    application(env, "web", "apps/web")
    wait_for("the first sync", lambda: image_of(env, "web") == "shop/web:1.0")
    env.commit(
        {
            "apps/web/deployment.yaml": DEPLOYMENT.format(
                name="web", replicas=2, image="shop/web:1.1"
            )
        },
        "Release 1.1",
    )
    sha = env.branch_sha()
    wait_for("the new commit synced", lambda: image_of(env, "web") == "shop/web:1.1")
    assert env.apps.read_namespaced_deployment("web", "shop").spec.replicas == 2
    wait_for("the revision", lambda: app_status(env, "web")["sync"]["revision"] == sha)


def test_kustomize_overlay_and_label_tracking(env_factory):
    files = {
        "base/deployment.yaml": DEPLOYMENT.format(name="api", replicas=1, image="shop/api:1.0"),
        "base/kustomization.yaml": "resources:\n- deployment.yaml\n",
        "overlays/prod/kustomization.yaml": (
            "resources:\n- ../../base\nimages:\n- name: shop/api\n  newTag: '2.0'\n"
        ),
    }
    env = env_factory("argocd", files, self_heal_seconds=SELF_HEAL, tracking="label")
    application(env, "api", "overlays/prod")
    wait_for("the kustomize render", lambda: image_of(env, "api") == "shop/api:2.0")
    dep = env.apps.read_namespaced_deployment("api", "shop")
    assert dep.metadata.labels[gitops.INSTANCE_LABEL] == "api"
    assert gitops.TRACKING_ANNOTATION not in (dep.metadata.annotations or {})
    assert wait_for("Kustomize", lambda: app_status(env, "api").get("sourceType")) == "Kustomize"
    set_image(env, "api", "shop/api:typo")
    wait_for("the revert", lambda: image_of(env, "api") == "shop/api:2.0", timeout=20)


def test_pygithub_merge_is_synced(env_factory):
    env = env_factory("argocd", PLAIN, self_heal_seconds=SELF_HEAL, poll_seconds=1.0)
    application(env, "web", "apps/web")
    wait_for("the first sync", lambda: image_of(env, "web") == "shop/web:1.0")
    git = env.world.forge.repo(OWNER, REPO).git
    main = env.branch_sha()
    env.world.call(lambda: git.create_ref("refs/heads/fix/web-image", main))
    env.commit(
        {
            "apps/web/deployment.yaml": DEPLOYMENT.format(
                name="web", replicas=1, image="shop/web:1.2"
            )
        },
        "Use 1.2",
        branch="fix/web-image",
    )
    gh = github_client(
        env.world.endpoints.github_api.removesuffix("/api/v3"), env.world.github_token
    )
    repo = gh.get_repo(f"{OWNER}/{REPO}")
    pr = repo.create_pull(title="Use 1.2", body="", head="fix/web-image", base="main")
    time.sleep(2 / SPEED)
    assert image_of(env, "web") == "shop/web:1.0"  # the branch alone is not deployed
    merged = pr.merge()
    assert merged.merged
    wait_for("the merge synced", lambda: image_of(env, "web") == "shop/web:1.2")
    wait_for("the revision", lambda: app_status(env, "web")["sync"]["revision"] == merged.sha)


# -- Flux-like ----------------------------------------------------------------------------------


def flux(env: Env, interval: str = "2s", **spec: Any) -> None:
    env.objects.create_namespaced_custom_object(
        "source.toolkit.fluxcd.io",
        "v1",
        "flux-system",
        "gitrepositories",
        {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": "gitops"},
            "spec": {"url": env.clone_url(), "ref": {"branch": "main"}, "interval": "1s"},
        },
    )
    env.objects.create_namespaced_custom_object(
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "flux-system",
        "kustomizations",
        {
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": {"name": "web"},
            "spec": {
                "interval": interval,
                "path": "./apps/web",
                "prune": True,
                "sourceRef": {"kind": "GitRepository", "name": "gitops"},
                "targetNamespace": "default",
                **spec,
            },
        },
    )


def ks_status(env: Env) -> dict:
    obj = env.objects.get_namespaced_custom_object(
        "kustomize.toolkit.fluxcd.io", "v1", "flux-system", "kustomizations", "web"
    )
    return obj.get("status") or {}


def test_flux_applies_corrects_drift_and_honours_suspend(env_factory):
    env = env_factory("flux", PLAIN)
    flux(env, interval="2s")
    sha = env.branch_sha()
    wait_for("the apply", lambda: image_of(env, "web", "default") == "shop/web:1.0")
    dep = env.apps.read_namespaced_deployment("web", "default")
    assert dep.metadata.labels[gitops.FLUX_NAME_LABEL] == "web"
    assert dep.metadata.labels[gitops.FLUX_NAMESPACE_LABEL] == "flux-system"
    status = wait_for("Ready", lambda: (s := ks_status(env)).get("lastAppliedRevision") and s)
    assert status["lastAppliedRevision"] == f"main@sha1:{sha}"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "ReconciliationSucceeded"
    assert ready["message"] == f"Applied revision: main@sha1:{sha}"
    rows = env.kubectl(
        "get", "kustomizations.kustomize.toolkit.fluxcd.io", "-A"
    ).stdout.splitlines()
    assert rows[0].split()[:4] == ["NAMESPACE", "NAME", "AGE", "READY"]
    assert rows[1].split()[1] == "web" and "True" in rows[1].split()

    # Drift is corrected at the next interval.
    set_image(env, "web", "shop/web:live-fix", "default")
    wait_for(
        "the correction", lambda: image_of(env, "web", "default") == "shop/web:1.0", timeout=20
    )

    # Suspended, nothing is reconciled: neither drift nor new commits.
    env.kubectl(
        "patch", "kustomization", "web", "-n", "flux-system", "--type", "merge",
        "-p", '{"spec":{"suspend":true}}',
    )  # fmt: skip
    time.sleep(0.5)
    set_image(env, "web", "shop/web:live-fix", "default")
    env.commit(
        {
            "apps/web/deployment.yaml": DEPLOYMENT.format(
                name="web", replicas=1, image="shop/web:2.0"
            )
        },
        "Release 2.0",
    )
    time.sleep(3 * 2 / SPEED + 1)
    assert image_of(env, "web", "default") == "shop/web:live-fix"
    assert ks_status(env)["lastAppliedRevision"] == f"main@sha1:{sha}"

    # Resumed, the new commit is applied.
    env.kubectl(
        "patch", "kustomization", "web", "-n", "flux-system", "--type", "merge",
        "-p", '{"spec":{"suspend":false}}',
    )  # fmt: skip
    wait_for("the resume", lambda: image_of(env, "web", "default") == "shop/web:2.0", timeout=20)
    new = env.branch_sha()
    wait_for("the revision", lambda: ks_status(env)["lastAppliedRevision"] == f"main@sha1:{new}")


def _versions(env: Env, group: str, version: str, ns: str, plural: str, until) -> list[dict]:
    """Every version of the namespace's objects of a kind, as a watch sees them, until `until`."""
    seen: list[dict] = []
    w = watch.Watch()
    for ev in w.stream(
        env.objects.list_namespaced_custom_object, group, version, ns, plural, timeout_seconds=30
    ):
        seen.append(ev["object"])
        if until(seen):
            w.stop()
    return seen


def test_a_pass_in_flight_is_visible_as_flux_records_it(env_factory):
    """Flux's `Reconciling` condition and Argo CD's Running operation bracket the pass that
    writes Git's version: the adapter reads them (`Kube.gitops_in_flight`) to wait for a
    pass already decided before its pause, which would put Git's version over a fix."""
    env = env_factory("flux", PLAIN)
    flux(env, interval="2s")
    kube = Kube(Settings(_env_file=None, kubeconfig=env.kubeconfig, state_dir=env.tmp))
    owner = GitOpsOwner("flux", "flux-system", "web")

    def reconciling(obj: dict) -> bool:
        return any(
            c["type"] == "Reconciling" and c["status"] == "True"
            for c in (obj.get("status") or {}).get("conditions") or []
        )

    flux_seen = _versions(
        env, "kustomize.toolkit.fluxcd.io", "v1", "flux-system", "kustomizations",
        lambda seen: any(reconciling(o) for o in seen)
        and (seen[-1].get("status") or {}).get("lastAppliedRevision")
        and not reconciling(seen[-1]),
    )  # fmt: skip
    first = next(i for i, o in enumerate(flux_seen) if reconciling(o))
    assert any(not reconciling(o) and o["status"].get("lastAppliedRevision")
               for o in flux_seen[first:])  # fmt: skip
    web = env.api.sanitize_for_serialization(env.apps.read_namespaced_deployment("web", "default"))
    wait_for("no pass in flight", lambda: kube.gitops_in_flight(owner, web) is None, timeout=10)


def test_a_sync_in_flight_is_visible_as_argo_cd_records_it(env_factory):
    argo = env_factory("argocd", PLAIN, self_heal_seconds=SELF_HEAL)
    application(argo, "web", "apps/web")

    def phases(seen: list[dict]) -> list[str]:
        return [
            ((o.get("status") or {}).get("operationState") or {}).get("phase", "") for o in seen
        ]

    argo_seen = _versions(
        argo, "argoproj.io", "v1alpha1", "argocd", "applications",
        lambda seen: "Succeeded" in phases(seen),
    )  # fmt: skip
    got = [p for p in phases(argo_seen) if p]
    assert got.index("Running") < got.index("Succeeded"), got
    running = next(o for o in argo_seen if phases([o]) == ["Running"])
    assert running["status"]["operationState"]["operation"]["initiatedBy"] == {"automated": True}
    argo_kube = Kube(Settings(_env_file=None, kubeconfig=argo.kubeconfig, state_dir=argo.tmp))
    web = argo.api.sanitize_for_serialization(argo.apps.read_namespaced_deployment("web", "shop"))
    assert argo_kube.gitops_in_flight(GitOpsOwner("argocd", "argocd", "web"), web) is None


# -- scenarios ----------------------------------------------------------------------------------


def test_bundled_argocd_scenario_is_synced_from_git_and_self_heals(tmp_path):
    (path,) = [
        p for p in scenario.bundled_gitops() if p.name == "argocd-image-typo-storefront.yaml"
    ]
    sc = scenario.load(path)
    assert sc.gitops.controller == "argocd"
    assert path not in scenario.bundled()  # not yet among the outcomes the farm must reach
    with World(sc, tmp_path / "state", speed=SPEED) as world:
        ep = world.start()
        api = config.new_client_from_config(config_file=ep.kubeconfig)
        env = Env(world, api, Path(ep.kubeconfig), tmp_path)
        try:
            app = env.objects.get_namespaced_custom_object(
                "argoproj.io", "v1alpha1", "argocd", "applications", sc.name
            )
            assert app["spec"]["source"]["path"] == "clusters/prod/storefront"
            assert app["spec"]["syncPolicy"]["automated"]["selfHeal"] is True
            # The bad change was only committed: the controller rolled it out.
            wait_for(
                "the change synced",
                lambda: image_of(env, "storefront", "web") == "web/storefront:3.1.O",
            )
            sha = env.branch_sha()
            wait_for("the revision", lambda: app_status(env, sc.name)["sync"]["revision"] == sha)
            # A fix made only live is reverted after the self-heal delay.
            env.apps.patch_namespaced_deployment(
                "storefront", "web",
                {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web/storefront:3.1.0"}]}}}},
            )  # fmt: skip
            changed = time.monotonic()
            wait_for(
                "the revert",
                lambda: image_of(env, "storefront", "web") == "web/storefront:3.1.O",
                timeout=20,
            )
            assert (time.monotonic() - changed) * SPEED >= sc.gitops.self_heal_seconds * 0.9
        finally:
            api.close()


def test_scenario_gitops_controller_is_validated(tmp_path):
    text = (
        (scenario.bundled_gitops()[0])
        .read_text()
        .replace("controller: argocd", "controller: spinnaker")
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(scenario.ScenarioError, match="gitops.controller"):
        scenario.load(bad)
