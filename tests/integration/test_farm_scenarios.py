"""The farm end to end on every bundled scenario: real Redis, real Celery worker, beat
and web processes, the sandbox's servers, and the real clients in between.

For each scenario: the outcome matches `expect`; after a fix the cluster is healthy
and the GitOps repository holds one pull request whose change is exactly the fix;
every call has its line in the call file with the four fields, and its speech, as the
phone said it, passes the speech check; a pull request leads with the facts and its
diagnosis passes the diagnosis check; and nothing happened
twice (one incident per broken workload, one PR, no number dialled twice, one line
per call).
"""

from __future__ import annotations

import json
import subprocess
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from aifixer import manifests
from aifixer_sandbox import bench
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun, changed_workloads

SCENARIOS = scenario_mod.bundled()
pytestmark = [pytest.mark.integration, pytest.mark.scenario]


def _file_at(clone: str, ref: str, path: str) -> list[dict]:
    text = subprocess.run(
        ["git", "-C", clone, "show", f"{ref}:{path}"], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(text) if d]


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def _document(docs: list[dict], kinds: tuple[str, ...], namespace: str, name: str) -> dict:
    return next(
        d
        for d in docs
        if d["kind"] in kinds
        and d["metadata"]["name"] == name
        and d["metadata"].get("namespace", "default") == namespace
    )


# The scenarios play side by side, a few at a time: each farm mostly waits (polls,
# rollouts, the verification window), so three share two cores without slowing down.
PARALLEL = 3
# And in shards, played in turn, so that the first test of each shard carries a third of
# the time under its own timeout (the xdist groups matter only under --dist loadgroup).
SHARDS = 3
_TEST = "test_farm_reaches_the_expected_outcome"
_PLAYED: dict[int, dict[str, str | None]] = {}


def _shard(item) -> int:
    return item.callspec.params["shard"]


@pytest.fixture
def played(request, tmp_path_factory) -> dict[str, str | None]:
    """The selected scenarios of this test's shard, played and checked once: each
    one's failure (traceback), or None."""
    shard = _shard(request.node)
    if shard in _PLAYED:
        return _PLAYED[shard]
    selected = [
        item.callspec.params["path"]
        for item in request.session.items
        if getattr(item, "originalname", "") == _TEST and _shard(item) == shard
    ]

    # Made here, not in the threads: pytest's temporary directories are not thread-safe.
    workdirs = {path: tmp_path_factory.mktemp(path.stem) for path in selected}

    def one(path):
        try:
            play_and_check(path, workdirs[path])
        except BaseException:  # noqa: BLE001 - reported by the scenario's own test
            return path.stem, traceback.format_exc()
        return path.stem, None

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        _PLAYED[shard] = dict(pool.map(one, selected))
    return _PLAYED[shard]


def _params():
    for i, path in enumerate(SCENARIOS):
        shard = i % SHARDS
        yield pytest.param(
            path, shard, id=path.stem, marks=pytest.mark.xdist_group(f"farm-scenarios-{shard}")
        )


