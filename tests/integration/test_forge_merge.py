"""Merging pull requests on the GitHub stand-in, through PyGithub and the git CLI.

`PullRequest.merge()` must move the base branch in the served repository (what a GitOps
controller following that branch then sees), with GitHub's three merge methods and its
refusals: 405 when the pull request cannot be merged, 409 when the head moved.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import git
import pytest
import requests
from github import GithubException

from aifixer_sandbox.forge import Forge, make_app
from aifixer_sandbox.serve import LoopThread, Site, start_site, stop_site
from tests.integration.test_forge import (
    MANIFEST,
    MANIFEST_TEXT,
    NAME,
    OWNER,
    TOKEN,
    Sandbox,
    clone,
    commit_on_branch,
    push,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    forge = Forge(tmp_path_factory.mktemp("forge"), TOKEN)
    site = Site("forge", make_app(forge, lambda: site.url))
    loop = LoopThread().start()
    files = {MANIFEST: MANIFEST_TEXT, "README.md": f"# {NAME}\n"}
    loop.call(forge.create_repo, OWNER, NAME, files, "Initial commit")
    loop.call(start_site, site)
    try:
        yield Sandbox(site.url, forge, loop)
    finally:
        loop.call(stop_site, site)
        loop.stop()


def _open(sandbox: Sandbox, tmp: Path, branch: str, text: str, path: str = MANIFEST):
    work = clone(sandbox, tmp)
    sha = commit_on_branch(work, branch, path, text)
    push(sandbox, work, branch, TOKEN)
    repo = sandbox.github().get_repo(f"{OWNER}/{NAME}")
    pr = repo.create_pull(title=f"Change on {branch}", body="why", head=branch, base="main")
    return work, repo, pr, sha


def _remote_main(sandbox: Sandbox, work: git.Repo) -> str:
    work.git.fetch(sandbox.remote(), "main:refs/remotes/origin/main", "--force")
    return work.rev_parse("origin/main").hexsha


def test_merge_commit_moves_the_base_branch(sandbox: Sandbox, tmp_path: Path) -> None:
    text = MANIFEST_TEXT.replace("64Mi", "128Mi")
    work, repo, pr, head = _open(sandbox, tmp_path / "w", "fix/merge", text)
    before = repo.get_branch("main").commit.sha
    assert pr.mergeable is True and pr.merged is False

    status = pr.merge()
    assert status.merged is True and status.sha

    main = _remote_main(sandbox, work)
    assert main == status.sha == repo.get_branch("main").commit.sha
    commit = work.commit(main)
    assert [p.hexsha for p in commit.parents] == [before, head]
    assert commit.message.startswith(f"Merge pull request #{pr.number} from {OWNER}/fix/merge")
    assert work.git.show(f"{main}:{MANIFEST}") == text.rstrip("\n")

    again = repo.get_pull(pr.number)
    assert again.merged is True and again.state == "closed"
    assert again.merged_at is not None and again.merge_commit_sha == main
    assert again.merged_by.login == "aifixer-bot"
    assert again.is_merged() is True

    # Merged once, never twice.
    with pytest.raises(GithubException) as exc:
        again.merge()
    assert exc.value.status == 405


def test_squash_and_rebase(sandbox: Sandbox, tmp_path: Path) -> None:
    work, repo, pr, head = _open(
        sandbox, tmp_path / "s", "fix/squash", "squashed: 1\n", path="squash.txt"
    )
    before = _remote_main(sandbox, work)
    status = pr.merge(merge_method="squash", commit_title="Squashed change")
    commit = work.commit(_remote_main(sandbox, work))
    assert [p.hexsha for p in commit.parents] == [before]
    assert commit.message.startswith("Squashed change")
    assert work.git.show(f"{status.sha}:squash.txt") == "squashed: 1"

    work2, repo, pr2, head2 = _open(
        sandbox, tmp_path / "r", "fix/rebase", "rebased: 1\n", path="rebase.txt"
    )
    base = _remote_main(sandbox, work2)
    pr2.merge(merge_method="rebase")
    tip = work2.commit(_remote_main(sandbox, work2))
    original = work2.commit(head2)
    assert [p.hexsha for p in tip.parents] == [base]
    assert tip.message == original.message and tip.author.email == original.author.email
    assert tip.hexsha != head2  # replayed, not fast-forwarded to the old commit
    assert work2.git.show(f"{tip.hexsha}:rebase.txt") == "rebased: 1"
    assert work2.git.show(f"{tip.hexsha}:squash.txt") == "squashed: 1"


def test_head_mismatch_is_409_and_conflict_is_405(sandbox: Sandbox, tmp_path: Path) -> None:
    work, repo, pr, head = _open(sandbox, tmp_path / "m", "fix/moved", "a: 1\n", path="moved.txt")
    before = repo.get_branch("main").commit.sha
    with pytest.raises(GithubException) as exc:
        pr.merge(sha="0" * 40)
    assert exc.value.status == 409
    assert repo.get_branch("main").commit.sha == before
    assert repo.get_pull(pr.number).merged is False

    # Two pull requests editing the same line: once one is merged, the other conflicts.
    work_a = clone(sandbox, tmp_path / "a")
    commit_on_branch(work_a, "fix/one", "conflict.txt", "one\n")
    push(sandbox, work_a, "fix/one", TOKEN)
    commit_on_branch(work_a, "fix/two", "conflict.txt", "two\n")
    push(sandbox, work_a, "fix/two", TOKEN)
    one = repo.create_pull(title="one", body="", head="fix/one", base="main")
    two = repo.create_pull(title="two", body="", head="fix/two", base="main")
    one.merge()
    assert repo.get_pull(two.number).mergeable is False
    with pytest.raises(GithubException) as exc:
        two.merge()
    assert exc.value.status == 405
    assert repo.get_pull(two.number).state == "open"


def test_merge_needs_a_token(sandbox: Sandbox, tmp_path: Path) -> None:
    work, repo, pr, head = _open(sandbox, tmp_path / "t", "fix/anon", "x: 1\n", path="anon.txt")
    r = requests.put(
        f"{sandbox.url}/api/v3/repos/{OWNER}/{NAME}/pulls/{pr.number}/merge", json={}, timeout=10
    )
    assert r.status_code == 401
    assert repo.get_pull(pr.number).merged is False
