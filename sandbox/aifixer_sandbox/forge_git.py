"""Bare git repositories and git's smart HTTP protocol for the GitHub stand-in.

The forge keeps real bare repositories on disk and lets the real `git` do all git
work: commits are written with plumbing (no work tree needed), diffs come from
`git diff`, and clone/fetch/push are served by `git http-backend` run as a CGI
program. Reimplementing any of that would only add ways to differ from GitHub,
whose clients (git, GitPython, PyGithub) the product uses unchanged.

Every git process is an asyncio subprocess so the sandbox's single event loop is
never blocked, and every one runs with the user's and system's git configuration
ignored so results do not depend on the machine.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)

ZERO_SHA = "0" * 40
CHUNK = 64 * 1024

# Identity and configuration isolation for every git process we start.
_GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}


class GitError(RuntimeError):
    """A git command exited non-zero."""

    def __init__(self, args: tuple[str, ...], returncode: int, stderr: bytes) -> None:
        self.returncode = returncode
        self.stderr = stderr.decode(errors="replace").strip()
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {self.stderr}")


async def git(
    cwd: Path,
    *args: str,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> bytes:
    """Run `git args…` in `cwd` and return its stdout; raise GitError on failure."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env={**_GIT_ENV, **(env or {})},
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise GitError(args, proc.returncode or -1, err)
    return out


@dataclass(frozen=True)
class ChangedFile:
    """One file of a diff, in the terms GitHub's "PR files" list uses."""

    filename: str
    status: str  # added | removed | modified | renamed | copied | changed
    sha: str  # blob at the new side (the old side for removals)
    additions: int
    deletions: int
    patch: str | None  # hunks only, as GitHub shows them; None for binary files
    previous_filename: str | None = None


# `git diff --raw` status letters → GitHub file status words.
_STATUS = {
    "A": "added",
    "D": "removed",
    "M": "modified",
    "R": "renamed",
    "C": "copied",
    "T": "changed",
}


