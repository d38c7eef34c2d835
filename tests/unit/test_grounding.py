"""Diagnoses grounded in facts: what the checker lets through and what it refuses.

Each false sentence below is one a small model wrote or could write about the incident
the facts describe; each true one says the same things in other words. The diagnosis
written from the facts alone must pass the checker in every case it is used for.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from aifixer import fixer, grounding
from aifixer.adapters.llm import Usage, parse_reply
from aifixer.models import (
    ApplyResult,
    Diagnosis,
    EventRecord,
    Evidence,
    ExistingTag,
    FieldChange,
    FixProposal,
    Incident,
    IncidentState,
    PodState,
    Revision,
    Verification,
    Workload,
)

T0 = datetime(2026, 3, 31, 8, 0, tzinfo=UTC)
C0 = "spec.template.spec.containers[0]"
LIMIT, REQUEST = f"{C0}.resources.limits.memory", f"{C0}.resources.requests.memory"
CPU_REQUEST = f"{C0}.resources.requests.cpu"
IMAGE, COMMAND = f"{C0}.image", f"{C0}.command"
READINESS_PATH = f"{C0}.readinessProbe.httpGet.path"


def deployment(**container: Any) -> dict[str, Any]:
    spec = {
        "name": "aggregator",
        "image": "batch/aggregator:2.4.1",
        "ports": [{"containerPort": 8080}],
        "env": [
            {"name": "LOG_LEVEL", "value": "info"},
            {"name": "DB_PASSWORD", "value": "hunter2-literal"},
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
        "resources": {
            "requests": {"memory": "384Mi", "cpu": "250m"},
            "limits": {"memory": "512Mi"},
        },
    }
    spec.update(container)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "aggregator", "namespace": "batch"},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [spec]}}},
    }


def incident(failure_class: str = "OOMKilled") -> Incident:
    return Incident(
        fingerprint="fp",
        workload=Workload(cluster="app", namespace="batch", name="aggregator"),
        failure_class=failure_class,
        opened_at=T0,
        signals=[],
    )


def oom_evidence(**overrides: Any) -> Evidence:
    values: dict[str, Any] = {
        "deployment": deployment(),
        "pods": [
            PodState(
                name="aggregator-5f7-abcde",
                phase="Running",
                ready=False,
                reasons=["OOMKilled", "CrashLoopBackOff"],
                restart_count=4,
                last_termination={"reason": "OOMKilled", "exitCode": 137},
            )
        ],
        "events": [
            EventRecord(
                type="Warning",
                reason="BackOff",
                object="Pod/aggregator-5f7-abcde",
                count=6,
                message="Back-off restarting failed container; call +1 415 555 0199",
            )
        ],
        "logs": [],
        "pod_logs": {},
        "revisions": [
            Revision(
                revision=1,
                replicaset="aggregator-4c2",
                images=["batch/aggregator:2.4.1"],
                ready_replicas=2,
                current=False,
            )
        ],
        "last_healthy_template": deployment()["spec"]["template"],
        "template_diff": [],
        "healthy": False,
    }
    values.update(overrides)
    return Evidence(**values)


RAISED = FieldChange(path=LIMIT, before="512Mi", after="768Mi")


def oom_facts(changes=(RAISED,), verified: bool = True) -> grounding.Facts:
    return grounding.establish(incident(), oom_evidence(), list(changes), verified=verified)


# -- the checker: an OOMKilled container whose limit the verified fix raised ----------------

TRUE = [
    "The container was OOMKilled (exit code 137): its memory limit of 512Mi is below what "
    "it needs; the fix raised it to 768Mi.",
    "The memory limit, 512 megabytes, was not enough for the aggregator; raising it to "
    "768 MiB made the pods healthy.",
    "After 4 restarts the pod is still killed for exceeding its memory limit.",
    f"The field {LIMIT} was too low at 512Mi.",
    "Its memory limit (resources.limits.memory) is insufficient: 0.5Gi.",
    "Pods of batch/aggregator run out of memory with image batch/aggregator:2.4.1.",
]
FALSE = [
    # The sentence the issue reported, above a fix that raised the limit.
    (
        "The current limits for memory are set too high (512Mi) and requests are set too "
        "low (384Mi), causing the container to run out of memory",
        "memory limit is too high, but it needed raising",
    ),
    ("The memory limit of 384Mi is too low.", "calls 384Mi the memory limit"),
    ("The memory limit should be raised to 1Gi.", "amount 1Gi"),
    ("The container uses 900Mi at peak, more than its limit.", "amount 900Mi"),
    ("It restarted 12 times because its memory limit is too low.", "number 12"),
    ("The container exited with code 1: its memory limit is too low.", "exit code 1"),
    (
        "The image batch/aggregator:2.5.0 leaks memory beyond the memory limit.",
        "image batch/aggregator:2.5.0",
    ),
    ("The liveness probe kills it before the memory limit is reached.", "liveness"),
    ("The readiness probe on /metrics fails; the memory limit is too low.", "path /metrics"),
    ("The memory limit in spec.template.spec.volumes is too low.", "field"),
    ("The memory limit is too low since version 2.3.0.", "version 2.3.0"),
    ("The pod is killed for memory: its command is wrong.", None),  # names no field fixed?
    ("The pods are crashing and are restarted again and again.", "names none of the changed"),
]


@pytest.mark.parametrize("text", TRUE)
def test_a_true_sentence_passes(text):
    assert grounding.problems(text, oom_facts()) == []


@pytest.mark.parametrize(("text", "why"), FALSE)
def test_a_false_sentence_is_refused_and_says_why(text, why):
    found = grounding.problems(text, oom_facts())
    assert found, text
    if why is not None:
        assert any(why in f for f in found), found


def test_a_fix_that_lowered_an_amount_refuses_too_low_and_takes_too_high():
    lowered = FieldChange(path=CPU_REQUEST, before="4", after="500m")
    facts = grounding.establish(
        incident("Unschedulable"),
        oom_evidence(deployment=deployment(resources={"requests": {"cpu": "4"}})),
        [lowered],
        verified=True,
    )
    assert grounding.problems("The cpu request of 4 cores was too high for any node.", facts) == []
    found = grounding.problems("The cpu request is too low for the pod to be scheduled.", facts)
    assert any("needed lowering" in f for f in found)
    assert grounding.problems("The cpu request was cut to 500m.", facts) == []
    assert grounding.problems("The cpu request was cut to 250m.", facts) != []


def test_the_release_that_lowered_a_limit_says_it_needs_more_before_any_fix():
    diff = [FieldChange(path="spec.containers[0].resources.limits.memory", before="256Mi",
                        after="64Mi")]  # fmt: skip
    facts = grounding.establish(incident(), oom_evidence(template_diff=diff), [])
    assert (
        grounding.problems("The release lowered the memory limit from 256Mi to 64Mi.", facts) == []
    )
    assert grounding.problems("The memory limit of 64Mi is too generous.", facts) != []
    # Before a fix, the field to name is the one changed since the last healthy revision.
    assert grounding.problems("The pods are crashing.", facts) != []


def test_facts_state_what_was_seen_and_never_a_secret_or_an_event_message():
    text = oom_facts().text()
    for fact in (
        "Detected failure class: OOMKilled",
        "Pods: 0/1 ready; reasons CrashLoopBackOff, OOMKilled; restarts up to 4",
        "Last termination: OOMKilled, exit code 137",
        "Warning events: BackOff x6",
        "image batch/aggregator:2.4.1; memory limit 512Mi; memory request 384Mi; cpu request 250m",
        "readinessProbe httpGet path /healthz port 8080",
        "Fix verified: memory limit",
        "raised from 512Mi to 768Mi",
    ):
        assert fact in text, fact
    assert "hunter2" not in text and "415" not in text and "Back-off" not in text


def test_a_credential_value_changed_is_named_not_shown():
    change = FieldChange(path=f"{C0}.env[1].value", before="hunter2-literal", after="s3cret-2")
    facts = grounding.establish(incident("CrashLoop"), oom_evidence(), [change], verified=True)
    summary, cause, _ = grounding.written(facts)
    for text in (facts.text(), summary, cause):
        assert "hunter2" not in text and "s3cret" not in text
    assert "a credential's value, not shown" in cause


def test_an_existing_tag_from_the_registry_is_a_fact():
    bad = "shop/price-feed:1.8.O"
    tag = ExistingTag(container="feed", image=bad, tag="1.8.0", digest="sha256:" + "a" * 64,
                      rule="typo", why="one edit away")  # fmt: skip
    evidence = oom_evidence(
        deployment=deployment(image=bad), existing_tags=[tag], last_healthy_template=None,
        revisions=[], pods=[PodState(name="p", phase="Pending", ready=False,
                                     reasons=["ImagePullBackOff"], restart_count=0)],
    )  # fmt: skip
    fix = FieldChange(path=IMAGE, before=bad, after="shop/price-feed:1.8.0")
    facts = grounding.establish(incident("ImagePull"), evidence, [fix], verified=True)
    assert "tag 1.8.O of shop/price-feed is not published" in facts.text()
    ok = "Tag 1.8.O of shop/price-feed was never published; the image was set to 1.8.0."
    assert grounding.problems(ok, facts) == []
    assert grounding.problems("The image shop/price-feed:1.9.0 exists; use it.", facts) != []
    summary, cause, fields = grounding.written(facts)
    assert "never ran healthy" not in cause and "not published" in cause
    assert grounding.problems(f"{summary}\n{cause}", facts) == [] and fields == [IMAGE]


# -- the diagnosis written from the facts holds to them -----------------------------------

CASES = {
    "OOMKilled": RAISED,
    "CrashLoop": FieldChange(path=COMMAND, before=["python3", "app.py"], after=None),
    "ImagePull": FieldChange(path=IMAGE, before="batch/aggregator:2.4.l", after="batch/aggregator:2.4.1"),
    "ProbeFailure": FieldChange(path=READINESS_PATH, before="/health", after="/healthz"),
    "Unschedulable": FieldChange(path=CPU_REQUEST, before="4", after="250m"),
    "ConfigError": FieldChange(
        path=f"{C0}.env",
        before=[{"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "lvl"}}}],
        after=[{"name": "LOG_LEVEL", "value": "info"}],
    ),
    "AppError": FieldChange(path="spec.replicas", before=2, after=3),
}  # fmt: skip


@pytest.mark.parametrize("history", ["diff", "healthy, no diff", "born broken"])
@pytest.mark.parametrize("stage", ["before the fix", "proposed", "verified"])
@pytest.mark.parametrize("failure_class", sorted(CASES))
def test_the_written_diagnosis_passes_its_own_check(failure_class, stage, history):
    change = CASES[failure_class]
    overrides: dict[str, Any] = {}
    if history == "diff":
        overrides["template_diff"] = [
            FieldChange(path=change.path.removeprefix("spec.template."), before=change.after,
                        after=change.before)
        ]  # fmt: skip
    elif history == "born broken":
        overrides |= {"last_healthy_template": None, "revisions": []}
    changes = [] if stage == "before the fix" else [change]
    facts = grounding.establish(
        incident(failure_class), oom_evidence(**overrides), changes, verified=stage == "verified"
    )
    summary, cause, fields = grounding.written(facts)
    assert grounding.problems(f"{summary}\n{cause}", facts) == [], (summary, cause)
    if changes:
        assert fields[0] == change.path
        assert ("The fix that verified" if stage == "verified" else "The fix proposed") in cause


# -- the fixer: the model writes from the facts, or the facts write it ----------------------


class Model:
    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply, self.users = reply, []

    def chat_json(self, system, user, schema, *, name, max_tokens, temperature=0):
        self.users.append(user)
        return parse_reply(json.dumps(self.reply), schema), Usage(model="fake")


def answer(summary: str, cause: str) -> dict[str, str]:
    return {"summary": summary, "root_cause": cause, "failure_class": "OOMKilled"}


def test_the_model_reads_the_facts_and_the_verified_change():
    model = Model(answer("The aggregator is OOMKilled.", "Its memory limit of 512Mi is too low."))
    result = fixer.diagnose(model, incident(), oom_evidence(), [RAISED], verified=True)
    assert result.source == "model" and result.fields == [LIMIT]
    assert "Established facts" in model.users[0]
    assert "Fix verified: memory limit" in model.users[0] and "768Mi" in model.users[0]


def test_an_ungrounded_model_diagnosis_is_replaced_by_the_facts():
    issue = answer(
        "The aggregator runs out of memory.",
        "The current limits for memory are set too high (512Mi) and requests are set too low "
        "(384Mi), causing the container to run out of memory.",
    )
    result = fixer.diagnose(Model(issue), incident(), oom_evidence(), [RAISED], verified=True)
    assert result.source == "playbook"
    assert "too high" not in result.root_cause
    assert "raised from 512Mi to 768Mi" in result.root_cause


def test_a_recorded_diagnosis_is_checked_again_against_the_verified_change():
    before_fix = Diagnosis(
        summary="The aggregator is OOMKilled after 4 restarts.",
        root_cause="Its memory limit of 512Mi is set too high.",
        failure_class="OOMKilled",
        source="model",
    )
    state = IncidentState(
        incident=incident(),
        evidence=oom_evidence(),
        diagnosis=before_fix,
        apply=ApplyResult(original={}, applied={}, changes=[RAISED], generation=2, applied_at=T0),
        verification=Verification(ok=True, reason="healthy", checked_at=T0),
    )
    shown, refused = grounding.shown(state)
    assert shown.source == "playbook" and refused
    before_fix.root_cause = "Its memory limit of 512Mi is too low."
    assert grounding.shown(state) == (before_fix, [])


class SpeechModel:
    def __init__(self) -> None:
        self.users: list[str] = []

    def chat_text(self, system, user, *, max_tokens):
        self.users.append(user)
        return "", Usage(model="fake")


def test_an_untrue_recorded_diagnosis_reaches_neither_the_speech_prompt_nor_memory():
    """What the call is written from and what later prompts read is the diagnosis as it
    may be shown: one the facts bear out, else one written from them."""
    from aifixer import memory
    from aifixer.settings import Settings

    untrue = Diagnosis(
        summary="The aggregator's memory limit of 512Mi is set too high.",
        root_cause="Its memory limit of 512Mi is set too high.",
        failure_class="OOMKilled",
        source="model",
    )
    state = IncidentState(  # the raised limit verified: "too high" is untrue
        incident=incident(),
        evidence=oom_evidence(),
        diagnosis=untrue,
        apply=ApplyResult(original={}, applied={}, changes=[RAISED], generation=2, applied_at=T0),
        verification=Verification(ok=True, reason="healthy", checked_at=T0),
        outcome="fixed",
    )
    model = SpeechModel()
    fixer.speech(model, state, Settings(_env_file=None))
    [user] = model.users
    assert "too high" not in user and "aggregator" in user
    record = memory.record_of(state)
    assert record is not None and record.diagnosis
    assert "too high" not in record.diagnosis
    # A true one is carried as recorded.
    state.diagnosis = untrue.model_copy(
        update={
            "summary": "The aggregator is OOMKilled after 4 restarts.",
            "root_cause": "Its memory limit of 512Mi is too low.",
        }
    )
    assert memory.record_of(state).diagnosis.startswith("The aggregator is OOMKilled after 4")


# -- the speech may say the image the fix proposes ------------------------------------------


def test_the_speech_may_name_the_image_the_fix_sets_and_no_other():
    bad, good = "shop/price-feed:1.8.O", "shop/price-feed:1.8.0"
    evidence = oom_evidence(deployment=deployment(image=bad), revisions=[])
    fix = FieldChange(path=IMAGE, before=bad, after=good)
    state = IncidentState(
        incident=Incident(
            fingerprint="fp",
            workload=Workload(cluster="app", namespace="shop", name="price-feed"),
            failure_class="ImagePull",
            opened_at=T0,
            signals=[],
        ),
        evidence=evidence,
        proposal=FixProposal(
            source="playbook",
            strategy="closest-existing-tag",
            rationale="r",
            manifest={},
            changes=[fix],
        ),  # fmt: skip
        verification=Verification(ok=False, reason="x", checked_at=T0, rolled_back=True),
    )
    said = (
        "The deployment price-feed, in namespace shop, cannot start because its image cannot "
        f"be pulled. The image was set to {good}, but it did not help, so it was undone."
    )
    assert fixer.speech_problems(said, state) == []
    other = said.replace(good, "shop/price-feed:2.0.1")
    assert any("image" in p for p in fixer.speech_problems(other, state))
    template = fixer.template_speech(state)
    assert "version 1.8.0" in template and fixer.speech_problems(template, state) == []


def test_a_sigkill_is_read_with_its_reason():
    liveness = PodState(name="p", phase="Running", ready=False, reasons=["CrashLoopBackOff"],
                        restart_count=3, last_termination={"reason": "Error", "exitCode": 137})  # fmt: skip
    facts = grounding.establish(incident("ProbeFailure"), oom_evidence(pods=[liveness]), [])
    summary, cause, _ = grounding.written(facts)
    assert "memory" not in f"{summary} {cause}" and "liveness" in cause
    assert "exceeding the memory limit" in oom_facts().text()
