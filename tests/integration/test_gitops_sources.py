"""aifixer.sources with the real kubectl kustomize and helm template, on fixture repositories.

Each test changes the fields a verified fix changed, then checks what a reviewer would:
which files were edited (and which not), that comments stayed, and, by rendering the
edited tree again with the real tool, that the Deployment carries exactly the fix.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from aifixer.adapters.render import Renderer
from aifixer.manifests import apply_changes, get_path
from aifixer.models import FieldChange, Workload
from aifixer.sources import Layout, Unproven, change_source, layout_of, rendered_layouts
from tests.gitops_fixtures import CHART, KUSTOMIZE, tool_settings, write

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WEB = Workload(cluster="app", namespace="shop", name="web")
C0 = "spec.template.spec.containers[0]"
C1 = "spec.template.spec.containers[1]"


@pytest.fixture
def renderer() -> Renderer:
    return Renderer(tool_settings())


def deployment(renderer: Renderer, root: Path, layout: Layout) -> dict:
    docs = YAML(typ="safe", pure=True).load_all(renderer.render(root, layout))
    (dep,) = [d for d in docs if d and d["kind"] == "Deployment"]
    return dep


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def prove(renderer: Renderer, root: Path, layout: Layout, changes: list[FieldChange]):
    before_files = snapshot(root)
    before = deployment(renderer, root, layout)
    change = change_source(root, layout, WEB, changes, lambda lay: renderer.render(root, lay))
    after = deployment(renderer, root, layout)
    # The real render of the edited tree: exactly the fix, nothing else.
    assert after == apply_changes(before, changes)
    edited = {p for p, text in snapshot(root).items() if before_files[p] != text}
    assert edited == {e.path for e in change.edits}
    return change


@pytest.fixture
def kustomize_repo(tmp_path: Path) -> Path:
    write(tmp_path, KUSTOMIZE)
    return tmp_path


def test_an_image_set_by_the_overlay_is_edited_in_the_overlay_only(renderer, kustomize_repo):
    layout = layout_of(kustomize_repo, "overlays/prod")
    assert layout == Layout("kustomize", "overlays/prod")
    fix = FieldChange(
        path=f"{C0}.image", before="ghcr.io/acme/web:1.5.0-bad", after="ghcr.io/acme/web:1.4.2"
    )

    change = prove(renderer, kustomize_repo, layout, [fix])

    (edit,) = change.edits
    assert edit.path == "overlays/prod/kustomization.yaml"
    assert '    newTag: "1.4.2"' in edit.after and "# the release to run" in edit.after
    assert "# Production: pinned image" in edit.after
    removed = [ln for ln in edit.diff.splitlines() if ln.startswith("-") and "---" not in ln]
    assert removed == ['-    newTag: "1.5.0-bad"   # the release to run']
    staging = deployment(renderer, kustomize_repo, Layout("kustomize", "overlays/staging"))
    assert staging["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.4.2")
    assert (kustomize_repo / "base/deployment.yaml").read_text() == KUSTOMIZE[
        "base/deployment.yaml"
    ]
    (field,) = change.proof.fields
    assert (field.rendered_before, field.rendered_after) == (fix.before, fix.after)
    assert field.source.startswith("overlays/prod/kustomization.yaml: images[0].newTag")
    assert "kubectl kustomize overlays/prod" in change.proof.markdown()


def test_a_digest_and_a_new_name_go_to_the_images_entry(renderer, kustomize_repo):
    digest = "sha256:" + "a" * 64
    fix = FieldChange(
        path=f"{C0}.image", before="ghcr.io/acme/web:1.5.0-bad", after=f"ghcr.io/acme/shop@{digest}"
    )
    change = prove(renderer, kustomize_repo, Layout("kustomize", "overlays/prod"), [fix])
    (edit,) = change.edits
    assert edit.path == "overlays/prod/kustomization.yaml"
    assert f"digest: {digest}" in edit.after and "newName: ghcr.io/acme/shop" in edit.after
    assert "newTag" not in edit.after


def test_memory_set_by_an_overlay_patch_is_edited_in_the_patch_file(renderer, kustomize_repo):
    fix = FieldChange(path=f"{C0}.resources.limits.memory", before="96Mi", after="160Mi")
    change = prove(renderer, kustomize_repo, Layout("kustomize", "overlays/prod"), [fix])
    (edit,) = change.edits
    assert edit.path == "overlays/prod/memory.yaml"
    assert re.search(r"\n              memory: 160Mi +# tuned down in March\n", edit.after)


def test_replicas_inline_json6902_patch_and_base_fields_each_go_where_they_come_from(
    renderer, kustomize_repo
):
    changes = [
        FieldChange(path="spec.replicas", before=3, after=4),
        FieldChange(path=f"{C0}.readinessProbe.httpGet.path", before="/readyz", after="/ready2"),
        FieldChange(path=f"{C0}.livenessProbe.httpGet.path", before="/healthz", after="/livez"),
    ]
    change = prove(renderer, kustomize_repo, Layout("kustomize", "overlays/prod"), changes)

    by_path = {e.path: e for e in change.edits}
    assert set(by_path) == {"overlays/prod/kustomization.yaml", "base/deployment.yaml"}
    k = by_path["overlays/prod/kustomization.yaml"].after
    assert "    count: 4" in k and "        value: /ready2\n" in k
    assert "    patch: |-\n" in k  # the inline patch stays a literal block
    base = by_path["base/deployment.yaml"].after
    assert re.search(r"path: /livez +# the base's probe: no overlay changes it", base)
    sources = {f.path: f.source for f in change.proof.fields}
    assert sources[f"{C0}.livenessProbe.httpGet.path"].startswith("base/deployment.yaml")


def test_a_field_the_overlay_overrides_is_never_edited_in_the_base(renderer, kustomize_repo):
    """Editing base's 128Mi renders nothing new in prod: the patch file is edited instead."""
    fix = FieldChange(path=f"{C0}.resources.limits.memory", before="96Mi", after="128Mi")
    change = prove(renderer, kustomize_repo, Layout("kustomize", "overlays/prod"), [fix])
    assert [e.path for e in change.edits] == ["overlays/prod/memory.yaml"]