class BareRepo:
    """One bare repository on disk, driven through the git CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def init(self, default_branch: str) -> None:
        """Create the repository; pushes over HTTP are enabled as on any forge."""
        self.path.mkdir(parents=True, exist_ok=False)
        await git(self.path, "init", "--quiet", "--bare", f"--initial-branch={default_branch}")
        await git(self.path, "config", "http.receivepack", "true")

    async def default_branch(self) -> str:
        """The branch HEAD names (an existing repository's default branch)."""
        return (await self._git("symbolic-ref", "--short", "HEAD")).decode().strip()

    async def _git(
        self, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None
    ) -> bytes:
        return await git(self.path, *args, stdin=stdin, env=env)

    async def resolve(self, rev: str) -> str | None:
        """The commit sha `rev` names, or None if it names no commit."""
        try:
            out = await self._git(
                "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"
            )
        except GitError:
            return None
        return out.decode().strip()

    async def refs(self, prefix: str = "refs/") -> dict[str, str]:
        """All refs under `prefix` (full names) mapped to the sha they point at."""
        out = await self._git("for-each-ref", "--format=%(refname) %(objectname)", prefix)
        return dict(line.split(" ", 1) for line in out.decode().splitlines())

    async def branches(self) -> dict[str, str]:
        """Branch name → tip sha."""
        heads = await self.refs("refs/heads/")
        return {ref.removeprefix("refs/heads/"): sha for ref, sha in heads.items()}

    async def create_ref(self, ref: str, sha: str) -> None:
        """Create `ref` at `sha`; GitError if it already exists (old value must be absent)."""
        await self._git("update-ref", ref, sha, ZERO_SHA)

    async def commit_files(
        self,
        branch: str,
        files: Mapping[str, str | None],
        message: str,
        author: tuple[str, str],
        *,
        skip_unchanged: bool = False,
    ) -> str:
        """Commit `files` on top of `branch` (creating it if absent) and return the new sha.

        A value of None deletes that path. Uses a throwaway index so the bare repository
        needs no work tree, and moves the branch with compare-and-swap so a concurrent
        push cannot be silently overwritten. With `skip_unchanged`, files that change
        nothing make no commit: the branch's tip is returned.
        """
        parent = await self.resolve(f"refs/heads/{branch}")
        with tempfile.TemporaryDirectory(prefix="forge-index-") as tmp:
            index_env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if parent:
                await self._git("read-tree", parent, env=index_env)
            # `--index-info` records: mode 0 removes a path, which needs no work tree.
            records = []
            for path, content in files.items():
                if content is None:
                    records.append(f"0 {ZERO_SHA}\t{path}")
                    continue
                out = await self._git("hash-object", "-w", "--stdin", stdin=content.encode())
                records.append(f"100644 {out.decode().strip()}\t{path}")
            index_info = "".join(f"{r}\0" for r in records).encode()
            await self._git("update-index", "-z", "--index-info", stdin=index_info, env=index_env)
            tree = (await self._git("write-tree", env=index_env)).decode().strip()
        if skip_unchanged and parent and tree == await self.resolve(f"{parent}^{{tree}}"):
            return parent
        name, email = author
        who = {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }
        parent_args = ("-p", parent) if parent else ()
        sha = (
            (await self._git("commit-tree", tree, *parent_args, stdin=message.encode(), env=who))
            .decode()
            .strip()
        )
        await self._git("update-ref", f"refs/heads/{branch}", sha, parent or ZERO_SHA)
        return sha

    async def commits_between(self, base: str, head: str) -> list[str]:
        """Commits reachable from `head` but not from `base`, oldest first (as GitHub
        lists a pull request's commits)."""
        out = await self._git("rev-list", "--reverse", f"{base}..{head}")
        return [line.decode() for line in out.split()]

    async def count_commits(self, base: str, head: str) -> int:
        """Commits reachable from `head` but not from `base`."""
        return int(await self._git("rev-list", "--count", f"{base}..{head}"))

    async def merges_cleanly(self, base: str, head: str) -> bool:
        """Whether merging `head` into `base` would succeed without conflicts (nothing is written
        to any ref; the merged tree is an unreferenced object)."""
        try:
            await self._git("merge-tree", "--write-tree", "--no-messages", base, head)
        except GitError as e:
            if e.returncode == 1:  # conflicts
                return False
            raise
        return True

    async def merge(
        self,
        base_ref: str,
        head_sha: str,
        method: str,
        message: str,
        committer: tuple[str, str],
    ) -> str:
        """Merge `head_sha` into branch `base_ref` as a forge's merge button does; return the
        branch's new tip. `method`: "merge" (a merge commit with both parents), "squash" (one
        commit with the merged tree) or "rebase" (head's commits replayed on the base, each
        keeping its author). The branch moves by compare-and-swap; GitError on conflicts."""
        base_sha = await self.resolve(f"refs/heads/{base_ref}")
        if base_sha is None:
            raise GitError(("merge", base_ref), 1, b"no such branch")
        name, email = committer
        who = {"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
        if method == "rebase":
            sha = await self._replay(base_sha, head_sha, who)
        else:
            out = await self._git("merge-tree", "--write-tree", "--no-messages", base_sha, head_sha)
            tree = out.decode().split("\n", 1)[0].strip()
            parents = ("-p", base_sha) + (("-p", head_sha) if method == "merge" else ())
            author = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, **who}
            sha = (
                (await self._git("commit-tree", tree, *parents, stdin=message.encode(), env=author))
                .decode()
                .strip()
            )
        await self._git("update-ref", f"refs/heads/{base_ref}", sha, base_sha)
        return sha

    async def _replay(self, base_sha: str, head_sha: str, who: Mapping[str, str]) -> str:
        """Cherry-pick `base..head` (no merges) onto `base` in a throwaway work tree."""
        with tempfile.TemporaryDirectory(prefix="forge-rebase-") as tmp:
            work = Path(tmp) / "w"
            await self._git("worktree", "add", "--quiet", "--detach", str(work), base_sha)
            try:
                commits = (
                    await self._git(
                        "rev-list", "--reverse", "--no-merges", f"{base_sha}..{head_sha}"
                    )
                ).split()
                for commit in commits:
                    await git(work, "cherry-pick", "--allow-empty", commit.decode(), env=who)
                return (await git(work, "rev-parse", "HEAD")).decode().strip()
            finally:
                await self._git("worktree", "remove", "--force", str(work))

    async def commit_info(self, sha: str) -> dict[str, str]:
        """Author, committer, dates, message, tree and parents of one commit."""
        fields = ["%H", "%T", "%P", "%an", "%ae", "%aI", "%cn", "%ce", "%cI", "%B"]
        out = await self._git("show", "-s", f"--format={'%x00'.join(fields)}", sha)
        keys = ["sha", "tree", "parents", "author_name", "author_email", "author_date",
                "committer_name", "committer_email", "committer_date", "message"]  # fmt: skip
        return dict(zip(keys, out.decode().rstrip("\n").split("\x00"), strict=True))

    async def diff(self, base: str, head: str) -> str:
        """The pull-request diff: `head` against its merge base with `base` (three dots)."""
        return (await self._git("diff", "-M", f"{base}...{head}")).decode(errors="replace")

    async def changed_files(self, base: str, head: str) -> list[ChangedFile]:
        """Per-file view of `diff(base, head)`, with GitHub's status words and hunks."""
        span = f"{base}...{head}"
        raw = (await self._git("diff", "-M", "--raw", "-z", "--no-abbrev", span)).decode()
        numstat = (await self._git("diff", "-M", "--numstat", "-z", span)).decode()
        patches = _split_patch((await self._git("diff", "-M", span)).decode(errors="replace"))
        counts = _parse_numstat(numstat)
        files = []
        for (status, old_sha, new_sha, old_path, new_path), patch in zip(
            _parse_raw(raw), patches, strict=True
        ):
            additions, deletions = counts.get(new_path, (0, 0))
            files.append(
                ChangedFile(
                    filename=new_path,
                    status=_STATUS.get(status, "changed"),
                    sha=old_sha if status == "D" else new_sha,
                    additions=additions,
                    deletions=deletions,
                    patch=patch,
                    previous_filename=old_path if status in "RC" else None,
                )
            )
        return files


def _parse_raw(raw: str) -> list[tuple[str, str, str, str, str]]:
    """`git diff --raw -z` → (status letter, old sha, new sha, old path, new path)."""
    parts = raw.split("\x00")
    out = []
    i = 0
    while i < len(parts) and parts[i]:
        _old_mode, _new_mode, old_sha, new_sha, status = parts[i].lstrip(":").split(" ")
        letter = status[0]
        if letter in "RC":  # renames and copies carry both paths
            out.append((letter, old_sha, new_sha, parts[i + 1], parts[i + 2]))
            i += 3
        else:
            out.append((letter, old_sha, new_sha, parts[i + 1], parts[i + 1]))
            i += 2
    return out


def _parse_numstat(numstat: str) -> dict[str, tuple[int, int]]:
    """`git diff --numstat -z` → new path → (additions, deletions); binary files count 0."""
    parts = numstat.split("\x00")
    out: dict[str, tuple[int, int]] = {}
    i = 0
    while i < len(parts) and parts[i]:
        added, deleted, path = parts[i].split("\t", 2)
        if path == "":  # rename: the two paths follow as separate fields
            path = parts[i + 2]
            i += 3
        else:
            i += 1
        out[path] = (int(added) if added != "-" else 0, int(deleted) if deleted != "-" else 0)
    return out


def _split_patch(diff: str) -> list[str | None]:
    """Split a full `git diff` into per-file hunk text, in the order git lists files.

    GitHub's `patch` field holds the hunks only (from the first `@@`), without the
    `diff --git`/index/---/+++ header; files without hunks (binary, pure rename) get None.
    """
    patches: list[str | None] = []
    for chunk in diff.split("\ndiff --git "):
        if not chunk.strip():
            continue
        hunks = chunk.find("\n@@")
        patches.append(chunk[hunks + 1 :].rstrip("\n") if hunks != -1 else None)
    return patches


# ---------------------------------------------------------------------------
# Smart HTTP: git http-backend as CGI


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(username, password) from an `Authorization: Basic …` header, or None."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = (
            base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def is_push(request: web.Request) -> bool:
    """Whether a smart-HTTP request is part of a push (git-receive-pack)."""
    return request.query.get("service") == "git-receive-pack" or request.path.endswith(
        "/git-receive-pack"
    )


def _auth_challenge(text: str) -> web.Response:
    # The Basic challenge is what makes git retry with the credentials from the URL
    # or a credential helper, exactly as it does against github.com.
    return web.Response(
        status=401,
        text=text + "\n",
        headers={"WWW-Authenticate": 'Basic realm="GitHub"'},
    )


def _cgi_env(
    request: web.Request, root: Path, path_info: str, remote_user: str | None
) -> dict[str, str]:
    env = {
        **_GIT_ENV,
        "GIT_PROJECT_ROOT": str(root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "REQUEST_METHOD": request.method,
        "PATH_INFO": path_info,
        "QUERY_STRING": request.query_string,
        "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        "REMOTE_ADDR": request.remote or "",
        "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
    }
    # aiohttp has already undone any Content-Encoding: gzip, so neither the encoding
    # nor the (compressed) Content-Length is passed on; http-backend then reads to EOF.
    if "Git-Protocol" in request.headers:
        env["GIT_PROTOCOL"] = request.headers["Git-Protocol"]
    if remote_user:
        env["REMOTE_USER"] = remote_user
    return env


async def _feed(request: web.Request, stdin: asyncio.StreamWriter) -> None:
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # http-backend stopped reading; its output explains why
    finally:
        stdin.close()


def _parse_cgi_head(head: bytes) -> tuple[int, list[tuple[str, str]]]:
    status = 200
    headers = []
    for line in head.decode("latin-1").splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition(":")
        if key.strip().lower() == "status":
            status = int(value.strip().split(" ", 1)[0])
        else:
            headers.append((key.strip(), value.strip()))
    return status, headers


async def serve_smart_http(
    request: web.Request,
    root: Path,
    path_info: str,
    authorize: Callable[[tuple[str, str] | None], str | None],
) -> web.StreamResponse:
    """Answer one smart-HTTP request for the repository at `root` + `path_info`.

    `authorize(credentials)` returns the user login the credentials authenticate, or
    None. Reads are open (public repositories); pushes need valid credentials, and
    credentials that are offered but wrong are refused for reads too, like GitHub.
    """
    creds = basic_credentials(request.headers.get("Authorization"))
    user = authorize(creds)
    if creds is not None and user is None:
        return _auth_challenge(
            "Invalid username or token."
            " Password authentication is not supported for Git operations."
        )
    if user is None and is_push(request):
        return _auth_challenge("Authentication required to push.")

    proc = await asyncio.create_subprocess_exec(
        "git",
        "http-backend",
        env=_cgi_env(request, root, path_info, user),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    if stdin is None or stdout is None or stderr is None:
        raise RuntimeError("git http-backend started without pipes")
    feeder = asyncio.create_task(_feed(request, stdin))
    stderr_task = asyncio.create_task(stderr.read())
    try:
        head = await _read_cgi_head(stdout)
        status, headers = _parse_cgi_head(head)
        response = web.StreamResponse(status=status)
        for key, value in headers:
            response.headers.add(key, value)
        await response.prepare(request)
        while chunk := await stdout.read(CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    except BaseException:
        # The client went away or the response failed: do not leave git waiting on pipes.
        feeder.cancel()
        if proc.returncode is None:
            proc.kill()
        raise
    finally:
        await asyncio.gather(feeder, return_exceptions=True)
        await proc.wait()
        err = await stderr_task
        if proc.returncode or err:
            log.debug(
                "git http-backend %s exited %s: %s",
                path_info,
                proc.returncode,
                err.decode(errors="replace"),
            )


async def _read_cgi_head(stdout: asyncio.StreamReader) -> bytes:
    """Read CGI header lines up to the blank line (CGI allows LF or CRLF)."""
    lines = []
    while True:
        line = await stdout.readline()
        if not line or not line.strip():
            return b"".join(lines)
        lines.append(line)
