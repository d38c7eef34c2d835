"""GitHub stand-in: real git repositories plus the REST subset PyGithub needs for pull requests.

One aiohttp application serves, on one port, what github.com and a GitHub Enterprise
API host serve: git smart HTTP at `/<owner>/<name>.git/…` (clone, fetch, push with
`x-access-token:<token>`), the REST API under `/api/v3` (so PyGithub is configured
exactly as for GitHub Enterprise: `Github(base_url=URL + "/api/v3", auth=Auth.Token(token))`),
and plain pages for pull requests at `/<owner>/<name>/pull/<n>` (and `.diff`).

Repositories are real bare repositories (see `forge_git`), so what the product pushes
is what the pull request shows. Pull-request state lives in memory on the sandbox's
event loop. Response bodies, status codes, error shapes and headers follow
/work/shared/reference/github-pulls.md; every URL in a response is built from the
stand-in's own public base URL because PyGithub follows those URLs and asserts that
they share its configured host, port and prefix.

`Forge.create_repo`, `Forge.commit` and `Forge.prs` are coroutines: await them on the
sandbox loop, or use `asyncio.run(...)` from synchronous setup code before serving.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from yarl import URL

from aifixer_sandbox import faults
from aifixer_sandbox.clock import rfc3339
from aifixer_sandbox.forge_git import (
    BareRepo,
    ChangedFile,
    GitError,
    basic_credentials,
    is_push,
    serve_smart_http,
)

API_PREFIX = "/api/v3"
DOCS = "https://docs.github.com/rest"
DOC_CREATE_PR = f"{DOCS}/pulls/pulls#create-a-pull-request"
DOC_UPDATE_PR = f"{DOCS}/pulls/pulls#update-a-pull-request"
DOC_CREATE_REF = f"{DOCS}/git/refs#create-a-reference"
DOC_COMMENT = f"{DOCS}/issues/comments#create-an-issue-comment"
DOC_MERGE_PR = f"{DOCS}/pulls/pulls#merge-a-pull-request"
MERGE_METHODS = ("merge", "squash", "rebase")
API_VERSION = "2022-11-28"
_DIFF_MEDIA_TYPE = re.compile(r"application/vnd\.github(?:\.v3)?\.diff")
RATE_LIMIT = {True: 5000, False: 60}  # authenticated / anonymous, per hour
PER_PAGE_DEFAULT, PER_PAGE_MAX = 30, 100
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _now() -> datetime:
    return datetime.now(UTC)


def _node_id(kind: str, ident: int | str) -> str:
    return base64.b64encode(f"0:{kind}{ident}".encode()).decode().rstrip("=")


class ApiError(Exception):
    """A REST error, rendered as GitHub's JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: list[dict[str, str]] | None = None,
        doc: str = DOCS,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.doc = doc

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.errors is not None:
            body["errors"] = self.errors
        body["documentation_url"] = self.doc
        body["status"] = str(self.status)
        return body


def not_found() -> ApiError:
    return ApiError(404, "Not Found")


def validation_failed(doc: str, **error: str) -> ApiError:
    """422 with one `errors[]` item, e.g. resource/field/code or resource/code/message."""
    return ApiError(422, "Validation Failed", errors=[error], doc=doc)


# ---------------------------------------------------------------------------
# State


@dataclass
class Comment:
    id: int
    number: int
    body: str
    user: str
    created_at: datetime
    updated_at: datetime


@dataclass
class PullRequest:
    id: int
    number: int
    title: str
    body: str | None
    user: str
    head_ref: str
    base_ref: str
    head_sha: str
    base_sha: str
    draft: bool
    maintainer_can_modify: bool
    created_at: datetime
    updated_at: datetime
    state: str = "open"
    closed_at: datetime | None = None
    merged_at: datetime | None = None
    merged_by: str | None = None
    merge_commit_sha: str | None = None


@dataclass
class Repo:
    owner: str
    name: str
    id: int
    default_branch: str
    git: BareRepo
    created_at: datetime
    pushed_at: datetime
    next_number: int = 1  # issues and pull requests share one counter, as on GitHub
    pulls: dict[int, PullRequest] = field(default_factory=dict)
    comments: dict[int, Comment] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def take_number(self) -> int:
        number = self.next_number
        self.next_number += 1
        return number

    def open_pull(self, head_ref: str, base_ref: str) -> PullRequest | None:
        return next(
            (
                p
                for p in self.pulls.values()
                if p.state == "open" and (p.head_ref, p.base_ref) == (head_ref, base_ref)
            ),
            None,
        )


