"""What a GitOps repository, or a workload's annotations, cannot make aifixer do.

Anyone who can push to the repository or deploy a workload writes these inputs, while
the farm holds the cluster token and the forge's secrets. Each test plants what an
attacker would, renders through the real kubectl kustomize and helm template, and
checks that nothing ran, nothing outside the checkout was read or written, and nothing
was fetched.
"""

from __future__ import annotations

from pathlib import Path

import git
import pytest

from aifixer.adapters.errors import PermanentError
from aifixer.adapters.forge import RELEASE_ANNOTATION, SOURCE_ANNOTATION, Forge
from aifixer.adapters.render import Renderer
from aifixer.manifests import apply_changes
from aifixer.models import FieldChange, Workload
from aifixer.sources import Layout, rendered_layouts
from tests.gitops_fixtures import CHART, HELM, KUBECTL, tool_settings, write
from tests.integration.test_adapter_forge import OOM, fixed_world, settings_for
from tests.integration.test_forge_gitops_layouts import commit, render, state_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WEB = Workload(cluster="app", namespace="shop", name="web")
C0 = "spec.template.spec.containers[0]"


def script_chart(marker: Path) -> dict[str, str]:
    """A chart whose render holds a shell line: piped into `sh`, it creates `marker`."""
    return {
        "Chart.yaml": "apiVersion: v2\nname: script\nversion: 0.1.0\n",
        "templates/script.yaml": f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: script
data:
  run.sh: |
    touch {marker}
""",
    }


def under(prefix: str, files: dict[str, str]) -> dict[str, str]:
    return {f"{prefix}/{path}": text for path, text in files.items()}


@pytest.fixture
def renderer() -> Renderer:
    return Renderer(tool_settings())


def forge() -> Forge:
    return Forge(tool_settings(github_repo="acme/gitops", github_token="not-used"))


# -- 1. nothing from the repository or an annotation is read as a tool's option -------


def test_a_release_name_that_is_an_option_never_reaches_helm(renderer, tmp_path):
    repo, marker = tmp_path / "repo", tmp_path / "ran"
    write(repo, {**CHART, **under("charts/web", script_chart(marker))})

    with pytest.raises(PermanentError, match="not a Helm release name"):
        renderer.render(
            repo, Layout("helm", "charts/web", release="--post-renderer=sh", namespace="shop")
        )
    with pytest.raises(PermanentError, match="not a namespace name"):
        renderer.render(
            repo, Layout("helm", "charts/web", release="web", namespace="--post-renderer=sh")
        )
    assert not marker.exists()


def test_scanned_directories_named_like_options_are_never_rendered(renderer, tmp_path):
    repo, marker = tmp_path / "repo", tmp_path / "ran"
    (tmp_path / "secret.txt").write_text("outside-the-checkout\n")
    write(
        repo,
        {
            # Built from the checkout's root with the load restrictor off, this would
            # read the file beside the checkout.
            "kustomization.yaml": "configMapGenerator:\n"
            "  - name: leak\n    files: [../secret.txt]\n",
            "--load-restrictor=LoadRestrictionsNone/kustomization.yaml": "resources: []\n",
            # `helm template web --post-renderer=sh` renders ./web through sh.
            **under("web", script_chart(marker)),
            **under("--post-renderer=sh", script_chart(marker)),
        },
    )

    layouts = rendered_layouts(repo, release="web", namespace="shop")

    assert all(not layout.path.startswith("-") for layout in layouts)
    renders = []
    for layout in [*layouts, Layout("kustomize", "--load-restrictor=LoadRestrictionsNone")]:
        try:
            renders.append(renderer.render(repo, layout))
        except PermanentError as exc:
            renders.append(exc.message)
    assert not any("outside-the-checkout" in text for text in renders)
    assert not marker.exists()


def test_a_configured_path_that_is_an_option_or_escapes_is_refused(renderer, tmp_path):
    repo, marker = tmp_path / "repo", tmp_path / "ran"
    write(repo, {**under("web", script_chart(marker)), **under("--post-renderer=sh", CHART)})
    (tmp_path / "other").mkdir()
    write(tmp_path / "other", CHART)

    for path in ("--post-renderer=sh", "../other/charts/web", str(tmp_path / "other/charts/web")):
        with pytest.raises(PermanentError, match="refused"):
            forge()._layout(repo, path, WEB, "web")
    with pytest.raises(PermanentError, match="refused"):
        renderer.render(repo, Layout("helm", "--post-renderer=sh", release="web", namespace="shop"))
    with pytest.raises(PermanentError, match="refused"):
        renderer.render(
            repo,
            Layout("helm", "web", values=("--post-renderer=sh",), release="web", namespace="shop"),
        )
    assert not marker.exists()


def test_a_hostile_release_annotation_renders_as_the_workload_name(make_world, tmp_path):
    _, world = fixed_world(make_world, OOM)
    marker = tmp_path / "ran"
    commit(world, {**CHART, **under("charts/web", script_chart(marker))})
    main = tmp_path / "main"
    git.Repo.clone_from(world.endpoints.gitops_clone_url, main)
    live = render([HELM, "template", "web", "charts/web", "--namespace", "shop"], main)
    memory = FieldChange(path=f"{C0}.resources.limits.memory", before="96Mi", after="160Mi")
    annotations = {SOURCE_ANNOTATION: "charts/web", RELEASE_ANNOTATION: "--post-renderer=sh"}

    forge = Forge(settings_for(world, kubectl_bin=KUBECTL, helm_bin=HELM))
    ref = forge.open_fix_pr(state_for(live, [memory], "fphostilerelease", annotations))

    assert not marker.exists()
    branch = tmp_path / "branch"
    git.Repo.clone_from(world.endpoints.gitops_clone_url, branch, branch=ref.branch)
    argv = [HELM, "template", "web", "charts/web", "--namespace", "shop"]
    assert render(argv, branch) == apply_changes(live, [memory])
