"""Fake ports for the pipeline and the tasks: a cluster, Loki, a forge, a phone, a model.

They keep just enough state to play the remediation's side of each conversation, and
fail on demand: `fail("apply", TransientError(...), times=3)` makes the next three
calls of that method raise. Incident records go to a real Redis (the tests' private
server) through the real store.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from aifixer import manifests, pipeline
from aifixer.adapters.errors import AdapterError, Conflict, PermanentError, Unproven
from aifixer.adapters.kube import GitOpsOwner
from aifixer.models import (
    Diagnosis,
    Evidence,
    FieldChange,
    FixProposal,
    Incident,
    IncidentState,
    PodState,
    PullRequestRef,
    Revision,
    Workload,
)
from aifixer.settings import Settings


class Faults:
    def __init__(self) -> None:
        self._queue: dict[str, list[BaseException]] = defaultdict(list)
        self.calls: dict[str, int] = defaultdict(int)

    def fail(self, method: str, exc: BaseException, times: int = 1) -> None:
        self._queue[method].extend([exc] * times)

    def hit(self, method: str) -> None:
        self.calls[method] += 1
        if self._queue[method]:
            raise self._queue[method].pop(0)


def deployment(image: str = "registry.local/web:2", generation: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "generation": generation,
            "resourceVersion": "100",
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


class FakeKube(Faults):
    """One Deployment, shop/web; writes bump generation and resourceVersion like a server."""

    def __init__(self) -> None:
        super().__init__()
        self.live = deployment()
        self.healthy = True
        self.writes: list[dict[str, Any]] = []
        # The Argo CD Application argocd/web managing shop/web (`managed_by_argo`), or None.
        self.application: dict[str, Any] | None = None

    def _bump(self, spec_changed: bool) -> None:
        meta = self.live["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        if spec_changed:
            meta["generation"] += 1

    def person_sets_image(self, image: str) -> None:
        self.live["spec"]["template"]["spec"]["containers"][0]["image"] = image
        self._bump(True)

    def status_moves(self) -> None:
        self._bump(False)

    def get_deployment(self, namespace: str, name: str):
        self.hit("get_deployment")
        out = copy.deepcopy(self.live)
        n = out["spec"]["replicas"]
        ready = n if self.healthy else 0
        out["status"] = {
            "observedGeneration": out["metadata"]["generation"],
            "replicas": n, "updatedReplicas": n, "readyReplicas": ready,
            "availableReplicas": ready,
        }  # fmt: skip
        return out

    def pod_states(self, dep):
        self.hit("pod_states")
        reasons = [] if self.healthy else ["CrashLoopBackOff"]
        return [
            PodState(
                name="web-1", phase="Running", ready=self.healthy, reasons=reasons,
                restart_count=0,
            )
        ]  # fmt: skip

    def dry_run_apply(self, manifest):
        self.hit("dry_run_apply")
        return manifest

    def revisions(self, dep):
        """Revision 1 ran registry.local/web:1 healthy; the current one runs the live image."""
        self.hit("revisions")
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        return [
            (Revision(revision=2, replicaset="web-2", images=[image], ready_replicas=0,
                      current=True), copy.deepcopy(dep["spec"]["template"])),
            (Revision(revision=1, replicaset="web-1", images=["registry.local/web:1"],
                      ready_replicas=0, current=False), self.healthy_template()),
        ]  # fmt: skip

    def last_healthy_template(self, dep, revisions=None):
        self.hit("last_healthy_template")
        return self.healthy_template()

    @staticmethod
    def healthy_template():
        return copy.deepcopy(deployment("registry.local/web:1")["spec"]["template"])

    def apply(self, manifest, resource_version=None):
        self.hit("apply")
        if (
            resource_version is not None
            and resource_version != self.live["metadata"]["resourceVersion"]
        ):
            raise Conflict("kubernetes", "the object has been modified")
        spec_changed = manifest["spec"] != self.live["spec"]
        self.live["spec"] = copy.deepcopy(manifest["spec"])
        self._bump(spec_changed)
        self.writes.append({"op": "apply", "spec": copy.deepcopy(manifest["spec"])})
        return copy.deepcopy(self.live)

    def restore(self, original, expected_generation=None):
        self.hit("restore")
        gen = self.live["metadata"]["generation"]
        if expected_generation is not None and gen != expected_generation:
            raise Conflict(
                "kubernetes", f"changed by someone else (generation {gen}); left as it is"
            )
        self.live["spec"] = copy.deepcopy(original["spec"])
        self._bump(True)
        self.writes.append({"op": "restore", "spec": copy.deepcopy(original["spec"])})
        return copy.deepcopy(self.live)

    @property
    def image(self) -> str:
        return self.live["spec"]["template"]["spec"]["containers"][0]["image"]

    # -- a GitOps controller: the Argo CD Application argocd/web, as the adapter sees it

    OWNER = GitOpsOwner("argocd", "argocd", "web")

    def managed_by_argo(self, self_heal: bool | None = True) -> None:
        automated = {} if self_heal is None else {"selfHeal": self_heal}
        self.application = {"spec": {"syncPolicy": {"automated": automated}}}

    @property
    def self_heal(self) -> Any:
        return (
            ((self.application or {}).get("spec", {}).get("syncPolicy") or {})
            .get("automated", {})
            .get("selfHeal")
        )

    def _set_self_heal(self, value: Any) -> None:
        automated = self.application["spec"]["syncPolicy"]["automated"]
        if value is None:
            automated.pop("selfHeal", None)
        else:
            automated["selfHeal"] = value

    def person_sets_self_heal(self, value: Any) -> None:
        self._set_self_heal(value)

    def gitops_owner(self, dep):
        self.hit("gitops_owner")
        return self.OWNER if self.application is not None else None

    def self_heal_switch(self, owner):
        self.hit("self_heal_switch")
        return self.self_heal

    def pause_self_heal(self, owner):
        """As the adapter: a switch already off is left alone."""
        self.hit("pause_self_heal")
        before = self.self_heal
        if not owner.heals(before):
            return False, before
        self._set_self_heal(owner.paused)
        self.writes.append({"op": "pause", "selfHeal": owner.paused})
        return True, before

    def resume_self_heal(self, owner, previous):
        """As the adapter: only while the switch is still aifixer's value."""
        self.hit("resume_self_heal")
        if self.application is None:
            return "gone"
        if self.self_heal != owner.paused:
            return "changed"
        self._set_self_heal(previous)
        self.writes.append({"op": "resume", "selfHeal": previous})
        return "restored"


