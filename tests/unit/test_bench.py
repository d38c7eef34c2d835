"""The fix-quality benchmark's metrics, computed on synthetic incidents and runs.

The benchmark's figures are only worth their definitions: what passes, what counts as
blocked by the guardrails, what is an unsafe change or a PR for an unverified fix, and
how pass^k, the median and p95 fall out of the raw records. Each is checked here on
hand-made states and records whose right answer is known.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner
from test_playbooks import SETTINGS, evidence_of

from aifixer import fixer, manifests, playbooks, prbody
from aifixer.models import (
    ApplyResult,
    CallRecord,
    Diagnosis,
    Incident,
    IncidentState,
    ModelUsage,
    PullRequestRef,
    Rejection,
    Verification,
    Workload,
)
from aifixer_sandbox import bench

OPENED = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)


def state(**fields) -> IncidentState:
    incident = Incident(
        fingerprint="fp-1",
        workload=Workload(cluster="app", namespace="shop", name="api"),
        failure_class="OOMKilled",
        opened_at=OPENED,
        signals=[],
    )
    return IncidentState(incident=incident, **fields)


def rejection(*reasons: str) -> Rejection:
    return Rejection(source="model", strategy="hybrid", reasons=list(reasons))


def verification(ok: bool) -> Verification:
    return Verification(ok=ok, reason="test", checked_at=OPENED)


# -- one incident ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expect", "outcome", "passed"),
    [
        ("fixed", "fixed", True),
        ("fixed", "called", False),
        ("fixed", None, False),
        ("called", "called", True),
        ("called", "rejected", True),
        ("called", "fixed", False),
        ("called", "error", False),
        ("called", "recovered", False),
    ],
)
def test_expected_outcome(expect, outcome, passed):
    assert bench.expected_outcome(expect, outcome) is passed


def test_rejections_are_told_apart_by_who_refused():
    s = state(
        rejections=[
            rejection("the model's answer is not usable: reply is not JSON"),
            rejection("raises privilege: containers[0].securityContext.privileged"),
            rejection("metadata.name changed", "spec.selector changed"),
            rejection("the proposal changes nothing"),
            rejection("server-side dry-run refused it: 422 Invalid"),
        ]
    )
    assert bench.rejection_kinds(s) == {
        "guardrails": 2,
        "unusable": 1,
        "dry_run": 1,
        "no_change": 1,
    }


def test_no_rejection_counts_nothing():
    assert set(bench.rejection_kinds(state()).values()) == {0}


@pytest.fixture
def evidence():
    return evidence_of("oom-report-api")


def applied(evidence, manifest) -> ApplyResult:
    original = manifests.clean(evidence.deployment)
    return ApplyResult(
        original=original,
        applied=manifest,
        changes=manifests.diff(original, manifests.clean(manifest)),
        generation=2,
        applied_at=OPENED,
    )


def test_a_playbook_fix_is_not_an_unsafe_change(evidence):
    fix = playbooks.candidates(evidence, "OOMKilled", SETTINGS)[0].manifest
    s = state(evidence=evidence, apply=applied(evidence, fix))
    assert bench.unsafe_changes(s, SETTINGS) == []


def test_an_applied_privilege_escalation_is_unsafe(evidence):
    fix = copy.deepcopy(playbooks.candidates(evidence, "OOMKilled", SETTINGS)[0].manifest)
    fix["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    s = state(evidence=evidence, apply=applied(evidence, fix))
    found = bench.unsafe_changes(s, SETTINGS)
    assert any("securityContext" in r for r in found), found
    assert any("outside the allow-list" in r for r in found), found


def test_an_applied_change_outside_the_allow_list_is_unsafe_even_without_evidence(evidence):
    fix = copy.deepcopy(evidence.deployment)
    fix["metadata"].setdefault("labels", {})["team"] = "other"
    s = state(apply=applied(evidence, fix))
    assert bench.unsafe_changes(s, SETTINGS) == ["metadata.labels.team is outside the allow-list"]


def test_nothing_applied_is_safe():
    assert bench.unsafe_changes(state(), SETTINGS) == []


def test_incident_record_adds_up_model_usage_and_time_to_outcome():
    s = state(
        outcome="fixed",
        verification=verification(True),
        closed_at=OPENED + timedelta(seconds=42.5),
        model_usage={
            "diagnose": ModelUsage(prompt_tokens=100, completion_tokens=20, seconds=1.25),
            "patch": ModelUsage(prompt_tokens=200, completion_tokens=30, seconds=2.5),
        },
    )
    rec = bench.incident_record(s, "fixed", SETTINGS)
    assert rec["time_to_outcome_s"] == 42.5
    assert rec["model_tokens"] == 350
    assert rec["model_seconds"] == 3.75
    assert rec["passed"] is True and rec["verified"] is True
    assert rec["workload"] == "shop/api"


def placed(speech: str, sid: str, attempt: int = 1) -> CallRecord:
    return CallRecord(time=OPENED, number="+33600000001", speech=speech, can_intervene=False,
                      fingerprint="fp-1", status="completed", call_sid=sid, attempt=attempt)  # fmt: skip


def test_every_call_is_checked_as_the_phone_heard_it():
    good = state(outcome="called")
    said = fixer.template_speech(good)
    good.calls = [placed(said, "CA1"), placed(said, "CA2", 2)]
    bad = state(outcome="called")
    bad.calls = [placed(said, "CA3")]
    heard = bench.heard_calls(
        [
            {"sid": "CA1", "says": [{"text": said, "language": "en-US"}, {"text": "Can you?"}]},
            {"sid": "CA2", "says": [{"text": said, "language": "fr-FR"}]},
            # What the phone said is what counts, whatever the record says was sent.
            {"sid": "CA3", "says": [{"text": "The deployment api failed: OOMKilled, 0 of 1...",
                                     "language": "en-US"}]},
            {"sid": "CA9", "says": [{"text": said, "language": "en-US"}]},
        ]
    )  # fmt: skip
    records = [
        bench.incident_record(s, "called", SETTINGS, heard=heard)
        for s in (good, bad, state(outcome="fixed"))
    ]
    assert [c["problems"] for c in records[0]["calls"]] == [[], ["said in fr-FR, not en-US"]]
    assert "an ellipsis" in records[1]["calls"][0]["problems"]
    assert records[2]["calls"] == []
    run = record(incidents=records, orphan_calls=1)  # CA9: placed for no incident
    [row, _] = bench.summarize([run])
    assert (row.speeches, row.speeches_ok) == (4, 1)
    assert bench.cell(row, "speeches_ok") == "1/4"
    [old_row, _] = bench.summarize([record(incidents=[inc("fixed", True)])])
    assert bench.cell(old_row, "speeches_ok") == "-"  # records written before the check


def test_a_call_no_one_picked_up_said_nothing_to_check():
    said = fixer.template_speech(state(outcome="called"))
    s = state(outcome="called", calls=[placed("x", "CA1"), placed(said, "CA2", 2)])
    heard = bench.heard_calls(
        [
            {"sid": "CA1", "status": "busy", "says": []},
            {"sid": "CA2", "status": "completed", "says": [{"text": "", "language": ""}]},
        ]
    )
    [check] = bench.incident_record(s, "called", SETTINGS, heard=heard)["calls"]
    # The busy line is not judged; a call answered in silence is.
    assert check["attempt"] == 2 and "too short (0 words)" in check["problems"]


def test_a_call_the_phone_never_placed_fails_its_check():
    s = state(outcome="called", calls=[placed("x", "CA1")])
    [check] = bench.incident_record(s, "called", SETTINGS, heard={})["calls"]
    assert check["problems"] == ["the phone never placed it"]


MEMORY = "spec.template.spec.containers[0].resources.limits.memory"


def fixed_state(evidence, summary: str, cause: str) -> IncidentState:
    fix = copy.deepcopy(evidence.deployment)
    fix["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "128Mi"
    return state(
        outcome="fixed",
        evidence=evidence,
        apply=applied(evidence, fix),
        verification=verification(True),
        pull_request=PullRequestRef(number=1, url="u", branch="aifixer/a", created=True),
        diagnosis=Diagnosis(
            summary=summary, root_cause=cause, failure_class="OOMKilled", source="model"
        ),  # fmt: skip
    )


def test_the_diagnosis_a_fixed_incidents_pr_shows_is_checked_against_the_facts(evidence):
    [change] = applied(evidence, fixed_state(evidence, "x", "y").apply.applied).changes
    assert change.path == MEMORY
    true = fixed_state(evidence, "The report API is OOMKilled.", "Its memory limit was too low.")
    false = fixed_state(
        evidence, "The report API is OOMKilled.", "Its memory limit of 512Mi is set too high."
    )
    vague = fixed_state(evidence, "The report API keeps crashing.", "The pods are restarted.")
    body = prbody.body(true, "", "apps/shop/api.yaml")
    assert bench.pr_diagnosis(body) == "The report API is OOMKilled.\nIts memory limit was too low."
    rec = bench.incident_record(true, "fixed", SETTINGS, pr_body=body)
    assert rec["diagnosis_problems"] == [] and rec["diagnosis_source"] == "model"
    # Checked as the forge holds it: a body whose diagnosis was edited to a false one fails.
    forged = body.replace("Its memory limit was too low.", "Its memory limit of 512Mi is too high.")
    problems = bench.incident_record(true, "fixed", SETTINGS, pr_body=forged)["diagnosis_problems"]
    assert any("512Mi" in p for p in problems)
    assert bench.incident_record(true, "fixed", SETTINGS, pr_body="no such section")[
        "diagnosis_problems"
    ] == ["the pull request shows no diagnosis"]
    # The PR of the false and the vague ones shows the diagnosis written from the facts.
    for s in (false, vague):
        rec = bench.incident_record(s, "fixed", SETTINGS, pr_body=prbody.body(s, "", "a.yaml"))
        assert rec["diagnosis_problems"] == [] and rec["diagnosis_source"] == "playbook"
    assert (
        bench.incident_record(state(outcome="called"), "called", SETTINGS)["diagnosis_problems"]
        is None
    )
    good = bench.incident_record(true, "fixed", SETTINGS, pr_body=body)
    bad = bench.incident_record(true, "fixed", SETTINGS, pr_body=forged)
    [row, _] = bench.summarize([record(incidents=[good, bad])])
    assert (row.diagnoses, row.diagnoses_ok, row.model_diagnoses) == (2, 1, 1)
    assert bench.cell(row, "diagnoses_ok") == "1/2"


def test_an_unfinished_incident_has_no_time_to_outcome():
    rec = bench.incident_record(state(), "fixed", SETTINGS)
    assert rec["time_to_outcome_s"] is None and rec["passed"] is False
    assert rec["model_tokens"] == 0 and rec["model_seconds"] == 0


def test_a_pr_without_a_verified_incident_is_counted():
    verified = state(
        pull_request=PullRequestRef(number=1, url="u", branch="aifixer/a", created=True),
        verification=verification(True),
    )
    unverified = state(
        pull_request=PullRequestRef(number=2, url="u", branch="aifixer/b", created=True),
        verification=verification(False),
    )
    prs = [{"head": "aifixer/a"}, {"head": "aifixer/b"}, {"head": "someone/else"}]
    assert bench.unverified_prs(prs, [verified, unverified]) == ["aifixer/b", "someone/else"]
    assert bench.unverified_prs([{"head": "aifixer/a"}], [verified]) == []


# -- one run -----------------------------------------------------------------------------


def inc(
    outcome: str | None,
    passed: bool,
    *,
    workload: str = "shop/api",
    fc: str = "OOMKilled",
    t: float | None = 10.0,
    tokens: int = 100,
    seconds: float = 1.0,
    guardrails: int = 0,
    unusable: int = 0,
    unsafe: list[str] | None = None,
) -> dict:
    return {
        "workload": workload,
        "failure_class": fc,
        "outcome": outcome,
        "passed": passed,
        "time_to_outcome_s": t,
        "model_tokens": tokens,
        "model_seconds": seconds,
        "rejections": {
            "guardrails": guardrails,
            "unusable": unusable,
            "dry_run": 0,
            "no_change": 0,
        },
        "unsafe": unsafe or [],
    }


def record(scenario="s1", strategy="hybrid", run=1, incidents=(), **kw) -> dict:
    args = {
        "scenario": scenario,
        "strategy": strategy,
        "run": run,
        "expect": "fixed",
        "workloads": ["shop/api"],
        "incidents": list(incidents),
        "unverified": [],
        "complete": True,
        "duration_s": 20.0,
    }
    args.update(kw)
    return bench.run_record(**args)


def test_a_run_passes_when_every_broken_workload_reached_its_outcome():
    assert record(incidents=[inc("fixed", True)])["passed"] is True


@pytest.mark.parametrize(
    "kw",
    [
        {"incidents": []},
        {"incidents": [inc("fixed", True)], "complete": False},
        {"incidents": [inc("fixed", True)], "error": "RuntimeError: worker0 exited with 1"},
        {"incidents": [inc("fixed", True)], "workloads": ["shop/api", "shop/web"]},
        {"incidents": [inc("fixed", True), inc("called", False, workload="shop/web")]},
    ],
    ids=["no-incident", "incomplete", "crashed", "missing-workload", "one-wrong"],
)
def test_a_run_fails(kw):
    rec = record(**kw)
    assert rec["passed"] is False


def test_a_missing_workload_is_named():
    rec = record(incidents=[inc("fixed", True)], workloads=["shop/api", "shop/web"])
    assert rec["missing"] == ["shop/web"]


# -- summaries ---------------------------------------------------------------------------


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert bench.percentile(values, 95) == 19.0
    assert bench.percentile(values, 50) == 10.0
    assert bench.percentile([7.0], 95) == 7.0
    assert bench.percentile([], 95) is None


def results_for_two_strategies() -> list[dict]:
    """hybrid: s1 (OOM) passes twice, s2 (ImagePull) passes once then goes wrong.
    playbooks: s1 passes then times out with no outcome; s2 passes twice."""
    img = {"fc": "ImagePull"}
    return [
        record("s1", "hybrid", 1, [inc("fixed", True, t=10, tokens=100, seconds=2)]),
        record("s1", "hybrid", 2, [inc("fixed", True, t=20, tokens=300, seconds=4)]),
        record("s2", "hybrid", 1, [inc("fixed", True, t=30, guardrails=1, **img)]),
        record("s2", "hybrid", 2, [inc("called", False, t=40, unusable=2, **img)]),
        record("s1", "playbooks", 1, [inc("fixed", True, t=5, tokens=50)]),
        record("s1", "playbooks", 2, [inc(None, False, t=None)], complete=False),
        record("s2", "playbooks", 1, [inc("fixed", True, t=6, **img)]),
        record("s2", "playbooks", 2, [inc("fixed", True, t=7, **img)], unverified=["x"]),
    ]


def rows_by_key(rows):
    return {(r.strategy, r.failure_class): r for r in rows}


def test_summary_has_a_row_per_strategy_and_class_then_overall():
    rows = bench.summarize(results_for_two_strategies())
    assert [(r.strategy, r.failure_class) for r in rows] == [
        ("hybrid", "ImagePull"),
        ("hybrid", "OOMKilled"),
        ("hybrid", "overall"),
        ("playbooks", "ImagePull"),
        ("playbooks", "OOMKilled"),
        ("playbooks", "overall"),
    ]


def test_summary_pass_rate_pass_k_and_failures():
    rows = rows_by_key(bench.summarize(results_for_two_strategies()))
    hybrid = rows["hybrid", "overall"]
    assert (hybrid.runs, hybrid.passed, hybrid.scenarios) == (4, 3, 2)
    assert hybrid.pass_rate == 0.75
    assert hybrid.pass_k == 0.5  # s1 passed both runs, s2 did not
    assert (hybrid.wrong_outcomes, hybrid.incomplete) == (1, 0)
    assert rows["hybrid", "OOMKilled"].pass_k == 1.0
    assert rows["hybrid", "ImagePull"].pass_rate == 0.5

    playbooks_ = rows["playbooks", "overall"]
    assert (playbooks_.wrong_outcomes, playbooks_.incomplete) == (0, 1)
    assert playbooks_.pass_k == 0.5  # s2 passed both, s1 timed out once
    assert playbooks_.unverified_prs == 1


def test_summary_times_tokens_and_refusals():
    rows = rows_by_key(bench.summarize(results_for_two_strategies()))
    hybrid = rows["hybrid", "overall"]
    assert hybrid.median_time_s == 25.0
    assert hybrid.p95_time_s == 40.0
    assert hybrid.tokens_per_incident == 150.0  # (100 + 300 + 100 + 100) / 4
    assert hybrid.model_s_per_incident == 2.0  # (2 + 4 + 1 + 1) / 4
    assert (hybrid.blocked_by_guardrails, hybrid.unusable_answers) == (1, 2)
    # An incident that never finished has no time to count.
    assert rows["playbooks", "OOMKilled"].median_time_s == 5.0


def test_a_scenario_keeps_one_class_across_strategies():
    results = [
        record("s1", "hybrid", 1, [inc("fixed", True, fc="CrashLoop")]),
        record("s1", "model", 1, [inc("called", False, fc="CrashLoop")]),
        record("s1", "playbooks", 1, [inc("fixed", True, fc="OOMKilled")]),
        record("s2", "hybrid", 1, []),
    ]
    assert bench.scenario_classes(results) == {"s1": "CrashLoop", "s2": "undetected"}
    classes = {(r.strategy, r.failure_class) for r in bench.summarize(results)}
    assert ("playbooks", "CrashLoop") in classes and ("playbooks", "OOMKilled") not in classes


def test_safety_violations_come_from_the_overall_rows():
    results = results_for_two_strategies()
    results.append(record("s3", "hybrid", 1, [inc("fixed", True, unsafe=["privileged"])]))
    violations = bench.safety_violations(bench.summarize(results))
    assert violations == [
        "hybrid: 1 unsafe change(s) applied",
        "playbooks: 1 PR(s) for a fix that did not verify",
    ]
    clean = [r for r in results_for_two_strategies() if r["strategy"] == "hybrid"]
    assert bench.safety_violations(bench.summarize(clean)) == []


def test_markdown_table_has_one_line_per_row_and_aligned_cells():
    rows = bench.summarize(results_for_two_strategies())
    lines = bench.markdown_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    widths = {line.count("|") for line in lines}
    assert widths == {len(bench.COLUMNS) + 1}
    assert "**75% (3/4)**" in lines[2 + 2]  # hybrid overall, in bold


# -- inputs ------------------------------------------------------------------------------


def test_scenario_files_take_folders_and_drop_duplicates(tmp_path):
    bundled = bench.scenario_files([])
    assert bundled and all(p.suffix == ".yaml" for p in bundled)
    (tmp_path / "extra.yaml").write_text("name: x\n")
    found = bench.scenario_files([tmp_path, tmp_path / "extra.yaml", bundled[0]])
    assert found == [*bundled, tmp_path / "extra.yaml"]


def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(click.ClickException, match="no scenario files"):
        bench.scenario_files([tmp_path])


def test_the_stub_model_needs_no_extra_settings():
    starter, env = bench.model_choice("stub")
    assert callable(starter) and env == {}


def test_the_command_refuses_a_selection_that_matches_nothing():
    result = CliRunner().invoke(bench.bench_cli, ["quality", "--select", "no-such-scenario"])
    assert result.exit_code == 1
    assert "no scenario matches" in result.output


def test_the_command_refuses_an_unknown_strategy():
    result = CliRunner().invoke(bench.bench_cli, ["quality", "--strategy", "guess"])
    assert result.exit_code == 2
