"""The forge adapter on kustomize and Helm repositories, against the GitHub stand-in.

The pull request must edit where the field comes from (the prod overlay's images
entry, the chart's values), and the pushed branch, cloned and rendered again here with
the real kubectl kustomize / helm template, must carry exactly the verified fix.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import git
import pytest
from ruamel.yaml import YAML

from aifixer.adapters.errors import Unproven
from aifixer.adapters.forge import SOURCE_ANNOTATION, Forge
from aifixer.manifests import apply_changes, diff
from aifixer.models import (
    ApplyResult,
    Diagnosis,
    FieldChange,
    Incident,
    IncidentState,
    Verification,
    Workload,
)
from tests.gitops_fixtures import CHART, HELM, KUBECTL, KUSTOMIZE
from tests.integration.test_adapter_forge import OOM, fixed_world, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

C0 = "spec.template.spec.containers[0]"


def render(argv: list[str], cwd: Path) -> dict:
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=True)
    (dep,) = [
        d for d in YAML(typ="safe", pure=True).load_all(out.stdout) if d["kind"] == "Deployment"
    ]
    return dep


def state_for(original: dict, changes: list[FieldChange], fingerprint: str, annotations=None):
    original = dict(original, metadata={**original["metadata"], "annotations": annotations or {}})
    applied = apply_changes(original, changes)
    now = datetime.now(UTC)
    return IncidentState(
        incident=Incident(
            fingerprint=fingerprint,
            workload=Workload(cluster="app", namespace="shop", name="web"),
            failure_class="ImagePull",
            opened_at=now,
            signals=[],
        ),
        diagnosis=Diagnosis(
            summary="The image tag does not exist.",
            root_cause="A release pushed a tag that was never built.",
            failure_class="ImagePull",
            source="playbook",
        ),
        apply=ApplyResult(
            original=original,
            applied=applied,
            changes=diff(original, applied),
            generation=2,
            applied_at=now,
        ),
        verification=Verification(ok=True, reason="healthy", checked_at=now, healthy_since=now),
    )


def commit(world, files: dict[str, str]) -> None:
    world.call(world.forge.commit, *world.endpoints.gitops_repo.split("/"), files, "Add apps")


def test_a_kustomize_repo_gets_the_overlay_edited_and_the_branch_renders_the_fix(
    make_world, tmp_path
):
    _, world = fixed_world(make_world, OOM)
    commit(world, KUSTOMIZE)
    main = tmp_path / "main"
    git.Repo.clone_from(world.endpoints.gitops_clone_url, main)
    live = render([KUBECTL, "kustomize", "overlays/prod"], main)
    fix = FieldChange(
        path=f"{C0}.image",
        before=live["spec"]["template"]["spec"]["containers"][0]["image"],
        after="ghcr.io/acme/web:1.4.2",
    )
    state = state_for(live, [fix], "fpkustomize")  # no annotation: found by the scan

    ref = Forge(settings_for(world, kubectl_bin=KUBECTL, helm_bin=HELM)).open_fix_pr(state)

    (view,) = world.call(world.forge.prs)
    assert ref.created and view["number"] == ref.number
    files = [ln[6:] for ln in view["diff"].splitlines() if ln.startswith("+++ b/")]
    assert files == ["overlays/prod/kustomization.yaml"]
    branch = tmp_path / "branch"
    git.Repo.clone_from(world.endpoints.gitops_clone_url, branch, branch=ref.branch)
    assert render([KUBECTL, "kustomize", "overlays/prod"], branch) == apply_changes(live, [fix])
    for other in ("overlays/staging", "base"):
        assert render([KUBECTL, "kustomize", other], branch) == render(
            [KUBECTL, "kustomize", other], main
        )
    body = world.call(world.forge.prs)[0]["body"]
    assert "## Rendered" in body and "`kubectl kustomize overlays/prod`" in body
    assert "images[0].newTag" in body


def test_a_helm_chart_named_by_the_annotation_gets_its_values_edited_or_is_unproven(
    make_world, tmp_path
):
    _, world = fixed_world(make_world, OOM)
    commit(world, CHART)
    main = tmp_path / "main"
    git.Repo.clone_from(world.endpoints.gitops_clone_url, main)
    argv = [HELM, "template", "web", "charts/web", "--namespace", "shop"]
    live = render(argv, main)
    annotations = {SOURCE_ANNOTATION: "charts/web"}
    forge = Forge(settings_for(world, kubectl_bin=KUBECTL, helm_bin=HELM))

    computed = FieldChange(
        path="spec.template.spec.containers[1].resources.limits.memory",
        before="128Mi",
        after="192Mi",
    )
    with pytest.raises(Unproven) as err:
        forge.open_fix_pr(state_for(live, [computed], "fphelmcomputed", annotations))
    assert "charts/web/templates/deployment.yaml" in err.value.hand_edits[0]
    assert world.call(world.forge.prs) == []

    memory = FieldChange(path=f"{C0}.resources.limits.memory", before="96Mi", after="160Mi")
    ref = forge.open_fix_pr(state_for(live, [memory], "fphelmvalues", annotations))
    (view,) = world.call(world.forge.prs)
    files = [ln[6:] for ln in view["diff"].splitlines() if ln.startswith("+++ b/")]
    assert files == ["charts/web/values.yaml"]
    branch = tmp_path / "branch"
    git.Repo.clone_from(world.endpoints.gitops_clone_url, branch, branch=ref.branch)
    assert render(argv, branch) == apply_changes(live, [memory])
    assert "# the working set is ~110Mi" in (branch / "charts/web/values.yaml").read_text()
