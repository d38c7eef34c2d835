"""The pull request's life beyond the happy path, through PyGithub against the sandbox
forge: a draft when rendering cannot prove the change, a newer incident superseding an
older one's pull request, and what became of a pull request (merged, closed).
"""

from __future__ import annotations

import base64
import time
from datetime import timedelta

import git
import pytest

from aifixer import prbody
from aifixer.adapters.errors import Unproven
from aifixer.adapters.forge import NOTE_DIR, SOURCE_ANNOTATION, Forge
from aifixer.models import FieldChange
from aifixer_sandbox.forge import Forge as SandboxForge
from tests.gitops_fixtures import CHART, HELM, KUBECTL
from tests.integration.test_adapter_forge import OOM, fixed_state, fixed_world, github, settings_for
from tests.integration.test_forge_gitops_layouts import commit, render, state_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_an_unproven_change_opens_a_draft_that_changes_no_manifest(make_world, tmp_path):
    _, world = fixed_world(make_world, OOM)
    commit(world, CHART)
    main = tmp_path / "main"
    git.Repo.clone_from(world.endpoints.gitops_clone_url, main)
    live = render([HELM, "template", "web", "charts/web", "--namespace", "shop"], main)
    computed = FieldChange(
        path="spec.template.spec.containers[1].resources.limits.memory",
        before="128Mi",
        after="192Mi",
    )
    state = state_for(live, [computed], "fpdraft", {SOURCE_ANNOTATION: "charts/web"})
    forge = Forge(settings_for(world, kubectl_bin=KUBECTL, helm_bin=HELM))
    with pytest.raises(Unproven) as err:
        forge.open_fix_pr(state)

    ref = forge.open_draft_pr(state, err.value.explanation, err.value.hand_edits)

    assert ref.created and ref.draft
    repo = github(world).get_repo(world.endpoints.gitops_repo)
    pull = repo.get_pull(ref.number)
    assert pull.draft and pull.state == "open" and pull.head.ref == f"aifixer/{state.incident.id}"
    note = f"{NOTE_DIR}/{state.incident.id}.md"
    assert [f.filename for f in pull.get_files()] == [note]  # no manifest touched
    assert "## What must be edited by hand" in pull.body
    assert err.value.hand_edits[0] in pull.body
    assert "`spec.template.spec.containers[1].resources.limits.memory`: `128Mi` → `192Mi`" in (
        pull.body
    )
    assert pull.body.startswith(prbody.workload_marker(state))
    assert pull.title.endswith("(needs a hand edit)")
    branch = tmp_path / "branch"
    git.Repo.clone_from(world.endpoints.gitops_clone_url, branch, branch=ref.branch)
    assert err.value.hand_edits[0] in (branch / note).read_text()

    # A redelivery, through either entry point, finds the draft and pushes nothing.
    head = repo.get_branch(ref.branch).commit.sha
    again = forge.open_draft_pr(state, err.value.explanation, err.value.hand_edits)
    found = Forge(settings_for(world, kubectl_bin=KUBECTL, helm_bin=HELM)).open_fix_pr(state)
    assert (again.number, again.created, again.draft) == (ref.number, False, True)
    assert (found.number, found.created, found.draft) == (ref.number, False, True)
    assert repo.get_branch(ref.branch).commit.sha == head
    assert len(world.call(world.forge.prs)) == 1


def test_a_draft_flag_goes_through_pygithub_both_ways(make_world, tmp_path):
    _, world = fixed_world(make_world, OOM)
    basic = base64.b64encode(f"x-access-token:{world.endpoints.github_token}".encode()).decode()
    env = {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        **{f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
           for what, value in (("NAME", "a person"), ("EMAIL", "person@example.com"))},
    }  # fmt: skip
    checkout = git.Repo.clone_from(world.endpoints.gitops_clone_url, tmp_path / "c", env=env)
    (tmp_path / "c" / "notes.md").write_text("note\n")
    checkout.git.add("notes.md")
    checkout.git.commit("-m", "a note", env=env)
    checkout.git.push("origin", "HEAD:refs/heads/topic", env=env)
    repo = github(world).get_repo(world.endpoints.gitops_repo)

    draft = repo.create_pull(base=repo.default_branch, head="topic", title="t", draft=True)

    assert draft.draft is True
    assert repo.get_pull(draft.number).draft is True
    assert [p.draft for p in repo.get_pulls(state="open")] == [True]


def test_a_newer_incident_of_the_workload_supersedes_the_older_pull_request(make_world):
    sc, world = fixed_world(make_world)
    older = fixed_state(sc, "fpolder")  # another failure of the same Deployment, earlier
    time.sleep(0.01)
    newer = fixed_state(sc, "fpnewer")
    assert newer.incident.opened_at > older.incident.opened_at
    forge = Forge(settings_for(world))
    first = forge.open_fix_pr(older)

    second = forge.open_fix_pr(newer)

    repo = github(world).get_repo(world.endpoints.gitops_repo)
    old, new = repo.get_pull(first.number), repo.get_pull(second.number)
    assert second.number != first.number and second.branch != first.branch
    assert (old.state, new.state) == ("closed", "open")
    (comment,) = [c.body for c in old.get_issue_comments()]
    assert comment.startswith(f"Superseded by #{second.number} ({second.url})")
    assert newer.incident.id in comment
    # Only aifixer's own commit is on the older branch (a person's would keep it open).
    (commit,) = old.get_commits()
    assert f"Aifixer-Incident: {older.incident.id}" in commit.commit.message
    # The older incident's work is never reused for the newer one, and the newer pull
    # request, found again on a redelivery, is neither superseded nor commented twice.
    assert forge.open_fix_pr(newer).number == second.number
    assert repo.get_pull(second.number).state == "open"
    assert len(list(old.get_issue_comments())) == 1


@pytest.mark.skipif(
    not hasattr(SandboxForge, "merge_pull"), reason="the sandbox forge cannot merge yet"
)
def test_pull_state_reads_a_merge_and_its_time(make_world):
    sc, world = fixed_world(make_world)
    forge = Forge(settings_for(world))
    merged_ref = forge.open_fix_pr(fixed_state(sc, "fpmerged"))
    repo = github(world).get_repo(world.endpoints.gitops_repo)
    assert forge.pull_state(merged_ref) == merged_ref  # still open

    assert repo.get_pull(merged_ref.number).merge().merged
    merged = forge.pull_state(merged_ref)

    pull = repo.get_pull(merged_ref.number)
    assert merged.state == "merged" and merged.merged_at == pull.merged_at
    assert abs(merged.merged_at - pull.created_at) < timedelta(minutes=5)
