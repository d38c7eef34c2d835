"""The application cluster, through the `kubernetes` client: the only module importing it.

Objects are read and returned as the API server's JSON (`_preload_content=False`), not
the client's model classes: field names stay camelCase exactly as in manifests, so a
Deployment read here can be diffed against, edited into and applied as a manifest, and
unknown fields survive the round trip.

Every call carries a timeout, and the client's own urllib3 retries are off: retrying is
decided once, by the tasks, from the errors raised here — `TransientError` for
connection failures, timeouts, 5xx and 429 (with Retry-After), `PermanentError` for
the rest (with the Status message the API server sent, bounded).

Writes follow `kubectl apply --server-side`: field manager `aifixer`, `force`, and a
`dryRun=All` rehearsal first, so admission and validation judge a fix before it lands.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from aifixer.models import (
    NO_ENDPOINTS,
    UNBOUND_CLAIMS,
    EventRecord,
    Manifest,
    PodState,
    Revision,
    Signal,
    WorkloadKind,
)
from aifixer.settings import Settings

from .errors import Conflict, PermanentError, TransientError, bounded, is_transient_status

log = logging.getLogger(__name__)

SYSTEM = "kubernetes"
FIELD_MANAGER = "aifixer"
APPLY_PATCH = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
# StatefulSets and DaemonSets label each pod with the ControllerRevision it runs: the
# revision's name (StatefulSet) or its hash (DaemonSet).
REVISION_HASH_LABEL = "controller-revision-hash"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
WATCH_WINDOW_S = 1  # how long one poll listens for events after catching up
OWNER_CACHE_S = 60.0  # pod/ReplicaSet owners do not change; the cache only bounds memory
MAX_EVENTS = 50  # events kept as evidence, newest
RESTORE_ATTEMPTS = 5
# The scheduler's VolumeBinding message for a pod whose claims are not bound.
_UNBOUND_MESSAGE = re.compile(r"unbound immediate PersistentVolumeClaims")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # an EndpointSlice's Service
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
# Annotations the persistentvolume-controller writes on a claim it binds or provisions:
# not the claim's author's, so a re-created claim starts without them.
CLAIM_CONTROLLER_ANNOTATIONS = (
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
)
# Waiting reasons that are a normal start, not a failure.
_STARTING = ("ContainerCreating", "PodInitializing")


# GitOps controllers: the marks they leave on the objects they manage.
ARGO_TRACKING_ANNOTATION = "argocd.argoproj.io/tracking-id"
ARGO_INSTANCE_LABEL = "app.kubernetes.io/instance"
FLUX_NAME_LABEL = "kustomize.toolkit.fluxcd.io/name"
FLUX_NAMESPACE_LABEL = "kustomize.toolkit.fluxcd.io/namespace"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # an object's name (DNS subdomain)
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a namespace (DNS label)


class GitOpsOwner(NamedTuple):
    """The controller object that keeps a workload equal to Git (see `gitops_owner`)."""

    controller: str  # "argocd" (an Application) or "flux" (a Kustomization)
    namespace: str
    name: str

    @property
    def field(self) -> str:
        """The JSON pointer of the switch aifixer turns: self-heal, or suspend."""
        return _GITOPS[self.controller][3]

    @property
    def paused(self) -> bool:
        """The switch's value while self-heal is paused."""
        return _GITOPS[self.controller][4]

    def heals(self, value: Any) -> bool:
        """Whether the controller reverts live changes with its switch at `value`."""
        return value is True if self.controller == "argocd" else value is not True

    def __str__(self) -> str:
        return f"{_GITOPS[self.controller][5]} {self.namespace}/{self.name}"


# controller -> (group, version, plural, field, value while paused, what people call it)
_GITOPS = {
    "argocd": ("argoproj.io", "v1alpha1", "applications",
               "/spec/syncPolicy/automated/selfHeal", False, "Argo CD Application"),
    "flux": ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations",
             "/spec/suspend", True, "Flux Kustomization"),
}  # fmt: skip


class RolloutStatus(NamedTuple):
    done: bool
    failed: bool  # the rollout will not finish by itself (progress deadline exceeded)
    message: str  # kubectl rollout status's words


class _Expired(Exception):
    """A watch's resourceVersion is too old (410 Gone): list again."""


# ---------------------------------------------------------------- pod status, pure


def _findings(pod: Manifest) -> list[tuple[str, str, dict[str, Any]]]:
    """(reason, message, details) for every failure a pod shows, as kubectl shows them."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            message = cond.get("message") or ""
            reason = cond.get("reason") or "Unschedulable"
            if _UNBOUND_MESSAGE.search(message):
                # The scheduler waits for the pod's claims to bind: the volume is the
                # failure, not the nodes (kubectl shows Pending, describe the message).
                reason = UNBOUND_CLAIMS
            out.append((reason, message, {}))
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for cs in statuses:
        container = {"container": cs.get("name")}
        state = cs.get("state") or {}
        waiting = state.get("waiting")
        if waiting and waiting.get("reason") and waiting["reason"] not in _STARTING:
            out.append((waiting["reason"], waiting.get("message") or "", container))
        for term in (state.get("terminated"), (cs.get("lastState") or {}).get("terminated")):
            if term and term.get("reason") and term["reason"] != "Completed":
                details = {**container, "exitCode": term.get("exitCode")}
                out.append((term["reason"], term.get("message") or "", details))
        if state.get("running") and not cs.get("ready"):
            out.append(("NotReady", "", container))
    return out


def pod_reasons(pod: Manifest) -> list[str]:
    """The failure reasons a person reads off `kubectl get pods` / `describe` for a pod.

    Unschedulable (PodScheduled False), waiting reasons other than a normal start,
    terminated and last-terminated reasons other than Completed, and NotReady for a
    running container that is not ready. In order, without repeats.
    """
    return list(dict.fromkeys(reason for reason, _, _ in _findings(pod)))


def pod_state(pod: Manifest) -> PodState:
    """A pod's status, as the record evidence and verification use."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return PodState(
        name=meta.get("name", ""),
        phase=status.get("phase") or "Unknown",
        ready=ready,
        node=spec.get("nodeName"),
        reasons=pod_reasons(pod),
        restart_count=sum(cs.get("restartCount") or 0 for cs in statuses),
        last_termination=_last_termination(statuses),
        revision_hash=(meta.get("labels") or {}).get(HASH_LABEL)
        or (meta.get("labels") or {}).get(REVISION_HASH_LABEL),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _last_termination(statuses: list[dict[str, Any]]) -> dict[str, Any] | None:
    terms = [
        {**t, "container": cs.get("name")}
        for cs in statuses
        if (t := (cs.get("lastState") or {}).get("terminated"))
    ]
    if not terms:
        return None
    last = max(terms, key=lambda t: t.get("finishedAt") or "")
    keep = ("container", "reason", "exitCode", "message", "startedAt", "finishedAt")
    return {k: last[k] for k in keep if last.get(k) is not None}


# ---------------------------------------------------------------- Deployment rules, pure


def rollout_status(workload: Manifest) -> RolloutStatus:
    """`kubectl rollout status <kind>/<name>`'s verdict on one workload object.

    Each kind has its own rule, kubectl's status viewer for it: Deployment, StatefulSet,
    DaemonSet. Only a Deployment can fail by itself (its progress deadline); a rollout
    kubectl cannot follow (an OnDelete StatefulSet or DaemonSet) counts as failed too,
    since it will never finish without someone deleting pods.
    """
    kind = workload.get("kind") or "Deployment"
    if kind == "StatefulSet":
        return statefulset_rollout_status(workload)
    if kind == "DaemonSet":
        return daemonset_rollout_status(workload)
    return deployment_rollout_status(workload)


def statefulset_rollout_status(sts: Manifest) -> RolloutStatus:
    """kubectl's StatefulSetStatusViewer: RollingUpdate only; the spec observed; every
    replica ready; with a partition, the pods at or above it updated; else the current
    revision equal to the update revision."""
    spec, status = sts.get("spec") or {}, sts.get("status") or {}
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return RolloutStatus(
            False, True, "rollout status is only available for RollingUpdate strategy type"
        )
    observed = status.get("observedGeneration") or 0
    if observed == 0 or sts["metadata"].get("generation", 0) > observed:
        return RolloutStatus(False, False, "Waiting for statefulset spec update to be observed...")
    replicas = spec.get("replicas")
    ready = status.get("readyReplicas") or 0
    if replicas is not None and ready < replicas:
        return RolloutStatus(False, False, f"Waiting for {replicas - ready} pods to be ready...")
    updated = status.get("updatedReplicas") or 0
    rolling = strategy.get("rollingUpdate")
    if rolling is not None:
        partition = rolling.get("partition")
        if replicas is not None and partition is not None and updated < replicas - partition:
            return RolloutStatus(
                False,
                False,
                "Waiting for partitioned roll out to finish: "
                f"{updated} out of {replicas - partition} new pods have been updated...",
            )
        return RolloutStatus(
            True, False, f"partitioned roll out complete: {updated} new pods have been updated..."
        )
    if status.get("updateRevision") != status.get("currentRevision"):
        return RolloutStatus(
            False,
            False,
            f"waiting for statefulset rolling update to complete {updated} pods at revision "
            f"{status.get('updateRevision')}...",
        )
    return RolloutStatus(
        True,
        False,
        f"statefulset rolling update complete {status.get('currentReplicas') or 0} pods at "
        f"revision {status.get('currentRevision')}...",
    )


