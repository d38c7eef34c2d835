"""The records aifixer passes between its stages and keeps about each incident.

Every record is strict (`extra="forbid"`): a field a stage does not know is a bug to
surface, not data to carry silently — except in a record read back from Redis, whose
fields a newer version of the farm may have added (`STORED`). They travel through Celery as JSON
(`model_dump(mode="json")`) and are validated again on arrival. Kubernetes objects
stay plain dicts (`Manifest`): they are the API server's data, kept whole.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

Manifest = dict[str, Any]

# What kind of breakage an incident is. Decided from pod status and events first, the
# log line only when nothing else says more; part of the fingerprint.
FailureClass = Literal[
    "ImagePull",  # ErrImagePull / ImagePullBackOff / InvalidImageName
    "CrashLoop",  # the container exits (bad command, missing env/file, app crash)
    "OOMKilled",  # killed for exceeding its memory limit
    "ProbeFailure",  # readiness/liveness probes failing
    "Unschedulable",  # FailedScheduling: resources, selectors, taints
    "ConfigError",  # CreateContainerConfigError / FailedMount: missing ConfigMap/Secret/key
    "AppError",  # only error lines, the pods look healthy
]

# fixed: verified and proposed as a PR; called: a person was phoned; rejected: no
# proposal passed the guardrails (a person was phoned); error: a stage failed for good
# (a person was phoned with the reason); recovered: healthy again before any change.
Outcome = Literal["fixed", "called", "rejected", "error", "recovered"]


# Validation context for a record read back from Redis (`Store.load`): fields a newer
# farm version added are dropped instead of refused, so during a rolling upgrade a
# worker of the previous version still loads, and finishes, an incident a newer one
# saved. Everything else stays strict.
STORED = {"stored": True}


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _newer_fields_of_a_stored_record(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context == STORED and isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data


class Workload(Record):
    cluster: str  # the farm's name for the application cluster
    namespace: str
    kind: Literal["Deployment"] = "Deployment"
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Signal(Record):
    """One observation from a source that something is wrong."""

    source: Literal["loki", "events", "pods", "alertmanager"]
    namespace: str
    pod: str | None = None  # the pod it is about, when known
    workload: str | None = None  # the owning Deployment's name, once resolved
    reason: str  # event reason, pod waiting/terminated reason, alert name, or "LogError"
    message: str  # event message, log line, alert summary (bounded)
    observed_at: datetime
    raw: dict[str, Any] = Field(default_factory=dict)  # the source payload, for the record


class Incident(Record):
    fingerprint: str  # hash of (cluster, namespace, kind, name, failure class)
    workload: Workload
    failure_class: FailureClass
    opened_at: datetime
    signals: list[Signal]  # the first few signals that opened it
    generation: int | None = None  # the Deployment's generation when it was opened
    # This occurrence: "<fingerprint>-<opened, ms since the epoch>" unless given. Every
    # at-most-once key (rollback snapshot, dialled numbers, PR branch) is keyed by it.
    id: str = ""

    @model_validator(mode="after")
    def _occurrence_id(self) -> Incident:
        if not self.id:
            self.id = f"{self.fingerprint}-{int(self.opened_at.timestamp() * 1000)}"
        return self


class PodState(Record):
    name: str
    phase: str
    ready: bool
    node: str | None = None
    reasons: list[str]  # waiting/terminated reasons, Unschedulable, NotReady
    restart_count: int
    last_termination: dict[str, Any] | None = None  # reason, exitCode, message
    revision_hash: str | None = None  # pod-template-hash label


class EventRecord(Record):
    type: str
    reason: str
    message: str
    object: str  # Kind/name
    count: int
    last_seen: str | None = None


class LogLine(Record):
    time: str  # RFC 3339
    pod: str
    container: str
    line: str


class FieldChange(Record):
    """One manifest field that differs; `None` stands for absent."""

    path: str  # e.g. spec.template.spec.containers[0].resources.limits.memory
    before: Any = None
    after: Any = None


class Revision(Record):
    revision: int  # deployment.kubernetes.io/revision
    replicaset: str
    images: list[str]
    ready_replicas: int
    current: bool  # the Deployment's current template


class ExistingTag(Record):
    """For a container whose image does not pull: the tag of the same repository that
    exists and was clearly meant (aifixer.imageref.closest_tag), read from a registry."""

    container: str
    image: str  # as the workload names it
    tag: str  # the existing tag
    digest: str  # what the tag pointed at when read (sha256:...)
    rule: str  # "typo" or "missing-patch"
    why: str  # one sentence for the record


class Evidence(Record):
    deployment: Manifest  # the live Deployment, without status and managedFields
    pods: list[PodState]
    events: list[EventRecord]
    logs: list[LogLine]  # from Loki, newest last, bounded
    pod_logs: dict[str, str]  # "pod/container[/previous]" -> tail of pods/log
    revisions: list[Revision]
    last_healthy_template: Manifest | None  # pod template of the newest revision that ran healthy
    template_diff: list[FieldChange]  # last healthy template -> current template
    healthy: bool  # rollout complete and no pod shows a failure (nothing to fix)
    generation: int | None = None  # the Deployment's generation the evidence was read at
    # Only with AIFIXER_REGISTRIES, for an image pull failure without a healthy revision.
    existing_tags: list[ExistingTag] = Field(default_factory=list)


class Diagnosis(Record):
    summary: str  # one or two sentences a person understands
    root_cause: str
    failure_class: FailureClass
    fields: list[str] = Field(default_factory=list)  # manifest fields believed responsible
    source: Literal["model", "playbook"]


class FixProposal(Record):
    source: Literal["model", "playbook"]
    strategy: str  # playbook name, or "model"
    rationale: str
    manifest: Manifest  # the whole corrected Deployment
    changes: list[FieldChange]  # live -> proposed


class Rejection(Record):
    source: str
    strategy: str
    reasons: list[str]


class Snapshot(Record):
    """The Deployment before aifixer's first write: what a rollback restores. Taken once."""

    manifest: Manifest  # without status and server-owned metadata
    generation: int  # its generation then
    taken_at: float  # epoch seconds