@pytest.fixture
def chart_repo(tmp_path: Path) -> Path:
    write(tmp_path, CHART)
    return tmp_path


def helm_layout(root: Path) -> Layout:
    return layout_of(root, "charts/web", release="web", namespace="shop")


def test_helm_values_set_image_resources_and_probes_comments_kept(renderer, chart_repo):
    layout = helm_layout(chart_repo)
    assert layout.kind == "helm"
    good = "ghcr.io/acme/web:1.4.2"
    changes = [
        FieldChange(path=f"{C0}.image", before="ghcr.io/acme/web:1.5.0-bad", after=good),
        FieldChange(path=f"{C1}.image", before="ghcr.io/acme/web:1.5.0-bad", after=good),
        FieldChange(path=f"{C0}.resources.limits.memory", before="96Mi", after="160Mi"),
        FieldChange(path=f"{C0}.livenessProbe.httpGet.path", before="/healthz", after="/livez"),
    ]
    change = prove(renderer, chart_repo, layout, changes)

    (edit,) = change.edits
    assert edit.path == "charts/web/values.yaml"
    text = edit.after
    assert re.search(r'\n  tag: "1.4.2" +# bumped by the release job\n', text)
    assert re.search(r"\n    memory: 160Mi +# the working set is ~110Mi\n", text)
    assert "    memory: 64Mi\n" in text  # the request, equal before, untouched
    assert "    path: /livez\n" in text
    comments = [ln.partition("#")[2] for ln in CHART["charts/web/values.yaml"].splitlines()]
    assert comments == [ln.partition("#")[2] for ln in text.splitlines()]
    assert "helm template web charts/web --namespace shop" in change.proof.markdown()


def test_a_value_computed_from_two_values_is_unproven_and_files_are_restored(renderer, chart_repo):
    before = snapshot(chart_repo)
    fix = FieldChange(path=f"{C1}.resources.limits.memory", before="128Mi", after="192Mi")
    with pytest.raises(Unproven) as err:
        change_source(
            chart_repo,
            helm_layout(chart_repo),
            WEB,
            [fix],
            lambda lay: renderer.render(chart_repo, lay),
        )
    assert snapshot(chart_repo) == before
    (hand,) = err.value.hand_edits
    assert hand.startswith(f"{C1}.resources.limits.memory: renders 128Mi, must render 192Mi")
    assert "charts/web/templates/deployment.yaml" in hand
    assert "helm template web charts/web" in err.value.explanation


def test_a_kustomize_field_set_twice_at_once_is_unproven(renderer, kustomize_repo):
    """The Service's targetPort and the container port move together only by hand."""
    fix = FieldChange(path=f"{C0}.ports[0].containerPort", before=8080, after=9090)
    root = kustomize_repo
    # A patch that derives the port from a second object cannot be edited for one field:
    # the base's port edit alone is provable, so first make it unprovable: the Service
    # is patched to follow the container port via a replacement.
    (root / "overlays/prod/kustomization.yaml").write_text(
        KUSTOMIZE["overlays/prod/kustomization.yaml"]
        + """replacements:
  - source: {kind: Deployment, name: web, fieldPath: spec.template.spec.containers.0.ports.0.containerPort}
    targets:
      - select: {kind: Service, name: web}
        fieldPaths: [spec.ports.0.targetPort]
"""
    )
    before = snapshot(root)
    with pytest.raises(Unproven) as err:
        change_source(
            root,
            Layout("kustomize", "overlays/prod"),
            WEB,
            [fix],
            lambda lay: renderer.render(root, lay),
        )
    assert snapshot(root) == before
    assert err.value.hand_edits[0].startswith(f"{C0}.ports[0].containerPort: renders 8080")
    assert (
        get_path(
            deployment(renderer, root, Layout("kustomize", "overlays/prod")),
            f"{C0}.ports[0].containerPort",
        )
        == 8080
    )