# The first test of a shard plays the whole shard (about a minute per scenario, three
# at a time); the timeout grows with the shard.
@pytest.mark.timeout(600 + 60 * (len(SCENARIOS) // SHARDS + 1))
@pytest.mark.parametrize(("path", "shard"), list(_params()))
def test_farm_reaches_the_expected_outcome(path, shard, played):
    failure = played[path.stem]
    assert failure is None, failure


def play_and_check(path, tmp_path) -> None:
    sc = scenario_mod.load(path)
    with FarmRun(sc, tmp_path / "run", speed=30) as run:
        states = run.wait(timeout=180)
        report = run.report(states)
        assert report["complete"], json.dumps(report, indent=2)
        world = run.world
        workloads = changed_workloads(sc)

        # One incident per broken workload, never two.
        assert sorted(
            (s.incident.workload.namespace, s.incident.workload.name) for s in states
        ) == sorted(workloads), json.dumps(report, indent=2)

        calls_file = (
            [
                json.loads(line)
                for line in (tmp_path / "run" / "calls.jsonl").read_text().splitlines()
            ]
            if (tmp_path / "run" / "calls.jsonl").exists()
            else []
        )
        prs = world.call(world.forge.prs)

        for state in states:
            ns, name = state.incident.workload.namespace, state.incident.workload.name
            if sc.expect.outcome == "fixed":
                assert state.outcome == "fixed", json.dumps(report, indent=2)
                assert sorted(c.path for c in state.apply.changes) == sorted(sc.expect.changed)
                assert world.rolled_out(ns, name)
                assert world.call(_symptoms(world, ns, name))["reasons"] == []
                assert state.calls == []
            else:
                assert state.outcome in ("called", "rejected"), json.dumps(report, indent=2)
                assert state.pull_request is None
                assert state.calls, "a person must have been called"
                if state.apply is not None:  # a fix was tried: it was rolled back
                    assert state.verification.rolled_back

        fixed = [s for s in states if s.outcome == "fixed"]
        assert len(prs) == len(fixed)
        clone = str(tmp_path / "clone")
        if fixed:
            subprocess.run(
                ["git", "clone", "-q", world.endpoints.gitops_clone_url, clone], check=True
            )
            subprocess.run(
                [
                    "git",
                    "-C",
                    clone,
                    "fetch",
                    "-q",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                ],
                check=True,
            )
        for state in fixed:
            pr = state.pull_request
            assert [p["number"] for p in prs if p["head"] == pr.branch] == [pr.number]
            ns, name = state.incident.workload.namespace, state.incident.workload.name
            # The object fixed: the workload, or the claim or Service beside it.
            target = state.proposal.target
            kinds = (target.kind,) if target is not None else WORKLOAD_KINDS
            name = target.name if target is not None else name
            path = next(
                mf.path
                for mf in (sc.change or sc.manifests)
                for d in mf.documents()
                if d["kind"] in kinds
                and (d["metadata"].get("namespace", "default"), d["metadata"]["name"]) == (ns, name)
            )
            before = _document(_file_at(clone, "origin/main", path), kinds, ns, name)
            after = _document(_file_at(clone, f"origin/{pr.branch}", path), kinds, ns, name)
            # The PR changes exactly the fields the verified fix changed, nothing else.
            assert sorted(manifests.changed_paths(before, after)) == sorted(sc.expect.changed)
            # It leads with the facts, and its diagnosis states nothing they do not.
            body = next(p["body"] for p in prs if p["head"] == pr.branch)
            assert body.index("## Facts") < body.index("## Diagnosis"), body
            assert bench.diagnosis_problems(state, body) == [], body

        # Every call said, as the phone heard it, is fit to be heard at night.
        heard = bench.heard_calls(world.phone.calls())
        for state in states:
            checks = bench.call_checks(state, "en", heard)
            picked_up = [c for c in state.calls if c.call_sid and c.status == "completed"]
            assert len(checks) == len(picked_up), (state.calls, heard)
            assert all(c["problems"] == [] for c in checks), (checks, heard)

        # Every call has its one line with the four fields; no number dialled twice.
        recorded = [(c["incident_id"], c["number"]) for c in calls_file]
        assert len(recorded) == len(set(recorded))
        assert len({c["call_sid"] for c in calls_file}) == len(calls_file)
        for state in states:
            lines = [c for c in calls_file if c["incident_id"] == state.incident.id]
            assert len(lines) == len(state.calls)
            for line in lines:
                assert line["time"].endswith("Z") and line["number"].startswith("+")
                assert line["speech"] and isinstance(line["can_intervene"], bool)
            answers = sc.oncall.answers
            expected_yes = [
                n for n in sc.oncall.numbers if answers.get(n) in ("yes", "oui", "press 1")
            ]
            if lines and expected_yes:
                assert lines[-1]["can_intervene"] is True and lines[-1]["number"] == expected_yes[0]


def _symptoms(world, ns, name):
    """A coroutine function reading the workload's symptoms on the world's loop."""

    async def get():
        return world.symptoms(ns, name)

    return get