class Forge:
    """Repositories and pull requests of the GitHub stand-in.

    `token` is the one credential the forge accepts (as `Authorization: token …` /
    `Bearer …` on the API, as HTTP basic username or password for git); it
    authenticates as `user`. All repositories are public: anyone may read and clone.
    """

    def __init__(self, root: Path, token: str, *, user: str = "aifixer-bot") -> None:
        if not token:
            raise ValueError("the forge needs a non-empty token")
        self.root = Path(root)
        self.token = token
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.base_url_getter: Callable[[], str] | None = None
        self.last_base_url = ""
        self._ids = itertools.count(1001)
        self._user_ids: dict[str, int] = {}
        self.created_at = _now()  # every account's created_at

    # -- identities --------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    def user_id(self, login: str) -> int:
        return self._user_ids.setdefault(login, self.next_id())

    def authenticate(self, token: str | None) -> str | None:
        """The login `token` authenticates, or None."""
        if token is not None and secrets.compare_digest(token.encode(), self.token.encode()):
            return self.user
        return None

    def public_base_url(self) -> str:
        """Where the forge is reachable, for links handed out outside a request."""
        return self.base_url_getter() if self.base_url_getter else self.last_base_url

    # -- repositories ------------------------------------------------------

    def repo(self, owner: str, name: str) -> Repo:
        try:
            return self.repos[(owner, name)]
        except KeyError:
            raise not_found() from None

    async def create_repo(
        self,
        owner: str,
        name: str,
        files: Mapping[str, str],
        message: str,
        default_branch: str = "main",
    ) -> str:
        """Create `owner/name` whose first commit on `default_branch` holds `files`; return it."""
        for part in (owner, name):
            if not _NAME.match(part) or part in (".", "..") or part.endswith(".git"):
                raise ValueError(f"invalid owner or repository name: {part!r}")
        if (owner, name) in self.repos:
            raise ValueError(f"repository {owner}/{name} already exists")
        if not files:
            raise ValueError("the first commit needs at least one file")
        git = BareRepo(self.root / owner / f"{name}.git")
        await git.init(default_branch)
        now = _now()
        repo = Repo(owner, name, self.next_id(), default_branch, git, created_at=now, pushed_at=now)
        self.repos[(owner, name)] = repo
        return await self.commit(owner, name, files, message)

    async def open_repo(self, owner: str, name: str, files: Mapping[str, str], message: str) -> str:
        """`create_repo`, or, when `owner/name` is already on disk (a reused state
        directory), take it over with its history and branches and commit `files` on
        its default branch where they differ from its tip. Returns the tip's sha."""
        path = self.root / owner / f"{name}.git"
        if (owner, name) in self.repos or not path.is_dir():
            return await self.create_repo(owner, name, files, message)
        git = BareRepo(path)
        now = _now()
        repo = Repo(owner, name, self.next_id(), await git.default_branch(), git,
                    created_at=now, pushed_at=now)  # fmt: skip
        self.repos[(owner, name)] = repo
        return await self.commit(owner, name, files, message, skip_unchanged=True)

    async def commit(
        self,
        owner: str,
        name: str,
        files: Mapping[str, str | None],
        message: str,
        branch: str | None = None,
        *,
        skip_unchanged: bool = False,
    ) -> str:
        """Commit `files` (path → content, None deletes) on `branch` (default: the default branch).

        Returns the new commit's sha (with `skip_unchanged`, the tip's when nothing changed).
        """
        repo = self.repos.get((owner, name))
        if repo is None:
            raise KeyError(f"no repository {owner}/{name}")
        sha = await repo.git.commit_files(
            branch or repo.default_branch,
            files,
            message,
            author=(owner, f"{owner}@users.noreply.github.com"),
            skip_unchanged=skip_unchanged,
        )
        repo.pushed_at = _now()
        return sha

    # -- pull requests -----------------------------------------------------

    async def refresh(self, repo: Repo, pr: PullRequest) -> None:
        """Follow pushes to an open pull request's branches, as GitHub does."""
        if pr.state != "open":
            return
        branches = await repo.git.branches()
        pr.head_sha = branches.get(pr.head_ref, pr.head_sha)
        pr.base_sha = branches.get(pr.base_ref, pr.base_sha)

    async def create_pull(self, repo: Repo, user: str, params: Mapping[str, Any]) -> PullRequest:
        """Validate a create request the way GitHub does and open the pull request."""
        for key in ("head", "base"):
            if not isinstance(params.get(key), str) or not params[key]:
                raise validation_failed(
                    DOC_CREATE_PR, resource="PullRequest", field=key, code="missing_field"
                )
        if "issue" in params:
            raise validation_failed(
                DOC_CREATE_PR, resource="PullRequest", field="issue", code="invalid"
            )
        title = params.get("title")
        if not isinstance(title, str) or not title.strip():
            raise validation_failed(
                DOC_CREATE_PR, resource="PullRequest", field="title", code="missing_field"
            )
        head_owner, _, head_ref = params["head"].rpartition(":")
        base_ref = params["base"]
        branches = await repo.git.branches()
        if head_owner not in ("", repo.owner) or head_ref not in branches:
            raise validation_failed(
                DOC_CREATE_PR, resource="PullRequest", field="head", code="invalid"
            )
        if base_ref not in branches:
            raise validation_failed(
                DOC_CREATE_PR, resource="PullRequest", field="base", code="invalid"
            )
        if repo.open_pull(head_ref, base_ref):
            raise _already_exists(repo, head_ref, DOC_CREATE_PR)
        head_sha, base_sha = branches[head_ref], branches[base_ref]
        if await repo.git.count_commits(base_sha, head_sha) == 0:
            raise validation_failed(
                DOC_CREATE_PR,
                resource="PullRequest",
                code="custom",
                message=f"No commits between {base_ref} and {params['head']}",
            )
        if repo.open_pull(head_ref, base_ref):  # a concurrent request may have won while git ran
            raise _already_exists(repo, head_ref, DOC_CREATE_PR)
        now = _now()
        pr = PullRequest(
            id=self.next_id(),
            number=repo.take_number(),
            title=title,
            body=params.get("body"),
            user=user,
            head_ref=head_ref,
            base_ref=base_ref,
            head_sha=head_sha,
            base_sha=base_sha,
            draft=bool(params.get("draft", False)),
            maintainer_can_modify=bool(params.get("maintainer_can_modify", True)),
            created_at=now,
            updated_at=now,
        )
        repo.pulls[pr.number] = pr
        return pr

    async def update_pull(self, repo: Repo, pr: PullRequest, params: Mapping[str, Any]) -> None:
        """Apply a PATCH: title, body, state, base, maintainer_can_modify."""
        state = params.get("state", pr.state)
        if state not in ("open", "closed"):
            raise validation_failed(
                DOC_UPDATE_PR, resource="PullRequest", field="state", code="invalid"
            )
        base_ref = params.get("base", pr.base_ref)
        if base_ref != pr.base_ref and base_ref not in await repo.git.branches():
            raise validation_failed(
                DOC_UPDATE_PR, resource="PullRequest", field="base", code="invalid"
            )
        if state == "open" and (state != pr.state or base_ref != pr.base_ref):
            other = repo.open_pull(pr.head_ref, base_ref)
            if other is not None and other is not pr:
                raise _already_exists(repo, pr.head_ref, DOC_UPDATE_PR)
        if "title" in params:
            pr.title = params["title"]
        if "body" in params:
            pr.body = params["body"]
        if "maintainer_can_modify" in params:
            pr.maintainer_can_modify = bool(params["maintainer_can_modify"])
        pr.base_ref = base_ref
        if state != pr.state:
            pr.closed_at = _now() if state == "closed" else None
            pr.state = state
        pr.updated_at = _now()
        await self.refresh(repo, pr)

    async def merge_pull(
        self, repo: Repo, pr: PullRequest, user: str, params: Mapping[str, Any]
    ) -> str:
        """Merge an open pull request into its base branch, as GitHub's merge endpoint does:
        405 when it cannot be merged, 409 when `sha` is not the head's, 422 for an unknown
        `merge_method`. Returns the sha the base branch now points at."""
        method = params.get("merge_method") or "merge"
        if method not in MERGE_METHODS:
            raise validation_failed(
                DOC_MERGE_PR, resource="PullRequest", field="merge_method", code="invalid"
            )
        await self.refresh(repo, pr)
        if pr.state != "open" or not await repo.git.merges_cleanly(pr.base_sha, pr.head_sha):
            raise ApiError(405, "Pull Request is not mergeable", doc=DOC_MERGE_PR)
        expected = params.get("sha")
        if expected and expected != pr.head_sha:
            raise ApiError(
                409, "Head branch was modified. Review and try the merge again.", doc=DOC_MERGE_PR
            )
        title, body = params.get("commit_title"), params.get("commit_message")
        if method == "squash":
            title = title or f"{pr.title} (#{pr.number})"
            body = body if body is not None else pr.body or ""
        else:
            title = title or f"Merge pull request #{pr.number} from {repo.owner}/{pr.head_ref}"
            body = body if body is not None else pr.title
        message = f"{title}\n\n{body}\n" if body else f"{title}\n"
        try:
            sha = await repo.git.merge(
                pr.base_ref,
                pr.head_sha,
                method,
                message,
                (user, f"{user}@users.noreply.github.com"),
            )
        except GitError:
            raise ApiError(405, "Pull Request is not mergeable", doc=DOC_MERGE_PR) from None
        now = _now()
        pr.state, pr.closed_at, pr.merged_at, pr.updated_at = "closed", now, now, now
        pr.merged_by, pr.merge_commit_sha = user, sha
        repo.pushed_at = now
        return sha

    def add_comment(self, repo: Repo, number: int, user: str, body: Any) -> Comment:
        if number not in repo.pulls:
            raise not_found()
        if not isinstance(body, str) or not body:
            raise validation_failed(
                DOC_COMMENT, resource="IssueComment", field="body", code="missing_field"
            )
        now = _now()
        comment = Comment(self.next_id(), number, body, user, now, now)
        repo.comments[comment.id] = comment
        repo.pulls[number].updated_at = now
        return comment

    async def prs(self, owner: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        """Pull requests (optionally of one owner and/or repository) with diffs, for inspection."""
        base = self.public_base_url()
        out = []
        for repo in self.repos.values():
            if owner not in (None, repo.owner) or name not in (None, repo.name):
                continue
            for pr in repo.pulls.values():
                await self.refresh(repo, pr)
                out.append(
                    {
                        "repo": repo.full_name,
                        "number": pr.number,
                        "title": pr.title,
                        "body": pr.body,
                        "head": pr.head_ref,
                        "base": pr.base_ref,
                        "state": pr.state,
                        "url": f"{base}/{repo.full_name}/pull/{pr.number}",
                        "diff": await repo.git.diff(pr.base_sha, pr.head_sha),
                    }
                )
        return out


def _already_exists(repo: Repo, head_ref: str, doc: str) -> ApiError:
    return validation_failed(
        doc,
        resource="PullRequest",
        code="custom",
        message=f"A pull request already exists for {repo.owner}:{head_ref}.",
    )


# ---------------------------------------------------------------------------
# JSON representations


@dataclass(frozen=True)
class Urls:
    """URL builder for one request: web base (`https://github.com` role) and API base."""

    web: str

    @property
    def api(self) -> str:
        return self.web + API_PREFIX

    def repo_api(self, repo: Repo) -> str:
        return f"{self.api}/repos/{repo.full_name}"

    def repo_web(self, repo: Repo) -> str:
        return f"{self.web}/{repo.full_name}"


class Views:
    """Turns forge state into the JSON objects GitHub returns (fields PyGithub reads)."""

    def __init__(self, forge: Forge, urls: Urls, viewer: str | None) -> None:
        self.forge = forge
        self.urls = urls
        self.viewer = viewer

    def user(self, login: str) -> dict[str, Any]:
        """The "simple user" embedded in other objects (every property GitHub requires)."""
        uid = self.forge.user_id(login)
        api = f"{self.urls.api}/users/{login}"
        return {
            "login": login,
            "id": uid,
            "node_id": _node_id("User", uid),
            "avatar_url": f"{self.urls.web}/{login}.png",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{self.urls.web}/{login}",
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": "User" if login == self.forge.user else "Organization",
            "user_view_type": "public",
            "site_admin": False,
        }

    def full_user(self, login: str, private: bool = False) -> dict[str, Any]:
        """`GET /users/{login}` (public user) or, for the token's own account, `GET /user`."""
        stamp = rfc3339(self.forge.created_at)
        owned = sum(owner == login for owner, _ in self.forge.repos)
        out = {
            **self.user(login),
            "name": None,
            "company": None,
            "blog": "",
            "location": None,
            "email": None,
            "hireable": None,
            "bio": None,
            "twitter_username": None,
            "public_repos": owned,
            "public_gists": 0,
            "followers": 0,
            "following": 0,
            "created_at": stamp,
            "updated_at": stamp,
        }
        if private:
            out.update(
                private_gists=0,
                total_private_repos=0,
                owned_private_repos=0,
                disk_usage=0,
                collaborators=0,
                two_factor_authentication=False,
            )
        return out

    def repo(self, repo: Repo) -> dict[str, Any]:
        api, web_url = self.urls.repo_api(repo), self.urls.repo_web(repo)
        host = URL(self.urls.web).host
        can_push = self.viewer is not None
        open_issues = sum(p.state == "open" for p in repo.pulls.values())
        return {
            "id": repo.id,
            "node_id": _node_id("Repository", repo.id),
            "name": repo.name,
            "full_name": repo.full_name,
            "owner": self.user(repo.owner),
            "private": False,
            "visibility": "public",
            "html_url": web_url,
            "description": None,
            "fork": False,
            "archived": False,
            "disabled": False,
            "url": api,
            "archive_url": f"{api}/{{archive_format}}{{/ref}}",
            "assignees_url": f"{api}/assignees{{/user}}",
            "blobs_url": f"{api}/git/blobs{{/sha}}",
            "branches_url": f"{api}/branches{{/branch}}",
            "collaborators_url": f"{api}/collaborators{{/collaborator}}",
            "comments_url": f"{api}/comments{{/number}}",
            "commits_url": f"{api}/commits{{/sha}}",
            "compare_url": f"{api}/compare/{{base}}...{{head}}",
            "contents_url": f"{api}/contents/{{+path}}",
            "contributors_url": f"{api}/contributors",
            "deployments_url": f"{api}/deployments",
            "downloads_url": f"{api}/downloads",
            "events_url": f"{api}/events",
            "forks_url": f"{api}/forks",
            "git_commits_url": f"{api}/git/commits{{/sha}}",
            "git_refs_url": f"{api}/git/refs{{/sha}}",
            "git_tags_url": f"{api}/git/tags{{/sha}}",
            "git_url": f"git://{host}/{repo.full_name}.git",
            "issue_comment_url": f"{api}/issues/comments{{/number}}",
            "issue_events_url": f"{api}/issues/events{{/number}}",
            "issues_url": f"{api}/issues{{/number}}",
            "keys_url": f"{api}/keys{{/key_id}}",
            "labels_url": f"{api}/labels{{/name}}",
            "languages_url": f"{api}/languages",
            "merges_url": f"{api}/merges",
            "milestones_url": f"{api}/milestones{{/number}}",
            "notifications_url": f"{api}/notifications{{?since,all,participating}}",
            "pulls_url": f"{api}/pulls{{/number}}",
            "releases_url": f"{api}/releases{{/id}}",
            "ssh_url": f"git@{host}:{repo.full_name}.git",
            "stargazers_url": f"{api}/stargazers",
            "statuses_url": f"{api}/statuses/{{sha}}",
            "subscribers_url": f"{api}/subscribers",
            "subscription_url": f"{api}/subscription",
            "tags_url": f"{api}/tags",
            "teams_url": f"{api}/teams",
            "trees_url": f"{api}/git/trees{{/sha}}",
            "clone_url": f"{web_url}.git",
            "mirror_url": None,
            "hooks_url": f"{api}/hooks",
            "svn_url": web_url,
            "homepage": None,
            "language": None,
            "forks_count": 0,
            "stargazers_count": 0,
            "watchers_count": 0,
            "size": 0,
            "default_branch": repo.default_branch,
            "open_issues_count": open_issues,
            "is_template": False,
            "topics": [],
            "has_issues": True,
            "has_projects": True,
            "has_wiki": True,
            "has_pages": False,
            "has_downloads": True,
            "has_discussions": False,
            "allow_forking": True,
            "web_commit_signoff_required": False,
            "license": None,
            "forks": 0,
            "open_issues": open_issues,
            "watchers": 0,
            "subscribers_count": 0,
            "network_count": 0,
            "permissions": {
                "admin": can_push,
                "maintain": can_push,
                "push": can_push,
                "triage": can_push,
                "pull": True,
            },
            "created_at": rfc3339(repo.created_at),
            "updated_at": rfc3339(max(repo.created_at, repo.pushed_at)),
            "pushed_at": rfc3339(repo.pushed_at),
        }

    def commit_ref(self, repo: Repo, sha: str) -> dict[str, str]:
        return {"sha": sha, "url": f"{self.urls.repo_api(repo)}/commits/{sha}"}

    def git_ref(self, repo: Repo, ref: str, sha: str) -> dict[str, Any]:
        api = self.urls.repo_api(repo)
        return {
            "ref": ref,
            "node_id": _node_id("Ref", f"{repo.id}:{ref}"),
            "url": f"{api}/git/{ref}",
            "object": {"sha": sha, "type": "commit", "url": f"{api}/git/commits/{sha}"},
        }

    def branch(self, repo: Repo, name: str, info: Mapping[str, str]) -> dict[str, Any]:
        """`GET /branches/{name}`: the branch with its head as a full commit."""
        api = self.urls.repo_api(repo)
        return {
            "name": name,
            "commit": self.commit(repo, info),
            "protected": False,
            "protection": {
                "enabled": False,
                "required_status_checks": {
                    "enforcement_level": "off",
                    "contexts": [],
                    "checks": [],
                },
            },
            "protection_url": f"{api}/branches/{name}/protection",
            "_links": {
                "self": f"{api}/branches/{name}",
                "html": f"{self.urls.repo_web(repo)}/tree/{name}",
            },
        }

    def git_commit(self, repo: Repo, info: Mapping[str, str]) -> dict[str, Any]:
        api = self.urls.repo_api(repo)
        return {
            "sha": info["sha"],
            "node_id": _node_id("Commit", f"{repo.id}:{info['sha']}"),
            "url": f"{api}/git/commits/{info['sha']}",
            "html_url": f"{self.urls.repo_web(repo)}/commit/{info['sha']}",
            "author": {
                "name": info["author_name"],
                "email": info["author_email"],
                "date": info["author_date"],
            },
            "committer": {
                "name": info["committer_name"],
                "email": info["committer_email"],
                "date": info["committer_date"],
            },
            "message": info["message"].rstrip("\n"),
            "tree": {"sha": info["tree"], "url": f"{api}/git/trees/{info['tree']}"},
            "parents": [
                {
                    "sha": p,
                    "url": f"{api}/git/commits/{p}",
                    "html_url": f"{self.urls.repo_web(repo)}/commit/{p}",
                }
                for p in info["parents"].split()
            ],
            # The stand-in's commits carry no signatures.
            "verification": {
                "verified": False,
                "reason": "unsigned",
                "signature": None,
                "payload": None,
                "verified_at": None,
            },
        }

    def commit(self, repo: Repo, info: Mapping[str, str]) -> dict[str, Any]:
        """A commit as the repos API shows it (`GET /commits/{ref}`, a branch's head).

        `author` and `committer` are the GitHub accounts of the commit's emails; no
        account of the stand-in has an email, so both are null, as on GitHub for commits
        by unknown emails.
        """
        api = self.urls.repo_api(repo)
        sha = info["sha"]
        git_commit = self.git_commit(repo, info)
        return {
            "sha": sha,
            "node_id": git_commit["node_id"],
            "commit": {
                "author": git_commit["author"],
                "committer": git_commit["committer"],
                "message": git_commit["message"],
                "tree": git_commit["tree"],
                "url": f"{api}/git/commits/{sha}",
                "comment_count": 0,
                "verification": git_commit["verification"],
            },
            "url": f"{api}/commits/{sha}",
            "html_url": git_commit["html_url"],
            "comments_url": f"{api}/commits/{sha}/comments",
            "author": None,
            "committer": None,
            "parents": [
                {"sha": p["sha"], "url": f"{api}/commits/{p['sha']}", "html_url": p["html_url"]}
                for p in git_commit["parents"]
            ],
        }

    def part(self, repo: Repo, ref: str, sha: str) -> dict[str, Any]:
        return {
            "label": f"{repo.owner}:{ref}",
            "ref": ref,
            "sha": sha,
            "user": self.user(repo.owner),
            "repo": self.repo(repo),
        }

    def pull(self, repo: Repo, pr: PullRequest) -> dict[str, Any]:
        """The "simple" pull request of list responses."""
        api = f"{self.urls.repo_api(repo)}/pulls/{pr.number}"
        issue = f"{self.urls.repo_api(repo)}/issues/{pr.number}"
        html_url = f"{self.urls.repo_web(repo)}/pull/{pr.number}"
        statuses = f"{self.urls.repo_api(repo)}/statuses/{pr.head_sha}"
        return {
            "url": api,
            "id": pr.id,
            "node_id": _node_id("PullRequest", pr.id),
            "html_url": html_url,
            "diff_url": f"{html_url}.diff",
            "patch_url": f"{html_url}.patch",
            "issue_url": issue,
            "commits_url": f"{api}/commits",
            "review_comments_url": f"{api}/comments",
            "review_comment_url": f"{self.urls.repo_api(repo)}/pulls/comments{{/number}}",
            "comments_url": f"{issue}/comments",
            "statuses_url": statuses,
            "number": pr.number,
            "state": pr.state,
            "locked": False,
            "title": pr.title,
            "user": self.user(pr.user),
            "body": pr.body,
            "labels": [],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": rfc3339(pr.created_at),
            "updated_at": rfc3339(pr.updated_at),
            "closed_at": rfc3339(pr.closed_at) if pr.closed_at else None,
            "merged_at": rfc3339(pr.merged_at) if pr.merged_at else None,
            "merge_commit_sha": pr.merge_commit_sha,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": self.part(repo, pr.head_ref, pr.head_sha),
            "base": self.part(repo, pr.base_ref, pr.base_sha),
            "_links": {
                "self": {"href": api},
                "html": {"href": html_url},
                "issue": {"href": issue},
                "comments": {"href": f"{issue}/comments"},
                "review_comments": {"href": f"{api}/comments"},
                "review_comment": {"href": f"{self.urls.repo_api(repo)}/pulls/comments{{/number}}"},
                "commits": {"href": f"{api}/commits"},
                "statuses": {"href": statuses},
            },
            "author_association": "OWNER" if pr.user == repo.owner else "COLLABORATOR",
            "auto_merge": None,
            "draft": pr.draft,
        }

    async def full_pull(self, repo: Repo, pr: PullRequest) -> dict[str, Any]:
        """The full pull request of single-object responses: the simple one plus computed fields."""
        files = await repo.git.changed_files(pr.base_sha, pr.head_sha)
        merged = pr.merged_at is not None
        clean = None if merged else await repo.git.merges_cleanly(pr.base_sha, pr.head_sha)
        return {
            **self.pull(repo, pr),
            "merged": merged,
            "mergeable": clean,
            "rebaseable": clean,
            "mergeable_state": "unknown" if merged else "clean" if clean else "dirty",
            "merged_by": self.user(pr.merged_by) if pr.merged_by else None,
            "comments": sum(c.number == pr.number for c in repo.comments.values()),
            "review_comments": 0,
            "maintainer_can_modify": pr.maintainer_can_modify,
            "commits": await repo.git.count_commits(pr.base_sha, pr.head_sha),
            "additions": sum(f.additions for f in files),
            "deletions": sum(f.deletions for f in files),
            "changed_files": len(files),
        }

    def file(self, repo: Repo, pr: PullRequest, f: ChangedFile) -> dict[str, Any]:
        at = pr.base_sha if f.status == "removed" else pr.head_sha
        out: dict[str, Any] = {
            "sha": f.sha,
            "filename": f.filename,
            "status": f.status,
            "additions": f.additions,
            "deletions": f.deletions,
            "changes": f.additions + f.deletions,
            "blob_url": f"{self.urls.repo_web(repo)}/blob/{at}/{f.filename}",
            "raw_url": f"{self.urls.repo_web(repo)}/raw/{at}/{f.filename}",
            "contents_url": f"{self.urls.repo_api(repo)}/contents/{f.filename}?ref={at}",
        }
        if f.patch is not None:
            out["patch"] = f.patch
        if f.previous_filename is not None:
            out["previous_filename"] = f.previous_filename
        return out

    def comment(self, repo: Repo, c: Comment) -> dict[str, Any]:
        return {
            "id": c.id,
            "node_id": _node_id("IssueComment", c.id),
            "url": f"{self.urls.repo_api(repo)}/issues/comments/{c.id}",
            "html_url": f"{self.urls.repo_web(repo)}/pull/{c.number}#issuecomment-{c.id}",
            "issue_url": f"{self.urls.repo_api(repo)}/issues/{c.number}",
            "body": c.body,
            "user": self.user(c.user),
            "created_at": rfc3339(c.created_at),
            "updated_at": rfc3339(c.updated_at),
            "author_association": "OWNER" if c.user == repo.owner else "COLLABORATOR",
        }


# ---------------------------------------------------------------------------
# HTTP plumbing: auth, headers, errors, pagination

FORGE = web.AppKey("forge", Forge)
RATE = web.AppKey("rate", dict)
LOGIN = web.RequestKey("login", object)  # str | None: who the token authenticates
URLS = web.RequestKey("urls", Urls)


def _public_base(request: web.Request) -> str:
    forge = request.app[FORGE]
    getter = forge.base_url_getter
    base = (getter() if getter else f"{request.scheme}://{request.host}").rstrip("/")
    forge.last_base_url = base
    return base


def _api_token(header: str | None) -> str | None:
    """The token in `Authorization: token X`, `Bearer X` or basic auth (GitHub takes all three)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer"):
        return value.strip()
    if scheme.lower() == "basic":
        creds = basic_credentials(header)
        return creds[1] if creds else ""
    return ""


def _rate_headers(request: web.Request, login: str | None) -> dict[str, str]:
    window = int(time.time()) // 3600
    counts = request.app[RATE]
    for stale in [k for k in counts if k[1] != window]:
        del counts[stale]
    key = (login or request.remote or "anonymous", window)
    used = counts[key] = counts.get(key, 0) + 1
    limit = RATE_LIMIT[login is not None]
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(0, limit - used)),
        "X-RateLimit-Reset": str((window + 1) * 3600),
        "X-RateLimit-Used": str(used),
        "X-RateLimit-Resource": "core",
    }


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


@web.middleware
async def api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
):
    """GitHub's envelope: authentication, JSON errors, media-type and rate-limit headers."""
    forge = request.app[FORGE]
    token = _api_token(request.headers.get("Authorization"))
    login = forge.authenticate(token)
    request[LOGIN] = login
    request[URLS] = Urls(_public_base(request))
    try:
        if token is not None and login is None:
            raise ApiError(401, "Bad credentials")
        if login is None and (
            request.method not in ("GET", "HEAD") or request.path == f"{API_PREFIX}/user"
        ):
            raise ApiError(401, "Requires authentication")
        response = await handler(request)
    except ApiError as e:
        response = _json(e.body(), e.status)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):  # GitHub answers 404 to both
        response = _json(not_found().body(), 404)
    response.headers.update(_rate_headers(request, login))
    response.headers.setdefault("X-GitHub-Media-Type", "github.v3; format=json")
    response.headers["X-GitHub-Api-Version-Selected"] = request.headers.get(
        "X-GitHub-Api-Version", API_VERSION
    )
    response.headers["X-GitHub-Request-Id"] = secrets.token_hex(8).upper()
    if login is not None:
        response.headers["X-OAuth-Scopes"] = "repo"
    return response


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError:
        raise ApiError(400, "Problems parsing JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Problems parsing JSON")
    return body


