"""The GitOps side of a verified fix: the only module that imports `git` and `github`.

A fix that runs in the cluster but not in the GitOps repository is reverted by the
next sync, so once a fix is verified the same change is proposed as a pull request:
clone the repository (shallow), find what defines the workload, change only the fixed
fields there (`aifixer.yamledit`, comments and formatting kept), commit on a branch
named from the incident id, push, and open the pull request.

What defines the workload, in this order:

- the Deployment's `aifixer.io/source` annotation, then AIFIXER_GITOPS_PATHS: a plain
  manifest file; or a directory holding a kustomization (or the kustomization file):
  the overlay the pipeline builds; or a directory holding Chart.yaml (or Chart.yaml, or
  a values file beside it, given to `helm template` after values.yaml): a Helm chart,
  rendered as release `meta.helm.sh/release-name` / `app.kubernetes.io/instance` of
  the Deployment (else its name) in its namespace;
- else a scan. A repository with no kustomization and no chart is scanned as ever: the
  one YAML file defining the Deployment. Otherwise every top kustomization (one no
  other includes) and every chart is rendered, and the ones rendering the Deployment
  count, with the plain files that are no part of a kustomization or chart; exactly
  one must be found.

A plain file is edited as it always was. For kustomize and Helm, `aifixer.sources`
finds where each changed field comes from (an overlay's images, replicas or patches,
the base; the chart's values), edits it, and proves the edit by rendering the branch
with the real tools (aifixer.adapters.render): the pull request then says so. A change
that cannot be proven raises `Unproven` (a PermanentError) with what to edit by hand;
the pipeline then calls `open_draft_pr`, which opens a draft pull request adding only
a note of those hand edits (no manifest is touched, see its docstring).

One branch and one pull request per incident: the branch is `aifixer/<incident id>`,
and a pull request is only ever found again by that branch, never by the workload or
the fingerprint. When a newer incident of a workload opens its pull request, the older
aifixer pull requests still open for that workload (named by a hidden marker in their
body, `prbody.workload_marker`, on an `aifixer/` branch of this repository, for an
incident opened earlier) are commented with the new one's link and closed.
`pull_state` reads what became of a pull request (merged, closed) for the periodic
check.

Every step is idempotent, because a task may run again after any of them: an open pull
request for the branch is returned as it is (`created=False`), a branch that already
holds the same change is not pushed again, and a pull request a concurrent run opened
first ("already exists") is found instead of failing.

The token is sent to git as an HTTP header through `GIT_CONFIG_*` environment
variables, never in a URL: it then appears neither on a command line nor in the
clone's `.git/config` nor in git's error messages. Every error message is scrubbed of
it anyway before it leaves this module.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import git
from github import Auth, Github, GithubException, RateLimitExceededException
from github.PullRequest import PullRequest
from github.Repository import Repository
from urllib3.util.retry import Retry

from aifixer import prbody, sources
from aifixer.models import Diagnosis, FieldChange, IncidentState, PullRequestRef, Subject
from aifixer.redact import redact
from aifixer.settings import Settings
from aifixer.sources import FileEdit, Layout, SourceChange
from aifixer.yamledit import DocumentNotFound, EditError, defines, edit_manifest_file

from .errors import (
    AdapterError,
    PermanentError,
    TransientError,
    Unproven,
    bounded,
    is_transient_status,
)
from .render import Renderer

log = logging.getLogger(__name__)

SYSTEM = "github"
SOURCE_ANNOTATION = "aifixer.io/source"  # "<path>" or "<owner>/<repo>:<path>"
# Who names a Helm release: Helm itself, then the label Argo CD and charts set.
RELEASE_ANNOTATION = "meta.helm.sh/release-name"
RELEASE_LABEL = "app.kubernetes.io/instance"
BRANCH_PREFIX = "aifixer/"
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a commit id, SHA-1 or SHA-256
MANIFEST_SUFFIXES = (".yaml", ".yml")
# Where a draft pull request's note of hand edits goes: a hidden directory, which no
# kustomization, chart or manifest scan reads.
NOTE_DIR = ".aifixer/hand-edits"
SUPERSEDE_SCAN = 100  # open pull requests looked at, newest first, for older ones to close

# git's messages for failures worth retrying: the network, the server, a timeout.
_GIT_TRANSIENT = re.compile(
    r"returned error: (5\d\d|429)|could not resolve host|connection refused|failed to connect"
    r"|connection reset|timed out|timeout|early eof|rpc failed|the remote end hung up"
    r"|couldn't connect|empty reply",
    re.I,
)
_URL_CREDENTIALS = re.compile(r"(://)[^/\s@]+@")


__all__ = ["FileEdit", "Forge", "SourceChange", "Unproven"]


class Forge:
    """Proposes verified fixes as pull requests in the GitOps repository.

    Args:
        settings: the repository (`github_repo`, `git_clone_url`, `git_base_branch`),
            the API (`github_api_url`, `github_token`), the commit author, the
            workload-to-file map (`gitops_paths`) and the timeouts.

    Raises:
        PermanentError: the repository or the token is not configured.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.github_repo or "/" not in settings.github_repo:
            raise PermanentError(SYSTEM, "AIFIXER_GITHUB_REPO must name owner/repository")
        self._token = settings.github_token.get_secret_value()
        if not self._token:
            raise PermanentError(SYSTEM, "AIFIXER_GITHUB_TOKEN is not set")
        self.settings = settings
        self._github = Github(
            base_url=settings.github_api_url,
            auth=Auth.Token(self._token),
            timeout=max(1, math.ceil(settings.request_timeout_s)),  # PyGithub wants an int
            # One quick retry of a refused connection, nothing else: urllib3 would otherwise
            # sleep whatever Retry-After a 429 or 503 says (a day, say) inside the worker.
            # Backoff, and honouring Retry-After within a bound, are the task's job.
            retry=Retry(
                total=1,
                connect=1,
                read=0,
                redirect=0,
                status=0,
                other=0,
                respect_retry_after_header=False,
            ),  # fmt: skip
            seconds_between_requests=0.05,
            seconds_between_writes=0.2,
        )

    # -- the entry point the pipeline calls ----------------------------------------

    def open_fix_pr(self, state: IncidentState) -> PullRequestRef:
        """Propose the incident's applied (and verified) change as a pull request.

        Raises:
            TransientError: the forge is unreachable, overloaded or rate-limited.
            PermanentError: no file defines the workload, the file already holds the
                fix, the token is refused, or the forge rejects the request.
            Unproven: (a PermanentError) a kustomize or Helm change that rendering
                could not prove; its `explanation` and `hand_edits` say what to edit.
        """
        if state.apply is None:
            raise PermanentError(SYSTEM, "no applied change to propose")
        source, release = _origin(state)
        subject: Subject = state.incident.workload
        target = state.proposal.target if state.proposal is not None else None
        if target is not None:
            # The claim or Service fixed: wherever the repository defines it (the
            # workload's source annotation names the workload's file).
            subject, source = target, None
        ref = self.propose(
            subject,
            state.apply.changes,
            incident_id=state.incident.id,
            title=prbody.title(state),
            body=lambda edit: prbody.body(
                state, edit.diff, edit.path, edit.proof.markdown() if edit.proof else None
            ),
            source=source,
            release=release,
        )
        self.supersede(state, ref)
        # What the body says in its Diagnosis section: `explain_pr` replaces only that.
        return ref.model_copy(
            update={"diagnosis_sha": prbody.digest(prbody.diagnosis_section(state))}
        )

    def open_draft_pr(
        self, state: IncidentState, explanation: str, hand_edits: list[str]
    ) -> PullRequestRef:
        """A draft pull request saying what must be edited by hand, for a change that
        rendering could not prove (after `open_fix_pr` raised `Unproven`).

        The draft commits one file, a note under `.aifixer/hand-edits/`, and changes no
        manifest. GitHub holds no pull request for a branch without a commit, and
        pushing the best-effort edit instead would put an unproven change one click from
        the next sync: a reviewer marking it ready, a bot merging drafts, a team syncing
        branches. A reviewer expects a draft to be safe as it is; they make the edits
        the body lists on this branch (deleting the note) and mark it ready.

        Idempotent like `open_fix_pr`: the incident's branch and its open pull request
        are found again (`created=False`), the note is not pushed twice.

        Raises:
            TransientError, PermanentError: as for `open_fix_pr`.
        """
        if state.apply is None:
            raise PermanentError(SYSTEM, "no applied change to propose")
        workload, incident_id = state.incident.workload, state.incident.id
        repo_name, _ = self._target(workload, _origin(state)[0])
        branch = BRANCH_PREFIX + incident_id
        with self._translated(f"repository {repo_name}"):
            repo = self._github.get_repo(repo_name)
            base = self.settings.git_base_branch or repo.default_branch
        existing = self._open_pull(repo, branch)
        if existing is not None:
            ref = _ref(existing, branch, created=False, repo=repo_name)
        else:
            note = f"{NOTE_DIR}/{incident_id.replace(':', '_')}.md"
            text = prbody.hand_edit_note(state, explanation, hand_edits)
            title = bounded(f"{prbody.title(state)} (needs a hand edit)", 250)
            with tempfile.TemporaryDirectory(prefix="aifixer-gitops-") as tmp:
                checkout = self._clone(self._clone_url(repo_name), Path(tmp) / "repo", base)
                _write_note(Path(checkout.working_dir), note, text)
                message = f"{title}\n\nAifixer-Incident: {incident_id}\n"
                self._push(checkout, branch, [FileEdit(note, "", text)], message)
            ref = self._create_pull(
                repo,
                branch,
                base,
                title,
                prbody.draft_body(state, explanation, hand_edits, note),
                draft=True,
            )
            log.info("[%s] draft pull request #%d: a hand edit is needed", workload.key, ref.number)
        # A draft changes no manifest: the older pull requests' fixes are not in it, so
        # none is closed for it.
        return ref

    def supersede(self, state: IncidentState, new: PullRequestRef) -> list[int]:
        """Comment and close the older aifixer pull requests still open for the workload.

        Older: on an `aifixer/` branch of the same repository, for an incident opened
        before this one (the opened time in the id), whose body carries this workload's
        marker. A pull request of a later incident is never closed by an earlier one.
        Best effort: a failure is logged and leaves the older ones open (the next
        incident of the workload closes them); it never costs the new pull request.

        Returns:
            The numbers of the pull requests closed.
        """
        w = state.incident.workload
        workload = f"{w.cluster}/{w.namespace}/{w.kind}/{w.name}"
        fields = {c.path for c in state.apply.changes} if state.apply else set()
        ours = _opened_ms(state.incident.id)
        repo_name = new.repo or self.settings.github_repo
        closed: list[int] = []
        try:
            with self._translated("superseding older pull requests"):
                repo = self._github.get_repo(repo_name)
                pulls = repo.get_pulls(state="open", sort="created", direction="desc")
                for pull in islice(pulls, SUPERSEDE_SCAN):
                    head = pull.head.ref or ""
                    theirs = _opened_ms(head[len(BRANCH_PREFIX) :])
                    if (
                        pull.number == new.number
                        or not head.startswith(BRANCH_PREFIX)
                        or pull.head.repo is None
                        or pull.head.repo.full_name != repo.full_name
                        or ours is None
                        or theirs is None
                        or theirs >= ours
                        or pull.draft  # a hand edit a person may be making there
                        or not _covers(pull.body or "", workload, fields)
                        or _touched_by_people(pull, head[len(BRANCH_PREFIX) :])
                    ):
                        continue
                    self._close_superseded(pull, new, state)
                    closed.append(pull.number)
        except AdapterError as exc:
            log.warning("[%s] older pull requests left open: %s", state.incident.workload.key, exc)
        return closed

    def _close_superseded(
        self, pull: PullRequest, new: PullRequestRef, state: IncidentState
    ) -> None:
        mention = f"Superseded by #{new.number}"
        text = redact(
            f"{mention} ({new.url}): a newer incident (`{state.incident.id}`) on "
            f"`{state.incident.workload.key}` proposes its own verified fix, which sets "
            f"every field this pull request changes, and aifixer keeps one pull request "
            f"per workload open."
        )
        if not any(mention in (c.body or "") for c in pull.get_issue_comments()):
            pull.create_issue_comment(text)
        pull.edit(state="closed")
        log.info("[%s] pull request #%d closed: superseded by #%d",
                 state.incident.workload.key, pull.number, new.number)  # fmt: skip

    def pull_state(self, ref: PullRequestRef) -> PullRequestRef:
        """`ref` as the forge has it now: still open, merged (and when), or closed unmerged.

        Raises:
            TransientError: the forge is unreachable, overloaded or rate-limited.
            PermanentError: the pull request or its repository is gone, the token refused.
        """
        repo_name = ref.repo or self.settings.github_repo
        with self._translated(f"pull request #{ref.number}"):
            pull = self._github.get_repo(repo_name).get_pull(ref.number)
            merged, state = pull.merged, pull.state
            merged_at, closed_at = pull.merged_at, pull.closed_at
            sha = pull.merge_commit_sha if merged else None
        if merged:
            when = merged_at or closed_at or datetime.now(UTC)
            return ref.model_copy(
                update={"state": "merged", "merged_at": when, "closed_at": when,
                        "merge_commit": sha if isinstance(sha, str) and _SHA.fullmatch(sha) else None}
            )  # fmt: skip
        if state == "closed":
            when = closed_at or datetime.now(UTC)
            return ref.model_copy(update={"state": "closed", "closed_at": when})
        return ref

    def explain_pr(self, state: IncidentState, written: Diagnosis) -> bool:
        """Show `written` (the model's explanation) in the incident's open pull request.

        The pull request was opened as soon as the fix verified, with the diagnosis
        written from the facts; the model's words, checked against the same facts
        (`grounding.shown`), replace that one section later. Only while the section is
        still the one aifixer wrote (`PullRequestRef.diagnosis_sha`) and the pull
        request is open: a person's edit of it is never overwritten (GitHub's PATCH
        takes no precondition: an edit landing between this read and this write is the
        one case left). Safe to repeat.

        Returns:
            True when the pull request shows the new section (now, or already); False
            when it is left as it is (a person edited it, it is no longer open, or its
            body has no section of aifixer's).

        Raises:
            TransientError, PermanentError: as `pull_state`.
        """
        ref = state.pull_request
        if ref is None or ref.draft:
            return False
        after = prbody.diagnosis_section(state.model_copy(update={"diagnosis": written}))
        ours = ref.diagnosis_sha or prbody.digest(prbody.diagnosis_section(state))
        repo_name = ref.repo or self.settings.github_repo
        with self._translated(f"pull request #{ref.number}"):
            pull = self._github.get_repo(repo_name).get_pull(ref.number)
            body, open_ = pull.body or "", pull.state == "open"
        current = prbody.find_diagnosis(body)
        if current is None:
            return False
        if current == after:
            return True
        if prbody.digest(current) != ours or not open_:
            return False
        with self._translated(f"editing pull request #{ref.number}"):
            pull.edit(body=body.replace(current, after, 1))
        return True

    def propose(
        self,
        workload: Subject,
        changes: list[FieldChange],
        *,
        incident_id: str,
        title: str,
        body: Callable[[SourceChange], str],
        source: str | None = None,
        release: str | None = None,
    ) -> PullRequestRef:
        """Open (or find) the pull request making `changes` where `workload` is defined.

        Args:
            workload: the Deployment the changes are for.
            changes: manifest fields to set (or delete, `after=None`).
            incident_id: the incident's; names the branch `aifixer/<incident_id>`, so a
                redelivery finds its own pull request and a later incident opens its own.
            title: the pull request's title (also the commit subject).
            body: renders the pull request's body from the edit (`.path`, `.diff`, and
                for kustomize and Helm `.proof`).
            source: the Deployment's `aifixer.io/source` annotation, if any.
            release: the Helm release that made the Deployment, if one did (default:
                the workload's name).

        Returns:
            The pull request; `created=False` when it was already open.

        Raises:
            TransientError, PermanentError: as for `open_fix_pr`.
        """
        repo_name, path = self._target(workload, source)
        branch = BRANCH_PREFIX + incident_id
        with self._translated(f"repository {repo_name}"):
            repo = self._github.get_repo(repo_name)
            base = self.settings.git_base_branch or repo.default_branch
        existing = self._open_pull(repo, branch)
        if existing is not None:
            log.info("[%s] pull request #%d already open", workload.key, existing.number)
            return _ref(existing, branch, created=False, repo=repo_name)

        with tempfile.TemporaryDirectory(prefix="aifixer-gitops-") as tmp:
            checkout = self._clone(self._clone_url(repo_name), Path(tmp) / "repo", base)
            root = Path(checkout.working_dir)
            layout = self._layout(root, path, workload, _release(workload, release))
            edit = self._change(root, layout, workload, changes)
            message = f"{title}\n\nAifixer-Incident: {incident_id}\n"
            self._push(checkout, branch, list(edit.edits), message)
        ref = self._create_pull(repo, branch, base, title, body(edit))
        log.info(
            "[%s] pull request #%d for %s (created: %s)",
            workload.key,
            ref.number,
            edit.path,
            ref.created,
        )
        return ref

    # -- where the manifest lives ----------------------------------------------------

    def _target(self, workload: Subject, source: str | None) -> tuple[str, str | None]:
        """(owner/repo, path or None to search) from the annotation, then the settings."""
        if source:
            repo_name, sep, path = source.strip().rpartition(":")
            if not sep:
                repo_name = self.settings.github_repo
            if not path or (sep and repo_name.count("/") != 1):
                raise PermanentError(
                    SYSTEM,
                    f"{workload.key}: {SOURCE_ANNOTATION} must be '<path>' or "
                    f"'<owner>/<repo>:<path>', got {bounded(source, 200)!r}",
                )
            return repo_name, path
        s = self.settings
        return s.github_repo, s.gitops_paths.get(workload.key) or s.gitops_path

    def _clone_url(self, repo_name: str) -> str:
        """The clone URL of `repo_name`: the configured one, or its sibling on the same host."""
        url = self.settings.clone_url
        if repo_name == self.settings.github_repo:
            return url
        own = f"/{self.settings.github_repo}.git"
        if not url.endswith(own):
            raise PermanentError(
                SYSTEM, f"cannot derive the clone URL of {repo_name} from AIFIXER_GIT_CLONE_URL"
            )
        return url[: -len(own)] + f"/{repo_name}.git"

    def _layout(self, root: Path, path: str | None, workload: Subject, release: str) -> Layout:
        """What defines the workload: the configured path's layout, else the scan's."""
        if path:
            try:
                # Refused: a path that escapes the checkout or that a tool reads as an option.
                target = sources.inside(root, path)
                if not target.exists():
                    return Layout("plain", path)  # _edit says it is not a file in the repository
                return sources.layout_of(root, path, release=release, namespace=workload.namespace)
            except sources.SourceError as exc:
                raise PermanentError(
                    SYSTEM, f"{workload.key}: {SOURCE_ANNOTATION}: {bounded(str(exc), 300)}"
                ) from None
        try:
            layouts = sources.rendered_layouts(root, release=release, namespace=workload.namespace)
            parts = sources.parts_of_layouts(root, layouts)
        except sources.SourceError as exc:
            raise PermanentError(SYSTEM, bounded(str(exc), 300)) from None
        if not layouts:
            return Layout("plain", self._find_file(root, workload))
        found = [
            Layout("plain", str(p.relative_to(root)))
            for p in _manifest_files(root)
            if p.resolve() not in parts and _defines_workload(p, workload)
        ]
        renderer = Renderer(self.settings)
        for layout in layouts:
            try:
                text = renderer.render(root, layout)
            except PermanentError as exc:
                log.info("[%s] %s does not render: %s", workload.key, layout.path, exc.message)
                continue
            if sources.renders_workload(text, workload, layout):
                found.append(layout)
        if len(found) == 1:
            return found[0]
        return Layout("plain", self._one(workload, [f.path for f in found]))  # raises

    def _find_file(self, root: Path, workload: Subject) -> str:
        """The one manifest file in the repository that defines the workload."""
        found = [
            str(p.relative_to(root))
            for p in _manifest_files(root)
            if _defines_workload(p, workload)
        ]
        return self._one(workload, found)

    def _one(self, workload: Subject, found: list[str]) -> str:
        if len(found) == 1:
            return found[0]
        where = f"{SOURCE_ANNOTATION} on the Deployment, AIFIXER_GITOPS_PATHS or the cluster's path"
        if not found:
            raise PermanentError(
                SYSTEM,
                f"no file in {self.settings.github_repo} defines Deployment {workload.key}; "
                f"set {where}",
            )
        raise PermanentError(
            SYSTEM,
            f"several files define Deployment {workload.key} ({', '.join(sorted(found)[:5])}); "
            f"set {where}",
        )

    def _change(
        self, root: Path, layout: Layout, workload: Subject, changes: list[FieldChange]
    ) -> SourceChange:
        """Edit the checkout where the layout defines each changed field (and prove it)."""
        if layout.kind == "plain":
            return SourceChange(layout, (self._edit(root, layout.path, workload, changes),))
        renderer = Renderer(self.settings)

        def render(what: Layout) -> str:
            try:
                return renderer.render(root, what)
            except PermanentError as exc:  # an edit the tool refuses: not this one
                raise sources.SourceError(exc.message) from None

        try:
            return sources.change_source(root, layout, workload, changes, render)
        except sources.Unproven as exc:
            raise Unproven(SYSTEM, exc.explanation, exc.hand_edits) from None
        except (sources.SourceError, EditError) as exc:
            raise PermanentError(SYSTEM, f"{layout.describe()}: {bounded(str(exc), 500)}") from None

    def _edit(
        self, root: Path, path: str, workload: Subject, changes: list[FieldChange]
    ) -> FileEdit:
        file = (root / path).resolve()
        if not file.is_relative_to(root.resolve()) or not file.is_file():
            raise PermanentError(SYSTEM, f"{path} is not a file in the repository")
        before = file.read_text(encoding="utf-8")
        try:
            after = edit_manifest_file(
                before, workload.kind, workload.namespace, workload.name, changes
            )
        except DocumentNotFound:
            raise PermanentError(
                SYSTEM, f"{path} does not define {workload.kind} {workload.key}"
            ) from None
        except EditError as exc:
            raise PermanentError(SYSTEM, f"{path}: {bounded(str(exc), 300)}") from None
        if after == before:
            raise PermanentError(
                SYSTEM, f"{path} already holds the fix for {workload.key}: nothing to propose"
            )
        file.write_text(after, encoding="utf-8")
        return FileEdit(path, before, after)

    # -- git ---------------------------------------------------------------------------

    def _git_env(self) -> dict[str, str]:
        basic = base64.b64encode(f"x-access-token:{self._token}".encode()).decode()
        timeout = str(max(1, int(self.settings.git_timeout_s)))
        return {
            "GIT_CONFIG_COUNT": "2",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
            # No credential helper: a refused token fails instead of being asked for.
            "GIT_CONFIG_KEY_1": "credential.helper",
            "GIT_CONFIG_VALUE_1": "",
            "GIT_TERMINAL_PROMPT": "0",
            "GCM_INTERACTIVE": "never",
            # A stalled transfer fails, besides the wall-clock limit on every command.
            "GIT_HTTP_LOW_SPEED_LIMIT": "1",
            "GIT_HTTP_LOW_SPEED_TIME": timeout,
            "GIT_AUTHOR_NAME": self.settings.git_author_name,
            "GIT_AUTHOR_EMAIL": self.settings.git_author_email,
            "GIT_COMMITTER_NAME": self.settings.git_author_name,
            "GIT_COMMITTER_EMAIL": self.settings.git_author_email,
        }

    def _git(self, runner: git.Git, *args: str) -> str:
        try:
            return runner.execute(
                ["git", *args],
                env=self._git_env(),
                kill_after_timeout=self.settings.git_timeout_s,
            )
        except git.GitCommandError as exc:
            raise self._git_error(args[0], exc) from None

    def _git_error(self, command: str, exc: git.GitCommandError) -> AdapterError:
        detail = self._scrub(str(exc.stderr or exc).strip())
        message = bounded(f"git {command} failed: {detail}", 500)
        if _GIT_TRANSIENT.search(detail):
            return TransientError("git", message)
        return PermanentError("git", message)

    def _clone(self, url: str, dest: Path, branch: str) -> git.Repo:
        self._git(
            git.Git(str(dest.parent)),
            "clone",
            "--quiet",
            "--depth=1",
            "--single-branch",
            "--no-tags",
            f"--branch={branch}",
            # A symbolic link of the repository is checked out as a plain file holding
            # its target: nothing the renders or edits read can point out of the checkout.
            "--config=core.symlinks=false",
            "--",
            url,
            str(dest),
        )
        return git.Repo(dest)

    def _push(self, checkout: git.Repo, branch: str, edits: list[FileEdit], message: str) -> None:
        """Commit the edits on `branch` and push them, unless the branch already holds them."""
        runner = checkout.git
        ref = f"refs/heads/{branch}"
        tip = ""  # the branch's commit the push replaces: none yet
        if self._git(runner, "ls-remote", "--heads", "origin", ref).strip():
            self._git(runner, "fetch", "--quiet", "--depth=1", "--no-tags", "origin", ref)
            tip = self._git(runner, "rev-parse", "FETCH_HEAD").strip()
            held = True
            for edit in edits:
                try:
                    remote_text = runner.execute(
                        ["git", "show", f"FETCH_HEAD:{edit.path}"],
                        strip_newline_in_stdout=False,
                    )
                except git.GitCommandError:
                    remote_text = None  # the branch lacks the file: not our change
                held = held and remote_text == edit.after
            if held:
                log.info("branch %s already holds the change", branch)
                return
            self._own_tip(runner, branch)
        self._git(runner, "add", "--", *[e.path for e in edits])
        self._git(runner, "commit", "--quiet", "--no-verify", "-m", message)
        # Forced over an older attempt of aifixer's own (checked above), and only if the
        # branch is still where it was read: a person's commit is never replaced.
        self._git(
            runner, "push", "--quiet", f"--force-with-lease={ref}:{tip}", "origin", f"HEAD:{ref}"
        )

    def _own_tip(self, runner: git.Git, branch: str) -> None:
        """Refuse to replace the branch unless its tip is aifixer's commit for the incident
        (its trailer, and aifixer as author): a person has committed there otherwise."""
        trailer = f"Aifixer-Incident: {branch[len(BRANCH_PREFIX) :]}"
        author, _, body = (
            self._git(runner, "log", "-1", "--format=%ae%n%B", "FETCH_HEAD").strip().partition("\n")
        )
        if author != self.settings.git_author_email or trailer not in body.splitlines():
            raise PermanentError(
                SYSTEM,
                f"a person has committed on branch {branch} ({bounded(author, 80)}): "
                "aifixer does not replace their work; the branch needs a person",
            )

    # -- the pull request ----------------------------------------------------------------

    def _open_pull(self, repo: Repository, branch: str) -> PullRequest | None:
        with self._translated("listing pull requests"):
            pulls = repo.get_pulls(state="open", head=f"{repo.owner.login}:{branch}")
            return next(iter(pulls), None)

    def _create_pull(
        self,
        repo: Repository,
        branch: str,
        base: str,
        title: str,
        body: str,
        *,
        draft: bool = False,
    ) -> PullRequestRef:
        try:
            with self._translated("opening the pull request"):
                pull = repo.create_pull(base=base, head=branch, title=title, body=body, draft=draft)
        except PermanentError as exc:
            # A concurrent run opened it between our look and our create.
            existing = self._open_pull(repo, branch) if exc.status == 422 else None
            if existing is None:
                raise
            return _ref(existing, branch, created=False, repo=repo.full_name)
        return _ref(pull, branch, created=True, repo=repo.full_name)

    # -- errors --------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(r"\1***@", text)
        basic = base64.b64encode(f"x-access-token:{self._token}".encode()).decode()
        return text.replace(self._token, "***").replace(basic, "***")

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """PyGithub's and requests' exceptions, as this module's two errors."""
        try:
            yield
        except RateLimitExceededException as exc:
            raise TransientError(
                SYSTEM,
                self._github_message(action, exc),
                status=exc.status,
                retry_after=_retry_after(exc.headers),
            ) from None
        except GithubException as exc:
            message = self._github_message(action, exc)
            if is_transient_status(exc.status):
                raise TransientError(
                    SYSTEM, message, status=exc.status, retry_after=_retry_after(exc.headers)
                ) from None
            raise PermanentError(SYSTEM, message, status=exc.status) from None
        except OSError as exc:  # requests' connection errors and timeouts are OSErrors
            raise TransientError(
                SYSTEM, f"{action}: {type(exc).__name__}: {self._scrub(bounded(str(exc), 300))}"
            ) from None

    def _github_message(self, action: str, exc: GithubException) -> str:
        data = exc.data if isinstance(exc.data, dict) else {}
        details = [str(data.get("message") or exc.message or "")]
        details += [
            str(e.get("message") or e.get("code"))
            for e in data.get("errors") or []
            if isinstance(e, dict)
        ]
        text = "; ".join(d for d in details if d)
        return self._scrub(bounded(f"{action}: HTTP {exc.status}: {text}", 500))