class FakeLoki(Faults):
    def error_count(self, namespace, pods, since_ns) -> int:
        self.hit("error_count")
        return 0


class FakeForge(Faults):
    """Pull requests by branch, like the real adapter: a second call finds the first.

    `unproven = (explanation, hand_edits)` makes `open_fix_pr` raise Unproven (when the
    branch holds no pull request yet), as the real one does for a change rendering
    cannot prove; `merge(number, at)` and `close(number, at)` play a reviewer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.prs: dict[str, PullRequestRef] = {}
        self.unproven: tuple[str, list[str]] | None = None
        self.drafts: dict[str, tuple[str, list[str]]] = {}  # branch -> what the body says
        self.fate: dict[int, dict[str, Any]] = {}  # number -> what a reviewer did

    def open_fix_pr(self, state: IncidentState) -> PullRequestRef:
        self.hit("open_fix_pr")
        branch = f"aifixer/{state.incident.id}"
        if branch in self.prs:
            return self.prs[branch].model_copy(update={"created": False})
        if self.unproven is not None:
            raise Unproven("github", *self.unproven)
        return self._open(branch, draft=False)

    def open_draft_pr(
        self, state: IncidentState, explanation: str, hand_edits: list[str]
    ) -> PullRequestRef:
        self.hit("open_draft_pr")
        branch = f"aifixer/{state.incident.id}"
        if branch in self.prs:
            return self.prs[branch].model_copy(update={"created": False})
        self.drafts[branch] = (explanation, hand_edits)
        return self._open(branch, draft=True)

    def _open(self, branch: str, *, draft: bool) -> PullRequestRef:
        n = len(self.prs) + 1
        self.prs[branch] = PullRequestRef(
            number=n, url=f"https://forge.example/pr/{n}", branch=branch, created=True,
            draft=draft, repo="acme/gitops",
        )  # fmt: skip
        return self.prs[branch]

    def merge(self, number: int, at: datetime) -> None:
        self.fate[number] = {"state": "merged", "merged_at": at, "closed_at": at}

    def close(self, number: int, at: datetime) -> None:
        self.fate[number] = {"state": "closed", "closed_at": at}

    def pull_state(self, ref: PullRequestRef) -> PullRequestRef:
        self.hit("pull_state")
        return ref.model_copy(update=self.fate.get(ref.number, {}))


class FakePhone(Faults):
    def __init__(self) -> None:
        super().__init__()
        self.dialled: list[tuple[str, str, int]] = []  # (number, incident id, attempt)
        self.spoken: list[str] = []
        self.placed_silently: list[str] = []  # numbers Twilio called but never told us about
        self.statuses: dict[str, str] = {}  # CallSid -> what Twilio says (default: completed)

    def place_call(self, number, speech, question=None, *, incident_id, attempt) -> str:
        self.hit("place_call")
        self.dialled.append((number, incident_id, attempt))
        self.spoken.append(speech)
        return f"CA{len(self.dialled):032d}"

    def call_status(self, call_sid: str) -> str:
        self.hit("call_status")
        return self.statuses.get(call_sid, "completed")

    def calls_since(self, number, since):
        self.hit("find_call")
        return ["CAfound"] if number in self.placed_silently else []


class FakeModel(Faults):
    total = SimpleNamespace(prompt_tokens=0, completion_tokens=0, seconds=0.0)

    def chat_text(self, *args, **kwargs):
        raise PermanentError("model", "no model in unit tests: the template speech is used")


def settings(redis_url: str, tmp_path, **overrides) -> Settings:
    values = {
        "redis_url": redis_url,
        "oncall_numbers": ["+15550000001", "+15550000002"],
        "call_file": tmp_path / "calls.jsonl",
        "incidents_file": tmp_path / "incidents.jsonl",
        "memory_enabled": False,
        "verify_stability_s": 0.0,
        "verify_deadline_s": 300.0,
        "retry_after_max_s": 60.0,
    }
    values.update(overrides)
    return Settings(**values)


def context(redis_url: str, tmp_path, **overrides) -> pipeline.Context:
    ctx = pipeline.Context(settings(redis_url, tmp_path, **overrides))
    ctx.__dict__.update(
        kube=FakeKube(), loki=FakeLoki(), forge=FakeForge(), phone=FakePhone(), model=FakeModel()
    )
    return ctx


def open_incident(ctx: pipeline.Context, *, fixed_image: str = "registry.local/web:1") -> str:
    """An incident on shop/web, diagnosed and patched (image back to `fixed_image`)."""
    live = ctx.kube.get_deployment("shop", "web")
    opened = datetime.now(UTC)
    fp = "fp-web-crashloop"
    incident = Incident(
        id=f"{fp}-{int(opened.timestamp() * 1000)}",
        fingerprint=fp,
        workload=Workload(cluster=ctx.settings.cluster_name, namespace="shop", name="web"),
        failure_class="CrashLoop",
        opened_at=opened,
        signals=[],
        generation=live["metadata"]["generation"],
    )
    fixed = manifests.clean(live)
    fixed["spec"]["template"]["spec"]["containers"][0]["image"] = fixed_image
    path = "spec.template.spec.containers[0].image"
    state = IncidentState(
        incident=incident,
        evidence=Evidence(
            deployment=manifests.clean(live), pods=[], events=[], logs=[], pod_logs={},
            revisions=[], last_healthy_template=None, template_diff=[], healthy=False,
            generation=live["metadata"]["generation"],
        ),
        diagnosis=Diagnosis(
            summary="The new image crashes at start.", root_cause="bad release",
            failure_class="CrashLoop", source="playbook",
        ),
        proposal=FixProposal(
            source="playbook", strategy="revert-to-last-healthy", rationale="the last healthy image",
            manifest=fixed,
            changes=[FieldChange(path=path, before=manifests.get_path(live, path), after=fixed_image)],
        ),
    )  # fmt: skip
    assert ctx.store.create(state, ctx.store.lock_key(state))
    return incident.id


__all__ = ["AdapterError", "FakeKube", "context", "open_incident", "settings"]