def _page_args(request: web.Request) -> tuple[int, int]:
    try:
        page = max(1, int(request.query.get("page", "1")))
        per_page = min(
            PER_PAGE_MAX, max(1, int(request.query.get("per_page", str(PER_PAGE_DEFAULT))))
        )
    except ValueError:
        raise ApiError(400, "Invalid pagination parameters") from None
    return page, per_page


def _paginated(request: web.Request, items: list[Any]) -> web.Response:
    """One page of `items` with GitHub's `Link` header (next/last/first/prev)."""
    page, per_page = _page_args(request)
    last = max(1, -(-len(items) // per_page))
    here = URL(request[URLS].web + request.path).with_query(request.query)

    def link(n: int, rel: str) -> str:
        return f'<{here.update_query(page=str(n))}>; rel="{rel}"'

    links = []
    if page < last:
        links += [link(page + 1, "next"), link(last, "last")]
    if page > 1:
        links += [link(1, "first"), link(min(page - 1, last), "prev")]
    headers = {"Link": ", ".join(links)} if links else None
    return _json(items[(page - 1) * per_page : page * per_page], headers=headers)


# ---------------------------------------------------------------------------
# REST handlers

routes = web.RouteTableDef()


def _ctx(request: web.Request) -> tuple[Forge, Views]:
    forge = request.app[FORGE]
    return forge, Views(forge, request[URLS], request[LOGIN])


def _repo(request: web.Request) -> Repo:
    return request.app[FORGE].repo(request.match_info["owner"], request.match_info["repo"])


def _pull(repo: Repo, request: web.Request) -> PullRequest:
    try:
        return repo.pulls[int(request.match_info["number"])]
    except (KeyError, ValueError):
        raise not_found() from None


@routes.get("/user")
async def get_authenticated_user(request: web.Request) -> web.Response:
    _, views = _ctx(request)
    return _json(views.full_user(request[LOGIN], private=True))


@routes.get("/users/{login}")
async def get_user(request: web.Request) -> web.Response:
    forge, views = _ctx(request)
    login = request.match_info["login"]
    if login != forge.user and all(owner != login for owner, _ in forge.repos):
        raise not_found()
    return _json(views.full_user(login))


@routes.get("/repos/{owner}/{repo}")
async def get_repository(request: web.Request) -> web.Response:
    _, views = _ctx(request)
    return _json(views.repo(_repo(request)))


@routes.get("/repos/{owner}/{repo}/branches")
async def list_branches(request: web.Request) -> web.Response:
    _, views = _ctx(request)
    repo = _repo(request)
    branches = await repo.git.branches()
    return _paginated(
        request,
        [
            {"name": n, "commit": views.commit_ref(repo, s), "protected": False}
            for n, s in sorted(branches.items())
        ],
    )


@routes.get("/repos/{owner}/{repo}/branches/{branch:.+}")
async def get_branch(request: web.Request) -> web.Response:
    _, views = _ctx(request)
    repo = _repo(request)
    name = request.match_info["branch"]
    sha = (await repo.git.branches()).get(name)
    if sha is None:
        raise ApiError(404, "Branch not found", doc=f"{DOCS}/branches/branches#get-a-branch")
    return _json(views.branch(repo, name, await repo.git.commit_info(sha)))


@routes.get("/repos/{owner}/{repo}/git/ref/{ref:.+}")
async def get_git_ref(request: web.Request) -> web.Response:
    _, views = _ctx(request)
    repo = _repo(request)
    ref = "refs/" + request.match_info["ref"]
    sha = (await repo.git.refs(ref)).get(ref)
    if sha is None:
        raise not_found()
    return _json(views.git_ref(repo, ref, sha))


@routes.get("/repos/{owner}/{repo}/git/refs")
@routes.get("/repos/{owner}/{repo}/git/refs/{ref:.+}")
async def list_git_refs(request: web.Request) -> web.Response:
    """All refs, one ref by exact name, or the refs under a prefix (GitHub's legacy behaviour)."""
    _, views = _ctx(request)
    repo = _repo(request)
    prefix = "refs/" + request.match_info.get("ref", "")
    refs = await repo.git.refs("refs/")
    if prefix in refs:
        return _json(views.git_ref(repo, prefix, refs[prefix]))
    matching = [views.git_ref(repo, r, s) for r, s in sorted(refs.items()) if r.startswith(prefix)]
    if not matching:
        raise not_found()
    return _paginated(request, matching)


@routes.post("/repos/{owner}/{repo}/git/refs")
async def create_git_ref(request: web.Request) -> web.Response:
    _, views = _ctx(request)
    repo = _repo(request)
    body = await _json_body(request)
    ref, sha = body.get("ref"), body.get("sha")
    if not isinstance(ref, str) or not isinstance(sha, str):
        raise ApiError(422, 'Invalid request.\n\n"ref" and "sha" are required.', doc=DOC_CREATE_REF)
    if not ref.startswith("refs/") or ref.count("/") < 2:
        raise ApiError(422, "Reference name is not valid", doc=DOC_CREATE_REF)
    if not re.fullmatch(r"[0-9a-f]{40}", sha) or await repo.git.resolve(sha) is None:
        raise ApiError(422, "Object does not exist", doc=DOC_CREATE_REF)
    try:
        await repo.git.create_ref(ref, sha)
    except GitError:
        raise ApiError(422, "Reference already exists", doc=DOC_CREATE_REF) from None
    return _json(views.git_ref(repo, ref, sha), 201)


@routes.get("/repos/{owner}/{repo}/git/commits/{sha}")
@routes.get("/repos/{owner}/{repo}/commits/{sha:.+}")
async def get_commit(request: web.Request) -> web.Response:
    """A commit (git-data shape); `/commits/{ref}` wraps it the way the repos API does."""
    _, views = _ctx(request)
    repo = _repo(request)
    sha = await repo.git.resolve(request.match_info["sha"])
    if sha is None:
        raise ApiError(
            404,
            "Not Found"
            if "/git/" in request.path
            else f"No commit found for SHA: {request.match_info['sha']}",
        )
    info = await repo.git.commit_info(sha)
    if "/git/commits/" in request.path:
        return _json(views.git_commit(repo, info))
    return _json(views.commit(repo, info))


@routes.post("/repos/{owner}/{repo}/pulls")
async def create_pull(request: web.Request) -> web.Response:
    forge, views = _ctx(request)
    repo = _repo(request)
    pr = await forge.create_pull(repo, request[LOGIN], await _json_body(request))
    return _json(await views.full_pull(repo, pr), 201, {"Location": views.pull(repo, pr)["url"]})


_SORT_KEYS = {
    "created": lambda p: p.created_at,
    "updated": lambda p: p.updated_at,
    "popularity": lambda p: p.number,
    "long-running": lambda p: p.created_at,
}


@routes.get("/repos/{owner}/{repo}/pulls")
async def list_pulls(request: web.Request) -> web.Response:
    forge, views = _ctx(request)
    repo = _repo(request)
    q = request.query
    state, sort = q.get("state", "open"), q.get("sort", "created")
    if state not in ("open", "closed", "all"):
        raise validation_failed(
            f"{DOCS}/pulls/pulls#list-pull-requests",
            resource="PullRequest",
            field="state",
            code="invalid",
        )
    if sort not in _SORT_KEYS:
        raise validation_failed(
            f"{DOCS}/pulls/pulls#list-pull-requests",
            resource="PullRequest",
            field="sort",
            code="invalid",
        )
    direction = q.get("direction", "desc" if sort == "created" else "asc")
    head_owner, _, head_ref = q.get("head", "").rpartition(":")
    selected = [
        p
        for p in repo.pulls.values()
        if state in ("all", p.state)
        and ("head" not in q or (head_owner in ("", repo.owner) and p.head_ref == head_ref))
        and ("base" not in q or p.base_ref == q["base"])
    ]
    selected.sort(key=_SORT_KEYS[sort], reverse=direction == "desc")
    for pr in selected:
        await forge.refresh(repo, pr)
    return _paginated(request, [views.pull(repo, p) for p in selected])


@routes.get("/repos/{owner}/{repo}/pulls/{number}")
async def get_pull(request: web.Request) -> web.Response:
    forge, views = _ctx(request)
    repo = _repo(request)
    pr = _pull(repo, request)
    await forge.refresh(repo, pr)
    diff_type = _DIFF_MEDIA_TYPE.search(request.headers.get("Accept", ""))
    if diff_type:
        # The diff media type: the pull request's unified diff instead of its JSON, in
        # the media type asked for (with or without the v3).
        return web.Response(
            text=await repo.git.diff(pr.base_sha, pr.head_sha),
            headers={
                "Content-Type": f"{diff_type.group(0)}; charset=utf-8",
                "X-GitHub-Media-Type": "github.v3; param=diff",
            },
        )
    return _json(await views.full_pull(repo, pr))


@routes.patch("/repos/{owner}/{repo}/pulls/{number}")
async def update_pull(request: web.Request) -> web.Response:
    forge, views = _ctx(request)
    repo = _repo(request)
    pr = _pull(repo, request)
    await forge.update_pull(repo, pr, await _json_body(request))
    return _json(await views.full_pull(repo, pr))


@routes.put("/repos/{owner}/{repo}/pulls/{number}/merge")
async def merge_pull(request: web.Request) -> web.Response:
    forge, _ = _ctx(request)
    repo = _repo(request)
    pr = _pull(repo, request)
    body = await _json_body(request) if request.can_read_body else {}
    sha = await forge.merge_pull(repo, pr, request[LOGIN], body)
    return _json({"sha": sha, "merged": True, "message": "Pull Request successfully merged"})


@routes.get("/repos/{owner}/{repo}/pulls/{number}/merge")
async def check_merged(request: web.Request) -> web.Response:
    repo = _repo(request)
    pr = _pull(repo, request)
    if pr.merged_at is None:
        raise not_found()
    return web.Response(status=204)


@routes.get("/repos/{owner}/{repo}/pulls/{number}/commits")
async def list_pull_commits(request: web.Request) -> web.Response:
    """The pull request's commits, oldest first, each in the repos API's commit shape."""
    forge, views = _ctx(request)
    repo = _repo(request)
    pr = _pull(repo, request)
    await forge.refresh(repo, pr)
    shas = await repo.git.commits_between(pr.base_sha, pr.head_sha)
    return _paginated(request, [views.commit(repo, await repo.git.commit_info(s)) for s in shas])


@routes.get("/repos/{owner}/{repo}/pulls/{number}/files")
async def list_pull_files(request: web.Request) -> web.Response:
    forge, views = _ctx(request)
    repo = _repo(request)
    pr = _pull(repo, request)
    await forge.refresh(repo, pr)
    files = await repo.git.changed_files(pr.base_sha, pr.head_sha)
    return _paginated(request, [views.file(repo, pr, f) for f in files])


@routes.post("/repos/{owner}/{repo}/issues/{number}/comments")
async def create_comment(request: web.Request) -> web.Response:
    forge, views = _ctx(request)
    repo = _repo(request)
    pr = _pull(repo, request)
    body = await _json_body(request)
    comment = forge.add_comment(repo, pr.number, request[LOGIN], body.get("body"))
    data = views.comment(repo, comment)
    return _json(data, 201, {"Location": data["url"]})


@routes.get("/repos/{owner}/{repo}/issues/{number}/comments")
async def list_comments(request: web.Request) -> web.Response:
    _, views = _ctx(request)
    repo = _repo(request)
    pr = _pull(repo, request)
    comments = [views.comment(repo, c) for c in repo.comments.values() if c.number == pr.number]
    return _paginated(request, comments)


@routes.get("/repos/{owner}/{repo}/issues/comments/{id}")
async def get_comment(request: web.Request) -> web.Response:
    _, views = _ctx(request)
    repo = _repo(request)
    try:
        comment = repo.comments[int(request.match_info["id"])]
    except (KeyError, ValueError):
        raise not_found() from None
    return _json(views.comment(repo, comment))


# ---------------------------------------------------------------------------
# Web side: git smart HTTP and pull-request pages

_GIT_PATH = r"(info/refs|git-upload-pack|git-receive-pack|HEAD|objects/.+)"


async def smart_http(request: web.Request) -> web.StreamResponse:
    forge = request.app[FORGE]
    owner, name = request.match_info["owner"], request.match_info["repo"].removesuffix(".git")
    repo = forge.repos.get((owner, name))
    if repo is None:
        return web.Response(status=404, text="Repository not found.\n")

    def authorize(creds: tuple[str, str] | None) -> str | None:
        # GitHub accepts the token as password (x-access-token:<token>) or as username.
        return (
            None if creds is None else forge.authenticate(creds[1]) or forge.authenticate(creds[0])
        )

    path_info = f"/{owner}/{name}.git/{request.match_info['path']}"
    response = await serve_smart_http(request, forge.root, path_info, authorize)
    if request.method == "POST" and is_push(request) and response.status == 200:
        repo.pushed_at = _now()
    return response


async def pull_page(request: web.Request) -> web.Response:
    """`/{o}/{r}/pull/{n}` as a small HTML page, `…/pull/{n}.diff` as the raw diff."""
    forge = request.app[FORGE]
    repo = forge.repos.get((request.match_info["owner"], request.match_info["repo"]))
    pr = repo.pulls.get(int(request.match_info["number"])) if repo else None
    if repo is None or pr is None:
        return web.Response(status=404, text="Not Found\n")
    await forge.refresh(repo, pr)
    diff = await repo.git.diff(pr.base_sha, pr.head_sha)
    if request.match_info["suffix"] == ".diff":
        return web.Response(text=diff, content_type="text/plain", charset="utf-8")
    page = (
        f"<!doctype html><title>{html.escape(pr.title)} · #{pr.number}</title>"
        f"<h1>{html.escape(pr.title)} #{pr.number}</h1>"
        f"<p>{pr.state}: {html.escape(repo.owner)}:{html.escape(pr.head_ref)}"
        f" → {html.escape(pr.base_ref)}</p>"
        f"<pre>{html.escape(pr.body or '')}</pre><pre>{html.escape(diff)}</pre>"
    )
    return web.Response(text=page, content_type="text/html", charset="utf-8")


def _fault_error(request: web.Request, fault: faults.Fault) -> web.Response:
    """An injected status fault: GitHub's JSON error on the API, plain text elsewhere."""
    status = fault.status or 500
    if request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/"):
        return _json(ApiError(status, fault.phrase()).body(), status)
    return web.Response(status=status, text=fault.phrase() + "\n")


def make_app(forge: Forge, base_url_getter: Callable[[], str] | None = None) -> web.Application:
    """The forge's single application: git smart HTTP, pull-request pages and `/api/v3`.

    `base_url_getter` returns the public base URL (scheme://host:port) used in every
    link the forge hands out; without it the base comes from each request's Host.
    """
    if base_url_getter is not None:
        forge.base_url_getter = base_url_getter
    api = web.Application(middlewares=[api_middleware])
    api.add_routes(routes)
    app = web.Application()
    # On the root application, so git smart HTTP, the pages and /api/v3 are all covered.
    faults.install(app, "forge", _fault_error)
    for sub in (app, api):
        sub[FORGE] = forge
    api[RATE] = {}
    app.add_subapp(API_PREFIX, api)
    app.router.add_get(r"/{owner}/{repo}/pull/{number:\d+}{suffix:(\.diff)?}", pull_page)
    app.router.add_route("*", r"/{owner}/{repo}/{path:" + _GIT_PATH + "}", smart_http)
    return app
