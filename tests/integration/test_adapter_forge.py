"""The forge adapter against the GitHub stand-in, through GitPython (the real git) and PyGithub.

The sandbox world is loaded from a bundled scenario, so the GitOps repository holds
the team's manifests and then the bad change, as two commits. The fix proposed is the
difference between the scenario's `change` and its `manifests`, and what the pull
request shows is compared with what the scenario's author wrote, not with literals.
"""

from __future__ import annotations

import base64
import difflib
import socket
from datetime import UTC, datetime
from pathlib import Path

import git
import pytest
import yaml
from github import Auth, Github

from aifixer.adapters.errors import PermanentError, TransientError
from aifixer.adapters.forge import SOURCE_ANNOTATION, Forge
from aifixer.manifests import diff
from aifixer.models import (
    ApplyResult,
    Diagnosis,
    Incident,
    IncidentState,
    Verification,
    Workload,
)
from aifixer.settings import Settings
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.scenario import bundled_dir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SCENARIOS = bundled_dir()
OOM = SCENARIOS / "oom-report-api.yaml"


def settings_for(world, **overrides) -> Settings:
    ep = world.endpoints
    values = dict(
        github_api_url=ep.github_api,
        git_clone_url=ep.gitops_clone_url,
        github_token=ep.github_token,
        github_repo=ep.gitops_repo,
        request_timeout_s=10,
        git_timeout_s=60,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


def fixed_state(sc: scenario_mod.Scenario, fingerprint: str, annotations=None) -> IncidentState:
    """The state after a verified apply of the scenario's fix (change -> manifests)."""
    good = next(d for m in sc.manifests for d in m.documents() if d["kind"] == "Deployment")
    bad = next(d for m in sc.change for d in m.documents() if d["kind"] == "Deployment")
    if annotations:
        bad["metadata"]["annotations"] = annotations
    now = datetime.now(UTC)
    meta = good["metadata"]
    workload = Workload(
        cluster="app", namespace=meta.get("namespace", "default"), name=meta["name"]
    )
    return IncidentState(
        incident=Incident(
            fingerprint=fingerprint,
            workload=workload,
            failure_class="OOMKilled",
            opened_at=now,
            signals=[],
        ),
        diagnosis=Diagnosis(
            summary="Killed for exceeding its memory limit.",
            root_cause="The memory limit is below the working set.",
            failure_class="OOMKilled",
            source="playbook",
        ),
        apply=ApplyResult(
            original=bad, applied=good, changes=diff(bad, good), generation=3, applied_at=now
        ),
        verification=Verification(ok=True, reason="healthy", checked_at=now, healthy_since=now),
    )


def fixed_world(make_world, path: Path = OOM):
    sc = scenario_mod.load(path)
    return sc, make_world(sc, load=True)


def github(world) -> Github:
    ep = world.endpoints
    return Github(
        base_url=ep.github_api,
        auth=Auth.Token(ep.github_token),
        seconds_between_requests=0,
        seconds_between_writes=0,
    )


def changed_lines(diff_text: str) -> tuple[list[str], list[str]]:
    removed = [
        ln[1:] for ln in diff_text.splitlines() if ln.startswith("-") and not ln.startswith("---")
    ]
    added = [
        ln[1:] for ln in diff_text.splitlines() if ln.startswith("+") and not ln.startswith("+++")
    ]
    return removed, added


def authored_fix(sc: scenario_mod.Scenario) -> tuple[list[str], list[str]]:
    """The lines the scenario's author changed to go from the change back to the manifests."""
    before, after = sc.change[0].yaml.splitlines(), sc.manifests[0].yaml.splitlines()
    return changed_lines("\n".join(difflib.unified_diff(before, after, lineterm="")))


@pytest.mark.parametrize(
    "scenario",
    [OOM, SCENARIOS / "configmap-key-checkout.yaml", SCENARIOS / "missing-env-orders-api.yaml"],
    ids=lambda p: p.stem,
)
def test_pull_request_changes_exactly_the_fixed_lines(make_world, scenario):
    sc, world = fixed_world(make_world, scenario)
    state = fixed_state(sc, "fp" + scenario.stem.replace("-", "")[:10])

    ref = Forge(settings_for(world)).open_fix_pr(state)

    assert ref.created and ref.branch == f"aifixer/{state.incident.id}"
    repo = github(world).get_repo(world.endpoints.gitops_repo)
    pull = repo.get_pull(ref.number)
    assert pull.head.ref == ref.branch and pull.state == "open"
    assert pull.base.ref == repo.default_branch
    assert pull.title.startswith(f"fix({state.incident.workload.key}): ")
    assert [f.filename for f in pull.get_files()] == [sc.change[0].path]

    (view,) = world.call(world.forge.prs)
    assert view["number"] == ref.number
    assert changed_lines(view["diff"]) == authored_fix(sc)
    # The body carries the same diff and says the fix is live.
    assert "```diff" in pull.body and "applied this fix to the cluster" in pull.body
    assert state.incident.id in pull.body


def test_the_pushed_file_parses_to_the_fixed_manifests_and_keeps_comments(make_world, tmp_path):
    sc, world = fixed_world(make_world, SCENARIOS / "image-typo-storefront.yaml")
    ref = Forge(settings_for(world)).open_fix_pr(fixed_state(sc, "fpstorefront"))

    clone = git.Repo.clone_from(world.endpoints.gitops_clone_url, tmp_path / "c", branch=ref.branch)
    text = (tmp_path / "c" / sc.manifests[0].path).read_text()
    assert list(yaml.safe_load_all(text)) == sc.manifests[0].documents()
    comments = [ln for ln in sc.change[0].yaml.splitlines() if ln.lstrip().startswith("#")]
    assert comments and all(c in text.splitlines() for c in comments)
    commit = clone.head.commit
    assert commit.author.name == "aifixer" and "Aifixer-Incident: fpstorefront" in commit.message


def test_a_retry_finds_the_open_pull_request(make_world):
    sc, world = fixed_world(make_world)
    state = fixed_state(sc, "fpretry")
    forge = Forge(settings_for(world))

    first = forge.open_fix_pr(state)
    second = forge.open_fix_pr(state)
    third = Forge(settings_for(world)).open_fix_pr(state)

    assert first.created and not second.created and not third.created
    assert first.number == second.number == third.number
    assert len(world.call(world.forge.prs)) == 1


def test_an_existing_branch_with_the_same_change_is_reused(make_world):
    sc, world = fixed_world(make_world)
    state = fixed_state(sc, "fpbranch")
    settings = settings_for(world)
    forge = Forge(settings)
    first = forge.open_fix_pr(state)
    repo = github(world).get_repo(world.endpoints.gitops_repo)
    head_sha = repo.get_branch(first.branch).commit.sha
    repo.get_pull(first.number).edit(state="closed")  # e.g. a reviewer closed it

    again = forge.open_fix_pr(state)

    assert again.created and again.number != first.number
    assert repo.get_branch(first.branch).commit.sha == head_sha  # nothing pushed again


def test_the_source_annotation_names_the_file(make_world):
    sc, world = fixed_world(make_world)
    path = sc.change[0].path
    # A decoy defining the same Deployment: only the annotation can say which file is the source.
    world.call(
        world.forge.commit,
        *world.endpoints.gitops_repo.split("/"),
        {"legacy/copy.yaml": sc.change[0].yaml},
        "Add a copy",
    )
    state = fixed_state(
        sc, "fpannotated", {SOURCE_ANNOTATION: f"{world.endpoints.gitops_repo}:{path}"}
    )

    ref = Forge(settings_for(world)).open_fix_pr(state)

    (view,) = world.call(world.forge.prs)
    assert ref.created and f"b/{path}" in view["diff"] and "legacy/copy.yaml" not in view["diff"]

    unannotated = fixed_state(sc, "fpambiguous")
    with pytest.raises(PermanentError, match="several files define Deployment shop/report-api"):
        Forge(settings_for(world)).open_fix_pr(unannotated)


def test_the_source_annotation_may_name_another_repository(make_world):
    sc, world = fixed_world(make_world)
    path = "deploy/report-api.yaml"
    world.call(world.forge.create_repo, "acme", "platform", {path: sc.change[0].yaml}, "init")
    state = fixed_state(sc, "fpplatform", {SOURCE_ANNOTATION: f"acme/platform:{path}"})

    ref = Forge(settings_for(world)).open_fix_pr(state)

    (view,) = world.call(world.forge.prs)
    assert ref.created and view["repo"] == "acme/platform" and f"b/{path}" in view["diff"]


def test_gitops_paths_setting_names_the_file(make_world):
    sc, world = fixed_world(make_world)
    state = fixed_state(sc, "fpmapped")
    settings = settings_for(world, gitops_paths={"shop/report-api": "apps/nowhere.yaml"})
    with pytest.raises(PermanentError, match="apps/nowhere.yaml is not a file"):
        Forge(settings).open_fix_pr(state)


def test_a_workload_no_file_defines_is_permanent(make_world):
    sc, world = fixed_world(make_world)
    state = fixed_state(sc, "fpghost")
    state.incident.workload = Workload(cluster="app", namespace="shop", name="ghost-api")
    with pytest.raises(PermanentError, match="no file .* defines Deployment shop/ghost-api"):
        Forge(settings_for(world)).open_fix_pr(state)
    assert world.call(world.forge.prs) == []


def test_a_wrong_token_is_permanent_and_never_shown(make_world):
    sc, world = fixed_world(make_world)
    wrong = "ghs_" + "0123456789abcdef" * 2 + "wxyz"
    with pytest.raises(PermanentError) as info:
        Forge(settings_for(world, github_token=wrong)).open_fix_pr(fixed_state(sc, "fpwrong"))
    assert info.value.status == 401
    assert wrong not in str(info.value) and world.endpoints.github_token not in str(info.value)
    assert world.call(world.forge.prs) == []


def test_a_refused_clone_is_permanent_and_never_shows_the_token(make_world):
    """Even a clone URL configured with the token in it never shows it in an error."""
    sc, world = fixed_world(make_world)
    ep = world.endpoints
    token = ep.github_token
    url = ep.gitops_clone_url.replace("http://", f"http://x-access-token:{token}@")
    forge = Forge(settings_for(world, git_clone_url=url.replace("/gitops.git", "/nope.git")))
    with pytest.raises(PermanentError, match="git clone failed") as info:
        forge.open_fix_pr(fixed_state(sc, "fpnope"))
    assert token not in str(info.value)
    assert world.call(world.forge.prs) == []


def test_git_errors_are_scrubbed_of_the_token():
    token = "ghs_" + "5" * 36
    forge = Forge(Settings(_env_file=None, github_repo="acme/gitops", github_token=token))
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    stderr = (
        f"fatal: unable to access 'https://x-access-token:{token}@github.com/acme/gitops.git/': "
        f"The requested URL returned error: 503 (Authorization: Basic {basic})"
    )
    exc = git.GitCommandError(["git", "push", "origin"], 128, stderr.encode())
    error = forge._git_error("push", exc)
    assert isinstance(error, TransientError)
    assert token not in str(error) and basic not in str(error)
    assert "returned error: 503" in str(error)


def test_forge_down_is_transient(make_world):
    sc, world = fixed_world(make_world)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    down = f"http://127.0.0.1:{port}"
    settings = settings_for(world, github_api_url=down + "/api/v3", git_clone_url=down + "/a/b.git")
    with pytest.raises(TransientError) as info:
        Forge(settings).open_fix_pr(fixed_state(sc, "fpdown"))
    assert world.endpoints.github_token not in str(info.value)


@pytest.mark.parametrize("retry_after", ["86400", "inf"])
def test_a_rate_limit_is_handed_to_the_task_not_slept_on(make_world, retry_after):
    """PyGithub's own retries would sleep a 429's Retry-After (a day) inside the worker."""
    import time

    import requests

    sc, world = fixed_world(make_world)
    forge_url = world.endpoints.github_api.removesuffix("/api/v3")
    requests.post(
        f"{forge_url}/sandbox/faults",
        json={"path": "^/api/v3/repos/", "status": 429, "retry_after": retry_after, "count": 5},
        timeout=5,
    ).raise_for_status()
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        Forge(settings_for(world)).open_fix_pr(fixed_state(sc, "fplimited"))
    assert time.monotonic() - started < 5
    assert info.value.status == 429


def test_git_down_is_transient(make_world):
    sc, world = fixed_world(make_world)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_for(world, git_clone_url=f"http://127.0.0.1:{port}/acme/gitops.git")
    with pytest.raises(TransientError, match="git clone failed"):
        Forge(settings).open_fix_pr(fixed_state(sc, "fpgitdown"))


def test_the_models_explanation_replaces_the_diagnosis_section_only(make_world):
    """Opened with the facts' diagnosis; the model's explanation, come later, replaces that
    section and nothing else, and never a section a person has edited."""
    sc, world = fixed_world(make_world)
    state = fixed_state(sc, "fpexplain")
    state.pull_request = Forge(settings_for(world)).open_fix_pr(state)
    pull = github(world).get_repo(world.endpoints.gitops_repo).get_pull(state.pull_request.number)
    before = pull.body
    assert "diagnosed by: playbook" in before
    written = Diagnosis(
        summary="The pods were killed for going over their memory limit.",
        root_cause="The memory limit (resources.limits.memory) is below what the API uses.",
        failure_class="OOMKilled",
        source="model",
    )

    assert Forge(settings_for(world)).explain_pr(state, written)
    after = github(world).get_repo(world.endpoints.gitops_repo).get_pull(pull.number).body
    assert written.summary in after and "diagnosed by: model" in after
    head, _, rest = before.partition("## Diagnosis")
    assert after.startswith(head)  # the facts before it, as they were
    assert after.endswith(rest[rest.index("\n## ") :])  # and every section after it
    assert Forge(settings_for(world)).explain_pr(state, written)  # again: already shown
    assert github(world).get_repo(world.endpoints.gitops_repo).get_pull(pull.number).body == after

    # A person rewrote the diagnosis: their words stay.
    other = fixed_state(sc, "fpexplain2")
    other.pull_request = Forge(settings_for(world)).open_fix_pr(other)
    mine = github(world).get_repo(world.endpoints.gitops_repo).get_pull(other.pull_request.number)
    edited = mine.body.replace("Killed for exceeding its memory limit.", "Month-end reports.")
    mine.edit(body=edited)
    assert not Forge(settings_for(world)).explain_pr(other, written)
    assert github(world).get_repo(world.endpoints.gitops_repo).get_pull(mine.number).body == edited
