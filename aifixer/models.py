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
    "VolumePending",  # a pod waits for a PersistentVolumeClaim that never binds
    "NoEndpoints",  # a Service whose selector matches none of its workload's pods
]

# Reasons aifixer names itself, for what Kubernetes shows without a reason of its own: a
# pod the scheduler keeps Pending for its unbound claims (read off the PodScheduled
# condition's message), and a Service that selects none of a running workload's pods
# (found by polling Services; no event exists for it).
UNBOUND_CLAIMS = "UnboundPersistentVolumeClaims"
NO_ENDPOINTS = "NoEndpoints"

# fixed: verified and proposed as a PR; called: a person was phoned; rejected: no
# proposal passed the guardrails (a person was phoned); error: a stage failed for good
# (a person was phoned with the reason); recovered: healthy again before any change.
Outcome = Literal["fixed", "called", "rejected", "error", "recovered"]

# The workloads aifixer watches and fixes: their pods, by owner references.
WorkloadKind = Literal["Deployment", "StatefulSet", "DaemonSet"]


# Validation context for a record read back from Redis (`Store.load`): fields a newer
# farm version added are dropped instead of refused, so during a rolling upgrade a
# worker of the previous version still loads, and finishes, an incident a newer one
# saved. Everything else stays strict. `stored(cluster)` also names the default cluster,
# which a workload stored without a cluster means.
STORED = {"stored": True}
DEFAULT_CLUSTER = "app"  # AIFIXER_CLUSTER_NAME's default


def stored(default_cluster: str) -> dict[str, Any]:
    return {**STORED, "cluster": default_cluster}


def _is_stored(context: Any) -> bool:
    return isinstance(context, dict) and context.get("stored") is True


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _newer_fields_of_a_stored_record(cls, data: Any, info: ValidationInfo) -> Any:
        if _is_stored(info.context) and isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data


class Workload(Record):
    cluster: str  # the farm's name for the application cluster
    namespace: str
    kind: WorkloadKind = "Deployment"  # records stored before other kinds: Deployment
    name: str

    @model_validator(mode="before")
    @classmethod
    def _default_cluster(cls, data: Any, info: ValidationInfo) -> Any:
        """A workload stored without a cluster is on the default one."""
        context = info.context
        if isinstance(context, dict) and _is_stored(context) and isinstance(data, dict):
            if "cluster" not in data:
                return {**data, "cluster": context.get("cluster") or DEFAULT_CLUSTER}
        return data

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Signal(Record):
    """One observation from a source that something is wrong."""

    source: Literal["loki", "events", "pods", "alertmanager", "services"]
    # The cluster it was seen on, when the source says (an alert's `cluster` label);
    # None: the cluster that polled it, or the default one.
    cluster: str | None = None
    namespace: str
    pod: str | None = None  # the pod it is about, when known
    workload: str | None = None  # the owning workload's name, once resolved
    workload_kind: WorkloadKind = "Deployment"  # and its kind
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
    deleting: bool = False  # metadata.deletionTimestamp set: on its way out


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


class PeerProbe(Record):
    """How a Deployment elsewhere in the cluster that runs healthy probes the same image
    repository: read for a workload whose probes fail and that never ran healthy."""

    workload: str  # namespace/name of the healthy Deployment
    image: str  # its container's image
    probe: str  # readinessProbe, livenessProbe or startupProbe
    path: str | None = None  # httpGet path
    port: int | None = None  # the port number probed (a named port resolved)


class ObjectRef(Record):
    """An object other than the workload that a fix changes: the claim or the Service
    that is wrong, in the workload's namespace and cluster (the incident still names
    the workload)."""

    kind: Literal["PersistentVolumeClaim", "Service"]
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# What a GitOps file defines and a fix edits: the workload, or the object beside it.
Subject = Workload | ObjectRef


class ClaimState(Record):
    """A PersistentVolumeClaim the workload's pods mount, as read for the evidence."""

    name: str
    phase: str  # Pending, Bound, Lost
    storage_class: str | None = None  # spec.storageClassName
    class_exists: bool | None = None  # None: the cluster's classes could not be read
    volume_name: str | None = None  # spec.volumeName: a volume was bound to it
    events: list[EventRecord] = Field(default_factory=list)  # about the claim, newest last
    manifest: Manifest  # the live claim, without status and server-owned metadata


