"""The CI subset of the fault matrix (`aifixer bench chaos --ci`): the real farm under
faults keeps its promise — every incident ends with the expected outcome, one PR for a
fixed incident, no number dialled twice, the rollback snapshot taken before the first
write, no person's change reverted.

The whole matrix is a benchmark (`aifixer bench chaos`), not a test: it takes half an
hour. These cells are one of each kind: a SIGKILL before a write, a SIGKILL mid-dial,
an API outage during diagnosis, an infinite Retry-After, a person's hotfix.
"""

from __future__ import annotations

import pytest

from aifixer_sandbox import chaos

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CI_CELLS = [c for c in chaos.cells() if c.ci]


def test_the_ci_subset_names_one_cell_of_each_kind():
    names = [c.name for c in CI_CELLS]
    assert any(c.kill for c in CI_CELLS) and any(c.person for c in CI_CELLS)
    assert any("503" in n for n in names) and any("inf" in n for n in names)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("cell", CI_CELLS, ids=[c.name for c in CI_CELLS])
def test_the_promise_holds_under_the_fault(cell, tmp_path):
    row = chaos.CellRun(cell, tmp_path / "cell", timeout=300).run()
    assert row["ok"], f"{row['cell']}: {row['problems']} (notes: {row['notes']})"
    if cell.kill:
        assert row.get("killed") == cell.kill, row["notes"]
