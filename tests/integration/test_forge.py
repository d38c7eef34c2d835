"""The GitHub stand-in, driven by the real clients over loopback.

GitPython (so the real `git` CLI) clones, fetches and pushes over smart HTTP;
PyGithub, configured exactly as for GitHub Enterprise, opens, lists, edits and
comments on pull requests. Whatever a check asserts about a pull request's content
is compared with what git itself says about the pushed commits, not with literals.
"""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import git
import pytest
import requests
from github import Auth, BadCredentialsException, Github, GithubException, UnknownObjectException

from aifixer_sandbox.forge import Forge, make_app
from aifixer_sandbox.serve import LoopThread, Site, serve_in_thread, start_site, stop_site

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "ghs_" + "s" * 36
WRONG_TOKEN = "ghs_" + "w" * 36
OWNER, NAME = "acme", "shop"
MANIFEST = "k8s/deployment.yaml"
MANIFEST_TEXT = "apiVersion: apps/v1\nkind: Deployment\nspec:\n  memory: 64Mi\n"
# Isolate git from the machine's configuration and never let it prompt for a password.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


@dataclass
class Sandbox:
    url: str
    forge: Forge
    loop: LoopThread

    def remote(self, name: str = NAME, token: str | None = None) -> str:
        auth = f"x-access-token:{token}@" if token else ""
        return self.url.replace("http://", f"http://{auth}") + f"/{OWNER}/{name}.git"

    def github(self, token: str = TOKEN, **kwargs) -> Github:
        return github_client(self.url, token, **kwargs)


def github_client(url: str, token: str = TOKEN, **kwargs) -> Github:
    """PyGithub configured as for GitHub Enterprise at `url`."""
    # PyGithub spaces requests out to be kind to github.com; not needed on loopback.
    return Github(
        base_url=url + "/api/v3",
        auth=Auth.Token(token),
        seconds_between_requests=0,
        seconds_between_writes=0,
        **kwargs,
    )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    forge = Forge(tmp_path_factory.mktemp("forge"), TOKEN)
    site = Site("forge", make_app(forge, lambda: site.url))
    loop = LoopThread().start()
    for name in (NAME, "pages", "fetch"):
        files = {MANIFEST: MANIFEST_TEXT, "README.md": f"# {name}\n"}
        loop.call(forge.create_repo, OWNER, name, files, "Initial commit")
    loop.call(start_site, site)
    try:
        yield Sandbox(site.url, forge, loop)
    finally:
        loop.call(stop_site, site)
        loop.stop()


def clone(sandbox: Sandbox, dest: Path, name: str = NAME) -> git.Repo:
    repo = git.Repo.clone_from(sandbox.remote(name), dest, env=GIT_ENV)
    repo.git.update_environment(**GIT_ENV)
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "Fixer").set_value("user", "email", "fixer@example.com")
    return repo


def commit_on_branch(repo: git.Repo, branch: str, path: str, text: str) -> str:
    repo.git.checkout("-B", branch, "origin/main")
    file = Path(repo.working_tree_dir) / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    repo.index.add([path])
    return repo.index.commit(f"Change {path} on {branch}").hexsha


def push(
    sandbox: Sandbox, repo: git.Repo, branch: str, token: str | None, name: str = NAME
) -> None:
    repo.git.push(sandbox.remote(name, token), f"{branch}:refs/heads/{branch}")


# ---------------------------------------------------------------------------
# git smart HTTP


def test_clone_push_with_token_and_refusals(sandbox: Sandbox, tmp_path: Path) -> None:
    work = clone(sandbox, tmp_path / "w")
    assert (Path(work.working_tree_dir) / MANIFEST).read_text() == MANIFEST_TEXT
    sha = commit_on_branch(work, "fix/refused", MANIFEST, MANIFEST_TEXT + "# refused\n")

    with pytest.raises(git.GitCommandError) as wrong:
        push(sandbox, work, "fix/refused", WRONG_TOKEN)
    assert "Authentication failed" in wrong.value.stderr
    with pytest.raises(git.GitCommandError):
        push(sandbox, work, "fix/refused", None)  # anonymous: reads yes, writes no
    gh = sandbox.github().get_repo(f"{OWNER}/{NAME}")
    assert "fix/refused" not in [b.name for b in gh.get_branches()]

    push(sandbox, work, "fix/refused", TOKEN)
    assert gh.get_branch("fix/refused").commit.sha == sha
    # The pushed commit is really in the forge's repository: a fresh clone sees it.
    again = clone(sandbox, tmp_path / "again")
    assert again.git.rev_parse("origin/fix/refused") == sha


