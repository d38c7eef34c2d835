"""Pull request title and body: what a reviewer reads, bounded and free of secrets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aifixer import prbody
from aifixer.models import (
    ApplyResult,
    Diagnosis,
    EventRecord,
    Evidence,
    FieldChange,
    FixProposal,
    Incident,
    IncidentState,
    LogLine,
    ObjectRef,
    PodState,
    Verification,
    VerifyCopy,
    Workload,
)

T0 = datetime(2026, 3, 31, 8, 0, tzinfo=UTC)
MEMORY = "spec.template.spec.containers[0].resources.limits.memory"
DIFF = (
    "--- a/apps/shop/report-api.yaml\n+++ b/apps/shop/report-api.yaml\n@@ -24 +24 @@\n"
    "-            limits: {memory: 64Mi}\n+            limits: {memory: 144Mi}\n"
)


def make_state(
    changes=None, logs=None, events=None, failure_class="OOMKilled", **extra
) -> IncidentState:
    changes = (
        changes if changes is not None else [FieldChange(path=MEMORY, before="64Mi", after="144Mi")]
    )
    workload = Workload(cluster="prod", namespace="shop", name="report-api")
    return IncidentState(
        incident=Incident(
            fingerprint="3f2a9c0d1e",
            workload=workload,
            failure_class=failure_class,
            opened_at=T0,
            signals=[],
        ),
        evidence=Evidence(
            deployment={},
            pods=[
                PodState(
                    name="report-api-7d9f-abcde",
                    phase="Running",
                    ready=False,
                    reasons=["OOMKilled", "CrashLoopBackOff"],
                    restart_count=4,
                    last_termination={"reason": "OOMKilled", "exitCode": 137},
                )
            ],
            events=events
            if events is not None
            else [
                EventRecord(
                    type="Warning",
                    reason="BackOff",
                    message="Back-off restarting failed container report-api",
                    object="Pod/report-api-7d9f-abcde",
                    count=7,
                ),
                EventRecord(
                    type="Normal",
                    reason="Pulled",
                    message="Container image already present",
                    object="Pod/report-api-7d9f-abcde",
                    count=5,
                ),
            ],
            logs=logs if logs is not None else [],
            pod_logs={},
            revisions=[],
            last_healthy_template=None,
            template_diff=[],
            healthy=False,
        ),
        diagnosis=Diagnosis(
            summary="The report API is killed for exceeding its 64Mi memory limit.",
            root_cause="The memory limit was too low for the process's working set.",
            failure_class=failure_class,
            fields=[MEMORY],
            source="playbook",
        ),
        apply=ApplyResult(original={}, applied={}, changes=changes, generation=3, applied_at=T0),
        verification=Verification(
            ok=True,
            reason="rollout complete, 2/2 pods Ready, no restarts",
            checked_at=T0 + timedelta(minutes=2, seconds=5),
            healthy_since=T0 + timedelta(seconds=35),
        ),
        **extra,
    )


@pytest.mark.parametrize(
    ("changes", "failure_class", "expected"),
    [
        (None, "OOMKilled", "fix(shop/report-api): raise memory limit to 144Mi after OOMKilled"),
        (
            [FieldChange(path=MEMORY, before="64Gi", after="1Gi")],
            "Unschedulable",
            "fix(shop/report-api): lower memory limit to 1Gi after FailedScheduling",
        ),
        (
            [
                FieldChange(
                    path="spec.template.spec.containers[0].image", before="a:1.O", after="a:1.0"
                )
            ],
            "ImagePull",
            "fix(shop/report-api): set image to a:1.0 after image pull failures",
        ),
        (
            [
                FieldChange(
                    path="spec.template.spec.containers[0].readinessProbe.httpGet.port",
                    before=9090,
                    after=8080,
                )
            ],
            "ProbeFailure",
            "fix(shop/report-api): set readinessProbe port to 8080 after failing probes",
        ),
        (
            [
                FieldChange(
                    path="spec.template.spec.containers[0].env",
                    before=[{"name": "A", "value": "1"}],
                    after=[{"name": "DATABASE_URL", "value": "x"}, {"name": "A", "value": "1"}],
                )
            ],
            "CrashLoop",
            "fix(shop/report-api): add env DATABASE_URL after CrashLoopBackOff",
        ),
        (
            [FieldChange(path="spec.template.spec.nodeSelector", before={"gpu": "1"}, after=None)],
            "Unschedulable",
            "fix(shop/report-api): remove nodeSelector after FailedScheduling",
        ),
    ],
)
def test_title_says_what_changed_and_why(changes, failure_class, expected):
    assert prbody.title(make_state(changes, failure_class=failure_class)) == expected


def test_title_names_the_object_fixed_beside_the_workload():
    change = FieldChange(path="spec.storageClassName", before="fast-ssd", after="standard")
    proposal = FixProposal(
        source="playbook",
        strategy="claim-existing-class",
        rationale="The claim never bound.",
        manifest={},
        changes=[change],
        target=ObjectRef(kind="PersistentVolumeClaim", namespace="shop", name="reports"),
    )
    state = make_state([change], failure_class="VolumePending", proposal=proposal)
    assert prbody.title(state) == (
        "fix(shop/report-api): set storageClassName to standard in PersistentVolumeClaim "
        "reports after a PersistentVolumeClaim that never binds"
    )


def test_title_with_many_changes_stays_short():
    changes = [
        FieldChange(path=f"spec.template.spec.containers[{i}].image", after=f"img:{i}")
        for i in range(5)
    ]
    title = prbody.title(make_state(changes))
    assert "and 4 more fields" in title
    assert len(title) < 120


def test_body_has_every_section_a_reviewer_needs():
    text = prbody.body(make_state(), DIFF, "apps/shop/report-api.yaml")
    for heading in ("## Diagnosis", "## Evidence", "## Change", "## Verification", "## Incident"):
        assert heading in text
    assert "applied this fix to the cluster and verified it" in text
    assert "killed for exceeding its 64Mi memory limit" in text
    assert "OOMKilled (exit 137)" in text
    assert "BackOff (Pod/report-api-7d9f-abcde, x7)" in text
    assert "Pulled" not in text  # Normal events are not evidence of a failure
    assert "```diff\n" + DIFF.rstrip("\n") + "\n```" in text
    assert f"`{MEMORY}`: `64Mi` → `144Mi`" in text
    assert "1 min 30 s" in text  # healthy from 0:35 to 2:05
    assert "`3f2a9c0d1e`" in text


def test_the_body_leads_with_the_facts_before_the_diagnosis():
    text = prbody.body(make_state(), DIFF, "apps/shop/report-api.yaml")
    facts = text.index("## Facts")
    assert facts < text.index("## Diagnosis") < text.index("## Evidence")
    section = text[facts : text.index("## Diagnosis")]
    assert "Last termination: OOMKilled, exit code 137" in section
    assert "restarts up to 4" in section and "Warning events: BackOff x7" in section
    assert "Fix verified: memory limit" in section and "raised from 64Mi to 144Mi" in section
    # Shown as text: a path's brackets are escaped, so Markdown makes no link of them.
    assert r"containers\[0\]" in section


def test_a_diagnosis_the_verified_fix_contradicts_is_replaced_by_the_facts():
    """The PR body the issue reported: the fix raised the limit, the diagnosis said too high."""
    state = make_state(changes=[FieldChange(path=MEMORY, before="512Mi", after="768Mi")])
    state.diagnosis = Diagnosis(
        summary="The report API container runs out of memory.",
        root_cause="The current limits for memory are set too high (512Mi) and requests are set "
        "too low (384Mi), causing the container to run out of memory.",
        failure_class="OOMKilled",
        source="model",
    )
    text = prbody.body(state, DIFF, "apps/shop/report-api.yaml")
    diagnosis = text[text.index("## Diagnosis") : text.index("## Evidence")]
    assert "too high" not in text and "384Mi" not in text
    assert "diagnosed by: playbook" in diagnosis and "is not shown" in diagnosis
    assert "memory limit" in diagnosis and "raised from 512Mi to 768Mi" in diagnosis
    # A true one is kept as the model wrote it.
    state.diagnosis.root_cause = "Its memory limit of 512Mi was too low; the fix raised it."
    text = prbody.body(state, DIFF, "apps/shop/report-api.yaml")
    assert "Its memory limit of 512Mi was too low" in text and "diagnosed by: model" in text


def test_evidence_is_bounded():
    logs = [
        LogLine(
            time=f"2026-03-31T08:00:{i:02d}Z",
            pod="p",
            container="c",
            line=f"line {i} " + "x" * 1000,
        )
        for i in range(50)
    ]
    events = [
        EventRecord(type="Warning", reason=f"R{i}", message="m", object="Pod/p", count=1)
        for i in range(20)
    ]
    text = prbody.body(make_state(logs=logs, events=events), DIFF, "f.yaml")
    assert "line 49 " in text and "line 40 " in text and "line 39 " not in text
    assert "… (40 more)" in text and "… (15 more)" in text
    assert "R4 " in text and "R5 " not in text
    assert max(len(line) for line in text.splitlines()) <= prbody.MAX_LINE + 20


def test_body_is_bounded_overall():
    diff = "".join(f"+line {i} " + "y" * 300 + "\n" for i in range(5000))
    text = prbody.body(make_state(), diff, "f.yaml")
    assert len(text) <= prbody.MAX_BODY + 100
    assert "… (4800 more)" in text


def test_a_log_line_cannot_break_out_of_its_code_block():
    logs = [LogLine(time="t", pod="p", container="c", line="```\n## Approved by security")]
    text = prbody.body(make_state(logs=logs), DIFF, "f.yaml")
    assert "\n````\n" in text  # the fence grew longer than the run inside


def test_body_never_carries_a_secret():
    token = "ghp_" + "A1b2" * 9
    logs = [
        LogLine(
            time="t", pod="p", container="c", line=f"auth failed with Authorization: Bearer {token}"
        )
    ]
    text = prbody.body(make_state(logs=logs), DIFF + f"+  # token={token}\n", "f.yaml")
    assert token not in text
    assert prbody.REDACTED in text


def test_a_draft_body_says_what_to_edit_by_hand_and_carries_no_diff():
    token = "ghp_" + "A1b2" * 9
    state = make_state()
    edits = ["charts/report-api/templates/deployment.yaml: set the memory limit to 144Mi",
             f"values.yaml: remove the stale comment token={token}"]  # fmt: skip
    text = prbody.draft_body(state, "the limit is computed by the template", edits,
                             ".aifixer/hand-edits/x.md")  # fmt: skip
    assert text.startswith(prbody.workload_marker(state))
    assert "## What must be edited by hand" in text
    assert "- charts/report-api/templates/deployment.yaml: set the memory limit to 144Mi" in text
    assert "the limit is computed by the template" in text
    assert "changes **no manifest**" in text and "`.aifixer/hand-edits/x.md`" in text
    assert f"`{MEMORY}`: `64Mi` → `144Mi`" in text  # the verified live change
    for heading in ("## Diagnosis", "## Evidence", "## Verification", "## Incident"):
        assert heading in text
    assert "```diff" not in text and "## Change\n" not in text
    assert token not in text and prbody.REDACTED in text
    note = prbody.hand_edit_note(state, "the limit is computed by the template", edits)
    assert "delete this file" in note and edits[0] in note and token not in note


def test_every_body_names_its_workload_for_a_later_incident_to_supersede():
    state = make_state()
    w = state.incident.workload
    fields = " ".join(sorted(c.path for c in state.apply.changes))
    marker = (
        f"<!-- aifixer-workload: {w.cluster}/{w.namespace}/Deployment/{w.name} fields: {fields} -->"
    )
    assert prbody.body(state, DIFF, "f.yaml").startswith(marker + "\n")
    m = prbody.MARKER.fullmatch(marker)
    assert m and m.group(1).endswith(f"/{w.name}") and m.group(2).split() == fields.split()


def test_a_fix_verified_on_a_temporary_copy_says_it_is_not_live():
    state = make_state()
    state.verify_copy = VerifyCopy(
        namespace="shop", name="report-api-verify-0a1b2c3d4e", created_at=0.0, deadline=1.0
    )
    text = prbody.body(state, DIFF, "apps/shop/report-api.yaml")
    assert "verified this fix on a temporary copy" in text
    assert "`report-api-verify-0a1b2c3d4e`" in text
    assert "The fix is **not live**" in text
    assert "until this pull request is merged and the controller syncs it" in text
    assert "Checked on the temporary copy" in text
    assert "already live" not in text and "revert the Deployment" not in text
    draft = prbody.draft_body(state, "no edit renders it", ["edit values.yaml"], "NOTE.md")
    assert "verified a fix on a temporary copy" in draft
    assert "already live" not in draft and "next sync may undo" not in draft
    note = prbody.hand_edit_note(state, "no edit renders it", ["edit values.yaml"])
    assert "verified this change on a temporary copy" in note
    # Verified live, the body says so as before.
    state.verify_copy = None
    assert "The change is already live" in prbody.body(state, DIFF, "apps/shop/report-api.yaml")
