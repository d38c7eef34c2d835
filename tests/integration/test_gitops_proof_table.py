"""The README's table of GitOps layouts × failure classes is what a fresh check gives.

`python -m aifixer_sandbox.gitopsproof` proposes each failure class's repair on each
layout through the real forge adapter against the sandbox's GitHub, clones the
branch, renders it with the real kubectl kustomize / helm template and compares it
with main's render. Here it runs again, every cell is asserted, and the table it
writes must be the one in the README, so the README cannot claim what was not checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aifixer.settings import Settings
from aifixer_sandbox import gitopsproof
from tests.gitops_fixtures import HELM, KUBECTL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

README = Path(__file__).parents[2] / "README.md"


def test_every_cell_is_checked_and_the_readme_table_is_the_generated_one(tmp_path):
    settings = Settings(
        _env_file=None, kubectl_bin=KUBECTL, helm_bin=HELM, request_timeout_s=10, git_timeout_s=60
    )
    cells = {(c.layout, c.failure): c for c in gitopsproof.check_all(settings, tmp_path)}
    classes = [f.key for f in gitopsproof.CLASSES]
    assert len(cells) == len(gitopsproof.LAYOUTS) * len(classes)

    # Where each field is decided, and only that file edited.
    for layout in ("plain", "mixed-plain"):
        for failure in classes:
            cell = cells[(layout, failure)]
            assert cell.proven, (layout, failure, cell.why)
    kustomize = {f: cells[("kustomize", f)] for f in classes}
    assert all(c.proven for c in kustomize.values()), {f: c.why for f, c in kustomize.items()}
    assert kustomize["image"].files == ["overlays/prod/kustomization.yaml"]
    assert kustomize["memory"].files == ["overlays/prod/memory.yaml"]
    assert kustomize["probe"].files == ["overlays/prod/kustomization.yaml"]
    # The overlay's own edits leave staging's render as it was; a base edit reaches
    # staging on that field only.
    assert kustomize["image"].siblings == ["overlays/staging renders the same"]
    assert kustomize["env"].files == ["base/deployment.yaml"]
    assert kustomize["env"].siblings == ["overlays/staging gets the same fix on that field only"]
    for layout in ("helm", "mixed-chart"):
        for failure in ("image", "memory", "probe", "scheduling"):
            cell = cells[(layout, failure)]
            assert cell.proven and cell.files == ["charts/web/values.yaml"], cell.why
        # Written literally by the template: unproven, the template named for the hand edit.
        for failure in ("env", "command"):
            cell = cells[(layout, failure)]
            assert not cell.proven and cell.files == []
            assert "charts/web/templates/deployment.yaml" in cell.why

    table = gitopsproof.table(list(cells.values()))
    readme = README.read_text(encoding="utf-8")
    assert gitopsproof.splice(readme, table) == readme, (
        "README's GitOps proof table is stale: python -m aifixer_sandbox.gitopsproof "
        "--readme README.md"
    )
