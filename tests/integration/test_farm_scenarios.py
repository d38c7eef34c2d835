"""The farm end to end on every bundled scenario: real Redis, real Celery worker, beat
and web processes, the sandbox's servers, and the real clients in between.

For each scenario: the outcome matches `expect`; after a fix the cluster is healthy
and the GitOps repository holds one pull request whose change is exactly the fix;
every call has its line in the call file with the four fields; and nothing happened
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
from aifixer.sandbox import scenario as scenario_mod
from aifixer.sandbox.harness import FarmRun, changed_workloads

SCENARIOS = scenario_mod.bundled()
pytestmark = [pytest.mark.integration, pytest.mark.scenario]


def _file_at(clone: str, ref: str, path: str) -> list[dict]:
    text = subprocess.run(
        ["git", "-C", clone, "show", f"{ref}:{path}"], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def _deployment(docs: list[dict], namespace: str, name: str) -> dict:
    return next(
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d["metadata"]["name"] == name
        and d["metadata"].get("namespace", "default") == namespace
    )


# The scenarios play side by side, a few at a time: each farm mostly waits (polls,
# rollouts, the verification window), so three share two cores without slowing down.
PARALLEL = 3


@pytest.fixture(scope="module")
def played(request, tmp_path_factory) -> dict[str, str | None]:
    """Every selected scenario played and checked: its failure (traceback), or None."""
    selected = [
        item.callspec.params["path"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_farm_reaches_the_expected_outcome"
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
        return dict(pool.map(one, selected))


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_farm_reaches_the_expected_outcome(path, played):
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
            path = next(
                mf.path
                for mf in (sc.change or sc.manifests)
                for d in mf.documents()
                if d["kind"] == "Deployment" and d["metadata"]["name"] == name
            )
            before = _deployment(_file_at(clone, "origin/main", path), ns, name)
            after = _deployment(_file_at(clone, f"origin/{pr.branch}", path), ns, name)
            # The PR changes exactly the fields the verified fix changed, nothing else.
            assert sorted(manifests.changed_paths(before, after)) == sorted(sc.expect.changed)

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