def _ref(pull: PullRequest, branch: str, *, created: bool, repo: str) -> PullRequestRef:
    return PullRequestRef(
        number=pull.number,
        url=pull.html_url,
        branch=branch,
        created=created,
        draft=bool(pull.draft),
        repo=repo,
    )


def _origin(state: IncidentState) -> tuple[str | None, str | None]:
    """The Deployment's `aifixer.io/source` annotation and Helm release, if any."""
    if state.evidence is not None:
        deployment = state.evidence.deployment
    else:
        deployment = state.apply.original if state.apply is not None else {}
    meta = deployment.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    return annotations.get(SOURCE_ANNOTATION), annotations.get(RELEASE_ANNOTATION) or labels.get(
        RELEASE_LABEL
    )


def _covers(body: str, workload: str, fields: set[str]) -> bool:
    """The older pull request's body starts with the marker of `workload`, and every
    field it changes is among `fields`: the newer change carries each of them.

    Only the first line counts: the rest of a body quotes logs and model text, where
    anyone able to make an application log a line could plant a marker.
    """
    first = body.split("\n", 1)[0].strip()
    m = prbody.MARKER.fullmatch(first)
    return m is not None and m.group(1) == workload and set(m.group(2).split()) <= fields


def _touched_by_people(pull: PullRequest, incident_id: str) -> bool:
    """A commit on the branch that aifixer did not make for this incident."""
    trailer = f"Aifixer-Incident: {incident_id}"
    return any(trailer not in (c.commit.message or "") for c in pull.get_commits())


