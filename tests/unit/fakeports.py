"""Fake ports for the pipeline and the tasks: a cluster, Loki, a forge, a phone, a model.

They keep just enough state to play the remediation's side of each conversation, and
fail on demand: `fail("apply", TransientError(...), times=3)` makes the next three
calls of that method raise. Incident records go to a real Redis (the tests' private
server) through the real store.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterator
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
    """One Deployment, shop/web; writes bump generation and resourceVersion like a server.

    Besides it, the Deployments aifixer creates to verify a fix on (`copies`, by name,
    created and deleted like a server would) and the namespace's Services (`services`:
    name -> selector).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = deployment()
        self.healthy = True
        # When set, health is decided by the live Deployment (a fix that works or not).
        self.healthy_when: Callable[[dict[str, Any]], bool] | None = None
        self.writes: list[dict[str, Any]] = []
        self.converging: list[str] = []
        # The Argo CD Application argocd/web managing shop/web (`managed_by_argo`), or None.
        self.application: dict[str, Any] | None = None
        self.copies: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, str]] = {"web": {"app": "web"}}
        # Every pod template the Deployment had (its ReplicaSets), the first one included.
        self.templates: list[dict[str, Any]] = [copy.deepcopy(self.live["spec"]["template"])]

    def _bump(self, spec_changed: bool) -> None:
        meta = self.live["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        if spec_changed:
            meta["generation"] += 1
            if self.live["spec"]["template"] not in self.templates:
                self.templates.append(copy.deepcopy(self.live["spec"]["template"]))

    def person_sets_image(self, image: str) -> None:
        self.live["spec"]["template"]["spec"]["containers"][0]["image"] = image
        self._bump(True)

    def status_moves(self) -> None:
        self._bump(False)

    @property
    def is_healthy(self) -> bool:
        return self.healthy_when(self.live) if self.healthy_when is not None else self.healthy

    def healthy_of(self, dep: dict[str, Any]) -> bool:
        """A copy's health, by the same rule as the live Deployment's."""
        return self.healthy_when(dep) if self.healthy_when is not None else self.healthy

    def get_deployment(self, namespace: str, name: str):
        self.hit("get_deployment")
        if name != self.live["metadata"]["name"]:
            return self._with_status(self.copies[name]) if name in self.copies else None
        return self._with_status(self.live)

    def _with_status(self, dep: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(dep)
        n = out["spec"]["replicas"]
        healthy = self.is_healthy if dep is self.live else self.healthy_of(dep)
        ready = n if healthy else 0
        out["status"] = {
            "observedGeneration": out["metadata"]["generation"],
            "replicas": n, "updatedReplicas": n, "readyReplicas": ready,
            "availableReplicas": ready,
        }  # fmt: skip
        return out

    def get_workload(self, namespace: str, kind: str, name: str):
        """The one Deployment (there is no StatefulSet or DaemonSet here)."""
        return self.get_deployment(namespace, name) if kind == "Deployment" else None

    def unblock_rollout(self, workload):
        return []

    def rollback_pending(self, workload, before):
        """Why the restored workload has not converged yet: the next of `self.converging`
        (a StatefulSet's member still on the fix's revision), else None."""
        self.hit("rollback_pending")
        return self.converging.pop(0) if self.converging else None

    def pod_states(self, dep):
        self.hit("pod_states")
        name = dep["metadata"]["name"]
        copied = self.copies.get(name)
        healthy = self.healthy_of(copied) if copied is not None else self.is_healthy
        reasons = [] if healthy else ["CrashLoopBackOff"]
        return [
            PodState(
                name=f"{name}-1", phase="Running", ready=healthy, reasons=reasons,
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

    def had_template(self, dep, template):
        self.hit("had_template")
        known = [*self.templates, self.live["spec"]["template"], self.healthy_template()]
        return template in known

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

    # -- verification copies and the Services that could select them

    def services_selecting(self, namespace, labels):
        self.hit("services_selecting")
        return sorted(
            name for name, selector in self.services.items()
            if selector and all(labels.get(k) == v for k, v in selector.items())
        )  # fmt: skip

    def create_copy(self, manifest):
        self.hit("create_copy")
        name = manifest["metadata"]["name"]
        if name in self.copies:
            raise Conflict("kubernetes", f"deployments.apps {name!r} already exists")
        created = copy.deepcopy(manifest)
        created["metadata"].update(generation=1, resourceVersion="1", uid=f"uid-{name}")
        self.copies[name] = created
        self.writes.append({"op": "create", "name": name})
        return copy.deepcopy(created)

    def delete_copy(self, dep):
        self.hit("delete_copy")
        meta = dep["metadata"]
        live = self.copies.get(meta["name"])
        if live is None:
            return False
        if live["metadata"]["uid"] != meta.get("uid"):
            raise Conflict("kubernetes", "Precondition failed: UID")
        del self.copies[meta["name"]]
        self.writes.append({"op": "delete", "name": meta["name"]})
        return True

    # -- a GitOps controller: the Argo CD Application argocd/web, as the adapter sees it

    OWNER = GitOpsOwner("argocd", "argocd", "web")

    def managed_by_argo(self, self_heal: bool | None = True) -> None:
        automated = {} if self_heal is None else {"selfHeal": self_heal}
        self.application = {"spec": {"syncPolicy": {"automated": automated}}}
        self.fetched: set[str] = set()  # the commits the controller has fetched
        self.in_flight: list[str] = []  # answers of gitops_in_flight, one per call, then None
        self.refreshes: list[str] = []  # the refreshes asked, by commit

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

    def gitops_in_flight(self, owner, workload):
        """As the adapter: what a pass decided before the pause still applies, if any."""
        self.hit("gitops_in_flight")
        return self.in_flight.pop(0) if self.in_flight else None

    def gitops_has_commit(self, owner, sha):
        """As the adapter: True once the controller fetched `sha`; else a refresh asked."""
        self.hit("gitops_has_commit")
        if sha in self.fetched:
            return True
        self.refreshes.append(sha)
        return False

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
        self.explained: dict[int, Any] = {}  # number -> the diagnosis its body shows now
        self.edited: set[int] = set()  # numbers whose body a person edited

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

    def merge(self, number: int, at: datetime, sha: str | None = None) -> None:
        self.fate[number] = {"state": "merged", "merged_at": at, "closed_at": at,
                             "merge_commit": sha}  # fmt: skip

    def close(self, number: int, at: datetime) -> None:
        self.fate[number] = {"state": "closed", "closed_at": at}

    def explain_pr(self, state: IncidentState, written) -> bool:
        """As the adapter: the section replaced unless a person edited it (`edited`)."""
        self.hit("explain_pr")
        ref = state.pull_request
        if ref is None or ref.draft or ref.number in self.edited:
            return False
        self.explained[ref.number] = written
        return True

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
        self.hit("chat_text")
        raise PermanentError("model", "no model in unit tests: the template speech is used")

    def chat_json(self, *args, **kwargs):
        self.hit("chat_json")
        raise PermanentError("model", "no model in unit tests: the evidence's diagnosis is used")


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


def eager_context(redis_url: str, tmp_path, monkeypatch) -> Iterator[pipeline.Context]:
    """For a `ctx` fixture: a fake-ports context the tasks use, with no aifixer key left
    in Redis and the canvas run eagerly. The incidents come diagnosed and patched
    (open_incident), so diagnose and patch pass them through; the fixer itself is
    tested in test_fixer.py."""
    import redis as redis_lib

    from aifixer import tasks
    from aifixer.app import app

    client = redis_lib.Redis.from_url(redis_url)
    stale = list(client.scan_iter(match="aifixer:*", count=1000))
    if stale:
        client.delete(*stale)
    c = context(redis_url, tmp_path)
    monkeypatch.setattr(tasks, "context", lambda: c)
    monkeypatch.setattr(pipeline, "PHONE_BACKOFF_S", 0.0)
    monkeypatch.setattr(pipeline, "diagnose", lambda c, s: s)
    monkeypatch.setattr(pipeline, "patch", lambda c, s: s)
    app.conf.task_always_eager = True
    yield c
    app.conf.task_always_eager = False


def run_canvas(ctx: pipeline.Context, incident_id: str):
    """The whole canvas, eagerly; returns the final record."""
    from aifixer import tasks

    tasks.remediation(incident_id).apply()
    return ctx.store.load(incident_id)
