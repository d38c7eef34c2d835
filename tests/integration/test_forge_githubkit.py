"""The GitHub stand-in through githubkit, whose typed models require every property
GitHub's OpenAPI description marks required: a missing one fails the parse."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from githubkit import GitHub, TokenAuthStrategy

from aifixer_sandbox.forge import Forge, make_app
from aifixer_sandbox.serve import LoopThread, Site, start_site, stop_site

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "ghs_" + "k" * 36
OWNER, NAME = "acme", "shop"
MANIFEST = "k8s/deployment.yaml"


@pytest.fixture(scope="module")
def forge_url(tmp_path_factory) -> Iterator[tuple[str, Forge, LoopThread]]:
    forge = Forge(tmp_path_factory.mktemp("forge-githubkit"), TOKEN)
    site = Site("forge", make_app(forge, lambda: site.url))
    loop = LoopThread().start()
    files = {MANIFEST: "kind: Deployment\nmemory: 64Mi\n", "README.md": "# shop\n"}
    loop.call(forge.create_repo, OWNER, NAME, files, "Initial commit")
    loop.call(start_site, site)
    try:
        yield site.url, forge, loop
    finally:
        loop.call(stop_site, site)
        loop.stop()


@pytest.fixture
def gh(forge_url) -> Iterator[GitHub]:
    url, _, _ = forge_url
    with GitHub(TokenAuthStrategy(TOKEN), base_url=url + "/api/v3/") as client:
        yield client


def test_users_repository_branch_and_commits_parse(gh, forge_url):
    me = gh.rest.users.get_authenticated().parsed_data
    assert me.login == "aifixer-bot" and me.two_factor_authentication is False
    owner = gh.rest.users.get_by_username(OWNER).parsed_data
    assert owner.login == OWNER and owner.public_repos == 1

    repo = gh.rest.repos.get(OWNER, NAME).parsed_data
    assert repo.full_name == f"{OWNER}/{NAME}"
    assert repo.owner.login == OWNER and repo.default_branch == "main"
    assert repo.permissions is not None and repo.permissions.push

    branch = gh.rest.repos.get_branch(OWNER, NAME, "main").parsed_data
    assert branch.name == "main" and branch.protected is False
    assert branch.commit.commit.message == "Initial commit"
    assert [b.name for b in gh.rest.repos.list_branches(OWNER, NAME).parsed_data] == ["main"]

    commit = gh.rest.repos.get_commit(OWNER, NAME, "main").parsed_data
    assert commit.sha == branch.commit.sha
    assert commit.commit.author is not None and commit.commit.author.name == OWNER
    git_commit = gh.rest.git.get_commit(OWNER, NAME, commit.sha).parsed_data
    assert git_commit.tree.sha == commit.commit.tree.sha
    assert git_commit.verification.verified is False


def test_pull_request_create_list_and_diff(gh, forge_url):
    _, forge, loop = forge_url
    main = gh.rest.repos.get_branch(OWNER, NAME, "main").parsed_data.commit.sha
    gh.rest.git.create_ref(OWNER, NAME, ref="refs/heads/fix-memory", sha=main)
    loop.call(
        forge.commit,
        OWNER,
        NAME,
        {MANIFEST: "kind: Deployment\nmemory: 256Mi\n"},
        "Raise the memory limit",
        "fix-memory",
    )

    created = gh.rest.pulls.create(
        OWNER, NAME, title="Raise the memory limit", head="fix-memory", base="main", body="OOM"
    ).parsed_data
    assert created.number == 1 and created.state == "open"
    assert created.head.ref == "fix-memory" and created.base.repo.full_name == f"{OWNER}/{NAME}"
    assert created.changed_files == 1 and created.additions == 1 and created.deletions == 1

    listed = gh.rest.pulls.list(OWNER, NAME, state="open").parsed_data
    assert [p.number for p in listed] == [1]
    assert listed[0].user.login == "aifixer-bot"

    got = gh.rest.pulls.get(OWNER, NAME, 1).parsed_data
    assert got.mergeable is True and got.title == "Raise the memory limit"

    diff = gh.rest.pulls.get(OWNER, NAME, 1, headers={"Accept": "application/vnd.github.diff"})
    assert diff.headers["Content-Type"] == "application/vnd.github.diff; charset=utf-8"
    assert diff.text.startswith(f"diff --git a/{MANIFEST} b/{MANIFEST}\n")
    assert "-memory: 64Mi\n+memory: 256Mi\n" in diff.text
    legacy = gh.rest.pulls.get(OWNER, NAME, 1, headers={"Accept": "application/vnd.github.v3.diff"})
    assert legacy.text == diff.text