def daemonset_rollout_status(ds: Manifest) -> RolloutStatus:
    """kubectl's DaemonSetStatusViewer: RollingUpdate only; the spec observed; every
    scheduled pod updated, then available."""
    name = ds["metadata"]["name"]
    spec, status = ds.get("spec") or {}, ds.get("status") or {}
    if (spec.get("updateStrategy") or {}).get("type", "RollingUpdate") != "RollingUpdate":
        return RolloutStatus(
            False, True, "rollout status is only available for RollingUpdate strategy type"
        )
    if ds["metadata"].get("generation", 0) > (status.get("observedGeneration") or 0):
        return RolloutStatus(False, False, "Waiting for daemon set spec update to be observed...")
    desired = status.get("desiredNumberScheduled") or 0
    updated = status.get("updatedNumberScheduled") or 0
    waiting = f'Waiting for daemon set "{name}" rollout to finish: '
    if updated < desired:
        return RolloutStatus(
            False, False, waiting + f"{updated} out of {desired} new pods have been updated..."
        )
    available = status.get("numberAvailable") or 0
    if available < desired:
        return RolloutStatus(
            False, False, waiting + f"{available} of {desired} updated pods are available..."
        )
    return RolloutStatus(True, False, f'daemon set "{name}" successfully rolled out')


def deployment_rollout_status(deployment: Manifest) -> RolloutStatus:
    """`kubectl rollout status deployment/<name>`'s verdict on one Deployment object.

    The same checks in the same order as kubectl's DeploymentStatusViewer: spec change
    not observed yet, progress deadline exceeded (failed), new replicas not all updated,
    old replicas still terminating, updated replicas not all available; else done.
    """
    name = deployment["metadata"]["name"]
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    if deployment["metadata"].get("generation", 0) > status.get("observedGeneration", 0):
        return RolloutStatus(False, False, "Waiting for deployment spec update to be observed...")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return RolloutStatus(False, True, f'deployment "{name}" exceeded its progress deadline')
    updated = status.get("updatedReplicas", 0)
    waiting = f'Waiting for deployment "{name}" rollout to finish: '
    if spec.get("replicas") is not None and updated < spec["replicas"]:
        return RolloutStatus(
            False,
            False,
            waiting + f"{updated} out of {spec['replicas']} new replicas have been updated...",
        )
    if status.get("replicas", 0) > updated:
        old = status["replicas"] - updated
        return RolloutStatus(
            False, False, waiting + f"{old} old replicas are pending termination..."
        )
    available = status.get("availableReplicas", 0)
    if available < updated:
        return RolloutStatus(
            False, False, waiting + f"{available} of {updated} updated replicas are available..."
        )
    return RolloutStatus(True, False, f'deployment "{name}" successfully rolled out')


def label_selector(selector: dict[str, Any]) -> str:
    """A LabelSelector object as the `labelSelector` query string."""
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], ",".join(expr.get("values") or [])
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }[op]
        )
    return ",".join(parts)


def removed_fields(live: Manifest, desired: Manifest, keep_manager: str = FIELD_MANAGER):
    """JSON pointers of `spec` fields other managers set that `desired` no longer has.

    Server-side apply removes a field an applier omits only when that applier was its
    sole owner; fields the team's own `kubectl apply` (or any other manager) set stay,
    even if the corrected manifest dropped them. The owners are in `managedFields`, so
    these are exactly the fields to remove explicitly. Defaulted fields have no owner
    and are never listed. Pointers come in reverse order (within a list, the highest
    index first), so removing them one after the other never shifts a later one.
    """
    found: set[tuple[str | int, ...]] = set()
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == keep_manager:
            continue
        owned = (entry.get("fieldsV1") or {}).get("f:spec")
        if owned:
            _walk_owned(owned, live.get("spec"), desired.get("spec"), ("spec",), found)
    return [
        "/" + "/".join(_pointer_token(p) for p in path)
        for path in sorted(found, key=_sort_key, reverse=True)
    ]


def _walk_owned(owned: dict, live: Any, desired: Any, path: tuple, found: set) -> None:
    for key, sub in owned.items():
        kind, _, raw = key.partition(":")
        if kind == "f" and isinstance(live, dict) and raw in live:
            if not isinstance(desired, dict) or raw not in desired:
                found.add((*path, raw))
            elif sub:
                _walk_owned(sub, live[raw], desired[raw], (*path, raw), found)
        elif kind in ("k", "v") and isinstance(live, list):
            ref = json.loads(raw)
            match = _match_key if kind == "k" else (lambda item, value: item == value)
            index = next((i for i, item in enumerate(live) if match(item, ref)), None)
            if index is None:
                continue
            other = (
                next((d for d in desired or [] if match(d, ref)), None)
                if isinstance(desired, list)
                else None
            )
            if other is None:
                found.add((*path, index))
            elif sub and kind == "k":
                _walk_owned(sub, live[index], other, (*path, index), found)


def _match_key(item: Any, key: dict[str, Any]) -> bool:
    return isinstance(item, dict) and all(item.get(k) == v for k, v in key.items())


def _sort_key(path: tuple) -> tuple:
    return tuple((1, p) if isinstance(p, int) else (0, p) for p in path)


def _pointer_token(part: str | int) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _apply_body(manifest: Manifest) -> Manifest:
    """The manifest without what server-side apply refuses or treats as a precondition."""
    body = {k: v for k, v in manifest.items() if k != "status"}
    meta = {
        k: v
        for k, v in (manifest.get("metadata") or {}).items()
        if k not in ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation")
    }
    return {**body, "metadata": meta}


