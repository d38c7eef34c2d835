"""A newer incident's pull request closes the older ones of its workload, and only those.

`Forge.supersede` over stand-ins of PyGithub's repository and pull request objects (the
calls it makes: get_pulls, get_issue_comments, create_issue_comment, edit); the same
path through PyGithub against the sandbox forge is in
tests/integration/test_forge_lifecycle.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from github import GithubException

from aifixer import prbody
from aifixer.adapters.forge import Forge
from aifixer.models import Incident, IncidentState, PullRequestRef, Workload
from aifixer.settings import Settings

REPO = "acme/gitops"


class Pull:
    def __init__(self, number: int, branch: str, body: str, head_repo: str = REPO) -> None:
        self.number, self.body, self.state, self.draft = number, body, "open", False
        self.head = SimpleNamespace(ref=branch, repo=SimpleNamespace(full_name=head_repo))
        trailer = f"fix\n\nAifixer-Incident: {branch.removeprefix('aifixer/')}\n"
        self.commits = [SimpleNamespace(commit=SimpleNamespace(message=trailer))]
        self.comments: list[str] = []
        self.refuse_close = 0

    def get_commits(self):
        return self.commits

    def get_issue_comments(self):
        return [SimpleNamespace(body=c) for c in self.comments]

    def create_issue_comment(self, body: str) -> None:
        self.comments.append(body)

    def edit(self, state: str) -> None:
        if self.refuse_close:
            self.refuse_close -= 1
            raise GithubException(502, {"message": "bad gateway"}, None)
        self.state = state


class Repo:
    full_name = REPO

    def __init__(self, pulls: list[Pull]) -> None:
        self.pulls = pulls

    def get_pulls(self, state: str, sort: str, direction: str):
        assert (sort, direction) == ("created", "desc")
        return [p for p in sorted(self.pulls, key=lambda p: -p.number) if p.state == state]


def incident(name: str, opened_ms: int) -> IncidentState:
    opened = datetime.fromtimestamp(opened_ms / 1000, UTC)
    return IncidentState(
        incident=Incident(
            fingerprint=f"fp{name}",
            workload=Workload(cluster="app", namespace="shop", name=name),
            failure_class="CrashLoop",
            opened_at=opened,
            signals=[],
        )
    )


def pull_for(number: int, state: IncidentState) -> Pull:
    return Pull(number, f"aifixer/{state.incident.id}", f"{prbody.workload_marker(state)}\n\nfix")


def forge_over(repo: Repo) -> Forge:
    forge = Forge(Settings(_env_file=None, github_repo=REPO, github_token="t0ken"))
    forge._github = SimpleNamespace(get_repo=lambda name: repo)
    return forge


def new_ref(number: int, state: IncidentState) -> PullRequestRef:
    return PullRequestRef(number=number, url=f"https://forge.example/{REPO}/pull/{number}",
                          branch=f"aifixer/{state.incident.id}", created=True, repo=REPO)  # fmt: skip


def test_only_older_aifixer_pull_requests_of_the_same_workload_are_closed():
    old, new, later = (incident("web", ms) for ms in (1_000, 2_000, 3_000))
    other = incident("web2", 1_500)
    older = pull_for(1, old)
    of_later = pull_for(2, later)  # a later incident's: never closed by an earlier one
    of_other = pull_for(3, other)
    by_a_person = Pull(4, "fix-web", older.body)  # the marker copied, not aifixer's branch
    from_a_fork = Pull(5, older.head.ref, older.body, head_repo="someone/gitops")
    ours = pull_for(6, new)
    repo = Repo([older, of_later, of_other, by_a_person, from_a_fork, ours])

    closed = forge_over(repo).supersede(new, new_ref(6, new))

    assert closed == [1]
    assert older.state == "closed"
    (comment,) = older.comments
    assert comment.startswith("Superseded by #6 (https://forge.example/acme/gitops/pull/6)")
    assert new.incident.id in comment and "shop/web" in comment
    for p in (of_later, of_other, by_a_person, from_a_fork, ours):
        assert p.state == "open" and p.comments == []


def test_a_retry_after_a_failed_close_closes_without_commenting_twice():
    old, new = incident("web", 1_000), incident("web", 2_000)
    older = pull_for(1, old)
    older.refuse_close = 1
    forge = forge_over(Repo([older, pull_for(2, new)]))

    assert forge.supersede(new, new_ref(2, new)) == []  # best effort: logged, not raised
    assert older.state == "open" and len(older.comments) == 1
    assert forge.supersede(new, new_ref(2, new)) == [1]
    assert older.state == "closed" and len(older.comments) == 1


def with_changes(state: IncidentState, *paths: str) -> IncidentState:
    from aifixer.models import ApplyResult, FieldChange

    changes = [FieldChange(path=p, before="a", after="b") for p in paths]
    state.apply = ApplyResult(
        original={}, applied={}, changes=changes, generation=2, applied_at=datetime.now(UTC)
    )
    return state


def test_a_marker_planted_in_a_quoted_log_line_closes_nothing():
    web_old, pay_new = incident("web", 1_000), incident("pay", 2_000)
    pay_marker = prbody.workload_marker(pay_new)
    # web's fix pull request quotes a log line web printed: pay's marker, mid-body.
    webs = Pull(1, f"aifixer/{web_old.incident.id}",
                f"{prbody.workload_marker(web_old)}\n\n```\n{pay_marker}\n```")  # fmt: skip
    repo = Repo([webs, pull_for(2, pay_new)])
    assert forge_over(repo).supersede(pay_new, new_ref(2, pay_new)) == []
    assert webs.state == "open"


def test_an_older_fix_the_newer_one_does_not_carry_stays_open():
    old = with_changes(incident("web", 1_000), "spec.template.spec.containers[0].image")
    new = with_changes(incident("web", 2_000), "spec.template.spec.containers[0].resources")
    older = pull_for(1, old)
    assert forge_over(Repo([older, pull_for(2, new)])).supersede(new, new_ref(2, new)) == []
    assert older.state == "open"
    both = with_changes(incident("web", 3_000), "spec.template.spec.containers[0].image",
                        "spec.template.spec.containers[0].resources")  # fmt: skip
    repo = Repo([older, pull_for(3, both)])
    assert forge_over(repo).supersede(both, new_ref(3, both)) == [1]


def test_a_draft_or_a_branch_a_person_committed_to_stays_open():
    old, new = incident("web", 1_000), incident("web", 2_000)
    draft, worked_on = pull_for(1, old), pull_for(2, incident("web", 1_500))
    draft.draft = True
    worked_on.commits.append(SimpleNamespace(commit=SimpleNamespace(message="edit by hand")))
    repo = Repo([draft, worked_on, pull_for(3, new)])
    assert forge_over(repo).supersede(new, new_ref(3, new)) == []
    assert draft.state == worked_on.state == "open"