def test_fetch_sees_forge_side_commit(sandbox: Sandbox, tmp_path: Path) -> None:
    work = clone(sandbox, tmp_path / "w", "fetch")
    sha = sandbox.loop.call(
        sandbox.forge.commit, OWNER, "fetch", {"NEW.md": "new\n", "README.md": None}, "Change"
    )
    work.remotes.origin.fetch()
    assert work.git.rev_parse("origin/main") == sha
    assert work.git.show("origin/main:NEW.md") == "new"
    assert "README.md" not in work.git.ls_tree("--name-only", "origin/main").split()


def test_large_push_is_streamed_and_binary_files_have_no_patch(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Bodies above git's 1 MiB http.postBuffer are sent chunked, without a Content-Length."""
    work = clone(sandbox, tmp_path / "w", "fetch")
    work.git.checkout("-B", "big", "origin/main")
    Path(work.working_tree_dir, "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    work.index.add(["blob.bin"])
    sha = work.index.commit("Add a large binary").hexsha
    push(sandbox, work, "big", TOKEN, name="fetch")
    gh = sandbox.github().get_repo(f"{OWNER}/fetch")
    assert gh.get_branch("big").commit.sha == sha
    (changed,) = gh.create_pull(base="main", head="big", title="Big", body="").get_files()
    assert (changed.filename, changed.status, changed.patch) == ("blob.bin", "added", None)


def test_gzip_encoded_upload_pack_request(sandbox: Sandbox) -> None:
    """git gzips large fetch negotiations; the body must reach http-backend decoded."""
    head = sandbox.github().get_repo(f"{OWNER}/{NAME}").get_branch("main").commit.sha

    def pkt(line: str) -> bytes:
        return f"{len(line) + 4:04x}{line}".encode()

    negotiation = pkt(f"want {head} ofs-delta\n") + b"0000" + pkt("done\n")
    resp = requests.post(
        f"{sandbox.url}/{OWNER}/{NAME}.git/git-upload-pack",
        data=gzip.compress(negotiation),
        headers={
            "Content-Type": "application/x-git-upload-pack-request",
            "Content-Encoding": "gzip",
        },
        timeout=30,
    )
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/x-git-upload-pack-result"
    assert b"PACK" in resp.content


def test_unknown_repository_is_not_found_for_git(sandbox: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(git.GitCommandError) as err:
        git.Repo.clone_from(f"{sandbox.url}/{OWNER}/missing.git", tmp_path / "x", env=GIT_ENV)
    assert "not found" in err.value.stderr.lower()


# ---------------------------------------------------------------------------
# REST API through PyGithub


def test_pull_request_lifecycle(sandbox: Sandbox, tmp_path: Path) -> None:
    work = clone(sandbox, tmp_path / "w")
    fixed = MANIFEST_TEXT.replace("64Mi", "512Mi")
    head_sha = commit_on_branch(work, "fix/memory", MANIFEST, fixed)
    push(sandbox, work, "fix/memory", TOKEN)

    gh = sandbox.github().get_repo(f"{OWNER}/{NAME}")
    assert (gh.full_name, gh.default_branch) == (f"{OWNER}/{NAME}", "main")
    pr = gh.create_pull(base="main", head="fix/memory", title="Raise memory", body="OOMKilled")
    assert (pr.state, pr.merged, pr.head.sha, pr.head.ref, pr.base.ref) == (
        "open",
        False,
        head_sha,
        "fix/memory",
        "main",
    )
    assert pr.html_url == f"{sandbox.url}/{OWNER}/{NAME}/pull/{pr.number}"
    assert pr.user.login == sandbox.github().get_user().login

    listed = gh.get_pulls(state="open", head=f"{OWNER}:fix/memory")
    assert [p.number for p in listed] == [pr.number]
    assert [p.number for p in gh.get_pulls(head=f"{OWNER}:no-such-branch")] == []
    assert pr.number in [p.number for p in gh.get_pulls(base="main")]

    pr.edit(body="OOMKilled: raised the limit")
    fetched = gh.get_pull(pr.number)
    assert (fetched.title, fetched.body) == ("Raise memory", "OOMKilled: raised the limit")

    # The files view is git's own diff of what was pushed.
    expected = work.git.diff("origin/main...fix/memory", "--", MANIFEST)
    (changed,) = list(fetched.get_files())
    assert (changed.filename, changed.status) == (MANIFEST, "modified")
    assert (changed.additions, changed.deletions) == (1, 1)
    assert changed.patch in expected and changed.patch.startswith("@@")
    assert fetched.changed_files == 1 and fetched.commits == 1 and fetched.mergeable

    comment = fetched.create_issue_comment("Verified in the sandbox")
    assert [c.body for c in fetched.get_issue_comments()] == ["Verified in the sandbox"]
    assert comment.user.login == pr.user.login

    # Issues and pull requests share the numbering: the next PR gets the next number.
    commit_on_branch(work, "fix/probe", "k8s/probe.yaml", "path: /healthz\n")
    push(sandbox, work, "fix/probe", TOKEN)
    second = gh.create_pull(base="main", head=f"{OWNER}:fix/probe", title="Fix probe", body="")
    assert second.number == pr.number + 1

    inspected = {p["number"]: p for p in sandbox.loop.call(sandbox.forge.prs, OWNER, NAME)}
    assert inspected[pr.number]["diff"].strip() == work.git.diff("origin/main...fix/memory")
    assert inspected[pr.number]["url"] == pr.html_url
    assert (inspected[second.number]["head"], inspected[second.number]["base"]) == (
        "fix/probe",
        "main",
    )

    diff_page = requests.get(pr.diff_url, timeout=10)
    assert diff_page.text.strip() == work.git.diff("origin/main...fix/memory")

    second.edit(state="closed")
    assert gh.get_pull(second.number).state == "closed"
    assert second.number not in [p.number for p in gh.get_pulls(state="open")]
    assert second.number in [p.number for p in gh.get_pulls(state="closed")]


def test_pull_request_follows_pushes(sandbox: Sandbox, tmp_path: Path) -> None:
    work = clone(sandbox, tmp_path / "w")
    commit_on_branch(work, "fix/follow", "a.txt", "one\n")
    push(sandbox, work, "fix/follow", TOKEN)
    gh = sandbox.github().get_repo(f"{OWNER}/{NAME}")
    pr = gh.create_pull(base="main", head="fix/follow", title="Follow", body="")
    Path(work.working_tree_dir, "a.txt").write_text("two\n")
    work.index.add(["a.txt"])
    newer = work.index.commit("second").hexsha
    push(sandbox, work, "fix/follow", TOKEN)
    again = gh.get_pull(pr.number)
    assert again.head.sha == newer and again.commits == 2


def test_create_pull_errors_have_githubs_shape(sandbox: Sandbox, tmp_path: Path) -> None:
    gh = sandbox.github().get_repo(f"{OWNER}/{NAME}")

    with pytest.raises(GithubException) as missing:
        gh.create_pull(base="main", head="does-not-exist", title="x", body="")
    assert missing.value.status == 422
    assert missing.value.data["message"] == "Validation Failed"
    assert missing.value.data["errors"] == [
        {"resource": "PullRequest", "field": "head", "code": "invalid"}
    ]

    work = clone(sandbox, tmp_path / "w")
    commit_on_branch(work, "fix/twice", "twice.txt", "x\n")
    push(sandbox, work, "fix/twice", TOKEN)
    gh.create_pull(base="main", head="fix/twice", title="Once", body="")
    with pytest.raises(GithubException) as twice:
        gh.create_pull(base="main", head="fix/twice", title="Twice", body="")
    assert twice.value.status == 422
    assert twice.value.data["errors"][0]["message"] == (
        f"A pull request already exists for {OWNER}:fix/twice."
    )

    main_sha = gh.get_git_ref("heads/main").object.sha
    assert gh.create_git_ref("refs/heads/fix/empty", main_sha).object.sha == main_sha
    with pytest.raises(GithubException) as exists:
        gh.create_git_ref("refs/heads/fix/empty", main_sha)
    assert (exists.value.status, exists.value.data["message"]) == (422, "Reference already exists")
    with pytest.raises(GithubException) as empty:
        gh.create_pull(base="main", head="fix/empty", title="Nothing", body="")
    assert empty.value.status == 422
    assert empty.value.data["errors"][0]["message"] == "No commits between main and fix/empty"


def test_unknown_repository_and_bad_credentials(sandbox: Sandbox) -> None:
    with pytest.raises(UnknownObjectException) as unknown:
        sandbox.github().get_repo(f"{OWNER}/missing")
    assert unknown.value.status == 404
    assert unknown.value.data["message"] == "Not Found"
    assert "documentation_url" in unknown.value.data

    with pytest.raises(UnknownObjectException):
        sandbox.github().get_repo(f"{OWNER}/{NAME}").get_pull(9999)

    with pytest.raises(BadCredentialsException) as bad:
        sandbox.github(WRONG_TOKEN).get_repo(f"{OWNER}/{NAME}")
    assert bad.value.status == 401
    assert bad.value.data["message"] == "Bad credentials"


def test_pagination_with_link_headers(sandbox: Sandbox, tmp_path: Path) -> None:
    work = clone(sandbox, tmp_path / "w", "pages")
    for i in range(5):
        commit_on_branch(work, f"topic-{i}", f"f{i}.txt", f"{i}\n")
        push(sandbox, work, f"topic-{i}", TOKEN, name="pages")
    repo = sandbox.github(per_page=2).get_repo(f"{OWNER}/pages")
    created = [
        repo.create_pull(base="main", head=f"topic-{i}", title=f"T{i}", body="").number
        for i in range(5)
    ]

    pulls = repo.get_pulls(state="all")
    assert pulls.totalCount == 5
    assert [p.number for p in pulls] == sorted(created, reverse=True)  # newest first

    first_page = requests.get(
        f"{sandbox.url}/api/v3/repos/{OWNER}/pages/pulls",
        params={"per_page": 2},
        headers={"Authorization": f"token {TOKEN}"},
        timeout=10,
    )
    assert len(first_page.json()) == 2
    assert first_page.links["next"]["url"].startswith(f"{sandbox.url}/api/v3/")
    assert "page=3" in first_page.links["last"]["url"]


def test_response_headers_and_error_bodies(sandbox: Sandbox) -> None:
    api = f"{sandbox.url}/api/v3"
    ok = requests.get(f"{api}/user", headers={"Authorization": f"token {TOKEN}"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["login"] == sandbox.forge.user
    assert ok.headers["Content-Type"].startswith("application/json")
    assert ok.headers["X-GitHub-Media-Type"].startswith("github.v3")
    limit, remaining = (
        int(ok.headers["X-RateLimit-Limit"]),
        int(ok.headers["X-RateLimit-Remaining"]),
    )
    assert remaining < limit and int(ok.headers["X-RateLimit-Used"]) == limit - remaining

    unknown = requests.get(f"{api}/repos/{OWNER}/{NAME}/no/such/endpoint", timeout=10)
    assert unknown.status_code == 404
    assert unknown.json() == {
        "message": "Not Found",
        "documentation_url": "https://docs.github.com/rest",
        "status": "404",
    }
    anonymous_write = requests.post(f"{api}/repos/{OWNER}/{NAME}/pulls", json={}, timeout=10)
    assert anonymous_write.status_code == 401


def test_links_follow_the_request_host_without_a_getter(tmp_path: Path) -> None:
    """Set up synchronously before serving, then let each request's Host decide the links."""
    forge = Forge(tmp_path / "forge", TOKEN)
    asyncio.run(forge.create_repo(OWNER, NAME, {MANIFEST: MANIFEST_TEXT}, "Initial commit"))
    url, stop = serve_in_thread(make_app(forge))
    try:
        repo = github_client(url).get_repo(f"{OWNER}/{NAME}")
        assert repo.url == f"{url}/api/v3/repos/{OWNER}/{NAME}"
        assert repo.clone_url == f"{url}/{OWNER}/{NAME}.git"
        # PyGithub follows the returned URLs (and checks they match its base_url).
        assert repo.get_branch("main").commit.sha == repo.get_git_ref("heads/main").object.sha
    finally:
        stop()