def _template_of(rs: Manifest) -> Manifest:
    """A ReplicaSet's pod template as the Deployment wrote it (without pod-template-hash)."""
    template = json.loads(json.dumps((rs.get("spec") or {}).get("template") or {}))
    labels = (template.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    return template


def _revision_template(revision: Manifest) -> Manifest:
    """The pod template a StatefulSet's or DaemonSet's ControllerRevision holds.

    The controllers store it as a strategic merge patch replacing the template,
    `{"spec": {"template": {..., "$patch": "replace"}}}`.
    """
    data = revision.get("data") or {}
    template = json.loads(json.dumps(((data.get("spec") or {}).get("template")) or {}))
    template.pop("$patch", None)
    return template


def _normalized(value: Any) -> Any:
    """JSON with absent, null, empty maps and empty lists alike (as the API server reads them)."""
    if isinstance(value, dict):
        out = {k: _normalized(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def _revision(obj: Manifest) -> int:
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION, 0))
    except ValueError:
        return 0


def _controller(obj: Manifest, kind: str) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller"):
            return ref.get("name")
    return None


# ---------------------------------------------------------------- GitOps marks, pure


def gitops_owner(
    deployment: Manifest, argocd_namespace: str, flux_namespaces: Iterable[str]
) -> GitOpsOwner | None:
    """The controller object a Deployment's marks name, if aifixer may act on it.

    Argo CD: the tracking annotation `<app>:apps/Deployment:<namespace>/<name>` (it
    must name this very Deployment; `<app>` may be `<namespace>_<name>` for
    applications in any namespace), else the `app.kubernetes.io/instance` label; the
    Application lives in `argocd_namespace`. Flux: the `kustomize.toolkit.fluxcd.io/name`
    and `/namespace` labels, the namespace one of `flux_namespaces`.

    The marks are set by whoever can deploy: a name that is not a valid object name,
    or a namespace other than the configured ones, is not followed (None). Whether the
    object named really manages the workload is checked against the object itself
    (`Kube.gitops_owner`).
    """
    meta = deployment.get("metadata") or {}
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    tracking = annotations.get(ARGO_TRACKING_ANNOTATION)
    if isinstance(tracking, str) and tracking:
        app, _, target = tracking.partition(":")
        if target != f"apps/{deployment.get('kind') or 'Deployment'}:{ns}/{name}":
            return None
        app_ns, sep, app_name = app.partition("_")
        if not sep:
            app_ns, app_name = argocd_namespace, app
        return _owner("argocd", app_ns, app_name, [argocd_namespace])
    flux_name = labels.get(FLUX_NAME_LABEL)
    if flux_name:
        return _owner("flux", labels.get(FLUX_NAMESPACE_LABEL) or "", flux_name, flux_namespaces)
    instance = labels.get(ARGO_INSTANCE_LABEL)
    if instance:
        return _owner("argocd", argocd_namespace, instance, [argocd_namespace])
    return None


def _owner(
    controller: str, namespace: Any, name: Any, allowed: Iterable[str]
) -> GitOpsOwner | None:
    if not (isinstance(namespace, str) and isinstance(name, str)):
        return None
    if not (_NAMESPACE.fullmatch(namespace) and _NAME.fullmatch(name)):
        return None
    if namespace not in set(allowed):
        log.warning(
            "kubernetes: a workload names the %s %s/%s outside the configured namespaces: "
            "not followed", controller, namespace, name,
        )  # fmt: skip
        return None
    return GitOpsOwner(controller, namespace, name)


def claims(owner: GitOpsOwner, obj: Manifest, deployment: Manifest) -> bool:
    """Whether the controller object itself lists the Deployment among what it manages.

    Argo CD: `status.resources` (group apps, kind Deployment, namespace, name); Flux:
    `status.inventory.entries` (`<namespace>_<name>_apps_Deployment`).
    """
    meta = deployment.get("metadata") or {}
    ns, name = meta.get("namespace"), meta.get("name")
    kind = deployment.get("kind") or "Deployment"
    status = obj.get("status") or {}
    if owner.controller == "argocd":
        return any(
            isinstance(r, dict)
            and (r.get("group"), r.get("kind"), r.get("namespace"), r.get("name"))
            == ("apps", kind, ns, name)
            for r in status.get("resources") or []
        )
    entries = (status.get("inventory") or {}).get("entries") or []
    return any(isinstance(e, dict) and e.get("id") == f"{ns}_{name}_apps_{kind}" for e in entries)


def _pointer_get(obj: Any, pointer: str) -> Any:
    for part in pointer.strip("/").split("/"):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


# ---------------------------------------------------------------- Services and claims, pure


def _labels_text(labels: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def last_applied_selector(service: Manifest) -> dict[str, str] | None:
    """The selector `kubectl apply` last wrote for the Service (its last-applied
    annotation), when it is a map of strings; None otherwise."""
    text = ((service.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not isinstance(text, str) or len(text) > 262144:
        return None
    try:
        selector = ((json.loads(text) or {}).get("spec") or {}).get("selector")
    except (ValueError, AttributeError):
        return None
    if not isinstance(selector, dict) or not selector:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
        return None
    return selector


def _matches(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def service_names(service: Manifest, workload: Manifest) -> str | None:
    """Why the Service is the workload's and selects none of its pods, or None.

    It is the workload's when it has the workload's name, or when its last-applied
    selector matches the workload's pod template labels; it selects none of its pods
    when its live selector does not match those labels.
    """
    selector = (service.get("spec") or {}).get("selector") or {}
    template = ((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}
    labels = template.get("labels") or {}
    if not selector or _matches(selector, labels):
        return None
    smeta, wmeta = service.get("metadata") or {}, workload.get("metadata") or {}
    if smeta.get("namespace") != wmeta.get("namespace"):
        return None
    if smeta.get("name") == wmeta.get("name"):
        return "it carries the workload's name"
    last = last_applied_selector(service)
    if last is not None and _matches(last, labels):
        return "its last applied selector matched them"
    return None


def _new_claim_body(manifest: Manifest) -> Manifest:
    """A claim to create: the manifest without server-owned fields, status, the volume
    and the annotations the volume controller wrote."""
    body = _apply_body(manifest)
    body["spec"] = {k: v for k, v in (body.get("spec") or {}).items() if k != "volumeName"}
    meta = body["metadata"]
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items()
        if k not in CLAIM_CONTROLLER_ANNOTATIONS
    }  # fmt: skip
    meta.pop("annotations", None)
    if annotations:
        meta["annotations"] = annotations
    meta.pop("finalizers", None)
    meta.pop("deletionTimestamp", None)
    return body


def _event_record(e: Manifest) -> EventRecord:
    return EventRecord(
        type=e.get("type") or "",
        reason=e.get("reason") or "",
        message=bounded(e.get("message") or ""),
        object=f"{e['involvedObject'].get('kind')}/{e['involvedObject'].get('name')}",
        count=e.get("count") or 1,
        last_seen=_event_time(e) or None,
    )


# ---------------------------------------------------------------- the adapter


class Kube:
    """One application cluster."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout = settings.request_timeout_s
        self.api_client = _api_client(settings)
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.storage = client.StorageV1Api(self.api_client)
        self.discovery = client.DiscoveryV1Api(self.api_client)
        self._owners: dict[tuple[str, str, str], tuple[float, tuple[str, str] | None]] = {}

    def close(self) -> None:
        self.api_client.close()

    # -- detection -----------------------------------------------------------------------

    def warning_signals(self, since_rv: str | None) -> tuple[list[Signal], str]:
        """Warning events newer than the cursor, each mapped to its Deployment.

        The first call (no cursor) lists the Warning events seen within
        settings.loki_lookback_s; later calls watch from the cursor for WATCH_WINDOW_S,
        which returns every event added or updated since. A cursor too old for the API
        server (410 Gone) falls back to listing again, like an informer.

        Args:
            since_rv: the cursor returned by the previous call, or None.

        Returns:
            (signals, cursor for the next call).

        Raises:
            TransientError, PermanentError.
        """
        cursors = _parse_cursor(since_rv)
        signals: list[Signal] = []
        for ns in self.settings.namespaces or [""]:
            events, cursors[ns] = self._warnings_since(ns, cursors.get(ns))
            signals.extend(self._event_signal(e) for e in events)
        return signals, _format_cursor(cursors)

    def pod_signals(self) -> list[Signal]:
        """Pods showing a failure right now (a safety net beside the events).

        NotReady alone is left out: every pod is NotReady while it starts, and readiness
        probes that keep failing show up as Unhealthy events.

        Raises:
            TransientError, PermanentError.
        """
        signals: list[Signal] = []
        now = datetime.now(tz=UTC)
        for ns in self.settings.namespaces or [""]:
            for pod in self._list(
                self.core.list_namespaced_pod, self.core.list_pod_for_all_namespaces, ns
            ):
                meta = pod["metadata"]
                findings = [f for f in _findings(pod) if f[0] != "NotReady"]
                owner = self._pod_owner(meta["namespace"], pod) if findings else None
                signals.extend(
                    Signal(
                        source="pods",
                        namespace=meta["namespace"],
                        pod=meta["name"],
                        workload=owner[1] if owner else None,
                        workload_kind=cast(WorkloadKind, owner[0] if owner else "Deployment"),
                        reason=reason,
                        message=bounded(message),
                        observed_at=now,
                        raw={"pod": meta["name"], **details},
                    )
                    for reason, message, details in findings
                )
        return signals

    def owner_of_pod(self, namespace: str, pod_name: str) -> tuple[str, str] | None:
        """The workload that owns a pod: (kind, name), if any.

        Pod → ReplicaSet → Deployment, or pod → StatefulSet / DaemonSet directly, by
        controller ownerReferences. A pod already gone is traced by the name its
        controller gave it: `<replicaset>-<5 characters>`, `<daemonset>-<5
        characters>` or `<statefulset>-<ordinal>`, each confirmed by reading the owner.

        Returns:
            (kind, name); None when the pod is gone or not owned by one of these.

        Raises:
            TransientError, PermanentError.
        """
        return self._cached(
            ("Pod", namespace, pod_name), lambda: self._pod_owner_uncached(namespace, pod_name)
        )

    def owner_deployment(self, namespace: str, pod_name: str) -> str | None:
        """The Deployment that owns a pod (pod → ReplicaSet → Deployment), if any.

        Raises:
            TransientError, PermanentError.
        """
        owner = self.owner_of_pod(namespace, pod_name)
        return owner[1] if owner and owner[0] == "Deployment" else None

    def owner_of_event(self, event: Manifest) -> tuple[str, str] | None:
        """The workload an event is about, (kind, name): the workload itself, one of a
        Deployment's ReplicaSets, or one of their pods.

        Raises:
            TransientError, PermanentError.
        """
        obj = event.get("involvedObject") or event.get("regarding") or {}
        namespace = obj.get("namespace") or event.get("metadata", {}).get("namespace", "")
        kind, name = obj.get("kind"), obj.get("name")
        if not name:
            return None
        if kind in WORKLOAD_KINDS:
            return kind, name
        if kind == "ReplicaSet":
            return self._rs_owner(namespace, name)
        if kind == "Pod":
            return self.owner_of_pod(namespace, name)
        return None

    # -- reads for diagnosis and verification ------------------------------------------

    def get_deployment(self, namespace: str, name: str) -> Manifest | None:
        """The live Deployment as the API server's JSON, or None when it does not exist.

        Raises:
            TransientError, PermanentError.
        """
        return self._read(self.apps.read_namespaced_deployment, name, namespace)

    def get_workload(self, namespace: str, kind: str, name: str) -> Manifest | None:
        """The live Deployment, StatefulSet or DaemonSet, or None when it does not exist.

        Raises:
            ValueError: another kind.
            TransientError, PermanentError.
        """
        return self._read(self._apps_call("read", kind), name, namespace)

    def get_pod(self, namespace: str, name: str) -> Manifest | None:
        """The live pod, or None when it does not exist.

        Raises:
            TransientError, PermanentError.
        """
        return self._read(self.core.read_namespaced_pod, name, namespace)

    def set_pod_label(
        self,
        namespace: str,
        name: str,
        key: str,
        value: str | None,
        resource_version: str | None = None,
    ) -> Manifest | None:
        """Set one label of a pod (remove it when `value` is None), touching nothing else.

        A patch of `metadata.labels.<key>` alone: the pod's other labels, its annotations
        and its spec are not part of the request. With `resource_version`, the write
        happens only on that version of the pod. None when the pod is gone.

        Raises:
            Conflict: the pod is no longer at `resource_version`.
            TransientError, PermanentError.
        """
        meta: dict[str, Any] = {"labels": {key: value}}
        if resource_version:
            meta["resourceVersion"] = resource_version
        try:
            return self._json(self.core.patch_namespaced_pod, name, namespace, {"metadata": meta})
        except Conflict:
            raise
        except PermanentError as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:
                raise Conflict(SYSTEM, f"{namespace}/{name}: {exc.message}") from exc
            raise

    # -- forecast scaling -------------------------------------------------------------

    def deployments(self, namespace: str | None) -> list[Manifest]:
        """The Deployments of one namespace (None: of every namespace).

        Raises:
            TransientError, PermanentError.
        """
        return self._list(
            self.apps.list_namespaced_deployment,
            self.apps.list_deployment_for_all_namespaces,
            namespace or "",
        )

    def autoscaler_of(self, namespace: str, name: str) -> str | None:
        """The HorizontalPodAutoscaler (autoscaling/v2) that scales this Deployment, if any.

        Raises:
            TransientError, PermanentError.
        """
        api = client.AutoscalingV2Api(self.api_client)
        hpas = self._json(api.list_namespaced_horizontal_pod_autoscaler, namespace)
        for hpa in hpas.get("items") or []:
            ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if ref.get("kind") == "Deployment" and ref.get("name") == name:
                return hpa["metadata"]["name"]
        return None

    def set_replicas(self, namespace: str, name: str, replicas: int, expected: int) -> Manifest:
        """Set `spec.replicas`, only if it still is `expected` (a JSON patch `test`).

        Raises:
            Conflict: someone changed the replicas since they were read.
            TransientError, PermanentError.
        """
        body = [
            {"op": "test", "path": "/spec/replicas", "value": expected},
            {"op": "replace", "path": "/spec/replicas", "value": replicas},
        ]
        try:
            return self._json(self.apps.patch_namespaced_deployment, name, namespace, body)
        except PermanentError as exc:
            # A failed JSON patch `test` is a 422 "Invalid" like any other refusal: it is
            # a conflict when the replicas are indeed no longer what was read.
            live = self.get_deployment(namespace, name) if exc.status == 422 else None
            moved = live is not None and (live.get("spec") or {}).get("replicas") != expected
            if exc.status == 409 or moved:
                raise Conflict(
                    SYSTEM, f"{namespace}/{name}: replicas changed since read ({exc.message})"
                ) from exc
            raise

    def pods_of(self, deployment: Manifest) -> list[Manifest]:
        """The pods the Deployment's selector matches (every revision's).

        Raises:
            TransientError, PermanentError.
        """
        meta = deployment["metadata"]
        selector = label_selector(deployment["spec"]["selector"])
        return self._list(
            self.core.list_namespaced_pod, None, meta["namespace"], label_selector=selector
        )

    def pod_states(self, deployment: Manifest) -> list[PodState]:
        """`pod_state` of each of the Deployment's pods.

        Raises:
            TransientError, PermanentError.
        """
        return [pod_state(p) for p in self.pods_of(deployment)]

    def events_of(self, deployment: Manifest, pods: Iterable[Manifest]) -> list[EventRecord]:
        """Events about the Deployment, its ReplicaSets and these pods, newest last.

        ReplicaSets are recognised by the name the Deployment controller gives them,
        `<deployment>-<pod-template-hash>` (a StatefulSet's or DaemonSet's events are on
        the workload itself and its pods). At most MAX_EVENTS, the newest.

        Raises:
            TransientError, PermanentError.
        """
        meta = deployment["metadata"]
        name, workload_kind = meta["name"], deployment.get("kind") or "Deployment"
        pod_names = {p["metadata"]["name"] for p in pods}

        def concerns(obj: dict[str, Any]) -> bool:
            kind, n = obj.get("kind"), obj.get("name") or ""
            return (
                (kind == workload_kind and n == name)
                or (
                    workload_kind == "Deployment"
                    and kind == "ReplicaSet"
                    and n.startswith(name + "-")
                )
                or (kind == "Pod" and n in pod_names)
            )

        events = [
            e
            for e in self._list(self.core.list_namespaced_event, None, meta["namespace"])
            if concerns(e.get("involvedObject") or {})
        ]
        events.sort(key=_event_time)
        return [
            EventRecord(
                type=e.get("type") or "",
                reason=e.get("reason") or "",
                message=bounded(e.get("message") or ""),
                object=f"{e['involvedObject'].get('kind')}/{e['involvedObject'].get('name')}",
                count=e.get("count") or 1,
                last_seen=_event_time(e) or None,
            )
            for e in events[-MAX_EVENTS:]
        ]

    def pod_logs(
        self, namespace: str, pod: str, container: str, previous: bool = False, tail: int = 50
    ) -> str | None:
        """The last `tail` lines a container wrote (its previous instance's with `previous`).

        Returns:
            The text, or None when there is none to read (pod gone, container not
            started, no previous instance).

        Raises:
            TransientError, PermanentError (other than the cases above).
        """
        try:
            resp = self._call(
                self.core.read_namespaced_pod_log,
                pod,
                namespace,
                container=container,
                previous=previous,
                tail_lines=tail,
                _preload_content=False,
            )
        except PermanentError as exc:
            if exc.status in (400, 404):
                return None
            raise
        return resp.data.decode("utf-8", "replace")

    def revisions(self, deployment: Manifest) -> list[tuple[Revision, Manifest]]:
        """The Deployment's ReplicaSet history, newest revision first.

        A ReplicaSet belongs to the Deployment when its controller ownerReference has
        the Deployment's uid (the selector only narrows the list). Each comes with its
        pod template, without the pod-template-hash label, comparable to the
        Deployment's `spec.template`.

        Raises:
            TransientError, PermanentError.
        """
        if (deployment.get("kind") or "Deployment") != "Deployment":
            return self._controller_revisions(deployment)
        meta = deployment["metadata"]
        current = _revision(deployment)
        owned = [
            rs
            for rs in self._list(
                self.apps.list_namespaced_replica_set,
                None,
                meta["namespace"],
                label_selector=label_selector(deployment["spec"]["selector"]),
            )
            if any(
                ref.get("uid") == meta.get("uid") and ref.get("controller")
                for ref in rs["metadata"].get("ownerReferences") or []
            )
        ]
        owned.sort(key=_revision, reverse=True)
        return [
            (
                Revision(
                    revision=_revision(rs),
                    replicaset=rs["metadata"]["name"],
                    images=[c.get("image", "") for c in _template_of(rs)["spec"]["containers"]],
                    ready_replicas=(rs.get("status") or {}).get("readyReplicas") or 0,
                    current=_revision(rs) == current,
                ),
                _template_of(rs),
            )
            for rs in owned
        ]

    def _controller_revisions(self, workload: Manifest) -> list[tuple[Revision, Manifest]]:
        """A StatefulSet's or DaemonSet's ControllerRevisions, newest revision first.

        Owned by the workload's uid; each revision's ready pods are those labelled
        with it (`controller-revision-hash`: the revision's name for a StatefulSet,
        its hash for a DaemonSet). The current one is the StatefulSet's
        status.updateRevision, or the DaemonSet's revision holding its template.
        """
        meta, kind = workload["metadata"], workload.get("kind")
        selector = label_selector(workload["spec"]["selector"])
        owned = [
            cr
            for cr in self._list(
                self.apps.list_namespaced_controller_revision,
                None,
                meta["namespace"],
                label_selector=selector,
            )
            if any(
                ref.get("uid") == meta.get("uid") and ref.get("controller")
                for ref in cr["metadata"].get("ownerReferences") or []
            )
        ]
        owned.sort(key=lambda cr: int(cr.get("revision") or 0), reverse=True)
        ready: dict[str, int] = {}
        for pod in self.pods_of(workload):
            if pod_state(pod).ready:
                key = (pod["metadata"].get("labels") or {}).get(REVISION_HASH_LABEL, "")
                ready[key] = ready.get(key, 0) + 1
        template = _normalized(_comparable((workload.get("spec") or {}).get("template") or {}))
        if kind == "StatefulSet":
            update = (workload.get("status") or {}).get("updateRevision")
            current = next((cr for cr in owned if cr["metadata"]["name"] == update), None)
        else:
            current = next(
                (
                    cr
                    for cr in owned
                    if _normalized(_comparable(_revision_template(cr))) == template
                ),
                None,
            )
        out = []
        for cr in owned:
            labels = cr["metadata"].get("labels") or {}
            key = (
                cr["metadata"]["name"]
                if kind == "StatefulSet"
                else labels.get(REVISION_HASH_LABEL, "")
            )
            tmpl = _revision_template(cr)
            out.append(
                (
                    Revision(
                        revision=int(cr.get("revision") or 0),
                        replicaset=cr["metadata"]["name"],
                        images=[
                            c.get("image", "")
                            for c in (tmpl.get("spec") or {}).get("containers") or []
                        ],
                        ready_replicas=ready.get(key, 0) if key else 0,
                        current=cr is current,
                    ),
                    tmpl,
                )
            )
        return out

    def unblock_rollout(self, workload: Manifest) -> list[str]:
        """A StatefulSet's forced rollback: delete the one member stuck on another revision.

        With the default OrderedReady policy, a StatefulSet whose rollout stalled on a
        broken pod never replaces that pod, even once the template is corrected: the
        controller waits for it to become ready first. Kubernetes documents the way
        out — delete it, and the controller recreates it from the current template.

        Deleted, once the controller has observed the current spec, and only for the
        RollingUpdate strategy (an OnDelete set would recreate the pod from whatever
        template is current, and never replace it again): at most one pod, the
        highest-ordinal one at or above the partition (below it the controller
        recreates the old revision) that this StatefulSet controls (its uid), is not
        being deleted, is labelled with a revision other than status.updateRevision, is
        not ready and shows a failure reason other than plain NotReady (a member only
        briefly not ready while the controller replaces a neighbour is left alone). One
        at a time, so two members of a quorum never go down together. Nothing for other
        kinds (a Deployment's new ReplicaSet and a DaemonSet's rolling update replace
        such pods by themselves) or the Parallel policy.

        Returns:
            The names of the pods deleted (one at most).

        Raises:
            TransientError, PermanentError.
        """
        if workload.get("kind") != "StatefulSet":
            return []
        meta, spec = workload["metadata"], workload.get("spec") or {}
        status = workload.get("status") or {}
        update = status.get("updateRevision")
        strategy = spec.get("updateStrategy") or {}
        if (
            strategy.get("type", "RollingUpdate") != "RollingUpdate"
            or spec.get("podManagementPolicy") == "Parallel"
            or not update
            or meta.get("generation", 0) > (status.get("observedGeneration") or 0)
        ):
            return []
        partition = _int_or((strategy.get("rollingUpdate") or {}).get("partition"), 0)
        stuck: list[tuple[int, Manifest]] = []
        for pod in self.pods_of(workload):
            pmeta = pod["metadata"]
            ordinal = _ordinal(meta["name"], pmeta.get("name", ""))
            state = pod_state(pod)
            if (
                ordinal is None
                or ordinal < partition
                or (pmeta.get("labels") or {}).get(REVISION_HASH_LABEL) == update
                or pmeta.get("deletionTimestamp")
                or state.ready
                or not [r for r in state.reasons if r != "NotReady"]
                or not any(
                    r.get("uid") == meta.get("uid") and r.get("controller")
                    for r in pmeta.get("ownerReferences") or []
                )
            ):
                continue
            stuck.append((ordinal, pod))
        if not stuck:
            return []
        pmeta = max(stuck, key=lambda item: item[0])[1]["metadata"]
        try:
            self._call(
                self.core.delete_namespaced_pod,
                pmeta["name"],
                pmeta["namespace"],
                body={"preconditions": {"uid": pmeta["uid"]}},
                _preload_content=False,
            )
        except PermanentError as exc:
            if exc.status in (404, 409):
                return []  # gone or replaced meanwhile
            raise
        except Conflict:
            return []
        log.info("kubernetes: %s pod %s deleted: stuck on revision %s, the set now at %s",
                 _ref(workload), pmeta["name"],
                 (pmeta.get("labels") or {}).get(REVISION_HASH_LABEL), update)  # fmt: skip
        return [pmeta["name"]]

    def rollback_pending(self, workload: Manifest, before: dict[str, str | None]) -> str | None:
        """What still keeps a restored StatefulSet from running its original revision.

        Reverting a StatefulSet's template does not replace a member stuck on the fix's
        revision (the controller waits for it to become ready first): each call unblocks
        the set again (`unblock_rollout`, one member at a time), then reads its pods.
        The set has converged when the controller observed the restored spec and every
        pod runs either status.updateRevision (the original template's) or the revision
        that same pod ran before the fix (`before`: pod name to revision; a member the
        original's own stalled rollout never reached). None then; else why not, in
        words. None at once for the other kinds: a Deployment's and a DaemonSet's own
        controllers replace the fix's pods.

        Raises:
            TransientError, PermanentError.
        """
        if workload.get("kind") != "StatefulSet":
            return None
        name = workload["metadata"]["name"]
        status = workload.get("status") or {}
        if workload["metadata"].get("generation", 0) > (status.get("observedGeneration") or 0):
            return f"the controller has not observed the restored spec of {_ref(workload)} yet"
        update = status.get("updateRevision")
        self.unblock_rollout(workload)
        for pod in sorted(self.pods_of(workload), key=lambda p: p["metadata"].get("name", "")):
            pmeta = pod["metadata"]
            revision = (pmeta.get("labels") or {}).get(REVISION_HASH_LABEL)
            if _ordinal(name, pmeta.get("name", "")) is None:
                continue
            if pmeta.get("deletionTimestamp"):
                return f"pod {pmeta['name']} is still terminating"
            if revision != update and revision != before.get(pmeta.get("name", "")):
                return (
                    f"pod {pmeta['name']} still runs revision {revision}, not the original {update}"
                )
        return None

    def had_template(self, workload: Manifest, template: Any) -> bool:
        """Whether `template` is the pod template of one of the workload's revisions.

        A stored original is written back only if the cluster itself ran it (a
        ReplicaSet or ControllerRevision the workload owns holds it): the record comes
        from Redis, and a template written into it is no revision of the workload.

        Raises:
            TransientError, PermanentError.
        """
        if not isinstance(template, dict):
            return False
        wanted = _normalized(_comparable(template))
        return any(_normalized(_comparable(t)) == wanted for _, t in self.revisions(workload))

    def last_healthy_template(
        self, deployment: Manifest, revisions: list[tuple[Revision, Manifest]] | None = None
    ) -> Manifest | None:
        """The pod template of the newest earlier revision known to have run healthy.

        The rule: among the revisions older than the current one, newest first, the
        first whose ReplicaSet still has ready replicas — a stuck rollout keeps the
        previous ReplicaSet serving, so it is proven good right now. When none is
        serving, the newest earlier revision: the Deployment controller only retires an
        old ReplicaSet as the next one becomes available, so that is the state the
        workload last ran in. None when there is no earlier revision.

        Args:
            revisions: `revisions(deployment)` if already read.

        Raises:
            TransientError, PermanentError.
        """
        history = [
            r
            for r in (revisions if revisions is not None else self.revisions(deployment))
            if not r[0].current
        ]
        serving = [r for r in history if r[0].ready_replicas > 0]
        chosen = serving or history
        return chosen[0][1] if chosen else None

    def rollout(
        self, deployment_name: str, namespace: str, kind: str = "Deployment"
    ) -> RolloutStatus:
        """`kubectl rollout status` for one Deployment, read once (no waiting).

        Raises:
            PermanentError: the Deployment does not exist (or other 4xx).
            TransientError: as every call.
        """
        dep = self.get_workload(namespace, kind, deployment_name)
        if dep is None:
            raise PermanentError(SYSTEM, _not_found(kind, deployment_name), status=404)
        return rollout_status(dep)

    # -- writes ----------------------------------------------------------------------------

    def dry_run_apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply with dryRun=All: what the object would become; nothing changes.

        Raises:
            PermanentError: the API server refused it (422 invalid, 409, 403...), with
                its message.
            TransientError: as every call.
        """
        return self._apply(manifest, dry_run=True)

    def apply(self, manifest: Manifest, resource_version: str | None = None) -> Manifest:
        """Apply a corrected Deployment: server-side apply, then explicit removals.

        Server-side apply (field manager `aifixer`, force) sets every field the
        manifest has; fields it dropped that other managers own are then removed with a
        JSON patch (see `removed_fields`), so the live spec is the manifest's.

        With `resource_version`, the apply lands only on that version of the object
        (the API server's optimistic concurrency), and the removals only on what the
        apply produced (a JSON patch `test`), so a change made in between is never
        overwritten.

        Returns:
            The Deployment as stored afterwards.

        Raises:
            Conflict: the object is no longer at `resource_version` (409).
            PermanentError, TransientError.
        """
        applied = self._apply(manifest, dry_run=False, resource_version=resource_version)
        removals = removed_fields(applied, manifest)
        if not removals:
            return applied
        log.info("kubernetes: removing %s from %s", ", ".join(removals), _ref(manifest))
        meta = manifest["metadata"]
        ops = [{"op": "remove", "path": p} for p in removals]
        if resource_version is not None:
            rv = applied["metadata"]["resourceVersion"]
            ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
        try:
            return self._json(
                self._apps_call("patch", manifest.get("kind")),
                meta["name"],
                meta["namespace"],
                ops,
                field_manager=FIELD_MANAGER,
                _content_type=JSON_PATCH,
            )
        except PermanentError as exc:
            if resource_version is not None and exc.status == 422 and "test" in exc.message:
                # The `test` op failed (the API server answers 422): the object moved
                # between the two writes. The caller re-reads and re-checks.
                raise Conflict(SYSTEM, f"{_ref(manifest)} changed between writes") from None
            raise

    def restore(self, original: Manifest, expected_generation: int | None = None) -> Manifest:
        """Put the original spec back (rollback of a fix that did not verify).

        A replace of the live object with the original spec, guarded by the live
        resourceVersion; a conflict (409) re-reads and tries again, up to
        RESTORE_ATTEMPTS times. With `expected_generation`, the live object must still
        be at that generation (the one aifixer's fix produced): a person's later change
        is never undone.

        Returns:
            The Deployment as stored afterwards.

        Raises:
            Conflict: the live Deployment is no longer at `expected_generation`.
            PermanentError: the Deployment is gone, or the replace is refused.
            TransientError: as every call, or conflicts that never settled.
        """
        meta, kind = original["metadata"], original.get("kind") or "Deployment"
        name, namespace = meta["name"], meta["namespace"]
        for _ in range(RESTORE_ATTEMPTS):
            live = self.get_workload(namespace, kind, name)
            if live is None:
                raise PermanentError(SYSTEM, _not_found(kind, name), status=404)
            generation = live["metadata"].get("generation")
            if expected_generation is not None and generation != expected_generation:
                raise Conflict(
                    SYSTEM,
                    f"{_ref(original)} was changed by someone else after the fix "
                    f"(generation {generation}, the fix made {expected_generation}); "
                    "left as it is",
                )
            live["metadata"].pop("managedFields", None)
            body = {**live, "spec": original["spec"]}
            body.pop("status", None)
            try:
                return self._json(
                    self._apps_call("replace", kind),
                    name,
                    namespace,
                    body,
                    field_manager=FIELD_MANAGER,
                )
            except Conflict:
                log.info("kubernetes: %s changed during restore, retrying", _ref(original))
        raise TransientError(
            SYSTEM, f"{_ref(original)} kept changing; restore not done", status=409
        )

    # -- objects beside the workload: its claims and its Services ------------------------

    def claims_of(self, workload: Manifest) -> list[Manifest]:
        """The PersistentVolumeClaims the workload's pod template mounts, that exist.

        Raises:
            TransientError, PermanentError.
        """
        namespace = workload["metadata"]["namespace"]
        template = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
        names = [
            v["persistentVolumeClaim"].get("claimName")
            for v in template.get("volumes") or []
            if isinstance(v, dict) and isinstance(v.get("persistentVolumeClaim"), dict)
        ]
        out = []
        for name in dict.fromkeys(n for n in names if isinstance(n, str) and n):
            claim = self.get_claim(namespace, name)
            if claim is not None:
                out.append(claim)
        return out

    def get_claim(self, namespace: str, name: str) -> Manifest | None:
        """The live claim, or None when it does not exist.

        Raises:
            TransientError, PermanentError.
        """
        return self._read(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def storage_classes(self) -> list[Manifest]:
        """The cluster's StorageClasses.

        Raises:
            TransientError, PermanentError.
        """
        return self._list(self.storage.list_storage_class, None, "")

    def events_about(self, namespace: str, kind: str, name: str) -> list[EventRecord]:
        """Events about one object (a claim), newest last, at most MAX_EVENTS.

        Raises:
            TransientError, PermanentError.
        """
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        events = self._list(
            self.core.list_namespaced_event, None, namespace, field_selector=selector
        )
        events.sort(key=_event_time)
        return [_event_record(e) for e in events[-MAX_EVENTS:]]

    def get_service(self, namespace: str, name: str) -> Manifest | None:
        """The live Service, or None when it does not exist.

        Raises:
            TransientError, PermanentError.
        """
        return self._read(self.core.read_namespaced_service, name, namespace)

    def endpoints_of(self, service: Manifest) -> tuple[int, int]:
        """(endpoints, ready endpoints) in the Service's EndpointSlices.

        Raises:
            TransientError, PermanentError.
        """
        meta = service["metadata"]
        slices = self._list(
            self.discovery.list_namespaced_endpoint_slice,
            None,
            meta["namespace"],
            label_selector=f"{SERVICE_NAME_LABEL}={meta['name']}",
        )
        endpoints = [e for s in slices for e in s.get("endpoints") or []]
        ready = [e for e in endpoints if (e.get("conditions") or {}).get("ready") is not False]
        return len(endpoints), len(ready)

    def services_missing(self, workload: Manifest) -> list[Manifest]:
        """The Services of the workload that select none of its pods and have no endpoint.

        A Service is the workload's when it carries the workload's name, or when the
        selector `kubectl apply` last wrote for it (its last-applied annotation) matches
        the workload's pod template: nothing else ties a Service to a workload.

        Raises:
            TransientError, PermanentError.
        """
        meta = workload["metadata"]
        namespace = meta["namespace"]
        services = self._list(self.core.list_namespaced_service, None, namespace)
        for svc in services:  # a list's items carry no kind: each is a Service manifest
            svc.setdefault("apiVersion", "v1")
            svc.setdefault("kind", "Service")
        return [
            svc
            for svc in services
            if service_names(svc, workload) and self.endpoints_of(svc)[0] == 0
        ]

    def service_signals(self, workloads: dict[str, list[Manifest]] | None = None) -> list[Signal]:
        """A Service that selects none of a running workload's pods, as a signal about
        that workload (no event exists for it: `describe service` shows no endpoints).

        Only when the workload runs (a ready replica) and the Service has no endpoint at
        all, so a workload still starting or a Service briefly between selectors opens
        nothing; `open_incidents` checks again on the live objects.

        Raises:
            TransientError, PermanentError.
        """
        signals: list[Signal] = []
        now = datetime.now(tz=UTC)
        for ns in self.settings.namespaces or [""]:
            services = self._list(
                self.core.list_namespaced_service, self.core.list_service_for_all_namespaces, ns
            )
            selecting = [s for s in services if (s.get("spec") or {}).get("selector")]
            if not selecting:
                continue
            slices = self._list(
                self.discovery.list_namespaced_endpoint_slice,
                self.discovery.list_endpoint_slice_for_all_namespaces,
                ns,
            )
            served = {
                (s["metadata"].get("namespace"), (s["metadata"].get("labels") or {}).get(
                    SERVICE_NAME_LABEL))
                for s in slices
                if s.get("endpoints")
            }  # fmt: skip
            empty = [
                s
                for s in selecting
                if (s["metadata"]["namespace"], s["metadata"]["name"]) not in served
            ]
            if not empty:
                continue
            deployments = self._list(
                self.apps.list_namespaced_deployment,
                self.apps.list_deployment_for_all_namespaces,
                ns,
            )
            for svc in empty:
                meta = svc["metadata"]
                for dep in deployments:
                    if dep["metadata"]["namespace"] != meta["namespace"]:
                        continue
                    why = service_names(svc, dep)
                    if not why or not (dep.get("status") or {}).get("readyReplicas"):
                        continue
                    signals.append(
                        Signal(
                            source="services",
                            namespace=meta["namespace"],
                            workload=dep["metadata"]["name"],
                            workload_kind="Deployment",
                            reason=NO_ENDPOINTS,
                            message=bounded(
                                f"Service {meta['name']} has no endpoints: its selector "
                                f"{_labels_text(svc['spec']['selector'])} matches none of the "
                                f"pods of Deployment {dep['metadata']['name']} ({why})"
                            ),
                            observed_at=now,
                            raw={"service": meta["name"]},
                        )
                    )
        return signals

    def dry_run_object(self, manifest: Manifest) -> None:
        """Have the API server judge a corrected claim or Service without changing it.

        A Service: server-side apply with dryRun=All. A claim, whose spec cannot change
        in place, is re-created by a fix: the create is dry-run, and a refusal only
        because the name is taken (409 AlreadyExists, which the server decides after
        admission and validation) is the expected answer.

        Raises:
            PermanentError: the API server refused it, with its message.
            TransientError: as every call.
        """
        meta = manifest.get("metadata") or {}
        kind, name, namespace = manifest.get("kind"), meta.get("name"), meta.get("namespace")
        if kind == "Service":
            self._json(
                self.core.patch_namespaced_service, name, namespace, _apply_body(manifest),
                field_manager=FIELD_MANAGER, force=True, dry_run="All",
                _content_type=APPLY_PATCH,
            )  # fmt: skip
            return
        if kind != "PersistentVolumeClaim":
            raise ValueError(f"no dry-run for a {kind}")
        try:
            self._json(
                self.core.create_namespaced_persistent_volume_claim,
                namespace,
                _new_claim_body(manifest),
                field_manager=FIELD_MANAGER,
                dry_run="All",
            )
        except PermanentError as exc:
            if exc.status != 409:
                raise

    def recreate_claim(self, live: Manifest, desired: Manifest) -> Manifest:
        """Replace a claim that never bound by `desired` (same name, another spec).

        The claim's spec is immutable, and a claim that never bound holds no data:
        deleting it and creating the corrected one is the fix. The delete carries the
        live claim's uid and resourceVersion as preconditions, so a claim that changed
        (or bound) since it was read is refused by the API server, never deleted; the
        adapter refuses a claim with a volume itself.

        Returns:
            The claim as created.

        Raises:
            Conflict: the claim changed since `live` was read.
            PermanentError: `live` has a volume or is Bound; or the server refused.
            TransientError: as every call.
        """
        meta = live["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        if (live.get("spec") or {}).get("volumeName") or (live.get("status") or {}).get(
            "phase"
        ) not in (None, "Pending"):
            raise PermanentError(SYSTEM, f"claim {namespace}/{name} has a volume: not re-created")
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
        }
        try:
            self._call(
                self.core.delete_namespaced_persistent_volume_claim, name, namespace, body=body,
                _preload_content=False,
            )  # fmt: skip
        except PermanentError as exc:
            if exc.status == 404:
                raise Conflict(SYSTEM, f"claim {namespace}/{name} is gone") from None
            raise
        return self.create_claim(desired)

    def create_claim(self, desired: Manifest) -> Manifest:
        """Create a claim (the second half of `recreate_claim`, or a redelivery of it).

        Raises:
            Conflict: a claim of that name exists (someone else's, or not deleted yet).
            PermanentError, TransientError.
        """
        namespace = desired["metadata"]["namespace"]
        try:
            return self._json(
                self.core.create_namespaced_persistent_volume_claim,
                namespace,
                _new_claim_body(desired),
                field_manager=FIELD_MANAGER,
            )
        except PermanentError as exc:
            if exc.status == 409:
                raise Conflict(SYSTEM, exc.message) from None
            raise

    def delete_claim(self, claim: Manifest) -> None:
        """Delete exactly this claim (uid and resourceVersion as preconditions).

        Raises:
            Conflict: it changed or is gone since it was read.
            PermanentError, TransientError.
        """
        meta = claim["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
        }
        try:
            self._call(
                self.core.delete_namespaced_persistent_volume_claim, meta["name"],
                meta["namespace"], body=body, _preload_content=False,
            )  # fmt: skip
        except PermanentError as exc:
            if exc.status == 404:
                raise Conflict(SYSTEM, f"claim {_ref(claim)} is gone") from None
            raise

    def set_service_selector(
        self, namespace: str, name: str, selector: dict[str, str], resource_version: str
    ) -> Manifest:
        """Set a Service's selector, only on the version read (a JSON patch `test` of
        the resourceVersion, then `replace` of the selector: nothing else changes).

        Raises:
            Conflict: the Service changed since it was read.
            PermanentError, TransientError.
        """
        ops = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
            {"op": "replace", "path": "/spec/selector", "value": selector},
        ]
        try:
            return self._json(
                self.core.patch_namespaced_service, name, namespace, ops,
                field_manager=FIELD_MANAGER, _content_type=JSON_PATCH,
            )  # fmt: skip
        except PermanentError as exc:
            if exc.status in (409, 422):
                raise Conflict(
                    SYSTEM, f"service {namespace}/{name} changed: {exc.message}"
                ) from None
            raise

    # -- a temporary copy of a Deployment, to verify a fix on ------------------------------

    def services_selecting(self, namespace: str, labels: dict[str, str]) -> list[str]:
        """The names of the namespace's Services whose selector matches `labels`.

        Raises:
            TransientError, PermanentError.
        """
        services = self._list(self.core.list_namespaced_service, None, namespace)
        return sorted(
            svc["metadata"]["name"]
            for svc in services
            if _matches((svc.get("spec") or {}).get("selector") or {}, labels)
        )

    def create_copy(self, manifest: Manifest) -> Manifest:
        """Create a Deployment (a verification copy; `aifixer.copies` builds it).

        A create, never an apply: it cannot land on an object that exists.

        Raises:
            Conflict: a Deployment of that name exists.
            PermanentError: the API server refused it (invalid, forbidden...).
            TransientError: as every call.
        """
        if manifest.get("kind") != "Deployment":
            raise ValueError("only a Deployment is created as a copy")
        meta = manifest["metadata"]
        return self._json(
            self.apps.create_namespaced_deployment, meta["namespace"], _apply_body(manifest),
            field_manager=FIELD_MANAGER,
        )  # fmt: skip

    def delete_copy(self, deployment: Manifest) -> bool:
        """Delete exactly this Deployment (its uid and resourceVersion as preconditions),
        its ReplicaSets and pods with it (background propagation).

        Returns:
            True when deleted now; False when it was already gone.

        Raises:
            Conflict: it changed since it was read (read it again and judge again).
            PermanentError, TransientError.
        """
        meta = deployment["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
        }
        try:
            self._call(
                self.apps.delete_namespaced_deployment, meta["name"], meta["namespace"],
                body=body, _preload_content=False,
            )  # fmt: skip
        except PermanentError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- GitOps controllers ----------------------------------------------------------------

    def gitops_owner(self, deployment: Manifest) -> GitOpsOwner | None:
        """The Argo CD Application or Flux Kustomization that manages this Deployment.

        Named by the Deployment's marks (`gitops_owner` above: validated, and only in
        the configured controller namespaces) and confirmed by the object itself, which
        must exist and list the Deployment in its status; otherwise None.

        Raises:
            TransientError, PermanentError.
        """
        s = self.settings
        owner = gitops_owner(deployment, s.gitops_argocd_namespace, s.gitops_flux_namespaces)
        if owner is None:
            return None
        obj = self._gitops_object(owner)
        if obj is None or not claims(owner, obj, deployment):
            log.info("kubernetes: %s does not manage %s: not a GitOps workload",
                     owner, _ref(deployment))  # fmt: skip
            return None
        return owner

    def self_heal_switch(self, owner: GitOpsOwner) -> Any:
        """The switch's value now (see `GitOpsOwner.field`; None: not set).

        Raises:
            PermanentError: the object is gone (404), or as every call.
            TransientError.
        """
        obj = self._gitops_object(owner)
        if obj is None:
            raise PermanentError(SYSTEM, f"{owner} not found", status=404)
        return _pointer_get(obj, owner.field)

    def pause_self_heal(self, owner: GitOpsOwner) -> tuple[bool, Any]:
        """Stop the controller from reverting live changes, for this one object only.

        Argo CD: `spec.syncPolicy.automated.selfHeal: false` (automated sync of new
        commits stays on); Flux: `spec.suspend: true`. A JSON patch whose first
        operation tests the resourceVersion just read: a change someone makes to the
        object in between is never overwritten (the object is read again and judged
        again).

        Returns:
            (paused, previous): whether aifixer changed the switch now, and its value
            before (None: not set). Self-heal already off changes nothing.

        Raises:
            PermanentError: the object is gone (404), or the patch is refused.
            TransientError: as every call, or the object kept changing.
        """
        for _ in range(RESTORE_ATTEMPTS):
            obj = self._gitops_object(owner)
            if obj is None:
                raise PermanentError(SYSTEM, f"{owner} not found", status=404)
            current = _pointer_get(obj, owner.field)
            if not owner.heals(current):
                return False, current  # no self-heal, or suspended already: nothing to do
            if self._gitops_patch(owner, obj, {"op": "add", "path": owner.field,
                                               "value": owner.paused}):  # fmt: skip
                log.info("kubernetes: self-heal of %s paused (%s was %s)",
                         owner, owner.field, current)  # fmt: skip
                return True, current
        raise TransientError(SYSTEM, f"{owner} kept changing; self-heal not paused", status=409)

    def resume_self_heal(self, owner: GitOpsOwner, previous: Any) -> str:
        """Put the switch back to `previous`, only while it is still what aifixer set.

        Returns:
            "restored"; "changed" when someone changed the switch meanwhile (left as
            it is); "gone" when the object no longer exists. Safe to repeat: once
            restored, the switch is no longer aifixer's value and nothing is written.

        Raises:
            PermanentError, TransientError (also when the object kept changing).
        """
        for _ in range(RESTORE_ATTEMPTS):
            obj = self._gitops_object(owner)
            if obj is None:
                return "gone"
            if _pointer_get(obj, owner.field) != owner.paused:
                return "changed"
            op = (
                {"op": "remove", "path": owner.field}
                if previous is None
                else {"op": "replace", "path": owner.field, "value": previous}
            )
            if self._gitops_patch(owner, obj, op):
                log.info("kubernetes: self-heal of %s restored (%s: %s)",
                         owner, owner.field, previous)  # fmt: skip
                return "restored"
        raise TransientError(SYSTEM, f"{owner} kept changing; self-heal not restored", status=409)

    def gitops_in_flight(self, owner: GitOpsOwner, workload: Manifest) -> str | None:
        """What the controller is about to write over `workload`, if a pass it decided
        before self-heal was paused is still under way.

        Turning self-heal off stops the passes the controller decides after it; one
        already decided goes on and writes Git's version, over a live fix written
        before that write. Argo CD: an operation requested on the Application (its
        `operation`, before the controller picks it up) or running
        (`status.operationState.phase` Running or Terminating) whose results do not
        yet list the workload as synced. Flux: the Kustomization's condition
        `Reconciling` True (kustomize-controller sets it for the length of a pass; a
        failed pass waiting for its retry says ProgressingWithRetry, and writes
        nothing until then). None when no such pass is known (or the object is gone).

        Raises:
            PermanentError, TransientError: as every call.
        """
        obj = self._gitops_object(owner)
        if obj is None:
            return None
        status = obj.get("status") or {}
        if owner.controller == "argocd":
            if obj.get("operation"):
                return f"{owner}: a sync is requested"
            op = status.get("operationState") or {}
            if op.get("phase") not in ("Running", "Terminating"):
                return None
            meta = workload.get("metadata") or {}
            done = any(
                r.get("kind") == workload.get("kind")
                and r.get("name") == meta.get("name")
                and r.get("namespace") == meta.get("namespace")
                and r.get("status") == "Synced"
                for r in ((op.get("syncResult") or {}).get("resources") or [])
            )
            return None if done else f"{owner}: a sync is {str(op['phase']).lower()}"
        for cond in status.get("conditions") or []:
            if (
                cond.get("type") == "Reconciling"
                and cond.get("status") == "True"
                and cond.get("reason") != "ProgressingWithRetry"
            ):
                return f"{owner}: {cond.get('message') or 'a reconciliation is in progress'}"
        return None

    def gitops_has_commit(self, owner: GitOpsOwner, sha: str) -> bool:
        """Whether the controller has fetched the commit `sha` (a merged fix) from Git.

        Restoring self-heal before it has would have the controller put the revision
        it fetched last — Git's broken version — back over the verified fix. Flux: the
        Kustomization's GitRepository artifact names the commit (`main@sha1:<sha>`);
        Argo CD: the Application is synced to it (`status.sync.revision`, or one of
        `revisions` for several sources). When not yet, the controller is asked to look
        now, as `flux reconcile source git` and the Refresh button do (the annotations
        `reconcile.fluxcd.io/requestedAt` and `argocd.argoproj.io/refresh`), and False
        is returned: ask again later. A source of another kind (an OCI repository, a
        bucket) cannot name the commit: True.

        Raises:
            PermanentError (the object gone, or the patch refused), TransientError.
        """
        obj = self._gitops_object(owner)
        if obj is None:
            raise PermanentError(SYSTEM, f"{owner} not found", status=404)
        api = client.CustomObjectsApi(self.api_client)
        if owner.controller == "argocd":
            sync = (obj.get("status") or {}).get("sync") or {}
            if sha == sync.get("revision") or sha in (sync.get("revisions") or []):
                return True
            target = ("argoproj.io", "v1alpha1", owner.namespace, "applications", owner.name)
            request = {"argocd.argoproj.io/refresh": "normal"}
        else:
            ref = (obj.get("spec") or {}).get("sourceRef") or {}
            if ref.get("kind") != "GitRepository" or not ref.get("name"):
                return True
            namespace = ref.get("namespace") or owner.namespace
            target = ("source.toolkit.fluxcd.io", "v1", namespace, "gitrepositories", ref["name"])
            try:
                source = self._json(api.get_namespaced_custom_object, *target)
            except PermanentError as exc:
                if exc.status == 404:
                    return True  # nothing to wait for: the Kustomization reports it
                raise
            artifact = (source.get("status") or {}).get("artifact") or {}
            if sha in str(artifact.get("revision") or ""):
                return True
            now = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            request = {"reconcile.fluxcd.io/requestedAt": now}
        self._json(
            api.patch_namespaced_custom_object, *target, {"metadata": {"annotations": request}},
            field_manager=FIELD_MANAGER, _content_type="application/merge-patch+json",
        )  # fmt: skip
        return False

    def _gitops_object(self, owner: GitOpsOwner) -> Manifest | None:
        group, version, plural = _GITOPS[owner.controller][:3]
        api = client.CustomObjectsApi(self.api_client)
        try:
            return self._json(
                api.get_namespaced_custom_object, group, version, owner.namespace, plural,
                owner.name,
            )  # fmt: skip
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise

    def _gitops_patch(self, owner: GitOpsOwner, obj: Manifest, op: dict[str, Any]) -> bool:
        """One JSON patch on exactly the version read; False when the object moved."""
        group, version, plural = _GITOPS[owner.controller][:3]
        api = client.CustomObjectsApi(self.api_client)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, op]
        try:
            self._json(
                api.patch_namespaced_custom_object, group, version, owner.namespace, plural,
                owner.name, ops, field_manager=FIELD_MANAGER, _content_type=JSON_PATCH,
            )  # fmt: skip
        except Conflict:
            return False
        except PermanentError as exc:
            if exc.status == 422 and "test" in exc.message:
                return False  # the `test` failed: the object moved, read it again
            raise
        return True

    # -- internals -------------------------------------------------------------------------

    def _apply(
        self, manifest: Manifest, dry_run: bool, resource_version: str | None = None
    ) -> Manifest:
        meta = manifest.get("metadata") or {}
        if (
            manifest.get("kind") not in WORKLOAD_KINDS
            or not meta.get("name")
            or not meta.get("namespace")
        ):
            raise ValueError(
                "expected a Deployment, StatefulSet or DaemonSet manifest with "
                "metadata.name and metadata.namespace"
            )
        body = _apply_body(manifest)
        if resource_version is not None:
            body["metadata"]["resourceVersion"] = resource_version  # a precondition
        return self._json(
            self._apps_call("patch", manifest.get("kind")),
            meta["name"],
            meta["namespace"],
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            dry_run="All" if dry_run else None,
            _content_type=APPLY_PATCH,
        )

    def _warnings_since(self, namespace: str, rv: str | None) -> tuple[list[Manifest], str]:
        if rv:
            try:
                return self._watch_warnings(namespace, rv)
            except _Expired:
                log.info("kubernetes: event cursor %s expired, listing again", rv)
        cutoff = time.time() - self.settings.loki_lookback_s
        items, list_rv = self._list_with_rv(
            self.core.list_namespaced_event,
            self.core.list_event_for_all_namespaces,
            namespace,
            field_selector="type=Warning",
        )
        recent = [e for e in items if _epoch(_event_time(e)) >= cutoff]
        return recent, list_rv

    def _watch_warnings(self, namespace: str, rv: str) -> tuple[list[Manifest], str]:
        fn, args = self._scoped(
            self.core.list_namespaced_event, self.core.list_event_for_all_namespaces, namespace
        )
        resp = self._call(
            fn,
            *args,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            field_selector="type=Warning",
            timeout_seconds=WATCH_WINDOW_S,
            _preload_content=False,
            _request_timeout=(self.timeout, self.timeout + WATCH_WINDOW_S),
        )
        events = []
        try:
            body = resp.data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(SYSTEM, f"event watch broke off: {exc}") from exc
        for raw in body.splitlines():
            if not raw.strip():
                continue
            item = json.loads(raw)
            obj = item.get("object") or {}
            if item.get("type") == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired()
                raise _status_error(obj.get("code") or 500, obj.get("message") or str(obj), None)
            rv = obj.get("metadata", {}).get("resourceVersion") or rv
            if item.get("type") in ("ADDED", "MODIFIED"):
                events.append(obj)
        return events, rv

    def _event_signal(self, event: Manifest) -> Signal:
        obj = event.get("involvedObject") or {}
        namespace = obj.get("namespace") or event["metadata"].get("namespace", "")
        event = {k: v for k, v in event.items() if k != "metadata"} | {
            "metadata": {k: v for k, v in event["metadata"].items() if k != "managedFields"}
        }
        return Signal(
            source="events",
            namespace=namespace,
            pod=obj.get("name") if obj.get("kind") == "Pod" else None,
            workload=owner[1] if (owner := self.owner_of_event(event)) else None,
            workload_kind=cast(WorkloadKind, owner[0] if owner else "Deployment"),
            reason=event.get("reason") or "",
            message=bounded(event.get("message") or ""),
            observed_at=_event_datetime(event) or datetime.now(tz=UTC),
            raw=event,
        )

    def _pod_owner(self, namespace: str, pod: Manifest) -> tuple[str, str] | None:
        return self._cached(
            ("Pod", namespace, pod["metadata"]["name"]), lambda: self._owner_from_pod(pod)
        )

    def _pod_owner_uncached(self, namespace: str, pod_name: str) -> tuple[str, str] | None:
        pod = self._read(self.core.read_namespaced_pod, pod_name, namespace)
        if pod is not None:
            return self._owner_from_pod(pod)
        # The pod is gone (replaced, or a crash loop's victim of a rollout) but its events
        # remain: a ReplicaSet or a DaemonSet names its pods `<owner>-<5 characters>`,
        # a StatefulSet `<statefulset>-<ordinal>`.
        prefix, sep, suffix = pod_name.rpartition("-")
        if not sep:
            return None
        if len(suffix) == 5:
            owner = self._rs_owner(namespace, prefix)
            if owner is None and self.get_workload(namespace, "DaemonSet", prefix) is not None:
                owner = ("DaemonSet", prefix)
            return owner
        if suffix.isdigit() and self.get_workload(namespace, "StatefulSet", prefix) is not None:
            return "StatefulSet", prefix
        return None

    def _owner_from_pod(self, pod: Manifest) -> tuple[str, str] | None:
        for kind in ("StatefulSet", "DaemonSet"):
            name = _controller(pod, kind)
            if name:
                return kind, name
        rs = _controller(pod, "ReplicaSet")
        return self._rs_owner(pod["metadata"]["namespace"], rs) if rs else None

    def _rs_owner(self, namespace: str, rs_name: str) -> tuple[str, str] | None:
        def lookup() -> tuple[str, str] | None:
            rs = self._read(self.apps.read_namespaced_replica_set, rs_name, namespace)
            name = _controller(rs, "Deployment") if rs else None
            return ("Deployment", name) if name else None

        return self._cached(("ReplicaSet", namespace, rs_name), lookup)

    def _apps_call(self, verb: str, kind: Any) -> Callable:
        """The AppsV1Api method `<verb>_namespaced_<kind>` of a workload kind."""
        if kind not in WORKLOAD_KINDS:
            raise ValueError(f"not a workload kind aifixer changes: {kind!r}")
        snake = {"Deployment": "deployment", "StatefulSet": "stateful_set",
                 "DaemonSet": "daemon_set"}[kind]  # fmt: skip
        return getattr(self.apps, f"{verb}_namespaced_{snake}")

    def _cached(
        self, key: tuple[str, str, str], lookup: Callable[[], tuple[str, str] | None]
    ) -> tuple[str, str] | None:
        now = time.monotonic()
        hit = self._owners.get(key)
        if hit and hit[0] > now:
            return hit[1]
        value = lookup()
        if len(self._owners) > 10_000:
            self._owners = {k: v for k, v in self._owners.items() if v[0] > now}
        self._owners[key] = (now + OWNER_CACHE_S, value)
        return value

    def _scoped(self, namespaced: Callable, cluster_wide: Callable | None, namespace: str):
        if namespace or cluster_wide is None:
            return namespaced, (namespace,)
        return cluster_wide, ()

    def _list(
        self, namespaced: Callable, cluster_wide: Callable | None, namespace: str, **kw
    ) -> list[Manifest]:
        return self._list_with_rv(namespaced, cluster_wide, namespace, **kw)[0]

    def _list_with_rv(
        self, namespaced: Callable, cluster_wide: Callable | None, namespace: str, **kw
    ) -> tuple[list[Manifest], str]:
        """Every item, page by page (500 a page), and the list's resourceVersion."""
        fn, args = self._scoped(namespaced, cluster_wide, namespace)
        items: list[Manifest] = []
        token = None
        while True:
            page = self._json(fn, *args, limit=500, _continue=token, **kw)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items, page["metadata"].get("resourceVersion", "")

    def _read(self, fn: Callable, name: str, namespace: str) -> Manifest | None:
        try:
            return self._json(fn, name, namespace)
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise

    def _json(self, fn: Callable, *args, **kwargs) -> Any:
        resp = self._call(fn, *args, _preload_content=False, **kwargs)
        return json.loads(resp.data)

    def _call(self, fn: Callable, *args, **kwargs) -> Any:
        kwargs.setdefault("_request_timeout", self.timeout)
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise _api_error(exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(SYSTEM, f"{fn.__name__}: {exc}") from exc


# ---------------------------------------------------------------- helpers


def _api_client(settings: Settings) -> client.ApiClient:
    """The client for settings.kubeconfig/context; with neither, in-cluster, else
    ~/.kube/config. A context alone is one of ~/.kube/config ($KUBECONFIG): never the
    in-cluster configuration, which has no contexts and would be another cluster."""
    cfg = client.Configuration()
    cfg.retries = False  # no hidden retries: TransientError goes to the task's backoff
    try:
        if settings.kubeconfig is None and settings.kube_context is None:
            try:
                config.load_incluster_config(client_configuration=cfg)
                return client.ApiClient(cfg)
            except config.ConfigException:
                pass  # not in a pod: the user's kubeconfig
        return config.new_client_from_config(
            config_file=str(settings.kubeconfig) if settings.kubeconfig else None,
            context=settings.kube_context,
            persist_config=False,
            client_configuration=cfg,
        )
    except (config.ConfigException, OSError, ValueError) as exc:
        raise PermanentError(SYSTEM, f"cannot load the cluster configuration: {exc}") from exc


def _api_error(exc: ApiException) -> TransientError | PermanentError:
    message = exc.reason or "error"
    if exc.body:
        try:
            message = json.loads(exc.body).get("message") or message
        except (ValueError, AttributeError):
            message = exc.body
    headers = exc.headers or {}
    return _status_error(exc.status or 0, str(message), headers.get("Retry-After"))


def _status_error(status: int, message: str, retry_after: str | None):
    if status == 0:
        # The client failed before any answer (TLS, a request it could not build).
        return PermanentError(SYSTEM, bounded(message))
    if status == 409:
        return Conflict(SYSTEM, bounded(message))
    if is_transient_status(status):
        try:
            after = float(retry_after) if retry_after else None
        except ValueError:
            after = None
        return TransientError(SYSTEM, bounded(message), status=status, retry_after=after)
    return PermanentError(SYSTEM, bounded(message), status=status)


def _event_time(event: Manifest) -> str:
    return (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or event.get("metadata", {}).get("creationTimestamp")
        or ""
    )


def _event_datetime(event: Manifest) -> datetime | None:
    """When the event happened; None when it does not say."""
    timestamp = _event_time(event)
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")) if timestamp else None


def _epoch(timestamp: str) -> float:
    if not timestamp:
        return 0.0
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _ordinal(set_name: str, pod_name: str) -> int | None:
    """A StatefulSet member's ordinal, from the name its controller gave it (<set>-<n>)."""
    prefix, _, number = pod_name.rpartition("-")
    return int(number) if prefix == set_name and number.isdigit() else None


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _not_found(kind: str, name: str) -> str:
    """The API server's 404 message: `statefulsets.apps "db" not found`."""
    plural = {"StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}.get(kind, "deployments")
    return f'{plural}.apps "{name}" not found'


def _comparable(template: Manifest) -> Manifest:
    """A pod template without the labels controllers add to each revision's pods."""
    out = json.loads(json.dumps(template or {}))
    labels = (out.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
        labels.pop(REVISION_HASH_LABEL, None)
    (out.get("metadata") or {}).pop("creationTimestamp", None)
    return out


def _ref(manifest: Manifest) -> str:
    meta = manifest.get("metadata") or {}
    return f"[{meta.get('namespace')}/{meta.get('name')}]"


def _parse_cursor(cursor: str | None) -> dict[str, str]:
    """The event cursor: a resourceVersion, or `ns=rv,...` when watching namespaces apart."""
    if not cursor:
        return {}
    if "=" not in cursor:
        return {"": cursor}
    return dict(item.split("=", 1) for item in cursor.split(",") if item)


def _format_cursor(cursors: dict[str, str]) -> str:
    if set(cursors) == {""}:
        return cursors[""] or ""
    return ",".join(f"{ns}={rv}" for ns, rv in cursors.items() if rv)