class ApplyResult(Record):
    original: Manifest  # the Deployment as it was, for rollback
    applied: Manifest  # what was applied
    changes: list[FieldChange]
    generation: int  # the Deployment's generation after the apply
    applied_at: datetime


class GitOpsPause(Record):
    """Self-heal of the GitOps controller managing the workload, paused around the fix.

    Paused before the first write (Argo CD `spec.syncPolicy.automated.selfHeal: false`,
    Flux `spec.suspend: true`) so the controller does not revert the fix while it is
    verified; restored once the fix is in Git (its pull request merged or closed) or
    undone. Kept once per incident in the store (`gitops:<id>`), copied here.
    """

    controller: Literal["argocd", "flux"]
    namespace: str
    name: str
    field: str  # the JSON pointer of the switch
    previous: Any = None  # its value before (None: not set)
    paused_at: float  # epoch seconds
    restored_at: float | None = None
    restore: str | None = None  # "restored", "changed" (someone else's value, left), "gone"


class Verification(Record):
    ok: bool
    reason: str  # why it passed or failed, in words
    checked_at: datetime
    healthy_since: datetime | None = None
    rolled_back: bool = False
    details: dict[str, Any] = Field(default_factory=dict)


class PullRequestRef(Record):
    number: int
    url: str
    branch: str
    created: bool  # False when a retry found the PR already open
    # A draft: the change could not be proven by rendering the repository, so the pull
    # request adds only a note saying what must be edited by hand (the incident is not
    # `fixed`, and a person is called).
    draft: bool = False
    repo: str | None = None  # owner/name (None in records written before: the configured one)
    # What became of it, filled by the periodic check (`pipeline.check_pull_requests`):
    # merged (at `merged_at`), or closed unmerged (at `closed_at`).
    state: Literal["open", "merged", "closed"] = "open"
    merged_at: datetime | None = None
    closed_at: datetime | None = None


class CallRecord(Record):
    """One phone call; one line of the call file."""

    time: datetime  # when the call was placed (UTC)
    number: str  # the number called
    speech: str  # what was said
    can_intervene: bool  # the answer; silence and no answer count as False
    fingerprint: str  # the failure (workload and class) the call was about
    status: str  # Twilio's final call status: completed, no-answer, busy, failed...
    call_sid: str | None = None
    attempt: int  # 1 for the first number called, 2 for the next...
    answer_text: str | None = None  # what was heard (SpeechResult or Digits)
    incident_id: str | None = None  # the occurrence (None in lines written before ids)


class ModelUsage(Record):
    """What the model cost one stage of an incident, as the endpoint counted it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # wall time waiting for answers


class IncidentState(Record):
    """One incident's record, kept in Redis (`aifixer.store`); stages load and save it."""

    incident: Incident
    version: int = 0  # bumped by every save; a save over a newer record is refused
    stage: str = "opened"  # the last stage reached (diagnosed, patched, applied...)
    updated_at: float = 0.0  # epoch seconds of the last save
    retries: dict[str, int] = Field(default_factory=dict)  # stage -> transient errors so far
    evidence: Evidence | None = None
    diagnosis: Diagnosis | None = None
    proposal: FixProposal | None = None
    rejections: list[Rejection] = Field(default_factory=list)
    apply: ApplyResult | None = None
    verification: Verification | None = None
    pull_request: PullRequestRef | None = None
    calls: list[CallRecord] = Field(default_factory=list)
    speech: str | None = None  # what the call said
    memory_examples: list[str] = Field(
        default_factory=list
    )  # similar past incidents, for the prompt
    remembered: FixProposal | None = None  # a fix that verified on a similar past incident
    outcome: Outcome | None = None
    error: str | None = None  # the stage that failed for good, and why
    pr_error: str | None = None  # the fix is verified and live, but its pull request failed
    model_used: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)  # stage -> seconds
    model_usage: dict[str, ModelUsage] = Field(default_factory=dict)  # stage -> model cost
    gitops_pause: GitOpsPause | None = None  # the controller's self-heal aifixer paused
    closed_at: datetime | None = None  # when finalize decided the outcome