class ServiceState(Record):
    """A Service of the workload's namespace that selects none of the workload's pods."""

    name: str
    selector: dict[str, str]
    last_applied_selector: dict[str, str] | None = None  # kubectl's last-applied annotation
    endpoints: int = 0  # endpoints in its EndpointSlices
    manifest: Manifest  # the live Service, without status and server-owned metadata


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
    # Only for failing probes without a healthy revision; bounded.
    peer_probes: list[PeerProbe] = Field(default_factory=list)
    # Only for VolumePending: the claims the pods mount, and the cluster's classes.
    claims: list[ClaimState] = Field(default_factory=list)
    storage_classes: list[str] = Field(default_factory=list)
    default_storage_class: str | None = None
    # Only for NoEndpoints: the Services that select none of the workload's pods.
    services: list[ServiceState] = Field(default_factory=list)


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
    manifest: Manifest  # the whole corrected Deployment, or the corrected `target`
    changes: list[FieldChange]  # live -> proposed
    # The object fixed when it is not the workload (a claim re-created with an existing
    # class, a Service's selector restored); None: the Deployment.
    target: ObjectRef | None = None


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
    original: Manifest  # the object fixed (the Deployment, or the target) as it was
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
    cluster: str | None = None  # the incident's cluster (None in pauses recorded before)
    field: str  # the JSON pointer of the switch
    previous: Any = None  # its value before (None: not set)
    paused_at: float  # epoch seconds
    restored_at: float | None = None
    restore: str | None = None  # "restored", "changed" (someone else's value, left), "gone"


class VerifyCopy(Record):
    """The temporary copy of the Deployment a fix is verified on, where the GitOps
    controller's self-heal may not be paused (`gitops_pause_self_heal` off).

    A Deployment of its own in the workload's namespace, one replica of the fixed pod
    template under aifixer's own labels (`aifixer.copies`), so no Service sends it
    traffic and no controller reverts or prunes it; the workload itself is never
    written. Recorded once per incident in the store (`copy:<id>`) before it is
    created, and removed once verification decided, the incident ended, or its
    deadline passed (the watchdog). Copied here.
    """

    cluster: str | None = None  # the incident's cluster
    namespace: str
    name: str
    created_at: float  # epoch seconds: recorded, immediately before the create
    deadline: float  # epoch seconds: the watchdog removes it from then on, whatever happens
    removed_at: float | None = None
    # "deleted"; "gone" (never created, or deleted by someone else); "not ours" (a
    # Deployment of its name that is not this incident's copy, left alone)
    removal: str | None = None


class Verification(Record):
    ok: bool
    reason: str  # why it passed or failed, in words
    checked_at: datetime
    healthy_since: datetime | None = None
    rolled_back: bool = False
    details: dict[str, Any] = Field(default_factory=dict)


class FixAttempt(Record):
    """A fix tried before the current one: applied, not verified, rolled back.

    The rollback restores the original (the snapshot taken before the first write of
    the incident), never an earlier attempt: each attempt starts from the original.
    """

    number: int  # 1 for the first fix applied
    proposal: FixProposal
    applied_at: datetime
    generation: int  # the Deployment's generation after its apply
    verification: Verification  # why it failed; rolled_back is True
    # The ReplicaSet its apply created (None: it reused one that existed before the
    # incident): never taken for the workload's healthy past by a later attempt.
    replicaset: str | None = None


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
    merge_commit: str | None = None  # the merge's commit sha, as the forge reports it
    # SHA-256 of the Diagnosis section aifixer last wrote into the body: it replaces that
    # section later (the model's explanation) only while the body still holds it as is.
    diagnosis_sha: str | None = None


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
    # Candidates of other kinds the guardrails accepted, best first: what a next attempt
    # tries when the current fix does not verify (`settings.fix_attempts`).
    alternatives: list[FixProposal] = Field(default_factory=list)
    attempts: list[FixAttempt] = Field(default_factory=list)  # fixes tried and undone, in order
    apply: ApplyResult | None = None
    verification: Verification | None = None
    pull_request: PullRequestRef | None = None
    calls: list[CallRecord] = Field(default_factory=list)
    speech: str | None = None  # what the call said
    # Written after the apply, beside verify (the `explain` task): the model's
    # explanation, kept in `explanation` until it is shown — `diagnosis` is what was
    # published (the pull request, when one is open, shows it); `explained` once that
    # work is over. The speech is prepared for the call that follows if every planned
    # fix fails, and used only if the call's facts are still those it rewords
    # (`prepared_for`: the template speech it was written from).
    explanation: Diagnosis | None = None
    explained: bool = False
    prepared_speech: str | None = None
    prepared_for: str | None = None
    memory_examples: list[str] = Field(
        default_factory=list
    )  # similar past incidents, for the prompt
    remembered: FixProposal | None = None  # a fix that verified on a similar past incident
    outcome: Outcome | None = None
    error: str | None = None  # the stage that failed for good, and why
    # A person changed the workload: "before" aifixer wrote (nothing applied), "after"
    # its fix (left as they set it). What the call says of the outcome rests on it.
    person_changed: Literal["before", "after"] | None = None
    pr_error: str | None = None  # the fix is verified and live, but its pull request failed
    model_used: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)  # stage -> seconds
    model_usage: dict[str, ModelUsage] = Field(default_factory=dict)  # stage -> model cost
    gitops_pause: GitOpsPause | None = None  # the controller's self-heal aifixer paused
    # The temporary copy the fix was verified on instead of the workload (None: the fix
    # was applied to the workload itself).
    verify_copy: VerifyCopy | None = None
    closed_at: datetime | None = None  # when finalize decided the outcome