def test_the_tools_are_found_through_a_relative_path_entry(kustomize_repo, monkeypatch, tmp_path):
    """`PATH=.venv/tools/bin:...`: the render runs in the checkout, the tool still found."""
    from aifixer.settings import Settings
    from tests.gitops_fixtures import KUBECTL

    tools = Path(KUBECTL).resolve().parent
    monkeypatch.chdir(tools.parent)
    monkeypatch.setenv("PATH", f"{tools.name}:/usr/bin:/bin")
    renderer = Renderer(Settings(_env_file=None, kubectl_bin="kubectl", helm_bin="helm"))
    dep = deployment(renderer, kustomize_repo, layout_of(kustomize_repo, "overlays/prod"))
    assert dep["metadata"]["name"] == "web"


def test_a_base_edit_shows_what_each_sibling_overlay_renders(renderer, kustomize_repo):
    """Staging takes its memory and liveness path from the base; prod patches its memory.

    Fixing staging's memory edits the base, and prod (its own patch wins) renders the
    same; fixing staging's liveness path edits the base, and prod, which takes it from
    the base too, gets the same fix on that field only. The proof says so, and real
    renders of prod before and after agree.
    """
    root = kustomize_repo
    staging = Layout("kustomize", "overlays/staging")
    prod = Layout("kustomize", "overlays/prod")
    staging_web = Workload(cluster="staging", namespace="shop-staging", name="web")

    def fix(changes: list[FieldChange]):
        prod_before = deployment(renderer, root, prod)
        change = change_source(
            root, staging, staging_web, changes, lambda lay: renderer.render(root, lay)
        )
        return change, prod_before, deployment(renderer, root, prod)

    memory = FieldChange(path=f"{C0}.resources.limits.memory", before="128Mi", after="160Mi")
    change, prod_before, prod_after = fix([memory])
    assert [e.path for e in change.edits] == ["base/deployment.yaml"]
    (sibling,) = change.proof.siblings
    assert (sibling.command, sibling.fields) == ("kubectl kustomize overlays/prod", ())
    assert prod_after == prod_before
    assert "`kubectl kustomize overlays/prod`: renders the same." in change.proof.markdown()

    probe = FieldChange(path=f"{C0}.livenessProbe.httpGet.path", before="/healthz", after="/livez")
    change, prod_before, prod_after = fix([probe])
    assert [e.path for e in change.edits] == ["base/deployment.yaml"]
    (sibling,) = change.proof.siblings
    assert sibling.fields == ((probe.path, "/healthz", "/livez"),)
    assert prod_after == apply_changes(prod_before, [probe])
    assert "the same fix reaches it, on the same fields only" in change.proof.markdown()


def test_a_base_edit_that_moves_another_field_of_a_sibling_is_unproven(renderer, kustomize_repo):
    """Prod's readiness probe follows the liveness path through a replacement: a base
    edit of the liveness path that staging needs would move prod's readiness path too.
    That is not the verified fix anywhere: nothing is edited, and the hand edit says so."""
    root = kustomize_repo
    (root / "overlays/prod/kustomization.yaml").write_text(
        KUSTOMIZE["overlays/prod/kustomization.yaml"]
        + """replacements:
  - source: {kind: Deployment, name: web, fieldPath: spec.template.spec.containers.0.livenessProbe.httpGet.path}
    targets:
      - select: {kind: Deployment, name: web}
        fieldPaths: [spec.template.spec.containers.0.readinessProbe.httpGet.path]
"""
    )
    before = snapshot(root)
    prod_before = deployment(renderer, root, Layout("kustomize", "overlays/prod"))
    probe = FieldChange(path=f"{C0}.livenessProbe.httpGet.path", before="/healthz", after="/livez")
    with pytest.raises(Unproven) as err:
        change_source(
            root,
            Layout("kustomize", "overlays/staging"),
            Workload(cluster="staging", namespace="shop-staging", name="web"),
            [probe],
            lambda lay: renderer.render(root, lay),
        )
    assert snapshot(root) == before
    assert "kubectl kustomize overlays/prod" in err.value.explanation
    assert "readinessProbe.httpGet.path" in err.value.explanation
    assert err.value.hand_edits == [
        f"{probe.path}: renders /healthz, must render /livez (in this overlay only)"
    ]
    assert deployment(renderer, root, Layout("kustomize", "overlays/prod")) == prod_before


def test_charts_kept_in_a_charts_folder_are_found_and_their_dependencies_are_not(tmp_path):
    """`charts/web` is a repository's own chart (many keep theirs in charts/); a chart
    vendored in web's own charts/ directory is a dependency its parent renders."""
    write(tmp_path, CHART)
    write(
        tmp_path,
        {"charts/web/charts/cache/Chart.yaml": "apiVersion: v2\nname: cache\nversion: 1.0.0\n"},
    )
    write(
        tmp_path, {"platform/charts/api/Chart.yaml": "apiVersion: v2\nname: api\nversion: 0.1.0\n"}
    )
    layouts = rendered_layouts(tmp_path, release="web", namespace="shop")
    assert [(lay.kind, lay.path) for lay in layouts] == [
        ("helm", "charts/web"),
        ("helm", "platform/charts/api"),
    ]