def _release(workload: Subject, release: str | None) -> str:
    """The Helm release to render: the Deployment's, if it is a release name Helm
    accepts (the annotation is the workload's, not to be trusted), else its name."""
    if release and sources.valid_release(release):
        return release
    if release:
        log.warning(
            "[%s] %r is not a Helm release name: rendering as release %s instead",
            workload.key,
            bounded(release, 80),
            workload.name,
        )
    return workload.name


def _write_note(root: Path, note: str, text: str) -> None:
    """Write the draft's note at `note` in the checkout, never through a link out of it."""
    root = root.resolve()
    file = root / note
    try:
        if not file.parent.resolve().is_relative_to(root):
            raise OSError("its directory resolves outside the repository")
        file.parent.mkdir(parents=True, exist_ok=True)
        if file.is_symlink() or not file.resolve().is_relative_to(root):
            raise OSError("it resolves outside the repository")
        file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise PermanentError(
            SYSTEM, f"cannot write the note {note} in the repository: {bounded(str(exc), 200)}"
        ) from None


def _opened_ms(incident_id: str) -> int | None:
    """When the incident opened, from its id "<fingerprint>-<opened ms>" (None if not one)."""
    tail = incident_id.rsplit("-", 1)[-1]
    return int(tail) if "-" in incident_id and tail.isdigit() else None


def _retry_after(headers: dict[str, str] | None) -> float | None:
    """Seconds to wait, from Retry-After or, for the primary rate limit, its reset time."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    try:
        if "retry-after" in headers:
            return float(headers["retry-after"])
        if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
            return max(0.0, float(headers["x-ratelimit-reset"]) - time.time())
    except ValueError:
        return None
    return None


def _manifest_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(MANIFEST_SUFFIXES):
                yield Path(dirpath) / name


def _defines_workload(path: Path, workload: Subject) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
        return defines(text, workload.kind, workload.namespace, workload.name)
    except (OSError, UnicodeDecodeError, EditError):
        return False  # not a manifest we can read (a Helm template, binary data...)
